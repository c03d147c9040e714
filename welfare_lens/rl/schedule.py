"""Cosine schedule shared by the entropy coefficient and the learning rate (paper appendix J.3).

The paper decays the equalized-entropy coefficient as ``β(s) = β0 · ½(1 + cos(π p(s)))`` with
``p(s) = min(s / (S - 1) · f, 1)``, ``S = 500`` nominal steps and ``f = 1``, and states that "the
same multiplier scales the learning rate". Its checkpoints (steps 50-160) sit early in this
schedule, where the multiplier is still 0.9-0.75.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from welfare_lens.errors import TrainingError

__all__ = [
    "cosine_lr_scheduler",
    "cosine_multiplier",
    "entropy_coefficient",
    "learning_rate",
]


def cosine_multiplier(step: int, total_steps: int = 500, fraction: float = 1.0) -> float:
    """Cosine decay multiplier ``½(1 + cos(π p))`` with ``p = min(step / (S - 1) · f, 1)``.

    It is 1 at step 0 and reaches 0 at ``step = (S - 1) / f``, staying at 0 afterwards (the
    ``min`` clamps ``p``), so training past the nominal schedule continues with a zero
    coefficient rather than the cosine rising again.

    Args:
        step: Optimiser step, counted from 0.
        total_steps: Nominal schedule length ``S`` (paper: 500); at least 2.
        fraction: ``f``: the fraction of the schedule over which the decay completes is ``1/f``
            (paper: 1; ``f = 2`` reaches 0 half way).

    Returns:
        The multiplier in [0, 1].

    Raises:
        TrainingError: On a negative step, ``total_steps < 2`` or ``fraction <= 0``.
    """
    if step < 0:
        raise TrainingError(f"step must be >= 0, got {step}.", hint="Count steps from 0.")
    if total_steps < 2:
        # p divides by S - 1, so a one-step schedule is undefined.
        raise TrainingError(
            f"total_steps must be >= 2, got {total_steps}.",
            hint="The paper uses a nominal schedule of 500 steps.",
        )
    if not (math.isfinite(fraction) and fraction > 0):
        raise TrainingError(
            f"fraction must be a finite number > 0, got {fraction}.",
            hint="The paper uses fraction = 1.",
        )
    p = min(step / (total_steps - 1) * fraction, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * p))


def entropy_coefficient(
    step: int, beta0: float, total_steps: int = 500, fraction: float = 1.0
) -> float:
    """Entropy-bonus coefficient ``β(s) = β0 · cosine_multiplier(s)`` (paper appendix J.3).

    Args:
        step: Optimiser step, counted from 0.
        beta0: Initial coefficient (paper: 0.01 for the primary run).
        total_steps: Nominal schedule length ``S``.
        fraction: Schedule fraction ``f``.

    Returns:
        The coefficient at ``step``.
    """
    return beta0 * cosine_multiplier(step, total_steps, fraction)


def learning_rate(
    step: int, base_lr: float, total_steps: int = 500, fraction: float = 1.0
) -> float:
    """Learning rate ``base_lr · cosine_multiplier(s)``: "the same multiplier scales the LR" (J.3).

    Args:
        step: Optimiser step, counted from 0.
        base_lr: Peak learning rate (paper: 3e-6 for Instruct LoRA, 3e-5 for Base).
        total_steps: Nominal schedule length ``S``.
        fraction: Schedule fraction ``f``.

    Returns:
        The learning rate at ``step``.
    """
    return base_lr * cosine_multiplier(step, total_steps, fraction)


def cosine_lr_scheduler(
    optimizer: Optimizer, total_steps: int = 500, fraction: float = 1.0
) -> LambdaLR:
    """A ``LambdaLR`` that scales every param group's LR by :func:`cosine_multiplier`.

    Call ``scheduler.step()`` once after each ``optimizer.step()``: the ``k``-th optimiser step
    (from 0) then runs at ``initial_lr · cosine_multiplier(k)``, matching :func:`learning_rate`.

    Args:
        optimizer: Optimiser whose param groups' ``lr`` is the base (peak) learning rate.
        total_steps: Nominal schedule length ``S``.
        fraction: Schedule fraction ``f``.

    Returns:
        The scheduler.
    """
    # Validate now rather than at the first scheduler step.
    cosine_multiplier(0, total_steps, fraction)
    return LambdaLR(
        optimizer, lr_lambda=lambda step: cosine_multiplier(step, total_steps, fraction)
    )
