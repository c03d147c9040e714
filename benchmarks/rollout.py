"""Rollout throughput: the KV cache carried across turns vs re-encoding the history every turn.

Prints, side by side in one run on the paper's maze (100x100, 15 turns, wind 0.1):
  (a) re-encode: every turn runs the whole conversation so far through the model (batched,
      right-padded, logits only at the last position), as a loop around a cache-less forward
      would;
  (b) welfare_lens.rl.rollout: one KV cache per batch of episodes, each turn feeds only its new
      tokens (previous action, end-of-turn, user message, generation prompt);
the conversation tokens per second of each, the ratio b/a, whether both sampled the same moves
(they use the same per-episode generators), (c) the gain of shared group prefill (one maze, G
episodes: the first prompt's shared part encoded once) at G = 8 and 64, and then the share of a
GRPO training step spent in rollouts vs the update.

    .venv/bin/python benchmarks/rollout.py                      # tiny-llama (default)
    .venv/bin/python benchmarks/rollout.py --smollm2            # SmolLM2-135M-Instruct
    .venv/bin/python benchmarks/rollout.py --model tiny-qwen3 --mazes 2 --group 4
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

import welfare_lens as wl
from welfare_lens.maze import MazeConfig
from welfare_lens.rl import GRPOConfig, GRPOTrainer, maze_groups, rollout
from welfare_lens.rl.rollout import RolloutStats, episode_generator, forward_logits, pad_token_id


def rollout_reencode(
    model: Any, envs: list[Any], *, temperature: float = 0.7, seed: int = 0
) -> tuple[list[list[str]], int]:
    """The baseline: sample each turn from a fresh forward pass over the whole history."""
    tok = model.tokenizer
    ids_of = wl.action_token_ids(tok)
    actions = list("NESW")
    allowed = torch.tensor([ids_of[a] for a in actions])
    gens = [episode_generator(seed, i) for i in range(len(envs))]
    moves: list[list[str]] = [[] for _ in envs]
    pad = pad_token_id(tok)
    fed = 0
    with torch.no_grad():
        while not all(env.done for env in envs):
            rows = [wl.render_chat(tok, e.messages, add_generation_prompt=True) for e in envs]
            width = max(len(r) for r in rows)
            batch = torch.full((len(rows), width), pad, dtype=torch.long)
            last = torch.tensor([len(r) - 1 for r in rows])
            for i, r in enumerate(rows):
                batch[i, : len(r)] = r.input_ids
            fed += sum(len(r) for r in rows)
            keep, slot = torch.unique(last, sorted=True, return_inverse=True)
            logits = forward_logits(model, batch, keep)
            z = logits[torch.arange(len(rows)), slot][:, allowed].float() / temperature
            probs = torch.softmax(z, dim=-1)
            for i, env in enumerate(envs):
                choice = int(torch.multinomial(probs[i], 1, generator=gens[i]))
                moves[i].append(actions[choice])
                env.step(actions[choice])
    return moves, fed


def shared_prefill_line(model: Any, cfg: MazeConfig, group: int) -> None:
    """(c) One maze x G episodes with and without shared group prefill, both episode seedings."""
    for same_seed in (False, True):
        cost = {}
        for share in (False, True):
            stats = RolloutStats()
            envs = maze_groups(cfg, 1, group, seed=3, shared_episode_seed=same_seed)
            rollout(
                model,
                envs,
                seed=4,
                groups=[0] * group,
                stats=stats,
                share_prefill=share,
                batch_size=group,
            )
            cost[share] = stats
        off, on = cost[False], cost[True]
        print(
            f"(c) G={group:>3} shared_episode_seed={same_seed!s:<5}: shared prefill fed "
            f"{on.fed_tokens} vs {off.fed_tokens} tokens ({off.fed_tokens / on.fed_tokens:.3f}x "
            f"fewer), {on.seconds:.2f} vs {off.seconds:.2f} s ({off.seconds / on.seconds:.2f}x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--smollm2", action="store_true", help="use smollm2-135m-instruct")
    parser.add_argument("--mazes", type=int, default=None)
    parser.add_argument("--group", type=int, default=4, help="episodes per maze")
    parser.add_argument("--turns", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--train-steps", type=int, default=2)
    parser.add_argument(
        "--prefill-groups", type=int, nargs="*", default=[8, 64], help="G for the (c) lines"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    name = "smollm2-135m-instruct" if args.smollm2 else args.model
    mazes = args.mazes if args.mazes is not None else (1 if args.smollm2 else 2)
    model = wl.load_model(name)
    cfg = MazeConfig(turns=args.turns)
    n = mazes * args.group
    print(
        f"model {name}, {n} episodes ({mazes} mazes x {args.group}), {args.turns} turns, "
        f"{torch.get_num_threads()} torch threads"
    )

    rollout(model, maze_groups(cfg, 1, 1, seed=99), seed=0)  # warm-up

    start = time.perf_counter()
    episodes = rollout(model, maze_groups(cfg, mazes, args.group, seed=1), seed=2)
    cached_s = time.perf_counter() - start
    conv_tokens = sum(len(e.input_ids) for e in episodes)
    fed_cached = sum(e.fed_tokens for e in episodes)

    start = time.perf_counter()
    moves, fed_full = rollout_reencode(model, maze_groups(cfg, mazes, args.group, seed=1), seed=2)
    full_s = time.perf_counter() - start
    same = sum(m == e.actions for m, e in zip(moves, episodes, strict=True))

    a = conv_tokens / full_s
    b = conv_tokens / cached_s
    print(f"conversation tokens: {conv_tokens} ({conv_tokens / n:.0f} per episode)")
    print(f"(a) re-encode every turn: {full_s:8.2f} s  {a:9.0f} tok/s  (fed {fed_full} tokens)")
    print(
        f"(b) KV cache across turns: {cached_s:7.2f} s  {b:9.0f} tok/s  (fed {fed_cached} tokens)"
    )
    print(f"ratio b/a: {b / a:.1f}x   same moves in {same}/{n} episodes")

    for g in args.prefill_groups:
        shared_prefill_line(model, cfg, g)

    trainer = GRPOTrainer(
        model,
        cfg,
        GRPOConfig(
            mazes_per_step=mazes,
            episodes_per_maze=args.group,
            lr=1e-4,
            micro_batch_size=2 if args.smollm2 else None,
            progress=False,
        ),
    )
    history = trainer.train(args.train_steps)
    roll = sum(h["rollout_s"] for h in history)
    upd = sum(h["update_s"] for h in history)
    total = sum(h["step_s"] for h in history)
    print(
        f"GRPO step (LoRA r32, {args.train_steps} steps): {total / len(history):.2f} s/step, "
        f"rollouts {100 * roll / total:.0f}%, update {100 * upd / total:.0f}%, "
        f"other {100 * (total - roll - upd) / total:.0f}%"
    )


if __name__ == "__main__":
    main()
