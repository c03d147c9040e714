"""Sentiment α-sweep on the untrained SmolLM2: a positive control and the naive welfare vectors.

The positive control is a prompt sentiment vector (appendix F.1 style): the residual at the last
token of "Describe a <thing> using positive sentiment." minus the same with "negative", averaged
over several things. If the evaluation can detect an effect, its slope per unit α is clearly
positive. The same sweep is run for the naive control vectors u_Mold and u_Gold when a file
made by `wl.capture(...)` + `welfare_vectors(...)` is given.

    .venv/bin/python examples/sentiment_sweep_smollm2.py --layer 17 [--u runs/u_smollm2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import welfare_lens as wl
from welfare_lens.analysis.sentiment_vectors import final_token_activations
from welfare_lens.steering import evaluate_sentiment, ols_slope, sentiment_prompts, sweep

THINGS = ("book", "movie", "day at work", "meal", "city", "song", "holiday", "neighbour")


def prompt_vector(model: object, layer: int) -> torch.Tensor:
    """Mean over THINGS of resid(positive prompt) − resid(negative prompt) at the last token."""
    prompts = [
        f"Describe a {thing} using {polarity} sentiment."
        for thing in THINGS
        for polarity in ("positive", "negative")
    ]
    acts = final_token_activations(model, prompts, layers=[layer], progress=False)[:, 0]
    return (acts[0::2] - acts[1::2]).mean(0).float()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layer", type=int, default=17)
    parser.add_argument("--u", default=None, help="saved ConceptVectors of the naive model")
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--out", default="runs/sentiment_sweep")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = wl.load_model("smollm2-135m-instruct")
    n_layers = model.cfg.n_layers
    vectors: dict[str, torch.Tensor] = {}
    sentiment = torch.zeros(n_layers, model.cfg.d_model)
    sentiment[args.layer] = prompt_vector(model, args.layer)
    vectors["sentiment"] = sentiment
    if args.u:
        u = wl.ConceptVectors.load(args.u)
        vectors["u_mold"] = u.mold
        vectors["u_gold"] = u.gold
    norms = {name: float(v[args.layer].norm()) for name, v in vectors.items()}
    print("vector norms at layer", args.layer, norms, flush=True)
    prompts = sentiment_prompts()[: args.prompts]

    def evaluate(m: object) -> object:
        return evaluate_sentiment(
            m, prompts=prompts, samples=args.samples, max_new_tokens=args.max_new_tokens, seed=0
        )

    table = sweep(model, evaluate, vectors, layers=[args.layer], out_path=out / "rows.jsonl")
    report = {"layer": args.layer, "norms": norms}
    for name in vectors:
        subset = table.where(vector=name)
        slope = ols_slope(subset)
        means = {row["alpha"]: round(row["mean"], 3) for row in subset.mean_by("alpha")}
        report[name] = {"slope": slope.slope, "se": slope.se, "mean_by_alpha": means}
        print(f"{name}: slope {slope.slope:+.3f} ± {slope.se:.3f} per unit α; means {means}")
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
