"""α × layer × vector sweeps with resumable JSONL results, tidy tables and OLS slopes.

The paper evaluates every steering condition (vector, layer, α) with the same prompts and seeds
(A6: α ∈ {−4, −2, 0, +2, +4}) and summarises a layer sweep by the OLS slope of the metric against
α, pooled over prompts and rollouts (appendix D, A10; standard errors about 0.01-0.05).

:func:`sweep` runs an evaluation function under each condition and appends its rows to a JSONL
file, one condition at a time. A condition is complete only once its completion marker is
written (rows and marker go out in one write, flushed and fsynced), so an interrupted sweep
resumes where it stopped: completed conditions are skipped, a half-written trailing line or the
rows of an unfinished condition are discarded, and nothing else is repeated or lost.

File format (one JSON object per line)::

    {"_sweep": {"version": 1, "model_id": ..., "tag": ..., "settings": {...}}}   header
    {"prompt": ..., "sample": 0, "alpha": -4.0, "layer": 20, "vector": "gold", "score": ...}
    ...
    {"_done": {"tag": ..., "vector": "gold", "layer": 20, "alpha": -4.0}, "n_rows": 800}

:class:`ResultTable` reads such a file (markers and header skipped) or any list of row dicts.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from torch import Tensor

from welfare_lens.errors import DataError
from welfare_lens.steering.steer import (
    PositionRule,
    SteeringMode,
    SteeringSpec,
    norm_matched_alpha,
    resolve_vector,
    steer_many,
)
from welfare_lens.vectors import ConceptVectors

__all__ = [
    "COLUMNS",
    "ResultTable",
    "Slope",
    "SweepVectors",
    "ols_slope",
    "slopes_by",
    "sweep",
]

#: Columns every evaluation row carries (others may be added).
COLUMNS: tuple[str, ...] = (
    "prompt",
    "sample",
    "alpha",
    "layer",
    "vector",
    "score",
    "incoherent",
    "text",
)

_FORMAT_VERSION = 1

Row = dict[str, Any]
Rows = Iterable[Mapping[str, Any]]


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# ----------------------------------------------------------------------------------------------
# Result table
# ----------------------------------------------------------------------------------------------


@dataclass
class ResultTable:
    """A tidy table: one dict per (prompt, sample, condition).

    Standard keys are :data:`COLUMNS` (``prompt, sample, alpha, layer, vector, score,
    incoherent, text``); evaluations add their own (``prompt_id``, ``category``, ``label``, ...).
    ``score`` is ``None`` when a judge's answer could not be parsed.

    Attributes:
        rows: The rows.
    """

    rows: list[Row] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)

    def __getitem__(self, index: int) -> Row:
        return self.rows[index]

    @property
    def columns(self) -> list[str]:
        """Standard columns first, then any other keys in order of appearance."""
        seen = list(COLUMNS)
        for row in self.rows:
            for key in row:
                if key not in seen:
                    seen.append(key)
        present = {k for row in self.rows for k in row}
        return [c for c in seen if c in present or c in COLUMNS]

    def extend(self, rows: Rows) -> ResultTable:
        """Append rows in place; returns self."""
        self.rows.extend(dict(r) for r in rows)
        return self

    def where(self, **equals: Any) -> ResultTable:
        """Rows whose keys equal the given values, e.g. ``table.where(vector="gold", layer=20)``."""
        return ResultTable([r for r in self.rows if all(r.get(k) == v for k, v in equals.items())])

    def column(self, key: str) -> list[Any]:
        """The values of one key (``None`` where a row lacks it)."""
        return [r.get(key) for r in self.rows]

    def mean_by(
        self, *keys: str, value: str = "score", exclude_incoherent: bool = False
    ) -> list[Row]:
        """Mean of ``value`` per group of ``keys`` (e.g. ``mean_by("vector", "alpha")``).

        Rows with a missing value (``None``/NaN, e.g. an unparseable judge answer) are left out
        of the mean and counted in ``n_missing``. Booleans average to rates.

        Returns:
            One dict per group, in order of first appearance: the keys, ``mean``, ``sem``
            (standard error, NaN for fewer than 2 values), ``n``, ``n_missing`` and
            ``incoherent_rate`` (over rows that have an ``incoherent`` flag).
        """
        groups: dict[tuple[Any, ...], list[Row]] = {}
        for row in self.rows:
            groups.setdefault(tuple(row.get(k) for k in keys), []).append(row)
        out: list[Row] = []
        for key, rows in groups.items():
            if exclude_incoherent:
                rows = [r for r in rows if not r.get("incoherent")]
            values = [float(r[value]) for r in rows if not _is_missing(r.get(value))]
            flags = [bool(r["incoherent"]) for r in rows if r.get("incoherent") is not None]
            n = len(values)
            mean = float(np.mean(values)) if n else math.nan
            sem = float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
            out.append(
                {
                    **dict(zip(keys, key, strict=True)),
                    "mean": mean,
                    "sem": sem,
                    "n": n,
                    "n_missing": len(rows) - n,
                    "incoherent_rate": float(np.mean(flags)) if flags else math.nan,
                }
            )
        return out

    def to_jsonl(self, path: str | os.PathLike[str]) -> Path:
        """Write one JSON object per row (UTF-8, emoji kept as is)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("w", encoding="utf-8") as fh:
            for row in self.rows:
                fh.write(json.dumps(row, ensure_ascii=False, default=_json_default) + "\n")
        return target

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write a CSV with :attr:`columns` as header (lists/dicts JSON-encoded)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        cols = self.columns
        with target.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
            writer.writeheader()
            for row in self.rows:
                writer.writerow(
                    {
                        k: json.dumps(v, ensure_ascii=False)
                        if isinstance(v, list | dict | tuple)
                        else ("" if v is None else v)
                        for k, v in row.items()
                    }
                )
        return target

    @classmethod
    def read_jsonl(cls, path: str | os.PathLike[str]) -> ResultTable:
        """Rows of a JSONL file (e.g. :meth:`to_jsonl` output or a :func:`sweep` file).

        In a sweep file only the rows of completed conditions are returned (header and
        completion markers skipped); in any file a torn final line is skipped.
        """
        rows, header, _, _, pending = _read_sweep_file(Path(path))
        return cls(rows if header is not None else rows + pending)

    def to_pandas(self) -> Any:
        """A pandas DataFrame (needs pandas)."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=self.columns)


def _json_default(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | set):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# ----------------------------------------------------------------------------------------------
# OLS slope
# ----------------------------------------------------------------------------------------------


class Slope(NamedTuple):
    """OLS slope of a metric against α and its standard error (appendix D)."""

    slope: float
    se: float


def ols_slope(
    rows: Rows | ResultTable,
    *,
    x: str = "alpha",
    y: str = "score",
    exclude_incoherent: bool = False,
) -> Slope:
    """OLS slope (per unit of ``x``) of ``y`` on ``x`` with an intercept, pooled over rows.

    This is the layer-sweep statistic of appendix D: every (prompt, sample) response at every α
    is one point. SE = sqrt(RSS / (n − 2) / Σ(x − x̄)²), the classical homoskedastic standard
    error. Rows with a missing ``y`` (``None``/NaN) are dropped; booleans count as 0/1.

    Raises:
        DataError: fewer than 3 usable rows or fewer than 2 distinct ``x`` values.
    """
    xs: list[float] = []
    ys: list[float] = []
    for row in rows:
        if exclude_incoherent and row.get("incoherent"):
            continue
        xv: Any = row.get(x)
        yv: Any = row.get(y)
        if _is_missing(xv) or _is_missing(yv):
            continue
        xs.append(float(xv))
        ys.append(float(yv))
    if len(xs) < 3 or len(set(xs)) < 2:
        raise DataError(
            f"OLS slope needs at least 3 rows and 2 distinct {x!r} values; got {len(xs)} "
            f"rows with {len(set(xs))} distinct value(s).",
            hint="Pass the rows of several steering conditions (e.g. α = -4, 0, 4).",
        )
    xa, ya = np.asarray(xs), np.asarray(ys)
    dx = xa - xa.mean()
    sxx = float(dx @ dx)
    slope = float(dx @ (ya - ya.mean())) / sxx
    resid = ya - ya.mean() - slope * dx
    se = math.sqrt(float(resid @ resid) / (len(xs) - 2) / sxx)
    return Slope(slope, se)


def slopes_by(
    rows: Rows | ResultTable,
    by: Sequence[str] = ("vector", "layer"),
    *,
    x: str = "alpha",
    y: str = "score",
    exclude_incoherent: bool = False,
) -> list[Row]:
    """:func:`ols_slope` per group (Table 11 of the paper is one row per vector at ℓ*).

    Groups without enough data get NaN slope and SE.
    """
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in by), []).append(row)
    out: list[Row] = []
    for key, members in groups.items():
        try:
            slope, se = ols_slope(members, x=x, y=y, exclude_incoherent=exclude_incoherent)
        except DataError:
            slope, se = math.nan, math.nan
        out.append({**dict(zip(by, key, strict=True)), "slope": slope, "se": se, "n": len(members)})
    return out


# ----------------------------------------------------------------------------------------------
# Sweep file
# ----------------------------------------------------------------------------------------------

ConditionKey = tuple[str | None, str, int, float]


def _key(tag: str | None, vector: str, layer: int, alpha: float) -> ConditionKey:
    return (tag, str(vector), int(layer), float(alpha))


def _key_of(marker: Mapping[str, Any]) -> ConditionKey:
    return _key(marker.get("tag"), marker["vector"], marker["layer"], marker["alpha"])


def _read_sweep_file(
    path: Path,
) -> tuple[list[Row], dict[str, Any] | None, set[ConditionKey], bool, list[Row]]:
    """Complete rows, header, completed conditions, whether the file needs repairing, and the
    trailing rows of an unfinished condition."""
    if not path.exists():
        return [], None, set(), False, []
    header: dict[str, Any] | None = None
    done: set[ConditionKey] = set()
    complete: list[Row] = []
    pending: list[Row] = []
    dirty = False
    with path.open("r", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            if number >= len(lines) - 2:  # a torn final line from an interrupted write
                dirty = True
                continue
            raise DataError(
                f"{path}:{number + 1} is not valid JSON ({err}).",
                hint="The results file is corrupt in the middle; move it away or fix the line.",
            ) from err
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{number + 1} is not a JSON object.", hint="Fix the file.")
        if "_sweep" in obj:
            header = dict(obj["_sweep"])
        elif "_done" in obj:
            expected = int(obj.get("n_rows", len(pending)))
            if expected > len(pending):
                raise DataError(
                    f"{path}:{number + 1} closes a condition of {expected} rows, but only "
                    f"{len(pending)} precede it.",
                    hint="The results file was edited or is corrupt; move it away.",
                )
            if expected < len(pending):
                dirty = True  # rows of an earlier, unfinished attempt precede this condition
                pending = pending[len(pending) - expected :] if expected else []
            done.add(_key_of(obj["_done"]))
            complete.extend(pending)
            pending = []
        else:
            pending.append(obj)
    if pending:
        dirty = True  # rows of an unfinished condition
    return complete, header, done, dirty, pending


def _write_atomic(path: Path, header: Mapping[str, Any], body: list[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(json.dumps({"_sweep": dict(header)}, ensure_ascii=False) + "\n")
        fh.writelines(body)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _condition_block(rows: list[Row], key: ConditionKey) -> str:
    tag, vector, layer, alpha = key
    lines = [json.dumps(r, ensure_ascii=False, default=_json_default) for r in rows]
    marker = {"_done": {"tag": tag, "vector": vector, "layer": layer, "alpha": alpha}}
    lines.append(json.dumps({**marker, "n_rows": len(rows)}, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def _rewrite_complete(path: Path, header: Mapping[str, Any], rows: list[Row]) -> None:
    """Rewrite ``path`` with only completed conditions (grouped by their condition fields)."""
    groups: dict[ConditionKey, list[Row]] = {}
    for row in rows:
        key = _key(row.get("tag"), row["vector"], row["layer"], row["alpha"])
        groups.setdefault(key, []).append(row)
    _write_atomic(path, header, [_condition_block(r, k) for k, r in groups.items()])


# ----------------------------------------------------------------------------------------------
# Sweep
# ----------------------------------------------------------------------------------------------

SweepVectors = ConceptVectors | Tensor | Mapping[str, Tensor | ConceptVectors]


def _vector_sources(
    vectors: SweepVectors, names: Sequence[str] | None
) -> list[tuple[str, Tensor | ConceptVectors, str | None]]:
    """``(label, vector, name_in_concept_vectors)`` per vector to sweep."""
    if isinstance(vectors, ConceptVectors):
        chosen = list(names) if names is not None else list(vectors.names)
        return [(n, vectors, n) for n in chosen]
    if isinstance(vectors, Tensor):
        return [(names[0] if names else "vector", vectors, None)]
    out: list[tuple[str, Tensor | ConceptVectors, str | None]] = []
    for label, vec in vectors.items():
        if names is not None and label not in names:
            continue
        out.append((str(label), vec, label if isinstance(vec, ConceptVectors) else None))
    if not out:
        raise DataError("No vectors to sweep.", hint="Check `vectors` and `names`.")
    return out


def _as_rows(result: Any) -> list[Row]:
    if isinstance(result, ResultTable):
        return [dict(r) for r in result.rows]
    if isinstance(result, Mapping):
        return [dict(result)]
    try:
        rows = [dict(r) for r in result]
    except (TypeError, ValueError) as err:
        raise DataError(
            f"evaluate_fn returned {type(result).__name__}, not rows.",
            hint="Return a ResultTable or a list of dicts.",
        ) from err
    return rows


def _model_id(model: Any) -> str:
    try:
        from welfare_lens.models import model_info

        return str(model_info(model).model_id)
    except Exception:  # pragma: no cover - external models
        return str(getattr(getattr(model, "cfg", None), "model_name", "unknown"))


def sweep(
    model: Any,
    evaluate_fn: Callable[[Any], ResultTable | Sequence[Mapping[str, Any]]],
    vectors: SweepVectors,
    layers: int | Sequence[int],
    alphas: Sequence[float] = (-4, -2, 0, 2, 4),
    *,
    names: Sequence[str] | None = None,
    out_path: str | os.PathLike[str] | None = None,
    positions: PositionRule = "assistant",
    mode: SteeringMode = "add",
    norm_match_to: ConceptVectors | Mapping[str, Tensor] | None = None,
    tag: str | None = None,
    settings: Mapping[str, Any] | None = None,
    share_baseline: bool = True,
    progress: bool = True,
) -> ResultTable:
    """Run ``evaluate_fn(model)`` under every (vector, layer, α) condition; resumable.

    Each condition steers with :func:`~welfare_lens.steering.steer.steer_many` around the call,
    and the returned rows get ``alpha`` (nominal), ``layer``, ``vector``, ``beta`` (the
    coefficient actually applied), ``mode`` and ``tag`` written into them. The evaluation should
    use fixed seeds so that conditions differ only by the steering (as
    :func:`welfare_lens.steering.sentiment.evaluate_sentiment` does).

    Args:
        model: The model to steer (the paper steers the maze-naive model, A6).
        evaluate_fn: ``model -> ResultTable | list[dict]``.
        vectors: ConceptVectors (one condition set per name, or per ``names``), a tensor
            (``[d]`` or ``[n_layers, d]``), or ``{label: tensor | ConceptVectors}``.
        layers: Layer(s) to steer at (the layer sweep of appendix D uses every layer).
        alphas: Coefficients (nominal α). The paper: (−4, −2, 0, 2, 4).
        names: Which vectors of ``vectors`` to sweep (default all).
        out_path: JSONL file; existing complete conditions are skipped (resume).
        positions: Position rule for :func:`steer` (default the paper's ``"assistant"``).
        mode: ``"add"`` or ``"ablate"``.
        norm_match_to: Reference vectors for control runs: each condition uses
            β = α‖v_ref‖/‖u‖ at that layer (ConceptVectors with the same names, or
            ``{label: [n_layers, d]}``), and rows are reported at the nominal α (M.1).
        tag: Label of this evaluation, part of each condition's identity in the file (use a
            different tag for a different evaluation appended to the same file).
        settings: What the evaluation's rows depend on besides the steering (prompt counts,
            samples, generation length, seeds...), JSON values. Recorded in the file's header;
            resuming a file written with other settings is an error instead of a silent reuse
            of rows that answer another question.
        share_baseline: Evaluate α = 0 (no steering) once and reuse its rows for every
            (vector, layer) instead of re-running the identical condition.
        progress: Show a tqdm bar.

    Returns:
        Every row of the completed conditions (including those read from ``out_path``).

    Raises:
        DataError: ``out_path`` was written for another model or other ``settings``, or is
            corrupt.
    """
    total = int(model.cfg.n_layers)
    layer_list = [layers] if isinstance(layers, int) else list(layers)
    layer_list = [int(layer) % total if int(layer) < 0 else int(layer) for layer in layer_list]
    sources = _vector_sources(vectors, names)
    header: dict[str, Any] = {"version": _FORMAT_VERSION, "model_id": _model_id(model), "tag": tag}
    if settings is not None:
        header["settings"] = json.loads(json.dumps(dict(settings)))  # as it reads back
    path = Path(out_path) if out_path is not None else None
    rows: list[Row] = []
    done: set[ConditionKey] = set()
    if path is not None:
        rows, old_header, done, dirty, _ = _read_sweep_file(path)
        if old_header is not None and old_header.get("model_id") != header["model_id"]:
            raise DataError(
                f"{path} holds a sweep of model {old_header.get('model_id')!r}, not "
                f"{header['model_id']!r}.",
                hint="Use another out_path, or the model the file was written for.",
            )
        if old_header is not None and old_header.get("settings") != header.get("settings"):
            before, now = old_header.get("settings") or {}, header.get("settings") or {}
            changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            what = ", ".join(changed) or "none recorded"
            raise DataError(
                f"{path} holds a sweep run with other settings ({what}): its rows answer "
                "another question.",
                hint="Use another out_path, or move the old file away to rerun.",
            )
        if old_header is None or dirty:
            path.parent.mkdir(parents=True, exist_ok=True)
            _rewrite_complete(path, old_header or header, rows)

    conditions = [
        (label, vec, name, layer, float(alpha))
        for label, vec, name in sources
        for layer in layer_list
        for alpha in alphas
    ]
    todo = [c for c in conditions if _key(tag, c[0], c[3], c[4]) not in done]
    baseline: list[Row] | None = None
    if share_baseline:
        for row in rows:
            same_run = row.get("tag") == tag and row.get("mode", "add") == "add"
            if same_run and float(row.get("alpha", math.nan)) == 0.0:
                key = _key(tag, row["vector"], row["layer"], 0.0)
                if key in done:
                    baseline = [
                        r
                        for r in rows
                        if _key(r.get("tag"), r["vector"], r["layer"], r["alpha"]) == key
                    ]
                    break

    bar: Any = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"sweep {tag or ''}".strip(), leave=False)
    try:
        for label, vec, name, layer, alpha in todo:
            if bar is not None:
                bar.set_postfix_str(f"{label} L{layer} α={alpha:+g}")
            beta = alpha
            if norm_match_to is not None and alpha != 0.0:
                if isinstance(norm_match_to, ConceptVectors):
                    ref: Tensor | ConceptVectors = norm_match_to
                    ref_name: str | None = label
                else:
                    ref, ref_name = norm_match_to[label], None
                u = resolve_vector(vec, layer, name, total=total)
                v = resolve_vector(ref, layer, ref_name, total=total)
                beta = norm_matched_alpha(alpha, v, u)
            if alpha == 0.0 and mode == "add" and share_baseline and baseline is not None:
                result_rows = [dict(r) for r in baseline]
            else:
                spec = SteeringSpec(
                    vector=vec,
                    layer=layer,
                    alpha=beta,
                    name=name,
                    positions=positions,
                    mode=mode,
                    label=label,
                    nominal_alpha=alpha,
                )
                specs = [] if (alpha == 0.0 and mode == "add") else [spec]
                with steer_many(model, specs):
                    result_rows = _as_rows(evaluate_fn(model))
            for row in result_rows:
                row.update(alpha=alpha, layer=layer, vector=label, beta=beta, mode=mode, tag=tag)
            if alpha == 0.0 and mode == "add" and share_baseline and baseline is None:
                baseline = [dict(r) for r in result_rows]
            key = _key(tag, label, layer, alpha)
            if path is not None:
                with path.open("a", encoding="utf-8") as fh:
                    fh.write(_condition_block(result_rows, key))
                    fh.flush()
                    os.fsync(fh.fileno())
            rows.extend(result_rows)
            done.add(key)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    wanted = {_key(tag, c[0], c[3], c[4]) for c in conditions}
    return ResultTable(
        [r for r in rows if _key(r.get("tag"), r["vector"], r["layer"], r["alpha"]) in wanted]
    )
