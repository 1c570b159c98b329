"""Packed and prefix-shared log-probs equal the padded path's, gradients too, to 1e-5."""

import pytest
import torch

from alignkit.data.collate import PairCollator, SequenceCollator
from alignkit.data.template import IGNORE_INDEX, Encoded
from alignkit.models.logprobs import forward_logps
from alignkit.models.packing import Layout, pack, packed_forward_logps, token_logps


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
@pytest.mark.parametrize("share_prefixes", [True, False])
def test_packed_logps_and_grads_match_padded(tiny_model_dir, attn, pairs, share_prefixes):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn)
    items = pair_items()
    if pairs:
        batch = PairCollator(0)(items)
    else:  # an SFT-like batch: sequences in any order
        sequences = [(i, e) for i, pair in reversed(items) for e in pair]
        batch = SequenceCollator(0)(sequences)

    padded, padded_counts = forward_logps(model, batch)
    (padded * torch.linspace(1, 2, len(padded))).sum().backward()
    padded_grads = grads_of(model)
    model.zero_grad()
    packed, packed_counts = packed_forward_logps(model, batch, share_prefixes=share_prefixes)
    (packed * torch.linspace(1, 2, len(packed))).sum().backward()

    assert packed_counts.tolist() == padded_counts.tolist()
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)
    for a, p in zip(padded_grads, model.parameters()):
        torch.testing.assert_close(p.grad, a, rtol=1e-5, atol=1e-5)
    mean, _ = packed_forward_logps(model, batch, share_prefixes=share_prefixes, average=True)
    torch.testing.assert_close(mean, padded.detach() / padded_counts, rtol=1e-5, atol=1e-5)


def sequences_of(batch):
    return [ids[: int(m.sum())].tolist() for ids, m in zip(batch.input_ids, batch.attention_mask)]


def test_prefix_sharing_holds_each_common_prefix_once_and_masks_to_ancestors():
    batch = PairCollator(0)(pair_items())
    seqs = sequences_of(batch)
    packed = pack(batch, share_prefixes=True)
    distinct_prefixes = {tuple(s[:k]) for s in seqs for k in range(1, len(s) + 1)}
    assert packed.input_ids.shape[0] == 1 and packed.num_tokens == len(distinct_prefixes)
    assert packed.num_tokens < int(batch.attention_mask.sum()) - 25  # pairs 0-2 share 9, 11, 6 tokens and more
    # Every token sees exactly one sequence's beginning, ending with itself, at its own position.
    for node in range(packed.num_tokens):
        visible = packed.attention_mask[0, 0, node].nonzero().flatten()
        prefix = packed.input_ids[0, visible].tolist()
        assert tuple(prefix) in distinct_prefixes
        assert visible[-1] == node and packed.position_ids[0, node] == len(prefix) - 1
    # The rejected answer of pair 0 never sees the chosen one: no visible set holds both 10 and 20.
    assert not any({10, 20} <= set(packed.input_ids[0, packed.attention_mask[0, 0, n]].tolist())
                   for n in range(packed.num_tokens))


def test_rows_are_split_at_the_token_budget_and_plain_packing_keeps_every_token():
    batch = PairCollator(0)(pair_items())
    seqs = sequences_of(batch)
    small = pack(batch, share_prefixes=True, row_tokens=16)
    assert small.input_ids.shape[1] <= 16 and small.input_ids.shape[0] > 1
    plain = pack(batch, share_prefixes=False)
    assert plain.num_tokens == sum(map(len, seqs))
    assert plain.input_ids.shape[1] == max(map(len, seqs))  # first-fit into rows of the longest sequence
    assert plain.input_ids.shape[0] < len(seqs)


def test_token_logps_matches_log_softmax_gather_with_chunks(monkeypatch):
    monkeypatch.setattr("alignkit.models.packing.CHUNK", 3)
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


@pytest.mark.parametrize("share_prefixes", [True, False])
def test_ld_dpo_weights_packed_equal_padded(tiny_model_dir, share_prefixes):
    """LD-DPO weighs each pair's tokens beyond the shorter answer by alpha: the packed path gives the padded
    path's weighted log-probs (pairs 1 and 2 have answers of different lengths, pair 2 one inside the other)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    batch = PairCollator(0)(pair_items())
    padded, counts = forward_logps(model, batch, ld_alpha=0.3)
    packed, packed_counts = packed_forward_logps(model, batch, share_prefixes=share_prefixes, ld_alpha=0.3)
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)
    assert packed_counts.tolist() == counts.tolist()
    plain, _ = forward_logps(model, batch)
    assert not torch.allclose(padded, plain)  # the weights did something


def test_layout_runs_padded_for_pixel_inputs_and_unsupported_attention(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    batch = PairCollator(0)(pair_items())
    calls = []
    monkeypatch.setattr("alignkit.models.packing.packed_forward_logps", lambda *a, **k: calls.append("packed"))
    monkeypatch.setattr("alignkit.models.packing.forward_logps", lambda *a, **k: calls.append("padded"))
    layout = Layout(padding_free=True, prefix_sharing=True)
    layout.logps(model, batch)
    batch.model_inputs = {"pixel_values": torch.zeros(1)}
    layout.logps(model, batch)
    batch.model_inputs = None
    model.config._attn_implementation = "paged_attention"  # takes neither a custom mask nor packed positions
    layout.logps(model, batch)
    Layout().logps(model, batch)
    assert calls == ["packed", "padded", "padded", "padded"]


@pytest.mark.parametrize("share_prefixes", [True, False])
def test_transformers_without_mask_keep_get_every_logit_then_the_kept_ones(tiny_model_dir, share_prefixes,
                                                                          monkeypatch):
    """transformers 5.17 and earlier take no 2-D boolean ``logits_to_keep`` (the H200 image has 5.17): the packed
    path then asks for every position's logits and keeps the labelled ones itself, with the same numbers."""
    from transformers import AutoModelForCausalLM

    from alignkit.models import packing

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    batch = PairCollator(0)(pair_items())
    expected, _ = packed_forward_logps(model, batch, share_prefixes=share_prefixes)
    monkeypatch.setattr(packing, "_KEEPS_BY_MASK", [False])
    asked = []
    original = model.forward
    monkeypatch.setattr(model, "forward", lambda **kw: asked.append(kw["logits_to_keep"]) or original(**kw))
    got, _ = packed_forward_logps(model, batch, share_prefixes=share_prefixes)
    assert asked == [0]
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_the_mask_keep_probe_answers_for_this_transformers():
    from alignkit.models import packing

    packing._KEEPS_BY_MASK.clear()
    assert packing.keeps_by_mask() is True  # the tested stack (transformers 5.25) slices by the mask
