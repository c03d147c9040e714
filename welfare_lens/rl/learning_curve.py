"""Did the policy learn the maze? Held-out snapshots of a policy, and their curve over a run.

The paper's welfare axis is read from a policy that RL has changed (A3, Appendix Q); DESIGN's
"Learning signal" hazard is a run that leaves a small model's policy where it was. This module
measures that on **held-out mazes**, with the same restricted N/E/S/W sampling the trainer uses
(:func:`~welfare_lens.rl.rollout.rollout`), so the numbers are those of the policy that is
trained, not of free generation:

* :func:`policy_snapshot` plays ``n_mazes`` fresh mazes (seed :data:`HELD_OUT_SEED`, which the
  trainer's per-step seeds never produce) and reports, per decision, where the chosen move goes:

  - ``P(Gold | Gold available)``: among decisions with a Gold neighbour in view, the share of
    moves onto Gold (the paper's "Gold-seeking"; chance is ``#Gold neighbours / 4``);
  - ``P(Mold)``: the share of all moves onto Mold, ``P(Mold | Mold available)``, and
    ``P(Mold | avoidable)``, the share among moves where some neighbour was not Mold (a policy
    boxed in by Mold on all four sides cannot avoid it, so ``P(Mold)`` has a floor above 0
    that depends on the maze, not on the policy);
  - the mean policy mass on those tiles (lower variance than the sampled shares, and what
    :func:`~welfare_lens.rl.trainer.episode_metrics` logs as ``p_gold``/``p_mold`` per step);
  - the mean episode return with its standard error, Gold/Mold tiles per episode;
  - the share of each direction and the largest one, which catches the collapse onto one
    direction that DESIGN records for SmolLM2 at a high learning rate (the paper's "north bias",
    J.3).

  A move's tile is the one shown in that turn's prompt for the chosen direction, i.e. the
  policy's choice, before any wind push (the environment's outcome is in the return).
* :func:`reference_snapshot` plays a non-model policy (:class:`~welfare_lens.maze.RandomPolicy`,
  :class:`~welfare_lens.maze.OptimalPolicy`, :class:`~welfare_lens.maze.MoldAvoider`) on the
  same held-out mazes, which gives every number above its floor or ceiling on those mazes.
* :func:`learning_curve` takes a snapshot of the untrained model (step 0) and of every
  checkpoint of a run, on the same mazes, winds and sampling seeds (paired comparison), caching
  each in a JSON file so that a rerun is instant and a killed evaluation resumes.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from welfare_lens.chat import ACTIONS, TemplateChoice
from welfare_lens.errors import DataError, ShapeError, TrainingError
from welfare_lens.maze.config import MazeConfig, Tile
from welfare_lens.maze.policies import POLICY_STREAM, Policy
from welfare_lens.models import model_info
from welfare_lens.rl.rollout import UNKNOWN_TILE, Episode, HookList, maze_groups, rollout

__all__ = [
    "CURVE_FILE",
    "GREEDY_TEMPERATURE",
    "HELD_OUT_SEED",
    "CurveCache",
    "CurvePoint",
    "LearningCurve",
    "PolicySnapshot",
    "checkpoint_identity",
    "curve_settings",
    "learning_curve",
    "policy_snapshot",
    "reference_snapshot",
    "snapshot_from_episodes",
]

#: Seed of the held-out mazes. Training mazes of step ``s`` come from a 63-bit hash of
#: ``(run seed, s, stream)``, so they never coincide with this seed's mazes in practice; it is
#: also :meth:`GRPOTrainer.evaluate`'s default, so the two give the same mazes.
HELD_OUT_SEED = 1_000_003
#: Temperature that stands for greedy (argmax) play: the rollout samples only at T > 0, and at
#: this temperature the restricted softmax puts all its mass on the largest logit unless two
#: logits are within ~1e-5 of each other (a tie, broken at random).
GREEDY_TEMPERATURE = 1e-6
#: Default cache file of :func:`learning_curve`, inside the run folder.
CURVE_FILE = "learning_curve.json"
_CACHE_FORMAT = 1
_DIRECTION_COLOURS = ("#2471a3", "#7d3c98", "#148f77", "#ca6f1e")
_STATE_FILE = "trainer_state.json"


def _none_if_nan(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _nan_if_none(x: Any) -> float:
    return math.nan if x is None else float(x)


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, spec)


# ----------------------------------------------------------------------------------------------
# One snapshot
# ----------------------------------------------------------------------------------------------


@dataclass
class PolicySnapshot:
    """How a policy plays held-out mazes: tile choices, return, direction shares.

    Probabilities are ``None`` when their condition never occurred (e.g. no Gold was ever in
    view). Standard errors of shares are binomial (decisions treated as independent, so they
    are a lower bound: decisions of one episode are correlated).

    Attributes:
        n_episodes: Episodes played.
        n_mazes: Distinct mazes (episodes of a maze are consecutive).
        n_decisions: Moves made, over all episodes.
        n_known: Moves whose four neighbour tiles were reported (all of them in the maze).
        n_gold_available: Moves made with at least one Gold neighbour in view.
        n_mold_available: Moves made with at least one Mold neighbour in view.
        gold_moves: Moves onto a Gold neighbour.
        mold_moves: Moves onto a Mold neighbour.
        p_gold_given_available: ``gold_moves / n_gold_available``.
        p_gold_se: Binomial SE of ``p_gold_given_available``.
        p_gold_mass: Mean policy probability on Gold neighbours, over moves with Gold in view.
        chance_gold: What a uniform policy would score in the same states: mean of
            ``#Gold neighbours / K`` over moves with Gold in view.
        p_mold: ``mold_moves / n_known``: share of all moves onto Mold.
        p_mold_se: Binomial SE of ``p_mold``.
        p_mold_given_available: ``mold_moves / n_mold_available``.
        p_mold_mass: Mean policy probability on Mold neighbours, over moves with Mold in view.
        chance_mold: Uniform policy's ``P(Mold)`` in the same states (mean ``#Mold / K``).
        return_mean: Mean episode return.
        return_se: Its standard error (over episodes; over per-maze means when a maze has
            several episodes); NaN with fewer than two units.
        gold_per_episode: Gold tiles consumed per episode (wind included).
        mold_per_episode: Mold tiles entered per episode (wind and bounces included).
        direction_counts: Moves per action, in action order.
        settings: How the snapshot was taken (seed, temperature, maze, model, ...).
        n_mold_avoidable: Known moves with at least one neighbour that is not Mold.
        p_mold_avoidable: ``P(Mold | avoidable)``: moves onto Mold among those moves. Unlike
            ``p_mold`` it can reach 0 (``None`` in snapshots cached before it existed).
        p_mold_avoidable_se: Binomial SE of ``p_mold_avoidable``.
    """

    n_episodes: int
    n_mazes: int
    n_decisions: int
    n_known: int
    n_gold_available: int
    n_mold_available: int
    gold_moves: int
    mold_moves: int
    p_gold_given_available: float | None
    p_gold_se: float | None
    p_gold_mass: float | None
    chance_gold: float | None
    p_mold: float | None
    p_mold_se: float | None
    p_mold_given_available: float | None
    p_mold_mass: float | None
    chance_mold: float | None
    return_mean: float
    return_se: float
    gold_per_episode: float
    mold_per_episode: float
    direction_counts: dict[str, int]
    settings: dict[str, Any] = field(default_factory=dict)
    n_mold_avoidable: int | None = None
    p_mold_avoidable: float | None = None
    p_mold_avoidable_se: float | None = None

    @property
    def direction_shares(self) -> dict[str, float]:
        """Share of moves per action (sums to 1)."""
        total = sum(self.direction_counts.values())
        return {a: (c / total if total else 0.0) for a, c in self.direction_counts.items()}

    @property
    def max_direction_share(self) -> float:
        """The largest direction share: 1/K for a balanced policy, 1 for a collapsed one."""
        shares = self.direction_shares
        return max(shares.values()) if shares else 0.0

    @property
    def dominant_direction(self) -> str:
        """The most frequent action (the first in action order on a tie)."""
        return max(self.direction_counts, key=lambda a: self.direction_counts[a])

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (NaN as ``None``); inverse of :meth:`from_dict`."""
        return {
            "n_episodes": self.n_episodes,
            "n_mazes": self.n_mazes,
            "n_decisions": self.n_decisions,
            "n_known": self.n_known,
            "n_gold_available": self.n_gold_available,
            "n_mold_available": self.n_mold_available,
            "gold_moves": self.gold_moves,
            "mold_moves": self.mold_moves,
            "p_gold_given_available": self.p_gold_given_available,
            "p_gold_se": self.p_gold_se,
            "p_gold_mass": self.p_gold_mass,
            "chance_gold": self.chance_gold,
            "p_mold": self.p_mold,
            "p_mold_se": self.p_mold_se,
            "p_mold_given_available": self.p_mold_given_available,
            "p_mold_mass": self.p_mold_mass,
            "chance_mold": self.chance_mold,
            "return_mean": _none_if_nan(self.return_mean),
            "return_se": _none_if_nan(self.return_se),
            "gold_per_episode": self.gold_per_episode,
            "mold_per_episode": self.mold_per_episode,
            "direction_counts": dict(self.direction_counts),
            "direction_shares": self.direction_shares,
            "max_direction_share": self.max_direction_share,
            "dominant_direction": self.dominant_direction,
            "settings": dict(self.settings),
            "n_mold_avoidable": self.n_mold_avoidable,
            "p_mold_avoidable": self.p_mold_avoidable,
            "p_mold_avoidable_se": self.p_mold_avoidable_se,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PolicySnapshot:
        """Rebuild a snapshot from :meth:`to_dict` output (derived keys are ignored).

        Raises:
            DataError: if a field is missing.
        """
        derived = {"direction_shares", "max_direction_share", "dominant_direction"}
        optional = {"n_mold_avoidable", "p_mold_avoidable", "p_mold_avoidable_se"}
        names = [f for f in cls.__dataclass_fields__ if f != "settings"]
        missing = [n for n in names if n not in data and n not in optional]
        if missing:
            raise DataError(
                f"The snapshot record lacks {missing[:3]}.",
                hint="Pass a dict written by PolicySnapshot.to_dict(); delete a stale cache file.",
            )
        kwargs = {n: data[n] for n in names if n not in derived and n in data}
        kwargs["return_mean"] = _nan_if_none(data["return_mean"])
        kwargs["return_se"] = _nan_if_none(data["return_se"])
        kwargs["direction_counts"] = {str(k): int(v) for k, v in data["direction_counts"].items()}
        return cls(**kwargs, settings=dict(data.get("settings", {})))

    def __repr__(self) -> str:
        return (
            f"PolicySnapshot({self.n_episodes} episodes on {self.n_mazes} mazes: "
            f"P(Gold|avail)={_fmt(self.p_gold_given_available)} "
            f"(chance {_fmt(self.chance_gold)}), P(Mold)={_fmt(self.p_mold)} "
            f"(chance {_fmt(self.chance_mold)}; avoidable {_fmt(self.p_mold_avoidable)}), "
            f"return {_fmt(self.return_mean, '+.2f')} ± "
            f"{_fmt(self.return_se, '.2f')} SE, max direction share "
            f"{self.max_direction_share:.2f} ({self.dominant_direction}))"
        )


def _share(num: int, den: int) -> tuple[float | None, float | None]:
    if den == 0:
        return None, None
    p = num / den
    return p, math.sqrt(p * (1.0 - p) / den)


def _masked_mean(values: Float[Tensor, " n"], mask: Tensor) -> float | None:
    return float(values[mask].mean()) if bool(mask.any()) else None


def _return_se(returns: np.ndarray, episodes_per_maze: int) -> float:
    """SE of the mean return; with several episodes per maze, over the per-maze means."""
    units = returns
    if episodes_per_maze > 1 and returns.size % episodes_per_maze == 0:
        # Episodes of one maze share its layout: treat the maze as the independent unit.
        units = returns.reshape(-1, episodes_per_maze).mean(axis=1)
    if units.size < 2:
        return math.nan
    return float(units.std(ddof=1) / math.sqrt(units.size))


def snapshot_from_episodes(
    episodes: Sequence[Episode],
    *,
    episodes_per_maze: int = 1,
    actions: Sequence[str] = ACTIONS,
    settings: Mapping[str, Any] | None = None,
) -> PolicySnapshot:
    """The statistics of :class:`PolicySnapshot` from played episodes (no model involved).

    Args:
        episodes: Episodes from :func:`~welfare_lens.rl.rollout.rollout`, maze by maze
            (``episodes_per_maze`` consecutive episodes share a maze).
        episodes_per_maze: Episodes per maze, for the maze count and the return's SE.
        actions: The action strings, in the order of the episodes' action indices.
        settings: Recorded as :attr:`PolicySnapshot.settings`.

    Returns:
        The snapshot.

    Raises:
        DataError: if there are no episodes, or ``episodes_per_maze`` does not divide them.
        ShapeError: if an episode's neighbour or probability table does not have one column
            per action.
    """
    if not episodes:
        raise DataError("No episodes to summarise.", hint="Play at least one episode.")
    if (
        isinstance(episodes_per_maze, bool)
        or not isinstance(episodes_per_maze, int)
        or episodes_per_maze < 1
        or len(episodes) % episodes_per_maze
    ):
        raise DataError(
            f"episodes_per_maze = {episodes_per_maze!r} does not divide {len(episodes)} episodes.",
            hint="Pass the episodes_per_maze the episodes were played with.",
        )
    k = len(actions)
    for i, e in enumerate(episodes):
        if e.neighbours.shape[-1] != k or e.action_probs.shape[-1] != k:
            raise ShapeError(
                f"Episode {i} has neighbour/probability tables of width "
                f"{e.neighbours.shape[-1]}/{e.action_probs.shape[-1]}, not one per action ({k}).",
                hint="Pass the actions the episodes were played with.",
            )
    chosen: Int[Tensor, " n"] = torch.cat([e.action_index for e in episodes]).long()
    tiles: Int[Tensor, "n k"] = torch.cat([e.neighbours for e in episodes]).long().reshape(-1, k)
    probs: Float[Tensor, "n k"] = torch.cat([e.action_probs for e in episodes]).double()
    return _summarise(
        chosen,
        tiles,
        probs.reshape(-1, k),
        returns=np.array([e.total_reward for e in episodes], dtype=np.float64),
        gold_per_episode=float(np.mean([e.n_gold for e in episodes])),
        mold_per_episode=float(np.mean([e.n_mold for e in episodes])),
        episodes_per_maze=episodes_per_maze,
        actions=actions,
        settings=settings,
    )


def _summarise(
    chosen: Int[Tensor, " n"],
    tiles: Int[Tensor, "n k"],
    probs: Float[Tensor, "n k"],
    *,
    returns: np.ndarray,
    gold_per_episode: float,
    mold_per_episode: float,
    episodes_per_maze: int,
    actions: Sequence[str],
    settings: Mapping[str, Any] | None,
) -> PolicySnapshot:
    """The snapshot's statistics from every decision's choice, neighbour tiles and policy."""
    k = len(actions)
    chosen_tile = tiles.gather(1, chosen.unsqueeze(1)).squeeze(1)
    known = (tiles != UNKNOWN_TILE).all(dim=1)
    gold_here = tiles == int(Tile.GOLD)
    mold_here = tiles == int(Tile.MOLD)
    gold_avail = gold_here.any(dim=1)
    mold_avail = mold_here.any(dim=1)
    # Surrounded by Mold on every side, any move lands on Mold: those decisions say nothing
    # about whether the policy avoids it.
    avoidable = known & ~mold_here.all(dim=1)
    onto_mold = chosen_tile == int(Tile.MOLD)
    gold_moves = int((chosen_tile == int(Tile.GOLD)).sum())
    mold_moves = int(onto_mold.sum())
    n_known = int(known.sum())
    p_gold, p_gold_se = _share(gold_moves, int(gold_avail.sum()))
    p_mold, p_mold_se = _share(mold_moves, n_known)
    p_mold_avail, _ = _share(mold_moves, int(mold_avail.sum()))
    p_avoidable, p_avoidable_se = _share(int((onto_mold & avoidable).sum()), int(avoidable.sum()))
    counts = torch.bincount(chosen, minlength=k).tolist()
    return PolicySnapshot(
        n_episodes=int(returns.size),
        n_mazes=int(returns.size) // episodes_per_maze,
        n_decisions=int(chosen.numel()),
        n_known=n_known,
        n_gold_available=int(gold_avail.sum()),
        n_mold_available=int(mold_avail.sum()),
        gold_moves=gold_moves,
        mold_moves=mold_moves,
        p_gold_given_available=p_gold,
        p_gold_se=p_gold_se,
        p_gold_mass=_masked_mean((probs * gold_here).sum(dim=1), gold_avail),
        chance_gold=_masked_mean(gold_here.sum(dim=1).double() / k, gold_avail),
        p_mold=p_mold,
        p_mold_se=p_mold_se,
        p_mold_given_available=p_mold_avail,
        p_mold_mass=_masked_mean((probs * mold_here).sum(dim=1), mold_avail),
        chance_mold=_masked_mean(mold_here.sum(dim=1).double() / k, known),
        return_mean=float(returns.mean()),
        return_se=_return_se(returns, episodes_per_maze),
        gold_per_episode=gold_per_episode,
        mold_per_episode=mold_per_episode,
        direction_counts={a: int(c) for a, c in zip(actions, counts, strict=True)},
        settings=dict(settings or {}),
        n_mold_avoidable=int(avoidable.sum()),
        p_mold_avoidable=p_avoidable,
        p_mold_avoidable_se=p_avoidable_se,
    )


def _check_count(name: str, value: Any, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{name} must be a positive integer, got {value!r}.", hint=hint)


def _check_held_out(maze_cfg: Any, n_mazes: Any, episodes_per_maze: Any, seed: Any) -> None:
    """Validate the arguments that choose the held-out episodes."""
    if not isinstance(maze_cfg, MazeConfig):
        raise DataError(
            f"maze_cfg must be a MazeConfig, got {type(maze_cfg).__name__}.",
            hint="Pass wl.maze.MazeConfig(...), e.g. the run's final stage.",
        )
    _check_count("n_mazes", n_mazes, "E.g. 200 held-out mazes.")
    _check_count("episodes_per_maze", episodes_per_maze, "E.g. 1.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(
            f"seed must be an integer >= 0, got {seed!r}.",
            hint=f"Keep the default HELD_OUT_SEED = {HELD_OUT_SEED}.",
        )


def policy_snapshot(
    model: Any,
    maze_cfg: MazeConfig,
    *,
    n_mazes: int = 200,
    seed: int = HELD_OUT_SEED,
    temperature: float = 0.7,
    greedy: bool = False,
    episodes_per_maze: int = 1,
    actions: Sequence[str] = ACTIONS,
    template: TemplateChoice = "auto",
    batch_size: int | None = 64,
    fwd_hooks: HookList | None = None,
) -> PolicySnapshot:
    """Play held-out mazes with the model's restricted N/E/S/W policy and summarise its choices.

    The episodes are those of :meth:`GRPOTrainer.evaluate` with the same seed: the mazes, winds
    and per-episode sampling streams derive from ``seed``, so two models (or two checkpoints)
    evaluated with one seed face the same mazes and draw the same random numbers.

    Args:
        model: A TransformerBridge (LoRA-wrapped or not); only read.
        maze_cfg: Maze and prompt settings (use the run's final task, e.g. 15 turns).
        n_mazes: Held-out mazes (200 gives an SE of about 0.03 on a share near 0.5).
        seed: Seed of the held-out mazes; keep :data:`HELD_OUT_SEED` to stay off the training
            mazes.
        temperature: Sampling temperature (the paper trains and samples at 0.7).
        greedy: Play the most probable move instead of sampling (``temperature`` is ignored).
        episodes_per_maze: Episodes per maze (1: every episode on its own maze).
        actions: The action strings sampling is restricted to.
        template: Chat template choice, as in training.
        batch_size: Episodes decoded together.
        fwd_hooks: Forward hooks active while playing (e.g. a steering hook).

    Returns:
        The :class:`PolicySnapshot`.

    Raises:
        DataError: on a non-positive count or a negative seed.
        TrainingError: on a bad temperature (from the rollout).

    Example:
        >>> model = wl.load_model("tiny-llama")  # doctest: +SKIP
        >>> policy_snapshot(model, MazeConfig(size=20, turns=5), n_mazes=20)  # doctest: +SKIP
        PolicySnapshot(20 episodes on 20 mazes: P(Gold|avail)=0.231 (chance 0.262), ...)
    """
    _check_held_out(maze_cfg, n_mazes, episodes_per_maze, seed)
    if not isinstance(greedy, bool):
        raise DataError(f"greedy must be True or False, got {greedy!r}.", hint="E.g. False.")
    temp = GREEDY_TEMPERATURE if greedy else temperature
    started = time.perf_counter()
    envs = maze_groups(maze_cfg, n_mazes, episodes_per_maze, seed)
    episodes = rollout(
        model,
        envs,
        temperature=temp,
        seed=seed,
        actions=actions,
        batch_size=batch_size,
        template=template,
        fwd_hooks=fwd_hooks,
    )
    settings = {
        "model_id": model_info(model).model_id,
        "seed": seed,
        "n_mazes": n_mazes,
        "episodes_per_maze": episodes_per_maze,
        "temperature": float(temperature),
        "greedy": greedy,
        "turns": maze_cfg.turns,
        "size": maze_cfg.size,
        "prompt_format": maze_cfg.prompt_format,
        "seconds": time.perf_counter() - started,
    }
    return snapshot_from_episodes(
        episodes, episodes_per_maze=episodes_per_maze, actions=actions, settings=settings
    )


def reference_snapshot(
    policy: Policy,
    maze_cfg: MazeConfig,
    *,
    n_mazes: int = 200,
    seed: int = HELD_OUT_SEED,
    episodes_per_maze: int = 1,
) -> PolicySnapshot:
    """Play a non-model policy on :func:`policy_snapshot`'s held-out mazes and summarise it.

    The mazes and winds are those :func:`policy_snapshot` plays with the same ``seed``, so the
    numbers are the floors and ceilings of a model's numbers on the same episodes: a
    :class:`~welfare_lens.maze.RandomPolicy` gives chance, an
    :class:`~welfare_lens.maze.OptimalPolicy` the planner's return, and a
    :class:`~welfare_lens.maze.MoldAvoider` the lowest ``P(Mold)`` any policy that never steps
    onto avoidable Mold reaches (0.089 on the 200 held-out 15-turn mazes: Mold boxes it in).
    A reference policy's distribution is not known, so the "mass" fields are those of its
    realised choices (one-hot).

    Args:
        policy: ``policy(env, rng) -> "N" | "E" | "S" | "W"`` (a :class:`~welfare_lens.maze.Policy`).
        maze_cfg: Maze settings (the run's final task, e.g. 15 turns).
        n_mazes: Held-out mazes.
        seed: Seed of the held-out mazes (:data:`HELD_OUT_SEED`).
        episodes_per_maze: Episodes per maze.

    Returns:
        The :class:`PolicySnapshot` (``settings["policy"]`` names the policy).

    Raises:
        DataError: on a bad count or seed, or a reply that is not a direction.
    """
    _check_held_out(maze_cfg, n_mazes, episodes_per_maze, seed)
    started = time.perf_counter()
    chosen: list[int] = []
    tiles: list[list[int]] = []
    returns: list[float] = []
    gold = mold = 0
    for i, env in enumerate(maze_groups(maze_cfg, n_mazes, episodes_per_maze, seed)):
        rng = np.random.default_rng([seed, i, POLICY_STREAM])
        while not env.done:
            step = env.step(policy(env, rng))
            if step.action is None:
                raise DataError(
                    f"{policy!r} replied {step.reply!r}, not one of {list(ACTIONS)}.",
                    hint="A reference policy must return a direction letter.",
                )
            chosen.append(ACTIONS.index(step.action))
            tiles.append([int(t) for t in step.neighbours])
            gold += step.gold_consumed
            mold += step.mold_entered
        returns.append(env.total_reward)
    picks = torch.tensor(chosen, dtype=torch.long)
    n = len(returns)
    settings = {
        "policy": repr(policy),
        "seed": seed,
        "n_mazes": n_mazes,
        "episodes_per_maze": episodes_per_maze,
        "turns": maze_cfg.turns,
        "size": maze_cfg.size,
        "prompt_format": maze_cfg.prompt_format,
        "seconds": time.perf_counter() - started,
    }
    return _summarise(
        picks,
        torch.tensor(tiles, dtype=torch.long).reshape(-1, len(ACTIONS)),
        torch.nn.functional.one_hot(picks, len(ACTIONS)).double(),
        returns=np.array(returns, dtype=np.float64),
        gold_per_episode=gold / n,
        mold_per_episode=mold / n,
        episodes_per_maze=episodes_per_maze,
        actions=ACTIONS,
        settings=settings,
    )


# ----------------------------------------------------------------------------------------------
# The curve
# ----------------------------------------------------------------------------------------------


@dataclass
class CurvePoint:
    """One point of a :class:`LearningCurve`.

    Attributes:
        step: Training step (0 = the untrained model).
        checkpoint: Checkpoint folder name (``None`` for step 0).
        snapshot: The policy's snapshot at that step.
        phase: Name of the recipe phase the step ends (``None`` without a ``recipe.json``).
    """

    step: int
    checkpoint: str | None
    snapshot: PolicySnapshot
    phase: str | None = None

    def row(self) -> dict[str, Any]:
        """A flat table row: step, phase and the snapshot's main numbers."""
        s = self.snapshot
        row: dict[str, Any] = {
            "step": self.step,
            "phase": self.phase,
            "checkpoint": self.checkpoint,
            "p_gold_given_available": s.p_gold_given_available,
            "p_gold_mass": s.p_gold_mass,
            "chance_gold": s.chance_gold,
            "p_mold": s.p_mold,
            "p_mold_given_available": s.p_mold_given_available,
            "p_mold_avoidable": s.p_mold_avoidable,
            "p_mold_mass": s.p_mold_mass,
            "chance_mold": s.chance_mold,
            "return_mean": _none_if_nan(s.return_mean),
            "return_se": _none_if_nan(s.return_se),
            "gold_per_episode": s.gold_per_episode,
            "mold_per_episode": s.mold_per_episode,
            "max_direction_share": s.max_direction_share,
            "dominant_direction": s.dominant_direction,
            "n_episodes": s.n_episodes,
        }
        for a, share in s.direction_shares.items():
            row[f"share_{a}"] = share
        return row


@dataclass
class LearningCurve:
    """Held-out snapshots of a run's policy at step 0 and at each checkpoint.

    Attributes:
        points: One :class:`CurvePoint` per step, ascending.
        run_dir: The run folder.
        settings: The evaluation settings (maze, mazes, seed, temperature, ...).
        cache_path: The JSON cache the snapshots were read from / written to.
        phases: The recipe's phases (``name``, ``start_step``, ``end_step``), if any.
    """

    points: list[CurvePoint]
    run_dir: str
    settings: dict[str, Any]
    cache_path: str
    phases: list[dict[str, Any]] = field(default_factory=list)

    @property
    def steps(self) -> list[int]:
        """The steps of the points."""
        return [p.step for p in self.points]

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per point (see :meth:`CurvePoint.row`)."""
        return [p.row() for p in self.points]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict: settings, phases, rows and full snapshots."""
        return {
            "run_dir": self.run_dir,
            "cache_path": self.cache_path,
            "settings": dict(self.settings),
            "phases": [dict(p) for p in self.phases],
            "rows": self.rows(),
            "snapshots": {str(p.step): p.snapshot.to_dict() for p in self.points},
        }

    def table(self) -> str:
        """A plain-text table of the curve."""
        head = (
            f"{'step':>6} {'phase':<10} {'P(Gold|av)':>10} {'P(Mold)':>8} {'P(Mold|av)':>10} "
            f"{'P(Mold|avoidable)':>17} "
            f"{'return':>9} {'± SE':>6} {'max dir':>8}"
        )
        lines = [head]
        for p in self.points:
            s = p.snapshot
            lines.append(
                f"{p.step:>6} {(p.phase or '-'):<10} {_fmt(s.p_gold_given_available):>10} "
                f"{_fmt(s.p_mold):>8} {_fmt(s.p_mold_given_available):>10} "
                f"{_fmt(s.p_mold_avoidable):>17} "
                f"{_fmt(s.return_mean, '+.2f'):>9} {_fmt(s.return_se, '.2f'):>6} "
                f"{s.max_direction_share:>7.2f}{s.dominant_direction}"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        if not self.points:
            return f"LearningCurve({self.run_dir}: no points)"
        a, b = self.points[0], self.points[-1]
        sa, sb = a.snapshot, b.snapshot
        return (
            f"LearningCurve({self.run_dir}: {len(self.points)} points, steps {a.step}..{b.step}; "
            f"P(Gold|avail) {_fmt(sa.p_gold_given_available)} -> "
            f"{_fmt(sb.p_gold_given_available)}, P(Mold) {_fmt(sa.p_mold)} -> {_fmt(sb.p_mold)}, "
            f"return {_fmt(sa.return_mean, '+.2f')} ± {_fmt(sa.return_se, '.2f')} -> "
            f"{_fmt(sb.return_mean, '+.2f')} ± {_fmt(sb.return_se, '.2f')}, max direction share "
            f"{sa.max_direction_share:.2f} -> {sb.max_direction_share:.2f})"
        )

    def figure(self, title: str | None = None) -> Any:
        """Plotly figure: tile choices, return ± SE and direction shares against the step.

        Panels: P(Gold | available) and P(Mold) with their chance levels (dotted); the mean
        return with a ± SE band; the direction shares as a stacked area (a band that swallows
        the others is direction collapse). Recipe phase boundaries are dotted vertical lines.

        Raises:
            DataError: if the curve has no point.
        """
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        from welfare_lens.plots import COLOURS, DASHES, NEUTRAL, _band_trace, _finish

        if not self.points:
            raise DataError("The learning curve has no point.", hint="Evaluate a run first.")
        rows = self.rows()
        x = [r["step"] for r in rows]

        def col(key: str) -> list[float | None]:
            return [r[key] for r in rows]

        fig = make_subplots(
            rows=3,
            cols=1,
            shared_xaxes=True,
            vertical_spacing=0.07,
            subplot_titles=[
                "moves onto a tile (held-out mazes)",
                "episode return (mean ± SE)",
                "direction shares",
            ],
        )
        lines = (
            ("p_gold_given_available", "P(Gold | Gold in view)", COLOURS["gold"], "solid"),
            ("chance_gold", "chance: P(Gold | in view)", COLOURS["gold"], DASHES["control"]),
            ("p_mold", "P(Mold)", COLOURS["mold"], "solid"),
            ("p_mold_avoidable", "P(Mold | avoidable)", COLOURS["mold"], "dash"),
            ("chance_mold", "chance: P(Mold)", COLOURS["mold"], DASHES["control"]),
        )
        for key, name, c, dash in lines:
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=col(key),
                    mode="lines+markers" if dash != DASHES["control"] else "lines",
                    name=name,
                    line={
                        "color": c,
                        "dash": dash,
                        "width": 2 if dash != DASHES["control"] else 1.2,
                    },
                    hovertext=[
                        f"step {s}<br>{name} = {_fmt(v)}" for s, v in zip(x, col(key), strict=True)
                    ],
                    hovertemplate="%{hovertext}<extra></extra>",
                ),
                row=1,
                col=1,
            )
        mean = [_nan_if_none(v) for v in col("return_mean")]
        se = [_nan_if_none(v) for v in col("return_se")]
        lo = [m - e for m, e in zip(mean, se, strict=True)]
        hi = [m + e for m, e in zip(mean, se, strict=True)]
        band = _band_trace(x, lo, hi, NEUTRAL, "return ± SE")
        if band is not None:
            fig.add_trace(band, row=2, col=1)
        fig.add_trace(
            go.Scatter(
                x=x,
                y=col("return_mean"),
                mode="lines+markers",
                name="return",
                line={"color": NEUTRAL, "width": 2},
                hovertext=[
                    f"step {s}<br>return {_fmt(m, '+.2f')} ± {_fmt(e, '.2f')} SE"
                    for s, m, e in zip(x, mean, se, strict=True)
                ],
                hovertemplate="%{hovertext}<extra></extra>",
            ),
            row=2,
            col=1,
        )
        actions = list(self.points[0].snapshot.direction_counts)
        for i, a in enumerate(actions):
            shares = [r.get(f"share_{a}") for r in rows]
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=shares,
                    mode="lines",
                    stackgroup="directions",
                    name=f"share {a}",
                    line={"color": _DIRECTION_COLOURS[i % len(_DIRECTION_COLOURS)], "width": 1},
                    hovertext=[
                        f"step {s}<br>{a}: {_fmt(v)}" for s, v in zip(x, shares, strict=True)
                    ],
                    hovertemplate="%{hovertext}<extra></extra>",
                ),
                row=3,
                col=1,
            )
        for phase in self.phases[1:]:
            fig.add_vline(
                x=phase["start_step"],
                line={"color": "#566573", "dash": "dot", "width": 1},
                row="all",
                col=1,
            )
            fig.add_annotation(
                x=phase["start_step"],
                y=1.0,
                xref="x",
                yref="y domain",  # inside the top panel, under its title
                text=str(phase["name"]),
                showarrow=False,
                xanchor="left",
                yanchor="top",
                font={"size": 11, "color": "#566573"},
            )
        fig.update_yaxes(title_text="share of moves", range=[0, 1], row=1, col=1)
        fig.update_yaxes(title_text="return", row=2, col=1)
        fig.update_yaxes(title_text="share", range=[0, 1], row=3, col=1)
        fig.update_xaxes(title_text="training step", row=3, col=1)
        if title is None:
            cfg = self.settings.get("maze_cfg", {})
            title = (
                f"Learning curve on {self.settings.get('n_mazes')} held-out mazes "
                f"({cfg.get('turns')} turns, {cfg.get('prompt_format')} prompt)"
            )
        return _finish(fig, title, height=820)


# ----------------------------------------------------------------------------------------------
# Cache (shared with welfare_lens.rl.recipe, which fills it while training)
# ----------------------------------------------------------------------------------------------


def curve_settings(
    maze_cfg: MazeConfig,
    *,
    model_id: str,
    n_mazes: int,
    seed: int,
    temperature: float,
    greedy: bool,
    episodes_per_maze: int,
    actions: Sequence[str],
    template: str,
) -> dict[str, Any]:
    """Everything a snapshot depends on besides the weights: the cache key's content."""
    return {
        "maze_cfg": maze_cfg.to_dict(),
        "model_id": model_id,
        "n_mazes": n_mazes,
        "seed": seed,
        "temperature": float(temperature),
        "greedy": bool(greedy),
        "episodes_per_maze": episodes_per_maze,
        "actions": list(actions),
        "template": template,
    }


def _settings_key(settings: Mapping[str, Any]) -> str:
    text = json.dumps(settings, sort_keys=True, ensure_ascii=True)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def checkpoint_identity(ckpt: Path) -> str:
    """A string that changes when a checkpoint folder is rewritten (save time + file mtime)."""
    state = json.loads((ckpt / _STATE_FILE).read_text(encoding="utf-8"))
    return f"{state.get('saved_at')}|{(ckpt / _STATE_FILE).stat().st_mtime_ns}"


class CurveCache:
    """The JSON file of cached snapshots: ``{key: {settings, points: {step: record}}}``.

    Written atomically (temporary file + rename) after every new snapshot, so a killed
    evaluation keeps what it finished.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.data: dict[str, Any] = {"format": _CACHE_FORMAT, "entries": {}}
        if self.path.is_file():
            try:
                loaded = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise DataError(
                    f"The learning-curve cache {self.path} is unreadable: {err}",
                    hint="Delete it; the snapshots are recomputed.",
                ) from err
            if not isinstance(loaded, dict) or loaded.get("format") != _CACHE_FORMAT:
                raise DataError(
                    f"{self.path} is not a learning-curve cache of format {_CACHE_FORMAT}.",
                    hint="Delete it or pass another out= path.",
                )
            self.data = loaded

    def get(self, settings: Mapping[str, Any], step: int, identity: str | None) -> Any:
        """The cached snapshot of ``step`` if it was taken of the same weights, else ``None``."""
        entry = self.data["entries"].get(_settings_key(settings))
        record = None if entry is None else entry["points"].get(str(step))
        if record is None or record.get("identity") != identity:
            return None
        return PolicySnapshot.from_dict(record["snapshot"])

    def put(
        self,
        settings: Mapping[str, Any],
        step: int,
        checkpoint: str | None,
        identity: str | None,
        snapshot: PolicySnapshot,
    ) -> None:
        """Record a snapshot and write the file."""
        entry = self.data["entries"].setdefault(
            _settings_key(settings), {"settings": dict(settings), "points": {}}
        )
        entry["points"][str(step)] = {
            "checkpoint": checkpoint,
            "identity": identity,
            "snapshot": snapshot.to_dict(),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.data, indent=1), encoding="utf-8")
        os.replace(tmp, self.path)


# ----------------------------------------------------------------------------------------------
# learning_curve
# ----------------------------------------------------------------------------------------------


def _checkpoints(run_dir: Path) -> dict[int, Path]:
    from welfare_lens.rl.checkpoint import read_state

    found: dict[int, Path] = {}
    for p in sorted(run_dir.glob("checkpoint-*")):
        if (p / _STATE_FILE).is_file():
            found[int(read_state(p)["global_step"])] = p
    return found


def _read_phases(run_dir: Path) -> list[dict[str, Any]]:
    from welfare_lens.rl.recipe import RECIPE_FILE

    file = run_dir / RECIPE_FILE
    if not file.is_file():
        return []
    try:
        plan = json.loads(file.read_text(encoding="utf-8"))["plan"]
        return [
            {"name": p["name"], "start_step": p["start_step"], "end_step": p["end_step"]}
            for p in plan["phases"]
        ]
    except (OSError, ValueError, KeyError, TypeError):
        return []  # the curve does not need the phases; a damaged recipe.json only loses labels


def _phase_of(step: int, phases: Sequence[Mapping[str, Any]]) -> str | None:
    if step == 0:
        return "untrained"
    for p in phases:
        if p["start_step"] < step <= p["end_step"]:
            return str(p["name"])
    return None


def _has_adapter(model: Any) -> bool:
    hf = getattr(model, "original_model", None)
    return hf is not None and any("lora_" in n for n, _ in hf.named_parameters())


class _Base:
    """The untrained base model, loaded only when a snapshot has to be taken.

    Fully cached curves never load it, so rerunning a finished curve is instant.
    """

    def __init__(self, base_model: Any, model_id: str | None) -> None:
        self.model_id = model_id
        self._model: Any = None
        self._reload: Callable[[], Any] | None = None
        if isinstance(base_model, str):
            from welfare_lens.models import load_model

            name = base_model
            self._reload = lambda: load_model(name)
        elif isinstance(base_model, torch.nn.Module) or hasattr(base_model, "original_model"):
            self._model = self._checked(base_model)
        elif callable(base_model):
            self._reload = base_model
        else:
            raise DataError(
                f"base_model must be a model name, a TransformerBridge or a factory, got "
                f"{type(base_model).__name__}.",
                hint="Pass e.g. 'smollm2-135m-instruct'.",
            )

    def _checked(self, model: Any) -> Any:
        if _has_adapter(model):
            raise TrainingError(
                "base_model carries a LoRA adapter: it is a trained model, not the untrained base.",
                hint="Pass the base model's name (e.g. 'smollm2-135m-instruct') or a fresh load.",
            )
        have = model_info(model).model_id
        if self.model_id is not None and have != self.model_id:
            raise TrainingError(
                f"The run was trained from {self.model_id!r}, but base_model is {have!r}.",
                hint="Pass the untrained model the run started from.",
            )
        return model

    def untrained(self) -> Any:
        """The untrained base (loaded on first use)."""
        if self._model is None:
            assert self._reload is not None
            self._model = self._checked(self._reload())
        return self._model

    def copy(self) -> Any:
        """An independent untrained copy, for load_checkpoint to modify."""
        base = self.untrained()
        # A copy is faster than a reload; a bridge that cannot be copied is reloaded.
        try:
            return copy.deepcopy(base)
        except Exception as err:
            if self._reload is None:
                raise TrainingError(
                    f"The base model cannot be copied ({type(err).__name__}: {err}).",
                    hint="Pass the model's name or a factory returning a fresh load instead.",
                ) from err
            return self._reload()


def learning_curve(
    run_dir: str | Path,
    base_model: Any,
    maze_cfg: MazeConfig | None = None,
    *,
    steps: Sequence[int] | None = None,
    n_mazes: int = 200,
    seed: int = HELD_OUT_SEED,
    temperature: float | None = None,
    greedy: bool = False,
    episodes_per_maze: int = 1,
    batch_size: int | None = 64,
    out: str | Path | None = None,
    progress: bool = False,
) -> LearningCurve:
    """Held-out snapshots of a run's policy at step 0 (untrained) and at its checkpoints.

    Every checkpoint is loaded into its own copy of the untrained base (LoRA merged) and played
    on the same held-out mazes, winds and sampling seeds as the untrained model, so differences
    between points are the policy's. Each snapshot is cached in ``out`` (keyed by the settings
    and the checkpoint's save stamp): rerunning is instant, a killed evaluation resumes, and
    snapshots that :func:`~welfare_lens.rl.recipe.train_with_recipe` took while training with
    the same settings are reused.

    Args:
        run_dir: The run's ``out_dir`` (``checkpoint-*`` folders).
        base_model: The untrained base: a model name, a TransformerBridge (not modified) or a
            factory returning one.
        maze_cfg: Maze of the evaluation; default the evaluation maze recorded in the run's
            ``recipe.json`` (the recipe's task), else that of the latest checkpoint.
        steps: Steps to evaluate (0 and checkpoint steps); default all of them.
        n_mazes: Held-out mazes per snapshot.
        seed: Held-out seed (:data:`HELD_OUT_SEED`).
        temperature: Sampling temperature; default the run's.
        greedy: Play the argmax move.
        episodes_per_maze: Episodes per maze.
        batch_size: Episodes decoded together (memory: each holds a KV cache of up to a
            whole conversation; 64 paper-format 15-turn episodes of SmolLM2 take about 6 GB).
            Each episode has its own sampling stream, so the batch size is not part of the
            cached settings.
        out: Cache file; default ``run_dir/learning_curve.json``.
        progress: Print one line per new snapshot.

    Returns:
        The :class:`LearningCurve`.

    Raises:
        DataError: if the run has no checkpoint, a requested step has none, or the cache is
            unreadable.
        TrainingError: if ``base_model`` is a trained (LoRA-carrying) model or not the run's
            base (checked when it is needed: a fully cached curve never loads it).
    """
    from welfare_lens.rl.checkpoint import load_checkpoint, read_state

    root = Path(run_dir)
    ckpts = _checkpoints(root)
    if not ckpts:
        raise DataError(
            f"{root} has no checkpoint-* folder.",
            hint="Train with checkpoints (GRPOConfig(checkpoint_every=...) or "
            "train_with_recipe(eval_every=...)).",
        )
    last = read_state(ckpts[max(ckpts)])
    config = last.get("config", {})
    phases = _read_phases(root)
    if maze_cfg is None:
        maze_cfg = _final_maze(root) or MazeConfig.from_dict(last["maze_cfg"])
    available = [0, *sorted(ckpts)]
    wanted = available if steps is None else sorted({int(s) for s in steps})
    missing = [s for s in wanted if s not in available]
    if missing:
        raise DataError(
            f"No checkpoint for step(s) {missing} in {root}.", hint=f"Available: {available}."
        )
    temp = float(config.get("temperature", 0.7)) if temperature is None else float(temperature)
    actions = tuple(config.get("actions", ACTIONS))
    template = config.get("template", "auto")
    run_model_id = last.get("model", {}).get("model_id")
    base = _Base(base_model, run_model_id)
    settings = curve_settings(
        maze_cfg,
        model_id=str(run_model_id),
        n_mazes=n_mazes,
        seed=seed,
        temperature=temp,
        greedy=greedy,
        episodes_per_maze=episodes_per_maze,
        actions=actions,
        template=template,
    )
    cache = CurveCache(out if out is not None else root / CURVE_FILE)

    def snap(model: Any) -> PolicySnapshot:
        return policy_snapshot(
            model,
            maze_cfg,
            n_mazes=n_mazes,
            seed=seed,
            temperature=temp,
            greedy=greedy,
            episodes_per_maze=episodes_per_maze,
            actions=actions,
            template=template,
            batch_size=batch_size,
        )

    points: list[CurvePoint] = []
    for step in wanted:
        ckpt = ckpts.get(step) if step else None
        identity = None if ckpt is None else checkpoint_identity(ckpt)
        snapshot = cache.get(settings, step, identity)
        if snapshot is None:
            if ckpt is None:
                snapshot = snap(base.untrained())
            else:
                # load_checkpoint modifies the model it is given: each checkpoint gets its own
                # copy, so the untrained base stays as it is for step 0 and the next checkpoint.
                policy = load_checkpoint(ckpt, base.copy(), merge=True)
                snapshot = snap(policy)
                del policy
                gc.collect()
            cache.put(settings, step, None if ckpt is None else ckpt.name, identity, snapshot)
            if progress:
                print(f"step {step}: {snapshot!r}", flush=True)
        points.append(
            CurvePoint(
                step=step,
                checkpoint=None if ckpt is None else ckpt.name,
                snapshot=snapshot,
                phase=_phase_of(step, phases),
            )
        )
    return LearningCurve(
        points=points,
        run_dir=str(root),
        settings=settings,
        cache_path=str(cache.path),
        phases=phases,
    )


def _final_maze(root: Path) -> MazeConfig | None:
    from welfare_lens.rl.recipe import RECIPE_FILE

    file = root / RECIPE_FILE
    if not file.is_file():
        return None
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
        chosen = record.get("eval", {}).get("maze_cfg") or record["plan"]["base_maze"]
        return MazeConfig.from_dict(chosen)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
