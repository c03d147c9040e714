"""Trailing-loop compression (paper O.1), the incoherence score and the 90% masking rule (A6)."""

from __future__ import annotations

import math

import pytest

from welfare_lens.errors import DataError
from welfare_lens.steering.incoherence import (
    compress_trailing_loop,
    find_trailing_loop,
    incoherence_components,
    incoherence_rate,
    incoherence_score,
    is_incoherent,
    mask_incoherent,
)

# ---------------------------------------------------------------------------------------------
# Trailing-loop compression
# ---------------------------------------------------------------------------------------------


def test_compress_replaces_the_trailing_run_with_one_annotated_copy() -> None:
    text = "The answer is 5. " + "I can't. " * 6
    assert compress_trailing_loop(text) == 'The answer is 5. ["I can\'t." repeated 6 times]'


def test_compress_keeps_the_original_spacing_of_a_multi_word_instance() -> None:
    text = "Start.\n" + "Wait, no.\n" * 5
    out = compress_trailing_loop(text)
    assert out == 'Start.\n["Wait, no." repeated 5 times]'


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a fluent answer with no repetition at all",
        "I can't. I can't.",  # two copies: below the threshold of 3
        "x x x",  # the annotation would be longer than the run
        "loop loop loop and then something else",  # the run is not at the end
    ],
)
def test_compress_is_a_no_op_without_a_profitable_trailing_loop(text: str) -> None:
    assert compress_trailing_loop(text) == text


def test_compress_picks_the_pattern_with_the_largest_saving() -> None:
    # "ab ab ab ab ab ab" repeats with p=1 ("ab" x6) and p=2 ("ab ab" x3); p=1 saves more.
    text = "Intro. " + "abcdefgh " * 6
    loop = find_trailing_loop(text)
    assert loop is not None and loop.pattern_words == 1 and loop.copies == 6
    assert compress_trailing_loop(text).endswith('["abcdefgh" repeated 6 times]')


def test_compress_tries_patterns_up_to_fifty_words() -> None:
    sentence = " ".join(f"w{i}" for i in range(50))
    text = "Head. " + (sentence + " ") * 3
    loop = find_trailing_loop(text)
    assert loop is not None and loop.pattern_words == 50 and loop.copies == 3
    sentence51 = " ".join(f"w{i}" for i in range(51))
    assert find_trailing_loop("Head. " + (sentence51 + " ") * 3) is None


def test_partial_tail_is_only_accepted_on_request() -> None:
    text = "Answer. " + "I can't do this. " * 5 + "I ca"
    assert compress_trailing_loop(text) == text
    loop = find_trailing_loop(text, allow_partial_tail=True)
    assert loop is not None and loop.copies == 5 and loop.partial_words == 2
    assert compress_trailing_loop(text, allow_partial_tail=True) == (
        'Answer. ["I can\'t do this." repeated 5 times]'
    )


# ---------------------------------------------------------------------------------------------
# Incoherence score
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "To find 17 × 23, I'll use the distributive property: 17 × 23 = 17 × (20 + 3) = 391",
        "13",
        "$20.00",
        "Sure! To kill a Python process, find its PID with ps and run kill followed by the PID.",
        "Paris is the capital of France, and Lyon is its third-largest city.",
    ],
)
def test_fluent_text_is_coherent(text: str) -> None:
    assert incoherence_score(text) < 0.3
    assert not is_incoherent(text)


@pytest.mark.parametrize(
    ("text", "component"),
    [
        ("", "empty"),
        ("   \n ", "empty"),
        ("I think the answer is 4. " + "I can't. " * 20, "loop"),
        ("The answer is 150 miles. " * 4 + "The answer is 150 mi", "loop"),
        ("Wait? No? Wait? No? Hmm? No? Wait? No? No? Wait? No? Wait? No?", "vocabulary"),
        ("17 17 17 17 17 17 17 × × × × × 23 23 23 23 = = = = =", "vocabulary"),
        ("Ġthe Ġcat � Ġsat Ċ Ġon", "nonword"),
        ("? ? ? ?", "nonword"),
        ("résumé对research mixed数据tokens garbled对all", "nonword"),
    ],
)
def test_degenerate_text_is_incoherent(text: str, component: str) -> None:
    parts = incoherence_components(text)
    assert set(parts) == {"empty", "loop", "repetition", "vocabulary", "nonword"}
    assert all(0.0 <= v <= 1.0 for v in parts.values())
    assert parts[component] > 0.5
    assert incoherence_score(text) == max(parts.values())
    assert is_incoherent(text)


def test_threshold_is_adjustable() -> None:
    text = "Step one. Step two. Step one. Step two. Step three is different here."
    score = incoherence_score(text)
    assert is_incoherent(text, threshold=score - 1e-9)
    assert not is_incoherent(text, threshold=score)


# ---------------------------------------------------------------------------------------------
# Masking
# ---------------------------------------------------------------------------------------------


def _rows(vector: str, alpha: float, n: int, bad: int) -> list[dict[str, object]]:
    return [{"vector": vector, "alpha": alpha, "incoherent": i < bad} for i in range(n)]


def test_mask_marks_conditions_strictly_above_ninety_percent() -> None:
    rows = _rows("mold", 4.0, 10, 10) + _rows("mold", 2.0, 10, 9) + _rows("gold", 4.0, 10, 0)
    out = mask_incoherent(rows)
    by_condition = {
        (r["vector"], r["alpha"]): (r["masked"], r["condition_incoherence"]) for r in out
    }
    assert by_condition[("mold", 4.0)] == (True, 1.0)
    assert by_condition[("mold", 2.0)] == (False, 0.9)  # exactly 90%: kept
    assert by_condition[("gold", 4.0)] == (False, 0.0)
    assert len(out) == len(rows)
    assert "masked" not in rows[0]  # inputs are not modified


def test_mask_groups_by_requested_keys() -> None:
    rows = [
        {"alpha": 2.0, "split": "benign_easy", "incoherent": True},
        {"alpha": 2.0, "split": "benign_easy", "incoherent": True},
        {"alpha": 2.0, "split": "harmful", "incoherent": False},
    ]
    pooled = mask_incoherent(rows)
    assert not any(r["masked"] for r in pooled)  # 2/3 incoherent when pooled
    split = mask_incoherent(rows, by=("alpha", "split"))
    assert [r["masked"] for r in split] == [True, True, False]
    assert mask_incoherent(rows, threshold=0.5)[0]["masked"]


def test_mask_rejects_bad_input() -> None:
    with pytest.raises(DataError):
        mask_incoherent([{"alpha": 1.0}])
    with pytest.raises(DataError):
        mask_incoherent(_rows("mold", 1.0, 2, 1), threshold=1.5)
    assert mask_incoherent([]) == []


def test_incoherence_rate() -> None:
    assert incoherence_rate(_rows("mold", 1.0, 4, 1)) == 0.25
    assert math.isnan(incoherence_rate([]))
