"""The DPO benchmark's accounting (bench/accounting.py): every framework's optimizer step must have consumed the
benchmark's 4 pairs by its own records, or the benchmark stops instead of printing a ratio.

The TRL and ms-swift records are what the peer scripts wrote after real short runs in their environments
(bench/.venvs, which CI does not build): ``swift_default_accumulation.json`` is ms-swift 4.6 run without
``--gradient_accumulation_steps``, which it then fills in as 4 (16 pairs per step): the case that inflated the
README's ratios about 4x. The alignkit side is a real run on the tiny model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RECORDS = Path(__file__).parent / "fixtures" / "bench"
sys.path.insert(0, str(ROOT / "bench"))

from accounting import AccountingError, StepAccounting, from_alignkit_run, from_hf_trainer, verify  # noqa: E402


def record(name: str) -> dict:
    return json.loads((RECORDS / name).read_text())["accounting"]


@pytest.mark.parametrize("name", ["trl.json", "swift.json"])
def test_peer_runs_as_the_benchmark_configures_them_take_4_pairs_per_step(name):
    accounting = from_hf_trainer(record(name))
    assert accounting.consumed_pairs() == pytest.approx([4.0] * len(accounting.epochs), abs=0.1)
    assert verify(accounting, 4, who=name) == 4


def test_ms_swift_left_to_its_own_accumulation_is_refused():
    accounting = from_hf_trainer(record("swift_default_accumulation.json"))
    assert accounting.gradient_accumulation == 4
    assert accounting.consumed_pairs()[0] == pytest.approx(16, abs=0.1)
    with pytest.raises(AccountingError, match="configured for 16 pairs"):
        verify(accounting, 4, who="swift")


def test_a_step_that_consumed_other_work_than_configured_is_refused():
    # Configured for 4 but the epoch counter says the second step took 8 (a trainer that double-steps).
    accounting = StepAccounting(train_rows=48, per_device_batch=4, gradient_accumulation=1, processes=1,
                                epochs=[4 / 48, 12 / 48, 16 / 48])
    with pytest.raises(AccountingError, match="optimizer step 2 consumed 8.00 pairs"):
        verify(accounting, 4, who="peer")
    with pytest.raises(AccountingError, match="no epoch counter"):
        verify(StepAccounting(48, 4, 1, 1, []), 4, who="peer")
    with pytest.raises(AccountingError, match="not whole steps"):
        verify(StepAccounting(46, 4, 1, 1, [4 / 46]), 4, who="peer")


def _alignkit_dpo(model_dir: str, data: Path, out: Path, *extra: str) -> Path:
    from alignkit.cli import main

    assert main(["rlhf", "--rlhf_type", "dpo", "--model", model_dir, "--dataset", str(data), "--train_type", "full",
                 "--max_steps", "3", "--batch_size", "2", "--logging_steps", "1", "--max_length", "64",
                 "--save_steps", "1000", "--report_to", "none", "--output_dir", str(out), *extra]) == 0
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return run_dir


def test_alignkit_run_is_read_back_from_its_own_args_and_log(tiny_model_dir, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"What is {i} + 1?"},
                          {"role": "assistant", "content": f"Answer: {i + 1}"}],
             "rejected_response": f"Answer: {i}"} for i in range(8)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    plain = from_alignkit_run(_alignkit_dpo(tiny_model_dir, data, tmp_path / "plain"))
    assert (plain.train_rows, plain.configured_pairs) == (8, 2)
    assert verify(plain, 2, who="alignkit") == 2
    with pytest.raises(AccountingError, match="configured for 2 pairs"):
        verify(plain, 4, who="alignkit")

    accumulated = from_alignkit_run(_alignkit_dpo(tiny_model_dir, data, tmp_path / "acc",
                                                  "--gradient_accumulation_steps", "2"))
    assert accumulated.consumed_pairs() == pytest.approx([4.0, 4.0, 4.0])
    assert verify(accumulated, 4, who="alignkit") == 4
