"""The paper's whole pipeline as resumable stages with their outputs on disk.

``train`` (GRPO in the maze, §2) → ``extract`` (welfare vectors v of the trained model and
controls u of the naive one, A4) → ``analyze`` (antiparallelism, L*, logit lens, emotions,
tracking; §3, §5) → ``steer`` (α sweeps of the behavioural evaluations, §4) → ``evaluate``
(held-out maze returns of the naive and trained policies) → ``report`` (one HTML file).

Every stage writes under ``out/<stage>/`` and ends by writing ``out/<stage>/done.json``; a
finished stage is skipped when run again, and an interrupted one resumes where its own
mechanism allows (training from its latest checkpoint, sweeps per condition). Nothing is
downloaded: models come from :func:`welfare_lens.load_model`.

Example:
    >>> cfg = PipelineConfig.preset("quick", model="tiny-llama")  # doctest: +SKIP
    >>> run_pipeline(cfg, "runs/quick")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import shutil
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from welfare_lens.errors import ConfigError, DataError, WelfareLensError

__all__ = ["STAGES", "PipelineConfig", "run_pipeline", "run_stage"]

STAGES: tuple[str, ...] = ("train", "extract", "analyze", "steer", "evaluate", "report")
EVALUATIONS: tuple[str, ...] = ("sentiment", "confidence", "refusal", "backtracking")
#: Extraction designs of :attr:`PipelineConfig.design`.
DESIGNS: tuple[str, ...] = ("shared_prefix", "minimal_pairs")
#: Model weight dtypes a run may use (``PipelineConfig.dtype``).
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class PipelineConfig:
    """Settings of a pipeline run; see :meth:`preset` for the quick, full and paper sizes.

    Attributes:
        model: A :func:`welfare_lens.load_model` key.
        device: Torch device (default: the model's).
        dtype: Weight dtype of every model the run loads: ``"float32"`` (default; what a CPU
            needs), ``"bfloat16"`` or ``"float16"`` (halve memory and time on a GPU). Class
            statistics always accumulate in float64, whatever the model dtype.
        seed: Global seed.
        prompt_format: Maze user-turn format for training and extraction (``"compact"`` is the
            one the bundled 135M-270M models learn on a CPU; ``"paper"`` is the paper's).
        turns: Maze turns per episode (paper: 15).
        recipe: How ``train`` trains. ``"auto"`` (the default of the ``full`` preset): with
            :data:`welfare_lens.rl.RECIPES` ``[model]`` when the model has one (its curriculum,
            learning rate, entropy bonus and batch sizes replace ``train_steps``,
            ``mazes_per_step``, ``episodes_per_maze``, ``micro_batch_size`` and ``lr``; the
            135M-270M models do not learn the 15-turn maze from plain GRPO on a CPU budget),
            else with those fields. A recipe key uses that recipe; ``None`` (or ``"none"``
            in TOML) always uses the fields (the ``quick`` and ``paper`` presets).
        train_steps: GRPO steps.
        mazes_per_step, episodes_per_maze, micro_batch_size, lr: GRPO settings (A3).
        per_class: Extraction samples per class (paper: 5,000), shared-prefix sampling.
        design: Extraction classes: ``"shared_prefix"`` (the paper's: a class-c sample ends
            with a move onto class c, so the classes also differ in what the last prompt showed)
            or ``"minimal_pairs"`` (one final move per class branched off the same prefix, so
            they differ only in the chosen move; see ``docs/designs.md``). v and u always share
            the design.
        holdout: Fraction of mazes kept aside for the steering-layer selection (A4).
        tracking_per_class: Fresh trajectories per class for tracking (A8).
        stories_per_emotion: Stories per emotion for the emotion vectors (None: all).
        evaluations: Behavioural evaluations swept in ``steer``.
        alphas: Steering coefficients (paper: −4, −2, 0, 2, 4).
        eval_items: Prompts / problems / questions per evaluation.
        eval_samples: Samples per prompt.
        max_new_tokens: Generation length in the evaluations.
        eval_mazes: Held-out mazes in ``evaluate``.
    """

    model: str = "smollm2-135m-instruct"
    device: str | None = None
    dtype: str = "float32"
    seed: int = 0
    prompt_format: str = "compact"
    turns: int = 15
    recipe: str | None = "auto"
    train_steps: int = 40
    mazes_per_step: int = 2
    episodes_per_maze: int = 8
    micro_batch_size: int = 2
    lr: float = 3e-4
    per_class: int = 2000
    design: str = "shared_prefix"
    holdout: float = 0.1
    tracking_per_class: int = 100
    stories_per_emotion: int | None = None
    evaluations: tuple[str, ...] = EVALUATIONS
    alphas: tuple[float, ...] = (-4.0, -2.0, 0.0, 2.0, 4.0)
    eval_items: int = 10
    eval_samples: int = 2
    max_new_tokens: int = 48
    eval_mazes: int = 100
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [e for e in self.evaluations if e not in EVALUATIONS]
        if unknown:
            raise ConfigError(
                f"Unknown evaluation(s) {unknown}.", hint=f"Choose from {EVALUATIONS}."
            )
        for name in ("train_steps", "per_class", "eval_items", "eval_samples", "eval_mazes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(
                    f"{name} must be a non-negative integer, got {value!r}.",
                    hint="Fix the value in the TOML file or on the command line.",
                )
        if self.design not in DESIGNS:
            raise ConfigError(
                f"Unknown extraction design {self.design!r}.", hint=f"Choose from {DESIGNS}."
            )
        if self.recipe in ("none", ""):
            object.__setattr__(self, "recipe", None)  # TOML has no null
        if self.recipe is not None and self.recipe != "auto":
            from welfare_lens.rl.recipe import get_recipe

            try:
                get_recipe(self.recipe)
            except WelfareLensError as err:
                raise ConfigError(
                    f"Unknown recipe {self.recipe!r}.",
                    hint=f"Use 'auto', 'none' or a recipe key. {err.hint or ''}".strip(),
                ) from err
        if self.dtype not in DTYPES:
            raise ConfigError(
                f"Unknown dtype {self.dtype!r}.", hint=f"Choose from {tuple(DTYPES)}."
            )
        if not 0.0 < self.holdout < 1.0:
            raise ConfigError(
                f"holdout must lie in (0, 1), got {self.holdout}.",
                hint="The steering-layer selection needs held-out mazes, e.g. 0.1.",
            )

    @classmethod
    def preset(cls, name: str = "full", **overrides: Any) -> PipelineConfig:
        """Named settings: ``"quick"`` (minutes on a CPU), ``"full"`` (CPU hours on the bundled
        135M-270M models) or ``"paper"`` (the paper's sizes, A3/A4: 5,000 samples per class,
        8 mazes x 64 episodes, 500 steps, LR 3e-6 for a 4B model: a GPU job)."""
        if name == "full":
            return cls(**overrides)
        if name == "paper":
            paper: dict[str, Any] = {
                "prompt_format": "paper",
                "recipe": None,
                "train_steps": 500,
                "mazes_per_step": 8,
                "episodes_per_maze": 64,
                "micro_batch_size": 16,
                "lr": 3e-6,
                "per_class": 5000,
                "tracking_per_class": 500,
                "eval_items": 100,
                "eval_samples": 10,
                "max_new_tokens": 200,
                "eval_mazes": 200,
            }
            paper.update(overrides)
            return cls(**paper)
        if name == "quick":
            quick: dict[str, Any] = {
                "recipe": None,
                "train_steps": 2,
                "mazes_per_step": 2,
                "episodes_per_maze": 4,
                "per_class": 45,
                "holdout": 0.25,
                "tracking_per_class": 8,
                "stories_per_emotion": 1,
                "alphas": (-4.0, 0.0, 4.0),
                "eval_items": 2,
                "eval_samples": 1,
                "max_new_tokens": 12,
                "eval_mazes": 4,
            }
            quick.update(overrides)
            return cls(**quick)
        raise ConfigError(f"Unknown preset {name!r}.", hint="Use 'quick', 'full' or 'paper'.")

    @classmethod
    def from_toml(cls, path: str | Path, base: PipelineConfig | None = None) -> PipelineConfig:
        """Read settings from a TOML file (top-level keys, or a ``[pipeline]`` table)."""
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(
                f"Cannot read the config {path}: {err}.", hint="Pass a valid TOML file."
            ) from err
        data = data.get("pipeline", data)
        return (base or cls()).updated(data)

    def updated(self, changes: Mapping[str, Any]) -> PipelineConfig:
        """A copy with ``changes`` applied; unknown keys are an error naming the valid ones."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ConfigError(
                f"Unknown setting(s) {unknown}.", hint=f"Valid settings: {sorted(names)}."
            )
        clean: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()
        }
        return replace(self, **clean)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return asdict(self)


# ---------------------------------------------------------------------------- helpers


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_json_default, allow_nan=False))
    tmp.replace(path)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return np.asarray(value, dtype=float).tolist()
    if isinstance(value, tuple):
        return list(value)
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return str(value)


def _finite(data: Any) -> Any:
    """NaN and inf to None, recursively (JSON has neither)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise DataError(
            f"{path} is missing.", hint="Run the stage that writes it first (or `reproduce`)."
        ) from err
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path} is corrupt: {err}.", hint="Delete it and run its stage again."
        ) from err


class _Models:
    """Loads each model once per process: the naive one and the trained one."""

    def __init__(self, cfg: PipelineConfig, out: Path) -> None:
        self.cfg, self.out = cfg, out
        self._naive: Any = None
        self._trained: Any = None

    def naive(self) -> Any:
        if self._naive is None:
            self._naive = self.fresh()
        return self._naive

    def fresh(self) -> Any:
        import torch

        from welfare_lens.models import load_model

        dtype = getattr(torch, self.cfg.dtype)
        return load_model(self.cfg.model, device=self.cfg.device, dtype=dtype)

    def trained(self) -> Any:
        if self._trained is None:
            from welfare_lens.rl.checkpoint import latest_checkpoint, load_checkpoint

            ckpt = latest_checkpoint(self.out / "train")
            if ckpt is None:
                raise DataError(
                    f"No training checkpoint under {self.out / 'train'}.",
                    hint="Run the train stage first.",
                )
            self._trained = load_checkpoint(ckpt, self.fresh())
        return self._trained


def _maze_cfg(cfg: PipelineConfig) -> Any:
    from welfare_lens.maze import MazeConfig

    return MazeConfig(prompt_format=cfg.prompt_format, turns=cfg.turns)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- stages


def _training_recipe(cfg: PipelineConfig) -> Any:
    """The :class:`~welfare_lens.rl.recipe.Recipe` the train stage follows, or None."""
    from welfare_lens.rl.recipe import RECIPES, get_recipe

    if cfg.recipe == "auto":
        return RECIPES.get(cfg.model)
    return None if cfg.recipe is None else get_recipe(cfg.recipe)


def _train_with_recipe(
    recipe: Any, cfg: PipelineConfig, folder: Path, models: _Models
) -> dict[str, Any]:
    from welfare_lens.rl.recipe import train_with_recipe

    start = time.perf_counter()
    run = train_with_recipe(
        models.fresh(),
        recipe.maze_config(prompt_format=cfg.prompt_format, turns=cfg.turns),
        recipe.grpo_config(seed=cfg.seed),
        out_dir=folder,
        curriculum=recipe.curriculum,
        sft_steps=recipe.sft_steps,
        sft_lr=recipe.sft_lr,
        eval_every=recipe.eval_every,
        progress=True,
    )
    return {
        "recipe": recipe.name,
        "recipe_measured": recipe.measured,
        "steps": run.global_step,
        "seconds": time.perf_counter() - start,
    }


def _train(cfg: PipelineConfig, out: Path, models: _Models) -> dict[str, Any]:
    from welfare_lens.rl import GRPOConfig, GRPOTrainer
    from welfare_lens.rl.checkpoint import latest_checkpoint

    folder = out / "train"
    recipe = _training_recipe(cfg)
    if recipe is not None:
        return _train_with_recipe(recipe, cfg, folder, models)
    ckpt = latest_checkpoint(folder)
    if ckpt is not None:
        trainer = GRPOTrainer.resume(ckpt, models.fresh())
    else:
        config = GRPOConfig(
            lr=cfg.lr,
            mazes_per_step=cfg.mazes_per_step,
            episodes_per_maze=cfg.episodes_per_maze,
            micro_batch_size=cfg.micro_batch_size,
            schedule_steps=max(cfg.train_steps, 1),
            seed=cfg.seed,
            out_dir=str(folder),
            checkpoint_every=5,
            progress=False,
        )
        # A run killed before its first checkpoint starts again from step 0.
        (folder / "metrics.jsonl").unlink(missing_ok=True)
        trainer = GRPOTrainer(models.fresh(), _maze_cfg(cfg), config)
    start = time.perf_counter()
    while trainer.global_step < cfg.train_steps:
        metrics = trainer.step()
        print(
            f"train step {trainer.global_step}/{cfg.train_steps}: "
            f"return {metrics['reward_mean']:+.2f}",
            flush=True,
        )
    trainer.save_checkpoint()
    return {"steps": trainer.global_step, "seconds": time.perf_counter() - start}


def _extract(cfg: PipelineConfig, out: Path, models: _Models) -> dict[str, Any]:
    from welfare_lens.capture import capture
    from welfare_lens.maze import shared_prefix_trajectories
    from welfare_lens.vectors import welfare_vectors

    folder = out / "extract"
    trajs = shared_prefix_trajectories(
        _maze_cfg(cfg),
        per_class=cfg.per_class,
        design=cfg.design,  # type: ignore[arg-type]  # checked in PipelineConfig
    )
    result: dict[str, Any] = {"samples": len(trajs), "design": cfg.design}
    for tag, get in (("u", models.naive), ("v", models.trained)):
        if (folder / f"{tag}.json").exists():  # vectors are written after their statistics
            continue
        start = time.perf_counter()
        # The statistics file doubles as the capture's checkpoint: a killed run resumes.
        stats = capture(
            get(),
            trajs,
            holdout=cfg.holdout,
            holdout_seed=cfg.seed,
            checkpoint=folder / f"stats_{tag}",
            checkpoint_every=500,
        )
        welfare_vectors(stats, role="control" if tag == "u" else "trained").save(folder / tag)
        result[f"{tag}_seconds"] = time.perf_counter() - start
    return result


def _analyze(cfg: PipelineConfig, out: Path, models: _Models) -> dict[str, Any]:
    from welfare_lens.analysis import (
        antiparallelism,
        centred_class_mean_cosines,
        emotion_alignment,
        emotion_pca,
        emotion_vectors,
        load_emotions,
        load_stories,
        logit_lens_vectors,
        seen_tile_cosines,
        seen_tile_vectors,
        select_steering_layer,
        vaa_cosines,
        valence_assent_axis,
    )
    from welfare_lens.analysis.tracking import track_outcomes
    from welfare_lens.maze import synthetic_trajectories
    from welfare_lens.vectors import ClassStatistics, ConceptVectors

    src = out / "extract"
    vecs = {tag: ConceptVectors.load(src / tag) for tag in ("v", "u")}
    stats = {tag: ClassStatistics.load(src / f"stats_{tag}") for tag in ("v", "u")}
    result: dict[str, Any] = {}
    l_star: dict[str, dict[str, int]] = {}
    selection: dict[str, Any] = {}
    for tag in ("v", "u"):
        l_star[tag] = {}
        for concept in ("mold", "gold"):
            sel = select_steering_layer(vecs[tag], concept, stats[tag].heldout)
            l_star[tag][concept] = sel.layer
            selection[f"{tag}_{concept}"] = {
                "layer": sel.layer,
                "auroc": sel.auroc.tolist(),
                "d": sel.d.tolist(),
                "overlap": sel.overlap.tolist(),
            }
    result["l_star"] = l_star
    result["selection"] = selection
    # The same vectors with their ℓ* in the metadata, so that functions that take layer=None
    # (e.g. steering.pre_existence) find it: analyze/v and analyze/u.
    (out / "analyze").mkdir(parents=True, exist_ok=True)
    for tag in ("v", "u"):
        meta = vecs[tag].metadata
        ConceptVectors(
            dict(vecs[tag].items()),
            replace(meta, extra={**meta.extra, "l_star": dict(l_star[tag])}),
        ).save(out / "analyze" / tag)
    result["composition"] = {}
    for tag in ("v", "u"):
        table = stats[tag].info.get("composition")
        if table is not None:
            cosines = seen_tile_cosines(seen_tile_vectors(stats[tag]), vecs[tag])
            result["composition"][tag] = {"table": table, "seen_tile_cosines": cosines}
    layers = sorted({l_star["v"]["mold"], l_star["v"]["gold"]})
    anti = antiparallelism(
        vecs["v"], vecs["u"], layers, stats=stats["v"], control_stats=stats["u"], n_boot=200
    )
    result["antiparallelism"] = anti.to_dict()
    result["centred_cosines"] = {
        tag: centred_class_mean_cosines(stats[tag]).to_dict() for tag in ("v", "u")
    }
    result["logit_lens"] = {
        tag: {
            name: r.to_dict()
            for name, r in logit_lens_vectors(
                models.naive() if tag == "u" else models.trained(),
                vecs[tag],
                names=["mold", "gold"],
                k=10,
                norm="gain",
            ).items()
        }
        for tag in ("v", "u")
    }
    stories = load_stories()
    if cfg.stories_per_emotion is not None:
        seen: dict[str, int] = {}
        kept = []
        for story in stories:
            if seen.get(story.emotion, 0) < cfg.stories_per_emotion:
                seen[story.emotion] = seen.get(story.emotion, 0) + 1
                kept.append(story)
        stories = kept
    emotions = emotion_vectors(models.naive(), stories)
    emotions.save(out / "analyze" / "emotions")
    ratings = load_emotions()
    result["emotion_pca"] = emotion_pca(emotions, ratings, v=vecs["v"]).to_dict()
    align = emotion_alignment(vecs["v"], emotions, control=vecs["u"])
    result["emotion_alignment"] = align.to_dict(points=True)
    # Appendix H: the naive model's Valence-Assent Axis against u and against v.
    vaa = valence_assent_axis(models.naive(), progress=False)
    result["vaa"] = {
        "layers": list(vaa.layers),
        "layer": vaa.layer,
        "n_statements": vaa.n_statements,
        "r": vaa.r.tolist(),
        "explained_variance_ratio": vaa.explained_variance_ratio.tolist(),
        "cosines": {tag: vaa_cosines(vaa, vecs[tag], layers=vaa.layers) for tag in ("v", "u")},
    }
    fresh = synthetic_trajectories(
        _maze_cfg(cfg),
        per_class=cfg.tracking_per_class,
        seed=cfg.seed + 777_000,
        classes=("mold", "gold"),
    )
    result["tracking"] = track_outcomes(
        models.trained(), vecs["v"], fresh, l_star["v"]["gold"], names=["mold", "gold"]
    ).to_dict()
    return _finite(result)


def _steer(cfg: PipelineConfig, out: Path, models: _Models) -> dict[str, Any]:
    from welfare_lens.steering import (
        evaluate_backtracking,
        evaluate_confidence,
        evaluate_refusal,
        evaluate_sentiment,
        load_arithmetic_problems,
        load_truefalse_questions,
        sentiment_prompts,
        slopes_by,
        sweep,
    )
    from welfare_lens.vectors import ConceptVectors

    folder = out / "steer"
    analysis = _read_json(out / "analyze" / "analysis.json")
    l_star = analysis["l_star"]["v"]
    v = ConceptVectors.load(out / "extract" / "v")
    u = ConceptVectors.load(out / "extract" / "u")
    model = models.naive()
    n, s, tokens = cfg.eval_items, cfg.eval_samples, cfg.max_new_tokens
    evaluators: dict[str, Callable[[Any], Any]] = {
        "sentiment": lambda m: evaluate_sentiment(
            m, prompts=sentiment_prompts()[:n], samples=s, max_new_tokens=tokens, seed=cfg.seed
        ),
        "confidence": lambda m: evaluate_confidence(m, load_truefalse_questions()[: 5 * n]),
        "refusal": lambda m: evaluate_refusal(
            m, n_per_split=n, samples=s, max_new_tokens=tokens, seed=cfg.seed
        ),
        "backtracking": lambda m: evaluate_backtracking(
            m,
            load_arithmetic_problems()[:n],
            n_problems=None,
            samples=s,
            max_new_tokens=tokens,
            seed=cfg.seed,
        ),
    }
    # What the rows depend on besides the steering: a resumed sweep file must match them.
    settings = {"items": n, "samples": s, "max_new_tokens": tokens, "seed": cfg.seed}
    result: dict[str, Any] = {}
    for evaluation in cfg.evaluations:
        rows: list[dict[str, Any]] = []
        for concept in ("mold", "gold"):
            layer = int(l_star[concept])
            vectors = {f"v_{concept}": v[concept], f"u_{concept}": u[concept]}
            table = sweep(
                model,
                evaluators[evaluation],
                vectors,
                layers=[layer],
                alphas=cfg.alphas,
                out_path=folder / f"{evaluation}.jsonl",
                norm_match_to={f"u_{concept}": v[concept]},
                names=[f"u_{concept}"],
                tag=f"{evaluation}-control",
                settings=settings,
                progress=False,
            )
            rows.extend(table)
            table = sweep(
                model,
                evaluators[evaluation],
                {f"v_{concept}": v[concept]},
                layers=[layer],
                alphas=cfg.alphas,
                out_path=folder / f"{evaluation}.jsonl",
                tag=evaluation,
                settings=settings,
                progress=False,
            )
            rows.extend(table)
        result[evaluation] = {
            "slopes": slopes_by(rows, by=("vector", "layer")),
            "means": _means_by_alpha(rows),
        }
    return _finite(result)


def _means_by_alpha(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    groups: dict[str, dict[float, list[float]]] = {}
    for row in rows:
        score = row.get("score")
        if score is None or (isinstance(score, float) and math.isnan(score)):
            continue
        groups.setdefault(str(row["vector"]), {}).setdefault(float(row["alpha"]), []).append(
            float(score)
        )
    return {
        name: {str(a): float(np.mean(vals)) for a, vals in sorted(by_alpha.items())}
        for name, by_alpha in groups.items()
    }


def _evaluate(cfg: PipelineConfig, out: Path, models: _Models) -> dict[str, Any]:
    from welfare_lens.rl import GRPOConfig

    result: dict[str, Any] = {}
    for tag, get in (("untrained", models.naive), ("trained", models.trained)):
        result[tag] = _held_out_returns(
            get(), _maze_cfg(cfg), GRPOConfig().temperature, cfg.eval_mazes
        )
    return _finite(result)


def _held_out_returns(
    model: Any, maze_cfg: Any, temperature: float, n_mazes: int
) -> dict[str, Any]:
    """Held-out maze returns of a policy (the same mazes and seeds for every model)."""
    from welfare_lens.maze import MazeEnv
    from welfare_lens.rl.rollout import rollout
    from welfare_lens.rl.trainer import episode_metrics

    seed = 1_000_003
    envs = [MazeEnv(maze_cfg, seed + i) for i in range(n_mazes)]
    metrics = episode_metrics(rollout(model, envs, temperature=temperature, seed=seed), 1)
    metrics["n_mazes"] = n_mazes
    metrics["return_se"] = float(metrics["reward_std"]) / math.sqrt(max(n_mazes, 1))
    return {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}


def _report(cfg: PipelineConfig, out: Path, models: _Models) -> dict[str, Any]:
    from welfare_lens._pipeline_report import write_pipeline_report

    path = write_pipeline_report(cfg, out)
    return {"report": str(path)}


_STAGE_FUNCS: dict[str, Callable[[PipelineConfig, Path, _Models], dict[str, Any]]] = {
    "train": _train,
    "extract": _extract,
    "analyze": _analyze,
    "steer": _steer,
    "evaluate": _evaluate,
    "report": _report,
}
_OUTPUT_NAMES = {"analyze": "analysis.json", "steer": "steer.json", "evaluate": "evaluate.json"}


def run_stage(
    stage: str,
    cfg: PipelineConfig,
    out: str | Path,
    *,
    force: bool = False,
    models: _Models | None = None,
) -> dict[str, Any]:
    """Run one stage (skipped if ``out/<stage>/done.json`` exists, unless ``force``).

    ``force`` reruns the stage from scratch, its previous folder moved to ``out/<stage>.old``;
    except ``train``, which continues from its latest checkpoint (delete ``out/train`` to
    train anew).

    Returns:
        The stage's summary (also in ``done.json``).
    """
    if stage not in _STAGE_FUNCS:
        raise ConfigError(f"Unknown stage {stage!r}.", hint=f"Stages: {STAGES}.")
    out = Path(out)
    done = out / stage / "done.json"
    if done.exists() and not force:
        summary = dict(_read_json(done))
        before = summary.get("config", {})
        changed = sorted(
            k for k, v in cfg.to_dict().items() if _jsonish(before.get(k)) != _jsonish(v)
        )
        if changed:
            raise ConfigError(
                f"Stage {stage!r} in {out} was run with other settings ({', '.join(changed)}).",
                hint="Use another --out for the new settings, or --force to rerun this stage.",
            )
        print(f"[{stage}] already done ({done}); skipped", flush=True)
        return summary
    if force and stage != "train" and (out / stage).exists():
        # A forced stage recomputes from scratch: its partial results (capture checkpoints,
        # sweep rows) belong to the old run. They are kept once, beside it, not deleted.
        old = out / f"{stage}.old"
        if old.exists():
            shutil.rmtree(old)
        (out / stage).rename(old)
        print(f"[{stage}] --force: the previous outputs moved to {old}", flush=True)
    if models is None:
        models = _Models(cfg, out)
    torch.manual_seed(cfg.seed)
    print(f"[{stage}] running", flush=True)
    start = time.perf_counter()
    with torch.inference_mode(stage not in ("train",)):
        result = _STAGE_FUNCS[stage](cfg, out, models)
    if stage in _OUTPUT_NAMES:
        _write_json(out / stage / _OUTPUT_NAMES[stage], result)
    summary = {"stage": stage, "seconds": time.perf_counter() - start, "config": cfg.to_dict()}
    summary.update({k: v for k, v in result.items() if not isinstance(v, dict)})
    _write_json(done, summary)
    print(f"[{stage}] done in {summary['seconds']:.0f} s", flush=True)
    return summary


def _jsonish(value: Any) -> Any:
    """A value as it reads back from JSON (tuples as lists), for comparing configs."""
    return json.loads(json.dumps(value, default=_json_default))


def run_pipeline(
    cfg: PipelineConfig, out: str | Path, stages: Sequence[str] = STAGES, *, force: bool = False
) -> dict[str, Any]:
    """Run the stages in order (finished ones are skipped); return their summaries."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "config.json", cfg.to_dict())
    models = _Models(cfg, out)
    return {stage: run_stage(stage, cfg, out, force=force, models=models) for stage in stages}
