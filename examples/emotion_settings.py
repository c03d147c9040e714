"""How the emotion-vector settings change PC1's agreement with the valence ratings (§3.3, F.4).

One forward pass over the shipped stories keeps every story's per-layer means from several
token offsets at once; the neutral PCA is fitted once. Then, for each offset x denoising
(neutral PCA removing each of --denoise fractions of variance, or none) x unit normalisation, the emotion vectors are
formed exactly as :func:`wl.analysis.emotion_vectors` forms them and
:func:`wl.analysis.emotion_pca` gives |r|(PC1, valence) per layer. Prints one line per setting
(best layer, its |r|, and the mean over the last half of the layers) and writes every number
to ``--out/emotion_settings.json``.

    .venv/bin/python examples/emotion_settings.py --model gemma-3-270m --offsets 0,10,25,50
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import welfare_lens as wl
from welfare_lens.analysis import emotions as em
from welfare_lens.models import model_info
from welfare_lens.vectors import ConceptVectors, VectorMetadata


def story_means(
    model: Any, stories: list[em.Story], offsets: list[int], batch_size: int
) -> tuple[list[str], dict[int, torch.Tensor], int]:
    """Per-emotion mean of story means, ``[emotions, layers, d]`` per offset (float64)."""
    names = [e for e in em.EMOTIONS if e in {s.emotion for s in stories}]
    index = {e: i for i, e in enumerate(names)}
    layers = list(range(int(model.cfg.n_layers)))
    d = int(model.cfg.d_model)
    encoded = [em._encode(model.tokenizer, s.text, "plain", 0, 512) for s in stories]
    labels = torch.tensor([index[s.emotion] for s in stories])
    sums = {k: torch.zeros(len(names), len(layers), d, dtype=torch.float64) for k in offsets}
    short = 0
    for idx, counts, acts in em._forward_selected(
        model, encoded, layers, "resid_post", batch_size, True, "stories"
    ):
        per_layer = [torch.split(acts[layer], counts) for layer in layers]
        for row, i in enumerate(idx):
            n = counts[row]
            short += int(n <= max(offsets))
            for k in offsets:
                # As emotion_vectors: a story shorter than the offset uses its second half.
                start = k if k < n else n // 2
                mean = torch.stack(
                    [per_layer[j][row][start:].mean(dim=0) for j in range(len(layers))]
                )
                sums[k][labels[i]] += mean.to(torch.float64)
    counts_per = torch.bincount(labels, minlength=len(names)).to(torch.float64)
    return names, {k: s / counts_per[:, None, None] for k, s in sums.items()}, short


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--offsets", default="0,10,25,50")
    parser.add_argument("--denoise", default="0.5", help="neutral variance fractions to remove")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    offsets = sorted({int(x) for x in args.offsets.split(",")})
    out = args.out or Path("runs") / f"emotion_settings_{args.model}"
    out.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    model = wl.load_model(args.model)
    stories = em.load_stories()
    cache = out / "story_means.safetensors"
    started = time.perf_counter()
    if cache.exists():
        loaded = load_file(cache)
        saved = json.loads((out / "story_means.json").read_text())
        names, short = saved["names"], saved["short"]
        means = {k: loaded[f"offset_{k}"] for k in offsets}
    else:
        names, means, short = story_means(model, stories, offsets, args.batch_size)
        save_file({f"offset_{k}": m.contiguous() for k, m in means.items()}, cache)
        (out / "story_means.json").write_text(
            json.dumps({"names": names, "offsets": offsets, "short": short})
        )
    t_stories = time.perf_counter() - started
    started = time.perf_counter()
    fractions = sorted({float(x) for x in args.denoise.split(",")})
    pcas = {
        f: em.neutral_pca(model, em.load_neutral(), variance=f, progress=False) for f in fractions
    }
    t_pca = (time.perf_counter() - started) / len(fractions)
    print(
        f"{args.model}: {len(stories)} stories, {len(names)} emotions; story pass {t_stories:.0f} s, "
        f"neutral PCA {t_pca:.0f} s each (k per layer {[p.k for p in pcas.values()]}); {short} "
        f"stories shorter than "
        f"offset {max(offsets)}"
    )
    n_layers = int(model.cfg.n_layers)
    meta = VectorMetadata(
        model_id=model_info(model).model_id,
        d_model=int(model.cfg.d_model),
        n_layers=n_layers,
        coordinate_mode=model_info(model).coordinate_mode,
        method="mean_minus_others",
        role="emotion",
        extra={"layers": list(range(n_layers))},
    )
    results: list[dict[str, Any]] = []
    for k in offsets:
        raw = em.mean_minus_others(means[k])
        for denoise in [*fractions, 0.0]:
            vec = pcas[denoise].project_out(raw) if denoise else raw
            for normalise in (False, True):
                v = vec
                if normalise:
                    v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(1e-300)
                cv = ConceptVectors(
                    {e: v[i].to(torch.float32) for i, e in enumerate(names)},
                    meta,
                )
                fit = em.emotion_pca(cv)
                r = np.abs(fit.r_valence)
                best = int(np.argmax(r))
                half = r[len(r) // 2 :]
                row = {
                    "offset": k,
                    "denoise": denoise,
                    "normalise": normalise,
                    "best_layer": fit.layers[best],
                    "best_abs_r": float(r[best]),
                    "mean_abs_r_last_half": float(half.mean()),
                    "abs_r_per_layer": [float(x) for x in r],
                    "abs_r_arousal_pc2_max": float(np.abs(fit.r_arousal).max()),
                }
                results.append(row)
                print(
                    f"offset {k:>3}  denoise {f'{denoise:.0%}' if denoise else 'no':<4} "
                    f"normalise {'yes' if normalise else 'no ':<3}  best |r| {r[best]:.3f} "
                    f"(layer {fit.layers[best]})  mean |r| last half {half.mean():.3f}",
                    flush=True,
                )
    (out / "emotion_settings.json").write_text(
        json.dumps(
            {"model": args.model, "seconds_stories": t_stories, "results": results}, indent=1
        )
    )
    print(f"wrote {out / 'emotion_settings.json'}")


if __name__ == "__main__":
    main()
