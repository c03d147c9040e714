"""capture / project: padding-safe batched reading of the residual stream at position rules."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import welfare_lens as wl
from welfare_lens.capture import capture, iter_activations, project
from welfare_lens.errors import DataError, ShapeError, TokenizationError

LABELS = ("mold", "gold", "path")


def _conversation(turns: int, last: str, salt: int) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    for turn in range(turns):
        messages.append({"role": "user", "content": f"You see 🧾 to the north {salt}-{turn}."})
        messages.append(
            {"role": "assistant", "content": last if turn == turns - 1 else "NESW"[turn % 4]}
        )
    return messages


def _items(n: int = 10) -> list[tuple[list[dict[str, str]], str, int]]:
    return [
        (_conversation(1 + i % 4, "NESW"[i % 4], i), LABELS[i % 3], 100 + i // 2) for i in range(n)
    ]


def _direct(model: Any, messages: list[dict[str, str]]) -> tuple[torch.Tensor, wl.RenderedChat]:
    # One conversation alone, no padding: [pos, n_layers, d_model].
    rendered = wl.render_chat(model.tokenizer, messages)
    with torch.no_grad():
        _, cache = model.run_with_cache(rendered.input_ids[None])
    acts = torch.stack(
        [cache[wl.hook_name(layer)][0] for layer in range(model.cfg.n_layers)], dim=1
    )
    return acts, rendered


def test_batched_capture_equals_one_by_one(tiny_model: Any) -> None:
    items = _items(10)
    got = list(iter_activations(tiny_model, items, batch_size=3, progress=False))
    acts = torch.cat([a for a, _, _ in got])
    labels = [label for _, ls, _ in got for label in ls]
    groups = [g for _, _, gs in got for g in gs]
    assert acts.shape == (10, tiny_model.cfg.n_layers, tiny_model.cfg.d_model)
    expected = {}
    for messages, label, group in items:
        direct, rendered = _direct(tiny_model, messages)
        assert rendered.input_ids[-1] in wl.action_token_ids(tiny_model.tokenizer).values()
        expected[(label, group, len(rendered))] = direct[-1]
    # Batches are sorted by length; match each sample by (label, group, length).
    lengths = sorted(
        (len(wl.render_chat(tiny_model.tokenizer, m)) for m, _, _ in items), reverse=True
    )
    for row, (label, group, length) in enumerate(zip(labels, groups, lengths, strict=True)):
        torch.testing.assert_close(
            acts[row], expected[(label, group, length)], atol=1e-5, rtol=1e-4
        )


def test_capture_statistics_equal_hand_means(tiny_model: Any) -> None:
    items = _items(9)
    stats = capture(tiny_model, items, batch_size=4, progress=False)
    assert stats.counts == {"mold": 3, "gold": 3, "path": 3}
    for cls in LABELS:
        rows = [_direct(tiny_model, m)[0][-1] for m, label, _ in items if label == cls]
        torch.testing.assert_close(
            stats.mean(cls).float(), torch.stack(rows).mean(0), atol=1e-5, rtol=1e-4
        )
    meta = stats.metadata
    assert meta.hook == "resid_post" and meta.position_rule == "last_action"
    assert stats.info["layers"] == list(range(tiny_model.cfg.n_layers))
    assert meta.model_id == wl.model_info(tiny_model).model_id
    assert meta.design == "paper"


def test_position_rules_and_reduce() -> None:
    model = wl.load_model("tiny-llama")
    items = _items(4)
    per_token = torch.cat(
        [a for a, _, _ in iter_activations(model, items, position="assistant", progress=False)]
    )
    assert per_token.shape[0] == sum(1 + i % 4 for i in range(4))  # one sample per move
    mean = torch.cat(
        [
            a
            for a, _, _ in iter_activations(
                model, items[:1], position="assistant", reduce="mean", progress=False
            )
        ]
    )
    direct, rendered = _direct(model, items[0][0])
    torch.testing.assert_close(
        mean[0], direct[rendered.assistant_content_mask].mean(0), atol=1e-5, rtol=1e-4
    )

    user = next(iter_activations(model, items[:1], position="user", progress=False))[0]
    assert user.shape[0] == int(rendered.user_mask.sum())

    custom = next(
        iter_activations(model, items[:1], position=lambda r: r.assistant_role_mask, progress=False)
    )[0]
    assert custom.shape[0] == int(rendered.assistant_role_mask.sum())


def test_generation_prompt_position() -> None:
    model = wl.load_model("tiny-llama")
    messages = [{"role": "user", "content": "Where now?"}]
    acts = next(
        iter_activations(model, [(messages, "path")], position="generation_prompt", progress=False)
    )[0]
    rendered = wl.render_chat(model.tokenizer, messages, add_generation_prompt=True)
    assert acts.shape[0] == int(rendered.generation_prompt_mask.sum()) == 4


def test_layer_subset_and_hook_kind() -> None:
    model = wl.load_model("tiny-qwen3")
    items = _items(3)
    acts = next(iter_activations(model, items[:1], layers=[0, -1], hook="mlp_out", progress=False))[
        0
    ]
    rendered = wl.render_chat(model.tokenizer, items[0][0])
    with torch.no_grad():
        _, cache = model.run_with_cache(rendered.input_ids[None])
    torch.testing.assert_close(acts[0, 0], cache["blocks.0.hook_mlp_out"][0, -1])
    torch.testing.assert_close(acts[0, 1], cache["blocks.2.hook_mlp_out"][0, -1])
    stats = capture(model, items, layers=[1], progress=False)
    assert stats.n_layers == 1
    with pytest.raises(ShapeError, match="same model and layer selection"):
        capture(model, items, progress=False, stats=stats)


def test_capture_errors() -> None:
    model = wl.load_model("tiny-llama")
    with pytest.raises(TokenizationError, match="no assistant content"):
        capture(model, [([{"role": "user", "content": "hi"}], "mold")], progress=False)
    with pytest.raises(DataError, match="neither a trajectory"):
        capture(model, ["not a trajectory"], progress=False)
    with pytest.raises(DataError, match="No trajectories"):
        list(iter_activations(model, [], progress=False))
    with pytest.raises(DataError, match="position rule"):
        capture(model, _items(3), position="first_token", progress=False)  # type: ignore[arg-type]


def test_project_scores() -> None:
    model = wl.load_model("tiny-llama")
    items = _items(5)
    vectors = {"v": torch.randn(model.cfg.n_layers, model.cfg.d_model)}
    scores = project(model, items, vectors, batch_size=2, progress=False)
    assert scores.dot["v"].shape == (5, model.cfg.n_layers)
    acts = torch.cat(
        [a for a, _, _ in iter_activations(model, items, batch_size=2, progress=False)]
    )
    expected_cos = torch.nn.functional.cosine_similarity(acts, vectors["v"][None], dim=-1)
    torch.testing.assert_close(scores.cosine["v"], expected_cos, atol=1e-5, rtol=1e-4)
    assert scores.of("mold").sum() == sum(label == "mold" for label in scores.labels)
    with pytest.raises(ShapeError, match="expected"):
        project(model, items, {"bad": torch.randn(2, 7)}, progress=False)


def test_branch_activations_equal_direct_trajectories(tiny_model: Any) -> None:
    from welfare_lens.capture import iter_branch_activations
    from welfare_lens.maze import MazeConfig, synthetic_trajectories

    walk = synthetic_trajectories(
        MazeConfig(), per_class=1, classes=("path",), lengths=[4], seed=5
    )[0]
    acts, labels, groups = next(iter_branch_activations(tiny_model, [walk], progress=False))
    assert acts.shape == (16, tiny_model.cfg.n_layers, tiny_model.cfg.d_model)  # 4 turns x 4 moves
    assert set(groups) == {walk.maze_seed}
    row = 0
    for turn in reversed(range(4)):
        for direction, tile in zip("NESW", walk.neighbours[turn], strict=True):
            # The trajectory that branches here: the walk's first `turn` moves, then `direction`.
            messages = [*walk.messages[: 2 * turn + 1], {"role": "assistant", "content": direction}]
            direct, _ = _direct(tiny_model, messages)
            assert labels[row] == LABELS_BY_TILE[int(tile)]
            torch.testing.assert_close(acts[row], direct[-1], atol=1e-4, rtol=1e-4)
            row += 1


LABELS_BY_TILE = ("mold", "gold", "path")


def test_branch_capture_per_class_cap() -> None:
    from welfare_lens.maze import MazeConfig, synthetic_trajectories

    model = wl.load_model("tiny-llama")
    walks = synthetic_trajectories(
        MazeConfig(), per_class=4, classes=("path",), lengths=[6], seed=9
    )
    stats = capture(model, walks, branches=True, per_class=3, progress=False)
    assert all(count <= 3 for count in stats.counts.values())
    assert stats.counts["path"] == 3 and stats.counts["mold"] == 3
    assert stats.metadata.design == "branches"
    with pytest.raises(DataError, match="final move"):
        capture(model, walks, branches=True, position="assistant", progress=False)


def _stats_pair(model: Any, items: Any, **kwargs: Any) -> tuple[Any, Any]:
    shared = capture(model, items, progress=False, share_prefixes=True, **kwargs)
    alone = capture(model, items, progress=False, share_prefixes=False, **kwargs)
    return shared, alone


def test_shared_prefix_capture_equals_independent(tiny_model: Any, one_thread: None) -> None:
    # Shared-prefix trajectories: most samples continue another one's KV cache.
    trajs = wl.maze.shared_prefix_trajectories(wl.maze.MazeConfig(size=30), per_class=6, seed=3)
    shared, alone = _stats_pair(tiny_model, trajs)
    assert shared.counts == alone.counts == {"mold": 6, "gold": 6, "path": 6}
    torch.testing.assert_close(shared.sum, alone.sum, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(shared.m2, alone.m2, atol=1e-3, rtol=1e-4)
    # A layer subset (the forward stops early, so upper layers have no cache) and another hook.
    shared, alone = _stats_pair(tiny_model, trajs, layers=[0], hook="resid_pre")
    torch.testing.assert_close(shared.sum, alone.sum, atol=1e-4, rtol=1e-5)


def test_shared_prefix_multi_position_and_duplicates(tiny_model: Any, one_thread: None) -> None:
    # Duplicated conversations and conversations that are prefixes of others; several positions.
    items = _items(6)
    items = [*items, items[0], (items[3][0][:2], "path", 7)]
    for position in ("assistant", "user"):
        got = list(iter_activations(tiny_model, items, position=position, progress=False))
        ref = list(
            iter_activations(
                tiny_model, items, position=position, progress=False, share_prefixes=False
            )
        )
        a = torch.cat([x for x, _, _ in got])
        b = torch.cat([x for x, _, _ in ref])
        assert a.shape == b.shape
        # The two modes visit conversations in different orders: match rows by their sums.
        ka, kb = a.sum(dim=(1, 2)).argsort(), b.sum(dim=(1, 2)).argsort()
        torch.testing.assert_close(a[ka], b[kb], atol=1e-4, rtol=1e-5)


def test_shared_prefixes_need_batch_size_one() -> None:
    with pytest.raises(DataError, match="batch_size"):
        list(
            iter_activations(object(), _items(2), batch_size=2, share_prefixes=True, progress=False)
        )


def test_batched_capture_backs_off_on_out_of_memory(
    tiny_model: Any, one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = _items(7)
    reference = capture(tiny_model, items, batch_size=2, share_prefixes=False, progress=False)
    real = tiny_model.run_with_hooks
    widths: list[int] = []

    def flaky(tokens: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        widths.append(int(tokens.shape[0]))
        if tokens.shape[0] > 2:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory (simulated)")
        return real(tokens, *args, **kwargs)

    monkeypatch.setattr(tiny_model, "run_with_hooks", flaky)
    with pytest.warns(RuntimeWarning, match="batch_size 8; retrying with 4"):
        got = capture(tiny_model, items, batch_size=8, share_prefixes=False, progress=False)
    assert widths[:3] == [7, 4, 2] and max(widths[3:]) <= 2
    assert got.counts == reference.counts
    torch.testing.assert_close(got.sum, reference.sum, atol=1e-4, rtol=1e-5)
    monkeypatch.setattr(tiny_model, "run_with_hooks", real)


class _Interrupt(Exception):
    pass


def test_capture_checkpoint_resumes_exactly(
    tmp_path: Any, one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = wl.load_model("tiny-llama")
    items = _items(11)
    reference = capture(model, items, progress=False, holdout=0.3)
    real = model.run_with_hooks
    calls = [0]

    def dying(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] > 7:
            raise _Interrupt
        return real(*args, **kwargs)

    ckpt = tmp_path / "stats"
    monkeypatch.setattr(model, "run_with_hooks", dying)
    with pytest.raises(_Interrupt):
        capture(model, items, progress=False, holdout=0.3, checkpoint=ckpt, checkpoint_every=3)
    monkeypatch.setattr(model, "run_with_hooks", real)
    saved = wl.ClassStatistics.load(ckpt)
    assert saved.info["resume"]["done"] == 6  # two checkpoints of 3 conversations
    done = []
    monkeypatch.setattr(model, "run_with_hooks", lambda *a, **k: done.append(1) or real(*a, **k))
    resumed = capture(model, items, progress=False, holdout=0.3, checkpoint=ckpt)
    assert len(done) == 5  # only the 5 conversations not yet in the checkpoint
    assert resumed.counts == reference.counts and resumed.n_seen == reference.n_seen
    torch.testing.assert_close(resumed.sum, reference.sum, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(resumed.m2, reference.m2, atol=1e-4, rtol=1e-5)
    assert len(resumed.heldout) == len(reference.heldout)
    # Other trajectories against the same checkpoint: a clear error, nothing mixed.
    with pytest.raises(DataError, match="other trajectories"):
        capture(model, items[:-1], progress=False, checkpoint=ckpt)


def test_distinct_prefix_tokens_by_hand() -> None:
    from types import SimpleNamespace

    from welfare_lens.capture import distinct_prefix_tokens

    model = wl.load_model("tiny-llama")
    a = SimpleNamespace(messages=_conversation(3, "N", 1))
    b = SimpleNamespace(messages=_conversation(3, "E", 1))  # differs only in the last move
    ids_a = wl.render_chat(model.tokenizer, a.messages).input_ids.tolist()
    ids_b = wl.render_chat(model.tokenizer, b.messages).input_ids.tolist()
    shared = next(i for i, (x, y) in enumerate(zip(ids_a, ids_b, strict=False)) if x != y)
    assert distinct_prefix_tokens(model, [a]) == len(ids_a)
    # A duplicate costs one token (its last position is read again); a sibling only its tail.
    assert distinct_prefix_tokens(model, [a, a]) == len(ids_a) + 1
    first, second = sorted([ids_a, ids_b])
    assert distinct_prefix_tokens(model, [b, a]) == len(first) + len(second) - shared
    assert len(ids_b) - shared < 10 < shared


def test_bfloat16_model_accumulates_in_float64() -> None:
    # A half-precision model (what a GPU run uses) still gets float64 class statistics, and its
    # class means agree with the float32 model's to bf16 precision.
    items = _items(9)
    full = capture(wl.load_model("tiny-llama"), items, progress=False)
    half_model = wl.load_model("tiny-llama", dtype=torch.bfloat16)
    assert next(half_model.parameters()).dtype == torch.bfloat16
    half = capture(half_model, items, progress=False)
    assert half.sum.dtype == torch.float64 and half.m2 is not None
    assert half.m2.dtype == torch.float64
    for c in LABELS:
        cos = torch.nn.functional.cosine_similarity(full.mean(c), half.mean(c), dim=-1)
        assert bool((cos > 0.99).all()), (c, cos)
