"""Maze configuration: tile classes, the emoji that stand for them, and the paper's defaults.

The paper's maze (Appendix J, Appendix K; reconstruction notes A2 and Part C item 1) has three
tile classes, Mold (punished), Gold (rewarded) and Path (neutral). The model only ever sees an
emoji per class, never the class names, so the emoji mapping is part of the configuration: the
robustness controls swap or permute it (Appendix A.1; reconstruction note B-6).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import IntEnum
from typing import Any, Literal

from welfare_lens.errors import MazeConfigError

__all__ = [
    "EMOJI_DESCRIPTIONS",
    "PROMPT_FORMATS",
    "SHUFFLE_SCOPES",
    "MazeConfig",
    "PromptFormat",
    "ShuffleScope",
    "Tile",
    "TileEmoji",
    "TileName",
    "interior_mold_bounds",
]

TileName = Literal["mold", "gold", "path"]
PromptFormat = Literal["paper", "compact"]
PROMPT_FORMATS: tuple[PromptFormat, ...] = ("paper", "compact")
ShuffleScope = Literal["turn", "episode"]
SHUFFLE_SCOPES: tuple[ShuffleScope, ...] = ("turn", "episode")


class Tile(IntEnum):
    """A tile class; the integer is what the maze grid stores (Appendix J.1).

    Mold is 0 so that a freshly allocated ``np.zeros`` grid is the all-Mold interior the
    generator starts from.
    """

    MOLD = 0
    GOLD = 1
    PATH = 2

    @property
    def class_name(self) -> TileName:
        """The lower-case class name used for labels: ``"mold"``, ``"gold"`` or ``"path"``."""
        names: dict[int, TileName] = {0: "mold", 1: "gold", 2: "path"}
        return names[int(self)]

    @classmethod
    def from_name(cls, name: str | Tile) -> Tile:
        """Parse a class name (``"mold"``/``"gold"``/``"path"``, any case) or pass a Tile through.

        Raises:
            MazeConfigError: if the name is not one of the three classes.
        """
        if isinstance(name, Tile):
            return name
        key = str(name).strip().lower()
        for tile in cls:
            if tile.class_name == key:
                return tile
        raise MazeConfigError(
            f"Unknown tile class {name!r}.", hint="Use one of 'mold', 'gold', 'path'."
        )


# English names of the paper's emoji (Appendix J.2 lists them by these CLDR names). The Mold
# emoji is U+1F4C7 card index, not the U+1F5C2 dividers the website renders (note B-1).
EMOJI_DESCRIPTIONS: dict[str, str] = {
    "\U0001f4c7": "card index",
    "\U0001f4d0": "triangular ruler",
    "\U0001f9fe": "receipt",
}


@dataclass(frozen=True)
class TileEmoji:
    """The symbol the model sees for each tile class (Appendix J.2; swap controls in A.1).

    Args:
        mold: Symbol shown for Mold tiles.
        gold: Symbol shown for Gold tiles.
        path: Symbol shown for Path tiles.

    Raises:
        MazeConfigError: if a symbol is empty, not a string, or two classes share a symbol (the
            model could then not tell them apart).
    """

    mold: str
    gold: str
    path: str

    def __post_init__(self) -> None:
        symbols = (self.mold, self.gold, self.path)
        for name, sym in zip(("mold", "gold", "path"), symbols, strict=True):
            if not isinstance(sym, str) or not sym.strip():
                raise MazeConfigError(
                    f"TileEmoji.{name} must be a non-empty string, got {sym!r}.",
                    hint="Pass one emoji or letter per tile class, e.g. TileEmoji.paper().",
                )
        if len(set(symbols)) != 3:
            raise MazeConfigError(
                f"TileEmoji symbols must be distinct, got mold={self.mold!r}, "
                f"gold={self.gold!r}, path={self.path!r}.",
                hint="Give every tile class its own symbol, e.g. TileEmoji.permuted(...).",
            )

    @classmethod
    def paper(cls) -> TileEmoji:
        """The paper's office trio: Mold 📇 (U+1F4C7), Gold 📐 (U+1F4D0), Path 🧾 (U+1F9FE).

        No variation selectors are appended (note B-1: the paper does not show any).
        """
        return cls(mold="\U0001f4c7", gold="\U0001f4d0", path="\U0001f9fe")

    @classmethod
    def swapped(cls) -> TileEmoji:
        """The emoji-swap control (Appendix A.1): Mold shows 📐 and Gold shows 📇."""
        return cls.permuted(("gold", "mold", "path"))

    @classmethod
    def permuted(
        cls, order: Sequence[TileName | Tile | str], base: TileEmoji | None = None
    ) -> TileEmoji:
        """Any reassignment of the three symbols to the three classes (note B-6).

        Args:
            order: For Mold, Gold and Path in that order, the class whose ``base`` symbol it
                takes. ``("gold", "mold", "path")`` is :meth:`swapped`; ``("mold", "gold",
                "path")`` is the identity.
            base: Symbols to permute; the paper's trio by default.

        Raises:
            MazeConfigError: if ``order`` is not a permutation of the three classes.
        """
        src = base if base is not None else cls.paper()
        tiles = [Tile.from_name(o) for o in order]
        if len(tiles) != 3 or set(tiles) != set(Tile):
            raise MazeConfigError(
                f"order must be a permutation of ('mold', 'gold', 'path'), got {tuple(order)!r}.",
                hint="Name each class exactly once, e.g. ('path', 'mold', 'gold').",
            )
        return cls(mold=src.symbol(tiles[0]), gold=src.symbol(tiles[1]), path=src.symbol(tiles[2]))

    @classmethod
    def letters(cls, mold: str = "A", gold: str = "B", path: str = "C") -> TileEmoji:
        """Plain letters as tiles (the letters control of Appendix J.3's north-bias check)."""
        return cls(mold=mold, gold=gold, path=path)

    def symbol(self, tile: Tile | int) -> str:
        """The symbol shown for ``tile``."""
        t = Tile(int(tile))
        return self.mold if t is Tile.MOLD else self.gold if t is Tile.GOLD else self.path

    def tile_of(self, symbol: str) -> Tile:
        """Inverse of :meth:`symbol`.

        Raises:
            MazeConfigError: if no class uses ``symbol``.
        """
        for tile in Tile:
            if self.symbol(tile) == symbol:
                return tile
        raise MazeConfigError(
            f"Symbol {symbol!r} is not used by this mapping.",
            hint=f"Known symbols: {self.mold!r}, {self.gold!r}, {self.path!r}.",
        )

    def describe(self, tile: Tile | int) -> str:
        """An English description of the symbol for ``tile`` ("card index", ...), else the symbol."""
        sym = self.symbol(tile)
        return EMOJI_DESCRIPTIONS.get(sym, sym)

    def to_dict(self) -> dict[str, str]:
        """``{"mold": ..., "gold": ..., "path": ...}``."""
        return {"mold": self.mold, "gold": self.gold, "path": self.path}


def _closest(key: str, valid: Sequence[str]) -> str:
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    return match[0] if match else valid[0]


def _is_int(x: object) -> bool:
    # bool is an int subclass, but size=True is always a mistake.
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def interior_mold_bounds(n_interior: int, lower: float, upper: float) -> tuple[int, int]:
    """Smallest and largest interior Mold count whose fraction lies in ``[lower, upper)``.

    Uses the same float comparisons as the checks in the tests, so rounding (``0.29 * 100`` is
    ``28.999...``) cannot put a maze one tile outside the range.
    """
    lo = max(0, math.ceil(lower * n_interior) - 1)
    while lo <= n_interior and lo / n_interior < lower:
        lo += 1
    hi = min(n_interior, math.ceil(upper * n_interior) + 1)
    while hi >= 0 and not hi / n_interior < upper:
        hi -= 1
    return lo, hi


@dataclass(frozen=True)
class MazeConfig:
    """Everything that defines a maze and an episode; defaults are the paper's (A2, Part C.1).

    Args:
        size: Side of the square grid, outer Mold ring included (paper: 100, interior 98x98).
        turns: Turns per episode; trajectories are always exactly this long (paper: 15).
        walk_steps_range: Inclusive bounds of the generator's random-walk length. ``None`` (the
            default) means ``(5 * (size - 2), 15 * (size - 2))``, i.e. ``(490, 1470)`` at the
            paper's size, scaling with the interior when ``size`` changes (Appendix J.1).
        mold_fraction_range: Target ``[lower, upper)`` interior Mold fraction (paper: 10%-50%).
        gold_fraction: Gold count is ``max(1, floor(gold_fraction * n_interior_mold))``.
        wind_p: Per-turn probability of a wind push (Appendix K; note B-5).
        melt: Whether a tile becomes Mold once the agent leaves it (Appendix J.3).
        shuffle: Whether the four neighbour clauses are shown in random order (Appendix J.4).
        shuffle_scope: ``"turn"`` (default) draws a new clause order for every user turn;
            ``"episode"`` draws one order per episode, as the released SFT-data code
            does. Ignored when ``shuffle`` is False.
        prompt_format: ``"paper"`` (the verbatim Appendix K template) or ``"compact"``.
        reward_gold: Reward per Gold tile consumed (+20).
        reward_mold: Reward per Mold tile entered (-10).
        reward_step: Cost paid once per turn (-0.1).
        emoji: Symbols shown for the three classes.

    Raises:
        MazeConfigError: on any invalid or infeasible value; the message names the field.
    """

    size: int = 100
    turns: int = 15
    walk_steps_range: tuple[int, int] | None = None
    mold_fraction_range: tuple[float, float] = (0.10, 0.50)
    gold_fraction: float = 0.20
    wind_p: float = 0.1
    melt: bool = True
    shuffle: bool = True
    shuffle_scope: ShuffleScope = "turn"
    prompt_format: PromptFormat = "paper"
    reward_gold: float = 20.0
    reward_mold: float = -10.0
    reward_step: float = -0.1
    emoji: TileEmoji = field(default_factory=TileEmoji.paper)

    def __post_init__(self) -> None:
        self._check_ints()
        self._check_fractions()
        self._check_misc()
        self._check_feasible()

    def _check_ints(self) -> None:
        if not _is_int(self.size) or self.size < 5:
            raise MazeConfigError(
                f"size must be an integer >= 5, got {self.size!r}.",
                hint="The grid needs an outer Mold ring and at least a 3x3 interior; "
                "the paper uses size=100.",
            )
        if not _is_int(self.turns) or self.turns < 1:
            raise MazeConfigError(
                f"turns must be an integer >= 1, got {self.turns!r}.",
                hint="The paper uses turns=15 (11 for GPT-OSS-20B).",
            )
        wr = self.walk_steps_range
        if wr is not None:
            if not isinstance(wr, tuple) or len(wr) != 2 or not all(_is_int(v) for v in wr):
                raise MazeConfigError(
                    f"walk_steps_range must be a (low, high) tuple of ints or None, got {wr!r}.",
                    hint="Use None to scale with size: (5*(size-2), 15*(size-2)).",
                )
            if wr[0] < 0 or wr[0] > wr[1]:
                raise MazeConfigError(
                    f"walk_steps_range {wr!r} is empty or negative.",
                    hint="Need 0 <= low <= high (both inclusive), e.g. (490, 1470).",
                )

    def _check_fractions(self) -> None:
        mr = self.mold_fraction_range
        if not isinstance(mr, tuple) or len(mr) != 2 or not all(_is_number(v) for v in mr):
            raise MazeConfigError(
                f"mold_fraction_range must be a (lower, upper) tuple of numbers, got {mr!r}.",
                hint="The paper uses (0.10, 0.50).",
            )
        if not (0.0 <= mr[0] <= 1.0 and 0.0 <= mr[1] <= 1.0):
            raise MazeConfigError(
                f"mold_fraction_range {mr!r} has a fraction outside [0, 1].",
                hint="Fractions are shares of the interior, e.g. (0.10, 0.50).",
            )
        if not mr[0] < mr[1]:
            raise MazeConfigError(
                f"mold_fraction_range {mr!r} is empty: the range is [lower, upper).",
                hint="Need lower < upper, e.g. (0.10, 0.50).",
            )
        if not _is_number(self.gold_fraction) or not 0.0 <= self.gold_fraction <= 1.0:
            raise MazeConfigError(
                f"gold_fraction must be in [0, 1], got {self.gold_fraction!r}.",
                hint="The paper uses 0.20 (Gold = max(1, floor(0.2 * interior Mold cells))).",
            )
        if not _is_number(self.wind_p) or not 0.0 <= self.wind_p <= 1.0:
            raise MazeConfigError(
                f"wind_p must be a probability in [0, 1], got {self.wind_p!r}.",
                hint="The paper uses wind_p=0.1; use 0.0 to switch wind off.",
            )

    def _check_misc(self) -> None:
        for name in ("melt", "shuffle"):
            if not isinstance(getattr(self, name), bool):
                raise MazeConfigError(
                    f"{name} must be True or False, got {getattr(self, name)!r}.",
                    hint=f"Pass {name}=True (paper) or {name}=False.",
                )
        if self.shuffle_scope not in SHUFFLE_SCOPES:
            raise MazeConfigError(
                f"Unknown shuffle_scope {self.shuffle_scope!r}.",
                hint=f"Use one of {SHUFFLE_SCOPES}.",
            )
        if self.prompt_format not in PROMPT_FORMATS:
            raise MazeConfigError(
                f"Unknown prompt_format {self.prompt_format!r}.",
                hint=f"Use one of {PROMPT_FORMATS}.",
            )
        for name in ("reward_gold", "reward_mold", "reward_step"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value):
                raise MazeConfigError(
                    f"{name} must be a finite number, got {value!r}.",
                    hint="Paper: reward_gold=20, reward_mold=-10, reward_step=-0.1.",
                )
        if not isinstance(self.emoji, TileEmoji):
            raise MazeConfigError(
                f"emoji must be a TileEmoji, got {type(self.emoji).__name__}.",
                hint="Use TileEmoji.paper(), .swapped(), .permuted(...) or .letters().",
            )

    def _check_feasible(self) -> None:
        n = self.n_interior
        lo, hi = interior_mold_bounds(n, *self.mold_fraction_range)
        if lo > hi:
            raise MazeConfigError(
                f"No Mold count out of {n} interior cells has a fraction in "
                f"{self.mold_fraction_range!r}.",
                hint="Widen mold_fraction_range or increase size.",
            )
        # The most Mold a maze can have leaves the fewest Path cells; Gold must fit on them and
        # still leave one Path cell for the start.
        gold_max = max(1, math.floor(self.gold_fraction * hi))
        if n - hi - gold_max < 1:
            raise MazeConfigError(
                f"With up to {hi} Mold and {gold_max} Gold tiles in a {n}-cell interior, no "
                "Path cell would be left for the start.",
                hint="Lower mold_fraction_range's upper bound or gold_fraction.",
            )

    @property
    def n_interior(self) -> int:
        """Number of interior cells, ``(size - 2) ** 2``."""
        return (self.size - 2) ** 2

    @property
    def walk_steps(self) -> tuple[int, int]:
        """Resolved inclusive walk-length bounds (see ``walk_steps_range``)."""
        if self.walk_steps_range is not None:
            return self.walk_steps_range
        return 5 * (self.size - 2), 15 * (self.size - 2)

    @property
    def mold_count_bounds(self) -> tuple[int, int]:
        """Smallest and largest interior Mold count allowed by ``mold_fraction_range``."""
        return interior_mold_bounds(self.n_interior, *self.mold_fraction_range)

    def tile_reward(self, tile: Tile | int) -> float:
        """Reward for entering ``tile`` (without the per-turn step cost)."""
        t = Tile(int(tile))
        return self.reward_mold if t is Tile.MOLD else self.reward_gold if t is Tile.GOLD else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (tuples become lists, emoji a dict); inverse of :meth:`from_dict`."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, TileEmoji):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MazeConfig:
        """Build a config from :meth:`to_dict` output (missing keys take the defaults).

        Raises:
            MazeConfigError: on an unknown key (naming the closest valid one) or a bad value.
        """
        valid = [f.name for f in fields(cls)]
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in valid:
                raise MazeConfigError(
                    f"Unknown MazeConfig key {key!r}.",
                    hint=f"Did you mean {_closest(str(key), valid)!r}? Valid keys: {valid}.",
                )
            if key == "emoji" and isinstance(value, Mapping):
                unknown = set(value) - {"mold", "gold", "path"}
                if unknown:
                    bad = sorted(map(str, unknown))[0]
                    raise MazeConfigError(
                        f"Unknown emoji key {bad!r}.",
                        hint=f"Did you mean {_closest(bad, ['mold', 'gold', 'path'])!r}?",
                    )
                missing = [k for k in ("mold", "gold", "path") if k not in value]
                if missing:
                    raise MazeConfigError(
                        f"The emoji mapping lacks the key(s) {missing}.",
                        hint="Give a symbol for each of 'mold', 'gold' and 'path', or leave "
                        "'emoji' out for the paper's trio.",
                    )
                value = TileEmoji(**value)
            elif key in ("walk_steps_range", "mold_fraction_range") and isinstance(value, list):
                value = tuple(value)
            kwargs[key] = value
        return cls(**kwargs)
