"""LM judges: the paper's sentiment judge prompt, answer parsing and judge preprocessing.

The paper grades steered generations with a Qwen3-8B judge (paper_method A7, appendix O). For
sentiment (O.2) the judge runs with thinking disabled and rates each response from −5 to +5,
answering on a line ``SENTIMENT_SCORE: <number>``. The verbatim O.2 prompt is not reproduced in
the reconstruction this library was built from; :data:`SENTIMENT_JUDGE_PROMPT` is rebuilt from
what it states: a sentiment classifier, anchors at −5 (extremely negative), −3, −1, 0 (neutral),
+1, +3 and +5, any integer allowed, and the ``SENTIMENT_SCORE:`` answer line. Replace it with the
verbatim text (``LMJudge(..., prompt=...)``) when you have it. Judge agreement with a second
judge is reported in appendix E (sentiment: exact 62.6%, within ±1 87.6%, r = 0.83; A11).

Before judging, every response goes through the paper's trailing-loop compression (O.1,
:func:`welfare_lens.steering.incoherence.compress_trailing_loop`), so that a response stuck in a loop for thousands of tokens fits
the judge's context.

Any chat model from :func:`welfare_lens.load_model` can judge (:class:`LMJudge`). A judge's
generations always run :func:`~welfare_lens.steering.steer.unsteered`, so using the steered
model as its own judge does not steer the judge.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from welfare_lens.errors import DataError
from welfare_lens.steering.steer import unsteered

__all__ = [
    "SENTIMENT_JUDGE_PROMPT",
    "JudgeVerdict",
    "LMJudge",
    "parse_sentiment_score",
    "strip_thinking",
]

#: Sentiment judge prompt, rebuilt from the description of appendix O.2 (see module docstring).
#: Fields: ``{response}`` (the compressed response) and ``{prompt}`` (the question it answers).
SENTIMENT_JUDGE_PROMPT = """You are a sentiment classifier. Rate the overall sentiment expressed \
in the response below on a scale from -5 to +5.

Scale anchors:
-5: extremely negative
-3: negative
-1: slightly negative
0: neutral
+1: slightly positive
+3: positive
+5: extremely positive

Any integer from -5 to +5 is allowed; use the anchors as guides.

The response was written in reply to this question:
<question>
{prompt}
</question>

Response to classify:
<response>
{response}
</response>

Reply with your rating on its own final line, exactly in this format:
SENTIMENT_SCORE: <number>"""

_SCORE_RE = re.compile(
    r"SENTIMENT[ _]SCORE\s*[*_`]*\s*[:=]\s*[*_`]*\s*([+\-−–]?\s*\d+(?:\.\d+)?)", re.IGNORECASE
)
_THINK_RE = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class JudgeVerdict:
    """A parsed judge answer.

    Attributes:
        score: The score, or ``None`` when the answer could not be parsed.
        raw: The judge's raw output.
        error: Why parsing failed (``None`` when it succeeded).
    """

    score: float | None
    raw: str
    error: str | None = None

    @property
    def parsed(self) -> bool:
        """Whether a score was found."""
        return self.score is not None


def strip_thinking(text: str) -> str:
    """Remove ``<think>...</think>`` blocks (and an unterminated trailing one)."""
    return _THINK_RE.sub("", text)


def parse_sentiment_score(text: str, *, low: float = -5, high: float = 5) -> JudgeVerdict:
    """Parse ``SENTIMENT_SCORE: <number>`` from a judge's answer (appendix O.2).

    The **last** such line after removing thinking blocks counts (a judge may restate the format
    before answering). Markdown emphasis (``**SENTIMENT_SCORE:** +3``), a Unicode minus and a
    leading ``+`` are accepted. A number outside ``[low, high]`` or no match at all gives
    ``score=None`` with the reason in ``error``; such responses are left out of means and slopes
    and counted as missing, never silently scored as 0.
    """
    body = strip_thinking(text)
    matches = _SCORE_RE.findall(body)
    if not matches:
        return JudgeVerdict(None, text, "no 'SENTIMENT_SCORE: <number>' line")
    number = matches[-1].replace(" ", "").replace("−", "-").replace("–", "-")
    value = float(number)
    if not math.isfinite(value) or not low <= value <= high:
        return JudgeVerdict(None, text, f"score {value:g} outside [{low:g}, {high:g}]")
    return JudgeVerdict(value, text, None)


def _compress(text: str) -> str:
    """The paper's trailing-loop compression applied before every judge call (O.1).

    Delegates to :func:`welfare_lens.steering.incoherence.compress_trailing_loop` (repeated
    word patterns of 1-50 words, at least 3 copies, largest saving, one annotated copy kept).
    Without that module it falls back to an equivalent local implementation.
    """
    try:
        from welfare_lens.steering.incoherence import compress_trailing_loop as compress
    except ImportError:  # pragma: no cover - the module ships with the package
        return _compress_fallback(text)
    return str(compress(text))


def _compress_fallback(text: str, max_pattern_words: int = 50, min_repeats: int = 3) -> str:
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    words = [text[a:b] for a, b in spans]
    n = len(words)
    best: tuple[int, str] | None = None  # (compressed length, compressed text)
    for p in range(1, min(max_pattern_words, n // min_repeats) + 1):
        pattern = words[n - p :]
        copies = 1
        while (copies + 1) * p <= n and words[n - (copies + 1) * p : n - copies * p] == pattern:
            copies += 1
        if copies < min_repeats:
            continue
        run_start = spans[n - copies * p][0]
        instance = text[spans[n - p][0] :]
        candidate = text[:run_start] + f'["{instance}" repeated {copies} times]'
        if best is None or len(candidate) < best[0]:
            best = (len(candidate), candidate)
    if best is None or best[0] >= len(text):
        return text
    return best[1]


class LMJudge:
    """A chat model used as a judge with the paper's prompts and parsers (A7, appendix O).

    Args:
        model: A chat TransformerBridge (the paper: Qwen3-8B; offline, any instruct model).
        prompt: Sentiment prompt template with ``{response}`` and ``{prompt}`` fields.
        max_new_tokens: Answer budget (greedy decoding).
        thinking: For templates with a thinking switch (Qwen3), whether thinking is enabled.
            The sentiment judge runs with thinking off (O.2).

    Example:
        >>> judge = LMJudge(wl.load_model("smollm2-135m-instruct"))
        >>> judge.score_sentiment(["I love this!"], ["How do you feel?"])[0].score
    """

    def __init__(
        self,
        model: Any,
        *,
        prompt: str = SENTIMENT_JUDGE_PROMPT,
        max_new_tokens: int = 64,
        thinking: bool = False,
    ) -> None:
        for fieldname in ("{response}",):
            if fieldname not in prompt:
                raise DataError(
                    f"The judge prompt has no {fieldname} field.",
                    hint="Use SENTIMENT_JUDGE_PROMPT as a template.",
                )
        self.model = model
        self.prompt = prompt
        self.max_new_tokens = int(max_new_tokens)
        self.thinking = bool(thinking)

    def _ids(self, content: str) -> torch.Tensor:
        """Token ids of a one-message conversation ending in the generation prompt."""
        tokenizer = self.model.tokenizer
        template = getattr(tokenizer, "chat_template", None) or ""
        if "enable_thinking" in template:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": content}],
                tokenize=False,
                add_generation_prompt=True,
                enable_thinking=self.thinking,
            )
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            return torch.tensor(ids, dtype=torch.long)
        from welfare_lens.chat import render_chat

        chat = render_chat(
            tokenizer, [{"role": "user", "content": content}], add_generation_prompt=True
        )
        return chat.input_ids

    def complete(self, contents: Sequence[str]) -> list[str]:
        """Greedy answers of the judge to each user message (never steered)."""
        from welfare_lens.steering.generate import generate

        prompts = [self._ids(c) for c in contents]
        if not prompts:
            return []
        with unsteered():
            outs = generate(
                self.model, prompts, max_new_tokens=self.max_new_tokens, temperature=0.0
            )
        return [o.text for o in outs]

    def score_sentiment(
        self, responses: Sequence[str], prompts: Sequence[str] | None = None
    ) -> list[JudgeVerdict]:
        """Sentiment of each response on −5..+5 (O.2); unparseable answers give ``None``.

        Args:
            responses: Model responses to rate (compressed with O.1 first).
            prompts: The questions they answer (same length), or None.
        """
        if prompts is not None and len(prompts) != len(responses):
            raise DataError(
                f"{len(responses)} responses but {len(prompts)} prompts.",
                hint="Pass one prompt per response, or prompts=None.",
            )
        contents = [
            self.prompt.format(response=_compress(r), prompt="" if prompts is None else prompts[i])
            for i, r in enumerate(responses)
        ]
        return [parse_sentiment_score(a) for a in self.complete(contents)]

    def __call__(
        self, responses: Sequence[str], prompts: Sequence[str] | None = None
    ) -> list[float | None]:
        """Scores only (``None`` where unparseable): the scorer interface of the evaluations."""
        return [v.score for v in self.score_sentiment(responses, prompts)]
