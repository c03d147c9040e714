"""Tracking analyses: maze outcomes and answer correctness on the welfare axis (A8; §5, App. I).

**Maze goals (§5.1).** Fresh programmatic Mold-final and Gold-final trajectories (the §2.3 /
Appendix L.1 protocol, :func:`welfare_lens.maze.synthetic_trajectories`) are read at the final
assistant-turn token (the last direction letter, position −1) at layer ℓ*, and each activation
is scored by its scalar projection on v at ℓ*. The paper reports the two distributions in
standard-deviation units around the panel mean and their Cohen's d: d > 1.6 for the trained
model (v_Mold panel: +1.61), |d| < 0.12 for the naive one.

**Correctness (§5.2).** After the model answers a question, a truthful user turn is appended
("That's right" if the answer was correct, "That's wrong" if not), then the assistant chat
template; v_Mold and v_Gold are projected on the activations at the generation-prompt tokens of
that last assistant template. The paper uses GSM8K/MMLU and the model's own answers; correct and
incorrect responses separate in both the trained and the naive model. Offline, welfare_lens ships
40 authored arithmetic items with a correct and a plausible wrong answer
(``welfare_lens/data/arithmetic.json``); each gives one correct and one incorrect conversation::

    [user: question] [assistant: answer] [user: "That's right" | "That's wrong"] <generation prompt>

Following reference note B-8, the default reading is the **mean** over the generation-prompt
tokens (``<|im_start|>assistant\\n`` for ChatML); ``reduce="last"`` reads only its last token.
``truthful=False`` inverts the feedback (correct answers get "That's wrong"), a control that
separates what the answer was from what the user said.

**Confidence control (Figure 7).** Correctness tracking could be a confidence axis in
disguise. The paper splits its MMLU responses into tertiles of normalised P(True) (the model's
Kadavath-style confidence in its answer, §4.3) and finds that correct and incorrect responses
still separate within each tertile. :func:`confidence_tertiles` does the split on any tracking
result and per-sample P(True); :func:`correctness_with_confidence` runs the whole control in one
call: :func:`track_correctness`, then P(True) of the same question/answer pairs
(:func:`correctness_p_true`: ``[user: question] [assistant: answer] [user: "Is your proposed
answer correct? ..."]``, read before any feedback), then the tertiles. Offline the answers are
the authored correct and wrong ones, not the model's own MMLU answers.

Scores are scalar projections a·v/‖v‖ (B-8) in float64
(:func:`~welfare_lens.analysis.layer_selection.projections`); effect sizes are
:func:`~welfare_lens.analysis.layer_selection.cohens_d` (pooled SD) and
:func:`~welfare_lens.analysis.layer_selection.auroc` of the first condition against the second.
Expected signs: for Mold-final vs Gold-final, d > 0 on v_Mold and d < 0 on v_Gold; for correct
vs incorrect, d > 0 on v_Gold and d < 0 on v_Mold.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from numpy.typing import NDArray
from torch import Tensor

from welfare_lens._resources import read_json
from welfare_lens.analysis.layer_selection import auroc, cohens_d, projections
from welfare_lens.capture import iter_activations
from welfare_lens.errors import DataError, ShapeError, VectorError
from welfare_lens.hooks import HookKind, resolve_layer
from welfare_lens.models import model_info
from welfare_lens.vectors import _choose_named

__all__ = [
    "ArithmeticItem",
    "ConfidenceBin",
    "ConfidenceControl",
    "Contrast",
    "TrackingResult",
    "confidence_tertiles",
    "correctness_conversations",
    "correctness_p_true",
    "correctness_with_confidence",
    "load_arithmetic",
    "track_correctness",
    "track_outcomes",
]

F64 = NDArray[np.float64]
Messages = list[dict[str, str]]

#: The paper's truthful feedback turns (A8 §5.2): after a correct answer, after a wrong one.
FEEDBACK: tuple[str, str] = ("That's right", "That's wrong")


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------


def _num(x: float) -> float | str:
    return float(x) if math.isfinite(x) else str(float(x))


@dataclass
class Contrast:
    """Projections of two conditions on one vector: means, SDs, Cohen's d and AUROC.

    Attributes:
        vector: Vector name (e.g. ``"mold"``).
        positive: First condition (e.g. ``"mold"`` or ``"correct"``).
        negative: Second condition (e.g. ``"gold"`` or ``"incorrect"``).
        n_pos: Samples of the first condition.
        n_neg: Samples of the second condition.
        mean_pos: Mean projection of the first condition.
        mean_neg: Mean projection of the second condition.
        sd_pos: SD (ddof=1) of the first condition.
        sd_neg: SD (ddof=1) of the second condition.
        d: Cohen's d, first minus second, pooled SD.
        auroc: P(first > second) + ½·P(tie).
    """

    vector: str
    positive: str
    negative: str
    n_pos: int
    n_neg: int
    mean_pos: float
    mean_neg: float
    sd_pos: float
    sd_neg: float
    d: float
    auroc: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (±inf d as a string)."""
        return {
            "vector": self.vector,
            "positive": self.positive,
            "negative": self.negative,
            "n_pos": self.n_pos,
            "n_neg": self.n_neg,
            "mean_pos": self.mean_pos,
            "mean_neg": self.mean_neg,
            "sd_pos": self.sd_pos,
            "sd_neg": self.sd_neg,
            "d": _num(self.d),
            "auroc": self.auroc,
        }

    def __repr__(self) -> str:
        return (
            f"Contrast(v_{self.vector}: {self.positive} {self.mean_pos:+.4g} ± {self.sd_pos:.3g} "
            f"(n={self.n_pos}) vs {self.negative} {self.mean_neg:+.4g} ± {self.sd_neg:.3g} "
            f"(n={self.n_neg}); d={self.d:+.3f}, AUROC={self.auroc:.3f})"
        )


def _contrast(name: str, pos_name: str, neg_name: str, pos: F64, neg: F64) -> Contrast:
    return Contrast(
        vector=name,
        positive=pos_name,
        negative=neg_name,
        n_pos=int(pos.size),
        n_neg=int(neg.size),
        mean_pos=float(pos.mean()),
        mean_neg=float(neg.mean()),
        sd_pos=float(pos.std(ddof=1)),
        sd_neg=float(neg.std(ddof=1)),
        d=cohens_d(pos, neg),
        auroc=auroc(pos, neg),
    )


@dataclass
class TrackingResult:
    """Per-sample projections of two conditions on welfare vectors at one layer (A8).

    Attributes:
        analysis: ``"outcome"`` (§5.1 maze goals) or ``"correctness"`` (§5.2 feedback turns).
        layer: Layer read (ℓ*).
        position: Token-position rule (e.g. ``"last_action"``, ``"generation_prompt:mean"``).
        conditions: ``(first, second)``; every contrast is first minus second.
        labels: Condition of each sample.
        groups: Group of each sample (maze seed, or arithmetic item index).
        projections: ``{vector name: [n]}`` scalar projections a·v/‖v‖ (float64).
        contrasts: ``{vector name: Contrast}``.
        model_id: Model the activations came from.
        info: Further provenance (vector model id, feedback phrases, counts, ...).
    """

    analysis: str
    layer: int
    position: str
    conditions: tuple[str, str]
    labels: list[str]
    groups: list[int]
    projections: dict[str, F64]
    contrasts: dict[str, Contrast]
    model_id: str = "unknown"
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> dict[str, int]:
        """Samples per condition."""
        return {c: sum(1 for lab in self.labels if lab == c) for c in self.conditions}

    def mask(self, condition: str) -> NDArray[np.bool_]:
        """Boolean mask of the samples of ``condition``."""
        return np.array([lab == condition for lab in self.labels], dtype=bool)

    def standardized(self, name: str) -> F64:
        """Projections on ``name`` in SD units around the panel mean (how the paper plots them).

        Raises:
            VectorError: No vector ``name``.
        """
        if name not in self.projections:
            raise VectorError(f"No projections on {name!r}; have {list(self.projections)}.")
        x = self.projections[name]
        sd = float(x.std(ddof=1)) if x.size > 1 else 0.0
        return (x - x.mean()) / sd if sd > 0 else x - x.mean()

    def to_dict(self, samples: bool = True) -> dict[str, Any]:
        """JSON-friendly dict; ``samples=False`` leaves out the per-sample arrays."""
        out: dict[str, Any] = {
            "analysis": self.analysis,
            "layer": self.layer,
            "position": self.position,
            "conditions": list(self.conditions),
            "n": self.n,
            "model_id": self.model_id,
            "info": dict(self.info),
            "contrasts": {k: c.to_dict() for k, c in self.contrasts.items()},
        }
        if samples:
            out["labels"] = list(self.labels)
            out["groups"] = list(self.groups)
            out["projections"] = {k: [float(x) for x in v] for k, v in self.projections.items()}
        return out

    def __repr__(self) -> str:
        a, b = self.conditions
        n = self.n
        head = (
            f"TrackingResult({self.analysis} @ layer {self.layer}, {self.position}, "
            f"model={self.model_id}: {a} n={n[a]} vs {b} n={n[b]}"
        )
        rows = [
            f"  v_{name:<8} {a} {c.mean_pos:+10.4g}  {b} {c.mean_neg:+10.4g}  "
            f"d={c.d:+.3f}  AUROC={c.auroc:.3f}"
            for name, c in self.contrasts.items()
        ]
        return head + "\n" + "\n".join(rows) + ")"


# ----------------------------------------------------------------------------------------------
# Shared machinery
# ----------------------------------------------------------------------------------------------


def _vector_table(
    model: Any, vectors: Any, names: Sequence[str] | None, allow_other_checkpoint: bool
) -> dict[str, Tensor]:
    """``{name: tensor}`` from ConceptVectors (checked against the model) or a mapping."""
    if hasattr(vectors, "check_compatible"):
        vectors.check_compatible(model, allow_other_checkpoint=allow_other_checkpoint)
    if isinstance(vectors, Tensor):
        vectors = {"v": vectors}
    if not (hasattr(vectors, "items") or isinstance(vectors, Mapping)):
        raise VectorError(
            f"vectors must be ConceptVectors or a mapping of name -> tensor, got "
            f"{type(vectors).__name__}.",
            hint="Pass wl.welfare_vectors(...) or {'mold': v_mold, 'gold': v_gold}.",
        )
    table = {str(k): torch.as_tensor(v) for k, v in vectors.items()}
    return _choose_named(table, names)


def _direction(name: str, v: Tensor, layer: int, total: int, d_model: int) -> Tensor:
    if v.ndim == 2 and tuple(v.shape) == (total, d_model):
        out = v[layer]
    elif v.ndim == 1 and v.shape[0] == d_model:
        out = v
    else:
        raise ShapeError(
            f"Vector {name!r} has shape {tuple(v.shape)}; expected [{total}, {d_model}] or "
            f"[{d_model}].",
            hint="Use vectors extracted from a model of this architecture.",
        )
    if not bool(torch.isfinite(out).all()) or float(out.double().norm()) == 0.0:
        raise VectorError(
            f"Vector {name!r} is zero or non-finite at layer {layer}.",
            hint="Check the extraction.",
        )
    return out.detach().float().cpu()


def _read(
    model: Any,
    items: list[tuple[Messages, str, int]],
    *,
    position: Literal["last_action", "generation_prompt"],
    reduce: Literal["mean", "last"],
    layer: int,
    hook: HookKind,
    batch_size: int,
    template: Literal["auto", "model", "plain"],
    progress: bool,
) -> tuple[Float[Tensor, "n d_model"], list[int]]:
    """Activations ``[n_conversations, d_model]`` in input order, one row per conversation.

    Each conversation gets its index as group, so that several selected tokens (the
    generation prompt) can be reduced per conversation here.
    """
    indexed = [(messages, label, i) for i, (messages, label, _) in enumerate(items)]
    rows: dict[int, list[Tensor]] = {}
    for acts, _labels, groups in iter_activations(
        model,
        indexed,
        position=position,
        layers=[layer],
        hook=hook,
        reduce="tokens",
        batch_size=batch_size,
        template=template,
        progress=progress,
        description="tracking",
    ):
        for row, group in zip(acts[:, 0], groups, strict=True):
            rows.setdefault(group, []).append(row)
    out = []
    for i in range(len(items)):
        stacked = torch.stack(rows[i]).double()
        out.append(stacked.mean(dim=0) if reduce == "mean" else stacked[-1])
    return torch.stack(out), [g for _, _, g in items]


def _result(
    analysis: str,
    model: Any,
    table: dict[str, Tensor],
    acts: Tensor,
    labels: list[str],
    groups: list[int],
    conditions: tuple[str, str],
    layer: int,
    position: str,
    info: dict[str, Any],
) -> TrackingResult:
    total, d_model = int(model.cfg.n_layers), int(model.cfg.d_model)
    dirs = {n: _direction(n, v, layer, total, d_model) for n, v in table.items()}
    stacked = torch.stack(list(dirs.values()))  # [n_vectors, d]
    # projections() scores [n, L, d] against [L, d]; the vectors stand in for the "layers".
    proj, _ = projections(acts.double()[:, None, :].expand(-1, len(dirs), -1), stacked)
    per_vector = {n: np.ascontiguousarray(proj[:, j]) for j, n in enumerate(dirs)}
    a, b = conditions
    pos = np.array([lab == a for lab in labels], dtype=bool)
    neg = np.array([lab == b for lab in labels], dtype=bool)
    if pos.sum() < 2 or neg.sum() < 2:
        raise DataError(
            f"Tracking needs >= 2 samples of each condition; got {int(pos.sum())} {a!r} and "
            f"{int(neg.sum())} {b!r}.",
            hint="Pass more trajectories/items of both conditions.",
        )
    contrasts = {n: _contrast(n, a, b, x[pos], x[neg]) for n, x in per_vector.items()}
    return TrackingResult(
        analysis=analysis,
        layer=layer,
        position=position,
        conditions=conditions,
        labels=labels,
        groups=groups,
        projections=per_vector,
        contrasts=contrasts,
        model_id=model_info(model).model_id,
        info=info,
    )


def _vector_model_id(vectors: Any) -> str | None:
    meta = getattr(vectors, "metadata", None)
    return None if meta is None else str(getattr(meta, "model_id", None))


# ----------------------------------------------------------------------------------------------
# §5.1 maze outcomes
# ----------------------------------------------------------------------------------------------


def track_outcomes(
    model: Any,
    vectors: Any,
    trajectories: Iterable[Any],
    layer: int,
    *,
    names: Sequence[str] | None = None,
    classes: tuple[str, str] = ("mold", "gold"),
    hook: HookKind = "resid_post",
    batch_size: int = 8,
    template: Literal["auto", "model", "plain"] = "auto",
    progress: bool = False,
    allow_other_checkpoint: bool = False,
) -> TrackingResult:
    """Project fresh Mold-final vs Gold-final trajectories on welfare vectors at ℓ* (§5.1, A8).

    Each trajectory is read at its last direction letter (position −1, as in extraction) at
    ``layer``; each vector gives the scalar projection a·v_ℓ/‖v_ℓ‖. Trajectories of other
    classes (e.g. Path-final) are skipped and counted in ``info["skipped"]``.

    Args:
        model: The model to read (trained, or naive for the control panel).
        vectors: :class:`~welfare_lens.vectors.ConceptVectors` (checked against ``model``) or a
            mapping ``{name: [n_layers, d_model] or [d_model]}``.
        trajectories: Fresh trajectories (never those the vectors were computed from), e.g.
            ``synthetic_trajectories(cfg, per_class=200, seed=..., classes=("mold", "gold"))``,
            or ``(messages, label[, group])`` tuples.
        layer: ℓ* (negative indices count from the end).
        names: Vectors to project on (default ``mold`` and ``gold`` where present, else all).
        classes: ``(first, second)`` trajectory classes; d is first minus second.
        hook: Per-block hook (default the block output, ``resid_post``).
        batch_size, template, progress: See :func:`welfare_lens.capture.iter_activations`.
        allow_other_checkpoint: Project a model's activations on vectors from another
            checkpoint of the same architecture (e.g. the naive model on trained vectors).

    Returns:
        Per-sample projections and, per vector, condition means, Cohen's d and AUROC.

    Raises:
        DataError: Fewer than 2 trajectories of a class.
        VectorError, ShapeError: Vectors unknown, zero, or for another model.
    """
    total = int(model.cfg.n_layers)
    chosen = resolve_layer(layer, total)
    table = _vector_table(model, vectors, names, allow_other_checkpoint)
    items: list[tuple[Messages, str, int]] = []
    skipped = 0
    for index, obj in enumerate(trajectories):
        if isinstance(obj, tuple):
            messages, label = obj[0], str(obj[1])
            group = int(obj[2]) if len(obj) > 2 else index
        else:
            messages, label = obj.messages, str(obj.label)
            seed = getattr(obj, "maze_seed", None)
            group = index if seed is None else int(seed)
        if label not in classes:
            skipped += 1
            continue
        items.append((list(messages), label, group))
    if not items:
        raise DataError(
            f"No trajectory of class {classes[0]!r} or {classes[1]!r}.",
            hint="Generate them with synthetic_trajectories(..., classes=('mold', 'gold')).",
        )
    acts, groups = _read(
        model,
        items,
        position="last_action",
        reduce="last",
        layer=chosen,
        hook=hook,
        batch_size=batch_size,
        template=template,
        progress=progress,
    )
    info = {"skipped": skipped, "hook": hook, "vector_model_id": _vector_model_id(vectors)}
    return _result(
        "outcome",
        model,
        table,
        acts,
        [label for _, label, _ in items],
        groups,
        (classes[0], classes[1]),
        chosen,
        "last_action",
        info,
    )


# ----------------------------------------------------------------------------------------------
# §5.2 correctness
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArithmeticItem:
    """One authored arithmetic question with a correct and a plausible wrong answer.

    Attributes:
        id: Stable identifier (``arith-00`` …).
        kind: ``addition``, ``subtraction``, ``multiplication``, ``division`` or
            ``word_problem``.
        question: The user turn.
        answer: The correct answer.
        wrong_answer: A plausible wrong answer (off by one, ten, or a carry).
    """

    id: str
    kind: str
    question: str
    answer: str
    wrong_answer: str


_ARITHMETIC_FILE = "arithmetic.json"


def load_arithmetic(path: str | Path | None = None) -> list[ArithmeticItem]:
    """Load arithmetic items (default: the 40 shipped in ``welfare_lens/data/arithmetic.json``).

    Raises:
        DataError: The file is missing, not JSON, or an item lacks a field or has
            ``answer == wrong_answer``.
    """
    doc = read_json(
        _ARITHMETIC_FILE,
        path,
        "arithmetic items",
        hint="Pass a JSON file {'items': [{id, kind, question, answer, wrong_answer}]}.",
    )
    raw = doc.get("items") if isinstance(doc, dict) else doc
    if not isinstance(raw, list) or not raw:
        raise DataError("The arithmetic file has no items.", hint="See data/arithmetic.json.")
    out: list[ArithmeticItem] = []
    for i, entry in enumerate(raw):
        try:
            item = ArithmeticItem(
                id=str(entry.get("id", f"item-{i}")),
                kind=str(entry.get("kind", "unknown")),
                question=str(entry["question"]),
                answer=str(entry["answer"]),
                wrong_answer=str(entry["wrong_answer"]),
            )
        except (KeyError, AttributeError, TypeError) as err:
            raise DataError(
                f"Arithmetic item {i} lacks a field: {err}",
                hint="Each item needs question, answer and wrong_answer.",
            ) from err
        if item.answer.strip() == item.wrong_answer.strip():
            raise DataError(f"Item {item.id}: the wrong answer equals the answer.")
        out.append(item)
    return out


def correctness_conversations(
    items: Sequence[ArithmeticItem],
    *,
    feedback: tuple[str, str] = FEEDBACK,
    answer_template: str = "{answer}",
    truthful: bool = True,
) -> list[tuple[Messages, str, int]]:
    """Two feedback conversations per item: ``(messages, "correct"|"incorrect", item index)``.

    ``[user: question] [assistant: answer] [user: feedback]``; the feedback is ``feedback[0]``
    after the correct answer and ``feedback[1]`` after the wrong one (``truthful=True``, paper
    §5.2), or the reverse (``truthful=False``, a control). The label is always the correctness
    of the answer.

    Args:
        items: Arithmetic items (:func:`load_arithmetic`).
        feedback: ``(after a correct answer, after a wrong answer)``.
        answer_template: How the assistant states an answer, with ``{answer}``
            (e.g. ``"The answer is {answer}."``).
        truthful: Tell the truth (paper) or invert the feedback (control).
    """
    if "{answer}" not in answer_template:
        raise DataError(
            f"answer_template must contain '{{answer}}', got {answer_template!r}.",
            hint="e.g. 'The answer is {answer}.'",
        )
    right, wrong = feedback if truthful else (feedback[1], feedback[0])
    out: list[tuple[Messages, str, int]] = []
    for index, item in enumerate(items):
        for label, answer, said in (
            ("correct", item.answer, right),
            ("incorrect", item.wrong_answer, wrong),
        ):
            messages = [
                {"role": "user", "content": item.question},
                {"role": "assistant", "content": answer_template.format(answer=answer)},
                {"role": "user", "content": said},
            ]
            out.append((messages, label, index))
    return out


def track_correctness(
    model: Any,
    vectors: Any,
    layer: int,
    *,
    items: Sequence[ArithmeticItem] | None = None,
    names: Sequence[str] | None = None,
    feedback: tuple[str, str] = FEEDBACK,
    answer_template: str = "{answer}",
    truthful: bool = True,
    reduce: Literal["mean", "last"] = "mean",
    hook: HookKind = "resid_post",
    batch_size: int = 8,
    template: Literal["auto", "model", "plain"] = "auto",
    progress: bool = False,
    allow_other_checkpoint: bool = False,
) -> TrackingResult:
    """Project feedback-turn activations of correct vs incorrect answers on v at ℓ* (§5.2, A8).

    Each item gives a correct and an incorrect conversation (:func:`correctness_conversations`),
    followed by the assistant generation prompt; the residual stream at ``layer`` is read at
    the generation-prompt tokens (mean over them, or the last one) and projected on each vector.

    Args:
        model: The model to read (trained, or naive: the paper finds separation in both).
        vectors: :class:`~welfare_lens.vectors.ConceptVectors` or ``{name: tensor}``.
        layer: ℓ* (negative indices count from the end).
        items: Arithmetic items (default: the 40 shipped ones).
        names: Vectors to project on (default ``mold`` and ``gold`` where present, else all).
        feedback, answer_template, truthful: See :func:`correctness_conversations`.
        reduce: ``"mean"`` over the generation-prompt tokens (B-8, default) or ``"last"``.
        hook, batch_size, template, progress, allow_other_checkpoint: See :func:`track_outcomes`.

    Returns:
        Conditions ``("correct", "incorrect")``: per-sample projections (groups are item
        indices) and, per vector, condition means, Cohen's d and AUROC.
    """
    if reduce not in ("mean", "last"):
        raise DataError(f"reduce must be 'mean' or 'last', got {reduce!r}.")
    total = int(model.cfg.n_layers)
    chosen = resolve_layer(layer, total)
    table = _vector_table(model, vectors, names, allow_other_checkpoint)
    chosen_items = list(items) if items is not None else load_arithmetic()
    conversations = correctness_conversations(
        chosen_items, feedback=feedback, answer_template=answer_template, truthful=truthful
    )
    acts, groups = _read(
        model,
        conversations,
        position="generation_prompt",
        reduce=reduce,
        layer=chosen,
        hook=hook,
        batch_size=batch_size,
        template=template,
        progress=progress,
    )
    info = {
        "feedback": list(feedback),
        "truthful": truthful,
        "answer_template": answer_template,
        "n_items": len(chosen_items),
        "hook": hook,
        "vector_model_id": _vector_model_id(vectors),
    }
    return _result(
        "correctness",
        model,
        table,
        acts,
        [label for _, label, _ in conversations],
        groups,
        ("correct", "incorrect"),
        chosen,
        f"generation_prompt:{reduce}",
        info,
    )


# ----------------------------------------------------------------------------------------------
# Figure 7: confidence-tertile control
# ----------------------------------------------------------------------------------------------


def _mean_or_nan(x: F64) -> float:
    return float(x.mean()) if x.size else math.nan


def _sd_or_nan(x: F64) -> float:
    return float(x.std(ddof=1)) if x.size > 1 else math.nan


def _safe_contrast(name: str, pos_name: str, neg_name: str, pos: F64, neg: F64) -> Contrast:
    """:func:`_contrast` that gives NaN instead of raising where a group is too small.

    d needs >= 2 samples per group (pooled SD), AUROC >= 1; means need one sample.
    """
    enough = pos.size >= 2 and neg.size >= 2
    return Contrast(
        vector=name,
        positive=pos_name,
        negative=neg_name,
        n_pos=int(pos.size),
        n_neg=int(neg.size),
        mean_pos=_mean_or_nan(pos),
        mean_neg=_mean_or_nan(neg),
        sd_pos=_sd_or_nan(pos),
        sd_neg=_sd_or_nan(neg),
        d=cohens_d(pos, neg) if enough else math.nan,
        auroc=auroc(pos, neg) if pos.size and neg.size else math.nan,
    )


def _contrast_dict(c: Contrast) -> dict[str, Any]:
    """:meth:`Contrast.to_dict` with every non-finite number as a string (strict JSON)."""
    return {k: _num(v) if isinstance(v, float) else v for k, v in c.to_dict().items()}


@dataclass
class ConfidenceBin:
    """One P(True) quantile bin of the confidence control (Figure 7).

    Attributes:
        index: Bin number; 0 holds the least confident samples.
        low: Lower P(True) edge. The bin is ``(low, high]``; the first bin also holds ``low``.
        high: Upper P(True) edge.
        n: Samples in the bin.
        mean_p_true: Their mean normalised P(True) (NaN for an empty bin).
        contrasts: ``{vector: Contrast}`` of the first condition against the second within
            the bin (pooled-SD Cohen's d, as in :class:`TrackingResult`); NaN where a group is
            too small (see ``note``).
        note: Why a statistic of this bin is NaN; empty when none is.
    """

    index: int
    low: float
    high: float
    n: int
    mean_p_true: float
    contrasts: dict[str, Contrast]
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (NaN and ±inf as strings)."""
        return {
            "index": self.index,
            "low": _num(self.low),
            "high": _num(self.high),
            "n": self.n,
            "mean_p_true": _num(self.mean_p_true),
            "contrasts": {k: _contrast_dict(c) for k, c in self.contrasts.items()},
            "note": self.note,
        }

    def __repr__(self) -> str:
        ds = ", ".join(f"v_{k} d={c.d:+.3f}" for k, c in self.contrasts.items())
        note = f"; {self.note}" if self.note else ""
        return (
            f"ConfidenceBin({self.index}: P(True) in ({self.low:.4g}, {self.high:.4g}], "
            f"n={self.n}; {ds}{note})"
        )


@dataclass
class ConfidenceControl:
    """Correct vs incorrect projections within quantile bins of P(True) (Figure 7, A8).

    If the welfare axis only tracked confidence, the separation of correct and incorrect
    responses would vanish once confidence is held (roughly) fixed; the paper finds it does
    not, in each MMLU tertile.

    Attributes:
        conditions: ``(first, second)``, usually ``("correct", "incorrect")``; every d is
            first minus second.
        edges: ``[n_bins + 1]`` P(True) quantile edges (``np.quantile``, linear
            interpolation); tied values can make neighbouring edges equal.
        bins: One :class:`ConfidenceBin` per quantile bin, least confident first.
        assignment: Bin index of each sample.
        p_true: Normalised P(True) of each sample, P(True)/(P(True)+P(False)).
        labels: Condition of each sample.
        overall: ``{vector: Contrast}`` over all samples, ignoring confidence.
        notes: Run-level caveats (collapsed edges from ties, empty bins).
        tracking: The tracking result the projections came from, if one was given.
        info: Provenance (P(True) source, ...).
    """

    conditions: tuple[str, str]
    edges: F64
    bins: list[ConfidenceBin]
    assignment: NDArray[np.int64]
    p_true: F64
    labels: list[str]
    overall: dict[str, Contrast]
    notes: list[str] = field(default_factory=list)
    tracking: TrackingResult | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_bins(self) -> int:
        """Number of quantile bins (3 for the paper's tertiles)."""
        return len(self.bins)

    @property
    def vectors(self) -> list[str]:
        """Vector names, in order."""
        return list(self.overall)

    def d(self, vector: str) -> F64:
        """Cohen's d of ``vector`` in each bin, least confident first (NaN where undefined).

        Raises:
            VectorError: No vector ``vector``.
        """
        if vector not in self.overall:
            raise VectorError(
                f"No projections on {vector!r}; have {self.vectors}.",
                hint=f"Use one of {self.vectors}.",
            )
        return np.array([b.contrasts[vector].d for b in self.bins], dtype=np.float64)

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per (bin, vector): edges, counts, condition means, d, AUROC, note."""
        a, b = self.conditions
        out: list[dict[str, Any]] = []
        for cbin in self.bins:
            for name, c in cbin.contrasts.items():
                out.append(
                    {
                        "bin": cbin.index,
                        "low": cbin.low,
                        "high": cbin.high,
                        "n": cbin.n,
                        "mean_p_true": cbin.mean_p_true,
                        "vector": name,
                        f"n_{a}": c.n_pos,
                        f"n_{b}": c.n_neg,
                        f"mean_{a}": c.mean_pos,
                        f"mean_{b}": c.mean_neg,
                        "d": c.d,
                        "auroc": c.auroc,
                        "note": cbin.note,
                    }
                )
        return out

    def to_dict(self, samples: bool = True) -> dict[str, Any]:
        """JSON-friendly dict; ``samples=False`` leaves out the per-sample arrays."""
        out: dict[str, Any] = {
            "conditions": list(self.conditions),
            "n_bins": self.n_bins,
            "edges": [_num(float(e)) for e in self.edges],
            "bins": [b.to_dict() for b in self.bins],
            "overall": {k: _contrast_dict(c) for k, c in self.overall.items()},
            "notes": list(self.notes),
            "info": dict(self.info),
        }
        if self.tracking is not None:
            out["tracking"] = self.tracking.to_dict(samples=samples)
        if samples:
            out["p_true"] = [float(x) for x in self.p_true]
            out["assignment"] = [int(x) for x in self.assignment]
            out["labels"] = list(self.labels)
        return out

    def __repr__(self) -> str:
        a, b = self.conditions
        where = ""
        if self.tracking is not None:
            where = f", layer {self.tracking.layer}, model={self.tracking.model_id}"
        lines = [
            f"ConfidenceControl({a} vs {b} in {self.n_bins} P(True) quantile bins{where}, "
            f"n={len(self.labels)}:"
        ]
        for cbin in self.bins:
            first = next(iter(cbin.contrasts.values()), None)
            counts = "" if first is None else f" ({a} {first.n_pos}, {b} {first.n_neg})"
            lines.append(
                f"  bin {cbin.index} P(True) ({cbin.low:.4g}, {cbin.high:.4g}] n={cbin.n}{counts}"
                + (f"  [{cbin.note}]" if cbin.note else "")
            )
            for name, c in cbin.contrasts.items():
                lines.append(
                    f"    v_{name:<8} {a} {c.mean_pos:+10.4g}  {b} {c.mean_neg:+10.4g}  "
                    f"d={c.d:+.3f}"
                )
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines) + ")"


def _control_samples(
    result_or_rows: TrackingResult | Sequence[Mapping[str, Any]],
    names: Sequence[str] | None,
) -> tuple[list[str], tuple[str, str], dict[str, F64], TrackingResult | None]:
    """Labels, conditions and ``{vector: [n] projections}`` of a result or of rows."""
    if isinstance(result_or_rows, TrackingResult):
        res = result_or_rows
        labels, conditions, table = list(res.labels), res.conditions, dict(res.projections)
        tracking: TrackingResult | None = res
    else:
        tracking = None
        conditions = ("correct", "incorrect")
        labels = []
        columns: dict[str, list[float]] = {}
        hint = (
            "Pass a TrackingResult, or rows {'correct': bool (or 'label': 'correct'|"
            "'incorrect'), 'projections': {vector: float}}."
        )
        for i, row in enumerate(result_or_rows):
            if not isinstance(row, Mapping):
                raise DataError(f"Row {i} is a {type(row).__name__}, not a mapping.", hint=hint)
            if "label" in row:
                label = str(row["label"])
            elif isinstance(row.get("correct"), bool):
                label = conditions[0] if row["correct"] else conditions[1]
            else:
                raise DataError(f"Row {i} has no 'label' and no boolean 'correct'.", hint=hint)
            if label not in conditions:
                raise DataError(f"Row {i} has label {label!r}, not one of {conditions}.", hint=hint)
            projections = row.get("projections")
            if not isinstance(projections, Mapping) or not projections:
                raise DataError(f"Row {i} has no 'projections' mapping.", hint=hint)
            if i and set(projections) != set(columns):
                raise DataError(
                    f"Row {i} projects on {sorted(projections)}, row 0 on {sorted(columns)}.",
                    hint="Give every row the same vectors.",
                )
            labels.append(label)
            for k, v in projections.items():
                columns.setdefault(str(k), []).append(float(v))
        table = {k: np.asarray(v, dtype=np.float64) for k, v in columns.items()}
    if not labels:
        raise DataError("No samples to split by confidence.", hint="Pass a non-empty result.")
    if names is not None:  # no mold/gold default here: keep every projection unless asked
        table = _choose_named(
            table, names, what="projections", hint="Pass names=[...] from the projected vectors."
        )
    return labels, (conditions[0], conditions[1]), table, tracking


def _p_true_array(p_true: Any, n: int) -> F64:
    """Normalised P(True) per sample from floats or :func:`~welfare_lens.steering.p_true` dicts."""
    hint = (
        "Pass one normalised P(True) in [0, 1] per sample, e.g. correctness_p_true(model, items)."
    )
    try:
        values = [float(x["p_true"]) if isinstance(x, Mapping) else float(x) for x in p_true]
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"Cannot read P(True) values: {err!r}.", hint=hint) from err
    out = np.asarray(values, dtype=np.float64)
    if out.size != n:
        raise ShapeError(f"Got {out.size} P(True) values for {n} samples.", hint=hint)
    bad = ~np.isfinite(out) | (out < 0.0) | (out > 1.0)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{int(bad.sum())} P(True) value(s) are not in [0, 1] (e.g. sample {first}: "
            f"{out[first]!r}).",
            hint="Use the normalised P(True)/(P(True)+P(False)) ('p_true' of p_true()).",
        )
    return out


def confidence_tertiles(
    result_or_rows: TrackingResult | Sequence[Mapping[str, Any]],
    p_true: Sequence[float] | Sequence[Mapping[str, Any]] | NDArray[np.float64],
    *,
    n_bins: int = 3,
    names: Sequence[str] | None = None,
) -> ConfidenceControl:
    """Correct vs incorrect separation within quantile bins of P(True) (Figure 7, A8).

    Samples are split at the ``n_bins``-quantiles of their normalised P(True)
    (``np.quantile``, linear interpolation; tertiles by default). Bin ``i`` holds
    ``edges[i] < p <= edges[i + 1]`` and the first bin also ``p == edges[0]``, the convention
    of ``pandas.qcut``. Within each bin, per vector, the means of the two conditions, their
    counts, Cohen's d (pooled SD, :func:`~welfare_lens.analysis.layer_selection.cohens_d`, as
    for the whole result) and the AUROC are reported.

    Ties never crash the split: tied P(True) values at a quantile can make two edges equal, which
    leaves a bin empty; an empty bin has NaN statistics, and a bin with fewer than 2 samples of
    a condition has NaN d. Both are explained in the bin's ``note`` and the result's ``notes``.

    Args:
        result_or_rows: A correctness :class:`TrackingResult` (e.g. from
            :func:`track_correctness`), or rows ``{"correct": bool (or "label": "correct" |
            "incorrect"), "projections": {vector: float}}``, one per sample.
        p_true: One normalised P(True) per sample, in the same order: floats, or the dicts of
            :func:`~welfare_lens.steering.confidence.p_true` (their ``"p_true"`` is used).
        n_bins: Number of quantile bins (3: the paper's tertiles).
        names: Vectors to report (default all that were projected).

    Returns:
        Per bin and vector: counts, condition means, d and AUROC; plus the overall contrast.

    Raises:
        DataError: No samples, malformed rows, ``n_bins`` < 1, or P(True) outside [0, 1].
        ShapeError: The number of P(True) values differs from the number of samples.
        VectorError: ``names`` asks for a vector that was not projected.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise DataError(
            f"n_bins must be an int >= 1, got {n_bins!r}.", hint="The paper uses tertiles (3)."
        )
    n_bins = int(n_bins)
    labels, conditions, table, tracking = _control_samples(result_or_rows, names)
    p = _p_true_array(p_true, len(labels))
    a, b = conditions
    is_a = np.array([lab == a for lab in labels], dtype=bool)
    is_b = np.array([lab == b for lab in labels], dtype=bool)
    edges = np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1))
    # Count inner edges strictly below p: (edges[i], edges[i+1]] -> i, first bin closed.
    assignment = np.searchsorted(edges[1:-1], p, side="left").astype(np.int64)
    notes: list[str] = []
    bins: list[ConfidenceBin] = []
    for i in range(n_bins):
        inside = assignment == i
        pos_n, neg_n = int((inside & is_a).sum()), int((inside & is_b).sum())
        if not inside.any():
            note = (
                f"empty: tied P(True) values put edges {i} and {i + 1} at {edges[i + 1]:.6g}"
                if edges[i] == edges[i + 1]
                else "empty: no sample in this P(True) range"
            )
            notes.append(f"bin {i} is {note}")
        elif pos_n < 2 or neg_n < 2:
            note = f"d undefined: needs >= 2 {a!r} and >= 2 {b!r} samples, has {pos_n} and {neg_n}"
        else:
            note = ""
        bins.append(
            ConfidenceBin(
                index=i,
                low=float(edges[i]),
                high=float(edges[i + 1]),
                n=int(inside.sum()),
                mean_p_true=_mean_or_nan(p[inside]),
                contrasts={
                    name: _safe_contrast(name, a, b, x[inside & is_a], x[inside & is_b])
                    for name, x in table.items()
                },
                note=note,
            )
        )
    collapsed = int(np.sum(np.diff(edges) == 0.0))
    if collapsed:
        notes.insert(
            0,
            f"{collapsed} pair(s) of quantile edges coincide because of tied P(True) values; "
            "ties stay together in the lower bin.",
        )
    return ConfidenceControl(
        conditions=conditions,
        edges=np.asarray(edges, dtype=np.float64),
        bins=bins,
        assignment=assignment,
        p_true=p,
        labels=labels,
        overall={name: _safe_contrast(name, a, b, x[is_a], x[is_b]) for name, x in table.items()},
        notes=notes,
        tracking=tracking,
        info={"n_bins": n_bins, "binning": "np.quantile edges; bins (low, high]"},
    )


def correctness_p_true(
    model: Any,
    items: Sequence[ArithmeticItem] | None = None,
    *,
    answer_template: str = "{answer}",
    batch_size: int = 16,
    assistant_prefix: str = "",
    template: Literal["auto", "model", "plain"] = "auto",
) -> F64:
    """Normalised P(True) of each correctness conversation's answer (§4.3 probe, Figure 7).

    One value per conversation of :func:`correctness_conversations` (same order: the correct
    then the incorrect answer of each item), from
    ``[user: question] [assistant: answer] [user: "Is your proposed answer correct? Answer
    only 'True' or 'False'."]`` and the generation prompt: the model's confidence in the
    answer before any feedback is given.

    Args:
        model: The model (unsteered, as in the paper's Figure 7).
        items: Arithmetic items (default: the 40 shipped ones).
        answer_template: How the assistant states an answer (as in :func:`track_correctness`).
        batch_size: Conversations per forward pass.
        assistant_prefix: Text after the generation prompt (Qwen3: an empty think block).
        template: As in :func:`~welfare_lens.chat.render_chat`.

    Returns:
        ``[2 * n_items]`` P(True)/(P(True)+P(False)) in float64.

    Raises:
        TokenizationError: ``True`` or ``False`` is not one token for this tokenizer.
    """
    # Imported here: the steering package pulls in generation and judging code.
    from welfare_lens.steering.confidence import p_true

    chosen_items = list(items) if items is not None else load_arithmetic()
    conversations = correctness_conversations(chosen_items, answer_template=answer_template)
    pairs = [(messages[0]["content"], messages[1]["content"]) for messages, _, _ in conversations]
    scores = p_true(
        model,
        pairs,
        batch_size=batch_size,
        assistant_prefix=assistant_prefix,
        template=template,
    )
    return np.array([s["p_true"] for s in scores], dtype=np.float64)


def correctness_with_confidence(
    model: Any,
    vectors: Any,
    layer: int,
    *,
    items: Sequence[ArithmeticItem] | None = None,
    names: Sequence[str] | None = None,
    n_bins: int = 3,
    feedback: tuple[str, str] = FEEDBACK,
    answer_template: str = "{answer}",
    truthful: bool = True,
    reduce: Literal["mean", "last"] = "mean",
    hook: HookKind = "resid_post",
    batch_size: int = 8,
    template: Literal["auto", "model", "plain"] = "auto",
    assistant_prefix: str = "",
    progress: bool = False,
    allow_other_checkpoint: bool = False,
) -> ConfidenceControl:
    """Correctness tracking with the confidence-tertile control, in one call (§5.2, Figure 7).

    Runs :func:`track_correctness`, then :func:`correctness_p_true` on the same
    question/answer pairs, then :func:`confidence_tertiles`. The P(True) probe shares no
    tokens with the feedback turn that the projections read: it asks about the answer itself.

    Args:
        model, vectors, layer, items, names, feedback, answer_template, truthful, reduce, hook,
            batch_size, template, progress, allow_other_checkpoint: See
            :func:`track_correctness`.
        n_bins: Quantile bins of P(True) (3: tertiles).
        assistant_prefix: Text after the probe's generation prompt (see
            :func:`correctness_p_true`).

    Returns:
        The control, with the tracking result in ``.tracking``.
    """
    chosen_items = list(items) if items is not None else load_arithmetic()
    result = track_correctness(
        model,
        vectors,
        layer,
        items=chosen_items,
        names=names,
        feedback=feedback,
        answer_template=answer_template,
        truthful=truthful,
        reduce=reduce,
        hook=hook,
        batch_size=batch_size,
        template=template,
        progress=progress,
        allow_other_checkpoint=allow_other_checkpoint,
    )
    confidence = correctness_p_true(
        model,
        chosen_items,
        answer_template=answer_template,
        batch_size=batch_size,
        assistant_prefix=assistant_prefix,
        template=template,
    )
    control = confidence_tertiles(result, confidence, n_bins=n_bins)
    control.info.update(
        p_true_source="Kadavath P(True) of the stated answer, before the feedback turn",
        assistant_prefix=assistant_prefix,
    )
    return control
