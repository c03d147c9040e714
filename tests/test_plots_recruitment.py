"""Tests of the recruitment figures in welfare_lens.plots (appendices G, H, J.2, A1, Figure 7).

No model is loaded: result objects are built from small arrays, and every assertion reads the
plotted numbers back and compares them with values computed here independently.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from welfare_lens import plots
from welfare_lens.analysis import PAPER_TRIO, NeutralityScan, RotationTable, confidence_tertiles
from welfare_lens.analysis import recruitment as recruitment_of
from welfare_lens.errors import DataError, LayerError, ShapeError

STEPS = [0, 5, 10, 15, 20]
LAYERS = [0, 1, 2]


def _table(separation: bool = True) -> RotationTable:
    """cos_gold grows with the step at layer 1 only; cos_mold falls there; layer 0 is noise."""
    rng = np.random.default_rng(0)
    growth = np.linspace(0.0, 0.8, len(STEPS))
    cos_gold = rng.uniform(-0.05, 0.05, (len(STEPS), len(LAYERS)))
    cos_mold = rng.uniform(-0.05, 0.05, (len(STEPS), len(LAYERS)))
    cos_gold[:, 1] = growth
    cos_mold[:, 1] = -growth
    sep = {"vaa": np.outer(growth, [0.0, 2.0, 1.0])} if separation else None
    return RotationTable(
        steps=list(STEPS),
        layers=list(LAYERS),
        names=["mold", "gold"],
        axes=["vaa"],
        cos={"vaa": {"mold": cos_mold, "gold": cos_gold}},
        separation=sep,
        separation_classes=("gold", "mold"),
        report_layer=1,
    )


REWARDS = {0: -70.0, 5: -60.0, 10: -45.0, 15: -40.0, 20: -30.0}


def _trace(fig, name_part: str, index: int = 0):
    found = [t for t in fig.data if t.name and name_part in t.name]
    assert found, f"no trace named like {name_part!r}: {[t.name for t in fig.data]}"
    return found[index]


def test_rotation_draws_the_table_at_the_layer_with_reward_on_a_second_axis() -> None:
    table = _table()
    fig = plots.rotation(table, REWARDS)
    gold = _trace(fig, "cos(v_gold")
    mold = _trace(fig, "cos(v_mold")
    assert list(gold.x) == STEPS
    np.testing.assert_allclose(gold.y, table.cos["vaa"]["gold"][:, 1])
    np.testing.assert_allclose(mold.y, table.cos["vaa"]["mold"][:, 1])
    assert gold.line.color == plots.COLOURS["gold"] and mold.line.color == plots.COLOURS["mold"]
    reward = _trace(fig, "smoothed reward")
    assert list(reward.y) == [REWARDS[s] for s in STEPS]
    assert reward.yaxis != gold.yaxis  # the secondary axis
    sep = _trace(fig, "(μ_gold − μ_mold)")
    np.testing.assert_allclose(sep.y, 2.0 * np.linspace(0.0, 0.8, 5))
    # another layer, and the same figure from the JSON form
    other = plots.rotation(table.to_dict(), layer=2)
    np.testing.assert_allclose(_trace(other, "cos(v_gold").y, table.cos["vaa"]["gold"][:, 2])
    assert not [t for t in other.data if t.name == "smoothed reward"]
    assert "at layer 2" in other.layout.title.text


def test_rotation_without_separation_has_one_row_and_rejects_bad_layers() -> None:
    fig = plots.rotation(_table(separation=False))
    assert not [t for t in fig.data if t.name and "μ_" in t.name]
    with pytest.raises(LayerError, match="Layer 7"):
        plots.rotation(_table(), layer=7)
    with pytest.raises(DataError, match="rotation table"):
        plots.rotation({"steps": [0]})
    with pytest.raises(DataError, match="rewards"):
        plots.rotation(_table(), rewards=[1.0, 2.0])


def test_recruitment_plots_rho_with_ci_and_fills_recruited_layers() -> None:
    table = _table()
    rec = recruitment_of(table, REWARDS, n_boot=200, seed=0)
    fig = plots.recruitment(rec)
    line = next(t for t in fig.data if t.name == "cos_gold")
    np.testing.assert_allclose(
        np.asarray(line.y, dtype=float), rec.rho["vaa"]["cos_gold"], equal_nan=True
    )
    # layer 1 grows monotonically with the reward: rho = 1, recruited, filled marker
    assert line.y[1] == pytest.approx(1.0)
    assert rec.recruited["vaa"]["cos_gold"][1]
    colours = list(line.marker.color)
    assert colours[1] == plots.COLOURS["gold"]
    assert [c == "white" for c in colours] == [not r for r in rec.recruited["vaa"]["cos_gold"]]
    assert "band" in fig.layout.title.text
    # the JSON form gives the same figure
    again = plots.recruitment(rec.to_dict())
    assert list(next(t for t in again.data if t.name == "cos_gold").marker.color) == colours
    with pytest.raises(DataError, match="recruitment"):
        plots.recruitment({"rho": {}})


def test_vaa_cosines_trained_solid_control_dotted() -> None:
    v = {"mold": [-0.1, -0.22, -0.3], "gold": [0.05, 0.09, 0.1]}
    u = {"mold": [0.0, -0.02, 0.01], "gold": [-0.05, -0.06, 0.0]}
    fig = plots.vaa_cosines(v, u, layers=[3, 4, 5], d_model=576)
    tv = _trace(fig, "cos(v_mold, VAA)")
    tu = _trace(fig, "cos(u_gold, VAA)")
    assert list(tv.x) == [3, 4, 5] and list(tv.y) == v["mold"]
    assert tv.line.dash == "solid" and tu.line.dash == "dot"
    assert list(tu.y) == u["gold"]
    null = _trace(fig, "null")
    assert max(null.y) == pytest.approx(1.96 / math.sqrt(576))
    only_u = plots.vaa_cosines(None, u)
    assert len([t for t in only_u.data if t.name and "VAA" in t.name]) == 2
    with pytest.raises(DataError):
        plots.vaa_cosines(None, None)
    with pytest.raises(ShapeError):
        plots.vaa_cosines({"mold": [0.1, 0.2]}, {"mold": [0.1]})


def _scan() -> NeutralityScan:
    others = ["🙂", "😡", "📎", "🧮", "📌"]
    emoji = [*PAPER_TRIO, *others]
    cad = np.array([0.01, -0.02, 0.03, 0.4, -0.5, 0.05, 0.0, -0.1])
    prompt = np.array([0.02, 0.0, -0.01, 0.3, -0.35, 0.02, 0.04, 0.2])
    cats = {e: "office" for e in (*PAPER_TRIO, "📎", "📌")} | {"🙂": "face", "😡": "face"}
    return NeutralityScan(emoji, cad, prompt, layer=20, categories=cats, model_id="m")


def test_emoji_neutrality_marks_the_trio_with_its_ranks_and_spreads() -> None:
    scan = _scan()
    fig = plots.emoji_neutrality(scan, top=3)
    trio = _trace(fig, "tile trio")
    assert list(trio.text) == list(PAPER_TRIO)
    np.testing.assert_allclose(trio.x, [0.01, -0.02, 0.03])
    np.testing.assert_allclose(trio.y, [0.02, 0.0, -0.01])
    spread = scan.trio_spread()
    assert spread.cad == pytest.approx(0.05) and spread.prompt == pytest.approx(0.03)
    title = fig.layout.title.text
    assert "spread CAD 0.050, prompt 0.030" in title
    ranks = ", ".join(str(scan.rank_of(e)) for e in PAPER_TRIO)
    assert f"trio ranks {ranks} of 8" in title
    # every emoji is drawn once, in its category's trace
    drawn = sum(len(t.x) for t in fig.data if t.name in {"office", "face", "uncategorised"})
    assert drawn == 8
    face = _trace(fig, "face")
    np.testing.assert_allclose(sorted(face.x), [-0.5, 0.4])
    # the bounding square holds the top-3 scores: scores 0.02, 0.02, 0.03 (the trio), so 0.03
    (square,) = fig.layout.shapes[:1]
    assert square.x1 == pytest.approx(0.03)
    assert plots.emoji_neutrality(scan.to_dict(), trio=()).layout.title.text.endswith("(App. J.2)")
    with pytest.raises(DataError, match="not in the scan"):
        plots.emoji_neutrality(scan, trio=("🐱", "🐶", "🐭"))


def test_pre_existence_groups_bars_by_model_with_se() -> None:
    rows = [
        {"model": m, "model_id": f"id-{m}", "evaluation": e, "vector": vec,
         "role": "control" if vec.startswith("u_") else "trained", "layer": 4,
         "slope": s, "se": 0.1, "n": 30}
        for e, scale in (("sentiment", 1.0), ("p_true", 0.1))
        for m, k in (("trained", 1.0), ("naive", 0.6))
        for vec, s in (("gold", 0.5 * k * scale), ("u_gold", 0.02 * scale))
    ]  # fmt: skip
    result = {"models": {"trained": "a", "naive": "b"}, "evaluations": ["sentiment", "p_true"],
              "slopes": rows}  # fmt: skip
    fig = plots.pre_existence(result)
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(bars) == 4  # 2 evaluations x 2 models
    naive_sent = next(t for t in bars if t.name == "naive" and t.xaxis == "x")
    assert list(naive_sent.x) == ["gold", "u_gold"]
    assert list(naive_sent.y) == pytest.approx([0.3, 0.02])
    assert list(naive_sent.marker.pattern.shape) == ["", "/"]
    assert list(naive_sent.error_y.array) == [0.1, 0.1]
    only = plots.pre_existence(result, evaluations=["p_true"])
    assert len([t for t in only.data if t.type == "bar"]) == 2
    with pytest.raises(DataError, match="Unknown evaluation"):
        plots.pre_existence(result, evaluations=["refusal"])


def test_confidence_control_bars_are_hand_computed_d_per_tertile() -> None:
    rng = np.random.default_rng(3)
    n = 90
    correct = np.arange(n) % 2 == 0
    proj = rng.normal(size=n) + 1.5 * correct
    p = np.linspace(0.05, 0.95, n)
    rows = [
        {"correct": bool(c), "projections": {"gold": float(x)}}
        for c, x in zip(correct, proj, strict=True)
    ]
    control = confidence_tertiles(rows, p)
    fig = plots.confidence_control(control)
    bar = _trace(fig, "d within bin")
    edges = np.quantile(p, [0, 1 / 3, 2 / 3, 1])
    which = np.searchsorted(edges[1:-1], p, side="left")
    for i in range(3):
        a, b = proj[(which == i) & correct], proj[(which == i) & ~correct]
        pooled = math.sqrt(
            ((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2)
        )
        assert bar.y[i] == pytest.approx((a.mean() - b.mean()) / pooled)
    overall = _trace(fig, "overall d")
    assert overall.y[0] == pytest.approx(control.overall["gold"].d)
    with pytest.raises(DataError):
        plots.confidence_control(object())
