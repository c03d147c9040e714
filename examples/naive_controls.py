"""Control vectors u of a maze-naive model, and every analysis the paper runs on them.

On the untrained model: welfare vectors u from the paper's extraction design (sampled with
shared prefixes), a held-out set for the steering layer L*, antiparallelism cos(u_Mold, u_Gold)
per layer, the logit lens of u_Mold and u_Gold at floor(5L/6), the 171 emotion vectors, their
PCA against the shipped valence ratings, and the emotion alignment of u. Writes every number to
<out>/controls.json and the vectors to <out>/.

    .venv/bin/python examples/naive_controls.py --model gemma-3-270m --per-class 400
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
from welfare_lens.analysis import (
    antiparallelism,
    emotion_alignment,
    emotion_pca,
    emotion_vectors,
    load_emotions,
    logit_lens_vectors,
    select_steering_layer,
)
from welfare_lens.capture import iter_activations


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--per-class", type=int, default=400)
    parser.add_argument("--heldout-per-class", type=int, default=150)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--vectors", type=Path, default=None, help="use these u instead")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a trained run (then v)")
    parser.add_argument("--emotions", type=Path, default=None, help="reuse these emotion vectors")
    parser.add_argument("--prompt-format", default="paper", choices=["paper", "compact"])
    parser.add_argument("--control", type=Path, default=None, help="control u for v's analyses")
    args = parser.parse_args()
    out = args.out or Path("runs") / f"controls_{args.model}"
    out.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    model = wl.load_model(args.model)
    if args.checkpoint is not None:
        model = wl.rl.load_checkpoint(args.checkpoint, model)
    control = wl.ConceptVectors.load(args.control) if args.control is not None else None
    maze_cfg = wl.maze.MazeConfig(prompt_format=args.prompt_format)
    report: dict[str, Any] = {
        "model": args.model,
        "checkpoint": str(args.checkpoint),
        "prompt_format": args.prompt_format,
    }
    clock = time.perf_counter()

    if args.vectors is not None:
        u = wl.ConceptVectors.load(args.vectors)
    else:
        trajs = wl.maze.shared_prefix_trajectories(maze_cfg, per_class=args.per_class)
        stats = wl.capture(model, trajs)
        stats.save(out / "stats")
        u = wl.welfare_vectors(stats)
        u.save(out / "u")
        report["extraction"] = {"samples": len(trajs), "seconds": time.perf_counter() - clock}
    clock = time.perf_counter()
    # Held-out samples from other mazes (another seed) for L* (A4).
    held = wl.maze.shared_prefix_trajectories(
        maze_cfg, per_class=args.heldout_per_class, seed=990000
    )
    acts, labels = [], []
    for batch, batch_labels, _ in iter_activations(model, held):
        acts.append(batch)
        labels.extend(batch_labels)
    heldout = torch.cat(acts).float()
    l_star = {c: select_steering_layer(u, c, heldout, labels) for c in ("mold", "gold")}
    report["l_star"] = {
        c: {
            "layer": s.layer,
            "best_auroc_layer": s.best_auroc_layer,
            "best_d_layer": s.best_d_layer,
            "best_overlap_layer": s.best_overlap_layer,
            "auroc_at_l_star": float(s.auroc[s.layer]),
            "d_at_l_star": float(s.d[s.layer]),
        }
        for c, s in l_star.items()
    }
    anti = antiparallelism(u, control, steering_layer=[l_star["mold"].layer, l_star["gold"].layer])
    report["antiparallelism"] = anti.to_dict()
    cos = np.asarray(anti.trained.per_layer)
    report["cos_summary"] = {
        "min": float(cos.min()),
        "argmin": int(cos.argmin()),
        "mean": float(cos.mean()),
        "per_layer": [round(float(c), 4) for c in cos],
    }
    lens = logit_lens_vectors(model, u, names=["mold", "gold"], k=10, norm="gain")
    report["logit_lens"] = {name: r.to_dict() for name, r in lens.items()}
    report["selection_seconds"] = time.perf_counter() - clock
    print(json.dumps({k: report[k] for k in ("l_star", "cos_summary")}, indent=1), flush=True)
    for name, r in lens.items():
        print(name, "top:", r.top_tokens, "bottom:", r.bottom_tokens, flush=True)

    clock = time.perf_counter()
    if args.emotions is not None:
        emotions = wl.ConceptVectors.load(args.emotions)
    else:
        emotions = emotion_vectors(model)
        report["emotion_seconds"] = time.perf_counter() - clock
        emotions.save(out / "emotions")
    pca = emotion_pca(emotions, load_emotions(), v=u)
    report["emotion_pca"] = pca.to_dict() if hasattr(pca, "to_dict") else repr(pca)
    align = emotion_alignment(u, emotions, control=control)
    report["emotion_alignment"] = align.to_dict() if hasattr(align, "to_dict") else repr(align)
    print(pca, align, sep="\n", flush=True)
    (out / "controls.json").write_text(json.dumps(report, indent=1, default=float))
    print("wrote", out / "controls.json")


if __name__ == "__main__":
    main()
