"""Tests of the cosine entropy / learning-rate schedule (paper appendix J.3)."""

from __future__ import annotations

import pytest
import torch

from welfare_lens.errors import TrainingError
from welfare_lens.rl import (
    cosine_lr_scheduler,
    cosine_multiplier,
    entropy_coefficient,
    learning_rate,
)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 1.0),
        (250, 0.4984261),  # S/2: ½(1 + cos(π·250/499)), just under ½ because S-1 = 499
        (499, 0.0),  # S - 1
        (500, 0.0),  # beyond: p is clamped to 1
        (10_000, 0.0),
    ],
)
def test_cosine_multiplier_paper_schedule(step: int, expected: float) -> None:
    assert cosine_multiplier(step) == pytest.approx(expected, abs=1e-7)


def test_cosine_multiplier_small_schedule_and_fraction() -> None:
    # S = 5: p = step / 4.  ½(1 + cos(π/4)) = 0.8535534, ½(1 + cos(3π/4)) = 0.1464466.
    values = [cosine_multiplier(s, total_steps=5) for s in range(6)]
    assert values == pytest.approx([1.0, 0.8535534, 0.5, 0.1464466, 0.0, 0.0], abs=1e-7)
    # f = 2 finishes the decay half way: p = step / 4 * 2.
    assert cosine_multiplier(1, total_steps=5, fraction=2.0) == pytest.approx(0.5)
    assert cosine_multiplier(2, total_steps=5, fraction=2.0) == 0.0


def test_entropy_coefficient_and_learning_rate_share_the_multiplier() -> None:
    assert entropy_coefficient(0, 0.01) == pytest.approx(0.01)
    assert entropy_coefficient(2, 0.01, total_steps=5) == pytest.approx(0.005)
    assert learning_rate(2, 3e-6, total_steps=5) == pytest.approx(1.5e-6)
    assert learning_rate(499, 3e-6) == pytest.approx(0.0, abs=1e-20)


def test_lambda_lr_factory_follows_learning_rate() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=2.0)
    sched = cosine_lr_scheduler(opt, total_steps=5)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([2.0, 1.7071068, 1.0, 0.2928932, 0.0, 0.0], abs=1e-7)
    assert seen == pytest.approx([learning_rate(s, 2.0, total_steps=5) for s in range(6)])


@pytest.mark.parametrize(
    "kwargs",
    [{"step": -1}, {"step": 0, "total_steps": 1}, {"step": 0, "fraction": 0.0}],
)
def test_cosine_multiplier_rejects_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(TrainingError):
        cosine_multiplier(**kwargs)  # type: ignore[arg-type]
