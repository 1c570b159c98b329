"""The built-in dataset: two-digit addition and subtraction, with answers a program can check.

Every problem is generated from ``data_seed``, so a run needs no download. The problems are split once
into a held-out ``test`` split (200) and a ``train`` split (2000) that share no problem: ``a + b`` and
``b + a`` count as the same problem, so neither order of a test sum is ever trained on.

Example (``arith_pref("train")[0]``, values depend on the seed)::

    PreferenceRow(
        prompt=[{"role": "user", "content": "What is 37 + 48? Reply with 'Answer: <number>'."}],
        chosen=[{"role": "assistant", "content": "Answer: 85"}],
        rejected=[{"role": "assistant", "content": "Answer: 84"}],
        extras={"solution": "85"},
        source=RowSource(file="builtin:arith-pref", row=1),
    )

The answer format is strict: ``is_correct`` grades the first ``Answer: <integer>`` in a completion.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable
from typing import NamedTuple

from alignkit.data.rows import ConversationRow, PreferenceRow, PromptRow, Row, RowSource, UnpairedRow
from alignkit.errors import AlignkitError

SPLIT_SIZES = {"train": 2000, "test": 200}
DEFAULT_DATA_SEED = 42

# "Answer: 85" and "Answer:85"; not "Answer: 85.5" (a decimal is no integer answer).
_ANSWER = re.compile(r"Answer:[ \t]*(-?\d+)(?![\d.]*\.\d)")


class Problem(NamedTuple):
    """One arithmetic question, e.g. ``Problem(37, "+", 48)``: prompt "What is 37 + 48? ...", answer 85."""

    a: int
    op: str
    b: int

    @property
    def answer(self) -> int:
        return self.a + self.b if self.op == "+" else self.a - self.b

    @property
    def prompt(self) -> list[dict[str, str]]:
        text = f"What is {self.a} {self.op} {self.b}? Reply with 'Answer: <number>'."
        return [{"role": "user", "content": text}]


def arith_problems(split: str = "train", *, data_seed: int = DEFAULT_DATA_SEED) -> list[Problem]:
    """The problems of one split: ``test`` is the first 200 of a seeded shuffle, ``train`` the next 2000.

    Sums are of two numbers in 10..99; differences are ``a - b`` with ``a > b``, so every answer is a
    positive integer.
    """
    if split not in SPLIT_SIZES:
        raise AlignkitError(
            f"the built-in datasets have no split '{split}'; splits: {', '.join(SPLIT_SIZES)}"
        )
    rng = random.Random(data_seed)
    problems = []
    for a in range(10, 100):
        for b in range(a, 100):
            # One entry per unordered pair; the order shown is drawn, so both orders occur.
            problems.append(Problem(a, "+", b) if rng.random() < 0.5 else Problem(b, "+", a))
        problems.extend(Problem(a, "-", b) for b in range(10, a))
    rng.shuffle(problems)
    start = 0 if split == "test" else SPLIT_SIZES["test"]
    return problems[start : start + SPLIT_SIZES[split]]


def wrong_answer(problem: Problem, rng: random.Random) -> int:
    """A plausible mistake: off by one, off by ten, or the answer's two digits swapped (85 -> 58)."""
    answer = problem.answer
    candidates = {answer - 1, answer + 1, answer - 10, answer + 10}
    digits = str(answer)
    if len(digits) == 2 and digits[1] != "0":
        candidates.add(int(digits[::-1]))
    return rng.choice(sorted(c for c in candidates if c >= 0 and c != answer))


def _reply(value: int) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": f"Answer: {value}"}]


def _source(name: str, split: str, index: int) -> RowSource:
    suffix = "" if split == "train" else f":{split}"
    return RowSource(file=f"builtin:{name}{suffix}", row=index + 1)


def _rejections(problems: list[Problem], name: str, split: str, data_seed: int) -> list[int]:
    # Seeded apart from the problem shuffle, so every set draws the same problems for a given seed.
    rng = random.Random(f"{data_seed}:{name}:{split}")
    return [wrong_answer(p, rng) for p in problems]


def arith_sft(split: str = "train", *, data_seed: int = DEFAULT_DATA_SEED) -> list[ConversationRow]:
    """SFT: the question and the correct reply, ``"Answer: 85"``."""
    return [
        ConversationRow(messages=p.prompt + _reply(p.answer), source=_source("arith-sft", split, i))
        for i, p in enumerate(arith_problems(split, data_seed=data_seed))
    ]


def arith_pref(split: str = "train", *, data_seed: int = DEFAULT_DATA_SEED) -> list[PreferenceRow]:
    """Preference pairs: chosen is the correct reply, rejected a plausible wrong one in the same format."""
    problems = arith_problems(split, data_seed=data_seed)
    return _pairs(problems, _rejections(problems, "arith-pref", split, data_seed), "arith-pref", split)


def _pairs(problems: list[Problem], wrong: list[int], name: str, split: str) -> list[PreferenceRow]:
    """Preference rows: the correct reply against ``wrong[i]``, the i-th problem's rejected value."""
    return [
        PreferenceRow(
            prompt=p.prompt,
            chosen=_reply(p.answer),
            rejected=_reply(w),
            extras={"solution": str(p.answer)},
            source=_source(name, split, i),
        )
        for i, (p, w) in enumerate(zip(problems, wrong))
    ]


def mismatched_answers(problems: list[Problem], rng: random.Random) -> list[int]:
    """For each problem, the answer of another problem of the list, never its own: the rejected values are
    the correct values reordered, so a value alone says nothing about which reply is right."""
    answers = [p.answer for p in problems]
    if 2 * max(Counter(answers).values()) > len(answers):
        # More than half the rows share one answer: some of them would have to be rejected with it.
        raise AlignkitError("mismatched answers need no answer shared by more than half the problems")
    order = list(range(len(problems)))
    rng.shuffle(order)
    # Each problem takes the answer of the next one around a random cycle: every answer is used once.
    wrong = [0] * len(problems)
    for k, index in enumerate(order):
        wrong[index] = answers[order[(k + 1) % len(order)]]
    # Equal answers met on the cycle: swap with a row holding neither value. One exists while no answer
    # fills more than half the rows, and a swap never creates a new collision.
    for i in range(len(problems)):
        while wrong[i] == answers[i]:
            j = rng.randrange(len(problems))
            if wrong[j] != answers[i] and wrong[i] != answers[j]:
                wrong[i], wrong[j] = wrong[j], wrong[i]
    return wrong


def arith_pref_mismatch(split: str = "train", *, data_seed: int = DEFAULT_DATA_SEED) -> list[PreferenceRow]:
    """Preference pairs whose rejected reply answers another question of the split: judging them takes
    reading the question and estimating the answer, not checking it digit by digit as ``arith-pref`` does."""
    problems = arith_problems(split, data_seed=data_seed)
    wrong = mismatched_answers(problems, random.Random(f"{data_seed}:arith-pref-mismatch:{split}"))
    return _pairs(problems, wrong, "arith-pref-mismatch", split)


def arith_kto(split: str = "train", *, data_seed: int = DEFAULT_DATA_SEED) -> list[UnpairedRow]:
    """KTO: balanced labels; even rows (0-based) hold the correct reply, odd rows a wrong one."""
    problems = arith_problems(split, data_seed=data_seed)
    wrong = _rejections(problems, "arith-kto", split, data_seed)
    return [
        UnpairedRow(
            prompt=p.prompt,
            completion=_reply(p.answer if i % 2 == 0 else w),
            label=i % 2 == 0,
            source=_source("arith-kto", split, i),
        )
        for i, (p, w) in enumerate(zip(problems, wrong))
    ]


def arith_prompts(split: str = "train", *, data_seed: int = DEFAULT_DATA_SEED) -> list[PromptRow]:
    """Prompts for online methods and evaluation; ``extras["solution"]`` is the answer as a string."""
    return [
        PromptRow(
            prompt=p.prompt, extras={"solution": str(p.answer)}, source=_source("arith-prompts", split, i)
        )
        for i, p in enumerate(arith_problems(split, data_seed=data_seed))
    ]


BUILTIN_DATASETS: dict[str, Callable[..., list[Row]]] = {
    "arith-sft": arith_sft,
    "arith-pref": arith_pref,
    "arith-pref-mismatch": arith_pref_mismatch,
    "arith-kto": arith_kto,
    "arith-prompts": arith_prompts,
}
"""Built-in dataset name → builder ``(split="train", *, data_seed) -> rows``; splits are ``train`` and ``test``."""


def extract_answer(text: str) -> int | None:
    """The integer of the first ``Answer: <integer>`` in ``text``, or None: ``"Answer: 85"`` -> 85."""
    match = _ANSWER.search(text)
    return int(match.group(1)) if match else None


def is_correct(completion_text: str, solution: str | int) -> bool:
    """Whether the first ``Answer: <integer>`` in the completion equals ``solution`` ("85" or 85)."""
    answer = extract_answer(completion_text)
    return answer is not None and answer == int(solution)
