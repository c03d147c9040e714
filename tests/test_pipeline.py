"""The pipeline stages and the CLI on a tiny model: outputs on disk, resumable, clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from welfare_lens.cli import main
from welfare_lens.errors import ConfigError
from welfare_lens.pipeline import STAGES, PipelineConfig, run_stage
from welfare_lens.steering.pre_existence import _layers
from welfare_lens.vectors import ConceptVectors


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("reproduce")
    try:
        code = main(["reproduce", "--quick", "--model", "tiny-llama", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return out


def test_reproduce_writes_every_stage(quick_run: Path) -> None:
    for stage in STAGES:
        done = json.loads((quick_run / stage / "done.json").read_text())
        assert done["stage"] == stage and done["seconds"] >= 0
        assert done["config"]["model"] == "tiny-llama"
    assert (quick_run / "extract" / "v.safetensors").exists()
    assert (quick_run / "extract" / "u.safetensors").exists()
    analysis = json.loads((quick_run / "analyze" / "analysis.json").read_text())
    n_layers = len(analysis["antiparallelism"]["trained"]["per_layer"])
    for tag in ("v", "u"):
        for concept in ("mold", "gold"):
            assert 0 <= analysis["l_star"][tag][concept] < n_layers
    for tag in ("v", "u"):  # the analyzed vectors carry ℓ*, which pre_existence reads
        stored = ConceptVectors.load(quick_run / "analyze" / tag)
        assert stored.metadata.extra["l_star"] == analysis["l_star"][tag]
        assert _layers(None, stored, ["mold", "gold"], n_layers) == analysis["l_star"][tag]
        original = ConceptVectors.load(quick_run / "extract" / tag)
        assert all(torch.equal(stored[n], original[n]) for n in ("mold", "gold"))
    vaa = analysis["vaa"]  # appendix H: one cosine per layer for each vector of v and u
    assert vaa["layers"] == list(range(n_layers)) and vaa["n_statements"] >= 150
    for tag in ("v", "u"):
        assert set(vaa["cosines"][tag]) == {"mold", "gold"}
        assert all(-1.0 <= c <= 1.0 for c in vaa["cosines"][tag]["gold"])
    assert "Valence-Assent Axis (appendix H)" in (quick_run / "report.html").read_text()
    steer = json.loads((quick_run / "steer" / "steer.json").read_text())
    for evaluation in ("sentiment", "confidence", "refusal", "backtracking"):
        vectors = {row["vector"] for row in steer[evaluation]["slopes"]}
        assert vectors == {"v_mold", "v_gold", "u_mold", "u_gold"}
    evaluate = json.loads((quick_run / "evaluate" / "evaluate.json").read_text())
    assert set(evaluate) == {"untrained", "trained"}
    assert evaluate["trained"]["n_mazes"] == 4


def test_extracted_vectors_carry_their_role(quick_run: Path) -> None:
    roles = {tag: ConceptVectors.load(quick_run / "extract" / tag).metadata.role for tag in "uv"}
    assert roles == {"u": "control", "v": "trained"}


def test_finished_stages_are_skipped(quick_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (quick_run / "analyze" / "analysis.json").stat().st_mtime_ns
    cfg = PipelineConfig.preset("quick", model="tiny-llama")
    summary = run_stage("analyze", cfg, quick_run)
    assert "skipped" in capsys.readouterr().out
    assert summary["stage"] == "analyze"
    assert (quick_run / "analyze" / "analysis.json").stat().st_mtime_ns == before
    # The same folder with other settings: an error, not the old results.
    with pytest.raises(ConfigError, match="per_class"):
        run_stage("analyze", cfg.updated({"per_class": 99}), quick_run)


def test_force_reruns_a_stage_and_keeps_the_old_outputs(quick_run: Path, tmp_path: Path) -> None:
    import shutil

    for stage in ("train", "extract", "analyze", "steer"):
        shutil.copytree(quick_run / stage, tmp_path / stage)
    cfg = PipelineConfig.preset("quick", model="tiny-llama", eval_items=1)
    old_rows = (tmp_path / "steer" / "sentiment.jsonl").read_text()
    with pytest.raises(ConfigError, match="eval_items"):
        run_stage("steer", cfg, tmp_path)
    run_stage("steer", cfg, tmp_path, force=True)
    assert (tmp_path / "steer.old" / "sentiment.jsonl").read_text() == old_rows
    header = json.loads((tmp_path / "steer" / "sentiment.jsonl").read_text().splitlines()[0])
    assert header["_sweep"]["settings"]["items"] == 1
    done = json.loads((tmp_path / "steer" / "done.json").read_text())
    assert done["config"]["eval_items"] == 1


def test_minimal_pair_design_extracts_unflagged_vectors(quick_run: Path, tmp_path: Path) -> None:
    """design="minimal_pairs": same trained checkpoint, classes that differ only in the move."""
    import shutil

    shutil.copytree(quick_run / "train", tmp_path / "train")
    cfg = PipelineConfig.preset("quick", model="tiny-llama", design="minimal_pairs")
    run_stage("extract", cfg, tmp_path)
    done = json.loads((tmp_path / "extract" / "done.json").read_text())
    assert done["design"] == "minimal_pairs"
    from welfare_lens.vectors import ClassStatistics

    for tag in ("v", "u"):
        table = ClassStatistics.load(tmp_path / "extract" / f"stats_{tag}").info["composition"]
        assert table["flagged"] is False and table["max_imbalance"] == 0.0
    paper = ClassStatistics.load(quick_run / "extract" / "stats_v").info["composition"]
    assert paper["flagged"] is True


def test_config_sources_and_errors(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text('[pipeline]\nper_class = 123\nalphas = [-2, 0, 2]\nmodel = "tiny-qwen3"\n')
    cfg = PipelineConfig.from_toml(toml, base=PipelineConfig.preset("quick"))
    assert (cfg.per_class, cfg.alphas, cfg.model) == (123, (-2, 0, 2), "tiny-qwen3")
    assert cfg.eval_mazes == PipelineConfig.preset("quick").eval_mazes
    toml.write_text("per_clas = 5\n")
    with pytest.raises(ConfigError, match="per_clas"):
        PipelineConfig.from_toml(toml)
    toml.write_text("per_class = [\n")
    with pytest.raises(ConfigError, match="Cannot read"):
        PipelineConfig.from_toml(toml)
    with pytest.raises(ConfigError, match="evaluation"):
        PipelineConfig(evaluations=("sentiment", "vibes"))
    with pytest.raises(ConfigError, match="per_class"):
        PipelineConfig(per_class=-5)
    with pytest.raises(ConfigError, match="dtype"):
        PipelineConfig(dtype="float8")
    assert PipelineConfig(dtype="bfloat16").dtype == "bfloat16"
    with pytest.raises(ConfigError, match="design"):
        PipelineConfig(design="paired")
    with pytest.raises(ConfigError, match="preset"):
        PipelineConfig.preset("huge")
    paper = PipelineConfig.preset("paper")
    assert (paper.per_class, paper.mazes_per_step, paper.episodes_per_maze) == (5000, 8, 64)
    assert (paper.prompt_format, paper.lr, paper.alphas) == ("paper", 3e-6, (-4, -2, 0, 2, 4))
    assert PipelineConfig.preset("quick").per_class < PipelineConfig.preset("full").per_class


def test_cli_reports_bad_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["extract", "--out", str(tmp_path), "--set", "per_class"])
    assert code == 2 and "KEY=VALUE" in capsys.readouterr().err
    code = main(["extract", "--out", str(tmp_path), "--set", "nonsense=3"])
    assert code == 2 and "nonsense" in capsys.readouterr().err
    # A stage whose inputs are missing names the stage to run first.
    code = main(["steer", "--quick", "--model", "tiny-llama", "--out", str(tmp_path)])
    err: Any = capsys.readouterr().err
    assert code == 2 and "analysis.json" in err


def test_train_stage_follows_a_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """recipe="auto" trains with RECIPES[model]: its curriculum, not train_steps; the report
    names the recipe; recipe=None keeps the plain GRPO settings."""
    from dataclasses import replace as dc_replace

    from welfare_lens._pipeline_report import _training_text
    from welfare_lens.rl.recipe import RECIPES, Curriculum

    base = RECIPES["smollm2-135m-instruct"]
    tiny = dc_replace(
        base,
        name="tiny-llama",
        model="tiny-llama",
        grpo={**base.grpo, "mazes_per_step": 1, "episodes_per_maze": 2, "micro_batch_size": 2},
        curriculum=Curriculum.parse("1:2,2:1"),
        measured=False,
    )
    monkeypatch.setitem(RECIPES, "tiny-llama", tiny)
    cfg = PipelineConfig.preset("full", model="tiny-llama", train_steps=50)
    assert cfg.recipe == "auto"
    summary = run_stage("train", cfg, tmp_path)
    assert (summary["recipe"], summary["steps"]) == ("tiny-llama", 3)  # 2 + 1, not 50
    plan = json.loads((tmp_path / "train" / "recipe.json").read_text())["plan"]
    assert [phase["turns"] for phase in plan["phases"]] == [1, 2]
    text = _training_text(cfg, tmp_path)
    assert "recipe **tiny-llama** (an unmeasured starting point)" in text
    assert "3 steps in all" in text
    # Without a recipe the fields apply (the quick preset); an unknown recipe is an error.
    assert _training_text(PipelineConfig.preset("quick"), tmp_path / "none").startswith("2 steps")
    with pytest.raises(ConfigError, match="recipe"):
        PipelineConfig(recipe="smollm")
    assert PipelineConfig(recipe="none").recipe is None
