"""Extraction throughput: welfare_lens capture vs the two obvious alternatives, side by side.

On the same synthetic maze trajectories (paper design, lengths 1..15), prints tokens/s of
  (a) bridge.run_with_cache with all hooks, one conversation at a time (what a TL user writes),
  (b) Hugging Face forward with output_hidden_states=True, one conversation at a time,
  (c) wl.capture with batch_size 1 and (d) with batch_size 8,
  (e) wl.capture(branches=True) on Path walks: samples/s instead of tokens/s, against (c),
  (f) tokens encoded per usable sample and seconds per 1,000 samples: the paper's independent
      trajectories vs shared-prefix samples (wl.maze.shared_prefix_trajectories),
and the ratios the issue asks for: (c)/(a) >= 2.0 and (c)/(b) >= 1.0.

    .venv/bin/python benchmarks/extract.py [--model smollm2-135m-instruct] [--n 45] [--walks 4]
"""

from __future__ import annotations

import argparse
import time

import torch

import welfare_lens as wl
from welfare_lens.capture import distinct_prefix_tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument(
        "--n", type=int, default=45, help="trajectories (a multiple of 3; 45 = each length 1..15)"
    )
    parser.add_argument("--walks", type=int, default=4, help="15-turn Path walks for (e)")
    parser.add_argument("--shared", type=int, default=100, help="per class for (f)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = wl.load_model(args.model)
    cfg = wl.maze.MazeConfig()
    trajs = wl.maze.synthetic_trajectories(cfg, per_class=args.n // 3, seed=474747)
    rendered = [wl.render_chat(model.tokenizer, t.messages) for t in trajs]
    n_tokens = sum(len(r) for r in rendered)
    n_layers = model.cfg.n_layers
    names = [wl.hook_name(layer) for layer in range(n_layers)]
    print(f"{args.model}: {len(trajs)} trajectories, {n_tokens} tokens, {n_layers} layers")

    def timed(label: str, run: object) -> float:
        start = time.perf_counter()
        run()  # type: ignore[operator]
        seconds = time.perf_counter() - start
        print(f"  {label:<44} {seconds:7.1f} s {n_tokens / seconds:8.0f} tok/s")
        return seconds

    def full_cache() -> None:
        for r in rendered:
            _, cache = model.run_with_cache(r.input_ids[None])
            torch.stack([cache[name][0, -1] for name in names])

    def hf_hidden() -> None:
        for r in rendered:
            out = model.original_model(r.input_ids[None], output_hidden_states=True)
            torch.stack([h[0, -1] for h in out.hidden_states[1:]])

    t_cache = timed("(a) run_with_cache, all hooks, one by one", full_cache)
    t_hf = timed("(b) HF output_hidden_states, one by one", hf_hidden)
    t_c1 = timed(
        "(c) wl.capture batch_size=1",
        lambda: wl.capture(model, trajs, batch_size=1, progress=False),
    )
    timed(
        "(c') the same without prefix sharing",
        lambda: wl.capture(model, trajs, share_prefixes=False, progress=False),
    )
    t_c8 = timed(
        "(d) wl.capture batch_size=8",
        lambda: wl.capture(model, trajs, batch_size=8, progress=False),
    )
    best = min(t_c1, t_c8)
    print(f"  capture / run_with_cache(all hooks): {t_cache / best:5.2f}x   (target >= 2.0)")
    print(f"  capture / HF hidden states:          {t_hf / best:5.2f}x   (target >= 1.0)")
    print(f"  samples/s, paper design:             {len(trajs) / best:7.2f}")

    walks = wl.maze.synthetic_trajectories(
        cfg, per_class=args.walks, classes=("path",), lengths=[15]
    )
    start = time.perf_counter()
    stats = wl.capture(model, walks, branches=True, progress=False)
    seconds = time.perf_counter() - start
    n_samples = sum(stats.counts.values())
    print(
        f"  (e) branches: {args.walks} walks -> {n_samples} samples {stats.counts} in {seconds:.1f} s"
    )
    print(
        f"  samples/s, branching design:         {n_samples / seconds:7.2f}   "
        f"({n_samples / seconds / (len(trajs) / best):.1f}x the paper design)"
    )
    shared_prefix_line(model, trajs, t_c1, args.shared)


def shared_prefix_line(model: object, trajs: list[object], t_independent: float, n: int) -> None:
    """(f) Independent trajectories vs shared-prefix samples: tokens and time per sample.

    Both sides use the same encoder (wl.capture's defaults), so the ratio is the design's:
    ``trajs`` are the paper's independent trajectories timed in (c), lengths balanced over
    1..15 (with --n 45 each class has every length once), against shared-prefix samples.
    """
    shared = wl.maze.shared_prefix_trajectories(per_class=n)
    start = time.perf_counter()
    wl.capture(model, shared, progress=False)
    t_shared = time.perf_counter() - start
    tok_ind = sum(len(wl.render_chat(model.tokenizer, t.messages)) for t in trajs) / len(trajs)  # type: ignore[attr-defined]
    tok_sh = distinct_prefix_tokens(model, shared) / len(shared)
    per_ind = 1000 * t_independent / len(trajs)
    per_sh = 1000 * t_shared / len(shared)
    print(f"  (f) independent: {tok_ind:7.1f} tokens/sample, {per_ind:7.1f} s per 1,000 samples")
    print(f"      shared-prefix: {tok_sh:7.1f} tokens/sample, {per_sh:7.1f} s per 1,000 samples")
    print(
        f"      ratio: {tok_ind / tok_sh:5.2f}x fewer tokens (target >= 5), "
        f"{per_ind / per_sh:5.2f}x less time (target >= 4)"
    )


if __name__ == "__main__":
    main()
