"""The LM-head-on-completions fast path equals the naive gather(log_softmax(...)), gradients too."""

import torch

from alignkit.data.collate import Batch
from alignkit.models.logprobs import forward_logps, length_desensitised_weights, sequence_logps


def naive_logps(logits, labels):
    logits, labels = logits[:, :-1], labels[:, 1:]
    mask = labels != -100
    picked = torch.log_softmax(logits.float(), -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


def test_sequence_logps_matches_naive():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11)
    labels = torch.randint(0, 11, (3, 7))
    labels[:, :3] = -100
    labels[1, 5:] = -100
    logps, counts = sequence_logps(logits, labels)
    torch.testing.assert_close(logps, naive_logps(logits, labels))
    assert counts.tolist() == [4, 2, 4]
    mean, _ = sequence_logps(logits, labels, average=True)
    torch.testing.assert_close(mean, naive_logps(logits, labels) / counts)


def test_forward_logps_keeps_only_needed_positions_and_matches_full_logits(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    input_ids = torch.randint(3, 300, (2, 12))
    labels = input_ids.clone()
    labels[0, :8] = -100
    labels[1, :5] = -100
    batch = Batch(input_ids, torch.ones_like(input_ids), labels, row_ids=[0, 1])

    fast, _ = forward_logps(model, batch)
    fast.sum().backward()
    fast_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    slow = naive_logps(model(input_ids=input_ids).logits, labels)
    slow.sum().backward()
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    for a, p in zip(fast_grads, model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-5, atol=1e-6)


def test_ld_alpha_weights_tokens_beyond_the_shared_length():
    # Pair of completions with 2 and 4 tokens: l_p = 2, so the rejected answer's last two tokens weigh α.
    mask = torch.tensor([[0, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 0]]).bool()
    weights = length_desensitised_weights(mask, 0.25)
    assert weights.tolist() == [[0, 1, 1, 0, 0, 0], [0, 1, 1, 0.25, 0.25, 0]]

    torch.manual_seed(0)
    logits = torch.randn(4, 7, 11)  # B = 2 pairs: rows 0, 1 chosen; rows 2, 3 rejected
    labels = torch.randint(0, 11, (4, 7))
    labels[:, :2] = -100
    labels[0, 4:] = -100  # chosen 0: 2 tokens; rejected 0 (row 2): 5 tokens → l_p = 2
    labels[3, 3:] = -100  # chosen 1 (row 1): 5 tokens; rejected 1: 1 token → l_p = 1
    plain, counts = sequence_logps(logits, labels)
    torch.testing.assert_close(sequence_logps(logits, labels, ld_alpha=1.0)[0], plain)
    per_token = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
    shared_only, ld_counts = sequence_logps(logits, labels, ld_alpha=0.0)
    expected = torch.stack([per_token[0, 1:3].sum(), per_token[1, 1:2].sum(), per_token[2, 1:3].sum(),
                            per_token[3, 1:2].sum()])
    torch.testing.assert_close(shared_only, expected)
    assert torch.equal(ld_counts, counts) and counts.tolist() == [2, 5, 5, 1]
    half, _ = sequence_logps(logits, labels, ld_alpha=0.5)
    torch.testing.assert_close(half, expected + 0.5 * (plain - expected))
