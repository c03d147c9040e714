"""Tests of welfare_lens.rl.losses against numbers computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from welfare_lens.errors import ShapeError, TrainingError
from welfare_lens.rl import (
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
    token_logprobs,
)

LN2, LN3, LN4 = math.log(2.0), math.log(3.0), math.log(4.0)
P, M, G = 0, 1, 2  # tile classes Path, Mold, Gold


def t(x: object, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(x, dtype=dtype)


# ---------------------------------------------------------------- log-probs


def test_token_logprobs_hand_value_and_temperature() -> None:
    # [0, ln 3] -> softmax [1/4, 3/4]; at T = 2 the logits [0, 2 ln 3] give the same distribution.
    logits = t([[[0.0, LN3], [0.0, 2 * LN3]]])
    ids = torch.tensor([[1, 1]])
    at_t1 = token_logprobs(logits, ids, temperature=1.0)
    at_t2 = token_logprobs(logits, ids, temperature=2.0)
    assert at_t1[0, 0].item() == pytest.approx(math.log(0.75), abs=1e-6)
    assert at_t2[0, 1].item() == pytest.approx(math.log(0.75), abs=1e-6)
    # Position 1 at T=1: [0, 2 ln 3] -> [1/10, 9/10].
    assert at_t1[0, 1].item() == pytest.approx(math.log(0.9), abs=1e-6)


def test_token_logprobs_is_fp32_and_checks_shapes() -> None:
    logits = torch.randn(2, 3, 5).to(torch.bfloat16)
    out = token_logprobs(logits, torch.zeros(2, 3, dtype=torch.long), 0.7)
    assert out.dtype == torch.float32 and out.shape == (2, 3)
    with pytest.raises(ShapeError):
        token_logprobs(torch.randn(2, 4, 5), torch.zeros(2, 3, dtype=torch.long), 1.0)
    with pytest.raises(TrainingError):
        token_logprobs(torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.long), 0.0)


def test_restricted_logprobs_hand_value_and_normalised() -> None:
    allowed = torch.tensor([1, 3, 4, 5])
    logits = torch.full((1, 1, 6), 50.0)  # huge logits on disallowed ids 0, 2 must not matter
    logits[0, 0, allowed] = t([0.0, LN2, LN3, LN4])  # exp -> 1, 2, 3, 4 (sum 10)
    out = restricted_logprobs(logits, torch.tensor([[5]]), allowed)
    assert out.item() == pytest.approx(math.log(0.4), abs=1e-6)

    torch.manual_seed(1)
    logits = torch.randn(2, 3, 7)
    total = torch.zeros(2, 3)
    for tok in allowed.tolist():
        ids = torch.full((2, 3), tok)
        total += restricted_logprobs(logits, ids, allowed, temperature=0.7).exp()
    torch.testing.assert_close(total, torch.ones(2, 3))


def test_restricted_logprobs_rejects_disallowed_target_unless_masked() -> None:
    allowed = torch.tensor([1, 2])
    logits = torch.randn(1, 2, 4)
    ids = torch.tensor([[0, 2]])  # 0 is an observation token
    with pytest.raises(TrainingError):
        restricted_logprobs(logits, ids, allowed)
    out = restricted_logprobs(logits, ids, allowed, mask=torch.tensor([[False, True]]))
    assert out[0, 0].item() == 0.0
    assert out[0, 1].item() == pytest.approx(torch.log_softmax(logits[0, 1, 1:3], -1)[1].item())
    with pytest.raises(ShapeError):
        restricted_logprobs(logits, ids, torch.tensor([1, 1]))
    with pytest.raises(ShapeError):
        restricted_logprobs(logits, ids, torch.tensor([1, 9]))


# ---------------------------------------------------------------- advantages


def test_group_advantages_dr_grpo_no_std() -> None:
    adv = group_advantages(t([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0]]))
    torch.testing.assert_close(adv, t([[-2.0, -1.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0]]))


def test_group_advantages_std_is_bessel_corrected() -> None:
    # deviations -2, -1, 0, 3: sum of squares 14, ddof=1 -> var 14/3, std 2.1602469
    adv = group_advantages(t([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0]]), scale_std=True)
    expected = t([[-0.9257772, -0.4628886, 0.0, 1.3886658], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(adv, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("scale_std", [False, True])
def test_group_advantages_size_one_group_is_zero(scale_std: bool) -> None:
    adv = group_advantages(t([[3.0], [-7.0]]), scale_std=scale_std)
    assert torch.equal(adv, torch.zeros(2, 1))


def test_frac_zero_std() -> None:
    rewards = t([[1.0, 1.0, 1.0], [1.0, 2.0, 3.0], [5.0, 5.0, 5.0], [0.0, 0.0, 1.0]])
    assert frac_zero_std(rewards) == 0.5
    assert frac_zero_std(t([[4.0], [2.0]])) == 1.0


def test_returns_to_go() -> None:
    rewards = t([[1.0, 2.0, 3.0, 4.0], [-0.1, 19.9, -10.1, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    expected = t([[6.0, 5.0, 3.0, 0.0], [14.7, 14.8, -5.1, 5.0]])
    torch.testing.assert_close(returns_to_go(rewards, mask), expected, atol=1e-5, rtol=0)


def test_reinforce_advantages_per_position_baseline_with_inactive_members() -> None:
    returns = t([[[4.0, 2.0, 1.0], [2.0, 0.0, 0.0], [0.0, 9.0, 0.0]]])  # [1 group, 3, 3 turns]
    active = torch.tensor([[[1, 1, 0], [1, 1, 0], [1, 0, 0]]], dtype=torch.bool)
    # b_0 = (4 + 2 + 0)/3 = 2; b_1 = (2 + 0)/2 = 1 (member 2 ended); b_2: nobody active.
    expected = t([[[2.0, 1.0, 0.0], [0.0, -1.0, 0.0], [-2.0, 0.0, 0.0]]])
    torch.testing.assert_close(reinforce_advantages(returns, active), expected)


# ---------------------------------------------------------------- policy loss


def _ratios_loss(
    ratios: list[float], advs: list[float], **kw: object
) -> tuple[torch.Tensor, torch.Tensor, object]:
    logp = torch.log(t([ratios])).requires_grad_(True)
    loss, stats = policy_loss(logp, torch.zeros_like(logp), t([advs]), **kw)  # type: ignore[arg-type]
    return loss, logp, stats


def test_policy_loss_clip_branches_and_dual_clip() -> None:
    ratios = [1.1, 1.5, 0.5, 0.5, 1.5, 4.0]
    advs = [1.0, 1.0, 1.0, -1.0, -1.0, -1.0]
    loss, logp, stats = _ratios_loss(ratios, advs)
    # A>0: in range -> -rA; r > 1.2 -> -1.2A; r < 0.8 -> unclipped min(0.5, 0.8) = 0.5.
    # A<0: r < 0.8 -> min(-0.5, -0.8) = -0.8; r = 1.5 -> -1.5 unclipped; r = 4 > c -> c*A = -3.
    expected = t([[-1.1, -1.2, -0.5, 0.8, 1.5, 3.0]])
    torch.testing.assert_close(loss.detach(), expected)
    loss.sum().backward()
    assert logp.grad is not None
    # d(-rA)/dlogp = -rA where unclipped; 0 where any clip is active.
    torch.testing.assert_close(logp.grad, t([[-1.1, 0.0, -0.5, 0.0, 1.5, 0.0]]))
    assert stats.clip_frac_high == pytest.approx(1 / 6)  # type: ignore[attr-defined]
    assert stats.clip_frac_low == pytest.approx(1 / 6)  # type: ignore[attr-defined]
    assert stats.clip_frac_dual == pytest.approx(1 / 6)  # type: ignore[attr-defined]
    assert stats.clip_frac == pytest.approx(3 / 6)  # type: ignore[attr-defined]


def test_policy_loss_stats_respect_mask_and_dual_clip_can_be_disabled() -> None:
    logp = torch.log(t([[4.0, 1.5]]))
    adv = t([[-1.0, 1.0]])
    mask = torch.tensor([[False, True]])
    loss, stats = policy_loss(logp, torch.zeros_like(logp), adv, mask=mask)
    assert stats.clip_frac_dual == 0.0 and stats.clip_frac_high == 1.0 and stats.n_tokens == 1
    loss_nodual, _ = policy_loss(logp, torch.zeros_like(logp), adv, dual_clip_c=None)
    assert loss[0, 0].item() == pytest.approx(3.0)
    assert loss_nodual[0, 0].item() == pytest.approx(4.0)


def test_policy_loss_eps_high_defaults_to_eps_low() -> None:
    loss_sym, _, _ = _ratios_loss([1.25], [1.0])
    loss_asym, _, _ = _ratios_loss([1.25], [1.0], eps_high=0.28)
    assert loss_sym.item() == pytest.approx(-1.2)
    assert loss_asym.item() == pytest.approx(-1.25)


def test_policy_loss_log_ratio_clamp() -> None:
    logp = t([[25.0, -25.0]]).requires_grad_(True)
    adv = t([[-1.0, 1.0]])
    loss, stats = policy_loss(logp, torch.zeros_like(logp), adv, dual_clip_c=None)
    # r = exp(clamp(25)) = e^20; A<0 unclipped: -rA = e^20. r = e^-20 for A>0: -min(r, 0.8) = -r.
    assert loss[0, 0].item() == pytest.approx(math.exp(20.0), rel=1e-6)
    assert loss[0, 1].item() == pytest.approx(-math.exp(-20.0), rel=1e-5)
    assert stats.ratio_max == pytest.approx(math.exp(20.0), rel=1e-6)
    loss.sum().backward()
    assert logp.grad is not None and torch.equal(logp.grad, torch.zeros(1, 2))
    unclamped, _ = policy_loss(
        logp.detach(), torch.zeros(1, 2), adv, dual_clip_c=None, log_ratio_clamp=None
    )
    assert unclamped[0, 0].item() == pytest.approx(math.exp(25.0), rel=1e-6)


def test_on_policy_ratio_is_one_and_gradient_is_reinforce() -> None:
    torch.manual_seed(2)
    logits = torch.randn(2, 3, 5, requires_grad=True)
    ids = torch.randint(0, 5, (2, 3))
    adv = t([[1.0, 1.0, 1.0], [-2.0, -2.0, -2.0]])

    logp = token_logprobs(logits, ids, 0.7)
    loss, stats = policy_loss(logp, logp.detach(), adv)
    torch.testing.assert_close(loss.detach(), -adv)  # ratio exactly 1
    assert stats.ratio_mean == 1.0 and stats.ratio_max == 1.0 and stats.clip_frac == 0.0
    (grad_ppo,) = torch.autograd.grad(loss.sum(), logits)

    logp2 = token_logprobs(logits, ids, 0.7)
    (grad_reinforce,) = torch.autograd.grad((-adv * logp2).sum(), logits)
    torch.testing.assert_close(grad_ppo, grad_reinforce)
    assert grad_ppo.abs().sum() > 0


# ---------------------------------------------------------------- aggregation

PER_TOKEN = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
MASK = [[1, 1, 0], [1, 0, 0]]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("dr_grpo", 7.0 / (2.0 * 2)),  # (1 + 2 + 4) / (Z=2 * 2 sequences)
        ("grpo", (1.5 + 4.0) / 2),  # mean of per-sequence means
        ("dapo", 7.0 / 3),  # 3 active tokens
    ],
)
def test_aggregate_modes(mode: str, expected: float) -> None:
    mask = torch.tensor(MASK, dtype=torch.bool)
    out = aggregate(t(PER_TOKEN), mask, mode=mode, Z=2.0)  # type: ignore[arg-type]
    assert out.item() == pytest.approx(expected)


def test_aggregate_dr_grpo_default_z_and_grpo_empty_sequence() -> None:
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    assert aggregate(t(PER_TOKEN), mask).item() == pytest.approx(3.0 / (2048.0 * 2))
    # The empty sequence contributes 0 but still counts: (1.5 + 0) / 2.
    assert aggregate(t(PER_TOKEN), mask, mode="grpo").item() == pytest.approx(0.75)
    with pytest.raises(TrainingError):
        aggregate(t(PER_TOKEN), mask, mode="bnpo")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["dr_grpo", "grpo", "dapo"])
def test_aggregate_gradient_accumulation_identity(mode: str) -> None:
    torch.manual_seed(3)
    per_token = torch.randn(4, 6, dtype=torch.float64)
    mask = torch.rand(4, 6) > 0.4
    mask[:, 0] = True
    full = aggregate(per_token, mask, mode=mode)  # type: ignore[arg-type]
    n_seq, n_tok = 4, int(mask.sum())
    parts = [
        aggregate(per_token[i : i + 2], mask[i : i + 2], mode, n_sequences=n_seq, n_tokens=n_tok)  # type: ignore[arg-type]
        for i in (0, 2)
    ]
    torch.testing.assert_close(parts[0] + parts[1], full, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["dr_grpo", "grpo", "dapo"])
def test_masked_tokens_get_exactly_zero_gradient(mode: str) -> None:
    per_token = t([[1.0, float("inf"), 3.0], [float("nan"), 5.0, 6.0]]).requires_grad_(True)
    mask = torch.tensor([[1, 0, 1], [0, 1, 1]], dtype=torch.bool)
    out = aggregate(per_token, mask, mode=mode)  # type: ignore[arg-type]
    assert torch.isfinite(out)
    out.backward()
    assert per_token.grad is not None
    assert torch.equal(per_token.grad[~mask], torch.zeros(2))
    assert (per_token.grad[mask] > 0).all()


def test_masked_positions_get_zero_gradient_end_to_end() -> None:
    torch.manual_seed(4)
    logits = torch.randn(2, 4, 6, requires_grad=True)
    ids = torch.randint(0, 6, (2, 4))
    mask = torch.tensor([[0, 1, 0, 1], [1, 0, 0, 1]], dtype=torch.bool)  # 0 = observation/pad
    logp = token_logprobs(logits, ids, 0.7)
    per_tok, _ = policy_loss(logp, logp.detach(), t([[1.0] * 4, [-1.0] * 4]), mask=mask)
    per_tok = per_tok + 0.1 * k3_kl(logp, logp.detach() - 0.3)
    aggregate(per_tok, mask, "dr_grpo").backward()
    assert logits.grad is not None
    assert torch.equal(logits.grad[~mask], torch.zeros(int((~mask).sum()), 6))
    assert (logits.grad[mask].abs().sum(-1) > 0).all()


# ---------------------------------------------------------------- KL, entropy, SFT


def test_k3_kl_fixed_numbers() -> None:
    out = k3_kl(t([[0.0, LN2, -1.5]]), t([[LN2, 0.0, -1.5]]))
    # d = ln2: 2 - ln2 - 1; d = -ln2: 1/2 + ln2 - 1; d = 0: 0.
    torch.testing.assert_close(out, t([[0.3068528, 0.1931472, 0.0]]), atol=1e-6, rtol=0)


@settings(max_examples=200, deadline=None)
@given(
    st.floats(min_value=-20.0, max_value=20.0, allow_nan=False),
    st.floats(min_value=-20.0, max_value=20.0, allow_nan=False),
)
def test_k3_kl_is_non_negative(logp: float, ref: float) -> None:
    assert k3_kl(t([[logp]]), t([[ref]])).item() >= 0.0


H_12 = 0.5822031  # entropy of softmax([1, 2]): p = 1/(1+e) = 0.2689414


@pytest.mark.parametrize(
    ("logits", "tiles", "temperature", "expected"),
    [
        ([1.0, 2.0, 0.0, 0.0], [P, P, M, G], 1.0, H_12),  # only the Path pair counts
        ([2.0, 4.0, 0.0, 0.0], [P, P, M, G], 2.0, H_12),  # temperature divides the logits
        ([0.3, 0.3, 0.3, 0.3], [M, M, M, M], 1.0, LN4),  # one class of 4
        ([0.0, 0.0, 5.0, 5.0], [P, P, M, M], 1.0, 2 * LN2),  # two classes of 2: sum
        ([1.0, 2.0, 3.0, 4.0], [P, M, G, 3], 1.0, 0.0),  # all singletons: no bonus
        ([9.0, 1.0, 2.0, 0.0], [G, P, P, M], 1.0, H_12),  # class order/position irrelevant
    ],
)
def test_equalized_entropy_hand_cases(
    logits: list[float], tiles: list[int], temperature: float, expected: float
) -> None:
    out = equalized_entropy(t([logits]), torch.tensor([tiles]), temperature)
    assert out.shape == (1,)
    assert out.item() == pytest.approx(expected, abs=1e-6)


def test_equalized_entropy_batched_gradient_is_finite() -> None:
    logits = torch.randn(3, 4, requires_grad=True)
    tiles = torch.tensor([[P, P, M, G], [P, M, G, 3], [M, M, M, P]])
    out = equalized_entropy(logits, tiles)
    assert out[1].item() == 0.0
    out.sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    # Singleton actions get no gradient from the bonus.
    assert torch.equal(logits.grad[1], torch.zeros(4))
    assert logits.grad[0, 2].item() == 0.0 and logits.grad[2, 3].item() == 0.0


def test_sft_loss_masked_mean() -> None:
    logits = torch.zeros(1, 3, 4)
    logits[0, 1] = t([LN3, 0.0, 0.0, 0.0])  # p(target 0) = 3/6
    logits[0, 2] = t([100.0, 0.0, 0.0, 0.0])  # masked: would add ~100 if counted
    ids = torch.tensor([[2, 0, 3]])
    mask = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    assert sft_loss(logits, ids, mask).item() == pytest.approx((LN4 + LN2) / 2, abs=1e-6)
    with pytest.raises(TrainingError):
        sft_loss(logits, ids, torch.zeros(1, 3, dtype=torch.bool))


# ---------------------------------------------------------------- config


def test_loss_config_defaults_and_validation() -> None:
    cfg = LossConfig()
    assert (cfg.loss, cfg.scale_std, cfg.eps_low, cfg.dual_clip_c) == ("dr_grpo", False, 0.2, 3.0)
    assert (cfg.Z, cfg.kl_coef, cfg.entropy_coef, cfg.log_ratio_clamp) == (2048.0, 0.0, 0.01, 20.0)
    assert cfg.eps_high_effective == 0.2 and cfg.aggregation == "dr_grpo"
    assert LossConfig(loss="reinforce").aggregation == "dr_grpo"
    with pytest.raises(TrainingError, match="dr_grpo, grpo, dapo, reinforce, sft"):
        LossConfig(loss="ppo")  # type: ignore[arg-type]
    with pytest.raises(TrainingError):
        LossConfig(dual_clip_c=1.0)
    with pytest.raises(TrainingError):
        LossConfig(eps_low=-0.1)
    with pytest.raises(TrainingError):
        LossConfig(kl_coef=-1.0)
