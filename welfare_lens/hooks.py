"""Hook names, position selection, and plain TransformerLens hook functions.

"Layer ℓ" means the output of block ℓ, ``blocks.ℓ.hook_resid_post`` (the paper reads and steers
the residual stream at block outputs, paper_method A4 and A6). The hook functions here are plain
TransformerLens hook functions ``fn(activation, hook) -> activation | None`` so that they work
with ``run_with_hooks``, the ``hooks()`` context manager, a ``TransformerBridge`` or a legacy
``HookedTransformer`` alike.

Positions are given as one of:

* ``None``: every position;
* an int or a sequence/1-D tensor of ints: the same positions in every row (negative indices
  count from the end of the padded sequence);
* a boolean mask ``[batch, pos]`` (or ``[pos]``, broadcast over the batch): exactly those tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from welfare_lens.errors import LayerError, ShapeError, VectorError

__all__ = [
    "HOOK_KINDS",
    "HookKind",
    "Positions",
    "add_vector_hook",
    "capture_hook",
    "capture_hooks",
    "hook_name",
    "layer_of",
    "n_layers",
    "resolve_layer",
    "resolve_layers",
    "run_until",
]

HookKind = Literal["resid_post", "resid_pre", "resid_mid", "attn_out", "mlp_out"]
HOOK_KINDS: tuple[HookKind, ...] = ("resid_post", "resid_pre", "resid_mid", "attn_out", "mlp_out")

Positions = None | int | Sequence[int] | Tensor

HookFn = Callable[[Tensor, Any], Tensor | None]


def n_layers(model: Any) -> int:
    """Number of transformer blocks of a TransformerLens model (``model.cfg.n_layers``)."""
    try:
        return int(model.cfg.n_layers)
    except AttributeError as err:
        raise LayerError(
            f"{type(model).__name__} has no cfg.n_layers.",
            hint="Pass a TransformerLens model (wl.load_model(...)) or an int layer count.",
        ) from err


def resolve_layer(layer: int, total: int) -> int:
    """Map a possibly negative layer index to ``0..total-1``.

    Raises:
        LayerError: if the index is not an int or is out of range.
    """
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise LayerError(
            f"Layer {layer!r} is not an integer.", hint=f"Use an int in [-{total}, {total - 1}]."
        )
    if not -total <= layer < total:
        raise LayerError(
            f"Layer {layer} is out of range for a model with {total} layers.",
            hint=f"Use 0..{total - 1} (or -1 for the last block).",
        )
    return layer % total


def resolve_layers(layers: int | Sequence[int] | None, total: int) -> list[int]:
    """Resolve ``None`` (all layers), an int, or a sequence of ints to sorted unique indices."""
    if layers is None:
        return list(range(total))
    if isinstance(layers, int):
        return [resolve_layer(layers, total)]
    resolved = sorted({resolve_layer(layer, total) for layer in layers})
    if not resolved:
        raise LayerError("No layers were given.", hint="Pass None for all layers.")
    return resolved


def hook_name(layer: int, kind: HookKind = "resid_post", *, total: int | None = None) -> str:
    """The TransformerLens hook name of ``kind`` at block ``layer``.

    Args:
        layer: Block index; negative indices need ``total``.
        kind: ``resid_post`` (default; "layer ℓ" in the paper), ``resid_pre``, ``resid_mid``,
            ``attn_out`` or ``mlp_out``.
        total: Number of layers, to validate ``layer`` and resolve negative indices.

    Returns:
        For example ``"blocks.3.hook_resid_post"``.
    """
    if kind not in HOOK_KINDS:
        raise LayerError(f"Unknown hook kind {kind!r}.", hint=f"Use one of {HOOK_KINDS}.")
    if total is not None:
        layer = resolve_layer(layer, total)
    elif isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise LayerError(
            f"Layer {layer!r} needs the model's layer count to be resolved.",
            hint="Pass total=model.cfg.n_layers, or a non-negative int.",
        )
    return f"blocks.{layer}.hook_{kind}"


def layer_of(name: str) -> tuple[int, HookKind]:
    """Inverse of :func:`hook_name`: ``"blocks.3.hook_mlp_out"`` -> ``(3, "mlp_out")``."""
    parts = name.split(".")
    if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit():
        kind = parts[2].removeprefix("hook_")
        if kind in HOOK_KINDS:
            return int(parts[1]), kind  # type: ignore[return-value]
    raise LayerError(
        f"{name!r} is not a per-block hook name.",
        hint="Expected 'blocks.<layer>.hook_<kind>' with kind in " + ", ".join(HOOK_KINDS),
    )


def _position_mask(positions: Positions, batch: int, pos: int, device: Any) -> Bool[Tensor, "b p"]:
    if positions is None:
        return torch.ones(batch, pos, dtype=torch.bool, device=device)
    if isinstance(positions, Tensor) and positions.dtype == torch.bool:
        mask = positions.to(device)
        if mask.ndim == 1:
            mask = mask.unsqueeze(0).expand(batch, -1)
        if mask.ndim != 2 or mask.shape[0] != batch or mask.shape[1] > pos:
            raise ShapeError(
                f"Position mask of shape {tuple(positions.shape)} does not fit activations of "
                f"batch {batch} and {pos} positions.",
                hint="Pass a [batch, pos] (or [pos]) boolean mask built for the same input.",
            )
        if mask.shape[1] < pos:
            # The forward pass is longer than the mask (e.g. generation appended tokens):
            # the new positions are not selected.
            pad = torch.zeros(batch, pos - mask.shape[1], dtype=torch.bool, device=device)
            mask = torch.cat([mask, pad], dim=1)
        return mask
    index = torch.as_tensor([positions] if isinstance(positions, int) else positions)
    if index.dtype == torch.bool or index.ndim != 1 or index.is_floating_point():
        raise ShapeError(
            f"Positions {positions!r} are neither indices nor a [batch, pos] boolean mask.",
            hint="Pass an int, a list of ints, or a boolean mask.",
        )
    if index.numel() and (index.max() >= pos or index.min() < -pos):
        raise ShapeError(
            f"Position index out of range for a sequence of {pos} tokens: {index.tolist()}.",
            hint="Use indices in [-pos, pos-1].",
        )
    mask = torch.zeros(batch, pos, dtype=torch.bool, device=device)
    mask[:, index.to(device) % pos] = True
    return mask


def capture_hook(
    store: dict[str, Tensor],
    positions: Positions = None,
    *,
    key: str | None = None,
    detach: bool = True,
    to_cpu: bool = False,
) -> HookFn:
    """A hook that records activations at ``positions`` into ``store[key or hook.name]``.

    With ``positions=None`` the whole ``[batch, pos, d_model]`` activation is stored; with an int
    it is ``[batch, d_model]``; with several indices ``[batch, n, d_model]``; with a boolean
    mask the selected rows are stacked, ``[n_selected, d_model]`` in row-major order.

    Args:
        store: Dict that receives one tensor per hook (overwritten on each forward pass).
        key: Key to store under. TransformerBridge reports its canonical names to hooks
            (``blocks.3.hook_out`` for ``blocks.3.hook_resid_post``), so pass the name you
            attached the hook to if you want to find it there; :func:`capture_hooks` does.
        positions: Which token positions to keep (see module docstring).
        detach: Detach from the autograd graph (default), so stored tensors hold no graph.
        to_cpu: Move the captured tensor to CPU.

    Returns:
        A TransformerLens hook function; it returns nothing, so the forward pass is unchanged.
    """

    def hook(activation: Float[Tensor, "batch pos d_model"], hook: Any) -> None:
        if activation.ndim != 3:
            raise ShapeError(
                f"capture_hook expects [batch, pos, d_model] activations, got "
                f"{tuple(activation.shape)} at {hook.name}.",
                hint="Attach it to a residual-stream or block-output hook.",
            )
        act = activation.detach() if detach else activation
        if positions is None:
            selected = act
        elif isinstance(positions, int):
            selected = act[:, positions]
        elif isinstance(positions, Tensor) and positions.dtype == torch.bool:
            batch, pos = act.shape[:2]
            selected = act[_position_mask(positions, batch, pos, act.device)]
        else:
            index = torch.as_tensor(
                list(positions) if not isinstance(positions, Tensor) else positions,
                device=act.device,
            )
            selected = act[:, index]
        store[key or hook.name] = selected.cpu() if to_cpu else selected

    return hook


def capture_hooks(
    names: Sequence[str],
    store: dict[str, Tensor],
    positions: Positions = None,
    *,
    detach: bool = True,
    to_cpu: bool = False,
) -> list[tuple[str, HookFn]]:
    """``fwd_hooks`` that capture each of ``names`` into ``store[name]`` (see :func:`capture_hook`).

    Example:
        >>> store = {}
        >>> names = [hook_name(layer) for layer in range(model.cfg.n_layers)]
        >>> model.run_with_hooks(tokens, fwd_hooks=capture_hooks(names, store, positions=-1))
    """
    return [
        (name, capture_hook(store, positions, key=name, detach=detach, to_cpu=to_cpu))
        for name in names
    ]


def add_vector_hook(
    vector: Float[Tensor, " d_model"],
    alpha: float = 1.0,
    positions: Positions = None,
) -> HookFn:
    """A hook that adds ``alpha * vector`` to the activation at ``positions``.

    This is the paper's steering intervention h ← h + α·v at one layer (paper_method A6): the raw,
    unnormalised difference-of-means vector times α.

    Args:
        vector: ``[d_model]`` direction, moved to the activation's device and dtype on use.
        alpha: Scale.
        positions: Which positions to modify (see module docstring); ``None`` = all, which also
            covers every newly generated token when used during generation.

    Returns:
        A TransformerLens hook function returning the modified activation.

    Raises:
        VectorError: if the vector is not 1-D or has NaN/inf values.
    """
    if not isinstance(vector, Tensor) or vector.ndim != 1:
        raise VectorError(
            f"Steering vector must be a 1-D tensor, got {getattr(vector, 'shape', type(vector))}.",
            hint="Pick one layer's vector, e.g. vectors.mold[layer].",
        )
    if not torch.isfinite(vector).all():
        raise VectorError(
            "Steering vector contains NaN or inf.", hint="Recompute it from finite activations."
        )

    def hook(activation: Float[Tensor, "batch pos d_model"], hook: Any) -> Tensor:
        if activation.shape[-1] != vector.shape[0]:
            raise ShapeError(
                f"Vector of size {vector.shape[0]} cannot be added at {hook.name}, whose "
                f"d_model is {activation.shape[-1]}.",
                hint="Use a vector extracted from this model.",
            )
        delta = (alpha * vector).to(device=activation.device, dtype=activation.dtype)
        if positions is None:
            return activation + delta
        batch, pos = activation.shape[:2]
        mask = _position_mask(positions, batch, pos, activation.device)
        return activation + mask.unsqueeze(-1).to(activation.dtype) * delta

    return hook


class _StopForward(Exception):
    """Raised by the hook that ends a forward pass early (see :func:`run_until`)."""


def _stop_forward(activation: Tensor, hook: Any) -> None:
    raise _StopForward


def run_until(
    model: Any,
    tokens: Tensor,
    fwd_hooks: Sequence[tuple[str, Any]],
    last: str,
    **kwargs: Any,
) -> None:
    """``model.run_with_hooks(tokens, fwd_hooks=...)`` that ends the pass right after hook ``last``.

    Reading the residual stream needs nothing after the last hook read, but a bridge's
    ``stop_at_layer`` stops *at* a block: with the last block read it still runs the final norm
    and the unembedding, a fifth of SmolLM2's compute per token (576 x 49,152). A hook added
    after ``fwd_hooks`` on ``last`` raises, and the pass ends there; hooks on ``last`` that come
    before it in ``fwd_hooks`` have already run. A KV cache passed in ``kwargs`` is complete for
    every block up to ``last``; later blocks are never computed (nor read by callers that stop
    at the same hook).

    Args:
        model: A TransformerLens model.
        tokens: Input ids ``[batch, pos]``.
        fwd_hooks: ``(hook name, function)`` pairs, as for ``run_with_hooks``.
        last: The hook name after which the pass ends.
        **kwargs: Passed on to ``run_with_hooks`` (e.g. ``past_key_values``).
    """
    with contextlib.suppress(_StopForward):
        model.run_with_hooks(
            tokens, fwd_hooks=[*fwd_hooks, (last, _stop_forward)], return_type=None, **kwargs
        )
