"""Packed and prefix-shared log-probs equal the padded path's, gradients too, to 1e-5."""

import pytest
import torch

from alignkit.data.collate import PairCollator, SequenceCollator
from alignkit.data.template import IGNORE_INDEX, Encoded
from alignkit.logprobs import forward_logps
from alignkit.packing import pack, packed_forward_logps, token_logps


def encoded(ids, first_trained):
    return Encoded(list(ids), [IGNORE_INDEX] * first_trained + list(ids[first_trained:]))


def pair_items():
    torch.manual_seed(0)
    prompt = torch.randint(3, 300, (9,)).tolist()
    short_prompt = prompt[:4]
    items = [
        # answers diverge at their first token
        (0, (encoded(prompt + [10, 11, 12], 9), encoded(prompt + [20, 21], 9))),
        # answers share two tokens, then diverge: the shared trained tokens count for both
        (1, (encoded(prompt + [7, 8, 30, 31], 9), encoded(prompt + [7, 8, 40], 9))),
        # the chosen answer is a prefix of the rejected one
        (2, (encoded(short_prompt + [50, 51], 4), encoded(short_prompt + [50, 51, 52, 53], 4))),
        # a much shorter pair: packed into a row beside a longer unit
        (3, (encoded([5, 6, 60], 2), encoded([5, 6, 61], 2))),
    ]
    return items


def grads_of(model):
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("pairs", [True, False])
def test_packed_logps_and_grads_match_padded(tiny_model_dir, attn, pairs):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn)
    items = pair_items()
    if pairs:
        batch = PairCollator(0)(items)
    else:
        sequences = [(i, e) for i, pair in items for e in pair]
        batch = SequenceCollator(0)(sequences)

    padded, padded_counts = forward_logps(model, batch)
    (padded * torch.linspace(1, 2, len(padded))).sum().backward()
    padded_grads = grads_of(model)
    model.zero_grad()
    packed, packed_counts = packed_forward_logps(model, batch, pairs=pairs)
    (packed * torch.linspace(1, 2, len(packed))).sum().backward()

    assert packed_counts.tolist() == padded_counts.tolist()
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)
    for a, p in zip(padded_grads, model.parameters()):
        torch.testing.assert_close(p.grad, a, rtol=1e-5, atol=1e-5)
    mean, _ = packed_forward_logps(model, batch, pairs=pairs, average=True)
    torch.testing.assert_close(mean, padded.detach() / padded_counts, rtol=1e-5, atol=1e-5)


def test_prefix_sharing_layout_and_token_savings():
    items = pair_items()
    batch = PairCollator(0)(items)
    packed = pack(batch, pairs=True)
    padded_tokens = int(batch.attention_mask.sum())
    # Shared prefixes: 9, 11, 6 and 2 tokens are held once instead of twice.
    assert packed.num_tokens == padded_tokens - (9 + 11 + 6 + 2)
    assert packed.input_ids.shape[1] == 9 + 4 + 3 - 2  # the longest unit: pair 1 (11 shared + 2 + 1)
    # Pair 0's unit: the rejected answer (positions 12, 13) never sees the chosen answer (9, 10, 11).
    row = next(r for r in range(packed.input_ids.shape[0]) if packed.input_ids[r, 9] == 10)
    mask = packed.attention_mask[row, 0]
    assert packed.position_ids[row, :14].tolist() == list(range(12)) + [9, 10]
    assert not mask[12, 9:12].any() and mask[12, :9].all() and mask[13, 12]
    assert mask[11, :12].all() and not mask[11, 12:].any()


def test_token_logps_matches_log_softmax_gather_with_chunks(monkeypatch):
    monkeypatch.setattr("alignkit.packing.CHUNK", 3)
    torch.manual_seed(0)
    logits = torch.randn(7, 11, requires_grad=True)
    rows = torch.tensor([0, 3, 3, 6, 5])
    ids = torch.tensor([1, 2, 9, 0, 10])
    fast = token_logps(logits, rows, ids)
    (fast * torch.arange(1.0, 6.0)).sum().backward()
    fast_grad = logits.grad.clone()
    logits.grad = None
    naive = torch.log_softmax(logits, -1)[rows, ids]
    (naive * torch.arange(1.0, 6.0)).sum().backward()
    torch.testing.assert_close(fast, naive)
    torch.testing.assert_close(fast_grad, logits.grad)
