"""--rlhf_type gkd (on-policy distillation): the step's data source, the loss against the two models' logits worked
out by hand, student / teacher samples, --sft_alpha, the flag checks, and resume through the shared runner."""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path

import pytest
import torch

from alignkit.algorithms.gkd import GKD, split_prompts, step_source
from alignkit.cli import main
from alignkit.data.collate import Batch, SequenceCollator
from alignkit.data.template import ChatEncoder

ROWS = [
    [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "Answer: 5"}],
    [{"role": "user", "content": "What is 7 + 1?"}, {"role": "assistant", "content": "Answer: 8"}],
]
FLAGS = ["--max_completion_length", "6", "--logging_steps", "1", "--report_to", "none", "--dtype", "fp32",
         "--split_dataset_ratio", "0", "--per_device_train_batch_size", "2", "--eval_strategy", "no"]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("gkd-data") / "rows.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in ROWS))
    return str(path)


def records(output_dir: Path) -> list[dict]:
    run_dir = max(p for p in output_dir.iterdir() if p.is_dir())  # the newest run (v0-..., v1-...)
    return [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines() if '"loss"' in line]


def load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


def encoded_batch(tokenizer) -> Batch:
    encoder = ChatEncoder(tokenizer, max_length=512)
    return SequenceCollator(tokenizer.pad_token_id)([(i, encoder.encode(m, {1})) for i, m in enumerate(ROWS)])


def test_the_step_source_is_drawn_from_seed_plus_step():
    # ms-swift's _get_random_num: random.Random(seed + global_step).random() <= lmbda -> the student's samples
    draws = [random.Random(42 + step).random() for step in range(6)]
    assert [step_source(42, s, 0.5, False) for s in range(6)] == ["student" if u <= 0.5 else "dataset" for u in draws]
    assert {step_source(42, s, 0.0, True) for s in range(20)} == {"teacher"}
    assert {step_source(42, s, 1.0, True) for s in range(20)} == {"student"}


def test_step_one_loss_is_the_jsd_of_the_two_models_by_hand(tiny_model_dir, tiny_chat_model_dir, data_file,
                                                              tmp_path):
    main(["rlhf", "--rlhf_type", "gkd", "--model", tiny_model_dir, "--teacher_model", tiny_chat_model_dir,
          "--dataset", data_file, "--lmbda", "0", "--max_steps", "1", "--output_dir", str(tmp_path), *FLAGS])
    (step,) = records(tmp_path)
    assert step["source/dataset"] == 1.0
    student, tokenizer = load(tiny_model_dir)  # LoRA's B starts at 0: step 1's student is the base model
    teacher, _ = load(tiny_chat_model_dir)
    batch = encoded_batch(tokenizer)
    with torch.no_grad():
        s = torch.softmax(student(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits / 0.9, -1)
        t = torch.softmax(teacher(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits / 0.9, -1)
    m = 0.5 * s + 0.5 * t  # beta 0.5 (gkd's default), temperature 0.9 (the default)
    per_position = 0.5 * (t * (t / m).log()).sum(-1) + 0.5 * (s * (s / m).log()).sum(-1)  # (N, T)
    trained = batch.labels[:, 1:] != -100  # position t predicts token t + 1
    expected = per_position[:, :-1][trained].mean().item()
    assert step["jsd"] == pytest.approx(expected, rel=1e-4)
    assert step["loss"] == pytest.approx(expected, rel=1e-4)


def test_lmbda_zero_and_one_and_resume(tiny_model_dir, tiny_chat_model_dir, data_file, tmp_path):
    common = ["rlhf", "--rlhf_type", "gkd", "--model", tiny_model_dir, "--teacher_model", tiny_chat_model_dir,
              "--dataset", data_file, "--max_steps", "3", *FLAGS]
    main([*common, "--lmbda", "1", "--output_dir", str(tmp_path / "on")])
    assert [r["source/student"] for r in records(tmp_path / "on")] == [1.0, 1.0, 1.0]
    main([*common, "--lmbda", "0", "--save_steps", "1", "--output_dir", str(tmp_path / "off")])
    off = records(tmp_path / "off")
    assert [r["source/dataset"] for r in off] == [1.0, 1.0, 1.0]
    (run_dir,) = [p for p in (tmp_path / "off").iterdir() if p.is_dir()]
    main([*common, "--lmbda", "0", "--output_dir", str(tmp_path / "off"),
          "--resume_from_checkpoint", str(run_dir / "checkpoint-1")])
    resumed = records(tmp_path / "off")
    assert [r["step"] for r in resumed] == [1, 2, 3]  # step 1 carried over from the checkpoint's log
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in off], rel=1e-5)


def greedy_completion(model, prompt: list[int], steps: int, stop_ids: list[int]) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(token)
            if token in stop_ids:
                break
    return ids[len(prompt):]


@pytest.mark.parametrize(("lmbda", "seq_kd", "sampler"), [(1.0, False, "student"), (0.0, True, "teacher"),
                                                          (1.0, True, "student")])
def test_samples_come_from_the_student_or_the_teacher(tiny_model_dir, tiny_chat_model_dir, lmbda, seq_kd, sampler):
    student, tokenizer = load(tiny_model_dir)
    teacher, _ = load(tiny_chat_model_dir)
    stop_ids = [tokenizer.eos_token_id]
    entered = []

    def whole(name):  # stands for the gather of that model's ZeRO-3 shards (training/zero3.py)
        @contextlib.contextmanager
        def gathered():
            entered.append(name)
            yield

        return gathered

    # A near-zero temperature samples the most likely token: the completions are each model's greedy ones.
    gkd = GKD(teacher=teacher, beta=0.5, temperature=1e-4, lmbda=lmbda, seq_kd=seq_kd, sft_alpha=0.0,
              max_completion_length=5, pad_id=tokenizer.pad_token_id, stop_ids=stop_ids, seed=0,
              student=student, whole_student=whole("student"), whole_teacher=whole("teacher")).at_step(0)
    assert gkd.source == sampler
    batch = encoded_batch(tokenizer)
    prompts = split_prompts(batch)
    sampled = gkd.completions_of(batch)
    assert entered == [sampler]  # generate() ran inside the sampler's gather only
    model = {"student": student, "teacher": teacher}[sampler]
    other = teacher if sampler == "student" else student
    differs = False
    for i, prompt in enumerate(prompts):
        length = int(sampled.attention_mask[i].sum())
        ids = sampled.input_ids[i, :length].tolist()
        assert ids[: len(prompt)] == prompt
        completion = ids[len(prompt):]
        assert completion == greedy_completion(model, prompt, 5, stop_ids)
        differs |= completion != greedy_completion(other, prompt, 5, stop_ids)
        labels = sampled.labels[i, :length].tolist()
        assert labels == [-100] * len(prompt) + completion  # only the completion is distilled
    assert differs  # the two models' samples tell the samplers apart


def test_split_prompts_is_everything_before_the_last_trained_span(tiny_model_dir):
    _, tokenizer = load(tiny_model_dir)
    batch = encoded_batch(tokenizer)
    for i, prompt in enumerate(split_prompts(batch)):
        first_trained = int((batch.labels[i] != -100).nonzero()[0])
        assert prompt == batch.input_ids[i, :first_trained].tolist()


def test_sft_alpha_adds_cross_entropy_off_the_students_samples(tiny_model_dir, tiny_chat_model_dir):
    student, tokenizer = load(tiny_model_dir)
    teacher, _ = load(tiny_chat_model_dir)
    batch = encoded_batch(tokenizer)
    gkd = GKD(teacher=teacher, beta=0.5, temperature=0.9, lmbda=0.0, seq_kd=False, sft_alpha=0.5,
              max_completion_length=5, pad_id=tokenizer.pad_token_id, stop_ids=[tokenizer.eos_token_id], seed=0,
              student=student).at_step(0)
    loss, metrics = gkd.loss(student, batch)
    logits = student(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.labels[:, 1:].flatten(), ignore_index=-100)
    assert metrics["sft_loss"] == pytest.approx(ce.item(), rel=1e-5)
    assert loss.item() == pytest.approx(metrics["jsd"] + 0.5 * ce.item(), rel=1e-5)
    on_policy = GKD(**{**gkd.__dict__, "lmbda": 1.0}).at_step(0)
    loss, metrics = on_policy.loss(student, batch)
    assert "sft_loss" not in metrics and loss.item() == pytest.approx(metrics["jsd"])


@pytest.mark.parametrize(("extra", "message"), [
    ([], "needs --teacher_model"),
    (["--teacher_model", "T", "--lmbda", "1.5"], "--lmbda 1.5"),
    (["--teacher_model", "T", "--teacher_deepspeed", "zero3", "--offload_teacher_model", "true"],
     "--teacher_deepspeed with --offload_teacher_model: DeepSpeed places the teacher's weights itself"),
    (["--teacher_model", "T", "--fsdp", "true"], "--rlhf_type gkd with FSDP"),
    (["--teacher_model", "T", "--use_vllm", "true"], "--use_vllm needs"),  # colocated: vllm and a GPU, missing here
    (["--teacher_model", "T", "--use_vllm", "true", "--vllm_tensor_parallel_size", "2"],
     "--vllm_tensor_parallel_size 2 with 1 process(es)"),
    (["--teacher_model", "T", "--teacher_model_server", "http://x"], "teacher behind an API"),
])
def test_refusals_before_loading(tiny_model_dir, extra, message, tmp_path, capsys):
    assert main(["rlhf", "--rlhf_type", "gkd", "--model", tiny_model_dir, "--output_dir", str(tmp_path), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # stopped before a run directory was made


class RecordingRollout:
    """Test double for the colocated vLLM engine (alignkit.generation.vllm.VllmRollout, which needs CUDA): it
    records how it was built, the prompts it answers (with a fixed completion ending in the stop id) and its
    weight syncs. What is tested is gkd's use of the engine."""

    made: list = []

    def __init__(self, policy, model_path, **kwargs):
        self.policy, self.kwargs, self.calls, self.syncs, self.synced_step = policy, kwargs, [], 0, 0
        RecordingRollout.made.append(self)

    def __call__(self, prompts, *, greedy=False, seeds=None):
        self.calls.append(prompts)
        return [[5, 6, self.kwargs["stop_ids"][0]] for _ in prompts]

    def sync_weights(self):
        self.syncs += 1


def test_the_student_samples_from_the_colocated_engine(tiny_model_dir, tiny_chat_model_dir, data_file, tmp_path,
                                                       monkeypatch):
    import alignkit.generation.vllm as vllm

    monkeypatch.setattr(vllm, "check_vllm_available", lambda: None)
    monkeypatch.setattr(vllm, "VllmRollout", RecordingRollout)
    RecordingRollout.made.clear()
    main(["rlhf", "--rlhf_type", "gkd", "--model", tiny_model_dir, "--teacher_model", tiny_chat_model_dir,
          "--dataset", data_file, "--max_steps", "3", "--lmbda", "1", "--use_vllm", "true", "--vllm_mode", "colocate",
          "--vllm_gpu_memory_utilization", "0.3", "--vllm_max_model_len", "300", "--output_dir", str(tmp_path),
          *FLAGS])
    (engine,) = RecordingRollout.made
    assert {k: engine.kwargs[k] for k in ("gpu_memory_utilization", "max_model_len", "tensor_parallel_size",
                                          "max_new_tokens")} == {"gpu_memory_utilization": 0.3, "max_model_len": 300,
                                                                 "tensor_parallel_size": 1, "max_new_tokens": 6}
    assert len(engine.calls) == 3 and all(len(prompts) == 2 for prompts in engine.calls)  # every step's 2 rows
    assert engine.syncs == 2  # before steps 2 and 3: the engine held step 1's weights from the start
    assert [r["source/student"] for r in records(tmp_path)] == [1.0, 1.0, 1.0]
