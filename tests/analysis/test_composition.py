"""Composition diagnostics: what each class saw, the seen-tile regression, minimal pairs."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

import welfare_lens as wl
from welfare_lens.analysis.composition import (
    CompositionTable,
    SeenTileRegression,
    composition_features,
    composition_table,
    seen_tile_cosines,
    seen_tile_vectors,
)
from welfare_lens.capture import distinct_prefix_tokens
from welfare_lens.errors import DataError

CFG = wl.maze.MazeConfig(size=30)
M, G, P = 0, 1, 2  # Tile ids: Mold, Gold, Path


def test_features_by_hand() -> None:
    traj = SimpleNamespace(neighbours=[(P, P, M, G), (M, G, G, P)], label="gold")
    feats = composition_features([traj])
    # Final prompt: 1 Mold, 2 Gold, 1 Path; history per turn: Mold 2/2, Gold 3/2, Path 3/2.
    np.testing.assert_allclose(feats[0], [1, 2, 1, 1.0, 1.5, 1.5])
    with pytest.raises(DataError, match="neighbours"):
        composition_features([SimpleNamespace(neighbours=None)])


def test_table_imbalance_by_hand() -> None:
    trajs = [
        SimpleNamespace(neighbours=[(G, P, P, P)], label="gold"),
        SimpleNamespace(neighbours=[(M, P, P, P)], label="mold"),
        SimpleNamespace(neighbours=[(M, M, P, P)], label="mold"),
    ]
    table = composition_table(trajs, threshold=0.5)
    assert table.classes == ("gold", "mold")
    # final_gold: gold 1 vs rest 0 -> +1; final_mold: mold 1.5 vs rest 0 -> +1.5.
    assert table.imbalance[0, 1] == pytest.approx(1.0)
    assert table.imbalance[1, 0] == pytest.approx(1.5)
    assert table.flagged and "final_mold" in (table.warning() or "")
    again = CompositionTable.from_dict(table.to_dict())
    np.testing.assert_allclose(again.imbalance, table.imbalance)


def test_regression_recovers_the_slopes() -> None:
    gen = torch.Generator().manual_seed(1)
    feats = torch.rand(200, 6, generator=gen, dtype=torch.float64) * 4
    w = torch.randn(2, 8, 6, generator=gen, dtype=torch.float64)
    acts = torch.einsum("ldf,nf->nld", w, feats) + 3.0
    reg = SeenTileRegression(2, 8)
    reg.update(acts[:120].float(), feats[:120].numpy())
    reg.update(acts[120:].float(), feats[120:].numpy())
    torch.testing.assert_close(reg.coefficients(), w, atol=1e-4, rtol=1e-4)
    again = SeenTileRegression.from_tensors(reg.to_tensors())
    torch.testing.assert_close(again.coefficients(), reg.coefficients())


def _mock_capture(trajs: list[Any]) -> tuple[Any, Any]:
    """A 'model' whose activations encode only what it saw: x = W · composition."""
    w = torch.randn(3, 64, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    feats = composition_features(trajs)
    acts = torch.einsum("ldf,nf->nld", w, torch.as_tensor(feats)).float()
    stats = wl.ClassStatistics(3, 64)
    stats.update([t.label for t in trajs], acts, groups=[t.maze_seed for t in trajs])
    reg = SeenTileRegression(3, 64)
    reg.update(acts, feats)
    return stats, reg


@pytest.mark.parametrize("design", ["paper", "shared_prefix"])
def test_paper_design_makes_composition_look_like_welfare(design: str) -> None:
    trajs = (
        wl.maze.synthetic_trajectories(CFG, per_class=120, seed=1)
        if design == "paper"
        else wl.maze.shared_prefix_trajectories(CFG, per_class=120, seed=1)
    )
    stats, reg = _mock_capture(trajs)
    u = wl.welfare_vectors(stats)
    cos = torch.nn.functional.cosine_similarity(u["mold"], u["gold"], dim=-1)
    assert (cos < -0.8).all()  # a strong antiparallel pair from composition alone
    table = composition_table(trajs)
    assert table.flagged
    seen = reg.seen_tile_vectors(table)
    for values in seen_tile_cosines(seen, u).values():
        assert min(values) > 0.999  # the seen-tile vector explains the whole vector


def test_minimal_pairs_remove_the_confound() -> None:
    trajs = wl.maze.shared_prefix_trajectories(CFG, per_class=120, seed=1, design="minimal_pairs")
    table = composition_table(trajs)
    assert not table.flagged and table.max_imbalance < 1e-12
    stats, _ = _mock_capture(trajs)
    u = wl.welfare_vectors(stats)
    assert float(u["mold"].norm()) < 1e-4 and float(u["gold"].norm()) < 1e-4


def test_minimal_pairs_cost_no_more_tokens(tiny_model: Any) -> None:
    shared = wl.maze.shared_prefix_trajectories(CFG, per_class=60, seed=2)
    pairs = wl.maze.shared_prefix_trajectories(CFG, per_class=60, seed=2, design="minimal_pairs")
    assert distinct_prefix_tokens(tiny_model, pairs) / len(pairs) <= distinct_prefix_tokens(
        tiny_model, shared
    ) / len(shared)


def test_capture_records_composition(tiny_model: Any, one_thread: None, tmp_path: Any) -> None:
    paper = wl.maze.shared_prefix_trajectories(CFG, per_class=8, seed=3)
    with pytest.warns(RuntimeWarning, match="differ in what the model saw"):
        stats = wl.capture(tiny_model, paper, progress=False)
    assert stats.info["composition"]["flagged"]
    assert stats.metadata.design == "shared_prefix"
    seen = seen_tile_vectors(stats)
    assert seen["gold"].shape == (tiny_model.cfg.n_layers, tiny_model.cfg.d_model)
    stats.save(tmp_path / "s")
    loaded = wl.ClassStatistics.load(tmp_path / "s")
    torch.testing.assert_close(seen_tile_vectors(loaded)["gold"], seen["gold"])
    pairs = wl.maze.shared_prefix_trajectories(CFG, per_class=8, seed=3, design="minimal_pairs")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        balanced = wl.capture(tiny_model, pairs, progress=False)
    assert not balanced.info["composition"]["flagged"]
    assert balanced.metadata.design == "minimal_pairs"
    # No composition difference at all: the seen-tile vectors are exactly zero, their cosines
    # with the welfare vectors undefined (NaN), not an arbitrary direction of rounding noise.
    for vec in seen_tile_vectors(balanced).values():
        assert float(vec.abs().max()) == 0.0
    cos = seen_tile_cosines(seen_tile_vectors(balanced), wl.welfare_vectors(balanced))
    assert all(math.isnan(c) for values in cos.values() for c in values)
    with pytest.raises(DataError, match="composition"):
        seen_tile_vectors(wl.capture(tiny_model, paper, progress=False, composition=False))
