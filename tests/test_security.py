"""Security: no code execution from files, no unsafe deserialisation in the source, no network.

* A static scan (AST) of ``welfare_lens/`` for pickle-family imports, ``eval``/``exec``,
  ``torch.load`` without ``weights_only=True``, ``numpy.load(allow_pickle=True)`` and unsafe YAML.
* Untrusted vector, statistics, tensor and checkpoint files carrying a live pickle payload are
  refused with a clean ``DataError``/``TrainingError``, and the payload never runs.
* Loading a tiny model, capture, welfare vectors and save/load run with sockets disabled.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import welfare_lens as wl
from welfare_lens.errors import DataError, TrainingError
from welfare_lens.vectors import ClassStatistics, ConceptVectors, VectorMetadata

PACKAGE = Path(wl.__file__).resolve().parent

# ----------------------------------------------------------------------------------------------
# Static scan
# ----------------------------------------------------------------------------------------------

_UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal"}
_UNSAFE_MODULES |= {"joblib", "jsonpickle"}


def _dotted(node: ast.AST) -> str:
    """``torch.load`` for ``Attribute(Name('torch'), 'load')``; '' for other expressions."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node: ast.expr | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def unsafe_calls(source: str, filename: str = "<source>") -> list[str]:
    """Every unsafe deserialisation or dynamic-code construct in ``source``, as ``file:line: what``.

    Flags imports of pickle-like modules, bare ``eval``/``exec``/``__import__`` calls,
    ``torch.load`` (or ``load`` imported from torch) without ``weights_only=True``,
    ``numpy.load``/``np.load`` with ``allow_pickle=True``, ``pandas.read_pickle``,
    and ``yaml.load`` without a safe loader / ``yaml.unsafe_load``.
    """
    tree = ast.parse(source, filename)
    torch_load_names = {"torch.load"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "torch":
            torch_load_names |= {a.asname or a.name for a in node.names if a.name == "load"}
    found: list[str] = []

    def flag(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{getattr(node, 'lineno', 0)}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in _UNSAFE_MODULES:
                    flag(node, f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in _UNSAFE_MODULES:
                flag(node, f"from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name in ("eval", "exec", "__import__", "builtins.eval", "builtins.exec"):
                flag(node, f"{name}(...)")
            elif name in torch_load_names:
                if not _is_const(_keyword(node, "weights_only"), True):
                    flag(node, f"{name}(...) without weights_only=True")
            elif name in ("np.load", "numpy.load"):
                allow = _keyword(node, "allow_pickle")
                if allow is not None and not _is_const(allow, False):
                    flag(node, f"{name}(..., allow_pickle=...)")
            elif name in ("pd.read_pickle", "pandas.read_pickle", "yaml.unsafe_load"):
                flag(node, f"{name}(...)")
            elif name == "yaml.load":
                loader = _dotted(_keyword(node, "Loader") or ast.Constant(None))
                if not loader.endswith(("SafeLoader", "CSafeLoader")):
                    flag(node, "yaml.load(...) without a SafeLoader")
    return found


def test_scanner_flags_every_unsafe_construct() -> None:
    bad = """
import pickle
import dill as d
from marshal import loads
from torch import load as tload
import torch, numpy as np, yaml, pandas as pd
x = eval("1 + 1")
exec("y = 2")
m = __import__("os")
a = torch.load("f.pt")
b = torch.load("f.pt", weights_only=False)
c = tload("f.pt")
e = np.load("f.npy", allow_pickle=True)
f = pd.read_pickle("f.pkl")
g = yaml.load(open("f.yml"))
"""
    found = unsafe_calls(bad)
    # One finding per line 2..16 above (the import of torch/numpy/yaml/pandas is fine).
    assert sorted(int(f.split(":")[1]) for f in found) == [2, 3, 4, 7, 8, 9, 10, 11, 12, 13, 14, 15]
    good = """
import torch, numpy as np, yaml
model.eval()
t = torch.load("f.pt", map_location="cpu", weights_only=True)
a = np.load("f.npy", allow_pickle=False)
b = np.load("f.npy")
c = yaml.load(open("f.yml"), Loader=yaml.SafeLoader)
text = "pickle eval( exec( torch.load(" # mentioned in a string only
"""
    assert unsafe_calls(good) == []


def test_package_source_has_no_unsafe_deserialisation_or_dynamic_code() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20 and (PACKAGE / "interop.py") in files
    found = [
        hit
        for file in files
        for hit in unsafe_calls(file.read_text(encoding="utf-8"), str(file.relative_to(PACKAGE)))
    ]
    assert found == []


# ----------------------------------------------------------------------------------------------
# Untrusted files with a live payload
# ----------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this runs ``exec`` on code that creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.code = f"import pathlib; pathlib.Path({str(marker)!r}).touch()"

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, (self.code,))


@pytest.fixture
def payload(tmp_path: Path) -> Iterator[tuple[bytes, Path]]:
    """Pickle bytes that create ``marker`` when unpickled; checked live, then reset."""
    marker = tmp_path / "PWNED"
    data = pickle.dumps({"gold": _Payload(marker)}, protocol=2)
    pickle.loads(data)  # the positive control: this payload really executes
    assert marker.exists()
    marker.unlink()
    yield data, marker
    assert not marker.exists(), "an untrusted file executed code"


def _saved_vectors(tmp: Path) -> Path:
    meta = VectorMetadata(model_id="toy", d_model=3, n_layers=2)
    return ConceptVectors({"gold": torch.ones(2, 3)}, meta).save(tmp / "v")


def _rewrite_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def test_pickle_renamed_safetensors_is_refused(tmp_path: Path, payload: tuple[bytes, Path]) -> None:
    data, _ = payload
    base = _saved_vectors(tmp_path)
    (tmp_path / "v.safetensors").write_bytes(data)
    _rewrite_json(tmp_path / "v.json", sha256=None)  # no hash: the parser itself must refuse
    with pytest.raises(DataError, match="could not be read as safetensors"):
        ConceptVectors.load(base)
    # An attacker who controls both files can record the right hash; still refused.
    import hashlib

    _rewrite_json(tmp_path / "v.json", sha256=hashlib.sha256(data).hexdigest())
    with pytest.raises(DataError, match="could not be read as safetensors"):
        ConceptVectors.load(base)


def test_pickle_renamed_statistics_file_is_refused(
    tmp_path: Path, payload: tuple[bytes, Path]
) -> None:
    data, _ = payload
    stats = ClassStatistics(2, 3, model_id="toy")
    stats.update(["mold", "gold"], torch.randn(2, 2, 3))
    base = stats.save(tmp_path / "s")
    (tmp_path / "s.safetensors").write_bytes(data)
    _rewrite_json(tmp_path / "s.json", sha256=None)
    with pytest.raises(DataError, match="safetensors"):
        ClassStatistics.load(base)


def test_malicious_json_sidecar_is_data_not_code(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    base = _saved_vectors(tmp_path)
    sidecar = tmp_path / "v.json"
    data = json.loads(sidecar.read_text())
    data["metadata"]["model_id"] = code
    data["metadata"]["extra"] = {"py/reduce": [{"py/function": "os.system"}], "__reduce__": code}
    data["metadata"]["__class__"] = "os.system"  # unknown keys are ignored, never resolved
    sidecar.write_text(json.dumps(data))
    loaded = ConceptVectors.load(base)
    assert loaded.metadata.model_id == code  # kept verbatim as a string
    assert loaded.metadata.extra["__reduce__"] == code
    # A statistics sidecar naming a torch *function* as its dtype is refused, not called.
    stats = ClassStatistics(2, 3, model_id="toy")
    stats.update("mold", torch.randn(1, 2, 3))
    sbase = stats.save(tmp_path / "s")
    _rewrite_json(tmp_path / "s.json", sample_dtype="load")
    with pytest.raises(DataError, match="invalid fields"):
        ClassStatistics.load(sbase)
    _rewrite_json(tmp_path / "s.json", sample_dtype=code)
    with pytest.raises(DataError, match="invalid fields"):
        ClassStatistics.load(sbase)
    assert not marker.exists()


def test_untrusted_tensor_files_are_refused(tmp_path: Path, payload: tuple[bytes, Path]) -> None:
    data, _ = payload
    pt = tmp_path / "v.pt"
    pt.write_bytes(data)
    with pytest.raises(DataError, match="pickled code is refused"):
        wl.interop.import_tensors(pt)
    # A genuine torch.save zip archive whose data.pkl holds the payload.
    torch.save({"gold": _Payload(tmp_path / "PWNED")}, pt)
    with pytest.raises(DataError, match="pickled code is refused"):
        wl.interop.import_tensors(pt)
    arr = np.empty(1, dtype=object)
    arr[0] = _Payload(tmp_path / "PWNED")
    np.save(tmp_path / "v.npy", arr, allow_pickle=True)
    with pytest.raises(DataError, match="pickled objects"):
        wl.interop.import_tensors(tmp_path / "v.npy")
    np.savez(tmp_path / "v.npz", gold=arr)
    with pytest.raises(DataError, match="pickled objects"):
        wl.interop.import_tensors(tmp_path / "v.npz")


def test_untrusted_checkpoint_file_is_refused(
    tmp_path: Path, payload: tuple[bytes, Path], one_thread: None
) -> None:
    data, _ = payload
    config = wl.rl.GRPOConfig(progress=False, out_dir=str(tmp_path), lora_r=4, lora_alpha=8)
    trainer = wl.rl.GRPOTrainer(
        wl.load_model("tiny-llama"), wl.maze.MazeConfig(size=10, turns=2), config
    )
    ckpt = trainer.save_checkpoint()
    (ckpt / "adapter_model.safetensors").write_bytes(data)
    with pytest.raises(TrainingError, match="could not be read as safetensors"):
        wl.rl.load_checkpoint(ckpt)


# ----------------------------------------------------------------------------------------------
# No network
# ----------------------------------------------------------------------------------------------


class NetworkAttempt(AssertionError):
    """Raised by the patched socket functions."""


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every socket creation, connection and DNS lookup fail, and record the attempts."""
    attempts: list[str] = []

    def refuse(what: str) -> Any:
        def refused(*args: object, **kwargs: object) -> Any:
            attempts.append(f"{what}{args!r}")
            raise NetworkAttempt(f"network access attempted: {what}{args!r}")

        return refused

    for name in ("socket", "create_connection", "getaddrinfo", "gethostbyname"):
        monkeypatch.setattr(socket, name, refuse(name))
    # The guard works (and is reset before the real test).
    with pytest.raises(NetworkAttempt):
        socket.create_connection(("huggingface.co", 443))
    attempts.clear()
    return attempts


@pytest.mark.filterwarnings("ignore:Extraction classes differ:RuntimeWarning")
def test_capture_vectors_save_load_run_with_sockets_disabled(
    no_network: list[str], tmp_path: Path, one_thread: None
) -> None:
    model = wl.load_model("tiny-llama")
    trajectories = wl.maze.synthetic_trajectories(
        wl.maze.MazeConfig(size=10, turns=3), per_class=3, seed=7
    )
    stats = wl.capture(model, trajectories, progress=False)
    v = wl.welfare_vectors(stats)
    base = v.save(tmp_path / "vectors")
    stats.save(tmp_path / "stats")
    back = ConceptVectors.load(base)
    stats_back = ClassStatistics.load(tmp_path / "stats")
    assert back.names == v.names and all(torch.equal(back[n], v[n]) for n in v.names)
    assert stats_back.counts == stats.counts == {"mold": 3, "gold": 3, "path": 3}
    back.check_compatible(model)
    assert no_network == []


PIPELINE_CHILD = """
import socket, sys
def refuse(*args, **kwargs):
    raise OSError("network access attempted")
for name in ("create_connection", "getaddrinfo", "gethostbyname"):
    setattr(socket, name, refuse)
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
import torch
torch.set_num_threads(1)
from welfare_lens.cli import main
raise SystemExit(main(["reproduce", "--quick", "--model", "tiny-llama", "--out", sys.argv[1]]))
"""


def test_pipeline_runs_offline_and_writes_only_its_output_folder(tmp_path: Path) -> None:
    """The whole pipeline with sockets disabled; afterwards only --out (and the model cache)
    has new files."""
    import subprocess
    import sys

    work, home, tmp = tmp_path / "work", tmp_path / "home", tmp_path / "tmp"
    for folder in (work, home, tmp):
        folder.mkdir()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "HF_HOME": str(home / "hf"),
        "MPLCONFIGDIR": str(home / "mpl"),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-c", PIPELINE_CHILD, "out"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "network access attempted" not in proc.stderr
    assert sorted(p.name for p in work.iterdir()) == ["out"]
    assert (work / "out" / "report.html").exists()
    # The one exception, by design: the model cache (WELFARE_LENS_CACHE, default
    # ~/.cache/welfare_lens) that load_model fills once (here the tiny models' tokenizer).
    cache = home / ".cache" / "welfare_lens"
    stray = [
        str(p)
        for folder in (home, tmp)
        for p in folder.rglob("*")
        if p.is_file() and cache not in p.parents
    ]
    assert stray == []
