"""Compact GRPO trainer (paper A3, J.3, Q.1): rollouts, losses, schedules, trainer, checkpoints.

* :func:`rollout` -- multi-turn, action-masked sampling with the KV cache carried across turns.
* :class:`GRPOTrainer` / :class:`GRPOConfig` -- Dr. GRPO (paper), GRPO, DAPO, token-level
  REINFORCE and SFT controls; LoRA (PEFT) or full fine-tuning; metrics JSONL; exact resume.
* :func:`load_checkpoint` -- a trained checkpoint back as a TransformerBridge.
* Pure loss functions (:func:`policy_loss`, :func:`aggregate`, ...) and the cosine schedule.
"""

from welfare_lens.rl.checkpoint import latest_checkpoint, load_checkpoint, read_state
from welfare_lens.rl.config import FINETUNE_MODES, FinetuneMode, GRPOConfig
from welfare_lens.rl.losses import (
    AGGREGATION_MODES,
    LOSS_TYPES,
    AggregationMode,
    LossConfig,
    LossType,
    PolicyLossStats,
    aggregate,
    equalized_entropy,
    frac_zero_std,
    group_advantages,
    k3_kl,
    policy_loss,
    reinforce_advantages,
    restricted_logprobs,
    returns_to_go,
    sft_loss,
    token_logprobs,
)
from welfare_lens.rl.rollout import (
    Episode,
    RolloutStats,
    TurnEnv,
    collate,
    maze_groups,
    rollout,
    sliding_window,
)
from welfare_lens.rl.schedule import (
    cosine_lr_scheduler,
    cosine_multiplier,
    entropy_coefficient,
    learning_rate,
)
from welfare_lens.rl.trainer import (
    EnvFactory,
    GRPOTrainer,
    action_logits,
    episode_metrics,
    grpo_loss,
    lora_target_modules,
)

__all__ = [
    "AGGREGATION_MODES",
    "FINETUNE_MODES",
    "LOSS_TYPES",
    "AggregationMode",
    "EnvFactory",
    "Episode",
    "FinetuneMode",
    "GRPOConfig",
    "GRPOTrainer",
    "LossConfig",
    "LossType",
    "PolicyLossStats",
    "RolloutStats",
    "TurnEnv",
    "action_logits",
    "aggregate",
    "collate",
    "cosine_lr_scheduler",
    "cosine_multiplier",
    "entropy_coefficient",
    "episode_metrics",
    "equalized_entropy",
    "frac_zero_std",
    "group_advantages",
    "grpo_loss",
    "k3_kl",
    "latest_checkpoint",
    "learning_rate",
    "load_checkpoint",
    "lora_target_modules",
    "maze_groups",
    "policy_loss",
    "read_state",
    "reinforce_advantages",
    "restricted_logprobs",
    "returns_to_go",
    "rollout",
    "sft_loss",
    "sliding_window",
    "token_logprobs",
]
