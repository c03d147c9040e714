"""A compact GRPO trainer for the maze on a hooked model (paper A3, J.3, Q.1; notes B-2, B-3).

One step of :class:`GRPOTrainer`:

1. **Rollouts.** ``mazes_per_step`` fresh mazes, ``episodes_per_maze`` episodes each, played
   with action-masked sampling at the temperature and the KV cache carried across turns
   (:func:`~welfare_lens.rl.rollout.rollout`). Mazes and samples of step ``s`` derive from
   ``(seed, s)``.
2. **Advantages.** Dr. GRPO: ``A_i = R_i - mean_group(R)`` broadcast to every action token
   (``"grpo"`` also divides by the std). REINFORCE: per-turn returns-to-go minus the per-turn
   group mean (Q.1).
3. **Loss** on the action tokens only (the N/E/S/W positions; prompts, observations and padding
   are never targets): dual-clip PPO surrogate on the log-probs of the *restricted*,
   temperature-scaled softmax, plus ``kl_beta`` times the k3 KL to the reference (LoRA adapter
   disabled), minus ``β(s)`` times the equalized entropy (J.3), aggregated with Dr. GRPO's
   constant ``Z`` (or the GRPO/DAPO normalisers).
4. **Update.** AdamW at ``lr * cosine_multiplier(s)`` ("the same multiplier scales the learning
   rate", J.3), gradient-norm clipping, gradient accumulation over micro-batches. With
   ``updates_per_batch = 1`` the old log-probs are the current ones detached, so the ratio is
   exactly 1 and the gradient is the REINFORCE gradient (TRL's ``num_iterations = 1``).

The SFT control (``loss="sft"``) replaces rollouts by :class:`~welfare_lens.maze.OptimalPolicy`
trajectories on fresh mazes and trains the cross-entropy of their moves (note B-12).

The model is trained in place and kept in eval mode (no dropout), so that rollouts and updates
see the same function. With LoRA, PEFT wraps ``model.original_model``; the bridge keeps working,
hooks included. Per-step metrics go to ``out_dir/metrics.jsonl``; checkpoints are safetensors
plus JSON (see :mod:`welfare_lens.rl.checkpoint`).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from welfare_lens._memory import free_memory, is_out_of_memory, warn_back_off
from welfare_lens.chat import action_token_ids, render_chat
from welfare_lens.errors import ResourceError, TrainingError
from welfare_lens.maze.config import MazeConfig, Tile
from welfare_lens.maze.policies import OptimalPolicy, run_episode
from welfare_lens.rl.config import GRPOConfig
from welfare_lens.rl.losses import (
    LossConfig,
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
)
from welfare_lens.rl.rollout import (
    Episode,
    RolloutStats,
    TurnEnv,
    _derive_seed,
    collate,
    forward_logits,
    maze_groups,
    pad_token_id,
    rollout,
)
from welfare_lens.rl.schedule import cosine_multiplier, entropy_coefficient

__all__ = [
    "EnvFactory",
    "GRPOTrainer",
    "action_logits",
    "episode_metrics",
    "grpo_loss",
    "lora_target_modules",
]

#: ``env_factory(batch_seed) -> envs``: ``mazes_per_step * episodes_per_maze`` fresh environments
#: in group order (episode ``i`` belongs to group ``i // episodes_per_maze``).
EnvFactory = Callable[[int], Sequence[TurnEnv]]

_BATCH_STREAM = 0xB47C
_LORA_STREAM = 0x10A
_NO_SIGNAL_WARN_AFTER = 5
TIMING_KEYS: tuple[str, ...] = ("rollout_s", "update_s", "step_s", "tokens_per_s", "data_s")


# --------------------------------------------------------------------------------------------
# Pure pieces (tested on their own)
# --------------------------------------------------------------------------------------------


def lora_target_modules(hf_model: Any) -> list[str]:
    """Names of every linear layer of ``hf_model`` except the unembedding (paper: "all linear").

    PEFT's ``"all-linear"`` shortcut cannot see through TransformerBridge's wrappers: it would
    target the wrappers (which PEFT rejects) or, on the wrapped ``nn.Linear``, include the
    unembedding (tied to the embedding in small models, so merging would change the input
    embeddings too). The exact module names are therefore listed; a linear layer whose output
    size is the vocabulary is the unembedding and is skipped.

    Args:
        hf_model: The HF model inside the bridge (``model.original_model``).

    Returns:
        Full module names, one per distinct ``nn.Linear``.

    Raises:
        TrainingError: if the model has no linear layer to adapt.
    """
    vocab = getattr(getattr(hf_model, "config", None), "vocab_size", None)
    if hasattr(getattr(hf_model, "config", None), "get_text_config"):
        vocab = getattr(hf_model.config.get_text_config(), "vocab_size", vocab)
    names = [
        name
        for name, module in hf_model.named_modules()
        if isinstance(module, torch.nn.Linear) and module.out_features != vocab
    ]
    if not names:
        raise TrainingError(
            "The model has no linear layer for LoRA to adapt.",
            hint="Use GRPOConfig(finetune='full').",
        )
    return names


def action_logits(
    model: Any,
    input_ids: Int[Tensor, "batch pos"],
    positions: Int[Tensor, "batch turns"],
    allowed: Int[Tensor, " k"],
) -> Float[Tensor, "batch turns k"]:
    """Logits of the ``K`` allowed tokens at the positions that predict each action.

    The logits at ``p - 1`` predict the action token at ``p`` (causal shift). Only those
    positions are projected onto the vocabulary (``logits_to_keep``), so the largest tensor of
    the forward pass is ``[batch, turns, vocab]`` at most.

    Args:
        model: A TransformerBridge, or any callable with the same signature.
        input_ids: Right-padded conversations.
        positions: Index of each action token (>= 1).
        allowed: The action token ids, in the order of the action list.

    Returns:
        ``[batch, turns, K]`` logits, with grad if the model has trainable parameters.
    """
    prev = positions - 1
    keep = torch.unique(prev.flatten(), sorted=True)
    logits = forward_logits(model, input_ids, keep)
    z = logits[..., allowed.to(logits.device)]  # [batch, kept, K]
    slot = torch.searchsorted(keep, prev.contiguous()).to(z.device)
    index = slot.unsqueeze(-1).expand(-1, -1, z.shape[-1])
    return z.gather(1, index)


def _common_prefix_length(a: Tensor, b: Tensor) -> int:
    n = min(a.shape[0], b.shape[0])
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0, 0]) if differ.numel() else n


#: Shorter shared prefixes are not worth a second forward call.
MIN_SHARED_PREFIX = 8


def shared_prefix_length(
    input_ids: Int[Tensor, "batch pos"],
    positions: Int[Tensor, "batch turns"],
    turn_mask: Bool[Tensor, "batch turns"],
    groups: Int[Tensor, " batch"],
) -> int:
    """Tokens every row shares with the first row of its group, before any needed logit.

    The prefix must end at or before the earliest position whose logits the loss reads (the
    one predicting the first action), so that every needed logit is computed on the suffix.
    """
    first_needed = int(torch.where(turn_mask, positions - 1, input_ids.shape[1]).min())
    length = min(first_needed, input_ids.shape[1])
    for g in torch.unique(groups).tolist():
        rows = (groups == g).nonzero().flatten().tolist()
        for r in rows[1:]:
            length = min(length, _common_prefix_length(input_ids[rows[0]], input_ids[r]))
    return length


def shared_prefix_action_logits(
    model: Any,
    input_ids: Int[Tensor, "batch pos"],
    positions: Int[Tensor, "batch turns"],
    allowed: Int[Tensor, " k"],
    turn_mask: Bool[Tensor, "batch turns"],
    groups: Int[Tensor, " batch"],
) -> Float[Tensor, "batch turns k"]:
    """:func:`action_logits`, encoding the prefix each group shares once (same values).

    Episodes of one GRPO group start from the same first prompt. Its common part (up to the
    first action's predicting position) is run once per group with the KV cache kept, the cache
    is expanded to the group's rows, and only each row's remaining tokens are run on it. Causal
    attention makes every logit identical to the full forward's; gradients flow through the
    shared cache into the shared tokens once per group, which is the sum the full forward gives.
    Every group's prefix has the same length (the shortest), so the cache has no padding gaps
    and sliding-window attention sees the same tokens. Falls back to :func:`action_logits` when
    fewer than :data:`MIN_SHARED_PREFIX` tokens or no rows are shared.
    """
    order = list(dict.fromkeys(groups.tolist()))
    length = shared_prefix_length(input_ids, positions, turn_mask, groups)
    if len(order) == input_ids.shape[0] or length < MIN_SHARED_PREFIX:
        return action_logits(model, input_ids, positions, allowed)
    first_rows = [int((groups == g).nonzero()[0, 0]) for g in order]
    prefix = input_ids[first_rows, :length]
    _, past = forward_logits(
        model, prefix, torch.tensor([length - 1]), return_type="logits_and_cache"
    )
    index = torch.tensor([order.index(g) for g in groups.tolist()], device=input_ids.device)
    past.batch_select_indices(index)
    # Padded turn slots read position `length` (any computed one): the loss masks them.
    prev = torch.where(turn_mask, positions - 1, length) - length
    keep = torch.unique(prev.flatten(), sorted=True)
    logits, _ = forward_logits(
        model, input_ids[:, length:], keep, past_key_values=past, return_type="logits_and_cache"
    )
    z = logits[..., allowed.to(logits.device)]
    slot = torch.searchsorted(keep, prev.contiguous()).to(z.device)
    out: Tensor = z.gather(1, slot.unsqueeze(-1).expand(-1, -1, z.shape[-1]))
    return out


def grpo_loss(
    logits: Float[Tensor, "batch turns k"],
    chosen: Int[Tensor, "batch turns"],
    turn_mask: Bool[Tensor, "batch turns"],
    advantages: Float[Tensor, "batch turns"],
    *,
    loss_cfg: LossConfig,
    temperature: float,
    entropy_coef: float = 0.0,
    neighbours: Int[Tensor, "batch turns k"] | None = None,
    old_logp: Float[Tensor, "batch turns"] | None = None,
    ref_logits: Float[Tensor, "batch turns k"] | None = None,
    n_sequences: int | None = None,
    n_tokens: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The per-step RL loss on the action tokens (paper J.3 and Q.1).

    ``L = aggregate(-dual_clip(r, A) + κ·k3(π, π_ref) - β·H_eq)`` over action tokens, with the
    log-probs of the restricted softmax over the ``K`` action logits at the temperature.

    Args:
        logits: Action-token logits (from :func:`action_logits`).
        chosen: Index of the sampled action in ``0..K-1``.
        turn_mask: Real turns (padding turns of shorter episodes are ``False``).
        advantages: Per-turn advantages.
        loss_cfg: Clip ranges, ``Z``, aggregation and ``κ``.
        temperature: Sampling temperature.
        entropy_coef: ``β(s)`` of the equalized entropy bonus.
        neighbours: Tile class of each action's destination, for the bonus; ``None`` treats all
            actions as one class (plain entropy).
        old_logp: Log-probs of the sampling policy; ``None`` uses the current ones detached
            (one update per batch: the ratio is exactly 1).
        ref_logits: Reference-model action logits for the KL term (needed if ``κ > 0``).
        n_sequences: Sequences in the whole accumulation step (default: this batch).
        n_tokens: Action tokens in the whole accumulation step (default: this batch).

    Returns:
        ``(loss, stats)`` with the scalar loss and float diagnostics (``clip_frac``,
        ``ratio_mean``, ``kl``, ``entropy``, ``entropy_eq``, ``n_tokens``).
    """
    k = logits.shape[-1]
    slots = torch.arange(k, device=logits.device)
    logp = restricted_logprobs(logits, chosen, slots, temperature, mask=turn_mask)
    old = logp.detach() if old_logp is None else old_logp.to(logp.device)
    per_tok, pstats = policy_loss(
        logp,
        old,
        advantages.to(logp.device),
        eps_low=loss_cfg.eps_low,
        eps_high=loss_cfg.eps_high,
        dual_clip_c=loss_cfg.dual_clip_c,
        log_ratio_clamp=loss_cfg.log_ratio_clamp,
        mask=turn_mask,
    )
    stats: dict[str, float] = {
        "clip_frac": pstats.clip_frac,
        "ratio_mean": pstats.ratio_mean,
        "ratio_max": pstats.ratio_max,
        "n_tokens": float(pstats.n_tokens),
    }
    if loss_cfg.kl_coef > 0:
        if ref_logits is None:
            raise TrainingError(
                "kl_beta > 0 needs the reference model's logits.",
                hint="Pass ref_logits (the trainer computes them with the adapter disabled).",
            )
        ref_logp = restricted_logprobs(
            ref_logits.to(logp.device), chosen, slots, temperature, mask=turn_mask
        )
        kl = k3_kl(logp, ref_logp)
        per_tok = per_tok + loss_cfg.kl_coef * kl
        stats["kl"] = _masked_mean(kl.detach(), turn_mask)
    flat_mask = turn_mask.bool()
    z = logits[flat_mask]
    tiles = (
        torch.zeros_like(z, dtype=torch.long)
        if neighbours is None
        else neighbours.to(z.device)[flat_mask].long()
    )
    h_eq = equalized_entropy(z, tiles, temperature)
    h_eq_full = torch.zeros_like(logp)
    h_eq_full[flat_mask] = h_eq
    if entropy_coef > 0:
        per_tok = per_tok - entropy_coef * h_eq_full
    with torch.no_grad():
        p = torch.log_softmax(z.float() / temperature, dim=-1)
        stats["entropy"] = float(-(p.exp() * p).sum(-1).mean()) if z.shape[0] else 0.0
        stats["entropy_eq"] = float(h_eq.mean()) if z.shape[0] else 0.0
    loss = aggregate(
        per_tok,
        turn_mask,
        mode=loss_cfg.aggregation,
        Z=loss_cfg.Z,
        n_sequences=n_sequences,
        n_tokens=n_tokens,
    )
    return loss, stats


def _fork_rng() -> Any:
    """``torch.random.fork_rng`` over the CPU and, if in use, the current CUDA device."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    return torch.random.fork_rng(devices=[torch.cuda.current_device()] if cuda else [])


def _masked_mean(x: Tensor, mask: Tensor) -> float:
    m = mask.bool()
    return float(x[m].mean()) if bool(m.any()) else 0.0


def episode_metrics(episodes: Sequence[Episode], group_size: int) -> dict[str, Any]:
    """Reward and behaviour statistics of a batch of episodes (DESIGN, "Learning signal").

    Args:
        episodes: Episodes in group order.
        group_size: Episodes per group.

    Returns:
        ``reward_mean``/``reward_std``/``reward_min``/``reward_max`` of the returns,
        ``gold_per_episode``, ``mold_per_episode``, ``frac_reward_zero_std`` (groups whose returns
        are all equal: no signal), ``p_gold``/``p_mold`` (mean sampling probability of stepping
        onto Gold/Mold over turns where such a neighbour exists; ``None`` if none),
        ``sampling_entropy`` and the fraction of each action (``frac_N``, ...).
    """
    returns = torch.tensor([e.total_reward for e in episodes], dtype=torch.float64)
    n = len(episodes)
    out: dict[str, Any] = {
        "n_episodes": n,
        "reward_mean": float(returns.mean()),
        "reward_std": float(returns.std()) if n > 1 else 0.0,
        "reward_min": float(returns.min()),
        "reward_max": float(returns.max()),
        "gold_per_episode": float(np.mean([e.n_gold for e in episodes])),
        "mold_per_episode": float(np.mean([e.n_mold for e in episodes])),
    }
    if n % group_size == 0:
        out["frac_reward_zero_std"] = frac_zero_std(returns.reshape(-1, group_size))
    probs = torch.cat([e.action_probs for e in episodes]).double()
    tiles = torch.cat([e.neighbours for e in episodes])
    for name, tile in (("p_gold", Tile.GOLD), ("p_mold", Tile.MOLD)):
        near = (tiles == int(tile)).any(dim=1)
        mass = (probs * (tiles == int(tile))).sum(dim=1)
        out[name] = float(mass[near].mean()) if bool(near.any()) else None
    logp = probs.clamp_min(1e-30).log()
    out["sampling_entropy"] = float(-(probs * logp).sum(dim=1).mean())
    actions = [a for e in episodes for a in e.actions]
    for a in sorted(set(actions)):
        out[f"frac_{a}"] = actions.count(a) / len(actions)
    return out


# --------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------


class GRPOTrainer:
    """Train a TransformerBridge in the maze with Dr. GRPO and its controls (paper A3).

    Args:
        model: A TransformerBridge (e.g. ``wl.load_model("smollm2-135m-instruct")``). It is
            trained in place: with LoRA its ``original_model`` is wrapped by PEFT.
        maze_cfg: Maze configuration (``MazeConfig()``, the paper's, by default).
        config: Training hyperparameters (``GRPOConfig()`` by default).
        env_factory: Optional ``batch_seed -> environments`` replacing the maze (e.g. a bandit);
            it must return ``mazes_per_step * episodes_per_maze`` fresh environments in group
            order.

    Raises:
        TrainingError: if the model already carries a LoRA adapter, has no tokenizer, or its
            actions are not single tokens.

    Example:
        >>> import welfare_lens as wl  # doctest: +SKIP
        >>> model = wl.load_model("tiny-llama")  # doctest: +SKIP
        >>> trainer = wl.rl.GRPOTrainer(model, wl.maze.MazeConfig(size=20),
        ...     wl.rl.GRPOConfig(mazes_per_step=2, episodes_per_maze=4))  # doctest: +SKIP
        >>> metrics = trainer.train(3)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: Any,
        maze_cfg: MazeConfig | None = None,
        config: GRPOConfig | None = None,
        *,
        env_factory: EnvFactory | None = None,
    ) -> None:
        self.model = model
        self.maze_cfg = maze_cfg if maze_cfg is not None else MazeConfig()
        self.config = config if config is not None else GRPOConfig()
        if not isinstance(self.config, GRPOConfig):
            raise TrainingError(
                f"config must be a GRPOConfig, got {type(self.config).__name__}.",
                hint="Pass wl.rl.GRPOConfig(...).",
            )
        if not isinstance(self.maze_cfg, MazeConfig):
            raise TrainingError(
                f"maze_cfg must be a MazeConfig, got {type(self.maze_cfg).__name__}.",
                hint="Pass wl.maze.MazeConfig(...).",
            )
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None or getattr(model, "original_model", None) is None:
            raise TrainingError(
                "The model has no tokenizer or no original_model: it is not a TransformerBridge.",
                hint="Load it with wl.load_model(...).",
            )
        self.env_factory = env_factory
        self.loss_cfg = self.config.loss_config()
        ids = action_token_ids(tokenizer, self.config.actions, template=self.config.template)
        self.allowed = torch.tensor([ids[a] for a in self.config.actions], dtype=torch.long)
        self.pad_id = pad_token_id(tokenizer)
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self.peft_model: Any = None
        self._ref_params: dict[str, Tensor] | None = None
        self._no_signal_steps = 0
        # Lowered by an out-of-memory back-off; the run's config keeps the requested size.
        self._micro_limit: int | None = None
        self._updated_in_step = False
        self.model.eval()
        self._setup_parameters()
        self.optimizer = torch.optim.AdamW(
            self.trainable_parameters,
            lr=self.config.lr,
            betas=self.config.adam_betas,
            weight_decay=self.config.weight_decay,
        )
        self._device = self.trainable_parameters[0].device
        self.allowed = self.allowed.to(self._device)

    # ------------------------------------------------------------------ setup

    def _setup_parameters(self) -> None:
        hf = self.model.original_model
        if any("lora_" in name for name, _ in hf.named_parameters()):
            raise TrainingError(
                "The model already carries a LoRA adapter.",
                hint="Load checkpoints with load_checkpoint(path, merge=True), or resume the run "
                "with GRPOTrainer.resume(path).",
            )
        if self.config.finetune == "lora":
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(
                r=self.config.lora_r,
                lora_alpha=self.config.lora_alpha,
                lora_dropout=self.config.lora_dropout,
                target_modules=lora_target_modules(hf),
                bias="none",
            )
            # LoRA's A matrices are drawn from torch's global RNG: seed them from the run seed
            # (without disturbing the caller's stream) so the same seed gives the same run.
            with _fork_rng(), warnings.catch_warnings():
                torch.manual_seed(_derive_seed(self.config.seed, _LORA_STREAM))
                warnings.simplefilter("ignore")  # PEFT warns about the bridge's module names
                self.peft_model = get_peft_model(hf, lora)
            params = [p for p in self.peft_model.parameters() if p.requires_grad]
        else:
            params = []
            seen: set[int] = set()
            for p in hf.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    p.requires_grad_(True)
                    params.append(p)
            if self.config.kl_beta > 0:
                # The reference is the initial weights: a detached copy, called functionally.
                self._ref_params = {n: p.detach().clone() for n, p in hf.named_parameters()}
        if not params:
            raise TrainingError(
                "No trainable parameters.", hint="Check finetune and the LoRA settings."
            )
        self.trainable_parameters: list[Tensor] = params

    # ------------------------------------------------------------------ public API

    @property
    def out_dir(self) -> Path | None:
        """Folder of metrics and checkpoints, or ``None``."""
        return Path(self.config.out_dir) if self.config.out_dir else None

    def learning_rate(self, step: int | None = None) -> float:
        """LR at ``step`` (default: the next): ``lr * cosine_multiplier(step)`` (paper J.3)."""
        s = self.global_step if step is None else step
        mult = cosine_multiplier(s, self.config.schedule_steps, self.config.schedule_fraction)
        return self.config.lr * mult

    def entropy_coef(self, step: int | None = None) -> float:
        """Entropy coefficient β(s) at ``step`` (default: the next), paper J.3."""
        s = self.global_step if step is None else step
        return entropy_coefficient(
            s, self.config.entropy_beta0, self.config.schedule_steps, self.config.schedule_fraction
        )

    def step(self) -> dict[str, Any]:
        """Run one training step (rollouts or SFT data, loss, one optimizer update per epoch).

        Returns:
            The step's metrics (also appended to :attr:`history` and ``metrics.jsonl``).

        Raises:
            TrainingError: if the gradient is not finite.
        """
        if self.global_step == 0:
            self._check_fresh_out_dir()
        started = time.perf_counter()
        metrics = self._sft_step() if self.config.loss == "sft" else self._rl_step()
        metrics["step_s"] = time.perf_counter() - started
        self.global_step += 1
        self.history.append(metrics)
        self._write_metrics(metrics)
        every = self.config.checkpoint_every
        if every > 0 and self.global_step % every == 0:
            self.save_checkpoint()
        return metrics

    def _check_fresh_out_dir(self) -> None:
        """A new run must not write into another run's folder: its metrics would be appended
        to the old ones and ``latest_checkpoint`` could pick the old run's step."""
        out = self.out_dir
        if out is None or not out.is_dir():
            return
        old_checkpoints = sorted(p.name for p in out.glob("checkpoint-*"))
        metrics = out / "metrics.jsonl"
        old_metrics = metrics.is_file() and metrics.stat().st_size > 0
        if old_checkpoints or old_metrics:
            found = old_checkpoints[-1] if old_checkpoints else "metrics.jsonl"
            raise TrainingError(
                f"out_dir {out} already holds a training run ({found}).",
                hint="Continue it with GRPOTrainer.resume(out_dir), or pass a new out_dir "
                "(or delete the old run).",
            )

    def train(self, steps: int) -> list[dict[str, Any]]:
        """Run ``steps`` more training steps with a progress bar.

        Args:
            steps: Number of steps to run (the step counter continues from :attr:`global_step`).

        Returns:
            The metrics of these steps.
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise TrainingError(f"steps must be an integer >= 0, got {steps!r}.", hint="E.g. 50.")
        from tqdm.auto import tqdm

        out: list[dict[str, Any]] = []
        bar = tqdm(
            total=steps,
            disable=not self.config.progress,
            desc=f"{self.config.loss} step",
            initial=0,
        )
        try:
            for _ in range(steps):
                metrics = self.step()
                out.append(metrics)
                key = "loss" if self.config.loss == "sft" else "reward_mean"
                bar.set_postfix(step=self.global_step, **{key: f"{metrics[key]:.3g}"})
                bar.update(1)
        finally:
            bar.close()
        return out

    def evaluate(
        self, n_mazes: int = 8, episodes_per_maze: int = 8, seed: int = 1_000_003
    ) -> dict[str, Any]:
        """Roll out the current policy on held-out mazes without updating it.

        Compare with the untrained policy on the same seed before extracting anything (DESIGN,
        "Learning signal").

        Returns:
            :func:`episode_metrics` of the episodes.
        """
        envs = self._envs(seed, n_mazes, episodes_per_maze)
        episodes = rollout(
            self.model,
            envs,
            temperature=self.config.temperature,
            seed=seed,
            actions=self.config.actions,
            batch_size=self.config.rollout_batch_size,
            template=self.config.template,
        )
        return episode_metrics(episodes, episodes_per_maze)

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Write a checkpoint (weights, optimizer, RNG states, step) and return its folder.

        The default folder is ``out_dir/checkpoint-{global_step:06d}``.
        """
        from welfare_lens.rl.checkpoint import save_trainer

        return save_trainer(self, path)

    @classmethod
    def resume(
        cls,
        path: str | Path,
        model: Any = None,
        *,
        env_factory: EnvFactory | None = None,
        out_dir: str | Path | None = None,
    ) -> GRPOTrainer:
        """Continue a run exactly from a checkpoint (or the latest one in a run folder).

        Args:
            path: A checkpoint folder, or a run's ``out_dir`` (its latest checkpoint is used).
            model: The *untrained* base model; loaded from the recorded spec if ``None``.
            env_factory: The run's custom environment factory, if it had one.
            out_dir: Write metrics and checkpoints elsewhere (default: the run's).

        Returns:
            A trainer whose next :meth:`step` is the one after the checkpoint.
        """
        from welfare_lens.rl.checkpoint import resume_trainer

        return resume_trainer(cls, path, model, env_factory=env_factory, out_dir=out_dir)

    # ------------------------------------------------------------------ RL step

    def _batch_seed(self, step: int) -> int:
        return _derive_seed(self.config.seed, step, _BATCH_STREAM)

    def _envs(self, seed: int, n_mazes: int, group: int) -> Sequence[TurnEnv]:
        if self.env_factory is not None:
            envs = list(self.env_factory(seed))
            if len(envs) != n_mazes * group:
                raise TrainingError(
                    f"env_factory returned {len(envs)} environments, expected "
                    f"{n_mazes} x {group} = {n_mazes * group}.",
                    hint="Return mazes_per_step * episodes_per_maze environments, group by group.",
                )
            return envs
        return maze_groups(
            self.maze_cfg,
            n_mazes,
            group,
            seed,
            shared_episode_seed=self.config.shared_episode_seed,
        )

    def _advantages(self, batch: dict[str, Tensor], m: int, g: int) -> Tensor:
        rewards = batch["rewards"].double()
        turn_mask = batch["turn_mask"]
        if self.config.loss == "reinforce":
            rtg = returns_to_go(rewards, turn_mask)
            adv = reinforce_advantages(rtg.reshape(m, g, -1), turn_mask.reshape(m, g, -1))
            return adv.reshape(m * g, -1).float()
        returns = (rewards * turn_mask).sum(dim=1).reshape(m, g)
        adv = group_advantages(returns, scale_std=self.loss_cfg.scale_std).reshape(-1, 1)
        return (adv * turn_mask).float()

    def _rl_step(self) -> dict[str, Any]:
        cfg = self.config
        m, g = cfg.mazes_per_step, cfg.episodes_per_maze
        seed = self._batch_seed(self.global_step)
        t0 = time.perf_counter()
        stats = RolloutStats()
        envs = self._envs(seed, m, g)
        episodes = rollout(
            self.model,
            envs,
            temperature=cfg.temperature,
            seed=seed,
            actions=cfg.actions,
            batch_size=cfg.rollout_batch_size,
            template=cfg.template,
            groups=[i // g for i in range(m * g)],
            stats=stats,
        )
        rollout_s = time.perf_counter() - t0
        metrics: dict[str, Any] = {"step": self.global_step}
        metrics.update(episode_metrics(episodes, g))

        t1 = time.perf_counter()
        batch = collate(episodes, self.pad_id)
        adv = self._advantages(batch, m, g)
        update = self._update(batch, adv)
        metrics.update(update)
        metrics["lr"] = self.learning_rate(self.global_step)
        metrics["entropy_coef"] = self.entropy_coef(self.global_step)
        metrics["rollout_tokens"] = stats.fed_tokens
        metrics["rollout_s"] = rollout_s
        metrics["update_s"] = time.perf_counter() - t1
        metrics["tokens_per_s"] = stats.tokens_per_s
        self._check_signal(metrics)
        return metrics

    def _check_signal(self, metrics: dict[str, Any]) -> None:
        if metrics.get("frac_reward_zero_std", 0.0) >= 1.0:
            self._no_signal_steps += 1
            if self._no_signal_steps == _NO_SIGNAL_WARN_AFTER:
                warnings.warn(
                    f"{_NO_SIGNAL_WARN_AFTER} steps in a row had no learning signal: every "
                    "group's returns were equal (frac_reward_zero_std = 1). Raise the "
                    "temperature or entropy_beta0, or enlarge the groups.",
                    RuntimeWarning,
                    stacklevel=3,
                )
        else:
            self._no_signal_steps = 0

    def _micro_batches(self, n: int, width: int | None = None) -> list[slice]:
        """Row slices of a batch of ``n`` episodes padded to ``width`` tokens."""
        size = self.config.micro_batch_size or n
        if self.config.micro_batch_tokens is not None and width:
            size = min(size, max(1, self.config.micro_batch_tokens // width))
        if self._micro_limit is not None:
            size = min(size, self._micro_limit)
        return [slice(i, min(i + size, n)) for i in range(0, n, size)]

    def _ref_action_logits(self, ids: Tensor, positions: Tensor) -> Tensor | None:
        if self.config.kl_beta <= 0:
            return None
        with torch.no_grad():
            if self.peft_model is not None:
                with self.peft_model.disable_adapter():
                    return action_logits(self.model, ids, positions, self.allowed)
            hf = self.model.original_model
            ref = self._ref_params
            assert ref is not None

            def reference(input_ids: Tensor, **kwargs: Any) -> Any:
                out = torch.func.functional_call(hf, ref, (input_ids,), kwargs)
                return out.logits

            return action_logits(reference, ids, positions, self.allowed)

    def compute_gradients(self, episodes: Sequence[Episode]) -> dict[str, Any]:
        """Accumulate the step loss's gradients on ``episodes`` without updating the weights.

        For inspection and tests: the gradients are left in the trainable parameters' ``.grad``
        exactly as one on-policy update would compute them (micro-batches included).

        Args:
            episodes: ``k * episodes_per_maze`` episodes in group order (e.g. from
                :func:`~welfare_lens.rl.rollout.rollout` on :func:`maze_groups` environments).

        Returns:
            The loss and its statistics.
        """
        g = self.config.episodes_per_maze
        if not episodes or len(episodes) % g:
            raise TrainingError(
                f"Got {len(episodes)} episodes, not a multiple of episodes_per_maze = {g}.",
                hint="Pass whole groups, in group order.",
            )
        batch = collate(episodes, self.pad_id)
        adv = self._advantages(batch, len(episodes) // g, g)
        self.optimizer.zero_grad(set_to_none=True)
        return self._backward(batch, adv, None, None)

    def _update(self, batch: dict[str, Tensor], adv: Tensor) -> dict[str, Any]:
        """One optimizer update; on out-of-memory, retried with half the micro-batch size."""
        while True:
            try:
                return self._update_once(batch, adv)
            except RuntimeError as err:  # torch.OutOfMemoryError is one
                size = self._micro_batches(*batch["input_ids"].shape)[0].stop
                if not is_out_of_memory(err) or self._updated_in_step:
                    raise
                if size <= 1:
                    raise ResourceError(
                        "One episode does not fit in memory for the update.",
                        hint="Shorten episodes (turns), use LoRA, or a device with more memory.",
                    ) from err
                self.optimizer.zero_grad(set_to_none=True)
                free_memory()
                warn_back_off("micro_batch_size", size, size // 2)
                self._micro_limit = size // 2

    def _update_once(self, batch: dict[str, Tensor], adv: Tensor) -> dict[str, Any]:
        self._updated_in_step = False
        cfg = self.config
        dev = self._device
        ids = batch["input_ids"].to(dev)
        positions = batch["action_positions"].to(dev)
        parts = self._micro_batches(*ids.shape)
        refs = [self._ref_action_logits(ids[s], positions[s]) for s in parts]
        old: list[Tensor | None] | None = None
        if cfg.updates_per_batch > 1:
            # PPO epochs: the ratio is taken against the policy before this batch's updates.
            chosen = batch["action_index"].to(dev)
            turn_mask = batch["turn_mask"].to(dev)
            slots = torch.arange(len(cfg.actions), device=dev)
            with torch.no_grad():
                old = [
                    restricted_logprobs(
                        action_logits(self.model, ids[s], positions[s], self.allowed),
                        chosen[s],
                        slots,
                        cfg.temperature,
                        mask=turn_mask[s],
                    )
                    for s in parts
                ]
        lr = self.learning_rate(self.global_step)
        out: dict[str, Any] = {}
        mismatch = 0.0
        for epoch in range(cfg.updates_per_batch):
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.zero_grad(set_to_none=True)
            out = self._backward(batch, adv, old, refs)
            if epoch == 0:
                mismatch = out["logp_mismatch"]
            out["grad_norm"] = self._clip_and_step()
            self._updated_in_step = True  # weights changed: a retry would not be the same step
        out["logp_mismatch"] = mismatch
        return out

    def _backward(
        self,
        batch: dict[str, Tensor],
        adv: Tensor,
        old: Sequence[Tensor | None] | None,
        refs: Sequence[Tensor | None] | None,
    ) -> dict[str, Any]:
        """One forward/backward pass over the batch in micro-batches (gradients accumulate)."""
        cfg = self.config
        dev = self._device
        n = batch["input_ids"].shape[0]
        ids = batch["input_ids"].to(dev)
        positions = batch["action_positions"].to(dev)
        chosen = batch["action_index"].to(dev)
        turn_mask = batch["turn_mask"].to(dev)
        neighbours = batch["neighbours"].to(dev)
        sampled = batch["logprobs"].to(dev)
        n_tokens = float(turn_mask.sum())
        beta = self.entropy_coef(self.global_step)
        parts = self._micro_batches(n, ids.shape[1])
        if refs is None:
            refs = [self._ref_action_logits(ids[s], positions[s]) for s in parts]
        totals: dict[str, float] = {}
        ratio_max = 0.0
        mismatch = 0.0
        loss_sum = 0.0
        g = cfg.episodes_per_maze
        rows = torch.arange(n, device=dev)
        for i, s in enumerate(parts):
            with self._dropout_mode():
                if cfg.share_update_prefix:
                    z = shared_prefix_action_logits(
                        self.model, ids[s], positions[s], self.allowed, turn_mask[s], rows[s] // g
                    )
                else:
                    z = action_logits(self.model, ids[s], positions[s], self.allowed)
            loss, stats = grpo_loss(
                z,
                chosen[s],
                turn_mask[s],
                adv[s].to(dev),
                loss_cfg=self.loss_cfg,
                temperature=cfg.temperature,
                entropy_coef=beta,
                neighbours=neighbours[s],
                old_logp=None if old is None else old[i],
                ref_logits=refs[i],
                n_sequences=n,
                n_tokens=n_tokens,
            )
            loss.backward()
            loss_sum += float(loss.detach())
            weight = stats.pop("n_tokens")
            ratio_max = max(ratio_max, stats.pop("ratio_max"))
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + value * weight
            with torch.no_grad():
                # How far the recomputed log-probs are from those recorded at sampling: a
                # temperature or masking bug shows up here first (TRL #4159).
                lp = torch.log_softmax(z.detach().float() / cfg.temperature, -1)
                lp = lp.gather(-1, chosen[s].unsqueeze(-1)).squeeze(-1)
                diff = (lp - sampled[s]).abs()[turn_mask[s]]
                if diff.numel():
                    mismatch = max(mismatch, float(diff.max()))
        out: dict[str, Any] = {"loss": loss_sum}
        for key, value in totals.items():
            out[key] = value / max(n_tokens, 1.0)
        out.setdefault("kl", None)
        out["ratio_max"] = ratio_max
        out["logp_mismatch"] = mismatch
        return out

    @contextlib.contextmanager
    def _dropout_mode(self) -> Iterator[None]:
        """Train mode for the loss's forward pass only when LoRA dropout is on.

        The model otherwise stays in eval mode, so rollouts and updates see the same function
        (and with one update per batch the ratio is exactly 1 either way: the old log-probs are
        those of this very forward pass).
        """
        if self.config.finetune != "lora" or self.config.lora_dropout <= 0:
            yield
            return
        self.model.train()
        try:
            yield
        finally:
            self.model.eval()

    def _clip_and_step(self) -> float:
        max_norm = self.config.max_grad_norm
        norm = torch.nn.utils.clip_grad_norm_(
            self.trainable_parameters, max_norm if max_norm is not None else math.inf
        )
        value = float(norm)
        if not math.isfinite(value):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingError(
                f"Step {self.global_step}: the gradient norm is {value}.",
                hint="Lower the learning rate, or check the model's dtype (fp32 is safest).",
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return value

    # ------------------------------------------------------------------ SFT step

    def sft_batch(self, step: int | None = None) -> tuple[dict[str, Tensor], list[float]]:
        """The SFT batch of ``step``: OptimalPolicy trajectories on fresh mazes (note B-12).

        Returns:
            ``(batch, returns)``: a :func:`~welfare_lens.rl.rollout.collate`-like dict
            (``input_ids``, ``action_positions``, ``action_ids``, ``action_index``,
            ``turn_mask``) and each trajectory's return.
        """
        cfg = self.config
        seed = self._batch_seed(self.global_step if step is None else step)
        policy = OptimalPolicy(horizon=cfg.sft_horizon)
        index_of = {int(t): i for i, t in enumerate(self.allowed.tolist())}
        rows: list[tuple[Tensor, Tensor]] = []
        returns: list[float] = []
        for i in range(cfg.sft_batch_size):
            traj = run_episode(policy, self.maze_cfg, _derive_seed(seed, i) % (2**31))
            rendered = render_chat(self.model.tokenizer, traj.messages, template=cfg.template)
            pos = rendered.assistant_content_positions
            if pos.numel() != traj.n_turns:
                raise TrainingError(
                    "An SFT move is not exactly one token in the assistant position.",
                    hint="Use a tokenizer whose N/E/S/W are single tokens after the prompt.",
                )
            rows.append((rendered.input_ids, pos))
            returns.append(traj.total_reward)
        width = max(int(r[0].shape[0]) for r in rows)
        turns = max(int(r[1].shape[0]) for r in rows)
        n = len(rows)
        batch = {
            "input_ids": torch.full((n, width), self.pad_id, dtype=torch.long),
            "action_positions": torch.ones(n, turns, dtype=torch.long),
            "action_ids": torch.zeros(n, turns, dtype=torch.long),
            "action_index": torch.zeros(n, turns, dtype=torch.long),
            "turn_mask": torch.zeros(n, turns, dtype=torch.bool),
        }
        for row, (ids, pos) in enumerate(rows):
            batch["input_ids"][row, : ids.shape[0]] = ids
            t = int(pos.shape[0])
            batch["action_positions"][row, :t] = pos
            batch["action_ids"][row, :t] = ids[pos]
            batch["action_index"][row, :t] = torch.tensor([index_of[int(x)] for x in ids[pos]])
            batch["turn_mask"][row, :t] = True
        return batch, returns

    def _sft_step(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        batch, returns = self.sft_batch()
        data_s = time.perf_counter() - t0
        dev = self._device
        ids = batch["input_ids"].to(dev)
        positions = batch["action_positions"].to(dev)
        targets = batch["action_ids"].to(dev)
        turn_mask = batch["turn_mask"].to(dev)
        n_tokens = float(turn_mask.sum())
        lr = self.learning_rate(self.global_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        t1 = time.perf_counter()
        loss_sum = 0.0
        correct = 0.0
        p_target = 0.0
        for s in self._micro_batches(*ids.shape):
            prev = positions[s] - 1
            keep = torch.unique(prev.flatten(), sorted=True)
            logits = forward_logits(self.model, ids[s], keep)
            slot = torch.searchsorted(keep, prev.contiguous())
            logits = logits.gather(1, slot.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
            loss = sft_loss(logits, targets[s], turn_mask[s], n_tokens=n_tokens)
            loss.backward()
            loss_sum += float(loss.detach())
            with torch.no_grad():
                z = logits[..., self.allowed].float()
                hit = z.argmax(-1) == batch["action_index"][s].to(dev)
                correct += float(hit[turn_mask[s]].sum())
                full = torch.log_softmax(logits.float(), -1)
                pt = full.gather(-1, targets[s].unsqueeze(-1)).squeeze(-1).exp()
                p_target += float(pt[turn_mask[s]].sum())
            del logits
        grad_norm = self._clip_and_step()
        return {
            "step": self.global_step,
            "loss": loss_sum,
            "accuracy": correct / max(n_tokens, 1.0),
            "p_target": p_target / max(n_tokens, 1.0),
            "data_return_mean": float(np.mean(returns)),
            "grad_norm": grad_norm,
            "lr": lr,
            "data_s": data_s,
            "update_s": time.perf_counter() - t1,
        }

    # ------------------------------------------------------------------ metrics file

    def _write_metrics(self, metrics: dict[str, Any]) -> None:
        out = self.out_dir
        if out is None:
            return
        out.mkdir(parents=True, exist_ok=True)
        with (out / "metrics.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(metrics, sort_keys=True) + "\n")
            handle.flush()

    def __repr__(self) -> str:
        return (
            f"GRPOTrainer(loss={self.config.loss!r}, finetune={self.config.finetune!r}, "
            f"step={self.global_step}, lr={self.config.lr})"
        )
