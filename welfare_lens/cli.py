"""The ``welfare-lens`` command line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from welfare_lens.errors import WelfareLensError

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    """Smoke demo: load a bundled model offline, chat with it, read its residual stream."""
    import torch

    from welfare_lens.chat import action_token_ids, render_chat
    from welfare_lens.hooks import capture_hooks, hook_name
    from welfare_lens.models import load_model

    start = time.perf_counter()
    model = load_model(args.model)
    print(
        f"loaded {args.model}: {model.cfg.n_layers} layers, d_model {model.cfg.d_model} "
        f"({time.perf_counter() - start:.1f} s)"
    )

    question = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = render_chat(model.tokenizer, question, add_generation_prompt=True)
    with torch.no_grad():
        output = model.generate(
            prompt.input_ids.unsqueeze(0),
            max_new_tokens=args.max_new_tokens,
            do_sample=False,
            verbose=False,
            return_type="tokens",
        )
    answer = model.tokenizer.decode(output[0, len(prompt) :], skip_special_tokens=True)
    print(f"Q: {question[0]['content']}\nA: {answer.strip()}")

    actions = action_token_ids(model.tokenizer)
    print("action tokens:", actions)

    names = [hook_name(layer) for layer in range(model.cfg.n_layers)]
    store: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        model.run_with_hooks(
            prompt.input_ids.unsqueeze(0), fwd_hooks=capture_hooks(names, store, positions=-1)
        )
    norms = [float(store[name][0].norm()) for name in names]
    print("residual norm at the last prompt token, per layer:")
    print("  " + " ".join(f"{n:.0f}" for n in norms))
    return 0


def _models(_: argparse.Namespace) -> int:
    from welfare_lens.models import known_models

    for name in known_models():
        print(name)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``welfare-lens``."""
    parser = argparse.ArgumentParser(prog="welfare-lens", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="smoke demo on a bundled offline model")
    demo.add_argument("--model", default="smollm2-135m-instruct")
    demo.add_argument("--max-new-tokens", type=int, default=16)
    demo.set_defaults(func=_demo)

    models = sub.add_parser("models", help="list the model keys load_model knows")
    models.set_defaults(func=_models)

    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except WelfareLensError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
