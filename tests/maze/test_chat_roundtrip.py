"""A rendered 15-turn maze conversation round-trips through SmolLM2's tokenizer."""

from __future__ import annotations

from typing import Any

import welfare_lens as wl
from welfare_lens.maze import MazeConfig, MazeEnv, parse_action


def test_each_direction_is_one_token_in_the_assistant_position(smollm2_tok: Any) -> None:
    ids = wl.action_token_ids(smollm2_tok)
    assert sorted(ids) == ["E", "N", "S", "W"]
    assert len(set(ids.values())) == 4


def test_fifteen_turn_conversation_round_trips(smollm2_tok: Any) -> None:
    env = MazeEnv(MazeConfig(), 7)
    moves = "NESWNNEESSWWNES"
    for move in moves:
        env.step(move)
    assert env.done and env.turn == 15
    messages = env.messages
    assert [m["role"] for m in messages] == ["user", "assistant"] * 15
    rendered = wl.render_chat(smollm2_tok, messages)
    assert "system" not in rendered.text and "SmolLM" not in rendered.text
    # tokens -> assistant content -> parsed actions == the moves that were played
    content = rendered.input_ids[rendered.assistant_content_mask].tolist()
    assert len(content) == 15
    parsed = [parse_action(smollm2_tok.decode([token])) for token in content]
    assert "".join(str(p) for p in parsed) == moves
    # each user message decodes back to its text, word for word
    for index in range(0, 30, 2):
        start, stop = rendered.message_token_spans[index]
        assert smollm2_tok.decode(rendered.input_ids[start:stop]) == messages[index]["content"]
    # the whole text decodes back and ends on the final move, with no end-of-turn
    assert smollm2_tok.decode(rendered.input_ids) == rendered.text
    assert rendered.text.endswith("<|im_start|>assistant\nS")
