"""Capture throughput on SmolLM2: what length-sorting and stopping after the last block buy.

Prints, side by side in one run, tokens per second of
  (a) naive: one conversation per forward pass, full forward with unembedding (run_with_cache),
  (b) welfare_lens.capture: length-sorted batches, capture hooks only, stop after the last block,
and the ratio b/a. Conversations: maze-like, 1..15 turns, as in the paper's extraction set.

    .venv/bin/python benchmarks/capture.py [--n 30] [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import random
import time

import torch

import welfare_lens as wl
from welfare_lens.capture import capture

TILES = ("📇", "📐", "🧾")


def conversation(turns: int, rng: random.Random) -> list[dict[str, str]]:
    messages = []
    for _ in range(turns):
        clauses = [f"to the {d} is {rng.choice(TILES)}" for d in ("north", "east", "south", "west")]
        rng.shuffle(clauses)
        text = (
            f"You are standing on {rng.choice(TILES)}. "
            + ", ".join(clauses)
            + ". Which way do you go? Answer with N, E, S or W."
        )
        messages += [
            {"role": "user", "content": text},
            {"role": "assistant", "content": rng.choice("NESW")},
        ]
    return messages


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = wl.load_model(args.model)
    rng = random.Random(0)
    items = [
        (conversation(1 + i % 15, rng), ("mold", "gold", "path")[i % 3]) for i in range(args.n)
    ]
    n_tokens = sum(len(wl.render_chat(model.tokenizer, m)) for m, _ in items)
    names = [wl.hook_name(layer) for layer in range(model.cfg.n_layers)]

    start = time.perf_counter()
    for messages, _ in items:
        ids = wl.render_chat(model.tokenizer, messages).input_ids[None]
        _, cache = model.run_with_cache(ids, names_filter=lambda name: name in names)
        torch.stack([cache[name][0, -1] for name in names])
    naive = time.perf_counter() - start

    start = time.perf_counter()
    capture(model, items, batch_size=args.batch_size, progress=False)
    ours = time.perf_counter() - start

    print(f"{args.n} conversations, {n_tokens} tokens, {model.cfg.n_layers} layers")
    print(f"naive one-by-one run_with_cache : {naive:7.1f} s  {n_tokens / naive:7.0f} tok/s")
    print(f"capture (sorted, stop at block) : {ours:7.1f} s  {n_tokens / ours:7.0f} tok/s")
    print(f"speed-up                        : {naive / ours:7.2f}x")
    print(f"extrapolated 15,000 trajectories: {15000 / args.n * ours / 3600:7.1f} h (capture)")


if __name__ == "__main__":
    main()
