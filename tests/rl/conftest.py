"""Fixtures of the RL tests: one torch thread, tiny models, a one-turn bandit environment."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every test here runs on one torch thread (see tests/conftest.py)."""


@pytest.fixture(scope="module")
def tiny_llama() -> Any:
    """A tiny Llama shared by the tests of a module that do not modify it."""
    from welfare_lens.models import load_model

    return load_model("tiny-llama")


@pytest.fixture()
def fresh_llama() -> Any:
    """A tiny Llama of its own, for tests that train it (LoRA changes the model in place)."""
    from welfare_lens.models import load_model

    return load_model("tiny-llama")


class Bandit:
    """A one-turn environment: reward 1 for the move ``good``, 0 otherwise."""

    def __init__(self, good: str = "E", prompt: str = "Pick a direction: N, E, S or W.") -> None:
        self.good = good
        self._messages = [{"role": "user", "content": prompt}]
        self._done = False

    @property
    def messages(self) -> list[dict[str, str]]:
        return [dict(m) for m in self._messages]

    @property
    def done(self) -> bool:
        return self._done

    def step(self, reply: str) -> SimpleNamespace:
        self._messages.append({"role": "assistant", "content": reply})
        self._done = True
        return SimpleNamespace(reward=1.0 if reply == self.good else 0.0)


@pytest.fixture()
def bandit() -> type[Bandit]:
    """The bandit environment class."""
    return Bandit
