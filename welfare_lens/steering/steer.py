"""Activation steering: add α·v (or project a direction out) at one block's output.

The paper's intervention (paper_method A6) is ``h ← h + α·v`` with the raw, unnormalised
difference-of-means vector ``v`` at the output of block ℓ* (``blocks.ℓ*.hook_resid_post``), at
every assistant-turn token: the ``assistant`` role token(s) of the generation prompt (appendix
P.3) and every generated token. User and other prompt tokens are not steered. Trained vectors are
applied to the maze-naive model (the "RL-steered baseline"), and control vectors u are steered
with the norm-matched coefficient β = α‖v‖/‖u‖ and plotted at the nominal α (appendix M.1).

Usage::

    from welfare_lens.steering import generate, steer

    with steer(model, vectors, layer=20, alpha=2.0, name="gold") as record:
        out = generate(model, "How are you feeling right now?", max_new_tokens=64)
    print(record.delta_norm, record.resid_norm_mean)   # ‖α·v‖ and the mean ‖h‖ seen (B-15)

Token positions (``positions=``):

* ``"assistant"`` (default, the paper's rule): the generation-prompt tokens of the prompt
  (``<|im_start|>assistant\\n`` for ChatML) and every generated token. Which prompt tokens those
  are is declared by :func:`welfare_lens.steering.generate` (or by the user, with
  :func:`assistant_positions`) for every forward pass it makes, so the rule holds both for a
  prefill over the prompt followed by single-token decoding steps on a KV cache, and for a full
  forward over prompt + generated tokens. A forward pass made outside both is treated as a
  decoding step when it is one token long; a longer one raises :class:`ShapeError`, because the
  generation prompt cannot be told from the activations.
* ``"prompt"``: prompt tokens only (never generated ones).
* ``"all"``: every position of every forward pass.
* a boolean mask ``[pos]`` or ``[batch, pos]``, in absolute positions of the sequence (positions
  past its end are not steered), or an int / list of ints, relative to each forward pass (as in
  :mod:`welfare_lens.hooks`).

With α = 0 no activation is modified at all (the hook only observes), so outputs are bit-identical
to an unsteered model.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from welfare_lens.errors import ShapeError, VectorError
from welfare_lens.hooks import _position_mask, hook_name, n_layers, resolve_layer
from welfare_lens.vectors import ConceptVectors, norm_matched_scale

__all__ = [
    "PositionRule",
    "SteeringMode",
    "SteeringRecord",
    "SteeringSpec",
    "active_steering",
    "assistant_positions",
    "condition_fields",
    "norm_matched_alpha",
    "resolve_vector",
    "steer",
    "steer_many",
    "unsteered",
]

PositionRule = Literal["assistant", "prompt", "all"] | int | Sequence[int] | Tensor
SteeringMode = Literal["add", "ablate"]
_MODES: tuple[str, ...] = ("add", "ablate")
_RULES: tuple[str, ...] = ("assistant", "prompt", "all")

VectorLike = Tensor | ConceptVectors


# ----------------------------------------------------------------------------------------------
# Per-call position information (set by generate / assistant_positions)
# ----------------------------------------------------------------------------------------------


@dataclass
class _CallInfo:
    """Which tokens of the sequence are the prompt and its generation prompt.

    ``generation_mask`` is ``[batch or 1, prompt_len]``; the forward pass being run covers the
    absolute positions ``offset .. offset + pos - 1``. Positions at or past ``prompt_len`` are
    generated tokens.
    """

    generation_mask: Bool[Tensor, "b prompt"]
    offset: int = 0

    @property
    def prompt_len(self) -> int:
        return int(self.generation_mask.shape[1])


_CALL: ContextVar[_CallInfo | None] = ContextVar("welfare_lens_steer_call", default=None)
_SUSPENDED: ContextVar[bool] = ContextVar("welfare_lens_steer_suspended", default=False)
_ACTIVE: ContextVar[tuple[SteeringRecord, ...]] = ContextVar(
    "welfare_lens_steer_active", default=()
)


@contextlib.contextmanager
def assistant_positions(
    generation_mask: Bool[Tensor, " prompt"] | Bool[Tensor, "b prompt"], *, offset: int = 0
) -> Iterator[_CallInfo]:
    """Declare the generation-prompt tokens of the prompt for forward passes in this block.

    Inside the block, ``positions="assistant"`` steers the prompt tokens where
    ``generation_mask`` is True and every token after the prompt (generated tokens), and
    ``positions="prompt"`` steers exactly the prompt tokens. The forward passes are assumed to
    start at absolute position ``offset`` (0 for a full forward); the yielded object's
    ``offset`` may be advanced between cached decoding calls, as
    :func:`welfare_lens.steering.generate` does.

    Args:
        generation_mask: ``[prompt_len]`` or ``[batch, prompt_len]`` boolean mask, e.g.
            ``render_chat(tok, messages, add_generation_prompt=True).generation_prompt_mask``.
        offset: Absolute position of the first token of the next forward pass.

    Example:
        >>> chat = render_chat(model.tokenizer, messages, add_generation_prompt=True)
        >>> with steer(model, v, layer=20, alpha=2.0), assistant_positions(
        ...     chat.generation_prompt_mask
        ... ):
        ...     logits = model(chat.input_ids[None])
    """
    mask = torch.as_tensor(generation_mask)
    if mask.dtype != torch.bool or mask.ndim not in (1, 2):
        raise ShapeError(
            f"generation_mask must be a [pos] or [batch, pos] boolean mask, got "
            f"{mask.dtype} {tuple(mask.shape)}.",
            hint="Pass RenderedChat.generation_prompt_mask.",
        )
    info = _CallInfo(mask[None] if mask.ndim == 1 else mask, int(offset))
    token = _CALL.set(info)
    try:
        yield info
    finally:
        _CALL.reset(token)


@contextlib.contextmanager
def unsteered() -> Iterator[None]:
    """Suspend every active steering hook inside the block (they neither modify nor record).

    Judges use it, so that a judge that is the steered model itself is never steered.
    """
    token = _SUSPENDED.set(True)
    try:
        yield
    finally:
        _SUSPENDED.reset(token)


# ----------------------------------------------------------------------------------------------
# Specs and records
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SteeringSpec:
    """One steering intervention: a vector, a layer, a coefficient, positions and a mode.

    Attributes:
        vector: ``[d_model]`` tensor, ``[n_layers, d_model]`` per-layer tensor, or
            :class:`~welfare_lens.vectors.ConceptVectors` (then ``name`` picks the vector and
            ``vectors.at(name, layer)`` is used).
        layer: Block whose output (``hook_resid_post``) is modified; negative counts from the end.
        alpha: Coefficient on the raw vector (paper: α ∈ {−4, −2, 0, 2, 4}, A6). Ignored in
            ``"ablate"`` mode.
        name: Vector name within ``ConceptVectors`` (``"mold"``, ``"gold"``, ...).
        positions: Token positions (see module docstring); default the paper's ``"assistant"``.
        mode: ``"add"`` (h + α·v) or ``"ablate"`` (h − (h·v̂)v̂: the direction projected out).
        label: Name in records and result tables; defaults to ``name`` or ``"vector"``.
        nominal_alpha: The α a result is reported at when ``alpha`` is a norm-matched β
            (appendix M.1); defaults to ``alpha``.
    """

    vector: VectorLike
    layer: int
    alpha: float = 1.0
    name: str | None = None
    positions: PositionRule = "assistant"
    mode: SteeringMode = "add"
    label: str | None = None
    nominal_alpha: float | None = None

    @property
    def display_label(self) -> str:
        """``label``, else ``name``, else ``"vector"``."""
        return self.label or self.name or "vector"

    @property
    def reported_alpha(self) -> float:
        """``nominal_alpha`` if set, else ``alpha``."""
        return float(self.alpha if self.nominal_alpha is None else self.nominal_alpha)

    def norm_matched(
        self,
        reference: VectorLike,
        *,
        reference_name: str | None = None,
        model: Any | None = None,
    ) -> SteeringSpec:
        """This spec with α replaced by β = α‖v_ref‖/‖u‖ and ``nominal_alpha`` = α (A6, M.1).

        Used for control vectors u: they are steered with the coefficient that gives β·u the
        norm of α·v at the same layer, and reported at the nominal α.

        Args:
            reference: The vector whose norm is matched (e.g. the trained ConceptVectors).
            reference_name: Its name, when ``reference`` is ConceptVectors (default ``name``).
            model: Needed only to resolve a negative ``layer``.
        """
        total = n_layers(model) if model is not None else None
        u = resolve_vector(self.vector, self.layer, self.name, total=total)
        v = resolve_vector(reference, self.layer, reference_name or self.name, total=total)
        beta = norm_matched_alpha(self.reported_alpha, v, u)
        return replace(self, alpha=beta, nominal_alpha=self.reported_alpha)


@dataclass
class SteeringRecord:
    """What one steering hook did while its context was active (note B-15).

    ``delta_norm`` = ‖α·v‖ is what ``alpha`` means in units of the residual stream; compare it
    with ``resid_norm_mean``, the mean L2 norm of the residual at the layer (before the
    intervention) over every token position the hook saw.

    Attributes:
        label: Vector label.
        layer: Block index (resolved, non-negative).
        hook: Hook name the vector was added at.
        alpha: Coefficient actually applied (β for a norm-matched control).
        nominal_alpha: Reported α.
        mode: ``"add"`` or ``"ablate"``.
        positions: Position rule, as text.
        vector_norm: ‖v‖.
        delta_norm: ‖α·v‖ (0 in ablation mode).
        forward_calls: Forward passes seen.
        observed_tokens: Token positions seen (batch × positions, summed over calls).
        steered_tokens: Token positions modified.
    """

    label: str
    layer: int
    hook: str
    alpha: float
    nominal_alpha: float
    mode: str
    positions: str
    vector_norm: float
    delta_norm: float
    forward_calls: int = 0
    observed_tokens: int = 0
    steered_tokens: int = 0
    _norm_sum: Tensor | None = field(default=None, repr=False)
    _steered_norm_sum: Tensor | None = field(default=None, repr=False)
    _steered_count: Tensor | None = field(default=None, repr=False)

    @property
    def resid_norm_mean(self) -> float:
        """Mean ‖h‖ at the layer over all observed positions (NaN if none were seen)."""
        if self._norm_sum is None or self.observed_tokens == 0:
            return math.nan
        return float(self._norm_sum) / self.observed_tokens

    @property
    def steered_resid_norm_mean(self) -> float:
        """Mean ‖h‖ (before the intervention) over the steered positions only."""
        count = self.n_steered
        if self._steered_norm_sum is None or count == 0:
            return math.nan
        return float(self._steered_norm_sum) / count

    @property
    def n_steered(self) -> int:
        """Number of token positions modified (synchronises a device counter once)."""
        extra = 0 if self._steered_count is None else int(self._steered_count)
        return self.steered_tokens + extra

    @property
    def relative_delta(self) -> float:
        """``delta_norm / resid_norm_mean``: how large the push is relative to the stream."""
        mean = self.resid_norm_mean
        return self.delta_norm / mean if mean and math.isfinite(mean) else math.nan

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable summary."""
        return {
            "label": self.label,
            "layer": self.layer,
            "hook": self.hook,
            "alpha": self.alpha,
            "nominal_alpha": self.nominal_alpha,
            "mode": self.mode,
            "positions": self.positions,
            "vector_norm": self.vector_norm,
            "delta_norm": self.delta_norm,
            "resid_norm_mean": self.resid_norm_mean,
            "steered_resid_norm_mean": self.steered_resid_norm_mean,
            "relative_delta": self.relative_delta,
            "forward_calls": self.forward_calls,
            "observed_tokens": self.observed_tokens,
            "steered_tokens": self.n_steered,
        }


# ----------------------------------------------------------------------------------------------
# Vector resolution and norm matching
# ----------------------------------------------------------------------------------------------


def resolve_vector(
    vector: VectorLike,
    layer: int,
    name: str | None = None,
    *,
    total: int | None = None,
) -> Float[Tensor, " d_model"]:
    """The ``[d_model]`` vector a spec refers to at ``layer``.

    Args:
        vector: ``[d]`` tensor (used as is), ``[n_layers, d]`` tensor (row ``layer``), or
            ConceptVectors (``vectors.at(name, layer)``; ``name`` may be omitted when it holds
            one vector).
        layer: Layer index.
        name: Vector name for ConceptVectors.
        total: Number of layers, to resolve a negative ``layer`` of a per-layer tensor.

    Raises:
        VectorError: No name for a multi-vector ConceptVectors, or a non-finite vector.
        ShapeError: A tensor of another rank.
    """
    if isinstance(vector, ConceptVectors):
        if name is None:
            if len(vector.names) != 1:
                raise VectorError(
                    f"Which vector? These ConceptVectors hold {list(vector.names)}.",
                    hint="Pass name='gold' (or 'mold', ...).",
                )
            name = vector.names[0]
        out = vector.at(name, layer)
    elif isinstance(vector, Tensor):
        if vector.ndim == 1:
            out = vector
        elif vector.ndim == 2:
            rows = int(vector.shape[0])
            out = vector[resolve_layer(layer, rows if total is None else total)]
        else:
            raise ShapeError(
                f"A steering vector must be [d_model] or [n_layers, d_model], got "
                f"{tuple(vector.shape)}.",
                hint="Pick one layer's vector, e.g. vectors.gold[layer].",
            )
    else:
        raise VectorError(
            f"Cannot steer with a {type(vector).__name__}.",
            hint="Pass a torch tensor or ConceptVectors (with name=...).",
        )
    if not out.is_floating_point() or not bool(torch.isfinite(out).all()):
        raise VectorError(
            "The steering vector is not a finite floating-point tensor.",
            hint="Recompute it from finite activations.",
        )
    return out.detach()


def norm_matched_alpha(alpha: float, v: Tensor, u: Tensor) -> float:
    """β = α‖v‖/‖u‖: the coefficient that gives the control vector u the norm of α·v (A6, M.1).

    Args:
        alpha: Nominal α for the trained vector v.
        v: Reference (trained) vector at the layer, ``[d_model]``.
        u: Control vector at the layer, ``[d_model]``.

    Raises:
        VectorError: ``u`` is zero or a norm is not finite.
    """
    return norm_matched_scale(alpha, v, u)


# ----------------------------------------------------------------------------------------------
# The hook
# ----------------------------------------------------------------------------------------------


def _rule_text(positions: PositionRule) -> str:
    if isinstance(positions, str):
        return positions
    if isinstance(positions, Tensor):
        return f"mask{list(positions.shape)}" if positions.dtype == torch.bool else "indices"
    return "indices"


class _SteeringHook:
    """Plain TransformerLens hook function for one :class:`SteeringSpec`."""

    def __init__(self, spec: SteeringSpec, vector: Tensor, record: SteeringRecord) -> None:
        self.spec = spec
        self.vector = vector
        self.record = record
        self._cache: dict[tuple[torch.device, torch.dtype], Tensor] = {}
        self.noop = spec.mode == "add" and spec.alpha == 0.0
        if spec.mode == "ablate":
            norm = torch.linalg.vector_norm(vector.to(torch.float64))
            if float(norm) == 0.0:
                raise VectorError("Cannot ablate a zero direction.", hint="Pass a non-zero vector.")
            self.direction = (vector.to(torch.float64) / norm).to(vector.dtype)

    def _operand(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        key = (device, dtype)
        cached = self._cache.get(key)
        if cached is None:
            if self.spec.mode == "add":
                cached = (self.spec.alpha * self.vector.to(torch.float32)).to(device, dtype)
            else:
                cached = self.direction.to(device, dtype)
            self._cache[key] = cached
        return cached

    def _mask(self, batch: int, pos: int, device: torch.device) -> Tensor | None:
        """``None`` = every position; otherwise a ``[batch, pos]`` boolean mask."""
        rule = self.spec.positions
        if isinstance(rule, str):
            if rule == "all":
                return None
            info = _CALL.get()
            if info is None:
                if rule == "prompt":
                    # Outside generate(): a one-token pass is taken as a decoding step.
                    return None if pos > 1 else torch.zeros(batch, pos, dtype=torch.bool)
                if pos == 1:
                    return None
                raise ShapeError(
                    "positions='assistant' needs to know which prompt tokens form the "
                    f"assistant generation prompt, but this forward pass ({pos} tokens) was "
                    "not made by welfare_lens.steering.generate.",
                    hint="Use welfare_lens.steering.generate, wrap the call in "
                    "assistant_positions(rendered.generation_prompt_mask), or pass an explicit "
                    "boolean mask (positions=...).",
                )
            start, stop = info.offset, info.offset + pos
            plen = info.prompt_len
            if rule == "prompt":
                if stop <= plen:
                    return None
                absolute = torch.arange(start, stop)
                return (absolute < plen).unsqueeze(0).expand(batch, -1)
            if start >= plen:
                return None  # decoding: every generated token is an assistant token
            gen = info.generation_mask[:, start : min(stop, plen)]
            if gen.shape[0] not in (1, batch):
                raise ShapeError(
                    f"Generation-prompt mask for batch {gen.shape[0]} used with batch {batch}.",
                    hint="Pass a [prompt] mask or one row per sequence.",
                )
            gen = gen.expand(batch, -1)
            if stop > plen:
                gen = torch.cat([gen, torch.ones(batch, stop - plen, dtype=torch.bool)], dim=1)
            return gen
        if isinstance(rule, Tensor) and rule.dtype == torch.bool:
            info = _CALL.get()
            if info is not None:
                full = rule if rule.ndim == 2 else rule.unsqueeze(0)
                window = full[:, info.offset : info.offset + pos]
                if window.shape[0] == 1:
                    window = window.expand(batch, -1)
                return _position_mask(window, batch, pos, device)
            return _position_mask(rule, batch, pos, device)
        return _position_mask(rule, batch, pos, device)

    def __call__(self, activation: Float[Tensor, "batch pos d_model"], hook: Any) -> Tensor | None:
        if _SUSPENDED.get():
            return None
        if activation.ndim != 3 or activation.shape[-1] != self.vector.shape[0]:
            raise ShapeError(
                f"A steering vector of size {self.vector.shape[0]} cannot be applied at "
                f"{self.record.hook} to activations of shape {tuple(activation.shape)}.",
                hint="Use a vector extracted from this model (same d_model).",
            )
        batch, pos = int(activation.shape[0]), int(activation.shape[1])
        mask = self._mask(batch, pos, activation.device)
        if mask is not None:
            mask = mask.to(activation.device)
        rec = self.record
        norms = torch.linalg.vector_norm(activation.detach().float(), dim=-1)
        total = norms.sum()
        rec._norm_sum = total if rec._norm_sum is None else rec._norm_sum + total
        rec.forward_calls += 1
        rec.observed_tokens += batch * pos
        if mask is None:
            steered_sum = total
            rec.steered_tokens += batch * pos
        else:
            steered_sum = (norms * mask).sum()
            count = mask.sum()
            rec._steered_count = count if rec._steered_count is None else rec._steered_count + count
        rec._steered_norm_sum = (
            steered_sum if rec._steered_norm_sum is None else rec._steered_norm_sum + steered_sum
        )
        if self.noop:
            return None
        operand = self._operand(activation.device, activation.dtype)
        if self.spec.mode == "add":
            steered = activation + operand
        else:
            coeff = activation @ operand
            steered = activation - coeff.unsqueeze(-1) * operand
        if mask is None:
            return steered
        return torch.where(mask.unsqueeze(-1), steered, activation)


# ----------------------------------------------------------------------------------------------
# Context managers
# ----------------------------------------------------------------------------------------------


def _prepare(model: Any, spec: SteeringSpec) -> tuple[str, _SteeringHook]:
    if spec.mode not in _MODES:
        raise VectorError(f"Unknown steering mode {spec.mode!r}.", hint=f"Use one of {_MODES}.")
    if isinstance(spec.positions, str) and spec.positions not in _RULES:
        raise ShapeError(
            f"Unknown position rule {spec.positions!r}.",
            hint=f"Use one of {_RULES}, a boolean mask, or token indices.",
        )
    try:
        alpha = float(spec.alpha)
    except (TypeError, ValueError):
        alpha = math.nan
    if isinstance(spec.alpha, bool) or not math.isfinite(alpha):
        raise VectorError(
            f"alpha must be a finite number, got {spec.alpha!r}.",
            hint="Pass a float such as 2.0 (the paper sweeps alpha over -4..4).",
        )
    total = n_layers(model)
    layer = resolve_layer(spec.layer, total)
    if isinstance(spec.vector, ConceptVectors):
        spec.vector.check_compatible(model, allow_other_checkpoint=True)
    vector = resolve_vector(spec.vector, layer, spec.name, total=total)
    d_model = getattr(getattr(model, "cfg", None), "d_model", None)
    if isinstance(d_model, int) and vector.shape[0] != d_model:
        raise ShapeError(
            f"The steering vector has {vector.shape[0]} dimensions, the model's d_model is "
            f"{d_model}.",
            hint="Use a vector extracted from this model.",
        )
    spec = replace(spec, alpha=alpha, layer=layer)
    name = hook_name(layer, total=total)
    v_norm = float(torch.linalg.vector_norm(vector.to(torch.float64)))
    record = SteeringRecord(
        label=spec.display_label,
        layer=layer,
        hook=name,
        alpha=alpha,
        nominal_alpha=spec.reported_alpha,
        mode=spec.mode,
        positions=_rule_text(spec.positions),
        vector_norm=v_norm,
        delta_norm=abs(alpha) * v_norm if spec.mode == "add" else 0.0,
    )
    return name, _SteeringHook(spec, vector, record)


@contextlib.contextmanager
def steer_many(model: Any, specs: Sequence[SteeringSpec]) -> Iterator[list[SteeringRecord]]:
    """Apply several interventions at once (same or different layers), in the given order.

    Hooks at the same layer run in list order, so an ``"ablate"`` spec listed before an
    ``"add"`` spec projects the direction out of the unsteered stream and then adds.

    Args:
        model: A TransformerBridge (or HookedTransformer).
        specs: The interventions.

    Yields:
        One :class:`SteeringRecord` per spec, updated while the block runs.

    Raises:
        LayerError, ShapeError, VectorError: for a bad layer, vector, rule or mode (before any
            hook is attached).
    """
    prepared = [_prepare(model, spec) for spec in specs]
    records = [hook.record for _, hook in prepared]
    token = _ACTIVE.set((*_ACTIVE.get(), *records))
    try:
        with model.hooks(fwd_hooks=[(name, hook) for name, hook in prepared]):
            yield records
    finally:
        _ACTIVE.reset(token)


@contextlib.contextmanager
def steer(
    model: Any,
    vector: VectorLike,
    layer: int,
    alpha: float = 1.0,
    *,
    name: str | None = None,
    positions: PositionRule = "assistant",
    mode: SteeringMode = "add",
    label: str | None = None,
    nominal_alpha: float | None = None,
) -> Iterator[SteeringRecord]:
    """Steer ``model`` inside a ``with`` block: h ← h + α·v at the output of block ``layer``.

    This is the paper's intervention (A6): the raw vector times α, at every assistant-turn token
    by default. ``ConceptVectors`` are checked against the model with
    ``allow_other_checkpoint=True``, since the paper steers the maze-naive model with vectors
    from the trained checkpoint.

    Args:
        model: A TransformerBridge.
        vector: ``[d_model]`` tensor, ``[n_layers, d_model]`` tensor or ConceptVectors.
        layer: Block index ℓ (``blocks.ℓ.hook_resid_post``).
        alpha: Coefficient (ignored by ``mode="ablate"``).
        name: Vector name within ConceptVectors (e.g. ``"gold"``).
        positions: ``"assistant"`` (default), ``"prompt"``, ``"all"``, a boolean mask or
            indices (module docstring).
        mode: ``"add"`` or ``"ablate"`` (project the direction out: h − (h·v̂)v̂).
        label: Name used in records and tables (default ``name`` or ``"vector"``).
        nominal_alpha: α to report when ``alpha`` is a norm-matched β.

    Yields:
        A :class:`SteeringRecord` with ‖α·v‖ and the residual norms observed (B-15).

    Example:
        >>> with steer(model, v, layer=20, alpha=-2.0, name="mold") as rec:
        ...     outs = generate(model, ["How are you?"], max_new_tokens=32, temperature=0)
        >>> rec.delta_norm / rec.resid_norm_mean
    """
    spec = SteeringSpec(
        vector=vector,
        layer=layer,
        alpha=alpha,
        name=name,
        positions=positions,
        mode=mode,
        label=label,
        nominal_alpha=nominal_alpha,
    )
    with steer_many(model, [spec]) as records:
        yield records[0]


def active_steering() -> tuple[SteeringRecord, ...]:
    """The records of every steering context currently open (outermost first)."""
    return _ACTIVE.get()


def condition_fields() -> dict[str, Any]:
    """``alpha``, ``layer`` and ``vector`` of the active steering, for result rows.

    No steering gives ``alpha=0.0, layer=None, vector=None``; one spec gives its reported α,
    layer and label; several give the first spec's α and layer and the labels joined by ``+``.
    """
    active = [r for r in _ACTIVE.get() if r.mode == "add"] or list(_ACTIVE.get())
    if not active:
        return {"alpha": 0.0, "layer": None, "vector": None}
    first = active[0]
    label = "+".join(r.label for r in active)
    if first.mode == "ablate":
        label = f"ablate:{label}"
    return {"alpha": first.nominal_alpha, "layer": first.layer, "vector": label}
