"""Maze generation (paper Appendix J.1; reconstruction note A2 "Layout and generation").

A maze is a square grid of tiles with an outer ring of Mold. Generation, in the paper's order:

1. The interior (everything inside the ring) starts as all Mold.
2. A random walk of ``U{5 * (size - 2), ..., 15 * (size - 2)}`` steps (490 to 1,470 at the
   paper's size) starts from a uniformly random interior cell and turns every visited cell (the
   first one included) into Path. Each step goes to a uniformly random neighbour *inside the
   interior* (at the interior's edge the walker picks among the 3, or in a corner 2, neighbours
   that stay inside), as in the authors' released generator.
3. The interior Mold fraction is forced into ``[lower, upper)`` (paper: ``[10%, 50%)``): if the
   Mold count lies outside the allowed range, a target count is drawn uniformly from that range
   and uniformly chosen cells are flipped (Mold to Path, or Path to Mold) to reach it. The paper
   text says only "until the fraction is in range"; the released generator draws the target
   uniformly, so interior Mold fractions are spread over 10-50% rather than piled up at 50%.
   At the paper's size the walk covers at most 1,471 of the 9,604 interior cells, so the
   first case always applies.
4. ``max(1, floor(gold_fraction * n_mold))`` Gold tiles are placed on uniformly chosen Path
   cells, with ``n_mold`` the interior Mold count after step 3.
5. The start is the Path cell nearest the grid centre ``(size // 2, size // 2)`` under a
   breadth-first search over the whole grid that expands neighbours in N, S, E, W order (the
   released generator's order), so at equal distance the cell found first wins. The paper's
   Appendix K example starts at (50, 49), one step north of the centre (50, 50).

"Released generator" means the maze code that third-party reproductions import as the paper's
upstream implementation (its tile names are LAVA/GOAL/PATH); the official repository could not be
fetched, so treat these three choices as the best evidence available, not as the paper's text.

Every random draw comes from ``numpy.random.default_rng(seed)`` in a fixed order (walk origin,
walk length, walk moves, Mold target, flips, Gold cells), so the same seed gives the same maze bit
for bit on every platform numpy supports.

The walk is vectorised: "a uniformly random valid neighbour" is the same distribution as "a
uniformly random direction, redrawn while invalid", i.e. a walk clipped to the interior with the
clipped (stay-in-place) draws dropped. :func:`clipped_walk` computes the clipped walk with a
parallel scan instead of a Python loop.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from welfare_lens.errors import MazeConfigError
from welfare_lens.maze.config import MazeConfig, Tile
from welfare_lens.maze.directions import DELTAS, DIRECTIONS, Position

__all__ = [
    "ASCII_TILES",
    "Maze",
    "check_seed",
    "clipped_walk",
    "generate_maze",
    "nearest_path_bfs",
]

#: Characters of :meth:`Maze.from_strings` / :meth:`Maze.to_strings` and ASCII windows.
ASCII_TILES: dict[Tile, str] = {Tile.MOLD: "#", Tile.GOLD: "$", Tile.PATH: "."}
_ASCII_IN: dict[str, Tile] = {"#": Tile.MOLD, "$": Tile.GOLD, "G": Tile.GOLD, ".": Tile.PATH}

# Neighbour order of the start-cell BFS (the released generator's N, S, E, W).
_BFS_ORDER = ("N", "S", "E", "W")

# Move codes 0..3 are N, E, S, W (DIRECTIONS order): x and y deltas.
_DX = np.array([DELTAS[d][0] for d in DIRECTIONS], dtype=np.int32)
_DY = np.array([DELTAS[d][1] for d in DIRECTIONS], dtype=np.int32)


def check_seed(seed: object, name: str = "seed") -> int:
    """Return ``seed`` as an int, or raise if it cannot seed ``numpy.random.default_rng``.

    Raises:
        MazeConfigError: if ``seed`` is not a non-negative integer.
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or int(seed) < 0:
        raise MazeConfigError(
            f"{name} must be a non-negative integer, got {seed!r}.",
            hint="Pass e.g. seed=0; the paper's extraction set starts at seed=474747.",
        )
    return int(seed)


@dataclass(frozen=True, eq=False)
class Maze:
    """A generated (or hand-made) maze: the tile grid, the start cell and the seed.

    Args:
        grid: ``int8`` array ``[H, W]`` of :class:`~welfare_lens.maze.config.Tile` values,
            indexed ``grid[y, x]``. Copied and made read-only.
        start: Start cell ``(x, y)``.
        seed: Seed it was generated from, ``None`` for a hand-made maze.

    Raises:
        MazeConfigError: if the grid is not 2-D, holds values other than 0/1/2, or ``start``
            lies outside it.
    """

    grid: NDArray[np.int8]
    start: Position
    seed: int | None = None

    def __post_init__(self) -> None:
        arr = np.asarray(self.grid)
        if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
            raise MazeConfigError(
                f"A maze grid must be a non-empty 2-D array, got shape {arr.shape}.",
                hint="Pass grid[y, x] as an int8 array of Tile values.",
            )
        if arr.size and (arr.min() < 0 or arr.max() > 2):
            raise MazeConfigError(
                "A maze grid may only hold Tile values 0 (Mold), 1 (Gold) and 2 (Path).",
                hint="Build it with Maze.from_strings or from Tile values.",
            )
        grid = np.array(arr, dtype=np.int8, copy=True)
        grid.setflags(write=False)
        object.__setattr__(self, "grid", grid)
        x, y = int(self.start[0]), int(self.start[1])
        if not (0 <= x < grid.shape[1] and 0 <= y < grid.shape[0]):
            raise MazeConfigError(
                f"Start {self.start!r} is outside the {grid.shape[1]}x{grid.shape[0]} grid.",
                hint="Give start as (x, y) with 0 <= x < width and 0 <= y < height.",
            )
        object.__setattr__(self, "start", (x, y))

    @property
    def height(self) -> int:
        """Number of rows (``H``)."""
        return int(self.grid.shape[0])

    @property
    def width(self) -> int:
        """Number of columns (``W``)."""
        return int(self.grid.shape[1])

    def tile(self, x: int, y: int) -> Tile:
        """The tile at ``(x, y)``."""
        return Tile(int(self.grid[y, x]))

    def counts(self, interior: bool = True) -> dict[str, int]:
        """Tile counts by class name, over the interior (default) or the whole grid."""
        g = self.grid[1:-1, 1:-1] if interior else self.grid
        return {t.class_name: int(np.count_nonzero(g == t)) for t in Tile}

    @property
    def interior_mold_fraction(self) -> float:
        """Share of interior cells that are Mold (Appendix J.1 keeps it in ``[0.1, 0.5)``)."""
        g = self.grid[1:-1, 1:-1]
        return float(np.count_nonzero(g == Tile.MOLD)) / max(1, g.size)

    def to_strings(self) -> list[str]:
        """One string per row: ``#`` Mold, ``$`` Gold, ``.`` Path, ``@`` the start (a Path)."""
        rows = []
        for y in range(self.height):
            row = [ASCII_TILES[Tile(int(v))] for v in self.grid[y]]
            if y == self.start[1]:
                row[self.start[0]] = "@"
            rows.append("".join(row))
        return rows

    @classmethod
    def from_strings(
        cls, rows: Sequence[str], start: Position | None = None, seed: int | None = None
    ) -> Maze:
        """Build a hand-made maze from rows of ``#`` (Mold), ``$``/``G`` (Gold), ``.`` (Path).

        ``@`` marks the start and stands on Path. Hand-made mazes need no Mold ring, but an
        agent on the edge that moves off the grid bounces (see :class:`MazeEnv`).

        Args:
            rows: Equal-length strings, top row (``y = 0``) first.
            start: Start ``(x, y)``; required unless one cell is ``@``.
            seed: Recorded on the maze, not used.

        Raises:
            MazeConfigError: on ragged rows, unknown characters, or a missing/duplicate start.
        """
        if not rows or len({len(r) for r in rows}) != 1:
            raise MazeConfigError(
                "Maze rows must be a non-empty list of equal-length strings.",
                hint="E.g. ['#####', '#.$.#', '#.@.#', '#...#', '#####'].",
            )
        grid = np.zeros((len(rows), len(rows[0])), dtype=np.int8)
        found: list[Position] = []
        for y, row in enumerate(rows):
            for x, ch in enumerate(row):
                if ch == "@":
                    found.append((x, y))
                    grid[y, x] = Tile.PATH
                elif ch in _ASCII_IN:
                    grid[y, x] = _ASCII_IN[ch]
                else:
                    raise MazeConfigError(
                        f"Unknown maze character {ch!r} at (x={x}, y={y}).",
                        hint="Use '#' Mold, '$' or 'G' Gold, '.' Path, '@' start.",
                    )
        if len(found) > 1:
            raise MazeConfigError(
                f"Several start markers '@' at {found}.", hint="Mark exactly one start cell."
            )
        if start is None:
            if not found:
                raise MazeConfigError(
                    "No start given.", hint="Mark the start with '@' or pass start=(x, y)."
                )
            start = found[0]
        return cls(grid=grid, start=start, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form: rows as strings, start and seed."""
        return {"rows": self.to_strings(), "start": list(self.start), "seed": self.seed}


def clipped_walk(
    x0: int, y0: int, moves: NDArray[np.integer[Any]], lo: int, hi: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Positions of a random walk whose every step is clipped to ``[lo, hi]`` on both axes.

    A step that would leave the box leaves the walker where it is. This is the sequential rule
    ``p_t = clip(p_{t-1} + d_t, lo, hi)``, computed without a Python loop over steps: each step is
    the map ``x -> clip(x + c, a, b)``, such maps are closed under composition
    (``clip(clip(x + c1, a1, b1) + c2, a2, b2) = clip(x + c1 + c2, clip(a1 + c2, a2, b2),
    clip(b1 + c2, a2, b2))``), so all prefixes come out of a log-depth parallel scan.

    Args:
        x0: Start column.
        y0: Start row.
        moves: Move codes 0..3 (N, E, S, W), shape ``[L]``.
        lo: Smallest allowed coordinate (1 for a maze interior).
        hi: Largest allowed coordinate (``size - 2`` for a maze interior).

    Returns:
        ``(xs, ys)``, each of length ``L + 1``, the start included.
    """
    moves = np.asarray(moves)
    xs = _clipped_axis(x0, _DX[moves], lo, hi)
    ys = _clipped_axis(y0, _DY[moves], lo, hi)
    return xs, ys


def _clipped_axis(p0: int, d: NDArray[np.int32], lo: int, hi: int) -> NDArray[np.int64]:
    n = d.shape[0]
    c = d.astype(np.int64)
    a = np.full(n, lo, dtype=np.int64)
    b = np.full(n, hi, dtype=np.int64)
    k = 1
    while k < n:
        # Element i becomes (map i) o (map i-k): the earlier map is applied first.
        c2, a2, b2 = c[k:], a[k:], b[k:]
        new_c = c[:-k] + c2
        new_a = np.minimum(np.maximum(a[:-k] + c2, a2), b2)
        new_b = np.minimum(np.maximum(b[:-k] + c2, a2), b2)
        c[k:], a[k:], b[k:] = new_c, new_a, new_b
        k *= 2
    out = np.empty(n + 1, dtype=np.int64)
    out[0] = p0
    out[1:] = np.minimum(np.maximum(p0 + c, a), b)
    return out


def nearest_path_bfs(grid: NDArray[np.int8], centre: Position | None = None) -> Position:
    """The Path cell nearest ``centre`` under BFS over the whole grid (Appendix J.1).

    The search moves through every tile (Mold included), expanding neighbours in N, S, E, W
    order, and returns the first Path cell it dequeues. Distances are therefore Manhattan
    distances, with ties broken by that expansion order.

    Args:
        grid: ``int8`` ``[H, W]`` tile grid.
        centre: ``(x, y)`` to search from; ``(W // 2, H // 2)`` by default.

    Raises:
        MazeConfigError: if the grid holds no Path cell.
    """
    h, w = grid.shape
    cx, cy = centre if centre is not None else (w // 2, h // 2)
    path = Tile.PATH
    if grid[cy, cx] == path:
        return (int(cx), int(cy))
    seen = np.zeros((h, w), dtype=bool)
    seen[cy, cx] = True
    queue: deque[Position] = deque([(int(cx), int(cy))])
    deltas = [DELTAS[d] for d in _BFS_ORDER]
    while queue:
        x, y = queue.popleft()
        if grid[y, x] == path:
            return (x, y)
        for dx, dy in deltas:
            nx, ny = x + dx, y + dy
            if 0 <= nx < w and 0 <= ny < h and not seen[ny, nx]:
                seen[ny, nx] = True
                queue.append((nx, ny))
    raise MazeConfigError(
        "The grid has no Path cell to start from.",
        hint="Lower mold_fraction_range or gold_fraction so that Path cells remain.",
    )


def _interior_walk(
    rng: np.random.Generator, x0: int, y0: int, n_steps: int, size: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Cells of an ``n_steps``-move walk to uniformly random interior neighbours (start included).

    Draws moves in chunks, clips them to the interior and drops the clipped ones (a rejected
    draw), until ``n_steps`` real moves have been made.
    """
    xs_parts: list[NDArray[np.int64]] = []
    ys_parts: list[NDArray[np.int64]] = []
    x, y, done, need = x0, y0, 0, n_steps
    xs_parts.append(np.array([x0], dtype=np.int64))
    ys_parts.append(np.array([y0], dtype=np.int64))
    while done < n_steps:
        moves = rng.integers(0, 4, size=need, dtype=np.int8)
        xs, ys = clipped_walk(x, y, moves, 1, size - 2)
        moved = (xs[1:] != xs[:-1]) | (ys[1:] != ys[:-1])
        real = np.flatnonzero(moved)
        take = real[: n_steps - done]
        xs_parts.append(xs[1:][take])
        ys_parts.append(ys[1:][take])
        done += len(take)
        x, y = int(xs[-1]), int(ys[-1])
        need = n_steps - done + 16
    return np.concatenate(xs_parts), np.concatenate(ys_parts)


def generate_maze(cfg: MazeConfig | None = None, seed: int = 0) -> Maze:
    """Generate one maze as in Appendix J.1 (see the module docstring for every step).

    Args:
        cfg: Sizes and fractions; ``MazeConfig()`` (the paper's 100x100) by default.
        seed: Non-negative integer; the same seed and config give the same maze bit for bit.

    Returns:
        The :class:`Maze`, with ``grid[y, x]`` in ``int8`` and ``start`` as ``(x, y)``.

    Raises:
        MazeConfigError: if ``seed`` is not a non-negative integer.

    Example:
        >>> m = generate_maze(MazeConfig(size=12), seed=3)
        >>> m.grid.shape, int(m.grid[0].max())
        ((12, 12), 0)
    """
    cfg = cfg if cfg is not None else MazeConfig()
    seed = check_seed(seed)
    rng = np.random.default_rng(seed)
    size = cfg.size
    grid = np.zeros((size, size), dtype=np.int8)  # Tile.MOLD == 0: ring and interior.

    x0, y0 = (int(v) for v in rng.integers(1, size - 1, size=2))
    lo_steps, hi_steps = cfg.walk_steps
    n_steps = int(rng.integers(lo_steps, hi_steps, endpoint=True))
    xs, ys = _interior_walk(rng, x0, y0, n_steps, size)
    grid[ys, xs] = Tile.PATH

    interior = np.ascontiguousarray(grid[1:-1, 1:-1])
    flat = interior.reshape(-1)  # a view of the contiguous copy
    lo_mold, hi_mold = cfg.mold_count_bounds
    n_mold = int(np.count_nonzero(flat == Tile.MOLD))
    if not lo_mold <= n_mold <= hi_mold:
        target = int(rng.integers(lo_mold, hi_mold, endpoint=True))
        if n_mold > target:
            idx = np.flatnonzero(flat == Tile.MOLD)
            flat[rng.choice(idx, n_mold - target, replace=False)] = Tile.PATH
        else:
            idx = np.flatnonzero(flat == Tile.PATH)
            flat[rng.choice(idx, target - n_mold, replace=False)] = Tile.MOLD
        n_mold = target

    n_gold = max(1, math.floor(cfg.gold_fraction * n_mold))
    idx = np.flatnonzero(flat == Tile.PATH)
    flat[rng.choice(idx, n_gold, replace=False)] = Tile.GOLD
    grid[1:-1, 1:-1] = interior
    start = nearest_path_bfs(grid)
    return Maze(grid=grid, start=start, seed=seed)
