"""Tests of welfare_lens.analysis.logit_lens (paper §3.2, A5; reference note B-10)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from welfare_lens.analysis import (
    LogitLensResult,
    TokenSetScore,
    final_norm,
    load_word_lists,
    logit_lens,
    logit_lens_layer,
    logit_lens_vectors,
    single_token_ids,
    token_set_score,
    welfare_token_score,
    welfare_token_sets,
)
from welfare_lens.errors import DataError, LayerError, ShapeError, VectorError
from welfare_lens.vectors import ConceptVectors, VectorMetadata


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every test here runs on one torch thread (see tests/conftest.py)."""


# ----------------------------------------------------------------------------------------------
# A hand-built model: d_model 2 (+1), vocabulary of 5, W_U chosen so that rankings can be read
# off by hand.
# ----------------------------------------------------------------------------------------------


class _Tok:
    def __len__(self) -> int:
        return 5

    def decode(self, ids: list[int]) -> str:
        return f"t{ids[0]}"


def _stub(norm: torch.nn.Module | None) -> Any:
    w_u = torch.tensor(
        [
            [1.0, 0.0, 0.0, -1.0, 0.5],
            [0.0, 1.5, 0.0, 0.0, -2.0],
            [0.3, 0.3, 0.3, 0.3, 0.3],
        ]
    )
    return SimpleNamespace(
        cfg=SimpleNamespace(d_model=3, n_layers=2, model_name="stub"),
        W_U=w_u,
        b_U=torch.zeros(5),
        ln_final=norm,
        tokenizer=_Tok(),
    )


def _rms(weight: list[float]) -> torch.nn.Module:
    ln = torch.nn.RMSNorm(3, eps=0.0)
    with torch.no_grad():
        ln.weight.copy_(torch.tensor(weight))
    return ln


def test_top_k_by_hand_raw_and_gain() -> None:
    model = _stub(_rms([2.0, 1.0, 0.5]))
    v = torch.tensor([1.0, 1.0, 0.0])
    # Raw W_U: v·W_U = [1, 1.5, 0, -1, -1.5].
    raw = logit_lens(model, v, k=2, norm=False)
    assert raw.top_ids == [1, 0] and raw.top_scores == pytest.approx([1.5, 1.0])
    assert raw.bottom_ids == [4, 3] and raw.bottom_scores == pytest.approx([-1.5, -1.0])
    assert raw.top_tokens == ["t1", "t0"] and raw.norm == "none" and raw.layer is None
    # Gain γ = (2, 1, 0.5): (γ⊙v)·W_U = [2, 1.5, 0, -2, -1]; the order changes.
    gain = logit_lens(model, v, k=2, norm=True)
    assert gain.top_ids == [0, 1] and gain.top_scores == pytest.approx([2.0, 1.5])
    assert gain.bottom_ids == [3, 4] and gain.bottom_scores == pytest.approx([-2.0, -1.0])
    assert gain.logits.tolist() == pytest.approx([2.0, 1.5, 0.0, -2.0, -1.0])
    assert gain.norm == "gain" and gain.vector_norm == pytest.approx(2**0.5)
    # Full norm on v: γ⊙v / RMS(v), RMS = sqrt(2/3).
    full = logit_lens(model, v, k=2, norm="full")
    assert full.logits.tolist() == pytest.approx((gain.logits / (2 / 3) ** 0.5).tolist())


def test_layernorm_gain_centres_and_ignores_bias() -> None:
    ln = torch.nn.LayerNorm(3, eps=0.0)
    with torch.no_grad():
        ln.weight.copy_(torch.tensor([2.0, 1.0, 0.5]))
        ln.bias.copy_(torch.tensor([5.0, -3.0, 1.0]))
    model = _stub(ln)
    measured = final_norm(model)
    assert measured.kind == "layernorm" and measured.centred and measured.verified
    assert measured.gain.tolist() == pytest.approx([2.0, 1.0, 0.5], abs=1e-5)
    v = torch.tensor([1.0, 2.0, 6.0])  # centred: [-2, -1, 3]
    expected = (torch.tensor([-2.0, -1.0, 3.0]) * torch.tensor([2.0, 1.0, 0.5])) @ model.W_U
    assert logit_lens(model, v, k=1, norm=True).logits.tolist() == pytest.approx(
        expected.tolist(), abs=1e-5
    )


def test_per_layer_vectors_default_to_floor_5l_6() -> None:
    model = _stub(_rms([1.0, 1.0, 1.0]))
    v = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    assert logit_lens(model, v, k=1).layer == logit_lens_layer(2) == 1
    res = logit_lens(model, v, layer=0, k=1, norm=False)
    assert res.layer == 0 and res.logits.tolist() == pytest.approx([0.3] * 5)
    assert logit_lens(model, v, layer=-2, k=1).layer == 0


def test_bad_inputs_raise() -> None:
    model = _stub(_rms([1.0, 1.0, 1.0]))
    with pytest.raises(VectorError):
        logit_lens(model, torch.zeros(3))
    with pytest.raises(VectorError):
        logit_lens(model, torch.tensor([1.0, float("nan"), 0.0]))
    with pytest.raises(ShapeError):
        logit_lens(model, torch.ones(4))
    with pytest.raises(ShapeError):
        logit_lens(model, torch.ones(3, 3))
    with pytest.raises(LayerError):
        logit_lens(model, torch.ones(2, 3), layer=2)
    with pytest.raises(DataError):
        logit_lens(model, torch.ones(3), k=0)
    with pytest.raises(DataError):
        logit_lens(model, torch.ones(3), norm="sometimes")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# Tiny bridges: W_U and the final norm from the TransformerBridge
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-qwen3", "tiny-gemma3"])
def perturbed(request: pytest.FixtureRequest) -> Any:
    """A tiny model of its own whose final-norm weight is random (not the all-ones init)."""
    from welfare_lens.models import load_model

    model = load_model(request.param, seed=3)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        w = model.ln_final.original_component.weight
        w.copy_(torch.randn(w.shape, generator=gen) * 0.5 + w.mean())
    return model


def test_final_norm_gain_matches_the_weights(perturbed: Any) -> None:
    measured = final_norm(perturbed)
    weight = perturbed.ln_final.original_component.weight.detach()
    # Gemma 3's RMSNorm multiplies by (1 + weight); Llama and Qwen3 by weight.
    expected = (
        1.0 + weight if "Gemma" in type(perturbed.ln_final.original_component).__name__ else weight
    )
    assert measured.kind == "rms" and measured.verified
    assert torch.allclose(measured.gain, expected, atol=1e-5)


def test_full_readout_of_a_residual_equals_the_models_logits(perturbed: Any) -> None:
    tokens = perturbed.to_tokens("The maze was impossible")
    with torch.no_grad():
        logits, cache = perturbed.run_with_cache(tokens)
    last = perturbed.cfg.n_layers - 1
    for pos in (-1, 1):
        r = cache[f"blocks.{last}.hook_resid_post"][0, pos]
        full = logit_lens(perturbed, r, norm="full", k=5)
        assert torch.allclose(full.logits, logits[0, pos], atol=1e-5)
        assert full.top_ids == logits[0, pos].topk(5).indices.tolist()
        # An RMSNorm with no bias: gain readout / RMS(r) is the same thing (b_U is zero here).
        gain = logit_lens(perturbed, r, norm=True, k=5)
        eps = final_norm(perturbed).eps
        rms = float((r.double() ** 2).mean().add(eps).sqrt())
        assert torch.allclose(gain.logits / rms, full.logits, atol=1e-5)
        assert gain.top_ids == full.top_ids
        raw = logit_lens(perturbed, r, norm=False, k=5)
        assert torch.allclose(raw.logits, (r @ perturbed.W_U).detach(), atol=1e-5)


def test_shapes_on_tiny_models(tiny_model: Any) -> None:
    n_layers, d = tiny_model.cfg.n_layers, tiny_model.cfg.d_model
    v = torch.randn(n_layers, d)
    res = logit_lens(tiny_model, v, k=7, name="mold")
    assert res.layer == (5 * n_layers) // 6
    assert len(res.top_ids) == len(res.bottom_ids) == len(res.top_tokens) == 7
    assert res.logits.shape == (len(tiny_model.tokenizer),)
    assert res.top_ids == res.logits.topk(7).indices.tolist()
    assert res.bottom_ids == (-res.logits).topk(7).indices.tolist()
    assert res.top_scores == sorted(res.top_scores, reverse=True)
    assert res.bottom_scores == sorted(res.bottom_scores)
    assert res.top_tokens[0] == tiny_model.tokenizer.decode([res.top_ids[0]])
    text = repr(res)
    assert "mold @ layer" in text and "promoted" in text and "suppressed" in text
    assert json.loads(json.dumps(res.to_dict()))["top_ids"] == res.top_ids


def test_logit_lens_vectors_checks_provenance(tiny_model: Any) -> None:
    from welfare_lens.models import model_info

    n_layers, d = tiny_model.cfg.n_layers, tiny_model.cfg.d_model
    meta = VectorMetadata(model_id=model_info(tiny_model).model_id, d_model=d, n_layers=n_layers)
    vectors = ConceptVectors(
        {"mold": torch.randn(n_layers, d), "gold": torch.randn(n_layers, d)}, meta
    )
    out = logit_lens_vectors(tiny_model, vectors, k=3)
    assert set(out) == {"mold", "gold"} and out["gold"].name == "gold"
    other = ConceptVectors({"mold": torch.randn(n_layers, d)}, VectorMetadata("other", d, n_layers))
    with pytest.raises(VectorError):
        logit_lens_vectors(tiny_model, other)
    assert set(logit_lens_vectors(tiny_model, other, allow_other_checkpoint=True)) == {"mold"}


# ----------------------------------------------------------------------------------------------
# Word lists and single tokens
# ----------------------------------------------------------------------------------------------


def test_shipped_word_lists_load() -> None:
    lists = load_word_lists()
    assert set(lists) >= {"failure", "success"}
    for name in ("failure", "success"):
        assert {"en", "zh"} <= set(lists[name])
        words = [w for ws in lists[name].values() for w in ws]
        assert len(words) >= 100 and all(isinstance(w, str) and w.strip() for w in words)
    # The paper's v_Mold examples (Table 2) are in the failure list.
    assert {"不存在", "是不可能", "不行", "除外"} <= set(lists["failure"]["zh"])
    assert "cannot" in lists["failure"]["en"] and "伟大" in lists["success"]["zh"]


def test_word_lists_reject_bad_files(tmp_path: Any) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError):
        load_word_lists(bad)
    bad.write_text(json.dumps({"sets": {"failure": {"en": ["no"]}}}), encoding="utf-8")
    with pytest.raises(DataError):
        load_word_lists(bad)
    bad.write_text(json.dumps({"sets": {"failure": {"en": [1]}, "success": {}}}), encoding="utf-8")
    with pytest.raises(DataError):
        load_word_lists(bad)


def test_single_token_filter_on_smollm2(smollm2_tok: Any) -> None:
    tok = smollm2_tok
    kept, dropped = single_token_ids(tok, ["cannot", "unable", "不存在", "imposible"])
    assert dropped == ["不存在", "imposible"]
    one = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    # 'cannot', ' cannot' and 'Cannot' are single SmolLM2 tokens; bare 'unable' is 'un'+'able'.
    assert kept["cannot"][:3] == [one("cannot")[0], one(" cannot")[0], one("Cannot")[0]]
    assert one(" unable")[0] in kept["unable"] and len(one("unable")) == 2
    no_space, _ = single_token_ids(tok, ["unable"], spaces=False, capitalize=False)
    assert no_space == {}


def test_welfare_token_sets_on_smollm2(smollm2_tok: Any) -> None:
    sets = welfare_token_sets(smollm2_tok)
    special = set(smollm2_tok.all_special_ids)
    fail, succ = set(sets.failure.token_ids), set(sets.success.token_ids)
    assert not fail & succ and not (fail | succ) & special
    assert len(fail) == len(sets.failure.token_ids)  # no duplicates
    for ts in (sets.failure, sets.success):
        assert 0 < ts.n_kept <= ts.n_words
        assert ts.n_words == sum(len(w) for w in load_word_lists()[ts.name].values())
        for i, s in zip(ts.token_ids, ts.tokens, strict=True):
            assert smollm2_tok.encode(s, add_special_tokens=False) == [i]
    assert "不存在" in sets.failure.dropped_words["zh"]  # three byte tokens in SmolLM2
    assert "kept" in repr(sets) and json.loads(json.dumps(sets.to_dict()))


# ----------------------------------------------------------------------------------------------
# Token-set score
# ----------------------------------------------------------------------------------------------


def _lens(logits: torch.Tensor) -> LogitLensResult:
    return LogitLensResult(
        [], [], [], [], [], [], layer=3, k=0, norm="none", name="x", logits=logits
    )


def test_token_set_score_by_hand(smollm2_tok: Any) -> None:
    sets = welfare_token_sets(smollm2_tok)
    logits = torch.zeros(len(smollm2_tok))
    logits[sets.failure.token_ids] = 2.0
    logits[sets.success.token_ids] = -1.0
    score = token_set_score(_lens(logits), sets, n_permutations=200)
    assert isinstance(score, TokenSetScore)
    assert score.score == pytest.approx(3.0)
    assert score.failure_mean == pytest.approx(2.0) and score.success_mean == pytest.approx(-1.0)
    assert score.perm_p == pytest.approx(1 / 201) and score.random_p == pytest.approx(1 / 201)
    assert score.failure_percentile > 0.99 and score.success_percentile < 0.01
    assert score.by_language["en"]["score"] == pytest.approx(3.0)
    assert score.n_failure == len(sets.failure) and score.layer == 3
    assert "failure − success" in repr(score)
    assert json.loads(json.dumps(score.to_dict()))["score"] == pytest.approx(3.0)


def test_token_set_score_null_is_calibrated(smollm2_tok: Any) -> None:
    sets = welfare_token_sets(smollm2_tok)
    gen = torch.Generator().manual_seed(0)
    ps = [
        token_set_score(
            _lens(torch.randn(len(smollm2_tok), generator=gen)), sets, n_permutations=100, seed=i
        ).perm_p
        for i in range(20)
    ]
    assert 0.2 < float(np.mean(ps)) < 0.8  # uniform p-values under the null have mean 0.5


def test_welfare_token_score_on_an_unembedding_direction(tiny_model: Any) -> None:
    sets = welfare_token_sets(tiny_model.tokenizer)
    w_u = tiny_model.W_U.detach()
    v = w_u[:, sets.failure.token_ids].mean(1) - w_u[:, sets.success.token_ids].mean(1)
    up = welfare_token_score(tiny_model, v, norm=False, sets=sets, n_permutations=200)
    down = welfare_token_score(tiny_model, -v, norm=False, sets=sets, n_permutations=200)
    assert up.score > 0 and up.perm_p < 0.05 and up.random_p < 0.05
    assert down.score == pytest.approx(-up.score, rel=1e-4)
    with pytest.raises(DataError):
        token_set_score(_lens(torch.zeros(10)), sets)


@pytest.mark.slow
def test_smollm2_full_readout_and_failure_direction(smollm2: Any) -> None:
    tokens = smollm2.to_tokens("I tried every path, but it was")
    with torch.no_grad():
        logits, cache = smollm2.run_with_cache(tokens)
    r = cache[f"blocks.{smollm2.cfg.n_layers - 1}.hook_resid_post"][0, -1]
    full = logit_lens(smollm2, r, norm="full", k=10)
    assert torch.allclose(full.logits, logits[0, -1], atol=1e-3)
    assert full.top_ids == logits[0, -1].topk(10).indices.tolist()
    norm = final_norm(smollm2)
    assert norm.kind == "rms" and norm.verified
    # The unembedding direction of ' cannot' read with the gain promotes ' cannot' strongly.
    cannot = smollm2.tokenizer.encode(" cannot", add_special_tokens=False)[0]
    res = logit_lens(smollm2, smollm2.W_U[:, cannot].detach(), k=50, norm=False)
    assert cannot in res.top_ids
    score = welfare_token_score(smollm2, smollm2.W_U[:, cannot].detach(), n_permutations=200)
    assert score.score > 0 and score.n_failure > 50 and score.n_success > 50
