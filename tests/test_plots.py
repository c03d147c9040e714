"""Tests of welfare_lens.plots: every builder on synthetic numbers and on real result objects.

No model is loaded: result dataclasses are built from small tensors. Assertions read the figure
back (trace counts, plotted values, hover text, markers) and compare with numbers computed here
independently (numpy.polyfit, hand-computed Cohen's d, means and SEs).
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from welfare_lens import plots
from welfare_lens.analysis import (
    Contrast,
    LogitLensResult,
    TrackingResult,
    antiparallelism,
    centred_class_mean_cosines,
    cosine_per_layer,
    emotion_alignment,
    emotion_pca,
)
from welfare_lens.errors import DataError, ShapeError, WelfareLensError
from welfare_lens.maze import Maze, MazeConfig, MazeEnv, Trajectory
from welfare_lens.steering import ResultTable, ols_slope, slopes_by
from welfare_lens.vectors import ClassStatistics, ConceptVectors, VectorMetadata, welfare_vectors

CLASSES = ("mold", "gold", "path")


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def trace(fig: go.Figure, name: str) -> Any:
    found = [t for t in fig.data if t.name == name]
    assert len(found) == 1, f"expected one trace {name!r}, have {[t.name for t in fig.data]}"
    return found[0]


def names(fig: go.Figure) -> list[str]:
    return [t.name for t in fig.data]


def panel_titles(fig: go.Figure) -> list[str]:
    return [a.text for a in fig.layout.annotations]


def styled(fig: go.Figure) -> None:
    """The module's template is applied (same font and colourway as TEMPLATE)."""
    assert fig.layout.template.layout.font.family == plots.TEMPLATE.layout.font.family
    assert tuple(fig.layout.template.layout.colorway) == tuple(plots.TEMPLATE.layout.colorway)
    fig.to_json()  # serialisable


def toy_stats(
    angle: float, seed: int, n: int = 40, d: int = 16, layers: int = 4
) -> ClassStatistics:
    """Mold at −s·a, Gold at s·(cos φ a + sin φ b), Path at the origin; one group per sample."""
    gen = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(layers, d, 2, generator=gen)).Q
    a, b = basis[..., 0], basis[..., 1]
    s = torch.linspace(0.5, 2.0, layers)[:, None]
    shift = {"mold": -s * a, "gold": s * (math.cos(angle) * a + math.sin(angle) * b), "path": 0 * a}
    stats = ClassStatistics(layers, d, model_id=f"toy-{seed}", n_buckets=16)
    for i, c in enumerate(CLASSES):
        x = torch.randn(n, layers, d, generator=gen) + 1.0 + shift[c]
        stats.update(c, x, groups=range(i * n, (i + 1) * n))
    return stats


def meta(n_layers: int, d: int, **kw: Any) -> VectorMetadata:
    return VectorMetadata(model_id="toy", d_model=d, n_layers=n_layers, **kw)


# ----------------------------------------------------------------------------------------------
# Style
# ----------------------------------------------------------------------------------------------


def test_colours_follow_the_style() -> None:
    assert plots.colour("mold") == plots.colour("v_Mold") == plots.colour("u_mold")
    assert plots.colour("control:gold") == plots.COLOURS["gold"] == plots.colour("correct")
    assert plots.colour("incorrect") == plots.COLOURS["mold"]
    assert plots.colour("path") == plots.COLOURS["path"]
    assert plots.colour("sentiment") == plots.colour("sentiment")  # stable, not hash-salted
    assert plots.DASHES == {"trained": "solid", "control": "dot"}


# ----------------------------------------------------------------------------------------------
# Antiparallelism
# ----------------------------------------------------------------------------------------------


def test_antiparallelism_from_arrays() -> None:
    trained = [0.3, 0.1, -0.2, -0.6, -0.85, -0.7]
    control = [0.4, 0.3, 0.2, -0.15, 0.1, 0.2]
    fig = plots.antiparallelism(trained, control, l_star=2, d_model=64)
    styled(fig)
    assert names(fig) == [
        "random-direction null ±1.96/√d (0.245)",
        "control",
        "trained",
        "trained min",
        "control min",
    ]
    t, c = trace(fig, "trained"), trace(fig, "control")
    assert list(t.y) == trained and list(c.y) == control
    assert t.line.dash == "solid" and c.line.dash == "dot"
    # Minimum markers at the argmin layers, with the numbers in the hover.
    tm, cm = trace(fig, "trained min"), trace(fig, "control min")
    assert (tm.x[0], tm.y[0]) == (4, -0.85) and (cm.x[0], cm.y[0]) == (3, -0.15)
    assert "-0.850 at layer 4" in tm.hovertext[0]
    # Every layer's value is in its hover text.
    for layer, v in enumerate(trained):
        assert f"layer {layer}" in t.hovertext[layer] and f"{v:+.3f}" in t.hovertext[layer]
    # ℓ* as a vertical line with its value; the null band at ±1.96/√64.
    (shape,) = fig.layout.shapes
    assert shape.x0 == shape.x1 == 2
    assert any("ℓ*=2: -0.200" in a for a in panel_titles(fig))
    band = trace(fig, "random-direction null ±1.96/√d (0.245)")
    assert max(band.y) == pytest.approx(1.96 / 8) and min(band.y) == pytest.approx(-1.96 / 8)
    assert "trained min -0.850 @ L4" in fig.layout.title.text
    assert "control min -0.150 @ L3" in fig.layout.title.text


def test_antiparallelism_from_the_result_with_bootstrap_and_controls() -> None:
    stats, cstats = toy_stats(0.0, seed=1), toy_stats(math.pi / 2, seed=2)
    v, u = welfare_vectors(stats), welfare_vectors(cstats, role="control")
    res = antiparallelism(v, u, steering_layer=1, stats=stats, control_stats=cstats, n_boot=40)
    fig = plots.antiparallelism(res)
    styled(fig)
    assert {"trained bootstrap CI", "control bootstrap CI", "no-signal floor (trained)"} <= set(
        names(fig)
    )
    np.testing.assert_allclose(trace(fig, "trained").y, res.trained.per_layer, rtol=0, atol=0)
    assert res.control is not None
    np.testing.assert_allclose(trace(fig, "control").y, res.control.per_layer)
    assert trace(fig, "trained min").x[0] == res.trained.argmin
    assert trace(fig, "trained min").y[0] == pytest.approx(res.trained.min)
    ci = trace(fig, "trained bootstrap CI")
    assert res.trained.ci_low is not None and res.trained.ci_high is not None
    assert min(ci.y) == pytest.approx(float(res.trained.ci_low.min()))
    assert max(ci.y) == pytest.approx(float(res.trained.ci_high.max()))
    assert res.trained.noise_floor is not None
    np.testing.assert_allclose(trace(fig, "no-signal floor (trained)").y, res.trained.noise_floor)
    assert "CI [" in trace(fig, "trained").hovertext[0]
    assert fig.layout.shapes[0].x0 == 1  # ℓ* from the result
    assert math.isclose(
        max(trace(fig, f"random-direction null ±1.96/√d ({1.96 / 4:.3f})").y), 1.96 / 4
    )


def test_antiparallelism_from_concept_vectors_and_dicts() -> None:
    v = welfare_vectors(toy_stats(0.3, seed=3))
    fig = plots.antiparallelism(v, l_star=[0, 3])
    np.testing.assert_allclose(trace(fig, "trained").y, cosine_per_layer(v.mold, v.gold))
    assert [s.x0 for s in fig.layout.shapes] == [0, 3]
    # A CosineSummary.to_dict()-like dict (e.g. read back from report.json) with a null in it.
    fig = plots.antiparallelism({"per_layer": [0.1, None, -0.5]}, layers=[10, 11, 12])
    assert list(trace(fig, "trained").x) == [10, 11, 12]
    assert trace(fig, "trained min").x[0] == 12


def test_antiparallelism_rejects_bad_input() -> None:
    with pytest.raises(ShapeError, match="control"):
        plots.antiparallelism([0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(DataError, match="no finite"):
        plots.antiparallelism([math.nan, math.nan])
    with pytest.raises(ShapeError):
        plots.antiparallelism([0.1, 0.2], layers=[1, 2, 3])
    with pytest.raises(ShapeError):
        plots.antiparallelism([[0.1, 0.2]])
    with pytest.raises(ShapeError, match="l_star"):
        plots.antiparallelism([0.1, 0.2], l_star=5)
    with pytest.raises(DataError, match="per_layer"):
        plots.antiparallelism({"cos": [0.1]})
    with pytest.raises(WelfareLensError):  # errors carry hints
        plots.antiparallelism([])


# ----------------------------------------------------------------------------------------------
# Centred class-mean cosines
# ----------------------------------------------------------------------------------------------


def test_class_cosine_matrix_from_centred_cosines() -> None:
    trained = centred_class_mean_cosines(toy_stats(0.0, seed=4), n_boot=20, null_samples=200)
    naive = centred_class_mean_cosines(toy_stats(math.pi / 2, seed=5), null_samples=200)
    fig = plots.class_cosine_matrix(trained, naive)
    styled(fig)
    assert [t.type for t in fig.data] == ["heatmap", "heatmap"]
    hm = fig.data[0]
    assert list(hm.x) == list(CLASSES) and list(hm.y) == list(CLASSES)
    z = np.array(hm.z, dtype=float)
    np.testing.assert_allclose(np.diag(z), 1.0)
    np.testing.assert_allclose(z, z.T)
    for (a, b), cos in trained.cosines.items():
        i, j = CLASSES.index(a), CLASSES.index(b)
        assert z[i, j] == pytest.approx(cos)
        assert hm.text[i][j] == f"{cos:+.3f}"
        assert f"cos({a}, {b}) = {cos:+.3f}" in hm.hovertext[i][j]
        assert "p vs centred null" in hm.hovertext[i][j] and "CI [" in hm.hovertext[i][j]
    assert panel_titles(fig)[0] == f"trained (layer {trained.layer})"
    assert z[0, 1] < -0.9  # exactly antiparallel construction
    # Only the last panel shows a colour bar.
    assert [t.showscale for t in fig.data] == [False, True]


def test_class_cosine_matrix_plain_inputs() -> None:
    m = np.array([[1.0, -0.8, 0.1], [-0.8, 1.0, -0.5], [0.1, -0.5, 1.0]])
    fig = plots.class_cosine_matrix(m)
    assert list(fig.data[0].x) == ["mold", "gold", "path"]
    fig = plots.class_cosine_matrix({"mold|gold": -0.81, ("mold", "path"): -0.03})
    z = np.array(fig.data[0].z, dtype=float)
    assert z[0, 1] == z[1, 0] == -0.81 and math.isnan(z[1, 2])
    with pytest.raises(ShapeError, match="square"):
        plots.class_cosine_matrix(np.ones((2, 3)))
    with pytest.raises(ShapeError, match="class names"):
        plots.class_cosine_matrix(m, classes=["a", "b"])
    with pytest.raises(DataError):
        plots.class_cosine_matrix({"nopair": 0.1})


# ----------------------------------------------------------------------------------------------
# Logit lens
# ----------------------------------------------------------------------------------------------


def lens(name: str, sign: float) -> LogitLensResult:
    return LogitLensResult(
        top_ids=[11, 12, 13],
        top_tokens=[" cannot", "不存在", "\nfail"],
        top_scores=[sign * 3.0, sign * 2.5, sign * 2.0],
        bottom_ids=[21, 22],
        bottom_tokens=[" done", "ok"],
        bottom_scores=[-sign * 2.2, -sign * 1.9],
        layer=25,
        k=3,
        norm="none",
        name=name,
    )


def test_logit_lens_bars_from_results() -> None:
    fig = plots.logit_lens_bars([lens("mold", 1.0), lens("gold", 1.0)])
    styled(fig)
    assert names(fig) == ["mold promoted", "mold suppressed", "gold promoted", "gold suppressed"]
    promoted, suppressed = trace(fig, "mold promoted"), trace(fig, "mold suppressed")
    assert promoted.orientation == "h"
    assert list(promoted.x) == [3.0, 2.5, 2.0] and list(suppressed.x) == [-2.2, -1.9]
    # Promoted on top (higher y), best first; suppressed below.
    assert list(promoted.y) == [0, -1, -2] and max(suppressed.y) < min(promoted.y)
    assert promoted.marker.color == plots.COLOURS["mold"]
    assert trace(fig, "gold promoted").marker.color == plots.COLOURS["gold"]
    assert "'␣cannot' (id 11)" in promoted.hovertext[0] and "+3.0000" in promoted.hovertext[0]
    assert list(fig.layout.yaxis.ticktext) == ["␣cannot", "不存在", "⏎fail", "␣done", "ok"]
    assert panel_titles(fig) == ["v_mold @ layer 25", "v_gold @ layer 25"]
    # k truncates; a to_dict() works as input.
    fig = plots.logit_lens_bars(lens("mold", 1.0).to_dict(), k=1)
    assert len(trace(fig, "mold promoted").x) == 1 and len(trace(fig, "mold suppressed").x) == 1


def test_logit_lens_bars_plain_pairs_and_errors() -> None:
    fig = plots.logit_lens_bars(promoted={"a": 1.5, "b": 1.0}, suppressed=[("z", -2.0, 7)])
    assert list(trace(fig, "vector promoted").x) == [1.5, 1.0]
    assert "(id 7)" in trace(fig, "vector suppressed").hovertext[0]
    with pytest.raises(DataError, match="No tokens"):
        plots.logit_lens_bars(promoted=[], suppressed=[])
    with pytest.raises(ShapeError):
        plots.logit_lens_bars({"top_tokens": ["a", "b"], "top_scores": [1.0]})
    with pytest.raises(DataError, match="pairs"):
        plots.logit_lens_bars(promoted=[("a", 1.0, 2, 3)])


# ----------------------------------------------------------------------------------------------
# Emotion scatter and PCA
# ----------------------------------------------------------------------------------------------


def test_emotion_scatter_ols_line_matches_polyfit() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(0, 0.1, 25)
    y = -0.88 * x + rng.normal(0, 0.03, 25) + 0.01
    cx, cy = rng.normal(0, 0.1, 25), rng.normal(0, 0.1, 25)
    emo = [f"emotion_{i}" for i in range(25)]
    fig = plots.emotion_scatter((x, y), (cx, cy), emotions=emo)
    styled(fig)
    assert names(fig) == ["trained emotions", "trained OLS", "control emotions", "control OLS"]
    for role, (xs, ys) in (("trained", (x, y)), ("control", (cx, cy))):
        line = trace(fig, f"{role} OLS")
        slope = (line.y[1] - line.y[0]) / (line.x[1] - line.x[0])
        want_slope, want_intercept = np.polyfit(xs, ys, 1)
        assert slope == pytest.approx(want_slope, abs=1e-9)
        assert line.y[0] - slope * line.x[0] == pytest.approx(want_intercept, abs=1e-9)
        assert (line.x[0], line.x[1]) == (xs.min(), xs.max())
        r = np.corrcoef(xs, ys)[0, 1]
        assert (
            f"slope {want_slope:+.3f}, R {r:+.3f}"
            in panel_titles(fig)[0 if role == "trained" else 1]
        )
        assert line.line.dash == plots.DASHES[role]
    pts = trace(fig, "trained emotions")
    np.testing.assert_allclose(pts.x, x)
    assert pts.hovertext[3].startswith("emotion_3") and f"{y[3]:+.3f}" in pts.hovertext[3]


def emotion_fixture() -> tuple[ConceptVectors, ConceptVectors, ConceptVectors, list[str]]:
    g = torch.Generator().manual_seed(11)
    n_e, n_layers, d = 12, 3, 16
    emo = [f"e{i}" for i in range(n_e)]
    e = torch.randn(n_e, n_layers, d, generator=g)
    axis = torch.randn(n_layers, d, generator=g)
    v = ConceptVectors(
        {"mold": -axis + 0.1 * torch.randn(n_layers, d, generator=g), "gold": axis},
        meta(n_layers, d),
    )
    u = ConceptVectors(
        {
            "mold": torch.randn(n_layers, d, generator=g),
            "gold": torch.randn(n_layers, d, generator=g),
        },
        meta(n_layers, d, role="control"),
    )
    emotions = ConceptVectors({nm: e[i] for i, nm in enumerate(emo)}, meta(n_layers, d))
    return v, u, emotions, emo


def test_emotion_scatter_from_an_emotion_alignment() -> None:
    v, u, emotions, emo = emotion_fixture()
    res = emotion_alignment(v, emotions, layer=1, control=u, n_boot=20)
    fig = plots.emotion_scatter(res)
    assert len(fig.data) == 4
    i = res.trained.index(1)
    line = trace(fig, "trained OLS")
    slope = (line.y[1] - line.y[0]) / (line.x[1] - line.x[0])
    assert slope == pytest.approx(np.polyfit(res.trained.x[i], res.trained.y[i], 1)[0], abs=1e-9)
    assert slope == pytest.approx(float(res.trained.slope[i]), abs=1e-9)
    assert panel_titles(fig)[0].startswith("trained (layer 1): slope ")
    assert f"R {float(res.trained.r[i]):+.3f}" in panel_titles(fig)[0]
    assert trace(fig, "trained emotions").hovertext[0].startswith(emo[0])
    # A bare multi-layer ScatterFit defaults to the layer of most negative R, and says so.
    fig = plots.emotion_scatter(res.trained, emotions=emo)
    want = res.trained.layers[int(np.nanargmin(res.trained.r))]
    assert panel_titles(fig)[0].startswith(f"trained (layer {want} (argmin R))")


def test_emotion_scatter_rejects_bad_input() -> None:
    with pytest.raises(ShapeError, match="lengths differ"):
        plots.emotion_scatter(([0.1, 0.2, 0.3], [0.1, 0.2]))
    with pytest.raises(ShapeError, match="lengths differ"):
        plots.emotion_scatter(([0.1, 0.2, 0.3], [0.1, 0.2, 0.0]), emotions=["a"])
    with pytest.raises(DataError, match="no finite"):
        plots.emotion_scatter(([math.nan] * 3, [0.1, 0.2, 0.3]))
    with pytest.raises(DataError, match="two finite"):
        plots.emotion_scatter({"x": [0.1, math.nan], "y": [math.nan, 0.2]})
    with pytest.raises(DataError):
        plots.emotion_scatter(42)  # type: ignore[arg-type]


def test_emotion_pca_from_the_result() -> None:
    v, u, emotions, emo = emotion_fixture()
    ratings = {nm: (((-1) ** i) * 0.1 * i, 0.5) for i, nm in enumerate(emo[:-1])}  # last unrated
    res = emotion_pca(emotions, ratings, v=v, control=u)
    # EmotionPCA does not keep the ratings: custom ones are passed again (default: shipped ones).
    fig = plots.emotion_pca(res, layer=2, valence={k: val for k, (val, _) in ratings.items()})
    styled(fig)
    assert names(fig) == [
        "emotions",
        "emotions (unrated)",
        "v_mold",
        "v_gold",
        "u_mold (control)",
        "u_gold (control)",
    ]
    rated = trace(fig, "emotions")
    np.testing.assert_allclose(rated.x, res.scores[2, :-1, 0])
    np.testing.assert_allclose(rated.y, res.scores[2, :-1, 1])
    np.testing.assert_allclose(rated.marker.color, [ratings[n][0] for n in emo[:-1]])
    assert trace(fig, "emotions (unrated)").hovertext[0].startswith(emo[-1])
    mold = trace(fig, "v_mold")
    assert mold.x[0] == mold.x[1] == pytest.approx(res.projections["mold"][2])
    assert f"cos(v, PC1) = {res.loadings['mold'][2]:+.3f}" in mold.hovertext[0]
    assert mold.line.color == plots.COLOURS["mold"] and mold.line.dash == "solid"
    assert trace(fig, "u_gold (control)").line.dash == "dot"
    assert "at layer 2" in fig.layout.title.text


def test_emotion_pca_plain_array() -> None:
    scores = np.array([[1.0, 0.2], [-1.0, 0.1], [0.5, -0.4]])
    fig = plots.emotion_pca(
        scores, emotions=["joyful", "miserable", "x"], valence=[0.9, -0.8, None],
        positions={"mold": -2.0, "gold": 2.0},
    )  # fmt: skip
    assert list(trace(fig, "emotions").x) == [1.0, -1.0]
    assert trace(fig, "v_gold").x[0] == 2.0
    with pytest.raises(ShapeError, match="\\[n, 2\\]"):
        plots.emotion_pca(np.ones((3, 3)))
    with pytest.raises(ShapeError):
        plots.emotion_pca(scores, emotions=["a"])


# ----------------------------------------------------------------------------------------------
# Steering curves and slope heatmaps
# ----------------------------------------------------------------------------------------------


def steering_rows(layers: tuple[int, ...] = (3,), seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    rows = []
    for tag, scale in (("sentiment", 1.0), ("refusal", -0.2)):
        for vec, slope in (("mold", -0.5), ("gold", 0.6), ("u_gold", 0.05)):
            for layer in layers:
                for alpha in (-4, -2, 0, 2, 4):
                    for prompt in range(6):
                        score = scale * slope * alpha * (1 + 0.1 * layer) + rng.normal(0, 0.3)
                        rows.append(
                            {"prompt": f"p{prompt}", "sample": 0, "alpha": float(alpha),
                             "layer": layer, "vector": vec, "score": float(score), "tag": tag}
                        )  # fmt: skip
    return rows


def test_steering_curves_from_rows() -> None:
    rows = steering_rows()
    rows[0]["score"] = None  # an unparseable judge answer is left out, not counted as 0
    table = ResultTable(rows)
    fig = plots.steering_curves(table)
    styled(fig)
    assert len(fig.data) == 6  # 3 vectors x 2 evaluations
    assert panel_titles(fig) == ["sentiment", "refusal"]
    sent = [t for t in fig.data if t.xaxis == "x"]
    assert [t.name for t in sent] == ["mold", "gold", "u_gold"]
    gold = sent[1]
    sub = table.where(tag="sentiment", vector="gold")
    for k, alpha in enumerate(gold.x):
        vals = np.array([r["score"] for r in sub.where(alpha=alpha)])
        assert gold.y[k] == pytest.approx(vals.mean())
        assert gold.error_y.array[k] == pytest.approx(vals.std(ddof=1) / math.sqrt(len(vals)))
        assert f"α = {alpha:+g}" in gold.hovertext[k] and "(n = 6)" in gold.hovertext[k]
    slope = ols_slope(sub)
    assert f"slope {slope.slope:+.3f} per unit α ± {slope.se:.3f}" in gold.hovertext[0]
    assert gold.line.color == plots.COLOURS["gold"] and gold.line.dash == "solid"
    assert sent[2].line.dash == "dot" and sent[2].line.color == plots.COLOURS["gold"]
    mold = sent[0]
    assert mold.hovertext[0].count("(n = 5)") == 1  # the None score was dropped
    # Legend entries once per vector, not once per panel.
    assert sum(bool(t.showlegend) for t in fig.data) == 3


def test_steering_curves_control_table_means_and_layers() -> None:
    rows = steering_rows(layers=(1, 2))
    trained = [r for r in rows if r["vector"] != "u_gold"]
    control = [dict(r, vector="gold") for r in rows if r["vector"] == "u_gold"]
    fig = plots.steering_curves(
        trained, control, layer={"mold": 1, "gold": 2}, evaluations=["refusal"]
    )
    assert panel_titles(fig) == ["refusal"]
    assert [(t.name, t.line.dash) for t in fig.data] == [
        ("mold", "solid"),
        ("gold", "solid"),
        ("gold (control)", "dot"),
    ]
    assert "layer 1" in fig.data[0].hovertext[0] and "layer 2" in fig.data[1].hovertext[0]
    # Without a layer filter, a vector at two layers gets one curve per layer.
    fig = plots.steering_curves(trained, vectors=["gold"], evaluations=["sentiment"])
    assert names(fig) == ["gold L1", "gold L2"]
    # Means, nested per evaluation; the slope is that of the means.
    means = {
        "sentiment": {"v_mold": {-2: 0.5, 0: 0.0, 2: (-0.6, 0.1)}, "u_mold": {"-2": 0.1, "2": 0.1}}
    }
    fig = plots.steering_curves(means)
    m = trace(fig, "v_mold")
    assert list(m.x) == [-2.0, 0.0, 2.0] and list(m.y) == [0.5, 0.0, -0.6]
    assert list(m.error_y.array) == [0.0, 0.0, 0.1]
    assert f"slope {np.polyfit([-2, 0, 2], [0.5, 0.0, -0.6], 1)[0]:+.3f}" in m.hovertext[0]
    assert trace(fig, "u_mold").line.dash == "dot"


def test_steering_curves_rejects_bad_input() -> None:
    with pytest.raises(DataError, match="alpha"):
        plots.steering_curves([{"vector": "gold", "score": 1.0}])
    with pytest.raises(DataError, match="No finite"):
        plots.steering_curves([{"alpha": 1.0, "vector": "gold", "score": None}] * 3)
    with pytest.raises(DataError, match="No finite"):
        plots.steering_curves(steering_rows(), vectors=["nothing"])
    with pytest.raises(DataError):
        plots.steering_curves({"sentiment": 3})


def test_slope_heatmap_matches_slopes_by() -> None:
    rows = steering_rows(layers=(0, 1, 2))
    sent = [r for r in rows if r["tag"] == "sentiment"]
    fig = plots.slope_heatmap(sent)
    styled(fig)
    (hm,) = fig.data
    assert list(hm.y) == ["mold", "gold", "u_gold"] and list(hm.x) == ["0", "1", "2"]
    for s in slopes_by(sent, by=("vector", "layer")):
        i, j = list(hm.y).index(s["vector"]), s["layer"]
        assert hm.z[i][j] == pytest.approx(s["slope"])
        assert f"slope {s['slope']:+.3f} per unit α ± {s['se']:.3f} SE" in hm.hovertext[i][j]
        assert "n = 30" in hm.hovertext[i][j]
        assert hm.text[i][j] == f"{s['slope']:+.2f}"
    assert hm.zmid == 0 and hm.zmax == -hm.zmin
    # Two evaluations: rows are labelled by evaluation and vector.
    # A base name selects the vector and its control.
    fig = plots.slope_heatmap(rows, vectors=["gold"])
    assert list(fig.data[0].y) == [
        "sentiment: gold",
        "sentiment: u_gold",
        "refusal: gold",
        "refusal: u_gold",
    ]


def test_slope_heatmap_means_and_plain_input() -> None:
    rows = [r for r in steering_rows(layers=(0, 1)) if r["tag"] == "sentiment"]
    fig = plots.slope_heatmap(rows, kind="mean", vectors=["mold", "gold", "u_gold"])
    assert len(fig.data) == 3 and panel_titles(fig) == ["mold", "gold", "u_gold"]
    hm = fig.data[1]
    assert list(hm.y) == ["-4", "-2", "+0", "+2", "+4"]
    want = np.mean(
        [r["score"] for r in rows if r["vector"] == "gold" and r["alpha"] == 2 and r["layer"] == 1]
    )
    assert hm.z[3][1] == pytest.approx(want)
    fig = plots.slope_heatmap({"gold": {20: (0.7, 0.05), 22: 0.4}, "mold": {20: -0.6}})
    hm = fig.data[0]
    assert hm.z[0] == [0.7, 0.4] and hm.z[1][0] == -0.6 and hm.z[1][1] is None
    assert "± 0.050 SE" in hm.hovertext[0][0]
    fig = plots.slope_heatmap(np.array([[0.1, 0.2]]), layers=[5, 6], vectors=["gold"])
    assert list(fig.data[0].x) == ["5", "6"]
    with pytest.raises(ShapeError, match="labels"):
        plots.slope_heatmap(np.array([[0.1, 0.2]]), layers=[5], vectors=["gold"])
    with pytest.raises(DataError, match="kind"):
        plots.slope_heatmap(rows, kind="median")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="no finite"):
        plots.slope_heatmap(np.full((2, 2), np.nan))


# ----------------------------------------------------------------------------------------------
# Tracking densities
# ----------------------------------------------------------------------------------------------


def hand_d(a: np.ndarray, b: np.ndarray) -> float:
    pooled = math.sqrt(
        ((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2)
    )
    return float((a.mean() - b.mean()) / pooled)


def tracking_result(shift: float, seed: int) -> TrackingResult:
    rng = np.random.default_rng(seed)
    labels = ["mold"] * 40 + ["gold"] * 40
    proj = {
        "mold": np.concatenate([rng.normal(shift, 1, 40), rng.normal(0, 1, 40)]),
        "gold": np.concatenate([rng.normal(0, 1, 40), rng.normal(shift, 1, 40)]),
    }
    contrasts = {}
    for name, x in proj.items():
        a, b = x[:40], x[40:]
        contrasts[name] = Contrast(
            name, "mold", "gold", 40, 40, a.mean(), b.mean(), a.std(ddof=1), b.std(ddof=1),
            hand_d(a, b), 0.5,
        )  # fmt: skip
    return TrackingResult(
        "outcome", 7, "last_action", ("mold", "gold"), labels, list(range(80)), proj, contrasts
    )


def test_tracking_densities_from_results() -> None:
    trained, naive = tracking_result(2.0, 0), tracking_result(0.0, 1)
    fig = plots.tracking_densities(trained, naive)
    styled(fig)
    assert len(fig.data) == 8  # 2 vectors x 2 models x 2 conditions
    titles = panel_titles(fig)
    for k, (res, role) in enumerate(((trained, "trained"), (naive, "control"))):
        for j, name in enumerate(("mold", "gold")):
            d = hand_d(res.projections[name][:40], res.projections[name][40:])
            assert titles[2 * k + j] == f"v_{name} ({role}): d = {d:+.2f}"
    first = fig.data[0]
    assert first.name == "mold (trained)" and first.line.color == plots.COLOURS["mold"]
    assert fig.data[1].line.color == plots.COLOURS["gold"]
    assert fig.data[4].line.dash == "dot"
    # Standardised (SD units around the panel mean), a KDE that integrates to ~1.
    x, y = np.array(first.x), np.array(first.y)
    assert float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x))) == pytest.approx(1.0, abs=0.03)
    z = trained.standardized("mold")
    assert x.min() < z.min() and x.max() > z.max() and abs(z.mean()) < 1e-12
    assert "n = 40" in first.hovertext[0] and "Cohen's d" in first.hovertext[0]
    assert "at layer 7" in fig.layout.title.text and "§5.1" in fig.layout.title.text


def test_tracking_densities_plain_dicts_and_histograms() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(1, 1, 30), rng.normal(0, 2, 50)
    fig = plots.tracking_densities({"correct": a, "incorrect": b}, method="hist", bins=10,
                                   standardize=False)  # fmt: skip
    assert panel_titles(fig) == [f"v_projection (trained): d = {hand_d(a, b):+.2f}"]
    h = fig.data[0]
    assert h.line.shape == "hv" and h.line.color == plots.COLOURS["gold"]
    x, y = np.array(h.x), np.array(h.y)
    assert float(np.sum(y[:-1] * np.diff(x))) == pytest.approx(1.0)  # a density histogram
    nested = {"gold": {"correct": a, "incorrect": b}, "mold": {"correct": b, "incorrect": a}}
    fig = plots.tracking_densities(nested, vectors=["mold"])
    assert panel_titles(fig) == [f"v_mold (trained): d = {hand_d(b, a):+.2f}"]
    with pytest.raises(DataError, match="two conditions"):
        plots.tracking_densities({"a": a, "b": b, "c": a})
    with pytest.raises(DataError, match="no finite"):
        plots.tracking_densities({"a": [math.nan] * 3, "b": b})
    with pytest.raises(DataError, match="method"):
        plots.tracking_densities({"a": a, "b": b}, method="violin")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# Training curves
# ----------------------------------------------------------------------------------------------


def history(n: int = 6) -> list[dict[str, Any]]:
    return [
        {"step": s, "reward_mean": -70.0 + 10 * s, "reward_std": 30.0, "n_episodes": 16,
         "p_gold": 0.2 + 0.05 * s, "p_mold": 0.5 - 0.05 * s if s != 2 else None,
         "loss": 0.1 / (s + 1)}
        for s in range(n)
    ]  # fmt: skip


def test_training_curves_from_a_history() -> None:
    rows = history()
    fig = plots.training_curves(rows, baseline={"reward_mean": -65.0, "p_gold": 0.25})
    styled(fig)
    assert names(fig) == [
        "return ± SE",
        "reward_mean",
        "untrained reward_mean",
        "p_gold",
        "untrained p_gold",
        "p_mold",
        "loss",
    ]
    assert panel_titles(fig) == ["episode return", "P(step onto tile)", "loss"]
    ret = trace(fig, "reward_mean")
    assert list(ret.x) == list(range(6)) and list(ret.y) == [r["reward_mean"] for r in rows]
    se = 30.0 / 4.0
    band = trace(fig, "return ± SE")
    assert min(band.y) == pytest.approx(-70 - se) and max(band.y) == pytest.approx(-20 + se)
    assert f"return -40.00 ± {se:.2f} SE (n = 16 episodes)" in ret.hovertext[3]
    assert trace(fig, "p_mold").y[2] is None  # a missing value is a gap
    assert trace(fig, "p_gold").line.color == plots.COLOURS["gold"]
    assert trace(fig, "p_mold").line.color == plots.COLOURS["mold"]
    base = trace(fig, "untrained reward_mean")
    assert list(base.y) == [-65.0, -65.0] and base.line.dash == "dot"
    # A trainer-like object and a column dict give the same figure.
    same = plots.training_curves(SimpleNamespace(history=rows))
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    assert list(plots.training_curves(cols).data[1].y) == list(same.data[1].y)


def test_training_curves_files_sft_and_errors(tmp_path: Any) -> None:
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps(r) for r in history(3)]
    path.write_text("\n".join(lines) + '\n{"step": 3, "rew', encoding="utf-8")  # torn last line
    fig = plots.training_curves(tmp_path)
    assert len(trace(fig, "reward_mean").y) == 3
    sft = [{"step": s, "loss": 1.0 - 0.1 * s, "data_return_mean": 150.0} for s in range(4)]
    fig = plots.training_curves(sft)
    assert panel_titles(fig) == ["SFT data return", "loss"]
    with pytest.raises(DataError, match="empty"):
        plots.training_curves([])
    with pytest.raises(DataError, match="none of"):
        plots.training_curves([{"step": 0, "lr": 1e-4}])
    with pytest.raises(ShapeError):
        plots.training_curves({"step": [0, 1], "loss": [1.0]})
    with pytest.raises(DataError, match="does not exist"):
        plots.training_curves(tmp_path / "nothing")


# ----------------------------------------------------------------------------------------------
# Maze
# ----------------------------------------------------------------------------------------------

ROWS = ["#######", "#..$..#", "#.#@..#", "#.....#", "#######"]


def test_maze_grid_and_trajectory() -> None:
    fig = plots.maze(ROWS, [(3, 2), (3, 1), (4, 1), (4, 2)])
    styled(fig)
    assert names(fig) == ["tiles", "trajectory", "start", "end"]
    hm = fig.data[0]
    m = Maze.from_strings(ROWS)
    assert [list(row) for row in hm.z] == m.grid.astype(int).tolist()
    assert hm.text[1][3] == "📐" and hm.text[0][0] == "📇" and hm.text[1][1] == "🧾"
    assert "(3, 1) gold 📐" in hm.hovertext[1][3]
    colours = [c for _, c in hm.colorscale]
    assert plots.COLOURS["mold"] in colours and plots.COLOURS["gold"] in colours
    traj = trace(fig, "trajectory")
    assert list(traj.x) == [3, 3, 4, 4] and list(traj.y) == [2, 1, 1, 2]
    assert traj.mode == "lines+markers"
    assert (trace(fig, "start").x[0], trace(fig, "end").x[0]) == (3, 4)
    assert fig.layout.yaxis.autorange == "reversed"  # north up
    assert "1 Gold 📐" in fig.layout.title.text
    # A window crops the grid around the trajectory.
    fig = plots.maze(ROWS, [(3, 2)], window=1)
    assert list(fig.data[0].x) == [2, 3, 4] and list(fig.data[0].y) == [1, 2, 3]
    with pytest.raises(ShapeError, match="outside"):
        plots.maze(ROWS, [(9, 9)])
    with pytest.raises(DataError, match="0 \\(Mold\\)"):
        plots.maze(np.array([[0, 5], [1, 2]]))


def test_maze_from_an_environment_and_trajectory() -> None:
    env = MazeEnv(MazeConfig(wind_p=0.0, shuffle=False), Maze.from_strings(ROWS))
    env.step("N")  # onto Gold
    env.step("E")
    fig = plots.maze(env)
    traj = trace(fig, "trajectory")
    assert list(zip(traj.x, traj.y, strict=True)) == [(3, 2), (3, 1), (4, 1)]
    assert "entered gold 📐" in traj.hovertext[1] and "reward +19.9" in traj.hovertext[1]
    t = Trajectory.from_env(env)
    fig = plots.maze(Maze.from_strings(ROWS), t, show_emoji=False)
    assert fig.data[0].text is None
    assert f"return {t.total_reward:+.1f}" in fig.layout.title.text
    assert "reward +19.9" in trace(fig, "trajectory").hovertext[1]


def test_design_comparison_curves_and_errors() -> None:
    paper = [0.9, -0.4, -0.8, -0.6]
    pairs = {"per_layer": [0.2, 0.1, 0.3, -0.1], "ci_low": [0.0] * 4, "ci_high": [0.4] * 4}
    fig = plots.design_comparison({"paper": paper, "minimal pairs": pairs}, d_model=100)
    styled(fig)
    assert names(fig)[0] == "random-direction null ±1.96/√d (0.196)"
    assert list(trace(fig, "paper").y) == paper
    assert list(trace(fig, "minimal pairs").y) == pairs["per_layer"]
    assert "minimal pairs bootstrap CI" in names(fig)
    stars = [t for t in fig.data if t.name in ("paper min", "minimal pairs min")]
    assert [(t.x[0], t.y[0]) for t in stars] == [(2, -0.8), (3, -0.1)]
    assert "paper min -0.800 @ L2" in fig.layout.title.text
    with pytest.raises(DataError):
        plots.design_comparison({})
    with pytest.raises(ShapeError):
        plots.design_comparison({"a": [0.1, 0.2], "b": [0.1, 0.2, 0.3]})
