"""Held-out policy snapshots and learning curves: statistics by hand, caching, resuming."""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from welfare_lens.chat import action_token_ids, render_chat
from welfare_lens.errors import DataError, ShapeError, TrainingError
from welfare_lens.maze import MazeConfig, MazeEnv, MoldAvoider, OptimalPolicy, RandomPolicy
from welfare_lens.models import load_model
from welfare_lens.rl import episode_metrics, maze_groups, rollout
from welfare_lens.rl.checkpoint import load_checkpoint
from welfare_lens.rl.learning_curve import (
    HELD_OUT_SEED,
    LearningCurve,
    PolicySnapshot,
    learning_curve,
    policy_snapshot,
    reference_snapshot,
    snapshot_from_episodes,
)
from welfare_lens.rl.rollout import Episode

# The module itself (welfare_lens.rl may export a function of the same name).
lc_module = importlib.import_module("welfare_lens.rl.learning_curve")
M, G, P, U = 0, 1, 2, -1  # Mold, Gold, Path, unknown tile
MAZE = MazeConfig(size=20, turns=2, prompt_format="compact")


def episode(
    chosen: list[int],
    neighbours: list[list[int]],
    probs: list[list[float]],
    rewards: list[float],
    gold: list[int],
    mold: list[int],
) -> Episode:
    """A scripted episode: only the fields the snapshot reads are meaningful."""
    n = len(chosen)
    ids = torch.arange(2 * n + 1)
    positions = torch.arange(1, 2 * n + 1, 2)
    mask = torch.zeros(ids.shape[0], dtype=torch.bool)
    mask[positions] = True
    return Episode(
        input_ids=ids,
        action_mask=mask,
        action_positions=positions,
        action_ids=torch.tensor(chosen),
        action_index=torch.tensor(chosen),
        actions=["NESW"[c] for c in chosen],
        logprobs=torch.zeros(n),
        action_probs=torch.tensor(probs, dtype=torch.float32),
        neighbours=torch.tensor(neighbours),
        rewards=torch.tensor(rewards, dtype=torch.float64),
        gold=torch.tensor(gold),
        mold=torch.tensor(mold),
    )


def scripted() -> list[Episode]:
    quarter = [0.25] * 4
    one = episode(
        chosen=[0, 1, 2],  # N onto Gold, E onto Mold, S onto Path
        neighbours=[[G, P, M, P], [M, M, P, G], [P, P, P, P]],
        probs=[[0.5, 0.2, 0.1, 0.2], [0.1, 0.3, 0.2, 0.4], quarter],
        rewards=[19.9, -10.1, -0.1],
        gold=[1, 0, 0],
        mold=[0, 1, 0],
    )
    two = episode(
        chosen=[3, 0, 0],  # W onto Path (Gold in view), N onto Mold, N with unknown tiles
        neighbours=[[G, G, M, P], [M, P, P, P], [U, U, U, U]],
        probs=[[0.3, 0.3, 0.2, 0.2], [0.6, 0.2, 0.1, 0.1], quarter],
        rewards=[-0.1, -10.1, -0.1],
        gold=[0, 0, 0],
        mold=[0, 1, 0],
    )
    return [one, two]


# ------------------------------------------------------------------ statistics by hand


def test_snapshot_statistics_match_a_hand_count() -> None:
    snap = snapshot_from_episodes(scripted())
    assert (snap.n_episodes, snap.n_mazes, snap.n_decisions, snap.n_known) == (2, 2, 6, 5)
    # Gold in view at three decisions (both first turns, and W in episode one's second turn);
    # one of the three moves went onto it.
    assert (snap.n_gold_available, snap.gold_moves) == (3, 1)
    assert snap.p_gold_given_available == pytest.approx(1 / 3)
    assert snap.p_gold_se == pytest.approx(math.sqrt(1 / 3 * 2 / 3 / 3))
    assert snap.p_gold_mass == pytest.approx((0.5 + 0.4 + 0.6) / 3)
    assert snap.chance_gold == pytest.approx((1 / 4 + 1 / 4 + 2 / 4) / 3)
    # Two moves onto Mold among the five decisions with known tiles; Mold in view at four.
    assert (snap.n_mold_available, snap.mold_moves) == (4, 2)
    assert snap.p_mold == pytest.approx(2 / 5)
    assert snap.p_mold_se == pytest.approx(math.sqrt(0.4 * 0.6 / 5))
    assert snap.p_mold_given_available == pytest.approx(2 / 4)
    assert snap.p_mold_mass == pytest.approx((0.1 + 0.4 + 0.2 + 0.6) / 4)
    assert snap.chance_mold == pytest.approx((0.25 + 0.5 + 0.0 + 0.25 + 0.25) / 5)
    # Returns 9.7 and -10.3: mean -0.3, SD 20/sqrt(2), SE = SD/sqrt(2) = 10.
    assert snap.return_mean == pytest.approx(-0.3)
    assert snap.return_se == pytest.approx(10.0)
    assert (snap.gold_per_episode, snap.mold_per_episode) == (0.5, 1.0)
    assert snap.direction_counts == {"N": 3, "E": 1, "S": 1, "W": 1}
    assert snap.direction_shares == {"N": 0.5, "E": 1 / 6, "S": 1 / 6, "W": 1 / 6}
    assert (snap.max_direction_share, snap.dominant_direction) == (0.5, "N")


def test_return_se_uses_maze_means_when_a_maze_has_several_episodes() -> None:
    quarter = [[0.25] * 4]
    eps = [episode([0], [[P, P, P, P]], quarter, [r], [0], [0]) for r in (1.0, 3.0, 5.0, 7.0)]
    per_episode = snapshot_from_episodes(eps)
    assert per_episode.return_se == pytest.approx(np.std([1, 3, 5, 7], ddof=1) / 2)
    per_maze = snapshot_from_episodes(eps, episodes_per_maze=2)
    assert per_maze.n_mazes == 2
    assert per_maze.return_se == pytest.approx(np.std([2, 6], ddof=1) / math.sqrt(2))
    # No Gold or Mold ever in view: the conditional shares are undefined, not 0.
    assert per_maze.p_gold_given_available is None and per_maze.p_mold_given_available is None
    assert per_maze.p_mold == 0.0
    assert math.isnan(snapshot_from_episodes(eps[:1]).return_se)


def test_snapshot_round_trips_through_json() -> None:
    snap = snapshot_from_episodes(scripted(), settings={"seed": 7})
    data = json.loads(json.dumps(snap.to_dict()))
    assert data["max_direction_share"] == 0.5 and data["dominant_direction"] == "N"
    back = PolicySnapshot.from_dict(data)
    assert back.to_dict() == snap.to_dict()
    text = repr(snap)
    assert "P(Gold|avail)=0.333" in text and "P(Mold)=0.400" in text and "(N)" in text


def test_mold_share_among_avoidable_moves_leaves_out_moves_boxed_in_by_mold() -> None:
    quarter = [0.25] * 4
    boxed = episode(
        chosen=[0, 1, 3],  # N onto Mold (all four are Mold), E onto Path, W onto Mold
        neighbours=[[M, M, M, M], [M, P, P, P], [P, G, P, M]],
        probs=[quarter] * 3,
        rewards=[-10.1, -0.1, -10.1],
        gold=[0, 0, 0],
        mold=[1, 0, 1],
    )
    snap = snapshot_from_episodes([boxed])
    assert snap.p_mold == pytest.approx(2 / 3)
    # Two decisions had a way off Mold; one of them went onto Mold anyway.
    assert snap.n_mold_avoidable == 2
    assert snap.p_mold_avoidable == pytest.approx(1 / 2)
    assert snap.p_mold_avoidable_se == pytest.approx(math.sqrt(0.25 / 2))
    # Unknown tiles count as neither avoidable nor not.
    assert snapshot_from_episodes(scripted()).n_mold_avoidable == 5
    assert "avoidable 0.500" in repr(snap)


def test_snapshot_cached_before_the_avoidable_share_still_loads() -> None:
    data = snapshot_from_episodes(scripted()).to_dict()
    for key in ("n_mold_avoidable", "p_mold_avoidable", "p_mold_avoidable_se"):
        del data[key]
    old = PolicySnapshot.from_dict(data)
    assert old.p_mold_avoidable is None and old.p_mold == pytest.approx(0.4)


def test_reference_policies_give_floors_and_chance_on_the_held_out_mazes() -> None:
    cfg = MazeConfig(size=30, turns=6)
    avoider = reference_snapshot(MoldAvoider(), cfg, n_mazes=40)
    # It steps onto Gold whenever Gold is in view and never onto Mold it could avoid; what is
    # left of P(Mold) is the maze's floor.
    assert avoider.p_gold_given_available == 1.0
    assert avoider.p_mold_avoidable == 0.0
    assert avoider.n_decisions == 40 * 6 and avoider.settings["policy"] == "MoldAvoider()"
    assert avoider.p_gold_mass == 1.0  # one-hot: the realised choice
    random = reference_snapshot(RandomPolicy(), cfg, n_mazes=40)
    assert random.p_mold is not None and random.chance_mold is not None
    assert abs(random.p_mold - random.chance_mold) < 4 * (random.p_mold_se or 0.0)
    assert random.p_mold > 3 * max(avoider.p_mold or 0.0, 0.01)
    planner = reference_snapshot(OptimalPolicy(horizon=4), cfg, n_mazes=40)
    assert planner.return_mean > avoider.return_mean > random.return_mean


def test_reference_snapshot_plays_the_mazes_policy_snapshot_plays() -> None:
    seen: list[int] = []

    def record(env: MazeEnv, rng: np.random.Generator) -> str:
        if env.turn == 0:
            seen.append(env.maze.seed)
        return "N"

    reference_snapshot(record, MAZE, n_mazes=3, seed=HELD_OUT_SEED)
    assert seen == [env.maze.seed for env in maze_groups(MAZE, 3, 1, HELD_OUT_SEED)]

    def talks(env: MazeEnv, rng: np.random.Generator) -> str:
        return "I would rather not"

    with pytest.raises(DataError, match="not one of"):
        reference_snapshot(talks, MAZE, n_mazes=1)
    with pytest.raises(DataError, match="n_mazes"):
        reference_snapshot(MoldAvoider(), MAZE, n_mazes=0)
    with pytest.raises(DataError, match="MazeConfig"):
        reference_snapshot(MoldAvoider(), {"turns": 2}, n_mazes=1)  # type: ignore[arg-type]


def test_snapshot_rejects_bad_input() -> None:
    with pytest.raises(DataError, match="No episodes") as err:
        snapshot_from_episodes([])
    assert err.value.hint
    with pytest.raises(DataError, match="does not divide"):
        snapshot_from_episodes(scripted(), episodes_per_maze=4)
    with pytest.raises(ShapeError, match="one per action") as err2:
        snapshot_from_episodes(scripted(), actions=("N", "E", "S"))
    assert "actions" in (err2.value.hint or "")
    with pytest.raises(DataError, match="lacks"):
        PolicySnapshot.from_dict({"n_episodes": 1})


def test_policy_snapshot_rejects_bad_arguments(tiny_llama: Any) -> None:
    with pytest.raises(DataError, match="n_mazes") as err:
        policy_snapshot(tiny_llama, MAZE, n_mazes=0)
    assert err.value.hint
    with pytest.raises(DataError, match="MazeConfig"):
        policy_snapshot(tiny_llama, {"turns": 2})  # type: ignore[arg-type]
    with pytest.raises(DataError, match="seed"):
        policy_snapshot(tiny_llama, MAZE, n_mazes=1, seed=-1)
    with pytest.raises(TrainingError, match="temperature"):
        policy_snapshot(tiny_llama, MAZE, n_mazes=1, temperature=0.0)


# ------------------------------------------------------------------ on a model


def test_policy_snapshot_agrees_with_the_trainers_episode_metrics(tiny_llama: Any) -> None:
    snap = policy_snapshot(tiny_llama, MAZE, n_mazes=6, temperature=0.9)
    # The same held-out episodes, summarised by the trainer's own metrics function.
    envs = maze_groups(MAZE, 6, 1, HELD_OUT_SEED)
    eps = rollout(tiny_llama, envs, temperature=0.9, seed=HELD_OUT_SEED)
    metrics = episode_metrics(eps, 1)
    assert snap.return_mean == pytest.approx(metrics["reward_mean"])
    assert snap.gold_per_episode == pytest.approx(metrics["gold_per_episode"])
    if metrics["p_gold"] is not None:
        assert snap.p_gold_mass == pytest.approx(metrics["p_gold"])
    if metrics["p_mold"] is not None:
        assert snap.p_mold_mass == pytest.approx(metrics["p_mold"])
    for a in "NESW":
        assert snap.direction_shares[a] == pytest.approx(metrics.get(f"frac_{a}", 0.0))
    assert snap.n_decisions == 12 and sum(snap.direction_counts.values()) == 12
    again = policy_snapshot(tiny_llama, MAZE, n_mazes=6, temperature=0.9)
    assert again.to_dict() | {"settings": {}} == snap.to_dict() | {"settings": {}}


def test_greedy_snapshot_plays_the_argmax_move(tiny_llama: Any) -> None:
    cfg = MazeConfig(size=20, turns=1, prompt_format="compact")
    snap = policy_snapshot(tiny_llama, cfg, n_mazes=5, greedy=True)
    ids = action_token_ids(tiny_llama.tokenizer, ("N", "E", "S", "W"))
    allowed = torch.tensor([ids[a] for a in "NESW"])
    expected = dict.fromkeys("NESW", 0)
    for env in maze_groups(cfg, 5, 1, HELD_OUT_SEED):
        prompt = render_chat(tiny_llama.tokenizer, env.messages, add_generation_prompt=True)
        with torch.no_grad():
            logits = tiny_llama(prompt.input_ids.unsqueeze(0))[0, -1]
        expected["NESW"[int(logits[allowed].argmax())]] += 1
    assert snap.direction_counts == expected
    assert snap.settings["greedy"] is True


# ------------------------------------------------------------------ the curve


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_lora_run: Callable[..., Path]) -> Path:
    """A two-step LoRA run with a checkpoint after each step."""
    return tiny_lora_run(tmp_path_factory.mktemp("run"), MAZE, episodes_per_maze=2, lr=5e-2)


def test_learning_curve_points_cache_and_base_untouched(run_dir: Path, tiny_llama: Any) -> None:
    curve = learning_curve(run_dir, tiny_llama, MAZE, n_mazes=4)
    assert curve.steps == [0, 1, 2]
    assert [p.checkpoint for p in curve.points] == [None, "checkpoint-000001", "checkpoint-000002"]
    # Step 0 is the untrained model, which the checkpoint loading did not modify.
    base = policy_snapshot(tiny_llama, MAZE, n_mazes=4)
    assert curve.points[0].snapshot.return_mean == pytest.approx(base.return_mean)
    assert curve.points[0].snapshot.direction_counts == base.direction_counts
    # Step 2 is the checkpoint's policy, loaded on its own.
    trained = load_checkpoint(run_dir / "checkpoint-000002", load_model("tiny-llama"))
    direct = policy_snapshot(trained, MAZE, n_mazes=4)
    assert curve.points[2].snapshot.direction_counts == direct.direction_counts
    assert curve.points[2].snapshot.return_mean == pytest.approx(direct.return_mean)
    assert curve.points[2].snapshot.p_mold_mass == pytest.approx(direct.p_mold_mass)
    # ... and not the base: the policy's probabilities moved (lr 5e-2).
    assert curve.points[2].snapshot.p_mold_mass != pytest.approx(
        curve.points[0].snapshot.p_mold_mass, abs=1e-6
    )
    cache = json.loads((run_dir / "learning_curve.json").read_text())
    entry = next(e for e in cache["entries"].values() if e["settings"]["n_mazes"] == 4)
    assert sorted(entry["points"]) == ["0", "1", "2"]
    rows = curve.rows()
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert rows[1]["return_mean"] == pytest.approx(curve.points[1].snapshot.return_mean)
    assert sum(rows[2][f"share_{a}"] for a in "NESW") == pytest.approx(1.0)
    assert "->" in repr(curve) and "P(Gold|avail)" in repr(curve)
    assert json.loads(json.dumps(curve.to_dict()))["rows"][0]["phase"] == "untrained"


def test_learning_curve_batch_size_bounds_memory_not_the_result(
    run_dir: Path, tiny_llama: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each episode samples from its own stream: one at a time gives the same snapshots."""
    whole = learning_curve(run_dir, tiny_llama, MAZE, n_mazes=4, out=tmp_path / "a.json")
    played = lc_module.policy_snapshot
    sizes: list[int | None] = []

    def recording(*args: Any, **kwargs: Any) -> PolicySnapshot:
        sizes.append(kwargs.get("batch_size"))
        return played(*args, **kwargs)

    monkeypatch.setattr(lc_module, "policy_snapshot", recording)
    single = learning_curve(
        run_dir, tiny_llama, MAZE, n_mazes=4, batch_size=1, out=tmp_path / "b.json"
    )
    assert sizes == [1, 1, 1]
    for a, b in zip(whole.points, single.points, strict=True):
        assert a.snapshot.direction_counts == b.snapshot.direction_counts
        assert a.snapshot.return_mean == pytest.approx(b.snapshot.return_mean)


def test_learning_curve_rerun_is_read_from_the_cache(
    run_dir: Path, tiny_llama: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = learning_curve(run_dir, tiny_llama, MAZE, n_mazes=3)

    def no_play(*args: Any, **kwargs: Any) -> PolicySnapshot:
        raise AssertionError("a cached snapshot was recomputed")

    monkeypatch.setattr(lc_module, "policy_snapshot", no_play)
    again = learning_curve(run_dir, tiny_llama, MAZE, n_mazes=3)
    assert again.rows() == first.rows()


def test_killed_evaluation_resumes_with_the_missing_points(
    run_dir: Path, tiny_llama: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = lc_module.policy_snapshot
    calls: list[int] = []

    def dies_on_second(*args: Any, **kwargs: Any) -> PolicySnapshot:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(lc_module, "policy_snapshot", dies_on_second)
    out = run_dir / "other_cache.json"
    with pytest.raises(KeyboardInterrupt):
        learning_curve(run_dir, tiny_llama, MAZE, n_mazes=2, out=out)
    calls.clear()

    def counted(*args: Any, **kwargs: Any) -> PolicySnapshot:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(lc_module, "policy_snapshot", counted)
    curve = learning_curve(run_dir, tiny_llama, MAZE, n_mazes=2, out=out)
    assert curve.steps == [0, 1, 2] and len(calls) == 2  # step 0 was kept; 1 and 2 recomputed


def test_learning_curve_selects_steps_and_rejects_bad_input(
    run_dir: Path, tiny_llama: Any, tmp_path: Path
) -> None:
    curve = learning_curve(run_dir, tiny_llama, MAZE, steps=[2, 0], n_mazes=3)
    assert curve.steps == [0, 2]
    with pytest.raises(DataError, match=r"step\(s\) \[5\]") as err:
        learning_curve(run_dir, tiny_llama, MAZE, steps=[5], n_mazes=3)
    assert "Available: [0, 1, 2]" in (err.value.hint or "")
    with pytest.raises(DataError, match="no checkpoint") as err2:
        learning_curve(tmp_path, tiny_llama, MAZE)
    assert err2.value.hint
    trained = load_checkpoint(run_dir, load_model("tiny-llama"), merge=False)
    with pytest.raises(TrainingError, match="LoRA adapter"):
        learning_curve(run_dir, trained, MAZE, n_mazes=3)
    with pytest.raises(DataError, match="base_model"):
        learning_curve(run_dir, 3.5, MAZE, n_mazes=3)
    with pytest.raises(TrainingError, match="trained from") as err3:
        learning_curve(run_dir, "tiny-qwen3", MAZE, n_mazes=1)  # not cached: the base is loaded
    assert "untrained model the run started from" in (err3.value.hint or "")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="unreadable"):
        learning_curve(run_dir, tiny_llama, MAZE, n_mazes=3, out=bad)


def test_figure_draws_rates_return_band_and_stacked_shares(run_dir: Path, tiny_llama: Any) -> None:
    curve = learning_curve(run_dir, tiny_llama, MAZE, n_mazes=3)
    fig = curve.figure()
    names = [t.name for t in fig.data]
    assert {
        "P(Gold | Gold in view)",
        "P(Mold)",
        "P(Mold | avoidable)",
        "return",
        "return ± SE",
    } <= set(names)
    shares = [t for t in fig.data if t.name and t.name.startswith("share ")]
    assert [t.name for t in shares] == ["share N", "share E", "share S", "share W"]
    assert all(t.stackgroup == "directions" for t in shares)
    rows = curve.rows()
    assert list(shares[0].y) == [r["share_N"] for r in rows]
    gold = next(t for t in fig.data if t.name == "P(Gold | Gold in view)")
    assert list(gold.y) == [r["p_gold_given_available"] for r in rows]
    with pytest.raises(DataError, match="no point"):
        LearningCurve(points=[], run_dir="x", settings={}, cache_path="x").figure()
