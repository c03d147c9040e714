"""Emotion-vector extraction time and PC1-vs-valence correlation per layer (paper §3.3, F.4).

Extracts emotion vectors on SmolLM2 (all layers, offset 50, neutral PCA at 50% of variance)
from whatever stories are shipped in welfare_lens/data/emotions/stories_*.jsonl, and prints:
  - stories, emotions, tokens read, seconds for story means and for the neutral PCA,
    and the time projected to 1,368 stories (8 per emotion; target <= 15 min on CPU);
  - a side-by-side ratio: wl.analysis.emotion_vectors vs a plain loop of run_with_cache
    over the same stories (first --compare stories);
  - |r|(PC1, valence) and |r|(PC2, arousal) per layer against the authored ratings.

    .venv/bin/python benchmarks/emotions.py [--model smollm2-135m-instruct] [--limit N]
        [--batch-size 8] [--compare 48] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

import welfare_lens as wl
from welfare_lens.analysis import emotions as em


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--limit", type=int, default=None, help="use at most N stories")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--offset", type=int, default=50)
    parser.add_argument("--compare", type=int, default=48, help="stories for the baseline loop")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    model = wl.load_model(args.model)
    stories = em.load_stories()
    if args.limit:
        stories = stories[: args.limit]
    emotions = sorted({s.emotion for s in stories})
    neutral = em.load_neutral()
    print(
        f"{args.model}: {len(stories)} stories over {len(emotions)} emotions, "
        f"{len(neutral)} neutral texts, {model.cfg.n_layers} layers, threads "
        f"{torch.get_num_threads()}"
    )

    start = time.perf_counter()
    pca = em.neutral_pca(model, neutral, layers=None, batch_size=args.batch_size, progress=False)
    t_pca = time.perf_counter() - start
    start = time.perf_counter()
    vectors = em.emotion_vectors(
        model, stories, pca, offset=args.offset, batch_size=args.batch_size, progress=True
    )
    t_vec = time.perf_counter() - start
    n_tokens = sum(len(model.tokenizer(s.text)["input_ids"]) for s in stories)
    per_story = t_vec / len(stories)
    print(f"  neutral PCA: {t_pca:6.1f} s  ({pca.n_tokens} tokens; k per layer {pca.k})")
    print(
        f"  story means + vectors: {t_vec:6.1f} s  ({n_tokens} tokens, "
        f"{n_tokens / t_vec:6.0f} tok/s, {per_story * 1e3:.0f} ms/story)"
    )
    projected = t_pca + per_story * 1368
    print(f"  projected for 1,368 stories: {projected / 60:5.1f} min   (target <= 15 min)")

    sample = stories[: args.compare]
    start = time.perf_counter()
    for s in sample:
        ids = torch.tensor([model.tokenizer(s.text)["input_ids"]])
        _, cache = model.run_with_cache(ids)
        torch.stack(
            [
                cache[f"blocks.{ell}.hook_resid_post"][0, args.offset :].mean(0)
                for ell in range(model.cfg.n_layers)
            ]
        )
    t_loop = time.perf_counter() - start
    start = time.perf_counter()
    em.emotion_vectors(
        model,
        sample,
        offset=args.offset,
        denoise=None,
        batch_size=args.batch_size,
        progress=False,
    )
    t_ours = time.perf_counter() - start
    print(
        f"  {len(sample)} stories: run_with_cache loop {t_loop:5.1f} s vs emotion_vectors "
        f"{t_ours:5.1f} s -> {t_loop / t_ours:4.2f}x"
    )

    res = em.emotion_pca(vectors)
    print(f"  {res!r}")
    print("  layer  |r|(PC1,valence)  |r|(PC2,arousal)  PC1 var")
    for i, layer in enumerate(res.layers):
        print(
            f"  {layer:5d}  {res.r_valence[i]:16.3f}  {res.r_arousal[i]:16.3f}  "
            f"{res.explained[i, 0]:7.1%}"
        )


if __name__ == "__main__":
    main()
