"""Tests of welfare_lens.analysis.tracking (paper §5, A8; reference note B-8)."""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pytest
import torch

from welfare_lens.analysis import (
    ArithmeticItem,
    TrackingResult,
    auroc,
    cohens_d,
    correctness_conversations,
    load_arithmetic,
    track_correctness,
    track_outcomes,
)
from welfare_lens.analysis.tracking import (
    ConfidenceControl,
    confidence_tertiles,
    correctness_p_true,
    correctness_with_confidence,
)
from welfare_lens.capture import capture, project
from welfare_lens.chat import render_chat
from welfare_lens.errors import DataError, ShapeError, VectorError
from welfare_lens.maze import MazeConfig, synthetic_trajectories
from welfare_lens.vectors import welfare_vectors

CFG = MazeConfig(size=20, turns=3)


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every test here runs on one torch thread (see tests/conftest.py)."""


@pytest.fixture(scope="module")
def fresh() -> list[Any]:
    """Fresh Mold-, Gold- and Path-final trajectories (seed not used for any vectors)."""
    return synthetic_trajectories(CFG, per_class=5, seed=11, classes=("mold", "gold", "path"))


def _random_vectors(model: Any, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape = (model.cfg.n_layers, model.cfg.d_model)
    return {"mold": torch.randn(shape, generator=gen), "gold": torch.randn(shape, generator=gen)}


# ----------------------------------------------------------------------------------------------
# §5.1 maze outcomes
# ----------------------------------------------------------------------------------------------


def test_track_outcomes_counts_and_effect_sizes(tiny_model: Any, fresh: list[Any]) -> None:
    vectors = _random_vectors(tiny_model)
    layer = tiny_model.cfg.n_layers - 1
    res = track_outcomes(tiny_model, vectors, fresh, layer=-1)
    assert isinstance(res, TrackingResult)
    assert res.layer == layer and res.conditions == ("mold", "gold")
    assert res.n == {"mold": 5, "gold": 5} and res.info["skipped"] == 5
    assert set(res.projections) == {"mold", "gold"} and res.projections["mold"].shape == (10,)
    # Same scalar projections as capture.project at the last move: dot / |v|.
    kept = [t for t in fresh if t.label in ("mold", "gold")]
    ref = project(tiny_model, kept, vectors, layers=[layer], progress=False)
    assert len(set(res.groups)) == 10 and sorted(res.groups) == sorted(ref.groups)
    for name, v in vectors.items():
        expected = ref.dot[name][:, 0].double().numpy() / float(v[layer].double().norm())
        by_seed = dict(zip(ref.groups, expected, strict=True))
        want = np.array([by_seed[g] for g in res.groups])
        np.testing.assert_allclose(res.projections[name], want, rtol=1e-4, atol=1e-6)
        pos, neg = res.projections[name][res.mask("mold")], res.projections[name][res.mask("gold")]
        c = res.contrasts[name]
        assert c.d == pytest.approx(cohens_d(pos, neg))
        assert c.auroc == pytest.approx(auroc(pos, neg))
        assert c.mean_pos == pytest.approx(pos.mean()) and c.n_pos == 5 and c.n_neg == 5


def test_track_outcomes_with_concept_vectors(fresh: list[Any]) -> None:
    from welfare_lens.models import load_model

    model = load_model("tiny-llama")
    train = synthetic_trajectories(CFG, per_class=4, seed=3)
    v = welfare_vectors(capture(model, train, progress=False))
    res = track_outcomes(model, v, fresh, layer=1)
    assert set(res.contrasts) == {"mold", "gold"}
    assert res.info["vector_model_id"] == v.metadata.model_id
    single = track_outcomes(model, v, fresh, layer=1, names=["gold"], classes=("gold", "path"))
    assert set(single.contrasts) == {"gold"} and single.n == {"gold": 5, "path": 5}
    # One direction [d_model] works too, and gives the same projections.
    direct = track_outcomes(model, {"gold": v.at("gold", 1)}, fresh, layer=1)
    np.testing.assert_allclose(direct.projections["gold"], res.projections["gold"], rtol=1e-6)
    other = load_model("tiny-llama", seed=5)
    with pytest.raises(VectorError):
        track_outcomes(other, v, fresh, layer=1)
    assert track_outcomes(other, v, fresh, layer=1, allow_other_checkpoint=True).n["mold"] == 5


def test_track_outcomes_errors(fresh: list[Any]) -> None:
    from welfare_lens.models import load_model

    model = load_model("tiny-llama")
    vectors = _random_vectors(model)
    with pytest.raises(DataError):
        track_outcomes(model, vectors, [t for t in fresh if t.label == "path"], layer=0)
    with pytest.raises(DataError):  # one Gold trajectory is too few for Cohen's d
        one_gold = [t for t in fresh if t.label == "mold"] + [
            next(t for t in fresh if t.label == "gold")
        ]
        track_outcomes(model, vectors, one_gold, layer=0)
    with pytest.raises(VectorError):
        track_outcomes(model, vectors, fresh, layer=0, names=["path"])
    with pytest.raises(VectorError):
        track_outcomes(model, {"mold": torch.zeros(2, 64)}, fresh, layer=0)
    with pytest.raises(ShapeError):
        track_outcomes(model, {"mold": torch.ones(3, 64)}, fresh, layer=0)


# ----------------------------------------------------------------------------------------------
# §5.2 correctness
# ----------------------------------------------------------------------------------------------


def test_shipped_arithmetic_items_are_right() -> None:
    items = load_arithmetic()
    assert len(items) == 40 and len({i.id for i in items}) == 40
    ops = {"+": int.__add__, "-": int.__sub__, "x": int.__mul__, "/": int.__floordiv__}
    checked = 0
    for item in items:
        assert item.answer != item.wrong_answer and item.answer.isdigit()
        m = re.fullmatch(r"What is (\d+) ([-+x/]) (\d+)\?", item.question)
        if m:
            a, op, b = int(m[1]), m[2], int(m[3])
            assert int(item.answer) == ops[op](a, b), item
            checked += 1
    assert checked == 30  # the ten word problems were checked when they were written


def test_load_arithmetic_rejects_bad_files(tmp_path: Any) -> None:
    path = tmp_path / "items.json"
    path.write_text(json.dumps({"items": [{"question": "1+1?", "answer": "2"}]}), encoding="utf-8")
    with pytest.raises(DataError):
        load_arithmetic(path)
    path.write_text(
        json.dumps({"items": [{"question": "q", "answer": "2", "wrong_answer": "2"}]}),
        encoding="utf-8",
    )
    with pytest.raises(DataError):
        load_arithmetic(path)
    path.write_text("[", encoding="utf-8")
    with pytest.raises(DataError):
        load_arithmetic(path)


def test_correctness_conversations_are_truthful() -> None:
    item = ArithmeticItem("a", "addition", "What is 2 + 2?", "4", "5")
    convs = correctness_conversations([item], answer_template="It is {answer}.")
    assert [label for _, label, _ in convs] == ["correct", "incorrect"]
    right, wrong = convs[0][0], convs[1][0]
    assert [m["role"] for m in right] == ["user", "assistant", "user"]
    assert right[1]["content"] == "It is 4." and right[2]["content"] == "That's right"
    assert wrong[1]["content"] == "It is 5." and wrong[2]["content"] == "That's wrong"
    inverted = correctness_conversations([item], truthful=False)
    assert inverted[0][0][2]["content"] == "That's wrong" and inverted[0][1] == "correct"
    with pytest.raises(DataError):
        correctness_conversations([item], answer_template="no placeholder")


def test_track_correctness_counts_and_reading(tiny_model: Any) -> None:
    items = load_arithmetic()[:6]
    vectors = _random_vectors(tiny_model, seed=1)
    res = track_correctness(tiny_model, vectors, layer=1, items=items)
    assert res.n == {"correct": 6, "incorrect": 6} and res.groups == [
        0,
        0,
        1,
        1,
        2,
        2,
        3,
        3,
        4,
        4,
        5,
        5,
    ]
    assert res.position == "generation_prompt:mean" and res.info["feedback"] == [
        "That's right",
        "That's wrong",
    ]
    for name, c in res.contrasts.items():
        x = res.projections[name]
        assert c.d == pytest.approx(cohens_d(x[res.mask("correct")], x[res.mask("incorrect")]))
        assert c.auroc == pytest.approx(auroc(x[res.mask("correct")], x[res.mask("incorrect")]))
    # By hand for the first conversation: mean residual over the generation-prompt tokens.
    messages, _, _ = correctness_conversations(items[:1])[0]
    chat = render_chat(tiny_model.tokenizer, messages, add_generation_prompt=True)
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(chat.input_ids[None])
    resid = cache["blocks.1.hook_resid_post"][0]
    v = vectors["gold"][1].double()
    mean_proj = float(resid[chat.generation_prompt_mask].double().mean(0) @ v / v.norm())
    last_proj = float(resid[chat.generation_prompt_mask][-1].double() @ v / v.norm())
    assert res.projections["gold"][0] == pytest.approx(mean_proj, rel=1e-4, abs=1e-6)
    last = track_correctness(tiny_model, vectors, layer=1, items=items, reduce="last")
    assert last.projections["gold"][0] == pytest.approx(last_proj, rel=1e-4, abs=1e-6)


def test_tracking_result_serialises_and_standardises() -> None:
    from welfare_lens.models import load_model

    model = load_model("tiny-qwen3")
    res = track_correctness(model, _random_vectors(model), layer=0, items=load_arithmetic()[:4])
    z = res.standardized("mold")
    assert abs(z.mean()) < 1e-9 and z.std(ddof=1) == pytest.approx(1.0)
    out = json.loads(json.dumps(res.to_dict()))
    assert out["n"] == {"correct": 4, "incorrect": 4} and len(out["projections"]["gold"]) == 8
    assert "projections" not in res.to_dict(samples=False)
    text = repr(res)
    assert "correctness @ layer 0" in text and "d=" in text and "AUROC" in text
    assert "d=" in repr(res.contrasts["gold"])
    with pytest.raises(VectorError):
        res.standardized("path")
    with pytest.raises(DataError):
        track_correctness(model, _random_vectors(model), layer=0, reduce="first")  # type: ignore[arg-type]


@pytest.mark.slow
def test_smollm2_correctness_tracking_runs(smollm2: Any) -> None:
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(smollm2.cfg.n_layers, smollm2.cfg.d_model, generator=gen)
    res = track_correctness(smollm2, {"gold": v}, layer=20, items=load_arithmetic()[:10])
    assert res.n == {"correct": 10, "incorrect": 10}
    assert np.isfinite(res.contrasts["gold"].d)


# ----------------------------------------------------------------------------------------------
# Figure 7: confidence-tertile control
# ----------------------------------------------------------------------------------------------

# Twelve samples, P(True) = 0.05 .. 0.60, given out of order. np.quantile (linear) puts the
# tertile edges at 0.05 + 0.05 * 11/3 = 0.2333... and 0.05 + 0.05 * 22/3 = 0.41666...; each
# tertile holds two correct and two incorrect samples with these projections on "gold":
#   bin 0: correct 1, 3 (mean 2, var 2); incorrect 0, 2 (mean 1, var 2); pooled SD sqrt(2)
#          -> d = 1 / sqrt(2)
#   bin 1: correct 4, 6 (mean 5, var 2); incorrect 1, 1 (mean 1, var 0); pooled SD 1 -> d = 4
#   bin 2: correct 0, 1 (mean .5, var .5); incorrect 2, 5 (mean 3.5, var 4.5); pooled SD
#          sqrt(2.5) -> d = -3 / sqrt(2.5)
_HAND = [  # (P(True), correct, projection on gold, tertile by hand)
    (0.40, False, 1.0, 1),
    (0.05, True, 1.0, 0),
    (0.55, False, 2.0, 2),
    (0.10, True, 3.0, 0),
    (0.25, True, 4.0, 1),
    (0.60, False, 5.0, 2),
    (0.15, False, 0.0, 0),
    (0.30, True, 6.0, 1),
    (0.45, True, 0.0, 2),
    (0.20, False, 2.0, 0),
    (0.35, False, 1.0, 1),
    (0.50, True, 1.0, 2),
]
_HAND_D = [1 / np.sqrt(2.0), 4.0, -3 / np.sqrt(2.5)]


def _hand_rows() -> list[dict[str, Any]]:
    return [{"correct": ok, "projections": {"gold": x, "mold": -x}} for _, ok, x, _ in _HAND]


def test_confidence_tertiles_match_hand_computation() -> None:
    p = [row[0] for row in _HAND]
    control = confidence_tertiles(_hand_rows(), p)
    assert isinstance(control, ConfidenceControl) and control.n_bins == 3
    assert control.edges == pytest.approx([0.05, 0.05 + 0.05 * 11 / 3, 0.05 + 0.05 * 22 / 3, 0.6])
    assert control.assignment.tolist() == [row[3] for row in _HAND]
    assert control.d("gold") == pytest.approx(_HAND_D, rel=1e-12)
    assert control.d("mold") == pytest.approx([-d for d in _HAND_D], rel=1e-12)
    means = [(2.0, 1.0), (5.0, 1.0), (0.5, 3.5)]
    for cbin, (m_ok, m_bad), p_mean in zip(control.bins, means, (0.125, 0.325, 0.525), strict=True):
        gold = cbin.contrasts["gold"]
        assert (gold.n_pos, gold.n_neg, cbin.n) == (2, 2, 4) and cbin.note == ""
        assert (gold.mean_pos, gold.mean_neg) == pytest.approx((m_ok, m_bad))
        assert cbin.mean_p_true == pytest.approx(p_mean)
    # bin 1: every correct sample (4, 6) is above every incorrect one (1, 1).
    assert control.bins[1].contrasts["gold"].auroc == 1.0
    # Overall d ignores confidence: correct [1,3,4,6,0,1] vs incorrect [1,2,5,0,2,1].
    ok = np.array([1, 3, 4, 6, 0, 1.0])
    bad = np.array([1, 2, 5, 0, 2, 1.0])
    pooled = np.sqrt((5 * ok.var(ddof=1) + 5 * bad.var(ddof=1)) / 10)
    assert control.overall["gold"].d == pytest.approx((ok.mean() - bad.mean()) / pooled)
    rows = control.rows()
    assert len(rows) == 6 and rows[2]["bin"] == 1 and rows[2]["vector"] == "gold"
    assert rows[2]["n_correct"] == 2 and rows[2]["mean_incorrect"] == pytest.approx(1.0)
    assert rows[2]["d"] == pytest.approx(4.0)
    # p_true() dicts work as well as floats; a TrackingResult keeps its conditions.
    same = confidence_tertiles(_hand_rows(), [{"p_true": x} for x in p], names=["gold"])
    assert same.vectors == ["gold"] and same.d("gold") == pytest.approx(_HAND_D)


def test_confidence_tertiles_edge_values_go_to_the_lower_bin() -> None:
    rows = [{"label": lab, "projections": {"v": x}} for lab, x in
            [("correct", 1.0), ("incorrect", 2.0), ("correct", 3.0), ("incorrect", 4.0)]]  # fmt: skip
    # Median 0.5: the bins are [0, 0.5] and (0.5, 1], so both 0.5s are in bin 0.
    control = confidence_tertiles(rows, [0.0, 0.5, 0.5, 1.0], n_bins=2)
    assert control.edges.tolist() == [0.0, 0.5, 1.0]
    assert control.assignment.tolist() == [0, 0, 0, 1]
    assert control.bins[0].n == 3 and control.bins[1].n == 1
    # Bin 0 has 2 correct and 1 incorrect: means are defined, d is not.
    first = control.bins[0].contrasts["v"]
    assert (first.mean_pos, first.mean_neg) == (2.0, 2.0) and np.isnan(first.d)
    assert "d undefined" in control.bins[0].note


def test_confidence_tertiles_ties_and_empty_bins_give_nan_not_errors() -> None:
    labels = ["correct", "correct", "incorrect", "correct", "incorrect", "incorrect", "correct"]
    labels += ["correct", "incorrect"]
    rows = [{"label": lab, "projections": {"gold": float(i)}} for i, lab in enumerate(labels)]
    p = [0.5] * 7 + [0.9] * 2  # the 1/3 and 2/3 quantiles (positions 2.67, 5.33) are both 0.5
    control = confidence_tertiles(rows, p)
    assert control.edges.tolist() == [0.5, 0.5, 0.5, 0.9]
    assert control.assignment.tolist() == [0] * 7 + [2] * 2
    empty = control.bins[1]
    assert empty.n == 0 and np.isnan(empty.mean_p_true) and np.isnan(empty.contrasts["gold"].d)
    assert np.isnan(empty.contrasts["gold"].mean_pos) and "tied" in empty.note
    top = control.bins[2].contrasts["gold"]
    assert (top.n_pos, top.n_neg) == (1, 1) and np.isnan(top.d) and np.isnan(top.sd_pos)
    assert (top.mean_pos, top.mean_neg) == (7.0, 8.0) and top.auroc == 0.0
    # Bin 0: correct 0, 1, 3, 6 (mean 2.5, var 7) vs incorrect 2, 4, 5 (mean 11/3, var 7/3).
    pooled = np.sqrt((3 * 7.0 + 2 * 7 / 3) / 5)
    assert control.d("gold")[0] == pytest.approx((2.5 - 11 / 3) / pooled)
    assert sum("coincide" in note for note in control.notes) == 1
    assert "2 pair(s)" in control.notes[0]
    assert any(note.startswith("bin 1 is empty") for note in control.notes)
    out = json.loads(json.dumps(control.to_dict(), allow_nan=False))
    assert out["bins"][1]["contrasts"]["gold"]["d"] == "nan" and out["assignment"][-1] == 2
    text = repr(control)
    assert "bin 1" in text and "note:" in text and "d=" in text


def test_confidence_tertiles_bad_input() -> None:
    rows, p = _hand_rows(), [row[0] for row in _HAND]
    with pytest.raises(ShapeError, match="12 samples") as err:
        confidence_tertiles(rows, p[:-1])
    assert err.value.hint
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        confidence_tertiles(rows, [*p[:-1], 1.2])
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        confidence_tertiles(rows, [*p[:-1], float("nan")])
    with pytest.raises(DataError, match="P\\(True\\)"):
        confidence_tertiles(rows, [{"p": 0.5}] * 12)
    for bad_bins in (0, True, 2.5):
        with pytest.raises(DataError, match="n_bins"):
            confidence_tertiles(rows, p, n_bins=bad_bins)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="label"):
        confidence_tertiles([{"projections": {"v": 1.0}}], [0.5])
    with pytest.raises(DataError, match="maybe"):
        confidence_tertiles([{"label": "maybe", "projections": {"v": 1.0}}], [0.5])
    with pytest.raises(DataError, match="projections"):
        confidence_tertiles([{"correct": True}], [0.5])
    with pytest.raises(DataError, match="No samples"):
        confidence_tertiles([], [])
    with pytest.raises(VectorError) as verr:
        confidence_tertiles(rows, p, names=["path"])
    assert verr.value.hint
    control = confidence_tertiles(rows, p)
    with pytest.raises(VectorError):
        control.d("path")


def test_confidence_tertiles_accept_a_tracking_result() -> None:
    x = np.array([row[2] for row in _HAND])
    result = TrackingResult(
        analysis="correctness",
        layer=3,
        position="generation_prompt:mean",
        conditions=("correct", "incorrect"),
        labels=["correct" if row[1] else "incorrect" for row in _HAND],
        groups=list(range(12)),
        projections={"gold": x},
        contrasts={},
        model_id="hand",
    )
    control = confidence_tertiles(result, np.array([row[0] for row in _HAND]))
    assert control.tracking is result and control.d("gold") == pytest.approx(_HAND_D)
    assert "layer 3" in repr(control) and "model=hand" in repr(control)
    assert control.to_dict(samples=False)["tracking"]["layer"] == 3


def test_correctness_with_confidence_end_to_end() -> None:
    from welfare_lens.models import load_model
    from welfare_lens.steering.confidence import confidence_messages, true_false_token_ids

    model = load_model("tiny-llama")
    items = load_arithmetic()[:6]
    vectors = _random_vectors(model, seed=2)
    control = correctness_with_confidence(model, vectors, layer=1, items=items)
    tracked = track_correctness(model, vectors, layer=1, items=items)
    assert control.tracking is not None and control.labels == tracked.labels
    for name in ("mold", "gold"):
        assert control.tracking.projections[name] == pytest.approx(tracked.projections[name])
    # P(True) by hand for the wrong answer of item 0 (conversation 1): the two-logit softmax at
    # the last position of [question][answer][verification question] + generation prompt.
    t_id, f_id = true_false_token_ids(model.tokenizer)
    chat = render_chat(
        model.tokenizer,
        confidence_messages(items[0].question, items[0].wrong_answer),
        add_generation_prompt=True,
    )
    with torch.no_grad():
        logits = model(chat.input_ids[None])[0, -1].double()
    expected = torch.softmax(logits[[t_id, f_id]], dim=0)[0].item()
    assert control.p_true[1] == pytest.approx(expected, abs=1e-5)
    assert control.p_true == pytest.approx(correctness_p_true(model, items), abs=1e-9)
    # Bins by hand from the P(True) values; d per bin from the projections.
    edges = np.quantile(control.p_true, [0, 1 / 3, 2 / 3, 1])
    assert control.edges == pytest.approx(edges)
    hand_bins = [int(np.sum(p > edges[1:-1])) for p in control.p_true]
    assert control.assignment.tolist() == hand_bins
    x, labels = tracked.projections["gold"], np.array(tracked.labels)
    for i, cbin in enumerate(control.bins):
        ok = x[(control.assignment == i) & (labels == "correct")]
        bad = x[(control.assignment == i) & (labels == "incorrect")]
        assert (cbin.contrasts["gold"].n_pos, cbin.contrasts["gold"].n_neg) == (ok.size, bad.size)
        if ok.size >= 2 and bad.size >= 2:
            assert cbin.contrasts["gold"].d == pytest.approx(cohens_d(ok, bad))
        else:
            assert np.isnan(cbin.contrasts["gold"].d) and cbin.note
    assert sum(b.n for b in control.bins) == 12
    json.dumps(control.to_dict(), allow_nan=False)
