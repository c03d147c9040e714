"""Pictures of mazes for people: a text window around the agent and a plotly figure.

Neither is shown to the model; the model only reads the user turns of
:mod:`welfare_lens.maze.render`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from welfare_lens.errors import MazeConfigError
from welfare_lens.maze.config import Tile, TileEmoji
from welfare_lens.maze.directions import Position
from welfare_lens.maze.env import MazeEnv
from welfare_lens.maze.generate import Maze
from welfare_lens.maze.render import window_text
from welfare_lens.maze.trajectories import Trajectory

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["TILE_COLOURS", "plot_maze", "render_window"]

#: Colours of the figure's tiles (Mold dark olive, Gold amber, Path light sand).
TILE_COLOURS: dict[Tile, str] = {
    Tile.MOLD: "#4d5a2a",
    Tile.GOLD: "#f2b705",
    Tile.PATH: "#efe6d2",
}


def render_window(
    maze_or_env: Maze | MazeEnv,
    radius: int = 3,
    *,
    style: str = "emoji",
    emoji: TileEmoji | None = None,
    agent: str | None = None,
    centre: Position | None = None,
) -> str:
    """Text picture of the ``(2 * radius + 1)``-square window around the agent, north up.

    Args:
        maze_or_env: An environment (current tiles, agent position) or a maze (initial tiles,
            start cell).
        radius: Cells shown on each side of the centre.
        style: ``"emoji"`` (the config's symbols) or ``"ascii"`` (``#`` Mold, ``$`` Gold,
            ``.`` Path).
        emoji: Symbols for ``style="emoji"``; the environment's, else the paper's.
        agent: Marker of the agent (default ``🤖`` / ``@``).
        centre: Cell to centre on instead of the agent.

    Returns:
        Lines joined by newlines; cells beyond the grid are blank.

    Example:
        >>> m = Maze.from_strings(["#####", "#.$.#", "#.@.#", "#...#", "#####"])
        >>> print(render_window(m, 1, style="ascii"))
        .$.
        .@.
        ...
    """
    if isinstance(maze_or_env, MazeEnv):
        grid = np.asarray(maze_or_env.grid)
        pos = maze_or_env.position
        emoji = emoji if emoji is not None else maze_or_env.cfg.emoji
    elif isinstance(maze_or_env, Maze):
        grid, pos = maze_or_env.grid, maze_or_env.start
    else:
        raise MazeConfigError(
            f"render_window needs a Maze or MazeEnv, got {type(maze_or_env).__name__}.",
            hint="Pass generate_maze(...) or a MazeEnv.",
        )
    return window_text(
        grid, centre if centre is not None else pos, radius, style=style, emoji=emoji, agent=agent
    )


def _positions(trajectory: Trajectory | MazeEnv | Sequence[Position] | None) -> list[Position]:
    if trajectory is None:
        return []
    if isinstance(trajectory, Trajectory):
        return list(trajectory.positions)
    if isinstance(trajectory, MazeEnv):
        hist = trajectory.history
        if not hist:
            return [trajectory.position]
        return [hist[0].previous_position] + [h.position for h in hist]
    return [(int(p[0]), int(p[1])) for p in trajectory]


def _wind_ends(trajectory: object) -> list[Position]:
    if isinstance(trajectory, Trajectory):
        return [trajectory.positions[i + 1] for i, w in enumerate(trajectory.winds) if w]
    if isinstance(trajectory, MazeEnv):
        return [h.position for h in trajectory.history if h.wind is not None and not h.wind.blocked]
    return []


def plot_maze(
    maze_or_env: Maze | MazeEnv,
    trajectory: Trajectory | MazeEnv | Sequence[Position] | None = None,
    *,
    title: str | None = None,
    emoji: TileEmoji | None = None,
    window: int | None = None,
    show_current: bool = False,
) -> go.Figure:
    """A plotly figure of a maze with an optional trajectory drawn on it (north up).

    Args:
        maze_or_env: The maze (its initial tiles are drawn) or an environment (its initial
            maze, or its current tiles with ``show_current=True``).
        trajectory: A :class:`Trajectory`, an environment (its moves so far), or ``(x, y)``
            positions. Drawn as a line through the position after each turn, from the start
            (circle) to the end (star); turns that ended with a wind push get a triangle.
        title: Figure title; a summary by default.
        emoji: Symbols named in the hover text; the environment's or the paper's.
        window: Only show this many cells around the trajectory's bounding box (all if None).
        show_current: For an environment, draw its current (melted, consumed) tiles.

    Returns:
        A ``plotly.graph_objects.Figure``.
    """
    import plotly.graph_objects as go

    if isinstance(maze_or_env, MazeEnv):
        maze = maze_or_env.maze
        grid = np.asarray(maze_or_env.grid) if show_current else maze.grid
        emoji = emoji if emoji is not None else maze_or_env.cfg.emoji
        if trajectory is None:
            trajectory = maze_or_env
    elif isinstance(maze_or_env, Maze):
        maze, grid = maze_or_env, maze_or_env.grid
    else:
        raise MazeConfigError(
            f"plot_maze needs a Maze or MazeEnv, got {type(maze_or_env).__name__}.",
            hint="Pass generate_maze(...) or a MazeEnv.",
        )
    emoji = emoji if emoji is not None else TileEmoji.paper()
    pts = _positions(trajectory)
    h, w = grid.shape
    x0, x1, y0, y1 = 0, w, 0, h
    if window is not None and pts:
        xs_, ys_ = [p[0] for p in pts], [p[1] for p in pts]
        x0, x1 = max(0, min(xs_) - window), min(w, max(xs_) + window + 1)
        y0, y1 = max(0, min(ys_) - window), min(h, max(ys_) + window + 1)
    sub = grid[y0:y1, x0:x1].astype(int)
    names = np.array([f"{t.class_name} {emoji.symbol(t)}" for t in Tile])[sub]
    colours = [TILE_COLOURS[t] for t in Tile]
    scale: list[list[Any]] = []
    for i, c in enumerate(colours):
        scale += [[i / 3, c], [(i + 1) / 3, c]]
    fig = go.Figure(
        go.Heatmap(
            z=sub,
            x=list(range(x0, x1)),
            y=list(range(y0, y1)),
            zmin=-0.5,
            zmax=2.5,
            colorscale=scale,
            showscale=False,
            customdata=names,
            hovertemplate="(%{x}, %{y}) %{customdata}<extra></extra>",
            xgap=0,
            ygap=0,
        )
    )
    if pts:
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in pts],
                y=[p[1] for p in pts],
                mode="lines+markers",
                line={"color": "#c0392b", "width": 2},
                marker={"size": 5, "color": "#c0392b"},
                name="trajectory",
                hovertemplate="turn %{text}: (%{x}, %{y})<extra></extra>",
                text=list(range(len(pts))),
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[pts[0][0]],
                y=[pts[0][1]],
                mode="markers",
                marker={"symbol": "circle", "size": 12, "color": "#2471a3"},
                name="start",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[pts[-1][0]],
                y=[pts[-1][1]],
                mode="markers",
                marker={"symbol": "star", "size": 14, "color": "#c0392b"},
                name="end",
            )
        )
        winds = _wind_ends(trajectory)
        if winds:
            fig.add_trace(
                go.Scatter(
                    x=[p[0] for p in winds],
                    y=[p[1] for p in winds],
                    mode="markers",
                    marker={"symbol": "triangle-up", "size": 11, "color": "#8e44ad"},
                    name="wind push",
                )
            )
    else:
        fig.add_trace(
            go.Scatter(
                x=[maze.start[0]],
                y=[maze.start[1]],
                mode="markers",
                marker={"symbol": "circle", "size": 10, "color": "#2471a3"},
                name="start",
            )
        )
    if title is None:
        counts = maze.counts()
        title = (
            f"Maze seed={maze.seed} ({w}x{h}): {counts['mold']} Mold, {counts['gold']} Gold, "
            f"{counts['path']} Path (interior)"
        )
        if isinstance(trajectory, Trajectory):
            title += f"; trajectory n={trajectory.n_turns}, return {trajectory.total_reward:+.1f}"
    fig.update_layout(
        title=title,
        xaxis={"title": "x", "constrain": "domain"},
        yaxis={"title": "y (N is up)", "autorange": "reversed", "scaleanchor": "x"},
        plot_bgcolor="white",
        legend={"orientation": "h"},
    )
    return fig
