"""Recruitment, not creation (appendices G and H): rotation of v onto naive axes over training.

For a training run with checkpoints, this script extracts the welfare vectors of one
shared-prefix trajectory set at step 0 (the maze-naive model) and at every checkpoint
(``wl.analysis.checkpoint_vectors``, cached and resumable), builds three fixed axes of the
naive model (the F.1 prompt sentiment vector, PC1 of the 171 emotion vectors, the
Valence-Assent Axis), and reports:

- the rotation table: cos(v_Mold, axis), cos(v_Gold, axis) and the unit-projection
  separation of the Gold- and Mold-final means on each axis, per checkpoint and layer;
- the recruitment result: Spearman rho of each against the run's smoothed reward, with a
  bootstrap CI over checkpoints, and the recruitment band of layers;
- VAA cosines of the controls u (step 0) and of the trained v (last checkpoint) per layer;

as ``report.html`` (figures from ``wl.plots``) and ``report.json`` in ``--out``. Without
``--run`` only the naive model's VAA cosines with u are computed (e.g. for a model that has
not been trained yet). The trajectories use the run's own maze settings (prompt format
included), read from its ``report.json`` or ``recipe.json``.

    .venv/bin/python examples/recruitment.py --model smollm2-135m-instruct \\
        --run runs/smollm2_cpu --out runs/recruitment_smollm2
    .venv/bin/python examples/recruitment.py --model gemma-3-270m \\
        --u runs/controls_gemma-3-270m/u --out runs/recruitment_gemma   # VAA vs u only
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
from welfare_lens import analysis as A
from welfare_lens import plots
from welfare_lens.report import Section, build_report

# The paper's VAA cosines at layer 21 of Qwen3-4B (H.2).
PAPER_VAA = {"v_mold": -0.219, "v_gold": 0.087, "u_mold": -0.020, "u_gold": -0.057}


def run_maze_config(run: Path) -> wl.maze.MazeConfig:
    """The maze settings a run was trained on (its last stage's, for a recipe run)."""
    report = run / "report.json"
    if report.exists():
        maze = json.loads(report.read_text()).get("maze")
        if maze:
            return wl.maze.MazeConfig.from_dict(maze)
    recipe = run / "recipe.json"
    if recipe.exists():
        plan = json.loads(recipe.read_text()).get("plan", {})
        base = plan.get("base_maze")
        if base:
            cfg = wl.maze.MazeConfig.from_dict(base)
            phases = plan.get("phases") or []
            last = phases[-1].get("maze_cfg") if phases else None
            return wl.maze.MazeConfig.from_dict(last) if last else cfg
    raise SystemExit(f"{run} has neither report.json nor recipe.json with maze settings.")


def cached_vectors(path: Path, build: Any) -> wl.ConceptVectors:
    """``ConceptVectors`` saved at ``path`` (safetensors + json), built once."""
    if Path(f"{path}.safetensors").exists():
        return wl.ConceptVectors.load(path)
    start = time.perf_counter()
    cv = build()
    cv.save(path)
    print(f"  {path.name}: {time.perf_counter() - start:.1f} s", flush=True)
    return cv


def rounded(values: Any, digits: int = 4) -> Any:
    if isinstance(values, dict):
        return {k: rounded(v, digits) for k, v in values.items()}
    if isinstance(values, list | tuple):
        return [rounded(v, digits) for v in values]
    if isinstance(values, float):
        return None if not np.isfinite(values) else round(values, digits)
    return values


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--run", type=Path, default=None, help="training run with checkpoints")
    parser.add_argument("--u", type=Path, default=None, help="saved naive control vectors u")
    parser.add_argument("--per-class", type=int, default=150, help="extraction samples per class")
    parser.add_argument("--no-emotions", action="store_true", help="skip the emotion PC1 axis")
    parser.add_argument("--out", type=Path, default=Path("runs/recruitment"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    base = wl.load_model(args.model)
    layer_count = int(base.cfg.n_layers)
    numbers: dict[str, Any] = {"model": args.model}
    sections: list[Section] = []

    print("VAA ...", flush=True)
    start = time.perf_counter()
    vaa = A.valence_assent_axis(base)
    numbers["vaa"] = {"seconds": round(time.perf_counter() - start, 1), **vaa.to_dict()}
    print(f"  {vaa!r}", flush=True)

    series = None
    if args.run is not None:
        maze_cfg = run_maze_config(args.run)
        trajs = wl.maze.shared_prefix_trajectories(maze_cfg, per_class=args.per_class)
        print(
            f"checkpoint vectors: {len(trajs)} samples, {maze_cfg.prompt_format} prompt", flush=True
        )
        series = A.checkpoint_vectors(args.run, base, trajs, out_dir=args.out / "vectors")
        u = series[series.steps[0]]
        v = series[series.steps[-1]]
    elif args.u is not None:
        u, v = wl.ConceptVectors.load(args.u), None
    else:
        raise SystemExit("Pass --run (a training run) or --u (saved control vectors).")

    vaa_u = A.vaa_cosines(vaa, u)
    vaa_v = A.vaa_cosines(vaa, v) if v is not None else None
    layers = sorted(set(vaa.layers))
    at = vaa.layer
    j = layers.index(at)
    numbers["vaa_cosines"] = {
        "layers": layers,
        "report_layer": at,
        "u": rounded(vaa_u),
        "v": rounded(vaa_v),
        "paper_layer21": PAPER_VAA,
    }
    line = (
        f"VAA cosines at layer {at}: u_mold {vaa_u['mold'][j]:+.3f}, u_gold {vaa_u['gold'][j]:+.3f}"
    )
    if vaa_v is not None:
        line += f"; v_mold {vaa_v['mold'][j]:+.3f}, v_gold {vaa_v['gold'][j]:+.3f}"
    print(line, flush=True)
    d_model = int(u.metadata.d_model)
    vaa_rows = []
    for i, x in enumerate(layers):
        row: dict[str, Any] = {"layer": x}
        row.update({f"u_{n}": c[i] for n, c in vaa_u.items()})
        row.update({f"v_{n}": c[i] for n, c in (vaa_v or {}).items()})
        vaa_rows.append(row)
    sections.append(
        Section(
            "Valence-Assent Axis (appendix H)",
            f"First right singular vector of centred last-prompt-token activations on "
            f"{vaa.n_statements} forced-choice statements, signed to correlate with "
            f"logit_A − logit_B. {line}. Paper (Qwen3-4B, layer 21): v_Mold −0.219, "
            "v_Gold +0.087, u_Mold −0.020, u_Gold −0.057.",
            tables=[("cosine with the VAA per layer", vaa_rows)],
            figures=[plots.vaa_cosines(vaa_v, vaa_u, layers=layers, d_model=d_model)],
        )
    )

    if series is not None:
        assert args.run is not None
        print("axes ...", flush=True)
        sentiment = cached_vectors(
            args.out / "sentiment", lambda: A.sentiment_control_vectors(base, progress=False)
        )
        axes: dict[str, Any] = {"prompt_sentiment": (sentiment, "prompt"), "vaa": vaa.vectors}
        if not args.no_emotions:
            emotions = cached_vectors(args.out / "emotions", lambda: A.emotion_vectors(base))
            pca = A.emotion_pca(emotions, v=v, control=u)
            axes["emotion_pc1"] = pca
        table = A.rotation_table(series, axes)
        rewards = A.reward_series(args.run / "metrics.jsonl", steps=series.steps)
        rec = A.recruitment(table, rewards)
        print(table, rewards, rec, sep="\n", flush=True)
        k = table.layers.index(table.report_layer)
        summary = []
        for axis in table.axes:
            for measure in rec.measures:
                summary.append(
                    {
                        "axis": axis,
                        "measure": measure,
                        "layer": table.report_layer,
                        "first": float(table.values(axis, measure)[0, k]),
                        "last": float(table.values(axis, measure)[-1, k]),
                        "rho": float(rec.rho[axis][measure][k]),
                        "ci_low": float(rec.ci_low[axis][measure][k]),
                        "ci_high": float(rec.ci_high[axis][measure][k]),
                        "band": rec.band[axis][measure],
                        "growth_band": rec.growth_band[axis][measure],
                    }
                )
        numbers["rotation"] = table.to_dict()
        numbers["rewards"] = rewards.to_dict()
        numbers["recruitment"] = rec.to_dict()
        numbers["recruitment_summary"] = rounded(summary)
        sections.insert(
            0,
            Section(
                "Rotation onto naive-model axes (appendix G)",
                f"Vectors of the same {len(trajs)} shared-prefix samples at steps "
                f"{series.steps} of `{args.run}`; axes from the naive model. Spearman ρ of each "
                f"measure against the smoothed reward ({rewards.key}, EMA {rewards.ema}) over "
                f"{len(series.steps)} checkpoints, {rec.n_boot} bootstrap resamples; "
                + (" ".join(rec.notes) or "no caveats."),
                tables=[("at the reporting layer", rounded(summary))],
                figures=[plots.rotation(table, rewards), plots.recruitment(rec)],
            ),
        )
    build_report(
        args.out,
        title=f"Recruitment analyses: {args.model}",
        config={k: str(v) for k, v in vars(args).items()} | {"n_layers": layer_count},
        sections=sections,
        numbers=numbers,
    )
    print(f"wrote {args.out / 'report.html'} and {args.out / 'report.json'}", flush=True)
    return numbers


if __name__ == "__main__":
    main()
