"""Move concept vectors to and from other tools: control-vector GGUF and plain tensor files.

Two families of formats:

* **Control-vector GGUF** (llama.cpp ``--control-vector``, repeng's
  ``ControlVector.export_gguf``/``import_gguf``): one direction per layer, for one vector. The
  file has ``general.architecture = "controlvector"``, a string ``controlvector.model_hint``
  (repeng writes ``model.config.model_type``, llama.cpp's generator the model's architecture;
  nothing checks it), an integer ``controlvector.layer_count`` (the number of direction tensors),
  and one 1-D float32 tensor ``direction.{k}`` of ``n_embd`` values per steered layer.
  :func:`export_gguf` also writes ``welfare_lens.name``, ``welfare_lens.layer_offset`` and
  ``welfare_lens.metadata`` (the :class:`~welfare_lens.vectors.VectorMetadata` as JSON), which
  the other tools ignore and :func:`import_gguf` uses to restore the provenance.
* **Plain tensors**: ``.pt`` (``torch.save`` of a plain dict ``{name: [n_layers, d_model]}``),
  ``.npz`` (one array per name) and ``.npy`` (one ``[n_layers, d_model]`` array). ``.pt`` and
  ``.npz`` also carry the metadata as a JSON string under ``"__welfare_lens_metadata__"`` unless
  ``metadata=False``. Reading never unpickles: ``torch.load(..., weights_only=True)`` and
  ``numpy.load(..., allow_pickle=False)``.

Layer numbering (``layer_offset``)
----------------------------------

welfare_lens "layer ℓ" is the output of block ℓ (``blocks.ℓ.hook_resid_post``, HF
``hidden_states[ℓ + 1]``), and :func:`~welfare_lens.steering.steer` adds α·v there. In the GGUF
file the tensor of welfare_lens layer ℓ is named ``direction.{ℓ + layer_offset}``:

* ``layer_offset=0`` (default): where llama.cpp and repeng *add* a direction. llama.cpp's graph
  calls ``build_cvec(cur, il)`` at the end of block ``il`` (0-based) and adds ``direction.{il}``
  there (``llama_adapter_cvec::apply_to``); repeng's ``direction.{i}`` belongs to
  ``model.layers[i]``, read from ``hidden_states[i + 1]`` and added to that block's output. So
  ``direction.ℓ`` steers exactly where ``steer(model, v, layer=ℓ)`` does. llama.cpp never steers
  block 0: it rejects a file holding ``direction.0`` ("invalid (zero) direction tensor layer
  index"), so with this offset layer 0 is left out of exported files.
* ``layer_offset=1``: the numbering of llama.cpp's own ``cvector-generator``, which names the
  direction it read from the output of block ``k − 1`` (``l_out-{k-1}``) ``direction.{k}``, i.e.
  "``direction.1`` is the output of block 0". Use it to exchange files with that tool's
  extraction convention; note that llama.cpp then adds such a direction one block later than
  where it was read.

:func:`import_gguf` reads the offset recorded by :func:`export_gguf` when there is one, so a
round trip restores the layers whatever the offset.

Example:
    >>> from welfare_lens.interop import export_gguf, import_gguf
    >>> export_gguf(v, "runs/smollm2/gold.gguf", name="gold", model_hint="llama")
    >>> # llama-cli -m model.gguf --control-vector-scaled runs/smollm2/gold.gguf 2.0
    >>> back = import_gguf("runs/smollm2/gold.gguf")
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from welfare_lens.errors import DataError, LayerError, ShapeError, VectorError
from welfare_lens.hooks import resolve_layer
from welfare_lens.vectors import ConceptVectors, VectorMetadata

__all__ = [
    "GGUF_ARCHITECTURE",
    "METADATA_KEY",
    "export_gguf",
    "export_tensors",
    "import_gguf",
    "import_tensors",
]

#: ``general.architecture`` of a control-vector GGUF (llama.cpp, repeng).
GGUF_ARCHITECTURE = "controlvector"
#: Key of the JSON metadata string in ``.pt`` / ``.npz`` files.
METADATA_KEY = "__welfare_lens_metadata__"
_TENSOR_SUFFIXES = (".pt", ".npz", ".npy")
_DIRECTION = "direction."


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` and rename it into place when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp" + path.suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            with contextlib.suppress(OSError):
                tmp.unlink()


def _pick_name(vectors: ConceptVectors, name: str | None) -> str:
    if name is None:
        if len(vectors.names) != 1:
            raise VectorError(
                f"Which vector? These ConceptVectors hold {list(vectors.names)}.",
                hint="Pass name='gold' (or 'mold', ...): a control-vector file holds one vector.",
            )
        return vectors.names[0]
    if name not in vectors:
        raise VectorError(
            f"No vector named {name!r}; available: {list(vectors.names)}.",
            hint="Pass one of the names listed.",
        )
    return name


def _metadata_json(metadata: VectorMetadata) -> str:
    try:
        return json.dumps(metadata.to_dict(), allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"The vectors' metadata is not JSON-serialisable: {exc}",
            hint="Keep metadata.extra to str, int, float, bool, list and dict values (no NaN).",
        ) from exc


def _metadata_from_json(text: str, path: Path) -> VectorMetadata:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, TypeError) as exc:
        raise DataError(
            f"The welfare_lens metadata in {path} is not valid JSON ({exc}).",
            hint="The file is damaged; export the vectors again, or pass metadata=False.",
        ) from exc
    if not isinstance(data, dict):
        raise DataError(
            f"The welfare_lens metadata in {path} is not a JSON object.",
            hint="The file is damaged; export the vectors again.",
        )
    return VectorMetadata.from_dict(data)


def _default_metadata(
    n_layers: int, d_model: int, model_id: str | None, model: Any, source: str
) -> VectorMetadata:
    mode = "raw"
    if model is not None:
        from welfare_lens.models import model_info

        info = model_info(model)
        model_id = model_id or info.model_id
        mode = info.coordinate_mode
    return VectorMetadata(
        model_id=model_id or "unknown",
        d_model=d_model,
        n_layers=n_layers,
        coordinate_mode=mode,
        method="imported",
        extra={"imported_from": source},
    )


def _finish(vectors: dict[str, Tensor], metadata: VectorMetadata, path: Path) -> ConceptVectors:
    """Build the ConceptVectors, naming the file in shape and NaN/Inf errors."""
    try:
        return ConceptVectors(vectors, metadata)
    except ShapeError as exc:
        raise ShapeError(f"{path}: {exc.message}", hint=exc.hint) from exc
    except VectorError as exc:
        raise VectorError(f"{path}: {exc.message}", hint=exc.hint) from exc


def _check_model(vectors: ConceptVectors, model: Any) -> ConceptVectors:
    if model is not None:
        vectors.check_compatible(model, allow_other_checkpoint=True)
    return vectors


# ----------------------------------------------------------------------------------------------
# Control-vector GGUF
# ----------------------------------------------------------------------------------------------


def export_gguf(
    vectors: ConceptVectors,
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    layers: Sequence[int] | None = None,
    model_hint: str | None = None,
    layer_offset: int = 0,
) -> Path:
    """Write one vector as a llama.cpp / repeng control-vector GGUF file.

    Args:
        vectors: The concept vectors.
        path: Output file (``.gguf``); written atomically.
        name: Which vector (may be omitted when ``vectors`` holds one).
        layers: welfare_lens layers to write (default: every layer whose GGUF index
            ``layer + layer_offset`` is at least 1, i.e. all but layer 0 with the default offset).
        model_hint: ``controlvector.model_hint`` (repeng: ``model.config.model_type``, e.g.
            ``"llama"``); default: the vectors' model id.
        layer_offset: ``direction.{layer + layer_offset}`` names layer ``layer`` (module
            docstring): 0 for where llama.cpp and repeng add the direction, 1 for llama.cpp's
            cvector-generator numbering.

    Returns:
        The path written.

    Raises:
        VectorError: ``name`` is missing or unknown.
        LayerError: A layer is out of range, or maps to ``direction.0`` (llama.cpp rejects it).
    """
    import gguf

    key = _pick_name(vectors, name)
    if isinstance(layer_offset, bool) or not isinstance(layer_offset, int) or layer_offset < 0:
        raise LayerError(
            f"layer_offset must be a non-negative integer, got {layer_offset!r}.",
            hint="Use 0 (where llama.cpp/repeng add a direction) or 1 (cvector-generator).",
        )
    total = vectors.n_layers
    if layers is None:
        chosen = [layer for layer in range(total) if layer + layer_offset >= 1]
    else:
        chosen = sorted({resolve_layer(layer, total) for layer in layers})
    if not chosen:
        raise LayerError(
            f"No layer to export: a {total}-layer vector has no layer with a GGUF index >= 1 "
            f"at layer_offset={layer_offset}.",
            hint="Use layer_offset=1 to write layer 0 as direction.1.",
        )
    if chosen[0] + layer_offset == 0:
        raise LayerError(
            "Layer 0 would be written as direction.0, which llama.cpp rejects (it never steers "
            "the output of block 0 under this numbering).",
            hint="Leave layer 0 out, or pass layer_offset=1 (cvector-generator numbering).",
        )
    vec = vectors[key].detach().to(device="cpu", dtype=torch.float32)
    target = Path(path)
    with _atomic_path(target) as tmp:
        writer = gguf.GGUFWriter(str(tmp), GGUF_ARCHITECTURE)
        writer.add_string(
            f"{GGUF_ARCHITECTURE}.model_hint", model_hint or vectors.metadata.model_id
        )
        writer.add_int32(f"{GGUF_ARCHITECTURE}.layer_count", len(chosen))
        writer.add_string("welfare_lens.name", key)
        writer.add_int32("welfare_lens.layer_offset", layer_offset)
        writer.add_string("welfare_lens.metadata", _metadata_json(vectors.metadata))
        for layer in chosen:
            writer.add_tensor(
                f"{_DIRECTION}{layer + layer_offset}", np.ascontiguousarray(vec[layer].numpy())
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return target


def _gguf_field(reader: Any, key: str) -> Any:
    field = reader.get_field(key)
    if field is None or not len(field.types):
        return None
    return field.contents()


def import_gguf(
    path: str | os.PathLike[str],
    *,
    model: Any = None,
    n_layers: int | None = None,
    name: str | None = None,
    model_id: str | None = None,
    layer_offset: int | None = None,
) -> ConceptVectors:
    """Read a control-vector GGUF (llama.cpp, repeng, or :func:`export_gguf`).

    Layers the file does not hold (llama.cpp files never hold layer 0) are zero vectors; they
    are listed in ``metadata.extra["gguf_missing_layers"]``.

    Args:
        path: The ``.gguf`` file.
        model: A model to shape the vectors for and check them against (``d_model`` and
            ``n_layers`` must match; another checkpoint of the same shape is accepted).
        n_layers: Number of layers of the result. Default: the recorded welfare_lens metadata,
            else ``model.cfg.n_layers``, else the highest layer in the file plus one.
        name: Name of the vector (default: the recorded name, else ``"vector"``).
        model_id: Model id for files without welfare_lens metadata (default: the model's id,
            else ``"unknown"``; the file's ``model_hint`` is kept in ``metadata.extra``).
        layer_offset: ``direction.{k}`` is layer ``k - layer_offset`` (module docstring).
            Default: the offset recorded by :func:`export_gguf`, else 0.

    Returns:
        ConceptVectors with one ``[n_layers, d_model]`` vector.

    Raises:
        DataError: The file is missing, truncated, not a GGUF, not a control vector, holds no
            direction tensors, or holds a quantised or misnamed one.
        LayerError: A direction falls outside ``0..n_layers-1``.
        ShapeError: Directions differ in size, or do not fit ``model``.
        VectorError: A direction holds NaN/Inf, or the vectors were made in another
            coordinate mode than ``model``'s.
    """
    import gguf

    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file} does not exist.", hint="Pass the path of a .gguf file.")
    try:
        reader = gguf.GGUFReader(str(file))
    except Exception as exc:  # the reader raises struct/ValueError/IndexError on garbage
        raise DataError(
            f"{file} could not be read as GGUF ({type(exc).__name__}: {exc}); it is truncated "
            "or not a GGUF file.",
            hint="Export the vector again (export_gguf or repeng's export_gguf).",
        ) from exc
    arch = _gguf_field(reader, "general.architecture")
    if arch != GGUF_ARCHITECTURE:
        raise DataError(
            f"{file} is a GGUF with general.architecture={arch!r}, not a control vector.",
            hint="Pass a control-vector file (general.architecture = 'controlvector'); model "
            "GGUFs load with welfare_lens.load_model.",
        )
    recorded = _gguf_field(reader, "welfare_lens.metadata")
    offset = layer_offset
    if offset is None:
        stored = _gguf_field(reader, "welfare_lens.layer_offset")
        offset = int(stored) if isinstance(stored, int) else 0
    directions: dict[int, np.ndarray[Any, Any]] = {}
    for tensor in reader.tensors:
        tname = str(tensor.name)
        if not tname.startswith(_DIRECTION):
            continue
        index_text = tname[len(_DIRECTION) :]
        if not index_text.isdigit():
            raise DataError(
                f"{file} has a tensor {tname!r}, not of the form 'direction.<layer>'.",
                hint="Control-vector tensors are named direction.1, direction.2, ...",
            )
        if tensor.tensor_type not in (
            gguf.GGMLQuantizationType.F32,
            gguf.GGMLQuantizationType.F16,
        ):
            raise DataError(
                f"{file}: {tname} has type {tensor.tensor_type.name}; control vectors are F32.",
                hint="Export the vector again as float32.",
            )
        directions[int(index_text) - offset] = np.array(tensor.data, dtype=np.float32).reshape(-1)
    if not directions:
        raise DataError(
            f"{file} holds no direction.<layer> tensors.",
            hint="Export a vector with export_gguf (or repeng's ControlVector.export_gguf).",
        )
    sizes = {arr.shape[0] for arr in directions.values()}
    if len(sizes) != 1:
        raise ShapeError(
            f"{file}: direction tensors have different sizes {sorted(sizes)}.",
            hint="The file mixes vectors of different models; export it again.",
        )
    d_model = sizes.pop()
    hint_value = _gguf_field(reader, f"{GGUF_ARCHITECTURE}.model_hint")
    if isinstance(recorded, str):
        metadata = _metadata_from_json(recorded, file)
    else:
        total = n_layers
        if total is None and model is not None:
            total = int(model.cfg.n_layers)
        if total is None:
            total = max(max(directions) + 1, 1)
        metadata = _default_metadata(int(total), int(d_model), model_id, model, "gguf")
        metadata.extra["model_hint"] = str(hint_value)
    if n_layers is not None and n_layers != metadata.n_layers:
        metadata = replace(metadata, n_layers=int(n_layers))
    bad = sorted(k for k in directions if not 0 <= k < metadata.n_layers)
    if bad:
        raise LayerError(
            f"{file}: direction tensor(s) for layer(s) {bad} (layer_offset={offset}) do not fit "
            f"a {metadata.n_layers}-layer model.",
            hint="Pass the right n_layers/model, or layer_offset=1 for cvector-generator files.",
        )
    if d_model != metadata.d_model:
        raise ShapeError(
            f"{file}: directions have {d_model} values, the recorded d_model is "
            f"{metadata.d_model}.",
            hint="The file is inconsistent; export the vector again.",
        )
    full = torch.zeros(metadata.n_layers, d_model, dtype=torch.float32)
    for layer, arr in directions.items():
        full[layer] = torch.from_numpy(arr)
    missing = [layer for layer in range(metadata.n_layers) if layer not in directions]
    extra = {**metadata.extra, "gguf_missing_layers": missing, "gguf_layer_offset": offset}
    metadata = replace(metadata, extra=extra)
    key = name or _gguf_field(reader, "welfare_lens.name") or "vector"
    return _check_model(_finish({str(key): full}, metadata, file), model)


# ----------------------------------------------------------------------------------------------
# Plain tensors: .pt, .npz, .npy
# ----------------------------------------------------------------------------------------------


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in _TENSOR_SUFFIXES:
        raise DataError(
            f"Unknown tensor file type {path.suffix!r} for {path}.",
            hint=f"Use one of {', '.join(_TENSOR_SUFFIXES)} (or .gguf with export_gguf).",
        )
    return suffix


def export_tensors(
    vectors: ConceptVectors,
    path: str | os.PathLike[str],
    *,
    names: Sequence[str] | None = None,
    metadata: bool = True,
) -> Path:
    """Write vectors as plain tensors, for projects that do not use welfare_lens.

    ``.pt``: ``torch.save`` of a dict ``{name: [n_layers, d_model] tensor}``; ``.npz``: one
    array per name; ``.npy``: the single ``[n_layers, d_model]`` array of one vector. With
    ``metadata``, ``.pt`` and ``.npz`` also hold the provenance as a JSON string under
    ``"__welfare_lens_metadata__"``.

    Args:
        vectors: The concept vectors.
        path: Output file; its suffix picks the format. Written atomically.
        names: Vectors to write (default all; ``.npy`` needs exactly one).
        metadata: Store the metadata (``.pt`` and ``.npz``).

    Returns:
        The path written.

    Raises:
        DataError: Unknown suffix.
        VectorError: An unknown name, or several vectors for ``.npy``.
    """
    target = Path(path)
    suffix = _suffix(target)
    chosen = list(vectors.names) if names is None else [_pick_name(vectors, n) for n in names]
    if suffix == ".npy" and len(chosen) != 1:
        raise VectorError(
            f"A .npy file holds one array; got vectors {chosen}.",
            hint="Pass names=['gold'], or use .npz / .pt for several vectors.",
        )
    tensors = {n: vectors[n].detach().cpu().contiguous() for n in chosen}
    meta_text = _metadata_json(vectors.metadata) if metadata else None
    with _atomic_path(target) as tmp:
        if suffix == ".pt":
            payload: dict[str, Any] = dict(tensors)
            if meta_text is not None:
                payload[METADATA_KEY] = meta_text
            torch.save(payload, tmp)
        else:
            arrays = {n: t.to(torch.float32).numpy() for n, t in tensors.items()}
            with tmp.open("wb") as fh:
                if suffix == ".npy":
                    np.save(fh, arrays[chosen[0]], allow_pickle=False)
                else:
                    if meta_text is not None:
                        arrays[METADATA_KEY] = np.array(meta_text)
                    np.savez(fh, allow_pickle=False, **arrays)
    return target


def _read_pt(file: Path) -> Any:
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, zipfile errors, ...
        raise DataError(
            f"{file} could not be read as a plain tensor file ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}). Only tensors, dicts, "
            "lists and plain values are read; pickled code is refused.",
            hint="Save a plain dict of tensors with torch.save, or use export_tensors().",
        ) from exc


def _read_numpy(file: Path, suffix: str) -> dict[str, Any]:
    try:
        loaded = np.load(file, allow_pickle=False)
        if suffix == ".npy":
            return {"": np.asarray(loaded)}
        with loaded as npz:
            return {k: np.asarray(npz[k]) for k in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise DataError(
            f"{file} could not be read as {suffix} ({type(exc).__name__}: {exc}); it is "
            "truncated, corrupt, or holds pickled objects (which are refused).",
            hint="Write plain numeric arrays (numpy.save / numpy.savez, or export_tensors()).",
        ) from exc


def import_tensors(
    path: str | os.PathLike[str],
    *,
    model: Any = None,
    name: str | None = None,
    model_id: str | None = None,
) -> ConceptVectors:
    """Read vectors from a ``.pt``, ``.npz`` or ``.npy`` file of ``[n_layers, d_model]`` arrays.

    Nothing is unpickled: ``.pt`` files are read with ``torch.load(..., weights_only=True)``,
    numpy files with ``allow_pickle=False``.

    Args:
        path: The file; its suffix picks the reader.
        model: A model to check the vectors against (``d_model``, ``n_layers``, mode).
        name: Name for a ``.npy`` array or a bare tensor in a ``.pt`` (default ``"vector"``).
        model_id: Model id when the file carries no welfare_lens metadata.

    Returns:
        ConceptVectors, with the stored metadata if the file has it.

    Raises:
        DataError: Unknown suffix; a missing, truncated or corrupt file; pickled objects; or
            contents that are not a tensor or a dict of tensors.
        ShapeError: A vector is not ``[n_layers, d_model]``, the vectors differ in shape, or
            they do not fit ``model``.
        VectorError: A vector holds NaN/Inf, or does not fit ``model``'s coordinate mode.
    """
    file = Path(path)
    suffix = _suffix(file)
    if not file.is_file():
        raise DataError(f"{file} does not exist.", hint="Pass the path of a saved vector file.")
    meta_text: Any = None
    raw: dict[str, Any]
    if suffix == ".pt":
        loaded = _read_pt(file)
        if isinstance(loaded, Tensor):
            raw = {name or "vector": loaded}
        elif isinstance(loaded, Mapping):
            raw = {str(k): v for k, v in loaded.items()}
            meta_text = raw.pop(METADATA_KEY, None)
        else:
            raise DataError(
                f"{file} holds a {type(loaded).__name__}, not a tensor or a dict of tensors.",
                hint="Save {name: [n_layers, d_model] tensor} with torch.save.",
            )
    else:
        arrays = _read_numpy(file, suffix)
        if suffix == ".npy":
            arrays = {name or "vector": arrays[""]}
        meta_arr = arrays.pop(METADATA_KEY, None)
        meta_text = None if meta_arr is None else str(meta_arr)
        raw = dict(arrays)
    tensors: dict[str, Tensor] = {}
    for key, value in raw.items():
        if isinstance(value, np.ndarray):
            if not np.issubdtype(value.dtype, np.floating):
                raise DataError(
                    f"{file}: array {key!r} has dtype {value.dtype}; vectors are floating point.",
                    hint="Store float arrays of shape [n_layers, d_model].",
                )
            value = torch.from_numpy(np.array(value, copy=True))
        if not isinstance(value, Tensor):
            raise DataError(
                f"{file}: entry {key!r} is a {type(value).__name__}, not a tensor.",
                hint="Store only {name: [n_layers, d_model] tensor} entries.",
            )
        if value.ndim != 2:
            raise ShapeError(
                f"{file}: vector {key!r} has shape {tuple(value.shape)}, not [n_layers, d_model].",
                hint="Store one [n_layers, d_model] tensor per vector.",
            )
        tensors[key] = value
    if not tensors:
        raise DataError(f"{file} holds no vectors.", hint="Store at least one tensor.")
    shapes = {tuple(t.shape) for t in tensors.values()}
    if len(shapes) != 1:
        raise ShapeError(
            f"{file}: vectors have different shapes {sorted(shapes)}.",
            hint="Store vectors of one model only (all [n_layers, d_model]).",
        )
    n_layers, d_model = shapes.pop()
    if isinstance(meta_text, str):
        metadata = _metadata_from_json(meta_text, file)
    elif meta_text is None:
        metadata = _default_metadata(n_layers, d_model, model_id, model, suffix.lstrip("."))
    else:
        raise DataError(
            f"{file}: {METADATA_KEY!r} is a {type(meta_text).__name__}, not a JSON string.",
            hint="Export the vectors again with export_tensors().",
        )
    return _check_model(_finish(tensors, metadata, file), model)
