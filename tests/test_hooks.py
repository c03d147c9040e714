"""Hook-name helpers, capture and add-vector hooks on tiny models."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import welfare_lens as wl
from welfare_lens.errors import LayerError, ShapeError, VectorError
from welfare_lens.hooks import (
    HOOK_KINDS,
    add_vector_hook,
    capture_hook,
    capture_hooks,
    hook_name,
    layer_of,
    resolve_layer,
    resolve_layers,
)

TOKENS = torch.tensor([[1, 17, 230, 4004, 9, 77], [1, 88, 5, 6, 7, 8]])


def test_hook_names() -> None:
    assert hook_name(3) == "blocks.3.hook_resid_post"
    assert hook_name(-1, total=30) == "blocks.29.hook_resid_post"
    assert hook_name(0, "mlp_out") == "blocks.0.hook_mlp_out"
    for kind in HOOK_KINDS:
        assert layer_of(hook_name(5, kind)) == (5, kind)


@pytest.mark.parametrize("bad", [30, -31, 2.0, True, "3"])
def test_bad_layers(bad: Any) -> None:
    with pytest.raises(LayerError):
        resolve_layer(bad, 30)


def test_hook_name_errors() -> None:
    with pytest.raises(LayerError, match="total"):
        hook_name(-1)
    with pytest.raises(LayerError, match="resid_post"):
        hook_name(1, "resid_final")  # type: ignore[arg-type]
    with pytest.raises(LayerError, match="out of range"):
        hook_name(4, total=4)
    with pytest.raises(LayerError):
        layer_of("ln_final.hook_normalized")


def test_resolve_layers() -> None:
    assert resolve_layers(None, 4) == [0, 1, 2, 3]
    assert resolve_layers([-1, 0, 3], 4) == [0, 3]
    assert resolve_layers(2, 4) == [2]


def test_every_hook_kind_exists_on_the_bridge(tiny_model: Any) -> None:
    n = tiny_model.cfg.n_layers
    for layer in range(n):
        for kind in HOOK_KINDS:
            assert hook_name(layer, kind) in tiny_model.hook_dict


def test_capture_matches_run_with_cache(tiny_model: Any) -> None:
    names = [hook_name(layer) for layer in range(tiny_model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(TOKENS)
        store: dict[str, torch.Tensor] = {}
        tiny_model.run_with_hooks(TOKENS, fwd_hooks=capture_hooks(names, store, positions=-1))
        full: dict[str, torch.Tensor] = {}
        tiny_model.run_with_hooks(TOKENS, fwd_hooks=capture_hooks(names, full))
        some: dict[str, torch.Tensor] = {}
        tiny_model.run_with_hooks(TOKENS, fwd_hooks=capture_hooks(names, some, positions=[0, 2]))
    for name in names:
        assert store[name].shape == (2, tiny_model.cfg.d_model)
        torch.testing.assert_close(store[name], cache[name][:, -1])
        torch.testing.assert_close(full[name], cache[name])
        torch.testing.assert_close(some[name], cache[name][:, [0, 2]])


def test_capture_with_mask_and_context_manager(tiny_model: Any) -> None:
    name = hook_name(0)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 1] = mask[1, 4] = mask[1, 5] = True
    store: dict[str, torch.Tensor] = {}
    with torch.no_grad(), tiny_model.hooks(fwd_hooks=[(name, capture_hook(store, mask, key=name))]):
        _, cache = tiny_model.run_with_cache(TOKENS)
    expected = torch.stack([cache[name][0, 1], cache[name][1, 4], cache[name][1, 5]])
    torch.testing.assert_close(store[name], expected)
    # The context manager removed the hook.
    store.clear()
    with torch.no_grad():
        tiny_model(TOKENS)
    assert store == {}


@pytest.mark.parametrize("use_context", [False, True])
def test_add_vector_at_positions(tiny_model: Any, use_context: bool) -> None:
    layer = tiny_model.cfg.n_layers - 1
    name = hook_name(layer)
    vector = torch.randn(tiny_model.cfg.d_model)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 2] = mask[1, 5] = True
    with torch.no_grad():
        _, clean = tiny_model.run_with_cache(TOKENS, names_filter=name)
        store: dict[str, torch.Tensor] = {}
        hooks = [(name, add_vector_hook(vector, alpha=3.0, positions=mask))]
        hooks += capture_hooks([name], store)
        if use_context:
            with tiny_model.hooks(fwd_hooks=hooks):
                steered_logits = tiny_model(TOKENS)
        else:
            steered_logits = tiny_model.run_with_hooks(TOKENS, fwd_hooks=hooks)
        clean_logits = tiny_model(TOKENS)
    delta = store[name] - clean[name]
    torch.testing.assert_close(delta[0, 2], 3.0 * vector)
    torch.testing.assert_close(delta[1, 5], 3.0 * vector)
    delta[0, 2] = 0
    delta[1, 5] = 0
    assert delta.abs().max() < 1e-5
    # Steering the last layer changes exactly the logits of the steered positions.
    changed = (steered_logits - clean_logits).abs().amax(-1) > 1e-4
    assert torch.equal(changed, mask)


def test_add_vector_all_positions_and_index(tiny_model: Any) -> None:
    name = hook_name(0)
    vector = torch.randn(tiny_model.cfg.d_model)
    with torch.no_grad():
        _, clean = tiny_model.run_with_cache(TOKENS, names_filter=name)
        for positions, where in [(None, slice(None)), (-1, slice(5, 6)), ([1, 3], [1, 3])]:
            store: dict[str, torch.Tensor] = {}
            hooks = [(name, add_vector_hook(vector, 0.5, positions)), *capture_hooks([name], store)]
            tiny_model.run_with_hooks(TOKENS, fwd_hooks=hooks)
            delta = store[name] - clean[name]
            torch.testing.assert_close(delta[:, where], (0.5 * vector).expand_as(delta[:, where]))


def test_add_vector_errors(tiny_model: Any) -> None:
    with pytest.raises(VectorError, match="NaN"):
        add_vector_hook(torch.tensor([1.0, float("nan")]))
    with pytest.raises(VectorError, match="1-D"):
        add_vector_hook(torch.zeros(2, 64))
    wrong = add_vector_hook(torch.zeros(tiny_model.cfg.d_model + 1))
    with pytest.raises(ShapeError, match="d_model"):
        tiny_model.run_with_hooks(TOKENS, fwd_hooks=[(hook_name(0), wrong)])
    bad_mask = add_vector_hook(torch.zeros(tiny_model.cfg.d_model), positions=torch.ones(3, 6) > 0)
    with pytest.raises(ShapeError, match="mask"):
        tiny_model.run_with_hooks(TOKENS, fwd_hooks=[(hook_name(0), bad_mask)])
    out_of_range = add_vector_hook(torch.zeros(tiny_model.cfg.d_model), positions=[9])
    with pytest.raises(ShapeError, match="out of range"):
        tiny_model.run_with_hooks(TOKENS, fwd_hooks=[(hook_name(0), out_of_range)])


def test_run_until_ends_the_pass_after_the_last_hook() -> None:
    # stop_at_layer=n_layers still runs the final norm and the unembedding; run_until does not,
    # and the hooks on the last point (registered before the stop) still see their activation.
    from welfare_lens.hooks import run_until

    model = wl.load_model("tiny-llama")
    last = wl.hook_name(model.cfg.n_layers - 1)
    fired: list[str] = []
    seen: dict[str, torch.Tensor] = {}

    def record(act: torch.Tensor, hook: Any) -> None:
        fired.append(hook.name)

    def keep(act: torch.Tensor, hook: Any) -> None:
        seen[last] = act.detach().clone()  # hook.name is the bridge's canonical alias

    tail = [n for n in model.hook_dict if n.startswith(("ln_final.", "unembed."))]
    assert tail
    tokens = torch.tensor([[1, 2, 3, 4]])
    run_until(model, tokens, [(last, keep), *[(n, record) for n in tail]], last)
    assert fired == [] and last in seen
    _, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(seen[last], cache[last])
    model.run_with_hooks(tokens, fwd_hooks=[(n, record) for n in tail], return_type=None)
    assert fired  # the same hooks do fire in a full pass
