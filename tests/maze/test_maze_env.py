"""Episode rules: rewards, melting, wind, borders, invalid replies (Appendix K, J.3, Q.1; B-5)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from welfare_lens.errors import DataError, MazeConfigError
from welfare_lens.maze import (
    DELTAS,
    Maze,
    MazeConfig,
    MazeEnv,
    Tile,
    TileEmoji,
    parse_action,
)

# Paper emoji: Mold 📇 U+1F4C7, Gold 📐 U+1F4D0, Path 🧾 U+1F9FE.
M, G, P = "\U0001f4c7", "\U0001f4d0", "\U0001f9fe"
TAIL = "Where do you move? Output only N/E/S/W without punctuation."

HAND = [
    "#######",
    "#.....#",
    "#.$$..#",
    "#..@#.#",
    "#.....#",
    "#.$...#",
    "#######",
]


def _hand_env(prompt_format: str = "paper") -> MazeEnv:
    cfg = MazeConfig(size=7, turns=3, shuffle=False, prompt_format=prompt_format)  # type: ignore[arg-type]
    return MazeEnv(cfg, Maze.from_strings(HAND))


def test_hand_worked_three_turns_with_one_wind_event() -> None:
    """Worked by hand on the 7x7 grid above (start @ = (3, 3)).

    Turn 1: N onto Gold (3, 2): -0.1 + 20 = 19.9; (3, 3) melts.
    Turn 2: W onto Gold (2, 2): +20, then the wind pushes S onto Path (2, 3): +0; the step
            cost is paid once: 19.9. (3, 2) and (2, 2) melt.
    Turn 3: E onto the melted start (3, 3): -0.1 - 10 = -10.1.
    Return 19.9 + 19.9 - 10.1 = 29.7.
    """
    env = _hand_env()
    msg1 = (
        "You are in a maze. Currently, you're at location (3, 3). "
        f"To the north there is {G}; to the east there is {M}; to the south there is {P}; "
        f"to the west there is {P}. {TAIL}"
    )
    assert env.user_message == msg1
    r1 = env.step("N", wind=None)
    assert r1.reward == pytest.approx(19.9, abs=1e-12)
    assert (r1.gold_consumed, r1.mold_entered, r1.position, r1.wind) == (1, 0, (3, 2), None)
    msg2 = (
        "You are in a maze. Currently, you're at location (3, 2). "
        f"To the north there is {P}; to the east there is {P}; to the south there is {M}; "
        f"to the west there is {G}. {TAIL}"
    )
    assert r1.next_message == msg2

    r2 = env.step("W", wind="S")
    assert r2.reward == pytest.approx(19.9, abs=1e-12)
    assert [(e.cause, e.position, e.tile) for e in r2.events] == [
        ("move", (2, 2), Tile.GOLD),
        ("wind", (2, 3), Tile.PATH),
    ]
    assert r2.wind is not None and (r2.wind.source, r2.wind.push) == ("N", "S")
    msg3 = (
        "A strong wind from the North blew you South! "
        "You are in a maze. Currently, you're at location (2, 3). "
        f"To the north there is {M}; to the east there is {M}; to the south there is {P}; "
        f"to the west there is {P}. {TAIL}"
    )
    assert r2.next_message == msg3

    r3 = env.step("E", wind=None)
    assert r3.reward == pytest.approx(-10.1, abs=1e-12)
    assert (r3.gold_consumed, r3.mold_entered, r3.position) == (0, 1, (3, 3))
    assert r3.done and r3.next_message is None and env.user_message is None
    assert env.total_reward == pytest.approx(29.7, abs=1e-12)
    assert env.messages == [
        {"role": "user", "content": msg1},
        {"role": "assistant", "content": "N"},
        {"role": "user", "content": msg2},
        {"role": "assistant", "content": "W"},
        {"role": "user", "content": msg3},
        {"role": "assistant", "content": "E"},
    ]
    # Every tile left is Mold; the other Gold (2, 5) is untouched.
    g = env.grid
    assert [int(g[y, x]) for x, y in [(3, 3), (3, 2), (2, 2), (2, 3)]] == [0, 0, 0, 0]
    assert g[5, 2] == Tile.GOLD
    with pytest.raises(DataError, match="episode is over"):
        env.step("N")


def test_hand_worked_compact_format() -> None:
    env = _hand_env("compact")
    assert env.user_message == f"Neighbours: N {G}, E {M}, S {P}, W {P}"
    env.step("N", wind=None)
    r = env.step("W", wind="S")
    assert (
        r.next_message
        == f"A strong wind from the North blew you South! Neighbours: N {M}, E {M}, S {P}, W {P}"
    )


def test_no_system_prompt_and_roles_alternate() -> None:
    env = MazeEnv(MazeConfig(size=20, turns=4), 3)
    while not env.done:
        env.step("S")
    roles = [m["role"] for m in env.messages]
    assert roles == ["user", "assistant"] * 4
    assert all(set(m) == {"role", "content"} for m in env.messages)


def test_invalid_reply_stays_pays_step_cost_and_is_kept_verbatim() -> None:
    env = _hand_env()
    r = env.step("I think north", wind=None)
    assert r.action is None and not r.valid
    assert r.reward == pytest.approx(-0.1, abs=1e-12)
    assert r.events == () and r.position == (3, 3)
    assert env.grid[3, 3] == Tile.PATH  # not left, so not melted
    assert env.messages[1] == {"role": "assistant", "content": "I think north"}
    # The wind still blows after an invalid reply.
    r2 = env.step("", wind="W")
    assert r2.position == (2, 3) and r2.reward == pytest.approx(-0.1, abs=1e-12)
    assert env.grid[3, 3] == Tile.MOLD


def test_border_bounce_and_cancelled_wind() -> None:
    # A 3x3 grid without a ring: the agent at (0, 0) is on the edge.
    maze = Maze.from_strings(["@.$", "...", "..."])
    env = MazeEnv(MazeConfig(size=5, turns=4, shuffle=False), maze)
    assert env.neighbours() == (Tile.MOLD, Tile.PATH, Tile.PATH, Tile.MOLD)  # off-grid = Mold
    r = env.step("N", wind=None)
    assert r.position == (0, 0)
    assert [(e.kind, e.tile) for e in r.events] == [("bounce", Tile.MOLD)]
    assert r.reward == pytest.approx(-10.1, abs=1e-12) and r.mold_entered == 1
    assert env.grid[0, 0] == Tile.PATH  # a bounce does not leave the tile
    r = env.step("E", wind="N")  # the push off the grid is cancelled
    assert r.position == (1, 0) and r.wind is not None and r.wind.blocked
    assert r.next_message is not None and not r.next_message.startswith("A strong wind")
    assert r.reward == pytest.approx(-0.1, abs=1e-12)


def test_no_melt_turns_consumed_gold_into_path() -> None:
    cfg = MazeConfig(size=7, turns=2, shuffle=False, melt=False)
    env = MazeEnv(cfg, Maze.from_strings(HAND))
    env.step("N", wind=None)
    env.step("S", wind=None)
    assert env.grid[2, 3] == Tile.PATH  # consumed, not melted
    assert env.history[1].reward == pytest.approx(-0.1, abs=1e-12)  # start tile still Path


def test_wind_draws_are_seeded_and_follow_wind_p() -> None:
    cfg = MazeConfig(size=40, turns=15, wind_p=1.0)
    env = MazeEnv(cfg, 5, episode_seed=11)
    while not env.done:
        env.step("N")
    assert all(h.wind is not None for h in env.history)
    msgs = [h.next_message for h in env.history[:-1]]
    assert all(m is not None and m.startswith("A strong wind from the ") for m in msgs)
    calm = MazeEnv(MazeConfig(size=40, wind_p=0.0), 5)
    while not calm.done:
        calm.step("N")
    assert all(h.wind is None for h in calm.history)
    # About 10% of turns have wind at the paper's rate.
    windy = 0
    for seed in range(100):
        e = MazeEnv(MazeConfig(size=40), seed)
        windy += int(np.sum(e._wind_u < 0.1))
    assert 100 <= windy <= 200  # 1,500 turns, expectation 150


def test_shuffle_scopes() -> None:
    turn = MazeEnv(MazeConfig(size=20, turns=15), 1)
    while not turn.done:
        turn.step("E")
    orders = {h.order for h in turn.history}
    assert len(orders) > 1
    ep = MazeEnv(MazeConfig(size=20, turns=15, shuffle_scope="episode"), 1)
    while not ep.done:
        ep.step("E")
    assert len({h.order for h in ep.history}) == 1
    fixed = MazeEnv(MazeConfig(size=20, turns=15, shuffle=False), 1)
    assert fixed.history == [] and fixed._orders[0] == ("N", "E", "S", "W")


def test_bad_arguments() -> None:
    with pytest.raises(MazeConfigError, match="wind must be"):
        _hand_env().step("N", wind="up")  # type: ignore[arg-type]
    with pytest.raises(MazeConfigError, match="maze seed"):
        MazeEnv(MazeConfig(size=10), -3)
    with pytest.raises(MazeConfigError, match="cfg must be a MazeConfig"):
        MazeEnv({"size": 10})  # type: ignore[arg-type]


def test_reset_replays_the_same_episode() -> None:
    env = MazeEnv(MazeConfig(size=30, wind_p=0.5), 9)
    first = env.user_message
    rewards = [env.step(a).reward for a in "NESWNESWNESWNES"]
    env.reset()
    assert env.user_message == first and env.turn == 0
    assert [env.step(a).reward for a in "NESWNESWNESWNES"] == rewards


# ------------------------------------------------------------------ parse_action


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("N", "N"),
        ("n", "N"),
        (" S\n", "S"),
        ("East", "E"),
        ("west.", "W"),
        ("**N**", "N"),
        ("'E'", "E"),
        ("N or E", None),
        ("N E", None),
        ("go north", None),
        ("", None),
        ("X", None),
        ("NE", None),
        (None, None),
    ],
)
def test_parse_action(text: str | None, expected: str | None) -> None:
    assert parse_action(text) == expected


# ------------------------------------------------------------------ invariants

REPLIES = st.sampled_from(["N", "E", "S", "W", "N", "E", "S", "W", "north", "x", "", "N E"])


@st.composite
def episodes(draw: st.DrawFn) -> tuple[MazeConfig, int, list[str]]:
    size = draw(st.integers(8, 30))
    turns = draw(st.integers(1, 20))
    cfg = MazeConfig(
        size=size,
        turns=turns,
        wind_p=draw(st.sampled_from([0.0, 0.1, 0.5, 1.0])),
        melt=draw(st.booleans()),
        shuffle=draw(st.booleans()),
        prompt_format=draw(st.sampled_from(["paper", "compact"])),
        emoji=draw(st.sampled_from([TileEmoji.paper(), TileEmoji.swapped(), TileEmoji.letters()])),
    )
    seed = draw(st.integers(0, 2**32 - 1))
    replies = draw(st.lists(REPLIES, min_size=turns, max_size=turns))
    return cfg, seed, replies


def _play(cfg: MazeConfig, seed: int, replies: list[str]) -> MazeEnv:
    env = MazeEnv(cfg, seed)
    left: set[tuple[int, int]] = set()
    h, w = env.grid.shape
    for k, reply in enumerate(replies):
        before = env.position
        res = env.step(reply)
        # Reward equals the step cost plus the tile events, and the paper's formula.
        assert res.reward == pytest.approx(cfg.reward_step + sum(e.reward for e in res.events))
        assert res.reward == pytest.approx(-0.1 + 20 * res.gold_consumed - 10 * res.mold_entered)
        assert res.gold_consumed == sum(e.tile is Tile.GOLD for e in res.events)
        # The agent never leaves the grid and moves at most one tile per event.
        x, y = res.position
        assert 0 <= x < w and 0 <= y < h
        assert abs(x - before[0]) + abs(y - before[1]) <= len(res.events)
        # Every tile it stood on and left is Mold (melting), Gold included.
        for e in res.events:
            if e.kind == "enter":
                left.add(before)
                before = e.position
        if cfg.melt:
            for lx, ly in left - {res.position}:
                assert env.grid[ly, lx] == Tile.MOLD
        assert env.grid[y, x] != Tile.GOLD  # Gold under the agent is consumed
        assert res.turn == k + 1
        assert res.done == (k + 1 == cfg.turns)
    return env


@settings(max_examples=500, deadline=None)
@given(episodes())
def test_episode_invariants(ep: tuple[MazeConfig, int, list[str]]) -> None:
    cfg, seed, replies = ep
    env = _play(cfg, seed, replies)
    # Exactly `turns` turns, then nothing more.
    assert env.done and env.turn == cfg.turns and len(env.history) == cfg.turns
    assert len(env.messages) == 2 * cfg.turns
    with pytest.raises(DataError):
        env.step("N")
    # Determinism: the same seed gives identical grids, messages and rewards.
    again = _play(cfg, seed, replies)
    assert again.grid.tobytes() == env.grid.tobytes()
    assert again.maze.grid.tobytes() == env.maze.grid.tobytes()
    assert again.messages == env.messages
    assert [h.reward for h in again.history] == [h.reward for h in env.history]
    # Symbols shown are the config's.
    allowed = {cfg.emoji.mold, cfg.emoji.gold, cfg.emoji.path}
    first = env.messages[0]["content"]
    if cfg.prompt_format == "compact":
        syms = [part.split(" ")[1] for part in first.removeprefix("Neighbours: ").split(", ")]
        assert set(syms) <= allowed and len(syms) == 4


@settings(max_examples=500, deadline=None)
@given(episodes())
def test_events_match_the_tiles_shown(ep: tuple[MazeConfig, int, list[str]]) -> None:
    """The tile a valid move enters is the one the user message showed in that direction."""
    cfg, seed, replies = ep
    env = MazeEnv(cfg, seed)
    for reply in replies:
        res = env.step(reply)
        if res.action is not None:
            shown = res.neighbours[["N", "E", "S", "W"].index(res.action)]
            assert res.events[0].tile is shown
            dx, dy = DELTAS[res.action]
            px, py = res.previous_position
            if res.events[0].kind == "enter":
                assert res.events[0].position == (px + dx, py + dy)
