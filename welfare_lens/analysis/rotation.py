"""Rotation during training: welfare vectors at every checkpoint against fixed naive-model axes (G).

Paper appendix G (spec A9 "Rotation during training"; A1 finding 6). The vectors work when
applied to the maze-naive model, so the paper concludes that RL *recruits* an axis that already
exists rather than creating one. Appendix G tests this on the training trajectory:

* v_Mold and v_Gold are extracted at every checkpoint (primary run: steps 5-95 every 5) from the
  *same* extraction set;
* at layer 21 (of 36) each is compared with three axes fixed in the maze-naive model: the prompt
  sentiment vector (:func:`~welfare_lens.analysis.sentiment_vectors.prompt_vector`), emotion PC1
  (:func:`~welfare_lens.analysis.emotions.emotion_pca`) and the Valence-Assent Axis (H);
* the cosine alignment and the unit-normalised projection separation grow about monotonically
  with the run's smoothed (EMA) rollout reward, then plateau; the "recruitment band" covers
  layers ~18-28.

The pieces here:

* :func:`list_checkpoints` and :func:`checkpoint_vectors`: capture the same trajectories on the
  naive model (step 0) and on every ``checkpoint-NNNNNN`` of a :class:`~welfare_lens.rl.GRPOTrainer`
  run, one base model reused throughout, with every step cached on disk under a fingerprint of
  the trajectories, the capture settings and the checkpoint's weights (resumable, also within a
  step through :func:`~welfare_lens.capture`'s own checkpoint). The result,
  :class:`CheckpointSeries`, keeps the vectors *and* the class statistics of every step.
* :func:`rotation_table`: cos(v, axis) per step, layer, vector and axis, and the unit-projection
  separation (μ_Gold − μ_Mold)·â of the class means (:class:`RotationTable`).
* :func:`reward_series`: the EMA of the logged rollout reward at each checkpoint
  (:class:`RewardSeries`); :func:`recruitment`: Spearman's ρ between that reward and each
  alignment over checkpoints, a bootstrap CI that resamples checkpoints, the per-layer growth
  from the first to the last checkpoint, and the recruitment band (:class:`Recruitment`).

Typical use::

    series = checkpoint_vectors("runs/smollm2", base, trajs, out_dir="runs/smollm2/rotation")
    table = rotation_table(series, {"prompt_sentiment": sentiment.select(["prompt"]),
                                    "emotion_pc1": pca, "vaa": vaa})
    rec = recruitment(table, reward_series("runs/smollm2"))
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from numpy.typing import NDArray
from scipy.stats import rankdata
from torch import Tensor
from tqdm.auto import tqdm

from welfare_lens.analysis.emotions import _layers_of
from welfare_lens.capture import _as_item, capture
from welfare_lens.errors import DataError, LayerError, ShapeError, TrainingError, VectorError
from welfare_lens.hooks import n_layers, resolve_layers
from welfare_lens.models import model_info
from welfare_lens.rl.checkpoint import (
    ADAPTER_FILE,
    METRICS_FILE,
    MODEL_FILE,
    STATE_FILE,
    load_checkpoint,
    read_state,
)
from welfare_lens.vectors import (
    ClassStatistics,
    ConceptVectors,
    Method,
    _file_pair,
    _sha256,
    welfare_vectors,
)

__all__ = [
    "CheckpointSeries",
    "Recruitment",
    "RewardSeries",
    "RotationTable",
    "checkpoint_vectors",
    "list_checkpoints",
    "recruitment",
    "reward_series",
    "rotation_table",
]

F64 = NDArray[np.float64]

_RECORD_FILE = "fingerprint.json"
_RECORD_FORMAT = "welfare_lens.RotationStep"
_RECORD_VERSION = 1
_STATS = "stats"
_VECTORS = "vectors"
_PARTIAL = "capture-partial"
#: Files whose bytes define a checkpoint's weights (the optimizer and RNG states do not).
_WEIGHT_FILES = (ADAPTER_FILE, "adapter_config.json", MODEL_FILE)
#: capture() arguments that checkpoint_vectors sets itself.
_RESERVED = ("model", "trajectories", "layers", "progress", "checkpoint", "stats")
#: capture() arguments that change speed, not the statistics: left out of the fingerprint.
_SPEED_ONLY = ("batch_size", "share_prefixes", "checkpoint_every")
#: G reads layer 21 of 36 (0-based), i.e. this fraction of the depth.
_PAPER_LAYER_FRACTION = 21 / 35
#: Below this many checkpoints the recruitment result says its CI is wide.
_FEW_CHECKPOINTS = 10


def _floats(values: Iterable[Any]) -> list[float | None]:
    """JSON-friendly floats (NaN becomes None)."""
    out: list[float | None] = []
    for x in values:
        f = float(x)
        out.append(f if math.isfinite(f) else None)
    return out


# ----------------------------------------------------------------------------------------------
# Checkpoints of a run
# ----------------------------------------------------------------------------------------------


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """The ``checkpoint-*`` folders of a training run, as ``(global_step, path)`` sorted by step.

    The step is read from each folder's ``trainer_state.json`` (not parsed from its name), so the
    order is numeric. Folders without that file (a save that never finished) are skipped.

    Args:
        run_dir: The run's ``out_dir`` (:class:`~welfare_lens.rl.GRPOConfig`).

    Raises:
        DataError: ``run_dir`` is not a folder, holds no complete checkpoint, or two
            checkpoints claim the same step.
        TrainingError: A ``trainer_state.json`` is unreadable or of another format.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise DataError(
            f"{root} is not a folder.",
            hint="Pass the out_dir of a training run (GRPOConfig.out_dir), which holds "
            "checkpoint-NNNNNN/ folders.",
        )
    found: list[tuple[int, Path]] = []
    incomplete: list[str] = []
    for path in sorted(root.glob("checkpoint-*")):
        if not path.is_dir():
            continue
        if not (path / STATE_FILE).is_file():
            incomplete.append(path.name)
            continue
        found.append((int(read_state(path)["global_step"]), path))
    if not found:
        extra = f" ({len(incomplete)} without {STATE_FILE}: {incomplete[:3]})" if incomplete else ""
        raise DataError(
            f"{root} holds no complete checkpoint-* folder{extra}.",
            hint="Train with GRPOConfig(out_dir=..., checkpoint_every=N > 0), or pass the run's "
            "out_dir rather than one of its checkpoints.",
        )
    steps = [step for step, _ in found]
    dupes = sorted({s for s in steps if steps.count(s) > 1})
    if dupes:
        raise DataError(
            f"Several checkpoints of {root} claim step(s) {dupes}: "
            f"{[p.name for s, p in found if s in dupes]}.",
            hint="Keep one folder per step (copies of a checkpoint belong elsewhere).",
        )
    return sorted(found, key=lambda pair: pair[0])


# ----------------------------------------------------------------------------------------------
# Fingerprints and the per-step cache
# ----------------------------------------------------------------------------------------------


def _trajectory_digest(trajectories: Sequence[Any]) -> str:
    """SHA-256 of the trajectories' messages, labels and groups, in order."""
    digest = hashlib.sha256()
    for index, obj in enumerate(trajectories):
        item = _as_item(obj, index)
        messages = [dict(m) for m in item.messages]
        digest.update(json.dumps([messages, item.label, item.group], sort_keys=True).encode())
    return digest.hexdigest()


def _jsonable(value: Any) -> Any:
    """Capture settings as JSON (functions by qualified name), for the fingerprint."""
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', '?')}"
    return repr(value)


def _checkpoint_identity(
    ckpt: Path, previous: Mapping[str, Any] | None
) -> tuple[dict[str, Any], dict[str, int]]:
    """What defines a checkpoint's weights: its step, finetune mode, and weight-file hashes.

    Hashing is skipped for a file whose size and modification time match the previous record
    (full fine-tuning checkpoints of large models are many GB); a copied or rewritten file is
    hashed again, so a retrained run with the same file sizes is never mistaken for the old one.

    Returns:
        ``(identity, mtimes)``: the compared identity and the modification times to record.
    """
    state = read_state(ckpt)
    old_identity = (previous or {}).get("identity") or {}
    old_files = (old_identity.get("checkpoint") or {}).get("files") or {}
    old_mtimes = ((previous or {}).get("info") or {}).get("mtimes") or {}
    files: dict[str, dict[str, Any]] = {}
    mtimes: dict[str, int] = {}
    for name in _WEIGHT_FILES:
        path = ckpt / name
        if not path.is_file():
            continue
        st = path.stat()
        old = old_files.get(name) or {}
        if old.get("size") == st.st_size and old_mtimes.get(name) == st.st_mtime_ns:
            sha = str(old.get("sha256"))
        else:
            sha = _sha256(path)
        files[name] = {"size": st.st_size, "sha256": sha}
        mtimes[name] = st.st_mtime_ns
    if ADAPTER_FILE not in files and MODEL_FILE not in files:
        raise DataError(
            f"{ckpt} has neither {ADAPTER_FILE} nor {MODEL_FILE}: it holds no weights.",
            hint="Delete the incomplete checkpoint folder, or pass steps=... without it.",
        )
    identity = {
        "global_step": int(state["global_step"]),
        "finetune": state.get("finetune"),
        "base_model_id": (state.get("model") or {}).get("model_id"),
        "files": files,
    }
    return identity, mtimes


def _read_record(step_dir: Path) -> dict[str, Any] | None:
    """The step's fingerprint record, or None if absent or unreadable (then it is recomputed)."""
    file = step_dir / _RECORD_FILE
    if not file.is_file():
        return None
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        warnings.warn(f"Ignoring the unreadable {file}; recomputing.", RuntimeWarning, stacklevel=3)
        return None
    if not isinstance(record, dict) or record.get("format") != _RECORD_FORMAT:
        return None
    return record


def _write_record(
    step_dir: Path, identity: Mapping[str, Any], info: Mapping[str, Any], complete: bool
) -> None:
    record = {
        "format": _RECORD_FORMAT,
        "version": _RECORD_VERSION,
        "complete": complete,
        "identity": identity,
        "info": info,
    }
    tmp = step_dir / f".{_RECORD_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, step_dir / _RECORD_FILE)


def _remove_pair(base: Path) -> None:
    for path in _file_pair(base):
        path.unlink(missing_ok=True)


def _saved(step_dir: Path) -> bool:
    return all(p.is_file() for base in (_STATS, _VECTORS) for p in _file_pair(step_dir / base))


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


class _BaseSnapshot:
    """The base model's state before checkpoints are loaded into it, to put back after each.

    :func:`~welfare_lens.rl.load_checkpoint` merges a LoRA adapter into the weights in place (or,
    for full fine-tuning, overwrites them), freezes every parameter, switches to eval mode and
    renames the model. Copying the original parameters back (CPU copy: memory of one more set of
    weights) is far cheaper than reloading the base model for every checkpoint.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.hf = model.original_model
        self.params: dict[str, Tensor] | None = None
        self.requires_grad: dict[str, bool] = {}
        self.info = getattr(model, "welfare_lens_info", None)
        self.had_info = hasattr(model, "welfare_lens_info")
        self.had_peft_config = hasattr(self.hf, "peft_config")
        self.training = bool(getattr(model, "training", False))
        self.dirty = False

    def take(self) -> None:
        """Copy the parameters (once), before the first checkpoint is loaded."""
        if self.params is None:
            named = list(self.hf.named_parameters())
            self.params = {n: p.detach().to("cpu", copy=True) for n, p in named}
            self.requires_grad = {n: p.requires_grad for n, p in named}
        self.dirty = True

    def restore(self) -> None:
        """Put the base weights, flags and identity back (no-op if nothing was loaded)."""
        if not self.dirty or self.params is None:
            return
        current = dict(self.hf.named_parameters())
        missing = sorted(set(self.params) - set(current))
        if missing:  # pragma: no cover - only if load_checkpoint's module surgery changes
            raise TrainingError(
                f"After loading a checkpoint the base model lacks parameters {missing[:3]}.",
                hint="Use checkpoint_vectors(..., reuse_model=False) to load each checkpoint "
                "into a fresh base model.",
            )
        with torch.no_grad():
            for name, saved in self.params.items():
                param = current[name]
                param.copy_(saved.to(param.device, param.dtype))
                param.requires_grad_(self.requires_grad[name])
        if self.had_info:
            self.model.welfare_lens_info = self.info
        elif hasattr(self.model, "welfare_lens_info"):
            del self.model.welfare_lens_info
        # PEFT records its config on the wrapped model; a later get_peft_model would warn.
        if not self.had_peft_config and hasattr(self.hf, "peft_config"):
            del self.hf.peft_config
        self.model.train(self.training)
        self.dirty = False


# ----------------------------------------------------------------------------------------------
# CheckpointSeries
# ----------------------------------------------------------------------------------------------


@dataclass(eq=False, repr=False)
class CheckpointSeries(Mapping[int, ConceptVectors]):
    """Welfare vectors and class statistics at every checkpoint of a run (G).

    A read-only mapping ``step -> ConceptVectors`` (step 0 is the maze-naive model), so it can be
    used wherever a ``dict[int, ConceptVectors]`` is expected; :attr:`stats` holds the class
    statistics that :func:`rotation_table` needs for the projection separation.

    Attributes:
        vectors: ``{step: ConceptVectors}`` (v at checkpoints, u at step 0).
        stats: ``{step: ClassStatistics}`` of the same captures.
        checkpoints: ``{step: checkpoint folder}``; ``None`` for the naive model.
        out_dir: Cache folder (``step-NNNNNN/`` per step).
        trajectories: SHA-256 of the extraction set (identical for every step).
        computed: Steps captured by this call.
        cached: Steps read back from ``out_dir``.
    """

    vectors: dict[int, ConceptVectors]
    stats: dict[int, ClassStatistics]
    checkpoints: dict[int, str | None]
    out_dir: str
    trajectories: str = ""
    computed: list[int] = field(default_factory=list)
    cached: list[int] = field(default_factory=list)

    def __getitem__(self, step: int) -> ConceptVectors:
        try:
            return self.vectors[step]
        except KeyError:
            raise DataError(
                f"No vectors for step {step}; steps are {self.steps}.",
                hint="Pick one of the listed steps (0 is the maze-naive model).",
            ) from None

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self.vectors))

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def steps(self) -> list[int]:
        """Steps in increasing order."""
        return sorted(self.vectors)

    @property
    def layers(self) -> list[int]:
        """Model layers of the vectors (rows of each ``[n_layers, d_model]`` tensor)."""
        return _layers_of(self.vectors[self.steps[0]])

    @classmethod
    def load(cls, out_dir: str | os.PathLike[str]) -> CheckpointSeries:
        """Read every complete step saved under ``out_dir`` by :func:`checkpoint_vectors`.

        No model is needed; the fingerprints are not re-checked against the run (call
        :func:`checkpoint_vectors` again for that).

        Raises:
            DataError: No complete step, or the steps were made from different trajectories.
        """
        root = Path(out_dir)
        vectors: dict[int, ConceptVectors] = {}
        stats: dict[int, ClassStatistics] = {}
        checkpoints: dict[int, str | None] = {}
        digests: set[str] = set()
        for step_dir in sorted(root.glob("step-*")):
            record = _read_record(step_dir)
            if record is None or not record.get("complete") or not _saved(step_dir):
                continue
            identity = record["identity"]
            step = int(identity["step"])
            vectors[step] = ConceptVectors.load(step_dir / _VECTORS)
            stats[step] = ClassStatistics.load(step_dir / _STATS)
            checkpoints[step] = (record.get("info") or {}).get("path")
            digests.add(str(identity.get("trajectories")))
        if not vectors:
            raise DataError(
                f"{root} holds no complete step-* folder.",
                hint="Run checkpoint_vectors(run_dir, base_model, trajectories, out_dir=...).",
            )
        if len(digests) > 1:
            raise DataError(
                f"The steps under {root} were captured from {len(digests)} different "
                "trajectory sets; their vectors are not comparable.",
                hint="Recompute with checkpoint_vectors(..., overwrite=True).",
            )
        return cls(vectors, stats, checkpoints, str(root), digests.pop(), [], sorted(vectors))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (no tensors)."""
        return {
            "steps": self.steps,
            "layers": self.layers,
            "model_ids": {str(s): self.vectors[s].metadata.model_id for s in self.steps},
            "class_counts": {str(s): self.stats[s].counts for s in self.steps if s in self.stats},
            "checkpoints": {str(s): self.checkpoints.get(s) for s in self.steps},
            "out_dir": self.out_dir,
            "trajectories": self.trajectories,
            "computed": list(self.computed),
            "cached": list(self.cached),
        }

    def __repr__(self) -> str:
        layers = self.layers
        return (
            f"CheckpointSeries(steps={self.steps}, layers {layers[0]}..{layers[-1]}, "
            f"names={list(self.vectors[self.steps[0]].names)}, computed={self.computed}, "
            f"cached={self.cached}, out_dir={self.out_dir!r})"
        )


def checkpoint_vectors(
    run_dir: str | os.PathLike[str],
    base_model: Any,
    trajectories: Iterable[Any],
    *,
    out_dir: str | os.PathLike[str],
    layers: int | Sequence[int] | None = None,
    progress: bool = True,
    include_naive: bool = True,
    steps: Iterable[int] | None = None,
    method: Method = "one_vs_rest",
    capture_kwargs: Mapping[str, Any] | None = None,
    reuse_model: bool = True,
    overwrite: bool = False,
) -> CheckpointSeries:
    """Welfare vectors of the same trajectories at every checkpoint of a run (G), cached.

    For step 0 (the maze-naive ``base_model``, if ``include_naive``) and for every checkpoint of
    ``run_dir``, in order of step: load the checkpoint onto the base model
    (:func:`~welfare_lens.rl.load_checkpoint`), :func:`~welfare_lens.capture` the *same*
    trajectories, :func:`~welfare_lens.welfare_vectors`, and save both under
    ``out_dir/step-NNNNNN/`` (``stats``, ``vectors``, and ``fingerprint.json``).

    **Caching.** A step is read back instead of captured when its ``fingerprint.json`` matches:
    the SHA-256 of the trajectories' messages, labels and groups; the layers, method and capture
    settings; the base model id; and, for a checkpoint, its step and the sizes and SHA-256 of its
    weight files. A step whose fingerprint differs is an error unless ``overwrite``: the cache
    is never silently replaced by vectors of another extraction set. **Resuming.** Steps are
    saved as they finish, and a step's capture checkpoints itself
    (``capture(checkpoint=...)``), so a killed call loses at most ``checkpoint_every``
    conversations of work when called again.

    **Cost.** One base model serves every checkpoint: each is merged into it in place and the
    original parameters are copied back afterwards (a CPU copy of the weights is held for the
    call; the model is back to its naive state on return, also after an error). With
    ``reuse_model=False`` each checkpoint loads its own base model from the recorded spec
    instead: no extra copy, but one model load per checkpoint. Each step's capture costs as much
    as one extraction (A4); pass a moderate trajectory set (the paper uses the full 5,000 per
    class at 19 checkpoints).

    Args:
        run_dir: The training run's ``out_dir`` (``checkpoint-NNNNNN/`` folders).
        base_model: The untrained base model the run started from (``wl.load_model(...)``).
        trajectories: The extraction set, e.g. ``wl.maze.shared_prefix_trajectories(cfg, 500)``;
            the same for every step.
        out_dir: Cache folder.
        layers: Layers to capture (default all).
        progress: Progress bars (over steps and within each capture).
        include_naive: Also capture the naive model as step 0 (unless the run saved a
            checkpoint at step 0, which then is step 0).
        steps: Only these checkpoint steps (default all).
        method: Difference-of-means recipe (:func:`~welfare_lens.welfare_vectors`).
        capture_kwargs: Further :func:`~welfare_lens.capture` arguments (``position``,
            ``batch_size``, ``branches``, ``holdout``, ...); part of the fingerprint except
            ``batch_size``, ``share_prefixes`` and ``checkpoint_every``.
        reuse_model: Load every checkpoint into ``base_model`` (default) or a fresh base model.
        overwrite: Recompute steps whose cached fingerprint differs, instead of raising.

    Returns:
        A :class:`CheckpointSeries` (a mapping ``step -> ConceptVectors``, with ``.stats``).

    Raises:
        DataError: No checkpoints, an unknown step, an empty trajectory set, a reserved
            ``capture_kwargs`` key, or a cached step made from other inputs.
        TrainingError: ``base_model`` is itself a checkpoint, or the run was trained from
            another base model.
    """
    checkpoints = list_checkpoints(run_dir)
    if steps is not None:
        wanted = sorted({int(s) for s in steps})
        have = {s for s, _ in checkpoints}
        unknown = [s for s in wanted if s not in have]
        if unknown:
            raise DataError(
                f"No checkpoint at step(s) {unknown} in {run_dir}; steps are {sorted(have)}.",
                hint="Pass steps from list_checkpoints(run_dir), or steps=None for all.",
            )
        checkpoints = [(s, p) for s, p in checkpoints if s in wanted]
    trajectories = list(trajectories)
    if not trajectories:
        raise DataError(
            "The trajectory set is empty.",
            hint="Pass e.g. wl.maze.shared_prefix_trajectories(cfg, per_class=200).",
        )
    kwargs = dict(capture_kwargs or {})
    reserved = sorted(k for k in kwargs if k in _RESERVED)
    if reserved:
        raise DataError(
            f"capture_kwargs may not set {reserved}: checkpoint_vectors sets them.",
            hint="Pass layers= and progress= to checkpoint_vectors itself.",
        )
    base = model_info(base_model)
    if base.source == "checkpoint":
        raise TrainingError(
            f"base_model is already a trained checkpoint ({base.model_id!r}).",
            hint="Pass the untrained base model the run started from (wl.load_model(...)).",
        )
    for step, path in checkpoints:
        trained_from = (read_state(path).get("model") or {}).get("model_id")
        if trained_from is not None and trained_from != base.model_id:
            raise TrainingError(
                f"checkpoint step {step} was trained from {trained_from!r}, but base_model is "
                f"{base.model_id!r}.",
                hint="Pass the same untrained base model the run started from.",
            )
    chosen = resolve_layers(layers, n_layers(base_model))
    common = {
        "trajectories": _trajectory_digest(trajectories),
        "n_trajectories": len(trajectories),
        "layers": chosen,
        "method": method,
        "capture": _jsonable({k: v for k, v in sorted(kwargs.items()) if k not in _SPEED_ONLY}),
        "base_model_id": base.model_id,
        "coordinate_mode": base.coordinate_mode,
    }
    plan: list[tuple[int, Path | None]] = list(checkpoints)
    if include_naive and all(s != 0 for s, _ in checkpoints):
        plan.insert(0, (0, None))
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    series = CheckpointSeries({}, {}, {}, str(root), str(common["trajectories"]))
    snapshot = _BaseSnapshot(base_model)
    try:
        for step, ckpt in tqdm(plan, desc="checkpoints", disable=not progress):
            step_dir = root / f"step-{step:06d}"
            previous = _read_record(step_dir)
            identity: dict[str, Any] = {**common, "step": step, "checkpoint": None}
            info: dict[str, Any] = {"path": None if ckpt is None else str(ckpt)}
            if ckpt is not None:
                identity["checkpoint"], info["mtimes"] = _checkpoint_identity(ckpt, previous)
            series.checkpoints[step] = info["path"]
            if previous is not None and previous.get("identity") == identity:
                if previous.get("complete") and _saved(step_dir):
                    try:
                        series.vectors[step] = ConceptVectors.load(step_dir / _VECTORS)
                        series.stats[step] = ClassStatistics.load(step_dir / _STATS)
                        series.cached.append(step)
                        continue
                    except (DataError, VectorError) as err:
                        warnings.warn(
                            f"Recomputing step {step}: its cached files are unreadable ({err}).",
                            RuntimeWarning,
                            stacklevel=2,
                        )
            elif previous is not None:
                differ = _differences(previous.get("identity") or {}, identity)
                if not overwrite:
                    raise DataError(
                        f"{step_dir} holds vectors made from other inputs (differing: {differ}).",
                        hint="Pass overwrite=True to recompute them, or use another out_dir.",
                    )
                _remove_pair(step_dir / _STATS)
                _remove_pair(step_dir / _VECTORS)
                _remove_pair(step_dir / _PARTIAL)
            step_dir.mkdir(parents=True, exist_ok=True)
            _write_record(step_dir, identity, info, complete=False)
            if ckpt is None:
                model = base_model
            elif reuse_model:
                snapshot.take()
                model = load_checkpoint(ckpt, base_model)
            else:
                model = load_checkpoint(ckpt, None)
            # Branch capture cannot checkpoint itself; it then restarts the step if killed.
            partial = None if kwargs.get("branches") else step_dir / _PARTIAL
            try:
                stats = capture(
                    model,
                    trajectories,
                    layers=chosen,
                    progress=progress,
                    checkpoint=partial,
                    **kwargs,
                )
            finally:
                if model is base_model:
                    snapshot.restore()
            stats.info.pop("resume", None)
            vectors = welfare_vectors(stats, method, role="control" if ckpt is None else "trained")
            stats.save(step_dir / _STATS)
            vectors.save(step_dir / _VECTORS)
            _write_record(step_dir, identity, info, complete=True)
            _remove_pair(step_dir / _PARTIAL)
            series.vectors[step], series.stats[step] = vectors, stats
            series.computed.append(step)
    finally:
        snapshot.restore()
    return series


# ----------------------------------------------------------------------------------------------
# Rotation table
# ----------------------------------------------------------------------------------------------


def _axis_rows(
    name: str, axis: Any, layers: Sequence[int], reference: ConceptVectors
) -> dict[int, Tensor]:
    """An axis as ``{layer: [d_model] float64}`` over the welfare vectors' layers it covers.

    Accepted: :class:`ConceptVectors` with one vector (or ``(ConceptVectors, name)``), an object
    with ``.pc1`` ``[n, d]`` and ``.layers`` (:class:`~welfare_lens.analysis.EmotionPCA`), a
    mapping ``{layer: [d_model]}``, or a ``[n_layers, d_model]`` tensor whose rows are the
    welfare vectors' layers.
    """
    d_model = reference.d_model
    rows: dict[int, Tensor]
    if isinstance(axis, tuple) and len(axis) == 2 and isinstance(axis[0], ConceptVectors):
        axis = axis[0].select([str(axis[1])])
    if isinstance(axis, ConceptVectors):
        if len(axis) != 1:
            raise DataError(
                f"Axis {name!r} holds {len(axis)} vectors {list(axis.names)}; an axis is one.",
                hint=f"Pass axis.select([{axis.names[0]!r}]) or ({name!r}: (axis, 'name')).",
            )
        a, m = axis.metadata, reference.metadata
        for key in ("coordinate_mode", "hook"):
            if getattr(a, key) != getattr(m, key):
                raise VectorError(
                    f"Axis {name!r} has {key}={getattr(a, key)!r}, the welfare vectors "
                    f"{getattr(m, key)!r}.",
                    hint="Extract the axis in the same coordinates and at the same hook.",
                )
        tensor = axis[axis.names[0]]
        rows = {layer: tensor[i] for i, layer in enumerate(_layers_of(axis))}
    elif hasattr(axis, "pc1") and hasattr(axis, "layers"):
        pc1 = axis.pc1
        rows = {int(layer): pc1[i] for i, layer in enumerate(axis.layers)}
    elif isinstance(axis, Mapping):
        rows = {int(layer): t for layer, t in axis.items()}
    elif isinstance(axis, Tensor):
        if axis.ndim != 2 or axis.shape[0] != len(_layers_of(reference)):
            raise ShapeError(
                f"Axis {name!r} is a tensor of shape {tuple(axis.shape)}; a tensor axis must be "
                f"[n_layers, d_model] = [{len(_layers_of(reference))}, {d_model}], one row per "
                "layer of the welfare vectors.",
                hint="For an axis at a few layers only, pass {layer: [d_model] tensor}.",
            )
        rows = {layer: axis[i] for i, layer in enumerate(_layers_of(reference))}
    else:
        raise DataError(
            f"Axis {name!r} is a {type(axis).__name__}.",
            hint="Pass ConceptVectors (one vector), (ConceptVectors, name), an EmotionPCA, "
            "{layer: tensor} or an [n_layers, d_model] tensor.",
        )
    out: dict[int, Tensor] = {}
    for layer, row in rows.items():
        if layer not in layers:
            continue
        if not isinstance(row, Tensor) or tuple(row.shape) != (d_model,):
            got = tuple(row.shape) if isinstance(row, Tensor) else type(row).__name__
            raise ShapeError(
                f"Axis {name!r} at layer {layer} has shape {got}; expected [{d_model}].",
                hint="Use an axis extracted from the same base model as the welfare vectors.",
            )
        vec = row.detach().to("cpu", torch.float64)
        if not bool(torch.isfinite(vec).all()):
            raise VectorError(
                f"Axis {name!r} holds NaN/Inf at layer {layer}.", hint="Re-extract the axis."
            )
        if float(torch.linalg.vector_norm(vec)) == 0.0:
            raise VectorError(
                f"Axis {name!r} is zero at layer {layer}; it has no direction.",
                hint="Re-extract the axis, or leave that layer out.",
            )
        out[layer] = vec
    if not out:
        raise LayerError(
            f"Axis {name!r} covers none of the layers {list(layers)}.",
            hint="Extract the axis on the layers of the welfare vectors (or pass layers=...).",
        )
    return out


def _stats_layers(stats: ClassStatistics) -> list[int]:
    layers = stats.info.get("layers")
    if isinstance(layers, list | tuple) and len(layers) == stats.n_layers:
        return [int(x) for x in layers]
    return list(range(stats.n_layers))


def _report_layer(layers: Sequence[int]) -> int:
    """The analysed layer nearest to G's layer 21 of 36 (same fraction of the range)."""
    target = layers[0] + round(_PAPER_LAYER_FRACTION * (layers[-1] - layers[0]))
    return min(layers, key=lambda x: abs(x - target))


@dataclass(eq=False, repr=False)
class RotationTable:
    """Alignment of the welfare vectors with fixed naive-model axes at every checkpoint (G).

    Attributes:
        steps: Checkpoint steps, increasing (0 = maze-naive model).
        layers: Model layers analysed.
        names: Welfare vectors compared (``mold``, ``gold``).
        axes: Axis names, e.g. ``prompt_sentiment``, ``emotion_pc1``, ``vaa``.
        cos: ``{axis: {name: [n_steps, n_layers]}}`` cos(v_name, axis); NaN where the axis does
            not cover a layer.
        separation: ``{axis: [n_steps, n_layers]}`` unit-projection separation
            (μ_a − μ_b)·axis/‖axis‖ of the class means, ``(a, b) = separation_classes``;
            ``None`` without class statistics.
        separation_classes: ``(a, b)``; default ``("gold", "mold")``, so the separation is
            positive when Gold-final activations sit further along the axis.
        report_layer: Layer shown by ``repr`` (nearest to G's layer 21 of 36).
        model_ids: Model id of each step's vectors.
    """

    steps: list[int]
    layers: list[int]
    names: list[str]
    axes: list[str]
    cos: dict[str, dict[str, F64]]
    separation: dict[str, F64] | None
    separation_classes: tuple[str, str]
    report_layer: int
    model_ids: dict[int, str] = field(default_factory=dict)

    @property
    def measures(self) -> list[str]:
        """Per-axis quantities: ``cos_<name>`` for each vector, then ``separation`` if present."""
        out = [f"cos_{n}" for n in self.names]
        return [*out, "separation"] if self.separation is not None else out

    def values(self, axis: str, measure: str) -> Float[F64, "n_steps n_layers"]:
        """One quantity for one axis, ``[n_steps, n_layers]``.

        Raises:
            DataError: Unknown axis or measure.
        """
        if axis not in self.axes:
            raise DataError(f"Unknown axis {axis!r}.", hint=f"Use one of {self.axes}.")
        if measure == "separation" and self.separation is not None:
            return self.separation[axis]
        name = measure.removeprefix("cos_")
        if measure.startswith("cos_") and name in self.names:
            return self.cos[axis][name]
        raise DataError(f"Unknown measure {measure!r}.", hint=f"Use one of {self.measures}.")

    def series(self, axis: str, measure: str, layer: int) -> Float[F64, " n_steps"]:
        """One quantity over the steps at one layer.

        Raises:
            LayerError: The layer is not analysed.
        """
        if layer not in self.layers:
            raise LayerError(f"Layer {layer} not in {self.layers}.", hint="Use an analysed layer.")
        return self.values(axis, measure)[:, self.layers.index(layer)]

    def rows(self) -> list[dict[str, Any]]:
        """Flat table: one row per (step, layer, axis) with one column per measure."""
        out: list[dict[str, Any]] = []
        for i, step in enumerate(self.steps):
            for j, layer in enumerate(self.layers):
                for axis in self.axes:
                    row: dict[str, Any] = {"step": step, "layer": layer, "axis": axis}
                    for measure in self.measures:
                        value = float(self.values(axis, measure)[i, j])
                        row[measure] = value if math.isfinite(value) else None
                    out.append(row)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (NaN as None)."""
        return {
            "steps": list(self.steps),
            "layers": list(self.layers),
            "names": list(self.names),
            "axes": list(self.axes),
            "cos": {
                a: {n: [_floats(r) for r in c] for n, c in row.items()}
                for a, row in self.cos.items()
            },
            "separation": None
            if self.separation is None
            else {a: [_floats(r) for r in s] for a, s in self.separation.items()},
            "separation_classes": list(self.separation_classes),
            "report_layer": self.report_layer,
            "model_ids": {str(k): v for k, v in self.model_ids.items()},
        }

    def __repr__(self) -> str:
        j = self.layers.index(self.report_layer)
        first, last = self.steps[0], self.steps[-1]
        lines = [
            f"RotationTable({len(self.steps)} steps {first}..{last}, layers "
            f"{self.layers[0]}..{self.layers[-1]}, axes {self.axes}; at layer "
            f"{self.report_layer}, step {first} -> {last}:"
        ]
        for axis in self.axes:
            cells = []
            for measure in self.measures:
                col = self.values(axis, measure)[:, j]
                cells.append(f"{measure} {col[0]:+.3f} -> {col[-1]:+.3f}")
            lines.append(f"  {axis}: " + ", ".join(cells))
        return "\n".join(lines) + ")"


def rotation_table(
    per_step_vectors: Mapping[int, ConceptVectors],
    axes: Mapping[str, Any],
    *,
    stats: Mapping[int, ClassStatistics] | None = None,
    layers: int | Sequence[int] | None = None,
    names: Sequence[str] = ("mold", "gold"),
    separation_classes: tuple[str, str] = ("gold", "mold"),
    report_layer: int | None = None,
) -> RotationTable:
    """cos(v, axis) and the unit-projection separation at every step, layer and axis (G).

    For every step s, layer ℓ, welfare vector v (``names``) and fixed axis a:
    cos(v_s^(ℓ), a^(ℓ)), computed in float64. With class statistics, also the unit-projection
    separation (μ_{s,Gold}^(ℓ) − μ_{s,Mold}^(ℓ))·a^(ℓ)/‖a^(ℓ)‖: the difference between the mean
    projections of Gold-final and Mold-final samples on the unit axis (G's "unit-normalised
    projection separation"; sign set by ``separation_classes``). G reads layer 21 of 36 on
    three maze-naive axes: the prompt sentiment vector, emotion PC1 and the VAA.

    Args:
        per_step_vectors: ``{step: ConceptVectors}``, e.g. a :class:`CheckpointSeries`.
        axes: ``{name: axis}``; an axis is :class:`ConceptVectors` with one vector,
            ``(ConceptVectors, vector_name)``, an :class:`~welfare_lens.analysis.EmotionPCA`
            (its PC1), ``{layer: [d_model] tensor}``, or an ``[n_layers, d_model]`` tensor with
            one row per layer of the welfare vectors. Axes stay fixed across steps.
        stats: ``{step: ClassStatistics}`` for the separation; taken from a
            :class:`CheckpointSeries` when not given.
        layers: Model layers to analyse (default all layers of the vectors).
        names: Welfare vectors to compare.
        separation_classes: ``(a, b)`` of the separation μ_a − μ_b.
        report_layer: Layer shown by ``repr`` (default: nearest to G's layer 21 of 36).

    Raises:
        DataError: No steps or axes, a missing vector, step statistics or class.
        ShapeError: Steps or axes of different shapes.
        VectorError: Steps in different coordinates, a zero or non-finite axis.
        LayerError: A layer is not covered.
    """
    if not per_step_vectors:
        raise DataError("No steps given.", hint="Pass checkpoint_vectors(...) or {step: v}.")
    if not axes:
        raise DataError(
            "No axes given.",
            hint="Pass e.g. {'prompt_sentiment': sentiment.select(['prompt']), 'emotion_pc1': pca}.",
        )
    if stats is None and isinstance(per_step_vectors, CheckpointSeries):
        stats = per_step_vectors.stats
    steps = sorted(int(s) for s in per_step_vectors)
    vectors = {s: per_step_vectors[s] for s in steps}
    first = vectors[steps[0]]
    vector_layers = _layers_of(first)
    for step, v in vectors.items():
        m, m0 = v.metadata, first.metadata
        if (v.d_model, _layers_of(v)) != (first.d_model, vector_layers):
            raise ShapeError(
                f"Step {step} has vectors at layers {_layers_of(v)} of width {v.d_model}; step "
                f"{steps[0]} at {vector_layers} of width {first.d_model}.",
                hint="Capture every step with the same model and layers (checkpoint_vectors).",
            )
        if (m.coordinate_mode, m.hook) != (m0.coordinate_mode, m0.hook):
            raise VectorError(
                f"Step {step} was captured in {m.coordinate_mode!r}/{m.hook!r}, step "
                f"{steps[0]} in {m0.coordinate_mode!r}/{m0.hook!r}.",
                hint="Capture every step in the same coordinates and at the same hook.",
            )
        missing = [n for n in names if n not in v]
        if missing:
            raise DataError(
                f"Step {step} has no vector(s) {missing}; it has {list(v.names)}.",
                hint="Pass names= that every step has.",
            )
    if layers is None:
        chosen = vector_layers
    else:
        asked = [layers] if isinstance(layers, int) else list(layers)
        outside = [x for x in asked if x not in vector_layers]
        if outside or not asked:
            raise LayerError(
                f"Layer(s) {outside or asked} are not among the vectors' layers {vector_layers}.",
                hint="Pick layers the vectors were captured at.",
            )
        chosen = sorted(set(asked))
    rows = {s: {layer: i for i, layer in enumerate(vector_layers)} for s in steps}
    axis_rows = {name: _axis_rows(name, axis, chosen, first) for name, axis in axes.items()}
    n_s, n_l = len(steps), len(chosen)

    def unit(vec: Tensor) -> Tensor:
        return vec / torch.linalg.vector_norm(vec)

    cos: dict[str, dict[str, F64]] = {}
    for axis_name, a_rows in axis_rows.items():
        cos[axis_name] = {}
        for name in names:
            table = np.full((n_s, n_l), np.nan)
            for i, step in enumerate(steps):
                vec = vectors[step][name]
                for j, layer in enumerate(chosen):
                    if layer not in a_rows:
                        continue
                    row = vec[rows[step][layer]].to(torch.float64)
                    norm = float(torch.linalg.vector_norm(row))
                    if norm > 0:
                        table[i, j] = float(row @ unit(a_rows[layer])) / norm
            cos[axis_name][name] = table
    separation: dict[str, F64] | None = None
    if stats is not None:
        separation = _separation(steps, chosen, stats, axis_rows, separation_classes, first)
    if report_layer is None:
        report = _report_layer(chosen)
    elif report_layer in chosen:
        report = report_layer
    else:
        raise LayerError(f"report_layer {report_layer} not in {chosen}.", hint="Use one of them.")
    return RotationTable(
        steps=steps,
        layers=chosen,
        names=list(names),
        axes=list(axes),
        cos=cos,
        separation=separation,
        separation_classes=(str(separation_classes[0]), str(separation_classes[1])),
        report_layer=report,
        model_ids={s: vectors[s].metadata.model_id for s in steps},
    )


def _separation(
    steps: Sequence[int],
    layers: Sequence[int],
    stats: Mapping[int, ClassStatistics],
    axis_rows: Mapping[str, Mapping[int, Tensor]],
    classes: tuple[str, str],
    reference: ConceptVectors,
) -> dict[str, F64]:
    """(μ_a − μ_b)·â per axis, ``[n_steps, n_layers]``."""
    missing = [s for s in steps if s not in stats]
    if missing:
        raise DataError(
            f"No class statistics for step(s) {missing}.",
            hint="Pass stats for every step (checkpoint_vectors keeps them), or stats=None.",
        )
    diffs: list[dict[int, Tensor]] = []
    for step in steps:
        st = stats[step]
        if st.d_model != reference.d_model:
            raise ShapeError(
                f"The statistics of step {step} have width {st.d_model}, the vectors "
                f"{reference.d_model}.",
                hint="Pass the statistics of the same captures as the vectors.",
            )
        where = {layer: i for i, layer in enumerate(_stats_layers(st))}
        absent = [x for x in layers if x not in where]
        if absent:
            raise LayerError(
                f"The statistics of step {step} do not cover layer(s) {absent}.",
                hint="Pass the statistics of the same captures as the vectors.",
            )
        diff = st.mean(classes[0]) - st.mean(classes[1])
        diffs.append({x: diff[where[x]].to(torch.float64) for x in layers})
    out: dict[str, F64] = {}
    for axis_name, a_rows in axis_rows.items():
        table = np.full((len(steps), len(layers)), np.nan)
        for i, diff_rows in enumerate(diffs):
            for j, layer in enumerate(layers):
                if layer in a_rows:
                    a = a_rows[layer]
                    table[i, j] = float(diff_rows[layer] @ (a / torch.linalg.vector_norm(a)))
        out[axis_name] = table
    return out


# ----------------------------------------------------------------------------------------------
# Reward over training
# ----------------------------------------------------------------------------------------------


@dataclass(eq=False, repr=False)
class RewardSeries:
    """The logged rollout reward of a run and its exponential moving average (G).

    Record k (``metrics.jsonl`` line with ``"step": k``) holds the rollouts sampled by the
    weights after k updates, and checkpoint s holds the weights after s updates. The reward of
    checkpoint s (:meth:`at`) is the EMA after record s − 1: the smoothed reward of the rollouts
    whose updates made those weights (the convention of TRL-style step logging). Step 0, the
    naive model, gets record 0: the naive policy's own rollouts.

    Attributes:
        key: Metric smoothed (default ``reward_mean``, the mean episode return).
        ema: Weight of the previous value: s_k = ema·s_{k−1} + (1 − ema)·r_k.
        debias: Divide by 1 − ema^(k+1) (as TensorBoard/W&B smoothing does), so early values
            are not pulled toward 0; otherwise the EMA starts at the first reward.
        record_steps: Steps of the records with a finite reward, increasing.
        raw: Their rewards.
        smoothed: The EMA at each record.
        checkpoint_steps: Steps reported by :attr:`at_checkpoints` (0 and the run's checkpoints).
        source: Where the metrics came from.
    """

    key: str
    ema: float
    debias: bool
    record_steps: list[int]
    raw: F64
    smoothed: F64
    checkpoint_steps: list[int] = field(default_factory=list)
    source: str | None = None

    def at(self, step: int) -> float:
        """Smoothed reward of the weights of checkpoint ``step`` (see the class docstring).

        Raises:
            DataError: No record before that checkpoint, or the metrics end too early.
        """
        if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
            raise DataError(f"step must be an int >= 0, got {step!r}.", hint="Pass a step.")
        target = 0 if step == 0 else int(step) - 1
        if target > self.record_steps[-1]:
            raise DataError(
                f"Checkpoint step {step} needs the reward of step {target}, but the metrics end "
                f"at step {self.record_steps[-1]}.",
                hint="Pass the metrics.jsonl of the run that wrote the checkpoints.",
            )
        index = int(np.searchsorted(self.record_steps, target, side="right")) - 1
        if index < 0:
            raise DataError(
                f"No {self.key!r} logged at or before step {target} (first record: step "
                f"{self.record_steps[0]}).",
                hint="The metrics file starts after this checkpoint; pass the full file.",
            )
        return float(self.smoothed[index])

    @property
    def at_checkpoints(self) -> dict[int, float]:
        """``{step: smoothed reward}`` for :attr:`checkpoint_steps`."""
        return {s: self.at(s) for s in self.checkpoint_steps}

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {
            "key": self.key,
            "ema": self.ema,
            "debias": self.debias,
            "record_steps": list(self.record_steps),
            "raw": _floats(self.raw),
            "smoothed": _floats(self.smoothed),
            "at_checkpoints": {str(s): r for s, r in self.at_checkpoints.items()},
            "source": self.source,
        }

    def __repr__(self) -> str:
        cells = ", ".join(f"{s}: {r:+.2f}" for s, r in self.at_checkpoints.items())
        return (
            f"RewardSeries({self.key!r}, EMA {self.ema}, {len(self.record_steps)} records "
            f"{self.record_steps[0]}..{self.record_steps[-1]}; at checkpoints {{{cells}}})"
        )


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if isinstance(record, dict):
            records.append(record)
    return records


def reward_series(
    metrics: str | os.PathLike[str] | Sequence[Mapping[str, Any]],
    *,
    key: str = "reward_mean",
    ema: float = 0.9,
    debias: bool = True,
    steps: Iterable[int] | None = None,
) -> RewardSeries:
    """The EMA-smoothed rollout reward of a training run at each checkpoint (G).

    Args:
        metrics: A run folder, its ``metrics.jsonl``, or the records themselves
            (``trainer.history``). Lines cut short by a kill are skipped; a step logged twice
            keeps its last record.
        key: Metric to smooth; ``reward_mean`` is the mean episode return of the step's rollouts.
        ema: Smoothing weight in [0, 1) (0 = no smoothing).
        debias: Bias-corrected EMA (see :class:`RewardSeries`).
        steps: Checkpoint steps to report; default 0 and the checkpoints next to the metrics.

    Raises:
        DataError: Unreadable input, no record with a finite ``key`` (the available keys are
            listed), or ``ema`` outside [0, 1).
    """
    if not 0.0 <= float(ema) < 1.0:
        raise DataError(f"ema must be in [0, 1), got {ema}.", hint="Use e.g. 0.9 (0 = raw).")
    source: str | None = None
    run_dir: Path | None = None
    if isinstance(metrics, str | os.PathLike):
        path = Path(metrics)
        if path.is_dir():
            run_dir, path = path, path / METRICS_FILE
        else:
            run_dir = path.parent
        if not path.is_file():
            raise DataError(
                f"{path} does not exist.",
                hint="Pass a run folder written with GRPOConfig(out_dir=...) or its metrics.jsonl.",
            )
        records = _read_metrics(path)
        source = str(path)
    else:
        records = [dict(r) for r in metrics]
    by_step: dict[int, float] = {}
    seen_keys: set[str] = set()
    for record in records:
        seen_keys.update(k for k, v in record.items() if isinstance(v, int | float))
        step, value = record.get("step"), record.get(key)
        if not isinstance(step, int) or isinstance(value, bool):
            continue
        if isinstance(value, int | float) and math.isfinite(float(value)):
            by_step[step] = float(value)
        else:
            by_step.pop(step, None)  # a later record without the reward replaces the earlier
    if not by_step:
        raise DataError(
            f"No record has a finite {key!r} (of {len(records)} records).",
            hint=f"Pass key= one of {sorted(seen_keys)[:20]}.",
        )
    record_steps = sorted(by_step)
    raw = np.array([by_step[s] for s in record_steps], dtype=np.float64)
    smoothed = np.empty_like(raw)
    state = 0.0 if debias else raw[0]
    for k, value in enumerate(raw):
        state = ema * state + (1.0 - ema) * value
        smoothed[k] = state / (1.0 - ema ** (k + 1)) if debias else state
    if steps is None:
        found = (
            list_checkpoints(run_dir)
            if run_dir is not None and any(run_dir.glob("checkpoint-*"))
            else []
        )
        checkpoint_steps = sorted({0, *(s for s, _ in found)})
    else:
        checkpoint_steps = sorted({int(s) for s in steps})
    series = RewardSeries(
        key=key,
        ema=float(ema),
        debias=bool(debias),
        record_steps=record_steps,
        raw=raw,
        smoothed=smoothed,
        checkpoint_steps=checkpoint_steps,
        source=source,
    )
    for s in checkpoint_steps:
        series.at(s)  # fail now, not when the result is printed
    return series


# ----------------------------------------------------------------------------------------------
# Recruitment
# ----------------------------------------------------------------------------------------------


def _spearman(x: Float[F64, "*batch n"], y: Float[F64, "*batch n"]) -> Float[F64, "*batch"]:
    """Spearman's ρ along the last axis (average ranks for ties); NaN for constant or NaN input."""
    rx = rankdata(x, axis=-1)
    ry = rankdata(y, axis=-1)
    rx = rx - rx.mean(axis=-1, keepdims=True)
    ry = ry - ry.mean(axis=-1, keepdims=True)
    num = (rx * ry).sum(axis=-1)
    den = np.sqrt((rx * rx).sum(axis=-1) * (ry * ry).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan))


def _runs(mask: Sequence[bool]) -> list[tuple[int, int]]:
    """``(start, stop)`` index ranges of the consecutive True entries."""
    out: list[tuple[int, int]] = []
    start: int | None = None
    for i, flag in enumerate([*mask, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            out.append((start, i))
            start = None
    return out


def _band(
    recruited: NDArray[np.bool_], growth: F64, layers: Sequence[int]
) -> tuple[int, int] | None:
    """Longest run of recruited layers; ties go to the larger summed growth, then the first."""
    runs = _runs(recruited.tolist())
    if not runs:
        return None
    best = max(runs, key=lambda r: (r[1] - r[0], float(np.nansum(growth[r[0] : r[1]])), -r[0]))
    return layers[best[0]], layers[best[1] - 1]


def _growth_band(growth: F64, layers: Sequence[int]) -> tuple[int, int] | None:
    """The run around the peak growth where growth ≥ half the peak (None if nothing grew)."""
    if not bool(np.isfinite(growth).any()):
        return None
    peak = int(np.nanargmax(growth))
    top = float(growth[peak])
    if top <= 0:
        return None
    keep = np.nan_to_num(growth, nan=-np.inf) >= top / 2
    for start, stop in _runs(keep.tolist()):
        if start <= peak < stop:
            return layers[start], layers[stop - 1]
    return None  # pragma: no cover - the peak is always in a run


@dataclass(eq=False, repr=False)
class Recruitment:
    """Does alignment with the naive-model axes track the reward over training? (G)

    For every axis, measure (``cos_mold``, ``cos_gold``, ``separation``) and layer ℓ, with
    m_s(ℓ) the measure at checkpoint s and R_s the smoothed reward:

    * ``rho``: Spearman's ρ between (R_s) and (m_s(ℓ)) over the checkpoints (ties: average
      ranks). Its sign is the direction of the rotation.
    * ``ci_low``/``ci_high``: percentile bootstrap interval of ρ; each resample draws
      ``n_steps`` checkpoints with replacement (``np.random.default_rng(seed).integers(0, n,
      (n_boot, n))``), resamples with constant reward or measure are dropped.
    * ``growth``: |m_last(ℓ)| − |m_first(ℓ)|, the change in alignment magnitude from the first
      to the last checkpoint analysed (step 0 = the naive model when included).
    * ``recruited``: the CI excludes 0 *and* ``growth`` > 0, i.e. the alignment follows the
      reward and ends larger in magnitude than it started.
    * ``band``: the **recruitment band**, the longest run of consecutive analysed layers that
      are all recruited (ties: larger summed growth, then the shallower run); ``None`` if no
      layer is recruited.
    * ``growth_band``: the run of consecutive layers around the layer of largest growth where
      the growth is at least half that peak (a half-maximum width); defined even when too few
      checkpoints make every CI include 0, and ``None`` if nothing grew.

    Checkpoints of one run are a time series, not independent draws, and with few of them ρ
    takes few values: the CI is indicative (see :attr:`notes`).

    Attributes:
        steps: Checkpoint steps used.
        rewards: Smoothed reward at each step.
        layers: Analysed layers.
        axes: Axis names.
        measures: Measure names.
        rho, ci_low, ci_high, growth: ``{axis: {measure: [n_layers]}}``.
        recruited: ``{axis: {measure: bool [n_layers]}}``.
        band, growth_band: ``{axis: {measure: (first layer, last layer) or None}}``.
        n_boot: Bootstrap resamples drawn.
        n_valid: Resamples whose reward was not constant.
        level: CI level.
        seed: Bootstrap seed.
        notes: Caveats (few checkpoints, degenerate resamples).
    """

    steps: list[int]
    rewards: F64
    layers: list[int]
    axes: list[str]
    measures: list[str]
    rho: dict[str, dict[str, F64]]
    ci_low: dict[str, dict[str, F64]]
    ci_high: dict[str, dict[str, F64]]
    growth: dict[str, dict[str, F64]]
    recruited: dict[str, dict[str, NDArray[np.bool_]]]
    band: dict[str, dict[str, tuple[int, int] | None]]
    growth_band: dict[str, dict[str, tuple[int, int] | None]]
    n_boot: int
    n_valid: int
    level: float
    seed: int
    notes: list[str] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        """Flat table: one row per (axis, measure, layer)."""
        out: list[dict[str, Any]] = []
        for axis in self.axes:
            for measure in self.measures:
                band, gband = self.band[axis][measure], self.growth_band[axis][measure]
                for j, layer in enumerate(self.layers):
                    values = (
                        self.rho[axis][measure][j],
                        self.ci_low[axis][measure][j],
                        self.ci_high[axis][measure][j],
                        self.growth[axis][measure][j],
                    )
                    rho, lo, hi, growth = _floats(values)
                    out.append(
                        {
                            "axis": axis,
                            "measure": measure,
                            "layer": layer,
                            "rho": rho,
                            "ci_low": lo,
                            "ci_high": hi,
                            "growth": growth,
                            "recruited": bool(self.recruited[axis][measure][j]),
                            "in_band": band is not None and band[0] <= layer <= band[1],
                            "in_growth_band": gband is not None and gband[0] <= layer <= gband[1],
                        }
                    )
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""

        def nested(table: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
            return {a: {m: _floats(v) for m, v in row.items()} for a, row in table.items()}

        def bands(table: Mapping[str, Mapping[str, tuple[int, int] | None]]) -> dict[str, Any]:
            return {
                a: {m: None if b is None else list(b) for m, b in row.items()}
                for a, row in table.items()
            }

        return {
            "steps": list(self.steps),
            "rewards": _floats(self.rewards),
            "layers": list(self.layers),
            "axes": list(self.axes),
            "measures": list(self.measures),
            "rho": nested(self.rho),
            "ci_low": nested(self.ci_low),
            "ci_high": nested(self.ci_high),
            "growth": nested(self.growth),
            "recruited": {
                a: {m: [bool(x) for x in v] for m, v in row.items()}
                for a, row in self.recruited.items()
            },
            "band": bands(self.band),
            "growth_band": bands(self.growth_band),
            "n_boot": self.n_boot,
            "n_valid": self.n_valid,
            "level": self.level,
            "seed": self.seed,
            "notes": list(self.notes),
            "definition": "recruited: bootstrap CI of Spearman rho(reward, measure) excludes 0 "
            "and |measure| grew from the first to the last checkpoint; band: longest run of "
            "consecutive recruited layers; growth_band: half-maximum run around the peak growth",
        }

    def __repr__(self) -> str:
        def span(b: tuple[int, int] | None) -> str:
            return "none" if b is None else f"{b[0]}-{b[1]}"

        lines = [
            f"Recruitment({len(self.steps)} checkpoints {self.steps[0]}..{self.steps[-1]}, "
            f"reward {self.rewards[0]:+.2f} -> {self.rewards[-1]:+.2f}, {self.n_boot} bootstrap "
            f"resamples, {self.level:.0%} CI"
        ]
        for axis in self.axes:
            for measure in self.measures:
                g = self.growth[axis][measure]
                peak = ""
                if bool(np.isfinite(g).any()):
                    j = int(np.nanargmax(g))
                    peak = (
                        f"; peak growth {g[j]:+.3f} at layer {self.layers[j]} (rho "
                        f"{self.rho[axis][measure][j]:+.2f} [{self.ci_low[axis][measure][j]:+.2f}, "
                        f"{self.ci_high[axis][measure][j]:+.2f}])"
                    )
                lines.append(
                    f"  {axis}/{measure}: band {span(self.band[axis][measure])}, growth band "
                    f"{span(self.growth_band[axis][measure])}{peak}"
                )
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines) + ")"


def recruitment(
    table: RotationTable,
    rewards: RewardSeries | Mapping[int, float],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Recruitment:
    """Spearman's ρ of reward vs alignment per layer and axis, bootstrap CIs, recruitment band (G).

    G reports that cosine alignment and the unit-projection separation grow about
    monotonically with the EMA rollout reward, then plateau, over a band of layers (~18-28 of
    36). See :class:`Recruitment` for the exact definitions of ρ, its CI, the growth, the
    recruited layers and the two bands.

    Args:
        table: :func:`rotation_table` output.
        rewards: :func:`reward_series` output, or ``{step: reward}`` for every step of the table.
        n_boot: Bootstrap resamples of the checkpoints.
        seed: Bootstrap seed (same seed, same CIs).
        level: CI level.

    Raises:
        DataError: Fewer than 3 steps, a step without a reward, non-finite rewards, or bad
            ``n_boot``/``level``.
    """
    steps = list(table.steps)
    n = len(steps)
    if n < 3:
        raise DataError(
            f"Spearman's rho over checkpoints needs at least 3 steps; the table has {steps}.",
            hint="Save checkpoints more often (GRPOConfig.checkpoint_every) and include step 0.",
        )
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise DataError(f"n_boot must be a positive int, got {n_boot!r}.", hint="Use e.g. 1000.")
    if not 0.0 < level < 1.0:
        raise DataError(f"level must be in (0, 1), got {level}.", hint="Use e.g. 0.95.")
    if isinstance(rewards, RewardSeries):
        r = np.array([rewards.at(s) for s in steps], dtype=np.float64)
    else:
        missing = [s for s in steps if s not in rewards]
        if missing:
            raise DataError(
                f"No reward for step(s) {missing}.",
                hint="Pass reward_series(run_dir) or a reward for every step of the table.",
            )
        r = np.array([float(rewards[s]) for s in steps], dtype=np.float64)
    if not bool(np.isfinite(r).all()):
        raise DataError("The rewards contain NaN/Inf.", hint="Check the metrics file.")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    r_boot = r[idx]  # [B, n]
    constant = (r_boot == r_boot[:, :1]).all(axis=1)
    n_valid = int((~constant).sum())
    tail = 100.0 * (1.0 - level) / 2.0
    out: dict[str, dict[str, dict[str, Any]]] = {
        k: {} for k in ("rho", "lo", "hi", "growth", "rec", "band", "gband")
    }
    for axis in table.axes:
        for key in out:
            out[key][axis] = {}
        for measure in table.measures:
            y = table.values(axis, measure).T  # [L, n]
            rho = _spearman(r[None, :], y)
            boot = _spearman(r_boot[None, :, :], y[:, idx])  # [L, B]
            boot[:, constant] = np.nan
            lo = np.full(len(table.layers), np.nan)
            hi = np.full(len(table.layers), np.nan)
            for j in range(len(table.layers)):
                finite = boot[j][np.isfinite(boot[j])]
                if finite.size:
                    lo[j], hi[j] = np.percentile(finite, [tail, 100.0 - tail])
            growth = np.abs(y[:, -1]) - np.abs(y[:, 0])
            with np.errstate(invalid="ignore"):
                rec = ((lo > 0) | (hi < 0)) & (growth > 0)
            out["rho"][axis][measure] = rho
            out["lo"][axis][measure] = lo
            out["hi"][axis][measure] = hi
            out["growth"][axis][measure] = growth
            out["rec"][axis][measure] = rec
            out["band"][axis][measure] = _band(rec, growth, table.layers)
            out["gband"][axis][measure] = _growth_band(growth, table.layers)
    notes: list[str] = []
    if n < _FEW_CHECKPOINTS:
        notes.append(
            f"only {n} checkpoints: Spearman's rho over {n} points takes few values and the "
            "bootstrap CI (resampling checkpoints) is wide, or degenerate ([1, 1]) for a "
            "perfectly monotone series; read the bands as descriptive (the paper's primary run "
            "has 19 checkpoints)."
        )
    if n_valid < n_boot:
        notes.append(
            f"{n_boot - n_valid} of {n_boot} resamples drew a constant reward and were dropped."
        )
    if float(np.ptp(r)) == 0.0:
        notes.append("the reward is constant over these steps: rho is undefined (NaN).")
    notes.append(
        "checkpoints of one run are a time series, not independent draws; the bootstrap treats "
        "them as exchangeable, so the CI is indicative."
    )
    return Recruitment(
        steps=steps,
        rewards=r,
        layers=list(table.layers),
        axes=list(table.axes),
        measures=list(table.measures),
        rho=out["rho"],
        ci_low=out["lo"],
        ci_high=out["hi"],
        growth=out["growth"],
        recruited=out["rec"],
        band=out["band"],
        growth_band=out["gband"],
        n_boot=n_boot,
        n_valid=n_valid,
        level=float(level),
        seed=int(seed),
        notes=notes,
    )
