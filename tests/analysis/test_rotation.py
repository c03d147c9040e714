"""Rotation during training (paper appendix G): checkpoint vectors, rotation table, reward EMA,
Spearman recruitment with bootstrap CIs, and the recruitment band."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

import welfare_lens as wl
from welfare_lens.analysis import rotation as rot
from welfare_lens.errors import DataError, LayerError, ShapeError, TrainingError, VectorError
from welfare_lens.maze import MazeConfig
from welfare_lens.models import model_info
from welfare_lens.rl import load_checkpoint
from welfare_lens.vectors import ClassStatistics, ConceptVectors, VectorMetadata

MAZE = MazeConfig(size=20, turns=3)
CLASSES = ("mold", "gold", "path")


def cv(vectors: dict[str, Any], *, layers: list[int] | None = None, **meta: Any) -> ConceptVectors:
    """ConceptVectors from nested lists/arrays ``{name: [n_layers, d_model]}``."""
    tensors = {k: torch.as_tensor(np.asarray(v, dtype=np.float64)) for k, v in vectors.items()}
    n_layers, d_model = next(iter(tensors.values())).shape
    extra = {} if layers is None else {"layers": layers}
    m = VectorMetadata(model_id="m", d_model=d_model, n_layers=n_layers, extra=extra, **meta)
    return ConceptVectors(tensors, m)


def state_file(folder: Path, step: int) -> None:
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"format": 1, "global_step": step}))


# ----------------------------------------------------------------------------------------------
# rotation_table: cosines and separations against NumPy
# ----------------------------------------------------------------------------------------------


def test_cosines_by_hand() -> None:
    # Two layers in R^2; the axis is (3, 3) at layer 0 only.
    per_step = {
        0: cv({"mold": [[1, 0], [5, 5]], "gold": [[0, 2], [1, 1]]}),
        7: cv({"mold": [[-1, -1], [5, 5]], "gold": [[0, -1], [1, 1]]}),
    }
    table = rot.rotation_table(per_step, {"a": {0: torch.tensor([3.0, 3.0])}})
    c = table.cos["a"]
    assert c["mold"][:, 0] == pytest.approx([1 / math.sqrt(2), -1.0])
    assert c["gold"][:, 0] == pytest.approx([1 / math.sqrt(2), -1 / math.sqrt(2)])
    assert np.isnan(c["mold"][:, 1]).all()  # the axis does not cover layer 1
    assert table.separation is None and table.measures == ["cos_mold", "cos_gold"]
    assert table.series("a", "cos_mold", 0) == pytest.approx([1 / math.sqrt(2), -1.0])


@pytest.mark.parametrize("layers", [None, [1, 2]])
def test_cosines_and_separation_match_numpy(layers: list[int] | None) -> None:
    rng = np.random.default_rng(0)
    n_layers, d = 3, 6
    steps = [0, 5, 10]
    raw: dict[int, dict[str, np.ndarray]] = {}
    per_step: dict[int, ConceptVectors] = {}
    stats: dict[int, ClassStatistics] = {}
    for k, step in enumerate(steps):
        acts = {
            c: rng.normal(size=(4 + i, n_layers, d)) + k * (i - 1) for i, c in enumerate(CLASSES)
        }
        st = ClassStatistics(n_layers, d)
        for c, x in acts.items():
            st.update(c, torch.from_numpy(x))
        raw[step], stats[step], per_step[step] = acts, st, wl.welfare_vectors(st)
    axis_t = rng.normal(size=(n_layers, d))
    axis_cv = rng.normal(size=(n_layers, d))
    axes = {"tensor": torch.from_numpy(axis_t), "cv": cv({"prompt": axis_cv})}
    table = rot.rotation_table(per_step, axes, stats=stats, layers=layers)
    chosen = layers or [0, 1, 2]
    assert table.steps == steps and table.layers == chosen

    for i, step in enumerate(steps):
        a = raw[step]
        means = {c: a[c].mean(0) for c in CLASSES}
        v = {
            "mold": means["mold"] - np.concatenate([a["gold"], a["path"]]).mean(0),
            "gold": means["gold"] - np.concatenate([a["mold"], a["path"]]).mean(0),
        }
        for axis_name, ax in (("tensor", axis_t), ("cv", axis_cv)):
            for j, layer in enumerate(chosen):
                unit = ax[layer] / np.linalg.norm(ax[layer])
                for name in ("mold", "gold"):
                    want = v[name][layer] @ unit / np.linalg.norm(v[name][layer])
                    assert table.cos[axis_name][name][i, j] == pytest.approx(want, abs=1e-6)
                sep = (means["gold"][layer] - means["mold"][layer]) @ unit
                assert table.separation is not None
                assert table.separation[axis_name][i, j] == pytest.approx(sep, rel=1e-9, abs=1e-12)

    rows = table.rows()
    assert len(rows) == len(steps) * len(chosen) * 2
    assert set(rows[0]) == {"step", "layer", "axis", "cos_mold", "cos_gold", "separation"}
    assert rows[0]["step"] == 0 and rows[0]["layer"] == chosen[0]
    json.dumps(table.to_dict(), allow_nan=False)
    assert "RotationTable(3 steps 0..10" in repr(table)
    # Swapping the separation classes flips its sign.
    assert table.separation is not None
    flipped = rot.rotation_table(
        per_step, axes, stats=stats, layers=layers, separation_classes=("mold", "gold")
    )
    assert flipped.separation is not None
    np.testing.assert_allclose(flipped.separation["cv"], -table.separation["cv"])


def test_axis_forms_agree() -> None:
    rng = np.random.default_rng(1)
    axis = rng.normal(size=(2, 4))
    per_step = {
        s: cv({"mold": rng.normal(size=(2, 4)), "gold": rng.normal(size=(2, 4))}) for s in (0, 1)
    }
    pair = cv({"x": rng.normal(size=(2, 4)), "prompt": axis})
    pca_like = SimpleNamespace(pc1=torch.from_numpy(axis), layers=[0, 1])
    forms = {
        "tensor": torch.from_numpy(axis),
        "pair": (pair, "prompt"),
        "pca": pca_like,
        "mapping": {0: torch.from_numpy(axis[0]), 1: torch.from_numpy(axis[1])},
    }
    table = rot.rotation_table(per_step, forms)
    for name in forms:
        np.testing.assert_allclose(table.cos[name]["gold"], table.cos["tensor"]["gold"])
    # Vectors captured at layers [3, 5] of a deeper model: a mapping axis is keyed by model layer.
    deep = {s: cv({"mold": np.eye(2, 4), "gold": np.ones((2, 4))}, layers=[3, 5]) for s in (0, 1)}
    only5 = rot.rotation_table(deep, {"a": {5: torch.tensor([1.0, 0, 0, 0])}})
    assert only5.layers == [3, 5] and np.isnan(only5.cos["a"]["mold"][:, 0]).all()
    assert only5.cos["a"]["gold"][:, 1] == pytest.approx([0.5, 0.5])


def test_rotation_table_bad_inputs() -> None:
    per_step = {0: cv({"mold": np.eye(2, 3), "gold": np.ones((2, 3))})}
    good = torch.ones(2, 3)

    def raises(error: type[Exception], match: str, *args: Any, **kwargs: Any) -> None:
        with pytest.raises(error, match=match) as info:
            rot.rotation_table(*args, **kwargs)
        assert getattr(info.value, "hint", None)

    raises(DataError, "No steps", {}, {"a": good})
    raises(DataError, "No axes", per_step, {})
    raises(
        DataError,
        "an axis is one",
        per_step,
        {"a": cv({"p": np.ones((2, 3)), "q": np.ones((2, 3))})},
    )
    raises(ShapeError, "tensor of shape", per_step, {"a": torch.ones(3)})
    raises(ShapeError, "tensor of shape", per_step, {"a": torch.ones(3, 3)})
    raises(ShapeError, "expected \\[3\\]", per_step, {"a": {0: torch.ones(4)}})
    raises(VectorError, "zero at layer 1", per_step, {"a": torch.tensor([[1.0, 0, 0], [0, 0, 0]])})
    raises(VectorError, "NaN", per_step, {"a": torch.tensor([[1.0, math.nan, 0], [1, 0, 0]])})
    raises(LayerError, "covers none", per_step, {"a": {7: torch.ones(3)}})
    raises(DataError, "is a str", per_step, {"a": "prompt"})
    compat = cv({"p": np.ones((2, 3))}, coordinate_mode="compat")
    raises(VectorError, "coordinate_mode", per_step, {"a": compat})
    raises(LayerError, "not among", per_step, {"a": good}, layers=[5])
    raises(DataError, "no vector", per_step, {"a": good}, names=("mold", "path"))
    raises(DataError, "No class statistics", per_step, {"a": good}, stats={3: None})
    mixed = {**per_step, 1: cv({"mold": np.eye(2, 3), "gold": np.ones((2, 3))}, layers=[4, 5])}
    raises(ShapeError, "Step 1", mixed, {"a": good})
    table = rot.rotation_table(per_step, {"a": good})
    with pytest.raises(DataError, match="Unknown measure"):
        table.values("a", "separation")
    with pytest.raises(LayerError):
        table.series("a", "cos_mold", 9)


# ----------------------------------------------------------------------------------------------
# list_checkpoints
# ----------------------------------------------------------------------------------------------


def test_list_checkpoints_orders_numerically(tmp_path: Path) -> None:
    for name, step in (("checkpoint-10", 10), ("checkpoint-5", 5), ("checkpoint-000002", 2)):
        state_file(tmp_path / name, step)
    (tmp_path / "checkpoint-7").mkdir()  # a save that never finished: skipped
    (tmp_path / "checkpoint-notes.txt").write_text("not a folder")
    found = rot.list_checkpoints(tmp_path)
    assert [s for s, _ in found] == [2, 5, 10]
    assert [p.name for _, p in found] == ["checkpoint-000002", "checkpoint-5", "checkpoint-10"]


def test_list_checkpoints_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a folder") as info:
        rot.list_checkpoints(tmp_path / "nowhere")
    assert "out_dir" in (info.value.hint or "")
    with pytest.raises(DataError, match="no complete checkpoint"):
        rot.list_checkpoints(tmp_path)
    (tmp_path / "checkpoint-000003").mkdir()
    with pytest.raises(DataError, match=r"without trainer_state\.json"):
        rot.list_checkpoints(tmp_path)
    state_file(tmp_path / "checkpoint-5", 5)
    state_file(tmp_path / "checkpoint-000005", 5)
    with pytest.raises(DataError, match="claim step"):
        rot.list_checkpoints(tmp_path)


# ----------------------------------------------------------------------------------------------
# reward_series: EMA by hand
# ----------------------------------------------------------------------------------------------


def write_metrics(run: Path, rewards: dict[int, float | None], extra_lines: list[str]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"step": s, "reward_mean": r, "loss": 0.0}) for s, r in rewards.items()]
    (run / "metrics.jsonl").write_text("\n".join([*extra_lines, *lines]) + "\n")


def test_reward_series_ema_by_hand(tmp_path: Path) -> None:
    run = tmp_path / "run"
    # A stale record for step 2 (a resumed run logged it again) and a line cut short by a kill.
    write_metrics(
        run, {0: 1.0, 1: 2.0, 2: 4.0, 3: 8.0}, ['{"step": 2, "reward_mean": 100.0}', '{"st']
    )
    state_file(run / "checkpoint-000002", 2)
    state_file(run / "checkpoint-000004", 4)
    series = rot.reward_series(run, ema=0.5)
    # Debiased EMA, w = 0.5: s_k = w s_{k-1} + (1-w) r_k from s_{-1} = 0, divided by 1 - w^(k+1).
    assert series.record_steps == [0, 1, 2, 3]
    np.testing.assert_allclose(series.raw, [1, 2, 4, 8])
    np.testing.assert_allclose(series.smoothed, [1.0, 1.25 / 0.75, 2.625 / 0.875, 5.3125 / 0.9375])
    # Checkpoint s holds the weights after s updates: the EMA after record s-1; step 0 gets
    # record 0 (the naive policy's own rollouts).
    assert series.at(0) == pytest.approx(1.0)
    assert series.at(1) == pytest.approx(1.0)
    assert series.at(2) == pytest.approx(5 / 3)
    assert series.at(4) == pytest.approx(17 / 3)
    assert series.checkpoint_steps == [0, 2, 4]
    assert series.at_checkpoints == pytest.approx({0: 1.0, 2: 5 / 3, 4: 17 / 3})
    with pytest.raises(DataError, match="end at step 3"):
        series.at(5)
    plain = rot.reward_series(run / "metrics.jsonl", ema=0.5, debias=False)
    np.testing.assert_allclose(plain.smoothed, [1.0, 1.5, 2.75, 5.375])
    raw = rot.reward_series(run, ema=0.0)
    np.testing.assert_allclose(raw.smoothed, raw.raw)
    json.dumps(series.to_dict(), allow_nan=False)
    assert "RewardSeries('reward_mean'" in repr(series)


def test_reward_series_from_history_and_gaps() -> None:
    history: list[dict[str, Any]] = [
        {"step": 0, "reward_mean": 2.0},
        {"step": 1, "reward_mean": None},
        {"step": 2, "reward_mean": 4.0},
    ]
    series = rot.reward_series(history, ema=0.5, debias=False, steps=[0, 3])
    # The step without a reward is skipped: the EMA runs over the records that have one.
    assert series.record_steps == [0, 2]
    np.testing.assert_allclose(series.smoothed, [2.0, 3.0])
    assert series.at(2) == pytest.approx(2.0)  # record 1 has no reward: the latest before it
    assert series.at_checkpoints == pytest.approx({0: 2.0, 3: 3.0})


def test_reward_series_errors(tmp_path: Path) -> None:
    write_metrics(tmp_path, {0: 1.0, 1: 2.0}, [])
    with pytest.raises(DataError, match="No record has a finite 'return'") as info:
        rot.reward_series(tmp_path, key="return")
    assert "reward_mean" in (info.value.hint or "")
    with pytest.raises(DataError, match="ema must be"):
        rot.reward_series(tmp_path, ema=1.0)
    with pytest.raises(DataError, match="does not exist"):
        rot.reward_series(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="metrics end"):
        rot.reward_series(tmp_path, steps=[0, 9])
    series = rot.reward_series(tmp_path)
    with pytest.raises(DataError, match="int >= 0"):
        series.at(-1)
    late = rot.reward_series([{"step": 4, "reward_mean": 1.0}], steps=[])
    with pytest.raises(DataError, match="first record"):
        late.at(2)


# ----------------------------------------------------------------------------------------------
# recruitment: Spearman, bootstrap, band
# ----------------------------------------------------------------------------------------------


def make_table(
    values: np.ndarray, steps: list[int], layers: list[int] | None = None
) -> rot.RotationTable:
    """A one-axis, one-vector table with the given ``[n_steps, n_layers]`` cosines."""
    layers = layers if layers is not None else list(range(values.shape[1]))
    return rot.RotationTable(
        steps=steps,
        layers=layers,
        names=["gold"],
        axes=["a"],
        cos={"a": {"gold": np.asarray(values, dtype=np.float64)}},
        separation=None,
        separation_classes=("gold", "mold"),
        report_layer=layers[0],
    )


def spearman_bootstrap(r: np.ndarray, y: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """The documented bootstrap, one resample at a time with scipy."""
    idx = np.random.default_rng(seed).integers(0, len(r), size=(n_boot, len(r)))
    values = []
    for b in idx:
        if np.all(r[b] == r[b][0]) or np.all(y[b] == y[b][0]):
            continue
        values.append(spearmanr(r[b], y[b]).statistic)
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def test_spearman_and_bootstrap_match_scipy() -> None:
    steps = [0, 5, 10, 15, 20, 25, 30, 35]
    rewards = {
        s: r for s, r in zip(steps, [-5.0, -3.0, -3.0, 0.0, 2.0, 1.0, 4.0, 6.0], strict=True)
    }
    rng = np.random.default_rng(3)
    y = np.stack(
        [
            np.linspace(0, 0.7, 8),  # monotone in step
            rng.normal(size=8),  # noise
            np.array([0.1, 0.1, 0.3, 0.2, 0.2, 0.5, 0.4, 0.4]),  # ties
            -(np.linspace(0, 0.3, 8) ** 2),
        ],
        axis=1,
    )
    rec = rot.recruitment(make_table(y, steps), rewards, n_boot=300, seed=11)
    r = np.array(list(rewards.values()))
    for j in range(4):
        assert rec.rho["a"]["cos_gold"][j] == pytest.approx(spearmanr(r, y[:, j]).statistic)
        lo, hi = spearman_bootstrap(r, y[:, j], 300, 11)
        assert rec.ci_low["a"]["cos_gold"][j] == pytest.approx(lo)
        assert rec.ci_high["a"]["cos_gold"][j] == pytest.approx(hi)
    # Reproducible by seed; another seed gives other intervals.
    again = rot.recruitment(make_table(y, steps), rewards, n_boot=300, seed=11)
    np.testing.assert_array_equal(again.ci_low["a"]["cos_gold"], rec.ci_low["a"]["cos_gold"])
    other = rot.recruitment(make_table(y, steps), rewards, n_boot=300, seed=12)
    assert not np.array_equal(other.ci_low["a"]["cos_gold"], rec.ci_low["a"]["cos_gold"])
    # A constant measure has no rank correlation.
    flat = rot.recruitment(make_table(np.ones((8, 1)), steps), rewards, n_boot=20)
    assert np.isnan(flat.rho["a"]["cos_gold"][0]) and not flat.recruited["a"]["cos_gold"][0]
    assert any("only 8 checkpoints" in n and "wide" in n for n in rec.notes)


def test_recruitment_band_definition() -> None:
    n = 12
    steps = list(range(0, 5 * n, 5))
    rewards = {s: float(k) for k, s in enumerate(steps)}
    up = np.linspace(0.0, 0.6, n)
    y = np.stack(
        [
            np.full(n, 0.2),  # 0: constant: no correlation, no growth
            np.linspace(0.5, 0.0, n),  # 1: follows the reward (rho = -1) but shrinks: not recruited
            up,  # 2-4: grow with the reward
            up * 0.9,
            up * 0.8,
            np.tile([0.0, 0.35], n // 2),  # 5: grows from first to last, but not with the reward
            np.linspace(0.0, 0.1, n),  # 6-7: recruited, a shorter run
            np.linspace(0.0, -0.1, n),  # (negative rho: recruited too, |cos| grows)
        ],
        axis=1,
    )
    rec = rot.recruitment(make_table(y, steps, layers=list(range(10, 18))), rewards, n_boot=400)
    rho, lo, hi = (t["a"]["cos_gold"] for t in (rec.rho, rec.ci_low, rec.ci_high))
    np.testing.assert_allclose(
        rec.growth["a"]["cos_gold"], [0, -0.5, 0.6, 0.54, 0.48, 0.35, 0.1, 0.1]
    )
    assert rho[1] == pytest.approx(-1.0) and rho[7] == pytest.approx(-1.0)
    assert lo[5] < 0 < hi[5]  # the alternating layer's CI includes 0
    assert rec.recruited["a"]["cos_gold"].tolist() == [
        False,
        False,
        True,
        True,
        True,
        False,
        True,
        True,
    ]
    # The band is the longest run of recruited layers (model layers 12-14); the growth band is
    # the half-maximum run around the peak growth (0.6 at layer 12: >= 0.3 through layer 15).
    assert rec.band["a"]["cos_gold"] == (12, 14)
    assert rec.growth_band["a"]["cos_gold"] == (12, 15)
    rows = rec.rows()
    assert len(rows) == 8 and [r["in_band"] for r in rows].count(True) == 3
    assert not any("checkpoints:" in note for note in rec.notes)  # 12 checkpoints: no warning
    json.dumps(rec.to_dict(), allow_nan=False)
    assert "band 12-14, growth band 12-15" in repr(rec)


def test_band_ties_and_empty() -> None:
    n = 10
    steps = list(range(n))
    rewards = {s: float(s) for s in steps}
    ramp = np.linspace(0, 1, n)
    # Two recruited runs of length 2: the one with more growth (layers 3-4) wins.
    y = np.stack([ramp * 0.1, ramp * 0.1, np.zeros(n), ramp, ramp, np.zeros(n)], axis=1)
    rec = rot.recruitment(make_table(y, steps), rewards, n_boot=100)
    assert rec.band["a"]["cos_gold"] == (3, 4)
    none = rot.recruitment(make_table(np.zeros((n, 2)), steps), rewards, n_boot=10)
    assert none.band["a"]["cos_gold"] is None and none.growth_band["a"]["cos_gold"] is None
    assert "band none, growth band none" in repr(none)


def test_recruitment_bad_inputs() -> None:
    table = make_table(np.zeros((3, 2)), [0, 5, 10])
    rewards = {0: 0.0, 5: 1.0, 10: 2.0}
    with pytest.raises(DataError, match="at least 3") as info:
        rot.recruitment(make_table(np.zeros((2, 2)), [0, 5]), rewards)
    assert info.value.hint
    with pytest.raises(DataError, match="No reward for step"):
        rot.recruitment(table, {0: 0.0, 5: 1.0})
    with pytest.raises(DataError, match="NaN"):
        rot.recruitment(table, {0: 0.0, 5: math.nan, 10: 1.0})
    with pytest.raises(DataError, match="n_boot"):
        rot.recruitment(table, rewards, n_boot=0)
    with pytest.raises(DataError, match="level"):
        rot.recruitment(table, rewards, level=1.5)
    constant = rot.recruitment(table, {0: 1.0, 5: 1.0, 10: 1.0}, n_boot=10)
    assert any("constant" in n for n in constant.notes)


# ----------------------------------------------------------------------------------------------
# checkpoint_vectors end to end on a tiny run
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_lora_run: Callable[..., Path]) -> Path:
    """A two-step LoRA run of the tiny Llama with a checkpoint after each step."""
    return tiny_lora_run(tmp_path_factory.mktemp("run"), MAZE, episodes_per_maze=3, lr=1e-2, seed=3)


@pytest.fixture(scope="module")
def trajectories() -> list[Any]:
    return wl.maze.synthetic_trajectories(MAZE, per_class=3, seed=7)


def fail(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the cache was not used")


@pytest.mark.filterwarnings("ignore:Extraction classes differ:RuntimeWarning")
def test_checkpoint_vectors_cache_resume_and_restore(
    tiny_run: Path, trajectories: list[Any], tmp_path: Path, monkeypatch: Any, one_thread: None
) -> None:
    base = wl.load_model("tiny-llama")
    ids = torch.randint(100, 1000, (1, 12))
    with torch.no_grad():
        before = base(ids)
    out = tmp_path / "rotation"
    series = rot.checkpoint_vectors(tiny_run, base, trajectories, out_dir=out, progress=False)
    assert series.steps == [0, 1, 2] and series.computed == [0, 1, 2] and series.cached == []
    assert series.checkpoints[0] is None and str(series.checkpoints[2]).endswith(
        "checkpoint-000002"
    )
    # The base model is naive again: same outputs, same identity.
    with torch.no_grad():
        assert torch.equal(base(ids), before)
    assert model_info(base).model_id == "tiny-llama-seed0"
    # Step 0 is a plain capture of the naive model; step 2 one of the checkpoint loaded afresh.
    naive = wl.welfare_vectors(
        wl.capture(wl.load_model("tiny-llama"), trajectories, progress=False)
    )
    trained = load_checkpoint(tiny_run / "checkpoint-000002", wl.load_model("tiny-llama"))
    step2 = wl.welfare_vectors(wl.capture(trained, trajectories, progress=False))
    for name in ("mold", "gold"):
        torch.testing.assert_close(series[0][name], naive[name], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(series[2][name], step2[name], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(series[2].gold, series[0].gold, atol=1e-4)  # training moved v
    assert series[0].metadata.role == "control" and series[1].metadata.role == "trained"
    assert series[1].metadata.model_id.endswith("checkpoint-000001")
    assert series.stats[2].counts == {"mold": 3, "gold": 3, "path": 3}

    # Cached: a second call neither captures nor loads a checkpoint.
    monkeypatch.setattr(rot, "capture", fail)
    monkeypatch.setattr(rot, "load_checkpoint", fail)
    again = rot.checkpoint_vectors(tiny_run, base, trajectories, out_dir=out, progress=False)
    assert again.cached == [0, 1, 2] and again.computed == []
    assert torch.equal(again[2].gold, series[2].gold)
    monkeypatch.undo()

    # Resumed: step 2 left unfinished (as by a kill) is the only one captured again.
    captured: list[str] = []
    real_capture = rot.capture

    def counting(model: Any, *args: Any, **kwargs: Any) -> Any:
        captured.append(model_info(model).model_id)
        return real_capture(model, *args, **kwargs)

    monkeypatch.setattr(rot, "capture", counting)
    record = out / "step-000002" / "fingerprint.json"
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "complete": False}))
    (out / "step-000002" / "vectors.safetensors").unlink()
    resumed = rot.checkpoint_vectors(tiny_run, base, trajectories, out_dir=out, progress=False)
    assert resumed.computed == [2] and resumed.cached == [0, 1]
    assert len(captured) == 1 and captured[0].endswith("checkpoint-000002")
    torch.testing.assert_close(resumed[2].gold, series[2].gold, atol=1e-6, rtol=1e-6)
    monkeypatch.undo()

    # Read back without a model, then the whole G analysis on it.
    loaded = rot.CheckpointSeries.load(out)
    assert loaded.steps == [0, 1, 2] and loaded.cached == [0, 1, 2]
    n_layers, d_model = series[0].gold.shape
    axes = {"naive_gold": series[0].select(["gold"]), "random": torch.randn(n_layers, d_model)}
    table = rot.rotation_table(loaded, axes)
    np.testing.assert_allclose(table.cos["naive_gold"]["gold"][0], 1.0, atol=1e-6)
    assert table.separation is not None and table.measures[-1] == "separation"
    rewards = rot.reward_series(tiny_run)
    assert rewards.checkpoint_steps == [0, 1, 2]
    rec = rot.recruitment(table, rewards, n_boot=50)
    assert any("only 3 checkpoints" in note for note in rec.notes)
    json.dumps(rec.to_dict(), allow_nan=False)
    json.dumps(series.to_dict(), allow_nan=False)
    assert "CheckpointSeries(steps=[0, 1, 2]" in repr(series)

    # Other trajectories: an error, not a silent overwrite; overwrite=True recomputes.
    other = wl.maze.synthetic_trajectories(MAZE, per_class=3, seed=8)
    with pytest.raises(DataError, match="trajectories") as info:
        rot.checkpoint_vectors(tiny_run, base, other, out_dir=out, progress=False)
    assert "overwrite=True" in (info.value.hint or "")
    redone = rot.checkpoint_vectors(
        tiny_run,
        base,
        other,
        out_dir=out,
        steps=[1],
        include_naive=False,
        overwrite=True,
        progress=False,
    )
    assert redone.steps == [1] and redone.computed == [1]
    with pytest.raises(DataError, match="different trajectory sets"):
        rot.CheckpointSeries.load(out)


@pytest.mark.filterwarnings("ignore:Extraction classes differ:RuntimeWarning")
def test_checkpoint_vectors_fresh_base_per_checkpoint(
    tiny_run: Path, trajectories: list[Any], tmp_path: Path, one_thread: None
) -> None:
    base = wl.load_model("tiny-llama")
    reused = rot.checkpoint_vectors(
        tiny_run,
        base,
        trajectories,
        out_dir=tmp_path / "a",
        steps=[2],
        include_naive=False,
        layers=[0, 1],
        progress=False,
    )
    fresh = rot.checkpoint_vectors(
        tiny_run,
        base,
        trajectories,
        out_dir=tmp_path / "b",
        steps=[2],
        include_naive=False,
        layers=[0, 1],
        reuse_model=False,
        progress=False,
    )
    assert reused.steps == fresh.steps == [2] and reused.layers == [0, 1]
    torch.testing.assert_close(reused[2].mold, fresh[2].mold, atol=1e-6, rtol=1e-6)


def test_checkpoint_vectors_bad_inputs(
    tiny_run: Path, trajectories: list[Any], tmp_path: Path
) -> None:
    base = wl.load_model("tiny-llama")
    out = tmp_path / "out"

    def raises(error: type[Exception], match: str, *args: Any, **kwargs: Any) -> None:
        with pytest.raises(error, match=match) as info:
            rot.checkpoint_vectors(*args, out_dir=out, progress=False, **kwargs)
        assert getattr(info.value, "hint", None)

    raises(DataError, "no complete checkpoint", tmp_path, base, trajectories)
    raises(DataError, "No checkpoint at step", tiny_run, base, trajectories, steps=[7])
    raises(DataError, "empty", tiny_run, base, [])
    raises(DataError, "may not set", tiny_run, base, trajectories, capture_kwargs={"layers": [0]})
    trained = load_checkpoint(tiny_run / "checkpoint-000001", wl.load_model("tiny-llama"))
    raises(TrainingError, "already a trained checkpoint", tiny_run, trained, trajectories)
    raises(TrainingError, "trained from", tiny_run, wl.load_model("tiny-qwen3"), trajectories)
    assert not out.exists() or not any(out.iterdir())  # nothing was captured
