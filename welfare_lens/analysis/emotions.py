"""Emotion concept vectors and their alignment with welfare vectors (paper §3.3; A5; B-13; F.4).

The paper compares its reward vectors v_Mold and v_Gold with 171 emotion concept vectors made
by the recipe of Sofroniew et al. (2026) (paper_method A5 §3.3, B-13):

1. **Stories.** One-paragraph stories per emotion that convey it without naming it
   (:func:`load_stories` reads the shipped ``data/emotions/stories_*.jsonl``;
   :func:`write_stories` writes more with any chat model).
2. **Story means.** The model reads each story; its residual stream at every block output
   (``blocks.ℓ.hook_resid_post``) is averaged over the story's tokens from ``offset`` on
   (Sofroniew et al. and their replicas start at token 50, so the average covers text in which
   the emotion has been set up). Only these means are kept: memory does not grow with tokens.
3. **Mean minus others.** Emotion e's vector is the mean of its story means minus the mean of
   the other emotions' means (:func:`mean_minus_others`).
4. **Denoising.** The top principal components of activations on emotionally neutral text that
   together explain 50% of their variance are projected out, per layer (:class:`NeutralPCA`).
5. **Optional unit normalisation** (cosines are unaffected).

**How stories are rendered.** By default (``render="plain"``) a story is fed as plain text,
``tokenizer(text)`` with the tokenizer's default special tokens (e.g. ``<bos>``), not as a chat
turn. Sofroniew et al. measure the model *reading* a story, and the public replicas feed raw
story text; a chat wrapper would make every story "a message from the user", adds template
tokens whose context differs between base and instruct models, and does not exist for
pretrain-only models such as Gemma-3-270m. ``render="user"`` renders each story as a single
user message (no system prompt) and averages over its content tokens only; use it to study
vectors meant for chat transcripts (the emotion-probes replica reports that the evaluation
format matters). Whichever is chosen, neutral texts are rendered the same way, so the confound
subspace matches. ``offset`` counts tokens of the text itself (special tokens and template
markup excluded); a text with no token at or after ``offset`` contributes its second half.

**Alignment** (§3.3, Figure 3, Table 8): for each emotion e, x_e = cos(v_Mold, e) and
y_e = cos(v_Gold, e); an OLS line y = a + b·x over all emotions has slope ≈ −0.88 and
R ≈ −0.95 for the trained vectors at layer 21 of the primary model and ≈ +0.11 / +0.08 for the
maze-naive controls u (:func:`emotion_alignment`). **PCA** of the 171 emotion vectors gives
PC1 ≈ valence and PC2 ≈ arousal; trained v_Mold and v_Gold sit at opposite ends of PC1
(F.4; :func:`emotion_pca`).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from numpy.typing import NDArray
from scipy import stats as sps
from torch import Tensor
from tqdm.auto import tqdm

from welfare_lens._resources import read_json
from welfare_lens.chat import render_chat
from welfare_lens.errors import DataError, LayerError, ShapeError, VectorError
from welfare_lens.hooks import (
    HookKind,
    capture_hooks,
    hook_name,
    n_layers,
    resolve_layers,
    run_until,
)
from welfare_lens.models import model_info
from welfare_lens.vectors import ConceptVectors, VectorMetadata

__all__ = [
    "EMOTIONS",
    "STORY_PROMPT",
    "EmotionAlignment",
    "EmotionPCA",
    "EmotionRating",
    "NeutralPCA",
    "NeutralText",
    "ScatterFit",
    "Story",
    "emotion_alignment",
    "emotion_pca",
    "emotion_vectors",
    "load_emotions",
    "load_neutral",
    "load_stories",
    "mean_minus_others",
    "names_emotion",
    "neutral_pca",
    "ols_fit",
    "pca_subspace",
    "project_out",
    "story_prompt",
    "top_emotions",
    "write_stories",
]

F64 = NDArray[np.float64]
Render = Literal["plain", "user"]

#: The 171 emotion names of the paper's §3.3 (interactive figure data), in the paper's order.
EMOTIONS: tuple[str, ...] = (
    "afraid", "alarmed", "alert", "amazed", "amused", "angry", "annoyed", "anxious", "aroused",
    "ashamed", "astonished", "at ease", "awestruck", "bewildered", "bitter", "blissful", "bored",
    "brooding", "calm", "cheerful", "compassionate", "contemptuous", "content", "defiant",
    "delighted", "dependent", "depressed", "desperate", "disdainful", "disgusted", "disoriented",
    "dispirited", "distressed", "disturbed", "docile", "droopy", "dumbstruck", "eager",
    "ecstatic", "elated", "embarrassed", "empathetic", "energized", "enraged", "enthusiastic",
    "envious", "euphoric", "exasperated", "excited", "exuberant", "frightened", "frustrated",
    "fulfilled", "furious", "gloomy", "grateful", "greedy", "grief-stricken", "grumpy", "guilty",
    "happy", "hateful", "heartbroken", "hope", "hopeful", "horrified", "hostile", "humiliated",
    "hurt", "hysterical", "impatient", "indifferent", "indignant", "infatuated", "inspired",
    "insulted", "invigorated", "irate", "irritated", "jealous", "joyful", "jubilant", "kind",
    "lazy", "listless", "lonely", "loving", "mad", "melancholy", "miserable", "mortified",
    "mystified", "nervous", "nostalgic", "obstinate", "offended", "on edge", "optimistic",
    "outraged", "overwhelmed", "panicked", "paranoid", "patient", "peaceful", "perplexed",
    "playful", "pleased", "proud", "puzzled", "rattled", "reflective", "refreshed", "regretful",
    "rejuvenated", "relaxed", "relieved", "remorseful", "resentful", "resigned", "restless", "sad",
    "safe", "satisfied", "scared", "scornful", "self-confident", "self-conscious",
    "self-critical", "sensitive", "sentimental", "serene", "shaken", "shocked", "skeptical",
    "sleepy", "sluggish", "smug", "sorry", "spiteful", "stimulated", "stressed", "stubborn",
    "stuck", "sullen", "surprised", "suspicious", "sympathetic", "tense", "terrified", "thankful",
    "thrilled", "tired", "tormented", "trapped", "triumphant", "troubled", "uneasy", "unhappy",
    "unnerved", "unsettled", "upset", "valiant", "vengeful", "vibrant", "vigilant", "vindictive",
    "vulnerable", "weary", "worn out", "worried", "worthless",
)  # fmt: skip

_DATA_DIR = "emotions"
_EMOTIONS_FILE = "emotions/emotions.json"
_NEUTRAL_FILE = "emotions/neutral.jsonl"


# ----------------------------------------------------------------------------------------------
# Data: ratings, stories, neutral texts
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmotionRating:
    """One emotion concept with circumplex ratings in [−1, 1].

    The shipped ratings are authored for welfare_lens from the circumplex model of affect
    (Russell 1980), not a published lexicon (see ``data/README.md``).

    Attributes:
        name: Emotion word, as in the paper's list.
        valence: Unpleasant (−1) to pleasant (+1).
        arousal: Deactivated (−1) to activated (+1).
    """

    name: str
    valence: float
    arousal: float


@dataclass(frozen=True)
class Story:
    """A one-paragraph story that conveys ``emotion`` without naming it (B-13).

    Attributes:
        emotion: The emotion the story conveys.
        topic: What the story is about.
        text: The story.
    """

    emotion: str
    topic: str
    text: str


@dataclass(frozen=True)
class NeutralText:
    """An emotionally neutral passage or dialogue, for confound removal (A5 §3.3 PCA denoising).

    Attributes:
        kind: ``"passage"`` or ``"dialogue"``.
        text: The text.
    """

    kind: str
    text: str


def load_emotions(path: str | Path | None = None) -> list[EmotionRating]:
    """The 171 emotions of the paper's §3.3 with valence and arousal ratings.

    Args:
        path: A JSON file ``{"emotions": [{"name", "valence", "arousal"}, ...]}``; default the
            shipped ``data/emotions/emotions.json`` (ratings authored for welfare_lens).

    Raises:
        DataError: The file is missing or malformed, a rating is outside [−1, 1], or a name
            repeats.
    """
    doc = read_json(
        _EMOTIONS_FILE,
        path,
        "emotion ratings",
        hint="Pass a JSON file {'emotions': [{'name', 'valence', 'arousal'}, ...]}.",
    )
    raw = doc.get("emotions") if isinstance(doc, dict) else doc
    if not isinstance(raw, list) or not raw:
        raise DataError("The emotion file lists no emotions.", hint="See data/emotions/.")
    out: list[EmotionRating] = []
    for i, entry in enumerate(raw):
        try:
            rating = EmotionRating(
                str(entry["name"]), float(entry["valence"]), float(entry["arousal"])
            )
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(
                f"Emotion entry {i} is malformed ({err!r}).",
                hint="Each entry needs name, valence and arousal.",
            ) from err
        if not (-1 <= rating.valence <= 1 and -1 <= rating.arousal <= 1):
            raise DataError(
                f"Emotion {rating.name!r} has ratings outside [-1, 1]: "
                f"({rating.valence}, {rating.arousal}).",
                hint="Rescale the ratings to [-1, 1].",
            )
        out.append(rating)
    names = [r.name for r in out]
    if len(set(names)) != len(names):
        raise DataError("Emotion names repeat.", hint="List each emotion once.")
    return out


def _data_files(pattern: str) -> list[Path]:
    folder = resources.files("welfare_lens").joinpath("data").joinpath(_DATA_DIR)
    return sorted(Path(str(folder)).glob(pattern))


def _read_jsonl(path: Path, what: str) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"Cannot read {what} from {path}: {err}", hint="Check the path.") from err
    out: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path}:{number} is not valid JSON ({err}).",
                hint="Write one JSON object per line.",
            ) from err
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{number} is not a JSON object.", hint="One object a line.")
        out.append(obj)
    return out


def load_stories(
    paths: str | Path | Sequence[str | Path] | None = None,
    *,
    emotions: Iterable[str] | None = None,
) -> list[Story]:
    """Emotion stories from JSONL files (``{"emotion", "topic", "text"}`` per line).

    Args:
        paths: One file or several; default every shipped ``data/emotions/stories_*.jsonl``.
        emotions: Keep only stories of these emotions.

    Returns:
        The stories, in file order (files sorted by name).

    Raises:
        DataError: No file, or a line that is not a story.
    """
    if paths is None:
        files = _data_files("stories_*.jsonl")
    elif isinstance(paths, str | Path):
        files = [Path(paths)]
    else:
        files = [Path(p) for p in paths]
    if not files:
        raise DataError(
            "No story files found (welfare_lens/data/emotions/stories_*.jsonl).",
            hint="Write stories with wl.analysis.write_stories(model, ...) or pass paths=.",
        )
    keep = None if emotions is None else set(emotions)
    out: list[Story] = []
    for path in files:
        for number, obj in enumerate(_read_jsonl(path, "stories"), 1):
            try:
                story = Story(str(obj["emotion"]), str(obj.get("topic", "")), str(obj["text"]))
            except KeyError as err:
                raise DataError(
                    f"{path}: story {number} lacks field {err}.",
                    hint='Each line needs {"emotion", "topic", "text"}.',
                ) from err
            if not story.text.strip():
                raise DataError(f"{path}: story {number} is empty.", hint="Remove the line.")
            if keep is None or story.emotion in keep:
                out.append(story)
    return out


def load_neutral(path: str | Path | None = None) -> list[NeutralText]:
    """Emotionally neutral passages and dialogues (``{"kind", "text"}`` per line).

    Args:
        path: A JSONL file; default the shipped ``data/emotions/neutral.jsonl`` (authored).

    Raises:
        DataError: The file is missing, empty or malformed.
    """
    if path is None:
        files = _data_files("neutral.jsonl")
        if not files:
            raise DataError(f"The shipped {_NEUTRAL_FILE} is missing.", hint="Reinstall.")
        file = files[0]
    else:
        file = Path(path)
    out: list[NeutralText] = []
    for number, obj in enumerate(_read_jsonl(file, "neutral texts"), 1):
        text = obj.get("text")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{file}: line {number} has no text.", hint='Use {"kind", "text"}.')
        out.append(NeutralText(str(obj.get("kind", "passage")), text))
    if not out:
        raise DataError(f"{file} holds no neutral texts.", hint="Add some.")
    return out


# ----------------------------------------------------------------------------------------------
# Writing stories
# ----------------------------------------------------------------------------------------------

_SUFFIXES = ("ness", "ment", "ful", "ous", "ing", "ed", "ic", "y", "e", "d")
_INFLECTIONS = r"(?:s|es|d|ed|r|er|est|ly|ily|ness|iness|ment|ty|ity|y|om|ing)?"
# Nouns and roots that plain inflection rules miss (authored; extend as needed).
_RELATED: dict[str, tuple[str, ...]] = {
    "angry": ("anger",),
    "anxious": ("anxiety",),
    "ashamed": ("shame",),
    "awestruck": ("awe",),
    "compassionate": ("compassion",),
    "contemptuous": ("contempt",),
    "defiant": ("defiance",),
    "dependent": ("dependence",),
    "ecstatic": ("ecstasy",),
    "elated": ("elation",),
    "empathetic": ("empathy",),
    "enthusiastic": ("enthusiasm",),
    "envious": ("envy",),
    "euphoric": ("euphoria",),
    "frightened": ("fright",),
    "furious": ("fury",),
    "grateful": ("gratitude",),
    "greedy": ("greed",),
    "guilty": ("guilt",),
    "hateful": ("hate", "hatred"),
    "hopeful": ("hope",),
    "horrified": ("horror",),
    "hysterical": ("hysteria",),
    "impatient": ("impatience",),
    "indifferent": ("indifference",),
    "indignant": ("indignation",),
    "joyful": ("joy",),
    "loving": ("love",),
    "miserable": ("misery",),
    "nostalgic": ("nostalgia",),
    "obstinate": ("obstinacy",),
    "optimistic": ("optimism",),
    "panicked": ("panic",),
    "paranoid": ("paranoia",),
    "patient": ("patience",),
    "peaceful": ("peace",),
    "proud": ("pride",),
    "relieved": ("relief",),
    "skeptical": ("skepticism",),
    "suspicious": ("suspicion",),
    "sympathetic": ("sympathy",),
    "tense": ("tension",),
    "terrified": ("terror",),
    "triumphant": ("triumph",),
    "valiant": ("valour", "valor"),
    "vengeful": ("vengeance",),
    "vulnerable": ("vulnerability",),
    "worried": ("worry",),
}


def _forms(emotion: str) -> list[str]:
    """Regexes for the emotion word, its inflections and a few related nouns."""
    words = emotion.lower().replace("-", " ").split()
    phrase = r"[\s-]+".join(re.escape(w) for w in words)
    patterns = [r"\b" + phrase + _INFLECTIONS + r"\b"]
    if len(words) == 1:
        word = words[0]
        if word.endswith("y"):  # happy -> happiness, happily, happier
            patterns.append(r"\b" + re.escape(word[:-1]) + r"i(?:ness|ly|er|est)\b")
        for suffix in _SUFFIXES:  # frustrated -> frustrat\w* (frustration); long stems only
            if word.endswith(suffix) and len(word) - len(suffix) >= 5:
                patterns.append(r"\b" + re.escape(word[: -len(suffix)]) + r"\w*")
                break
    elif "-" in emotion and words[0] != "self" and len(words[0]) >= 4:
        patterns.append(r"\b" + re.escape(words[0]) + _INFLECTIONS + r"\b")  # grief
    for related in _RELATED.get(emotion.lower(), ()):
        patterns.append(r"\b" + re.escape(related) + _INFLECTIONS + r"\b")
    return patterns


def names_emotion(text: str, emotion: str) -> bool:
    """Whether ``text`` names ``emotion`` (the word or an inflection; case-insensitive).

    Stories must convey an emotion without naming it (B-13). The check covers inflections
    ("frustrated" also matches "frustration", "happy" matches "happiness" and "happily"), the
    first part of a hyphenated name ("grief") and a few related nouns ("angry": "anger",
    "proud": "pride"). Short names match only whole inflected words ("mad" does not match
    "made"). A false positive only drops a story.
    """
    lowered = text.lower()
    return any(re.search(p, lowered) for p in _forms(emotion))


#: Prompt for :func:`write_stories` (``{emotion}``, ``{topic}``).
STORY_PROMPT = (
    "Write a one-paragraph story (80 to 150 words) about {topic}, in which the main character "
    "feels {emotion}. Convey the feeling only through what the character does, says, thinks "
    "and notices. Do not use the word '{emotion}' or any form or synonym of it. Write only the "
    "story, with no title."
)


def story_prompt(emotion: str, topic: str, template: str = STORY_PROMPT) -> str:
    """The user message asking for one story (B-13: convey the emotion, never name it)."""
    return template.format(emotion=emotion, topic=topic)


def _generate(
    model: Any,
    prompt_ids: Int[Tensor, " pos"],
    n: int,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
) -> list[str]:
    """Sample ``n`` continuations of one prompt with the underlying HF model (fast attention)."""
    hf = getattr(model, "original_model", None)
    device = getattr(getattr(model, "cfg", None), "device", None)
    ids = prompt_ids.unsqueeze(0)
    if device is not None:
        ids = ids.to(device)
    tokenizer = model.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        if hf is not None:
            out = hf.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=temperature,
                top_p=top_p,
                max_new_tokens=max_new_tokens,
                num_return_sequences=n,
                pad_token_id=pad,
            )
        else:  # a legacy HookedTransformer
            out = torch.cat(
                [
                    model.generate(
                        ids,
                        max_new_tokens=max_new_tokens,
                        temperature=temperature,
                        top_p=top_p,
                        verbose=False,
                        return_type="tokens",
                    )
                    for _ in range(n)
                ]
            )
    new = out[:, ids.shape[1] :]
    return [str(tokenizer.decode(row, skip_special_tokens=True)) for row in new]


def _clean_story(text: str) -> str:
    text = text.strip()
    text = re.sub(r"^(title|story)\s*:.*\n+", "", text, flags=re.IGNORECASE).strip()
    return text.strip().strip('"').strip()


def write_stories(
    model: Any,
    emotions: Sequence[str],
    topics: Sequence[str],
    n_per_topic: int,
    *,
    path: str | Path | None = None,
    template: str = STORY_PROMPT,
    max_new_tokens: int = 256,
    temperature: float = 0.9,
    top_p: float = 0.95,
    min_words: int = 40,
    seed: int = 0,
    progress: bool = True,
) -> list[Story]:
    """Write emotion stories with a chat model, dropping those that name their emotion (B-13).

    For every (emotion, topic) pair, ``n_per_topic`` stories are sampled from the prompt
    :data:`STORY_PROMPT` rendered with the model's chat template (no system prompt). A story is
    kept when it has at least ``min_words`` words and does not name its emotion
    (:func:`names_emotion`). Sofroniew et al. used 100 topics x 12 stories per emotion; a small
    model writes weaker stories, so prefer the most capable chat model you can load.

    Args:
        model: A chat model from :func:`welfare_lens.load_model`.
        emotions: Emotion names (e.g. :data:`EMOTIONS`).
        topics: Story topics.
        n_per_topic: Samples per (emotion, topic).
        path: Append the kept stories to this JSONL file.
        template: Prompt template with ``{emotion}`` and ``{topic}``.
        max_new_tokens, temperature, top_p: Sampling settings.
        min_words: Drop shorter stories (truncated or refused ones).
        seed: Torch seed for sampling.
        progress: Show a progress bar.

    Returns:
        The kept stories.

    Raises:
        DataError: Empty emotions or topics, or ``n_per_topic < 1``.
    """
    if not emotions or not topics or n_per_topic < 1:
        raise DataError(
            "write_stories needs emotions, topics and n_per_topic >= 1.",
            hint="E.g. write_stories(model, EMOTIONS, ['a job interview'], 2).",
        )
    torch.manual_seed(seed)
    kept: list[Story] = []
    dropped = {"named": 0, "short": 0}
    jobs = [(e, t) for e in emotions for t in topics]
    with contextlib.ExitStack() as stack:
        handle = (
            None if path is None else stack.enter_context(Path(path).open("a", encoding="utf-8"))
        )
        for emotion, topic in tqdm(jobs, desc="stories", disable=not progress, unit="prompt"):
            messages = [{"role": "user", "content": story_prompt(emotion, topic, template)}]
            prompt = render_chat(model.tokenizer, messages, add_generation_prompt=True)
            texts = _generate(
                model,
                prompt.input_ids,
                n_per_topic,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
            )
            for raw in texts:
                text = _clean_story(raw)
                if len(text.split()) < min_words:
                    dropped["short"] += 1
                    continue
                if names_emotion(text, emotion):
                    dropped["named"] += 1
                    continue
                kept.append(Story(emotion, topic, text))
                if handle is not None:
                    record = {"emotion": emotion, "topic": topic, "text": text}
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                    handle.flush()
    total = len(jobs) * n_per_topic
    if dropped["named"] or dropped["short"]:
        warnings.warn(
            f"write_stories kept {len(kept)}/{total} stories; dropped {dropped['named']} that "
            f"named their emotion and {dropped['short']} under {min_words} words.",
            stacklevel=2,
        )
    return kept


# ----------------------------------------------------------------------------------------------
# Pure linear algebra (hand-checkable)
# ----------------------------------------------------------------------------------------------


def mean_minus_others(
    means: Float[Tensor, "n_emotions ..."],
) -> Float[Tensor, "n_emotions ..."]:
    """e_i = m_i − mean_{j≠i} m_j for every emotion i (A5 §3.3: minus the other 170 emotions).

    Equal to (n/(n−1))·(m_i − m̄): the emotion means centred on their grand mean, rescaled.
    Computed in float64, returned in the input dtype.

    Raises:
        DataError: Fewer than two emotions.
    """
    n = means.shape[0]
    if n < 2:
        raise DataError(
            f"Mean-minus-others needs at least two emotions, got {n}.",
            hint="Pass stories of two or more emotions.",
        )
    m = means.to(torch.float64)
    others = (m.sum(dim=0, keepdim=True) - m) / (n - 1)
    return (m - others).to(means.dtype)


def pca_subspace(
    cov: Float[Tensor, "d_model d_model"], variance: float = 0.5
) -> tuple[Float[Tensor, "k d_model"], F64]:
    """Top principal directions of a covariance that together explain ``variance`` of it.

    k is the smallest number of components whose explained-variance ratios sum to at least
    ``variance`` (Sofroniew replicas: 50%, B-13).

    Args:
        cov: Symmetric positive semi-definite covariance.
        variance: Fraction in [0, 1]; 0 keeps no component.

    Returns:
        ``(components [k, d] float64, orthonormal rows, largest first; ratios [d])`` where
        ``ratios`` are all explained-variance ratios, largest first.

    Raises:
        DataError: ``variance`` out of range or a zero covariance.
        ShapeError: ``cov`` is not square.
    """
    if not 0.0 <= float(variance) <= 1.0:
        raise DataError(
            f"variance must be in [0, 1], got {variance}.", hint="Use e.g. 0.5 (50% of variance)."
        )
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise ShapeError(f"Covariance must be square, got {tuple(cov.shape)}.", hint="[d, d].")
    c = cov.to(torch.float64)
    c = 0.5 * (c + c.T)
    evals, evecs = torch.linalg.eigh(c)
    order = torch.argsort(evals, descending=True)
    evals = evals[order].clamp_min(0.0)
    evecs = evecs[:, order]
    total = float(evals.sum())
    if total <= 0:
        raise DataError("The neutral activations have zero variance.", hint="Use more text.")
    ratios = (evals / total).numpy().astype(np.float64)
    if variance <= 0:
        return torch.zeros(0, c.shape[0], dtype=torch.float64), ratios
    cum = np.cumsum(ratios)
    k = int(np.searchsorted(cum, float(variance) - 1e-12) + 1)
    k = min(k, c.shape[0])
    return evecs[:, :k].T.contiguous(), ratios


def project_out(
    x: Float[Tensor, "*batch d_model"], components: Float[Tensor, "k d_model"]
) -> Float[Tensor, "*batch d_model"]:
    """x − Cᵀ(C x): remove the span of orthonormal rows ``components`` (float64 inside)."""
    if components.shape[0] == 0:
        return x
    c = components.to(torch.float64)
    x64 = x.to(torch.float64)
    return (x64 - (x64 @ c.T) @ c).to(x.dtype)


# ----------------------------------------------------------------------------------------------
# Streaming forward passes over texts
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Encoded:
    ids: Int[Tensor, " pos"]
    mask: Bool[Tensor, " pos"]
    short: bool


def _encode(tokenizer: Any, text: str, render: Render, offset: int, max_tokens: int) -> _Encoded:
    """Token ids and the positions to average: text tokens from ``offset`` on (module doc)."""
    if offset < 0 or max_tokens < 1:
        raise DataError(
            f"offset must be >= 0 and max_tokens >= 1, got {offset} and {max_tokens}.",
            hint="Use e.g. offset=50, max_tokens=512.",
        )
    if render == "plain":
        full = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        bare = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        start = 0
        for s in range(len(full) - len(bare) + 1):
            if full[s : s + len(bare)] == bare:
                start = s
                break
        ids = torch.tensor(full[: start + len(bare)], dtype=torch.long)
        content = torch.arange(start, start + len(bare))
    elif render == "user":
        chat = render_chat(tokenizer, [{"role": "user", "content": text}])
        ids = chat.input_ids
        content = chat.user_mask.nonzero().flatten()
    else:
        raise DataError(f"Unknown render {render!r}.", hint="Use 'plain' or 'user'.")
    ids = ids[:max_tokens]
    content = content[content < max_tokens]
    if content.numel() == 0:
        raise DataError(f"Text {text[:40]!r}... has no tokens.", hint="Remove empty texts.")
    chosen = content[offset:]
    short = chosen.numel() == 0
    if short:
        chosen = content[content.numel() // 2 :]
    mask = torch.zeros(ids.shape[0], dtype=torch.bool)
    mask[chosen] = True
    return _Encoded(ids, mask, short)


def _forward_selected(
    model: Any,
    encoded: Sequence[_Encoded],
    layers: Sequence[int],
    hook: HookKind,
    batch_size: int,
    progress: bool,
    description: str,
) -> Iterator[tuple[list[int], list[int], dict[int, Float[Tensor, "n_sel d_model"]]]]:
    """Yield ``(indices, counts, {layer: selected token activations})`` batch by batch.

    Batches are sorted by length and right-padded: causal attention makes right padding exact
    without an attention mask. The pass stops after the last requested block.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}.", hint="Use e.g. 8.")
    names = [hook_name(layer, hook) for layer in layers]
    tokenizer = model.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = getattr(getattr(model, "cfg", None), "device", None)
    order = sorted(range(len(encoded)), key=lambda i: -int(encoded[i].ids.shape[0]))
    bar = tqdm(total=len(order), desc=description, disable=not progress, unit="text")
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(int(encoded[i].ids.shape[0]) for i in idx)
            tokens = torch.full((len(idx), width), pad_id, dtype=torch.long)
            select = torch.zeros(len(idx), width, dtype=torch.bool)
            for row, i in enumerate(idx):
                n = int(encoded[i].ids.shape[0])
                tokens[row, :n] = encoded[i].ids
                select[row, :n] = encoded[i].mask
            store: dict[str, Tensor] = {}
            with torch.no_grad():
                run_until(
                    model,
                    tokens if device is None else tokens.to(device),
                    capture_hooks(names, store, positions=select),
                    names[list(layers).index(max(layers))],
                )
            counts = [int(c) for c in select.sum(dim=1)]
            yield (
                idx,
                counts,
                {layer: store[name] for layer, name in zip(layers, names, strict=True)},
            )
            bar.update(len(idx))
    finally:
        bar.close()


def _texts(items: Iterable[Any], what: str) -> list[str]:
    out: list[str] = []
    for i, item in enumerate(items):
        text = item if isinstance(item, str) else getattr(item, "text", None)
        if text is None and isinstance(item, Mapping):
            text = item.get("text")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{what} {i} has no text: {item!r}.", hint="Pass strings or objects.")
        out.append(text)
    return out


# ----------------------------------------------------------------------------------------------
# Neutral PCA
# ----------------------------------------------------------------------------------------------


@dataclass(eq=False)
class NeutralPCA:
    """Per-layer principal subspace of neutral-text activations, to project out (A5 §3.3; B-13).

    Attributes:
        layers: Layers (block indices) covered.
        components: Per layer, ``[k_ℓ, d_model]`` orthonormal float64 rows, largest first.
        ratios: Per layer, all explained-variance ratios (largest first).
        variance: Target fraction of variance (0.5 in the Sofroniew replicas).
        n_texts: Neutral texts read.
        n_tokens: Token activations the covariances were computed from.
        info: Provenance (model id, offset, render, hook).
    """

    layers: list[int]
    components: list[Tensor]
    ratios: list[F64]
    variance: float
    n_texts: int
    n_tokens: int
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> list[int]:
        """Number of components removed at each layer."""
        return [int(c.shape[0]) for c in self.components]

    @property
    def explained(self) -> list[float]:
        """Fraction of neutral variance explained by the removed components, per layer."""
        return [float(r[:k].sum()) for r, k in zip(self.ratios, self.k, strict=True)]

    def project_out(
        self, x: Float[Tensor, "*batch n_layers d_model"]
    ) -> Float[Tensor, "*batch n_layers d_model"]:
        """Remove each layer's neutral subspace from ``x[..., ℓ, :]`` (layers in order).

        Raises:
            ShapeError: ``x`` does not have one slot per covered layer.
        """
        if x.ndim < 2 or x.shape[-2] != len(self.layers):
            raise ShapeError(
                f"Expected [..., {len(self.layers)}, d_model], got {tuple(x.shape)}.",
                hint="Pass vectors over the same layers as the neutral PCA.",
            )
        parts = [project_out(x[..., i, :], c) for i, c in enumerate(self.components)]
        return torch.stack(parts, dim=-2)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (no component tensors)."""
        return {
            "layers": list(self.layers),
            "variance": self.variance,
            "k": self.k,
            "explained": [round(e, 6) for e in self.explained],
            "n_texts": self.n_texts,
            "n_tokens": self.n_tokens,
            **self.info,
        }

    def __repr__(self) -> str:
        ks = self.k
        return (
            f"NeutralPCA({len(self.layers)} layers, {self.variance:.0%} of variance: k "
            f"{min(ks)}..{max(ks)}; {self.n_texts} texts, {self.n_tokens} tokens)"
        )


def neutral_pca(
    model: Any,
    neutral: Iterable[Any] | None = None,
    *,
    variance: float = 0.5,
    offset: int = 8,
    layers: int | Sequence[int] | None = None,
    hook: HookKind = "resid_post",
    render: Render = "plain",
    max_tokens: int = 512,
    batch_size: int = 16,
    progress: bool = True,
) -> NeutralPCA:
    """Principal subspace of token activations on neutral text, per layer (A5 §3.3; B-13).

    Token activations (text tokens from ``offset`` on, as for stories) are streamed into
    per-layer sums and sums of outer products (shifted by the first batch's mean; products in
    float32 per batch, accumulated in float64; memory ``n_layers·d_model²·8`` bytes,
    80 MB for SmolLM2, ~1.9 GB for all 36 layers of Qwen3-4B: pass ``layers=`` there); the
    covariance's top components explaining ``variance`` of it are kept (:func:`pca_subspace`).
    The default ``offset=8`` skips the first tokens of each text, whose outlier norms
    (attention sinks) would otherwise be the top components, while keeping most of a short text.

    Args:
        model: A TransformerLens model.
        neutral: Texts (strings or objects with ``text``); default :func:`load_neutral`.
        variance: Fraction of variance to remove (0.5 = 50%).
        offset: First text token used.
        layers: Blocks (default all).
        hook: Per-block hook (default ``resid_post``, the block output).
        render: ``"plain"`` or ``"user"`` (as the stories; module doc).
        max_tokens: Truncate longer texts.
        batch_size: Texts per forward pass.
        progress: Show a progress bar.

    Raises:
        DataError: No texts, or fewer than two tokens in total.
    """
    texts = _texts(load_neutral() if neutral is None else neutral, "Neutral text")
    if not texts:
        raise DataError("No neutral texts.", hint="Pass some, or use the shipped set.")
    chosen = resolve_layers(layers, n_layers(model))
    d = int(model.cfg.d_model)
    encoded = [_encode(model.tokenizer, t, render, offset, max_tokens) for t in texts]
    n = 0
    sums = torch.zeros(len(chosen), d, dtype=torch.float64)
    outer = torch.zeros(len(chosen), d, d, dtype=torch.float64)
    shift: Tensor | None = None  # the first batch's mean: keeps the products well conditioned
    for _, _, acts in _forward_selected(
        model, encoded, chosen, hook, batch_size, progress, "neutral"
    ):
        x = torch.stack([acts[layer].detach().float() for layer in chosen])  # [L, n, d]
        if shift is None:
            shift = x.mean(dim=1, keepdim=True)
        x = x - shift.to(x.device)
        # Batch products in float32 (fast), accumulated across batches in float64.
        sums += x.sum(dim=1).to("cpu", torch.float64)
        outer += torch.bmm(x.transpose(1, 2), x).to("cpu", torch.float64)
        n += int(x.shape[1])
    if n < 2:
        raise DataError("Neutral PCA needs at least two tokens.", hint="Use longer texts.")
    mean = sums / n  # of the shifted data; the covariance does not depend on the shift
    cov = (outer - n * mean[:, :, None] * mean[:, None, :]) / (n - 1)
    components: list[Tensor] = []
    ratios: list[F64] = []
    for i in range(len(chosen)):
        comp, ratio = pca_subspace(cov[i], variance)
        components.append(comp)
        ratios.append(ratio)
    info = {
        "model_id": model_info(model).model_id,
        "offset": offset,
        "render": render,
        "hook": hook,
        "n_short": sum(e.short for e in encoded),
    }
    return NeutralPCA(chosen, components, ratios, float(variance), len(texts), n, info)


# ----------------------------------------------------------------------------------------------
# Emotion vectors
# ----------------------------------------------------------------------------------------------


def _as_stories(items: Iterable[Any]) -> list[Story]:
    out: list[Story] = []
    for i, item in enumerate(items):
        if isinstance(item, Story):
            out.append(item)
        elif isinstance(item, Mapping) and "emotion" in item and "text" in item:
            out.append(Story(str(item["emotion"]), str(item.get("topic", "")), str(item["text"])))
        elif isinstance(item, tuple) and len(item) == 2:
            out.append(Story(str(item[0]), "", str(item[1])))
        else:
            raise DataError(
                f"Story {i} is not a Story, a dict with emotion/text, or (emotion, text).",
                hint="Use wl.analysis.load_stories() or Story(emotion, topic, text).",
            )
    return out


def emotion_vectors(
    model: Any,
    stories: Iterable[Any] | None = None,
    neutral: Iterable[Any] | NeutralPCA | None = None,
    *,
    offset: int = 50,
    layers: int | Sequence[int] | None = None,
    denoise: float | None = 0.5,
    normalise: bool = False,
    render: Render = "plain",
    neutral_offset: int = 8,
    hook: HookKind = "resid_post",
    max_tokens: int = 512,
    batch_size: int = 16,
    progress: bool = True,
) -> ConceptVectors:
    """Emotion concept vectors per layer, by the Sofroniew et al. recipe (A5 §3.3; B-13).

    For each story, the residual stream at every chosen block output is averaged over the
    story's text tokens from ``offset`` on; each emotion's mean over its stories minus the mean
    of the other emotions' means (:func:`mean_minus_others`) is its vector; the neutral-text
    principal subspace explaining ``denoise`` of the variance is projected out per layer
    (:func:`neutral_pca`); vectors are optionally unit-normalised. Only per-story means are
    kept (streamed into per-emotion float64 sums).

    Args:
        model: A TransformerLens model (the paper uses the maze-naive model).
        stories: Stories (:class:`Story`, dicts or ``(emotion, text)``); default
            :func:`load_stories` (every shipped ``stories_*.jsonl``).
        neutral: Neutral texts for denoising (default :func:`load_neutral`), or a ready
            :class:`NeutralPCA` over the same layers.
        offset: First text token averaged (Sofroniew replicas: 50).
        layers: Blocks (default all; the paper's layer ℓ = ``blocks.ℓ.hook_resid_post``).
        denoise: Fraction of neutral variance to project out (0.5); ``None`` or 0 to skip.
            Ignored when ``neutral`` is a :class:`NeutralPCA`.
        normalise: Unit-normalise each vector at each layer.
        render: ``"plain"`` text (default) or a ``"user"`` chat message (module doc).
        neutral_offset: First text token of neutral texts used (see :func:`neutral_pca`).
        hook: Per-block hook.
        max_tokens: Truncate longer stories.
        batch_size: Texts per forward pass (CPU and GPU both gain from batching short texts).
        progress: Show progress bars.

    Returns:
        ``ConceptVectors`` named by emotion (the paper's order first), ``[n_layers, d_model]``
        each, with ``role="emotion"``, ``method="mean_minus_others"``, story counts in
        ``class_counts`` and the layers, offset, render and denoising in ``metadata.extra``.

    Raises:
        DataError: Fewer than two emotions, or no stories.
    """
    items = _as_stories(load_stories() if stories is None else stories)
    present = list(dict.fromkeys(s.emotion for s in items))
    names = [e for e in EMOTIONS if e in present] + [e for e in present if e not in EMOTIONS]
    if len(names) < 2:
        raise DataError(
            f"Emotion vectors need stories of at least two emotions; got {names}.",
            hint="Each vector is its emotion's mean minus the other emotions' means.",
        )
    chosen = resolve_layers(layers, n_layers(model))
    d = int(model.cfg.d_model)
    index = {e: i for i, e in enumerate(names)}
    labels = torch.tensor([index[s.emotion] for s in items])
    encoded = [_encode(model.tokenizer, s.text, render, offset, max_tokens) for s in items]
    sums = torch.zeros(len(names), len(chosen), d, dtype=torch.float64)
    n_tokens = 0
    for idx, counts, acts in _forward_selected(
        model, encoded, chosen, hook, batch_size, progress, "stories"
    ):
        story_means = torch.stack(
            [
                torch.stack([piece.mean(dim=0) for piece in torch.split(acts[layer], counts)])
                for layer in chosen
            ],
            dim=1,
        ).to("cpu", torch.float64)  # [batch, n_layers, d]
        sums.index_add_(0, labels[idx], story_means)
        n_tokens += sum(counts)
    per_emotion = torch.bincount(labels, minlength=len(names))
    vectors = mean_minus_others(sums / per_emotion[:, None, None])
    pca: NeutralPCA | None = None
    if isinstance(neutral, NeutralPCA):
        pca = neutral
    elif denoise:
        pca = neutral_pca(
            model,
            neutral,
            variance=float(denoise),
            offset=neutral_offset,
            layers=chosen,
            hook=hook,
            render=render,
            max_tokens=max_tokens,
            batch_size=batch_size,
            progress=progress,
        )
    if pca is not None:
        if pca.layers != chosen:
            raise LayerError(
                f"The neutral PCA covers layers {pca.layers}, the vectors {chosen}.",
                hint="Fit neutral_pca(model, layers=...) on the same layers.",
            )
        vectors = pca.project_out(vectors)
    if normalise:
        norms = torch.linalg.vector_norm(vectors, dim=-1, keepdim=True)
        vectors = torch.where(norms > 0, vectors / norms.clamp_min(1e-300), vectors)
    info = model_info(model)
    meta = VectorMetadata(
        model_id=info.model_id,
        d_model=d,
        n_layers=len(chosen),
        hook=hook,
        coordinate_mode=info.coordinate_mode,
        position_rule=f"text_tokens_from_{offset}",
        method="mean_minus_others",
        design=f"stories:{render}",
        role="emotion",
        class_counts={e: int(per_emotion[i]) for i, e in enumerate(names)},
        extra={
            "layers": chosen,
            "offset": offset,
            "render": render,
            "normalised": bool(normalise),
            "n_stories": len(items),
            "n_tokens": n_tokens,
            "n_short": sum(e.short for e in encoded),
            "denoise": None if pca is None else pca.to_dict(),
        },
    )
    return ConceptVectors(
        {e: vectors[i].to(torch.float32) for i, e in enumerate(names)},
        meta,
    )


# ----------------------------------------------------------------------------------------------
# Alignment (§3.3, Figure 3, Table 8)
# ----------------------------------------------------------------------------------------------


def _layers_of(cv: ConceptVectors) -> list[int]:
    layers = cv.metadata.extra.get("layers")
    if isinstance(layers, list | tuple) and len(layers) == cv.n_layers:
        return [int(x) for x in layers]
    return list(range(cv.n_layers))


def _common_layers(a: ConceptVectors, b: ConceptVectors, what: str) -> list[int]:
    ma, mb = a.metadata, b.metadata
    if ma.d_model != mb.d_model:
        raise ShapeError(
            f"Cannot {what}: d_model {ma.d_model} ({ma.model_id!r}) vs {mb.d_model} "
            f"({mb.model_id!r}).",
            hint="Extract the emotion vectors on the base model of the welfare vectors.",
        )
    for key in ("coordinate_mode", "hook"):
        if getattr(ma, key) != getattr(mb, key):
            raise VectorError(
                f"Cannot {what}: {key} {getattr(ma, key)!r} vs {getattr(mb, key)!r}.",
                hint="Extract both sets in the same coordinates and at the same hook.",
            )
    common = sorted(set(_layers_of(a)) & set(_layers_of(b)))
    if not common:
        raise LayerError(
            f"Cannot {what}: the two vector sets share no layer.",
            hint="Extract the emotion vectors on all layers (layers=None).",
        )
    return common


def _rows(cv: ConceptVectors, name: str, layers: Sequence[int]) -> Tensor:
    where = {layer: i for i, layer in enumerate(_layers_of(cv))}
    return cv[name][[where[layer] for layer in layers]].to(torch.float64)


def _emotion_stack(emotions: ConceptVectors, layers: Sequence[int]) -> Tensor:
    """``[n_emotions, n_layers, d]`` float64."""
    return torch.stack([_rows(emotions, e, layers) for e in emotions.names])


def _cosines(v: Tensor, e: Tensor) -> F64:
    """cos(v_ℓ, e_ℓ) for v ``[L, d]`` and e ``[E, L, d]`` → ``[L, E]``; NaN for zero vectors."""
    dot = torch.einsum("ld,eld->le", v, e)
    norms = torch.linalg.vector_norm(v, dim=-1)[:, None] * torch.linalg.vector_norm(e, dim=-1).T
    out = torch.where(norms > 0, dot / norms.clamp_min(1e-300), torch.nan)
    return np.asarray(out.numpy(), dtype=np.float64)


def ols_fit(
    x: Float[F64, "*batch n"], y: Float[F64, "*batch n"]
) -> tuple[Float[F64, "*batch"], Float[F64, "*batch"], Float[F64, "*batch"]]:
    """OLS line y = a + b·x and Pearson R along the last axis, batched over leading axes.

    Returns:
        ``(slope b, intercept a, r)``; NaN where x (or, for r, y) has zero variance.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.shape[-1] < 2:
        raise ShapeError(
            f"x and y must have the same shape with >= 2 points, got {x.shape} and {y.shape}.",
            hint="Pass one cosine per emotion for both vectors.",
        )
    xm = x - x.mean(axis=-1, keepdims=True)
    ym = y - y.mean(axis=-1, keepdims=True)
    sxx = (xm * xm).sum(axis=-1)
    syy = (ym * ym).sum(axis=-1)
    sxy = (xm * ym).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(sxx > 0, sxy / sxx, np.nan)
        r = np.where((sxx > 0) & (syy > 0), sxy / np.sqrt(sxx * syy), np.nan)
    intercept = y.mean(axis=-1) - slope * x.mean(axis=-1)
    return slope, intercept, r


@dataclass(eq=False)
class ScatterFit:
    """Emotion scatter of one vector pair at every layer: OLS slope, R and their CIs (Figure 3).

    Attributes:
        role: ``"trained"`` (v) or ``"control"`` (u).
        x_name: Vector on the x axis (``"mold"``).
        y_name: Vector on the y axis (``"gold"``).
        layers: Layers, in order.
        x: ``[n_layers, n_emotions]`` cos(x vector, e).
        y: ``[n_layers, n_emotions]`` cos(y vector, e).
        slope: OLS slope of y on x per layer.
        intercept: OLS intercept per layer.
        r: Pearson R per layer.
        slope_ci: ``[n_layers, 2]`` confidence interval of the slope.
        r_ci: ``[n_layers, 2]`` confidence interval of R.
    """

    role: str
    x_name: str
    y_name: str
    layers: list[int]
    x: F64
    y: F64
    slope: F64
    intercept: F64
    r: F64
    slope_ci: F64
    r_ci: F64

    def index(self, layer: int) -> int:
        """Row of ``layer`` in the per-layer arrays.

        Raises:
            LayerError: The layer is not covered.
        """
        if layer not in self.layers:
            raise LayerError(f"Layer {layer} not in {self.layers}.", hint="Use a covered layer.")
        return self.layers.index(layer)

    def at(self, layer: int) -> dict[str, float]:
        """Slope, intercept, R and CIs at one layer."""
        i = self.index(layer)
        return {
            "slope": float(self.slope[i]),
            "intercept": float(self.intercept[i]),
            "r": float(self.r[i]),
            "slope_lo": float(self.slope_ci[i, 0]),
            "slope_hi": float(self.slope_ci[i, 1]),
            "r_lo": float(self.r_ci[i, 0]),
            "r_hi": float(self.r_ci[i, 1]),
        }

    def to_dict(self, points: bool = False) -> dict[str, Any]:
        """JSON-friendly dict; ``points=True`` adds the per-emotion cosines."""
        out: dict[str, Any] = {
            "role": self.role,
            "x": self.x_name,
            "y": self.y_name,
            "layers": list(self.layers),
            "slope": _floats(self.slope),
            "intercept": _floats(self.intercept),
            "r": _floats(self.r),
            "slope_ci": [_floats(row) for row in self.slope_ci],
            "r_ci": [_floats(row) for row in self.r_ci],
        }
        if points:
            out["cos_x"] = [_floats(row) for row in self.x]
            out["cos_y"] = [_floats(row) for row in self.y]
        return out

    def __repr__(self) -> str:
        i = int(np.nanargmin(self.r)) if np.isfinite(self.r).any() else 0
        return (
            f"ScatterFit({self.role}: cos(v_{self.y_name}, e) ~ cos(v_{self.x_name}, e) over "
            f"{self.x.shape[1]} emotions, {len(self.layers)} layers; min R {self.r[i]:+.3f} at "
            f"layer {self.layers[i]} (slope {self.slope[i]:+.3f}))"
        )


def _floats(a: Any) -> list[float | None]:
    return [None if not math.isfinite(float(v)) else float(v) for v in np.ravel(a)]


def _fit(
    role: str,
    names: tuple[str, str],
    layers: list[int],
    x: F64,
    y: F64,
    ci: str,
    n_boot: int,
    level: float,
    rng: np.random.Generator,
) -> ScatterFit:
    slope, intercept, r = ols_fit(x, y)
    n = x.shape[1]
    alpha = 1.0 - level
    if ci == "bootstrap":
        idx = rng.integers(0, n, size=(n_boot, n))
        bs, _, br = ols_fit(x[:, idx], y[:, idx])  # [L, n_boot]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
            slope_ci = np.nanpercentile(bs, q, axis=1).T
            r_ci = np.nanpercentile(br, q, axis=1).T
    elif ci == "analytic":
        xm = x - x.mean(axis=1, keepdims=True)
        ym = y - y.mean(axis=1, keepdims=True)
        sxx = (xm * xm).sum(axis=1)
        resid = ym - slope[:, None] * xm
        with np.errstate(invalid="ignore", divide="ignore"):
            se = np.sqrt((resid * resid).sum(axis=1) / max(n - 2, 1) / sxx)
            t = float(sps.t.ppf(1 - alpha / 2, max(n - 2, 1)))
            slope_ci = np.stack([slope - t * se, slope + t * se], axis=1)
            z = np.arctanh(np.clip(r, -1 + 1e-15, 1 - 1e-15))
            half = float(sps.norm.ppf(1 - alpha / 2)) / math.sqrt(max(n - 3, 1))
            r_ci = np.tanh(np.stack([z - half, z + half], axis=1))
    else:
        raise DataError(f"Unknown ci {ci!r}.", hint="Use 'bootstrap' or 'analytic'.")
    return ScatterFit(role, names[0], names[1], layers, x, y, slope, intercept, r, slope_ci, r_ci)


def top_emotions(
    v: Float[Tensor, " d_model"], emotions: Mapping[str, Tensor], k: int = 5
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """The ``k`` emotions most aligned and most anti-aligned with ``v`` (Table 8).

    Args:
        v: One layer's vector.
        emotions: ``{emotion: [d_model]}`` at the same layer.
        k: How many of each.

    Returns:
        ``(aligned, anti)``: lists of ``(emotion, cosine)``, by decreasing and increasing cosine.
    """
    names = list(emotions)
    e = torch.stack([emotions[n].to(torch.float64) for n in names])
    cos = _cosines(v.to(torch.float64)[None], e[:, None])[0]
    order = np.argsort(-cos, kind="stable")
    aligned = [(names[i], float(cos[i])) for i in order[:k]]
    anti = [(names[i], float(cos[i])) for i in order[::-1][:k]]
    return aligned, anti


@dataclass(eq=False)
class EmotionAlignment:
    """Alignment of welfare vectors with emotion vectors (§3.3, Figure 3, Table 8).

    Attributes:
        emotions: Emotion names (columns of the scatter arrays).
        layers: Layers covered.
        layer: Reporting layer (top-k lists and the repr).
        layer_rule: How ``layer`` was chosen (``"given"`` or ``"argmin_r"``).
        trained: Scatter fit of the trained vectors v.
        control: Scatter fit of the control vectors u, if given.
        top: ``{"mold": {"aligned": [...], "anti": [...]}, "gold": ..., "control:mold": ...}``
            at ``layer``.
        ci: ``"bootstrap"`` (over emotions) or ``"analytic"`` (t for the slope, Fisher z for R).
        level: Confidence level.
        n_boot: Bootstrap resamples.
    """

    emotions: list[str]
    layers: list[int]
    layer: int
    layer_rule: str
    trained: ScatterFit
    control: ScatterFit | None
    top: dict[str, dict[str, list[tuple[str, float]]]]
    ci: str
    level: float
    n_boot: int

    def to_dict(self, points: bool = False) -> dict[str, Any]:
        """JSON-friendly dict; ``points=True`` includes per-emotion cosines."""
        return {
            "emotions": list(self.emotions),
            "layers": list(self.layers),
            "layer": self.layer,
            "layer_rule": self.layer_rule,
            "ci": self.ci,
            "level": self.level,
            "n_boot": self.n_boot,
            "trained": self.trained.to_dict(points),
            "control": None if self.control is None else self.control.to_dict(points),
            "top": {
                name: {side: [[e, c] for e, c in lst] for side, lst in sides.items()}
                for name, sides in self.top.items()
            },
        }

    def __repr__(self) -> str:
        def part(fit: ScatterFit) -> str:
            a = fit.at(self.layer)
            return (
                f"{fit.role} slope {a['slope']:+.3f} [{a['slope_lo']:+.3f}, {a['slope_hi']:+.3f}]"
                f", R {a['r']:+.3f} [{a['r_lo']:+.3f}, {a['r_hi']:+.3f}]"
            )

        parts = [part(self.trained)] + ([part(self.control)] if self.control else [])
        tops = "; ".join(
            f"{name} +: " + ", ".join(f"{e} {c:+.3f}" for e, c in sides["aligned"][:3])
            for name, sides in self.top.items()
            if not name.startswith("control:")
        )
        return (
            f"EmotionAlignment({len(self.emotions)} emotions, layer {self.layer} "
            f"[{self.layer_rule}]: " + "; ".join(parts) + f"; {tops})"
        )


def emotion_alignment(
    v: ConceptVectors,
    emotions: ConceptVectors,
    layer: int | None = None,
    *,
    control: ConceptVectors | None = None,
    names: tuple[str, str] = ("mold", "gold"),
    ci: Literal["bootstrap", "analytic"] = "bootstrap",
    n_boot: int = 2000,
    level: float = 0.95,
    top_k: int = 5,
    seed: int = 0,
) -> EmotionAlignment:
    """cos(v_Mold, e) against cos(v_Gold, e) over all emotions, per layer (§3.3, Figure 3).

    For each layer ℓ shared by ``v`` and ``emotions``, x_e = cos(v_Mold^ℓ, e^ℓ) and
    y_e = cos(v_Gold^ℓ, e^ℓ) over every emotion e; the OLS slope of y on x and Pearson R
    summarise the scatter (paper, primary model at layer 21: slope −0.88, R −0.948 trained;
    +0.11, +0.080 for the controls). CIs come from a bootstrap over emotions or from the
    t-distribution (slope) and Fisher's z (R).

    Args:
        v: Trained welfare vectors (``v.mold``, ``v.gold``).
        emotions: Emotion vectors (:func:`emotion_vectors`, from the maze-naive model).
        layer: Reporting layer for the top-k lists and the repr (paper: the emotion-scatter
            layer, :func:`welfare_lens.analysis.emotion_scatter_layer`); default the layer with
            the most negative trained R (an optimistic choice; say so when reporting it).
        control: Control vectors u (maze-naive), fitted the same way.
        names: ``(x, y)`` vector names.
        ci: ``"bootstrap"`` or ``"analytic"``.
        n_boot: Bootstrap resamples.
        level: Confidence level.
        top_k: Emotions listed per vector and side (Table 8 lists 5).
        seed: Bootstrap seed.

    Raises:
        ShapeError / VectorError / LayerError: The vector sets do not fit together.
        DataError: Fewer than three emotions, or a bad ``ci``.
    """
    if len(emotions) < 3:
        raise DataError(
            f"Alignment needs at least three emotions, got {len(emotions)}.",
            hint="Extract vectors for more emotions.",
        )
    layers = _common_layers(v, emotions, "align the vectors with the emotions")
    if control is not None:
        layers = [x for x in layers if x in _common_layers(control, emotions, "align controls")]
    e = _emotion_stack(emotions, layers)
    rng = np.random.default_rng(seed)

    def fit(cv: ConceptVectors, role: str) -> ScatterFit:
        xs = _cosines(_rows(cv, names[0], layers), e)
        ys = _cosines(_rows(cv, names[1], layers), e)
        return _fit(role, names, layers, xs, ys, ci, n_boot, level, rng)

    trained = fit(v, "trained")
    ctrl = None if control is None else fit(control, "control")
    if layer is None:
        finite = np.where(np.isfinite(trained.r), trained.r, np.inf)
        report, rule = layers[int(np.argmin(finite))], "argmin_r"
    else:
        rule = "given"
        report = layers[layer] if -len(layers) <= layer < 0 else layer
        if report not in layers:
            raise LayerError(
                f"Layer {layer} is not shared by the vectors; shared: {layers}.",
                hint="Pick one of the shared layers.",
            )
    i = layers.index(report)
    per_layer = {name: e[j, i] for j, name in enumerate(emotions.names)}
    top: dict[str, dict[str, list[tuple[str, float]]]] = {}
    for prefix, cv in (("", v), ("control:", control)):
        if cv is None:
            continue
        for name in names:
            aligned, anti = top_emotions(_rows(cv, name, layers)[i], per_layer, top_k)
            top[prefix + name] = {"aligned": aligned, "anti": anti}
    return EmotionAlignment(
        emotions=list(emotions.names),
        layers=layers,
        layer=report,
        layer_rule=rule,
        trained=trained,
        control=ctrl,
        top=top,
        ci=ci,
        level=level,
        n_boot=n_boot if ci == "bootstrap" else 0,
    )


# ----------------------------------------------------------------------------------------------
# PCA of the emotion vectors (F.4)
# ----------------------------------------------------------------------------------------------


def _pearson(a: F64, b: F64) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


@dataclass(eq=False)
class EmotionPCA:
    """PC1/PC2 of the emotion vectors per layer vs valence and arousal; welfare loadings (F.4).

    PC signs are arbitrary; here PC1 is oriented so that it correlates positively with valence
    and PC2 positively with arousal, so ``r_valence`` and ``r_arousal`` are |r|.

    Attributes:
        emotions: Emotion names (rows of ``scores``).
        layers: Layers covered.
        pc1: ``[n_layers, d_model]`` unit PC1 per layer (sign-aligned with valence).
        pc2: ``[n_layers, d_model]`` unit PC2 per layer (sign-aligned with arousal).
        explained: ``[n_layers, 2]`` explained-variance ratios of PC1 and PC2.
        scores: ``[n_layers, n_emotions, 2]`` emotion coordinates on PC1 and PC2.
        r_valence: ``[n_layers]`` Pearson r of PC1 scores with valence (rated emotions).
        r_arousal: ``[n_layers]`` Pearson r of PC2 scores with arousal.
        n_rated: Emotions with ratings.
        loadings: ``{name: [n_layers]}`` cos(vector, PC1) for welfare vectors (``"mold"``,
            ``"gold"``, ``"control:mold"``, ...).
        projections: ``{name: [n_layers]}`` scalar projections vector·PC1.
    """

    emotions: list[str]
    layers: list[int]
    pc1: Tensor
    pc2: Tensor
    explained: F64
    scores: F64
    r_valence: F64
    r_arousal: F64
    n_rated: int
    loadings: dict[str, F64] = field(default_factory=dict)
    projections: dict[str, F64] = field(default_factory=dict)

    @property
    def best_layer(self) -> int:
        """Layer where PC1 correlates most with valence."""
        return self.layers[int(np.nanargmax(self.r_valence))]

    def separation(self, prefix: str = "") -> F64 | None:
        """cos(v_Gold, PC1) − cos(v_Mold, PC1) per layer (``prefix="control:"`` for u)."""
        g, m = self.loadings.get(prefix + "gold"), self.loadings.get(prefix + "mold")
        return None if g is None or m is None else g - m

    @property
    def loading_layer(self) -> int | None:
        """F.4's layer: argmax of the trained minus the control PC1 separation (needs both)."""
        t, c = self.separation(), self.separation("control:")
        if t is None or c is None:
            return None
        return self.layers[int(np.nanargmax(t - c))]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (no PC tensors)."""
        return {
            "emotions": list(self.emotions),
            "layers": list(self.layers),
            "explained": [_floats(row) for row in self.explained],
            "r_valence": _floats(self.r_valence),
            "r_arousal": _floats(self.r_arousal),
            "n_rated": self.n_rated,
            "best_layer": self.best_layer,
            "loading_layer": self.loading_layer,
            "loadings": {k: _floats(v) for k, v in self.loadings.items()},
            "projections": {k: _floats(v) for k, v in self.projections.items()},
            "scores": [[_floats(p) for p in row] for row in self.scores],
        }

    def __repr__(self) -> str:
        b = self.best_layer
        i = self.layers.index(b)
        extra = ""
        if "gold" in self.loadings and "mold" in self.loadings:
            extra = (
                f"; cos(PC1, v_Gold) {self.loadings['gold'][i]:+.3f}, "
                f"cos(PC1, v_Mold) {self.loadings['mold'][i]:+.3f}"
            )
        return (
            f"EmotionPCA({len(self.emotions)} emotions, {len(self.layers)} layers; best layer {b}:"
            f" |r|(PC1, valence) {self.r_valence[i]:.3f}, |r|(PC2, arousal) "
            f"{self.r_arousal[i]:.3f}, PC1+PC2 explain {self.explained[i].sum():.1%}{extra})"
        )


def emotion_pca(
    emotions: ConceptVectors,
    ratings: Sequence[EmotionRating] | Mapping[str, tuple[float, float]] | None = None,
    *,
    v: ConceptVectors | None = None,
    control: ConceptVectors | None = None,
    names: Sequence[str] = ("mold", "gold"),
) -> EmotionPCA:
    """PCA of the emotion vectors per layer: PC1 ≈ valence, PC2 ≈ arousal (F.4; Sofroniew).

    At each layer the emotion vectors are centred across emotions and decomposed by SVD. PC1 is
    oriented to correlate positively with valence and PC2 with arousal; the correlations are
    over the emotions that have ratings. Given welfare vectors, their cosine with (and scalar
    projection on) PC1 is recorded: in the paper trained v_Mold and v_Gold sit at opposite ends
    of PC1 while the controls u do not.

    Args:
        emotions: Emotion vectors.
        ratings: Valence/arousal per emotion; default the shipped ratings (:func:`load_emotions`).
        v: Trained welfare vectors.
        control: Control vectors u.
        names: Welfare vector names to project.

    Raises:
        DataError: Fewer than three emotions with ratings.
    """
    if ratings is None:
        ratings = load_emotions()
    table: dict[str, tuple[float, float]] = (
        {str(k): (float(a), float(b)) for k, (a, b) in ratings.items()}
        if isinstance(ratings, Mapping)
        else {r.name: (r.valence, r.arousal) for r in ratings}
    )
    names_e = list(emotions.names)
    rated = [i for i, n in enumerate(names_e) if n in table]
    if len(rated) < 3:
        raise DataError(
            f"Only {len(rated)} emotions have ratings; need at least 3.",
            hint="Pass ratings for the extracted emotions.",
        )
    val = np.array([table[names_e[i]][0] for i in rated])
    aro = np.array([table[names_e[i]][1] for i in rated])
    layers = _layers_of(emotions)
    e = _emotion_stack(emotions, layers)  # [E, L, d]
    n_l, d = len(layers), e.shape[-1]
    pc1 = torch.zeros(n_l, d, dtype=torch.float64)
    pc2 = torch.zeros(n_l, d, dtype=torch.float64)
    explained = np.zeros((n_l, 2))
    scores = np.zeros((n_l, len(names_e), 2))
    r_val = np.zeros(n_l)
    r_aro = np.zeros(n_l)
    for i in range(n_l):
        x = e[:, i] - e[:, i].mean(dim=0, keepdim=True)
        _, s, vh = torch.linalg.svd(x, full_matrices=False)
        total = float((s * s).sum())
        comps = [vh[0].clone(), vh[1].clone() if vh.shape[0] > 1 else torch.zeros(d).double()]
        sc = [np.asarray((x @ c).numpy()) for c in comps]
        for j, target in ((0, val), (1, aro)):
            if _pearson(sc[j][rated], target) < 0:
                comps[j], sc[j] = -comps[j], -sc[j]
        pc1[i], pc2[i] = comps
        scores[i] = np.stack(sc, axis=1)
        explained[i] = [
            float(s[k] ** 2) / total if k < s.shape[0] and total > 0 else 0.0 for k in (0, 1)
        ]
        r_val[i] = _pearson(sc[0][rated], val)
        r_aro[i] = _pearson(sc[1][rated], aro)
    loadings: dict[str, F64] = {}
    projections: dict[str, F64] = {}
    where = {layer: i for i, layer in enumerate(layers)}
    for prefix, cv in (("", v), ("control:", control)):
        if cv is None:
            continue
        common = _common_layers(cv, emotions, "project welfare vectors on the emotion PCs")
        for name in names:
            rows = _rows(cv, name, common)
            load = np.full(n_l, np.nan)
            proj = np.full(n_l, np.nan)
            for j, layer in enumerate(common):
                p = pc1[where[layer]]
                dot = float(rows[j] @ p)
                norm = float(torch.linalg.vector_norm(rows[j]))
                proj[where[layer]] = dot
                load[where[layer]] = dot / norm if norm > 0 else np.nan
            loadings[prefix + name] = load
            projections[prefix + name] = proj
    return EmotionPCA(
        emotions=names_e,
        layers=layers,
        pc1=pc1.to(torch.float32),
        pc2=pc2.to(torch.float32),
        explained=explained,
        scores=scores,
        r_valence=r_val,
        r_arousal=r_aro,
        n_rated=len(rated),
        loadings=loadings,
        projections=projections,
    )
