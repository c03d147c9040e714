"""The maze as a TRL GRPOTrainer workload: config mapping, rollout, two real steps, checkpoints."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from welfare_lens.chat import action_token_ids, render_chat
from welfare_lens.errors import DataError, TrainingError
from welfare_lens.maze import MazeConfig, MazeEnv, generate_maze
from welfare_lens.models import load_model, model_info
from welfare_lens.rl import GRPOConfig, learning_rate, maze_groups, policy_loss, rollout
from welfare_lens.rl.trl import (
    FIELD_MAP,
    UNMAPPED_FIELDS,
    HFPolicy,
    MazeGRPOTrainer,
    MazeRollout,
    export_hf_model,
    load_hf_model,
    load_trl_checkpoint,
    maze_dataset,
    maze_reward,
    maze_seed_of,
    trl_grpo_config,
    trl_peft_config,
)

MAZE = MazeConfig(size=20, turns=3)
TURNS = MAZE.turns


# --------------------------------------------------------------------------------------------
# Config mapping (no model)
# --------------------------------------------------------------------------------------------


def test_defaults_match_the_compact_dr_grpo() -> None:
    args = trl_grpo_config(num_processes=1)
    compact = GRPOConfig()
    assert args.loss_type == "dr_grpo"
    assert args.scale_rewards == "none"
    assert args.temperature == pytest.approx(0.7)
    assert args.beta == 0.0
    assert args.epsilon == pytest.approx(0.2)
    assert args.epsilon_high == pytest.approx(0.2)
    assert args.delta == pytest.approx(3.0)
    assert args.max_completion_length == 2048
    assert args.learning_rate == pytest.approx(3e-6)
    assert args.num_generations == 64
    assert args.generation_batch_size == 512
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 512
    assert args.steps_per_generation == args.gradient_accumulation_steps
    assert args.num_iterations == 1
    assert args.max_grad_norm == pytest.approx(1.0)
    assert args.weight_decay == 0.0
    assert (args.adam_beta1, args.adam_beta2) == compact.adam_betas
    assert args.seed == compact.seed
    assert args.entropy_coef == 0.0
    assert args.use_vllm is False
    assert args.mask_truncated_completions is False
    assert args.disable_dropout is True
    assert args.bf16 is False
    assert args.max_steps == 499  # the cosine schedule's length (S - 1) / f


def test_every_compact_field_is_mapped_or_documented() -> None:
    names = {f.name for f in dataclasses.fields(GRPOConfig)}
    documented = set(FIELD_MAP) | {k.split("=")[0] for k in UNMAPPED_FIELDS}
    assert names <= documented, names - documented
    assert "entropy_beta0" in UNMAPPED_FIELDS


def test_loss_and_std_scaling_map() -> None:
    grpo = trl_grpo_config(GRPOConfig(loss="grpo"), num_processes=1)
    assert (grpo.loss_type, grpo.scale_rewards) == ("grpo", "group")
    dapo = trl_grpo_config(GRPOConfig(loss="dapo", scale_std=True), num_processes=1)
    assert (dapo.loss_type, dapo.scale_rewards) == ("dapo", "group")
    for loss in ("reinforce", "sft"):
        with pytest.raises(TrainingError, match="no TRL"):
            trl_grpo_config(GRPOConfig(loss=loss), num_processes=1)


def test_batch_splits_over_processes_and_micro_batches() -> None:
    cfg = GRPOConfig(mazes_per_step=8, episodes_per_maze=16, micro_batch_size=4)
    args = trl_grpo_config(cfg, num_processes=1)
    assert args.per_device_train_batch_size == 4
    assert args.gradient_accumulation_steps == 32
    assert args.generation_batch_size == 128
    # 8 GPUs: each holds 16 episodes, in 4 micro-batches of 4.
    with pytest.raises(TrainingError, match="process"):
        trl_grpo_config(cfg, num_processes=8)  # this process is not an 8-way launch
    with pytest.raises(TrainingError, match="split"):
        trl_grpo_config(GRPOConfig(mazes_per_step=3, episodes_per_maze=3, micro_batch_size=2))


def test_clip_and_normaliser_map() -> None:
    args = trl_grpo_config(GRPOConfig(eps_high=0.28, dual_clip_c=None, Z=1024), num_processes=1)
    assert (args.epsilon, args.epsilon_high, args.delta) == (0.2, 0.28, None)
    assert args.max_completion_length == 1024
    with pytest.raises(TrainingError, match="dual_clip_c"):
        trl_grpo_config(GRPOConfig(dual_clip_c=1.1), num_processes=1)


def test_trl_delta_is_the_papers_dual_clip() -> None:
    """TRL's loss with ``delta = c`` equals the dual-clip surrogate, value and gradient."""
    gen = torch.Generator().manual_seed(0)
    log_ratio = (torch.randn(4, 50, generator=gen) * 1.5).requires_grad_()
    adv = torch.randn(4, 50, generator=gen) * 3
    eps, c = 0.2, 3.0
    ours, _ = policy_loss(log_ratio, torch.zeros_like(log_ratio), adv, eps, None, c, None)
    ratio = log_ratio.exp()  # TRL's two-sided clip (grpo_trainer._compute_loss)
    trl = -torch.min(ratio.clamp(max=c) * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
    torch.testing.assert_close(ours, trl)
    (g_ours,) = torch.autograd.grad(ours.sum(), log_ratio)
    (g_trl,) = torch.autograd.grad(trl.sum(), log_ratio)
    torch.testing.assert_close(g_ours, g_trl)


@pytest.mark.parametrize(
    ("steps", "fraction", "max_steps"), [(20, 1.0, 19), (20, 1.0, 7), (41, 2.0, 20)]
)
def test_lr_schedule_is_the_papers_cosine(steps: int, fraction: float, max_steps: int) -> None:
    from transformers import get_scheduler

    cfg = GRPOConfig(lr=1e-3, schedule_steps=steps, schedule_fraction=fraction)
    args = trl_grpo_config(cfg, num_processes=1, max_steps=max_steps)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    sched = get_scheduler(
        args.lr_scheduler_type,
        opt,
        num_warmup_steps=args.warmup_steps,
        num_training_steps=args.max_steps,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs,
    )
    for k in range(max_steps):
        want = learning_rate(k, cfg.lr, steps, fraction)
        assert opt.param_groups[0]["lr"] == pytest.approx(want, rel=1e-9, abs=1e-15), k
        opt.step()
        sched.step()


def test_bad_overrides_and_schedules_are_named() -> None:
    with pytest.raises(TrainingError, match="learning_rate"):
        trl_grpo_config(num_processes=1, learning_rat=1e-3)
    with pytest.raises(TrainingError, match="schedule"):
        trl_grpo_config(GRPOConfig(schedule_steps=10), num_processes=1, max_steps=10)
    args = trl_grpo_config(num_processes=1, max_steps=5, logging_steps=5, beta=0.04)
    assert (args.max_steps, args.logging_steps, args.beta) == (5, 5, 0.04)


def test_peft_config_is_the_papers_lora() -> None:
    lora = trl_peft_config()
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (32, 64, 0.0)
    assert lora.target_modules == "all-linear"
    assert trl_peft_config(GRPOConfig(finetune="full")) is None


# --------------------------------------------------------------------------------------------
# Dataset, reward, rollout adapter
# --------------------------------------------------------------------------------------------


def test_dataset_rows_are_the_compact_trainers_mazes() -> None:
    ds = maze_dataset(3, MAZE, seed=11)
    envs = maze_groups(MAZE, 3, 2, 11)
    assert ds.num_rows == 3
    for row, g in zip(ds, range(3), strict=True):
        assert maze_seed_of(row["prompt"]) == row["maze_seed"] == envs[2 * g].maze.seed
        first = MazeEnv(MAZE, generate_maze(MAZE, row["maze_seed"])).messages[0]["content"]
        assert row["first_message"] == first
    with pytest.raises(DataError):
        maze_seed_of("You are in a maze.")
    with pytest.raises(DataError):
        maze_dataset(0)


def test_reward_needs_the_rollout_field() -> None:
    assert maze_reward(["p", "p"], ["a", "b"], maze_return=[19.9, -0.2]) == [19.9, -0.2]
    with pytest.raises(TrainingError, match="MazeRollout"):
        maze_reward(["p"], ["a"])


def test_hf_policy_decodes_like_the_bridge() -> None:
    """The plain-HF adapter reproduces the bridge's cached, gap-padded decoding."""
    hf, tok, _ = load_hf_model("tiny-llama")
    bridge = load_model("tiny-llama")
    groups = [0, 0, 0, 1, 1, 1]
    a = rollout(HFPolicy(hf, tok), maze_groups(MAZE, 2, 3, 5), seed=3, batch_size=6, groups=groups)
    b = rollout(bridge, maze_groups(MAZE, 2, 3, 5), seed=3, batch_size=6, groups=groups)
    assert [e.actions for e in a] == [e.actions for e in b]
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.input_ids, y.input_ids)
        torch.testing.assert_close(x.logprobs, y.logprobs, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------
# Two TRL GRPO steps on tiny-llama (CPU)
# --------------------------------------------------------------------------------------------


class RecordingRollout(MazeRollout):
    """A MazeRollout that keeps every call's prompts, output and episodes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[dict[str, Any]] = []

    def __call__(self, prompts: Any, trainer: Any) -> dict[str, Any]:
        out = super().__call__(prompts, trainer)
        self.calls.append(
            {"prompts": list(prompts), "out": out, "episodes": list(self.last_episodes)}
        )
        return out


class RecordingTrainer(MazeGRPOTrainer):
    """Keeps what TRL's loss sees: completion ids, the loss mask and the advantages."""

    seen: list[dict[str, torch.Tensor]]

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        if not hasattr(self, "seen"):
            self.seen = []
        self.seen.append(
            {
                "completion_ids": inputs["completion_ids"].detach().clone(),
                "completion_mask": inputs["completion_mask"].detach().clone(),
                "loss_mask": (inputs["completion_mask"] * inputs["tool_mask"]).detach().clone(),
                "advantages": inputs["advantages"].detach().clone(),
            }
        )
        loss: torch.Tensor = super()._compute_loss(model, inputs)
        return loss


def replay_return(maze_seed: int, episode_seed: int, actions: list[str]) -> float:
    """The return of ``actions`` in a fresh copy of the episode's environment."""
    env = MazeEnv(MAZE, generate_maze(MAZE, maze_seed), episode_seed=episode_seed)
    return float(sum(env.step(a).reward for a in actions))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_hf_model("tiny-llama", tmp_path_factory.mktemp("base") / "tiny-llama")


@pytest.fixture(scope="module")
def lora_run(base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two LoRA Dr. GRPO steps: 2 mazes x 4 episodes of 3 turns per step."""
    torch.set_num_threads(1)
    out_dir = tmp_path_factory.mktemp("trl-lora")
    compact = GRPOConfig(
        lr=1e-3,
        mazes_per_step=2,
        episodes_per_maze=4,
        micro_batch_size=4,
        lora_r=4,
        lora_alpha=8,
        seed=1,
        checkpoint_every=2,
        progress=False,
        out_dir=str(out_dir),
    )
    args = trl_grpo_config(compact, num_processes=1, max_steps=2)
    rollout_func = RecordingRollout(MAZE, batch_size=8)
    trainer = RecordingTrainer(
        str(base_dir),
        args=args,
        train_dataset=maze_dataset(4, MAZE, seed=1),
        rollout=rollout_func,
        peft_config=trl_peft_config(compact),
    )
    result = trainer.train()
    return {"trainer": trainer, "rollout": rollout_func, "result": result, "out_dir": out_dir}


def test_two_steps_run_with_finite_loss(lora_run: dict[str, Any]) -> None:
    trainer = lora_run["trainer"]
    assert lora_run["result"].global_step == 2
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in logs] == [1, 2]
    assert all(math.isfinite(h["loss"]) and math.isfinite(h["grad_norm"]) for h in logs)
    assert len(lora_run["rollout"].calls) == 2  # one generation batch per optimiser step
    assert len(trainer.seen) == 4  # two micro-batches of 4 per step
    # Some group had distinct returns, so the policy received a gradient.
    assert min(h["frac_reward_zero_std"] for h in logs) < 1.0
    assert max(h["grad_norm"] for h in logs) > 0.0


def test_rollout_returns_the_conversation_with_an_action_only_mask(
    lora_run: dict[str, Any],
) -> None:
    tok = lora_run["trainer"].processing_class
    allowed = set(action_token_ids(tok).values())
    for call in lora_run["rollout"].calls:
        out = call["out"]
        assert len(out["prompt_ids"]) == len(call["prompts"]) == 8
        for i, ep in enumerate(call["episodes"]):
            prompt, completion = out["prompt_ids"][i], out["completion_ids"][i]
            mask, logprobs = out["env_mask"][i], out["logprobs"][i]
            assert len(completion) == len(mask) == len(logprobs)
            assert (
                prompt
                == render_chat(tok, ep.messages[:1], add_generation_prompt=True).input_ids.tolist()
            )
            assert completion[-1] == tok.eos_token_id and mask[-1] == 0
            full = render_chat(tok, ep.messages).input_ids.tolist()
            assert prompt + completion[:-1] == full
            marked = [j for j, m in enumerate(mask) if m]
            assert len(marked) == TURNS
            assert [completion[j] for j in marked] == ep.action_ids.tolist()
            assert {completion[j] for j in marked} <= allowed
            assert [len(prompt) + j for j in marked] == ep.action_positions.tolist()
            torch.testing.assert_close(
                torch.tensor([logprobs[j] for j in marked]), ep.logprobs, atol=0, rtol=0
            )
            assert all(logprobs[j] == 0.0 for j in range(len(mask)) if not mask[j])
    logs = [h for h in lora_run["trainer"].state.log_history if "loss" in h]
    assert all(h["completions/mean_length"] == TURNS for h in logs)  # TRL counts masked tokens


def seen_rows(trainer: Any, key: str) -> list[tuple[tuple[int, ...], torch.Tensor]]:
    """``(completion, value)`` of every row TRL's loss saw, padding trimmed."""
    rows = []
    for batch in trainer.seen:
        for ids, real, value in zip(
            batch["completion_ids"], batch["completion_mask"], batch[key], strict=True
        ):
            n = int(real.sum())
            assert int(real[n:].sum()) == 0  # right padding only
            rows.append((tuple(ids[:n].tolist()), value))
    return rows


def test_trl_loss_sees_only_the_action_tokens(lora_run: dict[str, Any]) -> None:
    want = []
    for call in lora_run["rollout"].calls:
        out = call["out"]
        for prompt, completion, ep in zip(
            out["prompt_ids"], out["completion_ids"], call["episodes"], strict=True
        ):
            actions = {p - len(prompt) for p in ep.action_positions.tolist()}  # from the episode
            want.append(
                (tuple(completion), tuple(int(j in actions) for j in range(len(completion))))
            )
    trainer = lora_run["trainer"]
    for batch in trainer.seen:  # nothing past a completion carries loss
        assert int((batch["loss_mask"] * (1 - batch["completion_mask"])).sum()) == 0
    got = sorted(
        (c, tuple(int(x) for x in m[: len(c)].tolist())) for c, m in seen_rows(trainer, "loss_mask")
    )
    assert len(got) == 16
    assert got == sorted(want)


def test_rewards_and_advantages_are_the_envs(lora_run: dict[str, Any]) -> None:
    logs = [h for h in lora_run["trainer"].state.log_history if "loss" in h]
    expected: list[tuple[tuple[int, ...], float]] = []
    for call, log in zip(lora_run["rollout"].calls, logs, strict=True):
        out, episodes = call["out"], call["episodes"]
        returns = []
        for prompt, ep, r in zip(call["prompts"], episodes, out["maze_return"], strict=True):
            seed = maze_seed_of(prompt)
            assert ep.maze_seed == seed
            assert r == pytest.approx(replay_return(seed, ep.episode_seed, ep.actions), abs=1e-9)
            assert r == pytest.approx(float(ep.rewards.sum()), abs=1e-9)
            returns.append(r)
        assert log["reward"] == pytest.approx(sum(returns) / len(returns), abs=1e-4)
        n = len(episodes)
        assert log["maze/gold"] == pytest.approx(sum(e.n_gold for e in episodes) / n)
        assert log["maze/mold"] == pytest.approx(sum(e.n_mold for e in episodes) / n)
        # Dr. GRPO: A = R - mean over the maze's group (4 consecutive rows), no std scaling.
        for g in range(0, len(returns), 4):
            assert len(set(call["prompts"][g : g + 4])) == 1
            group = returns[g : g + 4]
            for j, r in enumerate(group):
                expected.append((tuple(out["completion_ids"][g + j]), r - sum(group) / len(group)))
    got = sorted((c, float(a)) for c, a in seen_rows(lora_run["trainer"], "advantages"))
    expected.sort()
    assert [c for c, _ in got] == [c for c, _ in expected]
    for (_, adv), (_, want) in zip(got, expected, strict=True):
        assert adv == pytest.approx(want, abs=1e-4)


def test_checkpoint_loads_back_as_a_trained_bridge(lora_run: dict[str, Any]) -> None:
    ckpt = lora_run["out_dir"] / "checkpoint-2"
    assert (ckpt / "adapter_model.safetensors").is_file()
    trained = load_trl_checkpoint(lora_run["out_dir"])  # base found from adapter_config.json
    base = load_model("tiny-llama")
    info = model_info(trained)
    assert info.source == "trl-checkpoint"
    assert info.extra["step"] == 2 and info.extra["finetune"] == "lora"
    assert info.extra["base_model_id"] == model_info(base).model_id == "tiny-llama-seed0"
    got, want = trained.original_model.state_dict(), base.original_model.state_dict()
    assert got.keys() == want.keys()
    changed = [k for k in want if not torch.equal(got[k], want[k])]
    assert changed and not any("embed" in k or "norm" in k for k in changed)  # LoRA: linears
    ids = base.tokenizer("Where do you move?", return_tensors="pt").input_ids
    assert not torch.allclose(trained(ids), base(ids))
    _, cache = trained.run_with_cache(ids)  # hooks work: ready for extraction
    assert cache["blocks.1.hook_resid_post"].shape[-1] == 64
    named = load_trl_checkpoint(ckpt, base="tiny-llama")  # base by welfare_lens name
    assert all(torch.equal(named.original_model.state_dict()[k], got[k]) for k in changed)


def test_restricted_logprobs_are_the_sampling_distribution(lora_run: dict[str, Any]) -> None:
    trainer = lora_run["trainer"]
    call = lora_run["rollout"].calls[-1]
    out = call["out"]
    model = trainer.accelerator.unwrap_model(trainer.model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(2):
                prompt, completion = out["prompt_ids"][i], out["completion_ids"][i]
                ids = torch.tensor([prompt + completion])
                labels = ids.clone()
                labels[:, : len(prompt)] = -100
                res = model(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    labels=labels,
                    fused_lm_head=True,
                )
                logp = res.log_probs[0, len(prompt) - 1 :]
                mask = torch.tensor(out["env_mask"][i]).bool()
                # The policy moved after this batch was sampled, so compare its restricted
                # softmax with a fresh one, not the recorded sampling log-probs.
                full = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
                allowed = trainer.restricted_action_ids
                restricted = torch.log_softmax(full[:, allowed] / 0.7, dim=-1)
                picked = (ids[0, len(prompt) :, None] == allowed).float().argmax(-1)
                want = restricted.gather(-1, picked[:, None]).squeeze(-1)
                torch.testing.assert_close(logp[mask], want[mask], atol=1e-5, rtol=0)
                assert bool((logp[mask].exp() < 1).all())
    finally:
        model.train(was_training)


def test_restricted_head_matches_the_rollout_before_any_update(
    base_dir: Path, tmp_path: Path
) -> None:
    hf, tok, _ = load_hf_model(str(base_dir))
    args = trl_grpo_config(
        GRPOConfig(mazes_per_step=1, episodes_per_maze=2, progress=False),
        num_processes=1,
        max_steps=1,
        output_dir=str(tmp_path),
    )
    trainer = MazeGRPOTrainer(
        hf, args=args, train_dataset=maze_dataset(1, MAZE), processing_class=tok, maze_config=MAZE
    )
    out = trainer.maze_rollout(["maze_seed=5", "maze_seed=5"], trainer)
    for prompt, completion, mask, lps in zip(
        out["prompt_ids"], out["completion_ids"], out["env_mask"], out["logprobs"], strict=True
    ):
        ids = torch.tensor([prompt + completion])
        labels = ids.clone()
        labels[:, : len(prompt)] = -100
        with torch.no_grad():
            res = trainer.model(input_ids=ids, labels=labels, fused_lm_head=True)
        m = torch.tensor(mask).bool()
        torch.testing.assert_close(
            res.log_probs[0, len(prompt) - 1 :][m], torch.tensor(lps)[m], atol=1e-5, rtol=0
        )
        assert float(res.entropy[0, len(prompt) - 1 :][m].max()) <= math.log(4) + 1e-6


def test_full_finetune_checkpoint_loads_back(base_dir: Path, tmp_path: Path) -> None:
    compact = GRPOConfig(
        lr=1e-3,
        finetune="full",
        mazes_per_step=1,
        episodes_per_maze=4,
        seed=2,
        progress=False,
        out_dir=str(tmp_path),
    )
    args = trl_grpo_config(
        compact, num_processes=1, max_steps=1, save_strategy="steps", save_steps=1
    )
    trainer = MazeGRPOTrainer(
        str(base_dir),
        args=args,
        train_dataset=maze_dataset(2, MAZE, seed=4),
        maze_config=MAZE,
        peft_config=trl_peft_config(compact),
    )
    assert trainer.train().global_step == 1
    ckpt = tmp_path / "checkpoint-1"
    assert (ckpt / "config.json").is_file() and not (ckpt / "adapter_config.json").exists()
    trained = load_trl_checkpoint(ckpt, base=str(base_dir))
    info = model_info(trained)
    assert info.extra["finetune"] == "full" and info.extra["base_model_id"] == "tiny-llama-seed0"
    base = load_model("tiny-llama")
    ids = base.tokenizer("N", return_tensors="pt").input_ids
    assert trained(ids).shape == base(ids).shape
    got, want = trained.original_model.state_dict(), base.original_model.state_dict()
    assert any(not torch.equal(got[k], want[k]) for k in want)


def test_trainer_refuses_vllm_and_foreign_rollouts(base_dir: Path) -> None:
    args = trl_grpo_config(num_processes=1, use_vllm=True)
    with pytest.raises(TrainingError, match="vLLM"):
        MazeGRPOTrainer(str(base_dir), args=args)
    with pytest.raises(TrainingError, match="rollout"):
        MazeGRPOTrainer(str(base_dir), rollout_func=lambda p, t: {})
