"""The GRPO benchmark's reward, one file that alignkit (``--reward_funcs bench/peers/grpo_reward.py:arith_reward``)
and TRL (``reward_funcs=[arith_reward]``) both import and call, so both score the same way and both leave the same
record of the work they did.

The score is the built-in arithmetic task's (``alignkit.algorithms.reward_funcs.arith_accuracy``): 1.0 when the
completion's first ``Answer: <integer>`` equals the row's ``solution``, else 0.0. Written here with the standard
library alone, as the TRL environment has no alignkit.

Each call appends one line to the JSONL file named by ``BENCH_REWARD_LOG`` (when set): how many completions it
scored, each one's prompt (the user turn) and its length in tokens. bench/grpo_accounting.py reads it back to check
that every framework sampled the benchmark's prompts, groups and lengths at every step.
"""

from __future__ import annotations

import json
import os
import re

# "Answer: 85" and "Answer:85"; not "Answer: 85.5" (as alignkit.data.builtin's _ANSWER).
_ANSWER = re.compile(r"Answer:[ \t]*(-?\d+)(?![\d.]*\.\d)")


def _text(completion) -> str:
    # alignkit passes the completion as text, TRL (conversational prompts) as [{"role": "assistant", "content": ...}].
    return completion if isinstance(completion, str) else completion[-1]["content"]


def _user_turn(prompt) -> str:
    return prompt if isinstance(prompt, str) else next(m["content"] for m in prompt if m["role"] == "user")


def arith_reward(completions: list, solution: list[str], prompts: list, **kwargs) -> list[float]:
    """1.0 when the first ``Answer: N`` of the completion is the solution, else 0.0."""
    rewards = []
    for completion, answer in zip(completions, solution):
        match = _ANSWER.search(_text(completion))
        rewards.append(float(match is not None and int(match.group(1)) == int(answer)))
    log = os.environ.get("BENCH_REWARD_LOG")
    if log:
        # Token ids of each completion: TRL names them completion_ids, alignkit response_token_ids.
        ids = kwargs.get("completion_ids", kwargs.get("response_token_ids"))
        record = {"completions": len(completions), "prompts": [_user_turn(p) for p in prompts],
                  "lengths": [len(x) for x in ids] if ids is not None else None}
        with open(log, "a") as f:
            f.write(json.dumps(record) + "\n")
    return rewards
