"""Reference policies: a look-ahead planner (for SFT data and as a score ceiling) and random play.

The paper's SFT control trains on "optimal-ish" trajectories (A3; note B-12) and reports the
trained agent's returns (Appendix K: +198.5 in one rollout). This module gives the two reference
points every maze result should be read against:

* :class:`OptimalPolicy` -- exhaustive search over every sequence of the next ``H`` moves
  (``4**H`` of them, evaluated at once with numpy), with ``H = min(horizon, turns left)``,
  replanned every turn. The evaluation is exact for the environment's rules (melting, Gold
  consumption, revisits, bounces at the edge) and ignores the wind, which it cannot foresee.
  Hence: with no wind and ``horizon >= cfg.turns`` the policy is **optimal** (it maximises the
  episode return, i.e. collects the most Gold net of Mold); with a shorter horizon it is the
  optimal receding-horizon controller for that horizon. Ties between first moves are broken
  uniformly at random, so SFT data built from it carries no direction bias (the paper's
  "north bias", J.3).
* :class:`RandomPolicy` -- uniform over N/E/S/W (the untrained baseline).
* :class:`MoldAvoider` -- one step of look-ahead: Gold in view if any, else a tile that is not
  Mold, else anything. It never steps onto avoidable Mold, so its share of moves onto Mold is
  the floor of that share on a maze set (Mold on all four sides cannot be avoided).

:func:`evaluate_policy` plays ``n_episodes`` fresh mazes with paired seeds, so two policies
evaluated with the same seed face the same mazes and the same wind.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from welfare_lens.errors import MazeConfigError
from welfare_lens.maze.config import MazeConfig, Tile
from welfare_lens.maze.directions import DELTAS, DIRECTIONS, Action
from welfare_lens.maze.env import MazeEnv
from welfare_lens.maze.generate import check_seed
from welfare_lens.maze.trajectories import Trajectory

__all__ = [
    "POLICY_STREAM",
    "MoldAvoider",
    "OptimalPolicy",
    "Policy",
    "RandomPolicy",
    "evaluate_policy",
    "policy_returns",
    "policy_trajectories",
    "run_episode",
]

#: Second entropy word of a policy's random stream in an episode: ``default_rng([seed, 3])``.
POLICY_STREAM = 3


@runtime_checkable
class Policy(Protocol):
    """Anything that picks a reply from the environment's state.

    ``policy(env, rng)`` returns the reply text (a direction letter for the policies here; any
    string is accepted by :meth:`MazeEnv.step`). A language model's policy reads
    ``env.messages`` instead of the grid.
    """

    def __call__(self, env: MazeEnv, rng: np.random.Generator) -> str:
        """Return the reply for the current turn."""
        ...


class RandomPolicy:
    """Uniform over N, E, S, W: the untrained baseline."""

    def __call__(self, env: MazeEnv, rng: np.random.Generator) -> str:
        """A uniformly random direction."""
        return DIRECTIONS[int(rng.integers(4))]

    def __repr__(self) -> str:
        return "RandomPolicy()"


class MoldAvoider:
    """Gold in view if any, else a neighbour that is not Mold, else any (ties uniform)."""

    def __call__(self, env: MazeEnv, rng: np.random.Generator) -> str:
        """The move: onto Gold, else off Mold, uniformly among the equally good ones."""
        tiles = env.neighbours()
        gold = [i for i, t in enumerate(tiles) if t == Tile.GOLD]
        safe = [i for i, t in enumerate(tiles) if t != Tile.MOLD]
        best = gold or safe or list(range(len(tiles)))
        return DIRECTIONS[best[int(rng.integers(len(best)))]]

    def __repr__(self) -> str:
        return "MoldAvoider()"


def plan_values(
    grid: NDArray[np.int8],
    position: tuple[int, int],
    horizon: int,
    cfg: MazeConfig,
) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.int64]]:
    """Return of every ``horizon``-move sequence from ``position`` on ``grid``, without wind.

    Rules (as in :class:`MazeEnv`): a move off the grid bounces (stay, Mold entry); a real move
    onto a tile already occupied earlier in the sequence (the current one included) finds it
    melted into Mold when ``cfg.melt``, else as it was left (a consumed Gold is Path); Gold is
    consumed on first entry. The constant step cost is included. The search tree is expanded
    level by level, so the cost is about ``horizon * 4**horizon`` element operations.

    Returns:
        ``(first, values, end)`` for each of the ``4**horizon`` sequences, in lexicographic
        order of the move codes: the first move's code (0..3 for N, E, S, W), the return, and
        the final cell as a flat index ``y * width + x``.
    """
    h, w = grid.shape
    flat = grid.reshape(-1).astype(np.int64)
    r_of = np.array(
        [cfg.tile_reward(Tile.MOLD), cfg.tile_reward(Tile.GOLD), cfg.tile_reward(Tile.PATH)],
        dtype=np.float64,
    )
    mold = float(cfg.reward_mold)
    ddx = np.array([DELTAS[d][0] for d in DIRECTIONS], dtype=np.int64)
    ddy = np.array([DELTAS[d][1] for d in DIRECTIONS], dtype=np.int64)
    x0, y0 = position
    pos = np.array([y0 * w + x0], dtype=np.int64)
    hist = pos[:, None]
    val = np.zeros(1, dtype=np.float64)
    for _ in range(horizon):
        m = pos.size
        x = np.repeat(pos % w, 4) + np.tile(ddx, m)
        y = np.repeat(pos // w, 4) + np.tile(ddy, m)
        off = (x < 0) | (x >= w) | (y < 0) | (y >= h)
        new = np.where(off, np.repeat(pos, 4), y * w + x)
        hist = np.repeat(hist, 4, axis=0)
        revisit = (hist == new[:, None]).any(axis=1) & ~off
        tile = flat[new]
        r = r_of[tile]
        if cfg.melt:
            r[revisit] = mold
        else:
            r[revisit & (tile == Tile.GOLD)] = 0.0
        r[off] = mold
        val = np.repeat(val, 4) + r
        hist = np.concatenate([hist, new[:, None]], axis=1)
        pos = new
    first = np.arange(val.size, dtype=np.int64) // (4 ** (horizon - 1))
    return first, val + horizon * float(cfg.reward_step), pos


def _gold_near(grid: NDArray[np.int8], radius: int) -> NDArray[np.int64]:
    """Number of Gold tiles in the ``(2 * radius + 1)``-square around every cell."""
    h, w = grid.shape
    gold = np.zeros((h + 1, w + 1), dtype=np.int64)
    gold[1:, 1:] = np.cumsum(np.cumsum(grid == Tile.GOLD, axis=0), axis=1)
    ys = np.arange(h)
    xs = np.arange(w)
    y0 = np.clip(ys - radius, 0, h)[:, None]
    y1 = np.clip(ys + radius + 1, 0, h)[:, None]
    x0 = np.clip(xs - radius, 0, w)[None, :]
    x1 = np.clip(xs + radius + 1, 0, w)[None, :]
    out: NDArray[np.int64] = gold[y1, x1] - gold[y0, x1] - gold[y1, x0] + gold[y0, x0]
    return out


class OptimalPolicy:
    """Receding-horizon exhaustive search; optimal when ``horizon >= turns`` and there is no wind.

    Args:
        horizon: Moves searched ahead (``4**horizon`` sequences per turn; 7 takes about a
            millisecond). Set it to ``cfg.turns`` for the exact optimum on short episodes.
        tie_radius: Radius of the Gold-proximity tie-break (0: none), see
            :meth:`best_first_moves`.

    Raises:
        MazeConfigError: if ``horizon`` is not in 1..10.
    """

    def __init__(self, horizon: int = 7, tie_radius: int = 4) -> None:
        if isinstance(horizon, bool) or not isinstance(horizon, int) or not 1 <= horizon <= 10:
            raise MazeConfigError(
                f"horizon must be an integer in 1..10, got {horizon!r}.",
                hint="4**horizon sequences are searched each turn; 7 is fast, 10 is ~1M.",
            )
        if isinstance(tie_radius, bool) or not isinstance(tie_radius, int) or tie_radius < 0:
            raise MazeConfigError(
                f"tie_radius must be a non-negative integer, got {tie_radius!r}.",
                hint="0 switches the Gold-proximity tie-break off.",
            )
        self.horizon = horizon
        self.tie_radius = tie_radius

    def best_first_moves(self, env: MazeEnv) -> tuple[list[Action], float]:
        """The first moves of the best sequences, and their planned value.

        Among the sequences with the best return, those ending with the most Gold within
        ``tie_radius`` tiles (Chebyshev) of their final cell are preferred: a tie-break only,
        so the return is unchanged, but it steers a search that sees no Gold towards some.
        """
        h = max(1, min(self.horizon, env.turns_left))
        grid = env.grid
        first, values, end = plan_values(grid, env.position, h, env.cfg)
        best = float(values.max())
        tied = np.flatnonzero(np.isclose(values, best, rtol=0.0, atol=1e-9))
        if self.tie_radius > 0 and np.unique(first[tied]).size > 1:
            near = _gold_near(grid, self.tie_radius).reshape(-1)[end[tied]]
            tied = tied[near == near.max()]
        firsts = np.unique(first[tied])
        return [DIRECTIONS[int(c)] for c in firsts], best

    def __call__(self, env: MazeEnv, rng: np.random.Generator) -> str:
        """The first move of a best sequence (ties broken uniformly at random)."""
        moves, _ = self.best_first_moves(env)
        return moves[int(rng.integers(len(moves)))] if len(moves) > 1 else moves[0]

    def __repr__(self) -> str:
        return f"OptimalPolicy(horizon={self.horizon}, tie_radius={self.tie_radius})"


def run_episode(
    policy: Policy,
    cfg: MazeConfig | None = None,
    seed: int = 0,
) -> Trajectory:
    """Play one full episode on the maze of ``seed`` and return it as a trajectory.

    The maze and the episode's wind come from ``seed`` (see :class:`MazeEnv`); the policy's own
    randomness from ``default_rng([seed, POLICY_STREAM])``.
    """
    cfg = cfg if cfg is not None else MazeConfig()
    seed = check_seed(seed)
    env = MazeEnv(cfg, seed)
    rng = np.random.default_rng([seed, POLICY_STREAM])
    while not env.done:
        env.step(policy(env, rng))
    return Trajectory.from_env(env, meta={"policy": repr(policy)})


def _check_episodes(n_episodes: int) -> None:
    if isinstance(n_episodes, bool) or not isinstance(n_episodes, int) or n_episodes < 1:
        raise MazeConfigError(
            f"n_episodes must be a positive integer, got {n_episodes!r}.", hint="E.g. 100."
        )


def policy_trajectories(
    policy: Policy, cfg: MazeConfig | None = None, n_episodes: int = 100, seed: int = 0
) -> list[Trajectory]:
    """``n_episodes`` full episodes on mazes ``seed, seed + 1, ...`` (e.g. SFT data, B-12)."""
    _check_episodes(n_episodes)
    seed = check_seed(seed)
    return [run_episode(policy, cfg, seed + i) for i in range(n_episodes)]


def policy_returns(
    policy: Policy, cfg: MazeConfig | None = None, n_episodes: int = 100, seed: int = 0
) -> NDArray[np.float64]:
    """Episode returns of ``policy`` on mazes ``seed, seed + 1, ...`` (paired across policies)."""
    trajs = policy_trajectories(policy, cfg, n_episodes, seed)
    return np.array([t.total_reward for t in trajs], dtype=np.float64)


def evaluate_policy(
    policy: Policy, cfg: MazeConfig | None = None, n_episodes: int = 100, seed: int = 0
) -> float:
    """Mean episode return of ``policy`` over ``n_episodes`` fresh mazes.

    Example:
        >>> cfg = MazeConfig(size=20, turns=5)
        >>> evaluate_policy(OptimalPolicy(), cfg, 5) > evaluate_policy(RandomPolicy(), cfg, 5)
        True
    """
    return float(policy_returns(policy, cfg, n_episodes, seed).mean())
