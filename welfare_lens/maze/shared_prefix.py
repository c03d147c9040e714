"""The paper's extraction set, sampled so that its trajectories share prefixes (A4, L.1).

The paper's set (:func:`~welfare_lens.maze.synthetic_trajectories`) gives every trajectory its
own maze, so each one is encoded from scratch: about 10M SmolLM2 tokens for 15,000 trajectories.
Causal attention means the activation at the final move depends only on the conversation up to
it, so trajectories that share a prefix can share its forward pass
(:func:`welfare_lens.capture` encodes each distinct prefix once). This module samples the same
kind of trajectories (class ``c`` of length ``n``: ``n - 1`` moves onto Path, then a move onto
a class-``c`` tile; lengths balanced over ``1..turns``, final directions balanced) from few
mazes, so that they do share prefixes:

* Per maze, one constrained random Path walk of ``turns`` steps (as in the paper's sampler:
  each step to a uniformly chosen adjacent Path tile; melting as configured; no wind).
* At every turn ``k`` of the walk, for each class with samples still wanted at length ``k``,
  one final move onto an adjacent tile of that class (the walk's own move for Path; else the
  direction of that class used least so far for the class, ties broken at random).
* Gold is rare next to a random walk (about one turn in six), so Gold samples also come from a
  one-step detour: at turn ``k`` each alternative Path move whose next prompt shows Gold gives a
  Gold sample of length ``k + 1`` (the walk's first ``k - 1`` moves, the detour, the Gold move).
  The detour costs one user message instead of a whole conversation.

It departs from the paper in one way, stated in the README: samples of one maze are correlated
(they share a walk), so group-aware statistics (bootstrap intervals, held-out splits) must
resample whole mazes: every sample carries its ``maze_seed`` as the group. The class means
agree with the independent design (tested on SmolLM2; ``benchmarks/extract.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

import numpy as np

from welfare_lens.errors import DataError, MazeConfigError
from welfare_lens.maze.config import MazeConfig, Tile, TileName
from welfare_lens.maze.directions import DELTAS, DIRECTIONS, Action
from welfare_lens.maze.env import MazeEnv
from welfare_lens.maze.generate import check_seed, generate_maze
from welfare_lens.maze.trajectories import (
    _CLASSES,
    PAPER_EXTRACTION_SEED,
    WALK_STREAM,
    Trajectory,
    _check_classes,
    _check_lengths,
    _check_per_class,
    _sample_walk,
)

__all__ = ["shared_prefix_trajectories"]


def _length_quota(per_class: int, lens: Sequence[int]) -> dict[int, int]:
    """The paper's balance: trajectory ``i`` of a class has length ``lens[i % len(lens)]``."""
    quota = dict.fromkeys(lens, 0)
    for i in range(per_class):
        quota[lens[i % len(lens)]] += 1
    return quota


def _moves_onto(env: MazeEnv, tile: Tile) -> list[Action]:
    """In-grid directions whose neighbour is ``tile`` (off-grid moves are never samples)."""
    grid = env.grid
    h, w = grid.shape
    x, y = env.position
    out: list[Action] = []
    for d in DIRECTIONS:
        nx, ny = x + DELTAS[d][0], y + DELTAS[d][1]
        if 0 <= nx < w and 0 <= ny < h and int(grid[ny, nx]) == int(tile):
            out.append(d)
    return out


def shared_prefix_trajectories(
    cfg: MazeConfig | None = None,
    per_class: int = 5000,
    seed: int = PAPER_EXTRACTION_SEED,
    classes: Sequence[TileName | str] = _CLASSES,
    *,
    melt: bool | None = None,
    shuffle: bool | None = None,
    lengths: Sequence[int] | None = None,
    detours: bool = True,
    design: Literal["shared_prefix", "minimal_pairs"] = "shared_prefix",
    max_attempts: int = 64,
    max_mazes: int | None = None,
) -> list[Trajectory]:
    """Synthetic extraction trajectories that share prefixes (see the module docstring).

    Args:
        cfg: Maze, rendering and reward settings; paper defaults if None.
        per_class: Trajectories per class (paper: 5,000).
        seed: Maze ``k`` uses ``seed + k``.
        classes: Classes of the final move.
        melt, shuffle: As in :func:`~welfare_lens.maze.synthetic_trajectories`.
        lengths: Lengths to balance over; ``1..cfg.turns`` if None.
        detours: Take Gold samples from one-step detours too (far fewer tokens per Gold sample).
        design: ``"shared_prefix"`` (the paper's classes: a class-c sample needs only a class-c
            neighbour) or ``"minimal_pairs"``: samples come in sets of one per class from the
            *same* prefix, taken only where the last prompt shows every class, so the classes
            differ only in the chosen move, never in what the model saw (the confound control).
        max_attempts: Walk attempts per maze before it is skipped.
        max_mazes: Give up after this many mazes (default ``1000 * per_class`` bound).

    Returns:
        ``per_class * len(classes)`` trajectories; ``meta`` holds ``design`` and ``source``
        (``"walk"`` or ``"detour"``). Order: maze by maze.

    Raises:
        MazeConfigError: on a bad count, class or length.
        DataError: if ``max_mazes`` mazes do not fill every (class, length) quota.

    Example:
        >>> trajs = shared_prefix_trajectories(MazeConfig(size=30), per_class=4)
        >>> sorted({t.label for t in trajs}), len(trajs)
        (['gold', 'mold', 'path'], 12)
    """
    cfg = cfg if cfg is not None else MazeConfig()
    names = _check_classes(classes)
    if design not in ("shared_prefix", "minimal_pairs"):
        raise MazeConfigError(
            f"Unknown design {design!r}.", hint="Use 'shared_prefix' or 'minimal_pairs'."
        )
    base = check_seed(seed)
    _check_per_class(per_class)
    lens = sorted(set(_check_lengths(lengths, cfg.turns)))
    ecfg = replace(
        cfg,
        melt=cfg.melt if melt is None else bool(melt),
        shuffle=cfg.shuffle if shuffle is None else bool(shuffle),
    )
    quota = {name: _length_quota(per_class, lens) for name in names}
    remaining = per_class * len(names)
    used = {name: dict.fromkeys(DIRECTIONS, 0) for name in names}
    walk_len = max(lens)
    limit = max_mazes if max_mazes is not None else 1000 * max(per_class, 1)
    out: list[Trajectory] = []

    def take(
        env: MazeEnv,
        name: TileName,
        moves: list[Action],
        rng: np.random.Generator,
        source: str,
        prefer: Action | None = None,
    ) -> None:
        nonlocal remaining
        if prefer is not None and prefer in moves:
            move = prefer
        else:
            fewest = min(used[name][d] for d in moves)
            least = [d for d in moves if used[name][d] == fewest]
            move = least[int(rng.integers(len(least)))] if len(least) > 1 else least[0]
        branch = env.copy()
        branch.step(move, wind=None)
        out.append(
            Trajectory.from_env(branch, label=name, meta={"design": design, "source": source})
        )
        used[name][move] += 1
        quota[name][branch.turn] -= 1
        remaining -= 1

    pairs = design == "minimal_pairs"

    def take_all(
        env: MazeEnv, turn: int, rng: np.random.Generator, source: str, prefer: Action | None = None
    ) -> None:
        """Minimal pairs: one sample of every class from this prefix, or none at all."""
        if any(quota[name].get(turn, 0) <= 0 for name in names):
            return
        options = {name: _moves_onto(env, Tile.from_name(name)) for name in names}
        if all(options.values()):
            for name in names:
                take(env, name, options[name], rng, source, prefer if name == "path" else None)

    maze_index = 0
    while remaining > 0:
        if maze_index >= limit:
            raise DataError(
                f"{limit} mazes did not fill every (class, length) quota; "
                f"{remaining} samples are missing.",
                hint="Raise max_mazes, or use a config with more Gold (gold_fraction).",
            )
        maze_seed = base + maze_index
        maze_index += 1
        maze = generate_maze(cfg, maze_seed)
        rng = np.random.default_rng([maze_seed, WALK_STREAM])
        walk = None
        for _ in range(max_attempts):
            walk = _sample_walk(maze.grid, maze.start, walk_len, Tile.PATH, rng, ecfg.melt, 0.0)
            if walk is not None:
                break
        if walk is None:
            continue
        env = MazeEnv(ecfg, maze)
        for turn, action in enumerate(walk[0], start=1):
            if pairs:
                take_all(env, turn, rng, "walk", prefer=action)
            else:
                for name in names:
                    if quota[name].get(turn, 0) <= 0:
                        continue
                    moves = _moves_onto(env, Tile.from_name(name))
                    if moves:
                        prefer = action if name == "path" else None
                        take(env, name, moves, rng, "walk", prefer=prefer)
            if detours and "gold" in names and quota["gold"].get(turn + 1, 0) > 0:
                for alt in _moves_onto(env, Tile.PATH):
                    if alt == action or quota["gold"].get(turn + 1, 0) <= 0:
                        continue
                    detour = env.copy()
                    detour.step(alt, wind=None)
                    if detour.done:
                        continue
                    if pairs:
                        take_all(detour, turn + 1, rng, "detour")
                        continue
                    golds = _moves_onto(detour, Tile.GOLD)
                    if golds:
                        take(detour, "gold", golds, rng, "detour")
            if remaining <= 0:
                break
            env.step(action, wind=None)
    return out
