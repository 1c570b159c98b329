"""The built-in GRPO reward functions: ms-swift's, under its names and with its meaning, and the built-in task's.

ms-swift's (``swift/rewards/orm.py``, registered in its ``orms`` table) are classes built with the run's
arguments (``ORM(args)``) and called with the completions and the dataset's columns:

==============  =========================================================================================
accuracy        math answer verification (math-verify) of the completion against the row's ``solution``:
                1.0 when equivalent, else 0.0; the text inside ``<answer>…</answer>`` when present
format          1.0 when the completion is ``<think>…</think>`` then ``<answer>…</answer>`` and nothing after
react_format    1.0 when it is ``<think>…</think>`` then ``Action: … Action Input: …``
cosine          length-shaped accuracy (Yeo et al. 2025, https://arxiv.org/abs/2502.03373): a cosine from
                --cosine_min_len_value_* at length 0 to --cosine_max_len_value_* at --cosine_max_len tokens
repetition      --repetition_max_penalty × the share of repeated word n-grams (n = --repetition_n_grams)
soft_overlong   DAPO's soft overlong penalty: min(0, −(L − (L_max − L_cache)) / L_cache) for a completion of
                L tokens (L_max = --soft_max_length, L_cache = --soft_cache_length)
==============  =========================================================================================

ColossalChat's verifiable rewards (``coati/utils/reward_score``), under its names, read the row's ``gt_answer``
and the ``response_format_tags`` of ``--template_config`` (ColossalChat's default ``<think>``/``<answer>`` tags
without one):

=========================  ==============================================================================
gsm8k_reward_fn            0 without ``gt_answer``, when the tags are not each there once and in order with the
                           completion ending in the answer-end tag, or when the last ``<answer>…</answer>`` is not
                           an integer; else 1, and 10 when it equals ``gt_answer`` (blanks and case ignored)
math_competition_reward_fn the same without the integer check
=========================  ==============================================================================

The built-in arithmetic task (``arith-prompts``) is scored by ``arith_accuracy`` (the first ``Answer: N``
equals ``solution``) and ``arith_format`` (the whole completion is ``Answer: N``).
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

from alignkit.data.builtin import is_correct
from alignkit.errors import AlignkitError

logger = logging.getLogger("alignkit")

_WHOLE_ANSWER = re.compile(r"\s*Answer:[ \t]*-?\d+\s*")


def arith_accuracy(completions: list[str], solution: list, **kwargs) -> list[float | None]:
    """The built-in task: 1.0 when the completion's first ``Answer: <integer>`` equals the row's ``solution``,
    else 0.0 (None for rows without a solution)."""
    return [None if s is None else float(is_correct(c, s)) for c, s in zip(completions, solution)]


def arith_format(completions: list[str], **kwargs) -> list[float]:
    """The built-in task: 1.0 when the whole completion is ``Answer: <integer>`` (whitespace aside), else 0.0."""
    return [float(_WHOLE_ANSWER.fullmatch(c) is not None) for c in completions]


class ORM:
    """ms-swift's base of outcome reward functions: built with the run's arguments, called with ``completions``
    and one list per dataset column (``solution``, ...); returns one float (or None) per completion."""

    def __init__(self, args=None, **kwargs):
        self.args = args

    def __call__(self, **kwargs) -> list[float]:
        raise NotImplementedError


class AsyncORM(ORM):
    """ms-swift's base of reward functions whose ``__call__`` is a coroutine (run with asyncio here)."""

    async def __call__(self, **kwargs) -> list[float]:
        raise NotImplementedError


_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


class MathAccuracy(ORM):
    """``accuracy``: ms-swift's MathAccuracy, math-verify's ``verify(parse(solution), parse(completion))``."""

    def __init__(self, args=None, **kwargs):
        super().__init__(args)
        try:
            import math_verify  # noqa: F401
        except ImportError as error:
            raise AlignkitError(
                "--reward_funcs accuracy verifies math answers with the math-verify package, which is not installed: "
                "pip install 'alignkit[rewards]' (or pip install math-verify)") from error

    def __call__(self, completions: list[str], solution: list, **kwargs) -> list[float]:
        from latex2sympy2_extended import NormalizationConfig
        from math_verify import LatexExtractionConfig, parse, verify

        rewards = []
        for content, sol in zip(completions, solution):
            if sol is None:
                rewards.append(None)
                continue
            content_match, sol_match = _ANSWER_TAG.search(content), _ANSWER_TAG.search(str(sol))
            gold = parse(sol_match.group(1).strip() if sol_match else str(sol), extraction_mode="first_match")
            if not gold:  # an unparseable solution scores 0, as in ms-swift
                rewards.append(0.0)
                continue
            if content_match:
                answer = parse(content_match.group(1).strip(), extraction_mode="first_match")
            else:  # without the tag, only a LaTeX answer (\boxed{...}, $...$) counts
                answer = parse(content, extraction_mode="first_match", extraction_config=[LatexExtractionConfig(
                    normalization_config=NormalizationConfig(nits=False, malformed_operators=False, basic_latex=True,
                                                             boxed=True, units=True),
                    boxed_match_priority=0, try_extract_without_anchor=False)])
            try:
                rewards.append(float(verify(gold, answer)))
            except Exception:  # math-verify raises on exotic expressions; ms-swift scores them 0
                rewards.append(0.0)
        return rewards


class Format(ORM):
    """``format``: ``<think>…</think>`` then ``<answer>…</answer>``, nothing after."""

    PATTERN = re.compile(r"^<think>.*?</think>\s*<answer>.*?</answer>(?![\s\S])", re.DOTALL | re.MULTILINE)

    def __call__(self, completions: list[str], **kwargs) -> list[float]:
        return [float(self.PATTERN.match(c) is not None) for c in completions]


class ReActFormat(ORM):
    """``react_format``: ``<think>…</think>`` then ``Action: … Action Input: …``."""

    PATTERN = re.compile(r"^<think>.*?</think>\s*Action:.*?Action Input:.*?$", re.DOTALL | re.MULTILINE)

    def __call__(self, completions: list[str], **kwargs) -> list[float]:
        return [float(self.PATTERN.match(c) is not None) for c in completions]


class CosineReward(ORM):
    """``cosine``: r(L) = max − (max − min)·(1 − cos(πL/L_max))/2, where for a correct answer (accuracy 1)
    r goes from --cosine_min_len_value_correct at L = 0 to --cosine_max_len_value_correct at L_max, and for a
    wrong one from --cosine_min_len_value_wrong to --cosine_max_len_value_wrong (L: completion tokens)."""

    def __init__(self, args=None, accuracy_orm=None, **kwargs):
        super().__init__(args)
        self.min_len_value_wrong = args.cosine_min_len_value_wrong
        self.max_len_value_wrong = args.cosine_max_len_value_wrong
        self.min_len_value_correct = args.cosine_min_len_value_correct
        self.max_len_value_correct = args.cosine_max_len_value_correct
        self.max_len = args.cosine_max_len or args.max_completion_length
        self.accuracy_orm = accuracy_orm or MathAccuracy()

    @staticmethod
    def cosfn(t: int, total: int, min_value: float, max_value: float) -> float:
        return max_value - (max_value - min_value) * (1 - math.cos(t * math.pi / total)) / 2

    def __call__(self, completions: list[str], solution: list, response_token_ids: list, **kwargs) -> list[float]:
        accuracies = self.accuracy_orm(completions, solution, **kwargs)
        rewards = []
        for ids, accuracy in zip(response_token_ids, accuracies):
            if accuracy is not None and accuracy >= 1.0:  # ms-swift's naming: "min/max" swap for correct answers
                start, end = self.min_len_value_correct, self.max_len_value_correct
            else:
                start, end = self.min_len_value_wrong, self.max_len_value_wrong
            rewards.append(self.cosfn(len(ids), self.max_len, end, start))
        return rewards


class RepetitionPenalty(ORM):
    """``repetition``: (1 − distinct n-grams / n-grams)·--repetition_max_penalty over lower-cased words;
    0 for completions shorter than n words."""

    def __init__(self, args=None, **kwargs):
        super().__init__(args)
        self.ngram_size = args.repetition_n_grams
        self.max_penalty = args.repetition_max_penalty

    def __call__(self, completions: list[str], **kwargs) -> list[float]:
        rewards = []
        for completion in completions:
            words = completion.lower().split()
            if len(words) < self.ngram_size:
                rewards.append(0.0)
                continue
            ngrams = list(zip(*[words[i:] for i in range(self.ngram_size)]))
            rewards.append((1 - len(set(ngrams)) / len(ngrams)) * self.max_penalty)
        return rewards


class SoftOverlong(ORM):
    """``soft_overlong``: 0 up to L_max − L_cache tokens, then falling linearly to −1 at L_max (DAPO, Eq. 13)."""

    def __init__(self, args=None, **kwargs):
        super().__init__(args)
        self.soft_max_length = args.soft_max_length or args.max_completion_length
        self.soft_cache_length = args.soft_cache_length
        if self.soft_cache_length is None or not self.soft_cache_length < self.soft_max_length:
            raise AlignkitError(
                f"--reward_funcs soft_overlong needs --soft_cache_length below --soft_max_length "
                f"({self.soft_max_length}; unset, --max_completion_length), got {self.soft_cache_length}")

    def __call__(self, completions: list[str], response_token_ids: list, **kwargs) -> list[float]:
        expected = self.soft_max_length - self.soft_cache_length
        return [min(-(len(ids) - expected) / self.soft_cache_length, 0) for ids in response_token_ids]


# ColossalChat's default response_format_tags (examples/training_scripts/train_ppo.py, train_grpo.py).
COLOSSAL_FORMAT_TAGS = {
    "think_start": {"text": "<think>", "num_occur": 1},
    "think_end": {"text": "</think>", "num_occur": 1},
    "answer_start": {"text": "<answer>", "num_occur": 1},
    "answer_end": {"text": "</answer>", "num_occur": 1},
}


def colossal_format_ok(text: str, tags: dict) -> bool:
    """ColossalChat's ``validate_response_structure``: each tag occurs ``num_occur`` times, the first
    occurrences are in the order think_start, think_end, answer_start, answer_end, and the text ends with the
    answer-end tag (its first occurrence)."""
    positions = {}
    valid = True
    for name, tag in tags.items():
        positions[name] = text.find(tag["text"])
        if text.count(tag["text"]) != tag["num_occur"]:
            valid = False
    if not (positions["think_start"] <= positions["think_end"] <= positions["answer_start"]
            <= positions["answer_end"]):
        valid = False
    return valid and len(text) - positions["answer_end"] == len(tags["answer_end"]["text"])


def colossal_final_answer(text: str) -> str | None:
    """The last ``<answer>…</answer>``'s content, stripped (ColossalChat's ``extract_solution``)."""
    matches = list(_ANSWER_TAG.finditer(text))
    return matches[-1].group(1).strip() if matches else None


def response_format_tags(args) -> dict:
    """--template_config's ``response_format_tags`` (ColossalChat's conversation template config), else its
    defaults. Each of think_start, think_end, answer_start, answer_end needs ``text`` and ``num_occur``."""
    path = getattr(args, "template_config", None) if args is not None else None
    tags = None
    if path and Path(path).is_file():
        tags = json.loads(Path(path).read_text()).get("response_format_tags")
    if tags is None:
        return COLOSSAL_FORMAT_TAGS
    missing = [name for name in COLOSSAL_FORMAT_TAGS if not isinstance(tags.get(name), dict)
               or not {"text", "num_occur"} <= set(tags[name])]
    if missing:
        raise AlignkitError(f"--template_config {path}: response_format_tags needs {', '.join(missing)} with text "
                            "and num_occur (ColossalChat's reward functions read all four)")
    return tags


class ColossalVerifiableReward(ORM):
    """ColossalChat's ``math_competition_reward_fn`` (``integer_answer`` False) and ``gsm8k_reward_fn`` (True)."""

    integer_answer = False

    def __init__(self, args=None, **kwargs):
        super().__init__(args)
        self.tags = response_format_tags(args)
        self.warned = False

    def __call__(self, completions: list[str], **kwargs) -> list[float]:
        answers = kwargs.get("gt_answer")
        if answers is None:
            if not self.warned:
                logger.warning("%s: the prompts have no gt_answer column, so every completion scores 0 (as in "
                               "ColossalChat)", type(self).__name__)
                self.warned = True
            answers = [None] * len(completions)
        return [self.score(text, answer) for text, answer in zip(completions, answers)]

    def score(self, text: str, gt_answer) -> float:
        if gt_answer is None:
            return 0.0
        answer = colossal_final_answer(text)
        if self.integer_answer:
            try:
                int(answer.strip())
            except (AttributeError, ValueError):
                return 0.0
        if not colossal_format_ok(text, self.tags):
            return 0.0
        return 10.0 if answer is not None and _blank_free(gt_answer) == _blank_free(answer) else 1.0


def _blank_free(value) -> str:
    return str(value).strip().replace(" ", "").lower()


class ColossalGsm8kReward(ColossalVerifiableReward):
    integer_answer = True


# ms-swift's names (its ``orms`` table), then the built-in task's. A plugin file may add to or replace these.
orms: dict[str, type] = {
    "accuracy": MathAccuracy,
    "format": Format,
    "react_format": ReActFormat,
    "cosine": CosineReward,
    "repetition": RepetitionPenalty,
    "soft_overlong": SoftOverlong,
    "gsm8k_reward_fn": ColossalGsm8kReward,  # ColossalChat's (coati/utils/reward_score)
    "math_competition_reward_fn": ColossalVerifiableReward,
}
ARITH_REWARD_FUNCS = {"arith_accuracy": arith_accuracy, "arith_format": arith_format}
# ms-swift's other entries, with why they are not here.
UNSUPPORTED_REWARD_FUNCS = {
    "toolbench": "ms-swift's ToolBench ReAct scorer (ROUGE-L on action inputs) is not built in; load it from a "
                 "--external_plugins file",
    "math": "ms-swift's MathORM (sympy LaTeX comparison of \\boxed answers) is not built in; use accuracy "
            "(math-verify), which covers it",
}
