"""Sentiment control vectors and the sentiment-residual vector (paper appendix F)."""

from __future__ import annotations

import difflib
import json
from typing import Any

import numpy as np
import pytest
import torch

from welfare_lens.analysis import sentiment_vectors as sv
from welfare_lens.chat import render_chat
from welfare_lens.errors import DataError, LayerError, ShapeError, VectorError
from welfare_lens.vectors import ConceptVectors, VectorMetadata


def _meta(n_layers: int, d: int, **kw: Any) -> VectorMetadata:
    return VectorMetadata(model_id="m", d_model=d, n_layers=n_layers, **kw)


def test_sentiment_pairs_schema() -> None:
    pairs = sv.load_sentiment_pairs()
    assert len(pairs) >= 60
    assert len({p.id for p in pairs}) == len(pairs)
    for p in pairs:
        assert p.positive != p.negative and p.domain
        # CAD-style: the negative review is a minimal edit of the positive one.
        ratio = difflib.SequenceMatcher(None, p.positive.split(), p.negative.split()).ratio()
        assert ratio >= 0.4, p


def test_load_sentiment_pairs_errors(tmp_path: Any) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"pairs": [{"positive": "good", "negative": "good"}]}), "utf-8")
    with pytest.raises(DataError, match="same"):
        sv.load_sentiment_pairs(path)
    path.write_text(json.dumps({"pairs": [{"positive": "good"}]}), "utf-8")
    with pytest.raises(DataError, match="malformed"):
        sv.load_sentiment_pairs(path)


def test_sentiment_residual_is_orthogonal_and_norm_matched() -> None:
    g = torch.Generator().manual_seed(0)
    v = torch.randn(4, 16, generator=g, dtype=torch.float64)
    a = torch.randn(4, 16, generator=g, dtype=torch.float64)
    b = torch.randn(4, 16, generator=g, dtype=torch.float64)
    r = sv.sentiment_residual(v, [a, b])
    assert r.shape == v.shape
    torch.testing.assert_close((r * a).sum(-1), torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close((r * b).sum(-1), torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(r.norm(dim=-1), v.norm(dim=-1))
    # Same direction as v minus its least-squares projection on span(a, b).
    for layer in range(4):
        basis = torch.stack([a[layer], b[layer]], dim=1)
        coef = torch.linalg.lstsq(basis, v[layer]).solution
        resid = v[layer] - basis @ coef
        torch.testing.assert_close(r[layer], resid * v[layer].norm() / resid.norm())
    # One vector, a redundant span vector, float32.
    one = sv.sentiment_residual(v[0].float(), [a[0].float(), 2 * a[0].float()])
    assert one.dtype == torch.float32 and abs(float(one @ a[0].float())) < 1e-4
    with pytest.raises(VectorError):
        sv.sentiment_residual(a + 2 * b, [a, b])
    with pytest.raises(ShapeError):
        sv.sentiment_residual(v, [a[0]])


def test_sentiment_cosines_and_residual_vectors() -> None:
    g = torch.Generator().manual_seed(1)
    n_layers, d = 36, 8
    s = ConceptVectors(
        {
            "cad": torch.randn(n_layers, d, generator=g),
            "prompt": torch.randn(n_layers, d, generator=g),
        },
        _meta(n_layers, d, role="sentiment", position_rule="final_prompt_token"),
    )
    v = ConceptVectors(
        {
            "mold": -s["cad"] + torch.randn(n_layers, d, generator=g),
            "gold": torch.randn(n_layers, d, generator=g),
        },
        _meta(n_layers, d),
    )
    cos = sv.sentiment_cosines(v, s, control=v)
    assert cos.layer == 22  # the paper's layer for 36 layers (F.1)
    want = torch.nn.functional.cosine_similarity(v.mold, s["cad"], dim=-1).double().numpy()
    np.testing.assert_allclose(cos.cos["mold"]["cad"], want, rtol=1e-5)
    assert set(cos.cos) == {"mold", "gold", "control:mold", "control:gold"}
    assert cos.at(3)["gold"]["prompt"] == pytest.approx(float(cos.cos["gold"]["prompt"][3]))
    assert cos.max_abs()["mold"]["cad"][0] < 0
    json.dumps(cos.to_dict())
    assert repr(cos).startswith("SentimentCosines(layer 22: v_mold: cad")
    with pytest.raises(LayerError):
        cos.at(99)
    res = sv.sentiment_residual_vectors(v, s, names=("mold", "gold"))
    assert res.names == ("mold", "gold")
    for name in res.names:
        torch.testing.assert_close(res.norms(name), v.norms(name))
        for other in ("cad", "prompt"):
            dots = (res[name].double() * s[other].double()).sum(-1)
            assert float(dots.abs().max()) < 1e-4
    info = res.metadata.extra["sentiment_residual"]
    assert info["basis"] == ["cad", "prompt"]
    assert all(0 < f <= 1 for f in info["retained_norm_fraction"]["mold"])
    short = ConceptVectors({"cad": s["cad"][:3]}, _meta(3, d))
    with pytest.raises(LayerError):
        sv.sentiment_residual_vectors(v, short)


def _final_token(model: Any, text: str) -> torch.Tensor:
    chat = render_chat(
        model.tokenizer, [{"role": "user", "content": text}], add_generation_prompt=True
    )
    _, cache = model.run_with_cache(chat.input_ids[None])
    return torch.stack(
        [cache[f"blocks.{ell}.hook_resid_post"][0, -1] for ell in range(model.cfg.n_layers)]
    ).double()


@pytest.mark.usefixtures("one_thread")
def test_cad_and_prompt_vectors_equal_a_hand_run(tiny_model: Any) -> None:
    pairs = sv.load_sentiment_pairs()[:3]
    cad = sv.cad_vector(tiny_model, pairs, batch_size=4, progress=False)
    pos = torch.stack(
        [_final_token(tiny_model, sv.CAD_TEMPLATE.format(review=p.positive)) for p in pairs]
    )
    neg = torch.stack(
        [_final_token(tiny_model, sv.CAD_TEMPLATE.format(review=p.negative)) for p in pairs]
    )
    torch.testing.assert_close(cad["cad"].double(), pos.mean(0) - neg.mean(0), atol=1e-5, rtol=1e-4)
    prompt = sv.prompt_vector(tiny_model)
    want = _final_token(tiny_model, sv.PROMPT_POSITIVE) - _final_token(
        tiny_model, sv.PROMPT_NEGATIVE
    )
    torch.testing.assert_close(prompt["prompt"].double(), want, atol=1e-5, rtol=1e-4)
    both = sv.sentiment_control_vectors(
        tiny_model, [(p.positive, p.negative) for p in pairs], progress=False
    )
    torch.testing.assert_close(both["cad"], cad["cad"])
    torch.testing.assert_close(both["prompt"], prompt["prompt"])
    assert both.metadata.position_rule == "final_prompt_token" and both.metadata.role == "sentiment"
