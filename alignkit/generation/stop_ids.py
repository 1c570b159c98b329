"""Where an answer ends: the ids that stop generation in infer, eval, app, deploy and the demo, written once.

(Rollouts of ppo/grpo add the template's end-of-turn token, which their completions must learn to emit:
``alignkit.algorithms.rollout.stop_token_ids``.)
"""

from __future__ import annotations


def answer_stop_ids(model, encoder) -> list[int]:
    """The template's stop ids (``encoder.stop_ids``: a template config's, else the tokenizer's EOS) and the
    model's own EOS ids (its generation config), so an answer ends where either says it does."""
    return sorted({i for i in encoder.stop_ids if i is not None} | eos_token_ids(model, encoder.tokenizer))


def eos_token_ids(model, tokenizer) -> set[int]:
    """The model's generation-config EOS ids and the tokenizer's EOS."""
    eos = model.generation_config.eos_token_id
    ids = set() if eos is None else ({eos} if isinstance(eos, int) else set(eos))
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
