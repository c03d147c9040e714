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

__all__ = [
    "ArithmeticItem",
    "Contrast",
    "TrackingResult",
    "correctness_conversations",
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
    chosen: list[str]
    if names is None:
        preferred: list[str] = [n for n in ("mold", "gold") if n in table]
        chosen = preferred or list(table)
    else:
        chosen = [names] if isinstance(names, str) else list(names)
    missing = [n for n in chosen if n not in table]
    if missing or not chosen:
        raise VectorError(
            f"No vector named {missing or chosen}; available: {list(table)}.",
            hint="Pass names=[...] from the vectors' names.",
        )
    return {n: table[n] for n in chosen}


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
