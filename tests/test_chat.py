"""Chat rendering and masks on SmolLM2's real chat template, and the plain fallback."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from welfare_lens.chat import (
    PLAIN_TEMPLATE,
    action_token_ids,
    pad_rendered,
    render_chat,
)
from welfare_lens.errors import TokenizationError

USER = "You are on 🧾. To the north is 📇, to the east is 📐."


def _conversation(turns: int) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    for turn in range(turns):
        messages.append({"role": "user", "content": f"{USER} Turn {turn}."})
        messages.append({"role": "assistant", "content": "NESW"[turn % 4]})
    return messages


def _tokens(tok: Any, ids: torch.Tensor) -> list[str]:
    return [str(t) for t in tok.convert_ids_to_tokens(ids.tolist())]


def test_smollm2_has_no_system_prompt_and_no_final_end_of_turn(smollm2_tok: Any) -> None:
    rendered = render_chat(smollm2_tok, _conversation(2))
    assert rendered.text == (
        f"<|im_start|>user\n{USER} Turn 0.<|im_end|>\n<|im_start|>assistant\nN<|im_end|>\n"
        f"<|im_start|>user\n{USER} Turn 1.<|im_end|>\n<|im_start|>assistant\nE"
    )
    assert "SmolLM" not in rendered.text and "system" not in rendered.text
    # The token ids are exactly the tokenizer's ids of that text.
    expected = smollm2_tok(rendered.text, add_special_tokens=False)["input_ids"]
    assert rendered.input_ids.tolist() == expected


def test_smollm2_masks(smollm2_tok: Any) -> None:
    rendered = render_chat(smollm2_tok, _conversation(3))
    ids = rendered.input_ids
    assert _tokens(smollm2_tok, ids[rendered.assistant_content_mask]) == ["N", "E", "S"]
    # Three assistant headers, each <|im_start|> assistant \n = [1, 520, 9531, 198].
    assert ids[rendered.assistant_role_mask].tolist() == [1, 520, 9531, 198] * 3
    user_text = smollm2_tok.decode(ids[rendered.user_mask])
    assert user_text == "".join(f"{USER} Turn {t}." for t in range(3))
    assert not (rendered.user_mask & rendered.assistant_content_mask).any()
    assert not (rendered.assistant_role_mask & rendered.assistant_content_mask).any()
    assert not rendered.generation_prompt_mask.any()
    assert rendered.last_assistant_token == len(rendered) - 1
    assert rendered.message_token_spans[-1] == (len(rendered) - 1, len(rendered))


def test_close_final_turn_keeps_end_of_turn(smollm2_tok: Any) -> None:
    rendered = render_chat(smollm2_tok, _conversation(1), close_final_turn=True)
    assert rendered.text.endswith("assistant\nN<|im_end|>\n")
    assert rendered.last_assistant_token == len(rendered) - 3  # N, <|im_end|>, \n


def test_generation_prompt_mask(smollm2_tok: Any) -> None:
    messages = [*_conversation(1), {"role": "user", "content": USER}]
    rendered = render_chat(smollm2_tok, messages, add_generation_prompt=True)
    assert rendered.text.endswith(f"{USER}<|im_end|>\n<|im_start|>assistant\n")
    gen = rendered.input_ids[rendered.generation_prompt_mask].tolist()
    assert gen == [1, 520, 9531, 198]
    assert rendered.generation_prompt_mask[-4:].all()
    assert rendered.assistant_role_mask.sum() == 4  # only the closed assistant turn's header


def test_explicit_system_prompt_is_kept(smollm2_tok: Any) -> None:
    messages = [{"role": "system", "content": "Be brief."}, *_conversation(1)]
    rendered = render_chat(smollm2_tok, messages)
    assert rendered.text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")


def test_default_system_prompt_kept_on_request(smollm2_tok: Any) -> None:
    rendered = render_chat(smollm2_tok, _conversation(1), strip_default_system=False)
    assert "You are a helpful AI assistant named SmolLM" in rendered.text


def test_action_tokens_are_single_tokens(smollm2_tok: Any) -> None:
    ids = action_token_ids(smollm2_tok)
    assert ids == {"N": 62, "E": 53, "S": 67, "W": 71}
    for action, token in ids.items():
        assert smollm2_tok.decode([token]) == action


def test_multi_token_action_is_an_error(smollm2_tok: Any) -> None:
    with pytest.raises(TokenizationError, match="Northwards"):
        action_token_ids(smollm2_tok, actions=("Northwards-ho", "S"))


def test_plain_fallback(smollm2_tok: Any) -> None:
    rendered = render_chat(smollm2_tok, _conversation(2), template="plain")
    assert rendered.text == (
        f"### User:\n{USER} Turn 0.\n\n### Assistant:\nN\n\n"
        f"### User:\n{USER} Turn 1.\n\n### Assistant:\nE"
    )
    assert _tokens(smollm2_tok, rendered.input_ids[rendered.assistant_content_mask]) == ["N", "E"]
    assert (
        smollm2_tok.decode(rendered.input_ids[rendered.assistant_role_mask]).count("### Assistant:")
        == 2
    )
    assert "{% for message in messages %}" in PLAIN_TEMPLATE


def test_tokenizer_without_template_falls_back(smollm2_tok: Any) -> None:
    import copy

    base = copy.deepcopy(smollm2_tok)
    base.chat_template = None
    assert render_chat(base, _conversation(1)).text.startswith("### User:\n")
    with pytest.raises(TokenizationError, match="no chat template"):
        render_chat(base, _conversation(1), template="model")


@pytest.mark.parametrize(
    "messages",
    [[], [{"role": "robot", "content": "x"}], [{"role": "user", "content": 3}], ["hello"]],
)
def test_malformed_messages(smollm2_tok: Any, messages: Any) -> None:
    with pytest.raises(TokenizationError):
        render_chat(smollm2_tok, messages)


def test_no_assistant_token_error(smollm2_tok: Any) -> None:
    rendered = render_chat(smollm2_tok, [{"role": "user", "content": "hi"}])
    with pytest.raises(TokenizationError, match="no assistant content"):
        _ = rendered.last_assistant_token


def test_contents_are_verbatim_and_skeleton_is_reused(smollm2_tok: Any) -> None:
    # Two conversations with the same roles share a skeleton; contents must not leak across.
    a = render_chat(smollm2_tok, _conversation(2))
    other = _conversation(2)
    other[0]["content"] = "  leading and trailing spaces  "
    b = render_chat(smollm2_tok, other)
    assert "<|im_start|>user\n  leading and trailing spaces  <|im_end|>" in b.text
    assert a.text != b.text


def test_pad_rendered(smollm2_tok: Any) -> None:
    short = render_chat(smollm2_tok, _conversation(1))
    long = render_chat(smollm2_tok, _conversation(3))
    batch = pad_rendered([short, long], pad_token_id=2)
    assert batch["input_ids"].shape == (2, len(long))
    assert batch["lengths"].tolist() == [len(short), len(long)]
    assert batch["input_ids"][0, len(short) :].eq(2).all()
    assert batch["attention_mask"][0].sum() == len(short)
    assert torch.equal(batch["assistant_content_mask"][1], long.assistant_content_mask)
    assert batch["assistant_content_mask"][0].sum() == 1
    with pytest.raises(TokenizationError):
        pad_rendered([], pad_token_id=0)


@pytest.mark.slow
def test_gemma_plain_template_actions() -> None:
    from welfare_lens.models import load_model

    tok = load_model("gemma-3-270m").tokenizer
    rendered = render_chat(tok, _conversation(1))
    assert rendered.text.startswith("<bos>### User:\n")
    assert rendered.input_ids[0] == tok.bos_token_id
    assert not rendered.assistant_role_mask[0]  # <bos> is not part of a role header
    ids = action_token_ids(tok)
    assert len(set(ids.values())) == 4
