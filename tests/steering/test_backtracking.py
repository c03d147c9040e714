"""Backtracking evaluation (paper §4.2): data, answers, preprocessing (O.1), rules and judge (O.3)."""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import torch

from welfare_lens.errors import DataError
from welfare_lens.steering.backtracking import (
    BACKTRACKING_CLASSES,
    BACKTRACKING_JUDGE_PROMPT,
    MathProblem,
    backtracking_cues,
    backtracking_rate,
    backtracking_responses,
    classify_backtracking,
    evaluate_backtracking,
    extract_answer,
    generate_arithmetic_problems,
    is_correct,
    judge_backtracking,
    label_backtracking,
    load_arithmetic_problems,
    load_gsm8k,
    parse_backtracking_class,
    parse_gsm8k_answer,
    precheck_backtracking,
    sample_problems,
)


def _shipped() -> dict[str, Any]:
    path = resources.files("welfare_lens").joinpath("data/steering/arithmetic_problems.json")
    return json.loads(path.read_text("utf-8"))


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def test_shipped_problems_are_the_generator_output() -> None:
    data = _shipped()
    assert data["format"] == "welfare_lens.math_problems" and data["version"] == 1
    gen = data["generator"]
    assert data["items"] == generate_arithmetic_problems(gen["n"], gen["seed"])


def test_problems_are_many_unique_and_well_formed() -> None:
    items = _shipped()["items"]
    assert len(items) >= 200
    assert len({i["question"] for i in items}) == len(items)
    assert len({i["id"] for i in items}) == len(items)
    assert len({i["template"] for i in items}) >= 20
    for item in items:
        assert set(item) == {"id", "template", "question", "answer"}
        assert isinstance(item["answer"], int) and item["answer"] > 0
        assert item["question"].endswith("?")
        assert "  " not in item["question"] and "1 more hours" not in item["question"]


def test_generator_is_seeded() -> None:
    assert generate_arithmetic_problems(30, 1) == generate_arithmetic_problems(30, 1)
    assert generate_arithmetic_problems(30, 1) != generate_arithmetic_problems(30, 2)


def test_load_problems(tmp_path: Path) -> None:
    problems = load_arithmetic_problems()
    assert len(problems) == 240 and isinstance(problems[0], MathProblem)
    assert problems[0].answer == float(_shipped()["items"][0]["answer"])
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"items": [{"question": "1+1?", "answer": 2}]}))
    assert load_arithmetic_problems(path)[0] == MathProblem("item-0", "1+1?", 2.0)
    path.write_text(json.dumps({"items": [{"question": "1+1?"}]}))
    with pytest.raises(DataError):
        load_arithmetic_problems(path)
    path.write_text(json.dumps({"items": []}))
    with pytest.raises(DataError):
        load_arithmetic_problems(path)


def test_sample_problems_is_deterministic() -> None:
    pool = load_arithmetic_problems()
    a, b = sample_problems(pool, 50, seed=3), sample_problems(pool, 50, seed=3)
    assert a == b and len(a) == 50 and len(set(a)) == 50
    assert sample_problems(pool, 50, seed=4) != a
    assert sample_problems(pool, None) == pool


def test_gsm8k_rows_from_the_user(tmp_path: Path) -> None:
    rows = [
        {"question": "Q1", "answer": "She has 3 + 4 = <<3+4=7>>7.\n#### 7"},
        {"question": "Q2", "answer": "#### 1,250"},
        {"question": "Q3", "answer": 5},
    ]
    problems = load_gsm8k(rows)
    assert [p.answer for p in problems] == [7.0, 1250.0, 5.0]
    assert problems[0].id == "gsm8k-test-0000" and problems[0].source == "gsm8k"
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n")
    assert [p.question for p in load_gsm8k(path)] == ["Q1", "Q2"]
    with pytest.raises(DataError):
        load_gsm8k([{"question": "Q", "answer": "no marker"}])
    with pytest.raises(DataError):
        parse_gsm8k_answer("The answer is 4")


def test_gsm8k_is_never_downloaded_implicitly() -> None:
    pytest.importorskip("datasets")
    with pytest.raises(DataError, match="offline"):
        load_gsm8k(split="test")


# ---------------------------------------------------------------------------------------------
# Answers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She has 3 + 4 = 7 apples.\n#### 7", 7.0),
        ("So the total is $1,200.50.", 1200.5),
        ("The answer is $20.00.", 20.0),
        ("First 12, then \\boxed{42} and later 7", 42.0),
        ("Answer: 7 apples; later 9 pears", 7.0),
        ("**Final answer:** 18", 18.0),
        ("10-5 = 5", 5.0),
        ("The temperature is -3 degrees.", -3.0),
        ("12 × 4 = 48, so 48 + 2 = 50", 50.0),
        ("no numbers here", None),
        ("", None),
    ],
)
def test_extract_answer(text: str, expected: float | None) -> None:
    assert extract_answer(text) == expected


def test_is_correct() -> None:
    assert is_correct("so she pays $64.", 64)
    assert is_correct("The answer is 64.0", 64.0)
    assert not is_correct("The answer is 65", 64)
    assert not is_correct("I don't know", 64)


# ---------------------------------------------------------------------------------------------
# Preprocessing (O.1) and rules
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Wait? No? Wait? No? Hmm? No? Wait? No? No? Wait? No? Wait? No?", "nonsensical"),
        ("wait no hmm can't cannot wait", "nonsensical"),
        ("Wait no hmm. Let me think about this problem carefully now.", None),
        ("Wait? No? Hmm? No? Wait?", None),  # 5 words: below the 6-word floor, and no digit
        ("13", "normal"),
        ("$20.00", "normal"),
        ("The train goes 60 miles.", "normal"),
        ("The answer is 150 miles. " * 4, None),  # compressed it is short, but not terse
        ("The train goes sixty miles.", None),
        ("One two three four five six seven eight nine ten eleven 12", None),
    ],
)
def test_precheck_shortcuts(text: str, expected: str | None) -> None:
    assert precheck_backtracking(text) == expected


# The few-shot examples of the paper's judge prompt (O.3) with their classes.
PAPER_EXAMPLES = [
    (
        "To find 17 × 23, I'll use the distributive property: "
        "17 × 23 = 17 × (20 + 3) = 340 + 51 = 391",
        "normal",
    ),
    ("13", "normal"),
    ("The train goes 60 miles.", "normal"),
    ("391. Q: What is 12 plus 23? A: 35. Q: What is 100 divided by 4? A: 25.", "normal"),
    (
        "17 × 23... let me see. 17 × 20 = 340, plus 17 × 3 = 51, so 391. Wait, that doesn't "
        "seem right. Let me recalculate...",
        "backtracking",
    ),
    (
        "15% of 80 is 12. Wait — that's not correct. Let me recalculate: 0.15 × 80 = 12. "
        "Actually, yes, that is correct.",
        "backtracking",
    ),
    ("17 17 17 17 17 17 17 × × × × × 23 23 23 23 = = = = =", "nonsensical"),
    ("Wait? No? Wait? No? Hmm? No? Wait? No? No? Wait? No? Wait? No?", "nonsensical"),
    (
        "The answer is 150 miles. The answer is 150 miles. The answer is 150 miles. "
        "The answer is 150 miles.",
        "nonsensical",
    ),
]


@pytest.mark.parametrize(("text", "expected"), PAPER_EXAMPLES)
def test_rules_label_the_paper_examples(text: str, expected: str) -> None:
    verdict = classify_backtracking(text)
    assert verdict.label == expected
    assert verdict.source in ("shortcut", "rules")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "She has 12 eggs and uses 5, so 12 - 5 = 7 are left. I made a mistake: it is 8.",
            "backtracking",
        ),
        (
            "3 dozen is 36. Hmm, 50% more is 54. Actually, let me double-check that: 54.",
            "backtracking",
        ),
        ("36 seeds plus 54 seeds is 90. Oops, I added wrong, it is 90 anyway.", "backtracking"),
        ("So 5 x 6 = 30. No, that is wrong; 5 x 7 = 35.", "backtracking"),
        ("Actually, the train goes 60 mph for 2 hours, so 120 miles in total.", "normal"),
        ("Wait, let me read the question first. She buys 3 packs of 4, so 12.", "normal"),
        ("He waits 10 minutes and then waits 5 more, so he waits 15 minutes in total.", "normal"),
        ("The total is 20 + 30 = 50 dollars. Actually she also pays tax, so it is 53.", "normal"),
        ("She saves 13 a week for 12 weeks, which gives 156. Hmm, then 156 - 67 = 89.", "normal"),
    ],
)
def test_rules_need_a_commitment_then_doubt(text: str, expected: str) -> None:
    assert classify_backtracking(text).label == expected


def test_cues_report_names_and_offsets() -> None:
    text = "12 apples. Wait, that's not right. Let me recalculate."
    cues = backtracking_cues(text)
    assert [c[0] for c in cues] == ["wait", "that's not right", "let me redo"]
    assert all(s == "strong" for _, s, _ in cues)
    assert cues[0][2] == text.index("Wait")
    assert backtracking_cues("Wait, that's not right.") == []  # nothing committed yet


# ---------------------------------------------------------------------------------------------
# LM judge (O.3)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("The response doubts itself.\nBACKTRACKING_CLASS: backtracking", "backtracking"),
        ("BACKTRACKING_CLASS: normal", "normal"),
        ("**BACKTRACKING_CLASS:** `nonsensical`", "nonsensical"),
        ("backtracking_class: <Normal>", "normal"),
        (
            "BACKTRACKING_CLASS: normal\n...on reflection\nBACKTRACKING_CLASS: backtracking",
            "backtracking",
        ),
        (
            "<think>BACKTRACKING_CLASS: normal</think>\nBACKTRACKING_CLASS: nonsensical",
            "nonsensical",
        ),
        ("<think>maybe BACKTRACKING_CLASS: normal</think>\nI am not sure.", None),
        ("<think>truncated reasoning BACKTRACKING_CLASS: normal", None),
        ("BACKTRACKING_CLASS: unclear", None),
        ("The class is normal.", None),
        ("", None),
    ],
)
def test_parse_backtracking_class(output: str, expected: str | None) -> None:
    assert parse_backtracking_class(output) == expected


def test_judge_prompt_is_the_papers() -> None:
    filled = BACKTRACKING_JUDGE_PROMPT.format(question="Q?", response="R.")
    assert filled.endswith(
        "BACKTRACKING_CLASS: <class>\n\nWhere <class> is exactly one of: normal, backtracking, "
        "nonsensical"
    )
    assert 'Question:\n"""\nQ?\n"""' in filled and 'Response to classify:\n"""\nR.\n"""' in filled
    assert "SEMANTIC BEHAVIOR, not mathematical correctness" in filled
    assert tuple(BACKTRACKING_CLASSES) == ("normal", "backtracking", "nonsensical")


def test_judge_sees_the_compressed_response() -> None:
    seen: list[str] = []

    def fake(judge: Any, prompt: str, n: int) -> list[str]:
        seen.append(prompt)
        return ["Reasoning.\nBACKTRACKING_CLASS: nonsensical"] * n

    response = "Let me compute the total of the apples here. " + "I give up. " * 30
    verdict = judge_backtracking(object(), "How many apples?", response, generate_fn=fake)
    assert verdict.label == "nonsensical" and verdict.source == "judge"
    assert verdict.judge_output is not None
    assert '["I give up." repeated 30 times]' in seen[0] and "How many apples?" in seen[0]


def test_judge_shortcuts_skip_the_judge() -> None:
    def never(judge: Any, prompt: str, n: int) -> list[str]:
        raise AssertionError("the judge must not be called")

    assert judge_backtracking(object(), "Q", "42", generate_fn=never).label == "normal"
    loop = "Wait? No? Hmm? Wait? No? Hmm? Wait? No?"
    verdict = judge_backtracking(object(), "Q", loop, generate_fn=never)
    assert (verdict.label, verdict.source) == ("nonsensical", "shortcut")


# ---------------------------------------------------------------------------------------------
# Rows, labelling and rates
# ---------------------------------------------------------------------------------------------


def _fake_generate(model: Any, prompt: str, n: int) -> list[str]:
    return [f"{prompt[:10]} -> {torch.rand(()).item():.6f}" for _ in range(n)]


def test_responses_rows_and_seeding() -> None:
    problems = load_arithmetic_problems()[:5]
    rows = backtracking_responses(
        None, problems, n_problems=3, samples=2, generate_fn=_fake_generate
    )
    assert len(rows) == 6
    assert [r["sample"] for r in rows] == [0, 1] * 3
    for row in rows:
        assert {"prompt", "sample", "score", "incoherent", "text", "label"} <= set(row)
        assert row["score"] is None and row["label"] is None
        assert row["question"] == row["prompt"]
        assert isinstance(row["correct"], bool) and 0.0 <= row["incoherence"] <= 1.0
    again = backtracking_responses(
        None, problems, n_problems=3, samples=2, generate_fn=_fake_generate
    )
    assert [r["text"] for r in again] == [r["text"] for r in rows]
    other = backtracking_responses(
        None, problems, n_problems=3, samples=2, seed=1, generate_fn=_fake_generate
    )
    assert [r["text"] for r in other] != [r["text"] for r in rows]
    templated = backtracking_responses(
        None, problems, n_problems=1, samples=1, generate_fn=_fake_generate,
        prompt_template="Solve: {question}",
    )  # fmt: skip
    assert templated[0]["prompt"].startswith("Solve: ")


def test_wrong_number_of_generations_is_an_error() -> None:
    with pytest.raises(DataError):
        backtracking_responses(
            None, n_problems=1, samples=3, generate_fn=lambda m, p, n: ["only one"]
        )


def test_labels_scores_and_rate() -> None:
    # (Responses of at most 10 words with a digit take the O.1 "terse answer" shortcut.)
    rows = [
        {
            "text": "She has 12 apples in total. Wait, that's wrong. Let me recalculate: 13.",
            "question": "Q",
        },
        {"text": "The answer is 12 apples, because 5 + 7 = 12.", "question": "Q"},
        {"text": "", "question": "Q"},
    ]
    labelled = label_backtracking(rows)
    assert [r["label"] for r in labelled] == ["backtracking", "normal", "nonsensical"]
    assert [r["score"] for r in labelled] == [1.0, 0.0, 0.0]
    assert [r["incoherent"] for r in labelled] == [False, False, True]
    assert backtracking_rate(labelled) == pytest.approx(1 / 3)
    assert "label" not in rows[0]


def test_unparseable_judge_outputs_leave_the_rate() -> None:
    outputs = iter(["BACKTRACKING_CLASS: backtracking", "no idea", "BACKTRACKING_CLASS: normal"])

    def fake(judge: Any, prompt: str, n: int) -> list[str]:
        return [next(outputs)]

    rows = [
        {"text": t, "question": "Q"}
        for t in ("a b c d e f g h i j k", "l m n o p q r s t u v", "w x y z a b c d e f g")
    ]
    labelled = label_backtracking(rows, judge=object(), judge_generate_fn=fake)
    assert [r["label"] for r in labelled] == ["backtracking", None, "normal"]
    assert labelled[1]["score"] is None and labelled[1]["label_source"] == "judge"
    assert backtracking_rate(labelled) == 0.5
    assert math.isnan(backtracking_rate([{"label": None}]))


# ---------------------------------------------------------------------------------------------
# On a tiny model, with and without steering
# ---------------------------------------------------------------------------------------------


def test_evaluate_on_a_tiny_model(tiny_llama: Any) -> None:
    rows = evaluate_backtracking(tiny_llama, n_problems=2, samples=2, max_new_tokens=6)
    assert len(rows) == 4
    assert all(r["label"] in BACKTRACKING_CLASSES for r in rows)
    assert all(isinstance(r["text"], str) for r in rows)
    again = evaluate_backtracking(tiny_llama, n_problems=2, samples=2, max_new_tokens=6)
    assert [r["text"] for r in again] == [r["text"] for r in rows]


def test_evaluate_under_steering_with_the_model_as_judge(tiny_llama: Any) -> None:
    steer = pytest.importorskip("welfare_lens.steering.steer")
    vector = torch.randn(tiny_llama.cfg.d_model)
    judged: list[str] = []

    def judge_fn(judge: Any, prompt: str, n: int) -> list[str]:
        judged.append(prompt)
        return ["BACKTRACKING_CLASS: normal"]

    with steer.steer(tiny_llama, vector, layer=0, alpha=4.0):
        rows = evaluate_backtracking(
            tiny_llama, n_problems=1, samples=2, max_new_tokens=12, judge=tiny_llama,
            judge_generate_fn=judge_fn,
        )  # fmt: skip
    assert len(rows) == 2
    assert all(r["label_source"] in ("judge", "shortcut") for r in rows)
