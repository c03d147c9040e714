"""Fuzzing the maze: the action parser, the environment and the config loader.

Two hypothesis profiles are registered here: ``ci`` (200 examples per property, the default)
and ``long`` (10,000 examples), chosen with ``WELFARE_LENS_FUZZ=long``::

    WELFARE_LENS_FUZZ=long .venv/bin/pytest tests/maze/test_fuzz.py --hypothesis-show-statistics

The profile is applied to the properties of this module only (as a ``settings`` decorator), so
loading the module does not change the hypothesis settings of other test modules.
"""

from __future__ import annotations

import math
import os
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from welfare_lens.errors import DataError, MazeConfigError
from welfare_lens.maze import (
    DIRECTION_NAMES,
    DIRECTIONS,
    MazeConfig,
    MazeEnv,
    Tile,
    TileEmoji,
    parse_action,
)

settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "long", max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
PROFILE = "long" if os.environ.get("WELFARE_LENS_FUZZ") == "long" else "ci"
FUZZ = settings.get_profile(PROFILE)

VALID = {None, *DIRECTIONS}
WORDS = [*DIRECTIONS, *DIRECTION_NAMES.values()]  # N, E, S, W, North, East, South, West
DECORATION = " \t\r\n*_`'\".,;:!?()[]{}<>"  # what parse_action strips around a direction


# ----------------------------------------------------------------------------------------------
# parse_action
# ----------------------------------------------------------------------------------------------


@FUZZ
@given(st.text())
def test_parse_action_never_crashes_on_text(text: str) -> None:
    result = parse_action(text)
    assert result in VALID
    if result is not None:
        # A direction is read only from a reply that is one direction word, whatever decoration.
        core = text.strip(DECORATION).lower()
        assert core in {w.lower() for w in WORDS} and core[0] == result.lower()
        assert parse_action(result) == result


@FUZZ
@given(
    st.one_of(
        st.none(),
        st.integers(),
        st.floats(allow_nan=True),
        st.binary(),
        st.lists(st.text(max_size=3)),
        st.dictionaries(st.text(max_size=3), st.text(max_size=3)),
    )
)
def test_parse_action_returns_none_for_non_text(value: Any) -> None:
    assert parse_action(value) is None


@st.composite
def decorated_directions(draw: st.DrawFn) -> tuple[str, str]:
    word = draw(st.sampled_from(WORDS))
    flips = draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
    cased = "".join(c.swapcase() if f else c for c, f in zip(word, flips, strict=True))
    left = draw(st.text(alphabet=DECORATION, max_size=6))
    right = draw(st.text(alphabet=DECORATION, max_size=6))
    return left + cased + right, word[0]


@FUZZ
@given(decorated_directions())
def test_parse_action_reads_a_decorated_direction_in_any_case(case: tuple[str, str]) -> None:
    text, direction = case
    assert parse_action(text) == direction


@FUZZ
@given(
    st.sampled_from(WORDS),
    st.text(alphabet=string.ascii_letters + "-/&", min_size=1, max_size=8),
    st.text(alphabet=" \t\n,;:", min_size=1, max_size=3),
    st.booleans(),
)
def test_parse_action_refuses_to_guess_among_several_words(
    word: str, other: str, separator: str, word_first: bool
) -> None:
    """``"N or E"``, ``"go north"``, ``"N, E"``: a direction next to another word is not a move."""
    text = f"{word}{separator}{other}" if word_first else f"{other}{separator}{word}"
    assert parse_action(text) is None


@FUZZ
@given(st.text(), st.text(alphabet=DECORATION, max_size=4))
def test_parse_action_ignores_outer_decoration(text: str, deco: str) -> None:
    assert parse_action(deco + text + deco) == parse_action(text.strip(DECORATION) or "")


# ----------------------------------------------------------------------------------------------
# MazeEnv
# ----------------------------------------------------------------------------------------------

REPLY_TEXT = st.one_of(
    st.sampled_from(DIRECTIONS),
    st.sampled_from(["north", "**S**", " w.", "N or E", "go N", "", "NE", "\U0001f4d0"]),
    st.text(max_size=12),
    decorated_directions().map(lambda c: c[0]),
)

EMOJI = st.one_of(
    st.sampled_from([TileEmoji.paper(), TileEmoji.swapped(), TileEmoji.letters()]),
    st.lists(
        st.text(min_size=1, max_size=3).filter(lambda s: s.strip() != ""),
        min_size=3,
        max_size=3,
        unique=True,
    ).map(lambda s: TileEmoji(mold=s[0], gold=s[1], path=s[2])),
)


@st.composite
def configs(draw: st.DrawFn) -> MazeConfig:
    lower = draw(st.floats(0.0, 0.45))
    upper = draw(st.floats(lower + 0.01, 0.9))
    reward = st.floats(-50, 50, allow_nan=False)
    try:
        return MazeConfig(
            size=draw(st.integers(5, 16)),
            turns=draw(st.integers(1, 15)),
            mold_fraction_range=(lower, upper),
            gold_fraction=draw(st.floats(0.0, 0.6)),
            wind_p=draw(st.one_of(st.sampled_from([0.0, 0.1, 1.0]), st.floats(0.0, 1.0))),
            melt=draw(st.booleans()),
            shuffle=draw(st.booleans()),
            shuffle_scope=draw(st.sampled_from(["turn", "episode"])),
            prompt_format=draw(st.sampled_from(["paper", "compact"])),
            reward_gold=draw(reward),
            reward_mold=draw(reward),
            reward_step=draw(reward),
            emoji=draw(EMOJI),
        )
    except MazeConfigError:
        assume(False)  # infeasible fraction ranges on tiny grids: not this test's subject
        raise


@FUZZ
@given(
    configs(),
    st.integers(0, 2**32 - 1),
    st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    st.lists(REPLY_TEXT, min_size=15, max_size=15),
)
def test_episode_invariants_under_random_configs_and_replies(
    cfg: MazeConfig, seed: int, episode_seed: int | None, replies: list[str]
) -> None:
    env = MazeEnv(cfg, seed, episode_seed=episode_seed)
    h, w = env.grid.shape
    tile_rewards = {
        Tile.GOLD: cfg.reward_gold,
        Tile.MOLD: cfg.reward_mold,
        Tile.PATH: 0.0,
    }
    per_event = set(tile_rewards.values())
    allowed = {cfg.reward_step}
    allowed |= {cfg.reward_step + a for a in per_event}
    allowed |= {cfg.reward_step + a + b for a in per_event for b in per_event}
    first = env.user_message
    assert env.messages == [{"role": "user", "content": first}]
    total = 0.0
    for k in range(cfg.turns):
        reply = replies[k]
        before = env.position
        res = env.step(reply)
        total += res.reward
        # Turn count and end of episode.
        assert res.turn == env.turn == k + 1
        assert res.done == env.done == (k + 1 == cfg.turns)
        assert env.turns_left == cfg.turns - k - 1
        # The agent stays on the grid and moves at most one tile per event.
        x, y = res.position
        assert 0 <= x < w and 0 <= y < h and res.position == env.position
        assert res.previous_position == before
        entered = [e for e in res.events if e.kind == "enter"]
        assert abs(x - before[0]) + abs(y - before[1]) <= len(entered)
        # The move is what parse_action reads; an invalid reply moves nothing by choice.
        assert res.action == parse_action(reply)
        causes = [e.cause for e in res.events]
        assert causes in ([], ["move"], ["wind"], ["move", "wind"])
        assert ("move" in causes) == (res.action is not None)
        if cfg.wind_p == 0.0:
            assert res.wind is None and "wind" not in causes
        if cfg.wind_p == 1.0:
            assert res.wind is not None
        # Rewards come from the documented set: step cost + each tile entered (Q.1).
        for e in res.events:
            assert e.reward == tile_rewards[e.tile]
        assert math.isclose(
            res.reward, cfg.reward_step + sum(e.reward for e in res.events), abs_tol=1e-9
        )
        assert any(math.isclose(res.reward, r, abs_tol=1e-9) for r in allowed)
        assert res.gold_consumed == sum(e.tile is Tile.GOLD for e in res.events)
        assert res.mold_entered == sum(e.tile is Tile.MOLD for e in res.events)
        assert env.grid[y, x] != Tile.GOLD  # Gold under the agent is consumed
        # Messages alternate user / assistant, the reply is kept verbatim.
        msgs = env.messages
        assert [m["role"] for m in msgs] == ["user", "assistant"] * (k + 1) + (
            [] if res.done else ["user"]
        )
        assert msgs[2 * k + 1]["content"] == reply
        assert env.user_message == (None if res.done else msgs[-1]["content"])
        assert res.next_message == env.user_message
    assert math.isclose(env.total_reward, total, abs_tol=1e-9)
    assert len(env.history) == cfg.turns and len(env.messages) == 2 * cfg.turns
    # The episode ends after cfg.turns: another step is refused and changes nothing.
    final = env.messages
    with pytest.raises(DataError, match="episode is over"):
        env.step("N")
    assert env.messages == final and env.turn == cfg.turns
    # reset() replays the same episode.
    assert (
        env.reset() == first
        and env.turn == 0
        and env.messages == [{"role": "user", "content": first}]
    )
    again = [env.step(r) for r in replies[: cfg.turns]]
    assert [r.reward for r in again] == [r.reward for r in env.history]


# ----------------------------------------------------------------------------------------------
# MazeConfig.from_dict
# ----------------------------------------------------------------------------------------------

KEYS = [
    "size",
    "turns",
    "walk_steps_range",
    "mold_fraction_range",
    "gold_fraction",
    "wind_p",
    "melt",
    "shuffle",
    "shuffle_scope",
    "prompt_format",
    "reward_gold",
    "reward_mold",
    "reward_step",
    "emoji",
]
ANY_VALUE = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**6), 10**6),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=8),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["mold", "gold", "path", "lava"]), inner, max_size=4),
    ),
    max_leaves=6,
)


@FUZZ
@given(
    st.dictionaries(
        st.one_of(st.sampled_from(KEYS), st.text(max_size=12)),
        ANY_VALUE,
        max_size=5,
    )
)
def test_config_from_arbitrary_dicts_is_valid_or_a_maze_config_error(data: dict[str, Any]) -> None:
    try:
        cfg = MazeConfig.from_dict(data)
    except MazeConfigError as err:
        assert err.hint  # the error names the fix
        event("MazeConfigError")
        return
    event("valid config")
    assert MazeConfig.from_dict(cfg.to_dict()) == cfg


PLAUSIBLE = st.one_of(
    st.integers(-2, 40),
    st.floats(-0.5, 1.5),
    st.booleans(),
    st.sampled_from(["turn", "episode", "paper", "compact", "Paper", ""]),
    st.tuples(st.integers(-5, 300), st.integers(-5, 300)).map(list),
    st.tuples(st.floats(-0.2, 1.2), st.floats(-0.2, 1.2)).map(list),
    st.fixed_dictionaries(
        {"mold": st.text(max_size=2), "gold": st.text(max_size=2), "path": st.text(max_size=2)}
    ),
)


@FUZZ
@given(
    st.dictionaries(st.sampled_from(KEYS), PLAUSIBLE, max_size=3),
    st.integers(0, 2**32 - 1),
    st.lists(REPLY_TEXT, min_size=3, max_size=3),
)
def test_perturbed_configs_are_rejected_or_playable(
    changes: dict[str, Any], seed: int, replies: list[str]
) -> None:
    """Near-valid settings: a MazeConfigError, or a config whose mazes generate and play."""
    data = MazeConfig(size=10, turns=3).to_dict()
    data.update(changes)
    try:
        cfg = MazeConfig.from_dict(data)
    except MazeConfigError as err:
        assert err.hint
        event("MazeConfigError")
        return
    event("valid config")
    env = MazeEnv(cfg, seed)
    h, w = env.grid.shape
    for reply in replies[: cfg.turns]:
        x, y = env.step(reply).position
        assert 0 <= x < w and 0 <= y < h
    assert env.turn == min(cfg.turns, len(replies))
