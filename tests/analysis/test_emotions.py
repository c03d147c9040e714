"""Emotion vectors, neutral PCA denoising, alignment and emotion PCA (paper §3.3, B-13, F.4)."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from welfare_lens.analysis import emotions as em
from welfare_lens.errors import DataError, LayerError, VectorError
from welfare_lens.models import load_model
from welfare_lens.vectors import ConceptVectors, VectorMetadata

DATA = Path(em.__file__).resolve().parents[1] / "data" / "emotions"

# The 171 names exactly as listed in paper_method A5 §3.3 (from the paper's figure data).
PAPER_EMOTIONS = """afraid, alarmed, alert, amazed, amused, angry, annoyed, anxious, aroused, ashamed,
astonished, at ease, awestruck, bewildered, bitter, blissful, bored, brooding, calm, cheerful,
compassionate, contemptuous, content, defiant, delighted, dependent, depressed, desperate,
disdainful, disgusted, disoriented, dispirited, distressed, disturbed, docile, droopy, dumbstruck,
eager, ecstatic, elated, embarrassed, empathetic, energized, enraged, enthusiastic, envious,
euphoric, exasperated, excited, exuberant, frightened, frustrated, fulfilled, furious, gloomy,
grateful, greedy, grief-stricken, grumpy, guilty, happy, hateful, heartbroken, hope, hopeful,
horrified, hostile, humiliated, hurt, hysterical, impatient, indifferent, indignant, infatuated,
inspired, insulted, invigorated, irate, irritated, jealous, joyful, jubilant, kind, lazy, listless,
lonely, loving, mad, melancholy, miserable, mortified, mystified, nervous, nostalgic, obstinate,
offended, on edge, optimistic, outraged, overwhelmed, panicked, paranoid, patient, peaceful,
perplexed, playful, pleased, proud, puzzled, rattled, reflective, refreshed, regretful,
rejuvenated, relaxed, relieved, remorseful, resentful, resigned, restless, sad, safe, satisfied,
scared, scornful, self-confident, self-conscious, self-critical, sensitive, sentimental, serene,
shaken, shocked, skeptical, sleepy, sluggish, smug, sorry, spiteful, stimulated, stressed,
stubborn, stuck, sullen, surprised, suspicious, sympathetic, tense, terrified, thankful, thrilled,
tired, tormented, trapped, triumphant, troubled, uneasy, unhappy, unnerved, unsettled, upset,
valiant, vengeful, vibrant, vigilant, vindictive, vulnerable, weary, worn out, worried, worthless"""
PAPER_LIST = [w.strip() for w in PAPER_EMOTIONS.replace("\n", " ").split(",")]


def _meta(n_layers: int, d: int, **kw: Any) -> VectorMetadata:
    return VectorMetadata(model_id="m", d_model=d, n_layers=n_layers, **kw)


# ----------------------------------------------------------------------------------------------
# Shipped data
# ----------------------------------------------------------------------------------------------


def test_emotion_names_match_the_paper_exactly() -> None:
    assert len(PAPER_LIST) == 171 and len(set(PAPER_LIST)) == 171
    assert list(em.EMOTIONS) == PAPER_LIST
    ratings = em.load_emotions()
    assert [r.name for r in ratings] == PAPER_LIST
    for r in ratings:
        assert -1 <= r.valence <= 1 and -1 <= r.arousal <= 1
    table = {r.name: r for r in ratings}
    # Circumplex sanity: quadrants of a few anchor words.
    assert table["happy"].valence > 0.5 and table["sad"].valence < -0.5
    assert table["terrified"].arousal > 0.5 and table["sleepy"].arousal < -0.5
    assert table["calm"].valence > 0 > table["calm"].arousal


def test_neutral_texts_schema() -> None:
    lines = [json.loads(x) for x in (DATA / "neutral.jsonl").read_text("utf-8").splitlines()]
    assert len(lines) >= 200
    assert all(set(x) == {"kind", "text"} for x in lines)
    assert {x["kind"] for x in lines} == {"passage", "dialogue"}
    texts = [x["text"] for x in lines]
    assert len(set(texts)) == len(texts) and all(len(t.split()) >= 10 for t in texts)
    neutral = em.load_neutral()
    assert len(neutral) == len(lines)
    # No text names one of the 171 emotions as a whole word.
    for t in texts:
        words = set(re.findall(r"[a-z]+(?:[ -][a-z]+)?", t.lower())) | set(
            re.findall(r"[a-z]+", t.lower())
        )
        assert not words & set(PAPER_LIST), (t, words & set(PAPER_LIST))


def test_story_files_schema() -> None:
    files = sorted(DATA.glob("stories_*.jsonl"))
    assert len(files) == 4, files
    stories = em.load_stories()
    per_emotion = Counter(s.emotion for s in stories)
    assert set(per_emotion) == set(em.EMOTIONS) and min(per_emotion.values()) >= 8
    assert len(stories) >= 1368 and len({s.text for s in stories}) == len(stories)
    assert all(s.emotion in em.EMOTIONS and s.topic and s.text for s in stories)
    assert em.load_stories(files[:1], emotions=[stories[0].emotion])


def test_load_stories_errors(tmp_path: Path) -> None:
    bad = tmp_path / "s.jsonl"
    bad.write_text('{"emotion": "calm"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="lacks field"):
        em.load_stories(bad)
    bad.write_text("not json\n", encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON"):
        em.load_stories(bad)
    good = tmp_path / "g.jsonl"
    good.write_text('{"emotion": "calm", "topic": "t", "text": "x y"}\n\n', encoding="utf-8")
    assert em.load_stories([good]) == [em.Story("calm", "t", "x y")]
    with pytest.raises(DataError, match="outside"):
        p = tmp_path / "r.json"
        p.write_text('{"emotions": [{"name": "a", "valence": 2, "arousal": 0}]}', "utf-8")
        em.load_emotions(p)


def test_names_emotion() -> None:
    assert em.names_emotion("She could not hide her frustration.", "frustrated")
    assert em.names_emotion("He smiled HAPPILY.", "happy")
    assert em.names_emotion("Her anger grew.", "angry")
    assert em.names_emotion("The grief sat on her chest.", "grief-stricken")
    assert em.names_emotion("He felt at  ease at last.", "at ease")
    assert em.names_emotion("She was on-edge all night.", "on edge")
    assert em.names_emotion("a kind of madness", "mad")
    assert not em.names_emotion("He made tea and sat down.", "mad")
    assert not em.names_emotion("The kettle boiled.", "calm")


# ----------------------------------------------------------------------------------------------
# Pure maths
# ----------------------------------------------------------------------------------------------


def test_mean_minus_others_by_hand() -> None:
    means = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]])  # [E=3, L=1, d=2]
    out = em.mean_minus_others(means)
    expected = torch.tensor([[[0.5, -1.0]], [[-1.0, 0.5]], [[0.5, 0.5]]])
    torch.testing.assert_close(out, expected)
    # = n/(n-1) * (m - grand mean)
    torch.testing.assert_close(out, 1.5 * (means - means.mean(0)))
    with pytest.raises(DataError):
        em.mean_minus_others(means[:1])


def test_pca_subspace_fifty_percent_rule() -> None:
    cov = torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0]))  # ratios .4 .3 .2 .1
    comp, ratios = em.pca_subspace(cov, 0.5)
    assert comp.shape == (2, 4)  # .4 < .5 <= .7
    np.testing.assert_allclose(ratios, [0.4, 0.3, 0.2, 0.1])
    torch.testing.assert_close(comp.abs(), torch.eye(4, dtype=torch.float64)[:2])
    assert em.pca_subspace(cov, 0.4)[0].shape[0] == 1  # reaching the target exactly is enough
    assert em.pca_subspace(cov, 0.71)[0].shape[0] == 3
    assert em.pca_subspace(cov, 0.0)[0].shape[0] == 0
    assert em.pca_subspace(cov, 1.0)[0].shape[0] == 4
    with pytest.raises(DataError):
        em.pca_subspace(cov, 1.5)
    # Rotated covariance: the same subspace, rotated.
    q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    comp_r, _ = em.pca_subspace(q @ cov.double() @ q.T, 0.5)
    torch.testing.assert_close(comp_r.T @ comp_r, q[:, :2] @ q[:, :2].T)


def test_project_out_removes_the_subspace_exactly() -> None:
    comp, _ = em.pca_subspace(torch.diag(torch.tensor([5.0, 1.0, 1.0, 1.0, 1.0])), 0.5)
    x = torch.randn(7, 3, 5, dtype=torch.float64)
    out = em.project_out(x, comp)
    torch.testing.assert_close(out @ comp.T, torch.zeros(7, 3, 1, dtype=torch.float64))
    torch.testing.assert_close(out[..., 1:], x[..., 1:])  # the complement is untouched
    assert em.project_out(x, comp[:0]) is x


def test_ols_fit_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 50))
    y = -0.9 * x + rng.normal(scale=0.3, size=(4, 50)) + 0.2
    slope, intercept, r = em.ols_fit(x, y)
    for i in range(4):
        b, a = np.polyfit(x[i], y[i], 1)
        np.testing.assert_allclose([slope[i], intercept[i]], [b, a], rtol=1e-10)
        np.testing.assert_allclose(r[i], np.corrcoef(x[i], y[i])[0, 1], rtol=1e-10)
    s0, _, r0 = em.ols_fit(np.zeros(5), np.arange(5.0))
    assert math.isnan(float(s0)) and math.isnan(float(r0))


# ----------------------------------------------------------------------------------------------
# Alignment and PCA on constructed vectors
# ----------------------------------------------------------------------------------------------


def _emotions_cv(e: torch.Tensor, names: list[str]) -> ConceptVectors:
    _, n_layers, d = e.shape
    return ConceptVectors({nm: e[i] for i, nm in enumerate(names)}, _meta(n_layers, d))


def test_emotion_alignment_on_a_constructed_example() -> None:
    g = torch.Generator().manual_seed(3)
    n_e, n_layers, d = 40, 3, 32
    names = [f"e{i}" for i in range(n_e)]
    e = torch.randn(n_e, n_layers, d, generator=g)
    axis = torch.randn(n_layers, d, generator=g)
    v = ConceptVectors(
        {"mold": -axis + 0.05 * torch.randn(n_layers, d, generator=g), "gold": axis},
        _meta(n_layers, d),
    )
    u = ConceptVectors(
        {
            "mold": torch.randn(n_layers, d, generator=g),
            "gold": torch.randn(n_layers, d, generator=g),
        },
        _meta(n_layers, d, role="control"),
    )
    res = em.emotion_alignment(v, _emotions_cv(e, names), control=u, n_boot=500)
    # Cosines by hand.
    for layer in range(n_layers):
        for j in (0, 17):
            want = torch.nn.functional.cosine_similarity(v.mold[layer], e[j, layer], dim=0)
            assert res.trained.x[layer, j] == pytest.approx(float(want), abs=1e-6)
    assert np.all(res.trained.r < -0.95) and np.all(np.abs(res.trained.slope + 1) < 0.2)
    assert np.all(np.abs(res.control.r) < 0.6)  # type: ignore[union-attr]
    lo, hi = res.trained.slope_ci.T
    assert np.all(lo <= res.trained.slope) and np.all(res.trained.slope <= hi)
    assert res.layer_rule == "argmin_r" and res.layer == int(np.argmin(res.trained.r))
    # Top-k: the emotions most aligned with v_gold at the reporting layer.
    cos_g = res.trained.y[res.layer]
    assert [n for n, _ in res.top["gold"]["aligned"]] == [names[i] for i in np.argsort(-cos_g)[:5]]
    assert res.top["gold"]["anti"][0][0] == names[int(np.argmin(cos_g))]
    assert "control:mold" in res.top
    analytic = em.emotion_alignment(v, _emotions_cv(e, names), layer=1, ci="analytic")
    assert analytic.layer == 1 and analytic.layer_rule == "given"
    lo, hi = analytic.trained.r_ci.T
    assert np.all(lo < analytic.trained.r) and np.all(analytic.trained.r < hi)
    json.dumps(res.to_dict(points=True))
    assert "EmotionAlignment(40 emotions, layer" in repr(res) and "control slope" in repr(res)
    with pytest.raises(LayerError):
        em.emotion_alignment(v, _emotions_cv(e, names), layer=7)


def test_emotion_pca_recovers_valence_and_arousal() -> None:
    g = torch.Generator().manual_seed(5)
    n_e, n_layers, d = 30, 2, 24
    rng = np.random.default_rng(0)
    val, aro = rng.uniform(-1, 1, n_e), rng.uniform(-1, 1, n_e)
    basis, _ = torch.linalg.qr(torch.randn(d, 2, generator=g))
    a, b = basis[:, 0], basis[:, 1]
    e = (
        3.0 * torch.tensor(val, dtype=torch.float32)[:, None, None] * a
        + 1.5 * torch.tensor(aro, dtype=torch.float32)[:, None, None] * b
        + 0.01 * torch.randn(n_e, n_layers, d, generator=g)
    )
    names = [f"e{i}" for i in range(n_e)]
    ratings = {nm: (float(val[i]), float(aro[i])) for i, nm in enumerate(names)}
    v = ConceptVectors(
        {"mold": -2 * a.expand(n_layers, d), "gold": a.expand(n_layers, d)}, _meta(n_layers, d)
    )
    u = ConceptVectors(
        {"mold": b.expand(n_layers, d), "gold": b.expand(n_layers, d)}, _meta(n_layers, d)
    )
    res = em.emotion_pca(_emotions_cv(e, names), ratings, v=v, control=u)
    assert np.all(res.r_valence > 0.99) and np.all(res.r_arousal > 0.99)
    for layer in range(n_layers):
        assert float(res.pc1[layer] @ a) > 0.99  # sign-aligned with valence
        assert float(res.pc2[layer] @ b) > 0.99  # sign-aligned with arousal
    np.testing.assert_allclose(res.loadings["gold"], 1.0, atol=1e-3)
    np.testing.assert_allclose(res.loadings["mold"], -1.0, atol=1e-3)
    np.testing.assert_allclose(res.projections["mold"], -2.0, atol=1e-2)
    np.testing.assert_allclose(res.loadings["control:gold"], 0.0, atol=0.1)
    assert res.loading_layer in (0, 1) and res.best_layer in (0, 1)
    assert res.explained[0, 0] > res.explained[0, 1] > 0
    json.dumps(res.to_dict())
    assert "EmotionPCA(30 emotions" in repr(res)
    with pytest.raises(DataError):
        em.emotion_pca(_emotions_cv(e, names), {"e0": (0.0, 0.0)})


def test_alignment_refuses_mismatched_vectors() -> None:
    e = _emotions_cv(torch.randn(4, 2, 8), ["a", "b", "c", "d"])
    other = ConceptVectors(
        {"mold": torch.randn(2, 8), "gold": torch.randn(2, 8)},
        _meta(2, 8, coordinate_mode="compat"),
    )
    with pytest.raises(VectorError):
        em.emotion_alignment(other, e)


# ----------------------------------------------------------------------------------------------
# Extraction on tiny models
# ----------------------------------------------------------------------------------------------

STORIES = [
    em.Story(
        "calm", "sea", "The water lay flat and she breathed slowly, watching the boats drift."
    ),
    em.Story("calm", "tea", "He poured the tea, sat by the window and let the afternoon pass."),
    em.Story(
        "afraid", "night", "Footsteps behind her again; she gripped her keys and walked faster."
    ),
    em.Story("afraid", "storm", "The roof shook and he pressed himself against the cold wall."),
    em.Story("joyful", "news", "She read the letter twice, laughed out loud and spun around."),
    em.Story("joyful", "garden", "Tiny green shoots at last! He called everyone out to look."),
]
NEUTRAL = [
    "The bus leaves at ten past eight and stops at the market, the school and the station.",
    "To reset the device, hold the button for ten seconds until the light flashes twice.",
    "Person: How many grams are in a kilogram?\nAI: There are one thousand grams.",
    "The shelf is ninety centimetres wide and holds folders sorted by year and month.",
]


def _hand_run(model: Any, text: str, offset: int) -> torch.Tensor:
    """Per-layer mean over text tokens from ``offset`` on, from a plain run_with_cache."""
    tok = model.tokenizer
    full = tok(text)["input_ids"]
    start = len(full) - len(tok(text, add_special_tokens=False)["input_ids"])
    _, cache = model.run_with_cache(torch.tensor([full]))
    layers = range(model.cfg.n_layers)
    rows = [cache[f"blocks.{ell}.hook_resid_post"][0, start + offset :] for ell in layers]
    return torch.stack(rows, dim=1).double()  # [tokens, L, d]


@pytest.mark.usefixtures("one_thread")
def test_extraction_equals_a_hand_run_of_run_with_cache(tiny_model: Any) -> None:
    offset, noff = 4, 2
    res = em.emotion_vectors(
        tiny_model,
        STORIES,
        NEUTRAL,
        offset=offset,
        neutral_offset=noff,
        denoise=0.5,
        batch_size=4,
        progress=False,
    )
    # By hand: story means, emotion means, mean minus others, neutral PCA, projection.
    names = ["afraid", "calm", "joyful"]  # the paper's order
    assert list(res.names) == names
    means = torch.stack(
        [
            torch.stack(
                [_hand_run(tiny_model, s.text, offset).mean(0) for s in STORIES if s.emotion == nm]
            ).mean(0)
            for nm in names
        ]
    )  # [E, L, d]
    vecs = torch.stack(
        [means[i] - torch.cat([means[:i], means[i + 1 :]]).mean(0) for i in range(3)]
    )
    tokens = torch.cat([_hand_run(tiny_model, t, noff) for t in NEUTRAL])  # [N, L, d]
    for ell in range(tiny_model.cfg.n_layers):
        x = tokens[:, ell].numpy()
        evals, evecs = np.linalg.eigh(np.cov(x, rowvar=False))
        evals, evecs = evals[::-1], evecs[:, ::-1]
        k = int(np.argmax(np.cumsum(evals) / evals.sum() >= 0.5)) + 1
        c = torch.from_numpy(evecs[:, :k].copy())
        assert res.metadata.extra["denoise"]["k"][ell] == k
        vecs[:, ell] = vecs[:, ell] - (vecs[:, ell] @ c) @ c.T
        # The neutral subspace is removed exactly.
        got = torch.stack([res[nm][ell].double() for nm in names])
        assert float((got @ c).abs().max()) < 1e-4 * float(got.abs().max())
    for i, nm in enumerate(names):
        torch.testing.assert_close(res[nm].double(), vecs[i], atol=2e-5, rtol=1e-4)
    meta = res.metadata
    assert meta.role == "emotion" and meta.class_counts == {"afraid": 2, "calm": 2, "joyful": 2}
    assert meta.extra["layers"] == list(range(tiny_model.cfg.n_layers))


@pytest.mark.usefixtures("one_thread")
def test_extraction_options(tmp_path: Path) -> None:
    from welfare_lens.models import load_model

    model = load_model("tiny-llama")
    raw = em.emotion_vectors(model, STORIES, offset=500, denoise=None, progress=False)
    # Every story is shorter than 500 tokens: each falls back to its second half.
    assert raw.metadata.extra["n_short"] == len(STORIES) and raw.metadata.extra["denoise"] is None
    unit = em.emotion_vectors(
        model, STORIES, offset=3, layers=[1], denoise=None, normalise=True, progress=False
    )
    assert unit.n_layers == 1 and unit.metadata.extra["layers"] == [1]
    torch.testing.assert_close(unit.norms("calm"), torch.ones(1, dtype=torch.float64))
    # A fitted NeutralPCA can be reused; it must cover the same layers.
    pca = em.neutral_pca(model, NEUTRAL, offset=2, layers=[1], progress=False)
    assert pca.k[0] >= 1 and pca.explained[0] >= 0.5 and "NeutralPCA(1 layers" in repr(pca)
    again = em.emotion_vectors(model, STORIES, pca, offset=3, layers=[1], progress=False)
    assert again.metadata.extra["denoise"]["k"] == pca.k
    with pytest.raises(LayerError):
        em.emotion_vectors(model, STORIES, pca, offset=3, layers=[0], progress=False)
    # The user-message rendering averages only the story's own tokens.
    user = em._encode(model.tokenizer, STORIES[0].text, "user", 0, 512)
    from welfare_lens.chat import render_chat

    chat = render_chat(model.tokenizer, [{"role": "user", "content": STORIES[0].text}])
    assert torch.equal(user.mask, chat.user_mask)
    em.emotion_vectors(model, STORIES, NEUTRAL, offset=3, render="user", progress=False)
    # Names with spaces survive a save/load round trip.
    spaced = em.emotion_vectors(
        model,
        [("at ease", "He sat down and rested."), ("on edge", "She checked the door again.")],
        offset=1,
        denoise=None,
        progress=False,
    )
    loaded = ConceptVectors.load(spaced.save(tmp_path / "emo"))
    assert loaded.names == ("at ease", "on edge")
    with pytest.raises(DataError, match="two emotions"):
        em.emotion_vectors(model, STORIES[:2], denoise=None, progress=False)


def test_write_stories_filters_named_emotions(
    smollm2_tok: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = SimpleNamespace(tokenizer=smollm2_tok)
    outputs = [
        "Title: Waiting\n\nShe tapped her foot and checked the clock again and again.",  # kept
        "He was so frustrated that he threw the pen.",  # names the emotion
        "Too short.",  # under min_words
    ]
    seen: list[int] = []

    def fake_generate(model: Any, prompt_ids: torch.Tensor, n: int, **_: Any) -> list[str]:
        text = smollm2_tok.decode(prompt_ids)
        assert "frustrated" in text and "a late train" in text and "SmolLM" not in text
        seen.append(n)
        return outputs

    monkeypatch.setattr(em, "_generate", fake_generate)
    out = tmp_path / "stories.jsonl"
    with pytest.warns(UserWarning, match="kept 1/3"):
        kept = em.write_stories(
            fake, ["frustrated"], ["a late train"], 3, path=out, min_words=5, progress=False
        )
    assert seen == [3]
    assert kept == [em.Story("frustrated", "a late train", outputs[0].split("\n\n")[1])]
    assert em.load_stories(out) == kept


@pytest.mark.usefixtures("one_thread")
def test_write_stories_generates_with_a_bridge(tmp_path: Path) -> None:
    from welfare_lens.models import load_model

    model = load_model("tiny-llama")
    with pytest.warns(UserWarning):
        kept = em.write_stories(
            model, ["calm"], ["a walk"], 2, max_new_tokens=4, min_words=10_000, progress=False
        )
    assert kept == []  # random weights: every sample is too short, but generation ran
    kept = em.write_stories(
        model,
        ["calm"],
        ["a walk"],
        2,
        max_new_tokens=4,
        min_words=0,
        path=tmp_path / "s.jsonl",
        progress=False,
    )
    assert len(em.load_stories(tmp_path / "s.jsonl")) == len(kept)


def test_emotion_settings_example_forms_the_library_vectors_at_every_offset() -> None:
    """examples/emotion_settings.py keeps several offsets from one pass; each must equal
    emotion_vectors at that offset, or its table of settings would describe other vectors."""
    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location(
        "example_emotion_settings", root / "examples" / "emotion_settings.py"
    )
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    tiny_llama = load_model("tiny-llama")
    stories = [s for s in em.load_stories() if s.emotion in ("afraid", "calm", "proud")]
    names, means, _ = example.story_means(tiny_llama, stories, [0, 12, 50], batch_size=4)
    for offset in (0, 12, 50):
        ref = em.emotion_vectors(
            tiny_llama, stories, denoise=None, offset=offset, batch_size=4, progress=False
        )
        ours = em.mean_minus_others(means[offset])
        for i, name in enumerate(names):
            torch.testing.assert_close(ours[i].float(), ref[name], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(means[0], means[50])
