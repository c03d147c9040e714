"""Chat-template rendering with token-level masks for users, assistant roles and assistant content.

The paper renders every maze episode as a multi-turn chat: each user turn describes the
neighbouring tiles and each assistant turn is a single direction letter (paper_method A2). Vector
extraction reads the residual stream at the last direction letter, and the synthetic trajectories
are tokenised with **no end-of-turn token after the final assistant move** (appendix L.1). Training
counts only the action tokens in its loss. All of that needs to know, for every token, which
message it came from and whether it is role markup or content; this module provides it.

Rendering works on a *skeleton*: the chat template is applied once per role sequence with
placeholder contents, and the real contents are spliced in verbatim. Every maze conversation with
the same number of turns shares one skeleton, so rendering 15,000 trajectories costs 15 template
calls rather than 15,000 (and the character spans of every message are exact by construction).

Two template quirks are handled here:

* SmolLM2's template (ChatML) inserts a default system prompt ("You are a helpful AI assistant
  named SmolLM, ...") when the conversation has none. The paper uses no system prompt, so an
  injected default system block is removed (``strip_default_system=True``).
* Base models such as Gemma-3-270m ship no chat template. They get the documented plain format
  :data:`PLAIN_TEMPLATE`::

      <bos>### User:
      {content}

      ### Assistant:
      {content}

  (``<bos>`` only when the tokenizer adds one by default.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from welfare_lens.errors import TokenizationError

__all__ = [
    "ACTIONS",
    "PLAIN_TEMPLATE",
    "RenderedChat",
    "action_token_ids",
    "pad_rendered",
    "render_chat",
]

ACTIONS: tuple[str, ...] = ("N", "E", "S", "W")

TemplateChoice = Literal["auto", "model", "plain"]

#: Jinja template used for tokenizers without a chat template (base models), or on request.
PLAIN_TEMPLATE = (
    "{% if add_bos %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}### System:\n"
    "{% elif message['role'] == 'user' %}### User:\n"
    "{% else %}### Assistant:\n{% endif %}"
    "{{ message['content'] }}\n\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)

# Default system blocks that templates inject when a conversation has none. The paper's
# conversations have no system prompt, so these are removed (SmolLM2 and Qwen2 use ChatML;
# Llama 3 injects a "Cutting Knowledge Date" block).
_INJECTED_SYSTEM = (
    re.compile(r"<\|im_start\|>system\n.*?<\|im_end\|>\n", re.DOTALL),
    re.compile(r"<\|start_header_id\|>system<\|end_header_id\|>\n\n.*?<\|eot_id\|>", re.DOTALL),
)

_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class RenderedChat:
    """A tokenised conversation and per-token masks.

    All masks are boolean vectors over ``input_ids``; a token belongs to a span when its
    characters overlap it. Tokens of the template's own markup that are neither role headers nor
    content (end-of-turn tokens, separators, ``<bos>``) are in no mask.

    Attributes:
        text: The rendered string that was tokenised.
        input_ids: Token ids, ``[pos]``.
        user_mask: Tokens of user message contents.
        assistant_role_mask: Tokens of the markup that opens each assistant message
            (e.g. ``<|im_start|>assistant\\n``), excluding the generation prompt.
        assistant_content_mask: Tokens of assistant message contents (the direction letters).
        generation_prompt_mask: Tokens of the trailing generation prompt, if one was added.
        message_token_spans: ``(start, stop)`` token indices of each message's content.
    """

    text: str
    input_ids: Int[Tensor, " pos"]
    user_mask: Bool[Tensor, " pos"]
    assistant_role_mask: Bool[Tensor, " pos"]
    assistant_content_mask: Bool[Tensor, " pos"]
    generation_prompt_mask: Bool[Tensor, " pos"]
    message_token_spans: tuple[tuple[int, int], ...]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def assistant_content_positions(self) -> Int[Tensor, " n"]:
        """Indices of all assistant content tokens, in order."""
        return self.assistant_content_mask.nonzero().flatten()

    @property
    def last_assistant_token(self) -> int:
        """Index of the last assistant content token (the paper's extraction position −1).

        Raises:
            TokenizationError: if the conversation has no assistant content.
        """
        positions = self.assistant_content_positions
        if positions.numel() == 0:
            raise TokenizationError(
                "The conversation has no assistant content token.",
                hint="End the conversation with an assistant message (the chosen move).",
            )
        return int(positions[-1])


@dataclass(frozen=True)
class _Segment:
    kind: Literal["literal", "content", "role", "generation"]
    text: str = ""
    message: int = -1


def _check_messages(messages: Sequence[Mapping[str, str]]) -> tuple[str, ...]:
    roles: list[str] = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, Mapping) else None
        content = message.get("content") if isinstance(message, Mapping) else None
        if role not in _ROLES or not isinstance(content, str):
            raise TokenizationError(
                f"Message {i} is not a chat message: {message!r}.",
                hint='Each message must be a dict {"role": "user"|"assistant"|"system", '
                '"content": str}.',
            )
        roles.append(role)
    if not roles:
        raise TokenizationError("The conversation is empty.", hint="Pass at least one message.")
    return tuple(roles)


def _marker(i: int) -> str:
    # Private-use characters survive every chat template (no trimming or escaping touches them).
    return f"\ue000{i}\ue001"


def _template_kind(tokenizer: Any, template: TemplateChoice) -> str:
    if template not in ("auto", "model", "plain"):
        raise TokenizationError(
            f"Unknown template choice {template!r}.", hint="Use 'auto', 'model' or 'plain'."
        )
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if template == "model" and not has_template:
        raise TokenizationError(
            "The tokenizer has no chat template.",
            hint="Use template='plain' (or 'auto') for base models such as gemma-3-270m.",
        )
    if template == "plain" or not has_template:
        return "plain"
    return "model"


def _apply(
    tokenizer: Any, messages: list[dict[str, str]], kind: str, add_generation_prompt: bool
) -> str:
    if kind == "plain":
        add_bos = bool(getattr(tokenizer, "add_bos_token", False)) and tokenizer.bos_token
        text = tokenizer.apply_chat_template(
            messages,
            chat_template=PLAIN_TEMPLATE,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            add_bos=add_bos,
        )
    else:
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    return str(text)


def _strip_injected_system(text: str, has_system: bool, strip: bool) -> str:
    if has_system or not strip:
        return text
    for pattern in _INJECTED_SYSTEM:
        match = pattern.search(text)
        # Only a block before the first message marker is an injected default.
        if match is not None and match.end() <= text.index("\ue000"):
            return text[: match.start()] + text[match.end() :]
    return text


@lru_cache(maxsize=256)
def _skeleton_cached(
    tokenizer_key: int,
    roles: tuple[str, ...],
    kind: str,
    add_generation_prompt: bool,
    close_final_turn: bool,
    strip_default_system: bool,
) -> tuple[_Segment, ...]:
    tokenizer = _TOKENIZERS[tokenizer_key]
    has_system = "system" in roles
    segments: list[_Segment] = []
    previous = ""
    for k in range(1, len(roles) + 1):
        placeholders = [{"role": roles[i], "content": _marker(i)} for i in range(k)]
        text = _strip_injected_system(
            _apply(tokenizer, placeholders, kind, False), has_system, strip_default_system
        )
        if not text.startswith(previous):
            raise TokenizationError(
                "The chat template does not render conversations incrementally (the rendering "
                f"of the first {k - 1} messages is not a prefix of the first {k}).",
                hint="Pass template='plain', or a tokenizer whose chat_template renders earlier "
                "turns identically regardless of later ones.",
            )
        delta = text[len(previous) :]
        marker = _marker(k - 1)
        if delta.count(marker) != 1:
            raise TokenizationError(
                f"The chat template dropped or repeated the content of message {k - 1}.",
                hint="Use template='plain' for this tokenizer.",
            )
        head, tail = delta.split(marker)
        bos = getattr(tokenizer, "bos_token", None)
        if previous == "" and bos and head.startswith(bos):
            # A leading <bos> is markup, not part of the first message's role header.
            segments.append(_Segment("literal", bos))
            head = head[len(bos) :]
        role_kind: Literal["role", "literal"] = "role" if roles[k - 1] == "assistant" else "literal"
        segments.append(_Segment(role_kind, head, k - 1))
        segments.append(_Segment("content", "", k - 1))
        is_final = k == len(roles)
        if not (is_final and roles[-1] == "assistant" and not close_final_turn):
            segments.append(_Segment("literal", tail))
        previous = text
    if add_generation_prompt:
        placeholders = [{"role": roles[i], "content": _marker(i)} for i in range(len(roles))]
        full = _strip_injected_system(
            _apply(tokenizer, placeholders, kind, True), has_system, strip_default_system
        )
        if not full.startswith(previous):
            raise TokenizationError(
                "The generation prompt is not a suffix of the rendered conversation.",
                hint="Use template='plain' for this tokenizer.",
            )
        segments.append(_Segment("generation", full[len(previous) :]))
    return tuple(s for s in segments if s.kind == "content" or s.text)


# lru_cache needs hashable arguments; tokenizers are not reliably hashable, so they are keyed by id
# and kept alive here for as long as their skeletons are cached.
_TOKENIZERS: dict[int, Any] = {}


def _skeleton(
    tokenizer: Any,
    roles: tuple[str, ...],
    kind: str,
    add_generation_prompt: bool,
    close_final_turn: bool,
    strip_default_system: bool,
) -> tuple[_Segment, ...]:
    _TOKENIZERS[id(tokenizer)] = tokenizer
    return _skeleton_cached(
        id(tokenizer), roles, kind, add_generation_prompt, close_final_turn, strip_default_system
    )


def render_chat(
    tokenizer: Any,
    messages: Sequence[Mapping[str, str]],
    *,
    add_generation_prompt: bool = False,
    close_final_turn: bool = False,
    template: TemplateChoice = "auto",
    strip_default_system: bool = True,
) -> RenderedChat:
    """Render and tokenise a conversation, with masks for users, assistant roles and content.

    Args:
        tokenizer: A Hugging Face tokenizer (``model.tokenizer`` of a bridge).
        messages: ``[{"role": ..., "content": ...}, ...]``; contents are inserted verbatim.
        add_generation_prompt: Append the assistant generation prompt (e.g.
            ``<|im_start|>assistant\\n``), as for sampling the next move.
        close_final_turn: Keep the end-of-turn markup after a final assistant message. The paper
            tokenises extraction trajectories without it (appendix L.1), hence the default.
        template: ``"auto"`` (the model's template, else the plain fallback), ``"model"`` or
            ``"plain"`` (:data:`PLAIN_TEMPLATE`).
        strip_default_system: Remove a system prompt the template injects on its own when the
            conversation has none (SmolLM2's "You are a helpful AI assistant named SmolLM").

    Returns:
        The rendered text, token ids and masks.

    Raises:
        TokenizationError: for malformed messages or a template that cannot be rendered
            incrementally.
    """
    roles = _check_messages(messages)
    kind = _template_kind(tokenizer, template)
    skeleton = _skeleton(
        tokenizer, roles, kind, add_generation_prompt, close_final_turn, strip_default_system
    )
    pieces: list[str] = []
    spans: list[tuple[str, int, int, int]] = []  # (kind, message, char start, char stop)
    cursor = 0
    for segment in skeleton:
        text = messages[segment.message]["content"] if segment.kind == "content" else segment.text
        pieces.append(text)
        spans.append((segment.kind, segment.message, cursor, cursor + len(text)))
        cursor += len(text)
    text = "".join(pieces)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = torch.tensor(encoding["input_ids"], dtype=torch.long)
    offsets = torch.tensor(encoding["offset_mapping"], dtype=torch.long).reshape(-1, 2)
    starts, stops = offsets[:, 0], offsets[:, 1]
    n = ids.shape[0]
    masks = {
        "user": torch.zeros(n, dtype=torch.bool),
        "role": torch.zeros(n, dtype=torch.bool),
        "content": torch.zeros(n, dtype=torch.bool),
        "generation": torch.zeros(n, dtype=torch.bool),
    }
    message_spans: list[tuple[int, int]] = [(0, 0)] * len(messages)
    for kind_, message, lo, hi in spans:
        if hi <= lo:
            continue
        overlaps = (starts < hi) & (stops > lo)
        if kind_ == "content":
            role = roles[message]
            if role == "user":
                masks["user"] |= overlaps
            elif role == "assistant":
                masks["content"] |= overlaps
            idx = overlaps.nonzero().flatten()
            if idx.numel():
                message_spans[message] = (int(idx[0]), int(idx[-1]) + 1)
        elif kind_ == "role":
            masks["role"] |= overlaps
        elif kind_ == "generation":
            masks["generation"] |= overlaps
    # A token straddling a header and the content (e.g. "\nN" merged) counts as content only.
    masks["role"] &= ~masks["content"]
    masks["generation"] &= ~(masks["content"] | masks["user"])
    return RenderedChat(
        text=text,
        input_ids=ids,
        user_mask=masks["user"],
        assistant_role_mask=masks["role"],
        assistant_content_mask=masks["content"],
        generation_prompt_mask=masks["generation"],
        message_token_spans=tuple(message_spans),
    )


def action_token_ids(
    tokenizer: Any,
    actions: Sequence[str] = ACTIONS,
    *,
    template: TemplateChoice = "auto",
) -> dict[str, int]:
    """The single token id of each action when it is the whole assistant message.

    Sampling is restricted to these ids during rollouts, and extraction reads the residual stream
    at them, so each action must be exactly one token in the assistant position.

    Args:
        tokenizer: A Hugging Face tokenizer.
        actions: The action strings (default N, E, S, W).
        template: As in :func:`render_chat`.

    Returns:
        ``{action: token_id}``.

    Raises:
        TokenizationError: if an action is not one token there, two actions share a token, or
            an action is listed twice.
    """
    if isinstance(actions, str) or len(set(actions)) != len(actions):
        raise TokenizationError(
            f"actions must be distinct strings, got {actions!r}.",
            hint="Pass each action once, e.g. ('N', 'E', 'S', 'W').",
        )
    ids: dict[str, int] = {}
    for action in actions:
        rendered = render_chat(
            tokenizer,
            [{"role": "user", "content": "Where next?"}, {"role": "assistant", "content": action}],
            template=template,
        )
        content = rendered.input_ids[rendered.assistant_content_mask].tolist()
        if len(content) != 1:
            pieces = [tokenizer.decode([t]) for t in content]
            raise TokenizationError(
                f"Action {action!r} is {len(content)} tokens in the assistant position: {pieces}.",
                hint="Choose action strings that are single tokens for this tokenizer.",
            )
        ids[action] = int(content[0])
    if len(set(ids.values())) != len(ids):
        raise TokenizationError(
            f"Actions share token ids: {ids}.", hint="Choose distinct action strings."
        )
    return ids


def pad_rendered(chats: Sequence[RenderedChat], pad_token_id: int) -> dict[str, Tensor]:
    """Right-pad rendered chats into a batch.

    Right padding needs no attention mask for causal models: a real token never attends to the
    padding after it, so its activations equal those of the unpadded sequence.

    Args:
        chats: Rendered conversations.
        pad_token_id: Id written into padded positions.

    Returns:
        ``input_ids`` ``[batch, pos]``, ``attention_mask`` and each mask, all ``[batch, pos]``,
        plus ``lengths`` ``[batch]``.
    """
    if not chats:
        raise TokenizationError("No conversations to pad.", hint="Pass at least one.")
    width = max(len(c) for c in chats)
    batch = len(chats)
    out = {
        "input_ids": torch.full((batch, width), pad_token_id, dtype=torch.long),
        "attention_mask": torch.zeros(batch, width, dtype=torch.bool),
        "user_mask": torch.zeros(batch, width, dtype=torch.bool),
        "assistant_role_mask": torch.zeros(batch, width, dtype=torch.bool),
        "assistant_content_mask": torch.zeros(batch, width, dtype=torch.bool),
        "generation_prompt_mask": torch.zeros(batch, width, dtype=torch.bool),
        "lengths": torch.tensor([len(c) for c in chats], dtype=torch.long),
    }
    for row, chat in enumerate(chats):
        n = len(chat)
        out["input_ids"][row, :n] = chat.input_ids
        out["attention_mask"][row, :n] = True
        for name in (
            "user_mask",
            "assistant_role_mask",
            "assistant_content_mask",
            "generation_prompt_mask",
        ):
            out[name][row, :n] = getattr(chat, name)
    return out
