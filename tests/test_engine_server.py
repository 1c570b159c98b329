"""deploy/app --infer_backend vllm|sglang through the engine's own OpenAI server (ms-swift's flags translated
into its command line; a clear error where the package is missing), and infer's --attn_impl/--enable_thinking."""

from __future__ import annotations

import importlib.util
import json

import pytest

from alignkit.cli import build_parser, main, parse_command_line, typed_arguments
from alignkit.commands.engine_server import server_command
from alignkit.config.command_checks import check_command_arguments
from alignkit.errors import AlignkitError


def deploy_args(*argv):
    _, values, _ = parse_command_line(build_parser(), ["deploy", *argv])
    args = typed_arguments("deploy", values)
    check_command_arguments("deploy", args)
    return args


def flag_values(command: list[str]) -> dict[str, str | None]:
    """{--flag: its value (None for a switch)} of an engine command line."""
    found, i = {}, 0
    while i < len(command):
        if command[i].startswith("--"):
            takes = i + 1 < len(command) and not command[i + 1].startswith("--")
            found[command[i]] = command[i + 1] if takes else None
            i += 2 if takes else 1
        else:
            i += 1
    return found


def test_ms_swift_agent_server_becomes_vllm_serve_with_its_flags():
    # examples/deploy/agent/server.sh
    args = deploy_args("--model", "Qwen/Qwen2.5-7B-Instruct", "--infer_backend", "vllm",
                       "--vllm_gpu_memory_utilization", "0.8", "--vllm_max_model_len", "8192", "--max_new_tokens",
                       "2048", "--agent_template", "hermes",
                       "--served_model_name", "Qwen2.5-7B-Instruct", "--vllm_enforce_eager", "true",
                       "--api_key", "k", "--enable_thinking", "false", "--vllm_data_parallel_size", "2")
    command = server_command("vllm", args, "/models/qwen", {"sql": "/ad/sql"}, host="0.0.0.0", port=8001,
                             served_name="Qwen2.5-7B-Instruct")
    assert command[:3] == ["vllm", "serve", "/models/qwen"]
    flags = flag_values(command)
    assert flags["--gpu-memory-utilization"] == "0.8" and flags["--max-model-len"] == "8192"
    assert flags["--served-model-name"] == "Qwen2.5-7B-Instruct" and flags["--port"] == "8001"
    assert flags["--host"] == "0.0.0.0" and flags["--api-key"] == "k" and flags["--data-parallel-size"] == "2"
    assert "--enforce-eager" in flags and "--enable-auto-tool-choice" in flags
    assert flags["--tool-call-parser"] == "hermes"
    assert json.loads(flags["--override-generation-config"]) == {"max_new_tokens": 2048, "temperature": 0.0,
                                                                 "top_p": 1.0}
    assert json.loads(flags["--default-chat-template-kwargs"]) == {"enable_thinking": False}
    assert command[command.index("--lora-modules") + 1] == "sql=/ad/sql" and "--enable-lora" in flags


def test_vllm_pooling_tasks_and_num_labels():
    args = deploy_args("--model", "ck", "--infer_backend", "vllm", "--task_type", "seq_cls", "--num_labels", "2")
    flags = flag_values(server_command("vllm", args, "ck", {}, host="h", port=1, served_name="n"))
    assert flags["--runner"] == "pooling" and flags["--convert"] == "classify"
    assert json.loads(flags["--hf-overrides"]) == {"num_labels": 2}
    args = deploy_args("--model", "e", "--infer_backend", "vllm", "--task_type", "embedding")
    assert flag_values(server_command("vllm", args, "e", {}, host="h", port=1, served_name="n"))["--convert"] == "embed"


def test_sglang_server_command():
    # examples/deploy/sglang.sh
    args = deploy_args("--model", "Qwen/Qwen3-8B", "--infer_backend", "sglang", "--max_new_tokens", "2048",
                       "--sglang_context_length", "8192", "--sglang_tp_size", "2", "--served_model_name", "Qwen3-8B")
    command = server_command("sglang", args, "/m", {}, host="127.0.0.1", port=8000, served_name="Qwen3-8B")
    assert command[1:3] == ["-m", "sglang.launch_server"]
    flags = flag_values(command)
    assert flags["--model-path"] == "/m" and flags["--tp-size"] == "2" and flags["--context-length"] == "8192"
    assert flags["--served-model-name"] == "Qwen3-8B" and "--is-embedding" not in flags
    with pytest.raises(AlignkitError, match="merge the adapter first"):
        server_command("sglang", args, "/m", {"a": "/a"}, host="h", port=1, served_name="n")


def test_engine_only_values_are_refused_elsewhere():
    with pytest.raises(AlignkitError, match="--num_labels sets the classification head"):
        deploy_args("--num_labels", "2")
    with pytest.raises(AlignkitError, match="--task_type seq_cls"):
        deploy_args("--task_type", "seq_cls")  # transformers backend: not served by alignkit's engine
    with pytest.raises(AlignkitError, match="not a JSON object"):
        deploy_args("--infer_backend", "vllm", "--vllm_limit_mm_per_prompt", "{image: 5}")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
@pytest.mark.parametrize("command", ["deploy", "app"])
def test_missing_vllm_is_a_clear_error(command, tiny_chat_model_dir, capsys):
    assert main([command, "--model", tiny_chat_model_dir, "--infer_backend", "vllm"]) == 2
    assert "--infer_backend vllm serves through vllm's own OpenAI-compatible server: install it" in \
        capsys.readouterr().err


def test_infer_attn_impl_loads_with_it(tiny_chat_model_dir):
    from alignkit.generation.loader import load_for_answers

    assert load_for_answers(tiny_chat_model_dir, [], None, "fp32", attn_impl="eager").model.config \
        ._attn_implementation == "eager"
    assert load_for_answers(tiny_chat_model_dir, [], None, "fp32", attn_impl="sdpa").model.config \
        ._attn_implementation == "sdpa"


def test_enable_thinking_reaches_the_chat_template(tiny_chat_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from alignkit.generation.loader import load_for_answers

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model_dir)
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n"
        "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}")
    import shutil

    model_dir = tmp_path / "thinking"
    shutil.copytree(tiny_chat_model_dir, model_dir)
    tokenizer.save_pretrained(model_dir)
    messages = [{"role": "user", "content": "hi"}]
    plain = load_for_answers(str(model_dir), [], None, "fp32").encoder
    off = load_for_answers(str(model_dir), [], None, "fp32", enable_thinking=False).encoder
    assert "</think>" not in plain.render(messages, generation_prompt=True)
    assert "</think>" in off.render(messages, generation_prompt=True)


def test_metric_acc_is_the_share_of_answers_equal_to_their_labels(tiny_chat_model_dir, tmp_path, capsys):
    prompts = [{"messages": [{"role": "user", "content": f"What is {a} + {b}?"}]} for a, b in [(1, 2), (3, 4), (5, 6)]]
    first, scored = tmp_path / "first.jsonl", tmp_path / "scored.jsonl"
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    argv = ["infer", "--model", tiny_chat_model_dir, "--dtype", "fp32", "--max_new_tokens", "4"]
    assert main([*argv, "--val_dataset", str(plain), "--result_path", str(first)]) == 0
    answers = [json.loads(line)["response"] for line in first.read_text().splitlines()]
    labelled = tmp_path / "labelled.jsonl"  # two references equal the greedy answers, one does not
    labelled.write_text("".join(json.dumps({**p, "labels": label}) + "\n"
                                for p, label in zip(prompts, [answers[0], answers[1] + "!", answers[2]])))
    capsys.readouterr()
    assert main([*argv, "--val_dataset", str(labelled), "--result_path", str(scored), "--metric", "acc"]) == 0
    assert "acc: 0.6667 over 3 answers" in capsys.readouterr().out
    assert main([*argv, "--val_dataset", str(plain), "--result_path", str(tmp_path / "x.jsonl"),
                 "--metric", "acc"]) == 2
    assert "need a `labels` column" in capsys.readouterr().err
    assert main([*argv, "--val_dataset", str(plain), "--metric", "rouge"]) == 2


def test_use_chat_template_false_prompts_with_the_generation_template(tiny_chat_model_dir, tmp_path):
    from alignkit.generation.loader import load_for_answers

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3="}]
    plain = load_for_answers(tiny_chat_model_dir, [], None, "fp32", use_chat_template=False).encoder
    chat = load_for_answers(tiny_chat_model_dir, [], None, "fp32").encoder
    tokenizer = plain.tokenizer
    bos = [tokenizer.bos_token_id] if plain._adds_bos() else []
    assert plain.encode_prompt(messages) == bos + tokenizer("2+3=", add_special_tokens=False)["input_ids"]
    assert chat.encode_prompt(messages) != plain.encode_prompt(messages)
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"messages": messages}) + "\n")
    assert main(["infer", "--model", tiny_chat_model_dir, "--dtype", "fp32", "--max_new_tokens", "3", "--val_dataset",
                 str(data), "--result_path", str(tmp_path / "r.jsonl"), "--use_chat_template", "false"]) == 0


@pytest.mark.parametrize("argv, message", [(["--device_map", "auto"], "--device_map applies to"),
                                           (["--truncation_strategy", "left"], "--truncation_strategy left applies")])
def test_transformers_only_flags_are_refused_with_an_engine(argv, message):
    with pytest.raises(AlignkitError, match=message):
        deploy_args("--infer_backend", "vllm", *argv)
