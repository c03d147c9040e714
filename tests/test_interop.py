"""Interop: control-vector GGUF (llama.cpp / repeng) and plain tensor files, and the hooks example."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch

import welfare_lens as wl
from welfare_lens.errors import DataError, LayerError, ShapeError, VectorError
from welfare_lens.interop import export_gguf, export_tensors, import_gguf, import_tensors
from welfare_lens.vectors import ConceptVectors, VectorMetadata

ROOT = Path(__file__).resolve().parents[1]


def tiny_vectors(n_layers: int = 3, d_model: int = 8, **kw: Any) -> ConceptVectors:
    gen = torch.Generator().manual_seed(3)
    meta = VectorMetadata(
        model_id="toy",
        d_model=d_model,
        n_layers=n_layers,
        method="one_vs_rest",
        class_counts={"mold": 5, "gold": 5, "path": 5},
        seed=474747,
        extra={"note": "interop"},
        **kw,
    )
    data = {n: torch.randn(n_layers, d_model, generator=gen) for n in ("mold", "gold", "path")}
    return ConceptVectors(data, meta)


def read_gguf(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray[Any, Any]]]:
    reader = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = {}
    for t in reader.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        tensors[t.name] = np.array(t.data, copy=True)
    return fields, tensors


# ----------------------------------------------------------------------------------------------
# GGUF
# ----------------------------------------------------------------------------------------------


def test_gguf_export_is_a_llama_cpp_control_vector(tmp_path: Path) -> None:
    v = tiny_vectors()
    path = export_gguf(v, tmp_path / "gold.gguf", name="gold", model_hint="llama")
    fields, tensors = read_gguf(path)
    assert fields["general.architecture"] == "controlvector"
    assert fields["controlvector.model_hint"] == "llama"
    # Layer 0 is left out: llama.cpp rejects direction.0 and never steers block 0's output.
    assert fields["controlvector.layer_count"] == 2
    assert set(tensors) == {"direction.1", "direction.2"}
    for layer in (1, 2):
        arr = tensors[f"direction.{layer}"]
        assert arr.shape == (8,) and arr.dtype == np.float32
        np.testing.assert_array_equal(arr, v.gold[layer].numpy())
    assert fields["welfare_lens.name"] == "gold" and fields["welfare_lens.layer_offset"] == 0
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically


def test_gguf_round_trip_restores_vector_and_provenance(tmp_path: Path) -> None:
    v = tiny_vectors(coordinate_mode="compat", role="control")
    back = import_gguf(export_gguf(v, tmp_path / "mold.gguf", name="mold"))
    assert back.names == ("mold",)
    torch.testing.assert_close(back.mold[1:], v.mold[1:], rtol=0, atol=0)
    assert torch.equal(back.mold[0], torch.zeros(8))
    m, orig = back.metadata, v.metadata
    assert (m.model_id, m.n_layers, m.d_model) == ("toy", 3, 8)
    assert (m.coordinate_mode, m.role, m.method, m.seed) == (
        "compat",
        "control",
        "one_vs_rest",
        474747,
    )
    assert m.class_counts == orig.class_counts
    assert m.extra == {"note": "interop", "gguf_missing_layers": [0], "gguf_layer_offset": 0}


def test_gguf_cvector_generator_numbering_with_layer_offset_one(tmp_path: Path) -> None:
    v = tiny_vectors()
    path = export_gguf(v, tmp_path / "g.gguf", name="gold", layer_offset=1)
    fields, tensors = read_gguf(path)
    assert fields["controlvector.layer_count"] == 3 and fields["welfare_lens.layer_offset"] == 1
    assert set(tensors) == {"direction.1", "direction.2", "direction.3"}
    for k in (1, 2, 3):  # direction.k is the output of block k - 1
        np.testing.assert_array_equal(tensors[f"direction.{k}"], v.gold[k - 1].numpy())
    back = import_gguf(path)  # the recorded offset is used
    assert torch.equal(back.gold, v.gold) and back.metadata.extra["gguf_missing_layers"] == []
    with pytest.raises(LayerError, match=r"layer\(s\) \[3\]"):
        import_gguf(path, layer_offset=0)  # direction.3 would be layer 3 of a 3-layer model
    with pytest.raises(LayerError, match=r"direction\.0"):
        export_gguf(v, tmp_path / "bad.gguf", name="gold", layers=[0])


def test_gguf_written_like_repeng_imports_onto_the_right_layers(
    tmp_path: Path, one_thread: None
) -> None:
    """A file as repeng's ControlVector.export_gguf writes it: no welfare_lens keys."""
    model = wl.load_model("tiny-llama")
    d, n = model.cfg.d_model, model.cfg.n_layers
    directions = {layer: np.full(d, float(layer + 1), dtype=np.float32) for layer in range(1, n)}
    path = tmp_path / "repeng.gguf"
    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_uint32("controlvector.layer_count", len(directions))
    for layer, arr in directions.items():
        writer.add_tensor(f"direction.{layer}", arr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    cv = import_gguf(path, model=model, name="happy")
    assert cv.names == ("happy",) and cv["happy"].shape == (n, d)
    for layer in range(1, n):
        assert torch.equal(cv["happy"][layer], torch.full((d,), float(layer + 1)))
    assert cv.metadata.model_id == wl.model_info(model).model_id
    assert cv.metadata.extra["model_hint"] == "llama" and cv.metadata.method == "imported"
    # And it steers like the original direction at the same block output.
    ids = model.to_tokens("Hi")
    with (
        torch.no_grad(),
        wl.steer(model, cv, layer=n - 1, alpha=1.0, name="happy", positions="all"),
    ):
        a = model(ids)
    with (
        torch.no_grad(),
        wl.steer(
            model, torch.from_numpy(directions[n - 1]), layer=n - 1, alpha=1.0, positions="all"
        ),
    ):
        b = model(ids)
    torch.testing.assert_close(a, b)
    # Without a model the layer count is inferred from the highest direction.
    assert import_gguf(path).n_layers == n


def test_gguf_export_needs_a_name_for_several_vectors(tmp_path: Path) -> None:
    with pytest.raises(VectorError, match="Which vector"):
        export_gguf(tiny_vectors(), tmp_path / "x.gguf")
    with pytest.raises(VectorError, match="No vector named 'joy'"):
        export_gguf(tiny_vectors(), tmp_path / "x.gguf", name="joy")
    with pytest.raises(DataError, match="does not exist"):
        import_gguf(tmp_path / "missing.gguf")


# ----------------------------------------------------------------------------------------------
# Plain tensors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_tensor_round_trip(tmp_path: Path, suffix: str) -> None:
    v = tiny_vectors()
    path = export_tensors(v, tmp_path / f"v{suffix}")
    back = import_tensors(path)
    assert back.names == v.names and back.metadata == v.metadata
    for name in v.names:
        assert torch.equal(back[name], v[name])
    only = import_tensors(
        export_tensors(v, tmp_path / f"g{suffix}", names=["gold"], metadata=False)
    )
    assert only.names == ("gold",) and only.metadata.model_id == "unknown"
    assert torch.equal(only.gold, v.gold)


def test_plain_files_are_readable_without_welfare_lens(tmp_path: Path) -> None:
    v = tiny_vectors()
    plain = torch.load(export_tensors(v, tmp_path / "v.pt"), weights_only=True)
    assert torch.equal(plain["gold"], v.gold)
    with np.load(export_tensors(v, tmp_path / "v.npz"), allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["mold"], v.mold.numpy())
    arr = np.load(export_tensors(v, tmp_path / "v.npy", names=["path"]), allow_pickle=False)
    np.testing.assert_array_equal(arr, v.path.numpy())
    one = import_tensors(tmp_path / "v.npy", name="path", model_id="toy")
    assert torch.equal(one.path, v.path) and one.metadata.model_id == "toy"


def test_tensor_imports_from_other_projects(tmp_path: Path) -> None:
    torch.save(torch.ones(2, 4, dtype=torch.bfloat16), tmp_path / "bare.pt")
    bare = import_tensors(tmp_path / "bare.pt", name="x")
    assert bare.names == ("x",) and bare["x"].dtype == torch.bfloat16
    assert bare["x"].shape == (2, 4) and bare.metadata.method == "imported"
    half = ConceptVectors({"a": torch.ones(2, 4, dtype=torch.bfloat16)}, VectorMetadata("m", 4, 2))
    export_tensors(half, tmp_path / "b.npz")  # numpy has no bfloat16: stored as float32
    assert import_tensors(tmp_path / "b.npz")["a"].dtype == torch.float32


def test_tensor_file_errors(tmp_path: Path) -> None:
    v = tiny_vectors()
    with pytest.raises(VectorError, match="one array"):
        export_tensors(v, tmp_path / "v.npy")
    with pytest.raises(DataError, match="Unknown tensor file type"):
        export_tensors(v, tmp_path / "v.bin")
    torch.save({"a": torch.ones(2, 4), "b": torch.ones(3, 4)}, tmp_path / "mixed.pt")
    with pytest.raises(ShapeError, match="different shapes"):
        import_tensors(tmp_path / "mixed.pt")
    torch.save({"a": torch.ones(4)}, tmp_path / "flat.pt")
    with pytest.raises(ShapeError, match="not \\[n_layers, d_model\\]"):
        import_tensors(tmp_path / "flat.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(DataError, match="not a tensor or a dict"):
        import_tensors(tmp_path / "list.pt")
    np.save(tmp_path / "ints.npy", np.ones((2, 4), dtype=np.int64))
    with pytest.raises(DataError, match="floating point"):
        import_tensors(tmp_path / "ints.npy")
    model_like = tiny_vectors(n_layers=2, d_model=4).metadata
    export_tensors(tiny_vectors(), tmp_path / "v.pt")
    with pytest.raises(ShapeError):
        import_tensors(tmp_path / "v.pt").check_compatible(model_like)


# ----------------------------------------------------------------------------------------------
# The hooks example
# ----------------------------------------------------------------------------------------------


def test_hooks_example_runs_on_the_tiny_model() -> None:
    script = ROOT / "examples" / "use_hooks_in_another_project.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, str(script), "--model", "tiny-llama"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    values = dict(line.split(": ") for line in out.stdout.splitlines() if ": " in line)
    assert float(values["max_logit_shift"]) > 0
    assert float(values["leftover_after_context"]) == 0
