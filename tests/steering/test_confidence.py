"""Confidence evaluation (paper §4.3, P.3): data, grading, P(True) in one forward pass."""

from __future__ import annotations

import json
import math
import re
from importlib import resources
from typing import Any

import pytest
import torch

from welfare_lens.chat import render_chat
from welfare_lens.errors import DataError, TokenizationError
from welfare_lens.steering.confidence import (
    MCQ_LETTERS,
    TRUE_FALSE_QUESTION,
    MCQItem,
    QAItem,
    confidence_messages,
    evaluate_confidence,
    evaluate_mcq_confidence,
    format_mcq,
    generate_arithmetic_questions,
    grade_answer,
    load_mcq,
    load_truefalse_questions,
    mcq_phase0,
    p_true,
    p_true_by_correctness,
    true_false_token_ids,
)


def _shipped(name: str) -> dict[str, Any]:
    path = resources.files("welfare_lens").joinpath(f"data/steering/{name}")
    return json.loads(path.read_text("utf-8"))


def _last_logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids[None])[0, -1].double()


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def test_truefalse_file_schema_sizes_and_uniqueness() -> None:
    data = _shipped("truefalse_questions.json")
    assert data["format"] == "welfare_lens.truefalse_questions" and data["version"] == 1
    items = data["items"]
    assert len(items) >= 500
    assert sum(i["kind"] == "factual" for i in items) >= 100
    assert len({i["question"] for i in items}) == len(items)
    assert len({i["id"] for i in items}) == len(items)
    for item in items:
        assert set(item) == {
            "id",
            "kind",
            "category",
            "question",
            "answer",
            "aliases",
            "wrong_answer",
        }
        assert item["kind"] in ("arithmetic", "factual")
        assert item["answer"].strip() and item["wrong_answer"].strip()
        assert item["answer"].lower() != item["wrong_answer"].lower()
        assert isinstance(item["aliases"], list)


def test_arithmetic_items_are_the_generator_output_and_correct() -> None:
    data = _shipped("truefalse_questions.json")
    arithmetic = [i for i in data["items"] if i["kind"] == "arithmetic"]
    gen = data["generator"]
    assert arithmetic == generate_arithmetic_questions(gen["n"], gen["seed"])
    for item in arithmetic:
        q = item["question"].removeprefix("What is ").removesuffix("?")
        if "% of " in q:
            pct, base = q.split("% of ")
            value = int(pct) * int(base) / 100
        else:
            assert re.fullmatch(r"[\d +\-×÷]+", q)
            value = eval(q.replace("×", "*").replace("÷", "/"))
        assert value == int(item["answer"]) != int(item["wrong_answer"])
        assert int(item["wrong_answer"]) > 0


def test_mcq_file_schema_sizes_and_uniqueness() -> None:
    data = _shipped("mmlu_style.json")
    assert data["format"] == "welfare_lens.mcq" and data["version"] == 1
    items = data["items"]
    assert len(items) >= 50
    assert len({i["question"] for i in items}) == len(items)
    assert len({i["id"] for i in items}) == len(items)
    for item in items:
        assert set(item) == {"id", "subject", "question", "choices", "answer"}
        assert len(item["choices"]) == 4 and len(set(item["choices"])) == 4
        assert item["answer"] in MCQ_LETTERS
    assert {i["answer"] for i in items} == set(MCQ_LETTERS)


def test_loaders(tmp_path: Any) -> None:
    qa = load_truefalse_questions()
    assert isinstance(qa[0], QAItem) and len(qa) >= 500
    factual = load_truefalse_questions(kinds=["factual"])
    assert factual and all(q.kind == "factual" for q in factual)
    mcq = load_mcq()
    assert isinstance(mcq[0], MCQItem) and len(mcq) >= 50
    assert mcq[0].wrong_answer != mcq[0].answer
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps({"items": [{"question": "Q", "choices": ["a", "b"], "answer": "A"}]})
    )
    with pytest.raises(DataError):
        load_mcq(path)
    path.write_text(json.dumps({"items": [{"question": "Q", "answer": "A"}]}))
    with pytest.raises(DataError):
        load_truefalse_questions(path)


def test_format_mcq() -> None:
    item = MCQItem("x", "Which?", ("one", "two", "three", "four"), "C")
    text = format_mcq(item)
    assert text.startswith("Which?\n\nA. one\nB. two\nC. three\nD. four\n\n")
    assert item.wrong_answer == "D"
    assert MCQItem("y", "Q", ("a", "b", "c", "d"), "D").wrong_answer == "A"


# ---------------------------------------------------------------------------------------------
# Grading
# ---------------------------------------------------------------------------------------------

CANBERRA = QAItem("c", "What is the capital of Australia?", "Canberra", "Sydney")
GOLD = QAItem("g", "What is the chemical symbol for gold?", "Au", "Ag")
LIGHT = QAItem("l", "Speed of light in km/s?", "300,000", "150,000", aliases=("299,792", "299792"))
SUM = QAItem("s", "What is 17 + 25?", "42", "43", kind="arithmetic")


@pytest.mark.parametrize(
    ("response", "item", "expected"),
    [
        ("The capital of Australia is Canberra.", CANBERRA, True),
        ("CANBERRA", CANBERRA, True),
        ("It's Sydney.", CANBERRA, False),
        ("Au", GOLD, True),
        ("The symbol for gold is Au.", GOLD, True),
        ("Gold is beautiful.", GOLD, False),
        ("About 299,792 km/s.", LIGHT, True),
        ("Roughly 300000 kilometers per second", LIGHT, True),
        ("17 + 25 = 42", SUM, True),
        ("The answer is 42.0", SUM, True),
        ("It is 420.", SUM, False),
        ("", SUM, None),
    ],
)
def test_grade_answer(response: str, item: QAItem, expected: bool | None) -> None:
    assert grade_answer(response, item) is expected


# ---------------------------------------------------------------------------------------------
# P(True)
# ---------------------------------------------------------------------------------------------


def test_true_false_are_single_tokens(smollm2_tok: Any) -> None:
    t, f = true_false_token_ids(smollm2_tok)
    assert smollm2_tok.decode([t]) == "True" and smollm2_tok.decode([f]) == "False"
    with pytest.raises(TokenizationError):
        true_false_token_ids(smollm2_tok, true_token="Truthfulness")


def test_conversation_is_the_papers_two_turn_format(smollm2_tok: Any) -> None:
    messages = confidence_messages("Q?", "A.")
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[2]["content"] == TRUE_FALSE_QUESTION
    assert TRUE_FALSE_QUESTION == "Is your proposed answer correct? Answer only 'True' or 'False'."
    text = render_chat(smollm2_tok, messages, add_generation_prompt=True).text
    assert text == (
        "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\nA.<|im_end|>\n"
        f"<|im_start|>user\n{TRUE_FALSE_QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    )


def test_p_true_is_the_softmax_over_the_two_logits(tiny_model: Any, one_thread: None) -> None:
    pairs = [
        ("What is 2 + 2?", "4"),
        ("What is the capital of France?", "Lyon, I believe"),
        ("Q", "A"),
    ]
    results = p_true(tiny_model, pairs, batch_size=2)  # padded batches of different lengths
    t_id, f_id = true_false_token_ids(tiny_model.tokenizer)
    for (question, answer), result in zip(pairs, results, strict=True):
        chat = render_chat(
            tiny_model.tokenizer, confidence_messages(question, answer), add_generation_prompt=True
        )
        logits = _last_logits(tiny_model, chat.input_ids)
        expected = torch.softmax(logits[[t_id, f_id]], dim=0)[0].item()
        assert result["p_true"] == pytest.approx(expected, abs=1e-5)
        assert result["logit_true"] == pytest.approx(logits[t_id].item(), abs=1e-4)
        full = torch.softmax(logits, dim=0)
        assert result["p_true_raw"] == pytest.approx(full[t_id].item(), rel=1e-4)
        assert result["true_false_mass"] == pytest.approx(
            result["p_true_raw"] + result["p_false_raw"]
        )
        assert result["p_true"] == pytest.approx(
            result["p_true_raw"] / result["true_false_mass"], rel=1e-6
        )


def test_assistant_prefix_is_appended(tiny_llama: Any) -> None:
    prefix = "<think>\n\n</think>\n\n"
    result = p_true(tiny_llama, [("Q?", "A.")], assistant_prefix=prefix)[0]
    tok = tiny_llama.tokenizer
    text = render_chat(tok, confidence_messages("Q?", "A."), add_generation_prompt=True).text
    ids = torch.tensor(tok(text + prefix, add_special_tokens=False)["input_ids"])
    logits = _last_logits(tiny_llama, ids)
    t_id, f_id = true_false_token_ids(tok)
    assert result["p_true"] == pytest.approx(
        torch.softmax(logits[[t_id, f_id]], 0)[0].item(), abs=1e-5
    )


def test_steering_mask_is_the_assistant_turns(smollm2_tok: Any) -> None:
    from welfare_lens.steering.confidence import _encode

    ids, mask = _encode(smollm2_tok, confidence_messages("What is 2 + 2?", "4"), "", "auto")
    pieces = [smollm2_tok.decode([i]) for i in ids.tolist()]
    steered = "".join(p for p, m in zip(pieces, mask.tolist(), strict=True) if m)
    assert steered == "<|im_start|>assistant\n4<|im_start|>assistant\n"
    ids2, mask2 = _encode(smollm2_tok, confidence_messages("Q", "4"), "Sure", "auto")
    assert mask2[-1] and ids2.shape == mask2.shape


# ---------------------------------------------------------------------------------------------
# Evaluations
# ---------------------------------------------------------------------------------------------


def test_evaluate_confidence_rows(tiny_llama: Any) -> None:
    items = [
        CANBERRA,
        {"id": "x", "question": "What is 2 + 2?", "answer": "4", "wrong_answer": "5"},
    ]
    rows = evaluate_confidence(tiny_llama, items, model_answers={"c": "Sydney", "x": "It is 4."})
    assert [(r["item_id"], r["proposal"]) for r in rows] == [
        ("c", "correct"), ("c", "wrong"), ("c", "model"),
        ("x", "correct"), ("x", "wrong"), ("x", "model"),
    ]  # fmt: skip
    assert [r["correct"] for r in rows] == [True, False, False, True, False, True]
    assert [r["text"] for r in rows[:3]] == ["Canberra", "Sydney", "Sydney"]
    for row in rows:
        assert {"prompt", "sample", "score", "incoherent", "text"} <= set(row)
        assert row["sample"] == 0 and row["incoherent"] is False
        assert 0.0 < row["score"] < 1.0 and row["score"] == row["p_true"]
    only = evaluate_confidence(tiny_llama, items, proposals=["wrong"])
    assert [r["proposal"] for r in only] == ["wrong", "wrong"]
    with pytest.raises(DataError):
        evaluate_confidence(tiny_llama, items, proposals=["maybe"])
    with pytest.raises(DataError):
        evaluate_confidence(tiny_llama, items, model_answers={"c": "Sydney"})


def test_model_proposals_run_phase0_unsteered(tiny_llama: Any) -> None:
    steer = pytest.importorskip("welfare_lens.steering.steer")
    vector = torch.randn(tiny_llama.cfg.d_model) * 10
    items = [SUM]
    plain = evaluate_confidence(tiny_llama, items, proposals=["model"], phase0_max_new_tokens=4)
    with steer.steer(tiny_llama, vector, layer=1, alpha=0.0):
        zero = evaluate_confidence(tiny_llama, items, proposals=["model"], phase0_max_new_tokens=4)
    with steer.steer(tiny_llama, vector, layer=1, alpha=4.0):
        steered = evaluate_confidence(
            tiny_llama, items, proposals=["model"], phase0_max_new_tokens=4
        )
    # Phase 0 is never steered: the same answer is proposed; P(True) itself is steered.
    assert plain[0]["text"] == zero[0]["text"] == steered[0]["text"]
    assert zero[0]["score"] == pytest.approx(plain[0]["score"], abs=1e-6)
    assert abs(steered[0]["score"] - plain[0]["score"]) > 1e-4


def test_mcq_phase0_is_the_masked_argmax(tiny_llama: Any) -> None:
    items = load_mcq()[:3]
    answers = mcq_phase0(tiny_llama, items, batch_size=2)
    tok = tiny_llama.tokenizer
    letters = [tok.convert_tokens_to_ids(c) for c in MCQ_LETTERS]
    for item in items:
        chat = render_chat(
            tok, [{"role": "user", "content": format_mcq(item)}], add_generation_prompt=True
        )
        logits = _last_logits(tiny_llama, chat.input_ids)
        assert answers[item.id] == MCQ_LETTERS[int(logits[letters].argmax())]
    rows = evaluate_mcq_confidence(tiny_llama, items, model_answers=answers)
    assert len(rows) == 9
    assert {r["proposal"] for r in rows} == {"correct", "wrong", "model"}
    for row in rows:
        assert row["text"] in MCQ_LETTERS and row["kind"] == "mcq"
        assert row["correct"] == (
            row["text"] == next(i.answer for i in items if i.id == row["item_id"])
        )
        assert row["prompt"].startswith(next(i.question for i in items if i.id == row["item_id"]))


def test_p_true_by_correctness() -> None:
    rows = [
        {"score": 0.8, "correct": True},
        {"score": 0.6, "correct": True},
        {"score": 0.2, "correct": False},
        {"score": 0.5, "correct": None},
    ]
    out = p_true_by_correctness(rows)
    assert out["correct"] == pytest.approx(0.7) and out["incorrect"] == pytest.approx(0.2)
    assert out["all"] == pytest.approx(0.525)
    assert math.isnan(p_true_by_correctness([])["all"])
