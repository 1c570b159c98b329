"""--packing: rows packed into fewer, fuller rows (fewer steps per epoch), labels exactly as encoded, and a
packed row's sequences never seeing each other: per-sample log-probs equal the unpacked ones."""

import json
import math
from pathlib import Path

import pytest
import torch

from alignkit.cli import main
from alignkit.config.checks import check_data_flags
from alignkit.config.run import RunArguments
from alignkit.data.collate import PairCollator, SequenceCollator
from alignkit.data.packing import Pack, pack_rows, plan_packs, row_ids_of, row_length, unpacked
from alignkit.data.template import IGNORE_INDEX, Encoded
from alignkit.errors import AlignkitError
from alignkit.models.logprobs import forward_logps
from alignkit.models.packing import Layout, pack


def encoded(ids, first_trained):
    return Encoded(list(ids), [IGNORE_INDEX] * first_trained + list(ids[first_trained:]))


def sft_items(lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(i, encoded(torch.randint(3, 300, (n,), generator=generator).tolist(), n // 2))
            for i, n in enumerate(lengths)]


def test_best_fit_decreasing_packs_the_worked_example():
    # 700 → A; 500 → B; 400 → B (fullest that fits, 900); 300 → A (1000); 100 → B (1000).
    assert plan_packs([700, 500, 400, 300, 100], 1000) == [[0, 3], [1, 2, 4]]
    # sequential keeps the order, closing a pack when the next row does not fit.
    assert plan_packs([700, 500, 400, 300, 100], 1000, "sequential") == [[0], [1, 2], [3, 4]]
    # A row longer than the pack is a pack of its own.
    assert plan_packs([1200, 10], 1000) == [[0], [1]]


def test_binpack_carries_a_chunks_last_pack_into_the_next_chunk():
    lengths = [600] * 1000 + [400]  # the first chunk's 1000 rows fit one to a pack; row 1000 is in the next chunk
    plan = plan_packs(lengths, 1000)
    assert sorted(i for p in plan for i in p) == list(range(1001))  # every row once
    assert all(sum(lengths[i] for i in p) <= 1000 for p in plan)
    # The first chunk's last pack is carried over and takes the 400: 1000 packs, not 1001.
    assert len(plan) == 1000 and sorted(plan[-1]) == [999, 1000]


def test_packs_hold_every_row_once_with_its_labels_unchanged():
    items = sft_items([30, 5, 17, 60, 9, 44, 12, 25])
    packs = pack_rows(items, packing_length=64)
    assert len(packs) < len(items)
    assert all(sum(row_length(e) for _, e in p.items) <= 64 for _, p in packs)
    flat = unpacked(packs)
    assert sorted(i for i, _ in flat) == list(range(len(items)))  # every sample trained exactly once per epoch
    for i, e in flat:
        assert e.input_ids == items[i][1].input_ids and e.labels == items[i][1].labels
    # A collated pack is the batch of its rows, each row's -100 mask as encoded.
    index, first = packs[0]
    batch = SequenceCollator(0)([(index, first)])
    assert batch.row_ids == [i for i, _ in first.items] == row_ids_of((index, first))
    for row, (_, e) in enumerate(first.items):
        n = len(e.input_ids)
        assert batch.labels[row, :n].tolist() == e.labels
        assert (batch.labels[row, n:] == IGNORE_INDEX).all()


def test_a_pairs_budget_is_both_answers_and_pairs_stay_whole():
    items = [(i, (encoded([5] * n, 2), encoded([6] * (n + 1), 2))) for i, n in enumerate([10, 20, 30, 5])]
    assert row_length(items[1][1]) == 41
    packs = pack_rows(items, packing_length=70)
    # 61 → A; 41 → B; 21 → B (62); 11 fits neither (72, 73) → C.
    assert [[i for i, _ in p.items] for _, p in packs] == [[2], [1, 0], [3]]
    batch = PairCollator(0)([packs[1]])
    assert batch.row_ids == [1, 0] and batch.input_ids.shape[0] == 4  # chosen 1, chosen 0, rejected 1, rejected 0


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_pack_runs_as_one_row_and_each_sample_gets_its_unpacked_logps(tiny_model_dir, attn):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn)
    items = sft_items([40, 23, 31, 9, 17])
    (index, one), *_ = pack_rows(items, packing_length=128)
    assert len(one.items) == 5
    batch = SequenceCollator(0)([(index, one)])
    layout = Layout(padding_free=True, row_tokens=128)
    packed = layout.pack(batch)
    assert packed.input_ids.shape[0] == 1  # one row holding every sample
    assert packed.position_ids[0].tolist().count(0) == 5  # positions restart at each sample
    logps, counts = layout.logps(model, batch)
    for row, (i, e) in enumerate(one.items):
        alone, alone_count = forward_logps(model, SequenceCollator(0)([(i, e)]))
        assert int(counts[row]) == int(alone_count[0]) == sum(label != IGNORE_INDEX for label in e.labels[1:])
        torch.testing.assert_close(logps[row], alone[0], rtol=1e-5, atol=1e-5)


def test_packed_pairs_with_shared_prompts_match_each_pair_alone(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    prompt = list(range(10, 30))
    items = [(i, (encoded(prompt[: 10 + i] + [40 + i, 41], 10 + i), encoded(prompt[: 10 + i] + [50 + i], 10 + i)))
             for i in range(4)]
    (index, one), = pack_rows(items, packing_length=256)
    batch = PairCollator(0)([(index, one)])
    layout = Layout(padding_free=True, prefix_sharing=True, row_tokens=256)
    assert layout.pack(batch).input_ids.shape[0] == 1
    logps, _ = layout.logps(model, batch)
    for position, (i, pair) in enumerate(one.items):
        alone, _ = forward_logps(model, PairCollator(0)([(i, pair)]))
        torch.testing.assert_close(logps[[position, position + 4]], alone, rtol=1e-5, atol=1e-5)


def test_without_row_tokens_the_batch_is_laid_out_as_before():
    items = sft_items([40, 23, 31])
    batch = SequenceCollator(0)(items)
    assert pack(batch, share_prefixes=False).input_ids.shape == (3, 40)  # rows of the longest sequence's length
    assert Layout(padding_free=True, row_tokens=128).pack(batch).input_ids.shape == (1, 94)


def rows_file(tmp_path: Path, n: int) -> str:
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"What is {a} + {a + 1}?"},
                                                     {"role": "assistant", "content": f"Answer: {2 * a + 1}"}]}) + "\n"
                            for a in range(n)))
    return str(path)


def test_packing_changes_the_steps_per_epoch_as_computed(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from alignkit.data.loading import load_dataset_spec
    from alignkit.data.template import ChatEncoder

    data = rows_file(tmp_path, 24)
    encoder = ChatEncoder(AutoTokenizer.from_pretrained(tiny_model_dir), max_length=160)
    lengths = [len(encoder.encode_conversation(row).input_ids) for row in load_dataset_spec(data, "sft", seed=42)]
    packs = len(plan_packs(lengths, 160))
    assert packs < len(lengths) / 3  # rows of ~30 tokens: about five to a pack
    out = tmp_path / "out"
    code = main(["sft", "--model", tiny_model_dir, "--dataset", data, "--packing", "true", "--max_length", "160",
                 "--num_train_epochs", "1", "--batch_size", "1", "--gradient_accumulation_steps", "2",
                 "--output_dir", str(out), "--dtype", "fp32", "--report_to", "none", "--save_steps", "1000"])
    assert code == 0
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    steps = math.ceil(packs / 2)
    assert [p.name for p in run_dir.glob("checkpoint-*")] == [f"checkpoint-{steps}"]
    saved = json.loads((run_dir / f"checkpoint-{steps}" / "args.json").read_text())
    assert saved["train_rows"] == 24 and saved["train_packs"] == packs


@pytest.mark.parametrize("method", ["dpo", "rm"])
def test_pair_methods_train_on_packs(tiny_model_dir, tmp_path, method):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"What is {a} + 1?"},
                                                      {"role": "assistant", "content": f"Answer: {a + 1}"}],
                                         "rejected_response": f"Answer: {a + 2}"}) + "\n" for a in range(12)))
    out = tmp_path / "out"
    code = main(["rlhf", "--rlhf_type", method, "--model", tiny_model_dir, "--dataset", str(pairs), "--packing", "true",
                 "--max_length", "128", "--packing_length", "256", "--num_train_epochs", "1", "--output_dir",
                 str(out), "--dtype", "fp32", "--report_to", "none", "--logging_steps", "1"])
    assert code == 0
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    (checkpoint,) = run_dir.glob("checkpoint-*")
    saved = json.loads((checkpoint / "args.json").read_text())
    assert saved["train_rows"] == 12 and int(checkpoint.name.split("-")[1]) == saved["train_packs"] < 12
    if method == "dpo":  # step 1 of DPO: policy == reference on every pair of the pack
        first = json.loads((run_dir / "logging.jsonl").read_text().splitlines()[0])
        assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)


def test_packing_is_refused_where_it_has_no_meaning():
    for method, message in (("kto", "KTO estimates its KL term"), ("ppo", "rlhf_type ppo is not supported")):
        with pytest.raises(AlignkitError, match=message):
            check_data_flags(RunArguments(packing=True, rlhf_type=method), method)
    with pytest.raises(AlignkitError, match="drop --padding_free false"):
        check_data_flags(RunArguments(packing=True, padding_free=False), "grpo")
    for method in ("sft", "dpo", "cpo", "simpo", "orpo", "rm", "grpo"):
        check_data_flags(RunArguments(packing=True), method)


def test_pack_is_a_plain_tuple_for_the_data_fingerprint():
    from alignkit.training.resume import data_fingerprint

    items = sft_items([5, 6, 7])
    assert data_fingerprint(pack_rows(items, 64)) == data_fingerprint(pack_rows(items, 64))
    assert data_fingerprint(pack_rows(items, 64)) != data_fingerprint(pack_rows(items, 12))
    assert isinstance(pack_rows(items, 64)[0][1], Pack)
