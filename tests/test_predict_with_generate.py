"""`alignkit sft --predict_with_generate true` (ms-swift's examples/train/predict_with_generate/train.sh): ms-swift's
ROUGE/BLEU worked out by hand, the held-out conversations split into prompt and reference, and a tiny run whose
evaluations log the metrics of the answers the checkpoint's weights generate, picking the best checkpoint by
ROUGE-L."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from alignkit.cli import main
from alignkit.config import RunArguments
from alignkit.config.defaults import best_model_metric
from alignkit.data.rows import ConversationRow, RowSource
from alignkit.data.template import ChatEncoder
from alignkit.errors import AlignkitError
from alignkit.generation import text_metrics
from alignkit.generation.answers import generate
from alignkit.generation.text_metrics import rouge_bleu
from alignkit.models.load import load_tokenizer
from alignkit.training.generated_eval import check_generated_eval, held_out_prompts

# --- the metrics ----------------------------------------------------------------------------------------------

# "the cat sat on the mat" against "the cat is on the mat" (the rouge package counts n-grams as sets):
#   ROUGE-1: {the cat sat on mat} ∩ {the cat is on mat} = 4 of 5 each way -> F1 0.8
#   ROUGE-2: {the cat, cat sat, sat on, on the, the mat} ∩ {the cat, cat is, is on, on the, the mat} = 3 of 5 -> 0.6
#   ROUGE-L: LCS the cat on the mat, as a set {the cat on mat}: 4 of 5 distinct words each way -> 0.8
#   BLEU-4:  clipped p1..p4 = 5/6, 3/5, 1/4, 0/3; method 3 makes the zero 1/(2·3); equal lengths, no brevity
#            penalty: (5/6 · 3/5 · 1/4 · 1/6)^(1/4) = (1/48)^(1/4) = 0.37991784...
CAT = {"rouge-1": 80.0, "rouge-2": 60.0, "rouge-l": 80.0, "bleu-4": 37.991784}
# "我爱北京" against "我爱上海": jieba's words 我 / 爱 / 北京 and 我 / 爱 / 上海 (not characters, not one word):
#   ROUGE-1 2 of 3 -> 66.666666; ROUGE-2 {我爱, 爱北京} ∩ {我爱, 爱上海} 1 of 2 -> 50; ROUGE-L {我 爱} 2 of 3;
#   BLEU-4: p1..p4 = 2/3, 1/2, 0/1 -> 1/2, no 4-gram -> 1/4 (method 3: 1/2^k for the k-th zero): (1/24)^(1/4)
CHINESE = {"rouge-1": 66.666666, "rouge-2": 50.0, "rouge-l": 66.666666, "bleu-4": 45.1801}
# "the cat" against "the cat sat down": precision and recall differ, the scores are their F1; BLEU pays the brevity
# penalty e^(1 − 4/2):
#   ROUGE-1 P 2/2, R 2/4 -> 2/3; ROUGE-2 P 1/1, R 1/3 -> 1/2; ROUGE-L {the cat}: P 2/2, R 2/4 -> 2/3
#   BLEU-4: p1, p2 = 2/2, 1/1; no 3- or 4-gram -> 1/2, 1/4: (1/8)^(1/4) · e^-1 = 0.21874242...
SHORT = {"rouge-1": 66.666666, "rouge-2": 50.0, "rouge-l": 66.666666, "bleu-4": 21.874242}


def test_rouge_and_bleu_by_hand():
    assert rouge_bleu(["the cat sat on the mat"], ["the cat is on the mat"]) == CAT
    assert rouge_bleu(["我爱北京"], ["我爱上海"]) == CHINESE
    assert rouge_bleu(["the cat"], ["the cat sat down"]) == SHORT
    assert rouge_bleu(["four words alike here"], ["four words alike here"]) == {key: 100.0 for key in CAT}
    # Three words have no 4-gram: p4 = 0/0 becomes 1/2 (method 3), so BLEU-4 is 2^(-1/4) = 0.84089642...
    assert rouge_bleu(["three alike words"], ["three alike words"]) == {**{key: 100.0 for key in CAT},
                                                                        "bleu-4": 84.089642}


def test_metrics_are_means_over_pairs_and_empty_texts_are_left_out():
    both = rouge_bleu(["the cat sat on the mat", "我爱北京", "", "an answer"], ["the cat is on the mat", "我爱上海",
                                                                             "a reference", "  "])
    assert both == {key: round((CAT[key] + CHINESE[key]) / 2, 6) for key in CAT}
    assert rouge_bleu(["", " "], ["x", "y"]) == {key: 0.0 for key in CAT}  # nothing to score: 0, as ms-swift
    assert rouge_bleu(["...", "the cat sat on the mat"], ["a b", "the cat is on the mat"]) == CAT  # no sentence


# --- the held-out prompts and the flag's checks -------------------------------------------------------------------


def test_held_out_conversations_become_prompt_and_reference(tiny_model_dir):
    encoder = ChatEncoder(load_tokenizer(tiny_model_dir), max_length=512)
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
             {"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}]
    held = held_out_prompts(encoder, [ConversationRow(turns)])
    assert held.references == ["5"]
    assert held.conversations == [turns[:3]]
    assert held.prompts == [encoder.encode_prompt(turns[:3])]
    with pytest.raises(AlignkitError, match=r"held-out row \(v.jsonl, row 2\) does not end with an assistant turn"):
        held_out_prompts(encoder, [ConversationRow(turns[:3], RowSource("v.jsonl", 2))])


def test_the_flag_is_checked_before_anything_loads(monkeypatch):
    assert best_model_metric(RunArguments(predict_with_generate=True), "sft") == ("rouge-l", True)
    assert best_model_metric(RunArguments(), "sft") == ("loss", False)
    check_generated_eval(RunArguments(predict_with_generate=True, temperature=0.0), "sft")
    cases = [(RunArguments(predict_with_generate=True, task_type="seq_cls", num_labels=2), "--task_type seq_cls"),
             (RunArguments(predict_with_generate=True, temperature=0.7), "decodes greedily"),
             (RunArguments(predict_with_generate=True, max_new_tokens=0), "--max_new_tokens 0")]
    for args, message in cases:
        with pytest.raises(AlignkitError, match=message):
            check_generated_eval(args, "sft")
    monkeypatch.setitem(text_metrics.PACKAGES, "no_such_module_here", "no-such-package")
    with pytest.raises(AlignkitError, match="need no-such-package: pip install no-such-package"):
        check_generated_eval(RunArguments(predict_with_generate=True), "sft")


# --- a tiny run ---------------------------------------------------------------------------------------------------


def conversations(path, pairs):
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n" for q, a in pairs))
    return str(path)


def test_a_run_logs_the_metrics_of_the_answers_its_checkpoints_generate(tiny_chat_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    train = conversations(tmp_path / "train.jsonl", [("What is 2 + 3?", "Answer: 5"), ("What is 4 + 4?", "Answer: 8"),
                                                     ("What is 1 + 0?", "Answer: 1")] * 2)
    val = conversations(tmp_path / "val.jsonl", [("What is 12 + 30?", "Answer: 42"), ("hello world", "how are you"),
                                                 ("What is 7 + 1?", "Answer: 8")])
    out = tmp_path / "out"
    flags = ["sft", "--model", tiny_chat_model_dir, "--dataset", train, "--val_dataset", val, "--train_type", "full",
             "--max_steps", "3", "--batch_size", "2", "--eval_batch_size", "2", "--save_steps", "1",
             "--learning_rate", "1e-2", "--predict_with_generate", "true", "--max_new_tokens", "6", "--dtype", "fp32",
             "--report_to", "none", "--output_dir", str(out)]
    assert main(flags) == 0
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    logged = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]
    evaluations = {r["step"]: r for r in logged if "eval_rouge-l" in r}
    assert sorted(evaluations) == [1, 2, 3]
    assert not any("eval_loss" in r for r in logged)  # generated answers are scored, not the loss (as ms-swift)
    predictions = [json.loads(line) for line in (run_dir / "predict.jsonl").read_text().splitlines()]
    assert [p["step"] for p in predictions] == [1, 1, 1, 2, 2, 2, 3, 3, 3]

    tokenizer = load_tokenizer(tiny_chat_model_dir)
    encoder = ChatEncoder(tokenizer, max_length=512)
    for step, record in evaluations.items():
        answers = [p for p in predictions if p["step"] == step]
        assert [p["labels"] for p in answers] == ["Answer: 42", "how are you", "Answer: 8"]
        # The logged metrics are those of the answers written, and the answers are the greedy answers (at most 6
        # tokens) of the weights saved at that step.
        expected = rouge_bleu([p["response"] for p in answers], [p["labels"] for p in answers])
        assert {k.removeprefix("eval_"): v for k, v in record.items() if k.removeprefix("eval_") in expected} == \
            expected
        model = AutoModelForCausalLM.from_pretrained(run_dir / f"checkpoint-{step}", dtype=torch.float32).eval()
        prompts = [encoder.encode_prompt(p["messages"]) for p in answers]
        assert generate(model, encoder, prompts, max_new_tokens=6) == [p["response"] for p in answers]
    assert len({p["response"] for p in predictions}) > 1  # the answers differ: a real generation per prompt
    # --metric_for_best_model defaults to rouge-l, greater is better.
    best_step = max(evaluations, key=lambda s: (evaluations[s]["eval_rouge-l"], -s))
    state = json.loads((run_dir / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["best_metric"] == pytest.approx(evaluations[best_step]["eval_rouge-l"])
    assert state["best_model_checkpoint"] == str(run_dir / f"checkpoint-{best_step}")

    # Resumed from checkpoint-1 (a new run directory, since later checkpoints exist): predict.jsonl keeps step 1's
    # answers and the resumed steps answer as the uninterrupted run did.
    assert main([*flags, "--resume_from_checkpoint", str(run_dir / "checkpoint-1")]) == 0
    (resumed,) = [p for p in out.iterdir() if p.is_dir() and p != run_dir]
    assert (resumed / "predict.jsonl").read_text().splitlines() == (run_dir / "predict.jsonl").read_text().splitlines()
