"""The ``report`` stage: the pipeline's numbers and figures as one self-contained HTML file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from welfare_lens import plots
from welfare_lens.report import Section, build_report

if TYPE_CHECKING:
    from welfare_lens.pipeline import PipelineConfig

_PAPER = {
    "min cos(v_Mold, v_Gold)": "trained minima -0.95 to -0.84 over 10 models (primary -0.947 "
    "at L35), control minima -0.23 to -0.13 (Table 7)",
    "vaa": "Paper (Qwen3-4B, layer 21 of 36): v_Mold −0.219, v_Gold +0.087, u_Mold −0.020, "
    "u_Gold −0.057 (H.2)",
}

_DESIGN_TEXT = {
    "shared_prefix": "shared-prefix samples of the paper's classes (a class-c sample ends with "
    "a move onto class c)",
    "minimal_pairs": "minimal pairs (one final move per class branched off the same prefix: "
    "the classes differ only in the chosen move)",
}


def _signed(x: Any) -> str:
    return "n/a" if x is None else f"{float(x):+.3f}"


def _load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _sweep_rows(path: Path) -> list[dict[str, Any]]:
    from welfare_lens.steering.sweep import _read_sweep_file

    if not path.exists():
        return []
    rows, *_ = _read_sweep_file(path)
    return [dict(row) for row in rows]


def _metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _scatter_points(alignment: dict[str, Any], role: str) -> dict[str, Any]:
    """The points of one scatter (trained or control) at the alignment's layer."""
    fit = alignment[role]
    i = fit["layers"].index(alignment["layer"])
    return {
        "x": fit["cos_x"][i],
        "y": fit["cos_y"][i],
        "emotions": alignment["emotions"],
        "layer": alignment["layer"],
    }


def _pca_figure(pca: dict[str, Any]) -> Any:
    """Emotion PCA at its best layer, the welfare vectors' PC1 positions marked."""
    i = pca["layers"].index(pca["best_layer"])
    return plots.emotion_pca(
        pca["scores"][i],
        emotions=pca["emotions"],
        positions={k: v[i] for k, v in pca["projections"].items() if v[i] is not None},
        title=f"Emotion PCA at layer {pca['best_layer']}: |r|(PC1, valence) "
        f"{abs(pca['r_valence'][i]):.2f}",
    )


def _tracking_panels(tracking: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """``{vector: {condition: projections}}`` from a saved TrackingResult."""
    labels = tracking["labels"]
    return {
        f"v_{name}": {
            cond: [p for p, lab in zip(values, labels, strict=True) if lab == cond]
            for cond in tracking["conditions"]
        }
        for name, values in tracking["projections"].items()
    }


def _training_text(cfg: PipelineConfig, out: Path) -> str:
    """What the train stage ran: a recipe (see ``PipelineConfig.recipe``) or plain GRPO."""
    done = _load(out / "train" / "done.json") or {}
    name = done.get("recipe")
    if name:
        from welfare_lens.rl.recipe import RECIPES

        recipe = RECIPES.get(name)
        what = recipe.summary if recipe is not None else "see train/recipe.json"
        measured = "" if done.get("recipe_measured") else " (an unmeasured starting point)"
        return f"recipe **{name}**{measured}: {what} {done.get('steps')} steps in all"
    return (
        f"{cfg.train_steps} steps of {cfg.mazes_per_step} mazes x {cfg.episodes_per_maze} episodes"
    )


def write_pipeline_report(cfg: PipelineConfig, out: Path) -> Path:
    """Gather every stage's outputs under ``out`` into ``out/report.html`` and ``report.json``."""
    analysis = _load(out / "analyze" / "analysis.json") or {}
    steer = _load(out / "steer" / "steer.json") or {}
    evaluation = _load(out / "evaluate" / "evaluate.json") or {}
    sections: list[Section] = []

    history = _metrics(out / "train" / "metrics.jsonl")
    if history or evaluation:
        table = [{"policy": tag, **row} for tag, row in evaluation.items()]
        sections.append(
            Section(
                "Training (GRPO in the maze)",
                f"Prompt format **{cfg.prompt_format}**, {_training_text(cfg, out)}. Held-out "
                f"returns of the naive and trained policies on {cfg.eval_mazes} mazes below.",
                tables=[("held-out maze evaluation", table)] if table else [],
                figures=[plots.training_curves(history)] if history else [],
            )
        )
    if analysis:
        anti = analysis["antiparallelism"]
        l_star = analysis["l_star"]
        trained, control = anti["trained"], anti.get("control") or {}
        rows = [
            {
                "vectors": tag,
                "min cos": summary.get("min"),
                "argmin layer": summary.get("argmin"),
                "mean cos": summary.get("mean"),
                "L*_Mold": l_star[key]["mold"],
                "L*_Gold": l_star[key]["gold"],
            }
            for tag, key, summary in (("trained v", "v", trained), ("control u", "u", control))
            if summary
        ]
        sections.append(
            Section(
                "Antiparallelism (paper §3.1)",
                "cos(v_Mold, v_Gold) per layer for the trained model and the naive control, "
                "with the steering layer L* chosen on held-out mazes (AUROC, Cohen's d, "
                f"histogram overlap). Extraction design: {_DESIGN_TEXT[cfg.design]}, "
                f"{cfg.per_class} per class. Paper: {_PAPER['min cos(v_Mold, v_Gold)']}.",
                tables=[("summary", rows)],
                figures=[
                    plots.antiparallelism(
                        trained,
                        control or None,
                        l_star=sorted(set(l_star["v"].values())),
                        d_model=anti.get("d_model"),
                    ),
                    plots.class_cosine_matrix(
                        analysis["centred_cosines"]["v"], analysis["centred_cosines"]["u"]
                    ),
                ],
            )
        )
        composition = analysis.get("composition") or {}
        if composition:
            rows = []
            for tag, item in composition.items():
                table = item["table"]
                for cls, means in table["means"].items():
                    rows.append({"vectors": tag, "class": cls, **means})
            flags = {tag: item["table"]["flagged"] for tag, item in composition.items()}
            seen = [
                {"vectors": tag, "vector": name, **{f"L{i}": c for i, c in enumerate(cos)}}
                for tag, item in composition.items()
                for name, cos in item["seen_tile_cosines"].items()
            ]
            sections.append(
                Section(
                    "Extraction design and composition",
                    f"Design: **{_DESIGN_TEXT[cfg.design]}**. Whether the classes differ in what "
                    f"the model saw (flagged: {flags}); the seen-tile cosines say how much of "
                    "each welfare vector the neighbour composition alone explains. The other "
                    'design: `PipelineConfig(design=...)`, `--set design="minimal_pairs"`; '
                    "see docs/designs.md.",
                    tables=[("mean neighbours per class", rows), ("seen-tile cosines", seen)],
                )
            )
        lens = analysis["logit_lens"]
        sections.append(
            Section(
                "Logit lens (paper §3.2)",
                "Tokens each vector promotes and suppresses through the final norm's gain and "
                "the unembedding.",
                figures=[
                    plots.logit_lens_bars(lens[tag][name], name=f"{tag}_{name}")
                    for tag in ("v", "u")
                    for name in ("mold", "gold")
                ],
            )
        )
        sections.append(
            Section(
                "Emotions (paper §3.3)",
                "Alignment of the welfare vectors with 171 emotion concept vectors, and the "
                "emotion PCA against the shipped valence ratings.",
                figures=[
                    plots.emotion_scatter(
                        *(
                            _scatter_points(analysis["emotion_alignment"], role)
                            for role in ("trained", "control")
                        )
                    ),
                    _pca_figure(analysis["emotion_pca"]),
                ],
            )
        )
        vaa = analysis.get("vaa")
        if vaa:
            i = vaa["layers"].index(vaa["layer"])
            cos = vaa["cosines"]
            at = ", ".join(
                f"{tag}_{name} {_signed(cos[tag][name][i])}"
                for tag in ("v", "u")
                for name in cos[tag]
            )
            sections.append(
                Section(
                    "Valence-Assent Axis (appendix H)",
                    f"First right singular vector of the naive model's last-prompt-token "
                    f"activations on {vaa['n_statements']} forced-choice statements, signed by "
                    f"logit_A − logit_B. At layer {vaa['layer']}: {at}. {_PAPER['vaa']}.",
                    figures=[
                        plots.vaa_cosines(
                            cos["v"], cos["u"], layers=vaa["layers"], d_model=anti.get("d_model")
                        )
                    ],
                )
            )
        sections.append(
            Section(
                "Tracking (paper §5.1)",
                "Projections of fresh Mold-final and Gold-final trajectories on v at L*.",
                figures=[plots.tracking_densities(_tracking_panels(analysis["tracking"]))],
            )
        )
    rows_by_eval = {e: _sweep_rows(out / "steer" / f"{e}.jsonl") for e in cfg.evaluations}
    if any(rows_by_eval.values()):
        figures = []
        tables = []
        for name, rows in rows_by_eval.items():
            if not rows:
                continue
            trained = [r for r in rows if str(r.get("vector", "")).startswith("v_")]
            control = [r for r in rows if str(r.get("vector", "")).startswith("u_")]
            figures.append(plots.steering_curves(trained, control, title=f"Steering: {name}"))
            tables.append(
                (f"{name}: OLS slope per unit alpha", steer.get(name, {}).get("slopes", []))
            )
        sections.append(
            Section(
                "Steering (paper §4)",
                "The naive model steered with v (solid) and with the norm-matched controls u "
                f"(dotted) at L*, alpha in {list(cfg.alphas)}.",
                tables=tables,
                figures=figures,
            )
        )
    numbers = {"analysis": analysis, "steer": steer, "evaluate": evaluation}
    return build_report(
        out,
        title=f"welfare_lens reproduction: {cfg.model}",
        config=cfg.to_dict(),
        sections=sections,
        numbers=numbers,
    )
