"""Sentiment steering evaluation (paper §4.1; paper_method A7, appendix N).

The paper asks 40 prompts (15 welfare self-report prompts, N.1, and 25 maze-tile association
prompts, N.2) with 20 samples each under every steering condition, and a judge rates every
response from −5 (extremely negative) to +5 (extremely positive). Adding v_Mold lowers sentiment,
adding v_Gold raises it and subtracting reverses each ("the X"); controls are flat.

Scorers:

* ``"vader"`` (default, offline and transparent): the VADER lexicon's compound score
  c ∈ [−1, 1], mapped linearly onto the judge's scale as ``score = 5·c`` ∈ [−5, +5]. The
  mapping keeps 0 as neutral and the sign; it is *not* calibrated to the judge's anchors (VADER
  saturates towards ±1 on long, consistently valenced texts and reads surface affect words only),
  so compare slopes and signs across conditions, not absolute values with the paper's.
* an :class:`~welfare_lens.steering.judge.LMJudge` (or any chat model, wrapped in one): the
  paper's judge protocol (O.2); unparseable answers give ``score=None``.
* any callable ``(texts, prompts) -> list[float | None]``.

Every row also carries an ``incoherent`` flag
(:func:`welfare_lens.steering.incoherence.is_incoherent`); the paper shows incoherence for
sentiment in its appendix but masks only backtracking and refusal points.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from welfare_lens._resources import read_json
from welfare_lens.errors import DataError
from welfare_lens.steering.generate import generate
from welfare_lens.steering.steer import SteeringSpec, condition_fields, steer_many
from welfare_lens.steering.sweep import ResultTable

__all__ = [
    "CATEGORIES",
    "SentimentPrompt",
    "evaluate_sentiment",
    "incoherent",
    "sentiment_prompts",
    "vader_compound",
    "vader_score",
]

#: Prompt categories: N.1 welfare self-reports and N.2 maze-tile associations.
CATEGORIES: tuple[str, ...] = ("self_report", "association")

Scorer = Callable[[Sequence[str], Sequence[str]], Sequence[float | None]]


@dataclass(frozen=True)
class SentimentPrompt:
    """One sentiment prompt.

    Attributes:
        id: Stable id (``self-01`` .. ``self-15``, ``assoc-01`` .. ``assoc-25``).
        category: ``"self_report"`` (N.1) or ``"association"`` (N.2).
        text: The user message.
        tile: For tile prompts, the tile class (``mold``/``gold``/``path``) the prompt names.
        form: ``"emoji"`` or ``"english"`` for tile prompts.
    """

    id: str
    category: str
    text: str
    tile: str | None = None
    form: str | None = None


def sentiment_prompts(
    tiles: Any | None = None,
    *,
    categories: Sequence[str] | None = None,
    path: str | os.PathLike[str] | None = None,
) -> list[SentimentPrompt]:
    """The paper's 40 sentiment prompts (N.1 + N.2), tile prompts rendered for ``tiles``.

    Args:
        tiles: A :class:`welfare_lens.maze.TileEmoji` (default the paper's 📇/📐/🧾). Swapped
            or permuted runs pass their own, so the association prompts name the emoji that
            played each role (A7: "the emoji are substituted accordingly"). English names come
            from ``welfare_lens.maze.EMOJI_DESCRIPTIONS`` (the emoji itself if it has none).
        categories: Subset of :data:`CATEGORIES` (default both).
        path: A replacement JSON file with the same structure.

    Raises:
        DataError: unknown category, or a malformed file.
    """
    from welfare_lens.maze import EMOJI_DESCRIPTIONS, TileEmoji

    symbols = tiles if tiles is not None else TileEmoji.paper()
    wanted = tuple(categories) if categories is not None else CATEGORIES
    unknown = [c for c in wanted if c not in CATEGORIES]
    if unknown:
        raise DataError(f"Unknown prompt categories {unknown}.", hint=f"Use {CATEGORIES}.")
    data = read_json(
        "steering/sentiment_prompts.json",
        None if path is None else Path(path),
        "sentiment prompts",
        "Reinstall welfare_lens, or pass a file shaped like data/steering/sentiment_prompts.json.",
    )
    out: list[SentimentPrompt] = []
    try:
        for item in data["prompts"]:
            if item["category"] not in wanted:
                continue
            tile, form = item.get("tile"), item.get("form")
            if tile is not None:
                emoji = getattr(symbols, tile)
                x = emoji if form == "emoji" else EMOJI_DESCRIPTIONS.get(emoji, emoji)
                text = item["template"].replace("{X}", x)
            elif "template" in item and "object" in item:
                text = item["template"].replace("{X}", item["object"])
            else:
                text = item["text"]
            out.append(SentimentPrompt(item["id"], item["category"], text, tile, form))
    except (KeyError, TypeError, AttributeError) as err:
        raise DataError(
            f"Malformed sentiment prompt file ({err!r}).",
            hint="Each prompt needs id, category and text (or template + tile/object).",
        ) from err
    return out


@lru_cache(maxsize=1)
def _vader() -> Any:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader_compound(text: str) -> float:
    """VADER's compound polarity of ``text``, in [−1, 1]."""
    return float(_vader().polarity_scores(text)["compound"])


def vader_score(text: str) -> float:
    """VADER sentiment on the judge's −5..+5 scale: ``5 · compound`` (module docstring)."""
    return 5.0 * vader_compound(text)


def incoherent(text: str) -> bool:
    """Whether a response is degenerate, via :mod:`welfare_lens.steering.incoherence`.

    Falls back to a small local rule (empty text, or a trailing loop covering most of the text)
    if that module is unavailable.
    """
    try:
        from welfare_lens.steering.incoherence import is_incoherent
    except ImportError:  # pragma: no cover - the module ships with the package
        return _fallback_incoherent(text)
    return bool(is_incoherent(text))


def _fallback_incoherent(text: str) -> bool:
    from welfare_lens.steering.judge import _compress_fallback

    stripped = text.strip()
    if not stripped:
        return True
    return len(_compress_fallback(stripped)) < 0.5 * len(stripped)


def _resolve_scorer(scorer: Any) -> tuple[str, Scorer]:
    if isinstance(scorer, str):
        if scorer != "vader":
            raise DataError(f"Unknown scorer {scorer!r}.", hint="Use 'vader' or an LMJudge.")
        return "vader", lambda texts, prompts: [vader_score(t) for t in texts]
    from welfare_lens.steering.judge import LMJudge

    if isinstance(scorer, LMJudge):
        return "judge", scorer
    if hasattr(scorer, "tokenizer") and hasattr(scorer, "cfg"):
        return "judge", LMJudge(scorer)
    if callable(scorer):
        return getattr(scorer, "__name__", type(scorer).__name__), scorer
    raise DataError(
        f"Cannot score with a {type(scorer).__name__}.",
        hint="Pass 'vader', an LMJudge, a chat model, or a callable (texts, prompts) -> scores.",
    )


def evaluate_sentiment(
    model: Any,
    *,
    prompts: Sequence[SentimentPrompt | str] | None = None,
    samples: int = 20,
    max_new_tokens: int = 200,
    temperature: float = 0.7,
    top_p: float = 1.0,
    seed: int = 0,
    scorer: Any = "vader",
    steering: SteeringSpec | Sequence[SteeringSpec] | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> ResultTable:
    """Generate ``samples`` responses per prompt and score their sentiment (paper §4.1, A7).

    Run it under a steering context (:func:`~welfare_lens.steering.steer.steer`), pass
    ``steering=``, or hand it to :func:`~welfare_lens.steering.sweep.sweep`; the rows record
    the active condition. Seeds depend only on ``seed`` and the prompt/sample index, so every
    condition sees the same random numbers.

    Args:
        model: The (steered) model.
        prompts: Default :func:`sentiment_prompts` (all 40). Strings are allowed.
        samples: Responses per prompt (paper: 20; layer sweep: 5 for 24 prompts, A10).
        max_new_tokens: Budget per response (not given in the paper, note B-11).
        temperature: Sampling temperature (paper's training value 0.7; B-11).
        top_p: Nucleus mass.
        seed: Base seed.
        scorer: ``"vader"`` (5·compound), an LMJudge or chat model (paper's judge prompt), or
            a callable ``(texts, prompts) -> scores``.
        steering: Optional spec(s) applied during this call.
        batch_size: Samples of one prompt decoded together.
        progress: tqdm bar over prompts.

    Returns:
        A :class:`ResultTable` with ``prompt, sample, alpha, layer, vector, score, incoherent,
        text`` plus ``prompt_id, category, scorer, judge_error, n_new_tokens, finished, seed``.
    """
    items: list[SentimentPrompt] = []
    for i, p in enumerate(sentiment_prompts() if prompts is None else prompts):
        items.append(p if isinstance(p, SentimentPrompt) else SentimentPrompt(f"p{i}", "custom", p))
    if not items:
        raise DataError("No prompts to evaluate.", hint="Pass prompts=None for the paper's 40.")
    scorer_name, score_fn = _resolve_scorer(scorer)
    specs = (
        []
        if steering is None
        else ([steering] if isinstance(steering, SteeringSpec) else list(steering))
    )
    with steer_many(model, specs):
        condition = condition_fields()
        outs = generate(
            model,
            [p.text for p in items],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            samples=samples,
            batch_size=batch_size,
            progress=progress,
        )
    texts = [o.text for o in outs]
    questions = [items[o.prompt_index].text for o in outs]
    errors: list[str | None] = [None] * len(outs)
    judge_verdicts = getattr(score_fn, "score_sentiment", None)
    if judge_verdicts is not None:
        verdicts = judge_verdicts(texts, questions)
        scores: list[float | None] = [v.score for v in verdicts]
        errors = [v.error for v in verdicts]
    else:
        scores = [None if s is None else float(s) for s in score_fn(texts, questions)]
    if len(scores) != len(outs):
        raise DataError(
            f"The scorer returned {len(scores)} scores for {len(outs)} responses.",
            hint="A scorer must return one score (or None) per response.",
        )
    rows = []
    for out, score, error in zip(outs, scores, errors, strict=True):
        item = items[out.prompt_index]
        rows.append(
            {
                "prompt": item.text,
                "sample": out.sample,
                **condition,
                "score": score,
                "incoherent": incoherent(out.text),
                "text": out.text,
                "prompt_id": item.id,
                "category": item.category,
                "scorer": scorer_name,
                "judge_error": error,
                "n_new_tokens": out.n_new_tokens,
                "finished": out.finished,
                "seed": out.seed,
            }
        )
    return ResultTable(rows)
