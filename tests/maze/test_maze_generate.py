"""Maze configuration and generation (paper Appendix J.1, J.2; notes A2, B-1, B-6)."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from welfare_lens.errors import MazeConfigError
from welfare_lens.maze import (
    Maze,
    MazeConfig,
    Tile,
    TileEmoji,
    clipped_walk,
    generate_maze,
    interior_mold_bounds,
    nearest_path_bfs,
)
from welfare_lens.maze.generate import _interior_walk

# --------------------------------------------------------------------------- config


def test_paper_defaults() -> None:
    cfg = MazeConfig()
    assert cfg.size == 100
    assert cfg.turns == 15
    assert cfg.walk_steps == (490, 1470)  # 5 * 98, 15 * 98 (J.1)
    assert cfg.mold_fraction_range == (0.10, 0.50)
    assert cfg.gold_fraction == 0.20
    assert cfg.wind_p == 0.1
    assert cfg.melt is True
    assert cfg.shuffle is True
    assert cfg.shuffle_scope == "turn"
    assert cfg.prompt_format == "paper"
    assert (cfg.reward_gold, cfg.reward_mold, cfg.reward_step) == (20.0, -10.0, -0.1)
    assert cfg.n_interior == 9604
    assert cfg.tile_reward(Tile.GOLD) == 20.0
    assert cfg.tile_reward(Tile.MOLD) == -10.0
    assert cfg.tile_reward(Tile.PATH) == 0.0


def test_walk_steps_scale_with_size() -> None:
    assert MazeConfig(size=12).walk_steps == (50, 150)  # 5 * 10, 15 * 10
    assert MazeConfig(size=12, walk_steps_range=(3, 4)).walk_steps == (3, 4)


@pytest.mark.parametrize(
    ("n", "lower", "upper", "expected"),
    [
        (9604, 0.10, 0.50, (961, 4801)),  # 960/9604 = 9.996% < 10%; 4802/9604 = 50% not < 50%
        (100, 0.10, 0.50, (10, 49)),  # 10% is allowed (inclusive), 50% is not
        (36, 0.10, 0.50, (4, 17)),  # 4/36 = 11.1%, 17/36 = 47.2%, 18/36 = 50%
        (100, 0.29, 0.30, (29, 29)),  # 0.29 * 100 = 28.999... in floats
    ],
)
def test_interior_mold_bounds_by_hand(
    n: int, lower: float, upper: float, expected: tuple[int, int]
) -> None:
    assert interior_mold_bounds(n, lower, upper) == expected


def test_tile_values_and_names() -> None:
    assert (int(Tile.MOLD), int(Tile.GOLD), int(Tile.PATH)) == (0, 1, 2)
    assert [t.class_name for t in Tile] == ["mold", "gold", "path"]
    assert Tile.from_name("GOLD") is Tile.GOLD
    with pytest.raises(MazeConfigError, match="Unknown tile class"):
        Tile.from_name("lava")


def test_emoji_mappings() -> None:
    paper = TileEmoji.paper()
    assert (paper.mold, paper.gold, paper.path) == ("\U0001f4c7", "\U0001f4d0", "\U0001f9fe")
    assert [ord(c) for c in paper.mold + paper.gold + paper.path] == [0x1F4C7, 0x1F4D0, 0x1F9FE]
    swapped = TileEmoji.swapped()
    assert (swapped.mold, swapped.gold, swapped.path) == (paper.gold, paper.mold, paper.path)
    perm = TileEmoji.permuted(("path", "mold", "gold"))
    assert (perm.mold, perm.gold, perm.path) == (paper.path, paper.mold, paper.gold)
    assert TileEmoji.permuted(("mold", "gold", "path")) == paper
    letters = TileEmoji.letters()
    assert letters.to_dict() == {"mold": "A", "gold": "B", "path": "C"}
    assert letters.tile_of("B") is Tile.GOLD
    assert paper.describe(Tile.MOLD) == "card index"
    with pytest.raises(MazeConfigError, match="distinct"):
        TileEmoji(mold="A", gold="A", path="C")
    with pytest.raises(MazeConfigError, match="permutation"):
        TileEmoji.permuted(("mold", "mold", "path"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": 4}, "size must be an integer >= 5"),
        ({"size": True}, "size must be an integer"),
        ({"turns": 0}, "turns must be"),
        ({"walk_steps_range": (5, 2)}, "empty or negative"),
        ({"mold_fraction_range": (0.5, 0.1)}, "is empty"),
        ({"mold_fraction_range": (0.1, 1.5)}, "outside"),
        ({"gold_fraction": 2.0}, "gold_fraction"),
        ({"wind_p": -0.1}, "wind_p"),
        ({"melt": "yes"}, "melt must be True or False"),
        ({"prompt_format": "verbose"}, "Unknown prompt_format"),
        ({"shuffle_scope": "game"}, "Unknown shuffle_scope"),
        ({"reward_gold": float("nan")}, "finite"),
        ({"size": 5, "mold_fraction_range": (0.12, 0.2)}, "No Mold count"),  # 1/9, 2/9 miss
        ({"size": 5, "mold_fraction_range": (0.8, 1.0), "gold_fraction": 1.0}, "no Path"),
    ],
)
def test_bad_configs_name_the_field_and_the_fix(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(MazeConfigError, match=match) as info:
        MazeConfig(**kwargs)  # type: ignore[arg-type]
    assert info.value.hint


def test_config_dict_round_trip_and_typos() -> None:
    cfg = MazeConfig(size=20, emoji=TileEmoji.swapped(), walk_steps_range=(10, 20))
    assert MazeConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(MazeConfigError, match="Did you mean 'wind_p'"):
        MazeConfig.from_dict({"wind_pp": 0.2})


# --------------------------------------------------------------------------- generation


def test_paper_size_maze() -> None:
    cfg = MazeConfig()
    maze = generate_maze(cfg, seed=0)
    assert maze.grid.shape == (100, 100)
    assert maze.grid.dtype == np.int8
    counts = maze.counts()
    assert sum(counts.values()) == 9604
    assert 961 <= counts["mold"] <= 4801
    assert counts["gold"] == max(1, math.floor(0.2 * counts["mold"]))
    # The start is near the centre (50, 50); 15 moves plus 15 wind pushes cannot reach the ring.
    sx, sy = maze.start
    assert abs(sx - 50) + abs(sy - 50) <= 10
    assert min(sx, sy) > 30 and max(sx, sy) < 69


def _check_invariants(cfg: MazeConfig, maze: Maze) -> None:
    g = maze.grid
    size = cfg.size
    assert g.shape == (size, size) and g.dtype == np.int8
    # Mold ring.
    assert (g[0] == Tile.MOLD).all() and (g[-1] == Tile.MOLD).all()
    assert (g[:, 0] == Tile.MOLD).all() and (g[:, -1] == Tile.MOLD).all()
    inner = g[1:-1, 1:-1]
    n_mold = int((inner == Tile.MOLD).sum())
    lower, upper = cfg.mold_fraction_range
    assert lower <= n_mold / inner.size < upper
    assert int((inner == Tile.GOLD).sum()) == max(1, math.floor(cfg.gold_fraction * n_mold))
    # The start is a Path cell nearest the centre (Manhattan distance = BFS distance).
    sx, sy = maze.start
    assert g[sy, sx] == Tile.PATH
    ys, xs = np.nonzero(g == Tile.PATH)
    c = size // 2
    assert abs(sx - c) + abs(sy - c) == int((np.abs(xs - c) + np.abs(ys - c)).min())
    assert maze.start == _reference_bfs(g)


def _reference_bfs(g: np.ndarray) -> tuple[int, int]:
    """Plain BFS from the centre expanding N, S, E, W (the released generator's order)."""
    h, w = g.shape
    start = (w // 2, h // 2)
    seen = {start}
    queue = deque([start])
    while queue:
        x, y = queue.popleft()
        if g[y, x] == Tile.PATH:
            return (x, y)
        for dx, dy in ((0, -1), (0, 1), (1, 0), (-1, 0)):
            n = (x + dx, y + dy)
            if 0 <= n[0] < w and 0 <= n[1] < h and n not in seen:
                seen.add(n)
                queue.append(n)
    raise AssertionError("no Path cell")


@settings(max_examples=500, deadline=None)
@given(
    size=st.integers(8, 30),
    seed=st.integers(0, 2**32 - 1),
    lower=st.sampled_from([0.05, 0.10, 0.2]),
    upper=st.sampled_from([0.4, 0.5, 0.6]),
    gold=st.sampled_from([0.0, 0.1, 0.2, 0.3]),
    walk_scale=st.sampled_from([None, (0, 5), (100, 400)]),
)
def test_generation_invariants(
    size: int,
    seed: int,
    lower: float,
    upper: float,
    gold: float,
    walk_scale: tuple[int, int] | None,
) -> None:
    cfg = MazeConfig(
        size=size,
        mold_fraction_range=(lower, upper),
        gold_fraction=gold,
        walk_steps_range=walk_scale,
    )
    maze = generate_maze(cfg, seed)
    _check_invariants(cfg, maze)
    again = generate_maze(cfg, seed)
    assert again.grid.tobytes() == maze.grid.tobytes()
    assert again.start == maze.start and again.seed == seed


def test_same_seed_same_maze_different_seed_different_maze() -> None:
    cfg = MazeConfig()
    a, b, c = generate_maze(cfg, 7), generate_maze(cfg, 7), generate_maze(cfg, 8)
    assert a.grid.tobytes() == b.grid.tobytes()
    assert a.grid.tobytes() != c.grid.tobytes()
    assert not a.grid.flags.writeable


def test_mold_fractions_spread_over_the_range() -> None:
    """The target Mold count is uniform over the allowed range (released generator)."""
    cfg = MazeConfig(size=40)
    fractions = [generate_maze(cfg, s).interior_mold_fraction for s in range(60)]
    assert min(fractions) < 0.2 and max(fractions) > 0.4


def test_start_bfs_tie_break_by_hand() -> None:
    # Centre (2, 2) is Mold; N (2, 1) and S (2, 3) are Path: N is expanded first.
    g = Maze.from_strings(["#####", "#...#", "#.#.#", "#...#", "#####"], start=(1, 1)).grid
    assert nearest_path_bfs(g) == (2, 1)
    # N is Mold, S, E and W are Path: S comes before E and W in the N, S, E, W order.
    g2 = Maze.from_strings(["#####", "#.#.#", "#.#.#", "#...#", "#####"], start=(1, 1)).grid
    assert nearest_path_bfs(g2) == (2, 3)
    # Nothing at distance 1: the nearest Path cell, at distance 2, wins.
    g3 = Maze.from_strings(["#####", "###.#", "#####", "#####", "#####"], start=(3, 1)).grid
    assert nearest_path_bfs(g3) == (3, 1)
    with pytest.raises(MazeConfigError, match="no Path"):
        nearest_path_bfs(np.zeros((5, 5), dtype=np.int8))


def test_clipped_walk_matches_the_sequential_rule() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        n = int(rng.integers(0, 200))
        moves = rng.integers(0, 4, n)
        x0, y0 = (int(v) for v in rng.integers(1, 7, 2))
        xs, ys = clipped_walk(x0, y0, moves, 1, 6)
        x, y = x0, y0
        exp_x, exp_y = [x], [y]
        for m in moves:
            dx, dy = [(0, -1), (1, 0), (0, 1), (-1, 0)][int(m)]
            x, y = min(max(x + dx, 1), 6), min(max(y + dy, 1), 6)
            exp_x.append(x)
            exp_y.append(y)
        assert xs.tolist() == exp_x and ys.tolist() == exp_y


def test_interior_walk_moves_every_step_and_stays_inside() -> None:
    rng = np.random.default_rng(3)
    xs, ys = _interior_walk(rng, 1, 1, 500, 6)  # a 4x4 interior: many edge contacts
    assert len(xs) == 501
    steps = np.abs(np.diff(xs)) + np.abs(np.diff(ys))
    assert (steps == 1).all()  # uniform among *valid* neighbours: never a stay
    assert xs.min() >= 1 and xs.max() <= 4 and ys.min() >= 1 and ys.max() <= 4


def test_maze_from_strings_and_errors() -> None:
    m = Maze.from_strings(["####", "#@$#", "####"])
    assert m.start == (1, 1)
    assert m.tile(2, 1) is Tile.GOLD and m.tile(1, 1) is Tile.PATH
    assert m.to_strings() == ["####", "#@$#", "####"]
    with pytest.raises(MazeConfigError, match="Unknown maze character"):
        Maze.from_strings(["#x#"], start=(0, 0))
    with pytest.raises(MazeConfigError, match="No start"):
        Maze.from_strings(["###"])
    with pytest.raises(MazeConfigError, match="outside"):
        Maze(grid=np.zeros((3, 3), dtype=np.int8), start=(3, 0))
    with pytest.raises(MazeConfigError, match="Tile values"):
        Maze(grid=np.full((3, 3), 5, dtype=np.int8), start=(0, 0))
    with pytest.raises(MazeConfigError, match="non-negative integer"):
        generate_maze(MazeConfig(size=10), seed=-1)
