"""welfare_lens hook functions inside a plain TransformerLens workflow.

welfare_lens's hooks are ordinary TransformerLens hook functions ``fn(activation, hook)``, so
another project can use them with ``run_with_hooks`` and the ``hooks()`` context manager of any
TransformerLens model (a ``TransformerBridge``, or a legacy ``HookedTransformer``), without
welfare_lens's capture or steering machinery. This script reads the residual stream of two
prompts with :func:`welfare_lens.hooks.capture_hooks`, takes their difference at one layer as a
direction, and adds it back with :func:`welfare_lens.hooks.add_vector_hook`.

    .venv/bin/python examples/use_hooks_in_another_project.py                 # tiny random model
    .venv/bin/python examples/use_hooks_in_another_project.py --model smollm2-135m-instruct
"""

from __future__ import annotations

import argparse

import torch

from welfare_lens.hooks import add_vector_hook, capture_hooks, hook_name
from welfare_lens.models import load_model


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Capture, build a direction, steer; print and return a few numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llama", help="any welfare_lens.load_model name")
    parser.add_argument("--alpha", type=float, default=4.0)
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    # Any TransformerLens model works from here on; welfare_lens only supplies the hook functions.
    model = load_model(args.model)
    layers = list(range(model.cfg.n_layers))
    names = [hook_name(layer) for layer in layers]  # "blocks.{L}.hook_resid_post"

    # 1. Capture the last token's residual stream at every block output, for two prompts.
    acts: dict[str, torch.Tensor] = {}
    for prompt in ("I feel wonderful today.", "I feel miserable today."):
        store: dict[str, torch.Tensor] = {}
        tokens = model.to_tokens(prompt)
        model.run_with_hooks(tokens, fwd_hooks=capture_hooks(names, store, positions=-1))
        acts[prompt] = torch.stack([store[name][0] for name in names])  # [n_layers, d_model]
        # The hook reads the same values as TransformerLens's own cache.
        _, cache = model.run_with_cache(tokens)
        torch.testing.assert_close(store[names[-1]], cache[names[-1]][:, -1])
    happy, sad = acts.values()
    layer = layers[len(layers) // 2]
    direction = happy[layer] - sad[layer]

    # 2. Steer: add alpha * direction at that block's output, with the hooks() context manager.
    tokens = model.to_tokens("How are you?")
    with torch.no_grad():
        base = model(tokens)
        with model.hooks(fwd_hooks=[(names[layer], add_vector_hook(direction, args.alpha))]):
            steered = model(tokens)
        after = model(tokens)  # the context manager removed the hook again
    shift = float((steered - base).abs().max())
    leftover = float((after - base).abs().max())
    result = {
        "layer": float(layer),
        "direction_norm": float(direction.norm()),
        "max_logit_shift": shift,
        "leftover_after_context": leftover,
    }
    for key, value in result.items():
        print(f"{key}: {value:.6g}")
    if shift == 0.0 or leftover != 0.0:
        raise SystemExit("steering had no effect, or the hook outlived its context")
    return result


if __name__ == "__main__":
    main()
