"""`alignkit sft --task_type seq_cls` (ms-swift's sequence classification): the loss is transformers' own for each
--problem_type, a tiny run trains and its checkpoint reloads with transformers and peft, and the task types
alignkit does not train stop with what to use instead."""

import json
import logging
from pathlib import Path

import pytest
import torch

from alignkit.algorithms.seq_cls import SequenceClassification
from alignkit.cli import main
from alignkit.config import RunArguments
from alignkit.config.defaults import resolve
from alignkit.data.collate import ClassificationCollator, EncodedLabelled
from alignkit.data.rows import ClassificationRow
from alignkit.data.template import ChatEncoder
from alignkit.errors import AlignkitError

TEXTS = ["great phone, works well", "broke after a day", "fine value for money", "awful screen",
         "love the battery", "terrible support", "good camera", "bad speaker"]
LABELS = {
    "single_label_classification": (3, [0, 1, 2, 1, 0, 2, 0, 1]),
    "multi_label_classification": (3, [[0], [1, 2], [2], [1], [0, 2], [1], [0], [1, 2]]),
    "regression": (1, [0.9, -0.5, 0.3, -1.0, 1.2, -0.8, 0.7, -0.2]),
}


def classifier(tiny_model_dir, num_labels, problem_type):
    from transformers import AutoModelForSequenceClassification

    from alignkit.models.load import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, num_labels=num_labels, problem_type=problem_type, pad_token_id=tokenizer.pad_token_id)
    return model, tokenizer


@pytest.mark.parametrize("problem_type", list(LABELS))
def test_the_loss_is_transformers_own(tiny_model_dir, problem_type):
    num_labels, labels = LABELS[problem_type]
    model, tokenizer = classifier(tiny_model_dir, num_labels, problem_type)
    encoder = ChatEncoder(tokenizer, max_length=128)
    rows = [ClassificationRow([{"role": "user", "content": text}], label) for text, label in zip(TEXTS, labels)]
    items = [(i, EncodedLabelled(encoder.encode_classified(row), row.label)) for i, row in enumerate(rows)]
    batch = ClassificationCollator(tokenizer.pad_token_id, problem_type=problem_type, num_labels=num_labels)(items)
    assert batch.sequences.attention_mask.sum(-1).unique().numel() > 1  # rows of different lengths: real padding
    ours, metrics = SequenceClassification(num_labels, problem_type).loss(model, batch)
    theirs = model(input_ids=batch.sequences.input_ids, attention_mask=batch.sequences.attention_mask,
                   labels=batch.targets).loss
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    assert metrics["loss"] == pytest.approx(theirs.item())
    assert ("acc" in metrics) is (problem_type != "regression")
    (grad_ours,) = torch.autograd.grad(ours, model.score.weight)
    (grad_theirs,) = torch.autograd.grad(model(input_ids=batch.sequences.input_ids,
                                               attention_mask=batch.sequences.attention_mask,
                                               labels=batch.targets).loss, model.score.weight)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-5, atol=1e-7)


def test_multi_label_targets_are_multi_hot_and_accuracy_counts_whole_rows():
    collate = ClassificationCollator(0, problem_type="multi_label_classification", num_labels=3)
    from alignkit.data.template import Encoded

    batch = collate([(0, EncodedLabelled(Encoded([1, 2], [-100, -100]), [0, 2])),
                     (1, EncodedLabelled(Encoded([3], [-100]), 1))])
    assert batch.targets.tolist() == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    from alignkit.losses.classification import classification_accuracy

    logits = torch.tensor([[2.0, -1.0, 3.0], [1.0, 1.0, -1.0]])  # row 2 also says class 0
    assert classification_accuracy(logits, batch.targets, problem_type="multi_label_classification").item() == 0.5


def seq_cls_file(directory: Path, problem_type: str) -> str:
    _, labels = LABELS[problem_type]
    path = directory / f"{problem_type}.jsonl"
    rows = [{"messages": [{"role": "user", "content": text}], "label": label} for text, label in zip(TEXTS, labels)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def train(tiny_model_dir, out, data, *flags) -> int:
    # All 8 rows in every step, so the step losses compare.
    return main(["sft", "--model", tiny_model_dir, "--dataset", data, "--val_dataset", data, "--max_steps", "4",
                 "--batch_size", "8", "--learning_rate", "1e-2", "--logging_steps", "1", "--output_dir", str(out),
                 "--dtype", "fp32", "--report_to", "none", *flags])


@pytest.mark.parametrize("train_type, problem_type", [("lora", "single_label_classification"),
                                                      ("full", "regression"),
                                                      ("lora", "multi_label_classification")])
def test_a_tiny_run_trains_the_head_and_its_checkpoint_reloads(tiny_model_dir, tmp_path, train_type, problem_type):
    from transformers import AutoModelForSequenceClassification

    num_labels, _ = LABELS[problem_type]
    data = seq_cls_file(tmp_path, problem_type)
    out = tmp_path / "out"
    flags = ["--train_type", train_type, "--num_labels", str(num_labels)]  # --task_type follows from --num_labels
    if problem_type == "multi_label_classification":
        flags += ["--problem_type", problem_type]
    assert train(tiny_model_dir, out, data, *flags) == 0
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    records = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 4 and losses[-1] < losses[0]
    checkpoint = max(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))

    # The checkpoint is a standard classifier: transformers (and peft for LoRA) reload it with its head.
    base, tokenizer = classifier(tiny_model_dir, num_labels, problem_type)
    initial_head = base.score.weight.detach().clone()
    if train_type == "lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(base, checkpoint)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(checkpoint)
        assert model.config.problem_type == problem_type and model.config.num_labels == num_labels
    model.eval()
    head = [p for n, p in model.named_parameters() if "score" in n and "original_module" not in n][0]
    assert not torch.allclose(head, initial_head)
    encoder = ChatEncoder(tokenizer, max_length=512)
    _, labels = LABELS[problem_type]
    rows = [ClassificationRow([{"role": "user", "content": t}], label) for t, label in zip(TEXTS, labels)]
    items = [(i, EncodedLabelled(encoder.encode_classified(r), r.label)) for i, r in enumerate(rows)]
    collate = ClassificationCollator(tokenizer.pad_token_id, problem_type=problem_type, num_labels=num_labels)
    with torch.no_grad():
        loss, _ = SequenceClassification(num_labels, problem_type).loss(model, collate(items))
    assert loss.item() == pytest.approx(records[-1]["eval_loss"], rel=1e-4)


def test_task_type_rules_follow_ms_swift(caplog):
    caplog.set_level(logging.INFO, logger="alignkit")
    said = RunArguments(num_labels=2, dataset=["d.jsonl"])
    assert resolve(said, "sft")["task_type"] == "seq_cls"
    assert resolve(said, "sft")["problem_type"] == "single_label_classification"
    assert resolve(RunArguments(num_labels=1, dataset=["d.jsonl"]), "sft")["problem_type"] == "regression"
    assert "--task_type not set: seq_cls, since --num_labels is given (as ms-swift)" in caplog.text
    assert resolve(RunArguments(), "sft")["task_type"] == "causal_lm"
    rm = RunArguments(rlhf_type="rm", task_type="seq_cls", num_labels=1)
    assert resolve(rm, "rm")["task_type"] == "seq_cls"  # what rm trains: one score per sequence
    cases = [
        (RunArguments(task_type="seq_cls", dataset=["d.jsonl"]), "sft", "--task_type seq_cls needs --num_labels"),
        (RunArguments(task_type="seq_cls", num_labels=2), "sft", "needs --dataset"),
        (RunArguments(num_labels=1, problem_type="single_label_classification", dataset=["d"]), "sft",
         "needs --num_labels of at least 2"),
        (RunArguments(task_type="causal_lm", num_labels=2), "sft", "serve --task_type seq_cls, not causal_lm"),
        (RunArguments(task_type="seq_cls", num_labels=2), "dpo", "--rlhf_type dpo trains a causal LM"),
        (RunArguments(rlhf_type="rm", num_labels=3), "rm", "--rlhf_type rm trains a reward model"),
        (RunArguments(task_type="prm"), "sft", "--rlhf_type rm trains an outcome reward model"),
    ]
    for args, method, message in cases:
        with pytest.raises(AlignkitError, match=message):
            resolve(args, method)


@pytest.mark.parametrize("labels, problem_type, message", [
    ([0, 3], "single_label_classification", "row 2, field 'label': .* expects a class index in \\[0, 3\\), got 3"),
    ([0, [1]], "single_label_classification", "row 2, field 'label'"),
    ([0, [1, 7]], "multi_label_classification", "expects a list of class indices in \\[0, 3\\)"),
    ([0.5, "x"], "regression", "row 2, field 'label': expected a class index, a list of class indices or a number"),
])
def test_bad_labels_stop_before_the_model_loads(tiny_model_dir, tmp_path, capsys, labels, problem_type, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": "hi"}], "label": label}) + "\n"
                            for label in labels))
    num_labels = "1" if problem_type == "regression" else "3"
    out = tmp_path / "out"
    assert train(tiny_model_dir, out, str(path), "--num_labels", num_labels, "--problem_type", problem_type) == 2
    import re

    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()


def test_unsupported_task_types_stop_at_once(tiny_model_dir, tmp_path, capsys):
    assert main(["sft", "--model", tiny_model_dir, "--task_type", "prm", "--output_dir",
                 str(tmp_path / "out")]) == 2
    assert "--task_type prm: alignkit has no process-reward-model training" in capsys.readouterr().err
