"""User-turn text (Appendix K, J.4), windows and figures."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest

from welfare_lens.errors import MazeConfigError
from welfare_lens.maze import (
    INSTRUCTION,
    Maze,
    MazeConfig,
    MazeEnv,
    Tile,
    TileEmoji,
    generate_maze,
    neighbour_tiles,
    plot_maze,
    render_user_message,
    render_window,
    synthetic_trajectories,
    wind_message,
)

M, G, P = "\U0001f4c7", "\U0001f4d0", "\U0001f9fe"
NESW = [Tile.MOLD, Tile.GOLD, Tile.PATH, Tile.PATH]


def test_paper_template_word_for_word() -> None:
    text = render_user_message(NESW, (50, 49))
    assert text == (
        "You are in a maze. Currently, you're at location (50, 49). To the north there is "
        f"{M}; to the east there is {G}; to the south there is {P}; to the west there is {P}. "
        "Where do you move? Output only N/E/S/W without punctuation."
    )
    assert INSTRUCTION == "Where do you move? Output only N/E/S/W without punctuation."


def test_shuffled_clauses_capitalise_the_first_and_keep_the_instruction_last() -> None:
    text = render_user_message(NESW, (3, 4), order=("W", "S", "N", "E"))
    assert text == (
        "You are in a maze. Currently, you're at location (3, 4). To the west there is "
        f"{P}; to the south there is {P}; to the north there is {M}; to the east there is {G}. "
        "Where do you move? Output only N/E/S/W without punctuation."
    )


def test_compact_format_and_letters() -> None:
    text = render_user_message(
        NESW, (1, 1), prompt_format="compact", emoji=TileEmoji.letters(), order=("S", "E", "W", "N")
    )
    assert text == "Neighbours: S C, E B, W C, N A"


def test_swapped_emoji_changes_only_the_symbols() -> None:
    text = render_user_message(NESW, (1, 1), emoji=TileEmoji.swapped())
    assert f"To the north there is {G}; to the east there is {M};" in text


@pytest.mark.parametrize(
    ("push", "sentence"),
    [
        ("W", "A strong wind from the East blew you West!"),
        ("E", "A strong wind from the West blew you East!"),
        ("N", "A strong wind from the South blew you North!"),
        ("S", "A strong wind from the North blew you South!"),
    ],
)
def test_wind_sentence(push: str, sentence: str) -> None:
    assert wind_message(push) == sentence
    text = render_user_message(NESW, (2, 2), wind=push)
    assert text.startswith(sentence + " You are in a maze.")


def test_render_errors() -> None:
    with pytest.raises(MazeConfigError, match="permutation"):
        render_user_message(NESW, (1, 1), order=("N", "N", "S", "W"))
    with pytest.raises(MazeConfigError, match="Need 4"):
        render_user_message(NESW[:3], (1, 1))
    with pytest.raises(MazeConfigError, match="Unknown prompt_format"):
        render_user_message(NESW, (1, 1), prompt_format="long")  # type: ignore[arg-type]
    with pytest.raises(MazeConfigError, match="wind direction"):
        wind_message("NE")


def test_neighbour_tiles_order_and_off_grid() -> None:
    maze = Maze.from_strings(["$.#", ".@.", "#.."])
    assert neighbour_tiles(maze.grid, (1, 1)) == (Tile.PATH, Tile.PATH, Tile.PATH, Tile.PATH)
    assert neighbour_tiles(maze.grid, (0, 0)) == (Tile.MOLD, Tile.PATH, Tile.PATH, Tile.MOLD)


def test_render_window_ascii_and_emoji() -> None:
    maze = Maze.from_strings(["#####", "#.$.#", "#.@.#", "#...#", "#####"])
    assert render_window(maze, 1, style="ascii") == ".$.\n.@.\n..."
    assert render_window(maze, 3, style="ascii").splitlines()[0] == "       "
    assert render_window(maze, 3, style="ascii").splitlines()[1] == " ##### "
    env = MazeEnv(MazeConfig(size=5, turns=2, shuffle=False), maze)
    env.step("N", wind=None)
    assert render_window(env, 1, style="ascii") == "###\n.@.\n.#."
    emo = render_window(env, 1, agent="A")
    assert emo == f"{M}{M}{M}\n{P}A{P}\n{P}{M}{P}"
    with pytest.raises(MazeConfigError, match="radius"):
        render_window(maze, -1)
    with pytest.raises(MazeConfigError, match="Maze or MazeEnv"):
        render_window("maze")  # type: ignore[arg-type]


def test_plot_maze_with_trajectory() -> None:
    cfg = MazeConfig(size=30)
    traj = synthetic_trajectories(cfg, per_class=1, classes=("gold",), lengths=[6], wind=False)[0]
    maze = generate_maze(cfg, traj.maze_seed if traj.maze_seed is not None else 0)
    fig = plot_maze(maze, traj)
    assert isinstance(fig, go.Figure)
    heat = fig.data[0]
    assert isinstance(heat, go.Heatmap)
    assert tuple(heat.z.shape) == (30, 30)
    line = fig.data[1]
    assert list(zip(line.x, line.y, strict=True)) == traj.positions
    assert fig.layout.yaxis.autorange == "reversed"  # north is up
    small = plot_maze(maze, traj, window=2)
    xs, ys = [p[0] for p in traj.positions], [p[1] for p in traj.positions]
    assert small.data[0].z.shape == (
        min(30, max(ys) + 3) - max(0, min(ys) - 2),
        min(30, max(xs) + 3) - max(0, min(xs) - 2),
    )
    env = MazeEnv(MazeConfig(size=20, wind_p=1.0, turns=3), 2)
    for a in "NNE":
        env.step(a)
    fig_env = plot_maze(env, show_current=True)
    names = [d.name for d in fig_env.data]
    assert "trajectory" in names and "wind push" in names
