"""Sentiment control vectors and the sentiment-residual welfare vector (paper appendix F; A9).

Is the welfare axis just sentiment? Appendix F of the paper answers with two sentiment vectors
extracted from the maze-naive model at the final token of a chat-formatted prompt (F.1):

* the **CAD vector**: μ_pos − μ_neg over counterfactually augmented reviews (IMDB-CAD in the
  paper), each wrapped in ``"Text: {review}\\n\\nQuestion: Is the overall sentiment of the text
  positive or negative?"`` (:data:`CAD_TEMPLATE`). Offline, welfare_lens ships 68 authored
  CAD-style minimal pairs (``data/emotions/sentiment_pairs.json``); pass IMDB-CAD pairs
  yourself to follow the paper exactly. Because the pairs are matched, μ_pos − μ_neg equals
  the mean of the paired differences;
* the **prompt vector**: the final-token activation for "Describe a book using positive
  sentiment" minus that for "Describe a book using negative sentiment".

Their cosines with v are about 0 before training and at most about 0.2 in magnitude after
(F.2; :func:`sentiment_cosines`). The **sentiment-residual test** (F.5) removes from v_Gold its
projection on S = span(v_cad, v_prompt) (Gram–Schmidt) and rescales the residual to ‖v_Gold‖:
v_eval = r·‖v‖/‖r‖ (:func:`sentiment_residual`, :func:`sentiment_residual_vectors`). In the
paper v_eval still drives all four steering effects and keeps about 60% of v_Gold's emotion-PC1
projection.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from numpy.typing import NDArray
from torch import Tensor

from welfare_lens._resources import read_json
from welfare_lens.analysis.emotions import (
    _common_layers,
    _Encoded,
    _forward_selected,
    _layers_of,
    _rows,
)
from welfare_lens.chat import render_chat
from welfare_lens.errors import DataError, LayerError, ShapeError, VectorError
from welfare_lens.hooks import HookKind, n_layers, resolve_layers
from welfare_lens.models import model_info
from welfare_lens.vectors import ConceptVectors, VectorMetadata

__all__ = [
    "CAD_TEMPLATE",
    "PROMPT_NEGATIVE",
    "PROMPT_POSITIVE",
    "SentimentCosines",
    "SentimentPair",
    "cad_vector",
    "final_token_activations",
    "load_sentiment_pairs",
    "prompt_vector",
    "sentiment_control_vectors",
    "sentiment_cosines",
    "sentiment_residual",
    "sentiment_residual_vectors",
]

F64 = NDArray[np.float64]

#: F.1's wrapper around each review.
CAD_TEMPLATE = (
    "Text: {review}\n\nQuestion: Is the overall sentiment of the text positive or negative?"
)
#: F.1's prompt pair.
PROMPT_POSITIVE = "Describe a book using positive sentiment"
PROMPT_NEGATIVE = "Describe a book using negative sentiment"

_PAIRS_FILE = "emotions/sentiment_pairs.json"
_POSITION = "final_prompt_token"


@dataclass(frozen=True)
class SentimentPair:
    """A CAD-style minimal pair: the same review with its sentiment flipped by minimal edits.

    Attributes:
        id: Identifier (e.g. ``"movie-01"``).
        domain: What is reviewed (movie, book, restaurant, ...).
        positive: The positive review.
        negative: The negative review.
    """

    id: str
    domain: str
    positive: str
    negative: str


def load_sentiment_pairs(path: str | Path | None = None) -> list[SentimentPair]:
    """CAD-style review pairs (default the 68 authored in ``data/emotions/sentiment_pairs.json``).

    Raises:
        DataError: The file is missing or an entry lacks ``positive``/``negative``.
    """
    doc = read_json(
        _PAIRS_FILE,
        path,
        "sentiment pairs",
        hint="Pass a JSON file {'pairs': [{'id', 'domain', 'positive', 'negative'}, ...]}.",
    )
    raw = doc.get("pairs") if isinstance(doc, dict) else doc
    if not isinstance(raw, list) or not raw:
        raise DataError("The sentiment file lists no pairs.", hint="See data/emotions/.")
    out: list[SentimentPair] = []
    for i, entry in enumerate(raw):
        try:
            pair = SentimentPair(
                str(entry.get("id", f"pair-{i}")),
                str(entry.get("domain", "")),
                str(entry["positive"]),
                str(entry["negative"]),
            )
        except (KeyError, AttributeError, TypeError) as err:
            raise DataError(
                f"Sentiment pair {i} is malformed ({err!r}).",
                hint="Each pair needs positive and negative.",
            ) from err
        if pair.positive.strip() == pair.negative.strip():
            raise DataError(f"Pair {pair.id}: both reviews are the same.", hint="Flip one.")
        out.append(pair)
    return out


# ----------------------------------------------------------------------------------------------
# Extraction
# ----------------------------------------------------------------------------------------------


def final_token_activations(
    model: Any,
    prompts: Sequence[str],
    *,
    layers: int | Sequence[int] | None = None,
    hook: HookKind = "resid_post",
    batch_size: int = 16,
    progress: bool = True,
) -> Float[Tensor, "n n_layers d_model"]:
    """Residual stream at the final token of each chat-formatted prompt (F.1).

    Each prompt is one user message (no system prompt) followed by the assistant generation
    prompt; the last token of that rendering is read at every chosen block output.

    Returns:
        ``[n_prompts, n_layers, d_model]`` float64 on CPU.
    """
    if not prompts:
        raise DataError("No prompts.", hint="Pass at least one.")
    chosen = resolve_layers(layers, n_layers(model))
    encoded: list[_Encoded] = []
    for text in prompts:
        chat = render_chat(
            model.tokenizer, [{"role": "user", "content": text}], add_generation_prompt=True
        )
        mask = torch.zeros(len(chat), dtype=torch.bool)
        mask[-1] = True
        encoded.append(_Encoded(chat.input_ids, mask, False))
    out = torch.zeros(len(prompts), len(chosen), int(model.cfg.d_model), dtype=torch.float64)
    for idx, _, acts in _forward_selected(
        model, encoded, chosen, hook, batch_size, progress, "sentiment"
    ):
        out[idx] = torch.stack([acts[layer] for layer in chosen], dim=1).to("cpu", torch.float64)
    return out


def _final_token_metadata(
    model: Any,
    chosen: list[int],
    hook: str,
    counts: dict[str, int],
    *,
    method: str = "diff_of_means",
    design: str = "sentiment",
    role: str = "sentiment",
    **extra: Any,
) -> VectorMetadata:
    """Provenance of vectors read at the final prompt token (:func:`final_token_activations`).

    Shared by the F.1 sentiment vectors (the defaults) and the valence-assent axis (App. H), which
    use the same reading position; ``extra`` lands after ``"layers"`` in ``metadata.extra``.
    """
    info = model_info(model)
    return VectorMetadata(
        model_id=info.model_id,
        d_model=int(model.cfg.d_model),
        n_layers=len(chosen),
        hook=hook,
        coordinate_mode=info.coordinate_mode,
        position_rule=_POSITION,
        method=method,
        design=design,
        role=role,
        class_counts=counts,
        extra={"layers": chosen, **extra},
    )


def _as_pairs(pairs: Iterable[Any] | None) -> list[SentimentPair]:
    items = load_sentiment_pairs() if pairs is None else list(pairs)
    out: list[SentimentPair] = []
    for i, p in enumerate(items):
        if isinstance(p, SentimentPair):
            out.append(p)
        elif isinstance(p, Mapping):
            out.append(
                SentimentPair(str(p.get("id", i)), "", str(p["positive"]), str(p["negative"]))
            )
        elif isinstance(p, tuple) and len(p) == 2:
            out.append(SentimentPair(str(i), "", str(p[0]), str(p[1])))
        else:
            raise DataError(
                f"Pair {i} is not a SentimentPair, a dict or (positive, negative).",
                hint="Use load_sentiment_pairs() or (positive, negative) tuples.",
            )
    if not out:
        raise DataError("No sentiment pairs.", hint="Pass at least one.")
    return out


def _cad(
    model: Any,
    pairs: list[SentimentPair],
    template: str,
    chosen: list[int],
    hook: HookKind,
    batch_size: int,
    progress: bool,
) -> Tensor:
    texts = [template.format(review=p.positive) for p in pairs]
    texts += [template.format(review=p.negative) for p in pairs]
    acts = final_token_activations(
        model, texts, layers=chosen, hook=hook, batch_size=batch_size, progress=progress
    )
    n = len(pairs)
    return acts[:n].mean(dim=0) - acts[n:].mean(dim=0)


def cad_vector(
    model: Any,
    pairs: Iterable[Any] | None = None,
    *,
    template: str = CAD_TEMPLATE,
    layers: int | Sequence[int] | None = None,
    hook: HookKind = "resid_post",
    batch_size: int = 16,
    progress: bool = True,
) -> ConceptVectors:
    """The CAD sentiment vector μ_pos − μ_neg at the final prompt token, per layer (F.1).

    Args:
        model: The maze-naive model (F.1).
        pairs: Review pairs (:class:`SentimentPair`, dicts or ``(positive, negative)``);
            default the shipped authored pairs.
        template: Wrapper with ``{review}`` (:data:`CAD_TEMPLATE`).
        layers, hook, batch_size, progress: As in :func:`final_token_activations`.

    Returns:
        ``ConceptVectors`` with one vector, ``"cad"``.
    """
    items = _as_pairs(pairs)
    chosen = resolve_layers(layers, n_layers(model))
    vec = _cad(model, items, template, chosen, hook, batch_size, progress)
    meta = _final_token_metadata(
        model, chosen, hook, {"positive": len(items), "negative": len(items)}, template=template
    )
    return ConceptVectors({"cad": vec.to(torch.float32)}, meta)


def prompt_vector(
    model: Any,
    *,
    positive: str = PROMPT_POSITIVE,
    negative: str = PROMPT_NEGATIVE,
    layers: int | Sequence[int] | None = None,
    hook: HookKind = "resid_post",
    progress: bool = False,
) -> ConceptVectors:
    """The prompt sentiment vector: final-token activation of the positive minus the negative
    "Describe a book using … sentiment" prompt, per layer (F.1).

    Returns:
        ``ConceptVectors`` with one vector, ``"prompt"``.
    """
    chosen = resolve_layers(layers, n_layers(model))
    acts = final_token_activations(
        model, [positive, negative], layers=chosen, hook=hook, batch_size=2, progress=progress
    )
    meta = _final_token_metadata(
        model, chosen, hook, {"positive": 1, "negative": 1}, prompts=[positive, negative]
    )
    return ConceptVectors({"prompt": (acts[0] - acts[1]).to(torch.float32)}, meta)


def sentiment_control_vectors(
    model: Any,
    pairs: Iterable[Any] | None = None,
    *,
    template: str = CAD_TEMPLATE,
    positive: str = PROMPT_POSITIVE,
    negative: str = PROMPT_NEGATIVE,
    layers: int | Sequence[int] | None = None,
    hook: HookKind = "resid_post",
    batch_size: int = 16,
    progress: bool = True,
) -> ConceptVectors:
    """Both F.1 sentiment vectors, ``"cad"`` and ``"prompt"``, in one ``ConceptVectors``.

    See :func:`cad_vector` and :func:`prompt_vector`.
    """
    items = _as_pairs(pairs)
    chosen = resolve_layers(layers, n_layers(model))
    cad = _cad(model, items, template, chosen, hook, batch_size, progress)
    acts = final_token_activations(
        model, [positive, negative], layers=chosen, hook=hook, batch_size=2, progress=False
    )
    meta = _final_token_metadata(
        model,
        chosen,
        hook,
        {"cad_pairs": len(items), "prompt_pairs": 1},
        template=template,
        prompts=[positive, negative],
    )
    return ConceptVectors(
        {"cad": cad.to(torch.float32), "prompt": (acts[0] - acts[1]).to(torch.float32)}, meta
    )


# ----------------------------------------------------------------------------------------------
# Cosines (F.2)
# ----------------------------------------------------------------------------------------------


@dataclass(eq=False)
class SentimentCosines:
    """cos(welfare vector, sentiment vector) per layer (F.1/F.2).

    Attributes:
        layers: Layers shared by the welfare and sentiment vectors.
        cos: ``{welfare name: {sentiment name: [n_layers]}}``; control vectors appear as
            ``"control:mold"`` etc.
        layer: Reporting layer (the paper uses layer 22 of 36, i.e. about 0.6 of the depth).
    """

    layers: list[int]
    cos: dict[str, dict[str, F64]]
    layer: int

    def at(self, layer: int) -> dict[str, dict[str, float]]:
        """The cosines at one layer.

        Raises:
            LayerError: The layer is not covered.
        """
        if layer not in self.layers:
            raise LayerError(f"Layer {layer} not in {self.layers}.", hint="Use a covered layer.")
        i = self.layers.index(layer)
        return {w: {s: float(c[i]) for s, c in row.items()} for w, row in self.cos.items()}

    def max_abs(self) -> dict[str, dict[str, tuple[float, int]]]:
        """Largest |cos| over layers and the layer where it occurs."""
        out: dict[str, dict[str, tuple[float, int]]] = {}
        for w, row in self.cos.items():
            out[w] = {}
            for s, c in row.items():
                i = int(np.nanargmax(np.abs(c)))
                out[w][s] = (float(c[i]), self.layers[i])
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {
            "layers": list(self.layers),
            "layer": self.layer,
            "cos": {
                w: {
                    s: [None if not math.isfinite(x) else float(x) for x in c]
                    for s, c in row.items()
                }
                for w, row in self.cos.items()
            },
        }

    def __repr__(self) -> str:
        at = self.at(self.layer)
        cells = "; ".join(
            f"v_{w}: " + ", ".join(f"{s} {c:+.3f}" for s, c in row.items()) for w, row in at.items()
        )
        return f"SentimentCosines(layer {self.layer}: {cells})"


def sentiment_cosines(
    v: ConceptVectors,
    sentiment: ConceptVectors,
    *,
    control: ConceptVectors | None = None,
    names: Sequence[str] = ("mold", "gold"),
    layer: int | None = None,
) -> SentimentCosines:
    """Cosines of welfare vectors (and controls) with the sentiment vectors, per layer (F.2).

    Args:
        v: Welfare vectors.
        sentiment: :func:`sentiment_control_vectors` output (any names).
        control: Control vectors u.
        names: Welfare vector names.
        layer: Reporting layer; default round(0.61·(n_layers−1)) of the shared layers' range
            (layer 22 of 36 in the paper, F.1).
    """
    layers = _common_layers(v, sentiment, "compare with sentiment vectors")
    if control is not None:
        layers = [x for x in layers if x in _common_layers(control, sentiment, "compare controls")]
    table: dict[str, dict[str, F64]] = {}
    for prefix, cv in (("", v), ("control:", control)):
        if cv is None:
            continue
        for name in names:
            a = _rows(cv, name, layers)
            table[prefix + name] = {}
            for s in sentiment.names:
                b = _rows(sentiment, s, layers)
                den = torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)
                cos = torch.where(den > 0, (a * b).sum(-1) / den.clamp_min(1e-300), torch.nan)
                table[prefix + name][s] = np.asarray(cos.numpy(), dtype=np.float64)
    if layer is None:
        target = round(22 / 35 * (layers[-1] - layers[0])) + layers[0]
        report = min(layers, key=lambda x: abs(x - target))
    else:
        report = layer
        if report not in layers:
            raise LayerError(f"Layer {layer} not in {layers}.", hint="Use a shared layer.")
    return SentimentCosines(layers, table, report)


# ----------------------------------------------------------------------------------------------
# Sentiment residual (F.5)
# ----------------------------------------------------------------------------------------------


def sentiment_residual(
    v: Float[Tensor, "*layer d_model"],
    span: Sequence[Float[Tensor, "*layer d_model"]],
    *,
    tol: float = 1e-8,
) -> Float[Tensor, "*layer d_model"]:
    """v minus its projection on span(span), rescaled to ‖v‖ (F.5): v_eval = r·‖v‖/‖r‖.

    The span is orthonormalised by Gram–Schmidt (a vector already in the span of the earlier
    ones is skipped). Works on one vector ``[d]`` or per layer ``[L, d]``; computed in float64
    and returned in ``v.dtype``.

    Args:
        v: Welfare vector(s).
        span: Vectors spanning S, each shaped like ``v`` (paper: v_cad and v_prompt).
        tol: Relative norm below which a vector counts as zero.

    Raises:
        ShapeError: Shapes differ.
        VectorError: v is zero, or lies in S (no residual) at some layer.
    """
    r, nv, nr = _residual(v, span, tol)
    out = r * (nv / nr)
    return out.reshape(v.shape).to(v.dtype)


def _residual(v: Tensor, span: Sequence[Tensor], tol: float) -> tuple[Tensor, Tensor, Tensor]:
    """Unscaled residual ``[L, d]`` (float64) of v against span, with ‖v‖ and ‖r‖ ``[L, 1]``."""
    if any(s.shape != v.shape for s in span):
        raise ShapeError(
            f"Span vectors {[tuple(s.shape) for s in span]} do not match v {tuple(v.shape)}.",
            hint="Use vectors from the same layers of the same model.",
        )
    x = v.to(torch.float64).reshape(-1, v.shape[-1])
    basis: list[Tensor] = []
    for s in span:
        q = s.to(torch.float64).reshape(x.shape).clone()
        scale = torch.linalg.vector_norm(q, dim=-1, keepdim=True)
        for b in basis:
            q = q - (q * b).sum(-1, keepdim=True) * b
        norm = torch.linalg.vector_norm(q, dim=-1, keepdim=True)
        keep = norm > tol * scale.clamp_min(1e-300)
        basis.append(torch.where(keep, q / norm.clamp_min(1e-300), torch.zeros_like(q)))
    r = x.clone()
    for b in basis:
        r = r - (r * b).sum(-1, keepdim=True) * b
    nv = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    nr = torch.linalg.vector_norm(r, dim=-1, keepdim=True)
    bad = ((nv == 0) | (nr <= tol * nv)).flatten().nonzero().flatten().tolist()
    if bad:
        raise VectorError(
            f"No sentiment residual at layer(s) {bad}: v is zero or lies in the sentiment span.",
            hint="Check the vectors; the residual test needs v outside span(v_cad, v_prompt).",
        )
    return r, nv, nr


def sentiment_residual_vectors(
    v: ConceptVectors,
    sentiment: ConceptVectors,
    *,
    names: Sequence[str] = ("gold",),
    basis: Sequence[str] | None = None,
) -> ConceptVectors:
    """Welfare vectors with the sentiment span removed, norm-matched per layer (F.5).

    Args:
        v: Welfare vectors.
        sentiment: Sentiment vectors covering every layer of ``v``.
        names: Vectors to residualise (paper: v_Gold).
        basis: Sentiment vectors spanning S (default all of ``sentiment``: cad and prompt).

    Returns:
        ``ConceptVectors`` with the same names, layers and provenance as ``v``; the fraction of
        each vector's norm outside S before rescaling (‖r‖/‖v‖) is in
        ``metadata.extra["sentiment_residual"]``.

    Raises:
        LayerError: The sentiment vectors miss a layer of ``v``.
    """
    layers = _common_layers(v, sentiment, "residualise against sentiment")
    own = _layers_of(v)
    if layers != own:
        raise LayerError(
            f"The sentiment vectors cover layers {layers} of v's {own}.",
            hint="Extract the sentiment vectors on every layer of v.",
        )
    span_names = list(sentiment.names if basis is None else basis)
    span = [_rows(sentiment, s, layers) for s in span_names]
    out: dict[str, Tensor] = {}
    retained: dict[str, list[float]] = {}
    for name in names:
        r, nv, nr = _residual(_rows(v, name, layers), span, 1e-8)
        out[name] = (r * (nv / nr)).to(v[name].dtype)
        retained[name] = [round(float(f), 6) for f in (nr / nv).flatten()]
    m = v.metadata
    extra = {
        **m.extra,
        "derived": [*m.extra.get("derived", []), "sentiment_residual"],
        "sentiment_residual": {
            "basis": span_names,
            "sentiment_model": sentiment.metadata.model_id,
            "retained_norm_fraction": retained,
        },
    }
    return ConceptVectors(out, replace(m, extra=extra))
