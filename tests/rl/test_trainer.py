"""GRPOTrainer: configuration, on-policy ratio, masking, accumulation, schedules, LoRA, SFT."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from welfare_lens.chat import action_token_ids
from welfare_lens.errors import TrainingError
from welfare_lens.maze import MazeConfig
from welfare_lens.rl import (
    GRPOConfig,
    GRPOTrainer,
    action_logits,
    aggregate,
    collate,
    cosine_multiplier,
    grpo_loss,
    maze_groups,
    policy_loss,
    restricted_logprobs,
    rollout,
)

MAZE = MazeConfig(size=20, turns=3)


def small(**kw: Any) -> GRPOConfig:
    base: dict[str, Any] = dict(
        mazes_per_step=2,
        episodes_per_maze=3,
        lr=1e-3,
        lora_r=4,
        lora_alpha=8,
        progress=False,
        sft_batch_size=3,
        sft_horizon=3,
    )
    base.update(kw)
    return GRPOConfig(**base)


# ---------------------------------------------------------------- config


def test_config_defaults_are_the_papers() -> None:
    cfg = GRPOConfig()
    assert (cfg.loss, cfg.lr, cfg.temperature, cfg.mazes_per_step) == ("dr_grpo", 3e-6, 0.7, 8)
    assert (cfg.lora_r, cfg.lora_alpha, cfg.entropy_beta0, cfg.schedule_steps) == (
        32,
        64,
        0.01,
        500,
    )
    assert (cfg.eps_low, cfg.dual_clip_c, cfg.Z, cfg.kl_beta) == (0.2, 3.0, 2048.0, 0.0)
    assert cfg.loss_config().scale_std is False
    assert GRPOConfig(loss="grpo").loss_config().scale_std is True
    assert GRPOConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"loss": "ppo"}, "Unknown loss"),
        ({"lr": -1.0}, "lr"),
        ({"finetune": "qlora"}, "finetune"),
        ({"episodes_per_maze": 0}, "episodes_per_maze"),
        ({"checkpoint_every": 5}, "out_dir"),
        ({"dual_clip_c": 0.5}, "dual_clip_c"),
        ({"actions": ("N", "N")}, "actions"),
        ({"micro_batch_size": 0}, "micro_batch_size"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(TrainingError, match=match):
        GRPOConfig(**kwargs)


def test_config_from_dict_names_the_closest_key() -> None:
    with pytest.raises(TrainingError, match="temperature"):
        GRPOConfig.from_dict({"temprature": 0.7})


# ---------------------------------------------------------------- the update


def test_one_update_per_batch_gives_ratio_exactly_one(fresh_llama: Any) -> None:
    trainer = GRPOTrainer(fresh_llama, MAZE, small())
    metrics = trainer.step()
    assert metrics["ratio_mean"] == 1.0 and metrics["ratio_max"] == 1.0
    assert metrics["clip_frac"] == 0.0
    assert metrics["logp_mismatch"] < 1e-4  # recomputed log-probs = those used for sampling
    assert metrics["grad_norm"] > 0
    assert metrics["kl"] is None  # kl_beta = 0 skips the reference model


def test_several_updates_per_batch_move_the_ratio(fresh_llama: Any) -> None:
    trainer = GRPOTrainer(fresh_llama, MAZE, small(updates_per_batch=3, lr=5e-2))
    metrics = trainer.step()
    assert metrics["ratio_max"] > 1.0  # the last epoch sees a policy the first ones changed


def _reference_loss(
    model: Any, batch: dict[str, torch.Tensor], adv: torch.Tensor, allowed: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss from full-vocabulary logits at every position, masked by action positions."""
    logits = model(batch["input_ids"]).detach().requires_grad_(True)
    targets = batch["input_ids"][:, 1:]
    mask = batch["action_mask"][:, 1:]
    logp = restricted_logprobs(logits[:, :-1], targets, allowed, 0.7, mask=mask)
    per_token_adv = torch.zeros_like(logp)
    per_token_adv[mask] = adv[batch["turn_mask"]]
    per_tok, _ = policy_loss(logp, logp.detach(), per_token_adv, mask=mask)
    loss = aggregate(per_tok, mask, mode="dr_grpo", Z=2048.0)
    (grad,) = torch.autograd.grad(loss, logits)
    return loss.detach(), grad


def test_only_action_tokens_get_loss_and_padding_gets_no_gradient(
    tiny_llama: Any, bandit: Any
) -> None:
    envs = [bandit(), bandit(prompt="A longer prompt, so that the other row is padded: go!")]
    episodes = rollout(tiny_llama, envs, seed=0)
    batch = collate(episodes, pad_id=0)
    adv = torch.tensor([[1.5], [-0.5]])
    ids = action_token_ids(tiny_llama.tokenizer)
    allowed = torch.tensor([ids[a] for a in "NESW"])
    cfg = small(entropy_beta0=0.0)

    # The trainer's loss (logits only at the positions predicting an action) ...
    z = action_logits(tiny_llama, batch["input_ids"], batch["action_positions"], allowed)
    loss, _ = grpo_loss(
        z,
        batch["action_index"],
        batch["turn_mask"],
        adv,
        loss_cfg=cfg.loss_config(),
        temperature=0.7,
    )
    # ... equals the loss over all positions with the action mask ...
    ref_loss, grad = _reference_loss(tiny_llama, batch, adv, allowed)
    assert float(loss.detach()) == pytest.approx(float(ref_loss), abs=1e-7)
    # ... whose gradient reaches only the logits that predict an action token.
    predicts_action = torch.zeros_like(batch["action_mask"])
    predicts_action[:, :-1] = batch["action_mask"][:, 1:]
    assert grad[~predicts_action].abs().max() == 0
    assert grad[predicts_action].abs().amax(-1).gt(0).all()

    # Padding (right of the short row) gets exactly zero gradient at the embeddings, and the
    # pad id does not matter.
    store: dict[str, torch.Tensor] = {}

    def keep_grad(act: torch.Tensor, hook: Any) -> torch.Tensor:
        act.retain_grad()
        store["embed"] = act
        return act

    with tiny_llama.hooks(fwd_hooks=[("hook_embed", keep_grad)]):
        z = action_logits(tiny_llama, batch["input_ids"], batch["action_positions"], allowed)
        loss, _ = grpo_loss(
            z,
            batch["action_index"],
            batch["turn_mask"],
            adv,
            loss_cfg=cfg.loss_config(),
            temperature=0.7,
        )
        loss.backward()
    short = int(batch["lengths"][0])
    assert store["embed"].grad[0, short:].abs().max() == 0
    assert store["embed"].grad[0, :short].abs().max() > 0
    other = collate(episodes, pad_id=17)
    z2 = action_logits(tiny_llama, other["input_ids"], other["action_positions"], allowed)
    assert torch.equal(z.detach(), z2.detach())
    tiny_llama.zero_grad(set_to_none=True)


def test_micro_batches_give_the_same_gradient() -> None:
    from welfare_lens.models import load_model

    grads = []
    for micro in (None, 1, 4):
        trainer = GRPOTrainer(
            load_model("tiny-llama"), MAZE, small(micro_batch_size=micro, kl_beta=0.1)
        )
        episodes = rollout(trainer.model, maze_groups(MAZE, 2, 3, seed=4), seed=4)
        stats = trainer.compute_gradients(episodes)
        grads.append(torch.cat([p.grad.flatten() for p in trainer.trainable_parameters]))
        assert stats["kl"] == pytest.approx(0.0, abs=1e-6)  # LoRA B = 0: policy = reference
    for g in grads[1:]:
        assert torch.allclose(g, grads[0], rtol=1e-4, atol=1e-9)
    assert grads[0].abs().max() > 0


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-gemma3"])
@pytest.mark.parametrize("turns", [1, 3])
def test_shared_prefix_update_gives_the_same_logits_and_gradient(family: str, turns: int) -> None:
    """Branching a group's episodes off their shared first-prompt cache changes no number."""
    from welfare_lens.models import load_model
    from welfare_lens.rl.trainer import shared_prefix_action_logits, shared_prefix_length

    maze = MazeConfig(size=20, turns=turns)
    grads, logits = [], []
    for share in (False, True):
        cfg = small(micro_batch_size=4, episodes_per_maze=3, share_update_prefix=share)
        trainer = GRPOTrainer(load_model(family), maze, cfg)
        episodes = rollout(trainer.model, maze_groups(maze, 2, 3, seed=5), seed=5)
        trainer.compute_gradients(episodes)
        grads.append(torch.cat([p.grad.flatten() for p in trainer.trainable_parameters]))
        batch = collate(episodes, trainer.pad_id)
        groups = torch.arange(6) // 3
        args = (batch["input_ids"], batch["action_positions"], trainer.allowed)
        with torch.no_grad():
            z = (
                shared_prefix_action_logits(trainer.model, *args, batch["turn_mask"], groups)
                if share
                else action_logits(trainer.model, *args)
            )
        logits.append(z)
        if share:  # the prompts of a group share far more than MIN_SHARED_PREFIX tokens
            length = shared_prefix_length(
                batch["input_ids"], batch["action_positions"], batch["turn_mask"], groups
            )
            assert length >= 20
            first = batch["action_positions"][:, 0].min()
            assert length <= first - 1
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-8)
    assert grads[0].abs().max() > 0


def test_micro_batch_tokens_caps_rows_by_the_padded_width() -> None:
    from welfare_lens.models import load_model

    cfg = small(micro_batch_size=8, micro_batch_tokens=300)
    trainer = GRPOTrainer(load_model("tiny-llama"), MAZE, cfg)
    assert trainer._micro_batches(6, 100) == [slice(0, 3), slice(3, 6)]  # 300 // 100 rows
    assert trainer._micro_batches(6, 20) == [slice(0, 6)]  # capped by micro_batch_size
    assert trainer._micro_batches(2, 1000) == [slice(0, 1), slice(1, 2)]  # at least one row
    episodes = rollout(trainer.model, maze_groups(MAZE, 2, 3, seed=4), seed=4)
    trainer.compute_gradients(episodes)
    capped = torch.cat([p.grad.flatten() for p in trainer.trainable_parameters])
    whole = GRPOTrainer(load_model("tiny-llama"), MAZE, small(micro_batch_size=None))
    whole.compute_gradients(episodes)
    full = torch.cat([p.grad.flatten() for p in whole.trainable_parameters])
    torch.testing.assert_close(capped, full, rtol=1e-4, atol=1e-9)
    with pytest.raises(TrainingError, match="micro_batch_tokens"):
        small(micro_batch_tokens=0)


def test_lr_and_entropy_follow_the_shared_cosine(fresh_llama: Any) -> None:
    cfg = small(lr=1e-3, entropy_beta0=0.05, schedule_steps=3)
    trainer = GRPOTrainer(fresh_llama, MAZE, cfg)
    history = trainer.train(3)
    for step, metrics in enumerate(history):
        mult = cosine_multiplier(step, 3)
        assert metrics["lr"] == pytest.approx(1e-3 * mult)
        assert metrics["entropy_coef"] == pytest.approx(0.05 * mult)
    assert history[-1]["lr"] == 0.0
    assert trainer.optimizer.param_groups[0]["lr"] == 0.0
    assert trainer.global_step == 3


def test_lora_trains_only_the_adapter_and_disabling_it_gives_the_base(fresh_llama: Any) -> None:
    ids = torch.randint(100, 1000, (1, 24))
    with torch.no_grad():
        before = fresh_llama(ids)
    base = {n: p.detach().clone() for n, p in fresh_llama.original_model.named_parameters()}
    trainer = GRPOTrainer(fresh_llama, MAZE, small(lr=5e-2, kl_beta=0.1))
    names = [n for n, p in trainer.peft_model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert not any("lm_head" in n or "embed" in n for n in names)  # unembedding excluded
    trainer.train(2)
    assert trainer.history[-1]["kl"] > 0
    with torch.no_grad():
        after = fresh_llama(ids)
        with trainer.peft_model.disable_adapter():
            reference = fresh_llama(ids)
    assert (after - before).abs().max() > 1e-3
    assert torch.allclose(reference, before, atol=1e-6)
    for name, p in trainer.peft_model.named_parameters():
        if "lora_" not in name:
            key = name.removeprefix("base_model.model.").replace(".base_layer", "")
            assert torch.equal(p, base[key])
    with pytest.raises(TrainingError, match="already carries a LoRA"):
        GRPOTrainer(fresh_llama, MAZE, small())


def test_full_finetuning_with_kl(fresh_llama: Any) -> None:
    trainer = GRPOTrainer(fresh_llama, MAZE, small(finetune="full", lr=1e-3, kl_beta=0.1))
    first = trainer.step()
    second = trainer.step()
    assert first["kl"] == pytest.approx(0.0, abs=1e-7)  # initial weights = reference
    assert second["kl"] > 0
    n_params = sum(p.numel() for p in trainer.trainable_parameters)
    assert n_params == sum(p.numel() for p in fresh_llama.original_model.parameters())


def test_reinforce_uses_per_turn_advantages(fresh_llama: Any) -> None:
    trainer = GRPOTrainer(fresh_llama, MAZE, small(loss="reinforce"))
    episodes = rollout(trainer.model, maze_groups(MAZE, 2, 3, seed=1), seed=1)
    batch = collate(episodes, trainer.pad_id)
    adv = trainer._advantages(batch, 2, 3)
    rewards = batch["rewards"].reshape(2, 3, -1)
    rtg = rewards.flip(-1).cumsum(-1).flip(-1)
    expected = rtg - rtg.mean(dim=1, keepdim=True)
    assert torch.allclose(adv, expected.reshape(6, -1).float(), atol=1e-5)
    trainer.loss_cfg = GRPOConfig().loss_config()
    trainer.config = small()
    grpo = trainer._advantages(batch, 2, 3)
    returns = rewards.sum(-1)
    assert torch.allclose(grpo[:, 0], (returns - returns.mean(1, keepdim=True)).flatten().float())
    assert torch.equal(grpo[:, 0], grpo[:, -1])  # broadcast to every turn


def test_sft_trains_on_optimal_moves_only(fresh_llama: Any) -> None:
    trainer = GRPOTrainer(fresh_llama, MAZE, small(loss="sft", lr=1e-2, finetune="full"))
    batch, returns = trainer.sft_batch(0)
    assert len(returns) == 3
    for row in range(3):
        ids = batch["input_ids"][row]
        positions = batch["action_positions"][row]
        decoded = [trainer.model.tokenizer.decode([int(t)]) for t in ids[positions]]
        assert set(decoded) <= set("NESW")
        assert batch["action_ids"][row].tolist() == ids[positions].tolist()
        # The positions are exactly render_chat's assistant-content tokens.
        text = trainer.model.tokenizer.decode(ids[ids != trainer.pad_id])
        assert text.endswith("<|im_start|>assistant\n" + decoded[-1])
    assert batch["turn_mask"].sum() == 3 * MAZE.turns
    history = trainer.train(4)
    assert history[-1]["loss"] < history[0]["loss"]
    assert {"loss", "accuracy", "p_target", "data_return_mean", "lr"} <= set(history[0])


def test_metrics_jsonl_and_signal_warning(fresh_llama: Any, bandit: Any, tmp_path: Path) -> None:
    cfg = small(out_dir=str(tmp_path), mazes_per_step=2, episodes_per_maze=2)

    def factory(seed: int) -> list[Any]:
        return [bandit(good="none") for _ in range(4)]  # every return is 0: no signal

    trainer = GRPOTrainer(fresh_llama, MAZE, cfg, env_factory=factory)
    with pytest.warns(RuntimeWarning, match="no learning signal"):
        trainer.train(5)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
    for key in (
        "reward_mean",
        "reward_std",
        "gold_per_episode",
        "mold_per_episode",
        "frac_reward_zero_std",
        "kl",
        "clip_frac",
        "entropy",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "rollout_s",
        "update_s",
    ):
        assert key in records[0], key
    assert records[0]["frac_reward_zero_std"] == 1.0


def test_maze_metrics_track_gold_and_mold(fresh_llama: Any) -> None:
    trainer = GRPOTrainer(fresh_llama, MazeConfig(size=20, turns=4), small())
    metrics = trainer.step()
    assert 0.0 <= metrics["p_mold"] <= 1.0
    assert metrics["p_gold"] is None or 0.0 <= metrics["p_gold"] <= 1.0
    assert sum(metrics[f"frac_{a}"] for a in "NESW" if f"frac_{a}" in metrics) == pytest.approx(1)
    held_out = trainer.evaluate(n_mazes=1, episodes_per_maze=2)
    assert held_out["n_episodes"] == 2


def test_trainer_rejects_bad_inputs(fresh_llama: Any, bandit: Any) -> None:
    with pytest.raises(TrainingError, match="GRPOConfig"):
        GRPOTrainer(fresh_llama, MAZE, {"lr": 1e-3})  # type: ignore[arg-type]
    with pytest.raises(TrainingError, match="TransformerBridge"):
        GRPOTrainer(object(), MAZE, small())
    trainer = GRPOTrainer(fresh_llama, MAZE, small(), env_factory=lambda s: [bandit()])
    with pytest.raises(TrainingError, match="env_factory returned 1"):
        trainer.step()
    with pytest.raises(TrainingError, match="steps"):
        trainer.train(-1)


def test_lora_dropout_is_active_only_in_the_update(fresh_llama: Any) -> None:
    trainer = GRPOTrainer(fresh_llama, MAZE, small(lora_dropout=0.5))
    seen: list[bool] = []
    with fresh_llama.hooks(
        fwd_hooks=[
            (
                "blocks.0.hook_resid_post",
                lambda a, hook: seen.append(fresh_llama.original_model.training),
            )
        ]
    ):
        metrics = trainer.step()
    assert metrics["ratio_mean"] == 1.0  # old log-probs come from the same (dropout) pass
    assert seen[: MAZE.turns] == [False] * MAZE.turns  # rollouts: eval mode
    assert seen[-1] is True  # the loss's forward pass: train mode
    assert not fresh_llama.training and not fresh_llama.original_model.training


# ---------------------------------------------------------------- out-of-memory back-off


def test_update_backs_off_on_out_of_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from welfare_lens.models import load_model
    from welfare_lens.rl import trainer as trainer_module

    def run(micro: int | None, fail_above: int | None) -> tuple[list[torch.Tensor], list[int]]:
        real = trainer_module.action_logits
        sizes: list[int] = []

        def flaky(model: Any, ids: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if torch.is_grad_enabled():
                sizes.append(int(ids.shape[0]))
                if fail_above is not None and ids.shape[0] > fail_above:
                    raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return real(model, ids, *args, **kwargs)

        monkeypatch.setattr(trainer_module, "action_logits", flaky)
        torch.manual_seed(0)
        # share_update_prefix=False: the update then calls action_logits once per micro-batch.
        cfg = small(micro_batch_size=micro, episodes_per_maze=4, share_update_prefix=False)
        trainer = GRPOTrainer(load_model("tiny-llama"), MAZE, cfg)
        trainer.step()
        monkeypatch.setattr(trainer_module, "action_logits", real)
        return [p.detach().clone() for p in trainer.trainable_parameters], sizes

    with pytest.warns(RuntimeWarning, match="micro_batch_size 8; retrying with 4"):
        backed_off, sizes = run(None, fail_above=4)
    assert sizes == [8, 4, 4]
    direct, direct_sizes = run(4, fail_above=None)
    assert direct_sizes == [4, 4]
    for a, b in zip(backed_off, direct, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    # Other errors, and out-of-memory at micro-batch size 1, are not swallowed.
    from welfare_lens.errors import ResourceError

    with pytest.raises(ResourceError, match="does not fit"):
        run(1, fail_above=0)
