"""Fixtures shared by the steering evaluation tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch


@pytest.fixture(scope="module")
def tiny_llama() -> Iterator[Any]:
    """The tiny random Llama, loaded once per module and run on one torch thread."""
    from welfare_lens.models import load_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_model("tiny-llama")
    torch.set_num_threads(threads)
