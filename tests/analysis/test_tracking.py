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
