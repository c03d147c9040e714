"""Bad input across the public API: every case raises a documented, hinted welfare_lens error.

One parametrized case per row of ``docs/bad_input.md``; the test ids are the table ids, and
:func:`test_table_lists_exactly_the_tested_cases` keeps the two one to one (and checks each row's
error class and message excerpt against the case).
"""

from __future__ import annotations

import importlib
import json
import pickle
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import welfare_lens as wl
from welfare_lens.errors import (
    ConfigError,
    DataError,
    LayerError,
    MazeConfigError,
    ModelLoadError,
    ResourceError,
    ShapeError,
    TokenizationError,
    TrainingError,
    VectorError,
    WelfareLensError,
)
from welfare_lens.maze import (
    MazeConfig,
    MazeEnv,
    TileEmoji,
    Trajectory,
    synthetic_trajectories,
    wind_message,
)
from welfare_lens.vectors import ClassStatistics, ConceptVectors, VectorMetadata, diff_of_means

TABLE = Path(__file__).resolve().parents[1] / "docs" / "bad_input.md"


@dataclass
class Ctx:
    """What a case may use: the tiny Llama (2 layers, d_model 64), a folder, monkeypatch."""

    model: Any
    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    checkpoint_source: Callable[[], Path]

    def checkpoint(self) -> Path:
        """A fresh copy of a step-0 LoRA checkpoint of the tiny Llama."""
        target = self.tmp / "run" / "checkpoint-000000"
        shutil.copytree(self.checkpoint_source(), target)
        return target


CaseFn = Callable[[Ctx], object]


@dataclass(frozen=True)
class Case:
    """One row of the table: the error class expected and an excerpt of its message or hint."""

    cid: str
    error: type[WelfareLensError]
    excerpt: str
    run: CaseFn


CASES: dict[str, Case] = {}


def case(cid: str, error: type[WelfareLensError], excerpt: str) -> Callable[[CaseFn], CaseFn]:
    """Register a bad-input case under the table id ``cid``."""

    def register(fn: CaseFn) -> CaseFn:
        assert cid not in CASES, f"duplicate case id {cid}"
        CASES[cid] = Case(cid, error, excerpt, fn)
        return fn

    return register


# ----------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------


def meta(**kw: Any) -> VectorMetadata:
    base: dict[str, Any] = {"model_id": "toy", "d_model": 3, "n_layers": 2}
    base.update(kw)
    return VectorMetadata(**base)


def vectors(d_model: int = 3, n_layers: int = 2, **kw: Any) -> ConceptVectors:
    gen = torch.Generator().manual_seed(1)
    data = {n: torch.randn(n_layers, d_model, generator=gen) for n in ("mold", "gold")}
    return ConceptVectors(data, meta(d_model=d_model, n_layers=n_layers, **kw))


def model_vectors(ctx: Ctx, **kw: Any) -> ConceptVectors:
    """Vectors shaped like the tiny Llama, made for it unless ``model_id`` says otherwise."""
    kw.setdefault("model_id", wl.model_info(ctx.model).model_id)
    return vectors(d_model=ctx.model.cfg.d_model, n_layers=ctx.model.cfg.n_layers, **kw)


def conversation(last: str = "N") -> list[dict[str, str]]:
    return [{"role": "user", "content": "Where next?"}, {"role": "assistant", "content": last}]


def saved_vectors(ctx: Ctx) -> tuple[Path, Path, Path]:
    """Save vectors; return (base, tensor file, JSON sidecar)."""
    base = vectors().save(ctx.tmp / "v")
    return base, base.with_name("v.safetensors"), base.with_name("v.json")


def saved_stats(ctx: Ctx) -> tuple[Path, Path]:
    stats = ClassStatistics(2, 3, model_id="toy")
    stats.update(["mold", "gold", "path"], torch.randn(3, 2, 3), groups=[0, 1, 2])
    base = stats.save(ctx.tmp / "s")
    return base, base.with_name("s.safetensors")


def drop_sha(json_file: Path) -> None:
    data = json.loads(json_file.read_text())
    del data["sha256"]
    json_file.write_text(json.dumps(data))


def truncate(file: Path, keep: float = 0.5) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)])


# ----------------------------------------------------------------------------------------------
# L: layer indices
# ----------------------------------------------------------------------------------------------


@case("L01", LayerError, "is out of range for a model with 2 layers")
def _(ctx: Ctx) -> object:
    return wl.hook_name(5, total=ctx.model.cfg.n_layers)


@case("L02", LayerError, "Layer 99 is out of range")
def _(ctx: Ctx) -> object:
    return wl.capture(ctx.model, [(conversation(), "mold")], layers=[99], progress=False)


@case("L03", LayerError, "Layer -9 is out of range")
def _(ctx: Ctx) -> object:
    with wl.steer(ctx.model, torch.ones(64), layer=-9, alpha=1.0):
        return None


@case("L04", LayerError, "out of range for 2 layers")
def _(ctx: Ctx) -> object:
    return vectors().at("gold", 7)


@case("L05", LayerError, "Unknown hook kind")
def _(ctx: Ctx) -> object:
    return wl.hook_name(1, "resid_final")  # type: ignore[arg-type]


@case("L06", LayerError, "direction.0, which llama.cpp rejects")
def _(ctx: Ctx) -> object:
    return wl.interop.export_gguf(vectors(), ctx.tmp / "v.gguf", name="gold", layers=[0, 1])


# ----------------------------------------------------------------------------------------------
# S: shapes and d_model
# ----------------------------------------------------------------------------------------------


@case("S01", ShapeError, "acts must have shape [batch, 2, 3]")
def _(ctx: Ctx) -> object:
    ClassStatistics(2, 3).update("mold", torch.zeros(4, 2, 5))
    return None


@case("S02", ShapeError, "whose d_model is 64")
def _(ctx: Ctx) -> object:
    hook = wl.add_vector_hook(torch.ones(65))
    return ctx.model.run_with_hooks(
        ctx.model.to_tokens("hello"), fwd_hooks=[(wl.hook_name(0), hook)]
    )


@case("S03", ShapeError, "the model's d_model is 64")
def _(ctx: Ctx) -> object:
    with wl.steer(ctx.model, torch.ones(7), layer=1, alpha=1.0):
        return None


@case("S04", ShapeError, "but the metadata says [n_layers, d_model]=[2, 3]")
def _(ctx: Ctx) -> object:
    return ConceptVectors({"gold": torch.zeros(2, 4)}, meta())


@case("S05", ShapeError, "same model and layer selection")
def _(ctx: Ctx) -> object:
    other = ClassStatistics(2, 32)
    return wl.capture(ctx.model, [(conversation(), "mold")], stats=other, progress=False)


@case("S06", ShapeError, "Trailing shapes differ")
def _(ctx: Ctx) -> object:
    return diff_of_means(torch.zeros(3, 2, 4), torch.zeros(3, 2, 5))


# ----------------------------------------------------------------------------------------------
# X: vectors from another model, mode or recipe
# ----------------------------------------------------------------------------------------------


@case("X01", ShapeError, "but the target has d_model=64")
def _(ctx: Ctx) -> object:
    vectors(d_model=32, model_id="other-model").check_compatible(ctx.model)
    return None


@case("X02", VectorError, "allow_other_checkpoint=True")
def _(ctx: Ctx) -> object:
    model_vectors(ctx, model_id="smollm2-135m-instruct").check_compatible(ctx.model)
    return None


@case("X03", VectorError, "coordinate_mode='compat'")
def _(ctx: Ctx) -> object:
    model_vectors(ctx, coordinate_mode="compat").check_compatible(ctx.model)
    return None


@case("X04", ShapeError, "Extract vectors on the target model")
def _(ctx: Ctx) -> object:
    with wl.steer(ctx.model, vectors(d_model=32), layer=1, alpha=2.0, name="gold"):
        return None


@case("X05", ShapeError, "but the target has d_model=5")
def _(ctx: Ctx) -> object:
    return wl.analysis.antiparallelism(vectors(d_model=3), control=vectors(d_model=5))


@case("X06", VectorError, "position_rule")
def _(ctx: Ctx) -> object:
    trained = wl.welfare_vectors(_three_class_stats())
    naive = ClassStatistics(2, 3, model_id="naive", position_rule="generation_prompt")
    return wl.control_vectors(naive, trained)


@case("X07", ShapeError, "but the target has d_model=64")
def _(ctx: Ctx) -> object:
    path = wl.interop.export_gguf(vectors(d_model=32, n_layers=2), ctx.tmp / "v.gguf", name="gold")
    return wl.interop.import_gguf(path, model=ctx.model)


def _three_class_stats() -> ClassStatistics:
    stats = ClassStatistics(2, 3, model_id="toy")
    stats.update(["mold", "gold", "path"] * 2, torch.randn(6, 2, 3), groups=list(range(6)))
    return stats


# ----------------------------------------------------------------------------------------------
# N: NaN / Inf
# ----------------------------------------------------------------------------------------------


@case("N01", VectorError, "contains NaN/Inf at layer(s) [1]")
def _(ctx: Ctx) -> object:
    bad = torch.zeros(2, 3)
    bad[1, 0] = float("nan")
    return ConceptVectors({"gold": bad}, meta())


@case("N02", VectorError, "Steering vector contains NaN or inf")
def _(ctx: Ctx) -> object:
    return wl.add_vector_hook(torch.tensor([1.0, float("inf")]))


@case("N03", VectorError, "not a finite floating-point tensor")
def _(ctx: Ctx) -> object:
    with wl.steer(ctx.model, torch.full((64,), float("nan")), layer=1, alpha=1.0):
        return None


@case("N04", DataError, "contains NaN/Inf activations at layer(s) [0]")
def _(ctx: Ctx) -> object:
    acts = torch.zeros(2, 2, 3)
    acts[1, 0, 2] = float("inf")
    ClassStatistics(2, 3).update("mold", acts)
    return None


@case("N05", VectorError, "alpha must be a finite number, got nan")
def _(ctx: Ctx) -> object:
    with wl.steer(ctx.model, torch.ones(64), layer=1, alpha=float("nan")):
        return None


@case("N06", VectorError, "alpha must be a finite number, got 'big'")
def _(ctx: Ctx) -> object:
    with wl.steer(ctx.model, torch.ones(64), layer=1, alpha="big"):  # type: ignore[arg-type]
        return None


@case("N07", VectorError, "contains NaN/Inf at layer(s) [0]")
def _(ctx: Ctx) -> object:
    from safetensors.torch import save_file

    base, st_file, js_file = saved_vectors(ctx)
    nan = torch.zeros(2, 3)
    nan[0, 1] = float("nan")
    save_file({"mold": nan, "gold": torch.ones(2, 3)}, str(st_file))
    drop_sha(js_file)
    return ConceptVectors.load(base)


@case("N08", VectorError, "contains NaN/Inf at layer(s) [1]")
def _(ctx: Ctx) -> object:
    arr = np.ones((2, 3), dtype=np.float32)
    arr[1, 1] = np.inf
    np.save(ctx.tmp / "v.npy", arr)
    return wl.interop.import_tensors(ctx.tmp / "v.npy")


@case("N09", VectorError, "Cannot scale vectors by nan")
def _(ctx: Ctx) -> object:
    return vectors() * float("nan")


# ----------------------------------------------------------------------------------------------
# T: trajectory and sample sets (empty, one class, malformed)
# ----------------------------------------------------------------------------------------------


@case("T01", DataError, "the trajectory set was empty")
def _(ctx: Ctx) -> object:
    return wl.capture(ctx.model, [], progress=False)


@case("T02", DataError, "A difference of means needs at least two classes")
def _(ctx: Ctx) -> object:
    items = [(conversation("N"), "mold"), (conversation("S"), "mold")]
    return wl.welfare_vectors(wl.capture(ctx.model, items, progress=False))


@case("T03", DataError, "have no samples")
def _(ctx: Ctx) -> object:
    stats = ClassStatistics(2, 3)
    stats.update(["mold", "path"], torch.randn(2, 2, 3))
    return wl.welfare_vectors(stats)


@case("T04", DataError, "neither a trajectory nor a (messages, label[, group]) tuple")
def _(ctx: Ctx) -> object:
    return wl.capture(ctx.model, ["not a trajectory"], progress=False)


@case("T05", TokenizationError, "no assistant content")
def _(ctx: Ctx) -> object:
    items = [([{"role": "user", "content": "Where next?"}], "mold")]
    return wl.capture(ctx.model, items, progress=False)


@case("T06", DataError, "Both sets need samples")
def _(ctx: Ctx) -> object:
    return diff_of_means(torch.zeros(0, 2, 3), torch.zeros(4, 2, 3))


@case("T07", DataError, "Unknown label(s) ['lava']")
def _(ctx: Ctx) -> object:
    ClassStatistics(2, 3).update(["mold", "lava"], torch.zeros(2, 2, 3))
    return None


@case("T08", MazeConfigError, "per_class must be a non-negative integer")
def _(ctx: Ctx) -> object:
    return synthetic_trajectories(MazeConfig(size=10), per_class=-1)


@case("T09", DataError, "has not played any turn yet")
def _(ctx: Ctx) -> object:
    return Trajectory.from_env(MazeEnv(MazeConfig(size=10), 0))


# ----------------------------------------------------------------------------------------------
# M: maze configurations and episodes
# ----------------------------------------------------------------------------------------------


@case("M01", MazeConfigError, "TileEmoji symbols must be distinct")
def _(ctx: Ctx) -> object:
    return TileEmoji(mold="\U0001f4c7", gold="\U0001f4c7", path="\U0001f9fe")


@case("M02", MazeConfigError, "TileEmoji symbols must be distinct")
def _(ctx: Ctx) -> object:
    return MazeConfig.from_dict({"emoji": {"mold": "A", "gold": "B", "path": "A"}})


@case("M03", MazeConfigError, "size must be an integer >= 5")
def _(ctx: Ctx) -> object:
    return MazeConfig(size=3)


@case("M04", MazeConfigError, "wind_p must be a probability in [0, 1]")
def _(ctx: Ctx) -> object:
    return MazeConfig(wind_p=1.5)


@case("M05", MazeConfigError, "is empty: the range is [lower, upper)")
def _(ctx: Ctx) -> object:
    return MazeConfig(mold_fraction_range=(0.5, 0.1))


@case("M06", MazeConfigError, "Did you mean 'wind_p'")
def _(ctx: Ctx) -> object:
    return MazeConfig.from_dict({"wind_pp": 0.2})


@case("M07", MazeConfigError, "no Path cell would be left for the start")
def _(ctx: Ctx) -> object:
    return MazeConfig(size=5, mold_fraction_range=(0.8, 1.0), gold_fraction=1.0)


@case("M08", DataError, "The episode is over")
def _(ctx: Ctx) -> object:
    env = MazeEnv(MazeConfig(size=10, turns=1), 0)
    env.step("N")
    return env.step("N")


@case("M09", MazeConfigError, "maze seed must be a non-negative integer")
def _(ctx: Ctx) -> object:
    return MazeEnv(MazeConfig(size=10), -3)


@case("M10", MazeConfigError, "wind must be 'auto', None or one of N/E/S/W")
def _(ctx: Ctx) -> object:
    return MazeEnv(MazeConfig(size=10), 0).step("N", wind="up")  # type: ignore[arg-type]


@case("M11", MazeConfigError, "The emoji mapping lacks the key(s) ['path']")
def _(ctx: Ctx) -> object:
    return MazeConfig.from_dict({"emoji": {"mold": "A", "gold": "B"}})


# ----------------------------------------------------------------------------------------------
# A: actions and chat messages
# ----------------------------------------------------------------------------------------------


@case("A01", TokenizationError, "tokens in the assistant position")
def _(ctx: Ctx) -> object:
    return wl.action_token_ids(ctx.model.tokenizer, actions=("Northwards-ho", "S"))


@case("A02", TokenizationError, "actions must be distinct strings")
def _(ctx: Ctx) -> object:
    return wl.action_token_ids(ctx.model.tokenizer, actions=("N", "E", "N"))


@case("A03", TokenizationError, "is not a chat message")
def _(ctx: Ctx) -> object:
    return wl.render_chat(ctx.model.tokenizer, [{"role": "robot", "content": "N"}])


@case("A04", MazeConfigError, "Unknown wind direction 'NE'")
def _(ctx: Ctx) -> object:
    return wind_message("NE")


# ----------------------------------------------------------------------------------------------
# F: files (corrupt, truncated, mismatched, untrusted)
# ----------------------------------------------------------------------------------------------


@case("F01", DataError, "could not be read as safetensors")
def _(ctx: Ctx) -> object:
    base, st_file, js_file = saved_vectors(ctx)
    truncate(st_file)
    drop_sha(js_file)
    return ConceptVectors.load(base)


@case("F02", DataError, "does not match the SHA-256")
def _(ctx: Ctx) -> object:
    base, st_file, _ = saved_vectors(ctx)
    data = bytearray(st_file.read_bytes())
    data[-1] ^= 0xFF
    st_file.write_bytes(bytes(data))
    return ConceptVectors.load(base)


@case("F03", DataError, "is not valid JSON")
def _(ctx: Ctx) -> object:
    base, _, js_file = saved_vectors(ctx)
    truncate(js_file)
    return ConceptVectors.load(base)


@case("F04", DataError, "missing file(s)")
def _(ctx: Ctx) -> object:
    return ConceptVectors.load(ctx.tmp / "nothing")


@case("F05", DataError, "truncated or corrupt")
def _(ctx: Ctx) -> object:
    base, st_file = saved_stats(ctx)
    truncate(st_file, keep=0.3)
    drop_sha(base.with_name("s.json"))
    return ClassStatistics.load(base)


@case("F06", DataError, "does not describe a welfare_lens ClassStatistics")
def _(ctx: Ctx) -> object:
    base, _, _ = saved_vectors(ctx)
    return ClassStatistics.load(base)


@case("F07", DataError, "could not be read as safetensors")
def _(ctx: Ctx) -> object:
    base, st_file, js_file = saved_vectors(ctx)
    st_file.write_bytes(pickle.dumps({"gold": [[1.0, 2.0, 3.0]] * 2}))
    drop_sha(js_file)
    return ConceptVectors.load(base)


@case("F08", TrainingError, "could not be read as safetensors")
def _(ctx: Ctx) -> object:
    ckpt = ctx.checkpoint()
    truncate(ckpt / "adapter_model.safetensors")
    return wl.rl.load_checkpoint(ckpt, model=wl.load_model("tiny-llama"))


@case("F09", TrainingError, "Cannot read")
def _(ctx: Ctx) -> object:
    ckpt = ctx.checkpoint()
    truncate(ckpt / "trainer_state.json")
    return wl.rl.load_checkpoint(ckpt)


@case("F10", TrainingError, "neither a checkpoint")
def _(ctx: Ctx) -> object:
    return wl.rl.load_checkpoint(ctx.tmp / "nowhere")


@case("F11", ModelLoadError, "is truncated or not a GGUF model file")
def _(ctx: Ctx) -> object:
    path = ctx.tmp / "cut.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00\x02\x00")
    return wl.load_model(str(path))


@case("F12", DataError, "could not be read as GGUF")
def _(ctx: Ctx) -> object:
    path = wl.interop.export_gguf(vectors(), ctx.tmp / "v.gguf", name="gold")
    truncate(path, keep=0.4)
    return wl.interop.import_gguf(path)


@case("F13", DataError, "pickled code is refused")
def _(ctx: Ctx) -> object:
    path = ctx.tmp / "v.pt"
    path.write_bytes(pickle.dumps({"gold": Trajectory}, protocol=2))  # a class reference
    return wl.interop.import_tensors(path)


@case("F14", DataError, "not a control vector")
def _(ctx: Ctx) -> object:
    import gguf

    path = ctx.tmp / "model.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return wl.interop.import_gguf(path)


# ----------------------------------------------------------------------------------------------
# C: configuration typos and bad values
# ----------------------------------------------------------------------------------------------


@case("C01", ConfigError, "Unknown setting(s) ['train_stepz']")
def _(ctx: Ctx) -> object:
    from welfare_lens.pipeline import PipelineConfig

    return PipelineConfig().updated({"train_stepz": 3})


@case("C02", ConfigError, "Cannot read the config")
def _(ctx: Ctx) -> object:
    from welfare_lens.pipeline import PipelineConfig

    path = ctx.tmp / "run.toml"
    path.write_text("train_steps = [unclosed\n")
    return PipelineConfig.from_toml(path)


@case("C03", ConfigError, "Unknown setting(s) ['per_clas']")
def _(ctx: Ctx) -> object:
    from welfare_lens.pipeline import PipelineConfig

    path = ctx.tmp / "run.toml"
    path.write_text("[pipeline]\nper_clas = 100\n")
    return PipelineConfig.from_toml(path)


@case("C04", ConfigError, "holdout must lie in (0, 1)")
def _(ctx: Ctx) -> object:
    from welfare_lens.pipeline import PipelineConfig

    return PipelineConfig(holdout=1.5)


@case("C05", TrainingError, "Unknown GRPOConfig key 'lrr'")
def _(ctx: Ctx) -> object:
    return wl.rl.GRPOConfig.from_dict({"lrr": 1e-4})


@case("C06", TrainingError, "lr must be a finite number > 0.0")
def _(ctx: Ctx) -> object:
    return wl.rl.GRPOConfig(lr=-1.0)


@case("C07", ModelLoadError, "Unknown tiny model 'tiny-mamba'")
def _(ctx: Ctx) -> object:
    return wl.load_model("tiny-mamba")


# ----------------------------------------------------------------------------------------------
# R: resources and batch sizes
# ----------------------------------------------------------------------------------------------


@case("R01", ResourceError, "generate ran out of memory even with batch_size=1")
def _(ctx: Ctx) -> object:
    generation = importlib.import_module("welfare_lens.steering.generate")

    def out_of_memory(*args: object, **kwargs: object) -> object:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    ctx.monkeypatch.setattr(generation, "_generate_rows", out_of_memory)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the back-off 8 -> 4 -> 2 -> 1
        return generation.generate(ctx.model, "Hi", samples=8, batch_size=8, max_new_tokens=2)


@case("R02", ShapeError, "batch_size must be a positive integer or None, got 0")
def _(ctx: Ctx) -> object:
    from welfare_lens.steering.generate import generate

    return generate(ctx.model, "Hi", batch_size=0, max_new_tokens=2)


@case("R03", DataError, "batch_size must be >= 1, got 0")
def _(ctx: Ctx) -> object:
    return wl.capture(ctx.model, [(conversation(), "mold")], batch_size=0, progress=False)


# ----------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Tiny models run fastest on one thread (tests/conftest.py)."""


@pytest.fixture(scope="module")
def llama() -> Any:
    return wl.load_model("tiny-llama")


@pytest.fixture(scope="module")
def checkpoint_source(tmp_path_factory: pytest.TempPathFactory) -> Callable[[], Path]:
    made: list[Path] = []

    def build() -> Path:
        if not made:
            out = tmp_path_factory.mktemp("ckpt")
            config = wl.rl.GRPOConfig(progress=False, out_dir=str(out), lora_r=4, lora_alpha=8)
            trainer = wl.rl.GRPOTrainer(
                wl.load_model("tiny-llama"), MazeConfig(size=10, turns=2), config
            )
            made.append(trainer.save_checkpoint())
        return made[0]

    return build


@pytest.fixture
def ctx(
    llama: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    checkpoint_source: Callable[[], Path],
) -> Ctx:
    return Ctx(llama, tmp_path, monkeypatch, checkpoint_source)


@pytest.mark.parametrize("cid", sorted(CASES), ids=sorted(CASES))
def test_bad_input_raises_documented_error(cid: str, ctx: Ctx) -> None:
    expected = CASES[cid]
    with pytest.raises(Exception) as info:
        expected.run(ctx)
    exc = info.value
    assert isinstance(exc, WelfareLensError), f"{cid}: raised {type(exc).__name__}: {exc}"
    assert type(exc) is expected.error, f"{cid}: {type(exc).__name__} is not the documented one"
    assert expected.excerpt in str(exc), f"{cid}: {expected.excerpt!r} not in {str(exc)!r}"
    # It names the fix: a non-empty hint, appended to the message.
    assert exc.hint and exc.hint.strip(), f"{cid}: no hint"
    assert str(exc).endswith(f"Hint: {exc.hint}")


_ROW = re.compile(r"^\|\s*([A-Z]\d{2})\s*\|")


def table_rows() -> dict[str, list[str]]:
    """``{id: [id, API, bad input, error class, excerpt]}`` from docs/bad_input.md."""
    rows: dict[str, list[str]] = {}
    for line in TABLE.read_text(encoding="utf-8").splitlines():
        if not _ROW.match(line):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 5, f"row {cells[0]} has {len(cells)} cells, not 5"
        assert cells[0] not in rows, f"duplicate table id {cells[0]}"
        rows[cells[0]] = cells
    return rows


def test_table_lists_exactly_the_tested_cases() -> None:
    rows = table_rows()
    assert len(rows) >= 30
    assert set(rows) == set(CASES)
    for cid, (_, api, bad, error, excerpt) in rows.items():
        assert api and bad, f"{cid}: empty API or bad-input cell"
        assert error == f"`{CASES[cid].error.__name__}`", f"{cid}: class {error}"
        assert excerpt == f"`{CASES[cid].excerpt}`", f"{cid}: excerpt {excerpt}"


def test_every_documented_error_class_is_a_welfare_lens_error() -> None:
    import welfare_lens.errors as errors

    used = {c.error for c in CASES.values()}
    for cls in used:
        assert issubclass(cls, WelfareLensError) and getattr(errors, cls.__name__) is cls
        assert cls.__doc__, f"{cls.__name__} has no docstring"


def test_generate_halves_an_out_of_memory_batch_and_gives_the_same_text(
    llama: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The back-off before R01: a batch that does not fit is halved, with a warning."""
    generation = importlib.import_module("welfare_lens.steering.generate")
    kwargs: dict[str, Any] = {"samples": 4, "max_new_tokens": 3, "temperature": 1.0, "seed": 5}
    expected = generation.generate(llama, "Hi", batch_size=4, **kwargs)
    real = generation._generate_rows
    widths: list[int] = []

    def fits_two(*args: Any, **kw: Any) -> Any:
        widths.append(len(args[5]))
        if len(args[5]) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return real(*args, **kw)

    monkeypatch.setattr(generation, "_generate_rows", fits_two)
    with pytest.warns(RuntimeWarning, match="retrying with 2"):
        got = generation.generate(llama, "Hi", batch_size=4, **kwargs)
    assert widths == [4, 2, 2]
    assert [g.token_ids for g in got] == [g.token_ids for g in expected]

    # Other runtime errors are not mistaken for out-of-memory.
    def broken(*args: Any, **kw: Any) -> Any:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(generation, "_generate_rows", broken)
    with pytest.raises(RuntimeError, match="mat1"):
        generation.generate(llama, "Hi", batch_size=4, **kwargs)
