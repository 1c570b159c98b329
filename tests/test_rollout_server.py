"""`alignkit rollout` (ms-swift's `swift rollout`) → TRL's vllm-serve arguments, and --vllm_mode server training through
TRL's VLLMClient interface. vLLM cannot run on a CPU machine: the server is never started here and the client is a
stand-in with VLLMClient's methods, recording what the trainer sends and answering as the server would."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

import alignkit.config.rollout_args as rollout_args
from alignkit.cli import main

GRPO = ["rlhf", "--rlhf_type", "grpo", "--dataset", "arith-prompts#8", "--max_completion_length", "6",
        "--logging_steps", "1", "--report_to", "none", "--dtype", "fp32", "--learning_rate", "1e-1",
        "--reward_funcs", "arith_format", "--num_generations", "2", "--batch_size", "4", "--max_steps", "2",
        "--split_dataset_ratio", "0", "--eval_strategy", "no"]
SERVER = ["--use_vllm", "true", "--vllm_mode", "server", "--vllm_server_host", "10.0.0.7", "--vllm_server_port",
          "8011", "--vllm_server_timeout", "30"]


def test_rollout_passes_swift_flags_to_trl_vllm_serve(monkeypatch, tiny_model_dir):
    from trl.scripts.vllm_serve import build_command

    started = []
    monkeypatch.setattr(rollout_args, "check_server_packages", lambda what: None)
    monkeypatch.setattr("trl.scripts.vllm_serve.main", lambda script_args, extra=None: started.append(script_args))
    assert main(["rollout", "--model", tiny_model_dir, "--port", "8011", "--host", "127.0.0.1",
                 "--vllm_tensor_parallel_size", "2", "--vllm_data_parallel_size", "2",
                 "--vllm_gpu_memory_utilization", "0.5", "--vllm_max_model_len", "4096",
                 "--vllm_enable_prefix_caching", "false", "--vllm_enforce_eager", "true", "--torch_dtype", "bf16",
                 "--vllm_use_async_engine", "true"]) == 0
    (script_args,) = started
    command = build_command(script_args)
    assert command[command.index("serve") + 1] == tiny_model_dir
    pairs = dict(zip(command, command[1:]))
    assert pairs["--host"] == "127.0.0.1" and pairs["--port"] == "8011"
    assert pairs["--tensor-parallel-size"] == "2" and pairs["--data-parallel-size"] == "2"
    assert pairs["--gpu-memory-utilization"] == "0.5" and pairs["--max-model-len"] == "4096"
    assert pairs["--dtype"] == "bfloat16"
    assert "--no-enable-prefix-caching" in command and "--enforce-eager" in command


def test_rollout_takes_ms_swift_3_data_parallel_size(monkeypatch, tiny_model_dir):
    # examples/train/grpo/external/grpo_7b.sh: `swift rollout --data_parallel_size 2`, ms-swift 3.x's name of
    # --vllm_data_parallel_size (renamed in ms-swift's "Refactor vllm args", #5035).
    from trl.scripts.vllm_serve import build_command

    started = []
    monkeypatch.setattr(rollout_args, "check_server_packages", lambda what: None)
    monkeypatch.setattr("trl.scripts.vllm_serve.main", lambda script_args, extra=None: started.append(script_args))
    assert main(["rollout", "--model", tiny_model_dir, "--data_parallel_size", "3"]) == 0
    command = build_command(started[0])
    assert dict(zip(command, command[1:]))["--data-parallel-size"] == "3"


def test_rollout_without_vllm_is_a_clear_error(tiny_model_dir, capsys):
    pytest.importorskip("trl")
    if rollout_args.importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    assert main(["rollout", "--model", tiny_model_dir]) == 2
    assert "alignkit rollout runs on TRL's vLLM server and client, which need vllm" in capsys.readouterr().err
    assert main([*GRPO, "--model", tiny_model_dir, *SERVER]) == 2
    assert "--vllm_mode server runs on TRL's vLLM server and client, which need vllm" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["rollout", "--model", "m", "--use_gym_env", "true"], "--use_gym_env: a gym environment is driven by a multi"),
    (["rollout", "--model", "m", "--multi_turn_scheduler", "openenv_scheduler"], "OpenEnv environments (a server"),
    (["rollout", "--model", "m", "--multi_turn_scheduler", "gym_scheduler", "--gym_env", "nope"],
     "--gym_env nope: no such environment; known: math_env"),
    (["rollout", "--model", "m", "--multi_turn_scheduler", "nope"], "--multi_turn_scheduler nope: unknown; known: "),
    (["rollout", "--model", "m", "--multi_turn_scheduler", "math_tip_trick", "--max_turns", "0"],
     "--max_turns 0: expected 1 or more"),
    ([*GRPO, "--use_vllm", "true", "--vllm_mode", "server"], "--vllm_mode server needs --vllm_server_host"),
    ([*GRPO, "--use_vllm", "true", "--vllm_mode", "server", "--vllm_server_host", "h1", "h2"],
     "--vllm_server_host names 2 rollout server(s) and --vllm_server_port 1 port(s): give one port per host"),
    ([*GRPO, "--use_vllm", "true", "--vllm_mode", "server", "--vllm_server_host", "h1", "--vllm_server_port", "1",
      "2"], "--vllm_server_host names 1 rollout server(s) and --vllm_server_port 2 port(s)"),
    ([*GRPO, "--use_vllm", "true", "--vllm_mode", "server", "--vllm_server_base_url", "http://a:1", "http://b:2",
      "--vllm_server_group_port", "51216"],
     "--vllm_server_base_url names 2 rollout server(s) and --vllm_server_group_port 1 port(s): give one group port"),
])
def test_refusals(monkeypatch, argv, message, capsys):
    monkeypatch.setattr(rollout_args, "check_server_packages", lambda what: None)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


class FakeClient:
    """VLLMClient's interface (trl/generation/vllm_client.py): answers the prompts alternately with ``answers``
    (each followed by a stop token and one more token, which the trainer must cut off) and records the calls."""

    instances: list = []

    def __init__(self, base_url=None, host="0.0.0.0", server_port=8000, group_port=51216, connection_timeout=0.0):
        self.address = (base_url, host, server_port, group_port, connection_timeout)
        self.base_url = f"http://{host}:{server_port}"
        self.calls, self.pushes, self.communicator = [], [], None
        FakeClient.instances.append(self)

    def init_communicator(self, device=0):
        self.communicator = device

    def generate(self, prompts, n=1, **kwargs):
        self.calls.append({"prompts": [list(p) for p in prompts], "n": n, **kwargs})
        stop = kwargs["generation_kwargs"]["stop_token_ids"][0]
        answers = [self.answers[i % 2] + [stop, self.answers[0][0]] for i in range(len(prompts))]
        return {"prompt_ids": prompts, "completion_ids": answers}

    @contextlib.contextmanager
    def weight_update(self):
        self.pushes.append({})
        yield

    def update_named_param(self, name, weights):
        self.pushes[-1][name] = weights.clone()

    def reset_prefix_cache(self):
        self.pushes[-1]["<reset>"] = None


def fake_vllm_server(monkeypatch) -> None:
    """TRL's vLLM server as the trainer sees it, with FakeClient as its client: a server that is not alignkit's
    (no /health/ backend) and announces no multi-turn scheduler (no /get_engine_type/), on GPU 0."""
    monkeypatch.setattr(rollout_args, "check_server_packages", lambda what: None)
    monkeypatch.setattr("trl.generation.vllm_client.VLLMClient", FakeClient)
    monkeypatch.setattr("alignkit.generation.rollout_client.server_backend", lambda url, timeout: None)
    monkeypatch.setattr("alignkit.generation.engine_info.fetch_engine_info", lambda url: None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_grpo_samples_from_the_server_and_pushes_weights_after_each_update(monkeypatch, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    # Rewarded differently by arith_format, so every group's advantages (and the update) are not zero.
    FakeClient.instances = []
    FakeClient.answers = [tokenizer.encode("Answer: 7", add_special_tokens=False),
                          tokenizer.encode("7", add_special_tokens=False)]
    fake_vllm_server(monkeypatch)
    assert main([*GRPO, "--model", tiny_model_dir, *SERVER, "--top_k", "-1", "--top_p", "0.9", "--temperature",
                 "0.7", "--output_dir", str(tmp_path)]) == 0
    (client,) = FakeClient.instances
    assert client.address == (None, "10.0.0.7", 8011, 51216, 30.0) and client.communicator == 0
    # What it sends: the prompts' token ids (G = 2 copies each), sampling flags in TRL's spelling (top_k -1 -> 0)
    assert len(client.calls) == 2
    call = client.calls[0]
    assert len(call["prompts"]) == 4 and call["prompts"][0] == call["prompts"][1] != call["prompts"][2]
    assert call["prompts"][0][-1] != tokenizer.pad_token_id
    assert {k: call[k] for k in ("n", "temperature", "top_k", "top_p", "max_tokens")} == {
        "n": 1, "temperature": 0.7, "top_k": 0, "top_p": 0.9, "max_tokens": 6}
    # What it does with the answer: completions cut after the stop token, scored and trained on
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    logged = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]
    assert [r["completions/stopped_ratio"] for r in logged] == [1.0, 1.0]
    samples = [json.loads(line) for line in (run_dir / "completions.jsonl").read_text().splitlines()]
    assert [s["completion"] for s in samples[:4]] == [tokenizer.decode(a + [tokenizer.eos_token_id],
                                                                       skip_special_tokens=True)
                                                      for a in FakeClient.answers * 2]
    assert [s["arith_format"] for s in samples[:2]] == [1.0, 0.0]
    # Weights: pushed at the start and after each of the 2 updates, under the base model's names, LoRA merged
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert len(client.pushes) == 3
    for push in client.pushes:
        assert push.pop("<reset>", "missing") is None  # the prefix cache is dropped after each push
        assert set(push) <= set(base) and not any("lora" in name for name in push)
    name = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(client.pushes[0][name], base[name])  # LoRA's B starts at 0
    assert not torch.equal(client.pushes[2][name], client.pushes[0][name])  # the update reached the server


def test_grpo_splits_each_request_over_two_vllm_servers_and_pushes_to_both(monkeypatch, tiny_model_dir, tmp_path):
    """ms-swift's multi-node example (--vllm_server_host h1 h2 --vllm_server_port p1 p2): one client per server,
    each with its own weight-sync group port (51216, 51217), each sent a contiguous half of every request and every
    weight push."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    FakeClient.instances = []
    FakeClient.answers = [tokenizer.encode("Answer: 7", add_special_tokens=False),
                          tokenizer.encode("7", add_special_tokens=False)]
    fake_vllm_server(monkeypatch)
    assert main([*GRPO, "--model", tiny_model_dir, "--use_vllm", "true", "--vllm_mode", "server",
                 "--vllm_server_host", "10.0.0.7", "10.0.0.8", "--vllm_server_port", "8011", "8012",
                 "--vllm_server_timeout", "30", "--output_dir", str(tmp_path)]) == 0
    first, second = FakeClient.instances
    assert first.address == (None, "10.0.0.7", 8011, 51216, 30.0)
    assert second.address == (None, "10.0.0.8", 8012, 51217, 30.0)
    assert [len(c["prompts"]) for c in first.calls] == [len(c["prompts"]) for c in second.calls] == [2, 2]
    # the first server has each step's first 2 prompts (G = 2 copies of one), the second the other 2
    assert all(c["prompts"][0] == c["prompts"][1] for c in first.calls + second.calls)
    assert all(a["prompts"][0] != b["prompts"][0] for a, b in zip(first.calls, second.calls))
    assert len(first.pushes) == len(second.pushes) == 3  # the start, and after each of the 2 updates
    for a, b in zip(first.pushes, second.pushes):
        assert set(a) == set(b) and all(b[k] is None if a[k] is None else torch.equal(a[k], b[k]) for k in a)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(second.pushes[2][name], second.pushes[0][name])
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    samples = [json.loads(line) for line in (run_dir / "completions.jsonl").read_text().splitlines()]
    # the answers joined back in prompt order: each server answers its chunk "Answer: 7", "7", ...
    assert [s["completion"] for s in samples[:4]] == [tokenizer.decode(a + [tokenizer.eos_token_id],
                                                                       skip_special_tokens=True)
                                                      for a in FakeClient.answers * 2]


def test_gkd_student_samples_from_the_server_with_the_weights_of_each_step(monkeypatch, tiny_model_dir,
                                                                           tiny_chat_model_dir, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    FakeClient.instances = []
    FakeClient.answers = [tokenizer.encode("Answer: 7", add_special_tokens=False),
                          tokenizer.encode("7", add_special_tokens=False)]
    fake_vllm_server(monkeypatch)
    assert main(["rlhf", "--rlhf_type", "gkd", "--model", tiny_model_dir, "--teacher_model", tiny_chat_model_dir,
                 "--dataset", "arith-sft#4", "--lmbda", "1", "--max_steps", "3", "--per_device_train_batch_size", "2",
                 "--max_completion_length", "6", "--report_to", "none", "--dtype", "fp32", "--learning_rate", "1e-1",
                 "--split_dataset_ratio", "0", "--eval_strategy", "no", "--logging_steps", "1", *SERVER,
                 "--output_dir", str(tmp_path)]) == 0
    (client,) = FakeClient.instances
    assert len(client.calls) == 3 and all(len(c["prompts"]) == 2 for c in client.calls)
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    logged = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]
    lengths = [len(a) + 1 for a in FakeClient.answers]  # each answer and its stop token; what follows is cut
    assert [r["completion_length"] for r in logged] == [sum(lengths) / 2] * 3
    # pushed at the start, then before the samples of steps 2 and 3 (after each update)
    assert len(client.pushes) == 3
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(client.pushes[1][name], client.pushes[0][name])
    assert not torch.equal(client.pushes[2][name], client.pushes[1][name])


def test_several_processes_share_one_client_on_the_first(monkeypatch):
    """Process 0 sends every process's prompts in one request and hands each its own completions; the others hold
    no client and push no weights."""
    import alignkit.generation.vllm_server as server

    sent = {0: [[1, 2]], 1: [[3], [4, 5]]}
    monkeypatch.setattr(server, "_gather", lambda request, world: [(sent[0], None), (sent[1], None)])
    handed = {}
    monkeypatch.setattr(server, "_scatter", lambda answers, world: handed.setdefault(world[0], answers)[world[0]])

    class Echo:
        def generate(self, prompts, n, **kwargs):
            return {"completion_ids": [[p[-1] + 10] for p in prompts]}

    monkeypatch.setattr(server, "_world", lambda: (0, 2))
    first = server.ServerRollout(None, [Echo()], stop_ids=[0], max_new_tokens=4, temperature=1.0)
    assert first(sent[0]) == [[12]]
    assert handed[0] == [([[12]], None), ([[13], [15]], None)]
    monkeypatch.setattr(server, "_world", lambda: (1, 2))
    monkeypatch.setattr(server, "_scatter", lambda answers, world: [([[12]], None), ([[13], [15]], None)][world[0]])
    second = server.ServerRollout(torch.nn.Linear(2, 2), [], stop_ids=[0], max_new_tokens=4, temperature=1.0)
    assert second(sent[1]) == [[13], [15]]
    second.sync_weights()  # no client: nothing to push, and no error


def test_rollout_serves_the_built_in_model_by_its_name(monkeypatch, tmp_path):
    """`--model smollm2-135m-instruct` means the built-in model on `alignkit rollout` as on every other command."""
    loaded, served = [], []
    monkeypatch.setattr("alignkit.models.load.builtin_model_dir", lambda: tmp_path / "builtin")
    monkeypatch.setattr("alignkit.models.load.load_causal_lm", lambda path, *a, **k: loaded.append(path) or
                        torch.nn.Linear(1, 1))
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: None)
    assert main(["rollout", "--infer_backend", "transformers", "--model", "smollm2-135m-instruct"]) == 0
    assert loaded == [str(tmp_path / "builtin")]
    monkeypatch.setattr(rollout_args, "check_server_packages", lambda what: None)
    monkeypatch.setattr("trl.scripts.vllm_serve.main", lambda script_args, extra=None: served.append(script_args))
    assert main(["rollout", "--model", "smollm2-135m-instruct"]) == 0
    assert served[0].model == str(tmp_path / "builtin")
