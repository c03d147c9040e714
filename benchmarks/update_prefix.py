"""GRPO update cost: every episode encoded in full vs a group's shared first prompt encoded once.

For each maze length (turns), samples one batch of ``--mazes`` x ``--group`` episodes with the
compact prompt, then times one gradient computation (forward + backward over every micro-batch,
``GRPOTrainer.compute_gradients``) with ``share_update_prefix`` off and on, on the same
episodes, and prints the times, the ratio and the largest gradient difference.

    .venv/bin/python benchmarks/update_prefix.py                   # SmolLM2, 1 and 5 turns
    .venv/bin/python benchmarks/update_prefix.py --model tiny-llama --turns 1 3
"""

from __future__ import annotations

import argparse
import time

import torch

import welfare_lens as wl
from welfare_lens.maze import MazeConfig
from welfare_lens.rl import GRPOConfig, GRPOTrainer, rollout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--turns", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--mazes", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument(
        "--shared-episode-seed",
        action="store_true",
        help="a group's episodes see the same clause orders (identical first prompts)",
    )
    args = parser.parse_args()
    print(f"{args.model}, {args.mazes} mazes x {args.group} episodes, micro-batch "
          f"{args.micro_batch_size}, {torch.get_num_threads()} threads, shared episode seed "
          f"{args.shared_episode_seed}")  # fmt: skip
    for turns in args.turns:
        maze = MazeConfig(turns=turns, prompt_format="compact")
        times, grads = {}, {}
        episodes = None
        for share in (False, True):
            cfg = GRPOConfig(
                mazes_per_step=args.mazes,
                episodes_per_maze=args.group,
                micro_batch_size=args.micro_batch_size,
                lr=3e-4,
                share_update_prefix=share,
                shared_episode_seed=args.shared_episode_seed,
                progress=False,
            )
            trainer = GRPOTrainer(wl.load_model(args.model), maze, cfg)
            if episodes is None:
                envs = trainer._envs(11, args.mazes, args.group)
                episodes = rollout(trainer.model, envs, seed=11)
            start = time.perf_counter()
            trainer.compute_gradients(episodes)
            times[share] = time.perf_counter() - start
            grads[share] = torch.cat([p.grad.flatten() for p in trainer.trainable_parameters])
            del trainer
        tokens = sum(int(e.input_ids.shape[0]) for e in episodes or [])
        diff = float((grads[True] - grads[False]).abs().max() / grads[False].abs().max())
        print(
            f"turns {turns:>2}: {tokens / len(episodes or [1]):6.0f} tokens per episode | full "
            f"{times[False]:7.1f} s | shared prefix {times[True]:7.1f} s | ratio "
            f"{times[False] / times[True]:5.2f}x | max |grad diff| / max |grad| {diff:.1e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
