"""Geometry of welfare vectors: antiparallelism, centred class means, nulls, bootstrap (A5; §3.1).

Paper §3.1 / Table 7 and Appendix C: the headline is the **minimum over layers** of
cos(v_Mold^(ℓ), v_Gold^(ℓ)) (in [−0.95, −0.84] for trained models, [−0.23, −0.13] for controls),
often reached at the last layer, not at the steering layer ℓ*. B-7: report the per-layer curve,
the mean, the minimum with its argmin, and the value at ℓ*, so that a value at ℓ* is not misread
as a failed replication. Tables 9/10: pairwise cosines of the class means after subtracting their
grand mean, at layer floor(2L/3). All cosines are computed in float64.

Uncertainty and baselines, for every cosine:

* a **cluster bootstrap over trajectories**: the group buckets of :class:`ClassStatistics`
  (hashed maze ids) are resampled with replacement and the vectors recomputed;
* a **random-direction null**: the cosine of two independent uniform directions in R^d has mean 0
  and SD exactly 1/√d (:func:`random_direction_null`, :func:`null_pvalue`). For centred class
  means the right null is different — k centred random vectors have pairwise cosines near
  −1/(k−1) — so :func:`centred_class_mean_cosines` simulates that null instead;
* a **sampling-noise floor** (:func:`noise_cosine`): the cosine one-vs-rest vectors have when the
  classes do not differ at all. It is −0.5 for three equal classes (+0.5 for the Path-reference
  variant), not 0, because the vectors share class means with opposite signs. A trained-model
  minimum near −0.9 is far below it; a cosine near −0.5 from few samples is not evidence.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from numpy.typing import NDArray
from scipy.stats import beta as beta_dist
from torch import Tensor

from welfare_lens.errors import DataError, LayerError, ShapeError, VectorError
from welfare_lens.vectors import ClassStatistics, ConceptVectors, vectors_from_sums

__all__ = [
    "AntiparallelismResult",
    "CentredCosines",
    "CosineSummary",
    "NullDistribution",
    "antiparallelism",
    "bootstrap_ci",
    "bootstrap_cosines",
    "centred_class_mean_cosines",
    "centred_null",
    "cosine_per_layer",
    "noise_cosine",
    "null_pvalue",
    "random_direction_null",
    "split_half_reliability",
]

F64 = NDArray[np.float64]
_METHODS = ("one_vs_rest", "path_reference")


def _batched_cos(a: Tensor, b: Tensor) -> Tensor:
    """Cosine over the last axis in float64; NaN where a norm is zero or a value is NaN."""
    a, b = a.double(), b.double()
    denom = torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)
    return torch.where(denom > 0, (a * b).sum(-1) / denom, torch.nan)


def cosine_per_layer(
    a: Float[Tensor, "n_layers d_model"], b: Float[Tensor, "n_layers d_model"]
) -> Float[F64, " n_layers"]:
    """cos(a_ℓ, b_ℓ) for every layer ℓ, computed in float64.

    Raises:
        ShapeError: Shapes differ or are not ``[L, d]``.
        VectorError: A vector is zero (or non-finite) at some layer.
    """
    if a.ndim != 2 or a.shape != b.shape:
        raise ShapeError(
            f"Expected two [n_layers, d_model] tensors of equal shape, got {tuple(a.shape)} "
            f"and {tuple(b.shape)}.",
            hint="Compare vectors of the same model.",
        )
    cos = _batched_cos(a.detach().cpu(), b.detach().cpu())
    bad = (~torch.isfinite(cos)).nonzero().flatten().tolist()
    if bad:
        raise VectorError(
            f"Cosine undefined at layer(s) {bad} (zero or non-finite vector).",
            hint="Check the vectors with ConceptVectors.validate().",
        )
    return np.asarray(cos.numpy(), dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# Null models
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class NullDistribution:
    """A sampled null distribution of cosines.

    Attributes:
        mean: Mean cosine under the null.
        sd: Standard deviation (1/√d for two random directions).
        q025: 2.5th percentile.
        q975: 97.5th percentile.
        d_model: Dimension.
        n_samples: Number of null draws.
        kind: ``"random_direction"`` or ``"centred_k"`` (k centred random class means).
        samples: The draws themselves.
    """

    mean: float
    sd: float
    q025: float
    q975: float
    d_model: int
    n_samples: int
    kind: str = "random_direction"
    samples: F64 = field(default_factory=lambda: np.zeros(0), repr=False)

    def pvalue(self, cos: float) -> float:
        """Two-sided empirical p-value of ``cos`` around the null mean (add-one smoothed)."""
        if not math.isfinite(cos):
            raise DataError(f"cos must be finite, got {cos}.", hint="Pass a cosine similarity.")
        if self.samples.size == 0:
            raise DataError("This null keeps no samples.", hint="Re-create it.")
        extreme = np.abs(self.samples - self.mean) >= abs(cos - self.mean) - 1e-12
        return float((extreme.sum() + 1) / (self.samples.size + 1))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (without the samples)."""
        keys = ("mean", "sd", "q025", "q975", "d_model", "n_samples", "kind")
        return {k: getattr(self, k) for k in keys}


def _beta_shape(d_model: int) -> float:
    if d_model < 2:
        raise ShapeError(
            f"A cosine null needs d_model >= 2, got {d_model}.", hint="Pass model.cfg.d_model."
        )
    return (d_model - 1) / 2.0


def _null(t: F64, d_model: int, kind: str) -> NullDistribution:
    q025, q975 = np.percentile(t, [2.5, 97.5])
    return NullDistribution(
        float(t.mean()), float(t.std(ddof=1)), float(q025), float(q975), d_model, t.size, kind, t
    )


def random_direction_null(d_model: int, n_samples: int = 10000, seed: int = 0) -> NullDistribution:
    """Cosines between independent uniformly random directions in R^d (mean 0, SD 1/√d).

    For uniform unit vectors x, y, the cosine t = x·y has (t + 1)/2 ~ Beta((d−1)/2, (d−1)/2);
    sampling it directly is exact and costs O(n) instead of O(n·d).
    """
    if n_samples < 2:
        raise DataError(f"n_samples must be >= 2, got {n_samples}.", hint="Use e.g. 10000.")
    a = _beta_shape(d_model)
    t = 2.0 * np.random.default_rng(seed).beta(a, a, size=n_samples) - 1.0
    return _null(np.asarray(t, dtype=np.float64), d_model, "random_direction")


def null_pvalue(cos: float, d_model: int) -> float:
    """Exact two-sided p-value P(|t| ≥ |cos|) for two random directions in R^d."""
    if not math.isfinite(cos) or abs(cos) > 1 + 1e-9:
        raise DataError(f"cos must be in [-1, 1], got {cos}.", hint="Pass a cosine similarity.")
    a = _beta_shape(d_model)
    x = (min(abs(cos), 1.0) + 1.0) / 2.0
    return float(min(1.0, 2.0 * beta_dist.sf(x, a, a)))


def centred_null(
    n_classes: int, d_model: int, n_samples: int = 2000, seed: int = 0
) -> NullDistribution:
    """Pairwise cosines of ``n_classes`` i.i.d. isotropic random vectors after centring.

    The null for Tables 9/10: subtracting the grand mean makes the centred vectors sum to zero,
    so their pairwise cosines concentrate near −1/(k−1) (−0.5 for three classes), not 0.
    Each draw contributes the cosine of the first pair (all pairs are exchangeable).
    """
    if n_classes < 2:
        raise DataError(f"Need >= 2 classes, got {n_classes}.", hint="Use 3 (mold, gold, path).")
    if n_samples < 2:
        raise DataError(f"n_samples must be >= 2, got {n_samples}.", hint="Use e.g. 2000.")
    _beta_shape(d_model)
    gen = torch.Generator().manual_seed(seed)
    out = []
    chunk = max(1, 2**22 // (n_classes * d_model))
    for start in range(0, n_samples, chunk):
        m = min(chunk, n_samples - start)
        x = torch.randn(m, n_classes, d_model, generator=gen, dtype=torch.float64)
        x = x - x.mean(1, keepdim=True)
        out.append(_batched_cos(x[:, 0], x[:, 1]))
    return _null(torch.cat(out).numpy(), d_model, f"centred_{n_classes}")


def _coefficients(counts: Sequence[float], classes: Sequence[str], method: str) -> dict[str, F64]:
    """Linear coefficients of each vector in the class means (rows of Eq. 1 / Eq. 3)."""
    n = np.asarray(counts, dtype=np.float64)
    out: dict[str, F64] = {}
    for i, c in enumerate(classes):
        if method == "one_vs_rest":
            row = -n / (n.sum() - n[i])
            row[i] = 1.0
        else:
            if c == "path":
                continue
            row = np.zeros(len(classes))
            row[i], row[list(classes).index("path")] = 1.0, -1.0
        out[c] = row
    return out


def noise_cosine(
    stats: ClassStatistics,
    pair: tuple[str, str] = ("mold", "gold"),
    method: str = "one_vs_rest",
) -> Float[F64, " n_layers"]:
    """Expected cos(v_a, v_b) per layer if the classes did not differ at all (sampling noise only).

    Each vector is a fixed linear combination Σ_c A_ac m̂_c of the estimated class means, whose
    noise has covariance Σ_c/n_c. Without class differences,
    E[v_a·v_b] = Σ_c A_ac A_bc tr(Σ_c)/n_c, and the expected cosine is
    E[v_a·v_b]/√(E‖v_a‖² E‖v_b‖²) (accurate in high dimension). With equal counts and variances
    it is −0.5 for one-vs-rest (Eq. 1) and +0.5 for Path-reference (Eq. 3) vectors.

    Raises:
        DataError: No second moments, a class of ``pair`` or its variance is missing.
    """
    _check_method(method)
    _check_pair(stats, pair, method)
    if stats.m2 is None:
        raise DataError(
            "noise_cosine needs per-class variances (second_moments='diag' or 'full').",
            hint="Accumulate ClassStatistics with second_moments='diag'.",
        )
    counts = stats.count.to(torch.float64)
    if bool((counts < 2).any()):
        raise DataError(
            f"Every class needs >= 2 samples for a variance, got {stats.counts}.",
            hint="Extract more samples.",
        )
    m2 = stats.m2 if stats.second_moments == "diag" else torch.diagonal(stats.m2, dim1=-2, dim2=-1)
    trace = (m2.sum(-1) / (counts - 1)[:, None]).numpy()  # [C, L]: tr(Σ_c) per layer
    coef = _coefficients(stats.count.tolist(), stats.classes, method)
    var_mean = trace / counts.numpy()[:, None]  # tr(Σ_c)/n_c

    def expect(a: F64, b: F64) -> F64:
        return np.asarray(((a * b)[:, None] * var_mean).sum(0), dtype=np.float64)

    ca, cb = coef[pair[0]], coef[pair[1]]
    denom = np.sqrt(expect(ca, ca) * expect(cb, cb))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, expect(ca, cb) / denom, np.nan)


# ----------------------------------------------------------------------------------------------
# Cluster bootstrap over trajectories
# ----------------------------------------------------------------------------------------------


def _check_method(method: str) -> None:
    if method not in _METHODS:
        raise DataError(
            f"Unknown method {method!r}.",
            hint="Use 'one_vs_rest' (Eq. 1) or 'path_reference' (Eq. 3).",
        )


def _check_pair(stats: ClassStatistics, pair: Sequence[str], method: str) -> None:
    missing = [c for c in pair if c not in stats.classes]
    if missing:
        raise DataError(
            f"Class(es) {missing} are not in the statistics ({list(stats.classes)}).",
            hint="Accumulate samples of both classes of the pair.",
        )
    if method == "path_reference" and "path" in pair:
        raise DataError(
            "With method='path_reference' there is no 'path' vector.",
            hint="Compare e.g. ('mold', 'gold').",
        )


def _resampled_sums(
    stats: ClassStatistics,
    n_boot: int,
    seed: int,
    layers: Sequence[int] | None = None,
    max_chunk_bytes: int = 2**27,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(sums [b, C, L', d], counts [b, C])`` for bootstrap resamples of the buckets.

    Non-empty buckets are drawn with replacement (multinomial weights), so every resample has
    as many buckets as the data; layers can be restricted to save work.
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise DataError(f"n_boot must be an int >= 1, got {n_boot!r}.", hint="Use e.g. 1000.")
    filled = stats.bucket_count.sum(1) > 0
    k = int(filled.sum())
    if k < 2:
        raise DataError(
            f"The bootstrap needs >= 2 non-empty group buckets, found {k}.",
            hint="Pass distinct group (maze) ids to ClassStatistics.update, or more data.",
        )
    bucket_sum = stats.bucket_sum[filled]
    if layers is not None:
        bucket_sum = bucket_sum[:, :, list(layers)]
    n_c, n_l, d = bucket_sum.shape[1:]
    flat = bucket_sum.reshape(k, -1)  # [K, C*L'*d]
    b_cnt = stats.bucket_count[filled].to(torch.float64)  # [K, C]
    weights = np.random.default_rng(seed).multinomial(k, np.full(k, 1.0 / k), size=n_boot)
    w_all = torch.from_numpy(weights.astype(np.float64))
    per_boot = 8 * n_c * n_l * d * 4  # sums plus the vectors derived from them
    chunk = max(1, max_chunk_bytes // per_boot)
    for start in range(0, n_boot, chunk):
        w = w_all[start : start + chunk]
        yield (w @ flat).reshape(-1, n_c, n_l, d), w @ b_cnt


def bootstrap_cosines(
    stats: ClassStatistics,
    n_boot: int = 1000,
    seed: int = 0,
    method: str = "one_vs_rest",
    pair: tuple[str, str] = ("mold", "gold"),
) -> Float[F64, "n_boot n_layers"]:
    """Cluster-bootstrap distribution of cos(v_a, v_b) at every layer (resampling trajectories).

    Resamples the non-empty group buckets of ``stats`` with replacement, rebuilds class sums
    and counts, recomputes the vectors (Eq. 1 or Eq. 3) and their per-layer cosine. Layers are
    vectorised; resamples are processed in memory-bounded chunks. A resample that lacks a
    needed class gives NaN (ignored by :func:`bootstrap_ci`). Reproducible for a given ``seed``.

    Returns:
        ``[n_boot, n_layers]`` cosines.

    Raises:
        DataError: Fewer than 2 non-empty buckets, an unknown class or method.
    """
    _check_method(method)
    _check_pair(stats, pair, method)
    parts = []
    for sums, counts in _resampled_sums(stats, n_boot, seed):
        vecs = vectors_from_sums(sums, counts, stats.classes, method)
        parts.append(_batched_cos(vecs[pair[0]], vecs[pair[1]]).numpy())
    return np.concatenate(parts, axis=0)


def bootstrap_ci(
    samples: Float[F64, "n_boot ..."], level: float = 0.95
) -> tuple[Float[F64, " ..."], Float[F64, " ..."]]:
    """Percentile interval along the first axis (default 2.5th and 97.5th), ignoring NaN.

    Raises:
        DataError: ``level`` not in (0, 1), or a column has no finite resample.
    """
    if not 0 < level < 1:
        raise DataError(f"level must be in (0, 1), got {level}.", hint="Use e.g. 0.95.")
    arr = np.asarray(samples, np.float64)
    if arr.shape[0] == 0 or bool(np.isnan(arr).all(axis=0).any()):
        raise DataError(
            "Some statistic has no finite bootstrap resample.",
            hint="Use more groups (mazes) per class, so resamples keep every class.",
        )
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.nanpercentile(arr, [tail, 100.0 - tail], axis=0)
    return np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# Antiparallelism (§3.1, Table 7, B-7)
# ----------------------------------------------------------------------------------------------


@dataclass
class CosineSummary:
    """A per-layer cosine curve and the statistics B-7 asks for.

    Attributes:
        per_layer: cos per layer.
        mean: Mean over layers.
        min: Minimum over layers (the paper's Table 7 headline).
        argmin: Layer of the minimum.
        at: Value at each requested steering layer ℓ*.
        null_p: Two-sided random-direction p-value per layer (:func:`null_pvalue`).
        noise_floor: Expected cosine per layer with no class differences (:func:`noise_cosine`).
        ci_low: Lower bootstrap bound per layer (if a bootstrap ran).
        ci_high: Upper bootstrap bound per layer.
        mean_ci: Bootstrap interval of the mean over layers.
        min_ci: Bootstrap interval of the minimum over layers.
        at_ci: Bootstrap interval at each steering layer.
        n_boot: Number of bootstrap resamples (0 if none).
    """

    per_layer: Float[F64, " n_layers"]
    mean: float
    min: float
    argmin: int
    at: dict[int, float] = field(default_factory=dict)
    null_p: Float[F64, " n_layers"] | None = None
    noise_floor: Float[F64, " n_layers"] | None = None
    ci_low: Float[F64, " n_layers"] | None = None
    ci_high: Float[F64, " n_layers"] | None = None
    mean_ci: tuple[float, float] | None = None
    min_ci: tuple[float, float] | None = None
    at_ci: dict[int, tuple[float, float]] = field(default_factory=dict)
    n_boot: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""

        def arr(x: F64 | None) -> list[float] | None:
            return None if x is None else [float(v) for v in x]

        return {
            "per_layer": arr(self.per_layer),
            "mean": self.mean,
            "min": self.min,
            "argmin": self.argmin,
            "at": {str(k): v for k, v in self.at.items()},
            "null_p": arr(self.null_p),
            "noise_floor": arr(self.noise_floor),
            "ci_low": arr(self.ci_low),
            "ci_high": arr(self.ci_high),
            "mean_ci": None if self.mean_ci is None else list(self.mean_ci),
            "min_ci": None if self.min_ci is None else list(self.min_ci),
            "at_ci": {str(k): list(v) for k, v in self.at_ci.items()},
            "n_boot": self.n_boot,
        }


@dataclass
class AntiparallelismResult:
    """cos(v_a, v_b) per layer for trained vectors and, optionally, naive-model controls (§3.1).

    The paper's headline (Table 7) is ``trained.min`` — the minimum over layers with its layer
    ``trained.argmin`` — not the value at the steering layer.

    Attributes:
        pair: The two vectors compared, e.g. ``("mold", "gold")``.
        d_model: Residual width (the random-direction null has SD 1/√d_model).
        steering_layers: Layers ℓ* at which values are reported.
        trained: Summary of the trained vectors v.
        control: Summary of the control vectors u, if given.
    """

    pair: tuple[str, str]
    d_model: int
    steering_layers: tuple[int, ...]
    trained: CosineSummary
    control: CosineSummary | None = None

    @property
    def null_sd(self) -> float:
        """SD of the cosine of two random directions, 1/√d_model."""
        return 1.0 / math.sqrt(self.d_model)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {
            "pair": list(self.pair),
            "d_model": self.d_model,
            "null_sd": self.null_sd,
            "steering_layers": list(self.steering_layers),
            "trained": self.trained.to_dict(),
            "control": None if self.control is None else self.control.to_dict(),
            "headline": "min over layers (paper Table 7), not the value at the steering layer",
        }

    def summary(self) -> str:
        """A few lines; states that the paper's headline is the minimum over layers."""
        a, b = self.pair

        def line(name: str, s: CosineSummary) -> str:
            txt = f"{name}: min {s.min:+.3f} at layer {s.argmin}"
            if s.min_ci is not None:
                txt += f" [{s.min_ci[0]:+.3f}, {s.min_ci[1]:+.3f}]"
            txt += f", mean {s.mean:+.3f}"
            for layer, val in s.at.items():
                txt += f", at ℓ*={layer}: {val:+.3f}"
            if s.noise_floor is not None:
                txt += f"; no-signal floor ≈ {float(np.nanmean(s.noise_floor)):+.2f}"
            return txt

        lines = [f"cos(v_{a}, v_{b}) over {len(self.trained.per_layer)} layers"]
        lines.append("  " + line("trained", self.trained) + " (min = paper's headline)")
        if self.control is not None:
            lines.append("  " + line("control", self.control))
        lines.append(f"  random directions: cos ~ 0 ± {self.null_sd:.3f}")
        lines.append(
            "  Paper (Table 7): trained minima in [-0.95, -0.84], control minima in [-0.23, -0.13]."
        )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"AntiparallelismResult(\n{self.summary()}\n)"


def _resolve_layers(layers: int | Sequence[int] | None, n_layers: int) -> tuple[int, ...]:
    if layers is None:
        return ()
    seq = [layers] if isinstance(layers, int) else list(layers)
    out = []
    for layer in seq:
        if (
            isinstance(layer, bool)
            or not isinstance(layer, int)
            or not -n_layers <= layer < n_layers
        ):
            raise LayerError(
                f"Steering layer {layer!r} is out of range for {n_layers} layers.",
                hint=f"Use 0..{n_layers - 1} (negative indices count from the end).",
            )
        out.append(layer % n_layers)
    return tuple(dict.fromkeys(out))


def _stats_for(v: ConceptVectors, stats: ClassStatistics, what: str) -> None:
    m = v.metadata
    if (stats.n_layers, stats.d_model) != (m.n_layers, m.d_model):
        raise ShapeError(
            f"{what}: statistics are [{stats.n_layers}, {stats.d_model}], vectors "
            f"[{m.n_layers}, {m.d_model}].",
            hint="Pass the statistics the vectors were computed from.",
        )
    if m.class_counts and m.class_counts != stats.counts:
        raise DataError(
            f"{what}: the vectors were made from class counts {m.class_counts}, the statistics "
            f"hold {stats.counts}.",
            hint="Pass the statistics the vectors were computed from.",
        )


def _summarise(
    cos: F64,
    layers: tuple[int, ...],
    d_model: int,
    stats: ClassStatistics | None,
    method: str,
    pair: tuple[str, str],
    n_boot: int,
    level: float,
    seed: int,
) -> CosineSummary:
    s = CosineSummary(
        per_layer=cos,
        mean=float(cos.mean()),
        min=float(cos.min()),
        argmin=int(cos.argmin()),
        at={layer: float(cos[layer]) for layer in layers},
        null_p=np.array([null_pvalue(float(c), d_model) for c in cos]),
    )
    if stats is None:
        return s
    if stats.m2 is not None and method in _METHODS and bool((stats.count >= 2).all()):
        s.noise_floor = noise_cosine(stats, pair, method)
    if n_boot > 0:
        boot = bootstrap_cosines(stats, n_boot, seed, method, pair)
        s.ci_low, s.ci_high = bootstrap_ci(boot, level)
        ok = np.isfinite(boot).all(axis=1)
        if not ok.any():
            raise DataError(
                "No bootstrap resample kept every class.", hint="Use more groups (mazes)."
            )
        lo, hi = bootstrap_ci(boot[ok].mean(axis=1), level)
        s.mean_ci = (float(lo), float(hi))
        lo, hi = bootstrap_ci(boot[ok].min(axis=1), level)
        s.min_ci = (float(lo), float(hi))
        s.at_ci = {layer: (float(s.ci_low[layer]), float(s.ci_high[layer])) for layer in layers}
        s.n_boot = n_boot
    return s


def antiparallelism(
    v: ConceptVectors,
    control: ConceptVectors | None = None,
    steering_layer: int | Sequence[int] | None = None,
    *,
    pair: tuple[str, str] = ("mold", "gold"),
    stats: ClassStatistics | None = None,
    control_stats: ClassStatistics | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> AntiparallelismResult:
    """Per-layer cos(v_Mold, v_Gold) with mean, min/argmin and value at ℓ* (§3.1, Table 7, B-7).

    Every curve gets random-direction p-values; with the statistics the vectors were computed
    from, also the no-signal noise floor and cluster-bootstrap intervals (per layer, and for the
    mean, the minimum and the steering-layer values).

    Args:
        v: Trained-model vectors.
        control: Control vectors u from the maze-naive model (same architecture and mode).
        steering_layer: ℓ* (one or several, e.g. ℓ*_Mold and ℓ*_Gold) to report values at.
        pair: The two vectors to compare.
        stats: Statistics ``v`` was computed from, for the bootstrap and noise floor.
        control_stats: The same for ``control``.
        n_boot: Bootstrap resamples (0 disables the bootstrap).
        level: Confidence level of the intervals.
        seed: Bootstrap seed (results are reproducible).

    Raises:
        ShapeError: ``control`` or statistics have another ``n_layers``/``d_model``.
        VectorError: ``control`` uses another coordinate mode, hook or position; a vector is zero.
        LayerError: ``steering_layer`` out of range.
        DataError: Statistics that do not belong to the vectors.
    """
    layers = _resolve_layers(steering_layer, v.n_layers)
    method = v.metadata.method
    cos = cosine_per_layer(v[pair[0]], v[pair[1]])
    if stats is not None:
        _stats_for(v, stats, "stats")
    trained = _summarise(cos, layers, v.d_model, stats, method, pair, n_boot, level, seed)
    result = AntiparallelismResult(pair, v.d_model, layers, trained)
    if control is not None:
        v.check_compatible(control, allow_other_checkpoint=True)
        if control_stats is not None:
            _stats_for(control, control_stats, "control_stats")
        ccos = cosine_per_layer(control[pair[0]], control[pair[1]])
        result.control = _summarise(
            ccos,
            layers,
            v.d_model,
            control_stats,
            control.metadata.method,
            pair,
            n_boot,
            level,
            seed,
        )
    elif control_stats is not None:
        raise DataError("control_stats given without control vectors.", hint="Pass control=u.")
    return result


# ----------------------------------------------------------------------------------------------
# Centred class means (Tables 9 and 10)
# ----------------------------------------------------------------------------------------------


@dataclass
class CentredCosines:
    """Pairwise cosines of grand-mean-centred class means at one layer (Tables 9/10).

    Attributes:
        layer: The layer (paper: floor(2L/3)).
        cosines: ``{(a, b): cos}`` for every class pair, in class order.
        null: Null of centred random class means (mean ≈ −1/(k−1), not 0).
        null_p: Two-sided p-value of each cosine under ``null``.
        ci: Bootstrap interval per pair (empty without a bootstrap).
        n_boot: Number of resamples.
    """

    layer: int
    cosines: dict[tuple[str, str], float]
    null: NullDistribution
    null_p: dict[tuple[str, str], float]
    ci: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    n_boot: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (pairs joined as ``"a|b"``)."""
        return {
            "layer": self.layer,
            "cosines": {f"{a}|{b}": x for (a, b), x in self.cosines.items()},
            "null": self.null.to_dict(),
            "null_p": {f"{a}|{b}": x for (a, b), x in self.null_p.items()},
            "ci": {f"{a}|{b}": list(x) for (a, b), x in self.ci.items()},
            "n_boot": self.n_boot,
        }


def _centred_pair_cos(means: Tensor) -> Tensor:
    """``means [..., C, d]`` -> pairwise cosines of centred means ``[..., n_pairs]``."""
    centred = means - means.mean(-2, keepdim=True)
    pairs = list(itertools.combinations(range(means.shape[-2]), 2))
    return torch.stack([_batched_cos(centred[..., i, :], centred[..., j, :]) for i, j in pairs], -1)


def centred_class_mean_cosines(
    stats: ClassStatistics,
    layer: int | None = None,
    *,
    n_boot: int = 0,
    level: float = 0.95,
    seed: int = 0,
    null_samples: int = 2000,
) -> CentredCosines:
    """Pairwise cosines of class means after subtracting their grand mean (Tables 9/10).

    The grand mean is the unweighted mean of the class means (not the sample mean), so class
    sizes do not matter. Pairs follow class order: (M, G), (M, P), (G, P) for the default classes.
    The paper reports trained (−0.813, −0.032, −0.556) vs naive (+0.086, −0.553, −0.878).

    Args:
        stats: Class statistics.
        layer: Layer; default floor(2L/3) (:func:`~welfare_lens.analysis.centred_cosine_layer`).
        n_boot: Bootstrap resamples over trajectories (0: no intervals).
        level: Confidence level.
        seed: Seed of the bootstrap and the null.
        null_samples: Draws of the centred random-means null.

    Raises:
        LayerError: ``layer`` out of range.
        DataError: Fewer than two classes, or a class without samples.
    """
    L = stats.n_layers
    layer = (2 * L) // 3 if layer is None else layer
    if isinstance(layer, bool) or not isinstance(layer, int) or not -L <= layer < L:
        raise LayerError(
            f"Layer {layer!r} is out of range for {L} layers.", hint=f"Use 0..{L - 1}."
        )
    layer %= L
    if len(stats.classes) < 2:
        raise DataError("Need at least two classes.", hint="Extract mold, gold and path samples.")
    means = torch.stack([stats.mean(c)[layer] for c in stats.classes])
    pair_names = list(itertools.combinations(stats.classes, 2))
    values = _centred_pair_cos(means)
    if not bool(torch.isfinite(values).all()):
        raise VectorError(
            f"A centred class mean is zero at layer {layer} (two classes coincide).",
            hint="Check the labels; identical class means have no direction.",
        )
    cosines = {p: float(x) for p, x in zip(pair_names, values.tolist(), strict=True)}
    null = centred_null(len(stats.classes), stats.d_model, null_samples, seed)
    out = CentredCosines(layer, cosines, null, {p: null.pvalue(x) for p, x in cosines.items()})
    if n_boot > 0:
        parts = []
        for sums, counts in _resampled_sums(stats, n_boot, seed, layers=[layer]):
            boot_means = sums[:, :, 0] / counts[..., None]  # NaN where a class is missing
            parts.append(_centred_pair_cos(boot_means).numpy())
        lo, hi = bootstrap_ci(np.concatenate(parts), level)
        out.ci = {p: (float(a), float(b)) for p, a, b in zip(pair_names, lo, hi, strict=True)}
        out.n_boot = n_boot
    return out


# ----------------------------------------------------------------------------------------------
# Split halves
# ----------------------------------------------------------------------------------------------


def split_half_reliability(
    stats: ClassStatistics, method: str = "one_vs_rest", *, corrected: bool = False
) -> dict[str, Float[F64, " n_layers"]]:
    """Per-layer cosine between each vector computed on even vs odd group buckets.

    Buckets hash the group (maze) ids, so the halves are random halves of the trajectories and
    share no maze. With ``corrected=True`` the Spearman–Brown step-up 2r/(1+r) estimates the
    reliability of the full-sample vector.

    Returns:
        ``{class: [n_layers] cosines}`` for every vector of ``method``.

    Raises:
        DataError: A half has no samples of some class, or an unknown method.
    """
    _check_method(method)
    halves = []
    for parity in (0, 1):
        s = stats.bucket_sum[parity::2].sum(0)
        n = stats.bucket_count[parity::2].sum(0)
        if bool((n == 0).any()):
            raise DataError(
                f"The {'even' if parity == 0 else 'odd'} buckets have no samples of some class "
                f"(counts {dict(zip(stats.classes, n.tolist(), strict=True))}).",
                hint="Use more groups (mazes), or pass distinct group ids.",
            )
        halves.append(vectors_from_sums(s, n, stats.classes, method))
    out = {}
    for c in halves[0]:
        r = _batched_cos(halves[0][c], halves[1][c]).numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            out[c] = 2 * r / (1 + r) if corrected else r
    return out
