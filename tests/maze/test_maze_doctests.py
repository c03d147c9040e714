"""The usage examples in the maze docstrings run and print what they claim."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "welfare_lens.maze",
    "welfare_lens.maze.display",
    "welfare_lens.maze.env",
    "welfare_lens.maze.generate",
    "welfare_lens.maze.policies",
    "welfare_lens.maze.render",
    "welfare_lens.maze.shared_prefix",
    "welfare_lens.maze.trajectories",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0
