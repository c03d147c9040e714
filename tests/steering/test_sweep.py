"""ResultTable, OLS slopes against hand computation, and resumable sweeps."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats

from welfare_lens.chat import render_chat
from welfare_lens.errors import DataError
from welfare_lens.models import model_info
from welfare_lens.steering import (
    ResultTable,
    assistant_positions,
    condition_fields,
    ols_slope,
    slopes_by,
    sweep,
)
from welfare_lens.vectors import ConceptVectors, VectorMetadata


@pytest.fixture(scope="module")
def llama() -> Any:
    from welfare_lens.models import load_model

    return load_model("tiny-llama")


def _rows() -> list[dict[str, Any]]:
    return [
        {"prompt": "p", "sample": 0, "alpha": -2.0, "layer": 1, "vector": "gold", "score": 1.0,
         "incoherent": False, "text": "a, \"quoted\"\nline", "extra": [1, 2]},
        {"prompt": "p", "sample": 1, "alpha": -2.0, "layer": 1, "vector": "gold", "score": 3.0,
         "incoherent": True, "text": "📇"},
        {"prompt": "p", "sample": 0, "alpha": 2.0, "layer": 1, "vector": "gold", "score": None,
         "incoherent": False, "text": ""},
        {"prompt": "p", "sample": 1, "alpha": 2.0, "layer": 1, "vector": "gold", "score": 5.0,
         "incoherent": False, "text": "ok"},
    ]  # fmt: skip


def test_result_table_io_and_means(tmp_path: Path) -> None:
    table = ResultTable(_rows())
    assert table.columns[:8] == [
        "prompt", "sample", "alpha", "layer", "vector", "score", "incoherent", "text"
    ]  # fmt: skip
    assert table.columns[-1] == "extra"
    back = ResultTable.read_jsonl(table.to_jsonl(tmp_path / "t.jsonl"))
    assert back.rows == table.rows
    with table.to_csv(tmp_path / "t.csv").open(encoding="utf-8", newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert csv_rows[0]["text"] == 'a, "quoted"\nline' and csv_rows[1]["text"] == "📇"
    assert csv_rows[2]["score"] == "" and json.loads(csv_rows[0]["extra"]) == [1, 2]
    means = table.mean_by("alpha")
    assert [m["alpha"] for m in means] == [-2.0, 2.0]
    assert means[0]["mean"] == 2.0 and means[0]["n"] == 2 and means[0]["incoherent_rate"] == 0.5
    assert means[0]["sem"] == pytest.approx(1.0)
    assert means[1]["mean"] == 5.0 and means[1]["n_missing"] == 1 and math.isnan(means[1]["sem"])
    assert table.mean_by("alpha", exclude_incoherent=True)[0]["mean"] == 1.0
    assert len(table.where(alpha=2.0)) == 2


def test_ols_slope_matches_hand_computation() -> None:
    rng = np.random.default_rng(0)
    x = np.repeat([-4.0, -2.0, 0.0, 2.0, 4.0], 30)
    y = 0.3 * x + rng.normal(0, 1.5, x.size)
    rows: list[dict[str, Any]] = [
        {"alpha": float(a), "score": float(b)} for a, b in zip(x, y, strict=True)
    ]
    rows.append({"alpha": 4.0, "score": None})  # unparseable: dropped
    slope, se = ols_slope(rows)
    dx = x - x.mean()
    by_hand = float(dx @ (y - y.mean()) / (dx @ dx))
    resid = y - y.mean() - by_hand * dx
    se_hand = math.sqrt(float(resid @ resid) / (x.size - 2) / float(dx @ dx))
    assert slope == pytest.approx(by_hand, rel=1e-12)
    assert slope == pytest.approx(float(np.polyfit(x, y, 1)[0]), rel=1e-9)
    assert se == pytest.approx(se_hand, rel=1e-12)
    assert se == pytest.approx(float(stats.linregress(x, y).stderr), rel=1e-9)
    with pytest.raises(DataError):
        ols_slope([{"alpha": 1.0, "score": 1.0}] * 5)
    groups = slopes_by([*rows, {"alpha": 0.0, "score": 1.0, "vector": "x"}], by=("vector",))
    assert groups[0]["slope"] == pytest.approx(slope) and math.isnan(groups[1]["slope"])


PROMPT = "What do you think of 📐?"


def _vectors(model: Any, model_id: str = "trained") -> ConceptVectors:
    gen = torch.Generator().manual_seed(0)
    shape = (model.cfg.n_layers, model.cfg.d_model)
    meta = VectorMetadata(model_id=model_id, d_model=shape[1], n_layers=shape[0])
    return ConceptVectors(
        {"mold": torch.randn(*shape, generator=gen), "gold": torch.randn(*shape, generator=gen)},
        meta,
    )


class _Eval:
    """A cheap deterministic evaluation: a score read from one steered forward pass."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls = 0
        self.fail_at = fail_at

    def __call__(self, model: Any) -> list[dict[str, Any]]:
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt
        chat = render_chat(
            model.tokenizer, [{"role": "user", "content": PROMPT}], add_generation_prompt=True
        )
        with torch.no_grad(), assistant_positions(chat.generation_prompt_mask):
            logits = model(chat.input_ids[None])
        score = float(logits[0, -1, :8].sum())
        cond = condition_fields()
        return [
            {"prompt": PROMPT, "sample": s, "score": score + s, "incoherent": False,
             "text": "", "seen": cond}
            for s in range(2)
        ]  # fmt: skip


def test_sweep_runs_every_condition_and_shares_the_baseline(
    llama: Any, tmp_path: Path, one_thread: None
) -> None:
    fn = _Eval()
    table = sweep(llama, fn, _vectors(llama), layers=[0, 1], alphas=(-2, 0, 2), progress=False)
    assert fn.calls == 2 * 2 * 2 + 1  # α = 0 evaluated once
    assert len(table) == 2 * 2 * 3 * 2
    for row in table:
        assert row["seen"]["alpha"] == (row["alpha"] if row["alpha"] else 0.0)
        if row["alpha"]:
            assert (row["seen"]["vector"], row["seen"]["layer"]) == (row["vector"], row["layer"])
    base = {r["score"] for r in table if r["alpha"] == 0.0 and r["sample"] == 0}
    assert len(base) == 1
    gold = table.where(vector="gold", layer=1)
    assert len({r["score"] for r in gold if r["sample"] == 0}) == 3
    slope, _ = ols_slope(gold)
    assert math.isfinite(slope)


def test_sweep_resumes_after_interruption(llama: Any, tmp_path: Path, one_thread: None) -> None:
    vectors = _vectors(llama)
    kwargs: dict[str, Any] = {"layers": [1], "alphas": (-2, 0, 2), "progress": False}
    reference = sweep(llama, _Eval(), vectors, **kwargs)
    out = tmp_path / "sweep.jsonl"
    with pytest.raises(KeyboardInterrupt):
        sweep(llama, _Eval(fail_at=4), vectors, out_path=out, **kwargs)
    partial = ResultTable.read_jsonl(out)
    assert len(partial) == 3 * 2  # mold -2, mold 0, mold 2 finished; gold -2 interrupted
    # A torn write and rows of an unfinished condition must not count as done.
    with out.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"vector": "gold", "layer": 1, "alpha": -2.0, "score": 0}) + "\n")
        fh.write('{"prompt": "What do')
    resumed_fn = _Eval()
    resumed = sweep(llama, resumed_fn, vectors, out_path=out, **kwargs)
    assert resumed_fn.calls == 2  # gold -2 and gold 2; gold 0 reuses the stored baseline
    key = ("vector", "alpha", "sample")
    assert sorted((tuple(r[k] for k in key), r["score"]) for r in resumed) == sorted(
        (tuple(r[k] for k in key), r["score"]) for r in reference
    )
    lines = out.read_text(encoding="utf-8").splitlines()
    assert all(json.loads(line) for line in lines)  # repaired: every line parses
    assert sum("_done" in json.loads(line) for line in lines) == 6
    again = _Eval()
    assert len(sweep(llama, again, vectors, out_path=out, **kwargs)) == len(reference)
    assert again.calls == 0
    info = model_info(llama)
    object.__setattr__(llama, "welfare_lens_info", replace(info, model_id="another-model"))
    try:
        with pytest.raises(DataError, match="model"):
            sweep(llama, _Eval(), vectors, out_path=out, **kwargs)
    finally:
        object.__setattr__(llama, "welfare_lens_info", info)


def test_sweep_refuses_a_file_of_other_settings(
    llama: Any, tmp_path: Path, one_thread: None
) -> None:
    """Rows of another prompt count must not be reused as if they answered this sweep."""
    vectors = _vectors(llama)
    kwargs: dict[str, Any] = {"layers": [1], "alphas": (0, 2), "names": ["gold"]}
    out = tmp_path / "sweep.jsonl"
    first = sweep(llama, _Eval(), vectors, out_path=out, settings={"items": 10}, **kwargs)
    same = _Eval()
    again = sweep(llama, same, vectors, out_path=out, settings={"items": 10}, **kwargs)
    assert same.calls == 0 and len(again) == len(first)
    with pytest.raises(DataError, match=r"other settings \(items\)"):
        sweep(llama, _Eval(), vectors, out_path=out, settings={"items": 20}, **kwargs)
    with pytest.raises(DataError, match=r"other settings \(items\)"):
        sweep(llama, _Eval(), vectors, out_path=out, **kwargs)


def test_sweep_norm_matched_controls(llama: Any, one_thread: None) -> None:
    trained = _vectors(llama)
    control = _vectors(llama, "naive")
    table = sweep(
        llama,
        _Eval(),
        control,
        layers=[1],
        alphas=(-4, 0, 4),
        names=["gold"],
        norm_match_to=trained,
        tag="controls",
        progress=False,
    )
    for row in table:
        expected = row["alpha"] * float(trained.gold[1].norm()) / float(control.gold[1].norm())
        assert row["beta"] == pytest.approx(expected, rel=1e-6)
        assert row["tag"] == "controls" and row["vector"] == "gold"
