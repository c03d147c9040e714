"""Synthetic off-policy trajectories (Appendix L.1, L.2; notes A4, B-9)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from welfare_lens.errors import DataError, MazeConfigError
from welfare_lens.maze import (
    OPPOSITE,
    Action,
    Maze,
    MazeConfig,
    MazeEnv,
    Tile,
    TileName,
    Trajectory,
    direction_balance,
    generate_maze,
    gold_feasible,
    synthetic_trajectories,
)

NESW = ["N", "E", "S", "W"]
CFG = MazeConfig(size=30)


@pytest.fixture(scope="module")
def trajs() -> list[Trajectory]:
    return synthetic_trajectories(CFG, per_class=45, seed=474747)


def test_counts_labels_and_n_balance(trajs: list[Trajectory]) -> None:
    assert len(trajs) == 135
    assert [t.label for t in trajs] == ["mold"] * 45 + ["gold"] * 45 + ["path"] * 45
    for label in ("mold", "gold", "path"):
        ns = Counter(t.n_turns for t in trajs if t.label == label)
        assert sorted(ns) == list(range(1, 16))
        assert set(ns.values()) == {3}  # 45 = 3 x 15: perfectly balanced
    uneven = synthetic_trajectories(CFG, per_class=17, classes=("path",))
    counts = Counter(t.n_turns for t in uneven)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_final_tile_is_the_label_and_earlier_steps_are_path(trajs: list[Trajectory]) -> None:
    for t in trajs:
        tile = Tile.from_name(t.label or "")
        assert t.final_tile is tile
        assert t.tiles_entered[-1] == (int(tile),)
        # The final user message showed the label's tile in the chosen direction.
        assert t.neighbours[-1][NESW.index(t.final_action or "")] == int(tile)
        assert all(e == (int(Tile.PATH),) for e in t.tiles_entered[:-1])
        # Rewards: n - 1 Path steps, then the label's tile (Q.1).
        assert t.rewards[:-1] == pytest.approx([-0.1] * (t.n_turns - 1))
        assert t.rewards[-1] == pytest.approx(
            {"mold": -10.1, "gold": 19.9, "path": -0.1}[t.label or ""]
        )
        # Conversation: n user/assistant pairs ending with the final move, no system prompt.
        assert len(t.messages) == 2 * t.n_turns
        assert t.messages[-1] == {"role": "assistant", "content": t.final_action}
        assert [m["role"] for m in t.messages] == ["user", "assistant"] * t.n_turns
        assert len(t.positions) == t.n_turns + 1
        assert t.winds == [None] * t.n_turns  # wind off by default (B-9)


def test_melting_is_rendered(trajs: list[Trajectory]) -> None:
    """With melting, the tile the walk just left shows as Mold in the next prompt."""
    checked = 0
    for t in trajs:
        for k in range(1, t.n_turns):
            back = OPPOSITE[t.actions[k - 1] or ""]
            assert t.neighbours[k][NESW.index(back)] == int(Tile.MOLD)
            checked += 1
    assert checked > 100


def test_seeds_start_at_base_and_increase(trajs: list[Trajectory]) -> None:
    seeds = [t.maze_seed for t in trajs]
    assert all(s is not None for s in seeds)
    ints = [int(s) for s in seeds if s is not None]
    assert ints[0] >= 474747 and ints == sorted(ints) and len(set(ints)) == len(ints)
    # Rejected mazes are counted: the seed gap equals the rejections before each trajectory.
    gaps = np.diff([474747 - 1, *ints]) - 1
    assert gaps.tolist() == [t.meta["rejected_before"] for t in trajs]
    assert any(t.meta["rejected_before"] > 0 for t in trajs if t.label == "gold")


def test_trajectory_starts_at_its_maze_start(trajs: list[Trajectory]) -> None:
    for t in trajs[::9]:
        maze = generate_maze(CFG, t.maze_seed or 0)
        assert t.positions[0] == maze.start


def test_determinism_and_class_independence(trajs: list[Trajectory]) -> None:
    again = synthetic_trajectories(CFG, per_class=45, seed=474747)
    assert [t.to_dict() for t in again] == [t.to_dict() for t in trajs]
    mold_only = synthetic_trajectories(CFG, per_class=45, seed=474747, classes=("mold",))
    assert [t.to_dict() for t in mold_only] == [t.to_dict() for t in trajs[:45]]
    other = synthetic_trajectories(CFG, per_class=45, seed=1, classes=("mold",))
    assert [t.messages for t in other] != [t.messages for t in trajs[:45]]


def test_direction_balance_by_hand() -> None:
    def fake(label: TileName, action: Action) -> Trajectory:
        return Trajectory(
            messages=[],
            actions=[action],
            label=label,
            n_turns=1,
            maze_seed=0,
            rewards=[0.0],
            positions=[(0, 0), (0, 0)],
            neighbours=[(2, 2, 2, 2)],
            orders=[("N", "E", "S", "W")],
            winds=[None],
            tiles_entered=[(2,)],
            prompt_format="paper",
            emoji={},
        )

    mold_moves: list[Action] = ["N", "N", "E", "S"]
    sample = [fake("mold", a) for a in mold_moves] + [fake("gold", "W")]
    bal = direction_balance(sample)
    assert bal["mold"] == {"N": 0.5, "E": 0.25, "S": 0.25, "W": 0.0, "count": 4.0}
    assert bal["gold"]["W"] == 1.0


def test_final_directions_are_balanced() -> None:
    """Appendix L.2: about 25% per direction in every class."""
    many = synthetic_trajectories(CFG, per_class=300, seed=474747, shuffle=False)
    for label, row in direction_balance(many).items():
        assert row["count"] == 300
        for d in NESW:
            assert 0.18 <= row[d] <= 0.32, (label, d, row)


def test_wind_and_options() -> None:
    cfg = MazeConfig(size=30, wind_p=0.5)
    windy = synthetic_trajectories(cfg, per_class=30, classes=("gold", "path"), wind=True)
    pushes = 0
    for t in windy:
        assert t.winds[-1] is None  # never on the final step: the label holds
        assert t.final_tile is Tile.from_name(t.label or "")
        for k, w in enumerate(t.winds[:-1]):
            if w is not None:
                pushes += 1
                assert t.tiles_entered[k] == (int(Tile.PATH), int(Tile.PATH))
                assert t.messages[2 * (k + 1)]["content"].startswith("A strong wind from the ")
    assert pushes > 10
    flat = synthetic_trajectories(CFG, per_class=5, classes=("path",), shuffle=False, melt=False)
    for t in flat:
        assert set(t.orders) == {("N", "E", "S", "W")}
    compact = synthetic_trajectories(
        MazeConfig(size=30, prompt_format="compact"), per_class=2, classes=("mold",)
    )
    assert compact[0].messages[0]["content"].startswith("Neighbours: ")
    assert compact[0].prompt_format == "compact"


def test_gold_feasibility_by_hand() -> None:
    # Start (1, 2); Gold (3, 2) is 2 steps away through the Path cell (2, 2).
    maze = Maze.from_strings(["#####", "#####", "#@.$#", "#####", "#####"])
    assert [gold_feasible(maze.grid, maze.start, n) for n in range(1, 7)] == [
        False,  # below the optimal length 2
        True,
        False,  # parity: 3 steps cannot end on a cell 2 steps away
        True,
        False,
        True,
    ]
    # A Gold tile behind a Mold wall is unreachable: Mold is not walked through.
    walled = Maze.from_strings(["#####", "#####", "#@#$#", "#####", "#####"])
    assert not any(gold_feasible(walled.grid, walled.start, n) for n in range(1, 8))
    # A Gold behind another Gold is reached in 1 step, not 2 (Gold ends a route).
    chain = Maze.from_strings(["#####", "#####", "#@$$#", "#####", "#####"])
    assert [gold_feasible(chain.grid, chain.start, n) for n in (1, 2, 3)] == [True, False, True]


def test_round_trip_and_errors(trajs: list[Trajectory]) -> None:
    t = trajs[50]
    data = json.loads(json.dumps(t.to_dict(), ensure_ascii=False))
    assert Trajectory.from_dict(data).to_dict() == t.to_dict()
    with pytest.raises(DataError, match="not played any turn"):
        Trajectory.from_env(MazeEnv(MazeConfig(size=10), 0))
    with pytest.raises(DataError, match="lacks the field"):
        Trajectory.from_dict({"messages": []})
    with pytest.raises(MazeConfigError, match="listed twice"):
        synthetic_trajectories(CFG, per_class=1, classes=("mold", "MOLD"))
    with pytest.raises(MazeConfigError, match="Unknown tile class"):
        synthetic_trajectories(CFG, per_class=1, classes=("lava",))
    with pytest.raises(MazeConfigError, match="lengths"):
        synthetic_trajectories(CFG, per_class=1, lengths=[0])
    with pytest.raises(MazeConfigError, match="per_class"):
        synthetic_trajectories(CFG, per_class=-1)
    with pytest.raises(DataError, match="in a row"):
        # With melting the walk never revisits a tile: 15 steps do not fit in a 3x3 interior.
        synthetic_trajectories(MazeConfig(size=5), per_class=1, classes=("path",), lengths=[15])
