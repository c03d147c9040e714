"""Activation capture: run conversations through a model and read the residual stream.

The paper extracts its vectors from the residual stream at the output of every block, at token
position −1: the last direction letter of a synthetic trajectory rendered without an end-of-turn
token (paper_method A4; appendix L.1). :func:`capture` does that for any number of trajectories
with memory that does not grow with their number: activations go straight into streaming
per-class statistics (:class:`welfare_lens.vectors.ClassStatistics`). :func:`project` scores
held-out trajectories against given vectors (the input of steering-layer selection, A4).

Both run batches sorted by length (little padding), right-padded (causal attention makes
right padding exact without an attention mask), and stop the forward pass after the last
requested block, so the unembedding is never computed.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from welfare_lens._memory import free_memory, is_out_of_memory, warn_back_off
from welfare_lens.chat import RenderedChat, action_token_ids, pad_rendered, render_chat
from welfare_lens.errors import (
    DataError,
    ResourceError,
    ShapeError,
    TokenizationError,
    VectorError,
)
from welfare_lens.hooks import (
    HookKind,
    capture_hooks,
    hook_name,
    n_layers,
    resolve_layers,
    run_until,
)
from welfare_lens.maze.config import Tile
from welfare_lens.models import model_info
from welfare_lens.vectors import ClassStatistics, _file_pair

__all__ = [
    "POSITION_RULES",
    "PositionRule",
    "Projections",
    "capture",
    "distinct_prefix_tokens",
    "iter_activations",
    "project",
]

PositionRule = Literal["last_action", "assistant", "generation_prompt", "user"]
POSITION_RULES: tuple[PositionRule, ...] = ("last_action", "assistant", "generation_prompt", "user")
PositionSpec = PositionRule | Callable[[RenderedChat], Tensor]


@dataclass(frozen=True)
class _Item:
    messages: Sequence[Mapping[str, str]]
    label: str
    group: int
    index: int = 0


def _as_item(obj: Any, index: int) -> _Item:
    if isinstance(obj, tuple) and len(obj) in (2, 3):
        messages, label = obj[0], obj[1]
        group = int(obj[2]) if len(obj) == 3 else index
    else:
        messages = getattr(obj, "messages", None)
        label = getattr(obj, "label", None)
        seed = getattr(obj, "maze_seed", None)
        group = index if seed is None else int(seed)
    if messages is None or not isinstance(label, str):
        raise DataError(
            f"Item {index} is neither a trajectory nor a (messages, label[, group]) tuple: "
            f"{type(obj).__name__}.",
            hint="Pass wl.maze trajectories, or tuples (messages, label) or "
            "(messages, label, group).",
        )
    return _Item(messages, label, group, index)


def _positions(rendered: RenderedChat, rule: PositionSpec) -> Bool[Tensor, " pos"]:
    if callable(rule):
        mask = rule(rendered)
        if (
            not isinstance(mask, Tensor)
            or mask.dtype != torch.bool
            or mask.shape != (len(rendered),)
        ):
            raise ShapeError(
                "A position function must return a boolean mask of one entry per token.",
                hint="Return e.g. rendered.user_mask or a [pos] bool tensor.",
            )
        return mask
    if rule == "last_action":
        mask = torch.zeros(len(rendered), dtype=torch.bool)
        mask[rendered.last_assistant_token] = True
        return mask
    if rule == "assistant":
        return rendered.assistant_content_mask
    if rule == "generation_prompt":
        return rendered.generation_prompt_mask
    if rule == "user":
        return rendered.user_mask
    raise DataError(
        f"Unknown position rule {rule!r}.",
        hint=f"Use one of {POSITION_RULES} or a function RenderedChat -> bool mask.",
    )


def iter_activations(
    model: Any,
    items: Iterable[Any],
    *,
    position: PositionSpec = "last_action",
    layers: int | Sequence[int] | None = None,
    hook: HookKind = "resid_post",
    reduce: Literal["tokens", "mean"] = "tokens",
    batch_size: int = 1,
    template: Literal["auto", "model", "plain"] = "auto",
    progress: bool = True,
    description: str = "capture",
    share_prefixes: bool | None = None,
) -> Iterator[tuple[Float[Tensor, "n layer d_model"], list[str], list[int]]]:
    """Yield activations at the selected positions, batch by batch.

    Args:
        model: A TransformerLens model (``wl.load_model(...)``).
        items: Trajectories (objects with ``messages``, ``label`` and optionally ``maze_seed``)
            or tuples ``(messages, label[, group])``.
        position: ``"last_action"`` (default; the paper's position −1), ``"assistant"`` (every
            assistant content token), ``"generation_prompt"`` (the tokens of the assistant
            generation prompt, which is then appended), ``"user"`` (user content tokens), or a
            function from :class:`~welfare_lens.chat.RenderedChat` to a ``[pos]`` bool mask.
        layers: Blocks to read (default all).
        hook: Which per-block hook (default ``resid_post``, the block output).
        reduce: With several selected tokens per conversation, ``"tokens"`` yields each as a
            sample; ``"mean"`` yields their mean, one sample per conversation.
        batch_size: Conversations per forward pass. On CPU one at a time is fastest (eager
            attention makes padded batches of long conversations slower:
            benchmarks/extract.py); raise it on a GPU. A batch that runs out of memory is
            retried with half the size (and later batches keep the smaller size).
        template: Chat template choice (see :func:`welfare_lens.chat.render_chat`).
        progress: Show a progress bar.
        description: Progress-bar label.
        share_prefixes: Encode each distinct token prefix once (:func:`_iter_shared_prefixes`):
            conversations are taken in token order and each continues the KV cache of the one
            before as far as they agree. Exact (same activations as encoding each alone, to
            float tolerance). Default: on when ``batch_size == 1``.

    Yields:
        ``(acts [n, n_selected_layers, d_model], labels, groups)`` per batch, on CPU, fp32 or
        the model's dtype.
    """
    for acts, labels, groups, _, _ in _activation_batches(
        model,
        items,
        position=position,
        layers=layers,
        hook=hook,
        reduce=reduce,
        batch_size=batch_size,
        template=template,
        progress=progress,
        description=description,
        share_prefixes=share_prefixes,
    ):
        yield acts, labels, groups


def _activation_batches(
    model: Any,
    items: Iterable[Any],
    *,
    position: PositionSpec = "last_action",
    layers: int | Sequence[int] | None = None,
    hook: HookKind = "resid_post",
    reduce: Literal["tokens", "mean"] = "tokens",
    batch_size: int = 1,
    template: Literal["auto", "model", "plain"] = "auto",
    progress: bool = True,
    description: str = "capture",
    share_prefixes: bool | None = None,
    skip: int = 0,
    chunk: int = 32,
) -> Iterator[tuple[Float[Tensor, "n layer d_model"], list[str], list[int], int, list[int]]]:
    """:func:`iter_activations`, also yielding the number of conversations per batch and each
    sample's input index.

    ``skip`` leaves out the first conversations of the processing order (resuming).
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}.", hint="Use e.g. 8.")
    share = batch_size == 1 if share_prefixes is None else bool(share_prefixes)
    if share and batch_size != 1:
        raise DataError(
            f"share_prefixes=True encodes one conversation at a time, but batch_size={batch_size}.",
            hint="Use batch_size=1 with share_prefixes, or share_prefixes=False to batch.",
        )
    total = n_layers(model)
    chosen = resolve_layers(layers, total)
    names = [hook_name(layer, hook) for layer in chosen]
    tokenizer = model.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    add_prompt = position == "generation_prompt"

    rendered: list[tuple[Any, Tensor, _Item]] = []
    for index, obj in enumerate(items):
        item = _as_item(obj, index)
        chat = render_chat(
            tokenizer, item.messages, add_generation_prompt=add_prompt, template=template
        )
        mask = _positions(chat, position)
        if not bool(mask.any()):
            raise TokenizationError(
                f"Item {index} has no token at position rule {position!r}.",
                hint="End each conversation with an assistant move (last_action/assistant), "
                "or with a user message (generation_prompt).",
            )
        if share:
            # Keep only what the shared-prefix pass needs, compactly (4 bytes per token):
            # memory must not grow much with the number of conversations.
            compact = _Compact(chat.input_ids.numpy().astype(np.int32), mask.nonzero().squeeze(1))
            rendered.append((compact, torch.empty(0), item))
        else:
            rendered.append((chat, mask, item))
    if not rendered:
        raise DataError("No trajectories to capture.", hint="Pass at least one.")

    if share:
        yield from _iter_shared_prefixes(
            model,
            rendered,
            names,
            hook_name(max(chosen), hook),
            reduce,
            progress,
            description,
            skip,
            chunk,
        )
        return
    # Longest first: the first batch shows the peak memory at once, and padding stays small.
    order = sorted(range(len(rendered)), key=lambda i: -len(rendered[i][0]))
    bar = tqdm(total=len(order), desc=description, disable=not progress, unit="conv")
    bar.update(min(skip, len(order)))
    device = getattr(getattr(model, "cfg", None), "device", None)

    def forward(batch: list[tuple[RenderedChat, Tensor, _Item]]) -> tuple[Tensor, Tensor]:
        padded = pad_rendered([chat for chat, _, _ in batch], pad_id)
        width = padded["input_ids"].shape[1]
        select = torch.zeros(len(batch), width, dtype=torch.bool)
        for row, (_, mask, _) in enumerate(batch):
            select[row, : mask.shape[0]] = mask
        store: dict[str, Tensor] = {}
        tokens = padded["input_ids"] if device is None else padded["input_ids"].to(device)
        with torch.no_grad():
            run_until(
                model,
                tokens,
                capture_hooks(names, store, positions=select),
                hook_name(max(chosen), hook),
            )
        return torch.stack([store[name] for name in names], dim=1).cpu(), select

    size = batch_size
    try:
        start = skip
        while start < len(order):
            batch = [rendered[i] for i in order[start : start + size]]
            try:
                acts, select = forward(batch)  # acts [n_sel, L, d]
            except RuntimeError as err:  # torch.OutOfMemoryError is one
                if not is_out_of_memory(err):
                    raise
                if size == 1:
                    raise ResourceError(
                        "One conversation does not fit in memory.",
                        hint="Use a smaller dtype, fewer layers, or a device with more memory.",
                    ) from err
                free_memory()
                warn_back_off("batch_size", size, size // 2)
                size //= 2
                continue
            start += len(batch)
            counts = select.sum(dim=1).tolist()
            labels: list[str] = []
            groups: list[int] = []
            indices: list[int] = []
            if reduce == "mean":
                pieces = torch.split(acts, counts)
                acts = torch.stack([piece.mean(dim=0) for piece in pieces])
                counts = [1] * len(batch)
            for (_, _, item), count in zip(batch, counts, strict=True):
                labels.extend([item.label] * count)
                groups.extend([item.group] * count)
                indices.extend([item.index] * count)
            yield acts, labels, groups, len(batch), indices
            bar.update(len(batch))
    finally:
        bar.close()


_TILE_CLASSES: tuple[str, ...] = tuple(tile.class_name for tile in Tile)


def _crop_cache(past: Any, length: int) -> None:
    remove = int(past.get_seq_length()) - length
    if remove > 0:
        past.crop(-remove)


@dataclass(frozen=True)
class _Compact:
    """A conversation as the shared-prefix pass needs it: token ids and the positions read."""

    ids: np.ndarray[Any, np.dtype[np.int32]]
    selected: Tensor


def _common_prefix_array(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def distinct_prefix_tokens(model: Any, trajectories: Iterable[Any]) -> int:
    """Tokens a prefix-sharing encoder runs for these conversations (issue: extraction cost).

    Sorts the rendered conversations by token ids and counts, for each, the tokens after its
    common prefix with the one before (at least its last token): one forward pass per distinct
    prefix. Rendering only; no forward pass. Independent trajectories share little more than
    the system prompt, so this is close to their total length.
    """
    seqs = sorted(render_chat(model.tokenizer, t.messages).input_ids.tolist() for t in trajectories)
    total = 0
    previous: list[int] = []
    for seq in seqs:
        total += len(seq) - min(_common_prefix(previous, seq), len(seq) - 1)
        previous = seq
    return total


def _iter_shared_prefixes(
    model: Any,
    rendered: list[tuple[Any, Tensor, _Item]],  # (_Compact, unused, item)
    names: list[str],
    last_hook: str,
    reduce: Literal["tokens", "mean"],
    progress: bool,
    description: str,
    skip: int = 0,
    chunk: int = 32,
) -> Iterator[tuple[Float[Tensor, "n layer d_model"], list[str], list[int], int, list[int]]]:
    """One forward pass per distinct token prefix (issue: extraction near the compute limit).

    Conversations are sorted by their token ids, so each shares the longest possible prefix
    with the one before. The KV cache of the previous conversation is cropped back to that
    shared prefix (never past the first position read, whose activation must be recomputed)
    and only the rest is run. Causal attention makes this exact. A plain ``DynamicCache``
    keeps every past state, also for sliding-window layers (Gemma 3), so it can be cropped
    anywhere; masks still apply the window. The forward pass ends at ``last_hook``
    (:func:`~welfare_lens.hooks.run_until`), so the final norm and the unembedding are never
    computed.
    """
    from transformers import DynamicCache

    device = getattr(getattr(model, "cfg", None), "device", None)
    # Big-endian bytes sort like the token-id sequences themselves (a prefix sorts first).
    order = sorted(range(len(rendered)), key=lambda i: rendered[i][0].ids.astype(">u4").tobytes())
    bar = tqdm(total=len(order), desc=description, disable=not progress, unit="conv")
    bar.update(min(skip, len(order)))
    past: Any = None
    cached = np.zeros(0, dtype=np.int32)
    pieces: list[Tensor] = []
    labels: list[str] = []
    groups: list[int] = []
    indices: list[int] = []
    try:
        for count, index in enumerate(order[skip:], start=1):
            compact, _, item = rendered[index]
            selected = compact.selected
            keep = min(_common_prefix_array(cached, compact.ids), int(selected[0]))
            if past is None or keep == 0:
                past, keep = DynamicCache(), 0
            else:
                _crop_cache(past, keep)
            tokens = torch.from_numpy(compact.ids[keep:].astype(np.int64)).unsqueeze(0)
            if device is not None:
                tokens = tokens.to(device)
            store: dict[str, Tensor] = {}
            with torch.no_grad():
                run_until(
                    model,
                    tokens,
                    capture_hooks(names, store, positions=(selected - keep).tolist()),
                    last_hook,
                    past_key_values=past,
                )
            cached = compact.ids
            acts = torch.stack([store[name][0] for name in names], dim=1).cpu()  # [n_sel, L, d]
            if reduce == "mean":
                acts = acts.mean(dim=0, keepdim=True)
            pieces.append(acts)
            labels.extend([item.label] * acts.shape[0])
            groups.extend([item.group] * acts.shape[0])
            indices.extend([item.index] * acts.shape[0])
            bar.update(1)
            if len(pieces) >= chunk or count == len(order) - skip:
                yield torch.cat(pieces), labels, groups, len(pieces), indices
                pieces, labels, groups, indices = [], [], [], []
    finally:
        bar.close()


def iter_branch_activations(
    model: Any,
    walks: Iterable[Any],
    *,
    layers: int | Sequence[int] | None = None,
    hook: HookKind = "resid_post",
    classes: Sequence[str] = _TILE_CLASSES,
    per_class: int | None = None,
    template: Literal["auto", "model", "plain"] = "auto",
    progress: bool = True,
) -> Iterator[tuple[Float[Tensor, "n layer d_model"], list[str], list[int]]]:
    """Activations of every possible final move at every turn of maze walks (minimal pairs).

    A class-c trajectory of length n is n−1 moves onto Path followed by a move onto a class-c
    tile (paper A4). Given a Path walk (e.g. ``synthetic_trajectories(cfg, classes=("path",),
    lengths=[15])``), every turn k and every direction d whose neighbour has class c yields
    such a trajectory: the walk's first k−1 moves, the k-th user message, then move d. Causal
    attention makes the activation at that move depend only on this prefix, so one forward
    pass over the walk plus one token per alternative move (branching off the KV cache) gives
    up to 4·n samples, instead of n full forward passes per sample. At 15 turns this is about
    30x fewer tokens than encoding each trajectory on its own.

    This is a departure from the paper's sampling, documented in the README: the samples of
    one walk share a maze and a prefix (use the group id, the maze seed, for bootstraps and
    splits), and at a given turn the alternatives see the *same* prompt and differ only in the
    chosen move, which controls for what the model sees (DESIGN: "what the model sees vs what
    it chose").

    Args:
        model: A TransformerLens model with a full-attention KV cache.
        walks: Trajectories with ``messages``, ``actions``, ``neighbours`` (N, E, S, W tile ids
            per turn) and ``maze_seed``; every assistant message a single direction token.
        layers, hook, template, progress: See :func:`iter_activations`.
        classes: Tile classes to keep (by the class of the tile the move enters).
        per_class: Stop adding samples of a class once it has this many; stop when all are full.

    Yields:
        ``(acts [n, n_layers, d_model], labels, groups)`` per walk.
    """
    from transformers import DynamicCache

    total = n_layers(model)
    chosen = resolve_layers(layers, total)
    names = [hook_name(layer, hook) for layer in chosen]
    tokenizer = model.tokenizer
    action_ids = action_token_ids(tokenizer, template=template)
    wanted = set(classes)
    counts = dict.fromkeys(wanted, 0)
    walks = list(walks)
    if not walks:
        raise DataError("No walks to capture.", hint="Pass at least one trajectory.")
    bar = tqdm(total=len(walks), desc="branches", disable=not progress, unit="walk")
    device = getattr(getattr(model, "cfg", None), "device", None)
    try:
        for index, walk in enumerate(walks):
            if per_class is not None and all(counts[c] >= per_class for c in wanted):
                break
            neighbours = getattr(walk, "neighbours", None)
            actions = getattr(walk, "actions", None)
            if neighbours is None or actions is None:
                raise DataError(
                    f"Walk {index} has no neighbours/actions.",
                    hint="Pass wl.maze trajectories (they record the tiles shown each turn).",
                )
            group = int(walk.maze_seed) if getattr(walk, "maze_seed", None) is not None else index
            rendered = render_chat(tokenizer, walk.messages, template=template)
            positions = rendered.assistant_content_positions.tolist()
            if len(positions) != len(neighbours):
                raise TokenizationError(
                    f"Walk {index} has {len(neighbours)} turns but {len(positions)} assistant "
                    "tokens.",
                    hint="Every assistant message must be one direction token (N/E/S/W).",
                )
            tokens = rendered.input_ids.unsqueeze(0)
            if device is not None:
                tokens = tokens.to(device)
            store: dict[str, Tensor] = {}
            with torch.no_grad():
                # A plain DynamicCache keeps every past state, also for sliding-window layers
                # (Gemma 3), so it can be cropped back to any turn; masks still apply the window.
                _, past = model.run_with_hooks(
                    tokens,
                    fwd_hooks=capture_hooks(names, store, positions=list(positions)),
                    return_type="logits_and_cache",
                    past_key_values=DynamicCache(),
                )
            walked = torch.stack([store[name][0] for name in names], dim=1).cpu()  # [turns, L, d]
            rows: list[Tensor] = []
            labels: list[str] = []
            # Latest turn first: the cache only ever has to shrink.
            for turn in reversed(range(len(positions))):
                branch_dirs: list[str] = []
                turn_start = len(rows)
                for direction, tile in zip(("N", "E", "S", "W"), neighbours[turn], strict=True):
                    label = Tile(int(tile)).class_name
                    if label not in wanted or (
                        per_class is not None and counts[label] >= per_class
                    ):
                        continue
                    counts[label] += 1
                    labels.append(label)
                    if actions[turn] is not None and str(actions[turn]) == direction:
                        rows.append(walked[turn])  # the walk's own move: already computed
                    else:
                        rows.append(torch.empty(0))  # filled below
                        branch_dirs.append(direction)
                if not branch_dirs:
                    continue
                # All alternative moves of this turn in one forward pass, batch = alternatives.
                _crop_cache(past, positions[turn])
                if len(branch_dirs) > 1:
                    past.batch_repeat_interleave(len(branch_dirs))
                branch: dict[str, Tensor] = {}
                batch_tokens = torch.tensor(
                    [[action_ids[d]] for d in branch_dirs], device=tokens.device
                )
                with torch.no_grad():
                    model.run_with_hooks(
                        batch_tokens,
                        fwd_hooks=capture_hooks(names, branch),
                        past_key_values=past,
                        return_type="logits_and_cache",
                    )
                if len(branch_dirs) > 1:
                    past.batch_select_indices(torch.tensor([0], device=tokens.device))
                computed = torch.stack([branch[name][:, -1] for name in names], dim=1).cpu()
                slots = [i for i in range(turn_start, len(rows)) if rows[i].numel() == 0]
                for slot, value in zip(slots, computed, strict=True):
                    rows[slot] = value
            bar.update(1)
            if rows:
                yield torch.stack(rows), labels, [group] * len(labels)
    finally:
        bar.close()


def capture(
    model: Any,
    trajectories: Iterable[Any],
    *,
    position: PositionSpec = "last_action",
    layers: int | Sequence[int] | None = None,
    hook: HookKind = "resid_post",
    reduce: Literal["tokens", "mean"] = "tokens",
    classes: Sequence[str] | None = None,
    batch_size: int = 1,
    second_moments: Literal["none", "diag", "full"] = "diag",
    n_buckets: int = 64,
    template: Literal["auto", "model", "plain"] = "auto",
    progress: bool = True,
    stats: ClassStatistics | None = None,
    branches: bool = False,
    per_class: int | None = None,
    holdout: float = 0.0,
    holdout_seed: int = 0,
    share_prefixes: bool | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 1000,
    composition: bool = True,
) -> ClassStatistics:
    """Streaming per-class statistics of the residual stream (paper A4).

    Memory is that of the statistics (counts, sums, second moments, bucket sums), independent of
    the number of trajectories. Pass ``stats`` to keep adding to an existing object (e.g. after
    an interruption, or from several sources).

    Args:
        model: A TransformerLens model.
        trajectories: See :func:`iter_activations`.
        position, layers, hook, reduce, batch_size, template, progress: See
            :func:`iter_activations`.
        classes: Class names (default: the labels that occur, mold/gold/path first).
        second_moments, n_buckets: See :class:`~welfare_lens.vectors.ClassStatistics`.
        stats: Existing statistics to update instead of creating new ones.
        branches: Treat the trajectories as Path walks and read every possible final move at
            every turn (:func:`iter_branch_activations`): ~30x cheaper, minimal-pair design.
            Only with ``position="last_action"``.
        per_class: With ``branches``, the number of samples per class to collect.
        holdout, holdout_seed: Keep this fraction of groups (mazes) aside, per sample, for
            steering-layer selection (``stats.heldout``); they are not in the sums.
        share_prefixes: Encode each distinct token prefix once (exact; default on when
            ``batch_size == 1``): see :func:`iter_activations`. Trajectories from
            :func:`welfare_lens.maze.shared_prefix_trajectories` share most of their tokens.
        checkpoint: Save the statistics here (``.safetensors`` + ``.json``, atomically) every
            ``checkpoint_every`` conversations and at the end. If the file exists and was made
            from the same trajectories and settings, the capture resumes after the last saved
            conversation: an interrupted extraction loses at most ``checkpoint_every``
            conversations of work and counts none twice.
        checkpoint_every: Conversations between checkpoints.
        composition: For maze trajectories read at the final move, record what each class
            saw (:func:`welfare_lens.analysis.composition.composition_table`, in
            ``stats.info["composition"]``; a warning when the classes differ beyond its
            threshold, as the paper's design does) and fit the seen-tile regression
            (``stats.extra``; :func:`welfare_lens.analysis.composition.seen_tile_cosines`).

    Returns:
        The class statistics, with provenance (model id, hook, coordinate mode, position rule,
        layers) in ``stats.info``.

    Example:
        >>> trajs = wl.maze.synthetic_trajectories(cfg, per_class=100)
        >>> stats = wl.capture(model, trajs)
        >>> v = wl.welfare_vectors(stats)
    """
    if branches and position != "last_action":
        raise DataError(
            "Branch capture reads the final move only.",
            hint="Use position='last_action' with branches=True.",
        )
    trajectories = list(trajectories)
    items = [] if branches else [_as_item(obj, i) for i, obj in enumerate(trajectories)]
    total = n_layers(model)
    chosen = resolve_layers(layers, total)
    if stats is None:
        present = list(_TILE_CLASSES) if branches else list(dict.fromkeys(i.label for i in items))
        order = [c for c in ("mold", "gold", "path") if c in present]
        names = (
            tuple(classes)
            if classes is not None
            else (*order, *(c for c in present if c not in order))
        )
        info = model_info(model)
        stats = ClassStatistics(
            n_layers=len(chosen),
            d_model=int(model.cfg.d_model),
            classes=names,
            model_id=info.model_id,
            hook=hook,
            coordinate_mode=info.coordinate_mode,
            position_rule=position if isinstance(position, str) else "custom",
            design="branches" if branches else _design_of(trajectories),
            info={"layers": chosen, "reduce": reduce},
            n_buckets=n_buckets,
            second_moments=second_moments,
            holdout=holdout,
            holdout_seed=holdout_seed,
        )
    elif stats.n_layers != len(chosen) or stats.d_model != int(model.cfg.d_model):
        raise ShapeError(
            f"The given statistics hold {stats.n_layers} layers x {stats.d_model}, but this "
            f"capture reads {len(chosen)} layers x {model.cfg.d_model}.",
            hint="Pass statistics made from the same model and layer selection, or none.",
        )
    if branches:
        if checkpoint is not None:
            raise DataError(
                "Branch capture cannot checkpoint.", hint="Use checkpoint=None with branches."
            )
        for acts, labels, groups in iter_branch_activations(
            model,
            trajectories,
            layers=chosen,
            hook=hook,
            classes=stats.classes,
            per_class=per_class,
            template=template,
            progress=progress,
        ):
            stats.update(labels=labels, acts=acts, groups=groups)
        return stats
    done = 0
    if checkpoint is not None:
        fingerprint = _fingerprint(items, position, chosen, hook, reduce)
        stats, done = _resume(checkpoint, stats, fingerprint)
    regression, features = _composition(stats, trajectories, items, position, composition)
    since = 0
    for acts, labels, groups, n_conv, indices in _activation_batches(
        model,
        [(item.messages, item.label, item.group) for item in items],
        position=position,
        layers=chosen,
        hook=hook,
        reduce=reduce,
        batch_size=batch_size,
        template=template,
        progress=progress,
        share_prefixes=share_prefixes,
        skip=done,
        chunk=32 if checkpoint is None else max(1, min(32, checkpoint_every)),
    ):
        stats.update(labels=labels, acts=acts, groups=groups)
        if regression is not None:
            regression.update(acts, features[indices])
            stats.extra.update(regression.to_tensors())
        done += n_conv
        since += n_conv
        if checkpoint is not None and since >= checkpoint_every:
            _save_checkpoint(stats, checkpoint, fingerprint, done)
            since = 0
    if checkpoint is not None:
        _save_checkpoint(stats, checkpoint, fingerprint, done)
    return stats


def _composition(
    stats: ClassStatistics,
    trajectories: Sequence[Any],
    items: Sequence[_Item],
    position: PositionSpec,
    enabled: bool,
) -> tuple[Any, Any]:
    """The composition diagnostic of maze trajectories (table in ``stats.info``, a warning when
    flagged) and its streaming regression; ``(None, None)`` for other inputs."""
    if not enabled or position != "last_action" or not trajectories:
        return None, None
    if not all(getattr(t, "neighbours", None) for t in trajectories):
        return None, None
    from welfare_lens.analysis.composition import (
        SeenTileRegression,
        composition_features,
        composition_table,
    )

    table = composition_table(trajectories, [item.label for item in items])
    stats.info["composition"] = table.to_dict()
    message = table.warning()
    if message is not None:
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    if "composition.sum_xc" in stats.extra:
        regression = SeenTileRegression.from_tensors(stats.extra)
    else:
        regression = SeenTileRegression(stats.n_layers, stats.d_model)
    return regression, composition_features(trajectories)


def _design_of(trajectories: Sequence[Any]) -> str:
    """The sampling design recorded by the trajectories (``meta["design"]``), else "paper"."""
    designs = {str((getattr(t, "meta", None) or {}).get("design", "paper")) for t in trajectories}
    return designs.pop() if len(designs) == 1 else "mixed"


def _fingerprint(
    items: Sequence[_Item], position: PositionSpec, layers: Sequence[int], hook: str, reduce: str
) -> str:
    """Identity of a capture's input: the same items in the same order, read the same way."""
    digest = hashlib.sha256()
    rule = position if isinstance(position, str) else getattr(position, "__qualname__", "custom")
    digest.update(json.dumps([rule, list(layers), hook, reduce]).encode())
    for item in items:
        digest.update(json.dumps([list(map(dict, item.messages)), item.label, item.group]).encode())
    return digest.hexdigest()


def _resume(
    checkpoint: str | os.PathLike[str], stats: ClassStatistics, fingerprint: str
) -> tuple[ClassStatistics, int]:
    """The checkpointed statistics and how many conversations they hold, or a fresh start."""
    path = _file_pair(checkpoint)[0]
    if not _file_pair(path)[1].exists():
        return stats, 0
    try:
        saved = ClassStatistics.load(path)
    except DataError as err:
        # A kill between writing the tensor file and its JSON sidecar: the pair disagrees.
        warnings.warn(
            f"Ignoring the unreadable capture checkpoint {path} ({err}); starting over.",
            RuntimeWarning,
            stacklevel=3,
        )
        return stats, 0
    resume = saved.info.get("resume", {})
    if resume.get("fingerprint") != fingerprint:
        raise DataError(
            f"The capture checkpoint {path} was made from other trajectories or settings.",
            hint="Delete it, or pass the same trajectories, positions, layers and hook.",
        )
    return saved, int(resume["done"])


def _save_checkpoint(
    stats: ClassStatistics, checkpoint: str | os.PathLike[str], fingerprint: str, done: int
) -> None:
    stats.info["resume"] = {"fingerprint": fingerprint, "done": done}
    stats.save(checkpoint)


@dataclass
class Projections:
    """Per-sample scores of held-out activations against per-layer vectors.

    Attributes:
        labels: Class label of each sample.
        groups: Group (maze) id of each sample.
        dot: ``{vector name: [n_samples, n_layers]}`` dot products ``a · v_ℓ``.
        cosine: ``{vector name: [n_samples, n_layers]}`` cosine similarities ``cos(a, v_ℓ)``,
            the scores whose histograms the paper compares for layer selection (A4).
    """

    labels: list[str]
    groups: list[int]
    dot: dict[str, Tensor] = field(default_factory=dict)
    cosine: dict[str, Tensor] = field(default_factory=dict)

    def of(self, label: str) -> Bool[Tensor, " n"]:
        """Boolean mask of the samples with ``label``."""
        return torch.tensor([lab == label for lab in self.labels], dtype=torch.bool)


def project(
    model: Any,
    trajectories: Iterable[Any],
    vectors: Mapping[str, Tensor] | Any,
    *,
    position: PositionSpec = "last_action",
    layers: int | Sequence[int] | None = None,
    hook: HookKind = "resid_post",
    batch_size: int = 1,
    template: Literal["auto", "model", "plain"] = "auto",
    progress: bool = True,
    share_prefixes: bool | None = None,
) -> Projections:
    """Project held-out samples onto per-layer vectors (input of steering-layer selection, A4).

    Args:
        model: A TransformerLens model.
        trajectories: Held-out trajectories (never those the vectors were computed from).
        vectors: ``{name: [n_layers, d_model]}`` or a ``ConceptVectors`` (its named vectors).
        position, layers, hook, batch_size, template, progress, share_prefixes: See
            :func:`iter_activations`.

    Returns:
        Per-sample dot products and cosines, ``[n_samples, n_layers]`` per vector.
    """
    if hasattr(vectors, "items") and not isinstance(vectors, Mapping):
        vectors = dict(vectors.items())
    if hasattr(vectors, "check_compatible"):
        vectors.check_compatible(model)
    total = n_layers(model)
    chosen = resolve_layers(layers, total)
    table: dict[str, Tensor] = {}
    for name, value in dict(vectors).items():
        v = torch.as_tensor(value, dtype=torch.float32)
        if (
            v.ndim != 2
            or v.shape[1] != int(model.cfg.d_model)
            or v.shape[0]
            not in (
                total,
                len(chosen),
            )
        ):
            raise ShapeError(
                f"Vector {name!r} has shape {tuple(v.shape)}; expected [{total} or "
                f"{len(chosen)}, {model.cfg.d_model}].",
                hint="Use per-layer vectors extracted from this model.",
            )
        if not torch.isfinite(v).all():
            raise VectorError(f"Vector {name!r} has NaN or inf values.", hint="Recompute it.")
        table[name] = v[chosen] if v.shape[0] == total and len(chosen) != total else v
    result = Projections(labels=[], groups=[])
    dots: dict[str, list[Tensor]] = {name: [] for name in table}
    coss: dict[str, list[Tensor]] = {name: [] for name in table}
    for acts, labels, groups in iter_activations(
        model,
        trajectories,
        position=position,
        layers=chosen,
        hook=hook,
        batch_size=batch_size,
        template=template,
        progress=progress,
        description="project",
        share_prefixes=share_prefixes,
    ):
        a = acts.float()
        result.labels.extend(labels)
        result.groups.extend(groups)
        for name, v in table.items():
            dot = torch.einsum("nld,ld->nl", a, v)
            norms = a.norm(dim=-1) * v.norm(dim=-1)
            dots[name].append(dot)
            coss[name].append(dot / norms.clamp_min(torch.finfo(torch.float32).tiny))
    result.dot = {name: torch.cat(parts) for name, parts in dots.items()}
    result.cosine = {name: torch.cat(parts) for name, parts in coss.items()}
    return result
