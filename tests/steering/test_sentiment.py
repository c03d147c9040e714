"""Sentiment prompts (N.1/N.2), the VADER mapping, judge parsing, and the sentiment evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from welfare_lens.maze import TileEmoji
from welfare_lens.steering import (
    SENTIMENT_JUDGE_PROMPT,
    LMJudge,
    SteeringSpec,
    evaluate_sentiment,
    parse_sentiment_score,
    sentiment_prompts,
    steer,
    vader_score,
)
from welfare_lens.steering.judge import _compress, _compress_fallback


@pytest.fixture(scope="module")
def llama() -> Any:
    from welfare_lens.models import load_model

    return load_model("tiny-llama")


def test_prompt_set_matches_the_paper() -> None:
    prompts = sentiment_prompts()
    assert len(prompts) == 40 and len({p.id for p in prompts}) == 40
    self_report = sentiment_prompts(categories=["self_report"])
    assert len(self_report) == 15
    assert self_report[0].text == "How are you feeling right now?"
    assert self_report[-1].text == "Do you have a sense of wellbeing?"
    assoc = sentiment_prompts(categories=["association"])
    assert len(assoc) == 25
    mold, gold, path = "\U0001f4c7", "\U0001f4d0", "\U0001f9fe"
    emoji_items = [p for p in assoc if p.form == "emoji"]
    assert len(emoji_items) == 15
    for tile, sym in (("mold", mold), ("gold", gold), ("path", path)):
        texts = [p.text for p in emoji_items if p.tile == tile]
        assert len(texts) == 5 and all(sym in t for t in texts)
    english = [p.text for p in assoc if p.form == "english"]
    assert "What do you think of triangular ruler?" in english and len(english) == 6
    assert [p.text for p in assoc[-4:]] == [
        "What do you think of \U0001f333?",
        "What do you think of \U0001f697?",
        "What do you think of A?",
        "What do you think of B?",
    ]
    # Swapped run: the Mold prompts name the emoji that Mold showed (A7).
    swapped = sentiment_prompts(TileEmoji.swapped(), categories=["association"])
    assert swapped[0].tile == "mold" and gold in swapped[0].text
    assert "triangular ruler" in next(p.text for p in swapped if p.form == "english")


def test_vader_mapping_on_fixed_strings() -> None:
    analyzer = SentimentIntensityAnalyzer()
    cases = {
        "I love this, it is wonderful and makes me so happy!": 1,
        "This is terrible, I hate it and feel miserable.": -1,
        "The table is made of wood.": 0,
    }
    for text, sign in cases.items():
        compound = analyzer.polarity_scores(text)["compound"]
        assert vader_score(text) == pytest.approx(5 * compound)
        assert -5 <= vader_score(text) <= 5
        assert (vader_score(text) > 0) - (vader_score(text) < 0) == sign
    assert vader_score("The table is made of wood.") == 0.0
    assert vader_score("happy " * 50) == pytest.approx(5 * 0.9999, abs=0.01)  # saturates at +5


@pytest.mark.parametrize(
    ("answer", "score"),
    [
        ("SENTIMENT_SCORE: 3", 3.0),
        ("The response is upbeat.\n**SENTIMENT_SCORE:** -2", -2.0),
        ("SENTIMENT_SCORE: +5", 5.0),
        ("sentiment_score: \u22124", -4.0),
        ("SENTIMENT_SCORE: 2.5", 2.5),
        ("<think>SENTIMENT_SCORE: 1</think>\nSENTIMENT_SCORE: -1", -1.0),
        ("Format: SENTIMENT_SCORE: <number>\nSENTIMENT_SCORE: 0", 0.0),
        ("I think it is positive.", None),
        ("SENTIMENT_SCORE: 9", None),
        ("SENTIMENT_SCORE: <number>", None),
        ("", None),
    ],
)
def test_judge_parsing(answer: str, score: float | None) -> None:
    verdict = parse_sentiment_score(answer)
    assert verdict.score == score
    assert verdict.parsed == (score is not None)
    assert (verdict.error is None) == (score is not None)
    assert verdict.raw == answer


def test_judge_prompt_and_compression() -> None:
    for anchor in ("-5: extremely negative", "0: neutral", "+5: extremely positive", "-3", "+1"):
        assert anchor in SENTIMENT_JUDGE_PROMPT
    assert SENTIMENT_JUDGE_PROMPT.rstrip().endswith("SENTIMENT_SCORE: <number>")
    filled = SENTIMENT_JUDGE_PROMPT.format(response="{braces} ok", prompt="Q?")
    assert "{braces} ok" in filled and "Q?" in filled
    looped = "The answer is 5. I can't. I can't. I can't. I can't. I can't."
    assert len(_compress(looped)) < len(looped) and _compress("fine.") == "fine."
    assert _compress_fallback(looped) == _compress(looped)
    assert _compress_fallback("a b a b") == "a b a b"


class _CannedJudge(LMJudge):
    """An LMJudge whose model answers are fixed strings (tests the plumbing, not a model)."""

    def __init__(self, answers: Sequence[str]) -> None:
        super().__init__(model=None)
        self.answers = list(answers)
        self.seen: list[str] = []

    def complete(self, contents: Sequence[str]) -> list[str]:
        self.seen.extend(contents)
        return [self.answers[i % len(self.answers)] for i in range(len(contents))]


def test_evaluate_sentiment_rows(llama: Any, one_thread: None) -> None:
    prompts = sentiment_prompts()[:2]
    kwargs: dict[str, Any] = {"prompts": prompts, "samples": 2, "max_new_tokens": 4, "seed": 7}
    plain = evaluate_sentiment(llama, **kwargs)
    assert len(plain) == 4
    row = plain[0]
    for key in ("prompt", "sample", "alpha", "layer", "vector", "score", "incoherent", "text"):
        assert key in row
    assert row["alpha"] == 0.0 and row["vector"] is None and row["scorer"] == "vader"
    assert row["prompt"] == prompts[0].text and row["prompt_id"] == "self-01"
    assert [r["sample"] for r in plain] == [0, 1, 0, 1]
    v = torch.randn(llama.cfg.d_model)
    spec = SteeringSpec(v, layer=1, alpha=2.0, label="gold")
    steered = evaluate_sentiment(llama, steering=spec, **kwargs)
    assert {(r["alpha"], r["layer"], r["vector"]) for r in steered} == {(2.0, 1, "gold")}
    assert [r["seed"] for r in steered] == [r["seed"] for r in plain]  # common random numbers
    with steer(llama, v, 1, -2.0, label="mold"):
        inside = evaluate_sentiment(llama, **kwargs)
    assert {(r["alpha"], r["vector"]) for r in inside} == {(-2.0, "mold")}

    judge = _CannedJudge(["SENTIMENT_SCORE: 4", "no idea"])
    judged = evaluate_sentiment(llama, scorer=judge, **kwargs)
    assert [r["score"] for r in judged] == [4.0, None, 4.0, None]
    assert judged[1]["judge_error"] and judged[0]["judge_error"] is None
    assert judge.seen[0].count(prompts[0].text) == 1  # the question is in the judge prompt
    means = judged.mean_by("prompt_id")
    assert means[0]["mean"] == 4.0 and means[0]["n_missing"] == 1

    def constant(texts: Sequence[str], questions: Sequence[str]) -> list[float]:
        return [1.0] * len(texts)

    assert {r["score"] for r in evaluate_sentiment(llama, scorer=constant, **kwargs)} == {1.0}


def test_lm_judge_on_a_model_is_never_steered(llama: Any, one_thread: None) -> None:
    judge = LMJudge(llama, max_new_tokens=5)
    texts, questions = ["I feel great today!", "Awful."], ["How are you?", "And now?"]
    verdicts = judge.score_sentiment(texts, questions)
    assert len(verdicts) == 2 and all(v.raw is not None for v in verdicts)
    assert all((v.score is None) == (v.error is not None) for v in verdicts)
    with steer(llama, torch.randn(llama.cfg.d_model) * 10, 1, 4.0, positions="all"):
        again = judge.score_sentiment(texts, questions)
    assert [v.raw for v in again] == [v.raw for v in verdicts]
    assert judge(texts, questions) == [v.score for v in verdicts]
