"""Plotly figure builders for every analysis of the paper, in one consistent style.

Each builder is a pure function that returns a :class:`plotly.graph_objects.Figure`. It takes
the library's own result objects (e.g. :class:`~welfare_lens.analysis.AntiparallelismResult`,
:class:`~welfare_lens.steering.ResultTable`, :class:`~welfare_lens.maze.Trajectory`) *and* plain
arrays, lists and dicts, so a notebook can plot numbers from anywhere (a ``report.json`` too).

========================  ==================================================================
Builder                   What it shows (paper section)
========================  ==================================================================
:func:`antiparallelism`   cos(v_Mold, v_Gold) per layer, trained vs control, min and ℓ* (§3.1,
                          Table 7, note B-7)
:func:`class_cosine_matrix`  centred class-mean cosine matrix (Tables 9/10)
:func:`logit_lens_bars`   promoted / suppressed tokens of a vector (§3.2, Table 2)
:func:`emotion_scatter`   cos(v_Mold, e) vs cos(v_Gold, e) with the OLS line (§3.3, Fig. 3)
:func:`emotion_pca`       PC1 vs PC2 of the emotion vectors, coloured by valence (F.4)
:func:`steering_curves`   the steering "X": metric vs α per evaluation (§4, Fig. 4)
:func:`slope_heatmap`     OLS slopes per vector × layer, or the metric per α × layer (App. D)
:func:`tracking_densities`  projections of two conditions with Cohen's d (§5, Figs. 5/6)
:func:`training_curves`   return ± SE, P(Gold)/P(Mold), loss over steps (App. Q, Fig. 43)
:func:`maze`              the tile grid with a trajectory drawn on it (App. J/K, Fig. 2)
:func:`rotation`          cos(v, naive axis) over checkpoints with the reward (App. G)
:func:`recruitment`       Spearman ρ(reward, alignment) per layer with CI, recruited layers (G)
:func:`vaa_cosines`       cos(v, VAA) and cos(u, VAA) per layer (App. H)
:func:`emoji_neutrality`  per-emoji cosines with the two sentiment vectors, tile trio (J.2)
:func:`pre_existence`     steering slopes of one vector set on several models (A1 finding 6)
:func:`confidence_control`  correctness d within P(True) tertiles (Figure 7)
========================  ==================================================================

Style: :data:`TEMPLATE` is applied to every figure; :data:`COLOURS` gives Mold a red, Gold a
gold and Path a grey; trained curves are solid and control (maze-naive, ``u``) curves dotted
(:data:`DASHES`). Every trace carries hover text with the numbers it draws. Bad input (lengths
that do not match, data without a single finite value) raises the library's
:class:`~welfare_lens.errors.ShapeError` / :class:`~welfare_lens.errors.DataError` with a hint.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from numpy.typing import NDArray
from plotly.subplots import make_subplots

from welfare_lens.analysis.emotions import EmotionAlignment, EmotionPCA, ScatterFit
from welfare_lens.analysis.geometry import (
    AntiparallelismResult,
    CentredCosines,
    CosineSummary,
    cosine_per_layer,
)
from welfare_lens.analysis.logit_lens import LogitLensResult
from welfare_lens.analysis.tracking import TrackingResult
from welfare_lens.errors import DataError, ShapeError
from welfare_lens.maze.config import Tile, TileEmoji
from welfare_lens.maze.env import MazeEnv
from welfare_lens.maze.generate import Maze
from welfare_lens.maze.trajectories import Trajectory
from welfare_lens.steering.sweep import ResultTable, Slope
from welfare_lens.vectors import ConceptVectors

__all__ = [
    "COLOURS",
    "DASHES",
    "TEMPLATE",
    "antiparallelism",
    "class_cosine_matrix",
    "colour",
    "confidence_control",
    "design_comparison",
    "emoji_neutrality",
    "emotion_pca",
    "emotion_scatter",
    "logit_lens_bars",
    "maze",
    "pre_existence",
    "recruitment",
    "rotation",
    "slope_heatmap",
    "steering_curves",
    "tracking_densities",
    "training_curves",
    "vaa_cosines",
]

F64 = NDArray[np.float64]

# ----------------------------------------------------------------------------------------------
# Style
# ----------------------------------------------------------------------------------------------

#: Colour of each tile class / welfare vector: Mold red, Gold gold, Path grey.
COLOURS: dict[str, str] = {"mold": "#c0392b", "gold": "#d4a017", "path": "#8c979a"}
#: Line dash of trained (v) and control (maze-naive u) curves.
DASHES: dict[str, str] = {"trained": "solid", "control": "dot"}
#: Colour of curves that are neither Mold nor Gold (e.g. cos(v_Mold, v_Gold)).
NEUTRAL = "#22313f"
_FALLBACK = ("#2471a3", "#7d3c98", "#148f77", "#ca6f1e", "#566573", "#a93226")
_ALIASES = {
    "correct": "gold",
    "success": "gold",
    "positive": "gold",
    "incorrect": "mold",
    "failure": "mold",
    "negative": "mold",
}
_CONTROL_PREFIXES = ("control:", "control_", "naive:", "u_", "u:")
#: Diverging scale for cosines and slopes: negative blue, zero white, positive red.
DIVERGING: list[list[Any]] = [[0.0, "#2166ac"], [0.5, "#f7f7f7"], [1.0, "#b2182b"]]

TEMPLATE: go.layout.Template = go.layout.Template(pio.templates["plotly_white"])
TEMPLATE.layout.update(
    font={"family": "Inter, Helvetica, Arial, sans-serif", "size": 13, "color": "#1c2833"},
    title={"font": {"size": 16}, "x": 0.0, "xanchor": "left"},
    colorway=[COLOURS["mold"], COLOURS["gold"], COLOURS["path"], *_FALLBACK],
    hovermode="closest",
    hoverlabel={"font": {"size": 12}, "align": "left"},
    legend={"bgcolor": "rgba(255,255,255,0.85)", "borderwidth": 0},
    margin={"l": 70, "r": 30, "t": 80, "b": 60},
)
TEMPLATE.layout.xaxis.update(showline=True, linecolor="#566573", ticks="outside", zeroline=False)
TEMPLATE.layout.yaxis.update(showline=True, linecolor="#566573", ticks="outside", zeroline=False)

_HOVER = "%{hovertext}<extra></extra>"


def _split_role(label: str) -> tuple[str, str]:
    """``(role, base name)`` of a vector label: ``"u_gold"`` -> ``("control", "gold")``."""
    low = str(label).strip().lower()
    for prefix in _CONTROL_PREFIXES:
        if low.startswith(prefix):
            return "control", low[len(prefix) :]
    for suffix in (" (control)", "_control", ":control"):
        if low.endswith(suffix):
            return "control", low[: -len(suffix)]
    if low.startswith("v_"):
        low = low[2:]
    return "trained", low


def colour(name: str) -> str:
    """The style's colour for a vector, tile class or condition name.

    ``"mold"``, ``"v_mold"``, ``"u_mold"`` and ``"control:mold"`` are all Mold's red; ``"gold"``
    (and ``"correct"``) Gold's gold; ``"path"`` grey. Other names get a fixed colour derived from
    the name, so a name has the same colour in every figure.
    """
    _, base = _split_role(name)
    base = _ALIASES.get(base, base)
    if base in COLOURS:
        return COLOURS[base]
    return _FALLBACK[zlib.crc32(base.encode("utf-8")) % len(_FALLBACK)]


def _finish(fig: go.Figure, title: str, **layout: Any) -> go.Figure:
    fig.update_layout(template=TEMPLATE, title={"text": title}, **layout)
    return fig


def _fmt(x: Any, spec: str = "+.3f") -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "n/a"
    return format(v, spec) if math.isfinite(v) else "n/a"


def _nan_to_none(a: Iterable[Any]) -> list[float | None]:
    out: list[float | None] = []
    for v in a:
        f = float(v) if v is not None else math.nan
        out.append(f if math.isfinite(f) else None)
    return out


def _array(x: Any, what: str, ndim: int | None = 1) -> F64:
    """``x`` as float64 (tensors detached); ShapeError on a wrong rank, DataError if unusable."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise DataError(
            f"{what} must be numeric, got {type(x).__name__}.",
            hint="Pass a list, numpy array or tensor of numbers.",
        ) from err
    if ndim is not None and a.ndim != ndim:
        raise ShapeError(
            f"{what} must be {ndim}-D, got shape {a.shape}.",
            hint="Pass one value per layer/point." if ndim == 1 else "Pass a 2-D table.",
        )
    if a.size == 0:
        raise DataError(f"{what} is empty.", hint="Pass at least one value.")
    if not np.isfinite(a).any():
        raise DataError(
            f"{what} holds no finite value (all NaN/Inf).",
            hint="Check the analysis that produced it; nothing can be plotted.",
        )
    return a


def _same_length(what: str, **arrays: Sized) -> None:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ShapeError(
            f"{what}: lengths differ ({', '.join(f'{k}={n}' for k, n in lengths.items())}).",
            hint="Pass one value per item in every input.",
        )


def _ols(x: F64, y: F64) -> tuple[float, float, float]:
    """OLS ``y = a + b x`` and Pearson R over the finite pairs: ``(b, a, r)`` (NaN if degenerate)."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 2:
        return math.nan, math.nan, math.nan
    xm, ym = x - x.mean(), y - y.mean()
    sxx, syy, sxy = float(xm @ xm), float(ym @ ym), float(xm @ ym)
    if sxx <= 0:
        return math.nan, math.nan, math.nan
    b = sxy / sxx
    r = sxy / math.sqrt(sxx * syy) if syy > 0 else math.nan
    return b, float(y.mean() - b * x.mean()), r


def _band(x: Sequence[float], lo: Sequence[float], hi: Sequence[float]) -> tuple[list[Any], ...]:
    """Polygon (x, y) of a band between ``lo`` and ``hi`` (NaN gaps dropped)."""
    pts = [
        (a, b, c)
        for a, b, c in zip(x, lo, hi, strict=True)
        if math.isfinite(float(b)) and math.isfinite(float(c))
    ]
    xs = [p[0] for p in pts] + [p[0] for p in reversed(pts)]
    ys = [p[1] for p in pts] + [p[2] for p in reversed(pts)]
    return xs, ys


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _band_trace(
    x: Sequence[float], lo: Sequence[float], hi: Sequence[float], colour: str, name: str
) -> go.Scatter | None:
    """A light, hover-less ``colour`` band between ``lo`` and ``hi`` (e.g. mean ± SE).

    ``None`` where no point has both bounds finite: there is nothing to shade.
    """
    bx, by = _band(x, lo, hi)
    if not bx:
        return None
    return go.Scatter(
        x=bx,
        y=by,
        fill="toself",
        fillcolor=_rgba(colour, 0.15),
        line={"width": 0},
        mode="lines",
        name=name,
        hoverinfo="skip",
    )


# ----------------------------------------------------------------------------------------------
# Antiparallelism (§3.1, Table 7, B-7)
# ----------------------------------------------------------------------------------------------


@dataclass
class _Curve:
    per_layer: F64
    ci_low: F64 | None = None
    ci_high: F64 | None = None
    noise_floor: F64 | None = None


def _optional(x: Any, n: int, what: str) -> F64 | None:
    if x is None:
        return None
    a = np.asarray(_nan_to_none(np.ravel(np.asarray(x, dtype=object))), dtype=np.float64)
    if a.size != n:
        raise ShapeError(
            f"{what} has {a.size} values for {n} layers.", hint="Pass one value per layer."
        )
    return a if np.isfinite(a).any() else None


def _cosine_curve(x: Any, pair: tuple[str, str], what: str) -> _Curve:
    if isinstance(x, AntiparallelismResult):
        x = x.trained
    if isinstance(x, CosineSummary):
        per = _array(x.per_layer, what)
        n = per.size
        return _Curve(
            per,
            _optional(x.ci_low, n, f"{what} ci_low"),
            _optional(x.ci_high, n, f"{what} ci_high"),
            _optional(x.noise_floor, n, f"{what} noise_floor"),
        )
    if isinstance(x, ConceptVectors):
        return _Curve(_array(cosine_per_layer(x[pair[0]], x[pair[1]]), what))
    if isinstance(x, Mapping):
        if "per_layer" not in x:
            raise DataError(
                f"{what} is a dict without 'per_layer'.",
                hint="Pass CosineSummary.to_dict() output or a list of cosines per layer.",
            )
        per = _array(x["per_layer"], what)
        n = per.size
        return _Curve(
            per,
            _optional(x.get("ci_low"), n, f"{what} ci_low"),
            _optional(x.get("ci_high"), n, f"{what} ci_high"),
            _optional(x.get("noise_floor"), n, f"{what} noise_floor"),
        )
    return _Curve(_array(x, what))


def _ci_band(fig: go.Figure, xs: Sequence[int], curve: _Curve, colour: str, name: str) -> None:
    """Shade a curve's bootstrap interval (``ci_low``..``ci_high``) in its colour."""
    if curve.ci_low is None or curve.ci_high is None:
        return
    band = _band_trace(xs, list(curve.ci_low), list(curve.ci_high), colour, name)
    if band is not None:
        fig.add_trace(band)


def _null_band(fig: go.Figure, xs: Sequence[int], d_model: int | None) -> None:
    """Shade the 95% band of the cosine of two random directions in R^d (±1.96/√d)."""
    if d_model is None or d_model <= 1:
        return
    half = 1.96 / math.sqrt(d_model)
    fig.add_trace(
        go.Scatter(
            x=[xs[0], xs[-1], xs[-1], xs[0]],
            y=[-half, -half, half, half],
            fill="toself",
            fillcolor="rgba(140,151,154,0.18)",
            line={"width": 0},
            mode="lines",
            name=f"random-direction null ±1.96/√d ({half:.3f})",
            hoverinfo="skip",
        )
    )


def antiparallelism(
    trained: AntiparallelismResult | CosineSummary | ConceptVectors | Mapping[str, Any] | Any,
    control: CosineSummary | ConceptVectors | Mapping[str, Any] | Any | None = None,
    l_star: int | Sequence[int] | None = None,
    *,
    layers: Sequence[int] | None = None,
    d_model: int | None = None,
    pair: tuple[str, str] = ("mold", "gold"),
    title: str | None = None,
) -> go.Figure:
    """Per-layer cos(v_Mold, v_Gold), trained (solid) vs control (dotted) (paper §3.1, Table 7).

    The paper's headline is the **minimum over layers** (note B-7), so each curve's minimum is
    marked and named in the title; the steering layer ℓ* gets a vertical line with its value,
    so a value at ℓ* is not mistaken for the headline. Bootstrap intervals of the result (if it
    has them) are shaded bands; with ``d_model`` known, the 95% band of the cosine of two random
    directions (±1.96/√d) is shaded around zero; the no-signal noise floor is drawn dash-dotted.

    Args:
        trained: An :class:`~welfare_lens.analysis.AntiparallelismResult` (its control, ℓ* and
            d_model are used unless given here), a :class:`CosineSummary`, trained
            :class:`ConceptVectors`, a dict like ``CosineSummary.to_dict()``, or plain cosines.
        control: The maze-naive curve in any of the same forms.
        l_star: Steering layer(s) ℓ* to mark.
        layers: Layer numbers of the values (default ``0..L-1``).
        d_model: Residual width, for the random-direction null band.
        pair: Vector names compared, for ConceptVectors input and the labels.
        title: Figure title (default: a summary with the minima).

    Raises:
        ShapeError: The curves (or ``layers``) differ in length.
        DataError: A curve holds no finite value.
    """
    if isinstance(trained, AntiparallelismResult):
        result = trained
        control = result.control if control is None else control
        l_star = list(result.steering_layers) if l_star is None else l_star
        d_model = result.d_model if d_model is None else d_model
        pair = result.pair
    t = _cosine_curve(trained, pair, "trained cosines")
    c = None if control is None else _cosine_curve(control, pair, "control cosines")
    n = t.per_layer.size
    if c is not None and c.per_layer.size != n:
        raise ShapeError(
            f"trained has {n} layers, control {c.per_layer.size}.",
            hint="Compare vectors of the same architecture (same n_layers).",
        )
    xs = list(range(n)) if layers is None else [int(v) for v in layers]
    if len(xs) != n:
        raise ShapeError(f"{len(xs)} layer labels for {n} values.", hint="One label per layer.")
    a, b = pair
    fig = go.Figure()
    _null_band(fig, xs, d_model)
    for role, curve in (("trained", t), ("control", c)):
        if curve is None or curve.ci_low is None or curve.ci_high is None:
            continue
        _ci_band(
            fig, xs, curve, NEUTRAL if role == "trained" else "#7f8c8d", f"{role} bootstrap CI"
        )
    if t.noise_floor is not None:
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=_nan_to_none(t.noise_floor),
                mode="lines",
                line={"color": "#7f8c8d", "dash": "dashdot", "width": 1},
                name="no-signal floor (trained)",
                hovertext=[
                    f"layer {x}: no-signal floor {_fmt(v)}"
                    for x, v in zip(xs, t.noise_floor, strict=True)
                ],
                hovertemplate=_HOVER,
            )
        )
    summaries: list[str] = []
    for role, curve in (("control", c), ("trained", t)):
        if curve is None:
            continue
        y = curve.per_layer
        hover = []
        for i, (x, v) in enumerate(zip(xs, y, strict=True)):
            txt = f"{role}, layer {x}<br>cos(v_{a}, v_{b}) = {_fmt(v)}"
            if curve.ci_low is not None and curve.ci_high is not None:
                txt += f"<br>CI [{_fmt(curve.ci_low[i])}, {_fmt(curve.ci_high[i])}]"
            hover.append(txt)
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=_nan_to_none(y),
                mode="lines+markers",
                line={"color": NEUTRAL if role == "trained" else "#5d6d7e", "dash": DASHES[role]},
                marker={"size": 5},
                name=role,
                hovertext=hover,
                hovertemplate=_HOVER,
            )
        )
    for role, curve in (("trained", t), ("control", c)):
        if curve is None:
            continue
        i = int(np.nanargmin(curve.per_layer))
        m = float(curve.per_layer[i])
        fig.add_trace(
            go.Scatter(
                x=[xs[i]],
                y=[m],
                mode="markers",
                marker={
                    "symbol": "star" if role == "trained" else "star-open",
                    "size": 15,
                    "color": COLOURS["mold"],
                    "line": {"width": 1, "color": NEUTRAL},
                },
                name=f"{role} min",
                hovertext=[f"{role} minimum over layers: {_fmt(m)} at layer {xs[i]}"],
                hovertemplate=_HOVER,
            )
        )
        mean = float(np.nanmean(curve.per_layer))
        summaries.append(f"{role} min {_fmt(m)} @ L{xs[i]}, mean {_fmt(mean)}")
    stars = [] if l_star is None else ([l_star] if isinstance(l_star, int) else list(l_star))
    for layer in stars:
        if layer not in xs:
            raise ShapeError(f"l_star {layer} is not among the layers {xs[0]}..{xs[-1]}.")
        val = t.per_layer[xs.index(layer)]
        fig.add_vline(
            x=layer,
            line={"color": COLOURS["gold"], "dash": "dash", "width": 1.5},
            annotation_text=f"ℓ*={layer}: {_fmt(val)}",
            annotation_position="top",
        )
    if title is None:
        title = f"cos(v_{a}, v_{b}) per layer — " + "; ".join(summaries)
    return _finish(
        fig,
        title,
        xaxis_title="layer",
        yaxis_title=f"cos(v_{a}, v_{b})",
        yaxis_range=[-1.05, 1.05],
    )


def design_comparison(
    curves: Mapping[str, CosineSummary | ConceptVectors | Mapping[str, Any] | Any],
    *,
    layers: Sequence[int] | None = None,
    d_model: int | None = None,
    pair: tuple[str, str] = ("mold", "gold"),
    title: str | None = None,
) -> go.Figure:
    """Per-layer cos(u_Mold, u_Gold) of the same model under several extraction designs.

    The paper's design (a class-c sample ends with a move onto a class-c tile) lets the classes
    differ in what the model *saw* as well as in what it *chose*; the minimal-pair design
    (:func:`welfare_lens.maze.shared_prefix_trajectories` with ``design="minimal_pairs"``)
    removes the first difference. One solid line per design, each minimum starred; the
    random-direction null band is shaded when ``d_model`` is given, and a design's no-signal
    floor (:func:`welfare_lens.analysis.noise_cosine`) is drawn dash-dotted when it has one.

    Args:
        curves: ``{design label: cosines}``, each in any form :func:`antiparallelism` takes.
        layers: Layer numbers (default ``0..L-1``).
        d_model: Residual width, for the null band.
        pair: Vector names compared.
        title: Figure title (default: each design's minimum).

    Raises:
        DataError: No curves.
        ShapeError: The curves differ in length.
    """
    if not curves:
        raise DataError("No designs to compare.", hint="Pass {label: cosines per layer}.")
    parsed = {str(k): _cosine_curve(v, pair, f"{k} cosines") for k, v in curves.items()}
    sizes = {c.per_layer.size for c in parsed.values()}
    if len(sizes) != 1:
        raise ShapeError(
            f"The designs have different layer counts {sorted(sizes)}.",
            hint="Compare vectors of one model.",
        )
    n = sizes.pop()
    xs = list(range(n)) if layers is None else [int(v) for v in layers]
    if len(xs) != n:
        raise ShapeError(f"{len(xs)} layer labels for {n} values.", hint="One label per layer.")
    a, b = pair
    fig = go.Figure()
    _null_band(fig, xs, d_model)
    summaries: list[str] = []
    for i, (label, curve) in enumerate(parsed.items()):
        col = (NEUTRAL, *_FALLBACK)[i % (len(_FALLBACK) + 1)]
        if curve.ci_low is not None and curve.ci_high is not None:
            _ci_band(fig, xs, curve, col, f"{label} bootstrap CI")
        if curve.noise_floor is not None:
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=_nan_to_none(curve.noise_floor),
                    mode="lines",
                    line={"color": col, "dash": "dashdot", "width": 1},
                    name=f"{label}: no-signal floor",
                    hoverinfo="skip",
                )
            )
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=_nan_to_none(curve.per_layer),
                mode="lines+markers",
                line={"color": col},
                marker={"size": 5},
                name=label,
                hovertext=[
                    f"{label}, layer {x}<br>cos(u_{a}, u_{b}) = {_fmt(v)}"
                    for x, v in zip(xs, curve.per_layer, strict=True)
                ],
                hovertemplate=_HOVER,
            )
        )
        j = int(np.nanargmin(curve.per_layer))
        m = float(curve.per_layer[j])
        fig.add_trace(
            go.Scatter(
                x=[xs[j]],
                y=[m],
                mode="markers",
                marker={"symbol": "star", "size": 14, "color": col},
                name=f"{label} min",
                showlegend=False,
                hovertext=[f"{label} minimum over layers: {_fmt(m)} at layer {xs[j]}"],
                hovertemplate=_HOVER,
            )
        )
        summaries.append(f"{label} min {_fmt(m)} @ L{xs[j]}")
    if title is None:
        title = f"cos(u_{a}, u_{b}) per layer by extraction design — " + "; ".join(summaries)
    return _finish(
        fig,
        title,
        xaxis_title="layer",
        yaxis_title=f"cos(u_{a}, u_{b})",
        yaxis_range=[-1.05, 1.05],
        legend={"orientation": "h", "yanchor": "top", "y": -0.18, "x": 0.0},
    )


# ----------------------------------------------------------------------------------------------
# Centred class-mean cosines (Tables 9/10)
# ----------------------------------------------------------------------------------------------


@dataclass
class _Matrix:
    names: list[str]
    values: F64
    ci: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    p: dict[tuple[str, str], float] = field(default_factory=dict)
    layer: int | None = None


def _pair_key(key: Any) -> tuple[str, str]:
    if isinstance(key, str) and "|" in key:
        a, b = key.split("|", 1)
        return a, b
    if isinstance(key, tuple | list) and len(key) == 2:
        return str(key[0]), str(key[1])
    raise DataError(
        f"Cannot read the class pair {key!r}.", hint="Use (a, b) tuples or 'a|b' strings as keys."
    )


def _from_pairs(
    pairs: Mapping[Any, Any],
    ci: Mapping[Any, Any] | None = None,
    p: Mapping[Any, Any] | None = None,
) -> _Matrix:
    cos = {_pair_key(k): float(v) for k, v in pairs.items()}
    names: list[str] = []
    for a, b in cos:
        for nm in (a, b):
            if nm not in names:
                names.append(nm)
    k = len(names)
    m = np.full((k, k), np.nan)
    np.fill_diagonal(m, 1.0)
    for (a, b), v in cos.items():
        i, j = names.index(a), names.index(b)
        m[i, j] = m[j, i] = v
    cis = {_pair_key(key): (float(v[0]), float(v[1])) for key, v in (ci or {}).items()}
    ps = {_pair_key(key): float(v) for key, v in (p or {}).items()}
    _array(m, "class cosine matrix", ndim=2)
    return _Matrix(names, m, cis, ps)


def _class_matrix(x: Any, classes: Sequence[str] | None) -> _Matrix:
    if isinstance(x, CentredCosines):
        out = _from_pairs(x.cosines, x.ci, x.null_p)
        out.layer = x.layer
        return out
    if isinstance(x, Mapping):
        if "cosines" in x:  # CentredCosines.to_dict()
            out = _from_pairs(x["cosines"], x.get("ci"), x.get("null_p"))
            out.layer = x.get("layer")
            return out
        return _from_pairs(x)
    m = _array(x, "class cosine matrix", ndim=2)
    if m.shape[0] != m.shape[1]:
        raise ShapeError(f"The cosine matrix must be square, got {m.shape}.", hint="Pass k x k.")
    k = m.shape[0]
    names = (
        list(classes)
        if classes is not None
        else (["mold", "gold", "path"] if k == 3 else [f"class {i}" for i in range(k)])
    )
    if len(names) != k:
        raise ShapeError(f"{len(names)} class names for a {k} x {k} matrix.", hint="One per row.")
    return _Matrix(names, m)


def class_cosine_matrix(
    trained: CentredCosines | Mapping[Any, Any] | Any,
    control: CentredCosines | Mapping[Any, Any] | Any | None = None,
    *,
    classes: Sequence[str] | None = None,
    title: str | None = None,
) -> go.Figure:
    """Heatmap of the centred class-mean cosines, cells annotated (paper Tables 9/10).

    The paper reports, at layer floor(2L/3) of the primary model, cos(M, G) = −0.813 trained vs
    +0.086 naive. Note that three centred random vectors already have pairwise cosines near −0.5
    (the null of :func:`~welfare_lens.analysis.centred_null`), which the hover text gives as a
    p-value when the result carries it.

    Args:
        trained: :class:`~welfare_lens.analysis.CentredCosines`, its ``to_dict()``, a
            ``{(a, b): cos}`` / ``{"a|b": cos}`` dict, or a k x k matrix (with ``classes``).
        control: The maze-naive model's cosines, drawn in a second panel.
        classes: Row/column names for a plain matrix (default mold, gold, path for 3 x 3).
        title: Figure title.

    Raises:
        ShapeError: A matrix is not square or ``classes`` does not fit it.
        DataError: No finite cosine, or unreadable pair keys.
    """
    panels = [("trained", _class_matrix(trained, classes))]
    if control is not None:
        panels.append(("control", _class_matrix(control, classes)))
    titles = [
        f"{role}" + ("" if mat.layer is None else f" (layer {mat.layer})") for role, mat in panels
    ]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=titles, horizontal_spacing=0.12)
    for col, (role, mat) in enumerate(panels, start=1):
        text, hover = [], []
        for i, a in enumerate(mat.names):
            trow, hrow = [], []
            for j, b in enumerate(mat.names):
                v = mat.values[i, j]
                trow.append(_fmt(v))
                h = f"{role}: cos({a}, {b}) = {_fmt(v)}"
                key = (a, b) if (a, b) in mat.ci or (a, b) in mat.p else (b, a)
                if key in mat.ci:
                    h += f"<br>CI [{_fmt(mat.ci[key][0])}, {_fmt(mat.ci[key][1])}]"
                if key in mat.p and i != j:
                    h += f"<br>p vs centred null = {mat.p[key]:.3g}"
                hrow.append(h)
            text.append(trow)
            hover.append(hrow)
        fig.add_trace(
            go.Heatmap(
                z=[_nan_to_none(row) for row in mat.values],
                x=mat.names,
                y=mat.names,
                text=text,
                texttemplate="%{text}",
                hovertext=hover,
                hovertemplate=_HOVER,
                colorscale=DIVERGING,
                zmin=-1,
                zmax=1,
                zmid=0,
                showscale=col == len(panels),
                colorbar={"title": {"text": "cos"}},
                name=role,
            ),
            row=1,
            col=col,
        )
        fig.update_yaxes(autorange="reversed", row=1, col=col)
    if title is None:
        title = "Centred class-mean cosines (paper Tables 9/10)"
    return _finish(fig, title, height=420, width=None if len(panels) == 1 else 900)


# ----------------------------------------------------------------------------------------------
# Logit lens (§3.2, Table 2)
# ----------------------------------------------------------------------------------------------


def _token_label(token: str) -> str:
    """A token as in the paper's tables: leading spaces as ␣, newlines as ⏎."""
    if token == "":
        return "∅"
    out = token.replace("\n", "⏎").replace("\t", "⇥")
    stripped = out.lstrip(" ")
    return "␣" * (len(out) - len(stripped)) + stripped


@dataclass
class _Lens:
    name: str
    layer: int | None
    norm: str | None
    promoted: list[tuple[str, float, int | None]]
    suppressed: list[tuple[str, float, int | None]]


def _pairs(x: Any, what: str) -> list[tuple[str, float, int | None]]:
    if x is None:
        return []
    if isinstance(x, Mapping):
        return [(str(k), float(v), None) for k, v in x.items()]
    out = []
    for item in x:
        if not isinstance(item, Sequence) or isinstance(item, str) or len(item) not in (2, 3):
            raise DataError(
                f"{what} must hold (token, score) pairs, got {item!r}.",
                hint="E.g. [(' cannot', 3.2), (' impossible', 2.9)] or {token: score}.",
            )
        out.append((str(item[0]), float(item[1]), None if len(item) == 2 else int(item[2])))
    return out


def _lens(x: Any, index: int) -> _Lens:
    if isinstance(x, LogitLensResult):
        d: Mapping[str, Any] = x.to_dict()
    elif isinstance(x, Mapping):
        d = x
    else:
        raise DataError(
            f"Cannot plot a logit lens from {type(x).__name__}.",
            hint="Pass a LogitLensResult, its to_dict(), or promoted=/suppressed= pairs.",
        )

    def side(tok: str, sc: str, ids: str) -> list[tuple[str, float, int | None]]:
        tokens, scores = list(d.get(tok, [])), list(d.get(sc, []))
        id_list = list(d.get(ids, [])) or [None] * len(tokens)
        _same_length(f"logit lens {tok}", tokens=tokens, scores=scores, ids=id_list)
        return [
            (str(t), float(s), None if i is None else int(i))
            for t, s, i in zip(tokens, scores, id_list, strict=True)
        ]

    return _Lens(
        str(d.get("name") or f"vector {index}"),
        d.get("layer"),
        d.get("norm"),
        side("top_tokens", "top_scores", "top_ids"),
        side("bottom_tokens", "bottom_scores", "bottom_ids"),
    )


def logit_lens_bars(
    result: LogitLensResult | Mapping[str, Any] | Sequence[Any] | None = None,
    *,
    promoted: Sequence[Sequence[Any]] | Mapping[str, float] | None = None,
    suppressed: Sequence[Sequence[Any]] | Mapping[str, float] | None = None,
    k: int | None = None,
    name: str | None = None,
    title: str | None = None,
) -> go.Figure:
    """Promoted (positive) and suppressed (negative) tokens as horizontal bars (paper Table 2).

    One panel per vector: promoted tokens on top, best first, suppressed below, most suppressed
    at the bottom. Tokens are shown as in the paper's tables (a leading space as ␣).

    Args:
        result: A :class:`~welfare_lens.analysis.LogitLensResult`, its ``to_dict()``, or a list
            of those (e.g. ``[lens_mold, lens_gold]``, one panel each).
        promoted: Instead of ``result``: ``(token, score[, id])`` pairs or ``{token: score}``.
        suppressed: The same for the suppressed tokens.
        k: Show at most ``k`` tokens per side.
        name: Vector name for plain input (sets the colour, e.g. ``"mold"``).
        title: Figure title.

    Raises:
        DataError: No tokens at all, or malformed pairs.
        ShapeError: Token and score lists differ in length.
    """
    lenses: list[_Lens] = []
    if result is not None:
        items = (
            list(result)
            if isinstance(result, Sequence) and not isinstance(result, str | Mapping)
            else [result]
        )
        lenses = [_lens(x, i) for i, x in enumerate(items)]
    if promoted is not None or suppressed is not None:
        lenses.append(
            _Lens(
                name or "vector",
                None,
                None,
                _pairs(promoted, "promoted"),
                _pairs(suppressed, "suppressed"),
            )
        )
    if not lenses or all(not ln.promoted and not ln.suppressed for ln in lenses):
        raise DataError(
            "No tokens to plot.", hint="Pass a LogitLensResult or promoted=/suppressed=."
        )
    titles = [
        f"v_{ln.name}" + ("" if ln.layer is None else f" @ layer {ln.layer}") for ln in lenses
    ]
    fig = make_subplots(rows=1, cols=len(lenses), subplot_titles=titles, horizontal_spacing=0.18)
    n_rows = 0
    for col, ln in enumerate(lenses, start=1):
        top = ln.promoted[:k] if k is not None else ln.promoted
        bottom = ln.suppressed[:k] if k is not None else ln.suppressed
        n_rows = max(n_rows, len(top) + len(bottom))
        base = colour(ln.name)
        tick_vals: list[int] = []
        tick_text: list[str] = []
        for side, entries, offset in (("promoted", top, 0), ("suppressed", bottom, len(top) + 1)):
            if not entries:
                continue
            ys = [-(offset + i) for i in range(len(entries))]
            hover = [
                f"v_{ln.name} {side} #{i + 1}: '{_token_label(t)}'"
                + ("" if tid is None else f" (id {tid})")
                + f"<br>score {_fmt(s, '+.4f')}"
                for i, (t, s, tid) in enumerate(entries)
            ]
            fig.add_trace(
                go.Bar(
                    x=[s for _, s, _ in entries],
                    y=ys,
                    orientation="h",
                    marker={"color": base, "opacity": 1.0 if side == "promoted" else 0.5},
                    name=f"{ln.name} {side}",
                    hovertext=hover,
                    hovertemplate=_HOVER,
                    showlegend=False,
                ),
                row=1,
                col=col,
            )
            tick_vals += ys
            tick_text += [_token_label(t) for t, _, _ in entries]
        fig.update_yaxes(tickvals=tick_vals, ticktext=tick_text, row=1, col=col)
        fig.update_xaxes(title_text="logit-lens score", zeroline=True, row=1, col=col)
    if title is None:
        norms = {ln.norm for ln in lenses if ln.norm}
        title = "Logit lens: promoted (+) and suppressed (−) tokens (paper Table 2)"
        if norms:
            title += f", readout {'/'.join(sorted(norms))}"
    return _finish(fig, title, height=max(360, 26 * n_rows + 140), bargap=0.25)


# ----------------------------------------------------------------------------------------------
# Emotion scatter (§3.3, Fig. 3) and emotion PCA (F.4)
# ----------------------------------------------------------------------------------------------


@dataclass
class _Scatter:
    role: str
    x: F64
    y: F64
    names: list[str]
    layer: int | None
    x_name: str
    y_name: str
    layer_note: str = ""


def _scatter(x: Any, role: str, layer: int | None, emotions: Sequence[str] | None) -> _Scatter:
    note = ""
    if isinstance(x, ScatterFit):
        if layer is None:
            if len(x.layers) == 1:
                layer = x.layers[0]
            else:
                finite = np.where(np.isfinite(x.r), x.r, np.inf)
                layer, note = x.layers[int(np.argmin(finite))], " (argmin R)"
        i = x.index(layer)
        n = x.x.shape[1]
        names = list(emotions) if emotions is not None else [f"emotion {j}" for j in range(n)]
        out = _Scatter(
            role,
            _array(x.x[i], "cos x"),
            _array(x.y[i], "cos y"),
            names,
            layer,
            x.x_name,
            x.y_name,
            note,
        )
    elif isinstance(x, Mapping):
        if "x" not in x or "y" not in x:
            raise DataError(
                "A scatter dict needs 'x' and 'y'.",
                hint="E.g. {'x': cos_mold, 'y': cos_gold, 'emotions': names}.",
            )
        xs, ys = _array(x["x"], "cos x"), _array(x["y"], "cos y")
        names = list(x.get("emotions") or emotions or [f"emotion {j}" for j in range(xs.size)])
        out = _Scatter(role, xs, ys, names, x.get("layer", layer), "mold", "gold")
    elif isinstance(x, Sequence | np.ndarray) and len(x) == 2:
        xs, ys = _array(x[0], "cos x"), _array(x[1], "cos y")
        names = list(emotions) if emotions is not None else [f"emotion {j}" for j in range(xs.size)]
        out = _Scatter(role, xs, ys, names, layer, "mold", "gold")
    else:
        raise DataError(
            f"Cannot plot an emotion scatter from {type(x).__name__}.",
            hint="Pass an EmotionAlignment, a ScatterFit, (x, y) arrays or {'x':..., 'y':...}.",
        )
    _same_length("emotion scatter", x=out.x, y=out.y, emotions=out.names)
    if int((np.isfinite(out.x) & np.isfinite(out.y)).sum()) < 2:
        raise DataError(
            "An emotion scatter needs at least two finite points.", hint="Check the cosines."
        )
    return out


def emotion_scatter(
    trained: EmotionAlignment | ScatterFit | Mapping[str, Any] | Sequence[Any],
    control: ScatterFit | Mapping[str, Any] | Sequence[Any] | None = None,
    *,
    layer: int | None = None,
    emotions: Sequence[str] | None = None,
    title: str | None = None,
) -> go.Figure:
    """cos(v_Mold, e) against cos(v_Gold, e) over emotions, with the OLS line (paper Fig. 3).

    The primary model gives slope −0.88, R −0.948 trained vs +0.11, +0.080 for the controls at
    layer 21. Trained and control are side by side when both are given; each panel's title gives
    the OLS slope and Pearson R computed from the plotted points; hovering a point names the
    emotion and its two cosines.

    Args:
        trained: An :class:`~welfare_lens.analysis.EmotionAlignment` (its control and reporting
            layer are used unless given), a :class:`~welfare_lens.analysis.ScatterFit`, a pair
            ``(x, y)`` of cosine arrays, or ``{"x": ..., "y": ..., "emotions": [...]}``.
        control: The maze-naive scatter in the same forms.
        layer: Layer to show for ScatterFit input (default: the alignment's layer; for a bare
            multi-layer ScatterFit the layer of the most negative R, which the title says).
        emotions: Emotion names for ScatterFit / plain input.
        title: Figure title.

    Raises:
        ShapeError: x, y and names differ in length.
        DataError: Fewer than two finite points.
    """
    if isinstance(trained, EmotionAlignment):
        emotions = trained.emotions if emotions is None else emotions
        layer = trained.layer if layer is None else layer
        control = trained.control if control is None else control
        trained = trained.trained
    panels = [_scatter(trained, "trained", layer, emotions)]
    if control is not None:
        panels.append(
            _scatter(control, "control", panels[0].layer if layer is None else layer, emotions)
        )
    fits = [_ols(p.x, p.y) for p in panels]
    titles = [
        f"{p.role}"
        + ("" if p.layer is None else f" (layer {p.layer}{p.layer_note})")
        + f": slope {_fmt(f[0])}, R {_fmt(f[2])}"
        for p, f in zip(panels, fits, strict=True)
    ]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=titles, horizontal_spacing=0.1)
    for col, (p, (slope, intercept, r)) in enumerate(zip(panels, fits, strict=True), start=1):
        hover = [
            f"{nm}<br>cos(v_{p.x_name}, e) = {_fmt(a)}<br>cos(v_{p.y_name}, e) = {_fmt(b)}"
            for nm, a, b in zip(p.names, p.x, p.y, strict=True)
        ]
        line_colour = NEUTRAL if p.role == "trained" else "#5d6d7e"
        fig.add_trace(
            go.Scatter(
                x=_nan_to_none(p.x),
                y=_nan_to_none(p.y),
                mode="markers",
                marker={"size": 7, "color": line_colour, "opacity": 0.75},
                name=f"{p.role} emotions",
                hovertext=hover,
                hovertemplate=_HOVER,
            ),
            row=1,
            col=col,
        )
        ok = np.isfinite(p.x) & np.isfinite(p.y)
        lo, hi = float(p.x[ok].min()), float(p.x[ok].max())
        if math.isfinite(slope):
            n = int(ok.sum())
            fig.add_trace(
                go.Scatter(
                    x=[lo, hi],
                    y=[intercept + slope * lo, intercept + slope * hi],
                    mode="lines",
                    line={"color": COLOURS["mold"], "dash": DASHES[p.role], "width": 2},
                    name=f"{p.role} OLS",
                    hovertext=[
                        f"{p.role} OLS: slope {_fmt(slope)}, intercept {_fmt(intercept, '+.4f')}, "
                        f"R {_fmt(r)}, n = {n}"
                    ]
                    * 2,
                    hovertemplate=_HOVER,
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text=f"cos(v_{p.x_name}, e)", row=1, col=col)
        fig.update_yaxes(title_text=f"cos(v_{p.y_name}, e)", row=1, col=col)
    if title is None:
        title = "Welfare vectors vs emotion vectors (paper Fig. 3)"
    return _finish(fig, title, height=460, showlegend=False)


def _valence_lookup(
    valence: Mapping[str, float] | Sequence[float | None] | None, names: Sequence[str]
) -> F64:
    if valence is None:
        try:
            from welfare_lens.analysis.emotions import load_emotions

            table = {r.name: r.valence for r in load_emotions()}
        except Exception:  # the shipped ratings are optional for a plot
            table = {}
        return np.array([table.get(n, np.nan) for n in names], dtype=np.float64)
    if isinstance(valence, Mapping):
        return np.array([float(valence.get(n, np.nan)) for n in names], dtype=np.float64)
    vals = np.asarray(_nan_to_none(valence), dtype=np.float64)
    _same_length("emotion valence", valence=vals, emotions=names)
    return vals


def emotion_pca(
    result: EmotionPCA | Any,
    *,
    layer: int | None = None,
    emotions: Sequence[str] | None = None,
    valence: Mapping[str, float] | Sequence[float | None] | None = None,
    positions: Mapping[str, float] | None = None,
    title: str | None = None,
) -> go.Figure:
    """PC1 vs PC2 of the emotion vectors coloured by valence, welfare vectors on PC1 (F.4).

    PC1 tracks valence and PC2 arousal (Sofroniew et al.); trained v_Mold and v_Gold sit at
    opposite ends of PC1 while the controls do not. A vector's position is its scalar projection
    on the unit PC1 (the same units as the emotions' PC1 scores), drawn as a vertical line
    (control dotted); the hover gives the cosine with PC1 too.

    Args:
        result: An :class:`~welfare_lens.analysis.EmotionPCA`, or an ``[n_emotions, 2]`` array
            of (PC1, PC2) scores.
        layer: Layer to show (default the result's ``best_layer``).
        emotions: Names for array input.
        valence: ``{emotion: valence}`` or one value per emotion; default the shipped ratings.
            Emotions without a rating are drawn grey.
        positions: ``{vector name: PC1 position}`` to mark (default: the result's projections;
            names like ``"control:mold"`` are drawn dotted).
        title: Figure title.

    Raises:
        ShapeError: Scores are not ``[n, 2]`` or names do not match.
        DataError: No finite score.
    """
    loadings: dict[str, float] = {}
    info = ""
    if isinstance(result, EmotionPCA):
        layer = result.best_layer if layer is None else layer
        if layer not in result.layers:
            raise ShapeError(f"Layer {layer} not in {result.layers}.", hint="Use a covered layer.")
        i = result.layers.index(layer)
        scores = _array(result.scores[i], "PCA scores", ndim=2)
        names = list(result.emotions)
        if positions is None:
            positions = {
                k: float(v[i]) for k, v in result.projections.items() if math.isfinite(float(v[i]))
            }
        loadings = {k: float(v[i]) for k, v in result.loadings.items()}
        ex = result.explained[i]
        info = (
            f" at layer {layer}: |r|(PC1, valence) {_fmt(result.r_valence[i], '.2f')}, "
            f"|r|(PC2, arousal) {_fmt(result.r_arousal[i], '.2f')}"
        )
        x_title = f"PC1 ({ex[0]:.1%} of variance)"
        y_title = f"PC2 ({ex[1]:.1%})"
    else:
        scores = _array(result, "PCA scores", ndim=2)
        names = (
            list(emotions) if emotions is not None else [f"emotion {j}" for j in range(len(scores))]
        )
        x_title, y_title = "PC1", "PC2"
    if scores.shape[1] != 2:
        raise ShapeError(f"Scores must be [n, 2], got {scores.shape}.", hint="Pass PC1 and PC2.")
    _same_length("emotion PCA", scores=scores, emotions=names)
    val = _valence_lookup(valence, names)
    rated = np.isfinite(val)
    fig = go.Figure()

    def hover(idx: NDArray[np.intp]) -> list[str]:
        return [
            f"{names[j]}<br>PC1 {_fmt(scores[j, 0])}, PC2 {_fmt(scores[j, 1])}"
            + (f"<br>valence {_fmt(val[j], '+.2f')}" if rated[j] else "<br>no valence rating")
            for j in idx
        ]

    idx = np.flatnonzero(rated)
    if idx.size:
        fig.add_trace(
            go.Scatter(
                x=_nan_to_none(scores[idx, 0]),
                y=_nan_to_none(scores[idx, 1]),
                mode="markers",
                marker={
                    "size": 8,
                    "color": val[idx].tolist(),
                    "colorscale": [[0, COLOURS["mold"]], [0.5, "#e5e7e9"], [1, COLOURS["gold"]]],
                    "cmin": -1,
                    "cmax": 1,
                    "colorbar": {"title": {"text": "valence"}},
                    "line": {"width": 0.5, "color": "#566573"},
                },
                name="emotions",
                hovertext=hover(idx),
                hovertemplate=_HOVER,
            )
        )
    idx = np.flatnonzero(~rated)
    if idx.size:
        fig.add_trace(
            go.Scatter(
                x=_nan_to_none(scores[idx, 0]),
                y=_nan_to_none(scores[idx, 1]),
                mode="markers",
                marker={"size": 7, "color": "#bfc9ca"},
                name="emotions (unrated)",
                hovertext=hover(idx),
                hovertemplate=_HOVER,
            )
        )
    y_lo, y_hi = float(np.nanmin(scores[:, 1])), float(np.nanmax(scores[:, 1]))
    for label, pos in (positions or {}).items():
        role, base = _split_role(label)
        txt = f"v_{base} ({role}) on PC1: {_fmt(pos)}"
        if label in loadings and math.isfinite(loadings[label]):
            txt += f"<br>cos(v, PC1) = {_fmt(loadings[label])}"
        fig.add_trace(
            go.Scatter(
                x=[float(pos), float(pos)],
                y=[y_lo, y_hi],
                mode="lines",
                line={"color": colour(base), "dash": DASHES[role], "width": 2.5},
                name=f"v_{base}" if role == "trained" else f"u_{base} (control)",
                hovertext=[txt, txt],
                hovertemplate=_HOVER,
            )
        )
    if title is None:
        title = "Emotion vectors on PC1 (≈ valence) and PC2 (≈ arousal)" + info + " (paper F.4)"
    return _finish(
        fig,
        title,
        xaxis_title=x_title,
        yaxis_title=y_title,
        height=560,
        legend={"orientation": "h", "y": -0.18, "x": 0.0},
    )


# ----------------------------------------------------------------------------------------------
# Steering (§4, Fig. 4; App. D)
# ----------------------------------------------------------------------------------------------


@dataclass
class _Point:
    evaluation: str
    label: str
    role: str
    base: str
    layer: int | None
    alpha: float
    value: float


@dataclass
class _SteerCurve:
    evaluation: str
    label: str
    role: str
    base: str
    layer: int | None
    alpha: list[float]
    mean: list[float]
    sem: list[float]
    n: list[int | None]
    slope: float
    slope_se: float = math.nan
    pooled: bool = True


def _is_number(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, int | float | np.integer | np.floating):
        return True
    if isinstance(x, str):
        try:
            float(x)
        except ValueError:
            return False
        return True
    return False


def _is_alpha_map(m: Any) -> bool:
    return isinstance(m, Mapping) and bool(m) and all(_is_number(k) for k in m)


def _rows_of(x: Any) -> list[Mapping[str, Any]] | None:
    if isinstance(x, ResultTable):
        return list(x.rows)
    if (
        isinstance(x, Sequence)
        and not isinstance(x, str)
        and all(isinstance(r, Mapping) for r in x)
    ):
        return list(x)
    return None


def _value(row: Mapping[str, Any], metric: str) -> float:
    v = row.get(metric)
    if v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _points_from_rows(
    rows: Sequence[Mapping[str, Any]],
    metric: str,
    role: str | None,
    evaluation: str | None,
    exclude_incoherent: bool,
) -> list[_Point]:
    out: list[_Point] = []
    for row in rows:
        if "alpha" not in row:
            raise DataError(
                "A steering row has no 'alpha'.", hint="Pass rows from steering.sweep(...)."
            )
        if exclude_incoherent and row.get("incoherent"):
            continue
        label = str(row.get("vector", "vector"))
        r_role, base = _split_role(label)
        if row.get("role") in ("trained", "control"):
            r_role = str(row["role"])
        ev = evaluation or row.get("tag") or row.get("evaluation") or metric
        layer = row.get("layer")
        out.append(
            _Point(
                str(ev),
                label,
                role or r_role,
                base,
                None if layer is None else int(layer),
                float(row["alpha"]),
                _value(row, metric),
            )
        )
    return out


def _curves_from_means(
    means: Mapping[Any, Any], role: str | None, evaluation: str
) -> list[_SteerCurve]:
    out = []
    for label, amap in means.items():
        if not _is_alpha_map(amap):
            raise DataError(
                f"Means of {label!r} are not an {{alpha: mean}} dict.",
                hint="Use {vector: {alpha: mean or (mean, sem)}}.",
            )
        r_role, base = _split_role(str(label))
        alphas, ms, ss = [], [], []
        for a, v in sorted(amap.items(), key=lambda kv: float(kv[0])):
            alphas.append(float(a))
            if isinstance(v, Mapping):
                ms.append(float(v.get("mean", math.nan)))
                ss.append(float(v.get("sem", math.nan)))
            elif isinstance(v, Sequence) and not isinstance(v, str):
                ms.append(float(v[0]))
                ss.append(float(v[1]) if len(v) > 1 else math.nan)
            else:
                ms.append(float(v))
                ss.append(math.nan)
        slope = _ols(np.asarray(alphas), np.asarray(ms))[0]
        out.append(
            _SteerCurve(
                evaluation,
                str(label),
                role or r_role,
                base,
                None,
                alphas,
                ms,
                ss,
                [None] * len(alphas),
                slope,
                pooled=False,
            )
        )
    return out


def _slope_se(x: F64, y: F64) -> tuple[float, float]:
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 3 or np.unique(x).size < 2:
        return math.nan, math.nan
    dx = x - x.mean()
    sxx = float(dx @ dx)
    b = float(dx @ (y - y.mean())) / sxx
    resid = y - y.mean() - b * dx
    return b, math.sqrt(float(resid @ resid) / (x.size - 2) / sxx)


def _curves_from_points(points: list[_Point]) -> list[_SteerCurve]:
    groups: dict[tuple[str, str, str, int | None], list[_Point]] = {}
    for p in points:
        groups.setdefault((p.evaluation, p.label, p.role, p.layer), []).append(p)
    out = []
    for (ev, label, role, layer), pts in groups.items():
        by_alpha: dict[float, list[float]] = {}
        for p in pts:
            by_alpha.setdefault(p.alpha, []).append(p.value)
        alphas = sorted(by_alpha)
        ms: list[float] = []
        ss: list[float] = []
        ns: list[int | None] = []
        for a in alphas:
            vals = np.asarray([v for v in by_alpha[a] if math.isfinite(v)])
            ns.append(int(vals.size))
            ms.append(float(vals.mean()) if vals.size else math.nan)
            ss.append(float(vals.std(ddof=1) / math.sqrt(vals.size)) if vals.size > 1 else math.nan)
        b, se = _slope_se(np.array([p.alpha for p in pts]), np.array([p.value for p in pts]))
        out.append(_SteerCurve(ev, label, role, pts[0].base, layer, alphas, ms, ss, ns, b, se))
    return out


def _collect_curves(
    data: Any, role: str | None, metric: str, exclude_incoherent: bool
) -> list[_SteerCurve]:
    rows = _rows_of(data)
    if rows is not None:
        return _curves_from_points(_points_from_rows(rows, metric, role, None, exclude_incoherent))
    if isinstance(data, Mapping):
        if all(_is_alpha_map(v) for v in data.values()):
            return _curves_from_means(data, role, metric)
        curves: list[_SteerCurve] = []
        for ev, sub in data.items():
            sub_rows = _rows_of(sub)
            if sub_rows is not None:
                pts = _points_from_rows(sub_rows, metric, role, str(ev), exclude_incoherent)
                curves += _curves_from_points(pts)
            elif isinstance(sub, Mapping):
                curves += _curves_from_means(sub, role, str(ev))
            else:
                raise DataError(
                    f"Cannot read the steering results of {ev!r} ({type(sub).__name__}).",
                    hint="Use rows (ResultTable) or {vector: {alpha: mean}} per evaluation.",
                )
        return curves
    raise DataError(
        f"Cannot plot steering results from {type(data).__name__}.",
        hint="Pass a ResultTable, a list of rows, {evaluation: rows} or {vector: {alpha: mean}}.",
    )


def _filter_curves(
    curves: list[_SteerCurve],
    vectors: Sequence[str] | None,
    layer: int | Mapping[str, int] | None,
    evaluations: Sequence[str] | None,
) -> list[_SteerCurve]:
    out = []
    for c in curves:
        if vectors is not None and c.label not in vectors and c.base not in vectors:
            continue
        if evaluations is not None and c.evaluation not in evaluations:
            continue
        if isinstance(layer, Mapping):
            want = layer.get(c.label, layer.get(c.base))
            if want is not None and c.layer is not None and c.layer != want:
                continue
        elif layer is not None and c.layer is not None and c.layer != layer:
            continue
        out.append(c)
    return out


def steering_curves(
    trained: ResultTable | Sequence[Mapping[str, Any]] | Mapping[str, Any],
    control: ResultTable | Sequence[Mapping[str, Any]] | Mapping[str, Any] | None = None,
    *,
    metric: str = "score",
    evaluations: Sequence[str] | None = None,
    vectors: Sequence[str] | None = None,
    layer: int | Mapping[str, int] | None = None,
    exclude_incoherent: bool = False,
    title: str | None = None,
) -> go.Figure:
    """The steering "X": mean metric vs α for v_Mold and v_Gold, one panel per evaluation (Fig. 4).

    Points are means over prompts and samples with ±1 SE error bars; trained vectors are solid,
    control vectors (maze-naive ``u``, or labels such as ``"u_gold"`` / ``"control:gold"``)
    dotted. The hover gives α, mean, SE, n and the curve's OLS slope per unit α, pooled over all
    rows as in appendix D (over the means when only means are given).

    Args:
        trained: Rows of :func:`~welfare_lens.steering.sweep` (a ResultTable or list of dicts
            with ``alpha``, ``vector``, ``layer``, ``tag`` and the metric), ``{evaluation:
            rows}``, or means ``{vector: {alpha: mean | (mean, sem)}}`` (optionally nested in
            ``{evaluation: ...}``). The evaluation of a row is its ``tag``.
        control: Rows or means of control vectors; all drawn dotted.
        metric: Row key to average (``"score"``).
        evaluations: Evaluations to show, in order (default all, in order of appearance).
        vectors: Vector labels to show; a base name like ``"gold"`` selects ``"gold"`` and its
            controls (``"u_gold"``, ``"control:gold"``).
        layer: Keep only this layer, or ``{vector: layer}`` (the paper steers v_Mold and v_Gold at
            their own ℓ*). Vectors at several layers otherwise get one curve per layer.
        exclude_incoherent: Drop rows flagged ``incoherent`` (A6 incoherence masking).
        title: Figure title.

    Raises:
        DataError: Rows without ``alpha``, unreadable input, or nothing left to plot.
    """
    curves = _collect_curves(trained, None, metric, exclude_incoherent)
    if control is not None:
        curves += _collect_curves(control, "control", metric, exclude_incoherent)
    curves = _filter_curves(curves, vectors, layer, evaluations)
    curves = [c for c in curves if any(math.isfinite(m) for m in c.mean)]
    if not curves:
        raise DataError(
            f"No finite {metric!r} values to plot.",
            hint="Check metric=, vectors=, layer= and evaluations= against the rows.",
        )
    evs = list(evaluations) if evaluations is not None else []
    for c in curves:
        if c.evaluation not in evs:
            evs.append(c.evaluation)
    evs = [e for e in evs if any(c.evaluation == e for c in curves)]
    cols = min(len(evs), 4)
    n_rows = math.ceil(len(evs) / cols)
    fig = make_subplots(
        rows=n_rows, cols=cols, subplot_titles=evs, horizontal_spacing=0.08, vertical_spacing=0.15
    )
    multi_layer: dict[tuple[str, str], set[int | None]] = {}
    for c in curves:
        multi_layer.setdefault((c.evaluation, c.label), set()).add(c.layer)
    shown: set[str] = set()
    for k, ev in enumerate(evs):
        r, cc = k // cols + 1, k % cols + 1
        for c in (c for c in curves if c.evaluation == ev):
            name = c.label if c.role == "trained" or c.label != c.base else f"{c.label} (control)"
            if len(multi_layer[(c.evaluation, c.label)]) > 1 and c.layer is not None:
                name += f" L{c.layer}"
            where = "" if c.layer is None else f", layer {c.layer}"
            slope_txt = f"slope {_fmt(c.slope)} per unit α" + (
                f" ± {_fmt(c.slope_se, '.3f')}" if math.isfinite(c.slope_se) else ""
            )
            if not c.pooled:
                slope_txt += " (of the means)"
            hover = [
                f"{ev}: {name} ({c.role}{where})<br>α = {a:+g}<br>{metric} = {_fmt(m, '+.4f')}"
                + (f" ± {_fmt(s, '.4f')} SE" if math.isfinite(s) else "")
                + ("" if n is None else f" (n = {n})")
                + f"<br>{slope_txt}"
                for a, m, s, n in zip(c.alpha, c.mean, c.sem, c.n, strict=True)
            ]
            errs = [s if math.isfinite(s) else 0.0 for s in c.sem]
            fig.add_trace(
                go.Scatter(
                    x=c.alpha,
                    y=_nan_to_none(c.mean),
                    error_y={"type": "data", "array": errs, "visible": any(errs), "width": 3},
                    mode="lines+markers",
                    line={"color": colour(c.base), "dash": DASHES[c.role], "width": 2.2},
                    marker={
                        "size": 7,
                        "symbol": "circle" if c.role == "trained" else "circle-open",
                    },
                    name=name,
                    legendgroup=name,
                    showlegend=name not in shown,
                    hovertext=hover,
                    hovertemplate=_HOVER,
                ),
                row=r,
                col=cc,
            )
            shown.add(name)
        fig.update_xaxes(title_text="steering factor α", row=r, col=cc)
        fig.update_yaxes(title_text=metric if cc == 1 else None, row=r, col=cc)
    if title is None:
        title = "Steering with welfare vectors: metric vs α (paper Fig. 4; control dotted)"
    return _finish(fig, title, height=380 * n_rows + 80)


def _slope_entry(v: Any) -> tuple[float, float]:
    if isinstance(v, Slope):
        return float(v.slope), float(v.se)
    if isinstance(v, Mapping):
        return float(v.get("slope", math.nan)), float(v.get("se", math.nan))
    if isinstance(v, Sequence) and not isinstance(v, str):
        return float(v[0]), float(v[1]) if len(v) > 1 else math.nan
    return float(v), math.nan


def slope_heatmap(
    data: ResultTable | Sequence[Mapping[str, Any]] | Mapping[str, Any] | Any,
    *,
    kind: Literal["slope", "mean"] = "slope",
    metric: str = "score",
    layers: Sequence[int] | None = None,
    vectors: Sequence[str] | None = None,
    alphas: Sequence[float] | None = None,
    exclude_incoherent: bool = False,
    title: str | None = None,
) -> go.Figure:
    """Layer-sweep heatmaps: OLS slope per vector × layer, or the metric per α × layer (App. D).

    ``kind="slope"``: one row per vector (per evaluation and vector when the rows hold several
    evaluations), one column per layer, each cell the OLS slope of the metric on α pooled over
    prompts and samples (:func:`~welfare_lens.steering.ols_slope`; the paper's Table 11 is the
    column at ℓ*). ``kind="mean"``: one panel per vector, α down, layer across, each cell the
    mean metric.

    Args:
        data: Sweep rows (ResultTable or list of dicts); or, for ``kind="slope"``,
            ``{vector: {layer: slope | (slope, se) | Slope}}`` or a ``[n_vectors, n_layers]``
            array with ``vectors=`` and ``layers=``; for ``kind="mean"`` an
            ``[n_alphas, n_layers]`` array with ``alphas=`` and ``layers=``.
        kind: ``"slope"`` or ``"mean"``.
        metric: Row key of the metric.
        layers: Column labels for array input (and a filter for rows).
        vectors: Row labels for array input; for rows a filter (a base name like ``"gold"``
            selects its controls too).
        alphas: Row labels for ``kind="mean"`` array input.
        exclude_incoherent: Drop rows flagged ``incoherent``.
        title: Figure title.

    Raises:
        ShapeError: Array and labels do not fit.
        DataError: Unknown ``kind``, no usable rows, or no finite value.
    """
    if kind not in ("slope", "mean"):
        raise DataError(f"Unknown kind {kind!r}.", hint="Use 'slope' or 'mean'.")
    rows = _rows_of(data)
    panels: list[tuple[str, list[str], list[Any], F64, F64 | None, list[list[int | None]] | None]]
    panels = []  # (panel title, row labels, columns, z, se, n)
    if rows is not None:
        pts = _points_from_rows(rows, metric, None, None, exclude_incoherent)
        pts = [p for p in pts if p.layer is not None]
        if layers is not None:
            pts = [p for p in pts if p.layer in layers]
        if vectors is not None:
            pts = [p for p in pts if p.label in vectors or p.base in vectors]
        if not pts:
            raise DataError("No rows with a layer to plot.", hint="Pass rows of a layer sweep.")
        evs = list(dict.fromkeys(p.evaluation for p in pts))
        keys = list(dict.fromkeys((p.evaluation, p.label) for p in pts))
        cols = sorted({int(p.layer) for p in pts if p.layer is not None})

        def label(ev: str, lab: str) -> str:
            return f"{ev}: {lab}" if len(evs) > 1 else lab

        if kind == "slope":
            z = np.full((len(keys), len(cols)), np.nan)
            se = np.full_like(z, np.nan)
            ns: list[list[int | None]] = [[None] * len(cols) for _ in keys]
            for i, key in enumerate(keys):
                for j, layer in enumerate(cols):
                    sel = [p for p in pts if (p.evaluation, p.label) == key and p.layer == layer]
                    if sel:
                        b, s = _slope_se(
                            np.array([p.alpha for p in sel]), np.array([p.value for p in sel])
                        )
                        z[i, j], se[i, j], ns[i][j] = b, s, len(sel)
            panels.append(("", [label(*k) for k in keys], cols, z, se, ns))
        else:
            for key in keys:
                sel = [p for p in pts if (p.evaluation, p.label) == key]
                a_vals = sorted({p.alpha for p in sel})
                z = np.full((len(a_vals), len(cols)), np.nan)
                ns = [[None] * len(cols) for _ in a_vals]
                for i, a in enumerate(a_vals):
                    for j, layer in enumerate(cols):
                        vals = [p.value for p in sel if p.alpha == a and p.layer == layer]
                        vals = [v for v in vals if math.isfinite(v)]
                        if vals:
                            z[i, j], ns[i][j] = float(np.mean(vals)), len(vals)
                panels.append((label(*key), [f"{a:+g}" for a in a_vals], cols, z, None, ns))
    elif kind == "slope" and isinstance(data, Mapping):
        labels = [str(k) for k in data]
        cols = sorted({int(layer) for sub in data.values() for layer in sub})
        z = np.full((len(labels), len(cols)), np.nan)
        se = np.full_like(z, np.nan)
        for i, sub in enumerate(data.values()):
            for layer, v in sub.items():
                z[i, cols.index(int(layer))], se[i, cols.index(int(layer))] = _slope_entry(v)
        panels.append(("", labels, cols, z, se, None))
    else:
        z = _array(data, "heatmap values", ndim=2)
        cols = list(layers) if layers is not None else list(range(z.shape[1]))
        if kind == "slope":
            labels = (
                list(vectors) if vectors is not None else [f"vector {i}" for i in range(z.shape[0])]
            )
        else:
            labels = (
                [f"{a:+g}" for a in alphas]
                if alphas is not None
                else [str(i) for i in range(z.shape[0])]
            )
        if len(cols) != z.shape[1] or len(labels) != z.shape[0]:
            raise ShapeError(
                f"A {z.shape} array needs {z.shape[0]} row and {z.shape[1]} column labels, got "
                f"{len(labels)} and {len(cols)}.",
                hint="Pass layers= (columns) and vectors=/alphas= (rows).",
            )
        panels.append(("", labels, cols, z, None, None))
    for _, _, _, z, _, _ in panels:
        _array(z, "heatmap values", ndim=2)
    fig = make_subplots(
        rows=len(panels),
        cols=1,
        subplot_titles=[p[0] for p in panels] if len(panels) > 1 else None,
        vertical_spacing=0.12 if len(panels) > 1 else 0.0,
        shared_xaxes=True,
    )
    for k, (ptitle, p_labels, p_cols, pz, pse, pns) in enumerate(panels, start=1):
        text, hover = [], []
        for i, lab in enumerate(p_labels):
            trow, hrow = [], []
            for j, layer in enumerate(p_cols):
                v = pz[i, j]
                trow.append(_fmt(v, "+.2f") if math.isfinite(v) else "")
                if kind == "slope":
                    h = f"{lab} at layer {layer}<br>slope {_fmt(v)} per unit α"
                    if pse is not None and math.isfinite(pse[i, j]):
                        h += f" ± {_fmt(pse[i, j], '.3f')} SE"
                else:
                    h = f"{ptitle or 'vector'} at layer {layer}, α = {lab}<br>{metric} = {_fmt(v, '+.4f')}"
                if pns is not None and pns[i][j] is not None:
                    h += f"<br>n = {pns[i][j]}"
                hrow.append(h)
            text.append(trow)
            hover.append(hrow)
        finite = np.abs(pz[np.isfinite(pz)])
        lim = float(finite.max()) if finite.size else 1.0
        fig.add_trace(
            go.Heatmap(
                z=[_nan_to_none(row) for row in pz],
                x=[str(c) for c in p_cols],
                y=p_labels,
                text=text,
                texttemplate="%{text}",
                hovertext=hover,
                hovertemplate=_HOVER,
                colorscale=DIVERGING if kind == "slope" else "Viridis",
                zmid=0 if kind == "slope" else None,
                zmin=-lim if kind == "slope" else None,
                zmax=lim if kind == "slope" else None,
                showscale=k == 1,
                colorbar={"title": {"text": "slope / α" if kind == "slope" else metric}},
                name=ptitle or kind,
            ),
            row=k,
            col=1,
        )
        fig.update_yaxes(
            title_text="α" if kind == "mean" else None,
            type="category",
            autorange="reversed",
            row=k,
            col=1,
        )
    fig.update_xaxes(title_text="layer", type="category", row=len(panels), col=1)
    if title is None:
        title = (
            f"Steering layer sweep: OLS slope of {metric} per unit α (paper App. D, Table 11)"
            if kind == "slope"
            else f"Steering layer sweep: mean {metric} per α and layer (paper App. D)"
        )
    height = sum(max(220, 34 * len(p[1]) + 120) for p in panels) + 60
    return _finish(fig, title, height=height)


# ----------------------------------------------------------------------------------------------
# Tracking (§5, Figs. 5/6)
# ----------------------------------------------------------------------------------------------


@dataclass
class _Panel:
    vector: str
    role: str
    conditions: tuple[str, str]
    a: F64
    b: F64
    d: float


def _cohens_d(a: F64, b: F64) -> float:
    from welfare_lens.analysis.layer_selection import cohens_d

    return float(cohens_d(a, b))


def _zscore(a: F64, b: F64) -> tuple[F64, F64]:
    both = np.concatenate([a, b])
    both = both[np.isfinite(both)]
    sd = float(both.std(ddof=1)) if both.size > 1 else 0.0
    mu = float(both.mean())
    scale = sd if sd > 0 else 1.0
    return (a - mu) / scale, (b - mu) / scale


def _tracking_panels(
    x: Any, role: str, vectors: Sequence[str] | None, standardize: bool
) -> tuple[list[_Panel], str, int | None]:
    panels: list[_Panel] = []
    if isinstance(x, TrackingResult):
        c0, c1 = x.conditions
        m0, m1 = x.mask(c0), x.mask(c1)
        for name in vectors if vectors is not None else list(x.projections):
            if name not in x.projections:
                raise DataError(
                    f"No projections on {name!r}; have {list(x.projections)}.",
                    hint="Pass vectors= names of the result.",
                )
            vals = _array(x.projections[name], f"projections on {name}")
            _same_length("tracking result", projections=vals, labels=x.labels)
            a, b = vals[m0], vals[m1]
            if standardize:
                a, b = _zscore(a, b)
            d = x.contrasts[name].d if name in x.contrasts else _cohens_d(a, b)
            panels.append(_Panel(name, role, (c0, c1), a, b, float(d)))
        return panels, x.analysis, x.layer
    if not isinstance(x, Mapping) or not x:
        raise DataError(
            f"Cannot plot tracking densities from {type(x).__name__}.",
            hint="Pass a TrackingResult, {condition: values} or {vector: {condition: values}}.",
        )
    nested = all(isinstance(v, Mapping) for v in x.values())
    items = list(x.items()) if nested else [("projection", x)]
    for name, conds in items:
        if vectors is not None and name not in vectors:
            continue
        if len(conds) != 2:
            raise DataError(
                f"Tracking panel {name!r} needs exactly two conditions, got {list(conds)}.",
                hint="E.g. {'mold': proj_mold_final, 'gold': proj_gold_final}.",
            )
        (c0, v0), (c1, v1) = conds.items()
        a, b = _array(v0, f"{name}/{c0} values"), _array(v1, f"{name}/{c1} values")
        if standardize:
            a, b = _zscore(a, b)
        panels.append(_Panel(str(name), role, (str(c0), str(c1)), a, b, _cohens_d(a, b)))
    return panels, "", None


def _density(values: F64, grid: F64, method: str, bins: int) -> tuple[F64, F64, str]:
    v = values[np.isfinite(values)]
    if method == "kde" and v.size >= 2 and float(np.ptp(v)) > 0:
        from scipy.stats import gaussian_kde

        try:
            return grid, np.asarray(gaussian_kde(v)(grid), dtype=np.float64), "KDE"
        except (np.linalg.LinAlgError, ValueError):
            pass
    hist, edges = np.histogram(v, bins=bins, range=(float(grid[0]), float(grid[-1])), density=True)
    return edges.astype(np.float64), np.append(hist, hist[-1]).astype(np.float64), "histogram"


def tracking_densities(
    result: TrackingResult | Mapping[str, Any],
    control: TrackingResult | Mapping[str, Any] | None = None,
    *,
    vectors: Sequence[str] | None = None,
    standardize: bool = True,
    method: Literal["kde", "hist"] = "kde",
    bins: int = 30,
    title: str | None = None,
) -> go.Figure:
    """Densities of projections of two conditions with Cohen's d (paper §5.1 Fig. 5, §5.2 Fig. 6).

    For maze goals, Mold-final vs Gold-final trajectories projected on v at ℓ* (trained d > 1.6,
    naive |d| < 0.12); for correctness, correct vs incorrect answers. One panel per vector
    (columns) and model (rows: trained, then control drawn dotted). Values are in SD units
    around the panel mean by default, as the paper plots them; d does not depend on that.
    Densities are Gaussian KDEs (histograms when ``method="hist"`` or a group is degenerate).

    Args:
        result: A :class:`~welfare_lens.analysis.TrackingResult`, ``{condition: values}`` (one
            vector), or ``{vector: {condition: values}}``.
        control: The maze-naive model's result in the same form.
        vectors: Which vectors to show (default all).
        standardize: z-score each panel (both conditions together).
        method: ``"kde"`` or ``"hist"``.
        bins: Histogram bins.
        title: Figure title.

    Raises:
        DataError: A panel does not have exactly two conditions, or a group has no finite value
            or fewer than two samples (Cohen's d).
    """
    if method not in ("kde", "hist"):
        raise DataError(f"Unknown method {method!r}.", hint="Use 'kde' or 'hist'.")
    trained, analysis, layer = _tracking_panels(result, "trained", vectors, standardize)
    rows = [trained]
    if control is not None:
        rows.append(_tracking_panels(control, "control", vectors, standardize)[0])
    n_cols = max(len(r) for r in rows)
    if n_cols == 0:
        raise DataError("No vectors to plot.", hint="Check vectors=.")
    titles = []
    for r in rows:
        titles += [f"v_{p.vector} ({p.role}): d = {_fmt(p.d, '+.2f')}" for p in r]
        titles += [""] * (n_cols - len(r))
    fig = make_subplots(
        rows=len(rows),
        cols=n_cols,
        subplot_titles=titles,
        horizontal_spacing=0.08,
        vertical_spacing=0.18,
    )
    unit = "projection (SD units)" if standardize else "projection a·v/‖v‖"
    shown: set[str] = set()
    for i, r in enumerate(rows, start=1):
        for j, p in enumerate(r, start=1):
            both = np.concatenate([p.a, p.b])
            both = both[np.isfinite(both)]
            lo, hi = float(both.min()), float(both.max())
            pad = 0.15 * (hi - lo) if hi > lo else 1.0
            grid = np.linspace(lo - pad, hi + pad, 200)
            for cond, vals in zip(p.conditions, (p.a, p.b), strict=True):
                xs, ys, how = _density(vals, grid, method, bins)
                fin = vals[np.isfinite(vals)]
                mean = float(fin.mean())
                sd = float(fin.std(ddof=1)) if fin.size > 1 else math.nan
                txt = (
                    f"v_{p.vector} ({p.role}), {cond}-final: n = {fin.size}, "
                    f"mean {_fmt(mean)}, SD {_fmt(sd, '.3f')}<br>Cohen's d = {_fmt(p.d, '+.3f')} "
                    f"({how})"
                )
                c = colour(cond)
                name = f"{cond} ({p.role})"
                fig.add_trace(
                    go.Scatter(
                        x=xs.tolist(),
                        y=ys.tolist(),
                        mode="lines",
                        line={
                            "color": c,
                            "dash": DASHES[p.role],
                            "width": 2,
                            "shape": "hv" if how == "histogram" else "linear",
                        },
                        fill="tozeroy",
                        fillcolor=_rgba(c, 0.18),
                        name=name,
                        legendgroup=name,
                        showlegend=name not in shown,
                        hovertext=[txt] * len(xs),
                        hovertemplate=_HOVER,
                    ),
                    row=i,
                    col=j,
                )
                shown.add(name)
            fig.update_xaxes(title_text=unit, row=i, col=j)
            fig.update_yaxes(title_text="density" if j == 1 else None, row=i, col=j)
    if title is None:
        what = {
            "outcome": "Maze-goal tracking (paper §5.1, Fig. 5)",
            "correctness": "Correctness tracking (paper §5.2, Fig. 6)",
        }.get(analysis, "Tracking (paper §5)")
        title = what + ("" if layer is None else f" at layer {layer}")
    return _finish(fig, title, height=340 * len(rows) + 100)


# ----------------------------------------------------------------------------------------------
# Training curves (App. Q, Fig. 43)
# ----------------------------------------------------------------------------------------------


def _history_rows(history: Any) -> list[Mapping[str, Any]]:
    if hasattr(history, "history") and isinstance(history.history, list):
        rows: list[Mapping[str, Any]] = list(history.history)
    elif isinstance(history, str | os.PathLike):
        path = Path(history)
        if path.is_dir():
            path = path / "metrics.jsonl"
        if not path.exists():
            raise DataError(f"{path} does not exist.", hint="Pass a run folder or metrics.jsonl.")
        rows = []
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                if number == len(lines) - 1:  # a torn last line of a running job
                    continue
                raise DataError(
                    f"{path}:{number + 1} is not JSON ({err}).", hint="Fix it."
                ) from err
    elif isinstance(history, Mapping):
        cols = {k: list(v) for k, v in history.items()}
        _same_length("training history columns", **cols)
        n = len(next(iter(cols.values()))) if cols else 0
        rows = [{k: v[i] for k, v in cols.items()} for i in range(n)]
    elif isinstance(history, Sequence) and all(isinstance(r, Mapping) for r in history):
        rows = list(history)
    else:
        raise DataError(
            f"Cannot read a training history from {type(history).__name__}.",
            hint="Pass a GRPOTrainer, its history list, a metrics.jsonl path or {metric: [...]}.",
        )
    if not rows:
        raise DataError("The training history is empty.", hint="Train at least one step.")
    return rows


def _column(rows: Sequence[Mapping[str, Any]], key: str) -> F64:
    return np.asarray([_value(r, key) for r in rows], dtype=np.float64)


def training_curves(
    history: Any,
    *,
    baseline: Mapping[str, Any] | None = None,
    title: str | None = None,
) -> go.Figure:
    """Return (mean ± SE band), P(Gold)/P(Mold) and loss over training steps (App. Q, Fig. 43).

    The DESIGN's "learning signal" hazard: a run that does not beat the untrained policy must be
    reported as such, so ``baseline`` (e.g. ``trainer.evaluate()`` before training) is drawn as
    dotted horizontal lines. SE of the mean return is ``reward_std / √n_episodes``. Panels whose
    metrics were not logged are left out (an SFT history shows its data return, accuracy-free).

    Args:
        history: A :class:`~welfare_lens.rl.GRPOTrainer` (its ``history``), a list of per-step
            metric dicts, a ``metrics.jsonl`` path or run folder, or ``{metric: [values]}``.
        baseline: Metrics of the untrained policy (``reward_mean``, ``p_gold``, ``p_mold``, ...).
        title: Figure title.

    Raises:
        DataError: Empty or unreadable history, or none of the plotted metrics present.
        ShapeError: Column lists of different lengths.
    """
    rows = _history_rows(history)
    steps = [int(r["step"]) if r.get("step") is not None else i for i, r in enumerate(rows)]

    def has(key: str) -> bool:
        return bool(np.isfinite(_column(rows, key)).any())

    panels: list[tuple[str, list[str]]] = []
    if has("reward_mean"):
        panels.append(("episode return", ["reward_mean"]))
    elif has("data_return_mean"):
        panels.append(("SFT data return", ["data_return_mean"]))
    rate_keys = [k for k in ("p_gold", "p_mold") if has(k)]
    if not rate_keys:
        rate_keys = [k for k in ("gold_per_episode", "mold_per_episode") if has(k)]
    if rate_keys:
        label = "P(step onto tile)" if rate_keys[0].startswith("p_") else "tiles per episode"
        panels.append((label, rate_keys))
    if has("loss"):
        panels.append(("loss", ["loss"]))
    if not panels:
        raise DataError(
            "The history has none of reward_mean, data_return_mean, p_gold, p_mold, loss.",
            hint="Pass GRPOTrainer.history or its metrics.jsonl.",
        )
    fig = make_subplots(
        rows=len(panels),
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        subplot_titles=[p[0] for p in panels],
    )
    for i, (label, keys) in enumerate(panels, start=1):
        for key in keys:
            y = _column(rows, key)
            base = key.split("_")[-1] if key.startswith("p_") else key.split("_")[0]
            c = colour(base) if base in ("gold", "mold") else NEUTRAL
            hover = [
                f"step {s}<br>{key} = {_fmt(v, '+.4g')}" for s, v in zip(steps, y, strict=True)
            ]
            if key == "reward_mean":
                sd, n = _column(rows, "reward_std"), _column(rows, "n_episodes")
                se = sd / np.sqrt(n)
                if np.isfinite(se).any():
                    band = _band_trace(steps, list(y - se), list(y + se), NEUTRAL, "return ± SE")
                    if band is not None:
                        fig.add_trace(band, row=i, col=1)
                    hover = [
                        f"step {s}<br>return {_fmt(v, '+.2f')} ± {_fmt(e, '.2f')} SE"
                        + ("" if not math.isfinite(k) else f" (n = {int(k)} episodes)")
                        for s, v, e, k in zip(steps, y, se, n, strict=True)
                    ]
            fig.add_trace(
                go.Scatter(
                    x=steps,
                    y=_nan_to_none(y),
                    mode="lines+markers",
                    line={"color": c, "width": 2},
                    marker={"size": 4},
                    name=key,
                    hovertext=hover,
                    hovertemplate=_HOVER,
                ),
                row=i,
                col=1,
            )
            if baseline is not None and baseline.get(key) is not None:
                b = float(baseline[key])
                txt = f"untrained policy: {key} = {_fmt(b, '+.4g')}"
                fig.add_trace(
                    go.Scatter(
                        x=[steps[0], steps[-1]],
                        y=[b, b],
                        mode="lines",
                        line={"color": c, "dash": DASHES["control"], "width": 1.5},
                        name=f"untrained {key}",
                        hovertext=[txt, txt],
                        hovertemplate=_HOVER,
                    ),
                    row=i,
                    col=1,
                )
        fig.update_yaxes(title_text=label, row=i, col=1)
    fig.update_xaxes(title_text="training step", row=len(panels), col=1)
    if title is None:
        title = f"Training curves over {len(rows)} steps (paper App. Q, Fig. 43)"
    return _finish(fig, title, height=250 * len(panels) + 120)


# ----------------------------------------------------------------------------------------------
# Maze (App. J/K, Fig. 2)
# ----------------------------------------------------------------------------------------------


def _grid_of(m: Any) -> tuple[NDArray[np.int64], Maze | None, TileEmoji | None]:
    if isinstance(m, MazeEnv):
        return np.asarray(m.maze.grid, dtype=np.int64), m.maze, m.cfg.emoji
    if isinstance(m, Maze):
        return np.asarray(m.grid, dtype=np.int64), m, None
    if isinstance(m, Sequence) and m and all(isinstance(r, str) for r in m):
        mz = (
            Maze.from_strings(list(m))
            if any("@" in r for r in m)
            else Maze.from_strings(list(m), start=(0, 0))
        )
        return np.asarray(mz.grid, dtype=np.int64), mz, None
    g = _array(m, "maze grid", ndim=2)
    if not np.isin(g, (0, 1, 2)).all():
        raise DataError(
            "A maze grid may only hold 0 (Mold), 1 (Gold) and 2 (Path).",
            hint="Pass Maze.grid or Tile values.",
        )
    return g.astype(np.int64), None, None


@dataclass
class _Step:
    pos: tuple[int, int]
    note: str = ""
    wind: bool = False


def _trajectory_steps(t: Any, emoji: TileEmoji) -> list[_Step]:
    if t is None:
        return []
    if isinstance(t, Trajectory):
        steps = [_Step(t.positions[0], "start")]
        for k in range(t.n_turns):
            tiles = (
                ", ".join(f"{Tile(x).class_name} {emoji.symbol(x)}" for x in t.tiles_entered[k])
                if k < len(t.tiles_entered)
                else ""
            )
            note = f"move {t.actions[k] or 'invalid'}"
            if tiles:
                note += f", entered {tiles}"
            if k < len(t.rewards):
                note += f", reward {t.rewards[k]:+.1f}"
            wind = k < len(t.winds) and t.winds[k] is not None
            if wind:
                note += f", wind pushed {t.winds[k]}"
            steps.append(_Step(t.positions[k + 1], note, wind))
        return steps
    if isinstance(t, MazeEnv):
        hist = t.history
        if not hist:
            return [_Step(t.position, "start")]
        steps = [_Step(hist[0].previous_position, "start")]
        for h in hist:
            tiles = ", ".join(f"{e.tile.class_name} {emoji.symbol(e.tile)}" for e in h.events)
            note = f"move {h.action or 'invalid'}" + (f", entered {tiles}" if tiles else "")
            note += f", reward {h.reward:+.1f}"
            wind = h.wind is not None and not getattr(h.wind, "blocked", False)
            steps.append(_Step(h.position, note + (", wind" if wind else ""), wind))
        return steps
    out = []
    for p in t:
        if len(p) != 2:
            raise ShapeError(f"A position must be (x, y), got {p!r}.", hint="Pass (x, y) pairs.")
        out.append(_Step((int(p[0]), int(p[1]))))
    if out:
        out[0].note = "start"
    return out


def maze(
    maze: Maze | MazeEnv | Sequence[str] | Any,
    trajectory: Trajectory | MazeEnv | Sequence[Sequence[int]] | None = None,
    *,
    window: int | None = None,
    emoji: TileEmoji | None = None,
    show_emoji: bool | None = None,
    title: str | None = None,
) -> go.Figure:
    """The maze grid with a trajectory drawn as a line with markers (paper App. J/K, Fig. 2).

    Tiles are coloured Mold red, Gold gold, Path grey and, on small views, show the emoji the
    model reads (📇 / 📐 / 🧾 by default). North is up (y grows downwards, as in the paper's
    coordinates). The trajectory starts at a circle and ends at a star; hovering a step gives the
    move, the tiles entered, the reward and any wind push.

    Args:
        maze: A :class:`~welfare_lens.maze.Maze` (initial tiles), a
            :class:`~welfare_lens.maze.MazeEnv` (its initial maze; its moves so far are the
            default trajectory), ASCII rows (``#`` Mold, ``$`` Gold, ``.`` Path, ``@`` start), or
            a 2-D array of tile values indexed ``[y, x]``.
        trajectory: A :class:`~welfare_lens.maze.Trajectory`, an environment, or ``(x, y)``
            positions.
        window: Show only this many cells around the trajectory (or start) bounding box.
        emoji: Tile symbols (default the environment's, else the paper's).
        show_emoji: Write the emoji into the cells (default: when at most 40 x 40 are shown).
        title: Figure title.

    Raises:
        ShapeError: A position is not ``(x, y)`` or lies outside the grid.
        DataError: A grid with values other than 0/1/2.
    """
    grid, mz, env_emoji = _grid_of(maze)
    emoji = emoji or env_emoji or TileEmoji.paper()
    if trajectory is None and isinstance(maze, MazeEnv):
        trajectory = maze
    steps = _trajectory_steps(trajectory, emoji)
    h, w = grid.shape
    for s in steps:
        if not (0 <= s.pos[0] < w and 0 <= s.pos[1] < h):
            raise ShapeError(
                f"Position {s.pos} is outside the {w} x {h} grid.",
                hint="Positions are (x, y) with grid[y, x].",
            )
    x0, x1, y0, y1 = 0, w, 0, h
    if window is not None:
        anchor = [s.pos for s in steps] or ([mz.start] if mz is not None else [(w // 2, h // 2)])
        xs_, ys_ = [p[0] for p in anchor], [p[1] for p in anchor]
        x0, x1 = max(0, min(xs_) - window), min(w, max(xs_) + window + 1)
        y0, y1 = max(0, min(ys_) - window), min(h, max(ys_) + window + 1)
    sub = grid[y0:y1, x0:x1]
    if show_emoji is None:
        show_emoji = sub.size <= 1600
    names = [Tile(t).class_name for t in (0, 1, 2)]
    syms = [emoji.symbol(t) for t in (0, 1, 2)]
    hover = [
        [f"({x}, {y}) {names[v]} {syms[v]}" for x, v in zip(range(x0, x1), row, strict=True)]
        for y, row in zip(range(y0, y1), sub, strict=True)
    ]
    scale: list[list[Any]] = []
    for i, name in enumerate(names):
        scale += [[i / 3, COLOURS[name]], [(i + 1) / 3, COLOURS[name]]]
    fig = go.Figure(
        go.Heatmap(
            z=sub.tolist(),
            x=list(range(x0, x1)),
            y=list(range(y0, y1)),
            zmin=-0.5,
            zmax=2.5,
            colorscale=scale,
            showscale=False,
            text=[[syms[v] for v in row] for row in sub] if show_emoji else None,
            texttemplate="%{text}" if show_emoji else None,
            hovertext=hover,
            hovertemplate=_HOVER,
            xgap=1 if show_emoji else 0,
            ygap=1 if show_emoji else 0,
            name="tiles",
        )
    )
    if steps:
        labels = [
            f"turn {k}: ({s.pos[0]}, {s.pos[1]})" + (f"<br>{s.note}" if s.note else "")
            for k, s in enumerate(steps)
        ]
        fig.add_trace(
            go.Scatter(
                x=[s.pos[0] for s in steps],
                y=[s.pos[1] for s in steps],
                mode="lines+markers",
                line={"color": NEUTRAL, "width": 3},
                marker={"size": 8, "color": NEUTRAL, "line": {"width": 1, "color": "white"}},
                name="trajectory",
                hovertext=labels,
                hovertemplate=_HOVER,
            )
        )
        for label, s, symbol in (("start", steps[0], "circle"), ("end", steps[-1], "star")):
            fig.add_trace(
                go.Scatter(
                    x=[s.pos[0]],
                    y=[s.pos[1]],
                    mode="markers",
                    marker={
                        "symbol": symbol,
                        "size": 16,
                        "color": "#2471a3",
                        "line": {"width": 1.5, "color": "white"},
                    },
                    name=label,
                    hovertext=[f"{label}: ({s.pos[0]}, {s.pos[1]})"],
                    hovertemplate=_HOVER,
                )
            )
        winds = [s for s in steps if s.wind]
        if winds:
            fig.add_trace(
                go.Scatter(
                    x=[s.pos[0] for s in winds],
                    y=[s.pos[1] for s in winds],
                    mode="markers",
                    marker={"symbol": "triangle-up", "size": 12, "color": "#7d3c98"},
                    name="wind push",
                    hovertext=[s.note for s in winds],
                    hovertemplate=_HOVER,
                )
            )
    if title is None:
        counts = {n: int(np.count_nonzero(grid == i)) for i, n in enumerate(names)}
        title = f"Maze {w}×{h}" + ("" if mz is None or mz.seed is None else f" (seed {mz.seed})")
        title += f": {counts['mold']} Mold {syms[0]}, {counts['gold']} Gold {syms[1]}, "
        title += f"{counts['path']} Path {syms[2]}"
        if isinstance(trajectory, Trajectory):
            title += f"; {trajectory.n_turns} turns, return {trajectory.total_reward:+.1f}"
        elif isinstance(trajectory, MazeEnv):
            title += f"; {trajectory.turn} turns, return {trajectory.total_reward:+.1f}"
    side = max(x1 - x0, y1 - y0)
    size = int(min(900, max(420, 28 * side + 160)))
    return _finish(
        fig,
        title,
        xaxis={"title": {"text": "x"}, "constrain": "domain", "showgrid": False},
        yaxis={
            "title": {"text": "y (north up)"},
            "autorange": "reversed",
            "scaleanchor": "x",
            "showgrid": False,
        },
        height=size,
        legend={"orientation": "h", "y": -0.12},
    )


# ----------------------------------------------------------------------------------------------
# Recruitment: rotation onto naive axes (G), VAA (H), emoji neutrality (J.2), pre-existence
# (A1 finding 6), confidence control (Figure 7)
# ----------------------------------------------------------------------------------------------

_AXIS_DASHES = ("solid", "dash", "dashdot", "longdash", "dot", "longdashdot")


def _rotation_parts(table: Any) -> dict[str, Any]:
    """The fields of a RotationTable (object or ``to_dict()``) as arrays."""
    d = table.to_dict() if hasattr(table, "to_dict") and hasattr(table, "axes") else table
    if not isinstance(d, Mapping) or not {"steps", "layers", "axes", "cos"} <= set(d):
        raise DataError(
            f"Cannot read a rotation table from {type(table).__name__}.",
            hint="Pass wl.analysis.rotation_table(...) or its to_dict().",
        )
    steps = [int(s) for s in d["steps"]]
    layers = [int(x) for x in d["layers"]]
    cos = {
        a: {n: _array(v, f"cos[{a}][{n}]", ndim=2) for n, v in row.items()}
        for a, row in d["cos"].items()
    }
    sep = d.get("separation")
    separation = (
        None if sep is None else {a: _array(v, f"separation[{a}]", ndim=2) for a, v in sep.items()}
    )
    for a, row in cos.items():
        for n, v in row.items():
            if v.shape != (len(steps), len(layers)):
                raise ShapeError(
                    f"cos[{a}][{n}] has shape {v.shape}, expected ({len(steps)}, {len(layers)}).",
                    hint="One value per checkpoint step and layer.",
                )
    return {
        "steps": steps,
        "layers": layers,
        "axes": [str(a) for a in d["axes"]],
        "names": [str(n) for n in d.get("names", ["mold", "gold"])],
        "cos": cos,
        "separation": separation,
        "separation_classes": tuple(d.get("separation_classes", ("gold", "mold"))),
        "report_layer": int(d.get("report_layer", layers[len(layers) // 2])),
    }


def _reward_points(rewards: Any, steps: Sequence[int]) -> list[float | None] | None:
    """Smoothed reward at each checkpoint step, from a RewardSeries, Recruitment or mapping."""
    if rewards is None:
        return None
    if hasattr(rewards, "at") and hasattr(rewards, "smoothed"):  # RewardSeries
        out: list[float | None] = []
        for s in steps:
            try:
                out.append(float(rewards.at(int(s))))
            except Exception:  # a checkpoint past the logged metrics: no point, not a crash
                out.append(None)
        return out
    if hasattr(rewards, "rewards") and hasattr(rewards, "steps"):  # Recruitment
        lookup = {int(s): float(r) for s, r in zip(rewards.steps, rewards.rewards, strict=True)}
    elif isinstance(rewards, Mapping):
        lookup = {int(s): float(r) for s, r in rewards.items()}
    else:
        raise DataError(
            f"Cannot read rewards from {type(rewards).__name__}.",
            hint="Pass wl.analysis.reward_series(...), a Recruitment or {step: reward}.",
        )
    return _nan_to_none(lookup.get(int(s), math.nan) for s in steps)


def rotation(
    table: Any,
    rewards: Any = None,
    *,
    layer: int | None = None,
    title: str | None = None,
) -> go.Figure:
    """Alignment of v with fixed naive-model axes over training checkpoints (appendix G).

    One column per axis (e.g. the prompt sentiment vector, emotion PC1, the VAA). The top row
    draws cos(v_Mold, axis) in red and cos(v_Gold, axis) in gold against the checkpoint step
    at one layer, with the run's smoothed reward as a grey dashed line on a second y-axis; the
    bottom row (when the table has class statistics) the unit-projection separation of the
    Gold- and Mold-final class means on the axis. Step 0 is the maze-naive model, so the curve
    shows how far RL rotates v onto (or away from) each pre-existing axis.

    Args:
        table: :func:`welfare_lens.analysis.rotation_table` output or its ``to_dict()``.
        rewards: Smoothed reward per checkpoint: a
            :func:`~welfare_lens.analysis.reward_series`, a
            :class:`~welfare_lens.analysis.Recruitment`, or ``{step: reward}``.
        layer: Layer drawn (default the table's reporting layer, the paper's 21 of 36 scaled).
        title: Figure title.

    Raises:
        DataError: Unreadable table or rewards.
        LayerError: ``layer`` is not analysed.
    """
    from welfare_lens.errors import LayerError

    t = _rotation_parts(table)
    layer = t["report_layer"] if layer is None else int(layer)
    if layer not in t["layers"]:
        raise LayerError(
            f"Layer {layer} is not in the rotation table (layers {t['layers']}).",
            hint="Pass one of the analysed layers, or layer=None for the reporting layer.",
        )
    j = t["layers"].index(layer)
    steps, axes = t["steps"], t["axes"]
    reward = _reward_points(rewards, steps)
    has_sep = t["separation"] is not None
    rows = 2 if has_sep else 1
    fig = make_subplots(
        rows=rows,
        cols=len(axes),
        shared_xaxes=True,
        subplot_titles=[f"{a}: cos(v, axis)" for a in axes]
        + ([f"{a}: separation" for a in axes] if has_sep else []),
        specs=[[{"secondary_y": True}] * len(axes) for _ in range(rows)],
        vertical_spacing=0.12,
    )
    for c, axis in enumerate(axes, start=1):
        for name in t["names"]:
            y = t["cos"][axis][name][:, j]
            fig.add_trace(
                go.Scatter(
                    x=steps,
                    y=_nan_to_none(y),
                    mode="lines+markers",
                    line={"color": colour(name)},
                    name=f"cos(v_{name}, axis)",
                    legendgroup=name,
                    showlegend=c == 1,
                    hovertext=[
                        f"{axis}, layer {layer}, step {s}<br>cos(v_{name}, {axis}) = {_fmt(v)}"
                        for s, v in zip(steps, y, strict=True)
                    ],
                    hovertemplate=_HOVER,
                ),
                row=1,
                col=c,
            )
        if has_sep:
            a, b = t["separation_classes"]
            y = t["separation"][axis][:, j]
            fig.add_trace(
                go.Scatter(
                    x=steps,
                    y=_nan_to_none(y),
                    mode="lines+markers",
                    line={"color": NEUTRAL},
                    name=f"(μ_{a} − μ_{b})·axis/‖axis‖",
                    legendgroup="separation",
                    showlegend=c == 1,
                    hovertext=[
                        f"{axis}, layer {layer}, step {s}<br>separation {a} − {b} = {_fmt(v)}"
                        for s, v in zip(steps, y, strict=True)
                    ],
                    hovertemplate=_HOVER,
                ),
                row=2,
                col=c,
            )
        if reward is not None:
            for r in range(1, rows + 1):
                fig.add_trace(
                    go.Scatter(
                        x=steps,
                        y=reward,
                        mode="lines",
                        line={"color": COLOURS["path"], "dash": "dash"},
                        name="smoothed reward",
                        legendgroup="reward",
                        showlegend=c == 1 and r == 1,
                        hovertext=[
                            f"step {s}: smoothed reward {_fmt(v, '+.2f')}"
                            for s, v in zip(steps, reward, strict=True)
                        ],
                        hovertemplate=_HOVER,
                    ),
                    row=r,
                    col=c,
                    secondary_y=True,
                )
    fig.update_xaxes(title_text="checkpoint step", row=rows)
    if title is None:
        title = f"Rotation of v onto naive-model axes at layer {layer} over training (App. G)"
    return _finish(
        fig,
        title,
        height=360 * rows + 80,
        legend={"orientation": "h", "yanchor": "top", "y": -0.12, "x": 0.0},
    )


def recruitment(result: Any, *, title: str | None = None) -> go.Figure:
    """Spearman ρ(smoothed reward, alignment) per layer with its bootstrap CI (appendix G).

    One panel per axis; one line per measure (cos(v_Mold, axis), cos(v_Gold, axis), separation)
    with its CI shaded. Recruited layers (CI excludes 0 and the alignment grew) are drawn as
    filled markers, the others hollow; the recruitment band of each measure is listed in the
    hover text and the title.

    Args:
        result: :func:`welfare_lens.analysis.recruitment` output or its ``to_dict()``.
        title: Figure title.

    Raises:
        DataError: Unreadable result.
    """
    d = result.to_dict() if hasattr(result, "rho") and hasattr(result, "to_dict") else result
    if not isinstance(d, Mapping) or not {"rho", "ci_low", "ci_high", "layers", "axes"} <= set(d):
        raise DataError(
            f"Cannot read a recruitment result from {type(result).__name__}.",
            hint="Pass wl.analysis.recruitment(...) or its to_dict().",
        )
    layers = [int(x) for x in d["layers"]]
    axes = [str(a) for a in d["axes"]]
    measures = [str(m) for m in d.get("measures", list(d["rho"][axes[0]]))]
    fig = make_subplots(rows=1, cols=len(axes), shared_yaxes=True, subplot_titles=axes)
    bands: list[str] = []
    for c, axis in enumerate(axes, start=1):
        for measure in measures:
            name = measure.removeprefix("cos_")
            col = colour(name) if measure.startswith("cos_") else NEUTRAL
            rho = _array(d["rho"][axis][measure], f"rho[{axis}][{measure}]")
            lo = _array(d["ci_low"][axis][measure], "ci_low")
            hi = _array(d["ci_high"][axis][measure], "ci_high")
            band = _band_trace(layers, list(lo), list(hi), col, f"{measure} CI")
            if band is not None:
                band.update(legendgroup=measure, showlegend=False)
                fig.add_trace(band, row=1, col=c)
            recruited = d.get("recruited", {}).get(axis, {}).get(measure, [False] * len(layers))
            span = d.get("band", {}).get(axis, {}).get(measure)
            span_text = "none" if not span else f"{span[0]}–{span[1]}"
            if span:
                bands.append(f"{axis}/{measure} {span_text}")
            fig.add_trace(
                go.Scatter(
                    x=layers,
                    y=_nan_to_none(rho),
                    mode="lines+markers",
                    line={"color": col},
                    marker={
                        "size": 7,
                        "color": [col if r else "white" for r in recruited],
                        "line": {"color": col, "width": 1.5},
                    },
                    name=measure,
                    legendgroup=measure,
                    showlegend=c == 1,
                    hovertext=[
                        f"{axis} / {measure}, layer {x}<br>ρ = {_fmt(r, '+.2f')} "
                        f"[{_fmt(a, '+.2f')}, {_fmt(b, '+.2f')}]<br>recruited: {bool(k)}; "
                        f"band {span_text}"
                        for x, r, a, b, k in zip(layers, rho, lo, hi, recruited, strict=True)
                    ],
                    hovertemplate=_HOVER,
                ),
                row=1,
                col=c,
            )
        fig.add_hline(y=0, line={"color": "#566573", "width": 1}, row=1, col=c)
    fig.update_xaxes(title_text="layer")
    fig.update_yaxes(title_text="Spearman ρ(reward, measure)", range=[-1.05, 1.05], col=1)
    if title is None:
        steps = d.get("steps", [])
        title = (
            f"Recruitment over {len(steps)} checkpoints: ρ with bootstrap CI (filled = recruited)"
            + ("; bands " + ", ".join(bands) if bands else "; no recruitment band")
        )
    return _finish(fig, title, height=440, legend={"orientation": "h", "yanchor": "top", "y": -0.2})


def vaa_cosines(
    trained: Mapping[str, Sequence[float]] | None,
    control: Mapping[str, Sequence[float]] | None = None,
    *,
    layers: Sequence[int] | None = None,
    d_model: int | None = None,
    title: str | None = None,
) -> go.Figure:
    """cos(welfare vector, Valence-Assent Axis) per layer, trained solid, control dotted (H.2).

    The paper reports, at layer 21 of Qwen3-4B, v_Mold −0.219 and v_Gold +0.087 against
    u_Mold −0.020 and u_Gold −0.057: RL moves v toward the VAA, the naive controls sit near 0.

    Args:
        trained: :func:`welfare_lens.analysis.vaa_cosines` of the trained vectors v
            (``{name: [cos per layer]}``), or ``None``.
        control: The same for the maze-naive controls u.
        layers: Layer labels (default ``0..L-1``).
        d_model: Residual width, for the random-direction null band.
        title: Figure title.

    Raises:
        DataError: Neither given.
        ShapeError: Curves of different lengths.
    """
    series = [(r, c) for r, c in (("trained", trained), ("control", control)) if c]
    if not series:
        raise DataError("No VAA cosines to plot.", hint="Pass vaa_cosines(vaa, v) and/or of u.")
    arrays = {(r, n): _array(v, f"{r} {n}") for r, c in series for n, v in c.items()}
    sizes = {a.size for a in arrays.values()}
    if len(sizes) != 1:
        raise ShapeError(f"VAA cosine curves of lengths {sorted(sizes)}.", hint="Same layers.")
    n = sizes.pop()
    xs = list(range(n)) if layers is None else [int(x) for x in layers]
    if len(xs) != n:
        raise ShapeError(f"{len(xs)} layer labels for {n} values.", hint="One label per layer.")
    fig = go.Figure()
    _null_band(fig, xs, d_model)
    for (role, name), y in arrays.items():
        sym = "v" if role == "trained" else "u"
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=_nan_to_none(y),
                mode="lines+markers",
                line={"color": colour(name), "dash": DASHES[role]},
                marker={"size": 5},
                name=f"cos({sym}_{name}, VAA) ({role})",
                hovertext=[
                    f"layer {x}: cos({sym}_{name}, VAA) = {_fmt(v)}"
                    for x, v in zip(xs, y, strict=True)
                ],
                hovertemplate=_HOVER,
            )
        )
    fig.add_hline(y=0, line={"color": "#566573", "width": 1})
    if title is None:
        title = "Welfare vectors vs the Valence-Assent Axis (App. H; paper L21: v_Mold −0.219, "
        title += "v_Gold +0.087, u_Mold −0.020, u_Gold −0.057)"
    return _finish(
        fig, title, xaxis_title="layer", yaxis_title="cosine with the VAA",
        legend={"orientation": "h", "yanchor": "top", "y": -0.18},
    )  # fmt: skip


def emoji_neutrality(
    scan: Any,
    *,
    trio: Sequence[str] | None = None,
    top: int = 10,
    title: str | None = None,
) -> go.Figure:
    """Per-emoji cosines with the CAD and prompt sentiment vectors (appendix J.2).

    Each scanned emoji is a point (x: cos with the CAD review vector, y: cos with the "describe
    ... positive/negative" prompt vector), coloured by its category, hover text giving its rank,
    name and score max(|cos_CAD|, |cos_prompt|). Neutral emoji sit near the origin; the dotted
    square bounds the ``top`` most neutral ones; the tile trio (default the paper's office
    trio 📇 📐 🧾) is starred, with its within-trio spreads in the title.

    Args:
        scan: :func:`welfare_lens.analysis.neutrality_scan` output (a ``NeutralityScan``) or
            its ``to_dict()``.
        trio: Three emoji to mark (default the paper's office trio; ``()`` for none).
        top: Size of the most-neutral set whose bound is drawn.
        title: Figure title.

    Raises:
        DataError: Unreadable scan, or a trio emoji that was not scanned.
    """
    from welfare_lens.analysis.emoji_neutrality import PAPER_TRIO

    rows = scan.table() if hasattr(scan, "table") else (scan or {}).get("rows")
    if not rows:
        raise DataError(
            f"Cannot read an emoji scan from {type(scan).__name__}.",
            hint="Pass wl.analysis.neutrality_scan(...) or its to_dict().",
        )
    layer = scan.layer if hasattr(scan, "layer") else scan.get("layer")
    trio = tuple(PAPER_TRIO if trio is None else trio)
    by_emoji = {r["emoji"]: r for r in rows}
    missing = [e for e in trio if e not in by_emoji]
    if missing:
        raise DataError(
            f"Trio emoji {missing} are not in the scan.",
            hint="Scan them too, or pass trio=() to mark none.",
        )
    fig = go.Figure()
    cats: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        cats.setdefault(r.get("category") or "uncategorised", []).append(r)
    for cat, members in cats.items():
        fig.add_trace(
            go.Scatter(
                x=_nan_to_none(m["cos_cad"] for m in members),
                y=_nan_to_none(m["cos_prompt"] for m in members),
                mode="markers",
                marker={"size": 7, "color": colour(cat), "opacity": 0.75},
                name=cat,
                hovertext=[
                    f"{m['emoji']} {m.get('name') or ''} (rank {m['rank']} of {len(rows)})<br>"
                    f"cos CAD {_fmt(m['cos_cad'])}, cos prompt {_fmt(m['cos_prompt'])}<br>"
                    f"score {_fmt(m['score'], '.3f')}"
                    for m in members
                ],
                hovertemplate=_HOVER,
            )
        )
    finite = [r["score"] for r in rows if r.get("score") is not None]
    if finite and top > 0:
        bound = float(sorted(finite)[min(top, len(finite)) - 1])
        fig.add_shape(
            type="rect", x0=-bound, x1=bound, y0=-bound, y1=bound,
            line={"color": "#566573", "dash": "dot", "width": 1},
        )  # fmt: skip
    spread_text = ""
    if trio:
        members = [by_emoji[e] for e in trio]
        fig.add_trace(
            go.Scatter(
                x=_nan_to_none(m["cos_cad"] for m in members),
                y=_nan_to_none(m["cos_prompt"] for m in members),
                mode="markers+text",
                text=list(trio),
                textposition="top center",
                marker={"symbol": "star", "size": 16, "color": NEUTRAL},
                name="tile trio",
                hovertext=[
                    f"{m['emoji']} tile trio member, rank {m['rank']} of {len(rows)}"
                    for m in members
                ],
                hovertemplate=_HOVER,
            )
        )

        def spread(key: str) -> float:
            values = [float(m[key]) for m in members if m[key] is not None]
            return max(values) - min(values) if len(values) == 3 else math.nan

        ranks = ", ".join(str(m["rank"]) for m in members)
        spread_text = (
            f"; trio ranks {ranks} of {len(rows)}, spread CAD {_fmt(spread('cos_cad'), '.3f')}"
            f", prompt {_fmt(spread('cos_prompt'), '.3f')}"
        )
    fig.add_hline(y=0, line={"color": "#abb2b9", "width": 1})
    fig.add_vline(x=0, line={"color": "#abb2b9", "width": 1})
    if title is None:
        title = f"Emoji neutrality at layer {layer} (App. J.2){spread_text}"
    return _finish(
        fig, title, xaxis_title="cos(emoji vector, CAD sentiment vector)",
        yaxis_title="cos(emoji vector, prompt sentiment vector)", height=560,
    )  # fmt: skip


def pre_existence(
    result: Any,
    *,
    evaluations: Sequence[str] | None = None,
    title: str | None = None,
) -> go.Figure:
    """Steering slopes of the same vectors on several models, side by side (A1 finding 6).

    One panel per evaluation; for each vector (trained v solid, controls u hatched) a bar per
    model (the trained checkpoint, the maze-naive model, a pretrain-only model) with ± SE
    error bars. If the naive models steer like the trained one, the axis existed before RL.

    Args:
        result: :func:`welfare_lens.steering.pre_existence` output or its ``to_dict()``.
        evaluations: Evaluations to show (default all).
        title: Figure title.

    Raises:
        DataError: Unreadable result or unknown evaluation.
    """
    if hasattr(result, "rows") and hasattr(result, "slopes"):
        rows = result.rows()
        models = list(result.models)
        all_evals = list(result.evaluations)
    elif isinstance(result, Mapping) and "slopes" in result:
        rows = list(result["slopes"])
        models = list(result.get("models", {})) or sorted({r["model"] for r in rows})
        all_evals = list(result.get("evaluations", [])) or sorted({r["evaluation"] for r in rows})
    else:
        raise DataError(
            f"Cannot read a pre-existence result from {type(result).__name__}.",
            hint="Pass wl.steering.pre_existence(...) or its to_dict().",
        )
    chosen = all_evals if evaluations is None else [str(e) for e in evaluations]
    unknown = [e for e in chosen if e not in all_evals]
    if unknown or not chosen:
        raise DataError(f"Unknown evaluation(s) {unknown}.", hint=f"Use some of {all_evals}.")
    fig = make_subplots(rows=1, cols=len(chosen), subplot_titles=chosen)
    model_colours = {
        m: (NEUTRAL, *_FALLBACK)[i % (len(_FALLBACK) + 1)] for i, m in enumerate(models)
    }
    for c, evaluation in enumerate(chosen, start=1):
        for model in models:
            sel = [r for r in rows if r["evaluation"] == evaluation and r["model"] == model]
            if not sel:
                continue
            fig.add_trace(
                go.Bar(
                    x=[r["vector"] for r in sel],
                    y=_nan_to_none(r["slope"] for r in sel),
                    error_y={"type": "data", "array": _nan_to_none(r["se"] for r in sel)},
                    marker={
                        "color": model_colours[model],
                        "pattern": {"shape": ["/" if r["role"] == "control" else "" for r in sel]},
                    },
                    name=model,
                    legendgroup=model,
                    showlegend=c == 1,
                    hovertext=[
                        f"{evaluation}: {r['vector']} (layer {r['layer']}) on {model} "
                        f"({r.get('model_id', '')})<br>slope {_fmt(r['slope'], '+.4g')} ± "
                        f"{_fmt(r['se'], '.2g')} per unit α, n = {r['n']}"
                        for r in sel
                    ],
                    hovertemplate=_HOVER,
                ),
                row=1,
                col=c,
            )
        fig.add_hline(y=0, line={"color": "#566573", "width": 1}, row=1, col=c)
    fig.update_yaxes(title_text="slope per unit α", col=1)
    if title is None:
        title = "Pre-existence: the same vectors steer " + ", ".join(models) + " (A1 finding 6)"
    return _finish(fig, title, barmode="group", height=460)


def confidence_control(control: Any, *, title: str | None = None) -> go.Figure:
    """Correct-vs-incorrect Cohen's d within P(True) bins, beside the overall d (Figure 7).

    One group of bars per confidence bin (least confident first), one bar per vector; the
    overall d of each vector, ignoring confidence, is a dashed line. A welfare axis that only
    tracked confidence would lose its separation within the bins.

    Args:
        control: :func:`welfare_lens.analysis.confidence_tertiles` output (a
            ``ConfidenceControl``).
        title: Figure title.

    Raises:
        DataError: Not a ConfidenceControl.
    """
    if not (hasattr(control, "bins") and hasattr(control, "overall")):
        raise DataError(
            f"Cannot read a confidence control from {type(control).__name__}.",
            hint="Pass wl.analysis.confidence_tertiles(...).",
        )
    a, b = control.conditions
    labels = [
        f"bin {k.index + 1}: P(True) {k.low:.2f}–{k.high:.2f} (n={k.n})" for k in control.bins
    ]
    fig = go.Figure()
    for vector, overall in control.overall.items():
        col = colour(vector)
        ds = [k.contrasts[vector].d if vector in k.contrasts else math.nan for k in control.bins]
        fig.add_trace(
            go.Bar(
                x=labels,
                y=_nan_to_none(ds),
                marker={"color": col},
                name=f"d within bin ({vector})",
                hovertext=[
                    f"{lab}<br>{vector}: d({a} − {b}) = {_fmt(d, '+.2f')}"
                    + (f"<br>{k.note}" if k.note else "")
                    for lab, d, k in zip(labels, ds, control.bins, strict=True)
                ],
                hovertemplate=_HOVER,
            )
        )
        fig.add_trace(
            go.Scatter(
                x=labels,
                y=[overall.d if math.isfinite(overall.d) else None] * len(labels),
                mode="lines",
                line={"color": col, "dash": "dash"},
                name=f"overall d ({vector}) {_fmt(overall.d, '+.2f')}",
                hovertext=[f"{vector}: overall d = {_fmt(overall.d, '+.2f')}"] * len(labels),
                hovertemplate=_HOVER,
            )
        )
    fig.add_hline(y=0, line={"color": "#566573", "width": 1})
    if title is None:
        title = f"Correctness tracking within P(True) bins: d({a} − {b}) (Figure 7)"
    return _finish(
        fig, title, barmode="group", xaxis_title="confidence bin",
        yaxis_title=f"Cohen's d ({a} − {b})",
    )  # fmt: skip
