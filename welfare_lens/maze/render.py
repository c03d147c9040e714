"""What the model reads: user-turn text, the wind sentence, and windows for people (Appendix K).

The paper's user turn (Appendix K, J.4; reconstruction note A2) is, word for word::

    You are in a maze. Currently, you're at location (X, Y). To the north there is <tile>; to the
    east there is <tile>; to the south there is <tile>; to the west there is <tile>. Where do you
    move? Output only N/E/S/W without punctuation.

(one line). The four "to the ... there is ..." clauses are shuffled each turn (J.4) and the first
one is capitalised; the closing instruction never moves. After a wind push the next user turn
starts with ``"A strong wind from the East blew you West! "``: the source is the side opposite the
push, and the coordinates in the sentence after it are the new location (note B-5).

The ``"compact"`` format (``"Neighbours: N <tile>, E <tile>, S <tile>, W <tile>"``, no
coordinates, no instruction) is this library's addition for small models, which do not solve the
paper's verbose binding task quickly (DESIGN.md, "Learning signal"). It uses the same clause
shuffling and the same wind sentence.

A neighbour outside the grid (only possible on the outer ring of a small or hand-made maze) is
shown as Mold: the ring's Mold continues beyond the grid, and moving there costs a Mold entry
(see :class:`~welfare_lens.maze.env.MazeEnv`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from welfare_lens.errors import MazeConfigError
from welfare_lens.maze.config import PROMPT_FORMATS, PromptFormat, Tile, TileEmoji
from welfare_lens.maze.directions import (
    DELTAS,
    DIRECTION_NAMES,
    DIRECTIONS,
    OPPOSITE,
    Action,
    Position,
)
from welfare_lens.maze.generate import ASCII_TILES

__all__ = [
    "INSTRUCTION",
    "neighbour_tiles",
    "render_user_message",
    "wind_message",
]

#: The unshuffled closing instruction of every paper-format user turn (Appendix K).
INSTRUCTION = "Where do you move? Output only N/E/S/W without punctuation."


def wind_message(push: Action | str) -> str:
    """The wind sentence for a push in direction ``push`` (Appendix K; note B-5).

    >>> wind_message("W")
    'A strong wind from the East blew you West!'

    The renderer joins it to the rest of the user turn with one space.

    Raises:
        MazeConfigError: if ``push`` is not N, E, S or W.
    """
    if push not in DELTAS:
        raise MazeConfigError(
            f"Unknown wind direction {push!r}.", hint="Use one of 'N', 'E', 'S', 'W'."
        )
    source = OPPOSITE[push]
    return f"A strong wind from the {DIRECTION_NAMES[source]} blew you {DIRECTION_NAMES[push]}!"


def neighbour_tiles(grid: NDArray[np.int8], position: Position) -> tuple[Tile, Tile, Tile, Tile]:
    """Tiles to the N, E, S and W of ``position``; off-grid neighbours count as Mold."""
    x, y = position
    h, w = grid.shape
    out: list[Tile] = []
    for d in DIRECTIONS:
        dx, dy = DELTAS[d]
        nx, ny = x + dx, y + dy
        out.append(Tile(int(grid[ny, nx])) if 0 <= nx < w and 0 <= ny < h else Tile.MOLD)
    return (out[0], out[1], out[2], out[3])


def _check_order(order: Sequence[str]) -> tuple[str, ...]:
    order = tuple(order)
    if sorted(order) != sorted(DIRECTIONS):
        raise MazeConfigError(
            f"Clause order must be a permutation of N, E, S, W, got {order!r}.",
            hint="E.g. ('N', 'E', 'S', 'W') (the unshuffled paper order).",
        )
    return order


def render_user_message(
    neighbours: Sequence[Tile | int],
    position: Position,
    *,
    emoji: TileEmoji | None = None,
    prompt_format: PromptFormat = "paper",
    order: Sequence[str] = DIRECTIONS,
    wind: Action | str | None = None,
) -> str:
    """Render one user turn (Appendix K template, or the compact format).

    Args:
        neighbours: Tiles to the N, E, S and W, in that order (whatever ``order`` is).
        position: The agent's ``(x, y)``, shown as ``(X, Y)`` in the paper format.
        emoji: Tile symbols; the paper's trio by default.
        prompt_format: ``"paper"`` or ``"compact"``.
        order: Order of the four neighbour clauses (a permutation of N, E, S, W).
        wind: Direction of a wind push in the previous turn, which prefixes the wind sentence.

    Returns:
        The user message text.

    Raises:
        MazeConfigError: on an unknown format, a bad order or wind direction.

    Example:
        >>> from welfare_lens.maze.config import Tile
        >>> render_user_message([Tile.PATH] * 4, (50, 49), emoji=TileEmoji.letters())
        "You are in a maze. Currently, you're at location (50, 49). To the north there is C; \
to the east there is C; to the south there is C; to the west there is C. Where do you move? \
Output only N/E/S/W without punctuation."
    """
    emoji = emoji if emoji is not None else TileEmoji.paper()
    if len(neighbours) != 4:
        raise MazeConfigError(
            f"Need 4 neighbour tiles (N, E, S, W), got {len(neighbours)}.",
            hint="Use neighbour_tiles(grid, position).",
        )
    order = _check_order(order)
    sym: dict[str, str] = {d: emoji.symbol(t) for d, t in zip(DIRECTIONS, neighbours, strict=True)}
    if prompt_format == "paper":
        clauses = [f"to the {DIRECTION_NAMES[d].lower()} there is {sym[d]}" for d in order]
        body = "; ".join(clauses)
        body = body[0].upper() + body[1:]
        x, y = position
        text = f"You are in a maze. Currently, you're at location ({x}, {y}). {body}. {INSTRUCTION}"
    elif prompt_format == "compact":
        text = "Neighbours: " + ", ".join(f"{d} {sym[d]}" for d in order)
    else:
        raise MazeConfigError(
            f"Unknown prompt_format {prompt_format!r}.", hint=f"Use one of {PROMPT_FORMATS}."
        )
    if wind is not None:
        text = f"{wind_message(wind)} {text}"
    return text


def window_text(
    grid: NDArray[np.int8],
    centre: Position,
    radius: int,
    *,
    style: str = "emoji",
    emoji: TileEmoji | None = None,
    agent: str | None = None,
) -> str:
    """Text picture of the ``(2 * radius + 1)``-square window around ``centre`` (north up).

    Used by :func:`welfare_lens.maze.render_window`; see there.
    """
    if not isinstance(radius, int) or isinstance(radius, bool) or radius < 0:
        raise MazeConfigError(
            f"radius must be a non-negative integer, got {radius!r}.", hint="E.g. radius=3."
        )
    if style not in ("emoji", "ascii"):
        raise MazeConfigError(f"Unknown style {style!r}.", hint="Use 'emoji' or 'ascii'.")
    emoji = emoji if emoji is not None else TileEmoji.paper()
    if style == "emoji":
        symbols = {t: emoji.symbol(t) for t in Tile}
        blank, me = "  ", agent if agent is not None else "\U0001f916"
    else:
        symbols = dict(ASCII_TILES)
        blank, me = " ", agent if agent is not None else "@"
    h, w = grid.shape
    cx, cy = centre
    lines = []
    for y in range(cy - radius, cy + radius + 1):
        row = []
        for x in range(cx - radius, cx + radius + 1):
            if (x, y) == (cx, cy):
                row.append(me)
            elif 0 <= x < w and 0 <= y < h:
                row.append(symbols[Tile(int(grid[y, x]))])
            else:
                row.append(blank)
        lines.append("".join(row))
    return "\n".join(lines)
