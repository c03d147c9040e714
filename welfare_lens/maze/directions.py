"""Compass directions and the parsing of a model's reply into one (Appendix K).

Coordinates are ``(x, y)`` with ``x`` the column and ``y`` the row, so a grid is indexed
``grid[y, x]``. North decreases ``y`` and West decreases ``x``, as in the Appendix K rollout.
"""

from __future__ import annotations

import re
from typing import Literal

__all__ = [
    "DELTAS",
    "DIRECTIONS",
    "DIRECTION_NAMES",
    "OPPOSITE",
    "Action",
    "Position",
    "parse_action",
]

Action = Literal["N", "E", "S", "W"]
Position = tuple[int, int]

# N, E, S, W is the order of the clauses in the unshuffled paper prompt (Appendix K).
DIRECTIONS: tuple[Action, Action, Action, Action] = ("N", "E", "S", "W")
DELTAS: dict[str, Position] = {"N": (0, -1), "E": (1, 0), "S": (0, 1), "W": (-1, 0)}
DIRECTION_NAMES: dict[str, str] = {"N": "North", "E": "East", "S": "South", "W": "West"}
OPPOSITE: dict[str, Action] = {"N": "S", "E": "W", "S": "N", "W": "E"}

_WORDS: dict[str, Action] = {
    **{d.lower(): d for d in DIRECTIONS},
    **{DIRECTION_NAMES[d].lower(): d for d in DIRECTIONS},
}
# Markdown emphasis, quotes, brackets and sentence punctuation a chat model wraps a letter in.
_STRIP = " \t\r\n*_`'\".,;:!?()[]{}<>"
_INNER = re.compile(r"[\s*_`'\".,;:!?()\[\]{}<>]+")


def parse_action(text: str | None) -> Action | None:
    """Read one direction out of a free-text reply, or ``None`` if there is not exactly one.

    Surrounding whitespace, Markdown emphasis and punctuation are stripped, and the rest must be a
    single direction letter or word in any case: ``"N"``, ``"n"``, ``"North"``, ``" N."`` and
    ``"**N**"`` all give ``"N"``. Anything else, including hedges such as ``"N or E"`` or
    ``"N E"``, gives ``None``, which :class:`~welfare_lens.maze.env.MazeEnv` treats as an invalid
    move. The paper avoids the question by masking sampling to the four tokens (A2, §2.2).

    Args:
        text: The assistant's reply.

    Returns:
        ``"N"``, ``"E"``, ``"S"`` or ``"W"``, or ``None``.
    """
    if not isinstance(text, str):
        return None
    core = text.strip(_STRIP)
    if not core or _INNER.search(core):
        # Inner separators mean several words ("N or E", "go N"): refuse to guess.
        return None
    return _WORDS.get(core.lower())
