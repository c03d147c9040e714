"""Reference policies: exhaustive look-ahead planner vs random play."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from welfare_lens.errors import MazeConfigError
from welfare_lens.maze import (
    DIRECTIONS,
    Maze,
    MazeConfig,
    MazeEnv,
    OptimalPolicy,
    RandomPolicy,
    evaluate_policy,
    plan_values,
    policy_returns,
    policy_trajectories,
    run_episode,
)


def _simulated_returns(env: MazeEnv, horizon: int) -> list[float]:
    """Brute force: play every move sequence on a copy of the environment, without wind."""
    out = []
    for seq in itertools.product(DIRECTIONS, repeat=horizon):
        e = env.copy()
        out.append(sum(e.step(a, wind=None).reward for a in seq))
    return out


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(5, 9),
    seed=st.integers(0, 10_000),
    melt=st.booleans(),
    horizon=st.integers(1, 4),
    prefix=st.lists(st.sampled_from(DIRECTIONS), max_size=3),
)
def test_planner_matches_the_environment(
    size: int, seed: int, melt: bool, horizon: int, prefix: list[str]
) -> None:
    """plan_values agrees with MazeEnv on every sequence, edges and revisits included."""
    cfg = MazeConfig(size=size, turns=8, melt=melt, wind_p=0.0)
    env = MazeEnv(cfg, seed)
    for a in prefix:
        env.step(a)
    first, values, _ = plan_values(env.grid, env.position, horizon, cfg)
    assert values.tolist() == pytest.approx(_simulated_returns(env, horizon))
    assert first.tolist() == [i // 4 ** (horizon - 1) for i in range(4**horizon)]


def test_planner_on_the_border_and_without_a_ring() -> None:
    maze = Maze.from_strings(["@$", ".."])
    for melt in (True, False):
        cfg = MazeConfig(size=5, turns=4, melt=melt, wind_p=0.0)
        env = MazeEnv(cfg, maze)
        _, values, _ = plan_values(env.grid, env.position, 4, cfg)
        assert values.tolist() == pytest.approx(_simulated_returns(env, 4))


def test_planner_values_by_hand() -> None:
    # Start (1, 1) with Gold E at (2, 1) and Gold E of it at (3, 1).
    maze = Maze.from_strings(["#####", "#@$$#", "#...#", "#####"])
    cfg = MazeConfig(size=5, turns=2, wind_p=0.0)
    env = MazeEnv(cfg, maze)
    _, values, _ = plan_values(env.grid, env.position, 2, cfg)
    by_seq = dict(zip(itertools.product(DIRECTIONS, repeat=2), values.tolist(), strict=True))
    assert by_seq[("E", "E")] == pytest.approx(2 * 19.9)  # two Gold
    assert by_seq[("E", "W")] == pytest.approx(19.9 - 10.1)  # back onto the melted start
    assert by_seq[("N", "N")] == pytest.approx(2 * -10.1)  # the ring's Mold, twice
    assert by_seq[("S", "E")] == pytest.approx(-0.2)
    policy = OptimalPolicy(horizon=2)
    moves, value = policy.best_first_moves(env)
    assert moves == ["E"] and value == pytest.approx(39.8)
    assert policy(env, np.random.default_rng(0)) == "E"


def test_optimal_is_optimal_on_short_episodes() -> None:
    """With horizon >= turns and no wind the planner reaches the brute-force optimum."""
    for seed in range(8):
        cfg = MazeConfig(size=12, turns=4, wind_p=0.0)
        env = MazeEnv(cfg, seed)
        best = max(_simulated_returns(env, 4))
        traj = run_episode(OptimalPolicy(horizon=4), cfg, seed)
        assert traj.total_reward == pytest.approx(best)


def test_ties_are_broken_at_random_without_direction_bias() -> None:
    # All four neighbours are Path with nothing beyond: every first move ties.
    maze = Maze.from_strings(["#####", "#...#", "#.@.#", "#...#", "#####"])
    env = MazeEnv(MazeConfig(size=5, turns=1, wind_p=0.0), maze)
    policy = OptimalPolicy(horizon=1)
    moves, value = policy.best_first_moves(env)
    assert moves == ["N", "E", "S", "W"] and value == pytest.approx(-0.1)
    rng = np.random.default_rng(0)
    picks = [policy(env, rng) for _ in range(400)]
    assert all(70 <= picks.count(d) <= 130 for d in DIRECTIONS)


def test_optimal_beats_random_by_a_wide_margin() -> None:
    cfg = MazeConfig(size=40)
    opt = policy_returns(OptimalPolicy(horizon=5), cfg, 12, seed=100)
    rnd = policy_returns(RandomPolicy(), cfg, 12, seed=100)
    assert opt.mean() > rnd.mean() + 60
    assert (opt >= rnd).mean() >= 0.9  # paired: same mazes, same wind
    assert evaluate_policy(RandomPolicy(), cfg, 12, seed=100) == pytest.approx(rnd.mean())


def test_policy_trajectories_for_sft_data() -> None:
    cfg = MazeConfig(size=30, turns=6)
    trajs = policy_trajectories(OptimalPolicy(horizon=4), cfg, 3, seed=5)
    assert [t.maze_seed for t in trajs] == [5, 6, 7]
    for t in trajs:
        assert t.n_turns == 6 and t.label is None
        assert all(a in DIRECTIONS for a in t.actions)
        assert [m["content"] for m in t.messages[1::2]] == t.actions
    again = policy_trajectories(OptimalPolicy(horizon=4), cfg, 3, seed=5)
    assert [t.to_dict() for t in again] == [t.to_dict() for t in trajs]


def test_bad_arguments() -> None:
    with pytest.raises(MazeConfigError, match="horizon"):
        OptimalPolicy(horizon=0)
    with pytest.raises(MazeConfigError, match="tie_radius"):
        OptimalPolicy(tie_radius=-1)
    with pytest.raises(MazeConfigError, match="n_episodes"):
        evaluate_policy(RandomPolicy(), MazeConfig(size=10), 0)
