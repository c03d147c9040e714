"""The maze episode: moves, wind, melting, rewards and the conversation (Appendix K, J.3, Q.1).

Rules, with the paper's source for each and this library's choices where the paper is silent:

* **Turns.** An episode is exactly ``cfg.turns`` turns (15; A2). Each turn the model reads one user
  message and replies; after the last turn there is no further user message.
* **Moves.** N is ``y - 1``, S is ``y + 1``, W is ``x - 1``, E is ``x + 1`` (Appendix K).
* **Reward.** ``r_t = -0.1 + 20 * gold_consumed_t - 10 * mold_entered_t`` (Q.1): the step cost is
  paid once per turn, and every tile entered during the turn (the chosen one and, with wind, the
  pushed-to one) adds its tile reward. Entering a Gold tile consumes it: it becomes Path under
  the agent.
* **Melting.** With ``cfg.melt`` a tile turns into Mold as soon as the agent leaves it, Gold and
  wind-forced moves included (J.3). Coming back onto it is a Mold entry (note B-5).
* **Wind.** With probability ``cfg.wind_p`` per turn, after the chosen move the wind pushes the
  agent one more tile in a uniformly random direction (the Appendix K form, note B-5); both tiles
  count toward that turn's reward and the step cost is paid once. The next user message starts
  with ``"A strong wind from the <source> blew you <push>! "``.
* **Border.** The agent never leaves the grid. Beyond the outer Mold ring there is more Mold that
  cannot be entered: neighbours off the grid are shown as Mold, and a move off the grid
  *bounces* -- the agent stays put, its tile does not melt, and the turn counts one Mold entry
  (-10), so every direction shown as Mold costs the same. A wind push off the grid is cancelled
  (no movement, no reward, no wind sentence), as in the released game code (see
  :mod:`welfare_lens.maze.generate`). At the paper's size none of this can happen: the start is
  near the centre of a 98x98 interior and 15 turns (plus at most 15 wind pushes) cannot reach
  the ring.
* **Invalid replies.** The paper never sees one (sampling is masked to N/E/S/W, section 2.2).
  Here a reply that :func:`~welfare_lens.maze.directions.parse_action` cannot read is an
  invalid action: the agent stays where it is, its tile does not melt, it pays the step cost
  only, and the turn counts. The wind still blows (it is drawn independently of the reply).
  The reply is kept verbatim in the conversation.

Randomness: the wind flag, wind direction and clause order of every turn are drawn when the
episode starts (with ``cfg.shuffle_scope == "episode"`` the first turn's order is reused), from ``numpy.random.default_rng([episode_seed, 1])``, in that order and whatever
the config's ``wind_p`` and ``shuffle``. The same seed therefore replays the same episode, and two
policies on the same seed face the same wind.
"""

from __future__ import annotations

import copy as _copy
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from welfare_lens.errors import DataError, MazeConfigError
from welfare_lens.maze.config import MazeConfig, Tile
from welfare_lens.maze.directions import (
    DELTAS,
    DIRECTIONS,
    OPPOSITE,
    Action,
    Position,
    parse_action,
)
from welfare_lens.maze.generate import Maze, check_seed, generate_maze
from welfare_lens.maze.render import (
    neighbour_tiles,
    render_user_message,
    wind_message,
    window_text,
)

__all__ = [
    "EPISODE_STREAM",
    "MazeEnv",
    "StepResult",
    "TileEvent",
    "WindEvent",
    "WindOverride",
]

#: Second entropy word of an episode's random stream: ``default_rng([episode_seed, 1])``.
EPISODE_STREAM = 1

WindOverride = Literal["auto", "N", "E", "S", "W"] | None
Neighbours = tuple[Tile, Tile, Tile, Tile]


@dataclass(frozen=True)
class TileEvent:
    """One tile the agent entered (or bounced on) during a turn.

    Attributes:
        kind: ``"enter"`` for a real move, ``"bounce"`` for a move off the grid (the agent stayed).
        cause: ``"move"`` (the chosen direction) or ``"wind"``.
        position: The tile entered; for a bounce, the agent's own position.
        tile: Class of the tile entered (before consumption); Mold for a bounce.
        reward: Its tile reward (``+20`` Gold, ``-10`` Mold, ``0`` Path by default).
    """

    kind: Literal["enter", "bounce"]
    cause: Literal["move", "wind"]
    position: Position
    tile: Tile
    reward: float


@dataclass(frozen=True)
class WindEvent:
    """A wind push in some turn (Appendix K form).

    Attributes:
        push: Direction the agent was pushed.
        source: Direction the wind came from (opposite of ``push``).
        blocked: ``True`` if the push would have left the grid and was cancelled.
        message: The wind sentence prefixed to the next user turn (``None`` when blocked).
    """

    push: Action
    source: Action
    blocked: bool
    message: str | None


@dataclass(frozen=True)
class StepResult:
    """Everything that happened in one turn.

    Attributes:
        turn: 1-based number of the turn just played.
        reply: The reply as given (kept verbatim in the conversation).
        action: The direction read from it, or ``None`` for an invalid reply.
        neighbours: Tiles N, E, S, W as shown in this turn's user message.
        order: Clause order of this turn's user message.
        previous_position: ``(x, y)`` before the turn.
        position: ``(x, y)`` after the turn (after the wind, if any).
        events: Tiles entered, in order (chosen move first, then wind).
        wind: The wind push, if one was drawn (or forced) this turn.
        gold_consumed: Gold tiles consumed this turn.
        mold_entered: Mold tiles entered this turn (bounces included).
        reward: ``reward_step + sum(event.reward)``.
        done: Whether this was the last turn.
        next_message: The next user message, or ``None`` after the last turn.
    """

    turn: int
    reply: str
    action: Action | None
    neighbours: Neighbours
    order: tuple[str, ...]
    previous_position: Position
    position: Position
    events: tuple[TileEvent, ...]
    wind: WindEvent | None
    gold_consumed: int
    mold_entered: int
    reward: float
    done: bool
    next_message: str | None

    @property
    def valid(self) -> bool:
        """Whether the reply was a direction."""
        return self.action is not None


class MazeEnv:
    """A multi-turn maze episode that renders the paper's conversation (no system prompt).

    See the module docstring for every rule. The conversation is a list of
    ``{"role": "user" | "assistant", "content": str}`` dicts, ready for
    :func:`welfare_lens.chat.render_chat`.

    Args:
        cfg: Episode and rendering settings; ``MazeConfig()`` by default. ``cfg.size`` is only
            used to generate a maze from a seed; a given :class:`Maze` keeps its own shape.
        maze: A :class:`Maze`, or a seed to generate one with :func:`generate_maze`.
        episode_seed: Seed of the wind and clause-order draws; the maze's seed by default
            (0 for a hand-made maze without one).

    Raises:
        MazeConfigError: if ``maze`` is neither a Maze nor a non-negative integer.

    Example:
        >>> env = MazeEnv(MazeConfig(size=20, wind_p=0.0), 7)
        >>> first = env.user_message
        >>> result = env.step("N")
        >>> len(env.messages), result.turn
        (3, 1)
    """

    def __init__(
        self,
        cfg: MazeConfig | None = None,
        maze: Maze | int = 0,
        *,
        episode_seed: int | None = None,
    ) -> None:
        self.cfg = cfg if cfg is not None else MazeConfig()
        if not isinstance(self.cfg, MazeConfig):
            raise MazeConfigError(
                f"cfg must be a MazeConfig, got {type(self.cfg).__name__}.",
                hint="Pass MazeConfig(...) or None for the paper's defaults.",
            )
        if isinstance(maze, Maze):
            self.maze = maze
        else:
            self.maze = generate_maze(self.cfg, check_seed(maze, "maze seed"))
        if episode_seed is None:
            episode_seed = self.maze.seed if self.maze.seed is not None else 0
        self.episode_seed = check_seed(episode_seed, "episode_seed")
        rng = np.random.default_rng([self.episode_seed, EPISODE_STREAM])
        turns = self.cfg.turns
        self._wind_u = rng.random(turns)
        self._wind_dir = rng.integers(0, 4, size=turns)
        orders = rng.permuted(np.tile(np.arange(4), (turns, 1)), axis=1)
        if self.cfg.shuffle and self.cfg.shuffle_scope == "episode":
            self._orders = [tuple(DIRECTIONS[i] for i in orders[0])] * turns
        elif self.cfg.shuffle:
            self._orders = [tuple(DIRECTIONS[i] for i in row) for row in orders]
        else:
            self._orders = [tuple(DIRECTIONS)] * turns
        self.reset()

    # ------------------------------------------------------------------ state

    def reset(self) -> str:
        """Restart the same episode (same maze, wind and clause orders); return the first prompt."""
        self._grid: NDArray[np.int8] = self.maze.grid.copy()
        self._grid.setflags(write=True)
        self._pos: Position = self.maze.start
        self._turn = 0
        self._total = 0.0
        self._history: list[StepResult] = []
        self._user_message: str | None = self._render(None)
        self._messages: list[dict[str, str]] = [{"role": "user", "content": self._user_message}]
        return self._user_message

    @property
    def grid(self) -> NDArray[np.int8]:
        """Current tiles (melted and consumed ones included), a read-only view ``[y, x]``."""
        view = self._grid.view()
        view.setflags(write=False)
        return view

    @property
    def position(self) -> Position:
        """The agent's ``(x, y)``."""
        return self._pos

    @property
    def turn(self) -> int:
        """Number of turns played so far."""
        return self._turn

    @property
    def turns_left(self) -> int:
        """Turns still to play."""
        return self.cfg.turns - self._turn

    @property
    def done(self) -> bool:
        """Whether all ``cfg.turns`` turns have been played."""
        return self._turn >= self.cfg.turns

    @property
    def total_reward(self) -> float:
        """Sum of the rewards so far (the episode return once done)."""
        return self._total

    @property
    def history(self) -> list[StepResult]:
        """One :class:`StepResult` per turn played."""
        return list(self._history)

    @property
    def messages(self) -> list[dict[str, str]]:
        """The conversation so far (a copy); no system prompt (Appendix K)."""
        return [dict(m) for m in self._messages]

    @property
    def user_message(self) -> str | None:
        """The user message awaiting a reply, ``None`` once the episode is done."""
        return self._user_message

    def neighbours(self) -> Neighbours:
        """Tiles N, E, S, W of the agent now (off-grid ones count as Mold)."""
        return neighbour_tiles(self._grid, self._pos)

    def window(self, radius: int = 3, style: str = "emoji") -> str:
        """Text picture of the tiles around the agent; see :func:`render_window`."""
        return window_text(self._grid, self._pos, radius, style=style, emoji=self.cfg.emoji)

    def copy(self) -> MazeEnv:
        """An independent copy (for look-ahead search or branching)."""
        new = _copy.copy(self)
        new._grid = self._grid.copy()
        new._history = list(self._history)
        new._messages = [dict(m) for m in self._messages]
        return new

    # ------------------------------------------------------------------ dynamics

    def _render(self, wind: Action | None) -> str:
        return render_user_message(
            self.neighbours(),
            self._pos,
            emoji=self.cfg.emoji,
            prompt_format=self.cfg.prompt_format,
            order=self._orders[self._turn],
            wind=wind,
        )

    def _in_grid(self, x: int, y: int) -> bool:
        h, w = self._grid.shape
        return bool(0 <= x < w and 0 <= y < h)

    def _move(self, direction: Action, cause: Literal["move", "wind"]) -> TileEvent:
        x, y = self._pos
        dx, dy = DELTAS[direction]
        nx, ny = x + dx, y + dy
        if not self._in_grid(nx, ny):
            return TileEvent("bounce", cause, (x, y), Tile.MOLD, float(self.cfg.reward_mold))
        if self.cfg.melt:
            self._grid[y, x] = Tile.MOLD
        tile = Tile(int(self._grid[ny, nx]))
        if tile is Tile.GOLD:
            self._grid[ny, nx] = Tile.PATH
        self._pos = (nx, ny)
        return TileEvent("enter", cause, (nx, ny), tile, float(self.cfg.tile_reward(tile)))

    def step(self, reply: str, *, wind: WindOverride = "auto") -> StepResult:
        """Play one turn with the model's reply.

        Args:
            reply: The assistant's reply, e.g. ``"N"``; anything :func:`parse_action` rejects is
                an invalid action (the agent stays; see the module docstring).
            wind: ``"auto"`` uses the episode's own draw; ``None`` forces no wind this turn; a
                direction forces a push that way (for tests, hand-worked examples and
                constructed trajectories). The episode's draws are not consumed differently.

        Returns:
            The :class:`StepResult` of the turn.

        Raises:
            DataError: if the episode is already over.
            MazeConfigError: if ``wind`` is not ``"auto"``, ``None`` or a direction.
        """
        if self.done:
            raise DataError(
                f"The episode is over: all {self.cfg.turns} turns have been played.",
                hint="Call reset() to replay it, or build a new MazeEnv for a new maze.",
            )
        if wind is not None and wind != "auto" and wind not in DELTAS:
            raise MazeConfigError(
                f"wind must be 'auto', None or one of N/E/S/W, got {wind!r}.",
                hint="Use wind='auto' to draw it with probability cfg.wind_p.",
            )
        t = self._turn
        text = reply if isinstance(reply, str) else ("" if reply is None else str(reply))
        action = parse_action(text)
        seen = self.neighbours()
        order = self._orders[t]
        before = self._pos
        events: list[TileEvent] = []
        if action is not None:
            events.append(self._move(action, "move"))

        push: Action | None
        if wind == "auto":
            blows = self._wind_u[t] < self.cfg.wind_p
            push = DIRECTIONS[int(self._wind_dir[t])] if blows else None
        else:
            push = wind
        wind_event: WindEvent | None = None
        if push is not None:
            dx, dy = DELTAS[push]
            blocked = not self._in_grid(self._pos[0] + dx, self._pos[1] + dy)
            if not blocked:
                events.append(self._move(push, "wind"))
            wind_event = WindEvent(
                push=push,
                source=OPPOSITE[push],
                blocked=blocked,
                message=None if blocked else wind_message(push),
            )

        reward = float(self.cfg.reward_step)
        for e in events:
            reward += e.reward
        gold = sum(1 for e in events if e.tile is Tile.GOLD)
        mold = sum(1 for e in events if e.tile is Tile.MOLD)
        self._turn += 1
        self._total += reward
        self._messages.append({"role": "assistant", "content": text})
        next_message: str | None = None
        if not self.done:
            shown = push if wind_event is not None and not wind_event.blocked else None
            next_message = self._render(shown)
            self._messages.append({"role": "user", "content": next_message})
        self._user_message = next_message
        result = StepResult(
            turn=t + 1,
            reply=text,
            action=action,
            neighbours=seen,
            order=order,
            previous_position=before,
            position=self._pos,
            events=tuple(events),
            wind=wind_event,
            gold_consumed=gold,
            mold_entered=mold,
            reward=reward,
            done=self.done,
            next_message=next_message,
        )
        self._history.append(result)
        return result

    def __repr__(self) -> str:
        return (
            f"MazeEnv(size={self.maze.width}x{self.maze.height}, seed={self.maze.seed}, "
            f"turn={self._turn}/{self.cfg.turns}, position={self._pos}, "
            f"return={self._total:+.1f})"
        )
