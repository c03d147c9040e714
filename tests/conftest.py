"""Shared fixtures: every test starts from the same seeds; real models load once per session."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def smollm2() -> object:
    """The bundled SmolLM2-135M-Instruct, loaded once per test session."""
    from welfare_lens.models import load_model

    return load_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2_tok() -> object:
    """SmolLM2's real tokenizer (with its chat template), without the weights."""
    from welfare_lens.models import smollm2_tokenizer

    return smollm2_tokenizer()


@pytest.fixture(scope="session", params=["tiny-llama", "tiny-qwen3", "tiny-gemma3"])
def tiny_model(request: pytest.FixtureRequest) -> object:
    """Each tiny random model family (2-4 layers, d_model 64), loaded once per session."""
    from welfare_lens.models import load_model

    return load_model(request.param)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run a test on one torch thread.

    Tiny models' ops are microseconds long: on one thread they run fastest, and OpenMP's
    spin-waiting can make two threads many times slower when the machine's cores are shared.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _kill_when(child: subprocess.Popen[bytes], ready: Callable[[], bool]) -> None:
    """SIGKILL ``child`` once ``ready()`` holds; it must not finish (or fail) first."""
    try:
        deadline = time.monotonic() + 120
        while not ready():
            if child.poll() is not None:
                raise AssertionError(child.stderr.read().decode() if child.stderr else "")
            assert time.monotonic() < deadline, "no progress appeared"
            time.sleep(0.02)
        time.sleep(0.15)  # into the next unit of work, so the kill lands mid-way
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL


@pytest.fixture()
def kill_when() -> Callable[[subprocess.Popen[bytes], Callable[[], bool]], None]:
    """``kill_when(child, ready)``: SIGKILL a subprocess once it has made some progress."""
    return _kill_when


def _tiny_lora_run(out_dir: Path, maze: Any, steps: int = 2, **config: Any) -> Path:
    """Train the tiny Llama with LoRA for ``steps`` GRPO steps, checkpointing after each."""
    from welfare_lens.models import load_model
    from welfare_lens.rl import GRPOConfig, GRPOTrainer

    settings: dict[str, Any] = dict(
        mazes_per_step=2,
        lora_r=4,
        lora_alpha=8,
        progress=False,
        out_dir=str(out_dir),
        checkpoint_every=1,
    )
    settings.update(config)
    # One thread, as in ``one_thread``: module-scoped fixtures that call this run before it.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        GRPOTrainer(load_model("tiny-llama"), maze, GRPOConfig(**settings)).train(steps)
    finally:
        torch.set_num_threads(threads)
    return out_dir


@pytest.fixture(scope="session")
def tiny_lora_run() -> Callable[..., Path]:
    """``tiny_lora_run(out_dir, maze, steps=2, **config)``: a small LoRA run on disk.

    Two mazes a step, rank-4 LoRA, a checkpoint after every step, no progress bar; ``config``
    sets or overrides :class:`~welfare_lens.rl.GRPOConfig` fields (e.g. ``lr``, ``seed``).
    Returns ``out_dir``.
    """
    return _tiny_lora_run
