"""Logit lens of welfare vectors and a failure-vs-success token score (A5 §3.2; Tables 2, 4-6).

The paper projects each per-layer vector "through W_U" and reads the top-k promoted and
suppressed tokens at layer floor(5L/6) (layer 30 of 36 for Qwen3-4B). For the trained primary
model, v_Mold promotes failure/impossibility tokens (不存在, ␣cannot, 除外, 是不可能, 不行) and v_Gold
suppresses them; control vectors give unclustered tokens (Table 6).

**What "through W_U" means here** (the paper does not say whether the final norm is applied;
reference note B-10). :func:`logit_lens` offers three readouts of a direction ``v``:

* ``norm="gain"`` (``norm=True``): ``scores = (γ ⊙ P v) · W_U``, where γ is the
  final norm's effective elementwise gain and ``P`` subtracts the mean over ``d_model`` for a
  LayerNorm (identity for an RMSNorm). This is the standard "W_U applied after the ln_final
  weight" (what TransformerLens' ``fold_ln`` folds into W_U). Neither the division by the RMS
  nor the bias ``b``/``b_U`` is applied: the RMS scale belongs to the whole residual stream a
  direction is added to, not to the direction (for an RMSNorm it is one positive factor, so the
  ranking is that of the full norm applied to ``v`` alone), and the biases cancel in a difference
  of means. γ is measured by probing ``model.ln_final`` (so Gemma's ``1 + w`` convention and
  compatibility-mode folding are handled without special cases) and the probe is checked against
  the module on a random input.
* ``norm="none"`` (``norm=False``, the default): raw ``v · W_U``, the reading reference note
  B-10 suggests for a difference vector (the paper says only "project through W_U").
* ``norm="full"``: ``unembed(ln_final(v))`` including ``b_U`` and any logit soft-cap, i.e. ``v``
  treated as a residual-stream state. For an actual residual this equals the model's own logits
  (tested); for a direction it is the "gain" readout divided by RMS(v) plus the biases.

Scores are restricted to the tokenizer's ids (``W_U`` may have padding columns beyond
``len(tokenizer)``); special tokens are kept, as in the paper's tables (<|endoftext|>).

**Token-set score.** :func:`welfare_token_sets` maps the shipped, authored word lists
(``welfare_lens/data/welfare_tokens.json``; provenance in ``data/README.md``) to single tokens of a
tokenizer: each word is tried as written, with a leading space, and capitalised, and a form is
kept only when it encodes to exactly one token that decodes back to it. Words with no
single-token form are dropped and counted. :func:`token_set_score` returns the mean logit-lens
score of the failure tokens minus that of the success tokens (positive: the vector promotes
failure, as v_Mold should; negative, as v_Gold should), with a label-permutation null and a
random-token null.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from jaxtyping import Float
from numpy.typing import NDArray
from torch import Tensor

from welfare_lens._resources import read_json
from welfare_lens.analysis.layer_selection import logit_lens_layer
from welfare_lens.errors import DataError, LayerError, ShapeError, TokenizationError, VectorError
from welfare_lens.hooks import resolve_layer
from welfare_lens.models import model_info

__all__ = [
    "FinalNorm",
    "LogitLensResult",
    "NormMode",
    "TokenSet",
    "TokenSetScore",
    "WelfareTokenSets",
    "final_norm",
    "load_word_lists",
    "logit_lens",
    "logit_lens_vectors",
    "single_token_ids",
    "token_set_score",
    "welfare_token_score",
    "welfare_token_sets",
]

F64 = NDArray[np.float64]
NormMode = Literal["gain", "full", "none"]
_NORM_MODES: tuple[NormMode, ...] = ("gain", "full", "none")
WordLists = dict[str, dict[str, list[str]]]


def _norm_mode(norm: bool | str) -> NormMode:
    if norm is True:
        return "gain"
    if norm is False:
        return "none"
    if norm in _NORM_MODES:
        return cast(NormMode, norm)
    raise DataError(
        f"norm must be True, False, 'gain', 'full' or 'none'; got {norm!r}.",
        hint="norm=False is raw W_U (default); norm=True applies the final norm's gain.",
    )


def _show(token: str) -> str:
    """Render a token as in the paper's tables: a leading/only space as ␣, newlines as ⏎."""
    if token == "":
        return "∅"
    out = token.replace("\n", "⏎").replace("\t", "⇥")
    stripped = out.lstrip(" ")
    return "␣" * (len(out) - len(stripped)) + stripped


# ----------------------------------------------------------------------------------------------
# Final norm and unembedding
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FinalNorm:
    """The final norm of a model, reduced to what a direction sees (see module docstring).

    Attributes:
        kind: ``"rms"`` (no centring), ``"layernorm"`` (centring) or ``"identity"`` (no final
            norm found).
        gain: Effective elementwise gain γ, ``[d_model]`` float32 on CPU (Gemma's ``1 + w``
            included).
        eps: The epsilon read from the module (0.0 if none was found).
        verified: Whether ``γ ⊙ P x / sqrt(mean((P x)²) + eps) + f(0)`` reproduced the module's
            output on a random input; ``False`` means the norm is not elementwise-affine
            RMS/LayerNorm and the "gain" readout is only an approximation.
    """

    kind: Literal["rms", "layernorm", "identity"]
    gain: Float[Tensor, " d_model"]
    eps: float
    verified: bool

    @property
    def centred(self) -> bool:
        """Whether the norm subtracts the mean over ``d_model`` (LayerNorm)."""
        return self.kind == "layernorm"

    def apply_gain(self, v: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """``γ ⊙ P v``: the linear part of the norm that a direction sees."""
        if self.centred:
            v = v - v.mean(dim=-1, keepdim=True)
        return v * self.gain.to(device=v.device, dtype=v.dtype)


def _d_model(model: Any) -> int:
    try:
        return int(model.cfg.d_model)
    except AttributeError as err:
        raise ShapeError(
            f"{type(model).__name__} has no cfg.d_model.",
            hint="Pass a TransformerLens model (wl.load_model(...)).",
        ) from err


def _unembed_weight(model: Any) -> Float[Tensor, "d_model d_vocab"]:
    w_u = getattr(model, "W_U", None)
    if not isinstance(w_u, Tensor) or w_u.ndim != 2:
        raise ShapeError(
            f"{type(model).__name__} has no [d_model, d_vocab] W_U.",
            hint="Pass a TransformerLens model (TransformerBridge or HookedTransformer).",
        )
    return w_u


def _norm_eps(ln: Any, model: Any) -> float:
    original = getattr(ln, "original_component", ln)
    for owner, attr in ((original, "variance_epsilon"), (original, "eps"), (model.cfg, "eps")):
        value = getattr(owner, attr, None)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return 0.0


def _call_norm(ln: Any, x: Tensor) -> Tensor:
    out = ln(x[None, None, :])
    return cast(Tensor, out).reshape(-1).float()


def final_norm(model: Any) -> FinalNorm:
    """Measure the final norm's effective gain γ and whether it centres (module docstring).

    For a zero-mean probe ``s`` (entries ±1, mean square ``m``) every RMSNorm and LayerNorm gives
    ``f(±s) = ±γ ⊙ s / sqrt(m + eps) + b``, so γ (from ``f(s) − f(−s)``) and the bias ``b``
    (from ``f(s) + f(−s)``) are read exactly, whatever the parametrisation (``w`` or ``1 + w``,
    folded or not). ``f(1) − b`` is zero for a LayerNorm (centring) and ``≈ γ`` for an RMSNorm.
    ``eps`` is read from the module (``variance_epsilon``/``eps``) or ``cfg.eps``.

    Args:
        model: A TransformerLens model with ``ln_final`` (a model without one gets the identity).

    Returns:
        The measured :class:`FinalNorm`.
    """
    d = _d_model(model)
    ln = getattr(model, "ln_final", None)
    if ln is None or not callable(ln):
        return FinalNorm("identity", torch.ones(d), 0.0, True)
    w_u = _unembed_weight(model)
    dtype, device = w_u.dtype, w_u.device
    eps = _norm_eps(ln, model)
    gain = torch.empty(d, dtype=torch.float32)
    with torch.no_grad():
        # Two alternating probes cover every coordinate, also when d is odd (one coordinate of
        # each probe is then 0 so that the probe keeps mean 0). f(s) and f(-s) give the bias
        # (their mean) and γ ⊙ s / sqrt(m + eps) (half their difference) without evaluating
        # f(0), which is 0/0 for a norm with eps = 0.
        bias = torch.zeros(d, dtype=torch.float32)
        for offset in (0, 1):
            s = torch.zeros(d, dtype=torch.float32)
            idx = torch.arange(offset, d)
            usable = idx[: (len(idx) // 2) * 2]
            s[usable] = torch.tensor([1.0, -1.0]).repeat(len(usable) // 2)
            m = float((s**2).mean())
            plus = _call_norm(ln, s.to(device=device, dtype=dtype)).cpu()
            minus = _call_norm(ln, (-s).to(device=device, dtype=dtype)).cpu()
            hit = s != 0
            gain[hit] = (plus - minus)[hit] / 2 * math.sqrt(m + eps) / s[hit]
            bias = (plus + minus) / 2
        ones = (_call_norm(ln, torch.ones(d, dtype=dtype, device=device)).cpu() - bias).nan_to_num()
        scale = float(gain.abs().max()) or 1.0
        centred = float(ones.abs().max()) <= 1e-4 * scale
        kind: Literal["rms", "layernorm"] = "layernorm" if centred else "rms"
        probe = FinalNorm(kind, gain, eps, True)
        x = torch.randn(d, generator=torch.Generator().manual_seed(0))
        px = x - x.mean() if centred else x
        predicted = probe.apply_gain(x) / math.sqrt(float((px**2).mean()) + eps) + bias
        actual = _call_norm(ln, x.to(device=device, dtype=dtype)).cpu()
        tol = 1e-3 if dtype == torch.float32 else 3e-2
        verified = bool(torch.allclose(predicted, actual, rtol=tol, atol=tol * scale))
    if not verified:
        warnings.warn(
            "The final norm is not an elementwise-affine RMSNorm/LayerNorm; the 'gain' logit "
            "lens is an approximation. Compare with norm='full' or norm='none'.",
            stacklevel=2,
        )
    return FinalNorm(kind, gain, eps, verified)


def _readout(model: Any, v: Float[Tensor, " d_model"], mode: NormMode) -> Float[Tensor, " d_vocab"]:
    """Scores of every vocabulary entry for one direction, float32 on CPU."""
    w_u = _unembed_weight(model)
    x = v.to(device=w_u.device, dtype=w_u.dtype)
    with torch.no_grad():
        if mode == "none":
            out = x @ w_u
        elif mode == "gain":
            out = final_norm(model).apply_gain(x) @ w_u
        else:
            ln = getattr(model, "ln_final", None)
            h = ln(x[None, None, :]).reshape(-1) if callable(ln) else x
            out = h @ w_u
            b_u = getattr(model, "b_U", None)
            if isinstance(b_u, Tensor):
                out = out + b_u.to(out)
            adapter = getattr(model, "adapter", None)
            transform = getattr(adapter, "apply_output_logits_transform", None)
            if callable(transform):
                out = transform(out)
            else:
                cap = getattr(getattr(model, "cfg", None), "output_logits_soft_cap", None)
                if isinstance(cap, int | float) and cap > 0:
                    out = cap * torch.tanh(out / cap)
    return cast(Tensor, out).detach().float().cpu()


# ----------------------------------------------------------------------------------------------
# Logit lens
# ----------------------------------------------------------------------------------------------


@dataclass
class LogitLensResult:
    """Top-k promoted and suppressed tokens of one direction (A5 §3.2; Tables 2, 4, 5).

    Attributes:
        top_ids: Ids of the k highest-scoring tokens, best first.
        top_tokens: Their decoded strings (``tokenizer.decode([id])``).
        top_scores: Their scores.
        bottom_ids: Ids of the k lowest-scoring tokens, most suppressed first.
        bottom_tokens: Their decoded strings.
        bottom_scores: Their scores.
        layer: The layer the vector was taken from (``None`` if a bare direction was given).
        k: Tokens per list.
        norm: Readout used: ``"gain"``, ``"full"`` or ``"none"`` (module docstring).
        name: Label of the vector (e.g. ``"mold"``), if given.
        vector_norm: L2 norm of the direction that was read out.
        model_id: Model the readout was computed on.
        logits: Scores of every token id ``< len(tokenizer)``, ``[n_vocab]`` float32 (not in
            the repr or ``to_dict``); :func:`token_set_score` reads them.
    """

    top_ids: list[int]
    top_tokens: list[str]
    top_scores: list[float]
    bottom_ids: list[int]
    bottom_tokens: list[str]
    bottom_scores: list[float]
    layer: int | None
    k: int
    norm: str
    name: str | None = None
    vector_norm: float = float("nan")
    model_id: str = "unknown"
    logits: Float[Tensor, " n_vocab"] = field(default_factory=lambda: torch.zeros(0), repr=False)

    @property
    def promoted(self) -> list[tuple[str, float]]:
        """``(token, score)`` pairs of the top-k, best first."""
        return list(zip(self.top_tokens, self.top_scores, strict=True))

    @property
    def suppressed(self) -> list[tuple[str, float]]:
        """``(token, score)`` pairs of the bottom-k, most suppressed first."""
        return list(zip(self.bottom_tokens, self.bottom_scores, strict=True))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (without the full ``logits``)."""
        return {
            "name": self.name,
            "layer": self.layer,
            "k": self.k,
            "norm": self.norm,
            "model_id": self.model_id,
            "vector_norm": self.vector_norm,
            "top_ids": list(self.top_ids),
            "top_tokens": list(self.top_tokens),
            "top_scores": list(self.top_scores),
            "bottom_ids": list(self.bottom_ids),
            "bottom_tokens": list(self.bottom_tokens),
            "bottom_scores": list(self.bottom_scores),
        }

    def table(self) -> str:
        """Two aligned columns, promoted | suppressed, tokens shown as in the paper (␣ = space)."""
        rows = [f"{'promoted':<28}  suppressed"]
        for (t1, s1), (t2, s2) in zip(self.promoted, self.suppressed, strict=True):
            left = f"{_show(t1)[:18]!s:<18} {s1:+9.3f}"
            rows.append(f"{left:<28}  {_show(t2)[:18]!s:<18} {s2:+9.3f}")
        return "\n".join(rows)

    def __repr__(self) -> str:
        what = self.name or "vector"
        where = "" if self.layer is None else f" @ layer {self.layer}"
        head = (
            f"LogitLensResult({what}{where}, norm={self.norm}, k={self.k}, "
            f"|v|={self.vector_norm:.4g}, model={self.model_id})"
        )
        return f"{head}\n{self.table()}"


def _decode(tokenizer: Any, token_id: int) -> str:
    if tokenizer is None:
        return f"<{token_id}>"
    return str(tokenizer.decode([token_id]))


def logit_lens(
    model: Any,
    vector: Float[Tensor, "n_layers d_model"] | Float[Tensor, " d_model"],
    *,
    layer: int | None = None,
    k: int = 20,
    norm: bool | NormMode = False,
    name: str | None = None,
    tokenizer: Any = None,
) -> LogitLensResult:
    """Project a welfare vector through the unembedding and read the top/bottom-k tokens (§3.2).

    Args:
        model: A TransformerLens model (``W_U``, ``ln_final``, ``tokenizer``, ``cfg``).
        vector: Per-layer vectors ``[n_layers, d_model]`` (e.g. ``v.mold``), or one direction
            ``[d_model]`` (e.g. ``v.at("mold", 25)`` or a residual-stream state).
        layer: With per-layer vectors, the layer to read; default floor(5L/6)
            (:func:`~welfare_lens.analysis.layer_selection.logit_lens_layer`, 30 for a 36-layer
            model). With one direction it is only recorded.
        k: Number of promoted and of suppressed tokens (paper: 5 in Table 2, 20 in Table 5).
        norm: ``False``/``"none"`` (raw W_U, default), ``True``/``"gain"`` (final norm's gain),
            or ``"full"`` (the model's final norm and unembedding, biases included). See the
            module docstring for exactly what each computes.
        name: Label stored in the result (e.g. ``"mold"``).
        tokenizer: Tokenizer for decoding; default ``model.tokenizer``.

    Returns:
        The top-k promoted and suppressed tokens with ids and scores, and all scores.

    Raises:
        ShapeError: The vector is not ``[d_model]`` or ``[n_layers, d_model]`` for this model.
        LayerError: ``layer`` is out of range.
        VectorError: The vector is zero or non-finite.
        DataError: Bad ``k`` or ``norm``.

    Example:
        >>> res = logit_lens(model, v.mold, k=20)      # layer floor(5L/6), final-norm gain
        >>> res.top_tokens[:5]
    """
    mode = _norm_mode(norm)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DataError(f"k must be an int >= 1, got {k!r}.", hint="The paper uses k = 20.")
    d = _d_model(model)
    v = torch.as_tensor(vector).detach()
    chosen: int | None
    if v.ndim == 2:
        total = int(model.cfg.n_layers)
        if tuple(v.shape) != (total, d):
            raise ShapeError(
                f"Per-layer vectors must be [{total}, {d}] for this model, got {tuple(v.shape)}.",
                hint="Use vectors extracted from this model (v.mold), or one layer's [d_model].",
            )
        chosen = logit_lens_layer(total) if layer is None else resolve_layer(layer, total)
        direction = v[chosen]
    elif v.ndim == 1:
        if v.shape[0] != d:
            raise ShapeError(
                f"The direction has {v.shape[0]} entries but the model has d_model={d}.",
                hint="Use a vector extracted from this model.",
            )
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int)):
            raise LayerError(f"layer must be an int or None, got {layer!r}.")
        chosen = layer
        direction = v
    else:
        raise ShapeError(
            f"vector must be [d_model] or [n_layers, d_model], got {tuple(v.shape)}.",
            hint="Pass v.mold (per layer) or v.at('mold', layer).",
        )
    direction = direction.float()
    if not bool(torch.isfinite(direction).all()):
        raise VectorError("The vector holds NaN/Inf.", hint="Check the extraction.")
    vnorm = float(torch.linalg.vector_norm(direction.double()))
    if vnorm == 0.0:
        raise VectorError("The vector is zero; its logit lens is empty.", hint="Check the layer.")
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    scores = _readout(model, direction, mode)
    n_vocab = min(scores.shape[0], len(tok)) if tok is not None else scores.shape[0]
    scores = scores[:n_vocab]
    kk = min(k, n_vocab)
    top = torch.topk(scores, kk)
    bottom = torch.topk(-scores, kk)
    top_ids = [int(i) for i in top.indices]
    bottom_ids = [int(i) for i in bottom.indices]
    return LogitLensResult(
        top_ids=top_ids,
        top_tokens=[_decode(tok, i) for i in top_ids],
        top_scores=[float(x) for x in top.values],
        bottom_ids=bottom_ids,
        bottom_tokens=[_decode(tok, i) for i in bottom_ids],
        bottom_scores=[float(-x) for x in bottom.values],
        layer=None if chosen is None else int(chosen),
        k=kk,
        norm=mode,
        name=name,
        vector_norm=vnorm,
        model_id=model_info(model).model_id if hasattr(model, "cfg") else "unknown",
        logits=scores,
    )


def logit_lens_vectors(
    model: Any,
    vectors: Any,
    *,
    names: Sequence[str] | None = None,
    layer: int | None = None,
    k: int = 20,
    norm: bool | NormMode = False,
    allow_other_checkpoint: bool = False,
) -> dict[str, LogitLensResult]:
    """:func:`logit_lens` of several named vectors at one layer (default floor(5L/6)).

    Args:
        model: A TransformerLens model.
        vectors: A :class:`~welfare_lens.vectors.ConceptVectors` (checked against the model) or
            a mapping ``{name: [n_layers, d_model]}``.
        names: Which vectors (default: all).
        layer, k, norm: See :func:`logit_lens`.
        allow_other_checkpoint: Read vectors of another checkpoint of the same architecture
            (e.g. trained vectors through the naive model's unembedding).

    Returns:
        ``{name: LogitLensResult}``.
    """
    if hasattr(vectors, "check_compatible"):
        vectors.check_compatible(model, allow_other_checkpoint=allow_other_checkpoint)
    table = dict(vectors.items()) if hasattr(vectors, "items") else dict(vectors)
    chosen = list(table) if names is None else list(names)
    missing = [n for n in chosen if n not in table]
    if missing:
        raise VectorError(f"No vector named {missing}; available: {list(table)}.")
    return {n: logit_lens(model, table[n], layer=layer, k=k, norm=norm, name=n) for n in chosen}


# ----------------------------------------------------------------------------------------------
# Word lists and single-token sets
# ----------------------------------------------------------------------------------------------

_WORDS_FILE = "welfare_tokens.json"


def load_word_lists(path: str | Path | None = None) -> WordLists:
    """Load failure/success word lists: ``{"failure": {lang: [words]}, "success": {...}}``.

    Args:
        path: A JSON file in the shipped format (``{"sets": {set: {lang: [words]}}}``); default
            the shipped ``welfare_lens/data/welfare_tokens.json`` (authored; see its README).

    Raises:
        DataError: The file is missing, not JSON, or lacks ``failure``/``success`` sets.
    """
    doc = read_json(
        _WORDS_FILE,
        path,
        "word lists",
        hint="Pass a JSON file {'sets': {'failure': {lang: [...]}, 'success': {...}}}.",
    )
    sets = doc.get("sets") if isinstance(doc, dict) else None
    if not isinstance(sets, dict) or not {"failure", "success"} <= set(sets):
        raise DataError(
            "Word lists need 'sets' with 'failure' and 'success'.",
            hint="See welfare_lens/data/welfare_tokens.json for the format.",
        )
    out: WordLists = {}
    for set_name, langs in sets.items():
        if not isinstance(langs, dict) or not all(
            isinstance(words, list) and all(isinstance(w, str) for w in words)
            for words in langs.values()
        ):
            raise DataError(
                f"Set {set_name!r} must map language codes to lists of strings.",
                hint='e.g. {"en": ["cannot", "unable"], "zh": ["不行"]}',
            )
        out[str(set_name)] = {str(lang): list(words) for lang, words in langs.items()}
    return out


def _forms(word: str, spaces: bool, capitalize: bool) -> list[str]:
    bases = [word]
    if capitalize and word[:1].isalpha() and word[:1].lower() == word[:1]:
        cap = word[:1].upper() + word[1:]
        if cap != word:
            bases.append(cap)
    forms: list[str] = []
    for base in bases:
        forms.append(base)
        if spaces and not base.startswith(" "):
            forms.append(" " + base)
    return list(dict.fromkeys(forms))


def single_token_ids(
    tokenizer: Any, words: Iterable[str], *, spaces: bool = True, capitalize: bool = True
) -> tuple[dict[str, list[int]], list[str]]:
    """Map words to the single tokens that spell them exactly.

    Each word is tried as written, with a leading space (``spaces``) and with its first letter
    upper-cased (``capitalize``). A form counts when ``tokenizer.encode(form)`` (no special
    tokens) is exactly one id and that id decodes back to the form.

    Returns:
        ``({word: [ids of its single-token forms]}, [words with no single-token form])``. Ids are
        unique per word, in the order the forms were tried.
    """
    kept: dict[str, list[int]] = {}
    dropped: list[str] = []
    for word in words:
        ids: list[int] = []
        for form in _forms(word, spaces, capitalize):
            enc = tokenizer.encode(form, add_special_tokens=False)
            if len(enc) == 1 and tokenizer.decode([enc[0]]) == form and int(enc[0]) not in ids:
                ids.append(int(enc[0]))
        if ids:
            kept[word] = ids
        else:
            dropped.append(word)
    return kept, dropped


@dataclass
class TokenSet:
    """The single tokens of one word list in one tokenizer.

    Attributes:
        name: ``"failure"`` or ``"success"``.
        token_ids: Unique token ids, in list order.
        tokens: Their decoded strings.
        languages: Language code of each token (the first list it came from).
        kept_words: ``{language: words with at least one single-token form}``.
        dropped_words: ``{language: words with none}``.
    """

    name: str
    token_ids: list[int]
    tokens: list[str]
    languages: list[str]
    kept_words: dict[str, list[str]]
    dropped_words: dict[str, list[str]]

    @property
    def n_words(self) -> int:
        """Words in the list (all languages)."""
        return sum(map(len, self.kept_words.values())) + sum(map(len, self.dropped_words.values()))

    @property
    def n_kept(self) -> int:
        """Words with at least one single-token form."""
        return sum(map(len, self.kept_words.values()))

    def __len__(self) -> int:
        return len(self.token_ids)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {
            "name": self.name,
            "n_words": self.n_words,
            "n_kept": self.n_kept,
            "n_tokens": len(self.token_ids),
            "token_ids": list(self.token_ids),
            "tokens": list(self.tokens),
            "languages": list(self.languages),
            "kept_words": {k: list(v) for k, v in self.kept_words.items()},
            "dropped_words": {k: list(v) for k, v in self.dropped_words.items()},
        }

    def __repr__(self) -> str:
        per_lang = ", ".join(
            f"{lang} {len(self.kept_words.get(lang, []))}/"
            f"{len(self.kept_words.get(lang, [])) + len(self.dropped_words.get(lang, []))}"
            for lang in dict.fromkeys([*self.kept_words, *self.dropped_words])
        )
        shown = ", ".join(_show(t) for t in self.tokens[:12])
        more = ", …" if len(self.tokens) > 12 else ""
        return (
            f"TokenSet({self.name}: {len(self.token_ids)} tokens from {self.n_kept}/{self.n_words}"
            f" words kept [{per_lang}]; {shown}{more})"
        )


@dataclass
class WelfareTokenSets:
    """Failure and success token sets of one tokenizer (disjoint).

    Attributes:
        failure: Failure/impossibility tokens.
        success: Success/completion tokens.
        shared_dropped: Token ids that both lists produced; removed from both.
    """

    failure: TokenSet
    success: TokenSet
    shared_dropped: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {
            "failure": self.failure.to_dict(),
            "success": self.success.to_dict(),
            "shared_dropped": list(self.shared_dropped),
        }

    def __repr__(self) -> str:
        return (
            f"WelfareTokenSets(\n  {self.failure!r},\n  {self.success!r},\n"
            f"  shared ids dropped: {len(self.shared_dropped)})"
        )


def _token_set(
    tokenizer: Any, name: str, langs: Mapping[str, Sequence[str]], spaces: bool, capitalize: bool
) -> TokenSet:
    special = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    ids: list[int] = []
    languages: list[str] = []
    kept_words: dict[str, list[str]] = {}
    dropped_words: dict[str, list[str]] = {}
    for lang, words in langs.items():
        kept, dropped = single_token_ids(tokenizer, words, spaces=spaces, capitalize=capitalize)
        kept_words[lang] = list(kept)
        dropped_words[lang] = dropped
        for word_ids in kept.values():
            for i in word_ids:
                if i not in ids and i not in special:
                    ids.append(i)
                    languages.append(lang)
    return TokenSet(
        name=name,
        token_ids=ids,
        tokens=[str(tokenizer.decode([i])) for i in ids],
        languages=languages,
        kept_words=kept_words,
        dropped_words=dropped_words,
    )


def welfare_token_sets(
    tokenizer: Any,
    lists: WordLists | str | Path | None = None,
    *,
    spaces: bool = True,
    capitalize: bool = True,
) -> WelfareTokenSets:
    """Single-token failure and success sets for a tokenizer (see :func:`single_token_ids`).

    A token id produced by both lists is removed from both, so the sets are disjoint.

    Args:
        tokenizer: A Hugging Face tokenizer (``model.tokenizer``).
        lists: Word lists (as :func:`load_word_lists` returns), a path to such a JSON file, or
            ``None`` for the shipped lists.
        spaces: Also try each word with a leading space.
        capitalize: Also try each word with its first letter upper-cased.

    Raises:
        TokenizationError: A set has no single-token word in this tokenizer.
    """
    words = lists if isinstance(lists, dict) else load_word_lists(lists)
    for key in ("failure", "success"):
        if key not in words:
            raise DataError(f"Word lists lack a {key!r} set.", hint="See load_word_lists().")
    fail = _token_set(tokenizer, "failure", words["failure"], spaces, capitalize)
    succ = _token_set(tokenizer, "success", words["success"], spaces, capitalize)
    shared = sorted(set(fail.token_ids) & set(succ.token_ids))
    for ts in (fail, succ):
        keep = [j for j, i in enumerate(ts.token_ids) if i not in shared]
        ts.token_ids = [ts.token_ids[j] for j in keep]
        ts.tokens = [ts.tokens[j] for j in keep]
        ts.languages = [ts.languages[j] for j in keep]
        if not ts.token_ids:
            raise TokenizationError(
                f"No word of the {ts.name!r} list is a single token of this tokenizer.",
                hint="Add words (or languages) that this tokenizer has as single tokens.",
            )
    return WelfareTokenSets(fail, succ, shared)


# ----------------------------------------------------------------------------------------------
# Token-set score
# ----------------------------------------------------------------------------------------------


@dataclass
class TokenSetScore:
    """Mean logit-lens score of failure tokens minus success tokens, with two nulls (§3.2).

    Positive ``score``: the vector promotes failure over success tokens (expected for v_Mold);
    negative: the reverse (expected for v_Gold). Control vectors should sit inside both nulls.

    Attributes:
        name: Vector label.
        layer: Layer read.
        norm: Logit-lens readout (``"gain"``, ``"full"``, ``"none"``).
        score: mean(failure scores) − mean(success scores).
        standardized: ``score`` divided by the SD of the scores over the whole vocabulary.
        failure_mean: Mean score of the failure tokens.
        success_mean: Mean score of the success tokens.
        failure_percentile: Mean vocabulary percentile (0-1) of the failure tokens (chance 0.5).
        success_percentile: The same for the success tokens.
        n_failure: Failure tokens scored.
        n_success: Success tokens scored.
        n_failure_words: ``(kept, total)`` failure words.
        n_success_words: ``(kept, total)`` success words.
        perm_p: Two-sided permutation p-value: the failure/success labels of the pooled tokens
            shuffled ``n_permutations`` times ((1 + #|null| >= |score|)/(n + 1)).
        perm_mean: Mean of the permutation null.
        perm_sd: SD of the permutation null.
        random_p: Two-sided p-value against random disjoint token sets of the same sizes drawn
            from the whole vocabulary (special tokens excluded).
        random_mean: Mean of the random-token null.
        random_sd: SD of the random-token null.
        by_language: ``{lang: {"score", "failure_mean", "success_mean", "n_failure",
            "n_success"}}`` for languages present in both sets.
        n_permutations: Permutations and random draws used.
    """

    name: str | None
    layer: int | None
    norm: str
    score: float
    standardized: float
    failure_mean: float
    success_mean: float
    failure_percentile: float
    success_percentile: float
    n_failure: int
    n_success: int
    n_failure_words: tuple[int, int]
    n_success_words: tuple[int, int]
    perm_p: float
    perm_mean: float
    perm_sd: float
    random_p: float
    random_mean: float
    random_sd: float
    by_language: dict[str, dict[str, float]] = field(default_factory=dict)
    n_permutations: int = 0

    @property
    def perm_z(self) -> float:
        """(score − perm_mean) / perm_sd."""
        return (self.score - self.perm_mean) / self.perm_sd if self.perm_sd > 0 else math.nan

    @property
    def random_z(self) -> float:
        """(score − random_mean) / random_sd."""
        return (self.score - self.random_mean) / self.random_sd if self.random_sd > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (NaN as None)."""

        def num(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        return {
            "name": self.name,
            "layer": self.layer,
            "norm": self.norm,
            "score": num(self.score),
            "standardized": num(self.standardized),
            "failure_mean": num(self.failure_mean),
            "success_mean": num(self.success_mean),
            "failure_percentile": num(self.failure_percentile),
            "success_percentile": num(self.success_percentile),
            "n_failure": self.n_failure,
            "n_success": self.n_success,
            "n_failure_words": list(self.n_failure_words),
            "n_success_words": list(self.n_success_words),
            "perm_p": num(self.perm_p),
            "perm_mean": num(self.perm_mean),
            "perm_sd": num(self.perm_sd),
            "perm_z": num(self.perm_z),
            "random_p": num(self.random_p),
            "random_mean": num(self.random_mean),
            "random_sd": num(self.random_sd),
            "random_z": num(self.random_z),
            "by_language": {k: dict(v) for k, v in self.by_language.items()},
            "n_permutations": self.n_permutations,
        }

    def __repr__(self) -> str:
        what = self.name or "vector"
        where = "" if self.layer is None else f" @ layer {self.layer}"
        langs = ", ".join(f"{k} {v['score']:+.3f}" for k, v in self.by_language.items())
        return (
            f"TokenSetScore({what}{where}, norm={self.norm}: failure − success = "
            f"{self.score:+.4f} ({self.standardized:+.3f} vocab SD)\n"
            f"  failure mean {self.failure_mean:+.4f} over {self.n_failure} tokens "
            f"({self.n_failure_words[0]}/{self.n_failure_words[1]} words), percentile "
            f"{self.failure_percentile:.3f}\n"
            f"  success mean {self.success_mean:+.4f} over {self.n_success} tokens "
            f"({self.n_success_words[0]}/{self.n_success_words[1]} words), percentile "
            f"{self.success_percentile:.3f}\n"
            f"  permutation null {self.perm_mean:+.4f} ± {self.perm_sd:.4f} (p={self.perm_p:.4g}); "
            f"random-token null {self.random_mean:+.4f} ± {self.random_sd:.4f} "
            f"(p={self.random_p:.4g})\n"
            f"  by language: {langs or '-'})"
        )


def _two_sided_p(null: F64, observed: float) -> float:
    centre = float(null.mean())
    hits = int(np.sum(np.abs(null - centre) >= abs(observed - centre) - 1e-12))
    return (1 + hits) / (len(null) + 1)


def token_set_score(
    lens: LogitLensResult,
    sets: WelfareTokenSets,
    *,
    n_permutations: int = 1000,
    seed: int = 0,
    exclude_ids: Iterable[int] = (),
) -> TokenSetScore:
    """Failure-minus-success score of a logit-lens readout, with permutation and random nulls.

    Args:
        lens: A :func:`logit_lens` result (its full ``logits`` are scored).
        sets: Token sets from :func:`welfare_token_sets` with the same tokenizer.
        n_permutations: Draws for each null.
        seed: Seed of the nulls.
        exclude_ids: Token ids never drawn for the random-token null (e.g. special tokens).

    Raises:
        DataError: The result holds no logits, or a token id is beyond them.
    """
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, int):
        raise DataError(f"n_permutations must be an int, got {n_permutations!r}.")
    if n_permutations < 1:
        raise DataError("n_permutations must be >= 1.", hint="Use e.g. 1000.")
    scores = lens.logits.detach().double().cpu().numpy()
    n_vocab = scores.shape[0]
    fail = np.asarray(sets.failure.token_ids, dtype=np.int64)
    succ = np.asarray(sets.success.token_ids, dtype=np.int64)
    if n_vocab == 0 or fail.size == 0 or succ.size == 0:
        raise DataError(
            "Nothing to score: empty logits or token sets.",
            hint="Use a logit_lens result and welfare_token_sets(model.tokenizer).",
        )
    if max(int(fail.max()), int(succ.max())) >= n_vocab:
        raise DataError(
            "A token id is beyond the logit-lens vocabulary.",
            hint="Build the token sets with the tokenizer of the model the lens was run on.",
        )
    sf, ss = scores[fail], scores[succ]
    observed = float(sf.mean() - ss.mean())
    vocab_sd = float(scores.std())
    ranks = scores.argsort().argsort() / max(n_vocab - 1, 1)
    rng = np.random.default_rng(seed)

    pooled = np.concatenate([sf, ss])
    nf = fail.size
    perm = np.empty(n_permutations)
    for i in range(n_permutations):
        order = rng.permutation(pooled.size)
        perm[i] = pooled[order[:nf]].mean() - pooled[order[nf:]].mean()

    allowed = np.setdiff1d(np.arange(n_vocab), np.asarray(list(exclude_ids), dtype=np.int64))
    need = fail.size + succ.size
    if allowed.size < need:
        raise DataError("The vocabulary is smaller than the two token sets.")
    rand = np.empty(n_permutations)
    for i in range(n_permutations):
        draw = rng.choice(allowed, size=need, replace=False)
        rand[i] = scores[draw[:nf]].mean() - scores[draw[nf:]].mean()

    by_language: dict[str, dict[str, float]] = {}
    fail_lang = np.asarray(sets.failure.languages)
    succ_lang = np.asarray(sets.success.languages)
    for lang in dict.fromkeys([*sets.failure.languages, *sets.success.languages]):
        a, b = sf[fail_lang == lang], ss[succ_lang == lang]
        if a.size and b.size:
            by_language[lang] = {
                "score": float(a.mean() - b.mean()),
                "failure_mean": float(a.mean()),
                "success_mean": float(b.mean()),
                "n_failure": float(a.size),
                "n_success": float(b.size),
            }
    return TokenSetScore(
        name=lens.name,
        layer=lens.layer,
        norm=lens.norm,
        score=observed,
        standardized=observed / vocab_sd if vocab_sd > 0 else math.nan,
        failure_mean=float(sf.mean()),
        success_mean=float(ss.mean()),
        failure_percentile=float(ranks[fail].mean()),
        success_percentile=float(ranks[succ].mean()),
        n_failure=int(fail.size),
        n_success=int(succ.size),
        n_failure_words=(sets.failure.n_kept, sets.failure.n_words),
        n_success_words=(sets.success.n_kept, sets.success.n_words),
        perm_p=_two_sided_p(perm, observed),
        perm_mean=float(perm.mean()),
        perm_sd=float(perm.std(ddof=1)) if n_permutations > 1 else 0.0,
        random_p=_two_sided_p(rand, observed),
        random_mean=float(rand.mean()),
        random_sd=float(rand.std(ddof=1)) if n_permutations > 1 else 0.0,
        by_language=by_language,
        n_permutations=n_permutations,
    )


def welfare_token_score(
    model: Any,
    vector: Float[Tensor, "n_layers d_model"] | Float[Tensor, " d_model"],
    *,
    layer: int | None = None,
    norm: bool | NormMode = False,
    name: str | None = None,
    sets: WelfareTokenSets | None = None,
    n_permutations: int = 1000,
    seed: int = 0,
) -> TokenSetScore:
    """Logit lens of ``vector`` scored on the shipped failure vs success tokens (§3.2).

    Args:
        model: A TransformerLens model.
        vector: ``[n_layers, d_model]`` or ``[d_model]`` (see :func:`logit_lens`).
        layer: Layer (default floor(5L/6) for per-layer vectors).
        norm: Logit-lens readout (see :func:`logit_lens`).
        name: Label stored in the result.
        sets: Precomputed :func:`welfare_token_sets` (default: the shipped lists on
            ``model.tokenizer``).
        n_permutations, seed: See :func:`token_set_score`.
    """
    lens = logit_lens(model, vector, layer=layer, k=1, norm=norm, name=name)
    tokenizer = model.tokenizer
    chosen = sets if sets is not None else welfare_token_sets(tokenizer)
    special = [int(i) for i in getattr(tokenizer, "all_special_ids", [])]
    return token_set_score(
        lens, chosen, n_permutations=n_permutations, seed=seed, exclude_ids=special
    )
