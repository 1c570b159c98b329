"""--device_map / --device_max_memory: single-process model parallelism (ms-swift's "MP").

No GPU here, so the splits are made of CPU and disk: a map with "disk" entries makes transformers dispatch
the model with accelerate's hooks and offload (the weights of those layers stay on "meta" and are read
from disk at each forward), the same machinery that splits a model across GPUs. Training cannot use
offloaded layers; its hooked runs dispatch an all-CPU map with ``force_hooks`` (what from_pretrained does
itself when a map names two GPUs), so the loop, the reference and the checkpoints run on a hooked model.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

from alignkit.cli import main
from alignkit.errors import AlignkitError
from alignkit.models.placement import (
    choose_device_map,
    describe,
    input_device,
    parse_device_map,
    parse_max_memory,
    resolve_flags,
    split_map,
)

# Every top-level module of the tiny Llama named, so the map has several entries.
CPU_MAP = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu", "model.norm": "cpu",
           "model.rotary_emb": "cpu", "lm_head": "cpu"}
DISK_MAP = {**CPU_MAP, "model.layers.0": "disk"}

PAIRS = [
    {
        "messages": [
            {"role": "user", "content": f"What is {a} + {b}?"},
            {"role": "assistant", "content": f"Answer: {a + b}"},
        ],
        "rejected_response": f"Answer: {a + b + 1}",
    }
    for a, b in [(12, 30), (1, 2), (5, 6), (7, 8), (10, 11), (3, 4)]
]
PROMPTS = [{"messages": [{"role": "user", "content": text}]}
           for text in ("What is 12 + 30?", "hello world how are you", "0 1 2 3 4 5")]


# --- the flags -----------------------------------------------------------------------------------------------

def test_parse_device_map_accepts_strategies_devices_json_and_files(tmp_path):
    assert [parse_device_map(v) for v in ("auto", "balanced", "balanced_low_0", "sequential")] == [
        "auto", "balanced", "balanced_low_0", "sequential"]
    assert [parse_device_map(v) for v in ("cpu", "cuda", "cuda:1", "0", None)] == ["cpu", "cuda", "cuda:1", 0, None]
    assert parse_device_map('{"model.layers.0": 0, "model.layers.1": "1", "lm_head": "cpu", "model.norm": "disk"}') == {
        "model.layers.0": 0, "model.layers.1": 1, "lm_head": "cpu", "model.norm": "disk"}
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"": "cuda:0"}))
    assert parse_device_map(str(path)) == {"": "cuda:0"}


@pytest.mark.parametrize("value, message", [
    ("everywhere", "--device_map everywhere: expected one of auto"),
    ("disk", "--device_map disk: expected one of auto"),
    ('{"lm_head": "gpu"}', "module 'lm_head' has device 'gpu'"),
    ('{"lm_head": true}', "module 'lm_head' has device True"),
    ("{}", "expected a non-empty JSON object"),
    ('{"lm_head": 0', "--device_map: not valid JSON"),
])
def test_parse_device_map_errors_name_the_flag_and_the_value(value, message):
    with pytest.raises(AlignkitError, match=message.replace("(", r"\(")):
        parse_device_map(value)


def test_parse_max_memory_takes_one_size_per_gpu_or_a_json_object():
    assert parse_max_memory(["20GB", "24GB"], gpus=2) == {0: "20GB", 1: "24GB"}
    assert parse_max_memory(['{"0": "20GB", "1": 1000, "cpu": "64GB", "disk": "900GB"}'], gpus=0) == {
        0: "20GB", 1: 1000, "cpu": "64GB", "disk": "900GB"}
    assert parse_max_memory([], gpus=2) is None
    with pytest.raises(AlignkitError, match=r"--device_max_memory 20GB: one size per visible GPU, and 2 are visible"):
        parse_max_memory(["20GB"], gpus=2)
    with pytest.raises(AlignkitError, match=r"--device_max_memory: 1: 'lots' is not a size"):
        parse_max_memory(["20GB", "lots"], gpus=2)
    with pytest.raises(AlignkitError, match=r"unknown device 'gpu0'"):
        parse_max_memory(['{"gpu0": "20GB"}'], gpus=1)


def test_one_process_with_several_gpus_splits_by_default_and_says_so(caplog):
    with caplog.at_level(logging.INFO, logger="alignkit"):
        assert choose_device_map(None, None, gpus=4, world_size=1) == "auto"
    assert "One process sees 4 GPUs: splitting the model's layers across them (--device_map auto" in caplog.text
    assert "NPROC_PER_NODE=4" in caplog.text
    assert choose_device_map(None, None, gpus=1, world_size=1) is None  # one GPU: nothing to split
    assert choose_device_map(None, None, gpus=0, world_size=1) is None
    assert choose_device_map(None, None, gpus=4, world_size=4) is None  # data parallel: a GPU per process
    assert choose_device_map(None, None, gpus=4, world_size=1, engine="--deepspeed zero3") is None
    assert choose_device_map("sequential", None, gpus=4, world_size=1) == "sequential"
    assert choose_device_map(None, {0: "10GB"}, gpus=1, world_size=1) == "auto"  # a memory cap asks for a map


def test_resolve_flags_counts_gpus_and_reads_the_launcher(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_flags(None, []) == ("auto", None)
    assert resolve_flags(None, ["30GB", "40GB"]) == ("auto", {0: "30GB", 1: "40GB"})
    assert resolve_flags(None, [], allow_default=False) == (None, None)
    assert resolve_flags('{"": 1}', []) == ({"": 1}, None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolve_flags(None, []) == (None, None)
    with pytest.raises(AlignkitError, match="this is one of 2 data-parallel processes"):
        resolve_flags("auto", [])


def test_split_model_with_data_parallel_deepspeed_or_fsdp_stops_with_a_clear_error():
    with pytest.raises(AlignkitError, match="--device_map splits one model across the GPUs of a single process"):
        choose_device_map("auto", None, gpus=4, world_size=2)
    with pytest.raises(AlignkitError, match="--device_map and --fsdp both decide where the weights live"):
        choose_device_map("auto", None, gpus=4, world_size=1, engine="--fsdp")
    with pytest.raises(AlignkitError, match="this is one of 2"):  # a memory cap is a request for a split too
        choose_device_map(None, {0: "10GB"}, gpus=4, world_size=2)


def test_describe_collapses_runs_of_layers():
    mapping = {"model.embed_tokens": 0, **{f"model.layers.{i}": 0 for i in range(14)},
               **{f"model.layers.{i}": 1 for i in range(14, 28)}, "model.norm": 1, "lm_head": 1}
    assert describe(mapping) == "0: model.embed_tokens, model.layers.0-13; 1: model.layers.14-27, model.norm, lm_head"


# --- errors through the CLI ------------------------------------------------------------------------------------

def test_cli_refuses_device_map_with_an_engine_launcher_ppo_vllm_or_a_vision_model(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    base = ["--model", tiny_model_dir, "--output_dir", str(tmp_path), "--report_to", "none"]
    assert main(["rlhf", *base, "--device_map", "auto", "--deepspeed", "zero2"]) == 2
    assert "--device_map and --deepspeed zero2 both decide where the weights live" in capsys.readouterr().err
    assert main(["rlhf", *base, "--rlhf_type", "grpo", "--device_map", "auto"]) == 2
    assert "--device_map is not supported for --rlhf_type grpo" in capsys.readouterr().err
    assert main(["infer", "--model", tiny_model_dir, "--infer_backend", "vllm", "--device_map", "auto",
                 "--val_dataset", "arith-prompts:test#1", "--result_path", str(tmp_path / "a.jsonl")]) == 2
    assert "vllm places the model itself" in capsys.readouterr().err
    vlm = tmp_path / "fake-vlm"  # only its config is read before the refusal
    vlm.mkdir()
    (vlm / "config.json").write_text(json.dumps({"model_type": "llava", "vision_config": {}}))
    assert main(["rlhf", "--model", str(vlm), "--output_dir", str(tmp_path), "--report_to", "none",
                 "--device_map", "auto"]) == 2
    assert "--device_map is not supported for vision-language models" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it in each process
    assert main(["sft", *base, "--max_memory", '{"0": "10GB"}']) == 2
    assert "this is one of 2 data-parallel processes" in capsys.readouterr().err
    assert not any(tmp_path.glob("v*"))  # stopped before any run directory or model load


def test_training_refuses_offloaded_layers(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    code = main(["rlhf", "--model", tiny_model_dir, "--dataset", str(data), "--output_dir", str(tmp_path / "out"),
                 "--report_to", "none", "--max_steps", "1", "--device_map", json.dumps(DISK_MAP)])
    err = capsys.readouterr().err
    assert code == 2
    assert "--device_map offloaded model.layers.0 to cpu/disk" in err and "cannot be trained" in err


# --- inference: the same answers from a split, offloaded model --------------------------------------------------

def test_infer_with_an_offloading_map_gives_the_same_answers(tiny_chat_model_dir, tmp_path, caplog):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in PROMPTS))

    def answers(*extra: str) -> list[str]:
        result = tmp_path / f"answers-{len(list(tmp_path.iterdir()))}.jsonl"
        assert main(["infer", "--model", tiny_chat_model_dir, "--val_dataset", str(data), "--max_new_tokens", "8",
                     "--result_path", str(result), "--dtype", "fp32", *extra]) == 0
        return [json.loads(line)["response"] for line in result.read_text().splitlines()]

    plain = answers()
    assert len(set(plain)) == 3  # distinct answers, so a broken split would show
    with caplog.at_level(logging.INFO, logger="alignkit"):
        assert answers("--device_map", json.dumps(DISK_MAP)) == plain
        # A memory cap that leaves room for the embeddings only: auto puts the decoder layers on disk.
        assert answers("--device_max_memory", '{"cpu": "100KB"}') == plain
    assert "Model layers by device (--device_map): cpu: model.embed_tokens, model.layers.1" in caplog.text
    assert "--device_max_memory without --device_map: using --device_map auto" in caplog.text
    assert "disk: model.norm, model.rotary_emb, model.layers" in caplog.text


def test_offloaded_model_scores_and_places_inputs_like_the_plain_one(tiny_chat_model_dir):
    from alignkit.models.load import load_for_inference
    from alignkit.models.logprobs import forward_logps

    plain, tokenizer = load_for_inference(tiny_chat_model_dir, [], None, "fp32")
    # Everything offloaded: the embedding's weight is on "meta", its inputs go to the CPU all the same.
    for spec in (json.dumps(DISK_MAP), json.dumps({"": "disk"})):
        split, _ = load_for_inference(tiny_chat_model_dir, [], None, "fp32", spec)
        assert split_map(split) is not None and input_device(split) == torch.device("cpu")
        from alignkit.data.collate import Batch

        ids = torch.tensor([tokenizer("What is 12 + 30? Answer: 42").input_ids])  # (1, T)
        batch = Batch(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids.clone(), row_ids=[0])
        torch.testing.assert_close(forward_logps(split, batch)[0], forward_logps(plain, batch)[0], rtol=0, atol=1e-5)


def test_adapters_on_an_offloaded_model_stop_with_advice(tiny_model_dir, tmp_path):
    from conftest import save_random_lora

    from alignkit.models.load import load_for_inference

    adapter = save_random_lora(tiny_model_dir, tmp_path / "lora")
    with pytest.raises(AlignkitError, match="merge the adapter first"):
        load_for_inference(tiny_model_dir, [adapter], None, "fp32", json.dumps(DISK_MAP))


# --- training: per-step losses of a split model equal the plain run's --------------------------------------------

def _train(model_dir: str, out, *extra: str) -> tuple[list[float], dict]:
    """Per-step losses and the final checkpoint's weights of a 3-step DPO run."""
    from safetensors.torch import load_file

    out.parent.mkdir(parents=True)
    data = out.parent / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    assert main(["rlhf", "--rlhf_type", "dpo", "--model", model_dir, "--dataset", str(data), "--output_dir", str(out),
                 "--report_to", "none", "--dtype", "fp32", "--max_steps", "3", "--batch_size", "2",
                 "--learning_rate", "1e-2", "--logging_steps", "1", "--lora_dropout", "0", *extra]) == 0
    (run_dir,) = out.iterdir()
    losses = [r["loss"] for r in map(json.loads, (run_dir / "logging.jsonl").read_text().splitlines()) if "loss" in r]
    weights = {f"{path.name}:{name}": tensor for path in (run_dir / "checkpoint-3").glob("*.safetensors")
               for name, tensor in load_file(str(path)).items()}
    return losses, weights


@pytest.fixture
def hooked(monkeypatch):
    """Dispatch every model that training loads with a --device_map through accelerate's hooks, as
    from_pretrained does when the map names two GPUs (on one device it skips the hooks). Records the hooked
    models (the policy, and the frozen copy of full training) and those moved afterwards (``Module.to`` and
    the like all go through ``_apply``): on GPUs a move would gather every layer onto one device."""
    from accelerate import dispatch_model

    import alignkit.models.reference
    import alignkit.training.run

    models, moved = [], []

    def watch(model):
        apply = model._apply
        model._apply = lambda *a, **k: (moved.append(model), apply(*a, **k))[1]
        models.append(model)
        return model

    load, copy = alignkit.training.run.load_causal_lm, alignkit.models.reference.frozen_copy

    def hooked_load(*args, device_map=None, **kwargs):
        model = load(*args, device_map=device_map, **kwargs)
        return (
            watch(dispatch_model(model, device_map=device_map, force_hooks=True))
            if isinstance(device_map, dict)
            else model
        )

    def hooked_copy(model):
        copied = copy(model)
        return watch(copied) if hasattr(copied, "_hf_hook") else copied

    monkeypatch.setattr(alignkit.training.run, "load_causal_lm", hooked_load)
    monkeypatch.setattr(alignkit.models.reference, "frozen_copy", hooked_copy)
    return models, moved


@pytest.mark.parametrize("flags, hooked_models", [
    (["--rlhf_type", "dpo", "--train_type", "lora"], 1),  # reference log-probs precomputed from the split policy
    (["--rlhf_type", "dpo", "--train_type", "full"], 1),
    (["--rlhf_type", "dpo", "--train_type", "lora", "--precompute_ref_log_probs", "false"], 1),  # adapter disabled
    (["--rlhf_type", "dpo", "--train_type", "full", "--precompute_ref_log_probs", "false"], 2),  # + frozen copy
    (["--rlhf_type", "rm", "--train_type", "lora"], 1),  # the value head lies outside the split
])
def test_training_a_hooked_split_model_matches_the_plain_run(tiny_model_dir, tmp_path, hooked, flags, hooked_models,
                                                             caplog):
    # A split model runs padded batches (see choose_layout), so the plain run does too: the same arithmetic.
    plain, plain_weights = _train(tiny_model_dir, tmp_path / "plain" / "out", *flags, "--padding_free", "false")
    with caplog.at_level(logging.INFO, logger="alignkit"):
        split, split_weights = _train(tiny_model_dir, tmp_path / "split" / "out", *flags,
                                      "--device_map", json.dumps(CPU_MAP))
    models, moved = hooked
    assert len(models) == hooked_models
    assert all(split_map(model) == CPU_MAP and hasattr(model, "_hf_hook") for model in models)
    assert not moved  # neither the loop, the reference nor accelerate's prepare moved a split model
    if "rm" not in flags:
        assert "a model split by --device_map runs padded batches" in caplog.text
    assert len(plain) == 3 and plain[0] != plain[-1]
    assert split == pytest.approx(plain, abs=1e-5)
    assert split_weights.keys() == plain_weights.keys() and len(plain_weights) > 4
    assert ("rm" in flags) == any(name.startswith("value_head") for name in plain_weights)
    for name, weight in plain_weights.items():
        torch.testing.assert_close(split_weights[name], weight, rtol=0, atol=1e-5)


def test_dpo_with_an_explicit_map_on_one_device_matches_the_plain_run(tiny_model_dir, tmp_path):
    # Without the hooks (all entries on the CPU): the flag's path from the CLI to from_pretrained, the frozen
    # copy of full training loaded again with the map, and the loop's placement.
    plain, _ = _train(tiny_model_dir, tmp_path / "plain" / "out", "--train_type", "full")
    split, _ = _train(tiny_model_dir, tmp_path / "split" / "out", "--train_type", "full",
                      "--device_map", json.dumps(CPU_MAP))
    assert split == pytest.approx(plain, abs=1e-5)
