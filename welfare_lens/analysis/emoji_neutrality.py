"""Emoji neutrality check: are the tile emoji affectively neutral? (paper appendix J.2; B-14).

The maze only works as a neutral environment if its three tile emoji carry no valence of their
own. The paper reports a neutrality scan of about 4,000 emoji (J.2) and checks that its "office
trio" (Mold 📇 card index, Gold 📐 triangular ruler, Path 🧾 receipt) has small, nearly equal
cosines with the two sentiment vectors of appendix F (the CAD and the prompt vector). Table 22
reports the within-trio spread (max − min of the three cosines): 0.020 (CAD) and 0.006 (prompt)
for the office trio, against 0.024 / 0.145 for a trio of desserts.

**How the per-emoji vectors are made here (B-14: the paper does not say).** Figure 41 of the
paper extracts per-emoji vectors from maze trajectories ending on that emoji, so this module
uses the extraction pipeline of A4 with the emoji as the class:

1. One fixed set of base conversations is sampled with
   :func:`~welfare_lens.maze.shared_prefix_trajectories` (the paper's classes and length
   balance, final moves onto Mold, Gold and Path, few mazes so that prefixes are shared).
2. For every candidate emoji e, each base conversation is copied with the symbol of the final
   move's target tile, as shown in the last user message, replaced by e
   (:func:`substitute_final_target`): the model reads "to the east there is e" and moves E.
   Nothing else changes, so all candidates are read on identical contexts and differ only in the
   symbol of the chosen tile (a minimal-pair design across emoji; DESIGN "what the model sees vs
   what it chose").
3. The residual stream is read at the last direction letter at every block output (A4's
   position −1), and the activations are streamed into per-emoji sums (:class:`EmojiSums`;
   memory ``n_emoji × n_layers × d_model`` float64, independent of the number of samples).
4. The vector of emoji e is its mean minus the mean over the samples of all candidates
   (``reference="all"``), or minus the mean of the other candidates (``reference="rest"``, the
   exact analogue of Eq. 1). Every candidate has the same samples, so with N candidates the
   two differ only by the factor N/(N−1) and give the same cosines.

**Cost.** The variants of one base conversation differ only from the substituted symbol on, so
the shared history is encoded once and, per emoji, only the tail of the last user message and
the move (~40 SmolLM2 tokens): a scan of 200 emoji costs about 200 × (samples) × 40 tokens plus
one pass over the base walks (:func:`estimate_emoji_tokens`). Two exact encoders do this
(``emoji_vectors(encoder=...)``):

* ``"branch"`` (default): per base conversation, the shared prefix runs once (continuing the
  cache of the previous base conversation as far as they agree), then the emoji variants run
  in batches off that KV cache, repeated per row (as
  :func:`welfare_lens.capture.iter_branch_activations` branches the four moves); the pass stops
  after the last block read, so the unembedding is never computed.
* ``"prefix"``: :func:`welfare_lens.capture.iter_activations`' prefix-sharing encoder
  (conversations sorted by token ids, each continuing the cache of the one before): the same
  tokens, but one forward pass per conversation. On CPU every call of the bridge costs about
  2.5 ms per block beyond the computation (measured on the 2- to 4-block tiny models; ~80 ms
  extrapolated to SmolLM2's 30 blocks), as much as the computation of a ~40-token suffix;
  on tiny-llama the branch encoder is 7x faster (360 conversations: 0.5 s vs 3.6 s).

Other choices the paper leaves open are documented where they are made: which sentiment
vectors (those of :mod:`welfare_lens.analysis.sentiment_vectors`, from the model being scanned),
which layer (a parameter; the example uses ⌊2L/3⌋), and the neutrality score used for ranking,
max(|cos_CAD|, |cos_prompt|) (:class:`NeutralityScan`).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from numpy.typing import NDArray
from torch import Tensor
from tqdm.auto import tqdm

from welfare_lens._resources import read_json
from welfare_lens.capture import distinct_prefix_tokens, iter_activations
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
from welfare_lens.maze.config import MazeConfig, Tile, TileEmoji
from welfare_lens.maze.directions import DIRECTION_NAMES, DIRECTIONS
from welfare_lens.maze.shared_prefix import shared_prefix_trajectories
from welfare_lens.maze.trajectories import PAPER_EXTRACTION_SEED, Trajectory
from welfare_lens.models import model_info
from welfare_lens.vectors import ConceptVectors, VectorMetadata

__all__ = [
    "DEFAULT_PER_EMOJI",
    "EMOJI_CATEGORIES",
    "PAPER_TRIO",
    "VALENCES",
    "EmojiCandidate",
    "EmojiConversation",
    "EmojiSums",
    "Encoder",
    "NeutralityScan",
    "Reference",
    "TrioSpread",
    "emoji_base_trajectories",
    "emoji_conversations",
    "emoji_vectors",
    "estimate_emoji_tokens",
    "load_emoji_candidates",
    "neutrality_scan",
    "pick_candidates",
    "substitute_final_target",
]

F64 = NDArray[np.float64]
Reference = Literal["all", "rest"]
Encoder = Literal["branch", "prefix"]

_PAPER = TileEmoji.paper()
#: The paper's office trio in the order Mold, Gold, Path: 📇 card index, 📐 triangular ruler,
#: 🧾 receipt (appendix J.2; note B-1 for the card index).
PAPER_TRIO: tuple[str, str, str] = (_PAPER.mold, _PAPER.gold, _PAPER.path)

#: Base conversations per emoji by default. On SmolLM2 (byte-level BPE, paper prompt format,
#: shuffled clauses) a scan of 200 emoji then runs about 380k tokens, padding included
#: (:func:`estimate_emoji_tokens`; 360k without padding), about 14 minutes at the ~450
#: tokens/s of a 2-core CPU, less without the unembedding.
DEFAULT_PER_EMOJI = 45

#: Coarse groups of the shipped candidates (``data/emoji_candidates.json``).
EMOJI_CATEGORIES: tuple[str, ...] = (
    "office",
    "food",
    "animal",
    "nature",
    "object",
    "tool",
    "clothing",
    "activity",
    "transport",
    "place",
    "symbol",
    "heart",
    "face",
    "person",
)
#: Hand labels of the candidates: the valenced ones are positive controls for the scan.
VALENCES: tuple[str, ...] = ("positive", "negative", "neutral")

_CANDIDATES_FILE = "emoji_candidates.json"
_ROLES = ("mold", "gold", "path")


# ----------------------------------------------------------------------------------------------
# Candidates
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmojiCandidate:
    """One emoji that could stand for a tile.

    Attributes:
        emoji: The string shown in the maze (one code point, or a standard sequence such as
            ``"❤️"`` = U+2764 U+FE0F).
        name: English (CLDR short) name, e.g. ``"card index"``.
        category: Coarse group (:data:`EMOJI_CATEGORIES` for the shipped file).
        valence: Hand label, ``"positive"``, ``"negative"`` or ``"neutral"``; the valenced ones
            are positive controls (faces, hearts, skulls): a working scan ranks them as less
            neutral than the office trio.
        codepoints: ``"U+1F4C7"``-style code points, space-separated.
        paper_role: ``"mold"``, ``"gold"`` or ``"path"`` for the paper's trio, else ``None``.
        tags: Finer groups (``"dessert"``, ``"drink"``).
    """

    emoji: str
    name: str
    category: str
    valence: str = "neutral"
    codepoints: str = ""
    paper_role: str | None = None
    tags: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (the shipped file's fields)."""
        out: dict[str, Any] = {
            "emoji": self.emoji,
            "codepoints": self.codepoints or _codepoints(self.emoji),
            "name": self.name,
            "category": self.category,
            "valence": self.valence,
        }
        if self.paper_role is not None:
            out["paper_role"] = self.paper_role
        if self.tags:
            out["tags"] = list(self.tags)
        return out


def _codepoints(text: str) -> str:
    return " ".join(f"U+{ord(ch):04X}" for ch in text)


def _check_symbol(symbol: object, where: str) -> str:
    """A usable tile symbol: a non-empty string without whitespace or control characters."""
    if (
        not isinstance(symbol, str)
        or not symbol
        or any(ch.isspace() or ord(ch) < 32 for ch in symbol)
    ):
        raise DataError(
            f"{where}: {symbol!r} is not a usable tile symbol.",
            hint="Use a non-empty emoji string without spaces or control characters, e.g. '📇'.",
        )
    return symbol


def load_emoji_candidates(path: str | Path | None = None) -> list[EmojiCandidate]:
    """The candidate emoji (default the 579 shipped in ``data/emoji_candidates.json``).

    The file is ``{"candidates": [{"emoji", "name", "category", "valence"?, "codepoints"?,
    "paper_role"?, "tags"?}, ...]}`` (or the bare list). Shipped entries are authored for
    welfare_lens: CLDR English names, coarse categories and hand valence labels (not norms).

    Raises:
        DataError: The file is missing or not JSON, an entry lacks a field or has a bad value,
            ``codepoints`` disagree with ``emoji``, an emoji or a paper role is listed twice.
    """
    hint = (
        "Pass a JSON file {'candidates': [{'emoji', 'name', 'category', 'valence'}, ...]} "
        "(see welfare_lens/data/emoji_candidates.json)."
    )
    doc = read_json(_CANDIDATES_FILE, path, "emoji candidates", hint=hint)
    raw = doc.get("candidates") if isinstance(doc, dict) else doc
    if not isinstance(raw, list) or not raw:
        raise DataError("The emoji file lists no candidates.", hint=hint)
    out: list[EmojiCandidate] = []
    seen: dict[str, int] = {}
    roles: dict[str, str] = {}
    for i, entry in enumerate(raw):
        if not isinstance(entry, Mapping):
            raise DataError(f"Emoji entry {i} is not an object: {entry!r}.", hint=hint)
        missing = [k for k in ("emoji", "name", "category") if k not in entry]
        if missing:
            raise DataError(f"Emoji entry {i} lacks {missing}.", hint=hint)
        emoji = _check_symbol(entry["emoji"], f"Emoji entry {i}")
        name, category = entry["name"], entry["category"]
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"Emoji entry {i} ({emoji}) has no name.", hint="Give its CLDR name.")
        if not isinstance(category, str) or not category.strip():
            raise DataError(
                f"Emoji entry {i} ({emoji}) has no category.",
                hint=f"Use one of {EMOJI_CATEGORIES} or your own group name.",
            )
        valence = entry.get("valence", "neutral")
        if valence not in VALENCES:
            raise DataError(
                f"Emoji entry {i} ({emoji}) has valence {valence!r}.",
                hint=f"Use one of {VALENCES}.",
            )
        codepoints = entry.get("codepoints", "")
        if codepoints and str(codepoints).upper() != _codepoints(emoji):
            raise DataError(
                f"Emoji entry {i}: codepoints {codepoints!r} do not spell {emoji!r} "
                f"({_codepoints(emoji)}).",
                hint="Fix the emoji or its codepoints (the file may have been re-encoded).",
            )
        role = entry.get("paper_role")
        if role is not None:
            if role not in _ROLES or role in roles:
                raise DataError(
                    f"Emoji entry {i} ({emoji}) has paper_role {role!r} (bad or listed twice).",
                    hint="Mark each of 'mold', 'gold', 'path' at most once.",
                )
            roles[role] = emoji
        tags = entry.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise DataError(
                f"Emoji entry {i} ({emoji}): tags must be a list of strings.", hint=hint
            )
        if emoji in seen:
            raise DataError(
                f"Emoji {emoji!r} is listed twice (entries {seen[emoji]} and {i}).",
                hint="List each emoji once.",
            )
        seen[emoji] = i
        out.append(
            EmojiCandidate(
                emoji=emoji,
                name=name.strip(),
                category=category.strip(),
                valence=str(valence),
                codepoints=_codepoints(emoji),
                paper_role=role,
                tags=tuple(tags),
            )
        )
    return out


def pick_candidates(
    n: int,
    *,
    candidates: Sequence[EmojiCandidate] | None = None,
    include: Sequence[str] = PAPER_TRIO,
) -> list[EmojiCandidate]:
    """``n`` candidates: ``include`` first, then a round-robin over the categories.

    Taking one emoji per category in turn keeps a short scan varied (the first 200 of the
    shipped file would be mostly office items and food). Within a category the valence labels
    take turns too (file order within each label), so that a short scan still holds both
    positive and negative controls (the shipped faces list the positive ones first).

    Raises:
        DataError: ``n`` is smaller than ``include`` or larger than the pool, or an emoji of
            ``include`` is not among the candidates.
    """
    pool = list(candidates) if candidates is not None else load_emoji_candidates()
    by_emoji = {c.emoji: c for c in pool}
    unknown = [e for e in include if e not in by_emoji]
    if unknown:
        raise DataError(
            f"Emoji {unknown} are not among the candidates.",
            hint="Add them to the candidate file, or leave them out of include.",
        )
    if isinstance(n, bool) or not isinstance(n, int) or not len(set(include)) <= n <= len(pool):
        raise DataError(
            f"n={n!r} must be an integer in {len(set(include))}..{len(pool)}.",
            hint="Ask for at least the included emoji and at most all candidates.",
        )
    chosen: dict[str, EmojiCandidate] = {e: by_emoji[e] for e in include}
    by_label: dict[str, dict[str, list[EmojiCandidate]]] = {}
    for c in pool:
        if c.emoji not in chosen:
            by_label.setdefault(c.category, {}).setdefault(c.valence, []).append(c)
    queues = {category: _interleave(list(groups.values())) for category, groups in by_label.items()}
    while len(chosen) < n:
        for queue in queues.values():
            if queue and len(chosen) < n:
                c = queue.pop(0)
                chosen[c.emoji] = c
    return list(chosen.values())


def _interleave(groups: list[list[EmojiCandidate]]) -> list[EmojiCandidate]:
    """One item of each group in turn: [[a1, a2], [b1]] -> [a1, b1, a2]."""
    return [c for row in itertools.zip_longest(*groups) for c in row if c is not None]


def _symbols(emoji: Iterable[str | EmojiCandidate]) -> tuple[list[str], list[EmojiCandidate]]:
    """Validated, distinct symbols (and the candidates among the input, for names)."""
    symbols: list[str] = []
    known: list[EmojiCandidate] = []
    for i, item in enumerate(emoji):
        if isinstance(item, EmojiCandidate):
            known.append(item)
            item = item.emoji
        symbols.append(_check_symbol(item, f"Emoji {i}"))
    duplicates = sorted({s for s in symbols if symbols.count(s) > 1})
    if duplicates:
        raise DataError(f"Emoji {duplicates} are listed twice.", hint="List each emoji once.")
    if len(symbols) < 2:
        raise DataError(
            f"One-vs-rest over emoji needs at least two emoji, got {len(symbols)}.",
            hint="Scan several candidates, e.g. pick_candidates(200).",
        )
    return symbols, known


# ----------------------------------------------------------------------------------------------
# Conversations: the base set and the substitution
# ----------------------------------------------------------------------------------------------


def emoji_base_trajectories(
    cfg: MazeConfig | None = None,
    per_emoji: int = DEFAULT_PER_EMOJI,
    seed: int = PAPER_EXTRACTION_SEED,
) -> list[Trajectory]:
    """The base conversations every candidate emoji is read on (module docstring, step 1).

    The paper's extraction classes (final moves onto Mold, Gold and Path, lengths balanced over
    ``1..turns``) sampled with shared prefixes, then ``per_emoji`` of them taken round-robin
    over the classes, so that the final move is onto each class about equally often.

    Raises:
        DataError: ``per_emoji`` is not a positive integer.
    """
    if isinstance(per_emoji, bool) or not isinstance(per_emoji, int) or per_emoji < 1:
        raise DataError(
            f"per_emoji must be a positive integer, got {per_emoji!r}.",
            hint=f"E.g. per_emoji={DEFAULT_PER_EMOJI}.",
        )
    per_class = math.ceil(per_emoji / len(_ROLES))
    trajs = shared_prefix_trajectories(cfg, per_class=per_class, seed=seed, classes=_ROLES)
    by_class = {role: [i for i, t in enumerate(trajs) if t.label == role] for role in _ROLES}
    keep: list[int] = []
    for rank in range(per_class):
        for role in _ROLES:
            if rank < len(by_class[role]) and len(keep) < per_emoji:
                keep.append(by_class[role][rank])
    return [trajs[i] for i in sorted(keep)]


def _clause_pattern(prompt_format: str, direction: str, shown: str) -> re.Pattern[str]:
    """The clause of ``direction`` showing ``shown`` in a rendered user turn (render.py)."""
    if prompt_format == "paper":
        # "to the east there is X" ("To ..." when it is the first clause), then ";" or ".".
        word = DIRECTION_NAMES[direction].lower()
        return re.compile(rf"(?<![A-Za-z])([Tt]o the {word} there is ){re.escape(shown)}(?=[;.])")
    if prompt_format == "compact":
        # "Neighbours: N X, E Y, S Z, W V".
        return re.compile(rf"((?:Neighbours: |, ){direction} ){re.escape(shown)}(?=,|$)")
    raise DataError(
        f"Unknown prompt format {prompt_format!r}.",
        hint="Use maze trajectories ('paper'/'compact').",
    )


def substitute_final_target(trajectory: Any, symbol: str) -> list[dict[str, str]]:
    """The conversation with the final move's target tile shown as ``symbol``.

    Only the clause of the chosen direction in the last user message changes ("to the east
    there is 🧾" becomes "to the east there is ``symbol``"); earlier turns, the other clauses,
    the clause order and the move stay as they were. Earlier messages are shared, not copied.

    Args:
        trajectory: A maze :class:`~welfare_lens.maze.Trajectory` ending with an assistant move.
        symbol: The emoji to show.

    Raises:
        DataError: The trajectory lacks what is needed (a valid final move, the tiles shown,
            the emoji mapping), or its last user message does not contain the clause once.
    """
    symbol = _check_symbol(symbol, "substitute_final_target")
    messages = getattr(trajectory, "messages", None)
    actions = getattr(trajectory, "actions", None)
    neighbours = getattr(trajectory, "neighbours", None)
    emoji = getattr(trajectory, "emoji", None)
    hint = "Pass maze trajectories (wl.maze.shared_prefix_trajectories / synthetic_trajectories)."
    if not messages or not actions or not neighbours or not isinstance(emoji, Mapping):
        raise DataError("The trajectory lacks messages, actions, neighbours or emoji.", hint=hint)
    if len(messages) < 2 or messages[-1].get("role") != "assistant":
        raise DataError("The trajectory does not end with an assistant move.", hint=hint)
    if messages[-2].get("role") != "user":
        raise DataError("The final move does not follow a user message.", hint=hint)
    move = actions[-1]
    if move not in DIRECTIONS:
        raise DataError(f"The final move {move!r} is not N/E/S/W.", hint=hint)
    shown = str(emoji[Tile(int(neighbours[-1][DIRECTIONS.index(move)])).class_name])
    text = str(messages[-2]["content"])
    pattern = _clause_pattern(str(getattr(trajectory, "prompt_format", "paper")), move, shown)
    new, count = pattern.subn(lambda m: m.group(1) + symbol, text)
    if count != 1:
        raise DataError(
            f"The last user message shows the {move} clause with {shown!r} {count} times, "
            "expected once.",
            hint="The message was edited after rendering; use unmodified maze trajectories.",
        )
    return [*messages[:-2], {**messages[-2], "content": new}, messages[-1]]


@dataclass(frozen=True, eq=False)
class EmojiConversation:
    """A base conversation with its final target shown as one candidate emoji.

    ``messages``, ``label`` and ``maze_seed`` make it a capture item
    (:func:`welfare_lens.capture.iter_activations`, group = maze) and an input of
    :func:`welfare_lens.capture.distinct_prefix_tokens`.
    """

    messages: list[dict[str, str]]
    label: str
    maze_seed: int
    base_index: int


def emoji_conversations(
    base: Sequence[Any], emoji: Iterable[str | EmojiCandidate]
) -> list[EmojiConversation]:
    """Every base conversation once per emoji (:func:`substitute_final_target`), base-major.

    Raises:
        DataError: No base conversations, a bad or repeated emoji, or a base conversation
            :func:`substitute_final_target` rejects.
    """
    symbols, _ = _symbols(emoji)
    if not base:
        raise DataError("No base conversations.", hint="Use emoji_base_trajectories(...).")
    out: list[EmojiConversation] = []
    for index, traj in enumerate(base):
        seed = getattr(traj, "maze_seed", None)
        group = index if seed is None else int(seed)
        for symbol in symbols:
            out.append(
                EmojiConversation(substitute_final_target(traj, symbol), symbol, group, index)
            )
    return out


# ----------------------------------------------------------------------------------------------
# Encoding: all emoji variants of a base conversation off one KV cache
# ----------------------------------------------------------------------------------------------


def _common_prefix(a: NDArray[np.int32], b: NDArray[np.int32]) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n


@dataclass(frozen=True)
class _Plan:
    """How the variants of one base conversation are encoded.

    ``prefix`` (shared by every variant, at most up to the first token read) is encoded once;
    each variant then needs only its ``suffix``: the tokens after the prefix up to and
    including its last direction letter. Variants are sorted by suffix length (less padding).
    """

    prefix: NDArray[np.int32]
    labels: list[str]
    suffixes: list[NDArray[np.int32]]


def _plan(tokenizer: Any, trajectory: Any, symbols: Sequence[str], template: Any) -> _Plan:
    ids: list[NDArray[np.int32]] = []
    reads: list[int] = []
    for symbol in symbols:
        chat = render_chat(
            tokenizer, substitute_final_target(trajectory, symbol), template=template
        )
        ids.append(chat.input_ids.numpy().astype(np.int32))
        reads.append(chat.last_assistant_token)
    shared = min(reads)  # every read token is recomputed, so the prefix stops before them
    for other in ids[1:]:
        shared = min(shared, _common_prefix(ids[0], other))
    order = sorted(range(len(ids)), key=lambda i: reads[i])
    return _Plan(
        ids[0][:shared],
        [symbols[i] for i in order],
        [ids[i][shared : reads[i] + 1] for i in order],
    )


def _sorted_base(tokenizer: Any, base: Sequence[Any], template: Any) -> list[int]:
    """Base conversations in token order, so that consecutive ones share their longest prefix
    (what the cache keeps between them)."""
    keys = [
        render_chat(tokenizer, t.messages, template=template).input_ids.numpy().astype(">u4")
        for t in base
    ]
    return sorted(range(len(base)), key=lambda i: keys[i].tobytes())


def _crop(past: Any, length: int) -> None:
    remove = int(past.get_seq_length()) - length
    if remove > 0:
        past.crop(-remove)


def _run_until(
    model: Any, tokens: Tensor, past: Any, hooks: list[Any], last: str, device: Any
) -> None:
    """Forward ``tokens`` on the cache ``past``, ended after hook ``last`` (no unembedding)."""
    run_until(
        model, tokens if device is None else tokens.to(device), hooks, last, past_key_values=past
    )


def _iter_branched(
    model: Any,
    base: Sequence[Any],
    symbols: Sequence[str],
    layers: Sequence[int],
    hook: HookKind,
    batch_size: int,
    template: Any,
    progress: bool,
) -> Iterator[tuple[Float[Tensor, "n n_layers d_model"], list[str]]]:
    """Activations at the last direction letter of every (base, emoji) conversation.

    Per base conversation: the prefix all its variants share is run once (continuing the
    cache of the previous base conversation as far as they agree), the cache is repeated
    ``batch_size`` times, and the variants' suffixes run in batches of ``batch_size`` rows,
    right-padded (causal attention: padding after a row's last token cannot change it). After
    each batch the cache is cropped back to the prefix. One forward pass per batch instead of
    one per conversation: on CPU the bridge costs a few ms per layer and call, ~80 ms per call
    on a 30-layer model, which would dominate ~40-token suffixes.
    """
    from transformers import DynamicCache

    names = [hook_name(layer, hook) for layer in layers]
    tokenizer = model.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = getattr(getattr(model, "cfg", None), "device", None)
    past: Any = None
    cached = np.zeros(0, dtype=np.int32)
    bar = tqdm(total=len(base), desc="emoji", disable=not progress, unit="base")
    try:
        for index in _sorted_base(tokenizer, base, template):
            plan = _plan(tokenizer, base[index], symbols, template)
            keep = _common_prefix(cached, plan.prefix)
            if past is None or keep == 0:
                past, keep = DynamicCache(), 0
            else:
                _crop(past, keep)
            with torch.no_grad():
                if len(plan.prefix) > keep:
                    tokens = torch.from_numpy(plan.prefix[keep:].astype(np.int64))[None]
                    _run_until(model, tokens, past, [], names[-1], device)
                cached = plan.prefix
                rows = min(batch_size, len(plan.labels))
                if len(plan.prefix) == 0:
                    past = None  # nothing shared: each batch starts from scratch
                elif rows > 1:
                    past.batch_repeat_interleave(rows)
                for start in range(0, len(plan.labels), batch_size):
                    suffixes = plan.suffixes[start : start + batch_size]
                    width = max(len(s) for s in suffixes)
                    tokens = torch.full((len(suffixes), width), pad_id, dtype=torch.long)
                    select = torch.zeros(len(suffixes), width, dtype=torch.bool)
                    for row, suffix in enumerate(suffixes):
                        tokens[row, : len(suffix)] = torch.from_numpy(suffix.astype(np.int64))
                        select[row, len(suffix) - 1] = True
                    if past is not None and len(suffixes) < rows:  # the last, smaller batch
                        past.batch_select_indices(torch.arange(len(suffixes)))
                        rows = len(suffixes)
                    branch = DynamicCache() if past is None else past
                    store: dict[str, Tensor] = {}
                    hooks = capture_hooks(names, store, positions=select)
                    _run_until(model, tokens, branch, hooks, names[-1], device)
                    if past is not None:
                        _crop(past, len(plan.prefix))
                    acts = torch.stack([store[name] for name in names], dim=1)
                    yield acts.cpu(), plan.labels[start : start + batch_size]
                if past is not None and rows > 1:
                    past.batch_select_indices(torch.tensor([0]))
            bar.update(1)
    finally:
        bar.close()


def _branched_cost(
    tokenizer: Any, base: Sequence[Any], symbols: Sequence[str], batch_size: int, template: Any
) -> int:
    """Tokens (padding included) that :func:`_iter_branched` runs: rendering only."""
    total = 0
    cached = np.zeros(0, dtype=np.int32)
    for index in _sorted_base(tokenizer, base, template):
        plan = _plan(tokenizer, base[index], symbols, template)
        total += len(plan.prefix) - _common_prefix(cached, plan.prefix)
        cached = plan.prefix
        for start in range(0, len(plan.suffixes), batch_size):
            chunk = plan.suffixes[start : start + batch_size]
            total += len(chunk) * max(len(s) for s in chunk)
    return total


def estimate_emoji_tokens(
    model: Any,
    base: Sequence[Any],
    emoji: Sequence[str | EmojiCandidate],
    *,
    encoder: Encoder = "branch",
    batch_size: int = 16,
    probe: int = 12,
    template: Literal["auto", "model", "plain"] = "auto",
) -> int:
    """Tokens a scan runs through the model (rendering only, no forward pass).

    With ``encoder="branch"`` (:func:`emoji_vectors`' default) the count includes the
    padding of each batch; with ``"prefix"`` it is
    :func:`~welfare_lens.capture.distinct_prefix_tokens` of the conversations. Exact for up to
    ``2·probe`` emoji. For more, the counts for ``probe`` and ``2·probe`` evenly spaced
    candidates are extrapolated linearly: every further emoji adds the same kind of suffixes
    (the tail of each last user message), while the base walks are paid once.

    Args:
        model: Anything with the model's ``tokenizer``.
        base: The base conversations (:func:`emoji_base_trajectories`).
        emoji: The candidates.
        encoder, batch_size, template: As in :func:`emoji_vectors`.
        probe: Emoji per probe.

    Raises:
        DataError: Bad ``probe``, ``batch_size`` or ``encoder``, or inputs
            :func:`emoji_conversations` rejects.
    """
    symbols, _ = _symbols(emoji)
    _check_encoder(encoder, batch_size)
    if isinstance(probe, bool) or not isinstance(probe, int) or probe < 1:
        raise DataError(f"probe must be a positive integer, got {probe!r}.", hint="E.g. 12.")
    if not base:
        raise DataError("No base conversations.", hint="Use emoji_base_trajectories(...).")

    def cost(chosen: Sequence[str]) -> int:
        if encoder == "prefix":
            return distinct_prefix_tokens(model, emoji_conversations(base, chosen))
        return _branched_cost(model.tokenizer, base, chosen, batch_size, template)

    n = len(symbols)
    if n <= 2 * probe:
        return cost(symbols)
    spaced = [symbols[round(i * (n - 1) / (2 * probe - 1))] for i in range(2 * probe)]
    small, large = cost(spaced[0::2]), cost(spaced)
    return round(small + (n - probe) * (large - small) / probe)


def _check_encoder(encoder: object, batch_size: object) -> None:
    if encoder not in ("branch", "prefix"):
        raise DataError(f"Unknown encoder {encoder!r}.", hint="Use 'branch' or 'prefix'.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(
            f"batch_size must be a positive integer, got {batch_size!r}.",
            hint="E.g. 16 (emoji variants per forward pass).",
        )


# ----------------------------------------------------------------------------------------------
# Streaming sums and vectors
# ----------------------------------------------------------------------------------------------


class EmojiSums:
    """Streaming per-emoji activation sums and counts, and the one-vs-rest vectors from them.

    Memory is ``n_emoji × n_layers × d_model`` float64 (28 MB for 200 emoji on SmolLM2),
    whatever the number of samples.

    Args:
        emoji: The emoji (class labels), in order.
        n_layers: Layers per sample.
        d_model: Residual width.
    """

    def __init__(self, emoji: Sequence[str], n_layers: int, d_model: int) -> None:
        self.emoji: tuple[str, ...] = tuple(emoji)
        if len(set(self.emoji)) != len(self.emoji) or not self.emoji:
            raise DataError("EmojiSums needs distinct emoji.", hint="List each emoji once.")
        if n_layers < 1 or d_model < 1:
            raise ShapeError(
                f"n_layers and d_model must be positive, got {n_layers}, {d_model}.",
                hint="Pass the model's layer count and width.",
            )
        self._index = {e: i for i, e in enumerate(self.emoji)}
        self.sum: Float[Tensor, "emoji n_layers d_model"] = torch.zeros(
            len(self.emoji), n_layers, d_model, dtype=torch.float64
        )
        self.count = torch.zeros(len(self.emoji), dtype=torch.int64)

    def update(self, labels: Sequence[str], acts: Float[Tensor, "n n_layers d_model"]) -> None:
        """Add a batch: one emoji label per sample.

        Raises:
            ShapeError: ``acts`` is not ``[len(labels), n_layers, d_model]``.
            DataError: A label is not one of the emoji.
        """
        if acts.ndim != 3 or acts.shape[0] != len(labels) or acts.shape[1:] != self.sum.shape[1:]:
            raise ShapeError(
                f"acts has shape {tuple(acts.shape)}; expected [{len(labels)}, "
                f"{self.sum.shape[1]}, {self.sum.shape[2]}].",
                hint="Pass one [n_layers, d_model] activation per label, from the same layers.",
            )
        unknown = sorted({lab for lab in labels if lab not in self._index})
        if unknown:
            raise DataError(
                f"Labels {unknown[:5]} are not among the {len(self.emoji)} emoji.",
                hint="Label each sample with its emoji.",
            )
        idx = torch.tensor([self._index[lab] for lab in labels], dtype=torch.long)
        self.sum.index_add_(0, idx, acts.detach().to("cpu", torch.float64))
        self.count += torch.bincount(idx, minlength=len(self.emoji))

    @property
    def counts(self) -> dict[str, int]:
        """Samples per emoji."""
        return {e: int(c) for e, c in zip(self.emoji, self.count, strict=True)}

    def means(self) -> Float[Tensor, "emoji n_layers d_model"]:
        """Per-emoji mean activations (float64).

        Raises:
            DataError: Some emoji has no samples.
        """
        empty = [e for e, c in self.counts.items() if c == 0]
        if empty:
            raise DataError(f"Emoji {empty[:5]} have no samples.", hint="Capture them first.")
        return self.sum / self.count[:, None, None].to(torch.float64)

    def vectors(self, reference: Reference = "all") -> dict[str, Tensor]:
        """``{emoji: [n_layers, d_model]}`` float64 difference-of-means vectors.

        Args:
            reference: ``"all"``: mean_e − mean over every candidate's samples (e included);
                ``"rest"``: mean_e − mean over the other candidates' samples (Eq. 1's
                one-vs-rest, count-weighted).

        Raises:
            DataError: Unknown reference, or an emoji without samples.
        """
        means = self.means()
        total, n = self.sum.sum(dim=0), self.count.sum().to(torch.float64)
        if reference == "all":
            ref = (total / n).expand_as(means)
        elif reference == "rest":
            rest_n = (n - self.count.to(torch.float64))[:, None, None]
            ref = (total - self.sum) / rest_n
        else:
            raise DataError(f"Unknown reference {reference!r}.", hint="Use 'all' or 'rest'.")
        diff = means - ref
        return {e: diff[i] for i, e in enumerate(self.emoji)}


def emoji_vectors(
    model: Any,
    emoji: Sequence[str | EmojiCandidate],
    *,
    per_emoji: int | None = None,
    cfg: MazeConfig | None = None,
    seed: int = PAPER_EXTRACTION_SEED,
    base: Sequence[Any] | None = None,
    layers: int | Sequence[int] | None = None,
    hook: HookKind = "resid_post",
    reference: Reference = "all",
    encoder: Encoder = "branch",
    batch_size: int = 16,
    template: Literal["auto", "model", "plain"] = "auto",
    progress: bool = True,
) -> ConceptVectors:
    """Per-emoji concept vectors from maze conversations ending on that emoji (J.2; B-14).

    See the module docstring for the design. Each emoji is read on the same base
    conversations, with the final move's target tile shown as that emoji; the vector of e is
    its mean activation at the last direction letter minus the mean over all candidates.

    Args:
        model: The model to scan (the paper checks the maze-naive model).
        emoji: Candidate emoji (strings or :class:`EmojiCandidate`), at least two, distinct.
        per_emoji: Base conversations (samples per emoji); default :data:`DEFAULT_PER_EMOJI`.
        cfg: Maze settings of the base conversations (paper defaults if None).
        seed: Base seed of their mazes.
        base: Use these base conversations instead (then leave ``per_emoji`` and ``cfg``
            unset).
        layers: Blocks to read (default all).
        hook: Per-block hook (default ``resid_post``, the block output).
        reference: ``"all"`` or ``"rest"`` (:meth:`EmojiSums.vectors`; same cosines).
        encoder: ``"branch"`` (default): per base conversation, the shared prefix once and the
            emoji variants in batches of ``batch_size`` off one repeated KV cache.
            ``"prefix"``: :func:`welfare_lens.capture.iter_activations`' prefix-sharing
            encoder, one forward pass per conversation (same tokens, but ~``batch_size`` times
            more calls; on CPU the per-call cost of a deep model dominates). Both are exact.
        batch_size: Emoji variants per forward pass with ``encoder="branch"``; the cache of
            the shared prefix is held ``batch_size`` times (SmolLM2: ~45 MB per copy for a
            1,000-token prefix).
        template: Chat template choice (:func:`welfare_lens.chat.render_chat`).
        progress: Show a progress bar.

    Returns:
        ``ConceptVectors`` named by emoji, ``[n_layers, d_model]`` float32 each; the read layers,
        names and categories (for candidates) and the design are in ``metadata.extra``.

    Raises:
        DataError: Bad emoji, ``base`` given together with ``per_emoji``/``cfg``, unusable base
            conversations, or an unknown reference.
        LayerError: A layer is out of range.
    """
    symbols, known = _symbols(emoji)
    if reference not in ("all", "rest"):
        raise DataError(f"Unknown reference {reference!r}.", hint="Use 'all' or 'rest'.")
    _check_encoder(encoder, batch_size)
    chosen = resolve_layers(layers, n_layers(model))
    if base is None:
        count = DEFAULT_PER_EMOJI if per_emoji is None else per_emoji
        maze_cfg = cfg if cfg is not None else MazeConfig()
        base = emoji_base_trajectories(maze_cfg, count, seed)
        design: dict[str, Any] = {"maze": maze_cfg.to_dict(), "base_seed": seed}
    else:
        if per_emoji is not None or cfg is not None:
            raise DataError(
                "Pass either base conversations or per_emoji/cfg, not both.",
                hint="Leave per_emoji and cfg unset when you give base=.",
            )
        base = list(base)
        design = {"maze": None, "base_seed": None}
    sums = EmojiSums(symbols, len(chosen), int(model.cfg.d_model))
    if encoder == "prefix":
        for acts, labels, _ in iter_activations(
            model,
            emoji_conversations(base, symbols),
            position="last_action",
            layers=chosen,
            hook=hook,
            template=template,
            progress=progress,
            description="emoji",
            share_prefixes=True,
        ):
            sums.update(labels, acts)
    else:
        emoji_conversations(base, symbols[:2])  # check every base conversation up front
        for acts, labels in _iter_branched(
            model, base, symbols, chosen, hook, batch_size, template, progress
        ):
            sums.update(labels, acts)
    vectors = sums.vectors(reference)
    info = model_info(model)
    names = {c.emoji: c.name for c in known}
    categories = {c.emoji: c.category for c in known}
    meta = VectorMetadata(
        model_id=info.model_id,
        d_model=int(model.cfg.d_model),
        n_layers=len(chosen),
        hook=hook,
        coordinate_mode=info.coordinate_mode,
        position_rule="last_action",
        method="one_vs_rest" if reference == "rest" else "minus_grand_mean",
        design="emoji_substitution",
        role="emoji",
        class_counts=sums.counts,
        seed=design["base_seed"],
        extra={
            "layers": chosen,
            "reference": reference,
            "encoder": encoder,
            "per_emoji": len(base),
            "emoji_names": names,
            "emoji_categories": categories,
            **design,
            "note": "B-14: the paper does not specify how per-emoji vectors were extracted; "
            "here the final move's target tile of shared base conversations is shown as each "
            "emoji in turn (welfare_lens.analysis.emoji_neutrality).",
        },
    )
    return ConceptVectors({e: v.to(torch.float32) for e, v in vectors.items()}, meta)


# ----------------------------------------------------------------------------------------------
# The scan
# ----------------------------------------------------------------------------------------------


def _round(x: float, digits: int = 6) -> float | None:
    return None if not math.isfinite(x) else round(float(x), digits)


def _spread(values: Sequence[float]) -> float:
    """max − min, NaN if any value is NaN (Python's max/min would skip it silently)."""
    return float(np.ptp(np.asarray(values, dtype=np.float64)))


@dataclass(frozen=True)
class TrioSpread:
    """Within-trio spread of the sentiment cosines (Table 22).

    Attributes:
        trio: The three emoji.
        cos_cad: Each one's cosine with the CAD vector.
        cos_prompt: Each one's cosine with the prompt vector.
        ranks: Each one's neutrality rank (1 = most neutral).
        cad: max − min of ``cos_cad`` (paper, office trio: 0.020).
        prompt: max − min of ``cos_prompt`` (paper, office trio: 0.006).
    """

    trio: tuple[str, str, str]
    cos_cad: tuple[float, float, float]
    cos_prompt: tuple[float, float, float]
    ranks: tuple[int, int, int]
    cad: float
    prompt: float

    @property
    def max_spread(self) -> float:
        """The larger of the two spreads (the objective of :meth:`NeutralityScan.best_trios`)."""
        return max(self.cad, self.prompt)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {
            "trio": list(self.trio),
            "cos_cad": [_round(c) for c in self.cos_cad],
            "cos_prompt": [_round(c) for c in self.cos_prompt],
            "ranks": list(self.ranks),
            "spread_cad": _round(self.cad),
            "spread_prompt": _round(self.prompt),
        }

    def __repr__(self) -> str:
        return (
            f"TrioSpread({' '.join(self.trio)}: spread CAD {self.cad:.3f}, prompt "
            f"{self.prompt:.3f}; ranks {', '.join(map(str, self.ranks))})"
        )


@dataclass(eq=False)
class NeutralityScan:
    """Cosines of per-emoji vectors with the two sentiment vectors at one layer (J.2).

    An emoji is the more neutral the smaller its **score** max(|cos_CAD|, |cos_prompt|): the
    paper requires both cosines to be small and the trio's cosines to be close to each other
    (small spread). The score is this library's choice (B-14).

    Attributes:
        emoji: The emoji, in the order of the vectors.
        cos_cad: ``[n]`` cosine with the CAD vector (NaN for a zero vector).
        cos_prompt: ``[n]`` cosine with the prompt vector.
        layer: The layer read.
        names: English names, where known.
        categories: Categories, where known.
        model_id: Model of the emoji vectors.
    """

    emoji: list[str]
    cos_cad: F64
    cos_prompt: F64
    layer: int
    names: dict[str, str] = field(default_factory=dict)
    categories: dict[str, str] = field(default_factory=dict)
    model_id: str = "unknown"

    def __post_init__(self) -> None:
        self.emoji = list(self.emoji)
        self.cos_cad = np.asarray(self.cos_cad, dtype=np.float64)
        self.cos_prompt = np.asarray(self.cos_prompt, dtype=np.float64)
        n = len(self.emoji)
        if self.cos_cad.shape != (n,) or self.cos_prompt.shape != (n,):
            raise ShapeError(
                f"{n} emoji but cosines of shapes {self.cos_cad.shape} and "
                f"{self.cos_prompt.shape}.",
                hint="Give one CAD and one prompt cosine per emoji.",
            )
        if n == 0 or len(set(self.emoji)) != n:
            raise DataError(
                "A scan needs at least one emoji, each listed once.", hint="List each emoji once."
            )
        self._index = {e: i for i, e in enumerate(self.emoji)}

    @property
    def score(self) -> F64:
        """``[n]`` max(|cos_CAD|, |cos_prompt|); NaN where a cosine is undefined."""
        out: F64 = np.maximum(np.abs(self.cos_cad), np.abs(self.cos_prompt))
        return out

    def _order(self) -> NDArray[np.intp]:
        score = self.score
        return np.argsort(np.where(np.isnan(score), np.inf, score), kind="stable")

    @property
    def ranking(self) -> list[str]:
        """Emoji from most to least neutral (ties keep the input order; NaN scores last)."""
        return [self.emoji[i] for i in self._order()]

    def _position(self, emoji: str) -> int:
        if emoji not in self._index:
            shown = ", ".join(self.emoji[:8]) + (" ..." if len(self.emoji) > 8 else "")
            raise DataError(
                f"Emoji {emoji!r} is not in this scan.",
                hint=f"Scan it first (emoji_vectors(..., [..., {emoji!r}])); scanned: {shown}.",
            )
        return self._index[emoji]

    def rank_of(self, emoji: str) -> int:
        """Neutrality rank of ``emoji``, 1 = most neutral.

        Raises:
            DataError: The emoji was not scanned.
        """
        i = self._position(emoji)
        return int(np.flatnonzero(self._order() == i)[0]) + 1

    def trio_spread(self, trio: Sequence[str] = PAPER_TRIO) -> TrioSpread:
        """Within-trio spread, per sentiment vector, as in Table 22 (default the office trio).

        Raises:
            DataError: Not three distinct scanned emoji.
        """
        trio = tuple(trio)
        if len(trio) != 3 or len(set(trio)) != 3:
            raise DataError(
                f"A trio is three distinct emoji, got {trio!r}.", hint="E.g. PAPER_TRIO."
            )
        idx = [self._position(e) for e in trio]
        cad = tuple(float(self.cos_cad[i]) for i in idx)
        prompt = tuple(float(self.cos_prompt[i]) for i in idx)
        return TrioSpread(
            trio=(trio[0], trio[1], trio[2]),
            cos_cad=(cad[0], cad[1], cad[2]),
            cos_prompt=(prompt[0], prompt[1], prompt[2]),
            ranks=(self.rank_of(trio[0]), self.rank_of(trio[1]), self.rank_of(trio[2])),
            cad=_spread(cad),
            prompt=_spread(prompt),
        )

    def best_trios(
        self, k: int = 5, *, pool: int = 30, distinct_categories: bool = False
    ) -> list[TrioSpread]:
        """The ``k`` trios with the smallest spread among the ``pool`` most neutral emoji.

        Trios are ordered by the larger of their two spreads, then by the smaller, then by the
        ranks of their members. Emoji with an undefined score are never in the pool.

        Args:
            k: How many trios.
            pool: Candidates to combine (the most neutral ones); C(pool, 3) trios are scored.
            distinct_categories: Only trios whose three emoji have different categories (an
                emoji without a category counts as its own category).

        Raises:
            DataError: ``k`` < 1 or ``pool`` < 3.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise DataError(f"k must be a positive integer, got {k!r}.", hint="E.g. k=5.")
        if isinstance(pool, bool) or not isinstance(pool, int) or pool < 3:
            raise DataError(f"pool must be an integer >= 3, got {pool!r}.", hint="E.g. pool=30.")
        finite = [i for i in self._order() if np.isfinite(self.score[i])][:pool]
        if len(finite) < 3:
            return []
        combos = np.asarray(list(itertools.combinations(finite, 3)), dtype=np.intp)
        if distinct_categories:
            cats = np.asarray(
                [self.categories.get(self.emoji[i], f"\0{i}") for i in range(len(self.emoji))]
            )
            c = cats[combos]
            combos = combos[(c[:, 0] != c[:, 1]) & (c[:, 0] != c[:, 2]) & (c[:, 1] != c[:, 2])]
            if combos.size == 0:
                return []
        spreads = []
        for cos in (self.cos_cad, self.cos_prompt):
            values = cos[combos]
            spreads.append(values.max(axis=1) - values.min(axis=1))
        worst = np.maximum(spreads[0], spreads[1])
        best = np.minimum(spreads[0], spreads[1])
        rank = np.empty(len(self.emoji), dtype=np.intp)
        rank[self._order()] = np.arange(len(self.emoji))
        ranks = rank[combos]
        # np.lexsort sorts by the last key first.
        order = np.lexsort((ranks[:, 2], ranks[:, 1], ranks[:, 0], best, worst))[:k]
        return [self.trio_spread([self.emoji[int(i)] for i in combos[j]]) for j in order]

    def table(self, top: int | None = None) -> list[dict[str, Any]]:
        """Rows for display, most neutral first: rank, emoji, name, category, cosines, score.

        Args:
            top: Only the first ``top`` rows (default all).
        """
        order = self._order() if top is None else self._order()[: max(0, top)]
        rows: list[dict[str, Any]] = []
        for rank, i in enumerate(order, start=1):
            e = self.emoji[int(i)]
            rows.append(
                {
                    "rank": rank,
                    "emoji": e,
                    "name": self.names.get(e, ""),
                    "category": self.categories.get(e, ""),
                    "cos_cad": _round(float(self.cos_cad[i])),
                    "cos_prompt": _round(float(self.cos_prompt[i])),
                    "score": _round(float(self.score[i])),
                }
            )
        return rows

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict: layer, model and every row of :meth:`table`."""
        return {
            "layer": self.layer,
            "model_id": self.model_id,
            "n_emoji": len(self.emoji),
            "score": "max(|cos_cad|, |cos_prompt|)",
            "rows": self.table(),
        }

    def __repr__(self) -> str:
        rows = self.table()

        def show(row: dict[str, Any]) -> str:
            name = f" {row['name']}" if row["name"] else ""
            score = "nan" if row["score"] is None else f"{row['score']:.3f}"
            return f"{row['emoji']}{name} ({score})"

        head = ", ".join(show(r) for r in rows[:3])
        return (
            f"NeutralityScan({len(self.emoji)} emoji at layer {self.layer}; most neutral: {head}; "
            f"least: {show(rows[-1])})"
        )


def _sentiment_row(cv: ConceptVectors, preferred: str, what: str) -> str:
    """The name of the sentiment vector to use: ``preferred`` if present, else the only one."""
    if preferred in cv.names:
        return preferred
    if len(cv.names) == 1:
        return cv.names[0]
    raise DataError(
        f"The {what} vectors hold {list(cv.names)} and none is named {preferred!r}.",
        hint="Pass sentiment_control_vectors(model) (it has 'cad' and 'prompt') or "
        "cad_vector(model) / prompt_vector(model).",
    )


def _layers(cv: ConceptVectors) -> list[int]:
    layers = cv.metadata.extra.get("layers")
    if isinstance(layers, list | tuple) and len(layers) == cv.n_layers:
        return [int(x) for x in layers]
    return list(range(cv.n_layers))


def neutrality_scan(
    emoji_vecs: ConceptVectors,
    cad: ConceptVectors,
    prompt: ConceptVectors,
    layer: int,
    *,
    candidates: Sequence[EmojiCandidate] | None = None,
) -> NeutralityScan:
    """Cosine of every emoji vector with the CAD and prompt sentiment vectors at ``layer`` (J.2).

    Args:
        emoji_vecs: :func:`emoji_vectors` output.
        cad: The CAD vector (:func:`~welfare_lens.analysis.cad_vector`), or
            :func:`~welfare_lens.analysis.sentiment_control_vectors` output (its ``"cad"``).
        prompt: The prompt vector (:func:`~welfare_lens.analysis.prompt_vector`), or the same
            ``sentiment_control_vectors`` output (its ``"prompt"``).
        layer: Model layer (block output) to compare at; all three sets must cover it.
        candidates: Names and categories for display (default: those recorded by
            :func:`emoji_vectors`).

    Raises:
        ShapeError: The vector sets have different ``d_model``.
        VectorError: They differ in hook or coordinate mode, or a sentiment vector is zero at
            ``layer``.
        LayerError: ``layer`` is not covered by every set.
        DataError: A set holds several vectors and none has the expected name.
    """
    sets = {"emoji": emoji_vecs, "CAD": cad, "prompt": prompt}
    for what, cv in sets.items():
        if cv.d_model != emoji_vecs.d_model:
            raise ShapeError(
                f"The {what} vectors have d_model {cv.d_model} ({cv.metadata.model_id!r}), the "
                f"emoji vectors {emoji_vecs.d_model} ({emoji_vecs.metadata.model_id!r}).",
                hint="Extract the sentiment and emoji vectors from the same model.",
            )
        for key in ("hook", "coordinate_mode"):
            if getattr(cv.metadata, key) != getattr(emoji_vecs.metadata, key):
                raise VectorError(
                    f"The {what} vectors use {key} {getattr(cv.metadata, key)!r}, the emoji "
                    f"vectors {getattr(emoji_vecs.metadata, key)!r}.",
                    hint="Extract all vectors at the same hook and in the same coordinates.",
                )
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise LayerError(f"layer must be an integer, got {layer!r}.", hint="E.g. layer=20.")
    at: dict[str, int] = {}  # row of ``layer`` in each set
    for what, cv in sets.items():
        layers = _layers(cv)
        if layer not in layers:
            raise LayerError(
                f"Layer {layer} is not among the {what} vectors' layers {layers}.",
                hint="Pick a layer that every set was extracted at (layers=None extracts all).",
            )
        at[what] = layers.index(layer)
    c = cad[_sentiment_row(cad, "cad", "CAD")][at["CAD"]].to(torch.float64)
    p = prompt[_sentiment_row(prompt, "prompt", "prompt")][at["prompt"]].to(torch.float64)
    for what, v in (("CAD", c), ("prompt", p)):
        if float(torch.linalg.vector_norm(v)) == 0.0:
            raise VectorError(
                f"The {what} vector is zero at layer {layer}.", hint="Recompute it or pick a layer."
            )
    names = list(emoji_vecs.names)
    e = torch.stack([emoji_vecs[name][at["emoji"]] for name in names]).to(torch.float64)
    e_norm = torch.linalg.vector_norm(e, dim=-1)

    def cosines(s: Tensor) -> F64:
        den = e_norm * torch.linalg.vector_norm(s)
        out = torch.where(den > 0, (e @ s) / den.clamp_min(1e-300), torch.nan)
        return np.asarray(out.numpy(), dtype=np.float64)

    extra = emoji_vecs.metadata.extra
    if candidates is not None:
        labels = {cand.emoji: cand.name for cand in candidates}
        groups = {cand.emoji: cand.category for cand in candidates}
    else:
        labels = {str(k): str(v) for k, v in dict(extra.get("emoji_names") or {}).items()}
        groups = {str(k): str(v) for k, v in dict(extra.get("emoji_categories") or {}).items()}
    return NeutralityScan(
        emoji=names,
        cos_cad=cosines(c),
        cos_prompt=cosines(p),
        layer=layer,
        names={k: v for k, v in labels.items() if k in emoji_vecs},
        categories={k: v for k, v in groups.items() if k in emoji_vecs},
        model_id=emoji_vecs.metadata.model_id,
    )
