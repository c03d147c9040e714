"""The ``welfare-lens`` command line: a demo, and the paper's pipeline stage by stage.

welfare-lens reproduce --quick --out runs/quick     # every stage, minutes on a CPU
welfare-lens train --out runs/full                  # one stage (then extract, analyze, ...)
welfare-lens reproduce --config my.toml --set per_class=5000 --model gemma-3-270m
"""

from __future__ import annotations

import argparse
import sys
import time
import tomllib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from welfare_lens.errors import ConfigError, WelfareLensError

if TYPE_CHECKING:
    from welfare_lens.pipeline import PipelineConfig

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


def _config(args: argparse.Namespace) -> PipelineConfig:
    from welfare_lens.pipeline import PipelineConfig

    cfg = PipelineConfig.preset("quick" if args.quick else args.preset)
    if args.config is not None:
        cfg = PipelineConfig.from_toml(args.config, base=cfg)
    changes: dict[str, object] = {}
    if args.model is not None:
        changes["model"] = args.model
    if args.device is not None:
        changes["device"] = args.device
    if args.dtype is not None:
        changes["dtype"] = args.dtype
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r} is not KEY=VALUE.", hint="E.g. --set per_class=500.")
        try:
            changes[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            changes[key] = value
    return cfg.updated(changes)


def _stage(args: argparse.Namespace) -> int:
    from welfare_lens.pipeline import STAGES, run_pipeline, run_stage

    cfg = _config(args)
    if args.command == "reproduce":
        start = time.perf_counter()
        run_pipeline(cfg, args.out, STAGES, force=args.force)
        print(f"reproduce finished in {time.perf_counter() - start:.0f} s: {args.out}/report.html")
    else:
        run_stage(args.command, cfg, args.out, force=args.force)
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

    helps = {
        "train": "GRPO training in the maze (resumes from the latest checkpoint)",
        "extract": "welfare vectors v (trained) and controls u (naive)",
        "analyze": "antiparallelism, L*, logit lens, emotions, tracking",
        "steer": "alpha sweeps of the behavioural evaluations with v and u",
        "evaluate": "held-out maze returns of the naive and trained policies",
        "report": "the self-contained HTML report and its JSON numbers",
        "reproduce": "every stage in order; finished stages are skipped",
    }
    for name, text in helps.items():
        stage = sub.add_parser(name, help=text)
        stage.add_argument("--out", default="runs/reproduce", help="output folder")
        stage.add_argument("--model", default=None, help="model key (default SmolLM2)")
        stage.add_argument("--device", default=None, help="torch device, e.g. cuda")
        stage.add_argument(
            "--dtype",
            default=None,
            choices=["float32", "bfloat16", "float16"],
            help="model weights (default float32; bfloat16 on a GPU); statistics stay float64",
        )
        stage.add_argument("--config", default=None, help="TOML file of pipeline settings")
        stage.add_argument("--quick", action="store_true", help="a run of minutes")
        stage.add_argument(
            "--preset",
            default="full",
            choices=["quick", "full", "paper"],
            help="sizes: full = CPU hours (default), paper = the paper's (a GPU job)",
        )
        stage.add_argument("--set", action="append", metavar="KEY=VALUE", help="one setting")
        stage.add_argument(
            "--force",
            action="store_true",
            help="rerun finished stages from scratch (old outputs kept in <stage>.old; train "
            "continues from its checkpoints)",
        )
        stage.set_defaults(func=_stage)

    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except WelfareLensError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
