"""Steered vs unsteered generation throughput on the KV cache, side by side in one run.

Generates the same prompts greedily, with a fixed number of new tokens (stop tokens off, so both
arms decode exactly as many tokens), alternating unsteered and steered runs, and prints the
generated tokens per second of each arm (best of ``--repeats``) and their ratio. Steering uses
the paper's position rule ("assistant": the generation prompt and every generated token), a
random vector at the middle layer, α = 4. Target: ratio >= 0.95.

    .venv/bin/python benchmarks/steer.py                 # tiny-llama (fast, default)
    .venv/bin/python benchmarks/steer.py --smollm2       # the bundled SmolLM2-135M-Instruct
"""

from __future__ import annotations

import argparse
import time

import torch

import welfare_lens as wl
from welfare_lens.steering import GenerationStats, SteeringSpec, generate

PROMPTS = [
    "How are you feeling right now?",
    "What do you think of \U0001f4d0?",
    "Do you have a sense of wellbeing?",
    "Is \U0001f4c7 good or bad?",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smollm2", action="store_true", help="use smollm2-135m-instruct")
    parser.add_argument("--model", default=None, help="any load_model name (overrides --smollm2)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4, help="samples per prompt (one batch)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    name = args.model or ("smollm2-135m-instruct" if args.smollm2 else "tiny-llama")
    model = wl.load_model(name)
    layer = model.cfg.n_layers // 2
    vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    spec = SteeringSpec(vector, layer, 4.0)
    kwargs = {
        "max_new_tokens": args.new_tokens,
        "temperature": 0.0,
        "samples": args.samples,
        "stop_tokens": [],
    }
    generate(model, PROMPTS[:1], **{**kwargs, "max_new_tokens": 4})  # warm-up
    best = {"unsteered": 0.0, "steered": 0.0}
    for repeat in range(args.repeats):
        order = ["unsteered", "steered"] if repeat % 2 == 0 else ["steered", "unsteered"]
        for arm in order:
            stats = GenerationStats()
            start = time.perf_counter()
            generate(
                model,
                PROMPTS,
                steering=spec if arm == "steered" else None,
                stats=stats,
                **kwargs,  # type: ignore[arg-type]
            )
            rate = stats.generated_tokens / (time.perf_counter() - start)
            best[arm] = max(best[arm], rate)
    total = len(PROMPTS) * args.samples * args.new_tokens
    print(
        f"model={name} layer={layer} prompts={len(PROMPTS)} samples={args.samples} "
        f"new_tokens={args.new_tokens} ({total} tokens per arm) threads={args.threads}"
    )
    print(f"unsteered  {best['unsteered']:10.1f} tok/s")
    print(f"steered    {best['steered']:10.1f} tok/s")
    print(f"ratio steered/unsteered = {best['steered'] / best['unsteered']:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
