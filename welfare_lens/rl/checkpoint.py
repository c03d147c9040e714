"""Checkpoints of the GRPO trainer: safetensors + JSON, resumable exactly (DESIGN, "Formats").

A checkpoint is a folder::

    checkpoint-000050/
      adapter_model.safetensors   LoRA weights (PEFT's format; or model.safetensors for full FT)
      adapter_config.json         PEFT's adapter config (LoRA only)
      optimizer.safetensors       AdamW moments and step counts
      rng.safetensors             torch and numpy RNG states
      trainer_state.json          step, GRPOConfig, MazeConfig, base-model spec, optimizer
                                  param groups, python/numpy RNG scalars

It is written into a temporary folder and renamed into place, so a run killed while saving
never leaves a half-written checkpoint behind. No pickle is involved anywhere.

Resuming restores the weights, the optimizer, the RNG states and the step; since the mazes and
samples of step ``s`` are derived from ``(seed, s)``, a resumed run repeats exactly the steps an
uninterrupted run would have taken. :func:`load_checkpoint` gives back a TransformerBridge of the
trained policy (LoRA merged by default) for extraction and analysis.

The saved parameter names are those of the HF model *inside* the bridge (TransformerBridge wraps
each module, so the names contain ``._original_component``); they load back into a bridge of the
same base model, which is how welfare_lens uses them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
import warnings
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from welfare_lens.errors import TrainingError
from welfare_lens.maze.config import MazeConfig
from welfare_lens.models import ModelInfo, load_model, model_info
from welfare_lens.rl.config import GRPOConfig

if TYPE_CHECKING:
    from welfare_lens.rl.trainer import EnvFactory, GRPOTrainer

__all__ = [
    "CHECKPOINT_FORMAT",
    "STATE_FILE",
    "latest_checkpoint",
    "load_checkpoint",
    "model_spec",
    "read_state",
    "resume_trainer",
    "save_trainer",
]

CHECKPOINT_FORMAT = 1
STATE_FILE = "trainer_state.json"
ADAPTER_FILE = "adapter_model.safetensors"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
METRICS_FILE = "metrics.jsonl"


# --------------------------------------------------------------------------------------------
# Base-model spec
# --------------------------------------------------------------------------------------------


def model_spec(model: Any) -> dict[str, Any]:
    """How to load ``model``'s base weights again with :func:`welfare_lens.load_model`.

    Returns:
        ``{"name", "seed", "model_id", "source", "coordinate_mode", "dtype"}``; ``name`` is
        ``None`` for bridges not loaded by :func:`~welfare_lens.load_model`.
    """
    info = model_info(model)
    name: str | None
    seed = 0
    if info.source == "tiny":
        seed = int(info.extra.get("seed", 0))
        name = info.model_id.removesuffix(f"-seed{seed}")
    elif info.source in ("bundled", "local", "gguf", "hub"):
        name = info.model_id
    else:
        name = None
    dtype = str(getattr(getattr(model, "cfg", None), "dtype", "torch.float32"))
    return {
        "name": name,
        "seed": seed,
        "model_id": info.model_id,
        "source": info.source,
        "coordinate_mode": info.coordinate_mode,
        "dtype": dtype,
    }


def _load_base(spec: Mapping[str, Any]) -> Any:
    name = spec.get("name")
    if not name:
        raise TrainingError(
            f"The checkpoint's base model {spec.get('model_id')!r} was not loaded by "
            "welfare_lens.load_model, so it cannot be reloaded automatically.",
            hint="Pass the untrained base model: load_checkpoint(path, model=...).",
        )
    dtype = getattr(torch, str(spec.get("dtype", "torch.float32")).removeprefix("torch."), None)
    return load_model(
        str(name),
        seed=int(spec.get("seed", 0)),
        compatibility_mode=spec.get("coordinate_mode") == "compat",
        dtype=dtype if isinstance(dtype, torch.dtype) else torch.float32,
    )


def _check_base(model: Any, spec: Mapping[str, Any]) -> None:
    have = model_info(model).model_id
    want = spec.get("model_id")
    if want is not None and have != want:
        raise TrainingError(
            f"The checkpoint was trained from {want!r}, but the model given is {have!r}.",
            hint="Pass the same untrained base model, or model=None to load it from the spec.",
        )


# --------------------------------------------------------------------------------------------
# Locating and reading
# --------------------------------------------------------------------------------------------


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint with the highest step in ``run_dir`` (``checkpoint-*``), or ``None``."""
    root = Path(run_dir)
    found = [p for p in root.glob("checkpoint-*") if (p / STATE_FILE).is_file()]
    if not found:
        return None
    return max(found, key=lambda p: int(read_state(p)["global_step"]))


def _resolve(path: str | Path) -> Path:
    p = Path(path)
    if (p / STATE_FILE).is_file():
        return p
    if p.is_dir():
        latest = latest_checkpoint(p)
        if latest is not None:
            return latest
    raise TrainingError(
        f"{p} is neither a checkpoint (no {STATE_FILE}) nor a run folder with checkpoints.",
        hint="Pass a checkpoint-XXXXXX folder or the run's out_dir.",
    )


def read_state(path: str | Path) -> dict[str, Any]:
    """The ``trainer_state.json`` of a checkpoint folder.

    Raises:
        TrainingError: if it is missing, unreadable or of another format version.
    """
    file = Path(path) / STATE_FILE
    try:
        state: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise TrainingError(
            f"Cannot read {file}: {err}", hint="Pass a folder written by save_checkpoint()."
        ) from err
    if state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(
            f"{file} has checkpoint format {state.get('format')!r}; this version reads "
            f"{CHECKPOINT_FORMAT}.",
            hint="Load it with the welfare_lens version that wrote it.",
        )
    return state


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def _contiguous(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def _optimizer_payload(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                # 0-d tensors (Adam's step) are stored as 1-element tensors and squeezed back.
                tensors[f"state.{index}.{key}"] = value.reshape(-1) if value.ndim == 0 else value
                if value.ndim == 0:
                    scalars.setdefault(str(index), {})[f"{key}.__0d__"] = True
            else:
                scalars.setdefault(str(index), {})[key] = value
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
        for g in sd["param_groups"]
    ]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _rng_payload() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    version, py_state, gauss_next = random.getstate()
    tensors = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = st
    meta = {
        "numpy": [str(name), int(pos), int(has_gauss), float(cached)],
        "python": [int(version), [int(x) for x in py_state], gauss_next],
    }
    return tensors, meta


def save_trainer(trainer: GRPOTrainer, path: str | Path | None = None) -> Path:
    """Write ``trainer``'s checkpoint; see the module docstring for the layout.

    Args:
        trainer: The trainer.
        path: Target folder (default ``out_dir/checkpoint-{global_step:06d}``).

    Returns:
        The checkpoint folder.

    Raises:
        TrainingError: if no path is given and the config has no ``out_dir``.
    """
    if path is None:
        if trainer.out_dir is None:
            raise TrainingError(
                "No checkpoint path and no out_dir.", hint="Pass a path or set GRPOConfig.out_dir."
            )
        target = trainer.out_dir / f"checkpoint-{trainer.global_step:06d}"
    else:
        target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        hf = trainer.model.original_model
        if trainer.peft_model is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trainer.peft_model.save_pretrained(str(tmp))
            if not (tmp / ADAPTER_FILE).is_file():  # pragma: no cover - PEFT layout changed
                from peft import get_peft_model_state_dict

                save_file(
                    _contiguous(get_peft_model_state_dict(trainer.peft_model)), tmp / ADAPTER_FILE
                )
        else:
            save_file(_contiguous(dict(hf.named_parameters())), tmp / MODEL_FILE)
        opt_tensors, opt_meta = _optimizer_payload(trainer.optimizer)
        save_file(_contiguous(opt_tensors), tmp / OPTIMIZER_FILE)
        rng_tensors, rng_meta = _rng_payload()
        save_file(_contiguous(rng_tensors), tmp / RNG_FILE)
        state = {
            "format": CHECKPOINT_FORMAT,
            "global_step": trainer.global_step,
            "config": trainer.config.to_dict(),
            "maze_cfg": trainer.maze_cfg.to_dict(),
            "model": model_spec(trainer.model),
            "finetune": trainer.config.finetune,
            "optimizer": opt_meta,
            "rng": rng_meta,
            "no_signal_steps": trainer._no_signal_steps,
            "custom_env": trainer.env_factory is not None,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's safetensors file; missing, truncated or corrupt files are TrainingErrors."""
    if not file.is_file():
        raise TrainingError(
            f"{file} is missing: the checkpoint is incomplete.",
            hint="Load an earlier checkpoint-* folder of the run, or re-run the training.",
        )
    try:
        return load_file(str(file))
    except Exception as err:  # safetensors raises its own error types for truncation/garbage
        raise TrainingError(
            f"{file} could not be read as safetensors ({type(err).__name__}: {err}); it is "
            "truncated or corrupt.",
            hint="Load an earlier checkpoint-* folder of the run, or re-run the training.",
        ) from err


def _load_weights(trainer: GRPOTrainer, ckpt: Path) -> None:
    if trainer.peft_model is not None:
        from peft import set_peft_model_state_dict

        file = ckpt / ADAPTER_FILE
        if not file.is_file():
            raise TrainingError(
                f"{ckpt} has no {ADAPTER_FILE}: it is not a LoRA checkpoint.",
                hint="Resume with the finetune mode the run was trained with.",
            )
        result = set_peft_model_state_dict(trainer.peft_model, _read_tensors(file))
        unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
        if unexpected:
            raise TrainingError(
                f"The adapter does not fit this model: unexpected keys {unexpected[:3]}.",
                hint="Resume with the same base model and LoRA settings.",
            )
        return
    _load_full(trainer.model.original_model, ckpt)


def _load_full(hf: Any, ckpt: Path) -> None:
    file = ckpt / MODEL_FILE
    if not file.is_file():
        raise TrainingError(
            f"{ckpt} has no {MODEL_FILE}: it is not a full fine-tuning checkpoint.",
            hint="LoRA checkpoints hold adapter_model.safetensors.",
        )
    saved = _read_tensors(file)
    params = dict(hf.named_parameters())
    missing = sorted(set(params) - set(saved))
    extra = sorted(set(saved) - set(params))
    if missing or extra:
        raise TrainingError(
            f"The checkpoint's weights do not match the model (missing {missing[:3]}, "
            f"unexpected {extra[:3]}).",
            hint="Load it into the same base model it was trained from.",
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name].to(p.device, p.dtype))


def _load_optimizer(trainer: GRPOTrainer, ckpt: Path, meta: Mapping[str, Any]) -> None:
    tensors = _read_tensors(ckpt / OPTIMIZER_FILE)
    scalars: Mapping[str, Mapping[str, Any]] = meta.get("scalars", {})
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        zero_d = bool(scalars.get(index, {}).get(f"{name}.__0d__", False))
        state.setdefault(int(index), {})[name] = value.reshape(()) if zero_d else value
    for index, entries in scalars.items():
        for name, value in entries.items():
            if not name.endswith(".__0d__"):
                state.setdefault(int(index), {})[name] = value
    groups = []
    for g in meta["param_groups"]:
        group = dict(g)
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    try:
        trainer.optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as err:
        raise TrainingError(
            f"The optimizer state does not fit this trainer: {err}",
            hint="Resume with the same base model, finetune mode and LoRA settings.",
        ) from err


def _restore_rng(ckpt: Path, meta: Mapping[str, Any]) -> None:
    tensors = _read_tensors(ckpt / RNG_FILE)
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    name, pos, has_gauss, cached = meta["numpy"]
    keys = tensors["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state((name, keys, int(pos), int(has_gauss), float(cached)))
    version, py_state, gauss_next = meta["python"]
    random.setstate((int(version), tuple(int(x) for x in py_state), gauss_next))


def _truncate_metrics(out_dir: Path, step: int) -> list[dict[str, Any]]:
    file = out_dir / METRICS_FILE
    if not file.is_file():
        return []
    kept: list[dict[str, Any]] = []
    lines: list[str] = []
    for line in file.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if int(record.get("step", -1)) < step:
            kept.append(record)
            lines.append(line)
    file.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return kept


def resume_trainer(
    cls: type[GRPOTrainer],
    path: str | Path,
    model: Any = None,
    *,
    env_factory: EnvFactory | None = None,
    out_dir: str | Path | None = None,
) -> GRPOTrainer:
    """Rebuild a trainer from a checkpoint; see :meth:`GRPOTrainer.resume`.

    Metrics logged after the checkpoint by the interrupted run are dropped from
    ``metrics.jsonl``, since the resumed run logs those steps again.

    Raises:
        TrainingError: if the checkpoint is unreadable, was trained from another base model, or
            used a custom environment that is not given again.
    """
    ckpt = _resolve(path)
    state = read_state(ckpt)
    config = GRPOConfig.from_dict(state["config"])
    if out_dir is not None:
        config = replace(config, out_dir=str(out_dir))
    if state.get("custom_env") and env_factory is None:
        raise TrainingError(
            "The run used a custom env_factory, which a checkpoint cannot store.",
            hint="Pass the same env_factory to resume().",
        )
    maze_cfg = MazeConfig.from_dict(state["maze_cfg"])
    if model is None:
        model = _load_base(state["model"])
    else:
        _check_base(model, state["model"])
    trainer = cls(model, maze_cfg, config, env_factory=env_factory)
    _load_weights(trainer, ckpt)
    _load_optimizer(trainer, ckpt, state["optimizer"])
    trainer.global_step = int(state["global_step"])
    trainer._no_signal_steps = int(state.get("no_signal_steps", 0))
    _restore_rng(ckpt, state["rng"])
    if trainer.out_dir is not None:
        trainer.history = _truncate_metrics(trainer.out_dir, trainer.global_step)
    return trainer


def _merge_in_place(sites: list[tuple[Any, str, Any]]) -> None:
    """Merge each LoRA layer into its base weight and put the original module back.

    PEFT's ``merge_and_unload`` replaces modules through one of the several paths under which
    TransformerBridge registers them, which leaves the HF model calling plain ``nn.Linear``
    modules outside the bridge's wrappers (their hooks then never fire). Here the adapted layer
    is merged in place and the *same* ``nn.Linear`` object returns to the wrapper it came from.
    """
    for parent, attr, original in sites:
        layer = getattr(parent, attr)
        if layer is original:
            continue
        if getattr(layer, "base_layer", None) is not original:
            raise TrainingError(
                f"Unexpected module at {attr!r} after loading the adapter: {type(layer).__name__}.",
                hint="Load with merge=False to keep the adapter separate.",
            )
        layer.merge()
        setattr(parent, attr, original)


def load_checkpoint(path: str | Path, model: Any = None, *, merge: bool = True) -> Any:
    """The trained policy of a checkpoint as a TransformerBridge (for extraction and analysis).

    Args:
        path: A checkpoint folder, or a run folder (its latest checkpoint).
        model: The untrained base model to load the weights into (modified in place); loaded
            from the recorded spec if ``None``.
        merge: Merge the LoRA adapter into the weights (a plain model, as fast as the base).
            With ``False`` the adapter stays separate, at ``model.welfare_lens_peft``
            (``with model.welfare_lens_peft.disable_adapter():`` then gives the base model).

    Returns:
        The bridge. Its :class:`~welfare_lens.models.ModelInfo` names the checkpoint, so vectors
        extracted from it are not mistaken for the base model's.

    Raises:
        TrainingError: if the checkpoint is unreadable or does not fit the model.
    """
    ckpt = _resolve(path)
    state = read_state(ckpt)
    config = GRPOConfig.from_dict(state["config"])
    if model is None:
        model = _load_base(state["model"])
    else:
        _check_base(model, state["model"])
    hf = model.original_model
    if config.finetune == "lora":
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

        from welfare_lens.rl.trainer import _fork_rng, lora_target_modules

        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=lora_target_modules(hf),
            bias="none",
        )
        sites = [
            (hf.get_submodule(parent), attr, hf.get_submodule(name))
            for name in lora.target_modules or ()
            for parent, _, attr in [name.rpartition(".")]
        ]
        adapter = _read_tensors(ckpt / ADAPTER_FILE)  # before the model is modified in place
        with _fork_rng(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peft_model = get_peft_model(hf, lora)
        set_peft_model_state_dict(peft_model, adapter)
        if merge:
            _merge_in_place(sites)
        else:
            model.welfare_lens_peft = peft_model
        for p in hf.parameters():
            p.requires_grad_(False)
    else:
        _load_full(hf, ckpt)
    base = model_info(model)
    model.welfare_lens_info = ModelInfo(
        model_id=f"{base.model_id}@{ckpt.parent.name}/{ckpt.name}",
        source="checkpoint",
        kind=base.kind,
        coordinate_mode=base.coordinate_mode,
        load_seconds=base.load_seconds,
        extra={
            **base.extra,
            "checkpoint": str(ckpt),
            "step": int(state["global_step"]),
            "base_model_id": base.model_id,
            "finetune": config.finetune,
            "merged": bool(merge) if config.finetune == "lora" else True,
        },
    )
    model.eval()
    return model
