"""What the model saw vs what it chose: composition diagnostics of an extraction set.

In the paper's extraction design a class-c trajectory must end with a move onto a class-c tile,
so a Gold-final trajectory's last prompt always shows Gold, while Mold- and Path-final ones show
it far less often (A4). Class means then differ by *what the model sees* as well as by *what it
chose*; on a small model the first can dominate, and one-vs-rest vectors come out antiparallel
before any training. This module measures that confound for any set of maze trajectories:

* :func:`composition_table`: per class, the mean number of Mold/Gold/Path neighbours in the final
  prompt and per turn over the whole history, and the largest difference between a class and
  the rest (``flagged`` above a threshold). The minimal-pair design
  (``shared_prefix_trajectories(design="minimal_pairs")``) makes it exactly zero.
* :class:`SeenTileRegression`: a streaming per-layer least-squares fit of the activations on
  those composition features (capture fills it), whose predicted class-mean differences are the
  "seen-tile" vectors: the part of each welfare vector explained by composition alone.
  :func:`seen_tile_cosines` compares them with the welfare vectors layer by layer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from numpy.typing import NDArray
from torch import Tensor

from welfare_lens.errors import DataError, ShapeError
from welfare_lens.maze.config import Tile

__all__ = [
    "COMPOSITION_FEATURES",
    "CompositionTable",
    "SeenTileRegression",
    "composition_features",
    "composition_table",
    "seen_tile_cosines",
    "seen_tile_vectors",
]

#: Final-prompt neighbour counts (out of 4), then per-turn means over every prompt of the history.
COMPOSITION_FEATURES: tuple[str, ...] = (
    "final_mold",
    "final_gold",
    "final_path",
    "history_mold",
    "history_gold",
    "history_path",
)
_TILES = (Tile.MOLD, Tile.GOLD, Tile.PATH)
#: Default flag threshold: a class whose final prompt shows on average a quarter of a tile more
#: (or less) of some class than the other classes' prompts.
DEFAULT_THRESHOLD = 0.25


def composition_features(trajectories: Iterable[Any]) -> Float[NDArray[np.float64], "n 6"]:
    """``[n, 6]`` composition features (:data:`COMPOSITION_FEATURES`) of maze trajectories.

    Raises:
        DataError: a trajectory has no recorded neighbours (not a maze trajectory).
    """
    rows: list[list[float]] = []
    for i, traj in enumerate(trajectories):
        shown = getattr(traj, "neighbours", None)
        if not shown:
            raise DataError(
                f"Trajectory {i} records no neighbours.",
                hint="Composition needs wl.maze trajectories (they record each prompt's tiles).",
            )
        turns = np.array([[int(t) for t in turn] for turn in shown])
        final = [float((turns[-1] == int(tile)).sum()) for tile in _TILES]
        history = [float((turns == int(tile)).sum()) / len(turns) for tile in _TILES]
        rows.append(final + history)
    return np.asarray(rows, dtype=np.float64).reshape(-1, len(COMPOSITION_FEATURES))


def _without_rounding(imbalance: NDArray[np.float64]) -> NDArray[np.float64]:
    """Composition differences with summation rounding (|x| < 1e-9) set to exactly 0.

    The features are counts, so identical multisets (minimal pairs) give equal means up to the
    order of summation; a balanced design must read exactly 0 and have no seen-tile vector,
    not a 1e-17 difference pointing in an arbitrary direction.
    """
    return np.where(np.abs(imbalance) < 1e-9, 0.0, imbalance)


@dataclass
class CompositionTable:
    """Mean composition per class and the largest class-vs-rest difference.

    Attributes:
        classes: Class labels, in order.
        means: ``[n_classes, 6]`` mean features per class.
        counts: Samples per class.
        imbalance: ``[n_classes, 6]`` mean of the class minus the mean of the other samples.
        threshold: The flag threshold (neighbour counts).
    """

    classes: tuple[str, ...]
    means: NDArray[np.float64]
    counts: dict[str, int]
    imbalance: NDArray[np.float64]
    threshold: float = DEFAULT_THRESHOLD
    features: tuple[str, ...] = field(default=COMPOSITION_FEATURES)

    @property
    def max_imbalance(self) -> float:
        """Largest absolute class-vs-rest difference over classes and features."""
        return float(np.abs(self.imbalance).max()) if self.imbalance.size else 0.0

    @property
    def flagged(self) -> bool:
        """Whether the classes differ in what they saw by more than the threshold."""
        return self.max_imbalance > self.threshold

    def warning(self) -> str | None:
        """A one-paragraph warning naming the worst feature, or None when not flagged."""
        if not self.flagged:
            return None
        c, f = np.unravel_index(int(np.abs(self.imbalance).argmax()), self.imbalance.shape)
        return (
            f"Extraction classes differ in what the model saw: {self.classes[c]}-final samples "
            f"show {self.imbalance[c, f]:+.2f} {self.features[f]} tiles vs the other classes "
            f"(threshold {self.threshold}). Welfare vectors from this set mix the chosen move "
            "with the seen composition; compare with the minimal-pair design "
            "(shared_prefix_trajectories(design='minimal_pairs'))."
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {
            "classes": list(self.classes),
            "features": list(self.features),
            "means": {
                c: dict(zip(self.features, map(float, row), strict=True))
                for c, row in zip(self.classes, self.means, strict=True)
            },
            "imbalance": {
                c: dict(zip(self.features, map(float, row), strict=True))
                for c, row in zip(self.classes, self.imbalance, strict=True)
            },
            "counts": dict(self.counts),
            "max_imbalance": self.max_imbalance,
            "threshold": self.threshold,
            "flagged": self.flagged,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompositionTable:
        """Inverse of :meth:`to_dict` (e.g. from ``stats.info["composition"]``)."""
        try:
            classes = tuple(data["classes"])
            features = tuple(data["features"])
            means = np.array([[data["means"][c][f] for f in features] for c in classes])
            imb = np.array([[data["imbalance"][c][f] for f in features] for c in classes])
            return cls(
                classes, means, dict(data["counts"]), imb, float(data["threshold"]), features
            )
        except (KeyError, TypeError) as err:
            raise DataError(
                f"Not a composition table ({err}).",
                hint="Pass CompositionTable.to_dict() output (stats.info['composition']).",
            ) from err

    def __repr__(self) -> str:
        state = "FLAGGED" if self.flagged else "balanced"
        return (
            f"CompositionTable({state}: max |class - rest| = {self.max_imbalance:.3f} "
            f"neighbours; final gold per class "
            + ", ".join(f"{c} {m[1]:.2f}" for c, m in zip(self.classes, self.means, strict=True))
            + ")"
        )


def composition_table(
    trajectories: Sequence[Any],
    labels: Sequence[str] | None = None,
    *,
    threshold: float = DEFAULT_THRESHOLD,
) -> CompositionTable:
    """Per-class composition of an extraction set (run by :func:`welfare_lens.capture`).

    Args:
        trajectories: Maze trajectories.
        labels: Class per trajectory (default each trajectory's ``label``).
        threshold: Flag when some class's mean differs from the rest's by more than this many
            neighbour tiles in some feature.
    """
    feats = composition_features(trajectories)
    labs = list(labels) if labels is not None else [str(t.label) for t in trajectories]
    if len(labs) != len(feats):
        raise ShapeError(
            f"{len(labs)} labels for {len(feats)} trajectories.", hint="Give one label each."
        )
    classes = tuple(dict.fromkeys(labs))
    lab = np.asarray(labs)
    means = np.stack([feats[lab == c].mean(axis=0) for c in classes])
    imbalance = np.stack(
        [
            means[i] - (feats[lab != c].mean(axis=0) if (lab != c).any() else means[i])
            for i, c in enumerate(classes)
        ]
    )
    imbalance = _without_rounding(imbalance)
    counts = {c: int((lab == c).sum()) for c in classes}
    return CompositionTable(classes, means, counts, imbalance, float(threshold))


class SeenTileRegression:
    """Streaming per-layer least squares of activations on composition features.

    Keeps ``n``, ``Σc``, ``Σcc^T``, ``Σx`` and ``Σxc^T`` (float64), so memory is
    ``8·L·d·(F + 1)`` bytes whatever the number of samples; :meth:`coefficients` solves the
    centred normal equations.

    Args:
        n_layers: Layers per sample.
        d_model: Residual width.
        n_features: Composition features (6 by default).
    """

    def __init__(self, n_layers: int, d_model: int, n_features: int = 6) -> None:
        self.n = 0
        self.sum_c = torch.zeros(n_features, dtype=torch.float64)
        self.sum_cc = torch.zeros(n_features, n_features, dtype=torch.float64)
        self.sum_x = torch.zeros(n_layers, d_model, dtype=torch.float64)
        self.sum_xc = torch.zeros(n_layers, d_model, n_features, dtype=torch.float64)

    def update(
        self, acts: Float[Tensor, "n layer d_model"], features: Float[NDArray[np.float64], "n f"]
    ) -> None:
        """Add samples (activations and their composition features, row-aligned)."""
        c = torch.as_tensor(np.asarray(features), dtype=torch.float64)
        x = acts.detach().to("cpu", torch.float64)
        if c.ndim != 2 or c.shape[0] != x.shape[0] or c.shape[1] != self.sum_c.shape[0]:
            raise ShapeError(
                f"features {tuple(c.shape)} do not match activations {tuple(x.shape)}.",
                hint=f"Pass [n, {self.sum_c.shape[0]}] features, one row per sample.",
            )
        self.n += int(x.shape[0])
        self.sum_c += c.sum(0)
        self.sum_cc += c.T @ c
        self.sum_x += x.sum(0)
        self.sum_xc += torch.einsum("nld,nf->ldf", x, c)

    def coefficients(self, ridge: float = 1e-8) -> Float[Tensor, "layer d_model f"]:
        """Slopes B of x ≈ x̄ + B (c − c̄), per layer (a tiny ridge keeps constant features at 0)."""
        if self.n < 2:
            raise DataError("The regression has fewer than 2 samples.", hint="Capture more.")
        mean_c = self.sum_c / self.n
        cov_cc = self.sum_cc / self.n - torch.outer(mean_c, mean_c)
        cov_xc = self.sum_xc / self.n - torch.einsum("ld,f->ldf", self.sum_x / self.n, mean_c)
        scale = float(torch.diagonal(cov_cc).mean().clamp_min(1e-12))
        eye = torch.eye(cov_cc.shape[0], dtype=torch.float64)
        solve = torch.linalg.solve(cov_cc + ridge * scale * eye, cov_xc.reshape(-1, len(eye)).T)
        return solve.T.reshape(cov_xc.shape)

    def seen_tile_vectors(self, table: CompositionTable) -> dict[str, Tensor]:
        """Per class: B (c̄_class − c̄_rest), the class-mean difference composition predicts."""
        slopes = self.coefficients()
        return {
            c: torch.einsum(
                "ldf,f->ld",
                slopes,
                torch.as_tensor(_without_rounding(table.imbalance[i]), dtype=torch.float64),
            ).float()
            for i, c in enumerate(table.classes)
        }

    def to_tensors(self) -> dict[str, Tensor]:
        """The sums, for saving with :class:`~welfare_lens.vectors.ClassStatistics` (``extra``)."""
        return {
            "composition.n": torch.tensor([self.n], dtype=torch.int64),
            "composition.sum_c": self.sum_c,
            "composition.sum_cc": self.sum_cc,
            "composition.sum_x": self.sum_x,
            "composition.sum_xc": self.sum_xc,
        }

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor]) -> SeenTileRegression:
        """Inverse of :meth:`to_tensors`."""
        try:
            sum_xc = tensors["composition.sum_xc"]
            out = cls(int(sum_xc.shape[0]), int(sum_xc.shape[1]), int(sum_xc.shape[2]))
            out.n = int(tensors["composition.n"][0])
            out.sum_c = tensors["composition.sum_c"].double()
            out.sum_cc = tensors["composition.sum_cc"].double()
            out.sum_x = tensors["composition.sum_x"].double()
            out.sum_xc = sum_xc.double()
        except KeyError as err:
            raise DataError(
                f"No composition regression in these tensors ({err}).",
                hint="Capture maze trajectories with composition=True.",
            ) from err
        return out


def seen_tile_vectors(stats: Any) -> dict[str, Tensor]:
    """The seen-tile vectors of a capture's statistics (``[n_layers, d_model]`` per class).

    Raises:
        DataError: the statistics were captured without the composition diagnostic.
    """
    if "composition" not in stats.info or "composition.sum_xc" not in stats.extra:
        raise DataError(
            "These statistics have no composition diagnostic.",
            hint="Capture maze trajectories at position='last_action' with composition=True.",
        )
    table = CompositionTable.from_dict(stats.info["composition"])
    return SeenTileRegression.from_tensors(stats.extra).seen_tile_vectors(table)


def seen_tile_cosines(
    seen: Mapping[str, Tensor], vectors: Any, names: Sequence[str] = ("mold", "gold")
) -> dict[str, list[float]]:
    """Per vector and layer, cos(seen-tile vector, welfare vector) (NaN where either is zero)."""
    out: dict[str, list[float]] = {}
    for name in names:
        v = torch.as_tensor(vectors[name], dtype=torch.float64)
        s = seen[name].double()
        if v.shape != s.shape:
            raise ShapeError(
                f"Vector {name!r} {tuple(v.shape)} and its seen-tile vector {tuple(s.shape)} "
                "differ.",
                hint="Use vectors and statistics from the same capture.",
            )
        denom = v.norm(dim=-1) * s.norm(dim=-1)
        cos = (v * s).sum(-1) / denom
        out[name] = [
            float(x) if math.isfinite(float(x)) and d > 0 else float("nan")
            for x, d in zip(cos, denom, strict=True)
        ]
    return out
