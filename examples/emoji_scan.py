"""Emoji neutrality scan (paper appendix J.2, Table 22): is the office trio affectively neutral?

On the maze-naive model: the CAD and prompt sentiment vectors (appendix F.1), per-emoji vectors
for N candidate emoji (always including the paper's trio 📇 📐 🧾 and an illustrative dessert
trio 🍰 🍩 🍪) read at the last direction letter of maze conversations whose final move lands on
a tile shown as that emoji (welfare_lens.analysis.emoji_neutrality; the paper does not specify
this step, B-14), their cosines with both sentiment vectors, the neutrality ranking, the
within-trio spreads (paper: office 0.020 CAD / 0.006 prompt; its unnamed desserts 0.024 /
0.145), the mean rank of the hand-labelled valenced emoji (positive controls) and the best
trios of this model. Writes <out>/scan.json, the emoji vectors and the sentiment vectors.

The default size (200 emoji x 45 samples, 9,000 conversations) runs about 380k SmolLM2 tokens,
the shared history once and 16 emoji variants per forward pass: about 14 minutes at ~450
tokens/s on a 2-core CPU (the script prints its estimate first; on tiny-llama with one thread
the whole run takes 41 s).

    .venv/bin/python examples/emoji_scan.py --model smollm2-135m-instruct
    .venv/bin/python examples/emoji_scan.py --model tiny-llama --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import welfare_lens as wl
from welfare_lens.analysis.emoji_neutrality import (
    DEFAULT_PER_EMOJI,
    PAPER_TRIO,
    emoji_base_trajectories,
    emoji_vectors,
    estimate_emoji_tokens,
    load_emoji_candidates,
    neutrality_scan,
    pick_candidates,
)
from welfare_lens.analysis.sentiment_vectors import sentiment_control_vectors

#: An illustrative dessert trio (🍰 shortcake, 🍩 doughnut, 🍪 cookie): the paper compares the
#: office trio with "desserts" (Table 22) without naming them.
DESSERT_TRIO = ("\U0001f370", "\U0001f369", "\U0001f36a")

#: Table 22 of the paper (Qwen3-4B-Instruct-2507): within-trio spreads, CAD / prompt.
PAPER_SPREADS = {"office": (0.020, 0.006), "desserts": (0.024, 0.145)}


def _print_rows(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        cad = "nan" if row["cos_cad"] is None else f"{row['cos_cad']:+.4f}"
        prompt = "nan" if row["cos_prompt"] is None else f"{row['cos_prompt']:+.4f}"
        print(
            f"  {row['rank']:>4}  {row['emoji']}  {row['name'][:30]:<30} {row['category']:<10} "
            f"CAD {cad}  prompt {prompt}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--n-emoji", type=int, default=200, help="candidates, trio included")
    parser.add_argument("--per-emoji", type=int, default=DEFAULT_PER_EMOJI)
    parser.add_argument("--layer", type=int, default=None, help="default floor(2L/3)")
    parser.add_argument("--seed", type=int, default=wl.maze.PAPER_EXTRACTION_SEED)
    parser.add_argument("--candidates", type=Path, default=None, help="emoji JSON file")
    parser.add_argument("--budget", type=int, default=400_000, help="token budget to warn at")
    parser.add_argument("--pool", type=int, default=30, help="most neutral emoji for best trios")
    parser.add_argument("--batch-size", type=int, default=16, help="emoji variants per pass")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="default runs/emoji_scan_<model>")
    args = parser.parse_args()
    out = args.out or Path("runs") / f"emoji_scan_{args.model}"
    out.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()

    model = wl.load_model(args.model)
    total_layers = int(model.cfg.n_layers)
    layer = args.layer if args.layer is not None else (2 * total_layers) // 3
    candidates = pick_candidates(
        args.n_emoji,
        candidates=load_emoji_candidates(args.candidates),
        include=(*PAPER_TRIO, *DESSERT_TRIO),
    )
    base = emoji_base_trajectories(wl.maze.MazeConfig(), args.per_emoji, args.seed)
    clock = time.perf_counter()
    tokens = estimate_emoji_tokens(model, base, candidates, batch_size=args.batch_size)
    print(
        f"{args.model}: {len(candidates)} emoji x {len(base)} samples, about {tokens:,} tokens "
        f"to encode (estimated in {time.perf_counter() - clock:.1f} s); layer {layer} of "
        f"{total_layers}",
        flush=True,
    )
    if tokens > args.budget:
        fit = max(1, int(args.per_emoji * args.budget / tokens))
        print(f"  over the budget of {args.budget:,} tokens: --per-emoji {fit} fits", flush=True)
    seconds: dict[str, float] = {}

    clock = time.perf_counter()
    sentiment = sentiment_control_vectors(model, progress=False)
    seconds["sentiment"] = time.perf_counter() - clock
    sentiment.save(out / "sentiment")

    clock = time.perf_counter()
    vecs = emoji_vectors(model, candidates, base=base, batch_size=args.batch_size)
    seconds["emoji_vectors"] = time.perf_counter() - clock
    vecs.save(out / "emoji_vectors")

    scan = neutrality_scan(vecs, sentiment, sentiment, layer, candidates=candidates)
    trio = scan.trio_spread(PAPER_TRIO)
    desserts = scan.trio_spread(DESSERT_TRIO)
    best = scan.best_trios(5, pool=args.pool)
    best_distinct = scan.best_trios(5, pool=args.pool, distinct_categories=True)
    # Spreads of the office trio at every layer: the paper's layer for J.2 is not given.
    per_layer = {
        str(ell): neutrality_scan(vecs, sentiment, sentiment, ell).trio_spread(PAPER_TRIO).to_dict()
        for ell in range(total_layers)
    }
    # Positive controls: the hand-labelled valenced emoji should rank as less neutral.
    valence = {c.emoji: c.valence for c in candidates}
    controls: dict[str, dict[str, float | int]] = {}
    for label in ("neutral", "positive", "negative"):
        members = [e for e in scan.emoji if valence.get(e) == label]
        if members:
            ranks = [scan.rank_of(e) for e in members]
            scores = [float(scan.score[scan.emoji.index(e)]) for e in members]
            controls[label] = {
                "n": len(members),
                "mean_rank": float(np.mean(ranks)),
                "mean_score": float(np.nanmean(scores)),
            }
    seconds["total"] = time.perf_counter() - start
    seconds["tokens_per_second"] = tokens / max(seconds["emoji_vectors"], 1e-9)

    print(
        f"time: sentiment {seconds['sentiment']:.1f} s, emoji vectors "
        f"{seconds['emoji_vectors']:.1f} s (~{seconds['tokens_per_second']:.0f} tokens/s), "
        f"total {seconds['total']:.1f} s",
        flush=True,
    )
    print(f"{scan!r}", flush=True)
    print(
        f"office trio at layer {layer}: ranks {trio.ranks} of {len(scan.emoji)}; spread CAD "
        f"{trio.cad:.3f}, prompt {trio.prompt:.3f} (paper: office {PAPER_SPREADS['office']}, "
        f"desserts {PAPER_SPREADS['desserts']})",
        flush=True,
    )
    print(
        f"dessert trio {' '.join(DESSERT_TRIO)}: ranks {desserts.ranks}; spread CAD "
        f"{desserts.cad:.3f}, prompt {desserts.prompt:.3f}",
        flush=True,
    )
    print("valence controls (mean rank, mean score):", json.dumps(controls), flush=True)
    print("most neutral:", flush=True)
    _print_rows(scan.table(top=10))
    print("least neutral:", flush=True)
    _print_rows(scan.table()[-10:])
    print("best trios:", "; ".join(repr(t) for t in best), flush=True)
    print("best trios, distinct categories:", "; ".join(repr(t) for t in best_distinct))

    report = {
        "model": args.model,
        "model_id": vecs.metadata.model_id,
        "n_layers": total_layers,
        "layer": layer,
        "n_emoji": len(candidates),
        "per_emoji": len(base),
        "batch_size": args.batch_size,
        "seed": args.seed,
        "estimated_tokens": tokens,
        "seconds": seconds,
        "paper_spreads": PAPER_SPREADS,
        "office_trio": trio.to_dict(),
        "office_trio_per_layer": per_layer,
        "dessert_trio": desserts.to_dict(),
        "valence_controls": controls,
        "best_trios": [t.to_dict() for t in best],
        "best_trios_distinct_categories": [t.to_dict() for t in best_distinct],
        "scan": scan.to_dict(),
        "candidates": [c.to_dict() for c in candidates],
    }
    path = out / "scan.json"
    path.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
