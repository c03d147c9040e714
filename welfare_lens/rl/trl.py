"""The maze as a TRL ``GRPOTrainer`` workload, for runs that outgrow one GPU (DESIGN; paper A2, A3).

The compact trainer (:class:`welfare_lens.rl.GRPOTrainer`) trains on one device with hooks in
reach. For more, the same workload runs under TRL's ``GRPOTrainer`` (accelerate / DeepSpeed / FSDP
do the distribution), and its checkpoints load back into welfare_lens for extraction:

* :class:`MazeRollout` -- TRL's experimental ``rollout_func`` hook. It plays multi-turn maze
  episodes (paper A2: 15 turns, one direction token per turn, no system prompt) with the compact
  trainer's own :func:`~welfare_lens.rl.rollout.rollout`, so sampling is restricted to the four
  direction tokens N/E/S/W ("action masking", §2.2) at the trainer's temperature, with the KV cache
  carried across turns. It returns ``prompt_ids`` (the first user turn and generation prompt),
  ``completion_ids`` (every later token of the conversation), per-token ``logprobs`` and an
  ``env_mask`` that is 1 only at the sampled action tokens: user turns, chat markup and padding
  carry no loss. The episode return (Mold -10, Gold +20, Path -0.1 per turn, computed by
  :meth:`~welfare_lens.maze.MazeEnv.step`; Q.1) goes to the reward function as ``maze_return``.
* :func:`maze_reward` -- the reward function that passes ``maze_return`` on to TRL.
* :func:`maze_dataset` -- the "prompts": one row per fresh maze (``"maze_seed=<seed>"``); TRL
  repeats each row ``num_generations`` times, which makes a GRPO group (paper A3, note B-2).
* :func:`trl_grpo_config` / :func:`trl_peft_config` -- a ``trl.GRPOConfig`` and a LoRA config
  matching the compact trainer's Dr. GRPO settings (:data:`FIELD_MAP`; the settings without a TRL
  equivalent are listed in :data:`UNMAPPED_FIELDS`).
* :class:`MazeGRPOTrainer` -- ``trl.GRPOTrainer`` with the rollout and reward wired in and, by
  default, the policy log-probs of the loss taken under the same softmax restricted to the four
  action tokens that sampled them (as :func:`~welfare_lens.rl.losses.restricted_logprobs` does in
  the compact trainer), instead of TRL's full-vocabulary log-probs.
* :func:`export_hf_model` / :func:`load_hf_model` -- a welfare_lens model (bundled, tiny, folder,
  GGUF) as a plain Hugging Face model for TRL to train, and :func:`load_trl_checkpoint` -- a TRL
  checkpoint (a full model folder or a PEFT adapter) back as a TransformerBridge.

Why plain HF models: a TransformerBridge wraps the modules of its HF model in place
(``bridge.original_model`` names its weights ``..._original_component...``), so TRL must train an
unwrapped copy; its checkpoints are then ordinary HF / PEFT folders, and the bridge is built after
loading (and merging) them.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import math
import os
import re
import types
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor

try:
    from trl import GRPOConfig as TRLGRPOConfig
    from trl import GRPOTrainer as _TRLGRPOTrainer
except ImportError as _err:  # pragma: no cover - exercised only without the optional extra
    raise ImportError(
        "welfare_lens.rl.trl needs TRL: pip install 'trl>=1.16,<2' (or pip install -e '.[dev]')."
    ) from _err

from welfare_lens.chat import ACTIONS, TemplateChoice, action_token_ids
from welfare_lens.errors import DataError, ModelLoadError, TrainingError
from welfare_lens.maze.config import MazeConfig
from welfare_lens.maze.env import MazeEnv
from welfare_lens.maze.generate import Maze, generate_maze
from welfare_lens.models import CoordinateMode, ModelInfo
from welfare_lens.rl.config import GRPOConfig
from welfare_lens.rl.rollout import (
    Episode,
    RolloutStats,
    _derive_seed,
    _render_ids,
    rollout,
)

__all__ = [
    "FIELD_MAP",
    "MAZE_PROMPT_PREFIX",
    "UNMAPPED_FIELDS",
    "HFPolicy",
    "MazeGRPOTrainer",
    "MazeRollout",
    "TRLGRPOConfig",
    "export_hf_model",
    "load_hf_model",
    "load_trl_checkpoint",
    "maze_dataset",
    "maze_reward",
    "maze_seed_of",
    "restrict_logprobs_to_actions",
    "trl_grpo_config",
    "trl_peft_config",
]

#: Dataset prompts are ``MAZE_PROMPT_PREFIX + str(maze_seed)``. TRL hands ``rollout_func`` only the
#: prompts, so the prompt itself names the maze; the model never sees it (the rollout renders the
#: environment's own user turns).
MAZE_PROMPT_PREFIX = "maze_seed="

#: File :func:`export_hf_model` writes next to the weights, naming the welfare_lens model.
MODEL_SPEC_FILE = "welfare_lens_model.json"

#: Seed stream of the maze seeds; the same as :func:`~welfare_lens.rl.rollout.maze_groups`, so
#: ``maze_dataset(n, cfg, seed)`` row ``g`` is group ``g`` of ``maze_groups(cfg, n, G, seed)``.
_MAZE_STREAM = 0x3A2E
_SAMPLE_STREAM = 0x7A1

#: Compact-trainer field -> the ``trl.GRPOConfig`` field(s) :func:`trl_grpo_config` sets from it.
FIELD_MAP: dict[str, str] = {
    "loss": "loss_type ('dr_grpo', 'grpo', 'dapo')",
    "lr": "learning_rate",
    "mazes_per_step": "generation_batch_size = mazes_per_step * episodes_per_maze",
    "episodes_per_maze": "num_generations",
    "temperature": "temperature (sampling, and the log-probs of the loss)",
    "kl_beta": "beta (k3 KL; LoRA: adapter disabled as reference)",
    "schedule_steps": "lr_scheduler_type='cosine' + lr_scheduler_kwargs num_cycles (exact)",
    "schedule_fraction": "lr_scheduler_kwargs num_cycles",
    "max_grad_norm": "max_grad_norm (None -> 0.0, no clipping)",
    "micro_batch_size": "per_device_train_batch_size (+ gradient_accumulation_steps)",
    "updates_per_batch": "num_iterations",
    "scale_std": "scale_rewards ('group' if scaled else 'none')",
    "eps_low": "epsilon",
    "eps_high": "epsilon_high",
    "dual_clip_c": "delta (TRL's two-sided clip equals the dual clip when c >= 1 + eps_high)",
    "Z": "max_completion_length (the dr_grpo normaliser; the maze rollout never truncates)",
    "weight_decay": "weight_decay",
    "adam_betas": "adam_beta1, adam_beta2 (optim='adamw_torch')",
    "seed": "seed (also seeds the maze rollouts)",
    "out_dir": "output_dir",
    "checkpoint_every": "save_strategy / save_steps",
    "progress": "disable_tqdm",
    "finetune": "trl_peft_config(): LoraConfig or None (full fine-tuning)",
    "lora_r": "trl_peft_config(): LoraConfig.r",
    "lora_alpha": "trl_peft_config(): LoraConfig.lora_alpha",
    "lora_dropout": "trl_peft_config(): LoraConfig.lora_dropout",
    "rollout_batch_size": "MazeRollout(batch_size=...)",
    "shared_episode_seed": "MazeRollout(shared_episode_seed=...)",
    "actions": "MazeRollout(actions=...)",
    "template": "MazeRollout(template=...)",
}

#: Compact-trainer settings with no TRL equivalent, and what the TRL run does instead.
UNMAPPED_FIELDS: dict[str, str] = {
    "entropy_beta0": (
        "The equalized entropy bonus (J.3: per-tile-class entropies of the action logits, "
        "cosine-decayed) needs the tile classes of each turn, which TRL's loss never sees. "
        "TRL's entropy_coef is a plain token-entropy bonus (with MazeGRPOTrainer's restricted "
        "log-probs: the entropy of the N/E/S/W softmax); it is set to 0."
    ),
    "loss='reinforce'": (
        "Token-level REINFORCE with per-turn returns-to-go and a per-position baseline (Q.1) "
        "needs per-token advantages; TRL broadcasts one advantage per completion. Use the "
        "compact trainer."
    ),
    "loss='sft'": "The SFT control: use trl.SFTTrainer on OptimalPolicy trajectories instead.",
    "share_update_prefix": (
        "A compute saving of the compact trainer's update (a group's shared first-prompt KV "
        "cache); TRL encodes every completion's prompt itself. The gradient is the same."
    ),
    "micro_batch_tokens": (
        "A token cap on the compact trainer's micro-batches; TRL's per_device_train_batch_size "
        "(from micro_batch_size) is a row count."
    ),
    "sft_batch_size": "SFT control only (see loss='sft').",
    "sft_horizon": "SFT control only (see loss='sft').",
    "log_ratio_clamp": (
        "The paper clamps log-ratios to +-20; TRL does not. Inactive on-policy "
        "(num_iterations=1: the ratio is exactly 1)."
    ),
}


# --------------------------------------------------------------------------------------------
# Config mapping
# --------------------------------------------------------------------------------------------


def _world_size(num_processes: int | None) -> int:
    if num_processes is not None:
        if (
            isinstance(num_processes, bool)
            or not isinstance(num_processes, int)
            or num_processes < 1
        ):
            raise TrainingError(
                f"num_processes must be a positive integer, got {num_processes!r}.",
                hint="Pass the launch's process count (accelerate launch --num_processes).",
            )
        return num_processes
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def _cosine_num_cycles(schedule_steps: int, fraction: float, max_steps: int) -> float:
    """``num_cycles`` that makes transformers' cosine schedule the paper's (J.3).

    transformers' ``cosine`` multiplier at optimiser step ``k`` (no warmup) is
    ``½(1 + cos(2π · num_cycles · k / max_steps))``; the paper's is ``½(1 + cos(π p))`` with
    ``p = k / (S - 1) · f``. They agree for every ``k`` when ``num_cycles = f · max_steps /
    (2 (S - 1))``, provided ``p`` never passes 1 (there the paper's multiplier stays at 0 while the
    cosine would rise again).
    """
    if max_steps * fraction > schedule_steps - 1 + 1e-9:
        raise TrainingError(
            f"max_steps={max_steps} runs past the end of the cosine schedule "
            f"((S - 1) / f = {(schedule_steps - 1) / fraction:g} steps), where the paper's "
            "learning rate is 0 for good.",
            hint="Lower max_steps, or raise schedule_steps in the welfare_lens GRPOConfig.",
        )
    return fraction * max_steps / (2.0 * (schedule_steps - 1))


def trl_grpo_config(
    config: GRPOConfig | None = None,
    *,
    num_processes: int | None = None,
    **overrides: Any,
) -> TRLGRPOConfig:
    """A ``trl.GRPOConfig`` with the compact trainer's Dr. GRPO settings (paper A3, J.3, Q.1).

    Every field of ``config`` maps as :data:`FIELD_MAP` says; :data:`UNMAPPED_FIELDS` lists what
    TRL cannot express. The defaults (``GRPOConfig()``) give ``loss_type="dr_grpo"``,
    ``scale_rewards="none"``, ``temperature=0.7``, ``beta=0``, ``epsilon=epsilon_high=0.2``,
    ``delta=3.0`` (dual clip), ``max_completion_length=2048`` (Z), ``learning_rate=3e-6`` with the
    paper's cosine schedule, 8 mazes x 64 episodes per optimiser step, one update per batch
    (``num_iterations=1``), ``max_grad_norm=1``, fp32 (``bf16=False``), no gradient checkpointing,
    no dropout, logging every step and no reporting integrations.

    The batch of one optimiser step (``mazes_per_step * episodes_per_maze`` episodes) is the
    generation batch; it is split over ``num_processes`` devices and ``gradient_accumulation_steps``
    micro-batches of ``per_device_train_batch_size`` (``config.micro_batch_size``, or the whole
    per-device share), so ``steps_per_generation == gradient_accumulation_steps``: each batch is
    generated once and used for exactly one optimiser step, on-policy, as in the compact trainer.

    Args:
        config: The compact trainer's config (``GRPOConfig()``, the paper's primary run, if
            ``None``). Only ``loss`` ``"dr_grpo"``, ``"grpo"`` and ``"dapo"`` map to TRL.
        num_processes: Processes of the launch; default ``$WORLD_SIZE`` (set by ``accelerate
            launch`` / ``torchrun``), else 1.
        **overrides: ``trl.GRPOConfig`` fields, applied last (e.g. ``max_steps=100``,
            ``output_dir=...``, ``bf16=True``, ``report_to="wandb"``). ``max_steps`` defaults to the
            length of the cosine schedule, ``(S - 1) / f`` (the LR is 0 afterwards).

    Returns:
        The TRL config.

    Raises:
        TrainingError: for a loss TRL cannot run, a batch that does not split evenly over the
            processes, a dual clip TRL cannot express, ``max_steps`` past the schedule, or an
            unknown override (naming the closest TRL field).
    """
    cfg = config if config is not None else GRPOConfig()
    if cfg.loss not in ("dr_grpo", "grpo", "dapo"):
        raise TrainingError(
            f"loss={cfg.loss!r} has no TRL GRPOTrainer equivalent.",
            hint="TRL runs 'dr_grpo' (paper), 'grpo' and 'dapo'; use the compact trainer for "
            "'reinforce' and 'sft' (see welfare_lens.rl.trl.UNMAPPED_FIELDS).",
        )
    valid = {f.name for f in fields(TRLGRPOConfig)}
    for key in overrides:
        if key not in valid:
            close = difflib.get_close_matches(key, sorted(valid), n=1)
            raise TrainingError(
                f"Unknown trl.GRPOConfig field {key!r}.",
                hint=f"Did you mean {close[0]!r}?" if close else "See trl.GRPOConfig's fields.",
            )
    world = _world_size(num_processes)
    batch = cfg.batch_episodes
    per_device = overrides.pop("per_device_train_batch_size", None)
    if per_device is None:
        per_device = cfg.micro_batch_size or max(1, batch // world)
    user_batching = any(
        k in overrides
        for k in ("gradient_accumulation_steps", "generation_batch_size", "steps_per_generation")
    )
    if not user_batching and batch % (per_device * world) != 0:
        raise TrainingError(
            f"A step's {batch} episodes ({cfg.mazes_per_step} mazes x {cfg.episodes_per_maze}) do "
            f"not split into micro-batches of {per_device} on {world} process(es).",
            hint="Choose micro_batch_size (per_device_train_batch_size) and the process count so "
            "that mazes_per_step * episodes_per_maze is a multiple of their product.",
        )
    eps_high = cfg.eps_low if cfg.eps_high is None else cfg.eps_high
    if cfg.dual_clip_c is not None and cfg.dual_clip_c < 1.0 + eps_high:
        raise TrainingError(
            f"dual_clip_c={cfg.dual_clip_c} is below 1 + eps_high = {1.0 + eps_high}; TRL's delta "
            "then differs from the dual clip.",
            hint="Use dual_clip_c >= 1 + eps_high (paper: 3.0) or None.",
        )
    if float(cfg.Z) != int(cfg.Z):
        raise TrainingError(
            f"Z={cfg.Z} must be a whole number to become TRL's max_completion_length.",
            hint="The paper uses Z = 2048.",
        )
    max_steps = overrides.get("max_steps")
    if max_steps is None:
        max_steps = max(1, math.floor((cfg.schedule_steps - 1) / cfg.schedule_fraction))
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise TrainingError(
            f"max_steps must be a positive integer, got {max_steps!r}.",
            hint="The paper's schedule needs a known length; set max_steps (e.g. 100).",
        )
    scale = cfg.loss == "grpo" if cfg.scale_std is None else cfg.scale_std
    kwargs: dict[str, Any] = dict(
        output_dir=cfg.out_dir or "runs/trl-maze",
        loss_type=cfg.loss,
        scale_rewards="group" if scale else "none",
        learning_rate=cfg.lr,
        lr_scheduler_type="cosine",
        lr_scheduler_kwargs={
            "num_cycles": _cosine_num_cycles(cfg.schedule_steps, cfg.schedule_fraction, max_steps)
        },
        warmup_steps=0,
        max_steps=max_steps,
        num_generations=cfg.episodes_per_maze,
        generation_batch_size=batch,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=max(1, batch // (per_device * world)),
        temperature=cfg.temperature,
        beta=cfg.kl_beta,
        num_iterations=cfg.updates_per_batch,
        epsilon=cfg.eps_low,
        epsilon_high=eps_high,
        delta=cfg.dual_clip_c,
        max_completion_length=int(cfg.Z),
        max_grad_norm=0.0 if cfg.max_grad_norm is None else cfg.max_grad_norm,
        weight_decay=cfg.weight_decay,
        adam_beta1=cfg.adam_betas[0],
        adam_beta2=cfg.adam_betas[1],
        optim="adamw_torch",
        seed=cfg.seed,
        entropy_coef=0.0,
        importance_sampling_level="token",
        mask_truncated_completions=False,
        top_entropy_quantile=1.0,
        disable_dropout=True,
        use_vllm=False,
        bf16=False,
        logging_steps=1,
        report_to="none",
        disable_tqdm=not cfg.progress,
        save_strategy="steps" if cfg.checkpoint_every > 0 else "no",
        save_steps=cfg.checkpoint_every if cfg.checkpoint_every > 0 else 500,
        remove_unused_columns=False,
        log_completions=False,
    )
    # transformers >= 5.23 renamed gradient_checkpointing (TRL turns it on by default).
    ckpt_field = "activation_checkpointing" if "activation_checkpointing" in valid else None
    kwargs[ckpt_field or "gradient_checkpointing"] = False
    if user_batching:
        kwargs.pop("generation_batch_size")
        kwargs.pop("gradient_accumulation_steps")
    if "gradient_checkpointing" in overrides and ckpt_field is not None:
        kwargs.pop(ckpt_field)
    kwargs.update(overrides)
    args = TRLGRPOConfig(**kwargs)
    if not user_batching and args.steps_per_generation != args.gradient_accumulation_steps:
        raise TrainingError(
            f"The launch has {args.world_size} process(es), not {world}: each batch would be used "
            f"for {args.steps_per_generation} micro-steps but {args.gradient_accumulation_steps} "
            "accumulate per optimiser step (off-policy).",
            hint="Call trl_grpo_config inside the launched script, or pass num_processes.",
        )
    return args


def trl_peft_config(config: GRPOConfig | None = None) -> Any:
    """The LoRA config of the compact trainer for TRL's ``peft_config`` (paper A3: r32/α64).

    LoRA goes on every linear layer except the unembedding (PEFT's ``"all-linear"`` on a plain HF
    model: the paper's "all linear modules", the same set as
    :func:`~welfare_lens.rl.lora_target_modules` finds inside a bridge).

    Args:
        config: The compact trainer's config (``GRPOConfig()`` if ``None``).

    Returns:
        A ``peft.LoraConfig``, or ``None`` for full fine-tuning (``finetune="full"``).
    """
    cfg = config if config is not None else GRPOConfig()
    if cfg.finetune == "full":
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules="all-linear",
        bias="none",
        task_type="CAUSAL_LM",
    )


# --------------------------------------------------------------------------------------------
# Prompts dataset and reward
# --------------------------------------------------------------------------------------------


def _maze_seed(seed: int, index: int) -> int:
    return _derive_seed(seed, index, _MAZE_STREAM) % (2**31)


def maze_dataset(n_mazes: int, cfg: MazeConfig | None = None, seed: int = 0) -> Any:
    """The prompts dataset: one fresh maze per row (paper A2: "a fresh maze for every rollout").

    TRL's sampler repeats each row ``num_generations`` times, and those completions form one GRPO
    group (one maze, paper A3). Row ``g`` holds the maze of group ``g`` of
    :func:`~welfare_lens.rl.rollout.maze_groups` with the same ``seed``. For fresh mazes at every
    step, give at least ``max_steps * mazes_per_step`` rows.

    Args:
        n_mazes: Rows (mazes).
        cfg: Maze configuration (checked by generating every maze); paper defaults if ``None``.
        seed: Seed of the maze seeds.

    Returns:
        A ``datasets.Dataset`` with ``prompt`` (``"maze_seed=<seed>"``, see
        :data:`MAZE_PROMPT_PREFIX`), ``maze_seed`` and ``first_message`` (the maze's first user
        turn under its own episode seed, for people reading the data).

    Raises:
        DataError: if ``n_mazes`` is not a positive integer.
    """
    if isinstance(n_mazes, bool) or not isinstance(n_mazes, int) or n_mazes < 1:
        raise DataError(
            f"n_mazes must be a positive integer, got {n_mazes!r}.",
            hint="E.g. max_steps * mazes_per_step (8 per step in the paper).",
        )
    from datasets import Dataset

    maze_cfg = cfg if cfg is not None else MazeConfig()
    seeds = [_maze_seed(seed, g) for g in range(n_mazes)]
    first = [MazeEnv(maze_cfg, generate_maze(maze_cfg, s)).messages[0]["content"] for s in seeds]
    return Dataset.from_dict(
        {
            "prompt": [f"{MAZE_PROMPT_PREFIX}{s}" for s in seeds],
            "maze_seed": seeds,
            "first_message": first,
        }
    )


def maze_seed_of(prompt: Any) -> int:
    """The maze seed a dataset prompt names (``"maze_seed=<seed>"``).

    Raises:
        DataError: if the prompt is not of that form.
    """
    text = prompt if isinstance(prompt, str) else None
    match = re.fullmatch(re.escape(MAZE_PROMPT_PREFIX) + r"(\d+)", text.strip()) if text else None
    if match is None:
        raise DataError(
            f"Prompt {str(prompt)[:80]!r} does not name a maze.",
            hint="Build the train dataset with welfare_lens.rl.trl.maze_dataset().",
        )
    return int(match.group(1))


def maze_reward(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    maze_return: Sequence[float] | None = None,
    **kwargs: Any,
) -> list[float]:
    """TRL reward function: each completion's maze episode return (paper A2, Q.1).

    The return ``sum_t r_t`` with ``r_t = -0.1 + 20 Δgold_t - 10 Δmold_t`` is computed by the
    environment during the rollout (:meth:`~welfare_lens.maze.MazeEnv.step`) and reaches TRL as
    the ``maze_return`` field of :class:`MazeRollout`'s output.

    Args:
        prompts: The prompts (unused).
        completions: The decoded completions (unused).
        maze_return: Episode returns, one per completion.
        **kwargs: Other dataset columns and rollout fields. With TRL's ``log_metric``, the mean
            Gold tiles consumed and Mold tiles entered per episode are logged as ``maze/gold``
            and ``maze/mold``.

    Returns:
        The returns as floats.

    Raises:
        TrainingError: if ``maze_return`` is missing (the trainer does not use
            :class:`MazeRollout`) or has the wrong length.
    """
    if maze_return is None:
        raise TrainingError(
            "maze_reward got no maze_return: the completions were not produced by MazeRollout.",
            hint="Pass rollout_func=MazeRollout(...) to GRPOTrainer, or use MazeGRPOTrainer.",
        )
    if len(maze_return) != len(completions):
        raise TrainingError(
            f"maze_reward got {len(maze_return)} returns for {len(completions)} completions.",
            hint="MazeRollout returns one episode per prompt row; do not filter its output.",
        )
    log_metric = kwargs.get("log_metric")
    if callable(log_metric):  # TRL averages these per logging step, next to "reward"
        for name in ("maze_gold", "maze_mold"):
            values = kwargs.get(name)
            if values:
                log_metric(f"maze/{name.removeprefix('maze_')}", sum(values) / len(values))
    return [float(r) for r in maze_return]


# --------------------------------------------------------------------------------------------
# Rollout
# --------------------------------------------------------------------------------------------


def _unwrap_peft(model: Any) -> Any:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


class HFPolicy:
    """A Hugging Face causal LM seen through the calling convention of :func:`rollout`.

    :func:`~welfare_lens.rl.rollout.rollout` decodes with a TransformerBridge: ``model(ids,
    attention_mask=..., past_key_values=..., return_type="logits_and_cache")``, where the mask
    spans the cached prefix with masked-out padding *gaps* between turns and the positions are
    derived from the mask. This adapter gives a plain (or PEFT-wrapped) HF model the same
    interface, deriving ``position_ids`` from the mask exactly as the bridge does.

    Args:
        model: An HF causal LM, possibly a ``peft.PeftModel``.
        tokenizer: Its tokenizer (with the chat template the maze is rendered with).
    """

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.original_model = _unwrap_peft(model)

    @property
    def training(self) -> bool:
        """Whether the model is in training mode."""
        return bool(getattr(self.model, "training", False))

    def eval(self) -> HFPolicy:
        """Put the model in eval mode."""
        self.model.eval()
        return self

    def train(self, mode: bool = True) -> HFPolicy:
        """Put the model in training mode (or eval with ``mode=False``)."""
        self.model.train(mode)
        return self

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        """The model's parameters."""
        params: Iterator[torch.nn.Parameter] = self.model.parameters()
        return params

    def __call__(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        past_key_values: Any = None,
        return_type: str = "logits",
        logits_to_keep: Tensor | int | None = None,
    ) -> Any:
        """Run the model on new tokens (after an optional KV cache).

        Args:
            input_ids: New tokens ``[batch, new]``.
            attention_mask: Mask over the cached prefix and the new tokens ``[batch, past+new]``.
            past_key_values: HF cache of earlier calls.
            return_type: ``"logits"`` or ``"logits_and_cache"``.
            logits_to_keep: Positions (tensor) or a count of last positions whose logits are wanted.

        Returns:
            Logits ``[batch, kept, vocab]``, and the cache for ``"logits_and_cache"``.
        """
        kwargs: dict[str, Any] = {}
        if attention_mask is not None:
            mask = attention_mask.long()
            positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
            kwargs["position_ids"] = positions[:, mask.shape[1] - input_ids.shape[1] :]
            kwargs["attention_mask"] = attention_mask
        if logits_to_keep is not None:
            kwargs["logits_to_keep"] = logits_to_keep
        want_cache = return_type == "logits_and_cache"
        out = self.model(
            input_ids=input_ids,
            past_key_values=past_key_values,
            use_cache=want_cache or past_key_values is not None,
            **kwargs,
        )
        return (out.logits, out.past_key_values) if want_cache else out.logits


def _tokenizer_of(trainer: Any) -> Any:
    processing = trainer.processing_class
    return getattr(processing, "tokenizer", processing)


@contextlib.contextmanager
def _unwrapped_model(trainer: Any) -> Iterator[Any]:
    """The trainer's model, unwrapped for decoding as TRL's own generation does it.

    DDP / DeepSpeed are unwrapped (ZeRO-3 weights gathered if ``ds3_gather_for_generation``),
    gradient checkpointing is off, gradients are off and FSDP gathers the full parameters.
    """
    from trl.models import unwrap_model_for_generation

    with contextlib.ExitStack() as stack:
        model = stack.enter_context(
            unwrap_model_for_generation(
                trainer.model_wrapped,
                trainer.accelerator,
                gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
                gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs,
            )
        )
        stack.enter_context(torch.no_grad())
        dist = getattr(trainer, "_dist", None)
        if dist is not None and hasattr(dist, "summon_full_params"):
            stack.enter_context(dist.summon_full_params(trainer.model_wrapped, recurse=False))
        yield model


class MazeRollout:
    """TRL ``rollout_func`` that plays multi-turn maze episodes (paper A2, A3, §2.2).

    Called by ``trl.GRPOTrainer`` as ``rollout_func(prompts, trainer)`` with this process's share
    of the generation batch (each dataset row repeated ``num_generations`` times, consecutively).
    Each prompt names a maze (:func:`maze_dataset`); every copy plays its own episode of that maze
    with :func:`~welfare_lens.rl.rollout.rollout` on the trainer's current policy: one direction
    token per turn, sampled from the softmax restricted to N/E/S/W at ``trainer.temperature``,
    with the KV cache carried across turns.

    Seeds: the sampling of a call derives from ``(args.seed, global_step, process, call of this
    step, train/eval)``; an episode's wind and clause orders from that and its row (or, with
    ``shared_episode_seed``, from the maze seed alone, so a group differs only by the model's
    samples). The seeds depend only on the step, not on the run's history, so a run resumed from a
    checkpoint draws the same seeds at the same step.

    Output per episode (TRL's token lists): ``prompt_ids`` is the first user turn with the
    generation prompt; ``completion_ids`` the rest of the conversation (every action, the later
    user turns and their markup, no end-of-turn after the final move, paper L.1), then the
    tokenizer's EOS if ``append_eos`` (so TRL does not count the episode as truncated);
    ``env_mask`` is 1 exactly at the sampled action tokens (the only tokens with loss);
    ``logprobs`` holds the restricted log-probability of each action (0 elsewhere). Extra fields,
    passed to the reward functions: ``maze_return`` (the episode return), ``maze_gold``,
    ``maze_mold`` (tiles consumed / entered) and ``maze_episode_seed``.

    Args:
        maze_config: Maze configuration (paper defaults if ``None``); must match the dataset's.
        actions: The action strings sampling is restricted to (each one token).
        template: Chat template choice, as in :func:`~welfare_lens.chat.render_chat`.
        batch_size: Episodes decoded together on one KV cache (compact ``rollout_batch_size``).
        shared_episode_seed: Give all episodes of a maze the same wind and clause orders.
        share_prefill: Encode a group's shared first-prompt prefix once (exact).
        append_eos: End each completion with the tokenizer's EOS token (mask 0).

    Attributes:
        last_episodes: The :class:`~welfare_lens.rl.rollout.Episode` objects of the last call.
        last_stats: Its :class:`~welfare_lens.rl.rollout.RolloutStats`.
    """

    def __init__(
        self,
        maze_config: MazeConfig | None = None,
        *,
        actions: Sequence[str] = ACTIONS,
        template: TemplateChoice = "auto",
        batch_size: int | None = 64,
        shared_episode_seed: bool = False,
        share_prefill: bool = True,
        append_eos: bool = True,
    ) -> None:
        self.maze_config = maze_config if maze_config is not None else MazeConfig()
        if not isinstance(self.maze_config, MazeConfig):
            raise TrainingError(
                f"maze_config must be a MazeConfig, got {type(self.maze_config).__name__}.",
                hint="Pass welfare_lens.maze.MazeConfig(...).",
            )
        self.actions = tuple(actions)
        self.template: TemplateChoice = template
        self.batch_size = batch_size
        self.shared_episode_seed = shared_episode_seed
        self.share_prefill = share_prefill
        self.append_eos = append_eos
        self.last_episodes: list[Episode] = []
        self.last_stats = RolloutStats()
        self._mazes: dict[int, Maze] = {}
        self._step_calls: tuple[int, int] = (-1, 0)

    def _maze(self, seed: int) -> Maze:
        maze = self._mazes.get(seed)
        if maze is None:
            if len(self._mazes) > 4096:
                self._mazes.clear()
            maze = generate_maze(self.maze_config, seed)
            self._mazes[seed] = maze
        return maze

    def environments(
        self, prompts: Sequence[Any], batch_seed: int
    ) -> tuple[list[MazeEnv], list[int]]:
        """Fresh environments for ``prompts`` and their group index (consecutive equal mazes).

        Args:
            prompts: Dataset prompts (``"maze_seed=<seed>"``), one per episode.
            batch_seed: Seed of this call; per-episode seeds derive from it and the row.

        Returns:
            ``(envs, groups)``.
        """
        envs: list[MazeEnv] = []
        groups: list[int] = []
        previous: int | None = None
        for row, prompt in enumerate(prompts):
            seed = maze_seed_of(prompt)
            if seed != previous:
                groups.append(len(set(groups)) if groups else 0)
            else:
                groups.append(groups[-1])
            previous = seed
            ep_seed = seed if self.shared_episode_seed else _derive_seed(batch_seed, row) % (2**31)
            envs.append(MazeEnv(self.maze_config, self._maze(seed), episode_seed=ep_seed))
        return envs, groups

    def _batch_seed(self, trainer: Any) -> int:
        step = int(trainer.state.global_step)
        last, calls = self._step_calls
        calls = calls + 1 if last == step else 0
        self._step_calls = (step, calls)
        process = int(getattr(trainer.accelerator, "process_index", 0))
        training = int(bool(getattr(trainer.model, "training", True)))
        return _derive_seed(int(trainer.args.seed), step, process, calls, training, _SAMPLE_STREAM)

    def __call__(self, prompts: Sequence[Any], trainer: Any) -> dict[str, Any]:
        """Play one episode per prompt with the trainer's policy; TRL's ``rollout_func``.

        Args:
            prompts: This process's prompts (rows of :func:`maze_dataset`, repeated per group).
            trainer: The ``trl.GRPOTrainer`` calling.

        Returns:
            ``prompt_ids``, ``completion_ids``, ``logprobs``, ``env_mask`` (lists, one per
            prompt) and the extra fields ``maze_return``, ``maze_gold``, ``maze_mold``,
            ``maze_episode_seed``.
        """
        batch_seed = self._batch_seed(trainer)
        envs, groups = self.environments(prompts, batch_seed)
        tokenizer = _tokenizer_of(trainer)
        stats = RolloutStats()
        with _unwrapped_model(trainer) as model:
            episodes = rollout(
                HFPolicy(model, tokenizer),
                envs,
                temperature=float(trainer.temperature),
                seed=batch_seed,
                actions=self.actions,
                batch_size=self.batch_size,
                template=self.template,
                groups=groups,
                stats=stats,
                share_prefill=self.share_prefill,
            )
        self.last_episodes = episodes
        self.last_stats = stats
        return self.to_trl(episodes, tokenizer)

    def to_trl(self, episodes: Sequence[Episode], tokenizer: Any) -> dict[str, Any]:
        """Split episodes into TRL's prompt / completion token lists with the action mask.

        Args:
            episodes: Played episodes.
            tokenizer: The tokenizer they were rendered with.

        Returns:
            The ``rollout_func`` output (see :meth:`__call__`).

        Raises:
            TrainingError: if an episode does not start with its rendered first prompt.
        """
        eos = getattr(tokenizer, "eos_token_id", None) if self.append_eos else None
        out: dict[str, list[Any]] = {
            key: []
            for key in (
                "prompt_ids",
                "completion_ids",
                "logprobs",
                "env_mask",
                "maze_return",
                "maze_gold",
                "maze_mold",
                "maze_episode_seed",
            )
        }
        for ep in episodes:
            ids = ep.input_ids.tolist()
            prompt = _render_ids(tokenizer, ep.messages[:1], self.template, True)
            n = len(prompt)
            if ids[:n] != prompt or int(ep.action_positions.min()) < n:
                raise TrainingError(
                    "An episode does not start with its first prompt rendered on its own.",
                    hint="The chat template must render earlier turns identically whatever "
                    "follows; try template='plain'.",
                )
            completion = ids[n:]
            mask = [int(m) for m in ep.action_mask.tolist()[n:]]
            logprobs = [0.0] * len(completion)
            for pos, lp in zip(ep.action_positions.tolist(), ep.logprobs.tolist(), strict=True):
                logprobs[pos - n] = float(lp)
            if isinstance(eos, int):
                completion.append(eos)
                mask.append(0)
                logprobs.append(0.0)
            out["prompt_ids"].append(prompt)
            out["completion_ids"].append(completion)
            out["logprobs"].append(logprobs)
            out["env_mask"].append(mask)
            out["maze_return"].append(ep.total_reward)
            out["maze_gold"].append(ep.n_gold)
            out["maze_mold"].append(ep.n_mold)
            out["maze_episode_seed"].append(ep.episode_seed)
        return out


# --------------------------------------------------------------------------------------------
# Restricted log-probs in TRL's loss
# --------------------------------------------------------------------------------------------


def _logit_scale(text_config: Any) -> float:
    """The multiplier a model applies to its logits (as TRL's fused head reads it)."""
    scale = getattr(text_config, "logit_scale", None)
    if scale is None:
        scale = getattr(text_config, "output_multiplier", None)
    if scale is None:
        scale = getattr(text_config, "lm_head_multiplier", None)
    if scale is None and getattr(text_config, "logits_scaling", None) is not None:
        scaling = text_config.logits_scaling
        scale = scaling if getattr(text_config, "model_type", "") == "hyperclovax" else 1 / scaling
    return 1.0 if scale is None else float(scale)


def _patch_restricted_head(model: Any, allowed: Tensor, temperature: float) -> None:
    """Make ``model(..., labels=..., fused_lm_head=True)`` score labels under the K-way softmax."""
    previous = model.forward
    text_config = model.config.get_text_config()
    softcap = getattr(text_config, "final_logit_softcapping", None)
    scale = _logit_scale(text_config)

    from trl.trainer.utils import FusedCausalLMOutput

    @functools.wraps(type(model).forward)
    def _forward(
        self: Any,
        *args: Any,
        fused_lm_head: bool = False,
        labels: Tensor | None = None,
        shift_labels: Tensor | None = None,
        num_items_in_batch: Any = None,
        **kwargs: Any,
    ) -> Any:
        if not fused_lm_head:
            return previous(
                *args,
                labels=labels,
                shift_labels=shift_labels,
                num_items_in_batch=num_items_in_batch,
                **kwargs,
            )
        if kwargs.get("output_router_logits") or getattr(
            text_config, "output_router_logits", False
        ):
            raise TrainingError(
                "Restricted log-probs do not compute the MoE load-balancing loss.",
                hint="Use MazeGRPOTrainer(..., restrict_logprobs=False) for MoE models.",
            )
        if labels is None and shift_labels is None:
            raise TrainingError("fused_lm_head=True needs labels.", hint="Pass labels=...")
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        if shift_labels is None:
            assert labels is not None
            hidden, targets = hidden[:, :-1], labels[:, 1:]
        else:
            targets = shift_labels
        head = self.get_output_embeddings()
        targets = targets.to(hidden.device)
        ids = allowed.to(hidden.device)
        match = targets.unsqueeze(-1) == ids  # [batch, pos, K]
        picked = match.any(-1)
        z = head(hidden[picked].to(head.weight.device)).float()  # only the action positions
        if scale != 1.0:
            z = z * scale
        if softcap:
            z = softcap * torch.tanh(z / softcap)
        logp = torch.log_softmax(z[:, ids.to(z.device)] / temperature, dim=-1)
        slot = match[picked].float().argmax(-1).to(z.device)
        chosen = logp.gather(-1, slot[:, None]).squeeze(-1)
        entropy = -(logp.exp() * logp).sum(-1)
        sel = picked.to(z.device)
        zeros = torch.zeros(picked.shape, dtype=torch.float32, device=z.device)
        log_probs = zeros.masked_scatter(sel, chosen)
        entropies = zeros.masked_scatter(sel, entropy)
        count = num_items_in_batch if num_items_in_batch is not None else picked.sum().clamp(min=1)
        return FusedCausalLMOutput(
            loss=-log_probs.sum() / count,
            log_probs=log_probs,
            entropy=entropies,
            label_mask=(targets != -100).to(z.device),
        )

    model.forward = types.MethodType(_forward, model)


def restrict_logprobs_to_actions(
    trainer: Any, actions: Sequence[str] = ACTIONS, template: TemplateChoice = "auto"
) -> Tensor:
    """Score TRL's policy (and reference) log-probs under the softmax over the action tokens.

    The maze samples each move from the softmax restricted to the ``K`` direction tokens (§2.2),
    so the policy whose ratio and gradient matter is that ``K``-way distribution (the compact
    trainer's :func:`~welfare_lens.rl.losses.restricted_logprobs`). TRL scores completions with a
    fused LM head (``model(..., labels=..., fused_lm_head=True)``, full vocabulary). This replaces
    that head on the trainer's model (and reference model): at every position whose label is an
    action token, the log-prob and entropy are those of the ``K``-way softmax of the
    temperature-scaled logits (fp32); elsewhere (user turns, markup, masked by ``env_mask``) both
    are 0. Only the action positions go through the unembedding. Generation is unchanged.

    Args:
        trainer: A ``trl.GRPOTrainer`` (after construction, before ``train()``).
        actions: The action strings (each one token after the generation prompt).
        template: Chat template choice used to find the action tokens.

    Returns:
        The allowed token ids, in ``actions`` order.

    Raises:
        TokenizationError: if an action is not a single token.
    """
    from accelerate.utils import is_peft_model

    tokenizer = _tokenizer_of(trainer)
    ids_of = action_token_ids(tokenizer, list(actions), template=template)
    allowed = torch.tensor([ids_of[a] for a in actions], dtype=torch.long)
    temperature = float(trainer.temperature)
    targets = [trainer.model]
    if getattr(trainer, "ref_model", None) is not None:
        targets.append(trainer.ref_model)
    for model in targets:
        base = model.get_base_model() if is_peft_model(model) else model
        _patch_restricted_head(base, allowed, temperature)
    return allowed


class MazeGRPOTrainer(_TRLGRPOTrainer):  # type: ignore[misc]
    """``trl.GRPOTrainer`` on the maze: rollout, reward and restricted log-probs wired in.

    Equivalent to ``trl.GRPOTrainer(model, reward_funcs=[maze_reward], rollout_func=rollout,
    ...)`` followed by :func:`restrict_logprobs_to_actions` (unless ``restrict_logprobs=False``).
    Use :func:`trl_grpo_config` for ``args``, :func:`maze_dataset` for ``train_dataset`` and
    :func:`trl_peft_config` for ``peft_config``.

    Args:
        model: An HF causal LM, a model folder (see :func:`export_hf_model`) or a hub id.
        args: TRL config (``trl_grpo_config()`` if ``None``).
        train_dataset: Prompts from :func:`maze_dataset`.
        processing_class: The tokenizer (loaded from ``model`` by TRL if ``None``).
        rollout: The rollout (``MazeRollout(maze_config)`` if ``None``).
        maze_config: Maze configuration of the default rollout.
        reward_funcs: Reward functions (``[maze_reward]`` if ``None``).
        restrict_logprobs: Score the loss under the N/E/S/W softmax (compact trainer, default) or
            TRL's full-vocabulary log-probs (``False``).
        **kwargs: Passed to ``trl.GRPOTrainer`` (``peft_config``, ``callbacks``, ...).

    Raises:
        TrainingError: with ``use_vllm=True`` (the maze is decoded by the training model), or if
            ``rollout_func`` is passed (use ``rollout``).
    """

    def __init__(
        self,
        model: Any,
        args: TRLGRPOConfig | None = None,
        train_dataset: Any = None,
        processing_class: Any = None,
        *,
        rollout: MazeRollout | None = None,
        maze_config: MazeConfig | None = None,
        reward_funcs: Any = None,
        restrict_logprobs: bool = True,
        **kwargs: Any,
    ) -> None:
        if "rollout_func" in kwargs:
            raise TrainingError(
                "MazeGRPOTrainer brings its own rollout_func.",
                hint="Pass rollout=MazeRollout(...) instead.",
            )
        args = args if args is not None else trl_grpo_config()
        if getattr(args, "use_vllm", False):
            raise TrainingError(
                "use_vllm=True: the maze rollout decodes with the training model, not vLLM.",
                hint="Set use_vllm=False (trl_grpo_config does).",
            )
        self.maze_rollout = rollout if rollout is not None else MazeRollout(maze_config)
        with warnings.catch_warnings():
            # TRL flags rollout_func as experimental on every construction; the maze relies on it.
            warnings.filterwarnings("ignore", message=".*'rollout_func'.*experimental")
            super().__init__(
                model=model,
                reward_funcs=[cast(Any, maze_reward)] if reward_funcs is None else reward_funcs,
                args=args,
                train_dataset=train_dataset,
                processing_class=processing_class,
                rollout_func=self.maze_rollout,
                **kwargs,
            )
        self.restricted_action_ids: Tensor | None = None
        if restrict_logprobs:
            self.restricted_action_ids = restrict_logprobs_to_actions(
                self, self.maze_rollout.actions, self.maze_rollout.template
            )


# --------------------------------------------------------------------------------------------
# Models in and out
# --------------------------------------------------------------------------------------------


def load_hf_model(
    name: str,
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    allow_download: bool = False,
) -> tuple[Any, Any, ModelInfo]:
    """A welfare_lens model as a plain HF model and tokenizer (no bridge), offline first.

    Accepts what :func:`welfare_lens.load_model` accepts: a bundled key (dequantized once and
    cached), a tiny test model (seeded), a local HF folder, a ``.gguf`` file or a hub id in the
    local cache. A folder written by :func:`export_hf_model` keeps its welfare_lens identity.

    Args:
        name: Model name or path.
        dtype: Weight dtype.
        seed: Seed of ``tiny-*`` models.
        allow_download: Let transformers fetch a hub id.

    Returns:
        ``(hf_model, tokenizer, info)``.

    Raises:
        ModelLoadError: as :func:`welfare_lens.load_model`.
    """
    from welfare_lens import models as wl_models

    if name in wl_models.BUNDLED:
        return wl_models._load_bundled(wl_models.BUNDLED[name], dtype, True)
    if name in wl_models.TINY_FAMILIES:
        return wl_models._load_tiny(name, dtype, seed)
    if name.startswith("tiny-"):
        raise ModelLoadError(
            f"Unknown tiny model {name!r}.",
            hint=f"Use one of {', '.join(wl_models.TINY_FAMILIES)}.",
        )
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        return wl_models._load_gguf_path(path, dtype)
    if path.is_dir():
        hf, tok, info = wl_models._load_folder(path, dtype)
        if (path / MODEL_SPEC_FILE).is_file():
            info = _base_info(str(path), seed)
        return hf, tok, info
    return wl_models._load_hub(name, dtype, allow_download)


def _base_info(base: str, seed: int = 0) -> ModelInfo:
    """What a base-model spec names, without loading its weights."""
    from welfare_lens import models as wl_models

    if base in wl_models.BUNDLED:
        bundle = wl_models.BUNDLED[base]
        return ModelInfo(base, "bundled", bundle.kind, extra={"label": bundle.hub_label})
    if base in wl_models.TINY_FAMILIES:
        return ModelInfo(
            f"{base}-seed{seed}",
            "tiny",
            "random",
            extra={"label": f"welfare-lens/{base}", "seed": seed},
        )
    path = Path(base).expanduser()
    spec_file = path / MODEL_SPEC_FILE
    if spec_file.is_file():
        spec = json.loads(spec_file.read_text())
        return ModelInfo(
            model_id=str(spec.get("model_id", path)),
            source=str(spec.get("source", "local")),
            kind=str(spec.get("kind", "unknown")),
            extra={**dict(spec.get("extra", {})), "folder": str(path)},
        )
    source = "local" if path.is_dir() else "gguf" if base.endswith(".gguf") else "hub"
    return ModelInfo(str(base), source, "unknown", extra={"label": str(base)})


def export_hf_model(
    name: str,
    out_dir: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Path:
    """Write a welfare_lens model as an HF folder (weights, tokenizer) for TRL to train.

    Every process of an ``accelerate launch`` then loads the same weights by path, and a PEFT
    adapter trained on it records the folder as its base, so :func:`load_trl_checkpoint` finds the
    base without being told. The folder also holds ``welfare_lens_model.json`` with the model's
    welfare_lens id (e.g. ``tiny-llama-seed0``), which the loaded bridge reports.

    Args:
        name: As :func:`load_hf_model`.
        out_dir: Folder to write (created; existing files are overwritten).
        dtype: Weight dtype.
        seed: Seed of ``tiny-*`` models.

    Returns:
        The folder.
    """
    hf, tok, info = load_hf_model(name, dtype=dtype, seed=seed)
    folder = Path(out_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    spec = {
        "name": name,
        "model_id": info.model_id,
        "source": info.source,
        "kind": info.kind,
        "extra": {k: v for k, v in info.extra.items() if isinstance(v, str | int | float | bool)},
    }
    (folder / MODEL_SPEC_FILE).write_text(json.dumps(spec, indent=2))
    return folder


def _checkpoint_number(path: Path) -> int:
    match = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(match.group(1)) if match else -1


def _resolve_trl_checkpoint(path: str | Path) -> Path:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise TrainingError(f"{root} is not a folder.", hint="Pass a TRL checkpoint or output dir.")
    if (root / "adapter_config.json").is_file() or (root / "config.json").is_file():
        return root
    found = sorted((p for p in root.glob("checkpoint-*") if p.is_dir()), key=_checkpoint_number)
    found = [
        p for p in found if (p / "adapter_config.json").is_file() or (p / "config.json").is_file()
    ]
    if not found:
        raise TrainingError(
            f"{root} holds no model: no adapter_config.json, config.json or checkpoint-* folder.",
            hint="Pass the trainer's output_dir or one of its checkpoint-N folders.",
        )
    return found[-1]


def load_trl_checkpoint(
    path: str | Path,
    base: str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    compatibility_mode: bool = False,
    seed: int = 0,
    allow_download: bool = False,
) -> Any:
    """A TRL checkpoint as a TransformerBridge, for extraction and analysis (paper A4).

    Two layouts load: a PEFT adapter (``adapter_config.json``; LoRA runs) is applied to its base
    model and merged, and a full model folder (``config.json`` + safetensors; full fine-tuning) is
    read as is. Only the weights are read (safetensors); TRL's pickled optimizer and RNG files are
    never opened. The bridge is booted after merging, so it wraps an ordinary HF model.

    Args:
        path: A checkpoint folder (``output_dir/checkpoint-N``) or an output dir (its final model,
            else its latest checkpoint).
        base: The base model of an adapter: a welfare_lens name (``"tiny-llama"``,
            ``"smollm2-135m-instruct"``) or folder. Default: the adapter's
            ``base_model_name_or_path`` (the folder of :func:`export_hf_model`). For a full model
            folder it only names the base in the bridge's info.
        device: Device of the bridge (CPU by default).
        dtype: Weight dtype.
        compatibility_mode: Boot in HookedTransformer-compatible coordinates (recorded).
        seed: Seed of a ``tiny-*`` base.
        allow_download: Let transformers fetch a hub-id base.

    Returns:
        The bridge; its :class:`~welfare_lens.models.ModelInfo` names the checkpoint (``source``
        ``"trl-checkpoint"``), so vectors from it are not mistaken for the base model's.

    Raises:
        TrainingError: if no model is found or the adapter's base is unknown.
        ModelLoadError: if the base or the folder cannot be loaded.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from welfare_lens.models import _boot

    ckpt = _resolve_trl_checkpoint(path)
    adapter_file = ckpt / "adapter_config.json"
    finetune = "lora" if adapter_file.is_file() else "full"
    if finetune == "lora":
        recorded = json.loads(adapter_file.read_text()).get("base_model_name_or_path")
        spec = str(base) if base is not None else recorded
        if not spec:
            raise TrainingError(
                f"The adapter in {ckpt} does not name its base model.",
                hint="Pass base='tiny-llama' (or the model name / folder it was trained from).",
            )
        hf, tok, info = load_hf_model(
            str(spec), dtype=dtype, seed=seed, allow_download=allow_download
        )
        from peft import PeftModel

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peft_model = PeftModel.from_pretrained(hf, str(ckpt), is_trainable=False)
        hf = peft_model.merge_and_unload()
    else:
        try:
            hf = AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype, local_files_only=True)
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"Could not load the model in {ckpt}: {err}") from err
        tok = None
        info = (
            _base_info(str(base), seed)
            if base is not None
            else ModelInfo("unknown-base", "local", "unknown", extra={"label": str(ckpt)})
        )
    with contextlib.suppress(OSError, ValueError, TypeError):
        tok = AutoTokenizer.from_pretrained(ckpt, local_files_only=True)  # TRL saves it
    if tok is None and base is not None:
        _, tok, _ = load_hf_model(str(base), dtype=dtype, seed=seed, allow_download=allow_download)
    if tok is None:
        raise ModelLoadError(
            f"{ckpt} has no tokenizer.", hint="Pass base=... so its tokenizer can be used."
        )
    hf = hf.to(dtype).eval()
    bridge = _boot(str(info.extra.get("label", info.model_id)), hf, tok, device, dtype)
    mode: CoordinateMode = "raw"
    if compatibility_mode:
        bridge.enable_compatibility_mode()
        mode = "compat"
    state_file = ckpt / "trainer_state.json"
    number = _checkpoint_number(ckpt)
    step: int | None = number if number >= 0 else None  # a final save records no step
    if state_file.is_file():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            step = int(json.loads(state_file.read_text())["global_step"])
    bridge.welfare_lens_info = ModelInfo(
        model_id=f"{info.model_id}@trl:{ckpt.parent.name}/{ckpt.name}",
        source="trl-checkpoint",
        kind=info.kind,
        coordinate_mode=mode,
        extra={
            **{k: v for k, v in info.extra.items() if k != "label"},
            "checkpoint": str(ckpt),
            "step": step,
            "base_model_id": info.model_id,
            "finetune": finetune,
            "merged": True,
        },
    )
    bridge.eval()
    return bridge
