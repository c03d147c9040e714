"""Steering-layer selection and the per-analysis layer rules (A4; Appendix L "Steering layer").

For each (checkpoint, concept) the paper scores held-out positive and negative samples against
the per-layer vector v_ℓ, computes three scores per layer — AUROC, Cohen's d with pooled SD, and
the overlap of the two histograms (50 bins on the joint range) — and sets

    ℓ* = floor(mean(argmax_ℓ AUROC, argmax_ℓ |d|, argmin_ℓ overlap)).

Which per-sample score is used: the paper's text says samples are "projected" onto v_ℓ and
speaks of "histograms of cosine similarities", so by default every score is the cosine
cos(a, v_ℓ) (``score="cosine"``); ``score="projection"`` uses the scalar projection a·v_ℓ/‖v_ℓ‖
(B-8) instead. Negatives are the union of the other classes, as in Eq. 1 (B-9). Score functions
take NumPy or torch inputs and return float64 NumPy arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from numpy.typing import ArrayLike, NDArray
from scipy.stats import rankdata
from torch import Tensor

from welfare_lens.errors import DataError, LayerError, ShapeError, VectorError
from welfare_lens.vectors import ConceptVectors, HeldOut

__all__ = [
    "LayerSelection",
    "Score",
    "auroc",
    "auroc_per_layer",
    "centred_cosine_layer",
    "cohens_d",
    "cohens_d_per_layer",
    "emotion_scatter_layer",
    "histogram_overlap",
    "histogram_overlap_per_layer",
    "logit_lens_layer",
    "projections",
    "select_from_scores",
    "select_steering_layer",
]

F64 = NDArray[np.float64]
Score = Literal["cosine", "projection"]


def _to_numpy(x: ArrayLike | Tensor) -> F64:
    if isinstance(x, Tensor):
        return np.asarray(x.detach().cpu().double().numpy(), dtype=np.float64)
    return np.asarray(x, dtype=np.float64)


def _as_2d(x: ArrayLike | Tensor, name: str) -> F64:
    """[n] or [n, L] input -> float64 [n, L]; rejects empty and non-finite input."""
    arr = _to_numpy(x)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ShapeError(
            f"{name} must be [n] or [n, n_layers], got shape {arr.shape}.",
            hint="Pass one score per sample (and per layer).",
        )
    if arr.shape[0] == 0:
        raise DataError(
            f"{name} is empty.",
            hint="Both classes need held-out samples (positives and negatives).",
        )
    if not np.isfinite(arr).all():
        raise DataError(f"{name} contains NaN/Inf.", hint="Check the activations and vectors.")
    return arr


def _pair(pos: ArrayLike | Tensor, neg: ArrayLike | Tensor) -> tuple[F64, F64]:
    p, n = _as_2d(pos, "pos"), _as_2d(neg, "neg")
    if p.shape[1] != n.shape[1]:
        raise ShapeError(
            f"pos has {p.shape[1]} layers but neg has {n.shape[1]}.",
            hint="Score both sets at the same layers.",
        )
    return p, n


def _flat(x: ArrayLike | Tensor) -> F64:
    return np.ravel(_to_numpy(x))


# ----------------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------------


def auroc_per_layer(
    pos: Float[ArrayLike, "n_pos n_layers"], neg: Float[ArrayLike, "n_neg n_layers"]
) -> Float[F64, " n_layers"]:
    """AUROC per column: P(pos > neg) + ½·P(pos = neg), i.e. Mann–Whitney U / (n_pos·n_neg).

    Uses mid-ranks, so ties count one half; O(n log n) per layer. 1 means every positive scores
    above every negative, 0.5 is chance.
    """
    p, n = _pair(pos, neg)
    n1, n2 = p.shape[0], n.shape[0]
    ranks = rankdata(np.concatenate([p, n], axis=0), axis=0)  # average ranks handle ties
    u = ranks[:n1].sum(axis=0) - n1 * (n1 + 1) / 2.0
    return np.asarray(u / (n1 * n2), dtype=np.float64)


def auroc(pos: ArrayLike | Tensor, neg: ArrayLike | Tensor) -> float:
    """AUROC of scores ``pos`` (positives) vs ``neg`` (negatives); ties count ½."""
    return float(auroc_per_layer(_flat(pos), _flat(neg))[0])


def cohens_d_per_layer(
    pos: Float[ArrayLike, "n_pos n_layers"], neg: Float[ArrayLike, "n_neg n_layers"]
) -> Float[F64, " n_layers"]:
    """Cohen's d per column: (mean_pos − mean_neg) / pooled SD.

    Pooled SD = sqrt(((n₁−1)s₁² + (n₂−1)s₂²)/(n₁+n₂−2)) with ddof=1 per group. Where the pooled SD
    is 0, d is ±inf if the means differ and 0 if they do not.

    Raises:
        DataError: A group has fewer than 2 samples.
    """
    p, n = _pair(pos, neg)
    n1, n2 = p.shape[0], n.shape[0]
    if n1 < 2 or n2 < 2:
        raise DataError(
            f"Cohen's d needs >= 2 samples per group, got {n1} and {n2}.",
            hint="Use more held-out samples.",
        )
    pooled = np.sqrt(
        ((n1 - 1) * p.var(axis=0, ddof=1) + (n2 - 1) * n.var(axis=0, ddof=1)) / (n1 + n2 - 2)
    )
    diff = p.mean(axis=0) - n.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = diff / pooled
        out = np.where(pooled > 0, d, np.where(diff == 0, 0.0, np.copysign(np.inf, diff)))
    return np.asarray(out, dtype=np.float64)


def cohens_d(pos: ArrayLike | Tensor, neg: ArrayLike | Tensor) -> float:
    """Cohen's d with pooled SD (ddof=1 per group); see :func:`cohens_d_per_layer`."""
    return float(cohens_d_per_layer(_flat(pos), _flat(neg))[0])


def histogram_overlap_per_layer(
    pos: Float[ArrayLike, "n_pos n_layers"],
    neg: Float[ArrayLike, "n_neg n_layers"],
    bins: int = 50,
) -> Float[F64, " n_layers"]:
    """Histogram overlap per column: Σᵢ min(pᵢ, qᵢ) of the two normalised histograms.

    Both histograms use ``bins`` equal-width bins on the joint range [min, max] of both samples
    of that column (``np.histogram`` edges, last bin closed); each is normalised to sum to 1.
    Identical samples give 1, separated samples 0. A column where every value is equal gives 1.
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise DataError(f"bins must be an int >= 1, got {bins!r}.", hint="The paper uses 50 bins.")
    p, n = _pair(pos, neg)
    out = np.empty(p.shape[1], dtype=np.float64)
    for layer in range(p.shape[1]):
        lo = min(p[:, layer].min(), n[:, layer].min())
        hi = max(p[:, layer].max(), n[:, layer].max())
        if hi <= lo:
            out[layer] = 1.0
            continue
        hp, _ = np.histogram(p[:, layer], bins=bins, range=(lo, hi))
        hn, _ = np.histogram(n[:, layer], bins=bins, range=(lo, hi))
        out[layer] = np.minimum(hp / p.shape[0], hn / n.shape[0]).sum()
    return out


def histogram_overlap(pos: ArrayLike | Tensor, neg: ArrayLike | Tensor, bins: int = 50) -> float:
    """Overlap Σ min(p, q) of two normalised ``bins``-bin histograms on the joint range."""
    return float(histogram_overlap_per_layer(_flat(pos), _flat(neg), bins)[0])


# ----------------------------------------------------------------------------------------------
# Steering layer
# ----------------------------------------------------------------------------------------------


@dataclass
class LayerSelection:
    """Result of the Appendix L steering-layer rule for one concept.

    Attributes:
        layer: ℓ* = floor(mean(best_auroc_layer, best_d_layer, best_overlap_layer)).
        auroc: AUROC per layer (positives vs negatives).
        d: Cohen's d per layer (pooled SD).
        overlap: 50-bin histogram overlap per layer.
        best_auroc_layer: argmax AUROC (first on ties).
        best_d_layer: argmax |d| (first on ties).
        best_overlap_layer: argmin overlap (first on ties).
        concept: The positive class, if known.
        score: Per-sample score used (``"cosine"`` or ``"projection"``).
        n_pos: Number of positive samples.
        n_neg: Number of negative samples.
    """

    layer: int
    auroc: Float[F64, " n_layers"]
    d: Float[F64, " n_layers"]
    overlap: Float[F64, " n_layers"]
    best_auroc_layer: int
    best_d_layer: int
    best_overlap_layer: int
    concept: str | None = None
    score: str = "cosine"
    n_pos: int = 0
    n_neg: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (arrays as lists; ±inf d values as strings)."""

        def num(x: float) -> float | str:
            return float(x) if np.isfinite(x) else str(float(x))

        return {
            "layer": self.layer,
            "concept": self.concept,
            "score": self.score,
            "n_pos": self.n_pos,
            "n_neg": self.n_neg,
            "best_auroc_layer": self.best_auroc_layer,
            "best_d_layer": self.best_d_layer,
            "best_overlap_layer": self.best_overlap_layer,
            "auroc": [float(x) for x in self.auroc],
            "d": [num(x) for x in self.d],
            "overlap": [float(x) for x in self.overlap],
        }


def select_from_scores(
    pos: Float[ArrayLike, "n_pos n_layers"],
    neg: Float[ArrayLike, "n_neg n_layers"],
    bins: int = 50,
    concept: str | None = None,
    score: str = "cosine",
) -> LayerSelection:
    """Apply the Appendix L rule to precomputed per-layer scores of held-out samples.

    Args:
        pos: Score of every positive sample at every layer (e.g. cos(a, v_ℓ)).
        neg: The same for the negatives.
        bins: Histogram bins for the overlap (paper: 50).
        concept: Name recorded in the result.
        score: Name of the score, recorded in the result.

    Returns:
        The per-layer scores, the three best layers, and ℓ* = floor of their mean.
    """
    p, n = _pair(pos, neg)
    au = auroc_per_layer(p, n)
    d = cohens_d_per_layer(p, n)
    ov = histogram_overlap_per_layer(p, n, bins)
    # np.argmax/argmin return the first (shallowest) layer on ties.
    best_au, best_d, best_ov = int(np.argmax(au)), int(np.argmax(np.abs(d))), int(np.argmin(ov))
    return LayerSelection(
        layer=(best_au + best_d + best_ov) // 3,  # floor of the mean of three non-negative ints
        auroc=au,
        d=d,
        overlap=ov,
        best_auroc_layer=best_au,
        best_d_layer=best_d,
        best_overlap_layer=best_ov,
        concept=concept,
        score=score,
        n_pos=int(p.shape[0]),
        n_neg=int(n.shape[0]),
    )


def projections(
    acts: Float[Tensor, "n n_layers d_model"],
    v: Float[Tensor, "n_layers d_model"],
    chunk: int = 256,
) -> tuple[Float[F64, "n n_layers"], Float[F64, "n n_layers"]]:
    """Scalar projections a·v_ℓ/‖v_ℓ‖ (B-8) and cosines cos(a, v_ℓ) at every layer.

    Computed in float64 in chunks of samples, so a large float32 set is not copied whole.
    A zero activation has cosine 0.

    Returns:
        ``(projection, cosine)``, each ``[n, n_layers]``.

    Raises:
        ShapeError: ``acts`` is not ``[n, L, d]`` matching ``v``.
        VectorError: ``v`` is zero or non-finite at some layer.
    """
    if acts.ndim != 3 or v.ndim != 2 or tuple(acts.shape[1:]) != tuple(v.shape):
        raise ShapeError(
            f"acts must be [n, {', '.join(map(str, v.shape))}] to match the vector "
            f"{tuple(v.shape)}, got {tuple(acts.shape)}.",
            hint="Capture held-out activations at every layer of the model the vectors come from.",
        )
    v64 = v.detach().cpu().double()
    v_norm = torch.linalg.vector_norm(v64, dim=-1)
    bad = ((v_norm == 0) | ~torch.isfinite(v_norm)).nonzero().flatten().tolist()
    if bad:
        raise VectorError(
            f"The vector is zero or non-finite at layer(s) {bad}; projections are undefined.",
            hint="Check the vectors with ConceptVectors.validate().",
        )
    proj_parts, cos_parts = [], []
    for start in range(0, acts.shape[0], max(1, chunk)):
        a = acts[start : start + chunk].detach().cpu().double()
        dot = torch.einsum("nld,ld->nl", a, v64)
        a_norm = torch.linalg.vector_norm(a, dim=-1)
        proj_parts.append(dot / v_norm)
        cos_parts.append(torch.where(a_norm > 0, dot / (a_norm.clamp(min=1e-300) * v_norm), 0.0))
    if not proj_parts:
        empty = np.zeros((0, v.shape[0]), dtype=np.float64)
        return empty, empty.copy()
    return torch.cat(proj_parts).numpy(), torch.cat(cos_parts).numpy()


def select_steering_layer(
    vectors: ConceptVectors,
    concept: str,
    samples: HeldOut | Float[Tensor, "n n_layers d_model"],
    labels: Sequence[str] | None = None,
    *,
    negatives: Sequence[str] | None = None,
    score: Score = "cosine",
    bins: int = 50,
) -> LayerSelection:
    """Choose ℓ* for one concept from held-out activations (A4; Appendix L).

    Positives are the samples labelled ``concept``; negatives are, by default, all other samples
    (the union of the other classes, as in Eq. 1; B-9). Each sample is scored at every layer by
    ``score`` against v_ℓ; then AUROC, Cohen's d and the 50-bin histogram overlap give three
    best layers and ℓ* = floor of their mean.

    Args:
        vectors: Concept vectors containing ``concept``.
        concept: e.g. ``"mold"`` or ``"gold"``.
        samples: :attr:`ClassStatistics.heldout`, or a ``[n, n_layers, d_model]`` tensor of
            held-out activations (never used to compute the vectors).
        labels: Class label per sample; required with a tensor, taken from ``HeldOut``.
        negatives: Classes used as negatives (default: every label other than ``concept``).
        score: ``"cosine"`` (default) or ``"projection"``.
        bins: Histogram bins (paper: 50).

    Raises:
        DataError: No positives or no negatives, label count mismatch, or a bad ``score``.
        ShapeError: The activations do not match the vectors' ``[n_layers, d_model]``.
    """
    if score not in ("cosine", "projection"):
        raise DataError(
            f"score must be 'cosine' or 'projection', got {score!r}.", hint="Use 'cosine'."
        )
    if isinstance(samples, HeldOut):
        acts, labs = samples.acts, list(samples.labels)
    else:
        if labels is None:
            raise DataError(
                "labels are required when samples is a tensor.",
                hint="Pass labels=[...] or the HeldOut from ClassStatistics.heldout.",
            )
        acts, labs = samples, [str(x) for x in labels] if not isinstance(labels, str) else []
    if len(labs) != acts.shape[0]:
        raise DataError(
            f"Need one label per activation: got {len(labs)} labels for {acts.shape[0]} samples.",
            hint="Pass a list of class names aligned with the first axis of the activations.",
        )
    v = vectors[concept]
    is_pos = np.array([lab == concept for lab in labs], dtype=bool)
    if negatives is None:
        is_neg = ~is_pos
    else:
        neg_set = {negatives} if isinstance(negatives, str) else set(negatives)
        if concept in neg_set:
            raise DataError(
                f"{concept!r} cannot be both the concept and a negative class.",
                hint="Leave negatives=None for one-vs-rest.",
            )
        is_neg = np.array([lab in neg_set for lab in labs], dtype=bool)
    if not is_pos.any() or not is_neg.any():
        raise DataError(
            f"Layer selection for {concept!r} needs positives and negatives; got "
            f"{int(is_pos.sum())} positive and {int(is_neg.sum())} negative held-out samples.",
            hint="Hold out samples of every class, e.g. ClassStatistics(..., holdout=0.2).",
        )
    proj, cos = projections(acts, v)
    s = cos if score == "cosine" else proj
    return select_from_scores(s[is_pos], s[is_neg], bins=bins, concept=concept, score=score)


def emotion_scatter_layer(a: LayerSelection, b: LayerSelection) -> int:
    """Emotion-scatter layer: argmax of ½(AUROC_a + AUROC_b) over layers (Appendix L table).

    Raises:
        ShapeError: The two selections cover different numbers of layers.
    """
    if a.auroc.shape != b.auroc.shape:
        raise ShapeError(
            f"AUROC curves have {a.auroc.shape[0]} and {b.auroc.shape[0]} layers.",
            hint="Select layers for both concepts on the same model.",
        )
    return int(np.argmax(0.5 * (a.auroc + b.auroc)))


# ----------------------------------------------------------------------------------------------
# Fixed layer rules (Appendix L table)
# ----------------------------------------------------------------------------------------------


def _check_n_layers(n_layers: int) -> None:
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise LayerError(
            f"n_layers must be an int >= 1, got {n_layers!r}.", hint="Pass model.cfg.n_layers."
        )


def logit_lens_layer(n_layers: int) -> int:
    """Logit-lens layer floor(5L/6) (30 for 36-layer Qwen3-4B, 20 for 24-layer GPT-OSS)."""
    _check_n_layers(n_layers)
    return (5 * n_layers) // 6


def centred_cosine_layer(n_layers: int) -> int:
    """Layer for centred tile-mean cosines, floor(2L/3) (24 for Qwen3-4B, 16 for GPT-OSS)."""
    _check_n_layers(n_layers)
    return (2 * n_layers) // 3
