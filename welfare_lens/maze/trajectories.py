"""Trajectories, and the synthetic off-policy set used to extract the welfare vectors (A4, L.1).

The paper extracts v_Mold and v_Gold from synthetic trajectories, not from the model's own
rollouts (Appendix L.1; reconstruction note A4):

* 5,000 trajectories per class (Mold, Gold, Path), 15,000 in all, with the step count ``n``
  spread evenly over ``1..turns`` (here: trajectory ``i`` of a class has ``n = 1 + i % turns``,
  so counts differ by at most one).
* Each trajectory has its own fresh maze from the training generator; the maze seed starts at
  ``base_seed = 474747`` and is incremented per maze (discarded mazes included). Classes are
  generated one after the other in the order given, so asking for fewer classes does not change
  the trajectories of the others.
* A constrained random walk from the start: the first ``n - 1`` steps go to a uniformly chosen
  adjacent Path tile, and the last step to a uniformly chosen adjacent tile of the target class.
* A maze is discarded if no such walk is found. For Gold it is rejected at once if ``n`` is below
  the optimal path length or the parity does not match: this library rejects it unless some
  Gold tile ``g`` has a shortest Path-only route of length ``d(g) <= n`` with
  ``d(g) = n (mod 2)`` (the grid is bipartite, so a walk of ``n`` steps can only end on tiles of
  that parity). Otherwise up to ``max_attempts`` walks are sampled; the first that succeeds is
  kept (rejection sampling, so the kept walk is the step-uniform walk conditioned on success),
  and the maze is discarded if none does.

What the paper leaves open (note B-9) is configurable: ``melt`` (default: the config's, on in the
paper, so tiles the walk left show as Mold in later prompts and the walk never steps back onto
them), ``shuffle`` (default: the config's) and ``wind`` (default off: the walk is constructed).
With ``wind=True`` each of the first ``n - 1`` steps is followed, with probability
``cfg.wind_p``, by a push in a uniformly random direction that must also land on Path (an
attempt whose push lands elsewhere is rejected); the final step never has wind, so the label
always holds. Trajectories are rendered by replaying the walk in :class:`MazeEnv`, so rewards,
melting and messages are exactly those of a real episode.

Conversations end with the final assistant move (no further user turn); the chat renderer adds
no end-of-turn token after it for extraction (L.1).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from welfare_lens.errors import DataError, MazeConfigError
from welfare_lens.maze.config import MazeConfig, Tile, TileName
from welfare_lens.maze.directions import DELTAS, DIRECTIONS, Action, Position
from welfare_lens.maze.env import MazeEnv
from welfare_lens.maze.generate import Maze, check_seed, generate_maze

__all__ = [
    "PAPER_EXTRACTION_SEED",
    "WALK_STREAM",
    "Trajectory",
    "direction_balance",
    "gold_feasible",
    "synthetic_trajectories",
]

#: ``base_seed`` of the paper's extraction set (Appendix L.1).
PAPER_EXTRACTION_SEED = 474747
#: Second entropy word of a synthetic walk's random stream: ``default_rng([maze_seed, 2])``.
WALK_STREAM = 2

_CLASSES: tuple[TileName, ...] = ("mold", "gold", "path")


@dataclass
class Trajectory:
    """One maze conversation with everything known about it.

    Attributes:
        messages: ``[user_1, assistant_1, ..., user_n, assistant_n]`` as role/content dicts; each
            assistant content is the reply (a direction letter for synthetic trajectories).
        actions: Direction read from each reply (``None`` for an invalid one).
        label: Class of the final tile for synthetic trajectories (``"mold"``, ``"gold"``,
            ``"path"``); ``None`` for policy rollouts.
        n_turns: Number of turns ``n``.
        maze_seed: Seed of the maze (``None`` for a hand-made one).
        rewards: Per-turn rewards (Q.1).
        positions: ``n + 1`` positions ``(x, y)``: the start, then after each turn.
        neighbours: Per turn, the tiles N, E, S, W shown in that turn's user message.
        orders: Per turn, the clause order of that user message.
        winds: Per turn, the wind push direction (``None``: no wind, or a cancelled push).
        tiles_entered: Per turn, the classes of the tiles entered (chosen move, then wind).
        prompt_format: ``"paper"`` or ``"compact"``.
        emoji: The tile-symbol mapping used, ``{"mold": ..., "gold": ..., "path": ...}``.
        meta: Extra facts (e.g. ``attempts`` and ``rejected_before`` for synthetic ones).
    """

    messages: list[dict[str, str]]
    actions: list[Action | None]
    label: TileName | None
    n_turns: int
    maze_seed: int | None
    rewards: list[float]
    positions: list[Position]
    neighbours: list[tuple[int, int, int, int]]
    orders: list[tuple[str, ...]]
    winds: list[Action | None]
    tiles_entered: list[tuple[int, ...]]
    prompt_format: str
    emoji: dict[str, str]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def total_reward(self) -> float:
        """Sum of the per-turn rewards."""
        return float(sum(self.rewards))

    @property
    def final_action(self) -> Action | None:
        """The last move (the token whose activation the paper reads, A4)."""
        return self.actions[-1] if self.actions else None

    @property
    def final_tile(self) -> Tile | None:
        """Class of the tile the final chosen move entered (``None`` if it was invalid)."""
        if not self.tiles_entered or not self.tiles_entered[-1] or self.actions[-1] is None:
            return None
        return Tile(self.tiles_entered[-1][0])

    @classmethod
    def from_env(
        cls, env: MazeEnv, label: TileName | None = None, meta: Mapping[str, Any] | None = None
    ) -> Trajectory:
        """The turns played so far in ``env`` as a trajectory (trailing user turn dropped)."""
        hist = env.history
        n = len(hist)
        if n == 0:
            raise DataError(
                "The environment has not played any turn yet.",
                hint="Call env.step(...) at least once before taking its trajectory.",
            )
        positions = [hist[0].previous_position] + [h.position for h in hist]
        winds: list[Action | None] = [
            h.wind.push if h.wind is not None and not h.wind.blocked else None for h in hist
        ]
        entered: list[tuple[int, ...]] = []
        for h in hist:
            moved = [int(e.tile) for e in h.events if e.cause == "move"]
            entered.append(tuple(moved + [int(e.tile) for e in h.events if e.cause == "wind"]))
        return cls(
            messages=env.messages[: 2 * n],
            actions=[h.action for h in hist],
            label=label,
            n_turns=n,
            maze_seed=env.maze.seed,
            rewards=[h.reward for h in hist],
            positions=positions,
            neighbours=[
                cast(tuple[int, int, int, int], tuple(int(t) for t in h.neighbours)) for h in hist
            ],
            orders=[h.order for h in hist],
            winds=winds,
            tiles_entered=entered,
            prompt_format=env.cfg.prompt_format,
            emoji=env.cfg.emoji.to_dict(),
            meta=dict(meta or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict; inverse of :meth:`from_dict`."""
        return {
            "messages": [dict(m) for m in self.messages],
            "actions": list(self.actions),
            "label": self.label,
            "n_turns": self.n_turns,
            "maze_seed": self.maze_seed,
            "rewards": list(self.rewards),
            "positions": [list(p) for p in self.positions],
            "neighbours": [list(t) for t in self.neighbours],
            "orders": [list(o) for o in self.orders],
            "winds": list(self.winds),
            "tiles_entered": [list(t) for t in self.tiles_entered],
            "prompt_format": self.prompt_format,
            "emoji": dict(self.emoji),
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Trajectory:
        """Rebuild a trajectory from :meth:`to_dict` output.

        Raises:
            DataError: if a field is missing.
        """
        try:
            return cls(
                messages=[dict(m) for m in data["messages"]],
                actions=list(data["actions"]),
                label=data["label"],
                n_turns=int(data["n_turns"]),
                maze_seed=data["maze_seed"],
                rewards=[float(r) for r in data["rewards"]],
                positions=[(int(p[0]), int(p[1])) for p in data["positions"]],
                neighbours=[
                    cast(tuple[int, int, int, int], tuple(int(v) for v in t))
                    for t in data["neighbours"]
                ],
                orders=[tuple(o) for o in data["orders"]],
                winds=list(data["winds"]),
                tiles_entered=[tuple(int(v) for v in t) for t in data["tiles_entered"]],
                prompt_format=str(data["prompt_format"]),
                emoji=dict(data["emoji"]),
                meta=dict(data.get("meta", {})),
            )
        except KeyError as exc:
            raise DataError(
                f"Trajectory data lacks the field {exc.args[0]!r}.",
                hint="Pass the output of Trajectory.to_dict().",
            ) from exc


# ------------------------------------------------------------------------------ helpers


def gold_feasible(grid: NDArray[np.int8], start: Position, n: int) -> bool:
    """The paper's quick Gold rejection test (Appendix L.1), as read by this library.

    ``d(g)`` is the length of the shortest route from ``start`` to Gold tile ``g`` whose
    intermediate tiles are all Path. The maze is kept for step count ``n`` only if some Gold tile
    has ``d(g) <= n`` and ``d(g) = n (mod 2)``; otherwise ``n`` is below the optimal path length
    or has the wrong parity. Only the ``(2n + 1)``-square window around ``start`` is searched.
    """
    h, w = grid.shape
    x, y = start
    x0, x1 = max(0, x - n), min(w, x + n + 1)
    y0, y1 = max(0, y - n), min(h, y + n + 1)
    win = grid[y0:y1, x0:x1]
    path = win == Tile.PATH
    gold = win == Tile.GOLD
    frontier = np.zeros_like(path)
    frontier[y - y0, x - x0] = True
    reached = frontier.copy()
    for d in range(1, n + 1):
        grown = np.zeros_like(frontier)
        grown[1:, :] |= frontier[:-1, :]
        grown[:-1, :] |= frontier[1:, :]
        grown[:, 1:] |= frontier[:, :-1]
        grown[:, :-1] |= frontier[:, 1:]
        new = grown & ~reached
        if (d - n) % 2 == 0 and (new & gold).any():
            return True
        # Only Path tiles can be walked through; Gold ends a route.
        frontier = new & path
        reached |= new
        if not frontier.any():
            return False
    return False


_MOLD, _GOLD, _PATH = int(Tile.MOLD), int(Tile.GOLD), int(Tile.PATH)
_STEPS: tuple[tuple[Action, int, int], ...] = tuple((d, *DELTAS[d]) for d in DIRECTIONS)


def _sample_walk(
    grid: NDArray[np.int8],
    start: Position,
    n: int,
    target: Tile,
    rng: np.random.Generator,
    melt: bool,
    wind_p: float,
) -> tuple[list[Action], list[Action | None]] | None:
    """One attempt at a constrained random walk; ``None`` if it dead-ends."""
    h, w = grid.shape
    g = bytearray(grid.tobytes())  # flat copy, index y * w + x; melting writes here
    x, y = start
    actions: list[Action] = []
    winds: list[Action | None] = []
    final = int(target)
    for step in range(n):
        want = _PATH if step < n - 1 else final
        options = [
            (d, x + dx, y + dy)
            for d, dx, dy in _STEPS
            if 0 <= x + dx < w and 0 <= y + dy < h and g[(y + dy) * w + x + dx] == want
        ]
        if not options:
            return None
        d, nx, ny = options[int(rng.integers(len(options)))] if len(options) > 1 else options[0]
        if melt:
            g[y * w + x] = _MOLD
        x, y = nx, ny
        actions.append(d)
        push: Action | None = None
        if step < n - 1 and wind_p > 0.0 and rng.random() < wind_p:
            push = DIRECTIONS[int(rng.integers(4))]
            px, py = x + DELTAS[push][0], y + DELTAS[push][1]
            if not (0 <= px < w and 0 <= py < h) or g[py * w + px] != _PATH:
                return None
            if melt:
                g[y * w + x] = _MOLD
            x, y = px, py
        winds.append(push)
    return actions, winds


def _check_classes(classes: Iterable[str]) -> tuple[TileName, ...]:
    out: list[TileName] = []
    for c in classes:
        name = Tile.from_name(c).class_name
        if name in out:
            raise MazeConfigError(
                f"Class {name!r} is listed twice in classes.",
                hint="List each of 'mold', 'gold', 'path' at most once.",
            )
        out.append(name)
    if not out:
        raise MazeConfigError(
            "classes is empty.", hint="Use e.g. ('mold', 'gold', 'path') (the paper's set)."
        )
    return tuple(out)


def _check_per_class(per_class: object) -> None:
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 0:
        raise MazeConfigError(
            f"per_class must be a non-negative integer, got {per_class!r}.",
            hint="The paper uses per_class=5000.",
        )


def _check_lengths(lengths: Sequence[int] | None, turns: int) -> list[int]:
    """The step counts to cycle through: ``1..turns`` by default, each checked."""
    lens = list(lengths) if lengths is not None else list(range(1, turns + 1))
    if not lens or any(
        isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= turns for n in lens
    ):
        raise MazeConfigError(
            f"lengths must be integers in 1..{turns} (cfg.turns), got {lens!r}.",
            hint="Leave lengths=None for the paper's balance over 1..turns.",
        )
    return lens


def synthetic_trajectories(
    cfg: MazeConfig | None = None,
    per_class: int = 5000,
    seed: int = PAPER_EXTRACTION_SEED,
    classes: Sequence[TileName | str] = _CLASSES,
    *,
    melt: bool | None = None,
    wind: bool = False,
    shuffle: bool | None = None,
    lengths: Sequence[int] | None = None,
    max_attempts: int = 64,
) -> list[Trajectory]:
    """Synthetic off-policy trajectories for vector extraction (Appendix L.1; notes A4, B-9).

    See the module docstring for the construction and the rejection rules.

    Args:
        cfg: Maze, rendering and reward settings (the training config); paper defaults if None.
        per_class: Trajectories per class (paper: 5,000).
        seed: ``base_seed``; maze ``k`` (discarded ones included) uses ``seed + k``.
        classes: Target classes of the final step, generated in this order.
        melt: Render melting (tiles left turn to Mold); ``cfg.melt`` if None.
        wind: Allow wind pushes on the first ``n - 1`` steps with probability ``cfg.wind_p``.
        shuffle: Shuffle the neighbour clauses; ``cfg.shuffle`` if None.
        lengths: Step counts to cycle through; ``1..cfg.turns`` if None.
        max_attempts: Walks sampled per maze before it is discarded.

    Returns:
        ``per_class * len(classes)`` trajectories, class by class, ``n`` cycling over ``lengths``.

    Raises:
        MazeConfigError: on a bad class, count, length or seed.
        DataError: if 1,000 mazes in a row are discarded (the config cannot produce the class).

    Example:
        >>> trajs = synthetic_trajectories(MazeConfig(size=30), per_class=2, classes=("gold",))
        >>> [t.label for t in trajs], [t.n_turns for t in trajs]
        (['gold', 'gold'], [1, 2])
    """
    cfg = cfg if cfg is not None else MazeConfig()
    names = _check_classes(classes)
    base = check_seed(seed)
    _check_per_class(per_class)
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise MazeConfigError(
            f"max_attempts must be a positive integer, got {max_attempts!r}.",
            hint="E.g. max_attempts=64.",
        )
    lens = _check_lengths(lengths, cfg.turns)
    ecfg = replace(
        cfg,
        melt=cfg.melt if melt is None else bool(melt),
        shuffle=cfg.shuffle if shuffle is None else bool(shuffle),
    )
    wind_p = float(cfg.wind_p) if wind else 0.0

    out: list[Trajectory] = []
    counter = 0
    for name in names:
        target = Tile.from_name(name)
        for i in range(per_class):
            n = lens[i % len(lens)]
            rejected = 0
            while True:
                maze_seed = base + counter
                counter += 1
                maze = generate_maze(cfg, maze_seed)
                walk = None
                attempts = 0
                if target is not Tile.GOLD or gold_feasible(maze.grid, maze.start, n):
                    rng = np.random.default_rng([maze_seed, WALK_STREAM])
                    while walk is None and attempts < max_attempts:
                        attempts += 1
                        walk = _sample_walk(
                            maze.grid, maze.start, n, target, rng, ecfg.melt, wind_p
                        )
                if walk is not None:
                    break
                rejected += 1
                if rejected >= 1000:
                    raise DataError(
                        f"1000 mazes in a row had no {name!r} walk of {n} steps.",
                        hint="Use a larger size, more Path (mold_fraction_range) or Gold, "
                        "or shorter lengths.",
                    )
            out.append(_replay(ecfg, maze, walk, name, attempts, rejected))
    return out


def _replay(
    cfg: MazeConfig,
    maze: Maze,
    walk: tuple[list[Action], list[Action | None]],
    label: TileName,
    attempts: int,
    rejected: int,
) -> Trajectory:
    actions, winds = walk
    env = MazeEnv(cfg, maze)
    for a, push in zip(actions, winds, strict=True):
        env.step(a, wind=push)
    return Trajectory.from_env(
        env, label=label, meta={"attempts": attempts, "rejected_before": rejected}
    )


def direction_balance(
    trajectories: Iterable[Trajectory],
) -> dict[str, dict[str, float]]:
    """Share of each final direction per label (the Appendix L.2 balance check).

    The paper reports about 25% each, e.g. Mold N/E/S/W = 24.54 / 25.10 / 25.38 / 24.98%.

    Returns:
        ``{label: {"N": share, "E": ..., "S": ..., "W": ..., "count": n}}`` with shares in
        ``[0, 1]`` (unlabelled trajectories are grouped under ``"none"``).
    """
    counts: dict[str, dict[str, int]] = {}
    for t in trajectories:
        key: str = t.label if t.label is not None else "none"
        row = counts.setdefault(key, dict.fromkeys(DIRECTIONS, 0))
        a = t.final_action
        if a is not None:
            row[a] += 1
    out: dict[str, dict[str, float]] = {}
    for key, row in counts.items():
        total = sum(row.values())
        shares: dict[str, float] = {d: (row[d] / total if total else 0.0) for d in DIRECTIONS}
        shares["count"] = float(total)
        out[key] = shares
    return out
