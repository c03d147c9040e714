"""Multi-turn rollouts: token format, sampling log-probs, KV cache, steering, determinism."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from welfare_lens.chat import action_token_ids, render_chat
from welfare_lens.errors import TrainingError
from welfare_lens.hooks import add_vector_hook
from welfare_lens.maze import MazeConfig, MazeEnv
from welfare_lens.models import load_model
from welfare_lens.rl import (
    RolloutStats,
    collate,
    maze_groups,
    restricted_logprobs,
    rollout,
    sliding_window,
)
from welfare_lens.rl.rollout import UNKNOWN_TILE

CFG = MazeConfig(size=20, turns=4, wind_p=0.3)


def _allowed(model: Any) -> torch.Tensor:
    ids = action_token_ids(model.tokenizer)
    return torch.tensor([ids[a] for a in "NESW"])


def test_tokens_equal_render_chat_and_cache_feeds_each_token_once(tiny_llama: Any) -> None:
    envs = maze_groups(CFG, 2, 3, seed=5)
    stats = RolloutStats()
    episodes = rollout(tiny_llama, envs, seed=1, stats=stats)
    assert len(episodes) == 6 and stats.episodes == 6
    for ep in episodes:
        rendered = render_chat(tiny_llama.tokenizer, ep.messages)
        # The training format: render_chat's default, no end-of-turn after the final move.
        assert ep.input_ids.tolist() == rendered.input_ids.tolist()
        assert torch.equal(ep.action_mask, rendered.assistant_content_mask)
        assert rendered.text.endswith("<|im_start|>assistant\n" + ep.actions[-1])
        assert "system" not in rendered.text
        assert ep.input_ids[ep.action_positions].tolist() == ep.action_ids.tolist()
        assert ep.n_turns == CFG.turns
        # KV cache across turns: every token but the final action goes through the model once.
        assert ep.fed_tokens == len(ep.input_ids) - 1
    saved = stats.shared_prefill_tokens
    assert stats.fed_tokens + saved == sum(len(e.input_ids) - 1 for e in episodes)
    assert stats.forward_calls == CFG.turns + (saved > 0)  # one call per turn (+ prefill)
    assert any("wind" in m["content"] for e in episodes for m in e.messages)


def test_episode_records_rewards_and_tiles(tiny_llama: Any) -> None:
    env = MazeEnv(CFG, 3)
    (ep,) = rollout(tiny_llama, [MazeEnv(CFG, 3)], seed=2)
    replay = [env.step(a) for a in ep.actions]  # same maze and episode seed: same outcome
    assert ep.rewards.tolist() == pytest.approx([r.reward for r in replay])
    assert ep.gold.tolist() == [r.gold_consumed for r in replay]
    assert ep.mold.tolist() == [r.mold_entered for r in replay]
    assert ep.neighbours.tolist() == [[int(t) for t in r.neighbours] for r in replay]
    assert ep.total_reward == pytest.approx(env.total_reward)
    assert ep.maze_seed == 3 and ep.episode_seed == 3


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen3", "tiny-gemma3"])
def test_sampling_logprobs_equal_one_full_forward(name: str) -> None:
    model = load_model(name)
    envs = maze_groups(CFG, 1, 3, seed=11)
    episodes = rollout(model, envs, seed=4)
    if name == "tiny-gemma3":
        # Sliding window of 64 tokens: decoded one episode per lane, so no padding gaps.
        assert sliding_window(model) == 64
        assert len(episodes[0].input_ids) > 64
    allowed = _allowed(model)
    for ep in episodes:
        with torch.no_grad():
            logits = model(ep.input_ids[None])
        lp = restricted_logprobs(
            logits[:, :-1], ep.input_ids[None, 1:], allowed, 0.7, mask=ep.action_mask[None, 1:]
        )[0]
        assert lp[ep.action_mask[1:]].tolist() == pytest.approx(ep.logprobs.tolist(), abs=1e-4)
        assert ep.logprobs.dtype == torch.float32
        assert torch.allclose(ep.action_probs.sum(-1), torch.ones(ep.n_turns))
        chosen = ep.action_probs.gather(1, ep.action_index[:, None]).squeeze(1)
        assert torch.allclose(chosen.log(), ep.logprobs, atol=1e-6)


def test_sliding_window_models_batch_short_episodes_exactly() -> None:
    """Episodes whose whole cache fits in the window are batched; the numbers do not change."""
    model = load_model("tiny-gemma3")
    model.original_model.config.get_text_config().sliding_window = 1024
    assert sliding_window(model) == 1024
    short = MazeConfig(size=20, turns=2)
    stats_batched, stats_single = RolloutStats(), RolloutStats()
    batched = rollout(model, maze_groups(short, 2, 3, seed=2), seed=6, stats=stats_batched)
    single = rollout(
        model, maze_groups(short, 2, 3, seed=2), seed=6, stats=stats_single, batch_size=1
    )
    assert stats_batched.forward_calls < stats_single.forward_calls  # one lane, not six
    for a, b in zip(batched, single, strict=True):
        assert a.actions == b.actions
        torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=1e-4)
    assert max(len(e.input_ids) for e in batched) < 1024
    # A window the episodes could outgrow keeps one episode per lane.
    model.original_model.config.get_text_config().sliding_window = 64
    stats_long = RolloutStats()
    rollout(model, maze_groups(short, 2, 3, seed=2), seed=6, stats=stats_long)
    assert stats_long.forward_calls == stats_single.forward_calls


def test_batching_does_not_change_the_samples(tiny_llama: Any) -> None:
    runs = [
        rollout(tiny_llama, maze_groups(CFG, 2, 2, seed=3), seed=9, batch_size=b)
        for b in (None, 1, 3)
    ]
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert a.actions == b.actions
            assert torch.allclose(a.logprobs, b.logprobs, atol=1e-5)


def test_same_seed_same_episodes_other_seed_differs(tiny_llama: Any) -> None:
    def play(seed: int) -> list[list[str]]:
        return [e.actions for e in rollout(tiny_llama, maze_groups(CFG, 2, 4, 0), seed=seed)]

    first = play(7)
    assert play(7) == first
    assert play(8) != first


def test_steering_hook_changes_the_action_distribution(tiny_llama: Any) -> None:
    # Push the last block's output along the unembedding of "N": P(N) must rise.
    north = action_token_ids(tiny_llama.tokenizer)["N"]
    vector = tiny_llama.W_U[:, north].detach() * 200
    seen: list[int] = []

    def counting(act: torch.Tensor, hook: Any) -> None:
        seen.append(act.shape[1])

    hooks = [
        ("blocks.1.hook_resid_post", add_vector_hook(vector)),
        ("blocks.0.hook_resid_post", counting),
    ]
    plain = rollout(tiny_llama, maze_groups(CFG, 1, 4, seed=2), seed=3)
    steered = rollout(tiny_llama, maze_groups(CFG, 1, 4, seed=2), seed=3, fwd_hooks=hooks)
    with tiny_llama.hooks(fwd_hooks=[hooks[0]]):
        ctx = rollout(tiny_llama, maze_groups(CFG, 1, 4, seed=2), seed=3)
    p_plain = torch.cat([e.action_probs for e in plain]).mean(0)
    p_steer = torch.cat([e.action_probs for e in steered]).mean(0)
    assert p_plain[0] < 0.4 < 0.6 < p_steer[0]
    assert torch.allclose(steered[0].action_probs[0], ctx[0].action_probs[0], atol=1e-5)
    # The hook ran once per turn on the new chunk only, never on the whole history.
    assert len(seen) == CFG.turns + 1  # the group's shared first-prompt prefix, then each turn
    assert max(seen) < len(steered[0].input_ids) / 2
    # And the hooks are gone afterwards.
    again = rollout(tiny_llama, maze_groups(CFG, 1, 4, seed=2), seed=3)
    assert [e.actions for e in again] == [e.actions for e in plain]


def test_custom_environment(tiny_llama: Any, bandit: Any) -> None:
    episodes = rollout(tiny_llama, [bandit() for _ in range(5)], seed=0, groups=[0, 0, 1, 1, 1])
    assert [e.group for e in episodes] == [0, 0, 1, 1, 1]
    for ep in episodes:
        assert ep.n_turns == 1
        assert ep.neighbours.tolist() == [[UNKNOWN_TILE] * 4]
        assert ep.total_reward == (1.0 if ep.actions == ["E"] else 0.0)
        assert ep.maze_seed is None


def test_maze_groups_share_the_maze_within_a_group() -> None:
    envs = maze_groups(CFG, 3, 2, seed=1)
    assert len(envs) == 6
    assert envs[0].maze is envs[1].maze and envs[0].maze is not envs[2].maze
    assert envs[0].episode_seed != envs[1].episode_seed
    shared = maze_groups(CFG, 3, 2, seed=1, shared_episode_seed=True)
    assert shared[0].episode_seed == shared[1].episode_seed == shared[0].maze.seed
    assert [e.maze.seed for e in maze_groups(CFG, 3, 2, seed=1)] == [e.maze.seed for e in envs]
    with pytest.raises(TrainingError, match="n_mazes"):
        maze_groups(CFG, 0, 2, seed=1)


def test_collate_right_pads(tiny_llama: Any, bandit: Any) -> None:
    envs = [bandit(), bandit(prompt="A much longer prompt: pick one of N, E, S or W now.")]
    episodes = rollout(tiny_llama, envs, seed=0)
    batch = collate(episodes, pad_id=0)
    short, long = (len(e.input_ids) for e in episodes)
    assert batch["input_ids"].shape == (2, long)
    assert batch["input_ids"][0, short:].eq(0).all()
    assert batch["action_mask"].sum() == 2
    assert batch["lengths"].tolist() == [short, long]
    assert batch["turn_mask"].all()


def test_sliding_window_detection(tiny_llama: Any) -> None:
    assert sliding_window(tiny_llama) is None
    assert sliding_window(object()) is None


def test_rollout_errors(tiny_llama: Any) -> None:
    with pytest.raises(TrainingError, match="temperature"):
        rollout(tiny_llama, [MazeEnv(CFG, 0)], temperature=0.0)
    with pytest.raises(TrainingError, match="batch_size"):
        rollout(tiny_llama, [MazeEnv(CFG, 0)], batch_size=0)
    with pytest.raises(TrainingError, match="groups"):
        rollout(tiny_llama, [MazeEnv(CFG, 0)], groups=[0, 1])
    done = MazeEnv(CFG, 0)
    for _ in range(CFG.turns):
        done.step("N")
    with pytest.raises(TrainingError, match="already done"):
        rollout(tiny_llama, [done])


@pytest.mark.slow
def test_smollm2_rollout_format_and_logprobs(smollm2: Any) -> None:
    cfg = MazeConfig(turns=2)  # the paper's maze, two turns
    episodes = rollout(smollm2, maze_groups(cfg, 1, 2, seed=0), seed=0)
    allowed = _allowed(smollm2)
    for ep in episodes:
        rendered = render_chat(smollm2.tokenizer, ep.messages)
        assert ep.input_ids.tolist() == rendered.input_ids.tolist()
        assert "SmolLM" not in rendered.text and "system" not in rendered.text
        assert ep.fed_tokens == len(ep.input_ids) - 1
        with torch.no_grad():
            logits = smollm2(ep.input_ids[None])
        lp = restricted_logprobs(
            logits[:, :-1], ep.input_ids[None, 1:], allowed, 0.7, mask=ep.action_mask[None, 1:]
        )[0]
        assert lp[ep.action_mask[1:]].tolist() == pytest.approx(ep.logprobs.tolist(), abs=1e-4)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen3"])
@pytest.mark.parametrize("same_seed", [True, False])
def test_shared_group_prefill_is_exact(name: str, same_seed: bool) -> None:
    from welfare_lens.models import load_model
    from welfare_lens.rl.rollout import RolloutStats

    model = load_model(name)
    cfg = MazeConfig(size=20, turns=3)
    runs = {}
    for share in (True, False):
        stats = RolloutStats()
        envs = maze_groups(cfg, 3, 3, seed=5, shared_episode_seed=same_seed)
        episodes = rollout(
            model,
            envs,
            seed=1,
            groups=[i // 3 for i in range(9)],
            stats=stats,
            share_prefill=share,
            batch_size=6,
        )
        runs[share] = (episodes, stats)
    (shared, on), (alone, off) = runs[True], runs[False]
    for a, b in zip(shared, alone, strict=True):
        assert a.actions == b.actions
        assert list(a.input_ids) == list(b.input_ids)
        assert list(a.action_positions) == list(b.action_positions)
        torch.testing.assert_close(
            torch.as_tensor(a.logprobs), torch.as_tensor(b.logprobs), atol=1e-5, rtol=0
        )
    # The group's common prefix is encoded once: fewer tokens fed, by what was shared.
    assert on.shared_prefill_tokens > 0 and off.shared_prefill_tokens == 0
    assert on.fed_tokens < off.fed_tokens
