"""SIGKILL during extraction and during an evaluation sweep, then a rerun: nothing lost or doubled.

(Training is covered by tests/rl/test_checkpoint.py.) Each test runs the job in a subprocess that
is slowed down so the kill lands mid-run, kills it with SIGKILL once it has written some
progress, reruns the job in this process and compares with an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import welfare_lens as wl
from welfare_lens.steering.sweep import sweep

KillWhen = Callable[[subprocess.Popen[bytes], Callable[[], bool]], None]

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

EXTRACT_CHILD = """
import sys, time, torch, welfare_lens as wl
torch.set_num_threads(1)
model = wl.load_model("tiny-llama")
real = model.run_with_hooks
def slow(*a, **k):
    time.sleep(0.05)
    return real(*a, **k)
model.run_with_hooks = slow
trajs = wl.maze.shared_prefix_trajectories(wl.maze.MazeConfig(size=30), per_class=20, seed=9)
wl.capture(model, trajs, progress=False, checkpoint=sys.argv[1], checkpoint_every=5)
"""

SWEEP_CHILD = """
import sys, time, torch, welfare_lens as wl
from welfare_lens.steering.sweep import sweep
sys.path.insert(0, sys.argv[2])
from test_faults import evaluate_slowly, sweep_vectors
torch.set_num_threads(1)
model = wl.load_model("tiny-llama")
sweep(model, evaluate_slowly(0.3), sweep_vectors(model), layers=[1], alphas=(-2, 0, 2, 4),
      out_path=sys.argv[1], progress=False, positions="all")
"""


def test_extraction_resumes_after_sigkill(
    tmp_path: Path, one_thread: None, kill_when: KillWhen
) -> None:
    ckpt = tmp_path / "stats"
    child = subprocess.Popen(
        [sys.executable, "-c", EXTRACT_CHILD, str(ckpt)], env=ENV, stderr=subprocess.PIPE
    )
    kill_when(child, lambda: (tmp_path / "stats.json").exists())
    partial = wl.ClassStatistics.load(ckpt)
    done = partial.info["resume"]["done"]
    assert 5 <= done < 60 and done % 5 == 0
    assert sum(partial.counts.values()) == done  # exactly the checkpointed conversations

    model = wl.load_model("tiny-llama")
    trajs = wl.maze.shared_prefix_trajectories(wl.maze.MazeConfig(size=30), per_class=20, seed=9)
    resumed = wl.capture(model, trajs, progress=False, checkpoint=ckpt, checkpoint_every=5)
    straight = wl.capture(model, trajs, progress=False)
    assert resumed.counts == straight.counts == {"mold": 20, "gold": 20, "path": 20}
    torch.testing.assert_close(resumed.sum, straight.sum, atol=1e-5, rtol=1e-6)
    assert resumed.info["resume"]["done"] == 60


def evaluate_slowly(seconds: float) -> Callable[[Any], list[dict[str, Any]]]:
    """A deterministic evaluation: mean logit of token 5 at the end of a fixed prompt."""

    def evaluate(model: Any) -> list[dict[str, Any]]:
        time.sleep(seconds)
        tokens = torch.tensor([[1, 2, 3, 4, 5, 6]])
        with torch.no_grad():
            logits = model(tokens)
        return [{"prompt": i, "score": float(logits[0, -1, 5 + i])} for i in range(3)]

    return evaluate


def sweep_vectors(model: Any) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    shape = (model.cfg.n_layers, model.cfg.d_model)
    return {"a": torch.randn(shape, generator=gen), "b": torch.randn(shape, generator=gen)}


def test_sweep_resumes_after_sigkill(tmp_path: Path, one_thread: None, kill_when: KillWhen) -> None:
    out = tmp_path / "rows.jsonl"
    child = subprocess.Popen(
        [sys.executable, "-c", SWEEP_CHILD, str(out), str(Path(__file__).parent)],
        env=ENV,
        stderr=subprocess.PIPE,
    )
    kill_when(child, lambda: out.exists() and out.read_text().count('"score"') >= 6)

    model = wl.load_model("tiny-llama")
    vectors = sweep_vectors(model)
    calls = []

    def counted(m: Any) -> list[dict[str, Any]]:
        calls.append(1)
        return evaluate_slowly(0.0)(m)

    resumed = sweep(
        model,
        counted,
        vectors,
        layers=[1],
        alphas=(-2, 0, 2, 4),
        out_path=out,
        progress=False,
        positions="all",
    )
    # 7 conditions in all (alpha 0 shared by both vectors); the finished ones are not rerun.
    assert 1 <= len(calls) < 7
    straight = sweep(
        model,
        evaluate_slowly(0.0),
        vectors,
        layers=[1],
        alphas=(-2, 0, 2, 4),
        progress=False,
        positions="all",
    )

    def key(row: Any) -> tuple[Any, ...]:
        return (row["vector"], row["alpha"], row["prompt"])

    got = sorted((key(r), r["score"]) for r in resumed)
    want = sorted((key(r), r["score"]) for r in straight)
    assert [k for k, _ in got] == [k for k, _ in want]  # nothing lost, nothing doubled
    for (_, a), (_, b) in zip(got, want, strict=True):
        assert abs(a - b) < 1e-4
    lines = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
    assert len([x for x in lines if "score" in x]) == len(want)
