"""Loss functions of the compact GRPO trainer: pure functions on tensors.

The paper trains with Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-like training") and a
dual-clip PPO surrogate (Ye et al. 2020, "Mastering complex control in MOBA games with deep RL"),
plus an equalized entropy bonus with a cosine schedule (paper appendix J.3), an optional k3 KL
penalty and, as controls, token-level REINFORCE (appendix Q.1) and SFT. Every function here is
stateless and composable; a trainer combines them, e.g. for Dr. GRPO::

    logp = token_logprobs(logits[:, :-1], ids[:, 1:], temperature=0.7)
    per_tok, stats = policy_loss(logp, old_logp, adv, mask=action_mask)
    per_tok = per_tok + cfg.kl_coef * k3_kl(logp, ref_logp) - beta * entropy_per_token
    loss = aggregate(per_tok, action_mask, mode="dr_grpo", Z=cfg.Z)

Conventions follow TRL's ``GRPOTrainer`` (huggingface/trl 1.16) where the paper is silent: k3 KL,
Bessel-corrected group std plus ``1e-4``, temperature-scaled fp32 log-probs, and masks that mark
*positions* (action tokens) rather than being inferred from token values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from welfare_lens.errors import ShapeError, TrainingError

AggregationMode = Literal["dr_grpo", "grpo", "dapo"]
LossType = Literal["dr_grpo", "grpo", "dapo", "reinforce", "sft"]

AGGREGATION_MODES: tuple[str, ...] = get_args(AggregationMode)
LOSS_TYPES: tuple[str, ...] = get_args(LossType)

__all__ = [
    "AGGREGATION_MODES",
    "LOSS_TYPES",
    "AggregationMode",
    "LossConfig",
    "LossType",
    "PolicyLossStats",
    "aggregate",
    "equalized_entropy",
    "frac_zero_std",
    "group_advantages",
    "k3_kl",
    "policy_loss",
    "reinforce_advantages",
    "restricted_logprobs",
    "returns_to_go",
    "sft_loss",
    "token_logprobs",
]


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _check_ndim(name: str, x: Tensor, ndim: int, dims: str) -> None:
    if x.ndim != ndim:
        raise ShapeError(
            f"{name} must have {ndim} dims [{dims}], got shape {tuple(x.shape)}.",
            hint=f"Pass {name} shaped [{dims}].",
        )


def _check_same_shape(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ShapeError(
            f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}.",
            hint=f"{name_a} and {name_b} must be aligned position by position.",
        )


def _check_temperature(temperature: float) -> None:
    if not (math.isfinite(temperature) and temperature > 0):
        raise TrainingError(
            f"temperature must be a finite number > 0, got {temperature}.",
            hint="Use the sampling temperature (the paper samples at 0.7).",
        )


def _as_bool(mask: Tensor) -> Tensor:
    # Masks mark positions; any nonzero value means "active". Bool keeps torch.where exact.
    return mask if mask.dtype == torch.bool else mask != 0


def _fp32(x: Tensor) -> Tensor:
    # Log-prob maths in at least fp32: bf16 log-softmax loses ~3 significant digits, which is the
    # same order as the policy ratio's clip range. Keep fp64 if the caller asked for it.
    return x if x.dtype == torch.float64 else x.float()


# --------------------------------------------------------------------------------------------
# Log-probabilities
# --------------------------------------------------------------------------------------------


def _check_logits_targets(logits: Tensor, target_ids: Tensor) -> None:
    _check_ndim("logits", logits, 3, "batch seq vocab")
    _check_ndim("target_ids", target_ids, 2, "batch seq")
    if logits.shape[:2] != target_ids.shape:
        raise ShapeError(
            f"logits {tuple(logits.shape)} and target_ids {tuple(target_ids.shape)} disagree on "
            "[batch, seq].",
            hint="Shift by one position: logits[:, :-1] predicts ids[:, 1:].",
        )


def token_logprobs(
    logits: Float[Tensor, "batch seq vocab"],
    target_ids: Int[Tensor, "batch seq"],
    temperature: float = 1.0,
) -> Float[Tensor, "batch seq"]:
    """Log-probability of each target token under ``softmax(logits / temperature)``, in fp32.

    The caller handles the one-position shift of causal LMs: the logits at position ``t`` predict
    token ``t + 1``, so pass ``logits[:, :-1]`` with ``ids[:, 1:]``.

    Logits are divided by the *sampling* temperature before the log-softmax (TRL PR #3029; TRL
    issue #4159 shows an importance ratio of 2.0 when this is forgotten), so that the log-probs
    recomputed for the loss are those of the distribution the rollouts were drawn from.

    Args:
        logits: Unnormalised next-token scores, any float dtype.
        target_ids: Token id whose log-prob is wanted at each position.
        temperature: Sampling temperature (> 0).

    Returns:
        float32 (or float64 if the logits are) log-probs, shape [batch, seq].

    Raises:
        ShapeError: If the shapes do not line up.
        TrainingError: If the temperature is not positive.
    """
    _check_logits_targets(logits, target_ids)
    _check_temperature(temperature)
    logprobs = torch.log_softmax(_fp32(logits) / temperature, dim=-1)
    return logprobs.gather(-1, target_ids.long().unsqueeze(-1)).squeeze(-1)


def restricted_logprobs(
    logits: Float[Tensor, "batch seq vocab"],
    target_ids: Int[Tensor, "batch seq"],
    allowed_ids: Int[Tensor, " k"],
    temperature: float = 1.0,
    mask: Bool[Tensor, "batch seq"] | None = None,
) -> Float[Tensor, "batch seq"]:
    """Log-probability of each target under the softmax restricted to ``allowed_ids`` (fp32).

    The paper samples only among the four direction tokens N/E/S/W ("action masking", §2.2), so
    the policy whose ratio and gradient matter is the renormalised distribution over those ``K``
    tokens, not the full-vocabulary one. As in :func:`token_logprobs`, logits are divided by the
    temperature and the caller handles the one-position shift.

    Args:
        logits: Unnormalised next-token scores.
        target_ids: Token id at each position; must be one of ``allowed_ids`` where scored.
        allowed_ids: The ``K`` distinct token ids sampling was restricted to.
        temperature: Sampling temperature (> 0).
        mask: Positions to score (e.g. the direction-emission positions). Elsewhere (prompts,
            observations, padding) the target is not checked and the output is ``0``. ``None``
            scores every position.

    Returns:
        Restricted log-probs, shape [batch, seq]; ``exp`` sums to 1 over ``allowed_ids``.

    Raises:
        ShapeError: If the shapes do not line up, or ``allowed_ids`` has duplicates or ids
            outside the vocabulary.
        TrainingError: If a scored target is not an allowed id (the action mask is wrong).
    """
    _check_logits_targets(logits, target_ids)
    _check_ndim("allowed_ids", allowed_ids, 1, "k")
    _check_temperature(temperature)
    allowed = allowed_ids.long().to(logits.device)
    vocab = logits.shape[-1]
    if allowed.numel() == 0 or int(allowed.min()) < 0 or int(allowed.max()) >= vocab:
        raise ShapeError(
            f"allowed_ids must be non-empty ids in [0, {vocab}), got {allowed.tolist()}.",
            hint="Pass the token ids of the direction letters N/E/S/W.",
        )
    if allowed.unique().numel() != allowed.numel():
        # A duplicated id would be counted twice in the normaliser.
        raise ShapeError(
            f"allowed_ids has duplicates: {allowed.tolist()}.",
            hint="Each direction must map to a distinct token id.",
        )
    active = torch.ones_like(target_ids, dtype=torch.bool) if mask is None else _as_bool(mask)
    _check_same_shape("mask", active, "target_ids", target_ids)

    match = target_ids.long().unsqueeze(-1) == allowed  # [batch, seq, k]
    found = match.any(dim=-1)
    bad = active & ~found
    if bool(bad.any()):
        b, s = (int(i) for i in bad.nonzero()[0])
        raise TrainingError(
            f"target id {int(target_ids[b, s])} at position (batch={b}, seq={s}) is not one of "
            f"the allowed ids {allowed.tolist()}.",
            hint="Pass mask= marking only the action (direction-token) positions.",
        )
    restricted = torch.log_softmax(_fp32(logits[..., allowed]) / temperature, dim=-1)
    # argmax of the one-hot match is the target's slot in allowed_ids (0 where unscored).
    slot = match.to(torch.int8).argmax(dim=-1, keepdim=True)
    gathered = restricted.gather(-1, slot).squeeze(-1)
    return torch.where(active, gathered, torch.zeros_like(gathered))


# --------------------------------------------------------------------------------------------
# Advantages
# --------------------------------------------------------------------------------------------


def group_advantages(
    rewards: Float[Tensor, "n_groups group"],
    scale_std: bool = False,
    eps: float = 1e-4,
) -> Float[Tensor, "n_groups group"]:
    """Group-relative advantages ``A_i = R_i - mean_group(R)``, optionally divided by the std.

    Dr. GRPO (Liu et al. 2025) drops the division by the group std of the original GRPO, because
    it up-weights groups whose rewards barely differ; the paper trains without it (B-3). With
    ``scale_std=True`` this matches TRL's ``scale_rewards="group"``: divide by the
    Bessel-corrected (ddof=1) std plus ``eps = 1e-4``.

    A group of size 1 has no baseline other than itself, so its advantage is 0 (TRL turns the
    NaN std into 0 the same way).

    Args:
        rewards: Scalar return of each of the ``group`` rollouts of each prompt (maze).
        scale_std: Divide by ``std + eps`` (original GRPO). Off for Dr. GRPO.
        eps: Added to the std before dividing.

    Returns:
        Advantages in the rewards' float dtype (float32 for integer rewards).
    """
    _check_ndim("rewards", rewards, 2, "n_groups group")
    r = rewards if rewards.is_floating_point() else rewards.float()
    if r.shape[1] <= 1:
        return torch.zeros_like(r)
    centred = r - r.mean(dim=1, keepdim=True)
    if scale_std:
        centred = centred / (r.std(dim=1, correction=1, keepdim=True) + eps)
    return centred


def frac_zero_std(rewards: Float[Tensor, "n_groups group"], atol: float = 1e-8) -> float:
    """Fraction of groups whose rewards are all equal (so every advantage is 0: no signal).

    TRL logs this as ``frac_reward_zero_std``; when it reaches 1 the gradient is exactly zero
    (TRL issue #3857). A group is "zero std" when ``max - min <= atol`` (TRL uses
    ``isclose(std, 0)``); a group of size 1 always counts.

    Args:
        rewards: Rewards grouped by prompt.
        atol: Tolerance on the within-group range.

    Returns:
        A float in [0, 1]; 0.0 for an empty batch.
    """
    _check_ndim("rewards", rewards, 2, "n_groups group")
    if rewards.shape[0] == 0:
        return 0.0
    if rewards.shape[1] == 0:
        return 1.0
    spread = rewards.amax(dim=1) - rewards.amin(dim=1)
    return float((spread.abs() <= atol).float().mean())


def returns_to_go(
    turn_rewards: Float[Tensor, "batch turns"],
    turn_mask: Bool[Tensor, "batch turns"],
) -> Float[Tensor, "batch turns"]:
    """Undiscounted returns-to-go ``G_t = sum_{t' >= t} m_t' r_t'`` (γ = 1, paper appendix Q.1).

    Masked turns (after the episode ended, or padding) contribute no reward and get ``G = 0``.

    Args:
        turn_rewards: Per-turn reward ``r_t``.
        turn_mask: Which turns took place (nonzero = active).

    Returns:
        Returns-to-go, zero where masked.
    """
    _check_ndim("turn_rewards", turn_rewards, 2, "batch turns")
    _check_same_shape("turn_mask", turn_mask, "turn_rewards", turn_rewards)
    active = _as_bool(turn_mask)
    r = turn_rewards if turn_rewards.is_floating_point() else turn_rewards.float()
    r = torch.where(active, r, torch.zeros_like(r))
    # Reverse cumulative sum = suffix sum.
    g = r.flip(-1).cumsum(-1).flip(-1)
    return torch.where(active, g, torch.zeros_like(g))


def reinforce_advantages(
    returns: Float[Tensor, "n_groups group turns"],
    active: Bool[Tensor, "n_groups group turns"],
) -> Float[Tensor, "n_groups group turns"]:
    """Token-level REINFORCE advantages with a per-position group baseline (appendix Q.1).

    ``b_t = sum_i m_{i,t} G_{i,t} / sum_i m_{i,t}`` is the mean return-to-go at turn ``t`` over
    the members of the group still active at that turn, and ``A_{i,t} = (G_{i,t} - b_t) m_{i,t}``.
    Positions where no member is active get ``A = 0``. Dr. GRPO differs only in using one
    advantage per rollout (:func:`group_advantages`) broadcast to every turn.

    Args:
        returns: Returns-to-go ``G_{i,t}`` (see :func:`returns_to_go`).
        active: Mask ``m_{i,t}`` of members still active at turn ``t``.

    Returns:
        Per-turn advantages; broadcast each to the tokens of its turn.
    """
    _check_ndim("returns", returns, 3, "n_groups group turns")
    _check_same_shape("active", active, "returns", returns)
    m = _as_bool(active)
    g = returns if returns.is_floating_point() else returns.float()
    mf = m.to(g.dtype)
    count = mf.sum(dim=1, keepdim=True)
    baseline = (g * mf).sum(dim=1, keepdim=True) / count.clamp(min=1.0)
    adv = g - baseline
    return torch.where(m, adv, torch.zeros_like(adv))


# --------------------------------------------------------------------------------------------
# Policy-gradient surrogate
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyLossStats:
    """Diagnostics of :func:`policy_loss`, over the masked (action) tokens.

    Attributes:
        clip_frac_low: Tokens with ``A < 0`` and ``r < 1 - eps_low`` (lower clip active; TRL's
            ``clip_ratio/low_mean``).
        clip_frac_high: Tokens with ``A > 0`` and ``r > 1 + eps_high`` (TRL's
            ``clip_ratio/high_mean``).
        clip_frac_dual: Tokens with ``A < 0`` where the dual clip ``c * A`` bounds the objective.
        clip_frac: Tokens where any clip is active (their gradient is zero).
        ratio_mean: Mean importance ratio (1 when on-policy).
        ratio_max: Largest importance ratio (large values flag a temperature or policy mismatch).
        n_tokens: Number of tokens the statistics are over.
    """

    clip_frac_low: float
    clip_frac_high: float
    clip_frac_dual: float
    clip_frac: float
    ratio_mean: float
    ratio_max: float
    n_tokens: int

    def to_dict(self) -> dict[str, float]:
        """Return the statistics as a flat ``{name: value}`` dict for logging."""
        return {
            "clip_frac_low": self.clip_frac_low,
            "clip_frac_high": self.clip_frac_high,
            "clip_frac_dual": self.clip_frac_dual,
            "clip_frac": self.clip_frac,
            "ratio_mean": self.ratio_mean,
            "ratio_max": self.ratio_max,
            "n_tokens": float(self.n_tokens),
        }


def policy_loss(
    logp: Float[Tensor, "batch seq"],
    old_logp: Float[Tensor, "batch seq"],
    advantages: Float[Tensor, "batch seq"],
    eps_low: float = 0.2,
    eps_high: float | None = None,
    dual_clip_c: float | None = 3.0,
    log_ratio_clamp: float | None = 20.0,
    mask: Bool[Tensor, "batch seq"] | None = None,
) -> tuple[Float[Tensor, "batch seq"], PolicyLossStats]:
    """Per-token dual-clip PPO loss (Ye et al. 2020), as used by the paper's Dr. GRPO (Q.1).

    With ``r = exp(clamp(logp - old_logp, -L, L))`` (the paper clamps the log-ratio to ±20 so a
    stale token cannot overflow ``exp``)::

        surrogate = min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A)
        objective = max(surrogate, c * A)  if A < 0  else surrogate
        loss      = -objective

    The dual clip bounds the loss of a token with ``A < 0`` whose ratio has grown past ``c``:
    without it ``-r * A`` is unbounded. Aggregation over tokens is left to :func:`aggregate`.

    On-policy (one update per batch, TRL's ``num_iterations = 1``) pass
    ``old_logp = logp.detach()``: the ratio is then exactly 1, no clip fires, the loss *value*
    is ``-A`` (≈ 0 after aggregation over a centred group; TRL issue #3452) and its gradient is
    the REINFORCE gradient ``-A * grad(logp)``.

    Args:
        logp: Log-probs of the sampled tokens under the current policy (with grad).
        old_logp: Log-probs under the policy that sampled them (no grad).
        advantages: Per-token advantages (broadcast per rollout or per turn).
        eps_low: Lower clip range ``1 - eps_low`` (paper: 0.2).
        eps_high: Upper clip range ``1 + eps_high``; ``None`` means ``eps_low`` (DAPO's
            "clip-higher" uses 0.28).
        dual_clip_c: Dual-clip constant ``c > 1`` (paper: 3.0); ``None`` disables it.
        log_ratio_clamp: Clamp of ``logp - old_logp`` (paper: 20); ``None`` disables it.
        mask: Tokens the statistics are computed over (the loss itself is not masked here).
            ``None`` uses every token.

    Returns:
        ``(per_token_loss, stats)``: the loss in fp32 and :class:`PolicyLossStats`.

    Raises:
        ShapeError: If the shapes differ.
        TrainingError: If a hyperparameter is out of range.
    """
    _check_same_shape("old_logp", old_logp, "logp", logp)
    _check_same_shape("advantages", advantages, "logp", logp)
    _validate_clip(eps_low, eps_high, dual_clip_c, log_ratio_clamp)
    eps_hi = eps_low if eps_high is None else eps_high

    log_ratio = _fp32(logp) - _fp32(old_logp)
    if log_ratio_clamp is not None:
        log_ratio = log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp)
    ratio = torch.exp(log_ratio)
    adv = _fp32(advantages).detach()  # advantages are constants of the policy gradient

    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_hi) * adv
    surrogate = torch.minimum(unclipped, clipped)
    objective = surrogate
    if dual_clip_c is not None:
        dual = dual_clip_c * adv
        objective = torch.where(adv < 0, torch.maximum(surrogate, dual), surrogate)
    per_token_loss = -objective

    with torch.no_grad():
        active = torch.ones_like(ratio, dtype=torch.bool) if mask is None else _as_bool(mask)
        _check_same_shape("mask", active, "logp", logp)
        n = int(active.sum())
        low = (adv < 0) & (ratio < 1.0 - eps_low)
        high = (adv > 0) & (ratio > 1.0 + eps_hi)
        if dual_clip_c is not None:
            dual_on = (adv < 0) & (dual_clip_c * adv > surrogate)
        else:
            dual_on = torch.zeros_like(low)

        def frac(flags: Tensor) -> float:
            return float((flags & active).sum()) / n if n > 0 else 0.0

        stats = PolicyLossStats(
            clip_frac_low=frac(low),
            clip_frac_high=frac(high),
            clip_frac_dual=frac(dual_on),
            clip_frac=frac(low | high | dual_on),
            ratio_mean=float(ratio[active].mean()) if n > 0 else 1.0,
            ratio_max=float(ratio[active].max()) if n > 0 else 1.0,
            n_tokens=n,
        )
    return per_token_loss, stats


def _validate_clip(
    eps_low: float,
    eps_high: float | None,
    dual_clip_c: float | None,
    log_ratio_clamp: float | None,
) -> None:
    if not 0.0 <= eps_low < 1.0:
        raise TrainingError(
            f"eps_low must be in [0, 1), got {eps_low}.",
            hint="The paper uses eps_low = 0.2.",
        )
    if eps_high is not None and not (math.isfinite(eps_high) and eps_high >= 0.0):
        raise TrainingError(
            f"eps_high must be None or a finite number >= 0, got {eps_high}.",
            hint="None reuses eps_low; DAPO's clip-higher uses 0.28.",
        )
    if dual_clip_c is not None and not (math.isfinite(dual_clip_c) and dual_clip_c > 1.0):
        raise TrainingError(
            f"dual_clip_c must be None or > 1, got {dual_clip_c}.",
            hint="Ye et al. (2020) require c > 1; the paper uses c = 3.0.",
        )
    if log_ratio_clamp is not None and not log_ratio_clamp > 0.0:
        raise TrainingError(
            f"log_ratio_clamp must be None or > 0, got {log_ratio_clamp}.",
            hint="The paper clamps the log-ratio to [-20, 20].",
        )


# --------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------


def aggregate(
    per_token: Float[Tensor, "batch seq"],
    mask: Bool[Tensor, "batch seq"],
    mode: AggregationMode = "dr_grpo",
    Z: float = 2048.0,
    n_sequences: int | None = None,
    n_tokens: float | None = None,
) -> Float[Tensor, ""]:
    """Reduce a per-token loss to a scalar over the masked (action) tokens.

    Modes (TRL ``loss_type`` names):

    * ``"dr_grpo"``: ``sum_b sum_t l m / (Z * n_sequences)``, Dr. GRPO's "seq-mean-token-sum"
      with a constant ``Z`` (paper: 2048). It equals TRL's ``dr_grpo`` when ``Z`` is
      ``max_completion_length``. No per-sequence length normalisation, hence no length bias.
    * ``"grpo"``: ``sum_b (sum_t l m / sum_t m) / n_sequences``, the original GRPO mean of
      per-sequence token means (length-biased; Liu et al. 2025). A sequence without active
      tokens contributes 0 but still counts in ``n_sequences`` (as in TRL).
    * ``"dapo"``: ``sum_b sum_t l m / n_tokens``, a token-level mean (DAPO; TRL's default).

    Gradient accumulation: pass the *totals of the whole accumulation step* as ``n_sequences``
    and ``n_tokens``. Each micro-batch loss is then a partial sum, and summing the micro-batch
    losses gives exactly the full-batch loss (for ``"grpo"``: the sum of every sequence's token
    mean divided by the total number of sequences). Do not additionally divide by the number of
    micro-batches.

    Masked positions (prompts, observations, padding) are selected out with ``torch.where``, so
    they receive exactly zero gradient even if their loss is not finite.

    Args:
        per_token: Per-token loss, e.g. ``policy_loss(...)[0] + kl_coef * k3_kl(...)``.
        mask: Action-token mask (nonzero = counted).
        mode: ``"dr_grpo"``, ``"grpo"`` or ``"dapo"``.
        Z: Dr. GRPO's constant (``"dr_grpo"`` only).
        n_sequences: Number of sequences to divide by; defaults to this batch's ``batch``.
        n_tokens: Number of tokens to divide by (``"dapo"``); defaults to this batch's active
            tokens (at least 1).

    Returns:
        A scalar tensor.

    Raises:
        ShapeError: If the shapes differ.
        TrainingError: On an unknown mode or a non-positive normaliser.
    """
    _check_ndim("per_token", per_token, 2, "batch seq")
    _check_same_shape("mask", mask, "per_token", per_token)
    if mode not in AGGREGATION_MODES:
        raise TrainingError(
            f"unknown aggregation mode {mode!r}.",
            hint=f"Use one of {', '.join(AGGREGATION_MODES)}.",
        )
    active = _as_bool(mask)
    loss = _fp32(per_token)
    masked = torch.where(active, loss, torch.zeros_like(loss))
    n_seq = per_token.shape[0] if n_sequences is None else n_sequences
    if n_seq <= 0:
        raise TrainingError(
            f"n_sequences must be > 0, got {n_seq}.",
            hint="Pass the number of sequences in the whole accumulation step.",
        )
    if mode == "dr_grpo":
        if not Z > 0:
            raise TrainingError(f"Z must be > 0, got {Z}.", hint="The paper uses Z = 2048.")
        return masked.sum() / (Z * n_seq)
    if mode == "grpo":
        per_seq_tokens = active.sum(dim=1).clamp(min=1).to(masked.dtype)
        return (masked.sum(dim=1) / per_seq_tokens).sum() / n_seq
    # dapo
    n_tok = float(active.sum().clamp(min=1)) if n_tokens is None else float(n_tokens)
    if n_tok <= 0:
        raise TrainingError(
            f"n_tokens must be > 0, got {n_tok}.",
            hint="Pass the number of action tokens in the whole accumulation step.",
        )
    return masked.sum() / n_tok


# --------------------------------------------------------------------------------------------
# Regularisers and SFT
# --------------------------------------------------------------------------------------------


def k3_kl(
    logp: Float[Tensor, "batch seq"],
    ref_logp: Float[Tensor, "batch seq"],
) -> Float[Tensor, "batch seq"]:
    """Per-token k3 estimator of KL(π || π_ref): ``exp(d) - d - 1`` with ``d = ref_logp - logp``.

    Schulman's k3 estimator, used by TRL's ``GRPOTrainer`` and DeepSeekMath: unbiased for the
    sampled tokens and always ``>= 0`` (since ``e^d >= 1 + d``).

    Args:
        logp: Log-probs under the current policy (with grad).
        ref_logp: Log-probs under the reference (e.g. the LoRA model with the adapter disabled).

    Returns:
        Non-negative per-token KL estimates in fp32.
    """
    _check_same_shape("ref_logp", ref_logp, "logp", logp)
    d = _fp32(ref_logp) - _fp32(logp)
    # exp(d) - d - 1 cancels catastrophically for small d and came out at -6e-8 in fp32 (found by
    # the hypothesis test); expm1 keeps the d^2/2 term, and the clamp removes the last rounding.
    return (torch.expm1(d) - d).clamp_min(0.0)


def equalized_entropy(
    action_logits: Float[Tensor, "n 4"],
    tile_types: Int[Tensor, "n 4"],
    temperature: float = 1.0,
) -> Float[Tensor, " n"]:
    """Equalized entropy ``H_eq = sum_c H_c`` over tile classes (paper appendix J.3).

    At each action position the four moves (N, E, S, W, in that order in both inputs) are
    grouped by the tile type ``c`` they lead to, captured before the move resolves. For each class
    with at least two moves, ``H_c`` is the entropy of the softmax restricted to that class's
    logits; classes with a single move contribute 0. The bonus therefore pushes the policy to be
    indifferent *between moves onto the same kind of tile* (countering the base model's north
    bias) without rewarding indifference between Gold and Mold.

    Example: logits ``[1, 2, 0, 0]`` with tiles ``[Path, Path, Mold, Gold]`` give the entropy of
    ``softmax([1, 2])`` only.

    Args:
        action_logits: Logits of the four direction tokens at each action position.
        tile_types: Integer tile class of the neighbour in each direction.
        temperature: Divide logits by this first (the sampling temperature).

    Returns:
        ``H_eq`` per position in fp32 (nats). Mask and aggregate it like a per-token loss.
    """
    _check_ndim("action_logits", action_logits, 2, "n 4")
    _check_same_shape("tile_types", tile_types, "action_logits", action_logits)
    if tile_types.is_floating_point():
        raise ShapeError(
            f"tile_types must be integer class ids, got dtype {tile_types.dtype}.",
            hint="Encode tile types as ints, e.g. 0=Path, 1=Mold, 2=Gold.",
        )
    _check_temperature(temperature)
    z = _fp32(action_logits) / temperature
    h_eq = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
    neg_inf = torch.full_like(z, -math.inf)
    for c in tile_types.unique().tolist():
        member = tile_types == c
        has_class = member.sum(dim=-1) >= 2
        if not bool(has_class.any()):
            continue
        # Rows without >= 2 members of c use all logits so every softmax stays finite (a row of
        # all -inf would give NaN, whose gradient leaks through torch.where); they are zeroed.
        keep = member | ~has_class.unsqueeze(-1)
        zc = torch.where(keep, z, neg_inf)
        lse = torch.logsumexp(zc, dim=-1)
        p = torch.softmax(zc, dim=-1)
        # H = logsumexp(z) - sum_j p_j z_j; finite even though non-members are -inf in zc.
        h = lse - (p * torch.where(keep, z, torch.zeros_like(z))).sum(dim=-1)
        h_eq = h_eq + torch.where(has_class, h, torch.zeros_like(h))
    return h_eq


def sft_loss(
    logits: Float[Tensor, "batch seq vocab"],
    target_ids: Int[Tensor, "batch seq"],
    mask: Bool[Tensor, "batch seq"],
    n_tokens: float | None = None,
) -> Float[Tensor, ""]:
    """Cross-entropy on the masked (action) positions only, averaged over active tokens.

    The paper's SFT controls train on 50k programmatically found trajectories; the loss is taken
    on the assistant direction tokens only (B-12), so prompts and observations are masked out.
    As in :func:`token_logprobs`, the caller handles the one-position shift.

    Args:
        logits: Next-token logits.
        target_ids: Target token at each position.
        mask: Positions that count (nonzero = active).
        n_tokens: Divide by this instead of this batch's active-token count, e.g. the total of a
            gradient-accumulation step (summing micro-batch losses then gives the full mean).

    Returns:
        Scalar mean cross-entropy (fp32, nats).

    Raises:
        ShapeError: If the shapes do not line up.
        TrainingError: If no position is active (a broken mask would otherwise train on nothing).
    """
    _check_same_shape("mask", mask, "target_ids", target_ids)
    if n_tokens is None and not bool(_as_bool(mask).any()):
        raise TrainingError(
            "sft_loss got a mask with no active positions.",
            hint="Mark the assistant direction-token positions in mask.",
        )
    nll = -token_logprobs(logits, target_ids, temperature=1.0)
    return aggregate(nll, mask, mode="dapo", n_tokens=n_tokens)


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossConfig:
    """Hyperparameters of the training loss, validated on construction.

    Defaults are the paper's primary run (appendix Q, Table 28): Dr. GRPO without std scaling,
    dual-clip PPO with ``eps = 0.2``, ``c = 3.0`` and the log-ratio clamped to ±20, ``Z = 2048``,
    entropy coefficient ``β0 = 0.01``. The KL coefficient ``κ`` is not given by the paper; 0 (TRL's
    default) disables the reference model.

    Attributes:
        loss: ``"dr_grpo"``, ``"grpo"`` or ``"dapo"`` (group-relative advantages, aggregated by
            that mode), ``"reinforce"`` (per-turn returns-to-go with a per-position baseline,
            otherwise identical to Dr. GRPO, appendix Q.1) or ``"sft"`` (cross-entropy).
        scale_std: Divide group advantages by ``std + 1e-4`` (original GRPO; Dr. GRPO: off).
        eps_low: Lower clip range.
        eps_high: Upper clip range; ``None`` means ``eps_low``.
        dual_clip_c: Dual-clip constant ``c > 1``; ``None`` disables the dual clip.
        log_ratio_clamp: Clamp on the log importance ratio; ``None`` disables it.
        Z: Dr. GRPO's loss-scale constant.
        kl_coef: Coefficient ``κ`` of the k3 KL penalty.
        entropy_coef: Initial entropy coefficient ``β0`` of the equalized entropy bonus.
    """

    loss: LossType = "dr_grpo"
    scale_std: bool = False
    eps_low: float = 0.2
    eps_high: float | None = None
    dual_clip_c: float | None = 3.0
    log_ratio_clamp: float | None = 20.0
    Z: float = 2048.0
    kl_coef: float = 0.0
    entropy_coef: float = 0.01

    def __post_init__(self) -> None:
        """Validate the fields.

        Raises:
            TrainingError: On an unknown loss or an out-of-range value.
        """
        if self.loss not in LOSS_TYPES:
            raise TrainingError(
                f"unknown loss {self.loss!r}.",
                hint=f"Use one of {', '.join(LOSS_TYPES)}.",
            )
        _validate_clip(self.eps_low, self.eps_high, self.dual_clip_c, self.log_ratio_clamp)
        if not (math.isfinite(self.Z) and self.Z > 0):
            raise TrainingError(f"Z must be > 0, got {self.Z}.", hint="The paper uses Z = 2048.")
        if not (math.isfinite(self.kl_coef) and self.kl_coef >= 0):
            raise TrainingError(
                f"kl_coef must be >= 0, got {self.kl_coef}.",
                hint="Use 0 to disable the KL penalty (and the reference model).",
            )
        if not (math.isfinite(self.entropy_coef) and self.entropy_coef >= 0):
            raise TrainingError(
                f"entropy_coef must be >= 0, got {self.entropy_coef}.",
                hint="The paper uses 0.01 (0.05 for Qwen3-8B, 0.2 for REINFORCE, 0 for Base).",
            )

    @property
    def aggregation(self) -> AggregationMode:
        """Aggregation mode of the per-token loss.

        ``"reinforce"`` uses Dr. GRPO's (the paper keeps ``Z`` identical, Q.1); ``"sft"`` is a
        token mean, i.e. ``"dapo"`` (what :func:`sft_loss` computes).
        """
        if self.loss == "reinforce":
            return "dr_grpo"
        if self.loss == "sft":
            return "dapo"
        return self.loss

    @property
    def eps_high_effective(self) -> float:
        """Upper clip range actually used: ``eps_high``, or ``eps_low`` when it is ``None``."""
        return self.eps_low if self.eps_high is None else self.eps_high
