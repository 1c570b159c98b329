"""The LM-head-on-completions fast path equals the naive gather(log_softmax(...)), gradients too."""

import torch

from alignkit.data.collate import Batch
from alignkit.logprobs import forward_logps, sequence_logps


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
