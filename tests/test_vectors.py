"""Tests of welfare_lens.vectors: hand-computed difference of means, streaming, files, errors."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from welfare_lens.errors import DataError, LayerError, ShapeError, VectorError, WelfareLensError
from welfare_lens.vectors import (
    ClassStatistics,
    ConceptVectors,
    HeldOut,
    VectorMetadata,
    control_vectors,
    diff_of_means,
    norm_match,
    norm_matched_scale,
    vectors_from_sums,
    welfare_vectors,
)

# ----------------------------------------------------------------------------------------------
# A 2-layer, d=3 example small enough to do by hand
# ----------------------------------------------------------------------------------------------
#
# layer 0                          layer 1
#   mold: [1,0,0] [3,2,0]            [2,2,2] [2,2,2]
#   gold: [0,4,0] [0,2,2]            [0,0,0] [4,0,0]
#   path: [0,0,3] [3,0,0] [0,3,0]    [1,1,1] [1,1,1] [1,1,4]
#
# Class means, layer 0: M [2,1,0], G [0,3,1], P [1,1,1]; layer 1: M [2,2,2], G [2,0,0], P [1,1,2].
#
# Eq. 1, layer 0:
#   v_M = [2,1,0] − (sum G + sum P)/5 = [2,1,0] − [3,9,5]/5 = [1.4, −0.8, −1.0]
#   v_G = [0,3,1] − (sum M + sum P)/5 = [0,3,1] − [7,5,3]/5 = [−1.4, 2.0, 0.4]
#   v_P = [1,1,1] − (sum M + sum G)/4 = [1,1,1] − [4,8,2]/4 = [0, −1, 0.5]
# Eq. 1, layer 1:
#   v_M = [2,2,2] − [7,3,6]/5 = [0.6, 1.4, 0.8]
#   v_G = [2,0,0] − [7,7,10]/5 = [0.6, −1.4, −2.0]
#   v_P = [1,1,2] − [8,4,4]/4 = [−1, 0, 1]
# (The mean of the *class means* of G and P would give v_M = [1.5, −1, −1] at layer 0: wrong.)
# Eq. 3: ṽ_M = M − P = [1,0,−1] / [1,1,0];  ṽ_G = G − P = [−1,2,0] / [1,−1,−2].
# Sample variances (ddof=1), layer 0: M [2,2,0], G [0,2,2], P [3,3,3].

HAND = {
    "mold": [[[1, 0, 0], [2, 2, 2]], [[3, 2, 0], [2, 2, 2]]],
    "gold": [[[0, 4, 0], [0, 0, 0]], [[0, 2, 2], [4, 0, 0]]],
    "path": [[[0, 0, 3], [1, 1, 1]], [[3, 0, 0], [1, 1, 1]], [[0, 3, 0], [1, 1, 4]]],
}
V_ONE_VS_REST = {
    "mold": [[1.4, -0.8, -1.0], [0.6, 1.4, 0.8]],
    "gold": [[-1.4, 2.0, 0.4], [0.6, -1.4, -2.0]],
    "path": [[0.0, -1.0, 0.5], [-1.0, 0.0, 1.0]],
}
V_PATH_REF = {"mold": [[1, 0, -1], [1, 1, 0]], "gold": [[-1, 2, 0], [1, -1, -2]]}


def hand_stats(**kwargs: object) -> ClassStatistics:
    stats = ClassStatistics(2, 3, model_id="toy", seed=474747, **kwargs)  # type: ignore[arg-type]
    group = 0
    for label, rows in HAND.items():
        acts = torch.tensor(rows, dtype=torch.float32)
        stats.update(label, acts, groups=list(range(group, group + len(rows))))
        group += len(rows)
    return stats


def t64(x: object) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def test_hand_example_one_vs_rest() -> None:
    stats = hand_stats()
    assert stats.counts == {"mold": 2, "gold": 2, "path": 3}
    v = welfare_vectors(stats, dtype=torch.float64)
    for name, expected in V_ONE_VS_REST.items():
        torch.testing.assert_close(v[name], t64(expected))
    assert not torch.allclose(v.mold[0], t64([1.5, -1.0, -1.0]))  # not a mean of class means
    assert v.metadata.method == "one_vs_rest"
    assert v.metadata.class_counts == {"mold": 2, "gold": 2, "path": 3}
    assert v.metadata.model_id == "toy" and v.metadata.seed == 474747
    assert v.metadata.role == "trained"
    assert v.mold.dtype == torch.float64
    assert welfare_vectors(stats).mold.dtype == torch.float32  # default dtype


def test_hand_example_path_reference() -> None:
    v = welfare_vectors(hand_stats(), "path_reference", dtype=torch.float64)
    assert v.names == ("mold", "gold")
    for name, expected in V_PATH_REF.items():
        torch.testing.assert_close(v[name], t64(expected))
    with pytest.raises(VectorError, match="path"):
        v["path"]


def test_hand_example_moments() -> None:
    stats = hand_stats()
    torch.testing.assert_close(stats.mean("gold"), t64([[0, 3, 1], [2, 0, 0]]))
    torch.testing.assert_close(stats.mean_of(["gold", "path"])[0], t64([0.6, 1.8, 1.0]))
    torch.testing.assert_close(stats.var("mold")[0], t64([2, 2, 0]))
    torch.testing.assert_close(stats.var("gold")[0], t64([0, 2, 2]))
    torch.testing.assert_close(stats.var("path")[0], t64([3, 3, 3]))
    torch.testing.assert_close(stats.var("path", ddof=0)[0], t64([2, 2, 2]))
    full = hand_stats(second_moments="full")
    for label, rows in HAND.items():
        x = t64(rows)
        for layer in range(2):
            torch.testing.assert_close(full.cov(label)[layer], torch.cov(x[:, layer].T))
        torch.testing.assert_close(full.var(label), x.var(0))
    with pytest.raises(DataError, match="full"):
        stats.cov("mold")
    with pytest.raises(DataError, match="none"):
        hand_stats(second_moments="none").var("mold")


def test_single_sample_variance_needs_two() -> None:
    s = ClassStatistics(1, 2, classes=["a"])
    s.update("a", torch.ones(1, 1, 2))
    with pytest.raises(DataError, match="ddof"):
        s.var("a")
    torch.testing.assert_close(s.var("a", ddof=0), torch.zeros(1, 2, dtype=torch.float64))


def test_diff_of_means_matches_hand() -> None:
    pos, neg = (
        torch.tensor(HAND["mold"], dtype=torch.float32),
        torch.cat([torch.tensor(HAND["gold"]), torch.tensor(HAND["path"])]).float(),
    )
    torch.testing.assert_close(diff_of_means(pos, neg), torch.tensor(V_ONE_VS_REST["mold"]))
    with pytest.raises(DataError):
        diff_of_means(pos[:0], neg)
    with pytest.raises(ShapeError):
        diff_of_means(pos, neg[:, :1])
    with pytest.raises(DataError, match="NaN"):
        diff_of_means(pos * float("nan"), neg)


def test_vectors_from_sums_batched_and_nan_for_empty_class() -> None:
    sums = torch.zeros(2, 3, 1, 2, dtype=torch.float64)
    sums[0, 0] = 2.0  # class a: one sample [2, 2]
    sums[1, 1] = 4.0
    counts = torch.tensor([[1.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    out = vectors_from_sums(sums, counts, ["a", "b", "path"])
    torch.testing.assert_close(out["a"][0], t64([[2.0, 2.0]]))  # 2 − mean(rest = path 0)
    assert torch.isnan(out["a"][1]).all()  # class a empty in the second resample
    with pytest.raises(DataError, match="method"):
        vectors_from_sums(sums, counts, ["a", "b", "path"], "median")
    with pytest.raises(DataError, match="path"):
        vectors_from_sums(sums, counts, ["a", "b", "c"], "path_reference")
    with pytest.raises(ShapeError):
        vectors_from_sums(sums, counts, ["a", "b"])


# ----------------------------------------------------------------------------------------------
# Streaming == batch
# ----------------------------------------------------------------------------------------------

CLASSES = ("mold", "gold", "path")


def _batch_reference(x: torch.Tensor, labels: list[str]) -> dict[str, torch.Tensor]:
    return {c: x[[i for i, lab in enumerate(labels) if lab == c]] for c in CLASSES}


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(6, 40),
    n_splits=st.integers(0, 6),
    seed=st.integers(0, 10_000),
    moments=st.sampled_from(["diag", "full"]),
)
def test_streaming_equals_batch(n: int, n_splits: int, seed: int, moments: str) -> None:
    gen = torch.Generator().manual_seed(seed)
    L, d = 2, 3
    # A large common offset makes a naive E[x²] − E[x]² formula lose all precision.
    x = (torch.randn(n, L, d, generator=gen) * 0.1 + 1000.0).float()
    labels = [CLASSES[i % 3] for i in torch.randperm(n, generator=gen).tolist()]
    cuts = sorted(torch.randint(0, n + 1, (n_splits,), generator=gen).tolist())
    stats = ClassStatistics(L, d, second_moments=moments)  # type: ignore[arg-type]
    for a, b in zip([0, *cuts], [*cuts, n], strict=True):
        stats.update(labels[a:b], x[a:b])
    ref = _batch_reference(x.double(), labels)
    for c in CLASSES:
        xc = ref[c]
        assert stats.counts[c] == xc.shape[0]
        torch.testing.assert_close(stats.mean(c), xc.mean(0), rtol=0, atol=1e-9)
        if xc.shape[0] >= 2:
            torch.testing.assert_close(stats.var(c), xc.var(0), rtol=1e-7, atol=1e-10)
            if moments == "full":
                for layer in range(L):
                    torch.testing.assert_close(
                        stats.cov(c)[layer], torch.cov(xc[:, layer].T), rtol=1e-7, atol=1e-10
                    )
    v = welfare_vectors(stats, dtype=torch.float64)
    for c in CLASSES:
        rest = torch.cat([ref[o] for o in CLASSES if o != c])
        torch.testing.assert_close(v[c], ref[c].mean(0) - rest.mean(0), rtol=0, atol=1e-9)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(4, 30), cut=st.integers(0, 30), seed=st.integers(0, 1000))
def test_merge_equals_single_pass(n: int, cut: int, seed: int) -> None:
    cut = min(cut, n)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 4, generator=gen) + 5
    labels = [CLASSES[i % 3] for i in range(n)]
    groups = torch.randint(0, 50, (n,), generator=gen)
    kw = {"holdout": 0.3, "n_buckets": 8}
    whole = ClassStatistics(2, 4, **kw)  # type: ignore[arg-type]
    whole.update(labels, x, groups)
    a, b = ClassStatistics(2, 4, **kw), ClassStatistics(2, 4, **kw)  # type: ignore[arg-type]
    a.update(labels[:cut], x[:cut], groups[:cut])
    b.update(labels[cut:], x[cut:], groups[cut:])
    merged = a.merge(b)
    assert merged.counts == whole.counts
    torch.testing.assert_close(merged.sum, whole.sum)
    assert merged.m2 is not None and whole.m2 is not None
    torch.testing.assert_close(merged.m2, whole.m2, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(merged.bucket_sum, whole.bucket_sum)
    assert torch.equal(merged.bucket_count, whole.bucket_count)
    assert merged.heldout.labels == whole.heldout.labels
    torch.testing.assert_close(merged.heldout.acts, whole.heldout.acts)
    assert merged.n_seen == n
    assert a.n_seen == cut  # inputs untouched


def test_float64_accumulation_is_stable() -> None:
    # 10,000 float32 samples with mean 1e4 and SD 1e-2: float32 sums of squares would be useless.
    gen = torch.Generator().manual_seed(1)
    x = (1e4 + 1e-2 * torch.randn(10_000, 1, 4, generator=gen, dtype=torch.float64)).float()
    stats = ClassStatistics(1, 4, classes=["a"])
    for start in range(0, len(x), 37):
        stats.update("a", x[start : start + 37])
    ref = x.double()
    torch.testing.assert_close(stats.var("a"), ref.var(0), rtol=1e-8, atol=0)
    torch.testing.assert_close(stats.mean("a"), ref.mean(0), rtol=1e-12, atol=0)
    assert stats.sum.dtype == torch.float64


def test_memory_does_not_grow_with_samples() -> None:
    stats = ClassStatistics(3, 8, n_buckets=4)
    before = stats.nbytes()
    for _ in range(20):
        stats.update(["mold", "gold", "path", "mold"], torch.randn(4, 3, 8))
    assert stats.nbytes() == before
    held = ClassStatistics(3, 8, n_buckets=4, holdout=0.5)
    held.update(["mold"] * 200, torch.randn(200, 3, 8))
    n_held = len(held.heldout)
    assert held.nbytes() == before + n_held * (3 * 8 * 4 + 8 + 8)


# ----------------------------------------------------------------------------------------------
# update(): labels, groups, held-out split, errors
# ----------------------------------------------------------------------------------------------


def test_update_accepts_single_label_and_single_sample() -> None:
    stats = ClassStatistics(2, 3)
    stats.update("gold", torch.ones(4, 2, 3))
    stats.update("mold", torch.zeros(2, 3))  # one sample, [n_layers, d_model]
    stats.update(["path"], torch.ones(1, 2, 3, dtype=torch.bfloat16))
    stats.update([], torch.zeros(0, 2, 3))  # empty batch: no-op
    assert stats.counts == {"mold": 1, "gold": 4, "path": 1}
    assert stats.n_seen == 6 and stats.n_batches == 3


def test_update_rejects_bad_input_and_adds_nothing() -> None:
    stats = ClassStatistics(2, 3)
    with pytest.raises(ShapeError, match=r"\[batch, 2, 3\]"):
        stats.update("mold", torch.zeros(4, 2, 5))
    with pytest.raises(ShapeError):
        stats.update("mold", torch.zeros(4, 3))
    with pytest.raises(ShapeError, match="labels"):
        stats.update(["mold", "gold"], torch.zeros(3, 2, 3))
    with pytest.raises(DataError, match="Unknown label"):
        stats.update(["mold", "lava"], torch.zeros(2, 2, 3))
    with pytest.raises(ShapeError, match="group"):
        stats.update("mold", torch.zeros(2, 2, 3), groups=[1, 2, 3])
    with pytest.raises(DataError, match="integer"):
        stats.update("mold", torch.zeros(2, 2, 3), groups=torch.tensor([0.5, 1.0]))
    with pytest.raises(DataError, match="floating"):
        stats.update("mold", torch.zeros(2, 2, 3, dtype=torch.int64))
    bad = torch.zeros(3, 2, 3)
    bad[1, 1, 2] = float("nan")
    with pytest.raises(DataError, match=r"layer\(s\) \[1\]") as info:
        stats.update("mold", bad)
    assert info.value.hint
    bad[1, 1, 2] = float("inf")
    with pytest.raises(DataError, match="NaN/Inf"):
        stats.update("mold", bad)
    assert stats.counts == {"mold": 0, "gold": 0, "path": 0}
    assert stats.n_seen == 0 and float(stats.sum.abs().sum()) == 0.0


def test_constructor_validation() -> None:
    with pytest.raises(ShapeError):
        ClassStatistics(0, 3)
    with pytest.raises(DataError):
        ClassStatistics(2, 3, classes=["a", "a"])
    with pytest.raises(DataError):
        ClassStatistics(2, 3, classes="mold")
    with pytest.raises(DataError):
        ClassStatistics(2, 3, n_buckets=1)
    with pytest.raises(DataError):
        ClassStatistics(2, 3, second_moments="tri")  # type: ignore[arg-type]
    with pytest.raises(DataError):
        ClassStatistics(2, 3, holdout=1.0)
    with pytest.raises(VectorError):
        ClassStatistics(2, 3, coordinate_mode="folded")


def test_heldout_split_is_by_group_and_reproducible() -> None:
    def run(seed: int) -> ClassStatistics:
        stats = ClassStatistics(1, 2, holdout=0.25, holdout_seed=seed)
        groups = [i // 3 for i in range(3000)]  # three samples per maze
        labels = [CLASSES[i % 3] for i in range(3000)]
        acts = torch.arange(3000, dtype=torch.float32)[:, None, None].expand(3000, 1, 2)
        for s in range(0, 3000, 128):
            stats.update(labels[s : s + 128], acts[s : s + 128], groups[s : s + 128])
        return stats

    a, b, c = run(0), run(0), run(1)
    ho = a.heldout
    assert isinstance(ho, HeldOut)
    assert 0.20 < len(ho) / 3000 < 0.30
    assert sum(a.counts.values()) + len(ho) == 3000 == a.n_seen
    held_groups = set(ho.groups.tolist())
    # every sample of a held-out maze is held out, and no training sample comes from one
    assert len(ho) == 3 * len(held_groups)
    ids = ho.acts[:, 0, 0].long().tolist()
    assert all(i // 3 in held_groups for i in ids)
    assert ho.labels == tuple(CLASSES[i % 3] for i in ids)
    assert set(ho.counts) == set(CLASSES)
    assert ho.mask("gold").sum().item() == ho.counts["gold"]
    # held-out samples are not in the sums
    train_ids = [i for i in range(3000) if i // 3 not in held_groups]
    assert float(a.sum[:, 0, 0].sum()) == float(sum(train_ids))
    assert torch.equal(b.heldout.acts, ho.acts)  # same seed, same split
    assert not torch.equal(c.heldout.groups, ho.groups)  # another seed, another split


def test_buckets_keep_groups_together() -> None:
    stats = ClassStatistics(1, 1, classes=["a"], n_buckets=16)
    for g in range(40):
        stats.update("a", torch.full((5, 1, 1), float(g)), groups=g)  # 5 samples per maze
    assert int(stats.bucket_count.sum()) == 200
    # each bucket holds whole mazes: counts are multiples of 5, and sums are 5 × (sum of ids)
    assert bool((stats.bucket_count % 5 == 0).all())
    assert (stats.bucket_count > 0).sum() >= 10  # ids are spread by hashing
    # consecutive ids do not all land in consecutive buckets (the hash breaks structure)
    stats2 = ClassStatistics(1, 1, classes=["a"], n_buckets=2)
    stats2.update("a", torch.ones(100, 1, 1), groups=[2 * i for i in range(100)])
    assert bool((stats2.bucket_count > 0).all())  # even ids do not all fall in bucket 0


# ----------------------------------------------------------------------------------------------
# ConceptVectors
# ----------------------------------------------------------------------------------------------


def meta(**kw: object) -> VectorMetadata:
    base: dict[str, object] = {"model_id": "toy", "d_model": 3, "n_layers": 2}
    base.update(kw)
    return VectorMetadata(**base)  # type: ignore[arg-type]


def test_concept_vectors_access_and_errors() -> None:
    v = welfare_vectors(hand_stats(), dtype=torch.float64)
    assert v.names == ("mold", "gold", "path") and len(v) == 3 and "gold" in v
    assert list(v) == ["mold", "gold", "path"]
    torch.testing.assert_close(v.at("gold", -1), t64([0.6, -1.4, -2.0]))
    torch.testing.assert_close(v.norms("path"), t64([math.sqrt(1.25), math.sqrt(2.0)]))
    with pytest.raises(LayerError):
        v.at("gold", 2)
    with pytest.raises(VectorError, match="available"):
        v["lava"]
    with pytest.raises(ShapeError):
        ConceptVectors({"a": torch.zeros(2, 4)}, meta())
    with pytest.raises(VectorError):
        ConceptVectors({}, meta())
    assert v.select(["gold"]).names == ("gold",)
    assert "toy" in repr(v)


def test_nan_vectors_are_rejected() -> None:
    x = torch.ones(2, 3)
    x[1, 0] = float("nan")
    with pytest.raises(VectorError, match=r"layer\(s\) \[1\]") as info:
        ConceptVectors({"gold": x}, meta())
    assert info.value.hint
    x[1, 0] = float("inf")
    with pytest.raises(VectorError, match="NaN/Inf"):
        ConceptVectors({"gold": x}, meta())


def test_welfare_vectors_errors() -> None:
    stats = ClassStatistics(2, 3)
    stats.update("mold", torch.ones(2, 2, 3))
    with pytest.raises(DataError, match="no samples"):
        welfare_vectors(stats)
    one = ClassStatistics(2, 3, classes=["mold"])
    one.update("mold", torch.ones(2, 2, 3))
    with pytest.raises(DataError, match="two classes"):
        welfare_vectors(one)
    with pytest.raises(DataError, match="method"):
        welfare_vectors(hand_stats(), "median")  # type: ignore[arg-type]


def test_arithmetic_unit_validate() -> None:
    v = welfare_vectors(hand_stats(), dtype=torch.float64)
    s = v + v
    torch.testing.assert_close(s.mold, 2 * v.mold)
    torch.testing.assert_close((v - v).gold, torch.zeros(2, 3, dtype=torch.float64))
    torch.testing.assert_close((3 * v).gold, 3 * v.gold)
    torch.testing.assert_close((v * 0.5).gold, 0.5 * v.gold)
    torch.testing.assert_close((v / 2).gold, 0.5 * v.gold)
    torch.testing.assert_close((-v).path, -v.path)
    assert (v + v).metadata.extra["derived"] == ["add"]
    u = v.unit()
    torch.testing.assert_close(u.norms("mold"), torch.ones(2, dtype=torch.float64))
    assert v.validate() is v
    with pytest.raises(VectorError, match="zero norm"):
        (v - v).validate()
    with pytest.raises(VectorError, match="zero norm"):
        (v - v).unit()
    with pytest.raises(VectorError):
        v / 0
    with pytest.raises(VectorError):
        v * float("nan")
    other_mode = ConceptVectors({n: t for n, t in v.items()}, meta(coordinate_mode="compat"))
    with pytest.raises(VectorError, match="coordinate_mode"):
        v + other_mode
    with pytest.raises(VectorError, match="named"):
        v + v.select(["mold", "gold"])
    naive = ConceptVectors(dict(v.items()), meta(model_id="naive"))
    diff = v - naive  # trained minus control is allowed, and recorded as such
    assert diff.metadata.model_id == "(toy) - (naive)"
    with pytest.raises(VectorError):
        diff.check_compatible(v)


def test_norm_matching() -> None:
    # the paper's VAA example (H.4): α = 2 with ‖v_Gold‖ = 14.37 and a unit u gives β = 28.74
    v = torch.zeros(5)
    v[0] = 14.37
    u = torch.tensor([0.6, 0.8, 0.0, 0.0, 0.0])
    assert norm_matched_scale(2.0, v, u) == pytest.approx(28.74)
    with pytest.raises(VectorError):
        norm_matched_scale(1.0, v, torch.zeros(5))
    out = norm_match(torch.tensor([[3.0, 4.0], [0.0, 2.0]]), torch.tensor([10.0, 1.0]))
    torch.testing.assert_close(out, torch.tensor([[6.0, 8.0], [0.0, 1.0]]))
    torch.testing.assert_close(norm_match(torch.tensor([3.0, 4.0]), 1.0), torch.tensor([0.6, 0.8]))
    with pytest.raises(VectorError):
        norm_match(torch.zeros(2, 3), 1.0)
    with pytest.raises(ShapeError):
        norm_match(torch.ones(2, 3), torch.ones(3))
    trained = welfare_vectors(hand_stats(), dtype=torch.float64)
    naive = ConceptVectors({n: 2 * t + 1 for n, t in trained.items()}, meta(model_id="naive"))
    matched = naive.match_norms(trained)
    for n in trained.names:
        torch.testing.assert_close(matched.norms(n), trained.norms(n))
        cos = torch.nn.functional.cosine_similarity(matched[n], naive[n], dim=-1)
        torch.testing.assert_close(cos, torch.ones(2, dtype=torch.float64))
    assert matched.metadata.model_id == "naive"


def test_control_vectors() -> None:
    trained = welfare_vectors(hand_stats(), "path_reference")
    naive = ClassStatistics(2, 3, model_id="naive")
    for label, rows in HAND.items():
        naive.update(label, torch.tensor(rows, dtype=torch.float32).flip(-1))
    u = control_vectors(naive, trained)
    assert u.metadata.role == "control" and u.metadata.method == "path_reference"
    assert u.metadata.model_id == "naive" and u.names == ("mold", "gold")
    torch.testing.assert_close(u.mold, torch.tensor(V_PATH_REF["mold"]).float().flip(-1))
    with pytest.warns(UserWarning, match="same model id"):
        control_vectors(hand_stats(), trained)
    with pytest.raises(VectorError, match="position_rule"):
        control_vectors(ClassStatistics(2, 3, position_rule="generation_prompt"), trained)
    with pytest.raises(ShapeError):
        control_vectors(ClassStatistics(2, 4), trained)
    with pytest.raises(DataError, match="classes"):
        control_vectors(ClassStatistics(2, 3, classes=["mold", "gold"]), trained)


# ----------------------------------------------------------------------------------------------
# Compatibility with models
# ----------------------------------------------------------------------------------------------


def fake_bridge(
    d_model: int = 3,
    n_layers: int = 2,
    model_id: str | None = "toy",
    compat: bool = False,
    attr: str = "model_id",
) -> SimpleNamespace:
    bridge = SimpleNamespace(
        cfg=SimpleNamespace(d_model=d_model, n_layers=n_layers, model_name="HF/Toy"),
        compatibility_mode=compat,
    )
    if model_id is not None:
        bridge.welfare_lens_info = SimpleNamespace(
            **{attr: model_id}, coordinate_mode="compat" if compat else "raw"
        )
    return bridge


def test_check_compatible() -> None:
    v = welfare_vectors(hand_stats())
    v.check_compatible(fake_bridge())
    v.check_compatible(fake_bridge(attr="name"))
    with pytest.raises(ShapeError, match="d_model=3") as info:
        v.check_compatible(fake_bridge(d_model=576))
    assert isinstance(info.value, WelfareLensError) and info.value.hint
    with pytest.raises(ShapeError, match="n_layers"):
        v.check_compatible(fake_bridge(n_layers=30))
    with pytest.raises(VectorError, match="coordinate_mode"):
        v.check_compatible(fake_bridge(compat=True))
    with pytest.raises(VectorError, match="allow_other_checkpoint"):
        v.check_compatible(fake_bridge(model_id="other"))
    v.check_compatible(fake_bridge(model_id="other"), allow_other_checkpoint=True)
    with pytest.raises(VectorError, match="HF/Toy"):  # a bare bridge: its cfg.model_name
        v.check_compatible(fake_bridge(model_id=None))
    with pytest.raises(VectorError, match="d_model"):
        v.check_compatible(object())
    # other vectors and statistics
    v.check_compatible(hand_stats())
    with pytest.raises(VectorError, match="hook"):
        v.check_compatible(ClassStatistics(2, 3, model_id="toy", hook="resid_mid"))


def test_for_model_reads_the_bridge() -> None:
    stats = ClassStatistics.for_model(fake_bridge(d_model=5, n_layers=4, model_id="m"), seed=7)
    assert (stats.n_layers, stats.d_model) == (4, 5)
    assert stats.metadata.model_id == "m" and stats.metadata.seed == 7
    compat = ClassStatistics.for_model(fake_bridge(compat=True))
    assert compat.metadata.coordinate_mode == "compat"


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def test_vectors_save_load_round_trip(tmp_path: Path) -> None:
    v = welfare_vectors(hand_stats(), dtype=torch.float32)
    base = v.save(tmp_path / "sub" / "vecs.v1")
    assert base == tmp_path / "sub" / "vecs.v1"
    assert (tmp_path / "sub" / "vecs.v1.safetensors").is_file()
    sidecar = json.loads((tmp_path / "sub" / "vecs.v1.json").read_text())
    assert sidecar["norms"]["path"][1] == pytest.approx(math.sqrt(2.0), abs=1e-6)
    assert sidecar["metadata"]["class_counts"] == {"mold": 2, "gold": 2, "path": 3}
    for p in (base, f"{base}.json", f"{base}.safetensors"):
        w = ConceptVectors.load(p)
        assert w.names == v.names
        assert w.metadata == v.metadata
        for n in v.names:
            assert torch.equal(w[n], v[n])
    assert not list(tmp_path.rglob("*.tmp"))


def test_stats_save_load_round_trip_and_resume(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(60, 2, 3, generator=gen)
    labels = [CLASSES[i % 3] for i in range(60)]
    kw = {"holdout": 0.3, "n_buckets": 8, "info": {"run": "a"}}
    whole = ClassStatistics(2, 3, **kw)  # type: ignore[arg-type]
    whole.update(labels, x, groups=range(60))
    part = ClassStatistics(2, 3, **kw)  # type: ignore[arg-type]
    part.update(labels[:25], x[:25], groups=range(25))
    part.save(tmp_path / "stats")
    resumed = ClassStatistics.load(tmp_path / "stats")
    assert resumed.metadata == part.metadata and resumed.info == {"run": "a"}
    assert len(resumed.heldout) == len(part.heldout) > 0
    resumed.update(labels[25:], x[25:], groups=range(25, 60))
    for key in ("count", "sum", "m2", "bucket_sum", "bucket_count"):
        torch.testing.assert_close(getattr(resumed, key), getattr(whole, key))
    torch.testing.assert_close(resumed.heldout.acts, whole.heldout.acts)
    assert resumed.heldout.labels == whole.heldout.labels
    assert resumed.n_seen == 60


def _corrupt_cases(tmp_path: Path) -> Path:
    return welfare_vectors(hand_stats()).save(tmp_path / "v")


def test_corrupt_files_give_clear_errors(tmp_path: Path) -> None:
    base = _corrupt_cases(tmp_path)
    st_file, js_file = Path(f"{base}.safetensors"), Path(f"{base}.json")
    good_st, good_js = st_file.read_bytes(), js_file.read_text()

    with pytest.raises(DataError, match="missing"):
        ConceptVectors.load(tmp_path / "nothing")

    st_file.write_bytes(good_st[: len(good_st) // 2])  # truncated
    with pytest.raises(DataError, match="corrupt") as info:
        ConceptVectors.load(base)
    assert info.value.hint

    flipped = bytearray(good_st)
    flipped[-3] ^= 0xFF  # a flipped bit inside the tensor data: safetensors alone cannot tell
    st_file.write_bytes(bytes(flipped))
    with pytest.raises(DataError, match="SHA-256"):
        ConceptVectors.load(base)

    st_file.write_bytes(b"not a safetensors file at all")
    js = json.loads(good_js)
    del js["sha256"]
    js_file.write_text(json.dumps(js))
    with pytest.raises(DataError, match="safetensors"):
        ConceptVectors.load(base)

    st_file.write_bytes(good_st)
    js_file.write_text(good_js[:40])
    with pytest.raises(DataError, match="JSON"):
        ConceptVectors.load(base)
    js_file.write_text(json.dumps({"format": "something.else"}))
    with pytest.raises(DataError, match="does not describe"):
        ConceptVectors.load(base)
    with pytest.raises(DataError, match="ClassStatistics"):
        ClassStatistics.load(base)  # a vectors file is not a statistics file
    js = json.loads(good_js)
    js["names"] = ["mold", "lava"]
    js_file.write_text(json.dumps(js))
    with pytest.raises(DataError, match="lava"):
        ConceptVectors.load(base)


def test_nan_in_saved_file_is_a_vector_error(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    base = _corrupt_cases(tmp_path)
    st_file, js_file = Path(f"{base}.safetensors"), Path(f"{base}.json")
    bad = {n: torch.full((2, 3), float("nan")) for n in CLASSES}
    save_file(bad, str(st_file))
    js = json.loads(js_file.read_text())
    del js["sha256"]  # pretend the file was written this way
    js_file.write_text(json.dumps(js))
    with pytest.raises(VectorError, match="NaN"):
        ConceptVectors.load(base)


def test_stats_file_mismatch(tmp_path: Path) -> None:
    a = hand_stats()
    a.save(tmp_path / "a")
    ClassStatistics(2, 4).save(tmp_path / "b")
    # swap the tensor files: the sidecar's hash catches it
    Path(tmp_path / "a.safetensors").write_bytes(Path(tmp_path / "b.safetensors").read_bytes())
    with pytest.raises(DataError, match="belong together"):
        ClassStatistics.load(tmp_path / "a")
    # without the hash, the shape check still catches it
    js = json.loads((tmp_path / "a.json").read_text())
    del js["sha256"]
    (tmp_path / "a.json").write_text(json.dumps(js))
    with pytest.raises(DataError, match="inconsistent"):
        ClassStatistics.load(tmp_path / "a")


def test_metadata_validation() -> None:
    with pytest.raises(VectorError):
        meta(coordinate_mode="folded")
    with pytest.raises(ShapeError):
        meta(d_model=0)
    with pytest.raises(DataError, match="model_id"):
        VectorMetadata.from_dict({"d_model": 3, "n_layers": 2})
    with pytest.raises(DataError, match="type"):
        VectorMetadata.from_dict({"model_id": "x", "d_model": "wide", "n_layers": 2})
    m = meta(extra={"a": [1, 2]}, seed=3)
    assert VectorMetadata.from_dict({**m.to_dict(), "future_field": 1}) == m


def test_unserialisable_info_is_a_data_error(tmp_path: Path) -> None:
    stats = ClassStatistics(2, 3, info={"bad": object()})
    with pytest.raises(DataError, match="JSON"):
        stats.save(tmp_path / "s")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_no_pickle_in_files(tmp_path: Path) -> None:
    base = hand_stats(holdout=0.5).save(tmp_path / "s")
    raw = Path(f"{base}.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])  # a plain safetensors header
    assert {"count", "sum", "m2", "bucket_sum", "bucket_count"} <= set(header)
    assert b"\x80\x04" not in raw[:2]  # not a pickle stream
    np.testing.assert_array_equal(
        ClassStatistics.load(base).count.numpy(), hand_stats(holdout=0.5).count.numpy()
    )


def test_warnings_are_not_raised_for_normal_use() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats = hand_stats()
        welfare_vectors(stats)
