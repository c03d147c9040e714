"""Pre-existence of the welfare axis: the same trained vectors steer several models (A1, finding 6).

The paper's sixth finding is that v_Mold and v_Gold, extracted from the maze-trained checkpoint,
also steer the **maze-naive** model (the main-text "RL-steered baseline", A6) and, more weakly,
a **pretrain-only** model of the same architecture. The authors read this as RL *recruiting*
(rotating onto) an axis that already existed, rather than creating it.

:func:`pre_existence` runs the paper's steering evaluations (A7: sentiment, backtracking,
confidence, refusal) with one set of vectors on every model given, e.g.
``{"trained": trained, "naive": naive, "pretrain": base}``, and summarises each
(model, evaluation, vector) by the OLS slope of the metric against α with its standard error
(the statistic of appendix D; :func:`~welfare_lens.steering.sweep.ols_slope`). The α-sweeps
are :func:`~welfare_lens.steering.sweep.sweep`: steering at the output of block ℓ*, at every
assistant-turn token, with the raw vector (A6). Vectors from one checkpoint are used on another
of the same architecture through ``ConceptVectors.check_compatible(...,
allow_other_checkpoint=True)``, the path :func:`~welfare_lens.steering.steer.steer` takes; a
model of another width or depth is refused with :class:`ModelMismatchError` before anything
runs. Optional control vectors u are steered with the norm-matched β = α‖v‖/‖u‖ (M.1), on
every model except the checkpoint the vectors came from: the paper never steers maze-trained
checkpoints with control vectors (A6).

Built-in evaluations (``quick=True`` sizes; ``quick=False`` uses the paper's budget of Table 26
on the shipped data):

* ``sentiment``: 8 of the 40 prompts (every fifth, both categories) × 2 samples × 48 tokens,
  scored by VADER (paper: 40 × 20, Qwen3-8B judge);
* ``backtracking``: 8 shipped GSM8K-like problems × 2 samples × 96 tokens, rule labeller
  (paper: 200 × 10, LM judge);
* ``confidence``: P(True) of the correct and the wrong answer to 20 arithmetic and 20 factual
  questions (paper: SimpleQA-Verified 1,000 and MMLU 3,420);
* ``refusal``: 3 prompts per split × 2 samples × 48 tokens, rule labeller (paper: 200 per
  split × 5, LM judge).

For LM judges or other data, pass ``evaluations={"sentiment": fn, ...}`` with your own
``model -> rows`` functions (e.g. ``functools.partial(evaluate_backtracking, judge=judge)``).

Usage::

    from welfare_lens.steering.pre_existence import pre_existence

    res = pre_existence(v, {"trained": trained, "naive": naive, "pretrain": base},
                        layer={"mold": 20, "gold": 22}, out_dir="runs/pre_existence")
    print(res)                       # slope ± SE per model × evaluation × vector
    res.rows(reference="trained")    # with each slope as a fraction of the trained model's
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from welfare_lens.errors import DataError, ModelMismatchError, ShapeError, VectorError
from welfare_lens.hooks import resolve_layer
from welfare_lens.models import model_info
from welfare_lens.steering.backtracking import evaluate_backtracking
from welfare_lens.steering.confidence import evaluate_confidence, load_truefalse_questions
from welfare_lens.steering.refusal import evaluate_refusal
from welfare_lens.steering.sentiment import evaluate_sentiment, sentiment_prompts
from welfare_lens.steering.sweep import ResultTable, Slope, ols_slope, sweep
from welfare_lens.vectors import ConceptVectors, _choose_named

__all__ = [
    "EVALUATIONS",
    "EvaluateFn",
    "PreExistenceResult",
    "default_evaluation",
    "pre_existence",
]

#: The paper's four steering evaluations (A7), in its order.
EVALUATIONS: tuple[str, ...] = ("sentiment", "backtracking", "confidence", "refusal")

#: ``model -> rows`` (a ResultTable or a list of dicts with at least ``score``).
EvaluateFn = Callable[[Any], ResultTable | Sequence[Mapping[str, Any]]]

#: α values when none are given: the paper's five (A6), or three for a quick run.
_PAPER_ALPHAS: tuple[float, ...] = (-4.0, -2.0, 0.0, 2.0, 4.0)
_QUICK_ALPHAS: tuple[float, ...] = (-4.0, 0.0, 4.0)

#: Keys of ``ConceptVectors.metadata.extra`` read for ℓ* when ``layer`` is not given: an int
#: for every vector, or ``{vector name: layer}``.
_LAYER_KEYS: tuple[str, ...] = ("l_star", "steering_layer")


# ----------------------------------------------------------------------------------------------
# Evaluations
# ----------------------------------------------------------------------------------------------


def default_evaluation(name: str, *, quick: bool = True, seed: int = 0) -> EvaluateFn:
    """The built-in ``model -> rows`` function of one paper evaluation (A7).

    Args:
        name: One of :data:`EVALUATIONS`.
        quick: Small sizes for a smoke run (module docstring); False for the paper's budget
            (Table 26) on the shipped data.
        seed: Seed of prompt draws and sampling (the same in every condition, so conditions
            differ only by the steering).

    Returns:
        A function suitable for :func:`~welfare_lens.steering.sweep.sweep`.

    Raises:
        DataError: Unknown evaluation name.
    """
    if name == "sentiment":
        prompts = sentiment_prompts()[::5] if quick else sentiment_prompts()
        samples, tokens = (2, 48) if quick else (20, 200)
        return lambda m: evaluate_sentiment(
            m, prompts=prompts, samples=samples, max_new_tokens=tokens, seed=seed
        )
    if name == "backtracking":
        n_problems, samples, tokens = (8, 2, 96) if quick else (200, 10, 512)
        return lambda m: evaluate_backtracking(
            m, n_problems=n_problems, samples=samples, max_new_tokens=tokens, seed=seed
        )
    if name == "confidence":
        questions = load_truefalse_questions()
        if quick:
            arithmetic = [q for q in questions if q.kind == "arithmetic"][:20]
            questions = arithmetic + [q for q in questions if q.kind == "factual"][:20]
        return lambda m: evaluate_confidence(m, questions)
    if name == "refusal":
        per_split, samples, tokens = (3, 2, 48) if quick else (200, 5, 256)
        return lambda m: evaluate_refusal(
            m, n_per_split=per_split, samples=samples, max_new_tokens=tokens, seed=seed
        )
    raise DataError(
        f"Unknown evaluation {name!r}.",
        hint=f"Use one of {list(EVALUATIONS)}, or pass evaluations={{name: model -> rows}}.",
    )


def _evaluation_table(
    evaluations: Sequence[str] | Mapping[str, EvaluateFn], quick: bool, seed: int
) -> dict[str, tuple[EvaluateFn, str]]:
    """``{name: (function, sweep tag)}``; every name is checked before anything runs."""
    if isinstance(evaluations, str):
        evaluations = [evaluations]
    table: dict[str, tuple[EvaluateFn, str]] = {}
    if isinstance(evaluations, Mapping):
        for name, fn in evaluations.items():
            if not callable(fn):
                raise DataError(
                    f"Evaluation {name!r} is a {type(fn).__name__}, not a function.",
                    hint="Pass {name: model -> rows}, or a list of built-in names.",
                )
            table[str(name)] = (fn, str(name))
    else:
        for name in evaluations:
            # The tag names the sizes, so a resumed quick run never reuses full-size rows.
            tag = f"{name}@{'quick' if quick else 'paper'}"
            table[str(name)] = (default_evaluation(str(name), quick=quick, seed=seed), tag)
    if not table:
        raise DataError("No evaluations to run.", hint=f"Use some of {list(EVALUATIONS)}.")
    return table


# ----------------------------------------------------------------------------------------------
# Vectors, layers and models
# ----------------------------------------------------------------------------------------------


def _vector_tensors(vectors: Any, names: Sequence[str] | None, what: str) -> dict[str, Tensor]:
    """``{name: [n_layers, d_model]}`` of ConceptVectors or of a mapping of tensors."""
    if isinstance(vectors, ConceptVectors):
        table = {n: vectors[n] for n in vectors.names}
    elif isinstance(vectors, Mapping):
        table = {str(k): v for k, v in vectors.items()}
    else:
        raise VectorError(
            f"{what} must be ConceptVectors or {{name: [n_layers, d_model] tensor}}, got "
            f"{type(vectors).__name__}.",
            hint="Pass wl.welfare_vectors(...) or ConceptVectors.load(path).",
        )
    for k, v in table.items():
        if not isinstance(v, Tensor) or v.ndim != 2:
            shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ShapeError(
                f"{what} {k!r} is {shape}; expected [n_layers, d_model].",
                hint="Pass per-layer vectors, e.g. ConceptVectors or {'gold': v_gold}.",
            )
    return _choose_named(table, names, what=what.lower())


def _shape_of(table: Mapping[str, Tensor], what: str) -> tuple[int, int]:
    shapes = {tuple(v.shape) for v in table.values()}
    if len(shapes) != 1:
        raise ShapeError(
            f"{what} have different shapes {sorted(shapes)}.",
            hint="Use vectors from one model, all [n_layers, d_model].",
        )
    n_layers, d_model = next(iter(shapes))
    return int(n_layers), int(d_model)


def _stored_layers(vectors: Any) -> Any:
    meta = getattr(vectors, "metadata", None)
    extra = getattr(meta, "extra", None) or {}
    for key in _LAYER_KEYS:
        if key in extra:
            return extra[key]
    return None


def _layers(
    layer: int | Mapping[str, int] | None, vectors: Any, names: Sequence[str], n_layers: int
) -> dict[str, int]:
    """ℓ* per vector name, from ``layer`` or the vectors' metadata, resolved to ``>= 0``."""
    hint = (
        "Pass layer=ℓ* (an int, or {'mold': ℓ*_Mold, 'gold': ℓ*_Gold}, e.g. from "
        "select_steering_layer), or store it as vectors.metadata.extra['l_star']."
    )
    given = layer if layer is not None else _stored_layers(vectors)
    if given is None:
        raise DataError("No steering layer: layer=None and the vectors store no ℓ*.", hint=hint)
    out: dict[str, int] = {}
    for name in names:
        value = given.get(name) if isinstance(given, Mapping) else given
        if isinstance(value, bool) or not isinstance(value, int):
            raise DataError(f"No integer steering layer for {name!r} (got {value!r}).", hint=hint)
        out[name] = resolve_layer(value, n_layers)
    return out


def _model_id(model: Any) -> str:
    return str(model_info(model).model_id)


def _check_models(
    models: Mapping[str, Any],
    shape: tuple[int, int],
    source: str,
    checked: Sequence[Any],
) -> None:
    """Refuse, before any evaluation, every model the vectors cannot steer."""
    n_layers, d_model = shape
    for key, model in models.items():
        cfg = getattr(model, "cfg", None)
        theirs = (getattr(cfg, "n_layers", None), getattr(cfg, "d_model", None))
        if theirs != (n_layers, d_model):
            raise ModelMismatchError(
                f"The vectors come from model {source!r} (n_layers={n_layers}, "
                f"d_model={d_model}), but model {key!r} ({_model_id(model)!r}) has "
                f"n_layers={theirs[0]}, d_model={theirs[1]}.",
                hint=f"Steer only checkpoints of {source!r}'s architecture (trained, maze-naive, "
                f"pretrain-only); drop {key!r} or extract vectors on it.",
            )
        for vectors in checked:
            # The path steer() takes: same shape and coordinate mode, any checkpoint.
            vectors.check_compatible(model, allow_other_checkpoint=True)


def _folder_names(keys: Sequence[str]) -> dict[str, str]:
    """A distinct, file-system-safe folder name per model key."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for key in keys:
        base = re.sub(r"[^\w.-]+", "_", key).strip("._") or "model"
        name, i = base, 1
        while name in used:
            i += 1
            name = f"{base}_{i}"
        used.add(name)
        out[key] = name
    return out


# ----------------------------------------------------------------------------------------------
# Result
# ----------------------------------------------------------------------------------------------


def _num(x: float) -> float | str:
    return float(x) if math.isfinite(x) else str(float(x))


@dataclass
class PreExistenceResult:
    """Slopes of every evaluation against α, per model and vector (A1 finding 6, appendix D).

    Attributes:
        models: ``{model key: model id}`` in the order given.
        evaluations: Evaluation names, in order.
        vectors: Vector labels, in order: the trained vectors' names, then ``u_<name>`` for
            controls.
        roles: ``{vector label: "trained" | "control"}``.
        layers: ``{vector label: ℓ*}``.
        alphas: Nominal α values swept.
        slopes: ``{(model key, evaluation, vector label): Slope}``; NaN where the rows cannot
            give one (fewer than 3 scored rows or one α). Controls are absent for the vectors'
            own checkpoint.
        n_rows: Scored rows behind each slope, same keys.
        table: Every row, with ``model``, ``model_id``, ``evaluation`` and ``role`` added to the
            sweep's columns.
        vector_model_id: Model the vectors were extracted from, if recorded.
        info: Further settings (quick, seed, out_dir, exclude_incoherent).
    """

    models: dict[str, str]
    evaluations: list[str]
    vectors: list[str]
    roles: dict[str, str]
    layers: dict[str, int]
    alphas: tuple[float, ...]
    slopes: dict[tuple[str, str, str], Slope]
    n_rows: dict[tuple[str, str, str], int]
    table: ResultTable
    vector_model_id: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def slope(self, model: str, evaluation: str, vector: str) -> Slope:
        """The slope of one (model key, evaluation, vector label).

        Raises:
            DataError: No such combination.
        """
        key = (model, evaluation, vector)
        if key not in self.slopes:
            raise DataError(
                f"No slope for model={model!r}, evaluation={evaluation!r}, vector={vector!r}.",
                hint=f"Models {list(self.models)}, evaluations {self.evaluations}, vectors "
                f"{self.vectors}.",
            )
        return self.slopes[key]

    def rows(self, reference: str | None = None) -> list[dict[str, Any]]:
        """One dict per (model, evaluation, vector): slope, SE, rows, ℓ*, role.

        Args:
            reference: A model key (e.g. ``"trained"``); adds ``ratio``, each slope divided by
                that model's slope for the same evaluation and vector (finding 6 in one
                number: how much of the effect carries over).

        Raises:
            DataError: Unknown reference model.
        """
        if reference is not None and reference not in self.models:
            raise DataError(
                f"Unknown reference model {reference!r}.", hint=f"Use one of {list(self.models)}."
            )
        out: list[dict[str, Any]] = []
        for (model, evaluation, vector), (slope, se) in self.slopes.items():
            row: dict[str, Any] = {
                "model": model,
                "model_id": self.models[model],
                "evaluation": evaluation,
                "vector": vector,
                "role": self.roles[vector],
                "layer": self.layers[vector],
                "slope": slope,
                "se": se,
                "n": self.n_rows[(model, evaluation, vector)],
            }
            if reference is not None:
                ref = self.slopes.get((reference, evaluation, vector), Slope(math.nan, math.nan))
                usable = ref.slope != 0 and math.isfinite(ref.slope)
                row["ratio"] = slope / ref.slope if usable else math.nan
            out.append(row)
        return out

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        """JSON-friendly dict; ``samples=True`` adds every row of :attr:`table`."""
        out: dict[str, Any] = {
            "models": dict(self.models),
            "evaluations": list(self.evaluations),
            "vectors": list(self.vectors),
            "roles": dict(self.roles),
            "layers": dict(self.layers),
            "alphas": list(self.alphas),
            "vector_model_id": self.vector_model_id,
            "info": dict(self.info),
            "slopes": [
                {k: _num(v) if isinstance(v, float) else v for k, v in row.items()}
                for row in self.rows()
            ],
        }
        if samples:
            out["rows"] = [dict(r) for r in self.table]
        return out

    def __repr__(self) -> str:
        head = (
            f"PreExistenceResult(vectors from {self.vector_model_id or 'unknown'} on "
            f"{len(self.models)} model(s), α={list(self.alphas)}; slope ± SE per unit α:"
        )
        lines = [head]
        width = max(len(v) for v in self.vectors) if self.vectors else 4
        for evaluation in self.evaluations:
            lines.append(f"  {evaluation}")
            for model, model_id in self.models.items():
                cells = []
                for vector in self.vectors:
                    found = self.slopes.get((model, evaluation, vector))
                    value = "—" if found is None else f"{found.slope:+.4g} ± {found.se:.2g}"
                    cells.append(f"{vector:>{width}} {value}")
                lines.append(f"    {model:<10} ({model_id}): " + "; ".join(cells))
        return "\n".join(lines) + ")"


# ----------------------------------------------------------------------------------------------
# Runner
# ----------------------------------------------------------------------------------------------


def pre_existence(
    vectors: ConceptVectors | Mapping[str, Tensor],
    models: Mapping[str, Any],
    *,
    evaluations: Sequence[str] | Mapping[str, EvaluateFn] = EVALUATIONS,
    alphas: Sequence[float] | None = None,
    layer: int | Mapping[str, int] | None = None,
    control: ConceptVectors | Mapping[str, Tensor] | None = None,
    names: Sequence[str] | None = None,
    quick: bool = True,
    seed: int = 0,
    out_dir: str | os.PathLike[str] | None = None,
    exclude_incoherent: bool = False,
    progress: bool = False,
) -> PreExistenceResult:
    """Steer every model with the same vectors on the paper's evaluations (A1 finding 6).

    For each model, evaluation and layer group, :func:`~welfare_lens.steering.sweep.sweep`
    runs the evaluation under every (vector, α) condition, steering at the output of block ℓ*
    (A6); α = 0 is evaluated once per model and evaluation. Every model is checked against the
    vectors first (same ``n_layers``/``d_model``, same coordinate mode; another checkpoint is
    allowed), so a mismatch fails before any evaluation runs.

    Args:
        vectors: Trained vectors: ConceptVectors (checked with
            ``allow_other_checkpoint=True``) or ``{name: [n_layers, d_model]}``.
        models: ``{key: model}``, e.g. ``{"trained": t, "naive": n, "pretrain": p}``.
        evaluations: Built-in names (:data:`EVALUATIONS`), or ``{name: model -> rows}``.
        alphas: Nominal α values; default the paper's (−4, −2, 0, 2, 4), or (−4, 0, 4) when
            ``quick``.
        layer: ℓ*: an int for every vector or ``{name: ℓ*}``; None reads
            ``vectors.metadata.extra["l_star"]`` (int or ``{name: int}``).
        control: Control vectors u with the same names (e.g. from the maze-naive model),
            steered as ``u_<name>`` with β = α‖v‖/‖u‖ at the same layer (M.1), on every model
            whose id differs from ``vectors.metadata.model_id`` (A6: the trained checkpoint
            is never steered with controls; such models are listed in
            ``info["control_skipped"]``).
        names: Which vectors to steer (default ``mold`` and ``gold`` where present, else all).
        quick: Sizes of the built-in evaluations (module docstring).
        seed: Seed of the built-in evaluations.
        out_dir: Folder for the sweeps' JSONL files, ``<out_dir>/<model key>/<evaluation>.jsonl``;
            a rerun resumes from them (the sweep's own resume). None keeps them in a temporary
            folder that is deleted at the end.
        exclude_incoherent: Leave incoherent responses out of the slopes (the paper's main text
            masks near-fully incoherent points; appendix D pools everything, the default).
        progress: Show the sweeps' progress bars.

    Returns:
        Slope ± SE per model × evaluation × vector, and every row.

    Raises:
        DataError: No models or evaluations, an unknown evaluation name, no steering layer, or
            fewer than 2 distinct α.
        LayerError: A steering layer outside the model.
        ModelMismatchError: A model's ``n_layers``/``d_model`` differ from the vectors'.
        VectorError, ShapeError: Vectors unknown, malformed, or in another coordinate mode.
    """
    if not isinstance(models, Mapping) or not models:
        raise DataError(
            "pre_existence needs a non-empty mapping of models.",
            hint="Pass {'trained': trained, 'naive': naive, 'pretrain': base}.",
        )
    table = _evaluation_table(evaluations, quick, seed)
    trained = _vector_tensors(vectors, names, "Vectors")
    shape = _shape_of(trained, "The vectors")
    source = getattr(getattr(vectors, "metadata", None), "model_id", None)
    layers = _layers(layer, vectors, list(trained), shape[0])
    controls: dict[str, Tensor] = {}
    if control is not None:
        controls = _vector_tensors(control, list(trained), "Control vectors")
        if _shape_of(controls, "The control vectors") != shape:
            raise ShapeError(
                f"Control vectors are {list(_shape_of(controls, 'The control vectors'))}, the "
                f"vectors {list(shape)} ([n_layers, d_model]).",
                hint="Use control vectors from a model of the same architecture.",
            )
    checked = [v for v in (vectors, control) if isinstance(v, ConceptVectors)]
    _check_models(models, shape, str(source or "unknown"), checked)
    sweep_alphas = tuple(
        float(a)
        for a in (alphas if alphas is not None else _QUICK_ALPHAS if quick else _PAPER_ALPHAS)
    )
    if len(set(sweep_alphas)) < 2:
        raise DataError(
            f"A slope needs at least 2 distinct α values, got {list(sweep_alphas)}.",
            hint="e.g. alphas=(-4, 0, 4).",
        )

    roles = {name: "trained" for name in trained} | {f"u_{n}": "control" for n in controls}
    label_layers = layers | {f"u_{n}": layers[n] for n in controls}
    # A6: maze-trained checkpoints (the vectors' own model) are never steered with controls.
    skipped = [
        k for k in models if controls and source is not None and _model_id(models[k]) == source
    ]
    groups: dict[int, list[str]] = {}
    for name, at in layers.items():
        groups.setdefault(at, []).append(name)

    with tempfile.TemporaryDirectory(prefix="welfare_lens_pre_existence.") as scratch:
        # Files, even temporary ones, let every sweep of a model and evaluation reuse the
        # α = 0 rows (the same unsteered evaluation) instead of re-running them.
        root = Path(out_dir) if out_dir is not None else Path(scratch)
        folders = _folder_names(list(models))
        rows: list[dict[str, Any]] = []
        for key, model in models.items():
            model_id = _model_id(model)
            for evaluation, (fn, tag) in table.items():
                path = root / folders[key] / f"{evaluation}.jsonl"
                path.parent.mkdir(parents=True, exist_ok=True)
                for at, group in groups.items():
                    runs: list[tuple[dict[str, Tensor], dict[str, Tensor] | None]] = [
                        ({n: trained[n] for n in group}, None)
                    ]
                    if controls and key not in skipped:
                        # Controls at the trained vectors' layer, β = α‖v‖/‖u‖ (M.1).
                        steered = {f"u_{n}": controls[n] for n in group}
                        runs.append((steered, {f"u_{n}": trained[n] for n in group}))
                    for steered, reference in runs:
                        got = sweep(
                            model,
                            fn,
                            steered,
                            layers=[at],
                            alphas=sweep_alphas,
                            out_path=path,
                            norm_match_to=reference,
                            tag=tag,
                            progress=progress,
                        )
                        rows.extend(
                            {
                                **row,
                                "model": key,
                                "model_id": model_id,
                                "evaluation": evaluation,
                                "role": roles[str(row["vector"])],
                            }
                            for row in got
                        )

    slopes: dict[tuple[str, str, str], Slope] = {}
    n_rows: dict[tuple[str, str, str], int] = {}
    by_key: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        by_key.setdefault((row["model"], row["evaluation"], str(row["vector"])), []).append(row)
    for key in models:
        for evaluation in table:
            for label in roles:
                if key in skipped and roles[label] == "control":
                    continue
                members = by_key.get((key, evaluation, label), [])
                usable = [
                    r
                    for r in members
                    if r.get("score") is not None
                    and not (isinstance(r["score"], float) and math.isnan(r["score"]))
                    and not (exclude_incoherent and r.get("incoherent"))
                ]
                try:
                    slopes[(key, evaluation, label)] = ols_slope(
                        members, exclude_incoherent=exclude_incoherent
                    )
                except DataError:  # too few scored rows (e.g. every judge answer unparseable)
                    slopes[(key, evaluation, label)] = Slope(math.nan, math.nan)
                n_rows[(key, evaluation, label)] = len(usable)
    return PreExistenceResult(
        models={key: _model_id(model) for key, model in models.items()},
        evaluations=list(table),
        vectors=list(roles),
        roles=roles,
        layers=label_layers,
        alphas=sweep_alphas,
        slopes=slopes,
        n_rows=n_rows,
        table=ResultTable(rows),
        vector_model_id=None if source is None else str(source),
        info={
            "quick": quick,
            "seed": seed,
            "out_dir": None if out_dir is None else str(out_dir),
            "exclude_incoherent": exclude_incoherent,
            "tags": {name: tag for name, (_, tag) in table.items()},
            "control_skipped": skipped,
        },
    )
