"""The GRPO benchmark's rewards, one file that alignkit (``--reward_funcs bench/peers/grpo_reward.py:<name>``) and
TRL (``reward_funcs=[<function>]``) both import and call, so both score the same way and both leave the same record
of the work they did. The benchmark passes one of them (``--reward`` of bench/grpo_run.py):

- ``arith_reward``: the built-in arithmetic task's accuracy (``alignkit.algorithms.reward_funcs.arith_accuracy``),
  1.0 when the completion's first ``Answer: <integer>`` equals the row's ``solution``, else 0.0. The base
  SmolLM2-135M-Instruct at temperature 1 almost never answers in that form, so in a short benchmark every reward is
  0, every group's advantages are 0 and the loss carries no signal.
- ``arith_partial_reward`` (the default): the same 1.0 for ``Answer: <solution>``; otherwise partial credit for
  how close the completion's last number x is to the solution s, 0.5 / (1 + |x − s|), and 0.0 when it holds no
  number. The base model mostly ends on a number (its own result, or an operand it repeats), so the scores differ
  within a group of G completions and the advantages carry signal from the first step; the credit stays at most
  0.5, below a correct answer in the asked-for form, and 0.5 only for the exact solution:

  ====================================  ======  ==============================
  completion (solution 60)              reward  why
  ====================================  ======  ==============================
  ``Answer: 60``                        1.0     the asked-for form, correct
  ``22 + 38 = 60``                      0.5     last number 60, |x − s| = 0
  ``22 + 38 = 61.5``                    0.2     0.5 / (1 + 1.5)
  ``Answer: 59``                        0.25    last number 59: 0.5 / 2
  ``22 + 38 = 79``                      0.025   0.5 / (1 + 19)
  ``I cannot say.``                     0.0     no number
  ====================================  ======  ==============================

Both are written with the standard library alone, as the TRL environment has no alignkit.

Each call appends one line to the JSONL file named by ``BENCH_REWARD_LOG`` (when set): how many completions it
scored, each one's prompt (the user turn), its length in tokens and its reward. bench/grpo_accounting.py reads it
back to check that every framework sampled the benchmark's prompts, groups and lengths at every step;
bench/grpo_run.py reports the rewards' mean and how many groups had rewards that differ.
"""

from __future__ import annotations

import json
import os
import re

# "Answer: 85" and "Answer:85"; not "Answer: 85.5" (as alignkit.data.builtin's _ANSWER).
_ANSWER = re.compile(r"Answer:[ \t]*(-?\d+)(?![\d.]*\.\d)")
# A number: "60", "-3", "61.5"; the "-" of "69-11" is the operator, not a sign.
_NUMBER = re.compile(r"(?:(?<![\w.])-)?\d+(?:\.\d+)?")


def _text(completion) -> str:
    # alignkit passes the completion as text, TRL (conversational prompts) as [{"role": "assistant", "content": ...}].
    return completion if isinstance(completion, str) else completion[-1]["content"]


def _user_turn(prompt) -> str:
    return prompt if isinstance(prompt, str) else next(m["content"] for m in prompt if m["role"] == "user")


def _correct(text: str, answer: str) -> bool:
    match = _ANSWER.search(text)
    return match is not None and int(match.group(1)) == int(answer)


def _record(completions: list, prompts: list, rewards: list[float], kwargs: dict) -> None:
    """One line per call to BENCH_REWARD_LOG: each public reward function calls this once."""
    log = os.environ.get("BENCH_REWARD_LOG")
    if not log:
        return
    # Token ids of each completion: TRL names them completion_ids, alignkit response_token_ids.
    ids = kwargs.get("completion_ids", kwargs.get("response_token_ids"))
    record = {"completions": len(completions), "prompts": [_user_turn(p) for p in prompts],
              "lengths": [len(x) for x in ids] if ids is not None else None, "rewards": rewards}
    with open(log, "a") as f:
        f.write(json.dumps(record) + "\n")


def arith_reward(completions: list, solution: list[str], prompts: list, **kwargs) -> list[float]:
    """1.0 when the first ``Answer: N`` of the completion is the solution, else 0.0."""
    rewards = [float(_correct(_text(c), answer)) for c, answer in zip(completions, solution)]
    _record(completions, prompts, rewards, kwargs)
    return rewards


def arith_partial_reward(completions: list, solution: list[str], prompts: list, **kwargs) -> list[float]:
    """1.0 when the first ``Answer: N`` of the completion is the solution; else 0.5 / (1 + |x − solution|) for the
    completion's last number x; 0.0 without a number (the table in the module's docstring)."""
    rewards = []
    for completion, answer in zip(completions, solution):
        text = _text(completion)
        numbers = _NUMBER.findall(text)
        if _correct(text, answer):
            rewards.append(1.0)
        elif numbers:
            rewards.append(0.5 / (1.0 + abs(float(numbers[-1]) - float(answer))))
        else:
            rewards.append(0.0)
    _record(completions, prompts, rewards, kwargs)
    return rewards
