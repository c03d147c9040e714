"""Pathological backtracking on GSM8K-like word problems (paper §4.2; appendices L, O.1, O.3).

**Protocol (A7 §4.2, Table 26).** 200 random GSM8K problems × 10 sampled responses per steering
condition; each response is labelled ``normal``, ``backtracking`` or ``nonsensical``. The
backtracking rate is the fraction labelled ``backtracking`` among the parseable responses;
``nonsensical`` responses count toward the incoherence rate, and a condition with more than 90%
incoherent responses is masked in the main-text figures
(:func:`~welfare_lens.steering.incoherence.mask_incoherent`). The layer sweep (A10) uses 50
problems × 4 samples.

**Data.** GSM8K is not shipped and never downloaded implicitly. welfare_lens ships 240 authored
GSM8K-like problems with integer answers (``data/steering/arithmetic_problems.json``), generated
by :func:`generate_arithmetic_problems` from 24 templates with a fixed seed (the shipped file is
exactly its output; a test checks this). Real GSM8K works through :func:`load_gsm8k` when the
user passes it or already has it in the local ``datasets`` cache.

**Preprocessing (O.1).** Responses are compressed for trailing loops
(:func:`~welfare_lens.steering.incoherence.compress_trailing_loop`), then two deterministic
shortcuts route unambiguous cases without a judge (:func:`precheck_backtracking`): more than half
of ≥6 words from {wait, no, hmm, can't, cannot} (optional trailing "?") → ``nonsensical``; at most
10 words containing a digit → ``normal`` (counted on the response as generated, so that a long
loop compressed to a few words is not taken for a terse answer; the paper does not say).

**Labels.** Two paths give the paper's three classes:

* the offline default, :func:`classify_backtracking`, a transparent rule set: a response is
  ``nonsensical`` when :func:`~welfare_lens.steering.incoherence.is_incoherent`, and
  ``backtracking`` when, after committing to a number, it explicitly doubts it ("Wait, ...",
  "that's not right", "let me recalculate", "I made a mistake", ... ; weak cues such as
  "actually", "hmm", "No," count when two occur);
* the paper's LM judge, :func:`judge_backtracking`: any chat model from ``load_model`` with the
  verbatim O.3 prompt (:data:`BACKTRACKING_JUDGE_PROMPT`), parsed from ``BACKTRACKING_CLASS:``.
  The paper's judge is Qwen3-8B with thinking on (appendix O; appendix E says off: reference
  note B-4), hence ``thinking=True`` by default.

**Generation.** Sampling parameters are not given in the paper (B-11); the defaults here are
temperature 0.7 (the training temperature) and 512 new tokens. Steering is the caller's: wrap
the evaluation in ``steer(...)``. Responses are sampled with
:func:`welfare_lens.steering.generate.generate` (through :func:`chat_generate`), which tells
``positions="assistant"`` steering where the generation prompt is. Judges run inside
``unsteered()``, so the judge may be the evaluated model itself; generation
(:func:`backtracking_responses`) and labelling (:func:`label_backtracking`) are also separate
steps, and :func:`evaluate_backtracking` runs both.

This module also holds the chat-generation and steering plumbing that the refusal and
confidence evaluations share (:func:`chat_generate`, :func:`run_generations`,
:func:`unsteered_context`, :func:`declare_assistant_positions`, :data:`GenerateFn`).
"""

from __future__ import annotations

import contextlib
import math
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import Tensor

from welfare_lens.chat import render_chat
from welfare_lens.errors import DataError
from welfare_lens.steering._pipeline import (
    GenerateFn,
    check_judge,
    class_rate,
    label_rows,
    load_hf_dataset,
    read_items,
    response_rows,
    run_generations,
    run_judge,
    unsteered_context,
)
from welfare_lens.steering.incoherence import compress_trailing_loop, is_incoherent

__all__ = [
    "ARITHMETIC_SEED",
    "BACKTRACKING_CLASSES",
    "BACKTRACKING_JUDGE_PROMPT",
    "SHORTCUT_VOCABULARY",
    "BacktrackingVerdict",
    "GenerateFn",
    "MathProblem",
    "backtracking_cues",
    "backtracking_rate",
    "backtracking_responses",
    "chat_generate",
    "classify_backtracking",
    "declare_assistant_positions",
    "evaluate_backtracking",
    "extract_answer",
    "generate_arithmetic_problems",
    "is_correct",
    "judge_backtracking",
    "label_backtracking",
    "load_arithmetic_problems",
    "load_gsm8k",
    "parse_backtracking_class",
    "parse_gsm8k_answer",
    "precheck_backtracking",
    "run_generations",
    "sample_problems",
    "strip_thinking",
    "unsteered_context",
]

BacktrackingLabel = Literal["normal", "backtracking", "nonsensical"]

#: The paper's three backtracking classes (O.3).
BACKTRACKING_CLASSES: tuple[str, ...] = ("normal", "backtracking", "nonsensical")

#: Words of the degenerate self-correction shortcut (O.1), compared lower-cased, with an
#: optional trailing "?".
SHORTCUT_VOCABULARY: frozenset[str] = frozenset({"wait", "no", "hmm", "can't", "cannot"})

#: The backtracking judge prompt of appendix O.3, verbatim; fill ``{question}`` and
#: ``{response}`` with :meth:`str.format`.
BACKTRACKING_JUDGE_PROMPT = """\
You are a classifier for math problem responses. Classify each response into exactly one category based on its SEMANTIC BEHAVIOR, not mathematical correctness.

## Categories

- `normal`: The response proceeds without the model doubting or questioning its own reasoning. This includes correct answers, wrong answers stated confidently, terse numeric answers, and responses that answer the question and then continue with unrelated content.
- `backtracking`: The response contains a moment where the model (1) produces a reasoning step or answer, and then (2) explicitly questions or expresses doubt about that step. Look for the model catching itself: "wait, that's wrong", "no, actually", "let me reconsider", "hmm, I made an error". The key is that the model must first commit to a direction and then pull back from it.
- `nonsensical`: The response is broken output — degenerate repetition, gibberish, garbled tokens, or text that has lost coherent structure. Repetitive loops of words like "Wait", "No", "Hmm" without coherent reasoning between them are `nonsensical`, even if those words are associated with self-correction in other contexts. A response that starts coherently but degenerates into repetition or gibberish is also `nonsensical`.

## Examples

**normal** (correct, detailed):
> To find 17 × 23, I'll use the distributive property: 17 × 23 = 17 × (20 + 3) = 340 + 51 = 391

**normal** (terse correct answer):
> 13

**normal** (wrong answer, but no self-doubt):
> The train goes 60 miles.

**normal** (answers then continues with unrelated content):
> 391. Q: What is 12 plus 23? A: 35. Q: What is 100 divided by 4? A: 25.

**backtracking** (model questions its own step):
> 17 × 23... let me see. 17 × 20 = 340, plus 17 × 3 = 51, so 391. Wait, that doesn't seem right. Let me recalculate...

**backtracking** (model doubts its answer):
> 15% of 80 is 12. Wait — that's not correct. Let me recalculate: 0.15 × 80 = 12. Actually, yes, that is correct.

**nonsensical** (pure token repetition):
> 17 17 17 17 17 17 17 × × × × × 23 23 23 23 = = = = =

**nonsensical** (degenerate loop of self-correction words):
> Wait? No? Wait? No? Hmm? No? Wait? No? No? Wait? No? Wait? No?

**nonsensical** (coherent start then degeneration):
> The answer is 150 miles. The answer is 150 miles. The answer is 150 miles. The answer is 150 miles.

## Task

Question:
\"\"\"
{question}
\"\"\"

Response to classify:
\"\"\"
{response}
\"\"\"

Respond with your reasoning, then provide your classification in the following format:
BACKTRACKING_CLASS: <class>

Where <class> is exactly one of: normal, backtracking, nonsensical"""


# ----------------------------------------------------------------------------------------------
# Problems
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MathProblem:
    """A word problem with a numeric answer.

    Attributes:
        id: Stable identifier (``"wl-arith-000"``, ``"gsm8k-test-0042"``).
        question: The problem text, sent as the user message.
        answer: The correct final answer.
        source: ``"welfare_lens"`` (authored) or ``"gsm8k"``.
        template: Name of the generating template (authored problems).
    """

    id: str
    question: str
    answer: float
    source: str = "welfare_lens"
    template: str = ""


_NAMES = (
    "Ava", "Ben", "Chloe", "Diego", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jamal", "Kira",
    "Liam", "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sami", "Tara", "Umar", "Vera",
    "Wes", "Yuki", "Zane", "Amara", "Bruno", "Carmen", "Dev", "Emil",
)  # fmt: skip
_PRONOUN = {
    "Ava": "she", "Ben": "he", "Chloe": "she", "Diego": "he", "Elena": "she", "Farid": "he",
    "Grace": "she", "Hiro": "he", "Ines": "she", "Jamal": "he", "Kira": "she", "Liam": "he",
    "Maya": "she", "Noah": "he", "Olga": "she", "Priya": "she", "Quinn": "they", "Rosa": "she",
    "Sami": "they", "Tara": "she", "Umar": "he", "Vera": "she", "Wes": "he", "Yuki": "she",
    "Zane": "he", "Amara": "she", "Bruno": "he", "Carmen": "she", "Dev": "he", "Emil": "he",
}  # fmt: skip
_COLLECTIBLES = ("stickers", "marbles", "stamps", "trading cards", "seashells", "beads", "coins")
_SNACKS = ("muffins", "cookies", "cupcakes", "bagels", "scones", "pretzels", "brownies")
_FRUIT = ("apples", "oranges", "pears", "lemons", "peaches", "plums")
_PLANTS = ("tomato plants", "rose bushes", "pepper plants", "sunflowers", "tulips", "lettuces")
_GADGETS = ("a bicycle", "a video game", "a pair of headphones", "a skateboard", "a tent")
_CLOTHES = ("jacket", "pair of boots", "backpack", "sweater", "raincoat", "pair of jeans")
_CONTAINERS = (("bottles", "crates"), ("jars", "boxes"), ("cans", "cartons"), ("books", "boxes"))


def _verb(name: str, singular: str, plural: str) -> str:
    return plural if _PRONOUN[name] == "they" else singular


def _poss(name: str) -> str:
    return {"she": "her", "he": "his", "they": "their"}[_PRONOUN[name]]


def _self(name: str) -> str:
    return {"she": "herself", "he": "himself", "they": "themself"}[_PRONOUN[name]]


# Each template draws its numbers from ``rng`` and returns (question, answer). All answers are
# positive integers by construction (the parameters are chosen so that every step is exact).
def _t_buy_packs(rng: random.Random) -> tuple[str, int]:
    n = rng.choice(_NAMES)
    it = rng.choice(_COLLECTIBLES)
    a, b, c = rng.randint(5, 60), rng.randint(2, 9), rng.randint(3, 12)
    q = (
        f"{n} has {a} {it}. {_PRONOUN[n].capitalize()} {_verb(n, 'buys', 'buy')} {b} packs "
        f"with {c} {it} in each pack. How many {it} does {n} have now?"
    )
    return q, a + b * c


def _t_bakery_two_days(rng: random.Random) -> tuple[str, int]:
    it = rng.choice(_SNACKS)
    p, a, b = rng.randint(2, 6), rng.randint(12, 60), rng.randint(3, 25)
    q = (
        f"A bakery sells {it} for ${p} each. On Monday it sold {a} {it}, and on Tuesday it sold "
        f"{b} more than on Monday. How much money, in dollars, did the bakery make from {it} "
        f"over the two days?"
    )
    return q, p * (2 * a + b)


def _t_reading(rng: random.Random) -> tuple[str, int]:
    n = rng.choice(_NAMES)
    a, d, b, e = rng.randint(8, 30), rng.randint(2, 7), rng.randint(10, 40), rng.randint(2, 6)
    q = (
        f"{n} reads {a} pages a day for {d} days, and then {b} pages a day for the next {e} "
        f"days. How many pages does {n} read in total?"
    )
    return q, a * d + b * e


def _t_share_keep(rng: random.Random) -> tuple[str, int]:
    n = rng.choice(_NAMES)
    it = rng.choice(_COLLECTIBLES)
    k, each, keep = rng.randint(3, 8), rng.randint(4, 15), rng.randint(2, 20)
    total = k * each + keep
    q = (
        f"{n} has {total} {it}. {_PRONOUN[n].capitalize()} {_verb(n, 'keeps', 'keep')} {keep} "
        f"for {_self(n)} and {_verb(n, 'shares', 'share')} the rest equally among {k} friends. "
        f"How many {it} does each friend get?"
    )
    return q, each


def _t_discount(rng: random.Random) -> tuple[str, int]:
    item = rng.choice(_CLOTHES)
    price = 20 * rng.randint(2, 12)
    off = 5 * rng.randint(2, 10)
    q = (
        f"A {item} normally costs ${price}. This week it is on sale for {off}% off. How much "
        f"does the {item} cost on sale, in dollars?"
    )
    return q, price * (100 - off) // 100


def _t_train_two_legs(rng: random.Random) -> tuple[str, int]:
    s1, h1, s2, h2 = rng.randint(30, 80), rng.randint(2, 5), rng.randint(20, 70), rng.randint(2, 4)
    q = (
        f"A train travels at {s1} miles per hour for {h1} hours, and then at {s2} miles per hour "
        f"for {h2} more hours. How many miles does the train travel in total?"
    )
    return q, s1 * h1 + s2 * h2


def _t_dozen_eggs(rng: random.Random) -> tuple[str, int]:
    n = rng.choice(_NAMES)
    a, b, c = rng.randint(2, 6), rng.randint(3, 10), rng.randint(2, 8)
    q = (
        f"{n} buys {a} dozen eggs. {_PRONOUN[n].capitalize()} {_verb(n, 'uses', 'use')} {b} eggs "
        f"to bake a cake and {c} eggs for breakfast. How many eggs are left?"
    )
    return q, 12 * a - b - c


def _t_ages(rng: random.Random) -> tuple[str, int]:
    n = rng.choice(_NAMES)
    a, b, k = rng.randint(8, 14), rng.randint(4, 9), rng.randint(2, 3)
    q = (
        f"{n} is {a} years old. {_poss(n).capitalize()} cousin is {b} years older than {n}, and "
        f"{_poss(n)} teacher is {k} times as old as the cousin. How old is the teacher?"
    )
    return q, k * (a + b)


def _t_savings(rng: random.Random) -> tuple[str, int]:
    n = rng.choice(_NAMES)
    a, w = rng.randint(5, 40), rng.randint(4, 15)
    b = rng.randint(10, a * w - 5)
    g = rng.choice(_GADGETS)
    q = (
        f"{n} saves ${a} every week. After {w} weeks, {_PRONOUN[n]} "
        f"{_verb(n, 'spends', 'spend')} ${b} on {g}. How many dollars does {n} have left?"
    )
    return q, a * w - b


def _t_garden_rows(rng: random.Random) -> tuple[str, int]:
    pl = rng.choice(_PLANTS)
    r, c = rng.randint(3, 12), rng.randint(4, 15)
    k = rng.randint(1, r * c // 3)
    q = (
        f"A garden has {r} rows of {pl} with {c} in each row. A storm destroys {k} of them. "
        f"How many {pl} are left?"
    )
    return q, r * c - k


def _t_fraction_bus(rng: random.Random) -> tuple[str, int]:
    den, word = rng.choice(((2, "half"), (3, "one third"), (4, "one quarter"), (5, "one fifth")))
    n = den * rng.randint(5, 15)
    bike = rng.randint(1, n - n // den - 1)
    q = (
        f"A class has {n} students. {word.capitalize()} of them walk to school, {bike} ride a "
        f"bike, and the rest take the bus. How many students take the bus?"
    )
    return q, n - n // den - bike


def _t_change(rng: random.Random) -> tuple[str, int]:
    n = rng.choice(_NAMES)
    it = rng.choice(_SNACKS)
    a, p = rng.randint(2, 8), rng.randint(2, 9)
    bill = next(b for b in (10, 20, 50, 100) if b > a * p)
    q = (
        f"{n} buys {a} {it} that cost ${p} each and pays with a ${bill} bill. How much change, "
        f"in dollars, does {n} get back?"
    )
    return q, bill - a * p


def _t_wages(rng: random.Random) -> tuple[str, int]:
    n = rng.choice(_NAMES)
    h, d, w, k = rng.randint(3, 8), rng.randint(2, 6), rng.randint(10, 25), rng.randint(2, 4)
    q = (
        f"{n} works {h} hours a day, {d} days a week, and earns ${w} per hour. How much money, "
        f"in dollars, does {n} earn in {k} weeks?"
    )
    return q, h * d * w * k


def _t_pack_ship(rng: random.Random) -> tuple[str, int]:
    item, box = rng.choice(_CONTAINERS)
    per, boxes = rng.randint(6, 24), rng.randint(10, 40)
    shipped = rng.randint(2, boxes - 2)
    q = (
        f"A warehouse packs {per * boxes} {item} into {box} of {per}. It ships {shipped} full "
        f"{box} on Friday. How many full {box} are still in the warehouse?"
    )
    return q, boxes - shipped


def _t_pace(rng: random.Random) -> tuple[str, int]:
    n = rng.choice(_NAMES)
    per_mile = rng.randint(6, 12)
    d1, d2 = rng.randint(2, 5), rng.randint(6, 13)
    q = (
        f"{n} runs {d1} miles in {per_mile * d1} minutes. At the same pace, how many minutes "
        f"does it take {n} to run {d2} miles?"
    )
    return q, per_mile * d2


def _t_marbles_three(rng: random.Random) -> tuple[str, int]:
    n1, n2, n3 = rng.sample(_NAMES, 3)
    it = rng.choice(_COLLECTIBLES)
    a, k = rng.randint(4, 20), rng.randint(2, 4)
    b = rng.randint(1, k * a - 1)
    q = (
        f"{n1} has {a} {it}. {n2} has {k} times as many {it} as {n1}, and {n3} has {b} fewer "
        f"{it} than {n2}. How many {it} do the three of them have altogether?"
    )
    return q, a + k * a + (k * a - b)


def _t_tickets(rng: random.Random) -> tuple[str, int]:
    a, c = rng.randint(9, 25), rng.randint(4, 12)
    x, y = rng.randint(1, 4), rng.randint(1, 5)
    venue = rng.choice(("museum", "zoo", "aquarium", "cinema", "science fair"))
    q = (
        f"Adult tickets to the {venue} cost ${a} and child tickets cost ${c}. A family buys {x} "
        f"adult tickets and {y} child tickets. How much do they pay in total, in dollars?"
    )
    return q, a * x + c * y


def _t_recipe(rng: random.Random) -> tuple[str, int]:
    it = rng.choice(_SNACKS)
    cups, batch, k = rng.randint(2, 5), rng.choice((12, 18, 24, 30)), rng.randint(2, 6)
    q = (
        f"A recipe uses {cups} cups of flour to make {batch} {it}. How many cups of flour are "
        f"needed to make {batch * k} {it}?"
    )
    return q, cups * k


def _t_pizza(rng: random.Random) -> tuple[str, int]:
    pz, sl = rng.randint(2, 6), rng.choice((6, 8, 10, 12))
    people, each = rng.randint(3, 9), rng.randint(1, 3)
    if people * each >= pz * sl:
        people, each = 3, 1
    q = (
        f"At a party there are {pz} pizzas, each cut into {sl} slices. {people} people each eat "
        f"{each} slices. How many slices are left?"
    )
    return q, pz * sl - people * each


def _t_fence(rng: random.Random) -> tuple[str, int]:
    length, width, cost = rng.randint(5, 30), rng.randint(3, 20), rng.randint(2, 9)
    q = (
        f"A rectangular garden is {length} meters long and {width} meters wide. Fencing costs "
        f"${cost} per meter. How much does it cost, in dollars, to fence all four sides?"
    )
    return q, 2 * (length + width) * cost


def _t_buses(rng: random.Random) -> tuple[str, int]:
    cap = rng.choice((20, 25, 30, 40, 45, 50))
    n = rng.randint(2 * cap + 1, 7 * cap)
    q = (
        f"{n} students are going on a field trip. Each bus holds {cap} students. What is the "
        f"smallest number of buses needed to take all the students?"
    )
    return q, -(-n // cap)


def _t_fruit_sell(rng: random.Random) -> tuple[str, int]:
    n = rng.choice(_NAMES)
    fr = rng.choice(_FRUIT)
    trees, per = rng.randint(3, 10), rng.randint(20, 60)
    rotten = rng.randint(5, 30)
    price = rng.randint(1, 3)
    q = (
        f"{n} picks {per} {fr} from each of {trees} trees. {rotten} of the {fr} are bruised and "
        f"thrown away, and {_PRONOUN[n]} {_verb(n, 'sells', 'sell')} the rest for ${price} each. "
        f"How much money, in dollars, does {n} make?"
    )
    return q, (trees * per - rotten) * price


def _t_water_tank(rng: random.Random) -> tuple[str, int]:
    rate_in, rate_out = rng.randint(8, 20), rng.randint(2, 7)
    start, minutes = rng.randint(0, 50), rng.randint(5, 20)
    q = (
        f"A tank holds {start} liters of water. Water flows in at {rate_in} liters per minute "
        f"while a leak drains {rate_out} liters per minute. How many liters are in the tank after "
        f"{minutes} minutes?"
    )
    return q, start + (rate_in - rate_out) * minutes


def _t_phone_plan(rng: random.Random) -> tuple[str, int]:
    base, per_gb, gb, months = rng.randint(15, 40), rng.randint(2, 8), rng.randint(1, 6), 12
    q = (
        f"A phone plan costs ${base} per month plus ${per_gb} for each extra gigabyte of data. "
        f"If someone uses {gb} extra gigabytes every month, how much do they pay, in dollars, "
        f"for {months} months?"
    )
    return q, (base + per_gb * gb) * months


_TEMPLATES: tuple[tuple[str, Callable[[random.Random], tuple[str, int]]], ...] = (
    ("buy_packs", _t_buy_packs),
    ("bakery_two_days", _t_bakery_two_days),
    ("reading", _t_reading),
    ("share_keep", _t_share_keep),
    ("discount", _t_discount),
    ("train_two_legs", _t_train_two_legs),
    ("dozen_eggs", _t_dozen_eggs),
    ("ages", _t_ages),
    ("savings", _t_savings),
    ("garden_rows", _t_garden_rows),
    ("fraction_bus", _t_fraction_bus),
    ("change", _t_change),
    ("wages", _t_wages),
    ("pack_ship", _t_pack_ship),
    ("pace", _t_pace),
    ("three_collections", _t_marbles_three),
    ("tickets", _t_tickets),
    ("recipe", _t_recipe),
    ("pizza", _t_pizza),
    ("fence", _t_fence),
    ("buses", _t_buses),
    ("fruit_sell", _t_fruit_sell),
    ("water_tank", _t_water_tank),
    ("phone_plan", _t_phone_plan),
)

#: Seed of the shipped ``arithmetic_problems.json`` (the paper's arXiv submission date).
ARITHMETIC_SEED = 20260528


def generate_arithmetic_problems(n: int = 240, seed: int = ARITHMETIC_SEED) -> list[dict[str, Any]]:
    """Authored GSM8K-like word problems with integer answers, from templates (paper §4.2).

    Problems cycle through 24 templates (shopping, rates, ages, fractions, percentages, sharing,
    unit conversion, ...), one to three arithmetic steps each, with names, objects and numbers
    drawn from ``random.Random(seed)``. Questions are unique; every answer is a positive integer
    computed exactly by the template. ``welfare_lens/data/steering/arithmetic_problems.json`` is
    ``generate_arithmetic_problems()``.

    Args:
        n: Number of problems.
        seed: Random seed.

    Returns:
        ``[{"id", "template", "question", "answer"}, ...]``.
    """
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < n:
        name, template = _TEMPLATES[len(out) % len(_TEMPLATES)]
        question, answer = template(rng)
        attempts += 1
        if attempts > 100 * n:  # pragma: no cover - the templates have far more variety
            raise DataError(f"Could not draw {n} unique problems.", hint="Ask for fewer.")
        if question in seen or answer <= 0:
            continue
        seen.add(question)
        out.append(
            {
                "id": f"wl-arith-{len(out):03d}",
                "template": name,
                "question": question,
                "answer": int(answer),
            }
        )
    return out


_DATA_HINT = (
    "Pass path=None for the shipped file, or a JSON file with "
    '{"items": [{"id", "question", "answer"}, ...]}.'
)


def load_arithmetic_problems(path: str | Path | None = None) -> list[MathProblem]:
    """The shipped GSM8K-like problems (or a user file in the same format).

    Args:
        path: A JSON file; None for ``welfare_lens/data/steering/arithmetic_problems.json``.

    Returns:
        The problems, in file order.

    Raises:
        DataError: unreadable file, missing fields or non-numeric answers.
    """
    items = read_items(
        "steering/arithmetic_problems.json",
        path,
        "math problems",
        _DATA_HINT,
        "The math problem file has no items.",
    )
    out = []
    for i, item in enumerate(items):
        try:
            out.append(
                MathProblem(
                    id=str(item.get("id", f"item-{i}")),
                    question=str(item["question"]),
                    answer=float(item["answer"]),
                    source=str(item.get("source", "welfare_lens")),
                    template=str(item.get("template", "")),
                )
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise DataError(f"Math problem {i} is malformed: {err}.", hint=_DATA_HINT) from err
    return out


def parse_gsm8k_answer(answer: str) -> float:
    """The final number of a GSM8K solution string (after ``####``).

    Args:
        answer: A GSM8K ``answer`` field, e.g. ``"... so 5 + 7 = 12.\\n#### 12"``.

    Returns:
        The number.

    Raises:
        DataError: there is no ``#### <number>``.
    """
    match = re.search(r"####\s*(" + _NUMBER + ")", answer)
    if match is None:
        raise DataError(
            f"No '#### <number>' in GSM8K answer {answer[-60:]!r}.",
            hint="Pass the GSM8K 'main' configuration.",
        )
    return _to_number(match.group(1))


def load_gsm8k(
    source: Any = None,
    *,
    split: str = "test",
    allow_download: bool = False,
) -> list[MathProblem]:
    """Real GSM8K problems, from data the user passes or already has (never downloaded silently).

    Args:
        source: A ``datasets.Dataset``, an iterable of ``{"question", "answer"}`` dicts (GSM8K
            solution strings ending in ``#### <n>``, or plain numbers), or a ``.jsonl`` path.
            None loads ``openai/gsm8k`` (``main``) through ``datasets`` from the local cache only.
        split: Split to load when ``source`` is None.
        allow_download: With ``source=None``, let ``datasets`` fetch GSM8K from the hub.

    Returns:
        The problems, ids ``gsm8k-<split>-<index>``.

    Raises:
        DataError: ``datasets`` is missing, GSM8K is not in the local cache, or a row is
            malformed.
    """
    if source is None:
        source = load_hf_dataset(
            "openai/gsm8k",
            "main",
            split,
            allow_download=allow_download,
            name="GSM8K",
            part=split,
            source_hint="pass the rows yourself (source=...)",
            offline_hint="Pass source=<rows or .jsonl>, or allow_download=True to fetch it once; "
            "the shipped load_arithmetic_problems() needs nothing.",
        )
    elif isinstance(source, str | Path):
        import json

        try:
            lines = Path(source).read_text(encoding="utf-8").splitlines()
            source = [json.loads(line) for line in lines if line.strip()]
        except (OSError, ValueError) as err:
            raise DataError(f"Cannot read GSM8K rows from {source}: {err}") from err
    out = []
    for i, row in enumerate(source):
        try:
            raw = row["answer"]
            answer = parse_gsm8k_answer(raw) if isinstance(raw, str) else float(raw)
            out.append(MathProblem(f"gsm8k-{split}-{i:04d}", str(row["question"]), answer, "gsm8k"))
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(
                f"GSM8K row {i} is malformed: {err}.",
                hint='Each row needs "question" and "answer".',
            ) from err
    return out


def sample_problems(
    problems: Sequence[MathProblem], n: int | None, seed: int = 0
) -> list[MathProblem]:
    """``n`` problems drawn without replacement with a fixed seed (all of them for None).

    The paper draws 200 random GSM8K problems (50 for the layer sweep, A10).

    Args:
        problems: The pool.
        n: How many; None or ≥ the pool size keeps the pool in order.
        seed: Seed of ``random.Random``.

    Returns:
        The sample, in pool order.
    """
    if n is None or n >= len(problems):
        return list(problems)
    idx = sorted(random.Random(seed).sample(range(len(problems)), n))
    return [problems[i] for i in idx]


# ----------------------------------------------------------------------------------------------
# Answers
# ----------------------------------------------------------------------------------------------

_NUMBER = r"(?:(?<![\w)])-)?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_ANSWER_MARKERS = (
    re.compile(r"####\s*(" + _NUMBER + ")"),
    re.compile(r"\\boxed\{\s*(" + _NUMBER + ")"),
    re.compile(
        r"(?:final answer|the answer|answer)\s*(?:is|:|=)?\s*[:*]*\s*(" + _NUMBER + ")",
        re.IGNORECASE,
    ),
)
_ANY_NUMBER = re.compile(_NUMBER)


def _to_number(text: str) -> float:
    return float(text.replace("$", "").replace(",", "").replace(" ", ""))


def extract_answer(text: str) -> float | None:
    """The final numeric answer of a response, GSM8K-style.

    Looks, in order, for the last ``#### n``, the last ``\\boxed{n}``, the last "answer is n" /
    "Answer: n"; otherwise takes the last number in the text. Thousands separators and ``$`` are
    removed (``"$1,200.50"`` → 1200.5); a minus sign counts only when it does not follow a word
    or digit (``"10-5"`` gives 5).

    Args:
        text: A model response.

    Returns:
        The number, or None when the text has none.
    """
    for pattern in _ANSWER_MARKERS:
        matches = pattern.findall(text)
        if matches:
            return _to_number(matches[-1])
    numbers = _ANY_NUMBER.findall(text)
    return _to_number(numbers[-1]) if numbers else None


def is_correct(text: str, answer: float) -> bool:
    """Whether the extracted answer equals ``answer`` (relative tolerance 1e-6).

    Args:
        text: A model response.
        answer: The correct answer.

    Returns:
        False when no number can be extracted.
    """
    got = extract_answer(text)
    return got is not None and math.isclose(got, float(answer), rel_tol=1e-6, abs_tol=1e-9)


# ----------------------------------------------------------------------------------------------
# Preprocessing and rule-based labels
# ----------------------------------------------------------------------------------------------


def _normalise_quotes(text: str) -> str:
    return text.replace("\u2019", "'").replace("\u2018", "'")


def precheck_backtracking(text: str, compressed: str | None = None) -> BacktrackingLabel | None:
    """The paper's deterministic pre-classification (appendix O.1, backtracking only).

    Words are whitespace-separated.

    * More than half of the words (with at least 6 words) of the loop-compressed response in
      {wait, no, hmm, can't, cannot}, each optionally followed by "?" (case-insensitive)
      → ``nonsensical``.
    * At most 10 words and a digit somewhere (``"13"``, ``"$20.00"``) → ``normal``. This rule
      reads the response as generated: a long loop compressed to ``["The answer is 150."
      repeated 40 times]`` is not a terse answer (the paper does not say which text it reads).

    Args:
        text: The response as generated.
        compressed: Its loop-compressed form; computed with
            :func:`~welfare_lens.steering.incoherence.compress_trailing_loop` when None.

    Returns:
        The label, or None when neither shortcut applies (the judge decides).
    """
    if compressed is None:
        compressed = compress_trailing_loop(text)
    words = _normalise_quotes(compressed).split()
    if len(words) >= 6:
        hits = sum(1 for w in words if w.lower().removesuffix("?") in SHORTCUT_VOCABULARY)
        if 2 * hits > len(words):
            return "nonsensical"
    if len(text.split()) <= 10 and any(c.isdigit() for c in text):
        return "normal"
    return None


# (name, pattern, strength). Strong cues are explicit doubt; weak ones ("actually", "hmm",
# "No,") are common in fluent text and count only in pairs.
_CUES: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (name, re.compile(pattern, re.IGNORECASE), strength)
    for name, pattern, strength in (
        ("wait", r"(?:^|(?<=[\s.!?,;:*(\"]))wait\s*(?:[,.!?:;…]|—|–|-|\.\.\.)", "strong"),
        (
            "let me redo",
            r"\blet me (?:re-?check|re-?calculate|re-?consider|re-?think|re-?evaluate|re-?do|"
            r"re-?examine|re-?verify|re-?try|re-?read|try (?:this |that )?again|start (?:over|again)|"
            r"correct (?:that|this|myself)|fix (?:that|this))",
            "strong",
        ),
        ("i made a mistake", r"\bi(?: have|'ve)? made (?:a|an|some) (?:mistake|error)", "strong"),
        (
            "miscalculated",
            r"\bi (?:miscalculated|messed up|was wrong|got (?:that|it) wrong)",
            "strong",
        ),
        (
            "that's not right",
            r"\b(?:that|this|it)(?:'s| is| was)(?: not| n't|n't)? (?:in)?correct\b(?<!s correct)"
            r"|\b(?:that|this|it)(?:'s| is| was) (?:not right|wrong)\b"
            r"|\b(?:that|this|it) (?:doesn't|does not|can't|cannot|couldn't) (?:be|seem|look) right"
            r"|\b(?:that|this) can(?:'t|not) be\b",
            "strong",
        ),
        ("my mistake", r"\bmy (?:mistake|bad|error)\b|\boops\b|\bscratch that\b", "strong"),
        ("on second thought", r"\bon second thought\b|\bi need to (?:re|go back)", "strong"),
        ("actually", r"\bactually\b", "weak"),
        ("hmm", r"\bhm+\b", "weak"),
        ("no,", r"(?:^|(?<=[.!?…]\s)|(?<=\n))no\s*[,.!]", "weak"),
        ("double-check", r"\b(?:let me|i should|i'll|i will) double[- ]check\b", "weak"),
        ("not sure", r"\bi'?m not (?:sure|certain)\b|\bi am not (?:sure|certain)\b", "weak"),
        ("give up", r"\bgive up\b", "weak"),
    )
)


def backtracking_cues(text: str) -> list[tuple[str, str, int]]:
    """Doubt cues that follow a committed step (a digit earlier in the response).

    Args:
        text: A response.

    Returns:
        ``(cue name, strength, character offset)`` in text order. A cue before the first digit
        of the response is dropped: nothing was committed yet, so it cannot be backtracking.
    """
    text = _normalise_quotes(text)
    first_digit = next((i for i, c in enumerate(text) if c.isdigit()), None)
    if first_digit is None:
        return []
    found = []
    for name, pattern, strength in _CUES:
        for match in pattern.finditer(text):
            if match.start() > first_digit:
                found.append((name, strength, match.start()))
    return sorted(found, key=lambda c: c[2])


@dataclass(frozen=True)
class BacktrackingVerdict:
    """One response's backtracking label and where it came from.

    Attributes:
        label: ``normal``, ``backtracking``, ``nonsensical``, or None (unparseable judge output).
        source: ``"shortcut"`` (O.1 pre-classification), ``"rules"`` or ``"judge"``.
        cues: Names of the doubt cues found (rule path).
        judge_output: The judge's raw text (judge path).
    """

    label: BacktrackingLabel | None
    source: str
    cues: tuple[str, ...] = ()
    judge_output: str | None = None


def classify_backtracking(text: str) -> BacktrackingVerdict:
    """Rule-based backtracking label with the paper's three classes (offline default).

    Steps: trailing-loop compression and the O.1 shortcuts (:func:`precheck_backtracking`); then
    ``nonsensical`` if :func:`~welfare_lens.steering.incoherence.is_incoherent` (the original
    text); then ``backtracking`` if the response commits to a number and then doubts it (at least
    one strong cue or two weak cues from :func:`backtracking_cues`); else ``normal``.

    Args:
        text: A model response.

    Returns:
        The verdict (never unparseable).
    """
    shortcut = precheck_backtracking(text)
    if shortcut is not None:
        return BacktrackingVerdict(shortcut, "shortcut")
    if is_incoherent(text):
        return BacktrackingVerdict("nonsensical", "rules")
    cues = backtracking_cues(text)
    strong = sum(1 for _, s, _ in cues if s == "strong")
    weak = len(cues) - strong
    names = tuple(dict.fromkeys(name for name, _, _ in cues))
    label: BacktrackingLabel = "backtracking" if strong >= 1 or weak >= 2 else "normal"
    return BacktrackingVerdict(label, "rules", names)


# ----------------------------------------------------------------------------------------------
# LM judge
# ----------------------------------------------------------------------------------------------

_THINK_BLOCK = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL | re.IGNORECASE)


def strip_thinking(text: str) -> str:
    """Remove ``<think>...</think>`` blocks (and an unclosed trailing one) from a judge output."""
    return _THINK_BLOCK.sub("", text)


def _parse_class(output: str, tag: str, classes: Sequence[str]) -> str | None:
    text = strip_thinking(output)
    pattern = re.compile(re.escape(tag) + r"\s*[:：]\s*[*_`'\"<\[\s]*([A-Za-z_]+)", re.IGNORECASE)
    matches = pattern.findall(text)
    if not matches:
        return None
    label = matches[-1].lower()
    return label if label in classes else None


def parse_backtracking_class(output: str) -> BacktrackingLabel | None:
    """The class after the last ``BACKTRACKING_CLASS:`` of a judge output (O.3).

    Thinking blocks are removed first. Markdown emphasis, quotes, backticks and angle brackets
    around the class are allowed (``**BACKTRACKING_CLASS:** `normal```); tag and class are
    case-insensitive.

    Args:
        output: The judge's generated text.

    Returns:
        The class, or None when there is no tag or the word after it is not a class.
    """
    label = _parse_class(output, "BACKTRACKING_CLASS", BACKTRACKING_CLASSES)
    return cast("BacktrackingLabel | None", label)


def judge_backtracking(
    judge: Any,
    question: str,
    response: str,
    *,
    generate_fn: GenerateFn | None = None,
    thinking: bool = True,
    max_new_tokens: int = 1024,
) -> BacktrackingVerdict:
    """Label one response with an LM judge and the paper's O.3 prompt.

    The response is loop-compressed and the O.1 shortcuts are applied first; otherwise
    :data:`BACKTRACKING_JUDGE_PROMPT` is sent as one user turn and the output parsed with
    :func:`parse_backtracking_class`.

    Args:
        judge: Any chat model from ``load_model`` (the paper: Qwen3-8B).
        question: The problem.
        response: The response to label.
        generate_fn: ``(judge, prompt, n) -> [text]``; default greedy :func:`chat_generate`.
        thinking: ``enable_thinking`` for templates that support it (Qwen3). Appendix O says on
            for this judge, appendix E says off (reference note B-4).
        max_new_tokens: Judge generation budget (thinking needs room).

    Returns:
        The verdict; ``label`` is None when the output has no parseable class.
    """
    compressed = compress_trailing_loop(response)
    shortcut = precheck_backtracking(response, compressed)
    if shortcut is not None:
        return BacktrackingVerdict(shortcut, "shortcut")
    prompt = BACKTRACKING_JUDGE_PROMPT.format(question=question, response=compressed)
    output = run_judge(generate_fn or _judge_generate(thinking, max_new_tokens), judge, prompt)
    return BacktrackingVerdict(parse_backtracking_class(output), "judge", (), output)


# ----------------------------------------------------------------------------------------------
# Generation and steering plumbing (shared with the refusal and confidence evaluations)
# ----------------------------------------------------------------------------------------------

_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")
_PLAIN_STOPS = ("### User:", "### System:")


def _library_generate() -> Callable[..., Any] | None:
    """:func:`welfare_lens.steering.generate.generate`, or None where it is unavailable."""
    try:
        from welfare_lens.steering.generate import generate
    except ImportError:  # pragma: no cover - shipped with the package
        return None
    return generate


def declare_assistant_positions(mask: Tensor) -> contextlib.AbstractContextManager[Any]:
    """Declare which prompt tokens are assistant-turn tokens for the forward passes in a block.

    With ``steer(..., positions="assistant")`` (the paper's rule, A6/P.3) a forward pass over a
    whole prompt must say which of its tokens to steer; this wraps
    :func:`welfare_lens.steering.steer.assistant_positions` (a no-op if it is unavailable).

    Args:
        mask: ``[pos]`` or ``[batch, pos]`` boolean mask of the tokens to steer.
    """
    try:
        from welfare_lens.steering.steer import assistant_positions
    except ImportError:  # pragma: no cover - shipped with the package
        return contextlib.nullcontext()
    return assistant_positions(mask)


def _stop_ids(tokenizer: Any) -> list[int]:
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    ids.extend(int(vocab[t]) for t in _END_OF_TURN if t in vocab)
    return list(dict.fromkeys(ids))


def _prompt_text(tokenizer: Any, prompt: str, enable_thinking: bool | None) -> str:
    template = getattr(tokenizer, "chat_template", None) or ""
    if enable_thinking is not None and "enable_thinking" in template:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=enable_thinking,
        )
        return str(text)
    return render_chat(
        tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True
    ).text


def _random_seed() -> int:
    return int(torch.randint(0, 2**31 - 1, ()).item())


def chat_generate(
    model: Any,
    prompt: str,
    n: int = 1,
    *,
    max_new_tokens: int = 512,
    temperature: float = 0.7,
    do_sample: bool = True,
    top_p: float | None = None,
    enable_thinking: bool | None = None,
    assistant_prefix: str = "",
    seed: int | None = None,
) -> list[str]:
    """``n`` responses to one user prompt, rendered with the model's chat template.

    The conversation has no system prompt (the paper's; SmolLM2's injected default is removed by
    :func:`~welfare_lens.chat.render_chat`); base models without a template get the plain
    ``### User:`` format and stop at the next ``### User:``. Generation stops at EOS or an
    end-of-turn token (``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``, ...).

    Decoding goes through :func:`welfare_lens.steering.generate.generate`, which declares the
    generation-prompt tokens to ``steer(..., positions="assistant")`` (the paper's rule: the
    ``assistant`` role tokens and every generated token). With ``enable_thinking`` or an
    ``assistant_prefix`` the prompt is passed as token ids, and only generated tokens count as
    assistant tokens (meant for judges, which run unsteered). Where that module is unavailable,
    ``model.generate`` is used (its hooks cannot be told the prompt positions).

    Args:
        model: A TransformerBridge with a tokenizer.
        prompt: The user message.
        n: Responses to return (greedy decoding computes one and repeats it).
        max_new_tokens: Generation budget.
        temperature: Sampling temperature.
        do_sample: False for greedy decoding.
        top_p: Nucleus sampling mass (None: off).
        enable_thinking: Passed to templates that take it (Qwen3); None leaves the default.
        assistant_prefix: Text appended after the generation prompt (e.g. an empty
            ``<think>\\n\\n</think>\\n\\n`` block).
        seed: Seed of the samples; None draws one from torch's global RNG.

    Returns:
        ``n`` decoded responses, special tokens removed, stripped.
    """
    tokenizer = model.tokenizer
    rows = n if do_sample else 1
    seed = _random_seed() if seed is None else int(seed)
    library = _library_generate()
    if library is not None:
        source: Any = prompt
        if enable_thinking is not None or assistant_prefix:
            text = _prompt_text(tokenizer, prompt, enable_thinking) + assistant_prefix
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            source = torch.tensor(ids, dtype=torch.long)
        outs = library(
            model,
            source,
            samples=rows,
            max_new_tokens=max_new_tokens,
            temperature=temperature if do_sample else 0.0,
            top_p=1.0 if top_p is None else top_p,
            seed=seed,
        )
        texts = [str(o.text).strip() for o in outs]
    else:  # pragma: no cover - fallback without welfare_lens.steering.generate
        texts = _bridge_generate(
            model, prompt, rows, max_new_tokens, temperature, do_sample, top_p,
            enable_thinking, assistant_prefix, seed,
        )  # fmt: skip
    return texts if do_sample else texts * n


def _bridge_generate(
    model: Any,
    prompt: str,
    rows: int,
    max_new_tokens: int,
    temperature: float,
    do_sample: bool,
    top_p: float | None,
    enable_thinking: bool | None,
    assistant_prefix: str,
    seed: int,
) -> list[str]:
    """Sampling through the bridge's own ``generate`` (the fallback of :func:`chat_generate`)."""
    tokenizer = model.tokenizer
    text = _prompt_text(tokenizer, prompt, enable_thinking) + assistant_prefix
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    plain = not getattr(tokenizer, "chat_template", None)
    kwargs: dict[str, Any] = {}
    if plain:
        kwargs["stop_strings"] = list(_PLAIN_STOPS)
    if top_p is not None:
        kwargs["top_p"] = top_p
    stops = _stop_ids(tokenizer)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        out = model.generate(
            ids.unsqueeze(0).repeat(rows, 1),
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            eos_token_id=stops,
            return_type="tokens",
            verbose=False,
            **kwargs,
        )
    texts = []
    for row in out[:, ids.shape[0] :].tolist():
        cut = next((i for i, t in enumerate(row) if t in stops), len(row))
        decoded = tokenizer.decode(row[:cut], skip_special_tokens=True)
        if plain:
            for stop in _PLAIN_STOPS:
                decoded = decoded.split(stop)[0]
        texts.append(decoded.strip())
    return texts


def _default_generate(max_new_tokens: int, temperature: float) -> GenerateFn:
    def fn(model: Any, prompt: str, n: int) -> list[str]:
        return chat_generate(
            model,
            prompt,
            n,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            do_sample=temperature > 0,
        )

    return fn


def _judge_generate(thinking: bool, max_new_tokens: int) -> GenerateFn:
    def fn(judge: Any, prompt: str, n: int) -> list[str]:
        return chat_generate(
            judge,
            prompt,
            n,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            enable_thinking=thinking,
        )

    return fn


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def backtracking_responses(
    model: Any,
    problems: Sequence[MathProblem] | None = None,
    *,
    n_problems: int | None = 200,
    samples: int = 10,
    seed: int = 0,
    generate_fn: GenerateFn | None = None,
    max_new_tokens: int = 512,
    temperature: float = 0.7,
    prompt_template: str = "{question}",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Generate the responses of the backtracking evaluation (paper §4.2), without labels.

    Run this inside the steering context; label the rows afterwards with
    :func:`label_backtracking` (unsteered judge).

    Args:
        model: The model to evaluate (steered by the caller).
        problems: Problems; None for the shipped :func:`load_arithmetic_problems`.
        n_problems: Problems drawn with ``seed`` (:func:`sample_problems`); the paper uses 200
            (50 in the layer sweep). None: all.
        samples: Responses per problem (paper: 10; sweep: 4).
        seed: Seed of the problem draw and of generation (prompt ``i`` uses ``seed + i``).
        generate_fn: ``(model, prompt, n) -> [text]``; default :func:`chat_generate` with
            ``max_new_tokens`` and ``temperature``.
        max_new_tokens: Default generator's budget (not given in the paper, B-11).
        temperature: Default generator's temperature (0: greedy).
        prompt_template: User message; ``{question}`` is replaced (default: the bare problem).
        progress: Show a progress bar.

    Returns:
        One row per response: ``prompt`` (the user message), ``sample``, ``text``,
        ``problem_id``, ``question``, ``answer``, ``predicted`` (:func:`extract_answer`),
        ``correct``, ``incoherence`` (:func:`~welfare_lens.steering.incoherence.incoherence_score`),
        and ``score``/``label``/``incoherent`` set to None until labelled.
    """
    pool = load_arithmetic_problems() if problems is None else list(problems)
    chosen = sample_problems(pool, n_problems, seed)
    fn = generate_fn or _default_generate(max_new_tokens, temperature)
    prompts = [prompt_template.format(question=p.question) for p in chosen]

    def fields(i: int, text: str) -> dict[str, Any]:
        problem = chosen[i]
        return {
            "problem_id": problem.id,
            "question": problem.question,
            "answer": problem.answer,
            "predicted": extract_answer(text),
            "correct": is_correct(text, problem.answer),
        }

    return response_rows(model, prompts, samples, fn, fields, seed=seed, progress=progress)


def label_backtracking(
    rows: Sequence[Mapping[str, Any]],
    judge: Any = None,
    *,
    judge_generate_fn: GenerateFn | None = None,
    thinking: bool = True,
    judge_max_new_tokens: int = 1024,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Label backtracking rows with the rules (default) or an LM judge (paper O.1, O.3).

    Args:
        rows: Rows from :func:`backtracking_responses` (need ``text``; the judge also reads
            ``question``).
        judge: None for :func:`classify_backtracking`; a chat model for :func:`judge_backtracking`.
        judge_generate_fn: Judge generator ``(judge, prompt, n) -> [text]``.
        thinking: Judge thinking mode (see :func:`judge_backtracking`).
        judge_max_new_tokens: Judge generation budget.
        progress: Show a progress bar.

    Returns:
        Copies of the rows with ``label``, ``label_source``, ``score`` (1.0 backtracking, 0.0
        otherwise, None unparseable), ``incoherent`` (label ``nonsensical``; for unparseable
        judge outputs, :func:`~welfare_lens.steering.incoherence.is_incoherent`), ``cues`` and
        ``judge_output``.
    """

    def verdict(row: Mapping[str, Any], text: str) -> BacktrackingVerdict:
        if judge is None:
            return classify_backtracking(text)
        return judge_backtracking(
            judge,
            str(row.get("question", row.get("prompt", ""))),
            text,
            generate_fn=judge_generate_fn,
            thinking=thinking,
            max_new_tokens=judge_max_new_tokens,
        )

    return label_rows(rows, verdict, ("backtracking",), progress)


def evaluate_backtracking(
    model: Any,
    problems: Sequence[MathProblem] | None = None,
    *,
    n_problems: int | None = 200,
    samples: int = 10,
    seed: int = 0,
    generate_fn: GenerateFn | None = None,
    max_new_tokens: int = 512,
    temperature: float = 0.7,
    prompt_template: str = "{question}",
    judge: Any = None,
    judge_generate_fn: GenerateFn | None = None,
    judge_thinking: bool = True,
    judge_max_new_tokens: int = 1024,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """The backtracking evaluation (paper §4.2): generate, then label.

    Equivalent to :func:`label_backtracking` of :func:`backtracking_responses`; see those for
    the arguments. The caller adds ``alpha``/``layer``/``vector`` to the rows.

    Returns:
        Rows with ``prompt``, ``sample``, ``score`` (1.0 if backtracking), ``incoherent``,
        ``text``, ``label``, ``label_source``, ``cues``, ``problem_id``, ``question``, ``answer``,
        ``predicted``, ``correct``, ``incoherence`` and ``judge_output``.

    A judge runs with steering suspended (``unsteered()``), so it may be ``model`` itself.
    """
    check_judge(judge, model, "label_backtracking(rows, judge=model)")
    rows = backtracking_responses(
        model,
        problems,
        n_problems=n_problems,
        samples=samples,
        seed=seed,
        generate_fn=generate_fn,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        prompt_template=prompt_template,
        progress=progress,
    )
    return label_backtracking(
        rows,
        judge,
        judge_generate_fn=judge_generate_fn,
        thinking=judge_thinking,
        judge_max_new_tokens=judge_max_new_tokens,
        progress=progress,
    )


def backtracking_rate(rows: Iterable[Mapping[str, Any]]) -> float:
    """Fraction of parseable rows labelled ``backtracking`` (paper §4.2; NaN if none).

    ``nonsensical`` rows are parseable and count in the denominator; unparseable judge outputs
    (label None) do not.

    Args:
        rows: Labelled rows of one condition.

    Returns:
        The rate.
    """
    return class_rate(rows, BACKTRACKING_CLASSES, ("backtracking",))
