"""Pre-existence (A1 finding 6): the same vectors steer several models; slopes against α."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from welfare_lens.chat import render_chat
from welfare_lens.errors import DataError, ModelMismatchError, ShapeError, VectorError
from welfare_lens.models import model_info
from welfare_lens.steering import active_steering, assistant_positions
from welfare_lens.steering.pre_existence import (
    EVALUATIONS,
    PreExistenceResult,
    default_evaluation,
    pre_existence,
)
from welfare_lens.vectors import ConceptVectors, VectorMetadata

PROMPT = "What do you think of 📐?"


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every test here runs on one torch thread (see tests/conftest.py)."""


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    """Three checkpoints of one architecture: tiny Llamas with different random weights."""
    from welfare_lens.models import load_model

    return {
        "trained": load_model("tiny-llama", seed=0),
        "naive": load_model("tiny-llama", seed=1),
        "pretrain": load_model("tiny-llama", seed=2),
    }


def _vectors(
    model_id: str = "tiny-llama-seed0",
    *,
    d_model: int = 64,
    n_layers: int = 2,
    seed: int = 0,
    l_star: Any = None,
) -> ConceptVectors:
    gen = torch.Generator().manual_seed(seed)
    extra = {} if l_star is None else {"l_star": l_star}
    meta = VectorMetadata(model_id=model_id, d_model=d_model, n_layers=n_layers, extra=extra)
    return ConceptVectors(
        {
            "mold": torch.randn(n_layers, d_model, generator=gen),
            "gold": torch.randn(n_layers, d_model, generator=gen),
        },
        meta,
    )


class _Probe:
    """A cheap evaluation: logits of one steered forward pass; records what steered which model."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[str, int, float, float, float]]]] = []

    def __call__(self, model: Any) -> list[dict[str, Any]]:
        steering = [
            (r.label, r.layer, r.nominal_alpha, r.alpha, r.vector_norm) for r in active_steering()
        ]
        self.calls.append((model_info(model).model_id, steering))
        chat = render_chat(
            model.tokenizer, [{"role": "user", "content": PROMPT}], add_generation_prompt=True
        )
        with torch.no_grad(), assistant_positions(chat.generation_prompt_mask):
            logits = model(chat.input_ids[None])
        score = float(logits[0, -1, :8].sum())
        # Three "samples" with a spread, so the residuals (and the SE) are not zero.
        return [
            {"prompt": PROMPT, "sample": s, "score": score + 0.5 * s * s, "incoherent": False,
             "text": ""}
            for s in range(3)
        ]  # fmt: skip


def _hand_ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    dx = x - x.mean()
    slope = float(dx @ (y - y.mean()) / (dx @ dx))
    resid = y - y.mean() - slope * dx
    return slope, math.sqrt(float(resid @ resid) / (x.size - 2) / float(dx @ dx))


def test_every_model_is_steered_with_the_given_vectors(models: dict[str, Any]) -> None:
    vectors = _vectors(l_star={"mold": 1, "gold": 0})  # ℓ* from the metadata
    with pytest.raises(VectorError):  # another checkpoint needs allow_other_checkpoint=True
        vectors.check_compatible(models["naive"])
    probe = _Probe()
    res = pre_existence(vectors, models, evaluations={"probe": probe}, alphas=(-2, 0, 2))
    assert isinstance(res, PreExistenceResult)
    assert res.models == {k: f"tiny-llama-seed{i}" for i, k in enumerate(models)}
    assert res.layers == {"mold": 1, "gold": 0} and res.vectors == ["mold", "gold"]
    # Per model: mold at -2, 0, 2 (layer 1), then gold at -2, 2 (α = 0 is shared).
    assert len(probe.calls) == 3 * 5
    for i, key in enumerate(models):
        mine = [s for mid, s in probe.calls if mid == f"tiny-llama-seed{i}"]
        assert sum(not s for s in mine) == 1, key
        seen = sorted((label, layer, nominal) for s in mine for label, layer, nominal, _, _ in s)
        assert seen == [("gold", 0, -2.0), ("gold", 0, 2.0), ("mold", 1, -2.0), ("mold", 1, 2.0)]
    for _, steering in probe.calls:
        for label, layer, nominal, alpha, norm in steering:
            assert alpha == nominal  # trained vectors: no norm matching
            assert norm == pytest.approx(float(vectors[label][layer].double().norm()), rel=1e-6)
    # Steering changes the score on every model; α = 0 differs between models.
    for key in models:
        rows = res.table.where(model=key, vector="mold", sample=0)
        assert len({r["score"] for r in rows}) == 3
    base = {r["model"]: r["score"] for r in res.table.where(alpha=0.0, sample=0)}
    assert len(set(base.values())) == 3


def test_slopes_equal_hand_ols_on_the_rows(models: dict[str, Any]) -> None:
    vectors = _vectors(seed=3)
    res = pre_existence(
        vectors, models, evaluations={"probe": _Probe()}, layer=1, alphas=(-4, -2, 0, 2, 4)
    )
    table = res.rows(reference="trained")
    assert len(table) == 3 * 1 * 2
    for row in table:
        members = res.table.where(model=row["model"], evaluation="probe", vector=row["vector"])
        x = np.array([r["alpha"] for r in members], dtype=float)
        y = np.array([r["score"] for r in members], dtype=float)
        assert x.size == 15 and row["n"] == 15
        slope, se = _hand_ols(x, y)
        assert row["slope"] == pytest.approx(slope, rel=1e-10)
        assert row["se"] == pytest.approx(se, rel=1e-10)
        assert res.slope(row["model"], "probe", row["vector"]) == pytest.approx((slope, se))
        assert row["layer"] == 1 and row["role"] == "trained"
        ref = res.slope("trained", "probe", row["vector"]).slope
        assert row["ratio"] == pytest.approx(slope / ref)
    assert all(r["ratio"] == pytest.approx(1.0) for r in table if r["model"] == "trained")
    assert "ratio" not in res.rows()[0]
    out = json.loads(json.dumps(res.to_dict(samples=True), allow_nan=False))
    assert len(out["slopes"]) == 6 and len(out["rows"]) == 3 * 2 * 15
    text = repr(res)
    assert "probe" in text and "naive" in text and "±" in text
    with pytest.raises(DataError):
        res.slope("naive", "sentiment", "mold")
    with pytest.raises(DataError):
        res.rows(reference="base")


def test_norm_matched_controls(models: dict[str, Any]) -> None:
    vectors = _vectors(seed=4)
    control = _vectors("tiny-llama-seed1", seed=5)
    probe = _Probe()
    two = {"trained": models["trained"], "naive": models["naive"]}
    res = pre_existence(
        vectors,
        two,
        evaluations={"probe": probe},
        layer={"mold": 1, "gold": 1},
        control=control,
        alphas=(-4, 0, 4),
    )
    assert res.vectors == ["mold", "gold", "u_mold", "u_gold"]
    assert res.roles["u_gold"] == "control" and res.layers["u_gold"] == 1
    # A6: the vectors' own (trained) checkpoint is never steered with controls.
    assert res.info["control_skipped"] == ["trained"]
    trained_calls = [s for mid, s in probe.calls if mid == "tiny-llama-seed0"]
    assert len(trained_calls) == 1 + 2 * 2
    assert not any(label.startswith("u_") for s in trained_calls for label, *_ in s)
    # Naive: one shared baseline, then 4 vectors × 2 non-zero α.
    assert len(probe.calls) - len(trained_calls) == 1 + 4 * 2
    for row in res.table.where(role="control"):
        name = row["vector"][2:]
        beta = row["alpha"] * float(vectors[name][1].norm()) / float(control[name][1].norm())
        assert row["beta"] == pytest.approx(beta, rel=1e-6)
    for _, steering in probe.calls:
        for label, _, nominal, alpha, _ in steering:
            if label.startswith("u_"):
                v, u = vectors[label[2:]][1].norm(), control[label[2:]][1].norm()
                assert alpha == pytest.approx(nominal * float(v / u), rel=1e-6)
    assert len(res.rows()) == 2 + 4 and {r["model"] for r in res.rows()} == set(two)
    with_ratio = res.rows(reference="trained")
    assert all(math.isnan(r["ratio"]) for r in with_ratio if r["role"] == "control")
    assert "—" in repr(res)


def test_resumes_from_out_dir(models: dict[str, Any], tmp_path: Path) -> None:
    vectors = _vectors(seed=6)
    two = {"trained": models["trained"], "naive": models["naive"]}
    kwargs: dict[str, Any] = {"layer": 0, "alphas": (-2, 0, 2), "out_dir": tmp_path}
    first = pre_existence(vectors, two, evaluations={"probe": _Probe()}, **kwargs)
    assert (tmp_path / "trained" / "probe.jsonl").exists()
    assert (tmp_path / "naive" / "probe.jsonl").exists()
    again = _Probe()
    second = pre_existence(vectors, two, evaluations={"probe": again}, **kwargs)
    assert again.calls == []  # every condition read back from the sweep files
    assert len(second.table) == len(first.table) and second.slopes.keys() == first.slopes.keys()
    for key, slope in first.slopes.items():
        assert second.slopes[key] == pytest.approx(slope, rel=1e-12)
    # A new α is the only work left to do.
    more = _Probe()
    pre_existence(vectors, two, evaluations={"probe": more}, **{**kwargs, "alphas": (-2, 0, 2, 4)})
    assert len(more.calls) == 2 * 2  # mold and gold at α = 4, on both models


def test_d_model_mismatch_names_both_models(models: dict[str, Any]) -> None:
    probe = _Probe()
    narrow = _vectors("narrow-source", d_model=32, l_star=1)
    with pytest.raises(ModelMismatchError) as err:
        pre_existence(narrow, {"naive": models["naive"]}, evaluations={"probe": probe})
    message = str(err.value)
    assert "narrow-source" in message and "'naive'" in message and "tiny-llama-seed1" in message
    assert "d_model=32" in message and "d_model=64" in message and err.value.hint
    assert isinstance(err.value, ShapeError) and probe.calls == []
    # Every model is checked before anything runs, even when an earlier one fits.
    odd = SimpleNamespace(cfg=SimpleNamespace(n_layers=2, d_model=32, model_name="odd-model"))
    with pytest.raises(ModelMismatchError, match="'odd' \\('odd-model'\\)"):
        pre_existence(
            _vectors(l_star=1),
            {"trained": models["trained"], "odd": odd},
            evaluations={"probe": probe},
        )
    deeper = _vectors("deep", n_layers=3, l_star=1)
    with pytest.raises(ModelMismatchError, match="n_layers=3"):
        pre_existence(deeper, {"trained": models["trained"]}, evaluations={"probe": probe})
    mapping = {"gold": torch.randn(2, 48)}
    with pytest.raises(ModelMismatchError, match="d_model=48"):
        pre_existence(mapping, {"naive": models["naive"]}, evaluations={"probe": probe}, layer=1)
    assert probe.calls == []


def test_unknown_evaluation_and_other_bad_input(models: dict[str, Any]) -> None:
    vectors = _vectors(l_star=1)
    naive = {"naive": models["naive"]}
    with pytest.raises(DataError, match="Unknown evaluation 'vibes'") as err:
        pre_existence(vectors, naive, evaluations=("sentiment", "vibes"))
    assert err.value.hint is not None and "backtracking" in err.value.hint
    with pytest.raises(DataError, match="Unknown evaluation"):
        default_evaluation("Sentiment")
    assert all(callable(default_evaluation(name)) for name in EVALUATIONS)
    probe = _Probe()
    with pytest.raises(DataError, match="non-empty"):
        pre_existence(vectors, {}, evaluations={"probe": probe})
    with pytest.raises(DataError, match="No evaluations"):
        pre_existence(vectors, naive, evaluations=())
    with pytest.raises(DataError, match="not a function"):
        pre_existence(vectors, naive, evaluations={"probe": 3})  # type: ignore[dict-item]
    with pytest.raises(DataError, match="steering layer") as layer_err:
        pre_existence(_vectors(), naive, evaluations={"probe": probe})
    assert layer_err.value.hint is not None and "l_star" in layer_err.value.hint
    with pytest.raises(DataError, match="'gold'"):
        pre_existence(_vectors(), naive, evaluations={"probe": probe}, layer={"mold": 1})
    with pytest.raises(DataError, match="2 distinct"):
        pre_existence(vectors, naive, evaluations={"probe": probe}, alphas=(2, 2))
    with pytest.raises(VectorError, match="path"):
        pre_existence(vectors, naive, evaluations={"probe": probe}, names=["path"])
    with pytest.raises(VectorError):
        pre_existence("v", naive, evaluations={"probe": probe}, layer=1)  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match="Control"):
        pre_existence(
            vectors,
            naive,
            evaluations={"probe": probe},
            control={"mold": torch.randn(2, 32), "gold": torch.randn(2, 32)},
        )
    assert probe.calls == []


def test_builtin_confidence_evaluation_end_to_end(models: dict[str, Any]) -> None:
    vectors = _vectors(seed=7)
    two = {"trained": models["trained"], "pretrain": models["pretrain"]}
    res = pre_existence(vectors, two, evaluations=("confidence",), layer=1, alphas=(-4, 0, 4))
    assert res.evaluations == ["confidence"] and res.info["tags"] == {
        "confidence": "confidence@quick"
    }
    for key in two:
        rows = res.table.where(model=key, vector="gold")
        assert len(rows) == 80 * 3  # 40 questions × (correct, wrong) × 3 α
        assert all(0.0 <= r["score"] <= 1.0 for r in rows)
        by_alpha = {a: [r["score"] for r in rows if r["alpha"] == a] for a in (-4.0, 0.0, 4.0)}
        assert by_alpha[4.0] != by_alpha[0.0] and by_alpha[-4.0] != by_alpha[0.0]
        x = np.array([r["alpha"] for r in rows], dtype=float)
        y = np.array([r["score"] for r in rows], dtype=float)
        assert res.slope(key, "confidence", "gold").slope == pytest.approx(_hand_ols(x, y)[0])
    assert "confidence" in repr(res)
