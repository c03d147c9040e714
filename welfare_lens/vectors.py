"""Concept vectors: streaming class statistics, difference of means, controls, save/load.

Paper section A4 (index §2.3, Appendix L, C.8): per-layer reward vectors are one-vs-rest
differences of class means (Eq. 1),

    v_Mold = mean_{T_Mold} a − mean_{T_Gold ∪ T_Path} a,    v_Gold = mean_{T_Gold} a − mean_{T_Mold ∪ T_Path} a,

or, in the Path-reference variant of Appendix C.8 (Eq. 3), ṽ_c = mean_{T_c} a − mean_{T_Path} a.
The subtrahend of Eq. 1 is the sample mean of the union (count-weighted), not the mean of the
other class means. Vectors are *not* normalised (A4); steering multiplies the raw vector. Control
vectors u come from the same pipeline run on the maze-naive model (:func:`control_vectors`).

The paper uses 5,000 trajectories per class at every layer, so :class:`ClassStatistics` keeps only
running sums (float64, CPU): memory does not grow with the number of samples, and partial
statistics can be saved, resumed and merged. Only an optional held-out fraction (for the
steering-layer selection of Appendix L) is kept sample by sample. Files are safetensors plus a
JSON sidecar carrying the provenance and a SHA-256 of the tensor file; never pickle.

Typical use (``capture`` feeds ``update`` batch by batch)::

    stats = ClassStatistics.for_model(model, holdout=0.2)
    for labels, acts in batches:                      # acts: [batch, n_layers, d_model]
        stats.update(labels, acts, groups=maze_ids)
    v = welfare_vectors(stats)                        # v.mold, v.gold: [n_layers, d_model]
    v.save("runs/smollm2/vectors")
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import numpy as np
import torch
from jaxtyping import Float, Int
from safetensors.torch import load_file, save_file
from torch import Tensor

from welfare_lens.errors import DataError, LayerError, ShapeError, VectorError

__all__ = [
    "DEFAULT_CLASSES",
    "ClassStatistics",
    "ConceptVectors",
    "HeldOut",
    "Method",
    "VectorMetadata",
    "control_vectors",
    "diff_of_means",
    "norm_match",
    "norm_matched_scale",
    "vectors_from_sums",
    "welfare_vectors",
]

DEFAULT_CLASSES: tuple[str, ...] = ("mold", "gold", "path")
SecondMoments = Literal["none", "diag", "full"]
Method = Literal["one_vs_rest", "path_reference"]
_METHODS: tuple[str, ...] = ("one_vs_rest", "path_reference")
_FORMAT_VERSION = 1
_COORDINATE_MODES = ("raw", "compat")
_BUCKET_SALT = 0x5EED_B0C7
_HOLDOUT_SALT = 0x4E1D_0C7


# ----------------------------------------------------------------------------------------------
# File helpers
# ----------------------------------------------------------------------------------------------


def _file_pair(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Return ``(base.safetensors, base.json)`` for a path given with or without an extension."""
    p = Path(path)
    # Only strip our own suffixes: "run.v1" must stay "run.v1", not become "run".
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def _atomic_write(target: Path, write: Callable[[Path], object]) -> None:
    """Write via a temporary file and rename, so a crash never leaves a half-written file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            with contextlib.suppress(OSError):
                tmp.unlink()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _save_pair(
    path: str | os.PathLike[str], tensors: dict[str, Tensor], meta: dict[str, Any]
) -> Path:
    st_path, json_path = _file_pair(path)
    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    digest: dict[str, str] = {}

    def write_tensors(tmp: Path) -> None:
        save_file(clean, str(tmp))
        digest["sha256"] = _sha256(tmp)

    # Serialise first so that bad metadata fails before anything is written.
    try:
        json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"Metadata for {st_path.with_suffix('')} is not JSON-serialisable: {exc}",
            hint="Keep `info`/`extra` to str, int, float, bool, list and dict values (no NaN).",
        ) from exc
    _atomic_write(st_path, write_tensors)
    text = json.dumps({**meta, "sha256": digest["sha256"]}, indent=2, sort_keys=True)
    _atomic_write(json_path, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))
    return st_path.with_suffix("")


def _load_pair(path: str | os.PathLike[str], kind: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    st_path, json_path = _file_pair(path)
    missing = [str(p) for p in (st_path, json_path) if not p.is_file()]
    if missing:
        raise DataError(
            f"Cannot load {kind}: missing file(s) {missing}.",
            hint=f"A saved {kind} is a pair '<name>.safetensors' + '<name>.json'; pass '<name>'.",
        )
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(
            f"{json_path} is not valid JSON ({exc}); the file is truncated or corrupt.",
            hint=f"Re-save the {kind}, or restore the file from a backup.",
        ) from exc
    if not isinstance(meta, dict) or meta.get("format") != f"welfare_lens.{kind}":
        raise DataError(
            f"{json_path} does not describe a welfare_lens {kind}.",
            hint=f"Pass the path of a file written by {kind}.save().",
        )
    if meta.get("version") != _FORMAT_VERSION:
        raise DataError(
            f"{json_path} has format version {meta.get('version')!r}; this welfare_lens reads "
            f"version {_FORMAT_VERSION}.",
            hint="Re-save it with this version of welfare_lens.",
        )
    expected = meta.get("sha256")
    if isinstance(expected, str) and _sha256(st_path) != expected:
        raise DataError(
            f"{st_path} does not match the SHA-256 recorded in {json_path.name}: the tensor file "
            "is corrupt, or the two files do not belong together.",
            hint=f"Re-save the {kind}, or restore both files from the same save.",
        )
    try:
        tensors = load_file(str(st_path))
    except Exception as exc:  # safetensors raises its own error types for truncation/garbage
        raise DataError(
            f"{st_path} could not be read as safetensors ({exc}); it is truncated or corrupt.",
            hint=f"Re-save the {kind}, or restore the file from a backup.",
        ) from exc
    return tensors, meta


# ----------------------------------------------------------------------------------------------
# Group hashing (bootstrap buckets and held-out split)
# ----------------------------------------------------------------------------------------------


def _mix64(groups: Tensor, salt: int) -> np.ndarray[Any, np.dtype[np.uint64]]:
    """SplitMix64 finaliser of ``group + salt``: a well-spread 64-bit hash per group id.

    Hashing (rather than ``group % n``) keeps buckets and the held-out split independent of
    any structure in the ids (e.g. seeds that step by the number of classes).
    """
    z = groups.numpy().astype(np.int64).view(np.uint64) + np.uint64(salt)
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _as_groups(groups: int | Sequence[int] | Tensor, batch: int) -> Tensor:
    if isinstance(groups, bool):
        raise DataError("groups must be integer ids, got a bool.", hint="Pass maze ids.")
    if isinstance(groups, int):
        return torch.full((batch,), groups, dtype=torch.int64)
    if isinstance(groups, Tensor):
        g = groups.detach().cpu()
        if g.is_floating_point() or g.dtype == torch.bool:
            raise DataError(
                f"groups must be integer ids, got a {g.dtype} tensor.",
                hint="Pass one integer group (maze) id per sample.",
            )
        g = g.to(torch.int64).flatten()
    else:
        try:
            g = torch.as_tensor([int(x) for x in groups], dtype=torch.int64)
        except (TypeError, ValueError) as exc:
            raise DataError(
                f"groups must be integer ids ({exc}).",
                hint="Pass one integer group (maze) id per sample.",
            ) from exc
    if g.numel() != batch:
        raise ShapeError(
            f"Got {g.numel()} group ids for a batch of {batch} activations.",
            hint="Pass one group (maze) id per sample, a single int for all, or groups=None.",
        )
    return g


# ----------------------------------------------------------------------------------------------
# Metadata
# ----------------------------------------------------------------------------------------------


@dataclass
class VectorMetadata:
    """Provenance of a set of concept vectors or class statistics (DESIGN "Coordinates"; A4).

    Attributes:
        model_id: Model (checkpoint) the activations came from.
        d_model: Residual width.
        n_layers: Number of layers; vectors are ``[n_layers, d_model]``.
        hook: Hook point per layer, ``blocks.{ℓ}.hook_<hook>``; the paper uses block outputs
            (``resid_post``, B-10).
        coordinate_mode: ``"raw"`` bridge coordinates or ``"compat"`` (compatibility mode).
        position_rule: Which token was captured (paper: the last direction letter, A4).
        method: ``"one_vs_rest"`` (Eq. 1), ``"path_reference"`` (Eq. 3) or another recipe.
        design: Stimulus design, e.g. ``"paper"`` or ``"minimal_pairs"``.
        role: ``"trained"`` (v, from the trained checkpoint) or ``"control"`` (u, maze-naive).
        class_counts: Samples per class used for the means.
        seed: Seed of the stimulus generator (paper: 474747), if any.
        extra: Any further JSON-serialisable provenance.
    """

    model_id: str
    d_model: int
    n_layers: int
    hook: str = "resid_post"
    coordinate_mode: str = "raw"
    position_rule: str = "last_action"
    method: str = "one_vs_rest"
    design: str = "paper"
    role: str = "trained"
    class_counts: dict[str, int] = field(default_factory=dict)
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.coordinate_mode not in _COORDINATE_MODES:
            raise VectorError(
                f"coordinate_mode must be one of {_COORDINATE_MODES}, got {self.coordinate_mode!r}.",
                hint="Use 'raw' for the plain TransformerBridge, 'compat' for compatibility mode.",
            )
        if int(self.d_model) < 1 or int(self.n_layers) < 1:
            raise ShapeError(
                f"d_model and n_layers must be positive, got {self.d_model}, {self.n_layers}.",
                hint="Pass model.cfg.d_model and model.cfg.n_layers.",
            )
        self.d_model, self.n_layers = int(self.d_model), int(self.n_layers)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dictionary."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VectorMetadata:
        """Inverse of :meth:`to_dict`; unknown keys (from newer versions) are ignored.

        Raises:
            DataError: A required field is missing or has the wrong type.
        """
        names = {f.name for f in fields(cls)}
        missing = [k for k in ("model_id", "d_model", "n_layers") if k not in data]
        if missing:
            raise DataError(
                f"Vector metadata lacks required field(s) {missing}.",
                hint="The JSON sidecar is damaged or not from ConceptVectors.save().",
            )
        kwargs = {k: v for k, v in data.items() if k in names}
        try:
            kwargs["class_counts"] = {
                str(k): int(v) for k, v in dict(kwargs.get("class_counts") or {}).items()
            }
            kwargs["extra"] = dict(kwargs.get("extra") or {})
            kwargs["d_model"], kwargs["n_layers"] = int(data["d_model"]), int(data["n_layers"])
        except (TypeError, ValueError) as exc:
            raise DataError(
                f"Vector metadata has a field of the wrong type ({exc}).",
                hint="The JSON sidecar is damaged; re-save the vectors.",
            ) from exc
        return cls(**kwargs)


@dataclass(frozen=True)
class _Target:
    model_id: str | None
    d_model: int
    n_layers: int
    coordinate_mode: str | None
    hook: str | None = None
    position_rule: str | None = None


def _describe_target(target: object) -> _Target:
    """Duck-typed description of a bridge, ConceptVectors, ClassStatistics or VectorMetadata."""
    if isinstance(target, ConceptVectors | ClassStatistics):
        target = target.metadata
    if isinstance(target, VectorMetadata):
        return _Target(
            target.model_id,
            target.d_model,
            target.n_layers,
            target.coordinate_mode,
            target.hook,
            target.position_rule,
        )
    cfg = getattr(target, "cfg", None)
    d_model, n_layers = getattr(cfg, "d_model", None), getattr(cfg, "n_layers", None)
    if not isinstance(d_model, int) or not isinstance(n_layers, int):
        raise VectorError(
            f"Cannot tell the d_model/n_layers of {type(target).__name__}.",
            hint="Pass a TransformerBridge (with .cfg.d_model and .cfg.n_layers), "
            "ConceptVectors, ClassStatistics or VectorMetadata.",
        )
    info = getattr(target, "welfare_lens_info", None)
    model_id = getattr(info, "model_id", None) or getattr(info, "name", None)
    if model_id is None:
        model_id = getattr(cfg, "model_name", None)
    compat = getattr(target, "compatibility_mode", None)
    if isinstance(compat, bool):  # the bridge's own flag is authoritative
        mode: str | None = "compat" if compat else "raw"
    else:
        mode = getattr(info, "coordinate_mode", None)
    return _Target(None if model_id is None else str(model_id), d_model, n_layers, mode)


# ----------------------------------------------------------------------------------------------
# Held-out samples
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class HeldOut:
    """Per-sample activations kept out of the class sums (Appendix L held-out samples).

    Attributes:
        acts: Activations at every layer.
        labels: Class name per sample.
        groups: Group (maze) id per sample.
    """

    acts: Float[Tensor, "n n_layers d_model"]
    labels: tuple[str, ...]
    groups: Int[Tensor, " n"]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def counts(self) -> dict[str, int]:
        """Number of held-out samples per class."""
        out: dict[str, int] = {}
        for lab in self.labels:
            out[lab] = out.get(lab, 0) + 1
        return out

    def mask(self, classes: str | Sequence[str]) -> Tensor:
        """Boolean ``[n]`` mask of the samples whose label is in ``classes``."""
        wanted = {classes} if isinstance(classes, str) else set(classes)
        return torch.tensor([lab in wanted for lab in self.labels], dtype=torch.bool)


# ----------------------------------------------------------------------------------------------
# Streaming class statistics
# ----------------------------------------------------------------------------------------------


class _ShapedByMetadata:
    """``n_layers`` and ``d_model`` read from ``self.metadata``."""

    metadata: VectorMetadata

    @property
    def n_layers(self) -> int:
        """Number of layers."""
        return self.metadata.n_layers

    @property
    def d_model(self) -> int:
        """Residual width."""
        return self.metadata.d_model


class ClassStatistics(_ShapedByMetadata):
    """Streaming per-class activation statistics at every layer (inputs of Eq. 1 and Eq. 3, A4).

    Accumulates, in float64 on CPU, per class: the sample count, the per-layer sum, the centred
    second moment (diagonal or full; combined with Chan et al.'s parallel update, which stays
    accurate when the residual stream has a large mean), and per-bucket sums and counts. The
    bucket of a sample is a hash of its group id modulo ``n_buckets``; the group is the
    trajectory/maze the sample came from, so resampling buckets is a cluster bootstrap over
    trajectories, and even/odd buckets are split halves that never share a maze. Memory is
    ``8·(2 + n_buckets)·C·L·d`` bytes (plus ``8·C·L·d²`` with ``second_moments="full"``),
    independent of the number of samples.

    With ``holdout > 0``, a fraction of the *groups* (chosen by a seeded hash, so a maze is never
    split between the two sets) is not added to the sums but kept sample by sample in
    :attr:`heldout`, for the steering-layer selection of Appendix L. Only this part grows with
    the number of samples (``holdout · n · L · d`` values of ``sample_dtype``).

    Args:
        n_layers: Number of layers (block outputs) per sample.
        d_model: Residual width.
        classes: Class names (paper: the tile class of the final move).
        model_id: Checkpoint the activations come from (recorded in the vectors).
        hook: Hook kind per layer (paper: ``resid_post``, the block output).
        coordinate_mode: ``"raw"`` or ``"compat"``.
        position_rule: Which token position was captured (paper: ``last_action``).
        design: Stimulus design label (``"paper"``, ``"minimal_pairs"``, ...).
        seed: Stimulus seed (paper: 474747).
        info: Further JSON-serialisable provenance, saved in ``metadata.extra``.
        n_buckets: Number of group buckets kept for the bootstrap and split halves.
        second_moments: ``"none"``, ``"diag"`` (per-feature variance) or ``"full"``
            (``[L, d, d]`` covariance per class).
        holdout: Fraction of groups kept out of the sums as held-out samples, in [0, 1).
        holdout_seed: Seed of the held-out split.
        sample_dtype: Dtype of stored held-out activations (float32; bfloat16 halves memory).

    Example:
        >>> stats = ClassStatistics(n_layers=2, d_model=4)
        >>> stats.update(["mold", "gold", "path"], torch.randn(3, 2, 4), groups=[0, 1, 2])
        >>> stats.update("gold", torch.randn(5, 2, 4))
        >>> stats.counts
        {'mold': 1, 'gold': 6, 'path': 1}
    """

    def __init__(
        self,
        n_layers: int,
        d_model: int,
        classes: Sequence[str] = DEFAULT_CLASSES,
        *,
        model_id: str = "unknown",
        hook: str = "resid_post",
        coordinate_mode: str = "raw",
        position_rule: str = "last_action",
        design: str = "paper",
        seed: int | None = None,
        info: Mapping[str, Any] | None = None,
        n_buckets: int = 64,
        second_moments: SecondMoments = "diag",
        holdout: float = 0.0,
        holdout_seed: int = 0,
        sample_dtype: torch.dtype = torch.float32,
    ) -> None:
        if isinstance(classes, str):
            raise DataError(
                f"classes must be a sequence of names, got the string {classes!r}.",
                hint='Use e.g. classes=("mold", "gold", "path").',
            )
        classes = tuple(str(c) for c in classes)
        if not classes:
            raise DataError(
                "No classes: the class list is empty (from capture(), this means the "
                "trajectory set was empty).",
                hint='Pass at least one trajectory per class, or classes=("mold", "gold", "path").',
            )
        if len(set(classes)) != len(classes):
            raise DataError(
                f"classes must be non-empty and unique, got {classes}.",
                hint='Use e.g. classes=("mold", "gold", "path").',
            )
        if n_buckets < 2:
            raise DataError(
                f"n_buckets must be >= 2, got {n_buckets}.",
                hint="Use e.g. 64 (the bootstrap and split halves resample buckets).",
            )
        if second_moments not in ("none", "diag", "full"):
            raise DataError(
                f"second_moments must be 'none', 'diag' or 'full', got {second_moments!r}.",
                hint="Use 'diag' unless you need full covariances.",
            )
        if not 0.0 <= float(holdout) < 1.0:
            raise DataError(
                f"holdout must be in [0, 1), got {holdout}.",
                hint="Use e.g. 0.2 to keep 20% of the groups for layer selection.",
            )
        # VectorMetadata validates n_layers, d_model and coordinate_mode.
        self.metadata = VectorMetadata(
            model_id=str(model_id),
            d_model=d_model,
            n_layers=n_layers,
            hook=hook,
            coordinate_mode=coordinate_mode,
            position_rule=position_rule,
            design=design,
            seed=seed,
            extra=dict(info or {}),
        )
        self.classes: tuple[str, ...] = classes
        self.n_buckets = int(n_buckets)
        self.second_moments: SecondMoments = second_moments
        self.holdout = float(holdout)
        self.holdout_seed = int(holdout_seed)
        self.sample_dtype = sample_dtype
        self._index = {c: i for i, c in enumerate(classes)}
        n_c, L, d = len(classes), self.n_layers, self.d_model
        f64 = torch.float64
        self.count: Int[Tensor, " cls"] = torch.zeros(n_c, dtype=torch.int64)
        self.sum: Float[Tensor, "cls n_layers d_model"] = torch.zeros(n_c, L, d, dtype=f64)
        self.m2: Tensor | None
        if second_moments == "diag":
            self.m2 = torch.zeros(n_c, L, d, dtype=f64)
        elif second_moments == "full":
            self.m2 = torch.zeros(n_c, L, d, d, dtype=f64)
        else:
            self.m2 = None
        self.bucket_sum: Float[Tensor, "bucket cls n_layers d_model"] = torch.zeros(
            self.n_buckets, n_c, L, d, dtype=f64
        )
        self.bucket_count: Int[Tensor, "bucket cls"] = torch.zeros(
            self.n_buckets, n_c, dtype=torch.int64
        )
        self._ho_acts: list[Tensor] = []
        self._ho_cls: list[Tensor] = []
        self._ho_groups: list[Tensor] = []
        #: Further per-extraction tensors saved with the statistics (e.g. the composition
        #: regression of :mod:`welfare_lens.analysis.composition`); not merged.
        self.extra: dict[str, Tensor] = {}
        self.n_seen = 0
        self.n_batches = 0

    @classmethod
    def for_model(
        cls, model: object, classes: Sequence[str] = DEFAULT_CLASSES, **kwargs: Any
    ) -> ClassStatistics:
        """Statistics shaped for ``model`` (a TransformerBridge), with its id and coordinate mode.

        Reads ``model.cfg.n_layers``, ``model.cfg.d_model``, the model id from
        ``model.welfare_lens_info`` (or ``cfg.model_name``) and the coordinate mode from
        ``model.compatibility_mode``. Further keyword arguments go to the constructor.
        """
        t = _describe_target(model)
        kwargs.setdefault("model_id", t.model_id or "unknown")
        kwargs.setdefault("coordinate_mode", t.coordinate_mode or "raw")
        return cls(t.n_layers, t.d_model, classes, **kwargs)

    @property
    def info(self) -> dict[str, Any]:
        """Free-form provenance (``metadata.extra``)."""
        return self.metadata.extra

    # -- accumulation ------------------------------------------------------------------------

    def _class_indices(self, labels: str | Sequence[str], batch: int) -> Tensor:
        if isinstance(labels, str):
            labels = [labels] * batch
        if len(labels) != batch:
            raise ShapeError(
                f"Got {len(labels)} labels for a batch of {batch} activations.",
                hint="Pass exactly one label per sample (first axis of acts), or a single str.",
            )
        unknown = sorted({str(lab) for lab in labels if lab not in self._index})
        if unknown:
            raise DataError(
                f"Unknown label(s) {unknown}; known classes are {list(self.classes)}.",
                hint="Fix the labels, or create ClassStatistics(classes=...) with these classes.",
            )
        return torch.tensor([self._index[lab] for lab in labels], dtype=torch.long)

    def update(
        self,
        labels: str | Sequence[str],
        acts: Float[Tensor, "batch n_layers d_model"],
        groups: int | Sequence[int] | Tensor | None = None,
    ) -> None:
        """Add a batch of activations (one token position per sample, every layer).

        Nothing is added if the batch is rejected.

        Args:
            labels: One class name per sample, or one name for the whole batch.
            acts: ``[batch, n_layers, d_model]`` activations (any float dtype or device), or
                ``[n_layers, d_model]`` for a single sample.
            groups: Group (trajectory/maze) id per sample, or one id for the whole batch; it
                decides the bootstrap bucket and the held-out split. ``None`` uses a running
                sample index, i.e. treats every sample as its own group.

        Raises:
            ShapeError: ``acts`` is not ``[batch, n_layers, d_model]``, or labels/groups have
                the wrong length.
            DataError: Unknown label, or NaN/Inf in ``acts`` (the layers are named).
        """
        want = (self.n_layers, self.d_model)
        if isinstance(acts, Tensor) and acts.ndim == 2 and tuple(acts.shape) == want:
            acts = acts[None]
        if not isinstance(acts, Tensor) or acts.ndim != 3 or tuple(acts.shape[1:]) != want:
            shape = tuple(acts.shape) if isinstance(acts, Tensor) else type(acts).__name__
            raise ShapeError(
                f"acts must have shape [batch, {self.n_layers}, {self.d_model}], got {shape}.",
                hint="Stack the per-layer activations of one token position: [batch, layer, d_model].",
            )
        if not acts.is_floating_point():
            raise DataError(
                f"acts must be floating point, got {acts.dtype}.", hint="Pass activations."
            )
        batch = acts.shape[0]
        if batch == 0:
            return
        cls_idx = self._class_indices(labels, batch)
        if groups is None:
            group_t = torch.arange(self.n_seen, self.n_seen + batch, dtype=torch.int64)
        else:
            group_t = _as_groups(groups, batch)
        x = acts.detach().to(device="cpu", dtype=torch.float64)
        # NaN/Inf in any sample propagates into the float64 batch sum (finite float32 values
        # cannot overflow it), so one reduction checks the whole batch.
        finite = torch.isfinite(x.sum(0))
        if not bool(finite.all()):
            bad_layers = (~finite).any(dim=-1).nonzero().flatten().tolist()
            raise DataError(
                f"Batch {self.n_batches} (samples {self.n_seen}..{self.n_seen + batch - 1}) "
                f"contains NaN/Inf activations at layer(s) {bad_layers}; nothing was added.",
                hint="Check the model dtype (fp16 overflow) and the captured position.",
            )
        train = torch.ones(batch, dtype=torch.bool)
        if self.holdout > 0:
            u = (_mix64(group_t, _HOLDOUT_SALT + self.holdout_seed) >> np.uint64(11)).astype(
                np.float64
            ) / float(2**53)
            train = torch.from_numpy(u >= self.holdout)
            held = ~train
            if bool(held.any()):
                self._ho_acts.append(x[held].to(self.sample_dtype))
                self._ho_cls.append(cls_idx[held])
                self._ho_groups.append(group_t[held])
        if bool(train.any()):
            bucket = torch.from_numpy(
                (_mix64(group_t[train], _BUCKET_SALT) % np.uint64(self.n_buckets)).astype(np.int64)
            )
            self._accumulate(x[train], cls_idx[train], bucket)
        self.n_seen += batch
        self.n_batches += 1

    def _accumulate(self, x: Tensor, cls_idx: Tensor, bucket: Tensor) -> None:
        n_c = len(self.classes)
        n_b = torch.bincount(cls_idx, minlength=n_c)
        s_b = torch.zeros_like(self.sum).index_add_(0, cls_idx, x)
        if self.m2 is not None:
            mean_b = s_b / n_b.clamp(min=1).to(x.dtype)[:, None, None]
            centred = x - mean_b[cls_idx]
            if self.second_moments == "diag":
                m2_b = torch.zeros_like(self.m2).index_add_(0, cls_idx, centred * centred)
            else:
                m2_b = torch.zeros_like(self.m2)
                for c in n_b.nonzero().flatten().tolist():
                    xc = centred[cls_idx == c]
                    m2_b[c] = torch.einsum("nld,nle->lde", xc, xc)
            self.m2 = _chan_m2(self.count, self.sum, self.m2, n_b, s_b, m2_b, self.second_moments)
        self.count += n_b
        self.sum += s_b
        flat = bucket * n_c + cls_idx
        self.bucket_sum.view(-1, self.n_layers, self.d_model).index_add_(0, flat, x)
        self.bucket_count.view(-1).index_add_(0, flat, torch.ones_like(flat))

    def _settings(self) -> tuple[Any, ...]:
        return (
            self.classes,
            self.n_buckets,
            self.second_moments,
            self.holdout,
            self.holdout_seed,
        )

    def merge(self, other: ClassStatistics) -> ClassStatistics:
        """Return the statistics of both sample sets (neither input is modified).

        Raises:
            ShapeError: Different ``n_layers`` or ``d_model``.
            VectorError: Different model, hook, coordinate mode or position rule.
            DataError: Different classes, buckets, moment or held-out settings.
        """
        _check_provenance(self.metadata, other.metadata, "merge statistics", check_model=True)
        if self._settings() != other._settings():
            raise DataError(
                "Cannot merge statistics with (classes, n_buckets, second_moments, holdout, "
                f"holdout_seed)={self._settings()} and {other._settings()}.",
                hint="Create both with the same ClassStatistics(...) arguments.",
            )
        m = self.metadata
        out = ClassStatistics(
            m.n_layers,
            m.d_model,
            self.classes,
            model_id=m.model_id,
            hook=m.hook,
            coordinate_mode=m.coordinate_mode,
            position_rule=m.position_rule,
            design=m.design,
            seed=m.seed,
            info={**other.info, **self.info},
            n_buckets=self.n_buckets,
            second_moments=self.second_moments,
            holdout=self.holdout,
            holdout_seed=self.holdout_seed,
            sample_dtype=self.sample_dtype,
        )
        if self.m2 is not None and other.m2 is not None:
            out.m2 = _chan_m2(
                self.count, self.sum, self.m2, other.count, other.sum, other.m2, self.second_moments
            )
        out.count = self.count + other.count
        out.sum = self.sum + other.sum
        out.bucket_sum = self.bucket_sum + other.bucket_sum
        out.bucket_count = self.bucket_count + other.bucket_count
        out._ho_acts = [*self._ho_acts, *(a.to(self.sample_dtype) for a in other._ho_acts)]
        out._ho_cls = [*self._ho_cls, *other._ho_cls]
        out._ho_groups = [*self._ho_groups, *other._ho_groups]
        out.n_seen = self.n_seen + other.n_seen
        out.n_batches = self.n_batches + other.n_batches
        return out

    # -- read-out ---------------------------------------------------------------------------

    @property
    def counts(self) -> dict[str, int]:
        """Number of samples per class in the sums (held-out samples excluded)."""
        return {c: int(n) for c, n in zip(self.classes, self.count.tolist(), strict=True)}

    @property
    def heldout(self) -> HeldOut:
        """The held-out samples (empty unless ``holdout > 0``), in arrival order."""
        if len(self._ho_acts) > 1:  # consolidate once, so repeated reads do not copy again
            self._ho_acts = [torch.cat(self._ho_acts)]
            self._ho_cls = [torch.cat(self._ho_cls)]
            self._ho_groups = [torch.cat(self._ho_groups)]
        if not self._ho_acts:
            empty = torch.zeros(0, self.n_layers, self.d_model, dtype=self.sample_dtype)
            return HeldOut(empty, (), torch.zeros(0, dtype=torch.int64))
        labels = tuple(self.classes[i] for i in self._ho_cls[0].tolist())
        return HeldOut(self._ho_acts[0], labels, self._ho_groups[0])

    def _require(self, cls: str) -> int:
        if cls not in self._index:
            raise DataError(
                f"Unknown class {cls!r}; known classes are {list(self.classes)}.",
                hint="Use one of the class names given to ClassStatistics(classes=...).",
            )
        i = self._index[cls]
        if int(self.count[i]) == 0:
            raise DataError(
                f"Class {cls!r} has no samples (counts: {self.counts}).",
                hint=f"Extract trajectories that end on {cls!r} before computing its statistics.",
            )
        return i

    def mean(self, cls: str) -> Float[Tensor, "n_layers d_model"]:
        """Per-layer mean activation of class ``cls`` (float64)."""
        i = self._require(cls)
        return self.sum[i] / float(self.count[i])

    def mean_of(self, classes: Sequence[str]) -> Float[Tensor, "n_layers d_model"]:
        """Count-weighted mean over the union of ``classes`` (the Eq. 1 subtrahend), float64."""
        if isinstance(classes, str) or not classes:
            raise DataError(
                f"classes must be a non-empty list of names, got {classes!r}.",
                hint='Use e.g. ["gold", "path"].',
            )
        unknown = [c for c in classes if c not in self._index]
        if unknown:
            raise DataError(
                f"Unknown class(es) {unknown}; known are {list(self.classes)}.",
                hint="Use the class names given to ClassStatistics(classes=...).",
            )
        idx = [self._index[c] for c in dict.fromkeys(classes)]
        n = int(self.count[idx].sum())
        if n == 0:
            raise DataError(
                f"Classes {list(classes)} have no samples (counts: {self.counts}).",
                hint="Extract samples of these classes first.",
            )
        return self.sum[idx].sum(0) / n

    def var(self, cls: str, ddof: int = 1) -> Float[Tensor, "n_layers d_model"]:
        """Per-layer, per-feature variance of class ``cls`` (``ddof=1``: sample variance)."""
        i = self._require(cls)
        m2 = self._m2_or_raise()
        n = int(self.count[i])
        if n - ddof <= 0:
            raise DataError(
                f"Class {cls!r} has {n} sample(s); a variance with ddof={ddof} needs more.",
                hint="Add samples, or use ddof=0.",
            )
        diag = m2[i] if self.second_moments == "diag" else torch.diagonal(m2[i], dim1=-2, dim2=-1)
        return diag / (n - ddof)

    def cov(self, cls: str, ddof: int = 1) -> Float[Tensor, "n_layers d_model d_model"]:
        """Per-layer covariance of class ``cls``; needs ``second_moments="full"``."""
        i = self._require(cls)
        m2 = self._m2_or_raise()
        if self.second_moments != "full":
            raise DataError(
                "Covariances need second_moments='full'.",
                hint="Re-extract with ClassStatistics(..., second_moments='full').",
            )
        n = int(self.count[i])
        if n - ddof <= 0:
            raise DataError(
                f"Class {cls!r} has {n} sample(s); a covariance with ddof={ddof} needs more.",
                hint="Add samples, or use ddof=0.",
            )
        return m2[i] / (n - ddof)

    def _m2_or_raise(self) -> Tensor:
        if self.m2 is None:
            raise DataError(
                "These statistics were accumulated with second_moments='none'.",
                hint="Re-extract with ClassStatistics(..., second_moments='diag') or 'full'.",
            )
        return self.m2

    def nbytes(self) -> int:
        """Bytes held by the statistics (sums, moments, buckets and held-out samples)."""
        tensors = [self.count, self.sum, self.bucket_sum, self.bucket_count, *self._ho_acts]
        tensors += [*self._ho_cls, *self._ho_groups]
        if self.m2 is not None:
            tensors.append(self.m2)
        return sum(t.numel() * t.element_size() for t in tensors)

    def __repr__(self) -> str:
        return (
            f"ClassStatistics(model_id={self.metadata.model_id!r}, n_layers={self.n_layers}, "
            f"d_model={self.d_model}, counts={self.counts}, heldout={len(self.heldout)}, "
            f"second_moments={self.second_moments!r})"
        )

    # -- persistence ------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``path.safetensors`` + ``path.json`` atomically (so extraction can resume).

        Returns:
            The base path (without extension).
        """
        tensors = {
            "count": self.count,
            "sum": self.sum,
            "bucket_sum": self.bucket_sum,
            "bucket_count": self.bucket_count,
        }
        if self.m2 is not None:
            tensors["m2"] = self.m2
        tensors.update({f"extra.{key}": value for key, value in self.extra.items()})
        ho = self.heldout
        if len(ho):
            tensors.update(
                heldout_acts=ho.acts,
                heldout_class=torch.tensor(
                    [self._index[lab] for lab in ho.labels], dtype=torch.int64
                ),
                heldout_group=ho.groups,
            )
        meta = {
            "format": "welfare_lens.ClassStatistics",
            "version": _FORMAT_VERSION,
            "metadata": self.metadata.to_dict(),
            "classes": list(self.classes),
            "n_buckets": self.n_buckets,
            "second_moments": self.second_moments,
            "holdout": self.holdout,
            "holdout_seed": self.holdout_seed,
            "sample_dtype": str(self.sample_dtype).removeprefix("torch."),
            "n_seen": self.n_seen,
            "n_batches": self.n_batches,
            "counts": self.counts,
            "heldout_counts": ho.counts,
        }
        return _save_pair(path, tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ClassStatistics:
        """Read statistics written by :meth:`save`.

        Raises:
            DataError: A file is missing, truncated, corrupt, inconsistent with its sidecar, or
                holds NaN/Inf.
        """
        tensors, meta = _load_pair(path, "ClassStatistics")
        try:
            m = VectorMetadata.from_dict(meta["metadata"])
            dtype = getattr(torch, str(meta["sample_dtype"]))
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"unknown dtype {meta['sample_dtype']!r}")
            out = cls(
                m.n_layers,
                m.d_model,
                tuple(meta["classes"]),
                model_id=m.model_id,
                hook=m.hook,
                coordinate_mode=m.coordinate_mode,
                position_rule=m.position_rule,
                design=m.design,
                seed=m.seed,
                info=m.extra,
                n_buckets=int(meta["n_buckets"]),
                second_moments=meta["second_moments"],
                holdout=float(meta["holdout"]),
                holdout_seed=int(meta["holdout_seed"]),
                sample_dtype=dtype,
            )
            out.n_seen = int(meta["n_seen"])
            out.n_batches = int(meta["n_batches"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(
                f"The JSON sidecar of {path} is missing or has invalid fields ({exc}).",
                hint="Re-save the statistics with ClassStatistics.save().",
            ) from exc
        expected: dict[str, Tensor | None] = {
            "count": out.count,
            "sum": out.sum,
            "bucket_sum": out.bucket_sum,
            "bucket_count": out.bucket_count,
            "m2": out.m2,
        }
        for key, ref in expected.items():
            if ref is None:
                continue
            got = tensors.get(key)
            if got is None or got.shape != ref.shape or got.dtype != ref.dtype:
                found = None if got is None else (tuple(got.shape), str(got.dtype))
                raise DataError(
                    f"Tensor {key!r} in {path} is missing or inconsistent: expected "
                    f"{(tuple(ref.shape), str(ref.dtype))}, found {found}.",
                    hint="The safetensors and JSON files do not belong together; re-save them.",
                )
            if got.is_floating_point() and not bool(torch.isfinite(got).all()):
                raise DataError(
                    f"Tensor {key!r} in {path} contains NaN/Inf.",
                    hint="The file is corrupt; re-extract or restore it.",
                )
        out.count, out.sum = tensors["count"], tensors["sum"]
        out.bucket_sum, out.bucket_count = tensors["bucket_sum"], tensors["bucket_count"]
        out.m2 = tensors.get("m2")
        out.extra = {
            k.removeprefix("extra."): v for k, v in tensors.items() if k.startswith("extra.")
        }
        if "heldout_acts" in tensors:
            acts, cls_i = tensors["heldout_acts"], tensors.get("heldout_class")
            groups = tensors.get("heldout_group")
            n = acts.shape[0]
            ok = (
                cls_i is not None
                and groups is not None
                and tuple(acts.shape[1:]) == (m.n_layers, m.d_model)
                and cls_i.shape == (n,)
                and groups.shape == (n,)
                and bool(((cls_i >= 0) & (cls_i < len(out.classes))).all())
            )
            if not ok or cls_i is None or groups is None:
                raise DataError(
                    f"The held-out samples in {path} are inconsistent.",
                    hint="The file is corrupt; re-extract or restore it.",
                )
            out._ho_acts, out._ho_cls, out._ho_groups = [acts], [cls_i], [groups]
        return out


def _chan_m2(
    n_a: Tensor, s_a: Tensor, m2_a: Tensor, n_b: Tensor, s_b: Tensor, m2_b: Tensor, mode: str
) -> Tensor:
    """Combine centred second moments of two sample sets per class (Chan et al., 1979)."""
    na = n_a.to(torch.float64)
    nb = n_b.to(torch.float64)
    n = na + nb
    both = (na > 0) & (nb > 0)
    # delta = mean_b − mean_a; only meaningful where both sides have samples.
    delta = s_b / nb.clamp(min=1)[:, None, None] - s_a / na.clamp(min=1)[:, None, None]
    w = torch.where(both, na * nb / n.clamp(min=1), torch.zeros_like(n))
    if mode == "diag":
        corr = delta * delta * w[:, None, None]
    else:
        corr = torch.einsum("cld,cle->clde", delta, delta) * w[:, None, None, None]
    return m2_a + m2_b + corr


def _check_provenance(
    a: VectorMetadata, b: VectorMetadata, what: str, *, check_model: bool
) -> None:
    """Raise unless two provenances share shape, hook, coordinate mode and position rule."""
    if (a.d_model, a.n_layers) != (b.d_model, b.n_layers):
        raise ShapeError(
            f"Cannot {what}: [n_layers, d_model] = [{a.n_layers}, {a.d_model}] "
            f"({a.model_id!r}) vs [{b.n_layers}, {b.d_model}] ({b.model_id!r}).",
            hint="Use vectors and statistics extracted from models of the same architecture.",
        )
    keys = ["hook", "coordinate_mode", "position_rule"] + (["model_id"] if check_model else [])
    diff = {k: (getattr(a, k), getattr(b, k)) for k in keys if getattr(a, k) != getattr(b, k)}
    if diff:
        raise VectorError(
            f"Cannot {what} with different provenance: "
            + ", ".join(f"{k}: {x!r} vs {y!r}" for k, (x, y) in diff.items())
            + ".",
            hint="Use the same model, hook, coordinate mode and token position for both.",
        )


# ----------------------------------------------------------------------------------------------
# ConceptVectors
# ----------------------------------------------------------------------------------------------


class ConceptVectors(_ShapedByMetadata):
    """Named per-layer concept vectors ``{name: [n_layers, d_model]}`` plus provenance (A4).

    Vectors are raw differences of means (not normalised), validated finite on construction.
    ``v.mold`` / ``v.gold`` are v_Mold / v_Gold; ``v.at("gold", ℓ)`` is one layer's vector.

    Args:
        vectors: e.g. ``{"mold": v_mold, "gold": v_gold, "path": v_path}``.
        metadata: Where and how the vectors were made.

    Raises:
        ShapeError: A vector is not ``[metadata.n_layers, metadata.d_model]``.
        VectorError: No vectors, or a vector holds NaN/Inf (the layers are named).

    Example:
        >>> v = welfare_vectors(stats)
        >>> v.mold.shape, v.at("gold", -1).shape
        (torch.Size([30, 576]), torch.Size([576]))
    """

    def __init__(
        self, vectors: Mapping[str, Float[Tensor, "n_layers d_model"]], metadata: VectorMetadata
    ) -> None:
        if not vectors:
            raise VectorError(
                "ConceptVectors needs at least one vector.", hint="Pass {name: [L, d]}."
            )
        want = (metadata.n_layers, metadata.d_model)
        self._vectors: dict[str, Tensor] = {}
        for name, vec in vectors.items():
            if not isinstance(vec, Tensor) or tuple(vec.shape) != want:
                got = tuple(vec.shape) if isinstance(vec, Tensor) else type(vec).__name__
                raise ShapeError(
                    f"Vector {name!r} has shape {got}, but the metadata says "
                    f"[n_layers, d_model]={list(want)}.",
                    hint="Check that the vectors and the metadata come from the same model.",
                )
            if not vec.is_floating_point():
                raise VectorError(
                    f"Vector {name!r} has dtype {vec.dtype}; concept vectors are floating point.",
                    hint="Pass float tensors.",
                )
            bad = (~torch.isfinite(vec)).any(dim=-1).nonzero().flatten().tolist()
            if bad:
                raise VectorError(
                    f"Vector {name!r} contains NaN/Inf at layer(s) {bad}.",
                    hint="Re-extract; check the model dtype (fp16 overflow), the inputs, and "
                    "that every class has samples.",
                )
            self._vectors[str(name)] = vec.detach()
        self.metadata = metadata

    # -- access -----------------------------------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        """Vector names, in insertion order."""
        return tuple(self._vectors)

    def __getitem__(self, name: str) -> Float[Tensor, "n_layers d_model"]:
        try:
            return self._vectors[name]
        except KeyError:
            raise VectorError(
                f"No vector named {name!r}; available: {list(self.names)}.",
                hint="Compute it with welfare_vectors(...) from statistics that contain that "
                "class (with method='path_reference' there is no 'path' vector).",
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._vectors

    def __iter__(self) -> Iterator[str]:
        return iter(self._vectors)

    def __len__(self) -> int:
        return len(self._vectors)

    def items(self) -> Iterator[tuple[str, Tensor]]:
        """``(name, [n_layers, d_model] tensor)`` pairs."""
        return iter(self._vectors.items())

    @property
    def mold(self) -> Float[Tensor, "n_layers d_model"]:
        """v_Mold (punishment vector), ``[n_layers, d_model]``."""
        return self["mold"]

    @property
    def gold(self) -> Float[Tensor, "n_layers d_model"]:
        """v_Gold (reward vector), ``[n_layers, d_model]``."""
        return self["gold"]

    @property
    def path(self) -> Float[Tensor, "n_layers d_model"]:
        """v_Path (one-vs-rest only), ``[n_layers, d_model]``."""
        return self["path"]

    def _layer(self, layer: int) -> int:
        L = self.n_layers
        if not isinstance(layer, int) or isinstance(layer, bool) or not -L <= layer < L:
            raise LayerError(
                f"Layer {layer!r} is out of range for {L} layers.",
                hint=f"Use 0..{L - 1} (or negative indices from the end).",
            )
        return layer % L

    def at(self, name: str, layer: int) -> Float[Tensor, " d_model"]:
        """Vector ``name`` at one layer (negative indices count from the last layer)."""
        return self[name][self._layer(layer)]

    def norms(self, name: str) -> Float[Tensor, " n_layers"]:
        """Per-layer L2 norms (float64) of the raw vector ``name`` (A4 Table 27)."""
        out: Tensor = torch.linalg.vector_norm(self[name].to(torch.float64), dim=-1)
        return out

    def select(self, names: Sequence[str]) -> ConceptVectors:
        """A copy with only ``names`` (same metadata)."""
        return ConceptVectors({n: self[n] for n in names}, self.metadata)

    # -- arithmetic -------------------------------------------------------------------------

    def _combine(self, other: ConceptVectors, op: str) -> VectorMetadata:
        _check_provenance(self.metadata, other.metadata, f"compute {op} of", check_model=False)
        if set(self.names) != set(other.names):
            raise VectorError(
                f"Cannot compute {op} of vectors named {list(self.names)} and {list(other.names)}.",
                hint="Select matching vectors first, e.g. v.select(['mold', 'gold']).",
            )
        a, b = self.metadata, other.metadata
        model_id = a.model_id if a.model_id == b.model_id else f"({a.model_id}) {op} ({b.model_id})"
        return replace(a, model_id=model_id)

    def _derived(
        self, vectors: dict[str, Tensor], how: str, metadata: VectorMetadata | None = None
    ) -> ConceptVectors:
        m = metadata or self.metadata
        ops = [*m.extra.get("derived", []), how]
        return ConceptVectors(vectors, replace(m, extra={**m.extra, "derived": ops}))

    def __add__(self, other: object) -> ConceptVectors:
        if not isinstance(other, ConceptVectors):
            return NotImplemented
        meta = self._combine(other, "+")
        return self._derived({n: self[n] + other[n] for n in self.names}, "add", meta)

    def __sub__(self, other: object) -> ConceptVectors:
        if not isinstance(other, ConceptVectors):
            return NotImplemented
        meta = self._combine(other, "-")
        return self._derived({n: self[n] - other[n] for n in self.names}, "sub", meta)

    def __mul__(self, scalar: object) -> ConceptVectors:
        if isinstance(scalar, bool) or not isinstance(scalar, int | float):
            return NotImplemented
        if not math.isfinite(scalar):
            raise VectorError(f"Cannot scale vectors by {scalar}.", hint="Use a finite number.")
        return self._derived({n: self[n] * float(scalar) for n in self.names}, f"mul {scalar!r}")

    __rmul__ = __mul__

    def __truediv__(self, scalar: object) -> ConceptVectors:
        if isinstance(scalar, bool) or not isinstance(scalar, int | float):
            return NotImplemented
        if scalar == 0:
            raise VectorError("Cannot divide vectors by zero.", hint="Use a non-zero number.")
        return self * (1.0 / float(scalar))

    def __neg__(self) -> ConceptVectors:
        return self._derived({n: -self[n] for n in self.names}, "neg")

    def _zero_layers(self, name: str) -> list[int]:
        zero: list[int] = (self.norms(name) == 0).nonzero().flatten().tolist()
        return zero

    def unit(self) -> ConceptVectors:
        """Per-layer unit-norm copy (for cosines/plots; steering in the paper uses raw vectors).

        Raises:
            VectorError: A vector has zero norm at some layer.
        """
        out: dict[str, Tensor] = {}
        for name in self.names:
            zero = self._zero_layers(name)
            if zero:
                raise VectorError(
                    f"Vector {name!r} has zero norm at layer(s) {zero}; it cannot be normalised.",
                    hint="Its classes had identical means there; check the extraction.",
                )
            v = self[name]
            out[name] = (v.double() / self.norms(name)[:, None]).to(v.dtype)
        return self._derived(out, "unit")

    def match_norms(self, reference: ConceptVectors) -> ConceptVectors:
        """Rescale every vector, per layer, to the norm of ``reference``'s vector of that name.

        Norm-matched comparison vectors (B-15; H.4): e.g. ``u.match_norms(v)`` gives controls
        with ‖u_c^(ℓ)‖ = ‖v_c^(ℓ)‖, so steering with them at α is directly comparable.

        Raises:
            VectorError: Provenance or names differ, or a vector of ``self`` is zero somewhere.
            ShapeError: Shapes differ.
        """
        meta = self._combine(reference, "norm-match")
        out = {n: norm_match(self[n], reference.norms(n)) for n in self.names}
        return self._derived(
            out,
            f"match_norms {reference.metadata.model_id}",
            replace(meta, model_id=self.metadata.model_id),
        )

    def validate(self) -> ConceptVectors:
        """Check every vector is non-zero at every layer (finiteness is checked on creation).

        Returns:
            ``self``.

        Raises:
            VectorError: Naming the vector and layer(s) with zero norm.
        """
        for name in self.names:
            zero = self._zero_layers(name)
            if zero:
                raise VectorError(
                    f"Vector {name!r} has zero norm at layer(s) {zero}.",
                    hint="The classes had identical means there; check labels and positions.",
                )
        return self

    def check_compatible(self, target: object, *, allow_other_checkpoint: bool = False) -> None:
        """Raise unless these vectors can be used with ``target``.

        ``target`` is a TransformerBridge (``.cfg.d_model``, ``.cfg.n_layers``, and the model id
        and coordinate mode from ``.welfare_lens_info``/``.compatibility_mode``), or another
        :class:`ConceptVectors`, :class:`ClassStatistics` or :class:`VectorMetadata`.

        Args:
            target: What the vectors will be used with.
            allow_other_checkpoint: Accept a different model id of the same shape and mode,
                e.g. to steer the maze-naive checkpoint with trained vectors (paper Appendix A).

        Raises:
            ShapeError: ``d_model`` or ``n_layers`` differ.
            VectorError: The coordinate mode (or, for vectors/statistics, hook or position rule)
                differ, or the model id differs and ``allow_other_checkpoint`` is False.
        """
        t = _describe_target(target)
        m = self.metadata
        if (m.d_model, m.n_layers) != (t.d_model, t.n_layers):
            raise ShapeError(
                f"Vectors have d_model={m.d_model}, n_layers={m.n_layers} (model {m.model_id!r}), "
                f"but the target has d_model={t.d_model}, n_layers={t.n_layers} "
                f"(model {t.model_id!r}).",
                hint=f"Extract vectors on the target model, or load {m.model_id!r}.",
            )
        if t.coordinate_mode is not None and t.coordinate_mode != m.coordinate_mode:
            raise VectorError(
                f"Vectors were made in coordinate_mode={m.coordinate_mode!r}, but the target uses "
                f"{t.coordinate_mode!r}; residual coordinates differ between modes.",
                hint=f"Load the model in {m.coordinate_mode!r} mode, or re-extract the vectors "
                f"in {t.coordinate_mode!r} mode.",
            )
        for key in ("hook", "position_rule"):
            theirs = getattr(t, key)
            if theirs is not None and theirs != getattr(m, key):
                raise VectorError(
                    f"Vectors use {key}={getattr(m, key)!r}, the target {key}={theirs!r}.",
                    hint="Compare only vectors extracted at the same hook and token position.",
                )
        known = t.model_id not in (None, "unknown") and m.model_id != "unknown"
        if known and t.model_id != m.model_id and not allow_other_checkpoint:
            raise VectorError(
                f"Vectors were made for model {m.model_id!r}, but the target is {t.model_id!r}.",
                hint="Extract vectors on the target model, or pass allow_other_checkpoint=True to "
                "use them on another checkpoint of the same base model (e.g. steering the "
                "maze-naive model with trained vectors, paper Appendix A).",
            )

    # -- persistence / summary --------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``path.safetensors`` (tensors keyed by name) and ``path.json`` (metadata, norms).

        Returns:
            The base path (without extension).
        """
        meta = {
            "format": "welfare_lens.ConceptVectors",
            "version": _FORMAT_VERSION,
            "names": list(self.names),
            "metadata": self.metadata.to_dict(),
            "norms": {n: [round(float(x), 6) for x in self.norms(n)] for n in self.names},
        }
        return _save_pair(path, dict(self._vectors), meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ConceptVectors:
        """Read vectors written by :meth:`save`.

        Raises:
            DataError: A file is missing, truncated or corrupt, or a named tensor is missing.
            VectorError: A stored vector holds NaN/Inf.
        """
        tensors, meta = _load_pair(path, "ConceptVectors")
        try:
            metadata = VectorMetadata.from_dict(meta["metadata"])
            names = [str(n) for n in meta["names"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"The JSON sidecar of {path} is missing fields ({exc}).",
                hint="Re-save the vectors with ConceptVectors.save().",
            ) from exc
        missing = [n for n in names if n not in tensors]
        if missing:
            raise DataError(
                f"{path}: tensor(s) {missing} listed in the JSON are missing from the "
                "safetensors file.",
                hint="The two files do not belong together; re-save the vectors.",
            )
        try:
            return cls({n: tensors[n] for n in names}, metadata)
        except ShapeError as exc:
            raise DataError(f"{path}: {exc.message}", hint="Re-save the vectors.") from exc
        except VectorError as exc:
            raise VectorError(f"{path}: {exc.message}", hint=exc.hint) from exc

    def summary(self) -> dict[str, Any]:
        """Small JSON-friendly dict: provenance and per-vector norms (per layer, min/mean/max)."""
        out: dict[str, Any] = {**self.metadata.to_dict(), "vectors": {}}
        for name in self.names:
            nrm = self.norms(name)
            out["vectors"][name] = {
                "norm_min": float(nrm.min()),
                "norm_mean": float(nrm.mean()),
                "norm_max": float(nrm.max()),
                "norms": [float(x) for x in nrm],
            }
        return out

    def __repr__(self) -> str:
        m = self.metadata
        return (
            f"ConceptVectors(names={list(self.names)}, n_layers={self.n_layers}, "
            f"d_model={self.d_model}, model_id={m.model_id!r}, method={m.method!r}, "
            f"role={m.role!r})"
        )


_Named = TypeVar("_Named")


def _choose_named(
    table: Mapping[str, _Named],
    names: str | Sequence[str] | None,
    *,
    what: str = "vector",
    hint: str = "Pass names=[...] from the vectors' names.",
) -> dict[str, _Named]:
    """``{name: table[name]}`` for the requested ``names``, in their order.

    The analyses that read "the welfare vectors" (§5.2 tracking, §6.2 pre-existence) share one
    default: v_Mold and v_Gold where ``table`` has them (in that order), else every entry.

    Args:
        table: Vectors (or per-vector values) by name.
        names: One name, several, or ``None`` for the default.
        what: What the entries are, for the error (``"vector"``, ``"control vectors"``, ...).
        hint: The fix the error suggests.

    Raises:
        VectorError: A requested name is not in ``table``, or nothing would be chosen.
    """
    chosen: list[str]
    if names is None:
        chosen = [n for n in ("mold", "gold") if n in table] or list(table)
    else:
        chosen = [names] if isinstance(names, str) else list(names)
    missing = [n for n in chosen if n not in table]
    if missing or not chosen:
        raise VectorError(
            f"No {what} named {missing or chosen}; available: {list(table)}.", hint=hint
        )
    return {n: table[n] for n in chosen}


# ----------------------------------------------------------------------------------------------
# Difference of means
# ----------------------------------------------------------------------------------------------


def vectors_from_sums(
    sums: Float[Tensor, "*batch cls n_layers d_model"],
    counts: Float[Tensor, "*batch cls"],
    classes: Sequence[str],
    method: str = "one_vs_rest",
) -> dict[str, Tensor]:
    """Difference-of-means vectors from class sums and counts (A4, Eq. 1 and Eq. 3).

    Batched over leading dimensions so the bootstrap can evaluate many resamples at once.
    Entries where a needed class has zero count come out NaN (the caller decides what to do).

    Args:
        sums: Per-class activation sums.
        counts: Per-class sample counts.
        classes: Class names along the ``cls`` axis.
        method: ``"one_vs_rest"``: v_c = mean_c − (sample) mean of all other classes' samples,
            for every class. ``"path_reference"``: v_c = mean_c − mean_path, for every class but
            path.

    Returns:
        ``{class: [*batch, n_layers, d_model]}``.

    Raises:
        DataError: Unknown method, or ``path_reference`` without a ``path`` class.
    """
    classes = list(classes)
    if sums.shape[-3] != len(classes) or counts.shape[-1] != len(classes):
        raise ShapeError(
            f"{len(classes)} classes but sums {tuple(sums.shape)} and counts {tuple(counts.shape)}.",
            hint="The cls axis must list the classes in order.",
        )
    n = counts.to(sums.dtype)[..., None, None]
    nan = torch.tensor(float("nan"), dtype=sums.dtype)

    def safe_div(s: Tensor, c: Tensor) -> Tensor:
        return torch.where(c > 0, s / c.clamp(min=1), nan)

    if method == "one_vs_rest":
        total_s, total_n = sums.sum(dim=-3), n.sum(dim=-3)
        return {
            c: safe_div(sums[..., i, :, :], n[..., i, :, :])
            - safe_div(total_s - sums[..., i, :, :], total_n - n[..., i, :, :])
            for i, c in enumerate(classes)
        }
    if method == "path_reference":
        if "path" not in classes:
            raise DataError(
                f"method='path_reference' needs a 'path' class; classes are {classes}.",
                hint="Extract Path-final trajectories too (Eq. 3 subtracts the Path mean).",
            )
        p = classes.index("path")
        ref = safe_div(sums[..., p, :, :], n[..., p, :, :])
        return {
            c: safe_div(sums[..., i, :, :], n[..., i, :, :]) - ref
            for i, c in enumerate(classes)
            if c != "path"
        }
    raise DataError(
        f"Unknown method {method!r}.", hint="Use 'one_vs_rest' (Eq. 1) or 'path_reference' (Eq. 3)."
    )


def welfare_vectors(
    stats: ClassStatistics,
    method: Method = "one_vs_rest",
    *,
    role: str = "trained",
    dtype: torch.dtype = torch.float32,
) -> ConceptVectors:
    """Welfare (reward) vectors from class statistics (A4; index §2.3; Appendix C.8).

    ``method="one_vs_rest"`` (Eq. 1): for every class c, v_c = mean over T_c − mean over the
    union of the other classes (count-weighted over their samples, not a mean of class means).
    Path sits in both subtrahends, so v_Mold and v_Gold are not antiparallel by construction.
    ``method="path_reference"`` (Eq. 3, C.8): ṽ_c = mean_c − mean_Path for every c ≠ Path.
    Held-out samples are not used. The provenance comes from ``stats.metadata``; ``method``,
    ``role`` and the class counts are filled in.

    Args:
        stats: Accumulated class statistics.
        method: ``"one_vs_rest"`` or ``"path_reference"``.
        role: ``"trained"`` for v, ``"control"`` for u (prefer :func:`control_vectors`).
        dtype: Dtype of the returned vectors (computed in float64, then cast).

    Returns:
        ``ConceptVectors`` with one ``[n_layers, d_model]`` vector per class (``v.mold``,
        ``v.gold``, and ``v["path"]`` for one-vs-rest).

    Raises:
        DataError: Unknown method, fewer than two classes, or a class with zero samples.
    """
    if method not in _METHODS:
        raise DataError(
            f"Unknown method {method!r}.",
            hint="Use 'one_vs_rest' (Eq. 1) or 'path_reference' (Eq. 3).",
        )
    if len(stats.classes) < 2:
        raise DataError(
            f"A difference of means needs at least two classes; got {list(stats.classes)}.",
            hint="Extract trajectories of at least two classes (paper: mold, gold, path).",
        )
    empty = [c for c, n in stats.counts.items() if n == 0]
    if empty:
        raise DataError(
            f"Class(es) {empty} have no samples (counts: {stats.counts}).",
            hint="Extract trajectories ending on these tiles, or leave the class out of "
            "ClassStatistics(classes=...).",
        )
    vecs = vectors_from_sums(stats.sum, stats.count, stats.classes, method)
    meta = replace(stats.metadata, method=method, role=role, class_counts=stats.counts)
    meta = replace(meta, extra=dict(meta.extra))
    return ConceptVectors({c: v.to(dtype) for c, v in vecs.items()}, meta)


def control_vectors(
    naive_stats: ClassStatistics, like: ConceptVectors, *, dtype: torch.dtype | None = None
) -> ConceptVectors:
    """Control vectors u from the maze-naive model, made exactly like ``like`` (A4 "controls").

    Same method and classes as the trained vectors ``like``; the statistics must share their
    shape, hook, coordinate mode and token position. A warning is issued if both carry the same
    model id (the controls must come from the *naive* checkpoint).

    Raises:
        ShapeError / VectorError: The statistics do not match ``like``.
        DataError: The class sets differ or a class is empty.
    """
    _check_provenance(naive_stats.metadata, like.metadata, "make controls", check_model=False)
    method = like.metadata.method
    if method not in _METHODS:
        raise DataError(
            f"The reference vectors use method {method!r}, which has no control recipe.",
            hint="Use vectors made by welfare_vectors().",
        )
    expected = set(like.metadata.class_counts) or None
    if expected is not None and expected != set(naive_stats.classes):
        raise DataError(
            f"Trained vectors used classes {sorted(expected)}, the naive statistics have "
            f"{sorted(naive_stats.classes)}.",
            hint="Extract both with the same classes (paper: mold, gold, path).",
        )
    if naive_stats.metadata.model_id == like.metadata.model_id != "unknown":
        warnings.warn(
            f"Control statistics and trained vectors have the same model id "
            f"{like.metadata.model_id!r}; controls must come from the maze-naive checkpoint.",
            stacklevel=2,
        )
    out_dtype = dtype or next(iter(like._vectors.values())).dtype
    return welfare_vectors(naive_stats, cast(Method, method), role="control", dtype=out_dtype)


def diff_of_means(
    pos: Float[Tensor, "n_pos n_layers d_model"], neg: Float[Tensor, "n_neg n_layers d_model"]
) -> Float[Tensor, "n_layers d_model"]:
    """mean(pos) − mean(neg) over samples, computed in float64, returned in ``pos.dtype``.

    Convenience for small in-memory sets (e.g. minimal pairs); use :class:`ClassStatistics`
    for large ones.

    Raises:
        DataError: An empty set, or NaN/Inf values.
        ShapeError: Trailing shapes differ.
    """
    if pos.shape[0] == 0 or neg.shape[0] == 0:
        raise DataError(
            f"Both sets need samples; got {pos.shape[0]} positive and {neg.shape[0]} negative.",
            hint="Pass non-empty [n, n_layers, d_model] tensors.",
        )
    if pos.shape[1:] != neg.shape[1:]:
        raise ShapeError(
            f"Trailing shapes differ: {tuple(pos.shape[1:])} vs {tuple(neg.shape[1:])}.",
            hint="Capture both sets at the same layers of the same model.",
        )
    if not (bool(torch.isfinite(pos).all()) and bool(torch.isfinite(neg).all())):
        raise DataError("Activations contain NaN/Inf.", hint="Check the model dtype and inputs.")
    out = pos.to(torch.float64).mean(0) - neg.to(torch.float64).mean(0)
    return out.to(pos.dtype)


# ----------------------------------------------------------------------------------------------
# Norm matching (B-15, H.4)
# ----------------------------------------------------------------------------------------------


def norm_matched_scale(alpha: float, v: Tensor, u: Tensor) -> float:
    """Coefficient β with β‖u‖ = α‖v‖, so β·u has the norm of α·v (B-15; H.4).

    Example: the paper's VAA control at nominal α = 2 with ‖v_Gold‖ = 14.37 and unit-norm u
    gives β = 28.74.

    Raises:
        VectorError: ``u`` has zero norm or a norm is not finite.
    """
    nv = float(torch.linalg.vector_norm(v.to(torch.float64)))
    nu = float(torch.linalg.vector_norm(u.to(torch.float64)))
    if nu == 0 or not math.isfinite(nu) or not math.isfinite(nv):
        raise VectorError(
            f"Cannot norm-match: ‖v‖={nv}, ‖u‖={nu}.",
            hint="The comparison vector must be finite and non-zero.",
        )
    return float(alpha) * nv / nu


def norm_match(
    u: Float[Tensor, "*layer d_model"], target_norm: float | Float[Tensor, "*layer"]
) -> Float[Tensor, "*layer d_model"]:
    """Rescale ``u`` to ``target_norm``: one vector ``[d]``, or per layer for ``[L, d]``.

    Args:
        u: Vector ``[d]`` or per-layer vectors ``[L, d]``.
        target_norm: Scalar, or ``[L]`` norms for per-layer input.

    Raises:
        VectorError: ``u`` has zero norm (at some layer) or a value is not finite.
        ShapeError: ``target_norm`` does not fit ``u``.
    """
    u64 = u.to(torch.float64)
    norms = torch.linalg.vector_norm(u64, dim=-1, keepdim=True)
    if bool((norms == 0).any()) or not bool(torch.isfinite(norms).all()):
        raise VectorError(
            "Cannot norm-match a vector with zero or non-finite norm.",
            hint="Use a finite, non-zero comparison vector.",
        )
    target = torch.as_tensor(target_norm, dtype=torch.float64)
    if not bool(torch.isfinite(target).all()):
        raise VectorError("target_norm is not finite.", hint="Pass finite norms.")
    if target.ndim > 0:
        if target.shape != norms.shape[:-1]:
            raise ShapeError(
                f"target_norm has shape {tuple(target.shape)}, u has {tuple(u.shape)}.",
                hint="Pass one norm per layer of u, or a scalar.",
            )
        target = target[..., None]
    out: Tensor = (u64 * (target / norms)).to(u.dtype)
    return out
