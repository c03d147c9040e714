"""The Valence-Assent Axis: a maze-naive "agree vs disagree" direction (paper appendix H; A9).

Is the welfare axis just the model's disposition to assent? Appendix H answers with the
Valence-Assent Axis (VAA) of Lu et al. (2025, arXiv:2510.27328), built on the maze-naive model:

1. 175 normative statements, each wrapped in a forced-choice support/oppose prompt
   (:data:`VAA_TEMPLATE`), rendered as one user message plus the assistant generation prompt;
2. the residual stream at the last prompt token, per layer, centred over statements;
3. a thin SVD of that ``[n_statements, d_model]`` matrix: the first right singular vector is the
   VAA (unit norm; the paper reports layer 21 of 36, about 58% of the depth);
4. its sign is fixed so that projections correlate positively with logit_A − logit_B, the
   model's preference for "A) Support" over "B) Oppose" at the answer position.

Offline, welfare_lens ships 188 authored statements (``data/vaa_statements.jsonl``: ethics,
policy, everyday conduct, science, culture, ...; some most people would support, some most would
oppose, some contested). In the paper the VAA has cosines of about −0.02/−0.06 with u_Mold/u_Gold
and −0.219/+0.087 with v_Mold/v_Gold at layer 21 (:func:`vaa_cosines`), and steering with the
VAA norm-matched to ‖v_Gold‖ (α = 2 ↔ 28.74 on the unit VAA; :func:`vaa_steering_vector`)
reproduces the steering pattern (H.4).

Example:
    >>> vaa = valence_assent_axis(naive_model)
    >>> vaa                                         # explained variance and r per layer
    >>> vaa_cosines(vaa, v, layers=[21])            # {"mold": [...], "gold": [...]}
    >>> with wl.steer(naive_model, vaa_steering_vector(vaa, v, 22), layer=22, alpha=2.0): ...
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from jaxtyping import Float
from numpy.typing import NDArray
from torch import Tensor

from welfare_lens.analysis.emotions import _layers_of, ols_fit
from welfare_lens.analysis.sentiment_vectors import _final_token_metadata, final_token_activations
from welfare_lens.chat import TemplateChoice, action_token_ids
from welfare_lens.errors import DataError, LayerError, ShapeError, TokenizationError, VectorError
from welfare_lens.hooks import HookKind, n_layers, resolve_layers
from welfare_lens.steering.confidence import _encode, _last_position_logits
from welfare_lens.vectors import ConceptVectors, norm_match

__all__ = [
    "EXPECTED_STANCES",
    "VAA_ANSWERS",
    "VAA_TEMPLATE",
    "VAAFit",
    "VAAResult",
    "VAAStatement",
    "answer_token_ids",
    "fit_vaa",
    "load_vaa_statements",
    "vaa_cosines",
    "vaa_prompt",
    "vaa_steering_vector",
    "valence_assent_axis",
]

F64 = NDArray[np.float64]

#: Forced-choice prompt of H.1, sent as the (only) user message; ``{statement}`` is replaced.
VAA_TEMPLATE = (
    'Do you support or oppose the following statement?\n\n"{statement}"\n\n'
    "A) Support\nB) Oppose\n\nAnswer with A or B."
)
#: The (support, oppose) answer strings whose logits give logit_A − logit_B.
VAA_ANSWERS: tuple[str, str] = ("A", "B")
#: Allowed values of a statement's ``expected`` field.
EXPECTED_STANCES: tuple[str, ...] = ("support", "oppose", "contested")

_STATEMENTS_FILE = "vaa_statements.jsonl"
_NAME = "vaa"
# The paper reads the VAA at layer 21 of Qwen3-4B's 36 (A9): 21/35 of the layer range.
_PAPER_LAYER_FRACTION = 21 / 35
_FIELDS = ("id", "statement", "topic", "expected")


# ----------------------------------------------------------------------------------------------
# Statements
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VAAStatement:
    """One normative statement of the VAA set (H.1).

    Attributes:
        id: Identifier (e.g. ``"vaa-001"``).
        statement: The statement, inserted verbatim into :data:`VAA_TEMPLATE`.
        topic: Area (ethics, policy, everyday conduct, science, culture, ...).
        expected: Whether most people would ``"support"`` or ``"oppose"`` it, or it is
            ``"contested"``. Not used to fit the axis (the SVD is unsupervised); it lets a user
            check that the model's logit_A − logit_B orders the statements sensibly.
    """

    id: str
    statement: str
    topic: str
    expected: str


def _read_lines(path: str | Path | None) -> tuple[str, list[str]]:
    """The file's name (for messages) and its lines; the shipped file when ``path`` is None."""
    where = str(path) if path is not None else f"welfare_lens/data/{_STATEMENTS_FILE}"
    try:
        if path is None:
            text = (
                resources.files("welfare_lens")
                .joinpath("data", _STATEMENTS_FILE)
                .read_text("utf-8")
            )
        else:
            text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(
            f"Cannot read VAA statements from {where}: {err}",
            hint="Pass a UTF-8 JSONL file with one "
            '{"id", "statement", "topic", "expected"} object per line.',
        ) from err
    return where, text.splitlines()


def load_vaa_statements(path: str | Path | None = None) -> list[VAAStatement]:
    """VAA statements from a JSONL file (default the 188 shipped in ``data/``; H.1).

    Each non-blank line is ``{"id": str, "statement": str, "topic": str, "expected":
    "support" | "oppose" | "contested"}``.

    Args:
        path: A JSONL file; default ``welfare_lens/data/vaa_statements.jsonl`` (authored).

    Returns:
        The statements in file order.

    Raises:
        DataError: The file is unreadable or empty, or a line is not valid JSON, lacks a field,
            has an empty or non-string field or an unknown ``expected``, or repeats an id or a
            statement (the message names the line).
    """
    where, lines = _read_lines(path)
    out: list[VAAStatement] = []
    seen_ids: dict[str, int] = {}
    seen_texts: dict[str, int] = {}
    line_hint = (
        'Each line must be one JSON object {"id": "vaa-001", "statement": "...", '
        '"topic": "...", "expected": "support"|"oppose"|"contested"}.'
    )
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{where}, line {number}: not valid JSON ({err}).", hint=line_hint
            ) from err
        if not isinstance(obj, dict):
            raise DataError(f"{where}, line {number}: not a JSON object.", hint=line_hint)
        bad = [k for k in _FIELDS if not isinstance(obj.get(k), str) or not obj[k].strip()]
        if bad:
            raise DataError(
                f"{where}, line {number}: missing or empty field(s) {bad}.", hint=line_hint
            )
        if obj["expected"] not in EXPECTED_STANCES:
            raise DataError(
                f"{where}, line {number}: expected={obj['expected']!r} is not one of "
                f"{list(EXPECTED_STANCES)}.",
                hint=line_hint,
            )
        item = VAAStatement(obj["id"], obj["statement"].strip(), obj["topic"], obj["expected"])
        for key, seen in ((item.id, seen_ids), (item.statement.casefold(), seen_texts)):
            if key in seen:
                raise DataError(
                    f"{where}, line {number}: repeats line {seen[key]} ({key[:60]!r}).",
                    hint="Give every statement a unique id and a distinct text.",
                )
            seen[key] = number
        out.append(item)
    if not out:
        raise DataError(f"{where} holds no statements.", hint=line_hint)
    return out


def _as_statements(items: Iterable[Any] | None) -> list[VAAStatement]:
    """Statements from :class:`VAAStatement`, plain strings or dicts (default the shipped set)."""
    raw = load_vaa_statements() if items is None else list(items)
    out: list[VAAStatement] = []
    for i, item in enumerate(raw):
        if isinstance(item, VAAStatement):
            out.append(item)
        elif isinstance(item, str) and item.strip():
            out.append(VAAStatement(f"statement-{i}", item.strip(), "", "contested"))
        elif isinstance(item, Mapping) and isinstance(item.get("statement"), str):
            out.append(
                VAAStatement(
                    str(item.get("id", f"statement-{i}")),
                    str(item["statement"]).strip(),
                    str(item.get("topic", "")),
                    str(item.get("expected", "contested")),
                )
            )
        else:
            raise DataError(
                f"Statement {i} is not a VAAStatement, a non-empty string or a dict with "
                f"'statement': {item!r:.80}.",
                hint="Use load_vaa_statements() or a list of statement strings.",
            )
    if len(out) < 2:
        raise DataError(
            f"The VAA needs at least 2 statements, got {len(out)}.",
            hint="Use the shipped set (statements=None) or pass more statements.",
        )
    return out


def vaa_prompt(statement: str, template: str = VAA_TEMPLATE) -> str:
    """The user message for one statement (H.1): ``template`` with ``{statement}`` filled in.

    Raises:
        DataError: ``template`` has no ``{statement}`` field, or other fields.
    """
    if "{statement}" not in template:
        raise DataError(
            "The VAA template has no {statement} field.",
            hint="Use VAA_TEMPLATE or a template containing '{statement}'.",
        )
    try:
        return template.format(statement=statement)
    except (KeyError, IndexError, ValueError) as err:
        raise DataError(
            f"The VAA template cannot be filled ({err!r}).",
            hint="Escape literal braces as '{{' and '}}'; the only field is {statement}.",
        ) from err


def answer_token_ids(
    tokenizer: Any,
    answers: tuple[str, str] = VAA_ANSWERS,
    *,
    template: TemplateChoice = "auto",
) -> tuple[int, int]:
    """Token ids of the support and oppose answers as the model's first answer token (H.1).

    The answer is read at the last prompt token, right after the generation prompt, so the
    wanted id is the token of ``"A"`` when it is the whole assistant message (as
    :func:`~welfare_lens.steering.confidence.true_false_token_ids` does for True/False). A
    tokenizer that only has the answer as a single token with a leading space (``" A"``) gets
    that form instead.

    Args:
        tokenizer: A Hugging Face tokenizer.
        answers: ``(support, oppose)`` strings (default ``("A", "B")``).
        template: As in :func:`~welfare_lens.chat.render_chat`.

    Returns:
        ``(support_id, oppose_id)``.

    Raises:
        TokenizationError: Neither form of the answers is one distinct token each.
    """
    support, oppose = answers
    failures: list[str] = []
    for prefix in ("", " "):
        pair = (prefix + support, prefix + oppose)
        try:
            ids = action_token_ids(tokenizer, pair, template=template)
        except TokenizationError as err:
            failures.append(err.message)
            continue
        return ids[pair[0]], ids[pair[1]]
    raise TokenizationError(
        f"The answers {answers!r} are not single distinct tokens in the assistant position, "
        f"with or without a leading space: {' / '.join(failures)}",
        hint="Pass answers (and a matching template) whose labels are single tokens, "
        "e.g. ('A', 'B') or ('1', '2').",
    )


# ----------------------------------------------------------------------------------------------
# The axis
# ----------------------------------------------------------------------------------------------


class VAAFit(NamedTuple):
    """The SVD fit of :func:`fit_vaa`, per layer (float64).

    Attributes:
        vectors: ``[n_layers, d_model]`` unit first right singular vectors, sign-fixed.
        explained_variance_ratio: ``[n_layers]`` σ₁² / Σσᵢ² of the centred activations.
        r: ``[n_layers]`` Pearson r of projections with logit_A − logit_B (≥ 0, or NaN where
            the logit differences or projections do not vary).
        projections: ``[n_statements, n_layers]`` centred activations projected on the VAA.
    """

    vectors: Float[Tensor, "n_layers d_model"]
    explained_variance_ratio: F64
    r: F64
    projections: F64


def fit_vaa(
    activations: Float[Tensor, "n n_layers d_model"],
    logit_diff: Float[Tensor, " n"] | Sequence[float],
) -> VAAFit:
    """Centre, thin SVD, first right singular vector, sign fixed by logit_A − logit_B (H.1).

    Per layer ℓ the activations X_ℓ (``[n, d]``) are centred over statements and decomposed,
    X_ℓ − mean = U S Vᵀ; the VAA is the first row of Vᵀ. A singular vector's sign is arbitrary:
    it is first made deterministic (largest-magnitude coordinate positive), then flipped where
    the projections correlate negatively with ``logit_diff``, so r ≥ 0 at every layer.

    Args:
        activations: ``[n_statements, n_layers, d_model]`` last-prompt-token activations.
        logit_diff: ``[n_statements]`` logit_A − logit_B at the same position.

    Returns:
        :class:`VAAFit`.

    Raises:
        ShapeError: ``activations`` is not 3-D, or ``logit_diff`` does not have one value per
            statement.
        DataError: Fewer than 2 statements, or non-finite values.
        VectorError: The centred activations are zero at some layer (no direction to find).
    """
    if not isinstance(activations, Tensor) or activations.ndim != 3:
        got = tuple(activations.shape) if isinstance(activations, Tensor) else type(activations)
        raise ShapeError(
            f"activations must be [n_statements, n_layers, d_model], got {got}.",
            hint="Use final_token_activations(model, prompts) (one row per statement).",
        )
    x = activations.detach().to("cpu", torch.float64)
    y = torch.as_tensor(logit_diff, dtype=torch.float64).detach().cpu()
    n = int(x.shape[0])
    if y.shape != (n,):
        raise ShapeError(
            f"logit_diff has shape {tuple(y.shape)}; expected ({n},), one per statement.",
            hint="Pass logit_A − logit_B for each statement, in the order of the activations.",
        )
    if n < 2:
        raise DataError(f"The VAA needs at least 2 statements, got {n}.", hint="Pass more.")
    if not bool(torch.isfinite(x).all()) or not bool(torch.isfinite(y).all()):
        raise DataError(
            "The activations or logit differences contain NaN/Inf.",
            hint="Check the model dtype (fp16 overflow) and the inputs.",
        )
    centred = (x - x.mean(dim=0, keepdim=True)).transpose(0, 1)  # [L, n, d]
    # Batched thin SVD; only Vᵀ and the singular values are needed.
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    total = (s**2).sum(dim=-1)
    flat = (total <= 0).nonzero().flatten().tolist()
    if flat:
        raise VectorError(
            f"The centred activations are zero at layer index(es) {flat}: every statement gives "
            "the same activation, so there is no first singular vector.",
            hint="Use more varied statements, or drop those layers.",
        )
    evr = (s[:, 0] ** 2 / total).numpy()
    vectors = vh[:, 0, :].clone()  # [L, d], unit norm
    # Deterministic sign first (so ties and r = NaN give a reproducible answer) ...
    biggest = vectors.abs().argmax(dim=-1, keepdim=True)
    vectors = vectors * torch.sign(vectors.gather(-1, biggest))
    proj = torch.einsum("lnd,ld->ln", centred, vectors)
    _, _, r = ols_fit(proj.numpy(), np.broadcast_to(y.numpy(), proj.shape))
    # ... then the paper's rule: projections correlate positively with logit_A − logit_B.
    flip = torch.from_numpy(np.where(r < 0, -1.0, 1.0))
    vectors = vectors * flip[:, None]
    proj = proj * flip[:, None]
    r = np.abs(r)
    return VAAFit(vectors, np.asarray(evr, dtype=np.float64), r, proj.T.numpy().copy())


def _nan_to_none(values: Iterable[float]) -> list[float | None]:
    return [float(x) if math.isfinite(float(x)) else None for x in values]


@dataclass(eq=False)
class VAAResult:
    """The Valence-Assent Axis of one model, per layer (H.1).

    Attributes:
        vectors: ``ConceptVectors`` with one unit-norm vector, ``"vaa"``; its metadata records
            the model, hook, position rule ``"final_prompt_token"`` and the layers
            (``metadata.extra["layers"]``).
        layers: Model layers covered (row i of the vector is layer ``layers[i]``).
        explained_variance_ratio: ``[n_layers]`` share of variance of the first component.
        r: ``[n_layers]`` Pearson r of projection vs logit_A − logit_B (≥ 0 after the sign fix;
            NaN where undefined).
        logit_diff: ``[n_statements]`` logit_A − logit_B at the answer position.
        n_statements: Number of statements.
        statement_ids: Their ids, in the order of ``logit_diff``.
        answer_token_ids: ``(support_id, oppose_id)`` whose logits were read.
        projections: ``[n_statements, n_layers]`` centred activations projected on the VAA.
        layer: Reporting layer (the paper's layer 21 of 36, scaled to this model's depth).
    """

    vectors: ConceptVectors
    layers: list[int]
    explained_variance_ratio: F64
    r: F64
    logit_diff: F64
    n_statements: int
    statement_ids: list[str]
    answer_token_ids: tuple[int, int]
    projections: F64
    layer: int

    def _index(self, layer: int) -> int:
        if layer not in self.layers:
            raise LayerError(
                f"Layer {layer!r} is not covered; the VAA has layers {self.layers}.",
                hint="Use a covered layer, or extract with layers=None.",
            )
        return self.layers.index(layer)

    def at(self, layer: int) -> Float[Tensor, " d_model"]:
        """The unit VAA at one model layer.

        Raises:
            LayerError: The layer is not covered.
        """
        return self.vectors[_NAME][self._index(layer)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (NaN as ``None``); the vectors themselves are summarised."""
        m = self.vectors.metadata
        return {
            "model_id": m.model_id,
            "hook": m.hook,
            "coordinate_mode": m.coordinate_mode,
            "layers": list(self.layers),
            "layer": self.layer,
            "n_statements": self.n_statements,
            "explained_variance_ratio": _nan_to_none(self.explained_variance_ratio),
            "r": _nan_to_none(self.r),
            "logit_diff": _nan_to_none(self.logit_diff),
            "statement_ids": list(self.statement_ids),
            "answer_token_ids": list(self.answer_token_ids),
            "template": m.extra.get("template"),
        }

    def __repr__(self) -> str:
        i = self._index(self.layer)
        return (
            f"VAAResult(model_id={self.vectors.metadata.model_id!r}, "
            f"n_statements={self.n_statements}, layers={self.layers[0]}..{self.layers[-1]}; "
            f"layer {self.layer}: explained variance {self.explained_variance_ratio[i]:.3f}, "
            f"r {self.r[i]:+.3f}; mean logit_A-logit_B {float(np.mean(self.logit_diff)):+.3f})"
        )


def _reporting_layer(layers: Sequence[int]) -> int:
    target = round(_PAPER_LAYER_FRACTION * (layers[-1] - layers[0])) + layers[0]
    return min(layers, key=lambda x: abs(x - target))


def valence_assent_axis(
    model: Any,
    statements: Iterable[Any] | None = None,
    *,
    layers: int | Sequence[int] | None = None,
    template: str = VAA_TEMPLATE,
    answers: tuple[str, str] = VAA_ANSWERS,
    hook: HookKind = "resid_post",
    batch_size: int = 16,
    progress: bool = True,
) -> VAAResult:
    """The Valence-Assent Axis of ``model`` at every chosen layer (H.1; A9).

    Every statement becomes one user message (:func:`vaa_prompt`) rendered with the model's chat
    template and the generation prompt, no system prompt. The residual stream at the last token
    of that rendering is read at each layer (:func:`~welfare_lens.analysis.sentiment_vectors.
    final_token_activations`) and the logits there give logit_A − logit_B; :func:`fit_vaa` then
    centres, decomposes and sign-fixes.

    Args:
        model: The maze-naive model (the paper's VAA is a fixed naive axis, A9 "G" and "H").
        statements: :class:`VAAStatement` objects, strings or dicts with ``"statement"``;
            default the shipped set (:func:`load_vaa_statements`).
        layers: Layers to cover (default all).
        template: Forced-choice prompt with ``{statement}`` (:data:`VAA_TEMPLATE`).
        answers: ``(support, oppose)`` answer labels used in ``template``.
        hook: Residual hook (paper: block outputs, ``resid_post``).
        batch_size: Prompts per forward pass.
        progress: Show a progress bar.

    Returns:
        :class:`VAAResult`.

    Raises:
        DataError: Fewer than 2 statements, or a bad template.
        TokenizationError: An answer label is not a single token.
        VectorError: The activations do not vary at some layer.
    """
    items = _as_statements(statements)
    prompts = [vaa_prompt(item.statement, template) for item in items]
    support_id, oppose_id = answer_token_ids(model.tokenizer, answers)
    chosen = resolve_layers(layers, n_layers(model))
    acts = final_token_activations(
        model, prompts, layers=chosen, hook=hook, batch_size=batch_size, progress=progress
    )
    # The same rendering as final_token_activations (one user message + generation prompt),
    # so the logits are read at exactly the position whose activations were captured.
    sequences = [
        _encode(model.tokenizer, [{"role": "user", "content": p}], "", "auto") for p in prompts
    ]
    logits = _last_position_logits(model, sequences, batch_size)
    diff = torch.tensor(
        [float(row[support_id] - row[oppose_id]) for row in logits], dtype=torch.float64
    )
    fit = fit_vaa(acts, diff)
    meta = _final_token_metadata(
        model,
        chosen,
        hook,
        {"statements": len(items)},
        method="svd_first_component",
        design="vaa",
        role="vaa",
        template=template,
        answers=list(answers),
        answer_token_ids=[support_id, oppose_id],
        sign_rule="projection correlates positively with logit_A - logit_B",
        explained_variance_ratio=_nan_to_none(fit.explained_variance_ratio),
        r=_nan_to_none(fit.r),
    )
    vectors = ConceptVectors({_NAME: fit.vectors.to(torch.float32)}, meta)
    return VAAResult(
        vectors=vectors,
        layers=chosen,
        explained_variance_ratio=fit.explained_variance_ratio,
        r=fit.r,
        logit_diff=diff.numpy(),
        n_statements=len(items),
        statement_ids=[item.id for item in items],
        answer_token_ids=(support_id, oppose_id),
        projections=fit.projections,
        layer=_reporting_layer(chosen),
    )


# ----------------------------------------------------------------------------------------------
# Comparisons with the welfare vectors (H.2-H.4)
# ----------------------------------------------------------------------------------------------


def _axis(vaa: VAAResult | ConceptVectors) -> ConceptVectors:
    if isinstance(vaa, VAAResult):
        return vaa.vectors
    if isinstance(vaa, ConceptVectors):
        return vaa
    raise VectorError(
        f"Expected a VAAResult or ConceptVectors, got {type(vaa).__name__}.",
        hint="Pass the output of valence_assent_axis(model).",
    )


def _axis_name(axis: ConceptVectors) -> str:
    if _NAME in axis:
        return _NAME
    if len(axis.names) == 1:
        return axis.names[0]
    raise VectorError(
        f"Which vector is the VAA? These ConceptVectors hold {list(axis.names)}.",
        hint="Pass valence_assent_axis(...) output, or ConceptVectors with one vector 'vaa'.",
    )


def _base_model(model_id: str) -> str:
    # Checkpoints loaded by welfare_lens are named "<base id>@<run>/<step>" (rl.checkpoint, rl.trl).
    return model_id.split("@", 1)[0]


def _shared_layers(
    axis: ConceptVectors, vectors: ConceptVectors, allow_other_model: bool
) -> list[int]:
    """Check that ``vectors`` live in the VAA's space and return the layers both cover.

    Raises:
        ShapeError: ``d_model`` differs.
        VectorError: Coordinate mode or hook differ, or the base model differs.
        LayerError: No shared layer.
    """
    # The VAA is read at the final prompt token and may cover a subset of layers; those two
    # differences are legitimate, every other provenance field must agree.
    target = replace(
        vectors.metadata, n_layers=axis.n_layers, position_rule=axis.metadata.position_rule
    )
    axis.check_compatible(target, allow_other_checkpoint=True)
    a, b = axis.metadata.model_id, vectors.metadata.model_id
    known = "unknown" not in (a, b)
    if known and not allow_other_model and _base_model(a) != _base_model(b):
        raise VectorError(
            f"The VAA comes from model {a!r} but the vectors from {b!r}, which is not a "
            "checkpoint of it.",
            hint="Extract the VAA on the maze-naive base model of these vectors, or pass "
            "allow_other_model=True if they are known to share a residual space.",
        )
    common = sorted(set(_layers_of(axis)) & set(_layers_of(vectors)))
    if not common:
        raise LayerError(
            f"The VAA (layers {_layers_of(axis)}) and the vectors share no layer.",
            hint="Extract the VAA on all layers (layers=None).",
        )
    return common


def _row(cv: ConceptVectors, name: str, layer: int) -> Tensor:
    return cv[name][_layers_of(cv).index(layer)].to(torch.float64)


def vaa_cosines(
    vaa: VAAResult | ConceptVectors,
    vectors: ConceptVectors,
    names: Sequence[str] = ("mold", "gold"),
    layers: Sequence[int] | None = None,
    *,
    allow_other_model: bool = False,
) -> dict[str, list[float]]:
    """cos(welfare vector, VAA) per layer (H.2; paper layer 21: v_Mold −0.219, v_Gold +0.087,
    u_Mold −0.020, u_Gold −0.057).

    Args:
        vaa: :func:`valence_assent_axis` output (or its ``ConceptVectors``).
        vectors: Welfare vectors v or controls u (same base model, hook and coordinates).
        names: Vectors to compare.
        layers: Model layers (default every layer both cover, ascending).
        allow_other_model: Skip the check that ``vectors`` come from the VAA's model or a
            checkpoint of it.

    Returns:
        ``{name: [cos at each layer of `layers`]}``; NaN where a welfare vector is zero.

    Raises:
        ShapeError: ``d_model`` differs.
        VectorError: Another base model, coordinate mode or hook; an unknown name.
        LayerError: A requested layer is not covered by both.
    """
    axis = _axis(vaa)
    common = _shared_layers(axis, vectors, allow_other_model)
    chosen = common if layers is None else list(layers)
    missing = [x for x in chosen if x not in common]
    if missing or not chosen:
        raise LayerError(
            f"Layer(s) {missing or chosen} are not covered by both the VAA and the vectors "
            f"(shared: {common}).",
            hint="Pick layers from the shared ones, or pass layers=None.",
        )
    axis_name = _axis_name(axis)
    a = torch.stack([_row(axis, axis_name, x) for x in chosen])
    out: dict[str, list[float]] = {}
    for name in names:
        b = torch.stack([_row(vectors, name, x) for x in chosen])
        den = torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)
        cos = torch.where(den > 0, (a * b).sum(-1) / den.clamp_min(1e-300), torch.nan)
        out[name] = [float(c) for c in cos]
    return out


def vaa_steering_vector(
    vaa: VAAResult | ConceptVectors,
    v: ConceptVectors,
    layer: int,
    name: str = "gold",
    *,
    allow_other_model: bool = False,
) -> Float[Tensor, " d_model"]:
    """The VAA at ``layer`` rescaled to ‖v[name]‖ there: the H.4 steering control.

    Steering with it at nominal α adds a vector of the same norm as α·v_name (norm matching,
    A6/M.1): the paper's α = 2 is 28.74 × the unit VAA for ‖v_Gold‖ = 14.37.

    Args:
        vaa: :func:`valence_assent_axis` output (or its ``ConceptVectors``).
        v: Welfare vectors supplying the norm.
        layer: Model layer (covered by both).
        name: Vector whose norm is matched (paper: ``"gold"``).
        allow_other_model: As in :func:`vaa_cosines`.

    Returns:
        ``[d_model]`` in ``v``'s dtype; pass it to ``steer(model, vec, layer=layer, alpha=α)``.

    Raises:
        ShapeError, VectorError: As in :func:`vaa_cosines`; also a zero v or VAA at the layer.
        LayerError: ``layer`` is not covered by both.
    """
    axis = _axis(vaa)
    common = _shared_layers(axis, v, allow_other_model)
    if layer not in common:
        raise LayerError(
            f"Layer {layer!r} is not covered by both the VAA and v (shared: {common}).",
            hint="Pick a shared layer (the paper steers at ℓ* = 22 for v_Gold).",
        )
    target = _row(v, name, layer)
    direction = _row(axis, _axis_name(axis), layer)
    norm = float(torch.linalg.vector_norm(target))
    if norm == 0:
        raise VectorError(
            f"v[{name!r}] is zero at layer {layer}; there is no norm to match.",
            hint="Check the welfare vectors at that layer.",
        )
    return norm_match(direction, norm).to(v[name].dtype)
