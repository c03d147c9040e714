"""cos(u_Mold, u_Gold) of a maze-naive model under the paper's design and under minimal pairs.

The paper's extraction design lets the classes differ in what the model saw (a Gold-final
sample's last prompt always shows Gold), so an untrained model's one-vs-rest vectors can come
out antiparallel from the prompts alone. The minimal-pair design branches one final move per
class off the same prefix, so the classes differ only in the chosen move. For each design this
script samples ``--per-class`` trajectories per class (shared prefixes), captures them
(checkpointed: a killed run resumes), and writes to ``--out``:

- ``<design>_stats`` and ``<design>_u`` (statistics and vectors),
- ``designs.json``: per layer cos(u_Mold, u_Gold), its 95% maze-bootstrap interval and the
  no-signal floor; the composition table and whether it is flagged; the seen-tile cosines;
  samples, mazes and encoded tokens per sample,
- ``designs.md`` (the side-by-side table), ``designs.html`` and ``designs.png`` (the figure).

With ``--checkpoint RUN`` the trained model's v is extracted too, from the same trajectories
under both designs, so the table has four columns: v and the naive control u, each under the
paper's design and under minimal pairs (``--prompt-format`` must be the run's).

    .venv/bin/python examples/design_comparison.py --model smollm2-135m-instruct --per-class 500
    .venv/bin/python examples/design_comparison.py --model gemma-3-270m --per-class 300 \\
        --paper-stats runs/extract_scale/per_class_500/stats   # reuse a paper-design capture
    .venv/bin/python examples/design_comparison.py --checkpoint runs/smollm2_recipe \\
        --prompt-format compact --per-class 300              # trained v beside naive u
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
from welfare_lens.analysis.composition import CompositionTable, seen_tile_cosines, seen_tile_vectors
from welfare_lens.analysis.geometry import (
    bootstrap_ci,
    bootstrap_cosines,
    cosine_per_layer,
    noise_cosine,
)
from welfare_lens.capture import distinct_prefix_tokens

DESIGNS = {"paper": "shared_prefix", "minimal_pairs": "minimal_pairs"}
CURVE_KEYS = ("per_layer", "ci_low", "ci_high", "noise_floor")


def extract(
    model: Any,
    design: str,
    per_class: int,
    out: Path,
    reuse: Path | None,
    maze_cfg: wl.maze.MazeConfig | None = None,
    prefix: str = "",
) -> tuple[wl.ClassStatistics, dict[str, Any]]:
    """Statistics of one design: loaded from ``reuse`` or ``out`` if there, else captured."""
    target = out / f"{prefix}{design}_stats"
    info: dict[str, Any] = {}
    for path in (reuse, target):
        if path is not None and Path(f"{path}.safetensors").exists():
            stats = wl.ClassStatistics.load(path)
            info["source"] = str(path)
            break
    else:
        trajs = wl.maze.shared_prefix_trajectories(
            maze_cfg, per_class=per_class, design=DESIGNS[design]
        )
        info["mazes"] = len({t.maze_seed for t in trajs})
        info["tokens_per_sample"] = distinct_prefix_tokens(model, trajs) / len(trajs)
        start = time.perf_counter()
        stats = wl.capture(model, trajs, checkpoint=out / f"{prefix}{design}_checkpoint")
        info["capture_s"] = time.perf_counter() - start
        stats.save(target)
        info["source"] = str(target)
    info["counts"] = dict(stats.counts)
    return stats, info


def summarise(stats: wl.ClassStatistics, n_boot: int, role: str = "control") -> dict[str, Any]:
    """Per-layer cosine with bootstrap interval, the no-signal floor and the composition check."""
    u = wl.welfare_vectors(stats, role=role)
    cos = cosine_per_layer(u["mold"], u["gold"])
    lo, hi = bootstrap_ci(bootstrap_cosines(stats, n_boot=n_boot, seed=0))
    out: dict[str, Any] = {
        "per_layer": cos.tolist(),
        "ci_low": lo.tolist(),
        "ci_high": hi.tolist(),
        "noise_floor": noise_cosine(stats).tolist(),
        "min": float(cos.min()),
        "argmin": int(cos.argmin()),
        "mean": float(cos.mean()),
    }
    # Eq. 3 (Path-reference) vectors share the Path mean, so their no-signal floor is +0.5.
    ref = wl.welfare_vectors(stats, "path_reference", role=role)
    ref_cos = cosine_per_layer(ref["mold"], ref["gold"])
    out["path_reference"] = {
        "per_layer": ref_cos.tolist(),
        "noise_floor": noise_cosine(stats, method="path_reference").tolist(),
        "min": float(ref_cos.min()),
        "argmin": int(ref_cos.argmin()),
        "mean": float(ref_cos.mean()),
    }
    if "composition" in stats.info:
        table = CompositionTable.from_dict(stats.info["composition"])
        out["composition"] = table.to_dict()
        out["composition_flagged"] = table.flagged
        if "composition.sum_xc" in stats.extra:
            seen = seen_tile_vectors(stats)
            out["seen_tile_cosines"] = seen_tile_cosines(seen, u)
    return out


def markdown(model_name: str, results: dict[str, dict[str, Any]]) -> str:
    """The side-by-side table: one row per layer, one column pair per design."""
    names = list(results)
    head = "| layer | " + " | ".join(f"{n}: cos [95% CI]" for n in names) + " |"
    lines = [f"### {model_name}", "", head, "|---" * (len(names) + 1) + "|"]
    n_layers = len(results[names[0]]["per_layer"])
    for layer in range(n_layers):
        cells = [
            f"{r['per_layer'][layer]:+.3f} [{r['ci_low'][layer]:+.3f}, {r['ci_high'][layer]:+.3f}]"
            for r in results.values()
        ]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    lines.append(
        "| min (layer) | "
        + " | ".join(f"{r['min']:+.3f} ({r['argmin']})" for r in results.values())
        + " |"
    )
    lines.append("| mean | " + " | ".join(f"{r['mean']:+.3f}" for r in results.values()) + " |")
    lines.append(
        "| no-signal floor (mean over layers) | "
        + " | ".join(f"{np.nanmean(r['noise_floor']):+.3f}" for r in results.values())
        + " |"
    )
    lines.append(
        "| Eq. 3 (Path-reference) min (layer) / mean | "
        + " | ".join(
            f"{r['path_reference']['min']:+.3f} ({r['path_reference']['argmin']}) / "
            f"{r['path_reference']['mean']:+.3f}"
            for r in results.values()
        )
        + " |"
    )
    lines.append(
        "| composition flagged (max class-vs-rest, tiles) | "
        + " | ".join(
            f"{r.get('composition_flagged')} ({r.get('composition', {}).get('max_imbalance', float('nan')):.3f})"
            for r in results.values()
        )
        + " |"
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--paper-stats", type=Path, default=None, help="reuse these statistics")
    parser.add_argument("--n-boot", type=int, default=500)
    parser.add_argument("--checkpoint", type=Path, default=None, help="a trained run: v beside u")
    parser.add_argument("--prompt-format", default="paper", choices=["paper", "compact"])
    args = parser.parse_args()
    out = args.out or Path("runs") / f"designs_{args.model}"
    out.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    maze_cfg = wl.maze.MazeConfig(prompt_format=args.prompt_format)
    roles = {"naive u": (None, "control", "")}
    if args.checkpoint is not None:
        roles["trained v"] = (args.checkpoint, "trained", "trained_")
    results: dict[str, dict[str, Any]] = {}
    for role, (checkpoint, vector_role, prefix) in roles.items():
        model = wl.load_model(args.model)
        if checkpoint is not None:
            model = wl.rl.load_checkpoint(checkpoint, model)
        for design in DESIGNS:
            reuse = args.paper_stats if design == "paper" and checkpoint is None else None
            stats, info = extract(model, design, args.per_class, out, reuse, maze_cfg, prefix)
            key = design if len(roles) == 1 else f"{role}, {design}"
            results[key] = {**info, **summarise(stats, args.n_boot, vector_role)}
            print(
                f"{key}: min {results[key]['min']:+.3f} at layer {results[key]['argmin']}, "
                f"mean {results[key]['mean']:+.3f}, composition flagged "
                f"{results[key].get('composition_flagged')}",
                flush=True,
            )
    d_model = int(model.cfg.d_model)
    doc = {
        "model": args.model,
        "checkpoint": None if args.checkpoint is None else str(args.checkpoint),
        "prompt_format": args.prompt_format,
        "d_model": d_model,
        "designs": results,
    }
    (out / "designs.json").write_text(json.dumps(doc, indent=1, default=float))
    table = markdown(args.model, results)
    (out / "designs.md").write_text(table)
    print(table)
    labels = {"paper": "paper design", "minimal_pairs": "minimal pairs"}
    fig = wl.plots.design_comparison(
        {labels.get(k, k): {c: r[c] for c in CURVE_KEYS} for k, r in results.items()},
        d_model=d_model,
        title=f"{args.model}: cos(Mold, Gold) by extraction design"
        + ("" if args.checkpoint is None else " (trained v and naive u)"),
    )
    fig.write_html(out / "designs.html", include_plotlyjs=True)
    try:
        wl.report.export_images({"designs": fig}, out)
    except wl.report.ImageExportError as err:
        print("no PNG:", err)
    print("wrote", out)


if __name__ == "__main__":
    main()
