"""A GRPO run on SmolLM2-135M-Instruct that fits a CPU hour, with a held-out evaluation.

Evaluates the untrained policy on held-out mazes, trains with Dr. GRPO + LoRA for a wall-clock
budget, evaluates again on the same mazes, and prints mean episode return +- standard error and
Gold/Mold tiles per episode, before and after. The prompt format is the compact one (not the
paper's verbose shuffled sentence, which a 135M model does not learn in a CPU hour; see the
README's "Learning signal" notes).

    .venv/bin/python examples/train_smollm2_cpu.py --minutes 40 --out runs/smollm2_cpu
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

import welfare_lens as wl


def summary(metrics: dict[str, Any], n: int) -> dict[str, float]:
    std = float(metrics["reward_std"])
    return {
        "return_mean": float(metrics["reward_mean"]),
        "return_se": std / math.sqrt(n),
        "gold_per_episode": float(metrics["gold_per_episode"]),
        "mold_per_episode": float(metrics["mold_per_episode"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--minutes", type=float, default=40.0)
    parser.add_argument("--eval-mazes", type=int, default=200)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--mazes-per-step", type=int, default=2)
    parser.add_argument("--episodes-per-maze", type=int, default=8)
    parser.add_argument("--micro-batch-size", type=int, default=2, help="episodes per backward")
    parser.add_argument("--no-baseline", action="store_true", help="skip the untrained evaluation")
    parser.add_argument("--out", default="runs/smollm2_cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    model = wl.load_model(args.model)
    maze_cfg = wl.maze.MazeConfig(prompt_format="compact")
    config = wl.rl.GRPOConfig(
        loss="dr_grpo",
        lr=args.lr,
        mazes_per_step=args.mazes_per_step,
        episodes_per_maze=args.episodes_per_maze,
        entropy_beta0=0.01,
        micro_batch_size=args.micro_batch_size,
        out_dir=str(out),
        checkpoint_every=5,
        progress=False,
    )
    trainer = wl.rl.GRPOTrainer(model, maze_cfg, config)
    report: dict[str, Any] = {"config": config.to_dict(), "maze": maze_cfg.to_dict()}

    if not args.no_baseline:
        start = time.perf_counter()
        before = trainer.evaluate(n_mazes=args.eval_mazes, episodes_per_maze=1)
        report["untrained"] = summary(before, args.eval_mazes)
        report["eval_seconds"] = time.perf_counter() - start
        print("untrained:", json.dumps(report["untrained"]), flush=True)

    start = time.perf_counter()
    while time.perf_counter() - start < args.minutes * 60:
        metrics = trainer.step()
        print(
            f"step {trainer.global_step}: reward {metrics['reward_mean']:+.2f} "
            f"gold {metrics['gold_per_episode']:.2f} mold {metrics['mold_per_episode']:.2f} "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    report["train_steps"] = trainer.global_step
    report["train_seconds"] = time.perf_counter() - start
    trainer.save_checkpoint()

    after = trainer.evaluate(n_mazes=args.eval_mazes, episodes_per_maze=1)
    report["trained"] = summary(after, args.eval_mazes)
    print("trained:", json.dumps(report["trained"]), flush=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
