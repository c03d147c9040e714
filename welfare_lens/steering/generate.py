"""Sampling with a KV cache, under the paper's steering position rule.

:func:`generate` is a small, explicit sampling loop (temperature, nucleus top-p, greedy at
temperature 0) over a TransformerBridge's HF KV cache: one prefill forward over the prompt, then
one single-token forward per generated token. For every forward pass it declares which tokens are
the prompt's generation prompt (:func:`~welfare_lens.steering.steer.assistant_positions`), so
steering with ``positions="assistant"`` covers the ``assistant`` role tokens and every generated
token and nothing else (paper_method A6, appendix P.3), with or without the cache.

The paper does not give the sampling parameters of its steered generations (note B-11); training
used temperature 0.7, which is the default here.

Batching: the samples of one prompt decode together (they share the prompt, so no padding is
needed); prompts decode one after another. Each sample draws from its own generator seeded from
``(seed, prompt index, sample index)``, so a sample's tokens do not depend on the batch size and
the same seeds are reused across steering conditions (common random numbers).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from welfare_lens._memory import free_memory, is_out_of_memory, warn_back_off
from welfare_lens.chat import RenderedChat, TemplateChoice, render_chat
from welfare_lens.errors import ResourceError, ShapeError, TokenizationError
from welfare_lens.steering.steer import SteeringSpec, assistant_positions, steer_many

__all__ = [
    "Generation",
    "GenerationStats",
    "PromptLike",
    "generate",
    "render_prompt",
    "stop_token_ids",
]

PromptLike = str | Sequence[Mapping[str, str]] | RenderedChat | Tensor

# End-of-turn tokens of common chat templates; used as stop tokens when the tokenizer has them.
_END_OF_TURN = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|endoftext|>", "<|end|>")


@dataclass(frozen=True)
class Generation:
    """One sampled continuation.

    Attributes:
        prompt_index: Index of the prompt in the call.
        sample: Sample index within the prompt.
        prompt: The prompt as text (a plain string prompt, else the rendered prompt).
        text: Decoded continuation, special tokens and the stop token removed.
        token_ids: Generated token ids (including the stop token if one was produced).
        n_prompt_tokens: Prompt length in tokens.
        finished: True when generation ended on a stop token or stop string (not the budget).
        seed: Seed of this sample's generator.
    """

    prompt_index: int
    sample: int
    prompt: str
    text: str
    token_ids: tuple[int, ...]
    n_prompt_tokens: int
    finished: bool
    seed: int

    @property
    def n_new_tokens(self) -> int:
        """Number of generated tokens."""
        return len(self.token_ids)


@dataclass
class GenerationStats:
    """Counters accumulated over :func:`generate` calls (pass one in to collect them)."""

    generated_tokens: int = 0
    prompt_tokens: int = 0
    forward_calls: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens (all batch rows) per second of wall time."""
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0


def render_prompt(
    tokenizer: Any, prompt: PromptLike, *, template: TemplateChoice = "auto"
) -> tuple[Int[Tensor, " pos"], Tensor, str]:
    """Token ids, generation-prompt mask and display text of one prompt.

    A string is one user message (no system prompt: the paper uses none, and SmolLM2's injected
    default is removed by :func:`~welfare_lens.chat.render_chat`); a list of messages is a
    conversation; a :class:`~welfare_lens.chat.RenderedChat` is used as is; a 1-D tensor is raw
    token ids with no generation prompt (only generated tokens count as assistant tokens).
    """
    if isinstance(prompt, Tensor):
        if prompt.ndim != 1 or prompt.is_floating_point() or prompt.numel() == 0:
            raise ShapeError(
                f"A token-id prompt must be a non-empty 1-D integer tensor, got "
                f"{prompt.dtype} {tuple(prompt.shape)}.",
                hint="Pass one sequence at a time, or a string / list of messages.",
            )
        ids = prompt.to(torch.long).cpu()
        return ids, torch.zeros(ids.shape[0], dtype=torch.bool), str(tokenizer.decode(ids))
    if isinstance(prompt, RenderedChat):
        return prompt.input_ids, prompt.generation_prompt_mask, prompt.text
    if isinstance(prompt, str):
        chat = render_chat(
            tokenizer,
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            template=template,
        )
        return chat.input_ids, chat.generation_prompt_mask, prompt
    chat = render_chat(tokenizer, list(prompt), add_generation_prompt=True, template=template)
    return chat.input_ids, chat.generation_prompt_mask, chat.text


def stop_token_ids(model_or_tokenizer: Any) -> list[int]:
    """EOS and end-of-turn token ids of a model (generation config) or tokenizer."""
    tokenizer = getattr(model_or_tokenizer, "tokenizer", model_or_tokenizer)
    ids: set[int] = set()
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    hf = getattr(model_or_tokenizer, "original_model", None)
    config_eos = getattr(getattr(hf, "generation_config", None), "eos_token_id", None)
    if isinstance(config_eos, int):
        ids.add(config_eos)
    elif isinstance(config_eos, list | tuple):
        ids.update(int(i) for i in config_eos)
    for token in _END_OF_TURN:
        try:
            tid = tokenizer.convert_tokens_to_ids(token)
        except (KeyError, ValueError, TypeError):
            continue
        if isinstance(tid, int) and tokenizer.convert_ids_to_tokens(tid) == token:
            ids.add(tid)
    return sorted(ids)


def _is_single(prompts: Any) -> bool:
    if isinstance(prompts, str | RenderedChat | Tensor):
        return True
    return bool(prompts) and isinstance(prompts[0], Mapping)


def _derive_seed(seed: int, prompt_index: int, sample: int) -> int:
    x = (int(seed) * 1_000_003 + prompt_index) * 1_000_033 + sample
    x ^= x >> 29
    return (x * 0x9E3779B97F4A7C15) & 0x7FFF_FFFF_FFFF_FFFF


def _model_device(model: Any) -> torch.device:
    device = getattr(getattr(model, "cfg", None), "device", None)
    if device is not None:
        return torch.device(device)
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def _sample(
    logits: Float[Tensor, "b vocab"],
    temperature: float,
    top_p: float,
    generators: Sequence[torch.Generator],
) -> Int[Tensor, " b"]:
    """Next token per row: argmax at temperature 0, else temperature + nucleus sampling."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        keep = (sorted_probs.cumsum(dim=-1) - sorted_probs) < top_p
        sorted_probs = sorted_probs * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    out = torch.empty(logits.shape[0], dtype=torch.long)
    for row, gen in enumerate(generators):
        out[row] = torch.multinomial(probs[row], 1, generator=gen)[0]
    return out


def _forward_last(model: Any, ids: Tensor, past: Any, use_cache: bool) -> tuple[Tensor, Any]:
    """Logits at the last position (float32, CPU) and the updated cache."""
    from welfare_lens.rl.rollout import forward_logits

    keep = torch.tensor([ids.shape[1] - 1], device=ids.device)
    if use_cache:
        logits, past = forward_logits(
            model, ids, keep, past_key_values=past, return_type="logits_and_cache"
        )
    else:
        logits = forward_logits(model, ids, keep)
    return logits[:, -1].float().cpu(), past


@contextlib.contextmanager
def _maybe_steer(
    model: Any, steering: SteeringSpec | Sequence[SteeringSpec] | None
) -> Iterator[None]:
    if steering is None:
        yield
        return
    specs = [steering] if isinstance(steering, SteeringSpec) else list(steering)
    with steer_many(model, specs):
        yield


def _tail_has_stop(tokenizer: Any, ids: list[int], stop_strings: Sequence[str]) -> bool:
    tail = tokenizer.decode(ids[-16:], skip_special_tokens=True)
    return any(s in tail for s in stop_strings)


def _decode(tokenizer: Any, ids: list[int], stops: set[int], stop_strings: Sequence[str]) -> str:
    body = ids[:-1] if ids and ids[-1] in stops else ids
    text = str(tokenizer.decode(body, skip_special_tokens=True))
    for s in stop_strings:
        cut = text.find(s)
        if cut >= 0:
            text = text[:cut]
    return text


@torch.no_grad()
def generate(
    model: Any,
    prompts: PromptLike | Sequence[PromptLike],
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.7,
    top_p: float = 1.0,
    seed: int = 0,
    samples: int = 1,
    steering: SteeringSpec | Sequence[SteeringSpec] | None = None,
    use_cache: bool = True,
    batch_size: int | None = None,
    stop_tokens: Sequence[int] | None = None,
    stop_strings: Sequence[str] | None = None,
    template: TemplateChoice = "auto",
    stats: GenerationStats | None = None,
    progress: bool = False,
) -> list[Generation]:
    """Sample ``samples`` continuations of each prompt, with a KV cache.

    Args:
        model: A TransformerBridge.
        prompts: One prompt or a list of prompts; each a string (one user message), a list of
            messages, a RenderedChat, or a 1-D tensor of token ids.
        max_new_tokens: Generation budget per sample.
        temperature: Sampling temperature; 0 gives greedy decoding (argmax, first index on ties).
        top_p: Nucleus sampling mass (1.0 = off).
        seed: Base seed; sample ``j`` of prompt ``i`` uses a generator seeded from
            ``(seed, i, j)``.
        samples: Samples per prompt (the paper uses 20 for sentiment, A7).
        steering: Spec(s) applied during this call (equivalent to wrapping the call in
            :func:`~welfare_lens.steering.steer.steer_many`). Steering contexts already open
            around the call apply too.
        use_cache: Decode on the KV cache (default). ``False`` re-runs the whole sequence for
            every token; it exists to check the cache (results are equal up to float rounding).
        batch_size: Samples of one prompt decoded together (default: all of them, at most 32).
        stop_tokens: Token ids that end a sample (default: EOS and end-of-turn tokens,
            :func:`stop_token_ids`).
        stop_strings: Strings that end a sample; the text is cut before them. Default: none,
            except ``"### User:"`` for tokenizers without a chat template (the plain format of
            :mod:`welfare_lens.chat`).
        template: Chat template choice for string and message prompts.
        stats: Optional counters to accumulate into.
        progress: Show a tqdm bar over prompts.

    Returns:
        ``len(prompts) * samples`` generations, prompt-major.

    Raises:
        ShapeError, TokenizationError: malformed prompts or a bad ``batch_size``.
        ResourceError: the device ran out of memory even one sample at a time. Larger batches
            that run out of memory are halved first, with a warning (results are unchanged:
            every sample has its own generator).
    """
    if max_new_tokens < 1:
        raise ShapeError(f"max_new_tokens must be >= 1, got {max_new_tokens}.", hint="Pass 1+.")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ShapeError(
            f"Need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}.",
            hint="temperature=0 is greedy; top_p=1 disables nucleus sampling.",
        )
    if samples < 1:
        raise ShapeError(f"samples must be >= 1, got {samples}.", hint="Pass 1+.")
    tokenizer = model.tokenizer
    items: list[Any] = [prompts] if _is_single(prompts) else list(prompts)  # type: ignore[arg-type]
    if not items:
        raise TokenizationError("No prompts given.", hint="Pass at least one prompt.")
    stops = set(stop_token_ids(model) if stop_tokens is None else (int(t) for t in stop_tokens))
    if stop_strings is None:
        stop_strings = () if getattr(tokenizer, "chat_template", None) else ("### User:",)
    stop_strings = tuple(stop_strings)
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ShapeError(
            f"batch_size must be a positive integer or None, got {batch_size!r}.",
            hint="Pass e.g. batch_size=8, or None to decode all samples of a prompt together.",
        )
    width = min(samples, 32) if batch_size is None else batch_size
    device = _model_device(model)
    pad = next(iter(sorted(stops)), 0)
    results: list[Generation] = []
    iterator: Any = enumerate(items)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=len(items), desc="generate", leave=False)
    started = time.perf_counter()
    with _maybe_steer(model, steering):
        for index, prompt in iterator:
            ids, gen_mask, display = render_prompt(tokenizer, prompt, template=template)
            first = 0
            while first < samples:
                rows = list(range(first, min(samples, first + width)))
                try:
                    rows_out = _generate_rows(
                        model,
                        ids,
                        gen_mask,
                        display,
                        index,
                        rows,
                        seed=seed,
                        max_new_tokens=max_new_tokens,
                        temperature=temperature,
                        top_p=top_p,
                        use_cache=use_cache,
                        stops=stops,
                        stop_strings=stop_strings,
                        pad=pad,
                        device=device,
                        stats=stats,
                    )
                except RuntimeError as err:  # torch.OutOfMemoryError is one
                    if not is_out_of_memory(err):
                        raise
                    free_memory()
                    if width == 1:
                        raise ResourceError(
                            "generate ran out of memory even with batch_size=1 "
                            f"({type(err).__name__}: {str(err).strip()[:200]}).",
                            hint="Lower max_new_tokens, shorten the prompt, load the model in a "
                            "smaller dtype (e.g. torch.bfloat16), or use a larger device.",
                        ) from err
                    # Each sample has its own generator, so a smaller batch gives the same text.
                    warn_back_off("batch_size", width, width // 2)
                    width //= 2
                    continue
                results.extend(rows_out)
                first += len(rows)
    if stats is not None:
        stats.seconds += time.perf_counter() - started
    return results


def _generate_rows(
    model: Any,
    ids: Tensor,
    gen_mask: Tensor,
    display: str,
    index: int,
    rows: list[int],
    *,
    seed: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    use_cache: bool,
    stops: set[int],
    stop_strings: tuple[str, ...],
    pad: int,
    device: torch.device,
    stats: GenerationStats | None,
) -> list[Generation]:
    tokenizer = model.tokenizer
    batch = len(rows)
    seeds = [_derive_seed(seed, index, j) for j in rows]
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    prompt = ids.to(device).unsqueeze(0).expand(batch, -1).contiguous()
    plen = int(prompt.shape[1])
    new: list[list[int]] = [[] for _ in rows]
    done = [False] * batch
    calls = 0
    with assistant_positions(gen_mask) as info:
        logits, past = _forward_last(model, prompt, None, use_cache)
        calls += 1
        sequence = prompt
        for step in range(max_new_tokens):
            token = _sample(logits, temperature, top_p, generators)
            for r in range(batch):
                if done[r]:
                    token[r] = pad
                    continue
                tid = int(token[r])
                new[r].append(tid)
                if tid in stops or (
                    stop_strings and _tail_has_stop(tokenizer, new[r], stop_strings)
                ):
                    done[r] = True
            if all(done) or step == max_new_tokens - 1:
                break
            nxt = token.to(device).unsqueeze(1)
            if use_cache:
                info.offset = plen + step
                logits, past = _forward_last(model, nxt, past, True)
            else:
                sequence = torch.cat([sequence, nxt], dim=1)
                info.offset = 0
                logits, _ = _forward_last(model, sequence, None, False)
            calls += 1
    if stats is not None:
        stats.generated_tokens += sum(len(t) for t in new)
        stats.prompt_tokens += plen * batch
        stats.forward_calls += calls
    return [
        Generation(
            prompt_index=index,
            sample=j,
            prompt=display,
            text=_decode(tokenizer, new[r], stops, stop_strings),
            token_ids=tuple(new[r]),
            n_prompt_tokens=plen,
            finished=done[r],
            seed=seeds[r],
        )
        for r, j in enumerate(rows)
    ]
