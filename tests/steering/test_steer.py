"""steer(): positions, α = 0 identity, KV-cache equivalence, ablation, steer_many, norm matching."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from welfare_lens.chat import render_chat
from welfare_lens.errors import ShapeError, VectorError
from welfare_lens.hooks import hook_name
from welfare_lens.steering import (
    SteeringSpec,
    assistant_positions,
    condition_fields,
    generate,
    norm_matched_alpha,
    steer,
    steer_many,
    unsteered,
)
from welfare_lens.vectors import ConceptVectors, VectorMetadata

PROMPT = "How are you feeling right now?"


@pytest.fixture(scope="module")
def llama() -> Any:
    from welfare_lens.models import load_model

    return load_model("tiny-llama")


def _vector(model: Any, layer: int, scale: float = 3.0, seed: int = 1) -> torch.Tensor:
    """A random direction with ``scale`` times the model's mean residual norm at ``layer``."""
    ids = render_chat(model.tokenizer, [{"role": "user", "content": PROMPT}]).input_ids[None]
    store: dict[str, torch.Tensor] = {}

    def grab(act: torch.Tensor, hook: Any) -> None:
        store["a"] = act.detach()

    with torch.no_grad(), model.hooks(fwd_hooks=[(hook_name(layer), grab)]):
        model(ids)
    norm = float(store["a"].norm(dim=-1).mean())
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(seed))
    return v / v.norm() * norm * scale


class _Tap:
    """Records a layer's activation before and after the steering hook, call by call."""

    def __init__(self) -> None:
        self.pre: list[torch.Tensor] = []
        self.post: list[torch.Tensor] = []

    def before(self, act: torch.Tensor, hook: Any) -> None:
        self.pre.append(act.detach().clone())

    def after(self, act: torch.Tensor, hook: Any) -> None:
        self.post.append(act.detach().clone())


@pytest.fixture
def tapped(llama: Any) -> Iterator[tuple[Any, _Tap]]:
    yield llama, _Tap()


def _run_tapped(model: Any, tap: _Tap, layer: int, specs: list[SteeringSpec], fn: Any) -> Any:
    name = hook_name(layer)
    with (
        model.hooks(fwd_hooks=[(name, tap.before)]),
        steer_many(model, specs) as records,
        model.hooks(fwd_hooks=[(name, tap.after)]),
    ):
        fn()
    return records


def _gen_mask(model: Any) -> torch.Tensor:
    return render_chat(
        model.tokenizer, [{"role": "user", "content": PROMPT}], add_generation_prompt=True
    ).generation_prompt_mask


@pytest.mark.parametrize("use_cache", [True, False])
def test_assistant_positions_during_generation(
    tapped: tuple[Any, _Tap], use_cache: bool, one_thread: None
) -> None:
    model, tap = tapped
    v = _vector(model, 1)
    spec = SteeringSpec(v, layer=1, alpha=2.0)
    records = _run_tapped(
        model,
        tap,
        1,
        [spec],
        lambda: generate(model, PROMPT, max_new_tokens=4, temperature=0, use_cache=use_cache),
    )
    gen = _gen_mask(model)
    plen = gen.shape[0]
    assert gen.sum() >= 3  # <|im_start|> assistant \n
    steered_total = 0
    for call, (pre, post) in enumerate(zip(tap.pre, tap.post, strict=True)):
        changed = (post != pre).any(dim=-1)[0]
        if use_cache and call > 0:
            expected = torch.ones(1, dtype=torch.bool)  # a decoding step: the generated token
        else:
            expected = torch.cat([gen, torch.ones(pre.shape[1] - plen, dtype=torch.bool)])
        assert torch.equal(changed, expected), call
        delta = (post - pre)[0, changed]
        torch.testing.assert_close(delta, (2.0 * v).expand_as(delta), rtol=1e-5, atol=1e-5)
        steered_total += int(expected.sum())
    assert records[0].n_steered == steered_total
    assert records[0].forward_calls == len(tap.pre) == 4


def test_prompt_all_and_mask_rules(tapped: tuple[Any, _Tap], one_thread: None) -> None:
    model, tap = tapped
    v = _vector(model, 0)
    gen = _gen_mask(model)
    plen = gen.shape[0]
    mask = torch.zeros(plen + 2, dtype=torch.bool)
    mask[[1, plen + 1]] = True
    for rule, expect in (
        ("prompt", lambda c, n: torch.ones(n, dtype=torch.bool) if c == 0 else torch.zeros(1)),
        ("all", lambda c, n: torch.ones(n, dtype=torch.bool)),
        ("mask", lambda c, n: mask[:n] if c == 0 else mask[plen + c - 1 : plen + c]),
    ):
        tap.pre.clear()
        tap.post.clear()
        positions: Any = mask if rule == "mask" else rule
        _run_tapped(
            model,
            tap,
            0,
            [SteeringSpec(v, 0, 1.0, positions=positions)],
            lambda: generate(model, PROMPT, max_new_tokens=3, temperature=0),
        )
        for call, (pre, post) in enumerate(zip(tap.pre, tap.post, strict=True)):
            changed = (post != pre).any(dim=-1)[0]
            assert torch.equal(changed, expect(call, pre.shape[1]).bool()), (rule, call)


def test_assistant_rule_needs_position_info(llama: Any, one_thread: None) -> None:
    v = _vector(llama, 0)
    chat = render_chat(
        llama.tokenizer, [{"role": "user", "content": PROMPT}], add_generation_prompt=True
    )
    ids = chat.input_ids[None]
    with torch.no_grad(), steer(llama, v, 0, 1.0):
        with pytest.raises(ShapeError, match="assistant_positions"):
            llama(ids)
        llama(ids[:, :1])  # one token: a decoding step, steered
        with assistant_positions(chat.generation_prompt_mask):
            llama(ids)


def test_alpha_zero_is_bit_identical(llama: Any, one_thread: None) -> None:
    v = _vector(llama, 1)
    chat = render_chat(
        llama.tokenizer, [{"role": "user", "content": PROMPT}], add_generation_prompt=True
    )
    with torch.no_grad():
        ref = llama(chat.input_ids[None])
        with steer(llama, v, 1, 0.0, positions="all") as rec:
            out = llama(chat.input_ids[None])
    assert torch.equal(ref, out)
    assert rec.delta_norm == 0.0 and rec.forward_calls == 1
    kwargs: dict[str, Any] = {"max_new_tokens": 6, "temperature": 0.9, "samples": 2, "seed": 3}
    plain = generate(llama, [PROMPT, "Hi"], **kwargs)
    steered = generate(llama, [PROMPT, "Hi"], steering=SteeringSpec(v, 1, 0.0), **kwargs)
    assert [g.token_ids for g in plain] == [g.token_ids for g in steered]


def test_cached_equals_uncached_under_steering(tiny_model: Any, one_thread: None) -> None:
    layer = tiny_model.cfg.n_layers // 2
    spec = SteeringSpec(_vector(tiny_model, layer, scale=1.0), layer, 4.0)
    greedy: list[tuple[int, ...]] = []
    for temperature in (0.0, 1.0):
        kwargs: dict[str, Any] = {
            "max_new_tokens": 8,
            "temperature": temperature,
            "samples": 2,
            "seed": 5,
            "steering": spec,
        }
        cached = generate(tiny_model, PROMPT, use_cache=True, **kwargs)
        full = generate(tiny_model, PROMPT, use_cache=False, **kwargs)
        assert [g.token_ids for g in cached] == [g.token_ids for g in full]
        greedy = greedy or [g.token_ids for g in cached]
    plain = generate(tiny_model, PROMPT, max_new_tokens=8, temperature=0)
    assert plain[0].token_ids != greedy[0]  # the steering acts


def test_ablation_removes_the_component(tapped: tuple[Any, _Tap], one_thread: None) -> None:
    model, tap = tapped
    v = _vector(model, 1)
    unit = v / v.norm()
    chat = render_chat(
        model.tokenizer, [{"role": "user", "content": PROMPT}], add_generation_prompt=True
    )

    def run() -> None:
        with torch.no_grad(), assistant_positions(chat.generation_prompt_mask):
            model(chat.input_ids[None])

    _run_tapped(model, tap, 1, [SteeringSpec(v, 1, mode="ablate")], run)
    pre, post = tap.pre[0][0], tap.post[0][0]
    gen = chat.generation_prompt_mask
    assert (post[gen] @ unit).abs().max() < 1e-5
    assert (pre[gen] @ unit).abs().min() > 1e-4  # there was a component to remove
    assert torch.equal(post[~gen], pre[~gen])
    orthogonal = pre[gen] - (pre[gen] @ unit)[:, None] * unit
    torch.testing.assert_close(post[gen], orthogonal, rtol=1e-5, atol=1e-6)


def test_steer_many_equals_nested(llama: Any, one_thread: None) -> None:
    v0, v1 = _vector(llama, 0, seed=2), _vector(llama, 1, seed=3)
    ids = render_chat(llama.tokenizer, [{"role": "user", "content": PROMPT}]).input_ids[None]
    with torch.no_grad():
        with steer(llama, v0, 0, 1.5, positions="all"), steer(llama, v1, 1, -2.0, positions="all"):
            nested = llama(ids)
        specs = [
            SteeringSpec(v0, 0, 1.5, positions="all"),
            SteeringSpec(v1, 1, -2.0, positions="all"),
        ]
        with steer_many(llama, specs) as records:
            many = llama(ids)
        with steer_many(llama, [SteeringSpec(v0, 1, 1.0, positions="all")] * 2):
            twice = llama(ids)
        with steer(llama, 2 * v0, 1, 1.0, positions="all"):
            double = llama(ids)
        plain = llama(ids)
    assert torch.equal(nested, many)
    assert not torch.allclose(many, plain)
    torch.testing.assert_close(twice, double, rtol=1e-4, atol=1e-5)
    assert [r.layer for r in records] == [0, 1]
    assert [r.alpha for r in records] == [1.5, -2.0]


def test_record_norms(tapped: tuple[Any, _Tap], one_thread: None) -> None:
    model, tap = tapped
    v = _vector(model, 1)
    records = _run_tapped(
        model,
        tap,
        1,
        [SteeringSpec(v, -1, -3.0, label="gold")],
        lambda: generate(model, PROMPT, max_new_tokens=3, temperature=0),
    )
    rec = records[0]
    norms = torch.cat([a[0].norm(dim=-1) for a in tap.pre])
    assert rec.layer == 1 and rec.hook == "blocks.1.hook_resid_post" and rec.label == "gold"
    assert rec.delta_norm == pytest.approx(3.0 * float(v.norm()), rel=1e-6)
    assert rec.resid_norm_mean == pytest.approx(float(norms.mean()), rel=1e-5)
    assert rec.observed_tokens == norms.numel()
    assert rec.relative_delta == pytest.approx(rec.delta_norm / rec.resid_norm_mean)
    assert rec.to_dict()["steered_tokens"] == rec.n_steered


def test_norm_matching(llama: Any) -> None:
    v, u = torch.tensor([3.0, 4.0]), torch.tensor([0.0, 0.5])
    assert norm_matched_alpha(2.0, v, u) == pytest.approx(20.0)
    d = llama.cfg.d_model
    trained = torch.randn(llama.cfg.n_layers, d)
    control = torch.randn(llama.cfg.n_layers, d) * 0.1
    spec = SteeringSpec(control, layer=1, alpha=-2.0, label="u_gold").norm_matched(trained)
    assert spec.nominal_alpha == -2.0
    assert float((spec.alpha * control[1]).norm()) == pytest.approx(
        float((2.0 * trained[1]).norm()), rel=1e-6
    )
    with steer_many(llama, [spec]) as (rec,):
        pass
    assert rec.nominal_alpha == -2.0 and rec.delta_norm == pytest.approx(
        2.0 * float(trained[1].norm()), rel=1e-5
    )
    with pytest.raises(VectorError):
        norm_matched_alpha(1.0, v, torch.zeros(2))


def _concept_vectors(model: Any, d_model: int | None = None) -> ConceptVectors:
    d = d_model or model.cfg.d_model
    meta = VectorMetadata(model_id="trained-checkpoint", d_model=d, n_layers=model.cfg.n_layers)
    gen = torch.Generator().manual_seed(0)
    shape = (model.cfg.n_layers, d)
    return ConceptVectors(
        {"mold": torch.randn(*shape, generator=gen), "gold": torch.randn(*shape, generator=gen)},
        meta,
    )


def test_concept_vectors_and_errors(llama: Any, one_thread: None) -> None:
    cv = _concept_vectors(llama)  # another checkpoint's vectors: allowed (paper A6)
    ids = render_chat(llama.tokenizer, [{"role": "user", "content": PROMPT}]).input_ids[None]
    with torch.no_grad():
        with steer(llama, cv, 1, 1.0, name="gold", positions="all") as rec:
            a = llama(ids)
        with steer(llama, cv.gold[1], 1, 1.0, positions="all"):
            b = llama(ids)
    assert torch.equal(a, b) and rec.label == "gold"
    assert rec.vector_norm == pytest.approx(float(cv.gold[1].norm()), rel=1e-6)
    with pytest.raises(VectorError, match="name"), steer(llama, cv, 1, 1.0):
        pass
    with pytest.raises(ShapeError), steer(llama, _concept_vectors(llama, 32), 1, 1.0, name="mold"):
        pass
    with pytest.raises(ShapeError), steer(llama, torch.ones(7), 1, 1.0):
        pass
    with pytest.raises(VectorError), steer(llama, torch.full((64,), float("nan")), 1, 1.0):
        pass
    with (
        pytest.raises(ShapeError, match="position rule"),
        steer(llama, cv.gold[1], 1, positions="x"),
    ):  # type: ignore[arg-type]
        pass


def test_unsteered_and_condition_fields(llama: Any, one_thread: None) -> None:
    v = _vector(llama, 1)
    ids = render_chat(llama.tokenizer, [{"role": "user", "content": PROMPT}]).input_ids[None]
    assert condition_fields() == {"alpha": 0.0, "layer": None, "vector": None}
    with torch.no_grad():
        plain = llama(ids)
        with steer(llama, v, 1, 2.0, positions="all", label="gold", nominal_alpha=4.0):
            assert condition_fields() == {"alpha": 4.0, "layer": 1, "vector": "gold"}
            with unsteered():
                quiet = llama(ids)
            loud = llama(ids)
    assert torch.equal(plain, quiet)
    assert not torch.allclose(plain, loud)


@pytest.mark.slow
def test_smollm2_cached_greedy_matches_full_forward(smollm2: Any, one_thread: None) -> None:
    chat = render_chat(
        smollm2.tokenizer, [{"role": "user", "content": PROMPT}], add_generation_prompt=True
    )
    pieces = [smollm2.tokenizer.decode([t]) for t in chat.input_ids[chat.generation_prompt_mask]]
    assert "".join(pieces) == "<|im_start|>assistant\n"
    spec = SteeringSpec(_vector(smollm2, 15, scale=0.5), 15, 2.0)
    kwargs: dict[str, Any] = {"max_new_tokens": 12, "temperature": 0, "steering": spec}
    cached = generate(smollm2, PROMPT, **kwargs)[0]
    full = generate(smollm2, PROMPT, use_cache=False, **kwargs)[0]
    plain = generate(smollm2, PROMPT, max_new_tokens=12, temperature=0)[0]
    assert cached.token_ids == full.token_ids
    assert cached.token_ids != plain.token_ids
    assert len(set(plain.token_ids)) > 3  # a real model: varied text, not one repeated token
