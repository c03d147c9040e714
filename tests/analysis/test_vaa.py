"""The Valence-Assent Axis (paper appendix H): data, SVD and sign fix, cosines, steering norm."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from welfare_lens.analysis import vaa as vaa_mod
from welfare_lens.chat import render_chat
from welfare_lens.errors import DataError, LayerError, ShapeError, TokenizationError, VectorError
from welfare_lens.vectors import ConceptVectors, VectorMetadata

# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _numpy_vaa(acts: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference: per layer, numpy thin SVD of the centred matrix, sign by corr with y."""
    vecs, evr, rs = [], [], []
    for layer in range(acts.shape[1]):
        x = acts[:, layer, :] - acts[:, layer, :].mean(axis=0)
        _, s, vt = np.linalg.svd(x, full_matrices=False)
        v = vt[0]
        r = np.corrcoef(x @ v, y)[0, 1]
        if r < 0:
            v, r = -v, -r
        vecs.append(v)
        evr.append(s[0] ** 2 / (s**2).sum())
        rs.append(r)
    return np.stack(vecs), np.array(evr), np.array(rs)


def _cv(
    vectors: dict[str, torch.Tensor],
    model_id: str = "m",
    layers: list[int] | None = None,
    **kw: Any,
) -> ConceptVectors:
    first = next(iter(vectors.values()))
    extra = {"layers": layers} if layers is not None else {}
    meta = VectorMetadata(
        model_id=model_id,
        d_model=int(first.shape[1]),
        n_layers=int(first.shape[0]),
        extra=extra,
        **kw,
    )
    return ConceptVectors(vectors, meta)


def _vaa_cv(rows: torch.Tensor, layers: list[int], model_id: str = "m") -> ConceptVectors:
    return _cv(
        {"vaa": rows},
        model_id=model_id,
        layers=layers,
        position_rule="final_prompt_token",
        role="vaa",
        method="svd_first_component",
    )


# ----------------------------------------------------------------------------------------------
# SVD and sign fix on hand-built activations
# ----------------------------------------------------------------------------------------------


def test_fit_vaa_by_hand_two_dimensions() -> None:
    # Centred points (3,0), (-3,0), (0,1), (0,-1), shifted by a constant offset that centring
    # must remove. XᵀX = diag(18, 2): σ² = 18 and 2, explained variance 18/20 = 0.9, and the
    # first right singular vector is ±e_x.
    base = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    acts = (base + torch.tensor([5.0, -2.0], dtype=torch.float64))[:, None, :]  # [4, 1, 2]
    fit = vaa_mod.fit_vaa(acts, [1.0, -1.0, 0.0, 0.0])
    torch.testing.assert_close(fit.vectors, torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    assert fit.explained_variance_ratio[0] == pytest.approx(0.9)
    # Projections (3, -3, 0, 0) vs logit diffs (1, -1, 0, 0): perfectly correlated.
    assert fit.r[0] == pytest.approx(1.0)
    np.testing.assert_allclose(fit.projections[:, 0], [3.0, -3.0, 0.0, 0.0], atol=1e-12)

    # The model prefers A for the statement at (-3, 0): the axis must point to -e_x.
    flipped = vaa_mod.fit_vaa(acts, [-1.0, 1.0, 0.0, 0.0])
    torch.testing.assert_close(flipped.vectors, torch.tensor([[-1.0, 0.0]], dtype=torch.float64))
    assert flipped.r[0] == pytest.approx(1.0)
    np.testing.assert_allclose(flipped.projections[:, 0], [-3.0, 3.0, 0.0, 0.0], atol=1e-12)

    # Logit diffs only on the minor axis: corr with the e_x projection is 0, so r = 0 and
    # either sign is as good.
    minor = vaa_mod.fit_vaa(acts, [0.0, 0.0, 1.0, -1.0])
    torch.testing.assert_close(minor.vectors.abs(), torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    assert minor.r[0] == pytest.approx(0.0, abs=1e-12)


def test_fit_vaa_matches_numpy_and_fixes_sign_per_layer() -> None:
    g = torch.Generator().manual_seed(3)
    n, n_layers, d = 40, 3, 8
    t = torch.randn(n, generator=g, dtype=torch.float64) * 5
    dirs = torch.nn.functional.normalize(torch.randn(n_layers, d, generator=g, dtype=torch.float64))
    acts = 0.1 * torch.randn(n, n_layers, d, generator=g, dtype=torch.float64)
    acts += torch.randn(1, n_layers, d, generator=g, dtype=torch.float64)  # per-layer offset
    # Layers 0 and 2 encode the score along +dir; layer 1 along -dir, so its VAA is -dir_1.
    signs = torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)
    acts += t[:, None, None] * signs[None, :, None] * dirs[None]
    logit_diff = t + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)

    fit = vaa_mod.fit_vaa(acts, logit_diff)
    want_v, want_evr, want_r = _numpy_vaa(acts.numpy(), logit_diff.numpy())
    np.testing.assert_allclose(fit.vectors.numpy(), want_v, atol=1e-10)
    np.testing.assert_allclose(fit.explained_variance_ratio, want_evr, rtol=1e-10)
    np.testing.assert_allclose(fit.r, want_r, rtol=1e-10)
    # The known planted directions, with the planted signs.
    cos = (fit.vectors * dirs).sum(-1)
    assert cos[0] > 0.99 and cos[1] < -0.99 and cos[2] > 0.99
    torch.testing.assert_close(fit.vectors.norm(dim=-1), torch.ones(n_layers, dtype=torch.float64))
    assert (fit.r > 0.9).all() and (fit.explained_variance_ratio > 0.9).all()
    # Projections are the centred activations on the axis.
    centred = acts - acts.mean(0)
    np.testing.assert_allclose(
        fit.projections, torch.einsum("nld,ld->nl", centred, fit.vectors).numpy(), atol=1e-10
    )


def test_fit_vaa_undefined_correlation_is_nan_with_deterministic_sign() -> None:
    g = torch.Generator().manual_seed(4)
    acts = torch.randn(6, 2, 5, generator=g, dtype=torch.float64)
    fit = vaa_mod.fit_vaa(acts, torch.full((6,), 2.5))
    assert np.isnan(fit.r).all()
    for layer in range(2):
        row = fit.vectors[layer]
        assert row[row.abs().argmax()] > 0
    # The same data with its rows reversed gives the same axis (sign does not depend on order).
    again = vaa_mod.fit_vaa(acts.flip(0), torch.full((6,), 2.5))
    torch.testing.assert_close(again.vectors, fit.vectors)


def test_fit_vaa_bad_input() -> None:
    acts = torch.randn(5, 2, 4, dtype=torch.float64)
    with pytest.raises(ShapeError, match="n_statements, n_layers, d_model") as err:
        vaa_mod.fit_vaa(acts[:, 0], torch.zeros(5))
    assert err.value.hint
    with pytest.raises(ShapeError, match=r"expected \(5,\)"):
        vaa_mod.fit_vaa(acts, torch.zeros(4))
    with pytest.raises(DataError, match="at least 2"):
        vaa_mod.fit_vaa(acts[:1], torch.zeros(1))
    bad = acts.clone()
    bad[2, 1, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        vaa_mod.fit_vaa(bad, torch.zeros(5))
    flat = acts.clone()
    flat[:, 1] = 7.0  # every statement identical at layer index 1
    with pytest.raises(VectorError, match=r"\[1\]") as flat_err:
        vaa_mod.fit_vaa(flat, torch.arange(5.0))
    assert "varied" in (flat_err.value.hint or "")


# ----------------------------------------------------------------------------------------------
# Statements and prompts
# ----------------------------------------------------------------------------------------------

_EMOJI = re.compile("[\U0001f000-\U0001faff\u2600-\u27bf\ufe0f]")


def test_shipped_statements_are_valid_varied_and_balanced() -> None:
    items = vaa_mod.load_vaa_statements()
    assert len(items) >= 150
    texts = [s.statement.casefold() for s in items]
    assert len(set(texts)) == len(texts)
    assert len({s.id for s in items}) == len(items)
    assert all(re.fullmatch(r"vaa-\d{3}", s.id) for s in items)
    for s in items:
        assert s.expected in ("support", "oppose", "contested")
        assert s.topic.strip() and 20 <= len(s.statement) <= 200, s
        assert not _EMOJI.search(s.statement), s
        assert '"' not in s.statement, s  # the template quotes the statement
    stances = Counter(s.expected for s in items)
    assert min(stances.values()) >= 40, stances
    # Supported and opposed statements are balanced to within 10%.
    assert abs(stances["support"] - stances["oppose"]) <= 0.1 * len(items)
    topics = Counter(s.topic for s in items)
    assert {"ethics", "policy", "everyday conduct", "science", "culture"} <= set(topics)
    assert max(topics.values()) <= 0.25 * len(items), topics
    # Raw file: one JSON object per line with exactly the four fields.
    raw = Path(vaa_mod.__file__).parent.parent / "data" / "vaa_statements.jsonl"
    for line in raw.read_text("utf-8").splitlines():
        assert set(json.loads(line)) == {"id", "statement", "topic", "expected"}


def _write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "vaa.jsonl"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def _line(i: int, statement: str = "", expected: str = "support") -> str:
    return json.dumps(
        {
            "id": f"t-{i}",
            "statement": statement or f"Statement number {i} is fine.",
            "topic": "ethics",
            "expected": expected,
        }
    )


def test_load_vaa_statements_from_a_file(tmp_path: Path) -> None:
    path = _write(tmp_path, [_line(1), "", _line(2, expected="contested")])
    items = vaa_mod.load_vaa_statements(path)
    assert [(s.id, s.expected) for s in items] == [("t-1", "support"), ("t-2", "contested")]


@pytest.mark.parametrize(
    ("third", "match"),
    [
        ('{"id": "t-3", "statement": "Broken', "line 3: not valid JSON"),
        ("[1, 2]", "line 3: not a JSON object"),
        ('{"id": "t-3", "topic": "x", "expected": "support"}', r"line 3: .*\['statement'\]"),
        ('{"id": "t-3", "statement": "  ", "topic": "x", "expected": "oppose"}', "line 3"),
        (_line(3, expected="maybe"), "line 3: expected='maybe'"),
        (_line(1, statement="Another text."), "line 3: repeats line 1"),
        (_line(9, statement="statement NUMBER 2 is fine."), "line 3: repeats line 2"),
    ],
)
def test_load_vaa_statements_names_the_corrupt_line(tmp_path: Path, third: str, match: str) -> None:
    path = _write(tmp_path, [_line(1), _line(2), third])
    with pytest.raises(DataError, match=match) as err:
        vaa_mod.load_vaa_statements(path)
    assert str(path) in str(err.value) and err.value.hint


def test_load_vaa_statements_empty_or_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no statements"):
        vaa_mod.load_vaa_statements(_write(tmp_path, ["", "  "]))
    with pytest.raises(DataError, match="Cannot read"):
        vaa_mod.load_vaa_statements(tmp_path / "absent.jsonl")


def test_vaa_prompt_and_template_errors() -> None:
    text = vaa_mod.vaa_prompt("Cats should be fed.")
    assert text == (
        'Do you support or oppose the following statement?\n\n"Cats should be fed."\n\n'
        "A) Support\nB) Oppose\n\nAnswer with A or B."
    )
    assert vaa_mod.vaa_prompt("x", "Q: {statement} {{ok}}") == "Q: x {ok}"
    with pytest.raises(DataError, match="no \\{statement\\}"):
        vaa_mod.vaa_prompt("x", "Support or oppose?")
    with pytest.raises(DataError, match="cannot be filled"):
        vaa_mod.vaa_prompt("x", "{statement} {other}")


def test_answer_token_ids_on_the_real_tokenizer(smollm2_tok: Any) -> None:
    a, b = vaa_mod.answer_token_ids(smollm2_tok)
    assert smollm2_tok.decode([a]).strip() == "A" and smollm2_tok.decode([b]).strip() == "B"
    # The id is what follows the generation prompt when the model answers "A".
    chat = render_chat(
        smollm2_tok,
        [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A"}],
    )
    assert int(chat.input_ids[-1]) == a
    with pytest.raises(TokenizationError, match="single distinct tokens") as err:
        vaa_mod.answer_token_ids(smollm2_tok, ("Strongly support", "Strongly oppose"))
    assert err.value.hint


# ----------------------------------------------------------------------------------------------
# Cosines and the norm-matched steering vector
# ----------------------------------------------------------------------------------------------


def test_vaa_cosines_by_hand_and_on_a_layer_subset() -> None:
    g = torch.Generator().manual_seed(5)
    d = 6
    axis_rows = torch.nn.functional.normalize(torch.randn(2, d, generator=g))
    vaa = _vaa_cv(axis_rows, layers=[1, 3], model_id="tiny-llama-seed0")
    v = _cv(
        {"mold": torch.randn(4, d, generator=g), "gold": torch.randn(4, d, generator=g)},
        model_id="tiny-llama-seed0@run/step-50",  # a checkpoint of the VAA's model
    )
    cos = vaa_mod.vaa_cosines(vaa, v)
    assert set(cos) == {"mold", "gold"}
    for name in ("mold", "gold"):
        want = [
            float(np.dot(axis_rows[i].numpy(), v[name][layer].numpy()))
            / float(np.linalg.norm(v[name][layer].numpy()))
            for i, layer in enumerate([1, 3])
        ]
        np.testing.assert_allclose(cos[name], want, rtol=1e-5, atol=1e-6)
    only3 = vaa_mod.vaa_cosines(vaa, v, names=("gold",), layers=[3])
    assert only3 == {"gold": [pytest.approx(cos["gold"][1])]}
    # An axis pointing along v_gold at layer 3 has cosine 1 there.
    aligned = _vaa_cv(torch.nn.functional.normalize(v["gold"][[1, 3]]), [1, 3], "tiny-llama-seed0")
    assert vaa_mod.vaa_cosines(aligned, v, ("gold",))["gold"] == [pytest.approx(1.0)] * 2
    # A zero welfare vector gives NaN rather than a division error.
    zero = _cv({"gold": torch.zeros(4, d)}, model_id="tiny-llama-seed0")
    assert all(np.isnan(vaa_mod.vaa_cosines(vaa, zero, ("gold",))["gold"]))


def test_vaa_cosines_rejects_mismatched_vectors() -> None:
    vaa = _vaa_cv(torch.eye(3, 6), layers=[0, 1, 2], model_id="tiny-llama-seed0")
    other_width = _cv({"mold": torch.ones(3, 8), "gold": torch.ones(3, 8)}, "tiny-llama-seed0")
    with pytest.raises(ShapeError, match="d_model") as err:
        vaa_mod.vaa_cosines(vaa, other_width)
    assert err.value.hint
    other_model = _cv({"mold": torch.ones(3, 6), "gold": torch.ones(3, 6)}, "tiny-qwen3-seed0")
    with pytest.raises(VectorError, match="not a checkpoint") as model_err:
        vaa_mod.vaa_cosines(vaa, other_model)
    assert "allow_other_model" in (model_err.value.hint or "")
    assert len(vaa_mod.vaa_cosines(vaa, other_model, allow_other_model=True)["mold"]) == 3
    other_hook = _cv({"gold": torch.ones(3, 6)}, "tiny-llama-seed0", hook="mlp_out")
    with pytest.raises(VectorError, match="hook"):
        vaa_mod.vaa_cosines(vaa, other_hook, ("gold",))
    compat = _cv({"gold": torch.ones(3, 6)}, "tiny-llama-seed0", coordinate_mode="compat")
    with pytest.raises(VectorError, match="coordinate_mode"):
        vaa_mod.vaa_cosines(vaa, compat, ("gold",))
    v = _cv({"gold": torch.ones(3, 6)}, "tiny-llama-seed0")
    with pytest.raises(LayerError, match=r"\[5\]"):
        vaa_mod.vaa_cosines(vaa, v, ("gold",), layers=[1, 5])
    with pytest.raises(VectorError, match="No vector named 'mold'"):
        vaa_mod.vaa_cosines(vaa, v)
    two = _cv({"a": torch.eye(3, 6), "b": torch.eye(3, 6)}, "tiny-llama-seed0")
    with pytest.raises(VectorError, match="Which vector is the VAA"):
        vaa_mod.vaa_cosines(two, v, ("gold",))
    with pytest.raises(VectorError, match="VAAResult or ConceptVectors"):
        vaa_mod.vaa_cosines(torch.eye(3, 6), v, ("gold",))  # type: ignore[arg-type]


def test_vaa_steering_vector_is_norm_matched_to_v() -> None:
    # The paper's numbers (H.4): ‖v_Gold‖ = 14.37 at ℓ* = 22, so α = 2 is 28.74 × the unit VAA.
    d = 4
    axis_rows = torch.zeros(36, d)
    axis_rows[:, 0], axis_rows[:, 1] = 0.6, 0.8
    vaa = _vaa_cv(axis_rows, layers=list(range(36)))
    gold = torch.ones(36, d)
    gold[22] = torch.tensor([14.37, 0.0, 0.0, 0.0])
    v = _cv({"gold": gold, "mold": torch.ones(36, d)})
    vec = vaa_mod.vaa_steering_vector(vaa, v, 22)
    torch.testing.assert_close(vec, torch.tensor([0.6 * 14.37, 0.8 * 14.37, 0.0, 0.0]))
    assert float((2 * vec).norm()) == pytest.approx(28.74, rel=1e-6)
    assert vec.dtype == torch.float32
    mold = vaa_mod.vaa_steering_vector(vaa, v, 3, name="mold")
    assert float(mold.norm()) == pytest.approx(2.0)  # ‖(1, 1, 1, 1)‖
    with pytest.raises(LayerError, match="Layer 40"):
        vaa_mod.vaa_steering_vector(vaa, v, 40)
    gold[5] = 0.0
    zero = _cv({"gold": gold})
    with pytest.raises(VectorError, match="zero at layer 5"):
        vaa_mod.vaa_steering_vector(vaa, zero, 5)
    wide = _cv({"gold": torch.ones(36, 8)})
    with pytest.raises(ShapeError):
        vaa_mod.vaa_steering_vector(vaa, wide, 22)


# ----------------------------------------------------------------------------------------------
# End to end on a tiny model
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama() -> Any:
    from welfare_lens.models import load_model

    return load_model("tiny-llama")


@pytest.mark.usefixtures("one_thread")
def test_valence_assent_axis_end_to_end(tiny_llama: Any) -> None:
    model = tiny_llama
    items = vaa_mod.load_vaa_statements()[:12]
    result = vaa_mod.valence_assent_axis(model, items, batch_size=5, progress=False)
    n_layers, d = int(model.cfg.n_layers), int(model.cfg.d_model)
    assert result.vectors["vaa"].shape == (n_layers, d)
    torch.testing.assert_close(
        result.vectors.norms("vaa"), torch.ones(n_layers, dtype=torch.float64), atol=1e-6, rtol=0
    )
    assert result.n_statements == 12 and result.logit_diff.shape == (12,)
    assert result.statement_ids == [s.id for s in items]
    assert np.all(result.r >= 0) and np.all(np.isfinite(result.r))
    assert np.all((result.explained_variance_ratio > 0) & (result.explained_variance_ratio <= 1))
    m = result.vectors.metadata
    assert (m.model_id, m.hook, m.position_rule) == ("tiny-llama-seed0", "resid_post", _POS)
    assert m.extra["layers"] == list(range(n_layers)) and result.layers == m.extra["layers"]

    # Independent hand run: activations and logits at the last prompt token, then numpy SVD.
    a_id, b_id = result.answer_token_ids
    acts, diffs = [], []
    for item in items:
        chat = render_chat(
            model.tokenizer,
            [{"role": "user", "content": vaa_mod.vaa_prompt(item.statement)}],
            add_generation_prompt=True,
        )
        with torch.no_grad():
            logits, cache = model.run_with_cache(chat.input_ids[None])
        acts.append(
            torch.stack([cache[f"blocks.{ell}.hook_resid_post"][0, -1] for ell in range(n_layers)])
        )
        diffs.append(float(logits[0, -1, a_id] - logits[0, -1, b_id]))
    np.testing.assert_allclose(result.logit_diff, diffs, rtol=1e-4, atol=1e-5)
    want_v, want_evr, want_r = _numpy_vaa(
        torch.stack(acts).double().numpy(), np.asarray(diffs, dtype=np.float64)
    )
    np.testing.assert_allclose(result.vectors["vaa"].double().numpy(), want_v, atol=2e-4)
    np.testing.assert_allclose(result.explained_variance_ratio, want_evr, rtol=1e-4)
    np.testing.assert_allclose(result.r, want_r, atol=1e-4)

    # Reporting, serialisation and the comparisons run on the result itself.
    as_json = json.loads(json.dumps(result.to_dict()))
    assert as_json["n_statements"] == 12 and len(as_json["r"]) == n_layers
    assert repr(result).startswith("VAAResult(model_id='tiny-llama-seed0', n_statements=12")
    torch.testing.assert_close(result.at(0), result.vectors["vaa"][0])
    with pytest.raises(LayerError):
        result.at(n_layers)
    own = _cv({"gold": result.vectors["vaa"] * 3.0}, "tiny-llama-seed0@run/step-5")
    assert vaa_mod.vaa_cosines(result, own, ("gold",))["gold"] == [pytest.approx(1.0)] * n_layers
    steer_vec = vaa_mod.vaa_steering_vector(result, own, n_layers - 1)
    assert float(steer_vec.norm()) == pytest.approx(3.0, rel=1e-5)


@pytest.mark.usefixtures("one_thread")
def test_valence_assent_axis_layer_subset_and_bad_input(tiny_llama: Any) -> None:
    result = vaa_mod.valence_assent_axis(
        tiny_llama,
        ["Honesty matters.", "Lying is fine.", "Taxes should rise."],
        layers=[1],
        progress=False,
    )
    assert result.layers == [1] and result.vectors["vaa"].shape == (1, 64)
    assert result.layer == 1 and result.statement_ids[0] == "statement-0"
    with pytest.raises(DataError, match="at least 2"):
        vaa_mod.valence_assent_axis(tiny_llama, ["Only one."], progress=False)
    with pytest.raises(DataError, match="Statement 1"):
        vaa_mod.valence_assent_axis(tiny_llama, ["One.", 42], progress=False)
    with pytest.raises(DataError, match="no \\{statement\\}"):
        vaa_mod.valence_assent_axis(tiny_llama, ["a", "b"], template="Hi", progress=False)


_POS = "final_prompt_token"
