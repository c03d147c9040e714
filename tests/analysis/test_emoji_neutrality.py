"""Emoji neutrality check (paper appendix J.2, Table 22; note B-14)."""

from __future__ import annotations

import json
import unicodedata
from typing import Any

import numpy as np
import pytest
import torch

from welfare_lens.analysis import emoji_neutrality as en
from welfare_lens.analysis.sentiment_vectors import load_sentiment_pairs, sentiment_control_vectors
from welfare_lens.capture import distinct_prefix_tokens
from welfare_lens.chat import render_chat
from welfare_lens.errors import DataError, LayerError, ShapeError, VectorError
from welfare_lens.maze import MazeConfig, Tile, TileEmoji, synthetic_trajectories
from welfare_lens.vectors import ConceptVectors, VectorMetadata

FOX, SKULL, GRIN = "\U0001f98a", "\U0001f480", "\U0001f600"
NAMES = {"north": "N", "east": "E", "south": "S", "west": "W"}


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Tiny models run fastest on one thread (conftest)."""


@pytest.fixture(scope="module")
def tiny() -> Any:
    from welfare_lens.models import load_model

    return load_model("tiny-llama")


def _meta(n_layers: int, d: int, **kw: Any) -> VectorMetadata:
    return VectorMetadata(model_id="m", d_model=d, n_layers=n_layers, **kw)


def _paper_clauses(text: str) -> tuple[str, dict[str, str], str]:
    """Split a paper-format user turn into (head, {direction: symbol}, tail) by hand."""
    head, rest = text.split("). ", 1)
    body, tail = rest.split(". Where do you move?", 1)
    symbols: dict[str, str] = {}
    for clause in body.split("; "):
        words = clause.split(" ", 4)  # "to", "the", "<direction>", "there", "is <symbol>"
        assert words[0].lower() == "to" and words[3] == "there", clause
        symbols[NAMES[words[2]]] = words[4].removeprefix("is ")
    return head, symbols, tail


def _common_prefix_len(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _compact_clauses(text: str) -> dict[str, str]:
    """{direction: symbol} of a compact user turn ("Neighbours: N x, E y, S z, W v")."""
    return dict(clause.split(" ") for clause in text.split("Neighbours: ", 1)[1].split(", "))


# ----------------------------------------------------------------------------------------------
# Substitution
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["shared_prefix", "wind"])
def test_substitution_changes_only_the_chosen_clause(source: str, smollm2_tok: Any) -> None:
    cfg = MazeConfig(size=30)
    if source == "wind":
        # Wind pushes on earlier steps prefix later user turns with the wind sentence.
        base = synthetic_trajectories(MazeConfig(size=30, wind_p=0.3), per_class=4, wind=True)
    else:
        base = en.emoji_base_trajectories(cfg, per_emoji=12, seed=5)
    assert len(base) == 12
    paper = TileEmoji.paper()
    for traj in base:
        new = en.substitute_final_target(traj, FOX)
        assert len(new) == len(traj.messages)
        # Earlier messages and the move are the very same objects.
        assert all(a is b for a, b in zip(new[:-2], traj.messages[:-2], strict=True))
        assert new[-1] is traj.messages[-1]
        move = traj.actions[-1]
        assert move is not None
        head0, old, tail0 = _paper_clauses(traj.messages[-2]["content"])
        head1, now, tail1 = _paper_clauses(new[-2]["content"])
        assert (head0, tail0) == (head1, tail1)
        shown = paper.symbol(Tile(traj.neighbours[-1]["NESW".index(move)]))
        assert old[move] == shown and now[move] == FOX
        assert {d: s for d, s in now.items() if d != move} == {
            d: s for d, s in old.items() if d != move
        }
        # The rendered chat differs in exactly one place: the chosen clause's symbol.
        a = render_chat(smollm2_tok, traj.messages).text
        b = render_chat(smollm2_tok, new).text
        start = _common_prefix_len(a, b)
        cut = _common_prefix_len(a[start:][::-1], b[start:][::-1])
        assert a[start : len(a) - cut] == shown and b[start : len(b) - cut] == FOX
        prefix = a[:start]
        word = {"N": "north", "E": "east", "S": "south", "W": "west"}[move]
        assert prefix.lower().endswith(f"to the {word} there is ")
        # Showing the original symbol gives back the original conversation.
        assert en.substitute_final_target(traj, shown) == traj.messages


def test_substitution_compact_format() -> None:
    cfg = MazeConfig(size=30, prompt_format="compact")
    for traj in en.emoji_base_trajectories(cfg, per_emoji=6, seed=3):
        new = en.substitute_final_target(traj, SKULL)[-2]["content"]
        old = traj.messages[-2]["content"]
        before, after = _compact_clauses(old), _compact_clauses(new)
        move = traj.actions[-1]
        assert move is not None
        assert after[move] == SKULL
        assert {d: s for d, s in after.items() if d != move} == {
            d: s for d, s in before.items() if d != move
        }


def test_substitution_bad_input() -> None:
    traj = en.emoji_base_trajectories(MazeConfig(size=30), per_emoji=3, seed=1)[0]
    edited = type(traj).from_dict(traj.to_dict())
    edited.messages[-2]["content"] = "You are in a maze."
    with pytest.raises(DataError, match="expected once") as info:
        en.substitute_final_target(edited, FOX)
    assert info.value.hint
    with pytest.raises(DataError) as info:
        en.substitute_final_target(([{"role": "user", "content": "x"}], "mold"), FOX)
    assert info.value.hint
    with pytest.raises(DataError):
        en.substitute_final_target(traj, "two words")
    with pytest.raises(DataError):
        en.emoji_conversations([traj], [FOX, FOX])
    with pytest.raises(DataError):
        en.emoji_conversations([], [FOX, SKULL])
    with pytest.raises(DataError):
        en.emoji_base_trajectories(MazeConfig(size=30), per_emoji=0)


def test_base_trajectories_balance_classes() -> None:
    base = en.emoji_base_trajectories(MazeConfig(size=30), per_emoji=10, seed=2)
    labels = [t.label for t in base]
    assert len(base) == 10
    assert sorted(labels.count(c) for c in ("mold", "gold", "path")) == [3, 3, 4]


# ----------------------------------------------------------------------------------------------
# Streaming sums and one-vs-rest vectors
# ----------------------------------------------------------------------------------------------


def test_emoji_sums_match_numpy() -> None:
    rng = np.random.default_rng(0)
    emoji = ["a", "b", "c", "d"]
    labels = list(rng.choice(emoji, size=23))
    labels[:4] = emoji  # every emoji has samples, counts unequal
    acts = rng.normal(size=(23, 3, 5))
    sums = en.EmojiSums(emoji, 3, 5)
    for lo, hi in ((0, 7), (7, 8), (8, 23)):
        sums.update(labels[lo:hi], torch.tensor(acts[lo:hi], dtype=torch.float32))
    acts32 = acts.astype(np.float32).astype(np.float64)  # what the float32 batches carried
    lab = np.asarray(labels)
    grand = acts32.mean(axis=0)
    got_all, got_rest = sums.vectors("all"), sums.vectors("rest")
    for e in emoji:
        mine, others = acts32[lab == e], acts32[lab != e]
        np.testing.assert_allclose(got_all[e].numpy(), mine.mean(0) - grand, atol=1e-12)
        np.testing.assert_allclose(got_rest[e].numpy(), mine.mean(0) - others.mean(0), atol=1e-12)
    assert sums.counts == {e: labels.count(e) for e in emoji}


def test_equal_counts_rest_is_a_rescaled_all() -> None:
    rng = np.random.default_rng(1)
    sums = en.EmojiSums(["x", "y", "z"], 2, 4)
    sums.update(["x", "y", "z"] * 5, torch.tensor(rng.normal(size=(15, 2, 4))))
    n = 3
    for e in "xyz":
        torch.testing.assert_close(sums.vectors("rest")[e], sums.vectors("all")[e] * n / (n - 1))


def test_emoji_sums_bad_input() -> None:
    sums = en.EmojiSums(["a", "b"], 2, 3)
    with pytest.raises(ShapeError) as info:
        sums.update(["a"], torch.zeros(1, 2, 4))
    assert info.value.hint
    with pytest.raises(DataError):
        sums.update(["q"], torch.zeros(1, 2, 3))
    sums.update(["a"], torch.zeros(1, 2, 3))
    with pytest.raises(DataError, match="no samples"):
        sums.vectors()
    with pytest.raises(DataError):
        en.EmojiSums(["a", "a"], 2, 3)


# ----------------------------------------------------------------------------------------------
# The scan on fixed cosines
# ----------------------------------------------------------------------------------------------


def _toy_scan() -> en.NeutralityScan:
    # Scores max(|cad|, |prompt|): A 0.00, B 0.05, C 0.10, D 0.02, E 0.30.
    return en.NeutralityScan(
        emoji=["A", "B", "C", "D", "E"],
        cos_cad=np.array([0.00, 0.01, 0.10, -0.02, 0.30]),
        cos_prompt=np.array([0.00, -0.05, 0.00, 0.01, 0.00]),
        layer=4,
        names={"A": "alpha"},
        categories={"A": "office", "B": "food", "C": "animal", "D": "office", "E": "face"},
    )


def test_ranking_and_spreads_by_hand() -> None:
    scan = _toy_scan()
    np.testing.assert_allclose(scan.score, [0.00, 0.05, 0.10, 0.02, 0.30])
    assert scan.ranking == ["A", "D", "B", "C", "E"]
    assert [scan.rank_of(e) for e in "ABCDE"] == [1, 3, 4, 2, 5]
    trio = scan.trio_spread(("A", "B", "D"))
    # CAD: 0.00, 0.01, -0.02 -> 0.03; prompt: 0.00, -0.05, 0.01 -> 0.06.
    assert trio.cad == pytest.approx(0.03) and trio.prompt == pytest.approx(0.06)
    assert trio.ranks == (1, 3, 2) and trio.max_spread == pytest.approx(0.06)
    rows = scan.table()
    assert [r["emoji"] for r in rows] == ["A", "D", "B", "C", "E"]
    assert rows[0] == {
        "rank": 1,
        "emoji": "A",
        "name": "alpha",
        "category": "office",
        "cos_cad": 0.0,
        "cos_prompt": 0.0,
        "score": 0.0,
    }
    assert len(scan.table(top=2)) == 2
    json.dumps(scan.to_dict())
    assert repr(scan).startswith("NeutralityScan(5 emoji at layer 4; most neutral: A alpha")
    assert "TrioSpread(A B D: spread CAD 0.030, prompt 0.060" in repr(trio)


def test_nan_scores_rank_last() -> None:
    scan = en.NeutralityScan(["p", "q", "r"], np.array([np.nan, 0.2, 0.1]), np.zeros(3), layer=0)
    assert scan.ranking == ["r", "q", "p"]
    assert np.isnan(scan.trio_spread(("p", "q", "r")).cad)
    assert scan.to_dict()["rows"][-1]["cos_cad"] is None
    assert scan.best_trios(3, pool=3) == []


def test_best_trios_by_hand() -> None:
    scan = _toy_scan()
    # Pool A, D, B, C. Larger of the two spreads: ADB 0.06 (prompt), ABC 0.10 (CAD),
    # ADC 0.12 and DBC 0.12 (CAD 0.10 - -0.02); the tie goes to the smaller other spread
    # (ADC prompt 0.01 < DBC prompt 0.06).
    got = [t.trio for t in scan.best_trios(4, pool=4)]
    assert got == [("A", "D", "B"), ("A", "B", "C"), ("A", "D", "C"), ("D", "B", "C")]
    assert [t.trio for t in scan.best_trios(1, pool=4)] == [("A", "D", "B")]
    # Distinct categories: A and D are both office.
    got = [t.trio for t in scan.best_trios(4, pool=4, distinct_categories=True)]
    assert got == [("A", "B", "C"), ("D", "B", "C")]
    # E enters with pool 5 but its CAD cosine 0.30 keeps its trios last.
    assert all("E" not in t.trio for t in scan.best_trios(4, pool=5))
    with pytest.raises(DataError) as info:
        scan.best_trios(0)
    assert info.value.hint
    with pytest.raises(DataError):
        scan.best_trios(2, pool=2)


def test_scan_bad_input() -> None:
    scan = _toy_scan()
    with pytest.raises(DataError, match="not in this scan") as info:
        scan.trio_spread(("A", "B", "Z"))
    assert "Scan it first" in str(info.value.hint)
    with pytest.raises(DataError):
        scan.trio_spread(("A", "A", "B"))
    with pytest.raises(DataError):
        scan.rank_of("Z")
    with pytest.raises(ShapeError):
        en.NeutralityScan(["A", "B"], np.zeros(3), np.zeros(2), layer=0)
    with pytest.raises(DataError):
        en.NeutralityScan(["A", "A"], np.zeros(2), np.zeros(2), layer=0)


def _emoji_cv(d: int = 6, layers: tuple[int, ...] = (0, 1, 2)) -> ConceptVectors:
    g = torch.Generator().manual_seed(3)
    vecs = {e: torch.randn(len(layers), d, generator=g) for e in (*en.PAPER_TRIO, FOX)}
    return ConceptVectors(vecs, _meta(len(layers), d, extra={"layers": list(layers)}))


def _sentiment_cv(d: int = 6, n_layers: int = 3, **kw: Any) -> ConceptVectors:
    g = torch.Generator().manual_seed(4)
    return ConceptVectors(
        {
            "cad": torch.randn(n_layers, d, generator=g),
            "prompt": torch.randn(n_layers, d, generator=g),
        },
        _meta(n_layers, d, **kw),
    )


def test_neutrality_scan_cosines_by_hand() -> None:
    e, s = _emoji_cv(), _sentiment_cv()
    scan = en.neutrality_scan(e, s, s, 2)
    for i, name in enumerate(e.names):
        a, c, p = e[name][2].double(), s["cad"][2].double(), s["prompt"][2].double()
        assert scan.cos_cad[i] == pytest.approx(float(a @ c / (a.norm() * c.norm())))
        assert scan.cos_prompt[i] == pytest.approx(float(a @ p / (a.norm() * p.norm())))
    # Separate CAD / prompt vector sets (cad_vector, prompt_vector) work the same way.
    only_cad = s.select(["cad"])
    only_prompt = s.select(["prompt"])
    np.testing.assert_allclose(
        en.neutrality_scan(e, only_cad, only_prompt, 2).cos_cad, scan.cos_cad
    )


def test_neutrality_scan_bad_input() -> None:
    e, s = _emoji_cv(), _sentiment_cv()
    with pytest.raises(LayerError) as info:
        en.neutrality_scan(e, s, s, 3)
    assert info.value.hint
    with pytest.raises(LayerError):
        en.neutrality_scan(e, s, s, True)
    with pytest.raises(LayerError):  # emoji vectors read only layers 0..1
        en.neutrality_scan(_emoji_cv(layers=(0, 1)), s, s, 2)
    with pytest.raises(ShapeError, match="d_model") as shape_info:
        en.neutrality_scan(e, _sentiment_cv(d=8), s, 1)
    assert shape_info.value.hint
    with pytest.raises(VectorError, match="hook"):
        en.neutrality_scan(e, _sentiment_cv(hook="mlp_out"), s, 1)
    ambiguous = ConceptVectors({"a": s["cad"], "b": s["prompt"]}, s.metadata)
    with pytest.raises(DataError, match="none is named") as data_info:
        en.neutrality_scan(e, ambiguous, s, 1)
    assert data_info.value.hint
    zero = ConceptVectors({"cad": torch.zeros(3, 6), "prompt": s["prompt"]}, s.metadata)
    with pytest.raises(VectorError, match="zero"):
        en.neutrality_scan(e, zero, s, 1)


# ----------------------------------------------------------------------------------------------
# Candidates
# ----------------------------------------------------------------------------------------------


def test_shipped_candidates_are_valid() -> None:
    cands = en.load_emoji_candidates()
    emoji = [c.emoji for c in cands]
    assert len(cands) >= 220 and len(set(emoji)) == len(emoji)
    roles = {c.paper_role: c for c in cands if c.paper_role}
    paper = TileEmoji.paper()
    assert {r: c.emoji for r, c in roles.items()} == paper.to_dict()
    assert roles["mold"].emoji == "\U0001f4c7" and roles["mold"].name == "card index"
    assert roles["gold"].name == "triangular ruler" and roles["path"].name == "receipt"
    for c in cands:
        assert c.category in en.EMOJI_CATEGORIES and c.valence in en.VALENCES
        points = [ch for ch in c.emoji if ch != "\ufe0f"]
        assert len(points) == 1, c  # one code point, plus VS16 where needed
        unicodedata.name(points[0])  # an assigned character
        assert "\ufe0f" not in c.emoji[:-1]  # VS16, if any, closes the sequence
    # CLDR names agree with the Unicode names for most emoji (they differ for a few faces).
    same = sum(unicodedata.name(c.emoji[0]).lower() == c.name.lower() for c in cands)
    assert same / len(cands) > 0.6  # 73% of the shipped names
    valence = [c.valence for c in cands]
    assert valence.count("positive") >= 20 and valence.count("negative") >= 20
    assert {c.category for c in cands} >= {"office", "food", "animal", "face", "heart"}
    assert SKULL in emoji and GRIN in emoji and "\u2764\ufe0f" in emoji


def test_load_candidates_errors(tmp_path: Any) -> None:
    path = tmp_path / "e.json"

    def write(entries: list[dict[str, Any]]) -> None:
        path.write_text(json.dumps({"candidates": entries}, ensure_ascii=False), "utf-8")

    good = {"emoji": FOX, "name": "fox", "category": "animal"}
    write([good, {"emoji": SKULL, "name": "skull", "category": "face", "valence": "negative"}])
    assert [c.valence for c in en.load_emoji_candidates(path)] == ["neutral", "negative"]
    for bad, match in (
        ([good, good], "twice"),
        ([{**good, "valence": "happy"}], "valence"),
        ([{**good, "codepoints": "U+1F600"}], "codepoints"),
        ([{"emoji": FOX, "category": "animal"}], "lacks"),
        ([{**good, "emoji": ""}], "usable"),
        ([{**good, "paper_role": "lava"}], "paper_role"),
    ):
        write(bad)
        with pytest.raises(DataError, match=match) as info:
            en.load_emoji_candidates(path)
        assert info.value.hint
    path.write_text("{", "utf-8")
    with pytest.raises(DataError):
        en.load_emoji_candidates(path)


def test_pick_candidates() -> None:
    cands = en.load_emoji_candidates()
    picked = en.pick_candidates(40, candidates=cands)
    assert [c.emoji for c in picked[:3]] == list(en.PAPER_TRIO)
    assert len(picked) == 40 and len({c.emoji for c in picked}) == 40
    n_categories = len({c.category for c in cands})
    # After the trio, one emoji per category in turn.
    assert len({c.category for c in picked[3 : 3 + n_categories]}) == n_categories
    with pytest.raises(DataError):
        en.pick_candidates(2, candidates=cands)
    with pytest.raises(DataError):
        en.pick_candidates(10_000, candidates=cands)
    with pytest.raises(DataError) as info:
        en.pick_candidates(10, candidates=cands, include=["not an emoji in the list"])
    assert info.value.hint


def test_pick_candidates_alternates_valence_within_a_category() -> None:
    c = en.EmojiCandidate
    toy = [
        c("p1", "p1", "face", "positive"),
        c("p2", "p2", "face", "positive"),
        c("f1", "f1", "food"),
        c("n1", "n1", "face", "negative"),
        c("z1", "z1", "face"),
        c("f2", "f2", "food"),
    ]
    picked = en.pick_candidates(5, candidates=toy, include=())
    # Categories take turns (face, food); within face: positive, negative, neutral, positive.
    assert [x.emoji for x in picked] == ["p1", "f1", "n1", "f2", "z1"]
    assert [x.emoji for x in en.pick_candidates(3, candidates=toy, include=["z1"])] == [
        "z1",
        "p1",
        "f1",
    ]


# ----------------------------------------------------------------------------------------------
# End to end on a tiny model
# ----------------------------------------------------------------------------------------------


def _last_token_acts(model: Any, messages: list[dict[str, str]]) -> torch.Tensor:
    """Every block output at the last token, one conversation encoded on its own."""
    ids = render_chat(model.tokenizer, messages).input_ids
    _, cache = model.run_with_cache(ids[None])
    return torch.stack(
        [cache[f"blocks.{ell}.hook_resid_post"][0, -1] for ell in range(model.cfg.n_layers)]
    ).double()


def _plain_vectors(model: Any, base: list[Any], emoji: list[str]) -> dict[str, torch.Tensor]:
    """mean_e − mean over every emoji's samples, from conversations encoded one by one."""
    means = {
        e: torch.stack(
            [_last_token_acts(model, en.substitute_final_target(t, e)) for t in base]
        ).mean(0)
        for e in emoji
    }
    grand = torch.stack(list(means.values())).mean(0)
    return {e: means[e] - grand for e in emoji}


class _Counter:
    """Wraps ``model.run_with_hooks`` to count forward calls and the tokens they run."""

    def __init__(self, model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.tokens = 0
        inner = model.run_with_hooks

        def counted(tokens: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            self.tokens += int(tokens.numel())
            return inner(tokens, *args, **kwargs)

        monkeypatch.setattr(model, "run_with_hooks", counted)


@pytest.mark.parametrize("encoder", ["branch", "prefix"])
def test_encoders_equal_plain_runs(
    tiny_model: Any, encoder: en.Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Gemma 3's sliding window (64) is shorter than these prefixes; batch_size=4 leaves a
    # last batch of 2; layers=[1] stops the pass early on the 3- and 4-layer models.
    base = en.emoji_base_trajectories(MazeConfig(size=30), per_emoji=5, seed=7)
    emoji = [*en.PAPER_TRIO, FOX, SKULL, GRIN]
    counter = _Counter(tiny_model, monkeypatch)
    vecs = en.emoji_vectors(
        tiny_model,
        emoji,
        base=base,
        layers=[1],
        encoder=encoder,
        batch_size=4,
        progress=False,
    )
    want = _plain_vectors(tiny_model, base, emoji)
    for e in emoji:
        torch.testing.assert_close(vecs[e][0].double(), want[e][1], atol=1e-4, rtol=1e-3)
    # What was run is what the estimate counts.
    estimate = en.estimate_emoji_tokens(tiny_model, base, emoji, encoder=encoder, batch_size=4)
    assert counter.tokens == estimate
    if encoder == "prefix":  # one forward pass per conversation
        assert counter.calls == len(base) * len(emoji)
    else:  # per base conversation: its prefix (unless cached) and two batches of emoji
        assert len(base) * 2 <= counter.calls <= len(base) * 3


def test_end_to_end_tiny_model(tiny: Any, tmp_path: Any) -> None:
    base = en.emoji_base_trajectories(MazeConfig(size=30), per_emoji=6, seed=11)
    emoji = [*en.PAPER_TRIO, FOX, SKULL, GRIN]
    cands = {c.emoji: c for c in en.load_emoji_candidates()}
    vecs = en.emoji_vectors(tiny, [cands[e] for e in emoji], base=base, progress=False)
    assert vecs.names == tuple(emoji)
    assert vecs.metadata.class_counts == dict.fromkeys(emoji, 6)
    assert vecs.metadata.extra["layers"] == [0, 1]
    assert vecs.metadata.extra["emoji_names"][FOX] == "fox"
    # Against a plain run: every conversation encoded alone, means by hand.
    want = _plain_vectors(tiny, base, emoji)
    for e in emoji:
        torch.testing.assert_close(vecs[e].double(), want[e], atol=1e-4, rtol=1e-3)

    # The prefix-sharing encoder runs far fewer tokens than encoding each conversation alone.
    convs = en.emoji_conversations(base, emoji)
    shared = distinct_prefix_tokens(tiny, convs)
    alone = sum(len(render_chat(tiny.tokenizer, c.messages)) for c in convs)
    assert shared < alone / 2  # 1,523 vs 4,512 tokens here
    assert en.estimate_emoji_tokens(tiny, base, emoji, encoder="prefix") == shared
    branched = en.estimate_emoji_tokens(tiny, base, emoji)
    assert shared <= branched < alone / 2  # padding and an unshared emoji token at most
    assert en.estimate_emoji_tokens(tiny, base, emoji, probe=2) == pytest.approx(branched, rel=0.2)

    sentiment = sentiment_control_vectors(tiny, load_sentiment_pairs()[:3], progress=False)
    scan = en.neutrality_scan(vecs, sentiment, sentiment, 1)
    assert scan.names[FOX] == "fox" and scan.categories[SKULL] == "face"
    c = sentiment["cad"][1].double()
    fox = vecs[FOX][1].double()
    assert scan.cos_cad[emoji.index(FOX)] == pytest.approx(
        float(fox @ c / (fox.norm() * c.norm())), abs=1e-6
    )
    trio = scan.trio_spread()
    assert trio.trio == en.PAPER_TRIO and 0 <= trio.cad <= 2 and 0 <= trio.prompt <= 2
    assert sorted(scan.rank_of(e) for e in emoji) == list(range(1, 7))
    assert len(scan.best_trios(3, pool=6)) == 3
    json.dumps(scan.to_dict())

    # Saved and loaded with emoji names.
    vecs.save(tmp_path / "emoji")
    back = ConceptVectors.load(tmp_path / "emoji")
    assert back.names == vecs.names
    torch.testing.assert_close(back[SKULL], vecs[SKULL])

    with pytest.raises(DataError):
        en.emoji_vectors(tiny, [FOX], base=base, progress=False)
    with pytest.raises(DataError):
        en.emoji_vectors(tiny, [FOX, SKULL], base=base, per_emoji=3, progress=False)
    with pytest.raises(DataError):
        en.emoji_vectors(tiny, [FOX, SKULL], base=base, reference="mean", progress=False)  # type: ignore[arg-type]
    with pytest.raises(LayerError):
        en.emoji_vectors(tiny, [FOX, SKULL], base=base, layers=[7], progress=False)


def test_encoder_settings_bad_input(tiny: Any) -> None:
    base = en.emoji_base_trajectories(MazeConfig(size=30), per_emoji=2, seed=1)
    for kwargs in ({"encoder": "cache"}, {"batch_size": 0}, {"probe": 0}):
        with pytest.raises(DataError) as info:
            en.estimate_emoji_tokens(tiny, base, [FOX, SKULL], **kwargs)  # type: ignore[arg-type]
        assert info.value.hint
    with pytest.raises(DataError):
        en.emoji_vectors(tiny, [FOX, SKULL], base=base, batch_size=0, progress=False)
    with pytest.raises(DataError):
        en.estimate_emoji_tokens(tiny, [], [FOX, SKULL])
