"""shared_prefix_trajectories: the paper's extraction classes, sampled to share prefixes."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

import welfare_lens as wl
from welfare_lens.errors import DataError, MazeConfigError
from welfare_lens.maze import MazeConfig, Tile, shared_prefix_trajectories

CFG = MazeConfig(size=30)


def test_quota_per_class_and_length() -> None:
    trajs = shared_prefix_trajectories(CFG, per_class=31, seed=11)
    counts = Counter((t.label, t.n_turns) for t in trajs)
    # The paper's balance: trajectory i of a class has length 1 + i % 15.
    for label in ("mold", "gold", "path"):
        for n in range(1, 16):
            assert counts[(label, n)] == (3 if n == 1 else 2), (label, n)
    assert len(trajs) == 93


def test_every_sample_is_a_valid_extraction_trajectory() -> None:
    trajs = shared_prefix_trajectories(CFG, per_class=20, seed=4)
    for t in trajs:
        assert t.final_tile is not None and t.final_tile.class_name == t.label
        # n - 1 moves onto Path (no wind), then the final move.
        assert all(entered == (int(Tile.PATH),) for entered in t.tiles_entered[:-1])
        assert all(w is None for w in t.winds)
        assert t.meta["design"] == "shared_prefix"
        assert t.meta["source"] in ("walk", "detour")
    assert {t.meta["source"] for t in trajs if t.label == "gold"} == {"walk", "detour"}


def test_direction_balance_and_sharing() -> None:
    trajs = shared_prefix_trajectories(CFG, per_class=120, seed=8)
    for label, shares in wl.maze.direction_balance(trajs).items():
        for d in "NESW":
            assert 0.18 <= shares[d] <= 0.32, (label, shares)
    # Samples of a maze share their walk: Path samples of one maze are prefixes of each other.
    by_maze: dict[int | None, list[wl.maze.Trajectory]] = {}
    for t in trajs:
        if t.label == "path":
            by_maze.setdefault(t.maze_seed, []).append(t)
    walk = max(by_maze.values(), key=len)
    walk.sort(key=lambda t: t.n_turns)
    assert len(walk) >= 3
    for short, long in itertools.pairwise(walk):
        assert long.messages[: len(short.messages)] == short.messages
    # Far fewer mazes than samples (the paper's design uses one maze per sample).
    assert len({t.maze_seed for t in trajs}) < len(trajs) / 4


def test_deterministic_and_errors() -> None:
    a = shared_prefix_trajectories(CFG, per_class=5, seed=2)
    b = shared_prefix_trajectories(CFG, per_class=5, seed=2)
    assert [t.to_dict() for t in a] == [t.to_dict() for t in b]
    with pytest.raises(MazeConfigError, match="per_class"):
        shared_prefix_trajectories(CFG, per_class=-1)
    with pytest.raises(MazeConfigError, match="lengths"):
        shared_prefix_trajectories(CFG, per_class=2, lengths=[0, 3])
    with pytest.raises(DataError, match="quota"):
        shared_prefix_trajectories(CFG, per_class=50, max_mazes=2)
