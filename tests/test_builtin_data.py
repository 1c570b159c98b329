"""The built-in arithmetic dataset: sizes, disjoint splits, determinism, row shapes and the grader."""

from __future__ import annotations

import re

import pytest

from alignkit.data.builtin import (
    BUILTIN_DATASETS,
    Problem,
    arith_kto,
    arith_pref,
    arith_pref_mismatch,
    arith_problems,
    arith_prompts,
    arith_sft,
    extract_answer,
    is_correct,
    mismatched_answers,
    wrong_answer,
)
from alignkit.data.rows import ConversationRow, PreferenceRow, PromptRow, RowSource, UnpairedRow
from alignkit.errors import AlignkitError

PROMPT = re.compile(r"What is (\d+) ([+-]) (\d+)\? Reply with 'Answer: <number>'\.")


def _key(problem: Problem) -> tuple:
    # a + b and b + a are the same problem.
    return (problem.op, *sorted((problem.a, problem.b))) if problem.op == "+" else problem


def test_names_and_sizes():
    assert list(BUILTIN_DATASETS) == ["arith-sft", "arith-pref", "arith-pref-mismatch", "arith-kto", "arith-prompts"]
    for build in BUILTIN_DATASETS.values():
        assert len(build("train", data_seed=1)) == 2000
        assert len(build("test", data_seed=1)) == 200


def test_splits_are_disjoint_and_problems_unique():
    train, test = arith_problems("train", data_seed=7), arith_problems("test", data_seed=7)
    keys = [_key(p) for p in train + test]
    assert len(set(keys)) == len(keys) == 2200
    assert {p.prompt[0]["content"] for p in train}.isdisjoint(p.prompt[0]["content"] for p in test)


def test_seeded():
    assert arith_problems("train", data_seed=3) == arith_problems("train", data_seed=3)
    assert arith_problems("train", data_seed=3) != arith_problems("train", data_seed=4)
    assert arith_pref("test", data_seed=3) == arith_pref("test", data_seed=3)


def test_problems_are_two_digit_with_positive_answers():
    for p in arith_problems("train"):
        assert 10 <= p.a <= 99 and 10 <= p.b <= 99
        assert p.answer == (p.a + p.b if p.op == "+" else p.a - p.b) > 0
    ops = [p.op for p in arith_problems("train")]
    assert 900 < ops.count("+") < 1100


def test_pref_rows():
    rows = arith_pref("train", data_seed=0)
    for i, row in enumerate(rows):
        assert isinstance(row, PreferenceRow)
        a, op, b = PROMPT.fullmatch(row.prompt[0]["content"]).groups()
        answer = int(a) + int(b) if op == "+" else int(a) - int(b)
        assert row.prompt == [{"role": "user", "content": row.prompt[0]["content"]}]
        assert row.chosen == [{"role": "assistant", "content": f"Answer: {answer}"}]
        assert row.extras == {"solution": str(answer)}
        assert row.rejected[0]["role"] == "assistant"
        assert re.fullmatch(r"Answer: \d+", row.rejected[0]["content"])
        assert not is_correct(row.rejected[0]["content"], answer)
        assert row.source == RowSource("builtin:arith-pref", i + 1)
    assert arith_pref("test")[4].source == RowSource("builtin:arith-pref:test", 5)


@pytest.mark.parametrize("split", ["train", "test"])
def test_mismatch_rows_reject_another_questions_answer(split):
    rows, problems = arith_pref_mismatch(split, data_seed=5), arith_problems(split, data_seed=5)
    chosen = [extract_answer(row.chosen[0]["content"]) for row in rows]
    rejected = [extract_answer(row.rejected[0]["content"]) for row in rows]
    assert chosen == [p.answer for p in problems]
    assert all(c != r for c, r in zip(chosen, rejected))
    # The rejected values are the correct values reordered: a value alone cannot tell the pair apart.
    assert sorted(rejected) == sorted(chosen)
    assert [row.prompt for row in rows] == [p.prompt for p in problems]
    assert rows[0].source == RowSource("builtin:arith-pref-mismatch" + ("" if split == "train" else ":test"), 1)
    assert rows == arith_pref_mismatch(split, data_seed=5)


def test_mismatched_answers_resolves_equal_answers_on_the_cycle():
    import random

    # Three of six problems answer 30: the most a derangement allows.
    problems = [Problem(10, "+", 20), Problem(20, "+", 10), Problem(15, "+", 15), Problem(40, "-", 5),
                Problem(50, "+", 10), Problem(99, "-", 10)]
    for seed in range(50):
        wrong = mismatched_answers(problems, random.Random(seed))
        assert sorted(wrong) == sorted(p.answer for p in problems)
        assert all(w != p.answer for w, p in zip(wrong, problems))
    with pytest.raises(AlignkitError, match="more than half"):
        mismatched_answers(problems[:3] + problems[4:5], random.Random(0))


def test_wrong_answers_are_plausible():
    import random

    rng = random.Random(0)
    assert {wrong_answer(Problem(37, "+", 48), rng) for _ in range(200)} == {84, 86, 75, 95, 58}
    # 20 - 10 = 10: swapping gives "01", so it is not offered; 10 - 10 = 0 is.
    assert {wrong_answer(Problem(20, "-", 10), rng) for _ in range(200)} == {9, 11, 0, 20}


def test_sft_kto_prompt_rows_match_the_problems():
    problems = arith_problems("test", data_seed=5)
    sft, kto, prompts = (
        arith_sft("test", data_seed=5),
        arith_kto("test", data_seed=5),
        arith_prompts("test", data_seed=5),
    )
    for i, p in enumerate(problems):
        assert sft[i] == ConversationRow(
            p.prompt + [{"role": "assistant", "content": f"Answer: {p.answer}"}],
            RowSource("builtin:arith-sft:test", i + 1),
        )
        assert prompts[i] == PromptRow(
            p.prompt, {"solution": str(p.answer)}, RowSource("builtin:arith-prompts:test", i + 1)
        )
        assert isinstance(kto[i], UnpairedRow) and kto[i].prompt == p.prompt
        assert kto[i].label is (i % 2 == 0)
        assert is_correct(kto[i].completion[0]["content"], p.answer) is kto[i].label
    assert sum(row.label for row in arith_kto("train")) == 1000


def test_unknown_split():
    with pytest.raises(
        AlignkitError, match=r"^the built-in datasets have no split 'dev'; splits: train, test$"
    ):
        arith_pref("dev")


@pytest.mark.parametrize(
    "text, answer",
    [
        ("Answer: 85", 85),
        ("Answer:85", 85),
        ("Sure! 37 + 48 = 85.\nAnswer: 85.", 85),
        ("Answer: 84 Answer: 85", 84),
        ("Answer: -3", -3),
        ("Answer: 85.5", None),
        ("answer: 85", None),
        ("The answer is 85", None),
        ("Answer: eighty-five", None),
        ("", None),
    ],
)
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


def test_is_correct():
    assert is_correct("Answer: 85", "85")
    assert is_correct("Answer: 85", 85)
    assert not is_correct("Answer: 84\nAnswer: 85", "85")  # the first answer is graded
    assert not is_correct("85", "85")  # the format is part of the task
