"""Where an answer ends: the ids that stop generation, written once for every generate path."""

from __future__ import annotations


def eos_token_ids(model, tokenizer) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set() if eos is None else ({eos} if isinstance(eos, int) else set(eos))
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
