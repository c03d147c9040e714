"""A toy bandit on a tiny model: the trainer must learn it within seconds on a CPU (C.3 (d))."""

from __future__ import annotations

import time
from typing import Any

import pytest

from welfare_lens.models import load_model
from welfare_lens.rl import GRPOConfig, GRPOTrainer


@pytest.mark.parametrize(
    ("finetune", "lr", "good"),
    [("lora", 1e-2, "W"), ("full", 1e-3, "E")],
)
def test_bandit_reward_at_least_doubles_within_a_cpu_minute(
    bandit: Any, finetune: str, lr: float, good: str
) -> None:
    # One turn, reward 1 for the move `good` and 0 otherwise. (A tiny random model's RMSNorm caps
    # how far its residual stream can tilt the logits, so LoRA tops out near P = 0.7 there.)
    cfg = GRPOConfig(
        mazes_per_step=4,
        episodes_per_maze=8,
        lr=lr,
        finetune=finetune,  # type: ignore[arg-type]
        lora_r=8,
        lora_alpha=16,
        entropy_beta0=0.0,
        progress=False,
    )
    trainer = GRPOTrainer(
        load_model("tiny-llama"),
        None,
        cfg,
        env_factory=lambda seed: [bandit(good=good) for _ in range(32)],
    )
    before = trainer.evaluate(n_mazes=4, episodes_per_maze=8)["reward_mean"]
    started = time.perf_counter()
    history = trainer.train(25)
    elapsed = time.perf_counter() - started
    after = trainer.evaluate(n_mazes=4, episodes_per_maze=8)["reward_mean"]
    assert elapsed < 60
    assert 0.05 < before < 0.45
    assert after >= 2 * before
    assert history[-1][f"frac_{good}"] > history[0].get(f"frac_{good}", 0.0)
