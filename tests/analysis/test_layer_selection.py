"""Tests of welfare_lens.analysis.layer_selection against hand-computed numbers (Appendix L)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import mannwhitneyu

from welfare_lens.analysis import (
    LayerSelection,
    auroc,
    auroc_per_layer,
    centred_cosine_layer,
    cohens_d,
    cohens_d_per_layer,
    emotion_scatter_layer,
    histogram_overlap,
    histogram_overlap_per_layer,
    logit_lens_layer,
    projections,
    select_from_scores,
    select_steering_layer,
)
from welfare_lens.errors import DataError, LayerError, ShapeError, VectorError
from welfare_lens.vectors import ClassStatistics, ConceptVectors, VectorMetadata, welfare_vectors

# ----------------------------------------------------------------------------------------------
# AUROC
# ----------------------------------------------------------------------------------------------


def test_auroc_by_hand_with_ties() -> None:
    # pos [1, 2, 3] vs neg [0, 2]: pairs won 1 + (1 + ½) + 2 = 4.5 of 6.
    assert auroc([1, 2, 3], [0, 2]) == pytest.approx(0.75)
    assert auroc([5, 6], [1, 2]) == 1.0
    assert auroc([1, 2], [5, 6]) == 0.0
    assert auroc([3, 3, 3], [3, 3]) == 0.5  # all tied
    assert auroc(torch.tensor([1.0, 2.0, 3.0]), np.array([0.0, 2.0])) == pytest.approx(0.75)


def _brute_auroc(p: list[int], n: list[int]) -> float:
    wins = sum((a > b) + 0.5 * (a == b) for a in p for b in n)
    return wins / (len(p) * len(n))


@settings(max_examples=50, deadline=None)
@given(
    p=st.lists(st.integers(-3, 3), min_size=1, max_size=12),
    n=st.lists(st.integers(-3, 3), min_size=1, max_size=12),
)
def test_auroc_equals_pair_counting(p: list[int], n: list[int]) -> None:
    assert auroc(p, n) == pytest.approx(_brute_auroc(p, n))
    u = mannwhitneyu(p, n).statistic if len(set(p + n)) > 1 else 0.5 * len(p) * len(n)
    assert auroc(p, n) == pytest.approx(u / (len(p) * len(n)))


def test_auroc_per_layer_columns() -> None:
    pos = np.array([[1, 0], [2, 0], [3, 0]])
    neg = np.array([[0, 1], [2, 1]])
    np.testing.assert_allclose(auroc_per_layer(pos, neg), [0.75, 0.0])


# ----------------------------------------------------------------------------------------------
# Cohen's d
# ----------------------------------------------------------------------------------------------


def test_cohens_d_by_hand() -> None:
    # pos [1,2,3]: mean 2, s² 1; neg [4,6]: mean 5, s² 2.
    # pooled SD = sqrt((2·1 + 1·2)/(3 + 2 − 2)) = sqrt(4/3); d = (2 − 5)/sqrt(4/3) = −2.598…
    assert cohens_d([1, 2, 3], [4, 6]) == pytest.approx(-3 / math.sqrt(4 / 3))
    assert cohens_d([4, 6], [1, 2, 3]) == pytest.approx(3 / math.sqrt(4 / 3))
    # not the unpooled average of variances: sqrt((1 + 2)/2) would give −2.449
    assert cohens_d([1, 2, 3], [4, 6]) != pytest.approx(-3 / math.sqrt(1.5))


def test_cohens_d_degenerate() -> None:
    np.testing.assert_array_equal(
        cohens_d_per_layer([[1, 0, 2], [1, 0, 2]], [[0, 0, 5], [0, 0, 5]]), [np.inf, 0.0, -np.inf]
    )
    with pytest.raises(DataError, match=">= 2"):
        cohens_d([1.0], [1.0, 2.0])


# ----------------------------------------------------------------------------------------------
# Histogram overlap
# ----------------------------------------------------------------------------------------------


def test_histogram_overlap_by_hand() -> None:
    # 2 bins on [0, 1], edges 0 | 0.5 | 1: pos [0, 0.2, 0.6] → (2/3, 1/3); neg [0.4, 0.8, 1] →
    # (1/3, 2/3); overlap = 1/3 + 1/3.
    assert histogram_overlap([0, 0.2, 0.6], [0.4, 0.8, 1.0], bins=2) == pytest.approx(2 / 3)
    # 50 bins of width 0.02 on [0, 1]: pos [0, 0.5, 1] falls in bins 0, 25, 49 (⅓ each);
    # neg [0.5] in bin 25; overlap = ⅓.
    assert histogram_overlap([0, 0.5, 1.0], [0.5]) == pytest.approx(1 / 3)
    # pos [0,0,1,1]: ½ in bin 0, ½ in bin 49; neg all at 1 → overlap ½.
    assert histogram_overlap([0, 0, 1, 1], [1, 1, 1, 1]) == pytest.approx(0.5)
    assert histogram_overlap([0, 1], [2, 3]) == 0.0  # separated
    assert histogram_overlap([0.1, 0.7, 0.3], [0.3, 0.1, 0.7]) == pytest.approx(1.0)
    assert histogram_overlap([2, 2], [2]) == 1.0  # constant column


def test_histogram_overlap_uses_50_bins_on_the_joint_range() -> None:
    # With 50 bins of width 0.02 on [0, 1], 0.30 and 0.31 share bin 15: overlap ½.
    # With 10 bins, 0.31 and 0.39 would also share one; with 100 bins 0.30 and 0.31 would not.
    pos, neg = [0.0, 0.30], [0.31, 1.0]
    assert histogram_overlap(pos, neg) == pytest.approx(0.5)
    assert histogram_overlap(pos, neg, bins=100) == 0.0
    rng = np.random.default_rng(0)
    p, n = rng.normal(0, 1, (200, 3)), rng.normal(0.5, 1, (150, 3))
    got = histogram_overlap_per_layer(p, n)
    for layer in range(3):
        lo = min(p[:, layer].min(), n[:, layer].min())
        hi = max(p[:, layer].max(), n[:, layer].max())
        hp = np.histogram(p[:, layer], 50, (lo, hi))[0] / 200
        hn = np.histogram(n[:, layer], 50, (lo, hi))[0] / 150
        assert got[layer] == pytest.approx(np.minimum(hp, hn).sum())
    with pytest.raises(DataError):
        histogram_overlap(pos, neg, bins=0)


def test_score_input_validation() -> None:
    with pytest.raises(DataError, match="empty"):
        auroc([], [1.0])
    with pytest.raises(DataError, match="NaN"):
        auroc([np.nan, 1.0], [1.0])
    with pytest.raises(ShapeError):
        auroc_per_layer(np.zeros((3, 2)), np.zeros((3, 4)))
    with pytest.raises(ShapeError):
        auroc_per_layer(np.zeros((3, 2, 1)), np.zeros((3, 2, 1)))


# ----------------------------------------------------------------------------------------------
# ℓ* = floor(mean of the three best layers)
# ----------------------------------------------------------------------------------------------


def test_select_from_scores_floor_of_mean() -> None:
    # Five layers, four positives and four negatives each:
    #   L0 identical            AUROC .5, d 0, overlap 1
    #   L1 partly separated
    #   L2 separated, touching  AUROC 1 (first), overlap .25 (3.01 and 3.0 share a bin)
    #   L3 reversed, far        AUROC 0, |d| ≈ 80 (largest), overlap 0 (smallest)
    #   L4 partly separated
    # best AUROC 2, best |d| 3, best overlap 3 → mean 8/3 = 2.67 → ℓ* = floor = 2 (round: 3).
    cols_pos = [
        [0, 1, 2, 3],
        [2, 3, 4, 5],
        [3.01, 11, 12, 13],
        [-100, -101, -102, -103],
        [2, 3, 4, 5],
    ]
    cols_neg = [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3.0], [0, 1, 2, 3], [0, 1, 2, 3]]
    pos, neg = np.array(cols_pos).T, np.array(cols_neg).T
    sel = select_from_scores(pos, neg, concept="gold")
    assert sel.auroc[0] == 0.5 and sel.auroc[2] == 1.0 and sel.auroc[3] == 0.0
    assert sel.overlap[0] == 1.0 and sel.overlap[2] == pytest.approx(0.25) and sel.overlap[3] == 0
    assert sel.d[3] == pytest.approx((-101.5 - 1.5) / math.sqrt(5 / 3))  # both s² = 5/3
    assert (sel.best_auroc_layer, sel.best_d_layer, sel.best_overlap_layer) == (2, 3, 3)
    assert sel.layer == 2
    assert (sel.n_pos, sel.n_neg, sel.concept, sel.score) == (4, 4, "gold", "cosine")
    json.dumps(sel.to_dict())


def test_select_from_scores_infinite_d_serialises() -> None:
    sel = select_from_scores([[1.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 1.0]])
    assert sel.d[0] == np.inf and sel.best_d_layer == 0
    assert json.loads(json.dumps(sel.to_dict()))["d"][0] == "inf"


# ----------------------------------------------------------------------------------------------
# Projections and end-to-end selection
# ----------------------------------------------------------------------------------------------


def test_projections_by_hand() -> None:
    acts = torch.tensor([[[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]], [[0.0, -2.0, 0.0], [1.0, 1.0, 0.0]]])
    v = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    proj, cos = projections(acts, v, chunk=1)
    np.testing.assert_allclose(proj, [[3.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(cos, [[0.6, 0.0], [0.0, 0.0]])  # zero activation: cosine 0
    with pytest.raises(VectorError, match="zero"):
        projections(acts, torch.zeros(2, 3))
    with pytest.raises(ShapeError):
        projections(acts, torch.ones(2, 4))


def _separable_stats(seed: int = 0, n: int = 600) -> ClassStatistics:
    """4 layers, d=16; the gold/mold signal grows with depth, peaks at layer 2, fades at 3."""
    gen = torch.Generator().manual_seed(seed)
    L, d = 4, 16
    axis = torch.nn.functional.normalize(torch.randn(L, d, generator=gen), dim=-1)
    strength = torch.tensor([0.0, 1.0, 4.0, 2.0])
    stats = ClassStatistics(L, d, holdout=0.3, model_id="toy")
    labels = [("mold", "gold", "path")[i % 3] for i in range(n)]
    sign = torch.tensor([{"mold": -1.0, "gold": 1.0, "path": 0.0}[lab] for lab in labels])
    x = torch.randn(n, L, d, generator=gen) + 3.0 * axis  # common offset
    x += sign[:, None, None] * strength[None, :, None] * axis[None]
    stats.update(labels, x, groups=range(n))
    return stats


def test_select_steering_layer_end_to_end() -> None:
    stats = _separable_stats()
    v = welfare_vectors(stats)
    ho = stats.heldout
    sel = select_steering_layer(v, "gold", ho)
    assert isinstance(sel, LayerSelection)
    assert sel.layer == 2 and sel.best_auroc_layer == 2 and sel.best_overlap_layer == 2
    assert sel.auroc[0] < 0.7 < sel.auroc[2]
    assert sel.n_pos == ho.counts["gold"] and sel.n_neg == len(ho) - ho.counts["gold"]
    # identical to scoring the cosines by hand
    _, cos = projections(ho.acts, v.gold)
    is_pos = ho.mask("gold").numpy()
    manual = select_from_scores(cos[is_pos], cos[~is_pos])
    np.testing.assert_allclose(sel.auroc, manual.auroc)
    np.testing.assert_allclose(sel.d, manual.d)
    # tensor + labels form, projection score, explicit negatives
    proj_sel = select_steering_layer(v, "gold", ho.acts, list(ho.labels), score="projection")
    assert proj_sel.score == "projection" and proj_sel.layer == 2
    vs_path = select_steering_layer(v, "gold", ho, negatives=["path"])
    assert vs_path.n_neg == ho.counts["path"]
    mold = select_steering_layer(v, "mold", ho)
    assert emotion_scatter_layer(sel, mold) == int(np.argmax((sel.auroc + mold.auroc) / 2))


def test_select_steering_layer_errors() -> None:
    stats = _separable_stats(n=120)
    v = welfare_vectors(stats)
    ho = stats.heldout
    with pytest.raises(DataError, match="labels"):
        select_steering_layer(v, "gold", ho.acts)
    with pytest.raises(DataError, match="one label per"):
        select_steering_layer(v, "gold", ho.acts, ["gold"])
    only_gold = ho.acts[ho.mask("gold")]
    with pytest.raises(DataError, match="positives and negatives"):
        select_steering_layer(v, "gold", only_gold, ["gold"] * len(only_gold))
    with pytest.raises(DataError, match="both"):
        select_steering_layer(v, "gold", ho, negatives=["gold"])
    with pytest.raises(DataError, match="score"):
        select_steering_layer(v, "gold", ho, score="dot")  # type: ignore[arg-type]
    other = ConceptVectors(
        {"gold": torch.ones(4, 8)}, VectorMetadata(model_id="x", d_model=8, n_layers=4)
    )
    with pytest.raises(ShapeError):
        select_steering_layer(other, "gold", ho)
    with pytest.raises(VectorError):
        select_steering_layer(v, "lava", ho)


# ----------------------------------------------------------------------------------------------
# Fixed layer rules
# ----------------------------------------------------------------------------------------------


def test_fixed_layer_rules() -> None:
    assert logit_lens_layer(36) == 30 and logit_lens_layer(24) == 20  # paper, Appendix L
    assert centred_cosine_layer(36) == 24 and centred_cosine_layer(24) == 16
    assert logit_lens_layer(30) == 25 and centred_cosine_layer(30) == 20  # SmolLM2
    assert logit_lens_layer(1) == 0 and centred_cosine_layer(2) == 1
    with pytest.raises(LayerError):
        logit_lens_layer(0)
    with pytest.raises(LayerError):
        centred_cosine_layer(2.5)  # type: ignore[arg-type]
