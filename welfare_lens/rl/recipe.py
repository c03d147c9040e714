"""Recipes that make small models learn the maze: SFT warm start, curriculum, short LR search.

The paper trains 4B-20B models for 50-160 steps (A3, Appendix Q). The bundled 135M/270M models
do not learn the paper's verbose prompt in that budget, and at a high learning rate they
collapse onto one direction (DESIGN, "Learning signal"); with the compact neighbour format
(``MazeConfig(prompt_format="compact")``) SmolLM2-135M went from P(Gold) 0.20 to 0.64 and
P(Mold) 0.44 to 0.004 in 120 single-turn steps. This module packages what is needed to get
there and to show it happened:

* :class:`Curriculum` -- RL stages on easier episodes first (e.g. 1, then 5, then 15 turns;
  optionally another Mold/Gold density per stage).
* :func:`train_with_recipe` -- an optional SFT warm start on
  :class:`~welfare_lens.maze.OptimalPolicy` trajectories (the trainer's ``loss="sft"``, note
  B-12), then the curriculum's RL stages, all on **one** :class:`GRPOTrainer`: the same LoRA
  weights and AdamW state continue from phase to phase, the step counter (hence the data seeds
  and the cosine schedule, J.3) runs on, and a checkpoint closes every phase. Resumable: a
  killed run continues from its latest checkpoint and never repeats a finished phase. The plan
  (every phase's maze config, the prompt format, the trainer config) is recorded in
  ``out_dir/recipe.json``.
* :func:`search` -- short trials over a grid of trainer settings (learning rate, entropy
  coefficient, ...), each scored by the held-out return of
  :func:`~welfare_lens.rl.learning_curve.policy_snapshot`; resumable per trial, keeps the best.
* :data:`RECIPES` -- recipes for ``smollm2-135m-instruct`` (measured to learn the 15-turn maze
  in about 40 CPU minutes; numbers in its notes) and ``gemma-3-270m`` (a starting point, not
  yet seen to learn). Read the learning curve before extracting anything from a trained model.

**How the phases share one trainer.** :class:`GRPOTrainer` reads ``trainer.config``,
``trainer.loss_cfg`` and ``trainer.maze_cfg`` at every step, so a phase switch replaces those
three attributes (:func:`enter_phase`); everything fixed at construction (LoRA settings,
actions, template, optimizer hyper-parameters, seed) must stay the same across phases, which
:func:`enter_phase` checks. Two deliberate choices:

* The SFT warm start's AdamW moments are cleared when RL starts (``reset_optimizer_after_sft``):
  cross-entropy gradients are orders of magnitude larger than Dr. GRPO's (which divide by the
  constant ``Z = 2048``), and with ``β2 = 0.999`` the second moment they leave would shrink the
  first few hundred RL updates by that ratio. Between RL stages the optimizer continues.
* An SFT warm start makes the policy partly imitation-trained, which is the paper's *control*
  condition (SFT vs RL, A3): keep ``sft_steps = 0`` for the model whose welfare axis is compared
  with the paper's RL result.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import itertools
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from welfare_lens.errors import MazeConfigError, TrainingError
from welfare_lens.maze.config import MazeConfig
from welfare_lens.models import model_info
from welfare_lens.rl.config import GRPOConfig
from welfare_lens.rl.learning_curve import (
    CURVE_FILE,
    HELD_OUT_SEED,
    CurveCache,
    PolicySnapshot,
    checkpoint_identity,
    curve_settings,
    policy_snapshot,
)

__all__ = [
    "RECIPES",
    "RECIPE_FILE",
    "SEARCH_FILE",
    "Curriculum",
    "CurriculumStage",
    "Phase",
    "Recipe",
    "RecipeRun",
    "SearchResult",
    "TrialFunction",
    "TrialResult",
    "enter_phase",
    "get_recipe",
    "plan_phases",
    "run_trial",
    "search",
    "train_with_recipe",
]

#: The plan and progress of a :func:`train_with_recipe` run, inside its ``out_dir``.
RECIPE_FILE = "recipe.json"
#: The results of a :func:`search`, inside its ``out_dir`` (with ``search.csv`` beside it).
SEARCH_FILE = "search.json"
_FORMAT = 1
#: GRPOConfig fields fixed when the trainer is built (LoRA wrapping, action ids, optimizer
#: hyper-parameters, reference weights): they cannot change between phases.
_FIXED_FIELDS = (
    "finetune",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "actions",
    "template",
    "kl_beta",
    "adam_betas",
    "weight_decay",
    "seed",
)
#: Fields set by train_with_recipe itself, normalised away when plans are compared.
_RUN_FIELDS = {"out_dir": None, "checkpoint_every": 0, "progress": False}
_GRID_ALIASES = {"entropy_coef": "entropy_beta0"}


def _positive_int(name: str, value: Any, hint: str, *, zero: bool = False) -> None:
    low = 0 if zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "an integer >= 0" if zero else "a positive integer"
        raise TrainingError(f"{name} must be {kind}, got {value!r}.", hint=hint)


def _write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file + rename): a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _roundtrip(data: Any) -> Any:
    return json.loads(json.dumps(data))


# ----------------------------------------------------------------------------------------------
# Curriculum
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CurriculumStage:
    """One RL stage: a number of steps on a maze variant.

    Args:
        steps: RL steps of the stage.
        turns: Turns per episode (``None``: the base maze's).
        mold_fraction_range: Interior Mold fraction range (``None``: the base maze's).
        gold_fraction: Gold per Mold tile (``None``: the base maze's).
        name: Label (default ``"stage-<i>"`` by position).
        mazes_per_step: Mazes (GRPO groups) per step in this stage (``None``: the trainer
            config's). A 15-turn episode costs about fifteen times the tokens of a one-turn one
            (more in attention), so long stages usually take fewer mazes per step.

    Raises:
        TrainingError: on a non-positive step, turn or maze count.
    """

    steps: int
    turns: int | None = None
    mold_fraction_range: tuple[float, float] | None = None
    gold_fraction: float | None = None
    name: str | None = None
    mazes_per_step: int | None = None

    def __post_init__(self) -> None:
        _positive_int("CurriculumStage.steps", self.steps, "E.g. steps=40.")
        if self.turns is not None:
            _positive_int("CurriculumStage.turns", self.turns, "E.g. turns=5; None keeps the base.")
        if self.mazes_per_step is not None:
            _positive_int(
                "CurriculumStage.mazes_per_step",
                self.mazes_per_step,
                "E.g. 2; None keeps the base.",
            )
        if isinstance(self.mold_fraction_range, list):
            object.__setattr__(self, "mold_fraction_range", tuple(self.mold_fraction_range))

    def maze_config(self, base: MazeConfig) -> MazeConfig:
        """``base`` with this stage's overrides.

        Raises:
            TrainingError: if the overrides make an invalid maze (the message says why).
        """
        changes: dict[str, Any] = {}
        if self.turns is not None:
            changes["turns"] = self.turns
        if self.mold_fraction_range is not None:
            changes["mold_fraction_range"] = self.mold_fraction_range
        if self.gold_fraction is not None:
            changes["gold_fraction"] = self.gold_fraction
        try:
            return replace(base, **changes)
        except MazeConfigError as err:
            raise TrainingError(
                f"Curriculum stage{f' {self.name!r}' if self.name else ''} makes an invalid "
                f"maze: {err.message}",
                hint=err.hint,
            ) from err

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict; inverse of :meth:`from_dict`."""
        return {
            "steps": self.steps,
            "turns": self.turns,
            "mold_fraction_range": None
            if self.mold_fraction_range is None
            else list(self.mold_fraction_range),
            "gold_fraction": self.gold_fraction,
            "name": self.name,
        } | ({} if self.mazes_per_step is None else {"mazes_per_step": self.mazes_per_step})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CurriculumStage:
        """Build a stage from a dict such as ``{"turns": 5, "steps": 40}``.

        Raises:
            TrainingError: on an unknown key (naming the closest valid one).
        """
        valid = [f.name for f in fields(cls)]
        for key in data:
            if key not in valid:
                close = difflib.get_close_matches(str(key), valid, n=1)
                raise TrainingError(
                    f"Unknown curriculum stage key {key!r}.",
                    hint=f"Did you mean {close[0]!r}?" if close else f"Valid keys: {valid}.",
                )
        if "steps" not in data:
            raise TrainingError(
                f"Curriculum stage {dict(data)!r} has no 'steps'.",
                hint="E.g. {'turns': 5, 'steps': 40}.",
            )
        return cls(**dict(data))


@dataclass(frozen=True, init=False)
class Curriculum:
    """RL stages played in order on one trainer (see :func:`train_with_recipe`).

    Args:
        stages: :class:`CurriculumStage` objects or dicts like ``{"turns": 1, "steps": 40}``.

    Raises:
        TrainingError: if there is no stage, or two stages share a name.

    Example:
        >>> cur = Curriculum([{"turns": 1, "steps": 40}, {"turns": 5, "steps": 40},
        ...                   {"turns": 15, "steps": 80}])
        >>> cur.total_steps, cur.names
        (160, ['stage-1', 'stage-2', 'stage-3'])
    """

    stages: tuple[CurriculumStage, ...]

    def __init__(self, stages: Sequence[CurriculumStage | Mapping[str, Any]]) -> None:
        parsed = []
        for s in stages:
            if isinstance(s, CurriculumStage):
                parsed.append(s)
            elif isinstance(s, Mapping):
                parsed.append(CurriculumStage.from_dict(s))
            else:
                raise TrainingError(
                    f"A curriculum stage must be a CurriculumStage or a dict, got "
                    f"{type(s).__name__}.",
                    hint="E.g. Curriculum([{'turns': 1, 'steps': 40}]).",
                )
        if not parsed:
            raise TrainingError(
                "A curriculum needs at least one stage.",
                hint="E.g. Curriculum([{'turns': 15, 'steps': 100}]) or Curriculum.single(100).",
            )
        named = [
            s if s.name is not None else replace(s, name=f"stage-{i}")
            for i, s in enumerate(parsed, start=1)
        ]
        names = [s.name for s in named]
        if len(set(names)) != len(names) or "sft" in names:
            raise TrainingError(
                f"Curriculum stage names must be distinct and not 'sft', got {names}.",
                hint="Rename the stages or leave their names out.",
            )
        object.__setattr__(self, "stages", tuple(named))

    @classmethod
    def single(cls, steps: int, turns: int | None = None) -> Curriculum:
        """One stage of ``steps`` RL steps (on the base maze, or with ``turns``)."""
        return cls([CurriculumStage(steps=steps, turns=turns, name="rl")])

    @classmethod
    def parse(cls, text: str) -> Curriculum:
        """Parse ``"1:40,5:40,15:80"`` (``turns:steps`` per stage), e.g. from a command line.

        A third number sets the stage's mazes per step: ``"1:80,15:40:2"`` trains 40 fifteen-turn
        steps on 2 mazes each.

        Raises:
            TrainingError: on a malformed specification.
        """
        stages = []
        for part in str(text).split(","):
            match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*(?::\s*(\d+)\s*)?", part)
            if match is None:
                raise TrainingError(
                    f"Cannot read curriculum stage {part!r} in {text!r}.",
                    hint="Write turns:steps (or turns:steps:mazes) per stage, comma-separated, "
                    "e.g. '1:40,5:40,15:80:2'.",
                )
            mazes = None if match[3] is None else int(match[3])
            stages.append(
                CurriculumStage(steps=int(match[2]), turns=int(match[1]), mazes_per_step=mazes)
            )
        return cls(stages)

    @property
    def total_steps(self) -> int:
        """RL steps over all stages."""
        return sum(s.steps for s in self.stages)

    @property
    def names(self) -> list[str]:
        """The stage names."""
        return [str(s.name) for s in self.stages]

    def boundaries(self, start: int = 0) -> list[tuple[int, int]]:
        """``(first step, end step)`` of each stage (end exclusive), counting from ``start``."""
        out = []
        for s in self.stages:
            out.append((start, start + s.steps))
            start += s.steps
        return out

    def stage_at(self, step: int, start: int = 0) -> int:
        """Index of the stage that plays ``step`` (counted like :meth:`boundaries`).

        Raises:
            TrainingError: if the step is outside the curriculum.
        """
        for i, (a, b) in enumerate(self.boundaries(start)):
            if a <= step < b:
                return i
        raise TrainingError(
            f"Step {step} is outside the curriculum's steps {start}..{start + self.total_steps - 1}.",
            hint="Count steps from the curriculum's first step.",
        )

    def maze_configs(self, base: MazeConfig) -> list[MazeConfig]:
        """The maze configuration of each stage."""
        return [s.maze_config(base) for s in self.stages]

    def scaled(self, total_steps: int) -> Curriculum:
        """The same stages with their lengths rescaled to ``total_steps`` (each at least 1).

        Lengths are proportional, rounded by largest remainder, so ``[40, 40, 80]`` scaled to
        8 is ``[2, 2, 4]``. Used by :func:`search` for short trials.

        Raises:
            TrainingError: if ``total_steps`` is smaller than the number of stages.
        """
        n = len(self.stages)
        _positive_int("total_steps", total_steps, "E.g. 20.")
        if total_steps < n:
            raise TrainingError(
                f"Cannot fit {n} stages into {total_steps} steps.",
                hint=f"Use at least {n} steps, or a curriculum with fewer stages.",
            )
        raw = [total_steps * s.steps / self.total_steps for s in self.stages]
        lengths = [max(1, math.floor(r)) for r in raw]
        while sum(lengths) < total_steps:
            i = max(range(n), key=lambda j: raw[j] - lengths[j])
            lengths[i] += 1
        while sum(lengths) > total_steps:
            i = min((j for j in range(n) if lengths[j] > 1), key=lambda j: raw[j] - lengths[j])
            lengths[i] -= 1
        return Curriculum([replace(s, steps=k) for s, k in zip(self.stages, lengths, strict=True)])

    def to_dict(self) -> dict[str, Any]:
        """``{"stages": [...]}``; inverse of :meth:`from_dict`."""
        return {"stages": [s.to_dict() for s in self.stages]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Curriculum:
        """Rebuild from :meth:`to_dict` output."""
        return cls(list(data["stages"]))

    def __repr__(self) -> str:
        parts = []
        for s in self.stages:
            extra = ""
            if s.mold_fraction_range is not None:
                extra += f", mold {s.mold_fraction_range}"
            if s.gold_fraction is not None:
                extra += f", gold {s.gold_fraction}"
            if s.mazes_per_step is not None:
                extra += f", {s.mazes_per_step} mazes per step"
            turns = "base" if s.turns is None else str(s.turns)
            parts.append(f"{s.name}: {s.steps} steps x {turns} turns{extra}")
        return f"Curriculum({'; '.join(parts)})"


# ----------------------------------------------------------------------------------------------
# Phases
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    """One phase of a recipe run: the SFT warm start or a curriculum stage.

    Attributes:
        name: ``"sft"`` or the stage name.
        loss: The trainer loss of the phase (``"sft"`` or the RL loss).
        lr: Peak learning rate of the phase (the global cosine schedule still applies).
        start_step: First global step of the phase.
        end_step: Global step after its last step (exclusive).
        maze_cfg: The maze of the phase.
        mazes_per_step: Mazes per step in the phase (``None``: the trainer config's).
    """

    name: str
    loss: str
    lr: float
    start_step: int
    end_step: int
    maze_cfg: MazeConfig
    mazes_per_step: int | None = None

    @property
    def steps(self) -> int:
        """Steps of the phase."""
        return self.end_step - self.start_step

    def config(self, base: GRPOConfig) -> GRPOConfig:
        """The trainer config of the phase: ``base`` with its loss, learning rate and batch."""
        mazes = base.mazes_per_step if self.mazes_per_step is None else self.mazes_per_step
        return replace(base, loss=self.loss, lr=self.lr, mazes_per_step=mazes)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (the maze config in full, and its prompt format on its own)."""
        out: dict[str, Any] = {
            "name": self.name,
            "loss": self.loss,
            "lr": self.lr,
            "start_step": self.start_step,
            "end_step": self.end_step,
            "steps": self.steps,
            "turns": self.maze_cfg.turns,
            "prompt_format": self.maze_cfg.prompt_format,
            "maze_cfg": self.maze_cfg.to_dict(),
        }
        if self.mazes_per_step is not None:  # absent in plans written before it existed
            out["mazes_per_step"] = self.mazes_per_step
        return out


def plan_phases(
    maze_cfg: MazeConfig,
    grpo_config: GRPOConfig,
    *,
    curriculum: Curriculum,
    sft_steps: int = 0,
    sft_lr: float | None = None,
) -> list[Phase]:
    """The phases of a recipe: ``sft`` (if ``sft_steps > 0``, on ``maze_cfg``), then the stages.

    Raises:
        TrainingError: if ``grpo_config.loss`` is ``"sft"`` (the stages need an RL loss), or a
            stage makes an invalid maze.
    """
    if grpo_config.loss == "sft":
        raise TrainingError(
            "grpo_config.loss is 'sft', but the curriculum stages are RL.",
            hint="Use an RL loss (e.g. 'dr_grpo') and sft_steps=... for the SFT warm start.",
        )
    _positive_int("sft_steps", sft_steps, "E.g. 0 (no warm start) or 20.", zero=True)
    if sft_lr is not None and not (
        isinstance(sft_lr, int | float) and math.isfinite(sft_lr) and sft_lr > 0
    ):
        raise TrainingError(f"sft_lr must be > 0, got {sft_lr!r}.", hint="E.g. 1e-4, or None.")
    phases: list[Phase] = []
    step = 0
    if sft_steps:
        lr = float(sft_lr) if sft_lr is not None else grpo_config.lr
        phases.append(Phase("sft", "sft", lr, 0, sft_steps, maze_cfg))
        step = sft_steps
    for stage, cfg in zip(curriculum.stages, curriculum.maze_configs(maze_cfg), strict=True):
        phases.append(
            Phase(
                str(stage.name),
                grpo_config.loss,
                grpo_config.lr,
                step,
                step + stage.steps,
                cfg,
                stage.mazes_per_step,
            )
        )
        step += stage.steps
    return phases


def enter_phase(trainer: Any, phase: Phase, base: GRPOConfig, *, reset_optimizer: bool) -> None:
    """Switch a live :class:`GRPOTrainer` to ``phase`` (config, loss settings, maze).

    The trainer reads these three attributes at every step; the LoRA adapter, optimizer and step
    counter carry on. ``reset_optimizer`` clears AdamW's moments (used when RL follows SFT; see
    the module docstring).

    Raises:
        TrainingError: if the phase would change a setting fixed when the trainer was built.
    """
    new = phase.config(base)
    changed = [f for f in _FIXED_FIELDS if getattr(new, f) != getattr(trainer.config, f)]
    if changed:
        raise TrainingError(
            f"Phase {phase.name!r} changes {changed}, which are fixed when the trainer is built.",
            hint="Keep LoRA, actions, template, optimizer and seed settings equal across phases "
            "(or start a new out_dir).",
        )
    trainer.config = new
    trainer.loss_cfg = new.loss_config()
    trainer.maze_cfg = phase.maze_cfg
    if reset_optimizer:
        trainer.optimizer.state.clear()


# ----------------------------------------------------------------------------------------------
# train_with_recipe
# ----------------------------------------------------------------------------------------------


@dataclass
class RecipeRun:
    """What :func:`train_with_recipe` did.

    Attributes:
        out_dir: The run folder.
        phases: The plan.
        global_step: Steps done so far (over all calls).
        total_steps: Steps of the whole plan.
        status: ``"complete"`` or ``"stopped"`` (the time budget ran out; call again to go on).
        steps_run: Steps trained by this call (0 when the run was already complete).
        seconds: Wall time of this call.
        final_checkpoint: The latest checkpoint folder.
        trainer: The live trainer (``None`` when nothing was left to train; load the policy
            with :func:`~welfare_lens.rl.load_checkpoint` then).
    """

    out_dir: str
    phases: list[Phase]
    global_step: int
    total_steps: int
    status: Literal["complete", "stopped"]
    steps_run: int
    seconds: float
    final_checkpoint: str | None
    trainer: Any = field(default=None, repr=False)

    @property
    def completed(self) -> bool:
        """Whether every phase is done."""
        return self.status == "complete"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (without the trainer)."""
        return {
            "out_dir": self.out_dir,
            "phases": [p.to_dict() for p in self.phases],
            "global_step": self.global_step,
            "total_steps": self.total_steps,
            "status": self.status,
            "steps_run": self.steps_run,
            "seconds": self.seconds,
            "final_checkpoint": self.final_checkpoint,
        }

    def __repr__(self) -> str:
        plan = ", ".join(f"{p.name} {p.steps}x{p.maze_cfg.turns}t" for p in self.phases)
        return (
            f"RecipeRun({self.status}: step {self.global_step}/{self.total_steps}, "
            f"{self.steps_run} trained now in {self.seconds:.0f} s; {plan}; {self.out_dir})"
        )


def _plan_dict(
    model: Any,
    maze_cfg: MazeConfig,
    config: GRPOConfig,
    phases: Sequence[Phase],
    curriculum: Curriculum,
    sft_steps: int,
    sft_lr: float | None,
    reset_optimizer_after_sft: bool,
) -> dict[str, Any]:
    from welfare_lens.rl.checkpoint import model_spec

    normalised = replace(config, **_RUN_FIELDS).to_dict()  # type: ignore[arg-type]
    return _roundtrip(
        {
            "model": model_spec(model),
            "prompt_format": maze_cfg.prompt_format,
            "base_maze": maze_cfg.to_dict(),
            "grpo_config": normalised,
            "sft_steps": sft_steps,
            "sft_lr": sft_lr,
            "reset_optimizer_after_sft": reset_optimizer_after_sft,
            "curriculum": curriculum.to_dict(),
            "phases": [p.to_dict() for p in phases],
            "total_steps": phases[-1].end_step,
        }
    )


def _load_record(path: Path, plan: Mapping[str, Any]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise TrainingError(
            f"{path} is unreadable: {err}",
            hint="Restore it, or train in a new out_dir.",
        ) from err
    stored = record.get("plan")
    if stored != plan:
        diff = sorted(k for k in {*plan, *(stored or {})} if (stored or {}).get(k) != plan.get(k))
        raise TrainingError(
            f"{path.parent} holds a run of another recipe (differs in {diff}).",
            hint="Pass the same settings to resume it, or use a new out_dir.",
        )
    return record


def _phase_states(phases: Sequence[Phase], step: int, running: bool) -> list[dict[str, Any]]:
    out = []
    for p in phases:
        if step >= p.end_step:
            status = "done"
        elif step >= p.start_step and running:
            status = "running"
        elif step > p.start_step:
            status = "partial"
        else:
            status = "pending"
        out.append(
            {"name": p.name, "status": status, "start_step": p.start_step, "end_step": p.end_step}
        )
    return out


def _discard_metrics(out: Path) -> None:
    """A run killed before its first checkpoint restarts from step 0: drop its metrics."""
    from welfare_lens.rl.checkpoint import METRICS_FILE

    (out / METRICS_FILE).unlink(missing_ok=True)


def train_with_recipe(
    model: Any,
    maze_cfg: MazeConfig,
    grpo_config: GRPOConfig,
    *,
    out_dir: str | Path,
    steps: int | None = None,
    curriculum: Curriculum | None = None,
    sft_steps: int = 0,
    sft_lr: float | None = None,
    reset_optimizer_after_sft: bool = True,
    eval_every: int = 20,
    eval_mazes: int = 0,
    eval_maze_cfg: MazeConfig | None = None,
    max_seconds: float | None = None,
    progress: bool = True,
) -> RecipeRun:
    """SFT warm start (optional), then the curriculum's RL stages on one trainer; resumable.

    The phases run on one :class:`~welfare_lens.rl.GRPOTrainer` (see the module docstring):
    global steps ``0..sft_steps-1`` are SFT on :class:`~welfare_lens.maze.OptimalPolicy`
    trajectories of ``maze_cfg``, then each stage plays its own maze. A checkpoint is written
    every ``eval_every`` steps and at the end of every phase; calling again with the same
    arguments resumes from the latest one (and returns at once when the run is complete).

    Args:
        model: The **untrained** TransformerBridge (trained in place; when resuming, the
            checkpoint's weights are loaded into it).
        maze_cfg: The task: the SFT maze, and the base every stage modifies.
        grpo_config: Trainer settings; its ``loss`` is the RL stages' loss, ``out_dir``,
            ``checkpoint_every`` and ``progress`` are replaced by this function's arguments.
        out_dir: Run folder (checkpoints, ``metrics.jsonl``, ``recipe.json``).
        steps: RL steps when there is no curriculum (one stage on ``maze_cfg``).
        curriculum: RL stages (exclusive with ``steps``).
        sft_steps: SFT warm-start steps (0: none; see the module docstring on the control).
        sft_lr: Learning rate of the warm start (default ``grpo_config.lr``).
        reset_optimizer_after_sft: Clear AdamW's moments when RL starts after SFT.
        eval_every: Checkpoint interval in steps, i.e. the points of the learning curve
            (0: only at phase ends).
        eval_mazes: If > 0, also take a held-out :func:`policy_snapshot` of that many mazes at
            step 0 and at every checkpoint, into ``out_dir/learning_curve.json`` (where
            :func:`~welfare_lens.rl.learning_curve.learning_curve` with the same settings finds
            them).
        eval_maze_cfg: Maze of those snapshots (default ``maze_cfg``); recorded in
            ``recipe.json`` as the run's evaluation maze.
        max_seconds: Time budget of this call; when it is spent, a checkpoint is written and
            the call returns with ``status="stopped"``.
        progress: Show a progress bar.

    Returns:
        A :class:`RecipeRun`.

    Raises:
        TrainingError: on bad arguments, or an ``out_dir`` holding another recipe's run.

    Example:
        >>> model = wl.load_model("smollm2-135m-instruct")  # doctest: +SKIP
        >>> r = RECIPES["smollm2-135m-instruct"]  # doctest: +SKIP
        >>> run = train_with_recipe(model, r.maze_config(), r.grpo_config(),
        ...     curriculum=r.curriculum, out_dir="runs/smollm2_recipe")  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from welfare_lens.rl.checkpoint import latest_checkpoint, read_state
    from welfare_lens.rl.trainer import GRPOTrainer

    started = time.perf_counter()
    if not isinstance(maze_cfg, MazeConfig):
        raise TrainingError(
            f"maze_cfg must be a MazeConfig, got {type(maze_cfg).__name__}.",
            hint="Pass wl.maze.MazeConfig(prompt_format='compact', ...).",
        )
    if not isinstance(grpo_config, GRPOConfig):
        raise TrainingError(
            f"grpo_config must be a GRPOConfig, got {type(grpo_config).__name__}.",
            hint="Pass wl.rl.GRPOConfig(...) or RECIPES[name].grpo_config().",
        )
    if (curriculum is None) == (steps is None):
        raise TrainingError(
            "Pass exactly one of steps= (one RL stage) and curriculum=.",
            hint="E.g. curriculum=Curriculum.parse('1:40,5:40,15:80') or steps=100.",
        )
    if curriculum is None:
        assert steps is not None
        _positive_int("steps", steps, "E.g. steps=100.")
        curriculum = Curriculum.single(steps)
    elif not isinstance(curriculum, Curriculum):
        raise TrainingError(
            f"curriculum must be a Curriculum, got {type(curriculum).__name__}.",
            hint="Wrap the stages: Curriculum([{'turns': 1, 'steps': 40}, ...]).",
        )
    _positive_int("eval_every", eval_every, "E.g. 20; 0 checkpoints only at phase ends.", zero=True)
    _positive_int("eval_mazes", eval_mazes, "E.g. 100; 0 skips the live snapshots.", zero=True)
    if max_seconds is not None and not (
        isinstance(max_seconds, int | float) and math.isfinite(max_seconds) and max_seconds > 0
    ):
        raise TrainingError(
            f"max_seconds must be a number > 0, got {max_seconds!r}.", hint="E.g. 3600, or None."
        )
    out = Path(out_dir)
    run_config = replace(
        grpo_config, out_dir=str(out), checkpoint_every=eval_every, progress=progress
    )
    phases = plan_phases(
        maze_cfg, run_config, curriculum=curriculum, sft_steps=sft_steps, sft_lr=sft_lr
    )
    total = phases[-1].end_step
    plan = _plan_dict(
        model,
        maze_cfg,
        run_config,
        phases,
        curriculum,
        sft_steps,
        sft_lr,
        reset_optimizer_after_sft,
    )
    eval_maze = eval_maze_cfg if eval_maze_cfg is not None else maze_cfg
    record_path = out / RECIPE_FILE
    record = _load_record(record_path, plan)
    if record is None:
        if out.is_dir() and (any(out.glob("checkpoint-*")) or (out / "metrics.jsonl").is_file()):
            raise TrainingError(
                f"{out} holds a training run that train_with_recipe did not start (no "
                f"{RECIPE_FILE}).",
                hint="Use a new out_dir.",
            )
        record = {"format": _FORMAT, "plan": plan, "calls": []}
    record["eval"] = {
        "every": eval_every,
        "n_mazes": eval_mazes,
        "seed": HELD_OUT_SEED,
        "maze_cfg": eval_maze.to_dict(),
    }
    calls: list[dict[str, Any]] = record.setdefault("calls", [])
    call: dict[str, Any] = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "steps_run": 0}
    calls.append(call)

    def save_record(step: int, saved: int | None, status: str) -> None:
        call.update(
            {
                "seconds": time.perf_counter() - started,
                "status": status,
                "end_step": step,
            }
        )
        record["state"] = {
            "status": status,
            "global_step": step,
            "checkpoint_step": saved,
            "phases": _phase_states(phases, step, status == "running"),
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        _write_json(record_path, record)

    latest = latest_checkpoint(out) if out.is_dir() else None
    done_step = 0 if latest is None else int(read_state(latest)["global_step"])
    if done_step > total:
        raise TrainingError(
            f"{out} has a checkpoint at step {done_step}, past the plan's {total} steps.",
            hint="Use a new out_dir.",
        )
    if done_step == total and latest is not None:
        save_record(done_step, done_step, "complete")
        return RecipeRun(
            out_dir=str(out),
            phases=phases,
            global_step=done_step,
            total_steps=total,
            status="complete",
            steps_run=0,
            seconds=time.perf_counter() - started,
            final_checkpoint=str(latest),
        )
    if latest is None:
        out.mkdir(parents=True, exist_ok=True)
        _discard_metrics(out)
        trainer = GRPOTrainer(model, phases[0].maze_cfg, phases[0].config(run_config))
    else:
        trainer = GRPOTrainer.resume(latest, model, out_dir=out)
    saved_step: int | None = None if latest is None else done_step
    snapshots = _LiveSnapshots(trainer, out, eval_maze, eval_mazes, run_config)
    if trainer.global_step == 0:
        snapshots.take(0, None)
    final_ckpt = None if latest is None else str(latest)
    bar = tqdm(total=total, initial=trainer.global_step, disable=not progress, desc="recipe")
    status = "running"
    try:
        save_record(trainer.global_step, saved_step, status)
        for index, phase in enumerate(phases):
            if trainer.global_step >= phase.end_step:
                continue
            fresh = trainer.global_step == phase.start_step
            previous = phases[index - 1] if index else None
            reset = (
                reset_optimizer_after_sft
                and fresh
                and previous is not None
                and previous.loss == "sft"
                and phase.loss != "sft"
            )
            enter_phase(trainer, phase, run_config, reset_optimizer=reset)
            while trainer.global_step < phase.end_step:
                metrics = trainer.step()
                call["steps_run"] += 1
                step = trainer.global_step
                key = "loss" if phase.loss == "sft" else "reward_mean"
                bar.set_postfix(phase=phase.name, **{key: f"{metrics[key]:.3g}"})
                bar.update(1)
                saved = eval_every > 0 and step % eval_every == 0
                out_of_time = max_seconds is not None and (
                    time.perf_counter() - started >= max_seconds
                )
                if not saved and (step == phase.end_step or out_of_time):
                    trainer.save_checkpoint()
                    saved = True
                if saved:
                    saved_step = step
                    final_ckpt = str(out / f"checkpoint-{step:06d}")
                    snapshots.take(step, Path(final_ckpt))
                    save_record(step, saved_step, status)
                if out_of_time and step < total:
                    status = "stopped"
                    break
            if status == "stopped":
                break
        if status == "running":
            status = "complete"
        save_record(trainer.global_step, saved_step, status)
    except BaseException:
        # Best effort: the checkpoints, not this record, are what a resumed run relies on, and
        # a failure here must not hide the original error.
        with contextlib.suppress(Exception):
            save_record(trainer.global_step, saved_step, "interrupted")
        raise
    finally:
        bar.close()
    return RecipeRun(
        out_dir=str(out),
        phases=phases,
        global_step=trainer.global_step,
        total_steps=total,
        status="complete" if status == "complete" else "stopped",
        steps_run=int(call["steps_run"]),
        seconds=time.perf_counter() - started,
        final_checkpoint=final_ckpt,
        trainer=trainer,
    )


class _LiveSnapshots:
    """Held-out snapshots of the live policy, written to the learning-curve cache."""

    def __init__(
        self, trainer: Any, out: Path, maze_cfg: MazeConfig, n_mazes: int, config: GRPOConfig
    ) -> None:
        self.trainer = trainer
        self.n_mazes = n_mazes
        self.maze_cfg = maze_cfg
        self.config = config
        self.cache = CurveCache(out / CURVE_FILE) if n_mazes > 0 else None
        self.settings = curve_settings(
            maze_cfg,
            model_id=model_info(trainer.model).model_id,
            n_mazes=n_mazes,
            seed=HELD_OUT_SEED,
            temperature=config.temperature,
            greedy=False,
            episodes_per_maze=1,
            actions=config.actions,
            template=config.template,
        )

    def take(self, step: int, ckpt: Path | None) -> None:
        if self.cache is None:
            return
        identity = None if ckpt is None else checkpoint_identity(ckpt)
        if self.cache.get(self.settings, step, identity) is not None:
            return
        snap = policy_snapshot(
            self.trainer.model,
            self.maze_cfg,
            n_mazes=self.n_mazes,
            seed=HELD_OUT_SEED,
            temperature=self.config.temperature,
            actions=self.config.actions,
            template=self.config.template,
            batch_size=self.config.rollout_batch_size,
        )
        self.cache.put(self.settings, step, None if ckpt is None else ckpt.name, identity, snap)


# ----------------------------------------------------------------------------------------------
# search
# ----------------------------------------------------------------------------------------------

#: ``trial_fn(config, trial_dir) -> PolicySnapshot``: train one trial (``config`` has the
#: trial's settings and ``out_dir = trial_dir``) and return its held-out snapshot.
TrialFunction = Callable[[GRPOConfig, Path], PolicySnapshot]


@dataclass
class TrialResult:
    """One trial of :func:`search`.

    Attributes:
        name: Folder name of the trial (its settings, e.g. ``lr=0.0003_entropy_beta0=0.01``).
        params: The settings tried.
        snapshot: Held-out snapshot of the trained policy.
        seconds: Wall time of the trial.
        out_dir: The trial's folder.
    """

    name: str
    params: dict[str, Any]
    snapshot: PolicySnapshot
    seconds: float
    out_dir: str

    @property
    def score(self) -> float:
        """The held-out mean return (NaN counts as the worst)."""
        r = self.snapshot.return_mean
        return r if math.isfinite(r) else -math.inf

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict; inverse of :meth:`from_dict`."""
        return {
            "name": self.name,
            "params": dict(self.params),
            "seconds": self.seconds,
            "out_dir": self.out_dir,
            "snapshot": self.snapshot.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialResult:
        """Rebuild from :meth:`to_dict` output."""
        return cls(
            name=str(data["name"]),
            params=dict(data["params"]),
            snapshot=PolicySnapshot.from_dict(data["snapshot"]),
            seconds=float(data["seconds"]),
            out_dir=str(data["out_dir"]),
        )


@dataclass
class SearchResult:
    """All trials of a :func:`search` and the best one (highest held-out return).

    Attributes:
        trials: Trials of the grid, in grid order.
        best: The best trial.
        out_dir: The search folder.
        settings: What every trial shared (maze, base config, steps, evaluation).
    """

    trials: list[TrialResult]
    best: TrialResult
    out_dir: str
    settings: dict[str, Any]

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per trial: settings, held-out numbers, whether it is the best."""
        out = []
        for t in self.trials:
            s = t.snapshot
            out.append(
                {
                    "trial": t.name,
                    **{f"param_{k}": v for k, v in t.params.items()},
                    "return_mean": s.to_dict()["return_mean"],
                    "return_se": s.to_dict()["return_se"],
                    "p_gold_given_available": s.p_gold_given_available,
                    "p_mold": s.p_mold,
                    "p_mold_given_available": s.p_mold_given_available,
                    "max_direction_share": s.max_direction_share,
                    "dominant_direction": s.dominant_direction,
                    "seconds": t.seconds,
                    "best": t.name == self.best.name,
                }
            )
        return out

    def table(self) -> str:
        """A plain-text table, best trial marked with ``*``."""
        lines = [
            f"  {'trial':<40} {'return':>9} {'± SE':>6} {'P(Gold|av)':>10} {'P(Mold)':>8} "
            f"{'max dir':>7}"
        ]
        for t in self.trials:
            s = t.snapshot
            se = s.return_se
            lines.append(
                f"{'*' if t.name == self.best.name else ' '} {t.name:<40} "
                f"{s.return_mean:>+9.2f} {(f'{se:.2f}' if math.isfinite(se) else 'n/a'):>6} "
                f"{_fmt3(s.p_gold_given_available):>10} {_fmt3(s.p_mold):>8} "
                f"{s.max_direction_share:>6.2f}{s.dominant_direction}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {
            "out_dir": self.out_dir,
            "settings": dict(self.settings),
            "best": self.best.name,
            "trials": [t.to_dict() for t in self.trials],
        }

    def __repr__(self) -> str:
        b = self.best
        return (
            f"SearchResult({len(self.trials)} trials in {self.out_dir}; best {b.name}: held-out "
            f"return {b.snapshot.return_mean:+.2f}, P(Gold|avail) "
            f"{_fmt3(b.snapshot.p_gold_given_available)}, P(Mold) {_fmt3(b.snapshot.p_mold)})"
        )


def _fmt3(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _grid_points(grid: Mapping[str, Sequence[Any]]) -> Iterator[dict[str, Any]]:
    """The grid's combinations (keys resolved to GRPOConfig fields), in product order."""
    if not isinstance(grid, Mapping) or not grid:
        raise TrainingError(
            "grid must be a non-empty dict of setting -> list of values.",
            hint="E.g. grid={'lr': [1e-4, 3e-4], 'entropy_beta0': [0.0, 0.01]}.",
        )
    valid = [f.name for f in fields(GRPOConfig) if f.name not in _RUN_FIELDS]
    keys: list[str] = []
    values: list[list[Any]] = []
    for key, options in grid.items():
        name = _GRID_ALIASES.get(key, key)
        if name not in valid:
            close = difflib.get_close_matches(str(key), [*valid, *_GRID_ALIASES], n=1)
            raise TrainingError(
                f"Unknown grid key {key!r}.",
                hint=f"Did you mean {close[0]!r}?" if close else f"Use GRPOConfig fields: {valid}.",
            )
        if name in keys:
            raise TrainingError(f"Grid key {key!r} is given twice.", hint="Merge the lists.")
        if isinstance(options, str | bytes) or not isinstance(options, Sequence) or not options:
            raise TrainingError(
                f"grid[{key!r}] must be a non-empty list of values, got {options!r}.",
                hint=f"E.g. grid={{{key!r}: [...]}}.",
            )
        keys.append(name)
        values.append(list(options))
    for combo in itertools.product(*values):
        yield dict(zip(keys, combo, strict=True))


def _trial_name(params: Mapping[str, Any]) -> str:
    text = "_".join(f"{k}={v!r}" for k, v in params.items())
    return re.sub(r"[^A-Za-z0-9.=_+-]", "-", text)


def run_trial(
    model_factory: Callable[[], Any],
    maze_cfg: MazeConfig,
    config: GRPOConfig,
    trial_dir: Path,
    *,
    steps: int,
    n_eval_mazes: int,
    curriculum: Curriculum | None = None,
    sft_steps: int = 0,
    eval_seed: int = HELD_OUT_SEED,
) -> PolicySnapshot:
    """Train one short trial with :func:`train_with_recipe` and snapshot it on held-out mazes.

    The trial resumes from its own checkpoints if it was killed. ``curriculum`` is scaled to
    ``steps`` RL steps (:meth:`Curriculum.scaled`); the evaluation plays ``maze_cfg``.
    """
    from welfare_lens.rl.checkpoint import load_checkpoint

    stages = curriculum.scaled(steps) if curriculum is not None else Curriculum.single(steps)
    run = train_with_recipe(
        model_factory(),
        maze_cfg,
        config,
        out_dir=trial_dir,
        curriculum=stages,
        sft_steps=sft_steps,
        eval_every=0,
        progress=False,
    )
    if run.trainer is not None:
        policy = run.trainer.model
    else:
        assert run.final_checkpoint is not None
        policy = load_checkpoint(run.final_checkpoint, model_factory())
    return policy_snapshot(
        policy,
        maze_cfg,
        n_mazes=n_eval_mazes,
        seed=eval_seed,
        temperature=config.temperature,
        actions=config.actions,
        template=config.template,
        batch_size=config.rollout_batch_size,
    )


def _write_search(
    out: Path, settings: Mapping[str, Any], result: SearchResult | None, done: Sequence[TrialResult]
) -> None:
    data = {
        "format": _FORMAT,
        "settings": dict(settings),
        "best": None if result is None else result.best.name,
        "trials": [t.to_dict() for t in done],
    }
    _write_json(out / SEARCH_FILE, data)
    if result is None:
        return
    rows = result.rows()
    columns = list(dict.fromkeys(k for row in rows for k in row))
    tmp = out / f".search.csv.tmp-{os.getpid()}"
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out / "search.csv")


def search(
    model_factory: Callable[[], Any] | None,
    maze_cfg: MazeConfig,
    base_config: GRPOConfig,
    grid: Mapping[str, Sequence[Any]],
    *,
    steps: int,
    n_eval_mazes: int,
    out_dir: str | Path,
    curriculum: Curriculum | None = None,
    sft_steps: int = 0,
    eval_seed: int = HELD_OUT_SEED,
    keep: Literal["best", "all"] = "best",
    trial_fn: TrialFunction | None = None,
    progress: bool = True,
) -> SearchResult:
    """Short trials over a grid of trainer settings; the best held-out return wins.

    Every combination of ``grid`` (a product over its keys, GRPOConfig field names;
    ``entropy_coef`` is accepted for ``entropy_beta0``) trains a fresh model for ``steps`` RL
    steps (after ``sft_steps`` of SFT, through ``curriculum`` scaled to ``steps``) in
    ``out_dir/<trial name>`` and is scored by the mean return of a
    :func:`~welfare_lens.rl.learning_curve.policy_snapshot` on ``n_eval_mazes`` held-out mazes
    (the same mazes for every trial). ``search.json`` and ``search.csv`` are rewritten after each
    trial; a rerun skips the trials already recorded and resumes a killed trial from its
    checkpoints. Compare the best trial with the untrained policy (a ``policy_snapshot`` of a
    fresh model) before trusting it: a short trial can look best by luck (read ``return_se``).

    Args:
        model_factory: Returns a fresh untrained model per trial (unused with ``trial_fn``).
        maze_cfg: The task, also the evaluation maze.
        base_config: Settings shared by every trial.
        grid: ``{setting: [values]}``.
        steps: RL steps per trial.
        n_eval_mazes: Held-out mazes per trial.
        out_dir: Search folder.
        curriculum: Stage shape of each trial (scaled to ``steps``).
        sft_steps: SFT warm-start steps per trial.
        eval_seed: Seed of the held-out mazes.
        keep: ``"best"`` deletes the checkpoints of every trial but the best (results stay);
            ``"all"`` keeps them.
        trial_fn: Replaces the training of a trial (``(config, trial_dir) -> PolicySnapshot``),
            e.g. to run trials elsewhere; default :func:`run_trial`.
        progress: Print one line per trial.

    Returns:
        The :class:`SearchResult`.

    Raises:
        TrainingError: on a bad grid (unknown key, empty list, invalid value), bad counts, or an
            ``out_dir`` holding a search with other shared settings.
    """
    _positive_int("steps", steps, "E.g. steps=30 per trial.")
    _positive_int("n_eval_mazes", n_eval_mazes, "E.g. 100 held-out mazes.")
    if keep not in ("best", "all"):
        raise TrainingError(f"keep must be 'best' or 'all', got {keep!r}.", hint="E.g. 'best'.")
    if trial_fn is None and model_factory is None:
        raise TrainingError(
            "search needs a model_factory to train its trials.",
            hint="Pass e.g. lambda: wl.load_model('smollm2-135m-instruct').",
        )
    points = list(_grid_points(grid))
    configs = [replace(base_config, **p) for p in points]  # validates every value up front
    out = Path(out_dir)
    settings = _roundtrip(
        {
            "maze_cfg": maze_cfg.to_dict(),
            "base_config": replace(base_config, **_RUN_FIELDS).to_dict(),  # type: ignore[arg-type]
            "steps": steps,
            "n_eval_mazes": n_eval_mazes,
            "eval_seed": eval_seed,
            "sft_steps": sft_steps,
            "curriculum": None if curriculum is None else curriculum.to_dict(),
        }
    )
    done: dict[str, TrialResult] = {}
    file = out / SEARCH_FILE
    if file.is_file():
        try:
            stored = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise TrainingError(
                f"{file} is unreadable: {err}", hint="Restore or delete it (trials re-run)."
            ) from err
        if stored.get("settings") != settings:
            diff = sorted(k for k in settings if stored.get("settings", {}).get(k) != settings[k])
            raise TrainingError(
                f"{out} holds a search with other shared settings (differs in {diff}).",
                hint="Pass the same settings to resume it, or use a new out_dir.",
            )
        for t in stored.get("trials", []):
            trial = TrialResult.from_dict(t)
            done[trial.name] = trial
    if trial_fn is None:
        assert model_factory is not None
        factory = model_factory

        def default_trial(config: GRPOConfig, trial_dir: Path) -> PolicySnapshot:
            return run_trial(
                factory,
                maze_cfg,
                config,
                trial_dir,
                steps=steps,
                n_eval_mazes=n_eval_mazes,
                curriculum=curriculum,
                sft_steps=sft_steps,
                eval_seed=eval_seed,
            )

        trial_fn = default_trial
    trials: list[TrialResult] = []
    result: SearchResult | None = None
    for params, config in zip(points, configs, strict=True):
        name = _trial_name(params)
        stored_trial = done.get(name)
        if stored_trial is not None and stored_trial.params == _roundtrip(params):
            trial = stored_trial
        else:
            trial_dir = out / name
            t0 = time.perf_counter()
            snapshot = trial_fn(replace(config, out_dir=str(trial_dir), progress=False), trial_dir)
            if not isinstance(snapshot, PolicySnapshot):
                raise TrainingError(
                    f"trial_fn returned {type(snapshot).__name__}, not a PolicySnapshot.",
                    hint="Return policy_snapshot(trained_model, maze_cfg, ...).",
                )
            trial = TrialResult(
                name=name,
                params=_roundtrip(params),
                snapshot=snapshot,
                seconds=time.perf_counter() - t0,
                out_dir=str(trial_dir),
            )
            done[name] = trial
            if progress:
                print(f"trial {name}: {snapshot!r}", flush=True)
        trials.append(trial)
        best = max(trials, key=lambda t: t.score)
        result = SearchResult(trials=list(trials), best=best, out_dir=str(out), settings=settings)
        _write_search(out, settings, result, list(done.values()))
        if keep == "best":
            for other in trials:
                if other.name != best.name:
                    for ckpt in Path(other.out_dir).glob("checkpoint-*"):
                        shutil.rmtree(ckpt, ignore_errors=True)
    assert result is not None
    return result


# ----------------------------------------------------------------------------------------------
# Recipes
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """A documented starting point for one model: maze, trainer settings, curriculum, grid.

    ``measured`` says whether the recipe, run as it stands, was seen to learn (its notes give
    the numbers); otherwise every value is a first guess, to be confirmed with :func:`search`
    and the learning curve.

    Attributes:
        name: Recipe key.
        model: The :func:`~welfare_lens.load_model` name it is meant for.
        summary: One line on what it is.
        maze: MazeConfig keyword arguments.
        grpo: GRPOConfig keyword arguments.
        curriculum: RL stages.
        sft_steps: SFT warm-start steps (0: pure RL, the paper's condition).
        sft_lr: Learning rate of the warm start.
        eval_every: Checkpoint interval (learning-curve points).
        search_grid: Suggested :func:`search` grid around the guess.
        measured: Whether the recipe as it stands was measured to learn (see ``notes``).
        notes: Why the values are what they are.
    """

    name: str
    model: str
    summary: str
    maze: dict[str, Any]
    grpo: dict[str, Any]
    curriculum: Curriculum
    sft_steps: int = 0
    sft_lr: float | None = None
    eval_every: int = 20
    search_grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    measured: bool = False
    notes: str = ""

    def maze_config(self, **overrides: Any) -> MazeConfig:
        """The recipe's MazeConfig, with ``overrides`` (e.g. ``prompt_format="paper"``)."""
        return MazeConfig(**{**self.maze, **overrides})

    def grpo_config(self, **overrides: Any) -> GRPOConfig:
        """The recipe's GRPOConfig, with ``overrides``."""
        return GRPOConfig(**{**self.grpo, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {
            "name": self.name,
            "model": self.model,
            "summary": self.summary,
            "maze": dict(self.maze),
            "grpo": dict(self.grpo),
            "curriculum": self.curriculum.to_dict(),
            "sft_steps": self.sft_steps,
            "sft_lr": self.sft_lr,
            "eval_every": self.eval_every,
            "search_grid": {k: list(v) for k, v in self.search_grid.items()},
            "measured": self.measured,
            "notes": self.notes,
        }

    def __repr__(self) -> str:
        return (
            f"Recipe({self.name!r} for {self.model}: {self.maze.get('prompt_format')} prompt, "
            f"lr {self.grpo.get('lr')}, {self.grpo.get('mazes_per_step')} mazes x "
            f"{self.grpo.get('episodes_per_maze')} episodes, LoRA r{self.grpo.get('lora_r')}, "
            f"{self.curriculum!r}, sft_steps={self.sft_steps}, "
            f"{'measured' if self.measured else 'NOT measured: a starting point'})"
        )


_CURRICULUM_1_15 = Curriculum(
    [
        CurriculumStage(steps=80, turns=1, name="turns-1"),
        # A 15-turn episode costs ~25x a one-turn one on CPU: 2 mazes x 8 episodes per step.
        CurriculumStage(steps=20, turns=15, name="turns-15", mazes_per_step=2),
    ]
)
_SHARED_GRPO: dict[str, Any] = {
    "loss": "dr_grpo",
    "mazes_per_step": 8,
    "episodes_per_maze": 8,
    "temperature": 0.7,
    "entropy_beta0": 0.01,
    "lora_r": 32,
    "lora_alpha": 64,
    "schedule_steps": 500,
    "max_grad_norm": 1.0,
    # A group's episodes face the same wind and clause orders, so their first prompts are
    # identical (the usual GRPO group: one prompt, G samples) and the rollout and the update
    # encode that prompt once per group (share_update_prefix).
    "shared_episode_seed": True,
    "micro_batch_size": 64,
}

#: Starting points per model (keys are :func:`~welfare_lens.load_model` names). NOT measured:
#: confirm with :func:`search` and :func:`~welfare_lens.rl.learning_curve.learning_curve`.
RECIPES: dict[str, Recipe] = {
    "smollm2-135m-instruct": Recipe(
        name="smollm2-135m-instruct",
        model="smollm2-135m-instruct",
        summary=(
            "Compact prompt, Dr. GRPO + LoRA r32, 80 one-turn steps (8x8 episodes) then 20 "
            "fifteen-turn steps (2x8); lr 2e-4, entropy 0.02."
        ),
        maze={"prompt_format": "compact"},
        grpo={
            **_SHARED_GRPO,
            "lr": 2e-4,
            "entropy_beta0": 0.02,
            "micro_batch_tokens": 4096,
            "rollout_batch_size": 64,
        },
        curriculum=_CURRICULUM_1_15,
        search_grid={"lr": (1e-4, 2e-4, 3e-4), "entropy_beta0": (0.01, 0.02, 0.05)},
        measured=True,
        notes=(
            "Measured (README, 'Learning signal'): 40.7 min on one CPU thread while another job "
            "used the other core; on 200 held-out 15-turn mazes P(Gold | Gold in view) 0.244 -> "
            "0.705, P(Mold) 0.515 -> 0.146 (a perfect Mold-avoider: 0.089), P(Mold | avoidable) "
            "0.472 -> 0.097, return -73.5 -> +4.3, largest direction share 0.65 (E). At lr 3e-4 "
            "with 4x8 one-turn episodes the policy collapsed onto N within 30 steps; one-turn "
            "training alone (100 steps) left 15-turn P(Mold) at 0.51, so the fifteen-turn stage "
            "is what teaches Mold avoidance in long conversations."
        ),
    ),
    "gemma-3-270m": Recipe(
        name="gemma-3-270m",
        model="gemma-3-270m",
        summary=(
            "Compact prompt, Dr. GRPO + LoRA r32, 80 one-turn steps (8x8 episodes) then 12 "
            "fifteen-turn steps (2x8); lr 2e-5, entropy 0.05, k3 KL to the untrained model 1.0."
        ),
        maze={"prompt_format": "compact"},
        grpo={
            **_SHARED_GRPO,
            "lr": 2e-5,
            "entropy_beta0": 0.05,
            "kl_beta": 1.0,
            "micro_batch_tokens": 2048,
            "rollout_batch_size": 64,
        },
        curriculum=Curriculum(
            [
                CurriculumStage(steps=80, turns=1, name="turns-1"),
                CurriculumStage(steps=12, turns=15, name="turns-15", mazes_per_step=2),
            ]
        ),
        search_grid={"lr": (5e-6, 1e-5, 2e-5), "kl_beta": (0.0, 1.0)},
        notes=(
            "Measured (README, 'Learning signal'), and not yet a recipe that learns: 24.4 min "
            "on two CPU threads; on 200 held-out 15-turn mazes P(Gold | in view) 0.320 -> 0.393, "
            "P(Mold) 0.328 -> 0.312, P(Mold | avoidable) 0.304 -> 0.286, return -38.6 -> -33.1, "
            "largest direction share 0.40 -> 0.28. The setting is the best of a six-trial search "
            "(30 one-turn steps each, lr 5e-6 / 1e-5 / 2e-5 x KL 0 / 1; held-out one-turn return "
            "-3.05 untrained, -1.20 kept). Without the KL term: lr 2e-4 and 1e-4 collapsed onto "
            "one direction (entropy 0.87 -> 0.05 within 12 and 38 steps), lr 5e-5 hopped between "
            "dominant directions, and lr 3e-5 with 8x16 episodes went deterministic per maze "
            "within 12 steps (zero-std share 0.88-1.0). The fifteen-turn steps ran at a per-move "
            "entropy of 0.21 falling to 0.02-0.05: in long conversations the policy is close "
            "to deterministic given the context, so they sharpen rather than explore. A 40-step SFT "
            "warm start (sft_turns 1, sft_lr 1e-4) before 60 one-turn and 6 fifteen-turn steps "
            "did better (16.7 min; 100 held-out mazes: P(Gold | in view) 0.341 -> 0.465, "
            "P(Mold | avoidable) 0.297 -> 0.237, return -35.2 -> -23.0), but that makes the "
            "policy partly imitation-trained (the SFT control), so the recipe stays RL-only. "
            "Gemma 3's sliding-window "
            "attention makes rollouts decode one episode per lane (slower); micro_batch_tokens "
            "2048 bounds the update's memory."
        ),
    ),
}


def get_recipe(name: str) -> Recipe:
    """The recipe for ``name``.

    Raises:
        TrainingError: for an unknown name (listing the known ones).
    """
    if name not in RECIPES:
        close = difflib.get_close_matches(str(name), list(RECIPES), n=1)
        raise TrainingError(
            f"No recipe named {name!r}.",
            hint=(f"Did you mean {close[0]!r}? " if close else "")
            + f"Known recipes: {', '.join(RECIPES)}.",
        )
    return RECIPES[name]


def recipe_for(model_name: str, recipe_name: str | None = None) -> Recipe:
    """The recipe named ``recipe_name``, or by default the one named after the model.

    Raises:
        TrainingError: when no recipe is named and none carries the model's name, or for an
            unknown recipe name.
    """
    if recipe_name is None and model_name not in RECIPES:
        raise TrainingError(
            f"No recipe for the model {model_name!r}.",
            hint=f"Name one to start from (one of {', '.join(RECIPES)}).",
        )
    return get_recipe(recipe_name or model_name)


def given(**values: Any) -> dict[str, Any]:
    """The keyword arguments that are not ``None``: optional command-line flags as overrides
    for :meth:`Recipe.maze_config` and :meth:`Recipe.grpo_config`."""
    return {key: value for key, value in values.items() if value is not None}
