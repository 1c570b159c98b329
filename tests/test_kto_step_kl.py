"""KTO's reference point z is one number per optimizer step, from mismatched pairs across the whole step: one row
per micro-batch accumulated over 4 gives the loss, KL and gradients of one micro-batch of 4 rows."""

import copy
import json
from pathlib import Path

import pytest
import torch

from alignkit.algorithms.kto import KTO, kl_micro_batches
from alignkit.cli import main
from alignkit.data.collate import EncodedUnpaired, UnpairedCollator, kl_rows
from alignkit.data.rows import UnpairedRow
from alignkit.data.template import ChatEncoder
from alignkit.models.reference import Reference


class OneProcess:
    """What ``accumulate_gradients`` asks of the runner, for a single process."""

    rank, num_processes = 0, 1
    data_rank, data_processes = 0, 1

    def __init__(self):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        # accelerate keeps its precision in a process-wide singleton: a run earlier in this process (bf16
        # autocast under --dtype auto) would otherwise carry over and round the two splits differently.
        AcceleratorState._reset_state()
        self.accelerator = Accelerator(cpu=True, mixed_precision="no")

    def sum_over_processes(self, values):
        return values

    def any_process(self, flag):
        return flag


def unpaired_rows(tiny_model_dir, n=4):
    from alignkit.models.load import load_tokenizer

    encoder = ChatEncoder(load_tokenizer(tiny_model_dir), max_length=128)
    rows = [UnpairedRow([{"role": "user", "content": f"What is {i} + {2 * i}?"}],
                        [{"role": "assistant", "content": f"Answer: {3 * i + i % 2} " + "so " * i}], i % 2 == 0)
            for i in range(n)]
    return [(i, EncodedUnpaired(encoder.encode_unpaired(row), row.label)) for i, row in enumerate(rows)]


@pytest.fixture
def policy_and_reference(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    reference = copy.deepcopy(policy)
    torch.manual_seed(3)
    with torch.no_grad():  # a noisier reference gives the policy's text lower log-probs, so that z > 0
        for parameter in reference.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return policy, Reference(reference)


def one_step(policy, reference, rows, group, batch_size):
    from alignkit.training.loop import accumulate_gradients

    policy.zero_grad()
    algorithm = KTO(beta=0.5, desirable_weight=1.3, reference=reference)
    metrics, problem = accumulate_gradients(policy, algorithm, group, rows, UnpairedCollator(0), OneProcess(), step=1,
                                            batch_size=batch_size)
    assert problem is None
    return metrics, {name: p.grad.clone() for name, p in policy.named_parameters()}


def test_one_row_per_micro_batch_gives_the_loss_kl_and_gradient_of_one_batch_of_four(tiny_model_dir,
                                                                                     policy_and_reference):
    policy, reference = policy_and_reference
    rows = unpaired_rows(tiny_model_dir)
    whole, whole_grads = one_step(policy, reference, rows, [[0, 1, 2, 3]], batch_size=4)
    split, split_grads = one_step(policy, reference, rows, [[0], [1], [2], [3]], batch_size=1)
    halves, halves_grads = one_step(policy, reference, rows, [[0, 1], [2, 3]], batch_size=2)
    assert whole["kl"] > 0.01  # the clamp is not hiding z
    for other, grads in ((split, split_grads), (halves, halves_grads)):
        assert other.keys() == whole.keys()
        for key in ("loss", "kl"):
            assert other[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-6), key
        for name, grad in grads.items():
            torch.testing.assert_close(grad, whole_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    # z is the clamped mean over the step's mismatched pairs, not any one micro-batch's.
    terms = KTO(beta=0.5, reference=reference).kl_terms(policy, UnpairedCollator(0)(kl_rows(rows)))
    assert whole["kl"] == pytest.approx(terms.mean().clamp(min=0).item(), rel=1e-5)


def test_each_process_runs_the_pairs_of_its_own_rows_of_the_step():
    rows = [(i, EncodedUnpaired(encoded, True)) for i, encoded in enumerate(_toy_sequences(4))]
    everything = kl_rows(rows)
    for group, batch_size in (([[0, 1, 2, 3]], 2), ([[0, 1], [2, 3]], 1)):  # 2 processes × 2, 2 × (1 × 2)
        counted = [item for rank in (0, 1)
                   for items, used in kl_micro_batches(group, rows, rank=rank, batch_size=batch_size) if used
                   for item in items]
        assert sorted(counted, key=lambda item: item[0]) == everything
    # A process without a row in a micro-batch runs its first pair uncounted, as the loop runs a weight-0 batch.
    assert kl_micro_batches([[0, 1]], rows[:2], rank=1, batch_size=2) == [(kl_rows(rows[:2])[:1], False)]


def _toy_sequences(n):
    from alignkit.data.template import IGNORE_INDEX, Encoded

    return [Encoded([1, 2 + i, 10 + i], [IGNORE_INDEX, IGNORE_INDEX, 10 + i]) for i in range(n)]


def kto_file(directory: Path, n: int = 8) -> str:
    path = directory / "kto.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                          {"role": "assistant", "content": f"Answer: {a + b + i % 2}"}], "label": i % 2 == 0}
            for i, (a, b) in enumerate([(12, 30), (1, 2), (5, 6), (7, 8), (10, 11), (3, 4), (9, 9), (2, 20)][:n])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def logged(out: Path) -> list[dict]:
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("precompute", ["true", "false"])
def test_the_seeds_batch_of_one_with_accumulation_trains_as_one_batch_of_four(tiny_model_dir, tmp_path, precompute):
    data = kto_file(tmp_path)

    def train(name, batch_size, accumulation, eval_batch_size):
        out = tmp_path / name
        assert main(["rlhf", "--rlhf_type", "kto", "--model", tiny_model_dir, "--dataset", data, "--val_dataset", data,
                     "--max_steps", "3", "--batch_size", str(batch_size), "--gradient_accumulation_steps",
                     str(accumulation), "--eval_batch_size", str(eval_batch_size), "--logging_steps", "1",
                     "--learning_rate", "1e-2", "--lora_dropout", "0", "--output_dir", str(out), "--dtype", "fp32",
                     "--report_to", "none", "--dataset_shuffle", "false",
                     "--precompute_ref_log_probs", precompute]) == 0
        return logged(out)

    whole = train("whole", 4, 1, 4)
    split = train("split", 1, 4, 1)
    steps = [r for r in whole if "loss" in r]
    assert len(steps) == 3 and steps[-1]["kl"] > 0  # after two updates the policy has left the reference
    for mine, theirs in zip(whole, split):
        for key in ("loss", "kl", "rewards/chosen", "rewards/rejected", "eval_loss", "eval_kl"):
            if key in mine:
                assert theirs[key] == pytest.approx(mine[key], rel=1e-4, abs=1e-6), (key, mine, theirs)
