"""Checkpoints: exact resume after a SIGKILL, loading a trained policy back as a bridge."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from welfare_lens.errors import TrainingError
from welfare_lens.maze import MazeConfig
from welfare_lens.models import load_model, model_info
from welfare_lens.rl import (
    GRPOConfig,
    GRPOTrainer,
    latest_checkpoint,
    load_checkpoint,
    read_state,
)
from welfare_lens.rl.trainer import TIMING_KEYS

MAZE = MazeConfig(size=20, turns=3)
TOTAL = 6


def run_config(out_dir: Path, **kw: Any) -> GRPOConfig:
    base: dict[str, Any] = dict(
        mazes_per_step=2,
        episodes_per_maze=3,
        lr=1e-2,
        lora_r=4,
        lora_alpha=8,
        kl_beta=0.05,
        progress=False,
        out_dir=str(out_dir),
        checkpoint_every=2,
        seed=3,
    )
    base.update(kw)
    return GRPOConfig(**base)


def comparable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def q_hook_calls(bridge: Any, ids: torch.Tensor) -> int:
    fired: list[tuple[int, ...]] = []
    with bridge.hooks(
        fwd_hooks=[("blocks.0.attn.q.hook_out", lambda a, hook: fired.append(a.shape))]
    ):
        bridge(ids)
    return len(fired)


def read_metrics(out_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


CHILD = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    from welfare_lens.maze import MazeConfig
    from welfare_lens.models import load_model
    from welfare_lens.rl import GRPOConfig, GRPOTrainer
    cfg = GRPOConfig.from_dict(__import__("json").loads(sys.argv[1]))
    trainer = GRPOTrainer(load_model("tiny-llama"), MazeConfig(size=20, turns=3), cfg)
    trainer.train(1000)
    """
)


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path: Path, kill_when: Any) -> None:
    # The run that is killed: a subprocess that trains "forever"; killed once a checkpoint exists.
    killed = tmp_path / "killed"
    cfg = run_config(killed)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(cfg.to_dict())],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    kill_when(child, lambda: latest_checkpoint(killed) is not None)
    ckpt = latest_checkpoint(killed)
    assert ckpt is not None
    done = int(read_state(ckpt)["global_step"])
    assert 2 <= done < TOTAL
    assert not list(killed.glob(".checkpoint-*"))  # no half-written checkpoint left behind

    # Resume in this process and finish the run.
    resumed = GRPOTrainer.resume(killed)
    assert resumed.global_step == done
    assert [r["step"] for r in resumed.history] == list(range(done))
    resumed.train(TOTAL - done)

    # The same run, uninterrupted.
    straight = tmp_path / "straight"
    trainer = GRPOTrainer(load_model("tiny-llama"), MAZE, run_config(straight))
    trainer.train(TOTAL)

    got, want = read_metrics(killed), read_metrics(straight)
    assert [r["step"] for r in got] == list(range(TOTAL))
    assert comparable(got) == comparable(want)
    final_a = load_file(killed / f"checkpoint-{TOTAL:06d}" / "adapter_model.safetensors")
    final_b = load_file(straight / f"checkpoint-{TOTAL:06d}" / "adapter_model.safetensors")
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_b)


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_load_checkpoint_gives_back_the_trained_policy(tmp_path: Path, finetune: str) -> None:
    trainer = GRPOTrainer(
        load_model("tiny-llama"), MAZE, run_config(tmp_path, finetune=finetune, lr=1e-3)
    )
    trainer.train(2)
    ids = torch.randint(100, 1000, (2, 30))
    with torch.no_grad():
        trained = trainer.model(ids)
    for merge in (True, False):
        bridge = load_checkpoint(tmp_path, merge=merge)
        with torch.no_grad():
            loaded = bridge(ids)
        assert torch.allclose(loaded, trained, atol=1e-5)
        # Merged: a plain model again, and the bridge's hooks inside attention still fire.
        lora_names = [n for n, _ in bridge.original_model.named_parameters() if "lora_" in n]
        assert bool(lora_names) == (finetune == "lora" and not merge)
        assert q_hook_calls(bridge, ids) == 1
        info = model_info(bridge)
        assert info.source == "checkpoint" and info.extra["step"] == 2
        assert info.model_id.endswith("checkpoint-000002")
        assert info.extra["base_model_id"] == "tiny-llama-seed0"
    # Only safetensors and JSON: no pickle.
    ckpt = tmp_path / "checkpoint-000002"
    assert {p.suffix for p in ckpt.iterdir()} <= {".safetensors", ".json", ".md"}
    weights = "adapter_model.safetensors" if finetune == "lora" else "model.safetensors"
    assert (ckpt / weights).is_file()


def test_full_finetuning_resumes_exactly(tmp_path: Path) -> None:
    cfg = run_config(tmp_path / "a", finetune="full", lr=1e-3)
    straight = GRPOTrainer(load_model("tiny-llama"), MAZE, cfg)
    straight.train(3)
    first = GRPOTrainer(
        load_model("tiny-llama"),
        MAZE,
        run_config(tmp_path / "b", **{"finetune": "full", "lr": 1e-3}),
    )
    first.train(2)
    resumed = GRPOTrainer.resume(tmp_path / "b" / "checkpoint-000002", load_model("tiny-llama"))
    resumed.step()
    assert comparable(resumed.history) == comparable(straight.history)


def test_checkpoint_errors(tmp_path: Path, bandit: Any) -> None:
    trainer = GRPOTrainer(load_model("tiny-llama"), MAZE, run_config(tmp_path))
    trainer.train(2)
    with pytest.raises(TrainingError, match="trained from 'tiny-llama-seed0'"):
        load_checkpoint(tmp_path, model=load_model("tiny-qwen3"))
    with pytest.raises(TrainingError, match="neither a checkpoint"):
        load_checkpoint(tmp_path / "nowhere")
    state = tmp_path / "checkpoint-000002" / "trainer_state.json"
    data = json.loads(state.read_text())
    data["format"] = 99
    state.write_text(json.dumps(data))
    with pytest.raises(TrainingError, match="format"):
        GRPOTrainer.resume(tmp_path)

    custom = tmp_path / "custom"
    cfg = run_config(custom, mazes_per_step=1, episodes_per_maze=2)
    factory = lambda seed: [bandit(), bandit()]  # noqa: E731
    GRPOTrainer(load_model("tiny-llama"), MAZE, cfg, env_factory=factory).train(2)
    with pytest.raises(TrainingError, match="env_factory"):
        GRPOTrainer.resume(custom)
    assert GRPOTrainer.resume(custom, env_factory=factory).global_step == 2
    no_dir = GRPOTrainer(load_model("tiny-llama"), MAZE, GRPOConfig(progress=False))
    with pytest.raises(TrainingError, match="out_dir"):
        no_dir.save_checkpoint()
    # A new run pointed at a used folder would mix its metrics and checkpoints with the old.
    before = (custom / "metrics.jsonl").read_text()
    again = GRPOTrainer(load_model("tiny-llama"), MAZE, cfg, env_factory=factory)
    with pytest.raises(TrainingError, match=r"already holds a training run \(checkpoint-000002"):
        again.step()
    assert (custom / "metrics.jsonl").read_text() == before
