"""The tutorial notebooks (notebooks/0*.ipynb): they run on the tiny model, and are committed
stripped of outputs, exactly as notebooks/_build.py generates them.

Each notebook is executed with nbclient on the ``python3`` kernel, with
``WELFARE_LENS_NOTEBOOK_MODEL`` unset (so ``MODEL = "tiny-llama"`` and ``QUICK`` is true) and
``OMP_NUM_THREADS=1``. No kernelspec has to be installed: ipykernel ships one in the venv
(``.venv/share/jupyter/kernels/python3``) whose command is ``python``, which jupyter_client
replaces by the running interpreter; a cell appended at run time checks that the kernel is this
venv's Python. To run the notebooks on a real model, see notebooks/_build.py.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = (
    "01_quickstart.ipynb",
    "02_training.ipynb",
    "03_emotions.ipynb",
    "04_steering.ipynb",
    "05_paper_figures.ipynb",
    "06_recruitment.ipynb",
)
NUM = r"[-+]?\d+\.\d+"
# The last cell of each notebook prints one SUMMARY line; tiny-llama has 2 layers.
SUMMARIES = {
    "01_quickstart.ipynb": rf"SUMMARY 01: model=tiny-llama n_layers=2 samples=120 L\*_gold=[01] "
    rf"min_cos={NUM} argmin=[01] saved=u\.safetensors",
    "02_training.ipynb": rf"SUMMARY 02: model=tiny-llama steps=3 checkpoint=checkpoint-000003 "
    rf"return_before={NUM} return_after={NUM} min_cos_v={NUM} min_cos_u={NUM}",
    "03_emotions.ipynb": rf"SUMMARY 03: model=tiny-llama emotions=171 stories=342 layer=[01] "
    rf"slope={NUM} R={NUM} pca_best_layer=[01] r_valence={NUM}",
    "04_steering.ipynb": rf"SUMMARY 04: model=tiny-llama conditions=10 rows=30 "
    rf"slope_u_gold={NUM} p_true_correct={NUM}",
    "05_paper_figures.ipynb": rf"SUMMARY 05: model=tiny-llama stages=6 L\*_gold=[01] "
    rf"min_cos_v={NUM} min_cos_u={NUM} report=report\.html",
    "06_recruitment.ipynb": rf"SUMMARY 06: model=tiny-llama checkpoints=5 rho_vaa_gold=(?:{NUM}|nan) "
    rf"vaa_u_gold={NUM} vaa_v_gold={NUM} trio_rank=\d+ report=report\.html",
}
# Plotly figures each notebook displays.
FIGURES = {
    "01_quickstart.ipynb": 2,
    "02_training.ipynb": 2,
    "03_emotions.ipynb": 2,
    "04_steering.ipynb": 1,
    "05_paper_figures.ipynb": 3,
    "06_recruitment.ipynb": 6,
}
# Other text the notebooks must print (paper-facing labels and facts of the tiny runs).
TEXTS = {
    "01_quickstart.ipynb": [
        "You are in a maze. Currently, you're at location (50, 49).",
        "120 trajectories",
        "cos(v_mold, v_gold) over 2 layers",
        "['stats_u.json', 'stats_u.safetensors', 'u.json', 'u.safetensors']",
    ],
    "02_training.ipynb": [
        "Neighbours: N",
        "untrained policy: reward_mean",
        "trained policy:",
        "step 2: loss",
        "@run-",
        "adapter_model.safetensors",
    ],
    "03_emotions.ipynb": ["342 stories of 171 emotions, 171 rated emotions", "EmotionPCA(171"],
    "04_steering.ipynb": ["u_mold at L", "u_gold at L", "mean P(True) of correct answers"],
    "05_paper_figures.ipynb": [
        "[report] done",
        "analysis.json sections:",
        "Antiparallelism (paper §3.1)",
        "held-out mazes",
    ],
    "06_recruitment.ipynb": [
        "CheckpointSeries(",
        "RotationTable(5 steps 0..4",
        "Recruitment(5 checkpoints",
        "VAAResult(",
        "NeutralityScan(12 emoji",
        "PreExistenceResult(",
    ],
}
# Generous: the notebooks take 15-45 s on one shared CPU thread; this catches size blow-ups.
MAX_SECONDS = 180.0
PLOTLY = "application/vnd.plotly.v1+json"


def _build_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "welfare_lens_notebooks_build", NOTEBOOKS / "_build.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _texts(cell: Any) -> list[str]:
    """Text of a code cell's stream outputs and text/plain results."""
    out = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            out.append(output.text)
        elif output.output_type in ("execute_result", "display_data"):
            out.append(str(output.data.get("text/plain", "")))
    return out


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_on_the_tiny_model(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record_property: Any
) -> None:
    monkeypatch.delenv("WELFARE_LENS_NOTEBOOK_MODEL", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # inherited by the kernel
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nb.cells.append(
        nbformat.v4.new_code_cell("import sys\nprint('KERNEL', sys.executable, sys.prefix)")
    )
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, naming the cell, if one fails
    seconds = time.perf_counter() - start
    record_property("seconds", round(seconds, 1))
    print(f"{name}: {seconds:.1f} s")

    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    errors = [o for cell in code for o in cell.get("outputs", []) if o.output_type == "error"]
    assert not errors, [f"{e.ename}: {e.evalue}" for e in errors]
    assert all(cell.get("execution_count") for cell in code), "a cell did not run"

    kernel = "".join(_texts(code[-1])).strip()
    assert kernel == f"KERNEL {sys.executable} {sys.prefix}", "the kernel is not this venv's Python"
    last = "".join(_texts(code[-2]))
    assert re.search(SUMMARIES[name], last), last
    everything = "\n".join(text for cell in code for text in _texts(cell))
    assert "model 'tiny-llama', QUICK=True" in everything
    for text in TEXTS[name]:
        assert text in everything, text
    figures = [
        o
        for cell in code
        for o in cell.get("outputs", [])
        if o.output_type in ("execute_result", "display_data") and PLOTLY in o.data
    ]
    assert len(figures) == FIGURES[name]
    for figure in figures:
        assert figure.data[PLOTLY]["data"], "an empty figure"
    assert seconds < MAX_SECONDS


def test_committed_notebooks_are_stripped_and_generated() -> None:
    build = _build_module()
    built = build.build()
    assert tuple(built) == NAMES
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == list(NAMES)
    again = build.build()
    for name, nb in built.items():
        text = (NOTEBOOKS / name).read_text(encoding="utf-8")
        assert text == build.render(nb), f"{name} differs from notebooks/_build.py's output"
        assert build.render(again[name]) == text, "the generator is not deterministic"
        committed = nbformat.reads(text, as_version=4)
        nbformat.validate(committed)
        assert committed.metadata.kernelspec.name == "python3"
        for cell in committed.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, (name, cell.id)
            assert not cell.metadata, (name, cell.id)
        first, params = committed.cells[0], committed.cells[1]
        assert first.cell_type == "markdown" and first.source.startswith("# 0")
        assert "paper" in first.source.lower()
        assert params.cell_type == "code"
        assert (
            'MODEL = os.environ.get("WELFARE_LENS_NOTEBOOK_MODEL", "tiny-llama")' in params.source
        )
        assert 'QUICK = MODEL.startswith("tiny-")' in params.source
        sources = "\n".join(cell.source for cell in committed.cells)
        assert "torch.set_num_threads(1)" in sources
    assert build.main(["--check"]) == 0
