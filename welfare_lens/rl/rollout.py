"""Multi-turn rollouts with action-masked sampling and a KV cache carried across turns.

The paper trains on 15-turn maze conversations with no system prompt, sampling one direction
token per turn at temperature 0.7 from the four direction tokens only ("action masking", §2.2;
reconstruction notes A2, A3, Part C item 2). This module plays such episodes with a hooked model:

* **Action-masked sampling.** At every turn the next-token logits of the ``K`` action tokens
  (N/E/S/W by default) are divided by the temperature and renormalised among themselves; the
  action is drawn from that ``K``-way softmax. Its log-probability (fp32) and the whole ``K``-way
  distribution are recorded; they are what :func:`~welfare_lens.rl.losses.restricted_logprobs`
  recomputes for the loss.
* **KV cache across turns.** The conversation is never re-encoded: each turn feeds only the
  sampled action of the previous turn, the end-of-turn markup, the new user message and the
  generation prompt, on top of the bridge's HF cache (``return_type="logits_and_cache"``).
  Episodes are decoded in batches ("lanes"); their per-turn chunks have different lengths, so
  each chunk is right-padded and the padding stays in the cache as masked-out *gaps* with
  positions derived from the attention mask. Models with sliding-window attention (Gemma 3) would
  see a different window across such gaps once a cache outgrows the window, so they are decoded
  one episode per lane unless every episode's cache provably stays inside the window (short
  episodes: one to a few maze turns), where lanes are exact.
* **Hooks.** TransformerLens hooks stay active in cached calls: pass ``fwd_hooks`` (or wrap the
  call in ``model.hooks(...)``) to steer the policy during rollouts. A hook sees only the new
  chunk's positions ``[batch, chunk, d_model]``.
* **Determinism.** Each episode samples from its own ``torch.Generator`` seeded from
  ``(seed, episode index)``, so the actions do not depend on how episodes are batched (up to
  float rounding in the logits).

Token convention (the training format). An episode's ``input_ids`` equal
``render_chat(tokenizer, env.messages).input_ids``: every earlier assistant turn is closed with
its end-of-turn markup, and the **final move has no end-of-turn token after it**, as in the
paper's extraction format (appendix L.1; :func:`welfare_lens.chat.render_chat`'s default). The
rollout checks this (and that the template renders incrementally) for every episode.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from welfare_lens.capture import _common_prefix
from welfare_lens.chat import ACTIONS, TemplateChoice, action_token_ids, render_chat
from welfare_lens.errors import DataError, TrainingError
from welfare_lens.maze.config import MazeConfig
from welfare_lens.maze.env import MazeEnv
from welfare_lens.maze.generate import generate_maze

__all__ = [
    "UNKNOWN_TILE",
    "Episode",
    "RolloutStats",
    "TurnEnv",
    "collate",
    "episode_generator",
    "maze_groups",
    "rollout",
    "sliding_window",
]

#: Tile class recorded for a neighbour when the environment does not report one.
UNKNOWN_TILE = -1

HookList = Sequence[tuple[str | Callable[[str], bool], Callable[..., Any]]]


@runtime_checkable
class TurnEnv(Protocol):
    """A multi-turn environment the rollout can play (e.g. :class:`~welfare_lens.maze.MazeEnv`).

    ``messages`` is the conversation so far (ending with the user message awaiting a reply while
    the episode runs); ``step(reply)`` plays one turn and returns an object with a ``reward``
    attribute (and optionally ``gold_consumed``, ``mold_entered`` and ``neighbours``, the tile
    classes in the action order, captured before the move resolves).
    """

    @property
    def messages(self) -> list[dict[str, str]]:
        """The conversation so far."""
        ...

    @property
    def done(self) -> bool:
        """Whether the episode is over."""
        ...

    def step(self, reply: str) -> Any:
        """Play one turn with ``reply``."""
        ...


@dataclass
class Episode:
    """One sampled multi-turn episode, with everything the loss and the metrics need.

    Attributes:
        input_ids: Tokens of the whole conversation, ``render_chat(env.messages)`` (no
            end-of-turn after the final move), ``[pos]``.
        action_mask: ``True`` at the positions of the sampled action tokens, ``[pos]``.
        action_positions: Indices of the action tokens, ``[turns]`` (the logits predicting the
            action at ``p`` are at ``p - 1``).
        action_ids: Token id of each sampled action, ``[turns]``.
        action_index: Index of each action in the rollout's action list, ``[turns]``.
        actions: The action strings, one per turn.
        logprobs: Log-probability of each sampled action under the restricted, temperature-scaled
            softmax that drew it (fp32), ``[turns]``.
        action_probs: The whole restricted distribution at each turn (fp32), ``[turns, K]``.
        neighbours: Tile class each action leads to, captured before the move resolved (maze:
            ``Tile`` ints in N/E/S/W order; :data:`UNKNOWN_TILE` if the env does not say),
            ``[turns, K]``.
        rewards: Per-turn rewards ``r_t`` (paper Q.1), float64 so that sums of the -0.1 step
            costs are exact to print precision, ``[turns]``.
        gold: Gold tiles consumed per turn, ``[turns]``.
        mold: Mold tiles entered per turn, ``[turns]``.
        group: Index of the episode's group (maze) in the batch.
        maze_seed: Seed of the maze (``None`` for a custom environment).
        episode_seed: Seed of the maze episode's wind and clause order (``None`` if unknown).
        messages: The conversation, as role/content dicts.
        fed_tokens: Tokens this episode fed through the model (prompt plus per-turn chunks).
    """

    input_ids: Int[Tensor, " pos"]
    action_mask: Bool[Tensor, " pos"]
    action_positions: Int[Tensor, " turns"]
    action_ids: Int[Tensor, " turns"]
    action_index: Int[Tensor, " turns"]
    actions: list[str]
    logprobs: Float[Tensor, " turns"]
    action_probs: Float[Tensor, "turns k"]
    neighbours: Int[Tensor, "turns k"]
    rewards: Float[Tensor, " turns"]
    gold: Int[Tensor, " turns"]
    mold: Int[Tensor, " turns"]
    group: int = 0
    maze_seed: int | None = None
    episode_seed: int | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    fed_tokens: int = 0

    @property
    def n_turns(self) -> int:
        """Number of turns played."""
        return int(self.action_ids.shape[0])

    @property
    def total_reward(self) -> float:
        """The episode return ``sum_t r_t`` (undiscounted, paper Q.1)."""
        return float(self.rewards.sum())

    @property
    def n_gold(self) -> int:
        """Gold tiles consumed in the episode."""
        return int(self.gold.sum())

    @property
    def n_mold(self) -> int:
        """Mold tiles entered in the episode."""
        return int(self.mold.sum())


@dataclass
class RolloutStats:
    """Cost of one :func:`rollout` call.

    Attributes:
        episodes: Episodes played.
        fed_tokens: Real (non-padding) tokens fed through the model.
        padded_tokens: Tokens fed including padding.
        forward_calls: Model calls.
        seconds: Wall time.
        shared_prefill_tokens: Tokens not fed because a group's episodes shared their first
            prompt's common prefix (``share_prefill``): ``fed_tokens + shared_prefill_tokens``
            is the cost without sharing.
    """

    episodes: int = 0
    fed_tokens: int = 0
    padded_tokens: int = 0
    forward_calls: int = 0
    seconds: float = 0.0
    shared_prefill_tokens: int = 0

    @property
    def tokens_per_s(self) -> float:
        """Real tokens encoded per second."""
        return self.fed_tokens / self.seconds if self.seconds > 0 else 0.0


# --------------------------------------------------------------------------------------------
# Seeds and environments
# --------------------------------------------------------------------------------------------


def _derive_seed(*words: int) -> int:
    """A 63-bit seed derived from integers (numpy's SeedSequence hashing)."""
    state = np.random.SeedSequence([int(w) for w in words]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & ((1 << 63) - 1)


def episode_generator(seed: int, index: int) -> torch.Generator:
    """The CPU generator that samples episode ``index`` of a rollout seeded with ``seed``."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(_derive_seed(seed, index, 0x5A5))
    return gen


def maze_groups(
    cfg: MazeConfig,
    n_mazes: int,
    episodes_per_maze: int,
    seed: int,
    *,
    shared_episode_seed: bool = False,
) -> list[MazeEnv]:
    """``n_mazes x episodes_per_maze`` fresh maze episodes, grouped maze by maze (paper A3, B-2).

    A group is the GRPO "prompt": every episode of a group plays the same maze, so its return is
    compared with its group's mean. Maze seeds (and episode seeds) are derived from ``seed``, so
    the same seed gives the same mazes.

    Args:
        cfg: Maze configuration.
        n_mazes: Mazes (groups); the paper uses 8 prompts per batch.
        episodes_per_maze: Episodes per maze (group size ``G``; note B-2).
        seed: Seed of this batch (e.g. derived from the run seed and the step).
        shared_episode_seed: Give every episode of a group the same wind and clause-order draws
            (then the group differs only by the model's samples). By default each episode has its
            own, as the wind is part of the environment's randomness.

    Returns:
        ``n_mazes * episodes_per_maze`` environments; episode ``g * episodes_per_maze + i``
        belongs to group ``g``.

    Raises:
        TrainingError: if a count is not a positive integer.
    """
    for name, value in (("n_mazes", n_mazes), ("episodes_per_maze", episodes_per_maze)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TrainingError(
                f"{name} must be a positive integer, got {value!r}.",
                hint="The paper uses 8 mazes per step and a group size of 64 (note B-2).",
            )
    envs: list[MazeEnv] = []
    for g in range(n_mazes):
        maze_seed = _derive_seed(seed, g, 0x3A2E) % (2**31)
        maze = generate_maze(cfg, maze_seed)
        for i in range(episodes_per_maze):
            ep_seed = maze_seed if shared_episode_seed else _derive_seed(seed, g, i) % (2**31)
            envs.append(MazeEnv(cfg, maze, episode_seed=ep_seed))
    return envs


# --------------------------------------------------------------------------------------------
# Model helpers
# --------------------------------------------------------------------------------------------


def sliding_window(model: Any) -> int | None:
    """The sliding-window size of a model's attention, or ``None`` if it has none.

    Padding gaps inside a batched KV cache shift which tokens a sliding window covers (the window
    is counted in cache slots, not positions), so such models are decoded one episode per lane.
    """
    hf = getattr(model, "original_model", None)
    cfg = getattr(hf, "config", None)
    if cfg is None:
        return None
    if hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    window = getattr(cfg, "sliding_window", None)
    if not window:
        return None
    if getattr(cfg, "use_sliding_window", True) is False:
        return None
    types = getattr(cfg, "layer_types", None)
    if types is not None and not any("sliding" in str(t) for t in types):
        return None
    return int(window)


def pad_token_id(tokenizer: Any) -> int:
    """The id used to pad batches: the tokenizer's pad token, else its EOS, else 0."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0


def _model_device(model: Any) -> torch.device:
    cfg_device = getattr(getattr(model, "cfg", None), "device", None)
    if cfg_device is not None:
        return torch.device(cfg_device)
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


_LOGITS_TO_KEEP_OK: dict[int, bool] = {}


def forward_logits(
    model: Any,
    input_ids: Int[Tensor, "batch pos"],
    keep: Int[Tensor, " k"] | None = None,
    **kwargs: Any,
) -> Any:
    """Run the bridge, computing logits only at positions ``keep`` when the model allows it.

    The vocabulary projection of every position is the largest tensor of a forward pass (8 x
    1300 x 49152 floats = 2 GB for SmolLM2); the loss and the sampler need only a few positions.
    HF causal LMs accept ``logits_to_keep`` (an index tensor applied to every row); models that do
    not get a full forward and are sliced afterwards, so the result is the same either way.

    Args:
        model: A TransformerBridge.
        input_ids: Tokens ``[batch, pos]``.
        keep: Sorted unique positions whose logits are wanted (``None``: all).
        **kwargs: Passed to the bridge (``past_key_values``, ``attention_mask``,
            ``return_type``, ...).

    Returns:
        What the bridge returns, with logits ``[batch, len(keep), vocab]``.
    """
    if keep is None:
        return model(input_ids, **kwargs)
    key = id(model)
    if _LOGITS_TO_KEEP_OK.get(key, True):
        try:
            out = model(input_ids, logits_to_keep=keep.to(input_ids.device), **kwargs)
            _LOGITS_TO_KEEP_OK[key] = True
            return out
        except TypeError:
            _LOGITS_TO_KEEP_OK[key] = False
    out = model(input_ids, **kwargs)
    if isinstance(out, tuple):
        return (out[0][:, keep.to(out[0].device)], *out[1:])
    return out[:, keep.to(out.device)]


# --------------------------------------------------------------------------------------------
# Rollout
# --------------------------------------------------------------------------------------------


@dataclass
class _Live:
    """Decoding state of one episode."""

    index: int
    env: Any
    generator: torch.Generator
    fed: list[int]
    pending: list[int]
    actions: list[str] = field(default_factory=list)
    action_ids: list[int] = field(default_factory=list)
    action_index: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    probs: list[list[float]] = field(default_factory=list)
    neighbours: list[list[int]] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    gold: list[int] = field(default_factory=list)
    mold: list[int] = field(default_factory=list)
    action_positions: list[int] = field(default_factory=list)
    fed_tokens: int = 0
    final_ids: list[int] | None = None


def _neighbour_classes(env: Any, result: Any, k: int) -> list[int]:
    seen = getattr(result, "neighbours", None)
    if seen is None or len(seen) != k:
        return [UNKNOWN_TILE] * k
    return [int(t) for t in seen]


def _render_ids(
    tokenizer: Any, messages: Sequence[Mapping[str, str]], template: TemplateChoice, gen: bool
) -> list[int]:
    rendered = render_chat(tokenizer, messages, add_generation_prompt=gen, template=template)
    ids: list[int] = rendered.input_ids.tolist()
    return ids


def _incremental_error(episode: int, turn: int) -> TrainingError:
    return TrainingError(
        f"Episode {episode}, turn {turn}: the rendered conversation is not the previous rendering "
        "plus the sampled action token, so the KV cache cannot be carried across turns.",
        hint="The chat template must render earlier turns identically whatever follows, and each "
        "action must be one token right after the generation prompt; try template='plain'.",
    )


@contextlib.contextmanager
def _maybe_hooks(model: Any, fwd_hooks: HookList | None) -> Iterator[None]:
    if not fwd_hooks:
        yield
        return
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        yield


def rollout(
    model: Any,
    envs: Sequence[TurnEnv],
    *,
    temperature: float = 0.7,
    seed: int = 0,
    actions: Sequence[str] = ACTIONS,
    batch_size: int | None = 64,
    template: TemplateChoice = "auto",
    fwd_hooks: HookList | None = None,
    groups: Sequence[int] | None = None,
    stats: RolloutStats | None = None,
    share_prefill: bool = True,
) -> list[Episode]:
    """Play every environment to the end with action-masked sampling (paper §2.2, A2, A3).

    Args:
        model: A TransformerBridge (LoRA-wrapped or not), in eval mode.
        envs: Fresh environments, e.g. from :func:`maze_groups`; they are played in place.
        temperature: Sampling temperature (paper: 0.7); > 0.
        seed: Seed of the per-episode samplers (:func:`episode_generator`).
        actions: The action strings sampling is restricted to; each must be one token right after
            the generation prompt (:func:`~welfare_lens.chat.action_token_ids`).
        batch_size: Episodes decoded together (``None``: all). Sliding-window models use 1
            unless their episodes are short enough to stay inside the window (module docstring).
        template: Chat template choice, as in :func:`~welfare_lens.chat.render_chat`.
        fwd_hooks: TransformerLens forward hooks active during every forward call (steering).
        groups: Group index of each environment (default: all 0; :func:`maze_groups` order gives
            ``i // episodes_per_maze``).
        stats: If given, filled with the cost of this call.
        share_prefill: Encode the first prompt's part that a group's episodes share once per
            group and copy its KV cache to the group's episodes (exact; skipped for
            sliding-window models, which decode one episode per lane). The maze's episodes of
            one group share the whole first prompt only with ``shared_episode_seed=True``;
            otherwise the clause order differs from the first clause on.

    Returns:
        One :class:`Episode` per environment, in order.

    Raises:
        TrainingError: on a bad temperature or batch size, an environment that is already done, or
            a chat template that cannot be decoded incrementally.
        TokenizationError: if an action is not a single token.
    """
    if not (
        isinstance(temperature, int | float) and math.isfinite(temperature) and temperature > 0
    ):
        raise TrainingError(
            f"temperature must be a finite number > 0, got {temperature!r}.",
            hint="The paper samples at 0.7.",
        )
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise TrainingError(
            f"batch_size must be a positive integer or None, got {batch_size!r}.",
            hint="E.g. 64; lower it if the KV cache does not fit in memory.",
        )
    if groups is not None and len(groups) != len(envs):
        raise TrainingError(
            f"groups has {len(groups)} entries for {len(envs)} environments.",
            hint="Give one group index per environment.",
        )
    started = time.perf_counter()
    tokenizer = model.tokenizer
    ids_of = action_token_ids(tokenizer, actions, template=template)
    allowed_list = [ids_of[a] for a in actions]
    device = _model_device(model)
    allowed = torch.tensor(allowed_list, dtype=torch.long, device=device)
    pad_id = pad_token_id(tokenizer)

    live: list[_Live] = []
    for i, env in enumerate(envs):
        if env.done:
            raise TrainingError(
                f"Environment {i} is already done.", hint="Pass fresh environments (reset them)."
            )
        prompt = _render_ids(tokenizer, env.messages, template, True)
        live.append(_Live(i, env, episode_generator(seed, i), fed=[], pending=prompt))

    lane_size = len(live) if batch_size is None else batch_size
    window = sliding_window(model)
    if window is not None and not _fits_window(live, window):
        lane_size = 1
    lane_size = max(1, lane_size)
    run_stats = stats if stats is not None else RolloutStats()
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.no_grad(), _maybe_hooks(model, fwd_hooks):
            for start in range(0, len(live), lane_size):
                lane = live[start : start + lane_size]
                _play_lane(
                    model,
                    lane,
                    allowed,
                    list(actions),
                    float(temperature),
                    pad_id,
                    template,
                    device,
                    run_stats,
                    [0] * len(lane)
                    if groups is None
                    else [int(groups[state.index]) for state in lane]
                    if share_prefill
                    else list(range(len(lane))),
                    window=window,
                )
    finally:
        if was_training:
            model.train()
    run_stats.episodes += len(live)
    run_stats.seconds += time.perf_counter() - started
    return [
        _to_episode(state, actions, None if groups is None else int(groups[state.index]))
        for state in live
    ]


def _fits_window(live: Sequence[_Live], window: int) -> bool:
    """Whether every episode's whole KV cache, padding gaps included, stays inside ``window``.

    Gaps only change what a sliding window sees once a cache is longer than the window; below
    it every cached token is attended, as without a window, so lanes are exact. An episode's
    length is bounded by ``turns_left`` turns of at most twice its first prompt (each later turn
    is an action, end-of-turn markup and one user message, shorter than the first prompt); an
    environment that does not say how many turns it has keeps one episode per lane.
    """
    longest = 0
    for state in live:
        turns = getattr(state.env, "turns_left", None)
        if not isinstance(turns, int) or turns < 1:
            return False
        longest = max(longest, 2 * turns * (len(state.pending) + 4))
    # Every row of a lane carries the lane's widest chunk each turn; 2x covers that padding.
    return 2 * longest <= window


def _play_lane(
    model: Any,
    lane: list[_Live],
    allowed: Tensor,
    actions: list[str],
    temperature: float,
    pad_id: int,
    template: TemplateChoice,
    device: torch.device,
    stats: RolloutStats,
    lane_groups: list[int],
    window: int | None = None,
) -> None:
    """Decode one batch of episodes turn by turn on one KV cache.

    ``window``: the sliding window of a model whose lane was judged to fit in it
    (:func:`_fits_window`); the cache is checked against it every turn.
    """
    tokenizer = model.tokenizer
    past, mask = _shared_prefill(model, lane, lane_groups, pad_id, device, stats)
    turn = 0
    while any(not s.env.done for s in lane):
        turn += 1
        width = max(len(s.pending) for s in lane)
        chunk = torch.full((len(lane), width), pad_id, dtype=torch.long)
        chunk_mask = torch.zeros(len(lane), width, dtype=torch.long)
        last = torch.zeros(len(lane), dtype=torch.long)
        for row, s in enumerate(lane):
            n = len(s.pending)
            if n:
                chunk[row, :n] = torch.tensor(s.pending, dtype=torch.long)
                chunk_mask[row, :n] = 1
            last[row] = max(n - 1, 0)
        mask = torch.cat([mask, chunk_mask.to(device)], dim=1)
        if window is not None and len(lane) > 1 and mask.shape[1] > window:
            raise TrainingError(
                f"A batched rollout's KV cache grew to {mask.shape[1]} positions, past the "
                f"model's sliding window of {window}: the window would differ from unbatched "
                "decoding.",
                hint="This is a bug in the length bound; pass batch_size=1 meanwhile.",
            )
        keep, slot = torch.unique(last, sorted=True, return_inverse=True)
        logits, past = forward_logits(
            model,
            chunk.to(device),
            keep,
            attention_mask=mask,
            past_key_values=past,
            return_type="logits_and_cache",
        )
        stats.forward_calls += 1
        stats.padded_tokens += int(chunk.numel())
        z = logits[torch.arange(len(lane), device=logits.device), slot.to(logits.device)]
        z = z[:, allowed].float() / temperature
        logp = torch.log_softmax(z, dim=-1).cpu()
        probs = logp.exp()
        for row, s in enumerate(lane):
            n = len(s.pending)
            s.fed.extend(s.pending)
            s.fed_tokens += n
            stats.fed_tokens += n
            s.pending = []
            if s.env.done:
                continue
            if n == 0:  # an environment that is not done always has a prompt waiting
                raise _incremental_error(s.index, turn)
            choice = int(torch.multinomial(probs[row], 1, generator=s.generator))
            action = actions[choice]
            action_id = int(allowed[choice])
            result = s.env.step(action)
            s.actions.append(action)
            s.action_ids.append(action_id)
            s.action_index.append(choice)
            s.logprobs.append(float(logp[row, choice]))
            s.probs.append(probs[row].tolist())
            s.neighbours.append(_neighbour_classes(s.env, result, len(actions)))
            s.rewards.append(float(result.reward))
            s.gold.append(int(getattr(result, "gold_consumed", 0) or 0))
            s.mold.append(int(getattr(result, "mold_entered", 0) or 0))
            s.action_positions.append(len(s.fed))
            expected = [*s.fed, action_id]
            if s.env.done:
                full = _render_ids(tokenizer, s.env.messages, template, False)
                if full != expected:
                    raise _incremental_error(s.index, turn)
                s.final_ids = full
            else:
                full = _render_ids(tokenizer, s.env.messages, template, True)
                if full[: len(expected)] != expected:
                    raise _incremental_error(s.index, turn)
                s.pending = full[len(s.fed) :]


def _shared_prefill(
    model: Any,
    lane: list[_Live],
    lane_groups: list[int],
    pad_id: int,
    device: torch.device,
    stats: RolloutStats,
) -> tuple[Any, Tensor]:
    """Encode each group's common first-prompt prefix once; expand the cache to the lane.

    Returns the KV cache (``None`` when nothing is shared) and the lane's attention mask so far.
    Rows of one group get the group's prefix in the cache (padding after a shorter prefix is a
    masked gap, as between turns); their pending tokens lose that prefix.
    """
    empty = torch.zeros(len(lane), 0, dtype=torch.long, device=device)
    order = list(dict.fromkeys(lane_groups))
    if len(order) == len(lane):
        return None, empty
    prefix: dict[int, int] = {}
    for g in order:
        rows = [s.pending for s, h in zip(lane, lane_groups, strict=True) if h == g]
        shared = min(len(r) for r in rows) - 1  # keep one token to compute the first logits
        for r in rows[1:]:
            shared = min(shared, _common_prefix(rows[0], r))
        prefix[g] = shared if len(rows) > 1 else 0
    if max(prefix.values()) < 2:
        return None, empty
    width = max(prefix.values())
    chunk = torch.full((len(order), width), pad_id, dtype=torch.long)
    chunk_mask = torch.zeros(len(order), width, dtype=torch.long)
    first = {g: next(s for s, h in zip(lane, lane_groups, strict=True) if h == g) for g in order}
    for row, g in enumerate(order):
        n = prefix[g]
        if n:
            chunk[row, :n] = torch.tensor(first[g].pending[:n], dtype=torch.long)
            chunk_mask[row, :n] = 1
    _, past = forward_logits(
        model,
        chunk.to(device),
        torch.tensor([0]),
        attention_mask=chunk_mask.to(device),
        return_type="logits_and_cache",
    )
    stats.forward_calls += 1
    stats.padded_tokens += int(chunk.numel())
    stats.fed_tokens += int(chunk_mask.sum())
    index = torch.tensor([order.index(g) for g in lane_groups], device=device)
    past.batch_select_indices(index)
    for s, g in zip(lane, lane_groups, strict=True):
        n = prefix[g]
        s.fed.extend(s.pending[:n])
        s.fed_tokens += n
        s.pending = s.pending[n:]
        stats.shared_prefill_tokens += n
    stats.shared_prefill_tokens -= int(chunk_mask.sum())  # each group's prefix was fed once
    return past, chunk_mask.to(device)[index]


def _to_episode(state: _Live, actions: Sequence[str], group: int | None) -> Episode:
    if state.final_ids is None:
        raise DataError(
            f"Episode {state.index} ended without a move.",
            hint="Environments must take at least one turn.",
        )
    ids = torch.tensor(state.final_ids, dtype=torch.long)
    positions = torch.tensor(state.action_positions, dtype=torch.long)
    action_mask = torch.zeros(ids.shape[0], dtype=torch.bool)
    action_mask[positions] = True
    env = state.env
    maze = getattr(env, "maze", None)
    k = len(actions)
    return Episode(
        input_ids=ids,
        action_mask=action_mask,
        action_positions=positions,
        action_ids=torch.tensor(state.action_ids, dtype=torch.long),
        action_index=torch.tensor(state.action_index, dtype=torch.long),
        actions=list(state.actions),
        logprobs=torch.tensor(state.logprobs, dtype=torch.float32),
        action_probs=torch.tensor(state.probs, dtype=torch.float32).reshape(-1, k),
        neighbours=torch.tensor(state.neighbours, dtype=torch.long).reshape(-1, k),
        rewards=torch.tensor(state.rewards, dtype=torch.float64),
        gold=torch.tensor(state.gold, dtype=torch.long),
        mold=torch.tensor(state.mold, dtype=torch.long),
        group=0 if group is None else group,
        maze_seed=getattr(maze, "seed", None),
        episode_seed=getattr(env, "episode_seed", None),
        messages=[dict(m) for m in env.messages],
        fed_tokens=state.fed_tokens,
    )


# --------------------------------------------------------------------------------------------
# Collation for the loss
# --------------------------------------------------------------------------------------------


def collate(episodes: Sequence[Episode], pad_id: int) -> dict[str, Tensor]:
    """Right-pad episodes into a training batch.

    Right padding needs no attention mask for a causal model: a real token never attends to the
    padding after it. Padding positions are never action positions, so they get no loss.

    Args:
        episodes: Episodes to batch.
        pad_id: Token written into padding positions.

    Returns:
        ``input_ids`` ``[batch, pos]``, ``action_mask`` ``[batch, pos]``, ``lengths``
        ``[batch]``; per action (padded to the longest episode, ``turn_mask`` marks real turns):
        ``action_positions``, ``action_index``, ``logprobs``, ``neighbours``, ``rewards``
        ``[batch, turns(, K)]``.

    Raises:
        DataError: if ``episodes`` is empty.
    """
    if not episodes:
        raise DataError("No episodes to collate.", hint="Roll out at least one episode.")
    batch = len(episodes)
    width = max(int(e.input_ids.shape[0]) for e in episodes)
    turns = max(e.n_turns for e in episodes)
    k = int(episodes[0].action_probs.shape[1])
    out = {
        "input_ids": torch.full((batch, width), pad_id, dtype=torch.long),
        "action_mask": torch.zeros(batch, width, dtype=torch.bool),
        "lengths": torch.tensor([int(e.input_ids.shape[0]) for e in episodes]),
        "turn_mask": torch.zeros(batch, turns, dtype=torch.bool),
        "action_positions": torch.ones(batch, turns, dtype=torch.long),
        "action_index": torch.zeros(batch, turns, dtype=torch.long),
        "logprobs": torch.zeros(batch, turns, dtype=torch.float32),
        "neighbours": torch.full((batch, turns, k), UNKNOWN_TILE, dtype=torch.long),
        "rewards": torch.zeros(batch, turns, dtype=torch.float64),
    }
    for row, e in enumerate(episodes):
        n, t = int(e.input_ids.shape[0]), e.n_turns
        out["input_ids"][row, :n] = e.input_ids
        out["action_mask"][row, :n] = e.action_mask
        out["turn_mask"][row, :t] = True
        out["action_positions"][row, :t] = e.action_positions
        out["action_index"][row, :t] = e.action_index
        out["logprobs"][row, :t] = e.logprobs
        out["neighbours"][row, :t] = e.neighbours
        out["rewards"][row, :t] = e.rewards
    return out
