"""Configuration of the compact GRPO trainer (paper A3, J.3, Q.1; notes B-2, B-3, B-12)."""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

from welfare_lens.errors import TrainingError
from welfare_lens.rl.losses import LOSS_TYPES, LossConfig, LossType

__all__ = ["FINETUNE_MODES", "FinetuneMode", "GRPOConfig"]

FinetuneMode = Literal["lora", "full"]
FINETUNE_MODES: tuple[str, ...] = get_args(FinetuneMode)


def _positive_int(name: str, value: Any, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TrainingError(f"{name} must be a positive integer, got {value!r}.", hint=hint)


def _finite(name: str, value: Any, *, low: float, strict: bool, hint: str) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low)
    if not ok:
        op = ">" if strict else ">="
        raise TrainingError(f"{name} must be a finite number {op} {low}, got {value!r}.", hint=hint)


@dataclass(frozen=True)
class GRPOConfig:
    """Hyperparameters of :class:`~welfare_lens.rl.GRPOTrainer`, validated on construction.

    Defaults are the paper's primary run (appendix Q, Table 28: Dr. GRPO, LoRA r32/α64 on all
    linear layers, LR 3e-6, β0 = 0.01, temperature 0.7, 8 mazes per step) with a group size of
    64 (note B-2's first reading). The paper tuned its LR for Qwen3-4B; small models need far more
    (DESIGN, "Learning signal": SmolLM2-135M moved at 3e-4 to 1e-3 with LoRA, not at 2e-4 in 80
    steps), so search the LR and compare with the untrained policy before extracting anything.

    Attributes:
        loss: ``"dr_grpo"`` (paper), ``"grpo"`` (std-scaled advantages, per-sequence token mean),
            ``"dapo"`` (token mean), ``"reinforce"`` (per-turn returns-to-go with a per-position
            group baseline, Q.1) or ``"sft"`` (cross-entropy on OptimalPolicy trajectories).
        lr: Peak learning rate of AdamW; scaled by the cosine multiplier (J.3: "the same
            multiplier scales the learning rate").
        mazes_per_step: Mazes (GRPO groups / "prompts") per step (paper: 8).
        episodes_per_maze: Episodes per maze, the group size ``G`` (paper: 64, note B-2).
        temperature: Sampling temperature; log-probs for the loss use the same (paper: 0.7).
        kl_beta: Coefficient κ of the k3 KL penalty to the reference model (LoRA: the adapter
            disabled; full FT: a frozen copy of the initial weights). 0 skips the reference.
        entropy_beta0: β0 of the equalized entropy bonus (J.3; paper 0.01, 0 for Base runs).
        schedule_steps: Nominal length ``S`` of the cosine schedule (paper: 500).
        schedule_fraction: Schedule fraction ``f`` (paper: 1).
        finetune: ``"lora"`` (PEFT LoRA on every linear layer except the unembedding) or
            ``"full"`` (every weight).
        lora_r: LoRA rank (paper: 32).
        lora_alpha: LoRA α (paper: 64; GPT-OSS used 32).
        lora_dropout: LoRA dropout (0 keeps the update exactly on-policy).
        max_grad_norm: Global gradient-norm clip; ``None`` disables clipping.
        micro_batch_size: Gradient accumulation: episodes per forward/backward pass (``None``: the
            whole batch at once). The loss is normalised by whole-batch totals, so the gradient
            does not depend on it.
        micro_batch_tokens: Cap on padded tokens (episodes x longest episode) per micro-batch,
            applied on top of ``micro_batch_size`` (``None``: no cap). Lets one setting serve a
            curriculum whose episodes grow from one turn to fifteen: short episodes go through
            in few large passes, long ones in small ones.
        updates_per_batch: PPO epochs μ over each batch (1: on-policy, the ratio is exactly 1).
        scale_std: Divide group advantages by their std; ``None`` means only for ``"grpo"``.
        eps_low: Lower clip range of the dual-clip surrogate (paper: 0.2).
        eps_high: Upper clip range; ``None`` reuses ``eps_low``.
        dual_clip_c: Dual-clip constant (paper: 3.0); ``None`` disables it.
        Z: Dr. GRPO's loss-scale constant (paper: 2048).
        weight_decay: AdamW weight decay (the paper does not say; 0).
        adam_betas: AdamW betas.
        rollout_batch_size: Episodes decoded together on one KV cache (``None``: all).
        share_update_prefix: In the update, encode the first-prompt tokens that a group's
            episodes share once per micro-batch and branch every episode off that KV cache
            (the gradient is the same; the forward/backward work shrinks by up to the group
            size for single-turn episodes).
        shared_episode_seed: Give all episodes of a maze the same wind and clause orders.
        sft_batch_size: Trajectories per SFT step (note B-12: 16).
        sft_horizon: Look-ahead of the :class:`~welfare_lens.maze.OptimalPolicy` making SFT data.
        seed: Seed of the run: mazes, sampling and SFT data of step ``s`` derive from
            ``(seed, s)``, so an interrupted run resumes exactly.
        actions: Action strings sampling is restricted to (N/E/S/W).
        template: Chat template choice (``"auto"``, ``"model"`` or ``"plain"``).
        out_dir: Folder for ``metrics.jsonl`` and checkpoints (``None``: keep nothing on disk).
        checkpoint_every: Save a checkpoint every this many steps (0: only on request).
        progress: Show a tqdm progress bar in :meth:`~welfare_lens.rl.GRPOTrainer.train`.
    """

    loss: LossType = "dr_grpo"
    lr: float = 3e-6
    mazes_per_step: int = 8
    episodes_per_maze: int = 64
    temperature: float = 0.7
    kl_beta: float = 0.0
    entropy_beta0: float = 0.01
    schedule_steps: int = 500
    schedule_fraction: float = 1.0
    finetune: FinetuneMode = "lora"
    lora_r: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.0
    max_grad_norm: float | None = 1.0
    micro_batch_size: int | None = None
    micro_batch_tokens: int | None = None
    updates_per_batch: int = 1
    scale_std: bool | None = None
    eps_low: float = 0.2
    eps_high: float | None = None
    dual_clip_c: float | None = 3.0
    Z: float = 2048.0
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    rollout_batch_size: int | None = 64
    share_update_prefix: bool = True
    shared_episode_seed: bool = False
    sft_batch_size: int = 16
    sft_horizon: int = 7
    seed: int = 0
    actions: tuple[str, ...] = ("N", "E", "S", "W")
    template: Literal["auto", "model", "plain"] = "auto"
    out_dir: str | None = None
    checkpoint_every: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        """Validate every field.

        Raises:
            TrainingError: naming the field, the bad value and the fix.
        """
        if self.loss not in LOSS_TYPES:
            raise TrainingError(
                f"Unknown loss {self.loss!r}.", hint=f"Use one of {', '.join(LOSS_TYPES)}."
            )
        if self.finetune not in FINETUNE_MODES:
            raise TrainingError(
                f"Unknown finetune mode {self.finetune!r}.", hint="Use 'lora' or 'full'."
            )
        _finite("lr", self.lr, low=0.0, strict=True, hint="The paper uses 3e-6 (Instruct LoRA).")
        _finite("temperature", self.temperature, low=0.0, strict=True, hint="Paper: 0.7.")
        _finite("kl_beta", self.kl_beta, low=0.0, strict=False, hint="0 disables the KL term.")
        _finite("entropy_beta0", self.entropy_beta0, low=0.0, strict=False, hint="Paper: 0.01.")
        _finite("schedule_fraction", self.schedule_fraction, low=0.0, strict=True, hint="Paper: 1.")
        _finite("weight_decay", self.weight_decay, low=0.0, strict=False, hint="E.g. 0.")
        if not (0.0 <= self.lora_dropout < 1.0):
            raise TrainingError(
                f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}.", hint="E.g. 0."
            )
        if self.max_grad_norm is not None:
            _finite("max_grad_norm", self.max_grad_norm, low=0.0, strict=True, hint="E.g. 1.0.")
        for name in (
            "mazes_per_step",
            "episodes_per_maze",
            "lora_r",
            "lora_alpha",
            "updates_per_batch",
        ):
            _positive_int(name, getattr(self, name), hint="Use a positive integer.")
        _positive_int("sft_batch_size", self.sft_batch_size, hint="Note B-12 implies 16.")
        if self.schedule_steps < 2:
            raise TrainingError(
                f"schedule_steps must be >= 2, got {self.schedule_steps!r}.", hint="Paper: 500."
            )
        if not (1 <= self.sft_horizon <= 10):
            raise TrainingError(
                f"sft_horizon must be in 1..10, got {self.sft_horizon!r}.", hint="E.g. 7."
            )
        for name in ("micro_batch_size", "micro_batch_tokens", "rollout_batch_size"):
            value = getattr(self, name)
            if value is not None:
                _positive_int(name, value, hint="Use a positive integer, or None for all at once.")
        if isinstance(self.checkpoint_every, bool) or not isinstance(self.checkpoint_every, int):
            raise TrainingError(
                f"checkpoint_every must be an integer, got {self.checkpoint_every!r}.",
                hint="0 saves only on request.",
            )
        if self.checkpoint_every < 0:
            raise TrainingError(
                f"checkpoint_every must be >= 0, got {self.checkpoint_every}.",
                hint="0 saves only on request.",
            )
        if self.checkpoint_every > 0 and self.out_dir is None:
            raise TrainingError(
                "checkpoint_every > 0 needs an out_dir to write checkpoints to.",
                hint="Set out_dir='runs/my_run'.",
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise TrainingError(f"seed must be an integer >= 0, got {self.seed!r}.", hint="E.g. 0.")
        if len(self.actions) < 2 or len(set(self.actions)) != len(self.actions):
            raise TrainingError(
                f"actions must be at least two distinct strings, got {self.actions!r}.",
                hint="The maze uses ('N', 'E', 'S', 'W').",
            )
        if len(self.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise TrainingError(
                f"adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}.",
                hint="E.g. (0.9, 0.999).",
            )
        self.loss_config()  # validates the clip parameters and Z

    def loss_config(self) -> LossConfig:
        """The :class:`~welfare_lens.rl.LossConfig` these settings describe."""
        scale = self.loss == "grpo" if self.scale_std is None else self.scale_std
        return LossConfig(
            loss=self.loss,
            scale_std=scale,
            eps_low=self.eps_low,
            eps_high=self.eps_high,
            dual_clip_c=self.dual_clip_c,
            Z=self.Z,
            kl_coef=self.kl_beta,
            entropy_coef=self.entropy_beta0,
        )

    @property
    def batch_episodes(self) -> int:
        """Episodes per RL step: ``mazes_per_step * episodes_per_maze``."""
        return self.mazes_per_step * self.episodes_per_maze

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict; inverse of :meth:`from_dict`."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GRPOConfig:
        """Build a config from :meth:`to_dict` output (missing keys take the defaults).

        Raises:
            TrainingError: on an unknown key (naming the closest valid one) or a bad value.
        """
        valid = [f.name for f in fields(cls)]
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in valid:
                close = difflib.get_close_matches(str(key), valid, n=1)
                raise TrainingError(
                    f"Unknown GRPOConfig key {key!r}.",
                    hint=f"Did you mean {close[0]!r}?" if close else f"Valid keys: {valid}.",
                )
            kwargs[key] = tuple(value) if key in ("adam_betas", "actions") else value
        return cls(**kwargs)
