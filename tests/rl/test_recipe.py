"""Recipes: curriculum bookkeeping, phase switching, resumable training and search."""

from __future__ import annotations

import csv
import importlib
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from welfare_lens.errors import TrainingError
from welfare_lens.maze import MazeConfig
from welfare_lens.models import load_model
from welfare_lens.rl import GRPOConfig, GRPOTrainer
from welfare_lens.rl.learning_curve import PolicySnapshot, learning_curve
from welfare_lens.rl.recipe import (
    RECIPES,
    Curriculum,
    CurriculumStage,
    enter_phase,
    get_recipe,
    given,
    plan_phases,
    recipe_for,
    search,
    train_with_recipe,
)

# The module itself (welfare_lens.rl may export a function of the same name).
lc_module = importlib.import_module("welfare_lens.rl.learning_curve")
ROOT = Path(__file__).resolve().parents[2]
MAZE = MazeConfig(size=20, turns=3, prompt_format="compact")
TWO_STAGES = Curriculum([{"turns": 1, "steps": 1}, {"turns": 2, "steps": 1}])


def small(**kw: Any) -> GRPOConfig:
    base: dict[str, Any] = dict(
        mazes_per_step=2,
        episodes_per_maze=2,
        lr=1e-2,
        lora_r=4,
        lora_alpha=8,
        progress=False,
        sft_batch_size=2,
        sft_horizon=2,
    )
    base.update(kw)
    return GRPOConfig(**base)


# ------------------------------------------------------------------ curriculum bookkeeping


def test_curriculum_stages_boundaries_and_mazes() -> None:
    cur = Curriculum(
        [
            {"turns": 1, "steps": 40},
            CurriculumStage(steps=40, turns=5, mold_fraction_range=(0.1, 0.2)),
            {"turns": 15, "steps": 80, "gold_fraction": 0.3, "name": "full"},
        ]
    )
    assert cur.names == ["stage-1", "stage-2", "full"]
    assert cur.total_steps == 160
    assert cur.boundaries(10) == [(10, 50), (50, 90), (90, 170)]
    assert [cur.stage_at(s, 10) for s in (10, 49, 50, 89, 90, 169)] == [0, 0, 1, 1, 2, 2]
    base = MazeConfig(size=30)
    mazes = cur.maze_configs(base)
    assert [m.turns for m in mazes] == [1, 5, 15]
    assert mazes[1].mold_fraction_range == (0.1, 0.2) and mazes[0].mold_fraction_range == (0.1, 0.5)
    assert mazes[2].gold_fraction == 0.3 and mazes[0].gold_fraction == 0.2
    assert all(m.size == 30 for m in mazes)
    assert Curriculum.from_dict(json.loads(json.dumps(cur.to_dict()))) == cur
    assert "full: 80 steps x 15 turns" in repr(cur)
    with pytest.raises(TrainingError, match="outside"):
        cur.stage_at(170, 10)


def test_curriculum_parse_and_scale() -> None:
    cur = Curriculum.parse("1:40, 5:40,15:80")
    assert [(s.turns, s.steps) for s in cur.stages] == [(1, 40), (5, 40), (15, 80)]
    assert [s.steps for s in cur.scaled(8).stages] == [2, 2, 4]
    # 7 * (40, 40, 80) / 160 = (1.75, 1.75, 3.5): floors (1, 1, 3), largest remainders first.
    assert [s.steps for s in cur.scaled(7).stages] == [2, 2, 3]
    assert [s.steps for s in cur.scaled(3).stages] == [1, 1, 1]
    assert [s.turns for s in cur.scaled(3).stages] == [1, 5, 15]
    with pytest.raises(TrainingError, match="Cannot fit 3 stages") as err:
        cur.scaled(2)
    assert err.value.hint


@pytest.mark.parametrize(
    ("build", "match", "hint"),
    [
        (lambda: Curriculum([]), "at least one stage", "Curriculum.single"),
        (lambda: Curriculum.parse("1:40;5"), "Cannot read", "turns:steps"),
        (lambda: Curriculum([{"turn": 1, "steps": 4}]), "Unknown curriculum stage key", "'turns'"),
        (lambda: Curriculum([{"turns": 1}]), "no 'steps'", "steps"),
        (lambda: Curriculum([{"steps": 0}]), "steps must be a positive", "E.g."),
        (
            lambda: Curriculum([{"steps": 1, "name": "a"}, {"steps": 1, "name": "a"}]),
            "distinct",
            "",
        ),
        (lambda: Curriculum([3]), "CurriculumStage or a dict", "turns"),  # type: ignore[list-item]
        (
            lambda: CurriculumStage(steps=1, mold_fraction_range=(0.5, 0.1)).maze_config(MAZE),
            "invalid maze",
            "lower < upper",
        ),
    ],
)
def test_curriculum_rejects_bad_input(build: Any, match: str, hint: str) -> None:
    with pytest.raises(TrainingError, match=match) as err:
        build()
    assert hint in (err.value.hint or "")


def test_plan_phases_sft_then_stages() -> None:
    config = small(lr=3e-4)
    phases = plan_phases(MAZE, config, curriculum=TWO_STAGES, sft_steps=2, sft_lr=1e-4)
    assert [(p.name, p.loss, p.start_step, p.end_step) for p in phases] == [
        ("sft", "sft", 0, 2),
        ("stage-1", "dr_grpo", 2, 3),
        ("stage-2", "dr_grpo", 3, 4),
    ]
    assert [p.maze_cfg.turns for p in phases] == [3, 1, 2]
    assert [p.lr for p in phases] == [1e-4, 3e-4, 3e-4]
    assert phases[0].config(config).loss == "sft" and phases[1].config(config).lr == 3e-4
    assert all(p.to_dict()["prompt_format"] == "compact" for p in phases)
    no_sft = plan_phases(MAZE, config, curriculum=TWO_STAGES)
    assert [p.start_step for p in no_sft] == [0, 1]
    with pytest.raises(TrainingError, match="'sft'") as err:
        plan_phases(MAZE, small(loss="sft"), curriculum=TWO_STAGES)
    assert "sft_steps" in (err.value.hint or "")
    with pytest.raises(TrainingError, match="sft_steps"):
        plan_phases(MAZE, config, curriculum=TWO_STAGES, sft_steps=-1)


def test_stages_can_set_their_own_mazes_per_step(tmp_path: Path) -> None:
    cur = Curriculum.parse("1:2, 2:1:1")
    assert [s.mazes_per_step for s in cur.stages] == [None, 1]
    assert "1 mazes per step" in repr(cur)
    assert Curriculum.from_dict(json.loads(json.dumps(cur.to_dict()))) == cur
    assert "mazes_per_step" not in cur.stages[0].to_dict()  # plans written before it still match
    assert [s.mazes_per_step for s in cur.scaled(2).stages] == [None, 1]
    config = small(mazes_per_step=2)
    phases = plan_phases(MAZE, config, curriculum=cur)
    assert [p.config(config).mazes_per_step for p in phases] == [2, 1]
    assert [p.to_dict().get("mazes_per_step") for p in phases] == [None, 1]
    with pytest.raises(TrainingError, match="mazes_per_step must be a positive"):
        CurriculumStage(steps=1, mazes_per_step=0)
    # The trainer plays the stage's batch: 2 mazes x 2 episodes, then 1 maze x 2 episodes.
    train_with_recipe(
        load_model("tiny-llama"), MAZE, config, out_dir=tmp_path, curriculum=cur, progress=False
    )
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["n_episodes"] for r in rows] == [4, 4, 2]


def test_enter_phase_switches_config_and_maze_and_guards_fixed_settings() -> None:
    config = small()
    phases = plan_phases(MAZE, config, curriculum=TWO_STAGES, sft_steps=1)
    moments = {"param": {"exp_avg": 1.0}}
    trainer = SimpleNamespace(
        config=phases[0].config(config),
        loss_cfg=None,
        maze_cfg=MAZE,
        optimizer=SimpleNamespace(state=dict(moments)),
    )
    enter_phase(trainer, phases[1], config, reset_optimizer=False)
    assert trainer.config.loss == "dr_grpo" and trainer.maze_cfg.turns == 1
    assert trainer.loss_cfg == config.loss_config() and trainer.optimizer.state == moments
    enter_phase(trainer, phases[2], config, reset_optimizer=True)
    assert trainer.maze_cfg.turns == 2 and trainer.optimizer.state == {}
    with pytest.raises(TrainingError, match="lora_r") as err:
        enter_phase(trainer, phases[2], small(lora_r=8), reset_optimizer=False)
    assert "new out_dir" in (err.value.hint or "")


# ------------------------------------------------------------------ recipes


def test_recipes_are_documented_starting_points() -> None:
    assert set(RECIPES) == {"smollm2-135m-instruct", "gemma-3-270m"}
    for name, recipe in RECIPES.items():
        maze, config = recipe.maze_config(), recipe.grpo_config()
        assert maze.prompt_format == "compact" and maze.turns == 15
        assert (config.lora_r, config.mazes_per_step, config.episodes_per_maze) == (32, 8, 8)
        assert 1e-5 <= config.lr <= 3e-4 and config.loss == "dr_grpo"
        assert recipe.curriculum.stages[0].turns == 1
        assert recipe.curriculum.stages[-1].turns == 15
        assert ("NOT measured" in repr(recipe)) is not recipe.measured
        assert recipe.notes and recipe.model == name
        json.dumps(recipe.to_dict())
    smol = RECIPES["smollm2-135m-instruct"]
    assert smol.measured and "0.705" in smol.notes  # the run README reports
    assert [(s.turns, s.steps, s.mazes_per_step) for s in smol.curriculum.stages] == [
        (1, 80, None),
        (15, 20, 2),
    ]
    gemma = RECIPES["gemma-3-270m"]
    assert gemma.measured is False and "0.393" in gemma.notes  # the run README reports
    assert (gemma.grpo["lr"], gemma.grpo["kl_beta"], gemma.grpo["entropy_beta0"]) == (
        2e-5,
        1.0,
        0.05,
    )
    assert [(s.turns, s.steps, s.mazes_per_step) for s in gemma.curriculum.stages] == [
        (1, 80, None),
        (15, 12, 2),
    ]
    assert RECIPES["smollm2-135m-instruct"].maze_config(prompt_format="paper").prompt_format == (
        "paper"
    )
    with pytest.raises(TrainingError, match="No recipe") as err:
        get_recipe("smollm2-135m")
    assert "smollm2-135m-instruct" in (err.value.hint or "")
    assert recipe_for("gemma-3-270m") is RECIPES["gemma-3-270m"]
    assert recipe_for("tiny-llama", "gemma-3-270m") is RECIPES["gemma-3-270m"]
    with pytest.raises(TrainingError, match="No recipe for the model 'tiny-llama'") as err:
        recipe_for("tiny-llama")
    assert "gemma-3-270m" in (err.value.hint or "")
    assert given(lr=1e-5, kl_beta=0.0, turns=None) == {"lr": 1e-5, "kl_beta": 0.0}


# ------------------------------------------------------------------ search


def fake_snapshot(ret: float) -> PolicySnapshot:
    return PolicySnapshot(
        n_episodes=4,
        n_mazes=4,
        n_decisions=8,
        n_known=8,
        n_gold_available=2,
        n_mold_available=4,
        gold_moves=1,
        mold_moves=2,
        p_gold_given_available=0.5,
        p_gold_se=None,
        p_gold_mass=0.5,
        chance_gold=0.25,
        p_mold=0.25,
        p_mold_se=None,
        p_mold_given_available=0.5,
        p_mold_mass=0.4,
        chance_mold=0.3,
        return_mean=ret,
        return_se=1.0,
        gold_per_episode=0.5,
        mold_per_episode=1.0,
        direction_counts={"N": 2, "E": 2, "S": 2, "W": 2},
    )


RETURNS = {1e-4: 1.0, 3e-4: 5.0, 1e-3: -2.0}


class StubTrial:
    """Scores a trial by its learning rate; leaves a fake checkpoint behind."""

    def __init__(self, die_after: int | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.die_after = die_after

    def __call__(self, config: GRPOConfig, trial_dir: Path) -> PolicySnapshot:
        if self.die_after is not None and len(self.calls) == self.die_after:
            raise KeyboardInterrupt
        self.calls.append({"lr": config.lr, "entropy": config.entropy_beta0, "dir": trial_dir})
        assert config.out_dir == str(trial_dir)
        (trial_dir / "checkpoint-000001").mkdir(parents=True)
        return fake_snapshot(RETURNS[config.lr] + config.entropy_beta0)


def run_search(out: Path, trial: Any, grid: dict[str, list[Any]] | None = None) -> Any:
    return search(
        None,
        MAZE,
        small(),
        grid or {"lr": [1e-4, 3e-4, 1e-3], "entropy_coef": [0.0]},
        steps=3,
        n_eval_mazes=4,
        out_dir=out,
        trial_fn=trial,
        progress=False,
    )


def test_search_keeps_the_best_trial_and_writes_the_table(tmp_path: Path) -> None:
    stub = StubTrial()
    result = run_search(tmp_path, stub)
    assert [c["lr"] for c in stub.calls] == [1e-4, 3e-4, 1e-3]
    assert all(c["entropy"] == 0.0 for c in stub.calls)  # the alias set entropy_beta0
    assert result.best.params == {"lr": 3e-4, "entropy_beta0": 0.0}
    assert result.best.snapshot.return_mean == 5.0
    # Only the best trial keeps its checkpoints.
    kept = sorted(p.parent.name for p in tmp_path.glob("*/checkpoint-*"))
    assert kept == [result.best.name]
    stored = json.loads((tmp_path / "search.json").read_text())
    assert stored["best"] == result.best.name and len(stored["trials"]) == 3
    with (tmp_path / "search.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["return_mean"]) for r in rows] == [1.0, 5.0, -2.0]
    assert [r["best"] for r in rows] == ["False", "True", "False"]
    assert "*" in result.table().splitlines()[2] and "best" in repr(result)


def test_search_resumes_per_trial(tmp_path: Path) -> None:
    dying = StubTrial(die_after=2)
    with pytest.raises(KeyboardInterrupt):
        run_search(tmp_path, dying)
    again = StubTrial()
    result = run_search(tmp_path, again)
    assert [c["lr"] for c in again.calls] == [1e-3]  # the two finished trials are not re-run
    assert result.best.params["lr"] == 3e-4 and len(result.trials) == 3
    idle = StubTrial(die_after=0)
    assert run_search(tmp_path, idle).best.name == result.best.name
    # A larger grid runs only the new trials.
    wider = StubTrial()
    run_search(tmp_path, wider, {"lr": [1e-4, 3e-4, 1e-3], "entropy_coef": [0.0, 0.5]})
    assert [(c["lr"], c["entropy"]) for c in wider.calls] == [(1e-4, 0.5), (3e-4, 0.5), (1e-3, 0.5)]


def test_search_rejects_bad_grids_and_other_settings(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="Unknown grid key 'learning_rate'"):
        run_search(tmp_path, StubTrial(), {"learning_rate": [1e-4]})
    with pytest.raises(TrainingError, match="non-empty list"):
        run_search(tmp_path, StubTrial(), {"lr": []})
    with pytest.raises(TrainingError, match="lr must be"):
        run_search(tmp_path, StubTrial(), {"lr": [-1.0]})
    with pytest.raises(TrainingError, match="model_factory"):
        search(None, MAZE, small(), {"lr": [1e-4]}, steps=1, n_eval_mazes=1, out_dir=tmp_path)
    run_search(tmp_path, StubTrial(), {"lr": [1e-4]})
    with pytest.raises(TrainingError, match="other shared settings") as err:
        search(
            None,
            MAZE,
            small(),
            {"lr": [1e-4]},
            steps=5,
            n_eval_mazes=4,
            out_dir=tmp_path,
            trial_fn=StubTrial(),
        )
    assert "new out_dir" in (err.value.hint or "")


# ------------------------------------------------------------------ end to end on tiny-llama


class StepCounter:
    """Counts GRPOTrainer.step calls; raises KeyboardInterrupt at call ``die_at`` (1-based)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, die_at: int | None = None) -> None:
        self.calls = 0
        real = GRPOTrainer.step

        def step(trainer: GRPOTrainer) -> dict[str, Any]:
            self.calls += 1
            if die_at is not None and self.calls == die_at:
                raise KeyboardInterrupt
            return real(trainer)

        monkeypatch.setattr(GRPOTrainer, "step", step)


def recipe_run(out: Path, **kw: Any) -> Any:
    return train_with_recipe(
        load_model("tiny-llama"),
        MAZE,
        small(),
        out_dir=out,
        curriculum=TWO_STAGES,
        sft_steps=2,
        eval_every=0,
        progress=False,
        **kw,
    )


def replay_forbidden(*args: Any, **kwargs: Any) -> PolicySnapshot:
    raise AssertionError("a snapshot taken while training was recomputed")


def read_metrics(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_recipe_end_to_end_files_and_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = tmp_path / "straight"
    run = recipe_run(straight, eval_mazes=2)
    assert run.completed and (run.global_step, run.total_steps, run.steps_run) == (4, 4, 4)
    record = json.loads((straight / "recipe.json").read_text())
    phases = record["plan"]["phases"]
    assert [(p["name"], p["loss"], p["turns"]) for p in phases] == [
        ("sft", "sft", 3),
        ("stage-1", "dr_grpo", 1),
        ("stage-2", "dr_grpo", 2),
    ]
    assert record["plan"]["prompt_format"] == "compact"
    assert all(p["prompt_format"] == "compact" for p in phases)
    assert record["state"]["status"] == "complete"
    assert [p["status"] for p in record["state"]["phases"]] == ["done"] * 3
    # A checkpoint closes every phase, with the phase's loss and maze.
    states = {
        s: json.loads((straight / f"checkpoint-{s:06d}" / "trainer_state.json").read_text())
        for s in (2, 3, 4)
    }
    assert [states[s]["config"]["loss"] for s in (2, 3, 4)] == ["sft", "dr_grpo", "dr_grpo"]
    assert [states[s]["maze_cfg"]["turns"] for s in (2, 3, 4)] == [3, 1, 2]
    metrics = read_metrics(straight)
    assert [m["step"] for m in metrics] == [0, 1, 2, 3]
    assert all("accuracy" in m for m in metrics[:2]) and all(
        "reward_mean" in m for m in metrics[2:]
    )
    # Live snapshots at step 0 and at each checkpoint, found by learning_curve without replay.
    cache = json.loads((straight / "learning_curve.json").read_text())
    (entry,) = cache["entries"].values()
    assert sorted(entry["points"], key=int) == ["0", "2", "3", "4"]
    with monkeypatch.context() as patch:
        patch.setattr(lc_module, "policy_snapshot", replay_forbidden)
        curve = learning_curve(straight, "tiny-llama", n_mazes=2)
    assert curve.steps == [0, 2, 3, 4]
    assert [p.phase for p in curve.points] == ["untrained", "sft", "stage-1", "stage-2"]

    # Calling again does not train anything.
    counter = StepCounter(monkeypatch)
    again = recipe_run(straight)
    assert again.completed and again.steps_run == 0 and counter.calls == 0

    # Killed in the first RL step (right after SFT): the rerun repeats no finished phase.
    killed = tmp_path / "killed"
    StepCounter(monkeypatch, die_at=3)
    with pytest.raises(KeyboardInterrupt):
        recipe_run(killed)
    assert json.loads((killed / "recipe.json").read_text())["state"]["status"] == "interrupted"
    counter = StepCounter(monkeypatch)
    resumed = recipe_run(killed)
    assert resumed.completed and resumed.steps_run == 2 and counter.calls == 2
    assert [m["step"] for m in read_metrics(killed)] == [0, 1, 2, 3]
    # The resumed run took the same steps as the uninterrupted one (optimizer reset included).
    for got, want in zip(read_metrics(killed), metrics, strict=True):
        assert got.get("reward_mean", got.get("loss")) == pytest.approx(
            want.get("reward_mean", want.get("loss")), rel=1e-5
        )
    a = load_file(straight / "checkpoint-000004" / "adapter_model.safetensors")
    b = load_file(killed / "checkpoint-000004" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_recipe_budget_stops_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = recipe_run(tmp_path, max_seconds=1e-6)
    assert run.status == "stopped" and run.steps_run == 1 and run.global_step == 1
    assert (tmp_path / "checkpoint-000001").is_dir()
    assert json.loads((tmp_path / "recipe.json").read_text())["state"]["phases"][0]["status"] == (
        "partial"
    )
    counter = StepCounter(monkeypatch)
    done = recipe_run(tmp_path)
    assert done.completed and counter.calls == 3
    with pytest.raises(TrainingError, match="another recipe") as err:
        train_with_recipe(
            load_model("tiny-llama"),
            MAZE,
            small(),
            out_dir=tmp_path,
            curriculum=Curriculum.parse("1:2"),
            progress=False,
        )
    assert "new out_dir" in (err.value.hint or "")


def test_recipe_rejects_bad_arguments(tmp_path: Path) -> None:
    model = SimpleNamespace()
    with pytest.raises(TrainingError, match="exactly one of steps"):
        train_with_recipe(model, MAZE, small(), out_dir=tmp_path)
    with pytest.raises(TrainingError, match="exactly one of steps"):
        train_with_recipe(model, MAZE, small(), out_dir=tmp_path, steps=2, curriculum=TWO_STAGES)
    with pytest.raises(TrainingError, match="MazeConfig"):
        train_with_recipe(model, {}, small(), out_dir=tmp_path, steps=2)  # type: ignore[arg-type]
    with pytest.raises(TrainingError, match="max_seconds"):
        train_with_recipe(model, MAZE, small(), out_dir=tmp_path, steps=2, max_seconds=0)
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(TrainingError, match="did not start"):
        train_with_recipe(load_model("tiny-llama"), MAZE, small(), out_dir=tmp_path, steps=2)


def test_example_cli_runs_on_a_tiny_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = importlib.util.spec_from_file_location("example_recipe", ROOT / "examples" / "recipe.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = tmp_path / "cli"
    args = [
        "--model", "tiny-llama", "--recipe", "smollm2-135m-instruct", "--stages", "1:1,2:1",
        "--sft-steps", "1", "--mazes-per-step", "2", "--episodes-per-maze", "2",
        "--micro-batch-size", "4", "--maze-size", "20", "--turns", "3", "--eval-mazes", "3",
        "--eval-every", "1", "--out", str(out), "--quiet",
    ]  # fmt: skip
    report = example.main(args)
    printed = capsys.readouterr().out
    assert "untrained (step 0)" in printed and "trained (step 3)" in printed
    assert report["trained_step"] == 3 and report["untrained"]["n_episodes"] == 3
    assert (out / "report.json").is_file() and (out / "learning_curve.html").is_file()
    assert json.loads((out / "recipe.json").read_text())["plan"]["prompt_format"] == "compact"


def _load_example(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(
        f"example_{name}", ROOT / "examples" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_search_example_parses_grids_and_rejects_bad_ones() -> None:
    example = _load_example("search")
    grid = example.parse_grid("lr=1e-5,2e-5; kl_beta=0,1 ;mazes_per_step=2")
    assert grid == {"lr": [1e-5, 2e-5], "kl_beta": [0, 1], "mazes_per_step": [2]}
    assert isinstance(grid["lr"][0], float)
    with pytest.raises(SystemExit, match="key=v1,v2"):
        example.parse_grid("lr")
    with pytest.raises(SystemExit, match="empty"):
        example.parse_grid(" ; ")


def test_search_example_runs_on_a_tiny_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    example = _load_example("search")
    out = tmp_path / "search"
    args = [
        "--model", "tiny-llama", "--recipe", "smollm2-135m-instruct", "--steps", "2",
        "--grid", "lr=1e-4,2e-4", "--mazes-per-step", "2", "--episodes-per-maze", "2",
        "--maze-size", "20", "--eval-mazes", "3", "--out", str(out),
    ]  # fmt: skip
    report = example.main(args)
    printed = capsys.readouterr().out
    assert "untrained:" in printed and "zero-std" in printed
    assert [row["param_lr"] for row in report["rows"]] == [1e-4, 2e-4]
    names = [row["trial"] for row in report["rows"]]
    assert report["best"] in names and sum(row["best"] for row in report["rows"]) == 1
    assert set(report["training_tail"]) == set(names)
    assert report["untrained"]["n_episodes"] == 3
    for tail in report["training_tail"].values():
        assert 0.0 <= tail["zero_std"] <= 1.0 and tail["entropy"] >= 0.0
    assert json.loads((out / "report.json").read_text())["best"] == report["best"]
