"""Tests of welfare_lens.analysis.geometry: cosines by hand, nulls, bootstrap, split halves."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from welfare_lens.analysis import (
    AntiparallelismResult,
    antiparallelism,
    bootstrap_ci,
    bootstrap_cosines,
    centred_class_mean_cosines,
    centred_null,
    cosine_per_layer,
    noise_cosine,
    null_pvalue,
    random_direction_null,
    split_half_reliability,
)
from welfare_lens.errors import DataError, LayerError, ShapeError, VectorError
from welfare_lens.vectors import ClassStatistics, ConceptVectors, VectorMetadata, welfare_vectors

CLASSES = ("mold", "gold", "path")

# The 2-layer, d=3 example of tests/test_vectors.py (class means, layer 0: M [2,1,0], G [0,3,1],
# P [1,1,1]; layer 1: M [2,2,2], G [2,0,0], P [1,1,2]).
HAND = {
    "mold": [[[1, 0, 0], [2, 2, 2]], [[3, 2, 0], [2, 2, 2]]],
    "gold": [[[0, 4, 0], [0, 0, 0]], [[0, 2, 2], [4, 0, 0]]],
    "path": [[[0, 0, 3], [1, 1, 1]], [[3, 0, 0], [1, 1, 1]], [[0, 3, 0], [1, 1, 4]]],
}
# Eq. 1 vectors: layer 0 v_M = [1.4, −0.8, −1.0], v_G = [−1.4, 2.0, 0.4];
#                layer 1 v_M = [0.6, 1.4, 0.8],  v_G = [0.6, −1.4, −2.0].
# cos, layer 0: (−1.96 − 1.6 − 0.4)/sqrt(3.6 · 6.12);  layer 1: (0.36 − 1.96 − 1.6)/sqrt(2.96 · 6.32)
HAND_COS = [-3.96 / math.sqrt(3.6 * 6.12), -3.2 / math.sqrt(2.96 * 6.32)]


def hand_stats() -> ClassStatistics:
    stats = ClassStatistics(2, 3, model_id="toy")
    g = 0
    for label, rows in HAND.items():
        stats.update(label, torch.tensor(rows, dtype=torch.float32), groups=range(g, g + len(rows)))
        g += len(rows)
    return stats


def signal_stats(
    n_per_class: int = 200,
    d: int = 32,
    strength: tuple[float, ...] = (0.5, 2.0),
    seed: int = 0,
    angle: float = 0.0,
    n_buckets: int = 32,
) -> ClassStatistics:
    """Mold shifted by −s·a, Gold by s·(cos φ·a + sin φ·b) (a ⟂ b), Path at the offset origin.

    With φ = 0 the one-vs-rest vectors are exactly antiparallel; with φ = π/2 their cosine is
    −0.8 and the centred class-mean cosines are (−0.8, −0.32, −0.32).
    """
    gen = torch.Generator().manual_seed(seed)
    L = len(strength)
    basis = torch.linalg.qr(torch.randn(L, d, 2, generator=gen)).Q  # [L, d, 2], orthonormal
    a, b = basis[..., 0], basis[..., 1]
    s = torch.tensor(strength)[:, None]
    shift = {"mold": -s * a, "gold": s * (math.cos(angle) * a + math.sin(angle) * b), "path": 0 * a}
    stats = ClassStatistics(L, d, model_id="toy", n_buckets=n_buckets)
    for i, c in enumerate(CLASSES):
        x = torch.randn(n_per_class, L, d, generator=gen) + 2.0 + shift[c]
        stats.update(c, x, groups=range(i * n_per_class, (i + 1) * n_per_class))
    return stats


def meta(
    model_id: str = "toy", d_model: int = 8, n_layers: int = 4, coordinate_mode: str = "raw"
) -> VectorMetadata:
    return VectorMetadata(
        model_id=model_id, d_model=d_model, n_layers=n_layers, coordinate_mode=coordinate_mode
    )


def vectors_with_cosines(cos: list[float], model_id: str = "toy") -> ConceptVectors:
    """gold = e0 at every layer; mold at angle acos(c) from it in the (e0, e1) plane."""
    L = len(cos)
    gold, mold = torch.zeros(L, 8), torch.zeros(L, 8)
    gold[:, 0] = 2.0
    c = torch.tensor(cos)
    mold[:, 0], mold[:, 1] = 3 * c, 3 * torch.sqrt(1 - c**2)
    return ConceptVectors({"mold": mold, "gold": gold}, meta(model_id, n_layers=L))


# ----------------------------------------------------------------------------------------------
# Cosines and antiparallelism
# ----------------------------------------------------------------------------------------------


def test_cosine_per_layer_by_hand() -> None:
    v = welfare_vectors(hand_stats())
    np.testing.assert_allclose(cosine_per_layer(v.mold, v.gold), HAND_COS, rtol=1e-6)
    with pytest.raises(ShapeError):
        cosine_per_layer(v.mold, v.gold[:1])
    with pytest.raises(VectorError, match=r"layer\(s\) \[1\]"):
        cosine_per_layer(v.mold, torch.stack([v.gold[0], torch.zeros(3)]))


def test_antiparallelism_reports_min_mean_and_value_at_steering_layer() -> None:
    # B-7: the minimum is at the last layer; the value at ℓ* = 1 is near zero.
    cos = [0.2, -0.1, -0.3, -0.9]
    r = antiparallelism(vectors_with_cosines(cos), steering_layer=[1, -1])
    assert isinstance(r, AntiparallelismResult)
    np.testing.assert_allclose(r.trained.per_layer, cos, atol=1e-6)
    assert r.trained.min == pytest.approx(-0.9) and r.trained.argmin == 3
    assert r.trained.mean == pytest.approx(-0.275)
    assert r.trained.at == {1: pytest.approx(-0.1), 3: pytest.approx(-0.9)}
    assert r.steering_layers == (1, 3)
    assert r.null_sd == pytest.approx(1 / math.sqrt(8))
    assert r.trained.null_p is not None
    np.testing.assert_allclose(r.trained.null_p, [null_pvalue(c, 8) for c in cos], rtol=1e-5)
    assert r.trained.ci_low is None and r.control is None  # no statistics: no bootstrap
    assert "min -0.900 at layer 3" in r.summary() and "headline" in r.summary()
    json.dumps(r.to_dict())
    with pytest.raises(LayerError):
        antiparallelism(vectors_with_cosines(cos), steering_layer=4)


def test_antiparallelism_hand_example_and_control() -> None:
    v = welfare_vectors(hand_stats())
    control = vectors_with_cosines([0.3, 0.1], model_id="naive")
    control = ConceptVectors(
        {n: t[:, :3] / 1 for n, t in control.items()}, meta("naive", d_model=3, n_layers=2)
    )
    r = antiparallelism(v, control, steering_layer=1, n_boot=0, stats=hand_stats())
    np.testing.assert_allclose(r.trained.per_layer, HAND_COS, rtol=1e-6)
    assert r.trained.argmin == 0 and r.trained.at[1] == pytest.approx(HAND_COS[1], rel=1e-6)
    assert r.control is not None
    np.testing.assert_allclose(r.control.per_layer, [0.3, 0.1], atol=1e-6)
    assert r.control.min == pytest.approx(0.1) and r.control.argmin == 1
    assert r.trained.noise_floor is not None  # from the statistics' variances
    with pytest.raises(ShapeError):
        antiparallelism(v, vectors_with_cosines([0.1, 0.2]))
    compat = ConceptVectors(dict(control.items()), meta("naive", 3, 2, coordinate_mode="compat"))
    with pytest.raises(VectorError, match="coordinate_mode"):
        antiparallelism(v, compat)
    with pytest.raises(DataError, match="control_stats"):
        antiparallelism(v, control_stats=hand_stats())
    wrong = signal_stats(n_per_class=3, d=3)
    with pytest.raises(DataError, match="class counts"):
        antiparallelism(v, stats=wrong)


# ----------------------------------------------------------------------------------------------
# Bootstrap over trajectories
# ----------------------------------------------------------------------------------------------


def test_bootstrap_ci_contains_estimate_and_is_reproducible() -> None:
    stats = signal_stats(angle=math.pi / 2)  # true cosine −0.8 at both layers
    v = welfare_vectors(stats)
    r = antiparallelism(v, steering_layer=1, stats=stats, n_boot=300, seed=7)
    t = r.trained
    assert t.ci_low is not None and t.ci_high is not None and t.n_boot == 300
    assert np.all(t.ci_low <= t.per_layer) and np.all(t.per_layer <= t.ci_high)
    assert np.all(t.ci_high - t.ci_low > 0)
    assert t.min_ci is not None and t.min_ci[0] <= t.min <= t.min_ci[1]
    assert t.mean_ci is not None and t.mean_ci[0] <= t.mean <= t.mean_ci[1]
    assert t.at_ci[1] == (t.ci_low[1], t.ci_high[1])
    # the stronger layer is estimated more precisely, and close to the true −0.8
    assert t.ci_high[1] - t.ci_low[1] < t.ci_high[0] - t.ci_low[0]
    assert t.ci_low[1] < -0.8 < t.ci_high[1]
    again = antiparallelism(v, steering_layer=1, stats=stats, n_boot=300, seed=7)
    np.testing.assert_array_equal(again.trained.ci_low, t.ci_low)
    a = bootstrap_cosines(stats, n_boot=50, seed=1)
    np.testing.assert_array_equal(a, bootstrap_cosines(stats, n_boot=50, seed=1))
    assert not np.array_equal(a, bootstrap_cosines(stats, n_boot=50, seed=2))
    assert a.shape == (50, 2)
    json.dumps(r.to_dict())


def test_bootstrap_spread_matches_resampling_new_data() -> None:
    # The bootstrap SD of the cosine should match its SD over independent data sets (in the
    # interior: true cosine −0.8, not at the ±1 boundary where any bootstrap is biased).
    def data(seed: int) -> ClassStatistics:
        return signal_stats(n_per_class=300, d=8, strength=(1.0,), seed=seed, angle=math.pi / 2)

    replicate = []
    for seed in range(1, 61):
        v = welfare_vectors(data(seed))
        replicate.append(cosine_per_layer(v.mold, v.gold)[0])
    assert float(np.mean(replicate)) == pytest.approx(-0.8, abs=0.05)
    true_sd = float(np.std(replicate, ddof=1))
    boot_sd = float(np.nanstd(bootstrap_cosines(data(0), 400, seed=0)))
    assert 0.6 < boot_sd / true_sd < 1.6, (boot_sd, true_sd)


def test_bootstrap_errors() -> None:
    stats = ClassStatistics(1, 4)
    stats.update(["mold", "gold", "path"] * 5, torch.randn(15, 1, 4), groups=0)  # one maze
    with pytest.raises(DataError, match="buckets"):
        bootstrap_cosines(stats, 10)
    s = signal_stats(n_per_class=10, d=4)
    with pytest.raises(DataError, match="lava"):
        bootstrap_cosines(s, 10, pair=("mold", "lava"))
    with pytest.raises(DataError, match="path"):
        bootstrap_cosines(s, 10, method="path_reference", pair=("mold", "path"))
    with pytest.raises(DataError, match="method"):
        bootstrap_cosines(s, 10, method="median")
    with pytest.raises(DataError, match="n_boot"):
        bootstrap_cosines(s, 0)


def test_bootstrap_ci_percentiles() -> None:
    lo, hi = bootstrap_ci(np.arange(101, dtype=float)[:, None])
    assert (lo[0], hi[0]) == pytest.approx((2.5, 97.5))
    lo, hi = bootstrap_ci(np.array([[np.nan, 1.0], [0.0, 1.0], [2.0, 1.0]]), level=0.5)
    assert (lo[0], hi[0]) == pytest.approx((0.5, 1.5))  # NaN resamples are ignored
    with pytest.raises(DataError):
        bootstrap_ci(np.zeros((3, 1)), level=1.0)
    with pytest.raises(DataError, match="finite"):
        bootstrap_ci(np.full((3, 1), np.nan))


# ----------------------------------------------------------------------------------------------
# Null models
# ----------------------------------------------------------------------------------------------


def test_random_direction_null_mean_zero_sd_one_over_sqrt_d() -> None:
    null = random_direction_null(576, n_samples=20_000, seed=0)
    assert abs(null.mean) < 4 / math.sqrt(576) / math.sqrt(20_000)
    assert null.sd == pytest.approx(1 / math.sqrt(576), rel=0.02)
    assert null.q025 == pytest.approx(-1.96 / math.sqrt(576), rel=0.05)
    assert null.q975 == pytest.approx(1.96 / math.sqrt(576), rel=0.05)
    again = random_direction_null(576, n_samples=20_000, seed=0)
    np.testing.assert_array_equal(again.samples, null.samples)
    json.dumps(null.to_dict())
    # the Beta shortcut has the distribution of cosines of actual Gaussian directions
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 4000, 64, generator=gen, dtype=torch.float64)
    brute = torch.nn.functional.cosine_similarity(x, y, dim=-1).numpy()
    assert float(brute.std()) == pytest.approx(1 / 8, rel=0.05)
    assert ks_2samp(brute, random_direction_null(64, 4000, seed=1).samples).pvalue > 1e-3
    with pytest.raises(ShapeError):
        random_direction_null(1)
    with pytest.raises(DataError):
        random_direction_null(8, n_samples=1)


def test_null_pvalue() -> None:
    assert null_pvalue(0.0, 64) == pytest.approx(1.0)
    assert null_pvalue(1.0, 64) == pytest.approx(0.0, abs=1e-12)
    assert null_pvalue(-0.9, 576) < 1e-100  # the paper's antiparallel minimum: far off chance
    assert null_pvalue(1.96 / 100, 10_000) == pytest.approx(0.05, abs=0.002)
    samples = random_direction_null(16, 50_000, seed=3).samples
    assert null_pvalue(0.3, 16) == pytest.approx(float(np.mean(np.abs(samples) >= 0.3)), abs=0.01)
    with pytest.raises(DataError):
        null_pvalue(1.5, 16)


def test_centred_null_is_minus_one_over_k_minus_one() -> None:
    n3 = centred_null(3, 256, n_samples=1000, seed=0)
    assert n3.mean == pytest.approx(-0.5, abs=0.01) and n3.kind == "centred_3"
    n2 = centred_null(2, 16, n_samples=50)
    np.testing.assert_allclose(n2.samples, -1.0)  # two centred vectors are opposite
    assert n3.pvalue(-0.5) > 0.5 and n3.pvalue(0.5) < 0.01
    with pytest.raises(DataError):
        centred_null(1, 16)


def test_noise_cosine_by_hand() -> None:
    # Same deviations D = [I; −I] (d = 4, 8 rows) in every class; Path has them twice.
    # Counts M 8, G 8, P 16; tr(Σ) ∝ m2/(n−1): M, G 8/7, P 16/15 (×1, per feature 2 of 8 rows).
    # One-vs-rest rows: v_M = M − (8G + 16P)/24 → (1, −1/3, −2/3); v_G → (−1/3, 1, −2/3).
    # Noise variance of each class mean: tr(Σ_c)/n_c = w.
    d = 4
    dev = torch.cat([torch.eye(d), -torch.eye(d)])[:, None, :].double()
    stats = ClassStatistics(1, d)
    stats.update("mold", dev + 1.0)
    stats.update("gold", dev - 2.0)
    stats.update("path", torch.cat([dev, dev]) + 5.0)
    tr = np.array([d * 2 / 7, d * 2 / 7, d * 4 / 15])
    w = tr / np.array([8, 8, 16])
    a, b = np.array([1, -1 / 3, -2 / 3]), np.array([-1 / 3, 1, -2 / 3])
    expected = (a * b * w).sum() / math.sqrt((a * a * w).sum() * (b * b * w).sum())
    assert noise_cosine(stats)[0] == pytest.approx(expected)
    # Path reference: ṽ_M = M − P, ṽ_G = G − P share only the Path noise.
    pr = w[2] / math.sqrt((w[0] + w[2]) * (w[1] + w[2]))
    assert noise_cosine(stats, method="path_reference")[0] == pytest.approx(pr)
    with pytest.raises(DataError, match="second_moments"):
        noise_cosine(ClassStatistics(1, d, second_moments="none"))


def test_noise_cosine_matches_pure_noise_vectors() -> None:
    # No class differences at all: one-vs-rest vectors are ≈ −0.5 antiparallel, not orthogonal.
    gen = torch.Generator().manual_seed(0)
    stats = ClassStatistics(2, 512, n_buckets=8)
    stats.update([CLASSES[i % 3] for i in range(300)], torch.randn(300, 2, 512, generator=gen))
    floor = noise_cosine(stats)
    np.testing.assert_allclose(floor, -0.5, atol=0.01)
    v = welfare_vectors(stats)
    np.testing.assert_allclose(cosine_per_layer(v.mold, v.gold), floor, atol=0.06)
    pr = welfare_vectors(stats, "path_reference")
    np.testing.assert_allclose(cosine_per_layer(pr.mold, pr.gold), 0.5, atol=0.06)
    np.testing.assert_allclose(noise_cosine(stats, method="path_reference"), 0.5, atol=0.01)


# ----------------------------------------------------------------------------------------------
# Centred class means (Tables 9/10)
# ----------------------------------------------------------------------------------------------


def test_centred_class_mean_cosines_by_hand() -> None:
    # Layer 0: grand mean [1, 5/3, 2/3]; 3×centred M [3,−2,−2], G [−3,4,1], P [0,−2,1].
    r0 = centred_class_mean_cosines(hand_stats(), layer=0, null_samples=200)
    assert r0.cosines[("mold", "gold")] == pytest.approx(-19 / math.sqrt(442))
    assert r0.cosines[("mold", "path")] == pytest.approx(2 / math.sqrt(85))
    assert r0.cosines[("gold", "path")] == pytest.approx(-7 / math.sqrt(130))
    # Default layer floor(2L/3) = 1: grand mean [5/3, 1, 4/3]; 3×centred M [1,3,2], G [1,−3,−4],
    # P [−2,0,2].
    r1 = centred_class_mean_cosines(hand_stats(), null_samples=200)
    assert r1.layer == 1
    assert r1.cosines[("mold", "gold")] == pytest.approx(-16 / math.sqrt(364))
    assert r1.cosines[("mold", "path")] == pytest.approx(2 / math.sqrt(112))
    assert r1.cosines[("gold", "path")] == pytest.approx(-10 / math.sqrt(208))
    assert list(r1.cosines) == [("mold", "gold"), ("mold", "path"), ("gold", "path")]
    assert set(r1.null_p) == set(r1.cosines)
    json.dumps(r1.to_dict())
    with pytest.raises(LayerError):
        centred_class_mean_cosines(hand_stats(), layer=2)


def test_centred_cosines_unweighted_grand_mean_and_bootstrap() -> None:
    # The grand mean is the mean of the class means: duplicating a class's samples changes nothing.
    stats = hand_stats()
    stats.update("path", torch.tensor(HAND["path"], dtype=torch.float32), groups=range(7, 10))
    r = centred_class_mean_cosines(stats, layer=0, null_samples=100)
    assert r.cosines[("mold", "gold")] == pytest.approx(-19 / math.sqrt(442))
    sig = signal_stats(strength=(0.5, 3.0), angle=math.pi / 2)
    boot = centred_class_mean_cosines(sig, layer=1, n_boot=200, seed=0, null_samples=500)
    assert boot.n_boot == 200
    expected = {("mold", "gold"): -0.8, ("mold", "path"): -0.32, ("gold", "path"): -0.32}
    for pair, value in boot.cosines.items():
        lo, hi = boot.ci[pair]
        assert lo <= value <= hi
        assert value == pytest.approx(expected[pair], abs=0.05)
    again = centred_class_mean_cosines(sig, layer=1, n_boot=200, seed=0, null_samples=500)
    assert again.ci == boot.ci
    assert boot.null.mean == pytest.approx(-0.5, abs=0.05)
    assert boot.null_p[("mold", "gold")] < 0.05 < boot.null_p[("mold", "path")]
    same = ClassStatistics(1, 3)
    for c in CLASSES:
        same.update(c, torch.ones(2, 1, 3))
    with pytest.raises(VectorError, match="coincide"):
        centred_class_mean_cosines(same, layer=0)


# ----------------------------------------------------------------------------------------------
# Split halves
# ----------------------------------------------------------------------------------------------


def test_split_half_reliability() -> None:
    rel = split_half_reliability(signal_stats(n_per_class=300, strength=(0.0, 3.0)))
    assert set(rel) == set(CLASSES)
    assert rel["gold"][1] > 0.9 and rel["mold"][1] > 0.9  # strong signal: reliable
    assert abs(rel["gold"][0]) < 0.5  # no signal at layer 0: halves unrelated
    corrected = split_half_reliability(
        signal_stats(n_per_class=300, strength=(0.0, 3.0)), corrected=True
    )
    r = rel["gold"][1]
    assert corrected["gold"][1] == pytest.approx(2 * r / (1 + r))
    pr = split_half_reliability(signal_stats(n_per_class=50), "path_reference")
    assert set(pr) == {"mold", "gold"}
    lonely = ClassStatistics(1, 4)
    lonely.update(["mold", "gold", "path"] * 4, torch.randn(12, 1, 4), groups=3)
    with pytest.raises(DataError, match="buckets"):
        split_half_reliability(lonely)
