"""`alignkit rollout --infer_backend transformers`: a real rollout server on loopback (uvicorn in a thread) and
the trainer's client. It samples what in-process generation samples, follows pushed weights, and serves
--vllm_mode server and --async_generate (one step off-policy, the server's log-probs as π_old)."""

from __future__ import annotations

import copy
import json
import socket
import threading
import time

import pytest
import torch

from alignkit.algorithms.rollout import HFGenerator, batched_logprobs, make_rollout
from alignkit.cli import main
from alignkit.commands.rollout_server import create_rollout_app
from alignkit.generation.rollout_client import TransformersRolloutClient, server_backend
from alignkit.generation.vllm_server import ServerRollout, merged_weights

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

GRPO = ["rlhf", "--rlhf_type", "grpo", "--dataset", "arith-prompts#8", "--max_completion_length", "6",
        "--logging_steps", "1", "--report_to", "none", "--dtype", "fp32", "--learning_rate", "1e-1",
        "--num_generations", "2", "--batch_size", "4", "--split_dataset_ratio", "0", "--eval_strategy", "no",
        "--seed", "3"]
PROMPTS = [[5, 6, 7], [5, 6, 7], [8, 9]]
SEEDS = [11, 12, 13]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def serve():
    """serve(model) → the base URL of a rollout server for ``model`` (stopped after the test)."""
    servers = []

    def start(model) -> str:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_rollout_app(model, "tiny"), host="127.0.0.1", port=port,
                                               log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def tiny(tiny_chat_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir).eval()


def local(model, prompts, seeds, max_new_tokens=5):
    """What the trainer samples in-process, and its log-probs of the samples (logits / T)."""
    generator = HFGenerator(model, 0, [1], max_new_tokens, 0.8, batch_size=8)
    completions = generator(prompts, seeds=seeds)
    rollout = make_rollout(prompts, completions, pad_id=0, stop_ids=[1], max_new_tokens=max_new_tokens)
    logprobs = batched_logprobs(model, rollout.as_dict(), temperature=0.8, batch_size=8)[0]
    return completions, [row[: int(n)] for row, n in zip(logprobs.tolist(), rollout.completion_mask.sum(-1))]


def rollout_for(model, base_url) -> ServerRollout:
    return ServerRollout(model, TransformersRolloutClient(base_url), stop_ids=[1], max_new_tokens=5,
                         temperature=0.8, pad_id=0)


def test_the_server_samples_what_the_trainer_samples_in_process(tiny, serve):
    url = serve(copy.deepcopy(tiny))
    assert server_backend(url, timeout=10) == "transformers"
    completions = rollout_for(tiny, url)(PROMPTS, seeds=SEEDS)
    expected, expected_logprobs = local(tiny, PROMPTS, SEEDS)
    assert completions == expected
    assert [len(row) for row in completions.logprobs] == [len(row) for row in expected_logprobs]
    for got, want in zip(completions.logprobs, expected_logprobs):
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=1e-5, rtol=1e-5)


def test_pushed_weights_are_what_the_next_samples_come_from(tiny, serve):
    url = serve(copy.deepcopy(tiny))
    changed = copy.deepcopy(tiny)
    with torch.no_grad():
        for param in changed.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    rollout = rollout_for(changed, url)
    before = rollout(PROMPTS, seeds=SEEDS)
    rollout.sync_weights()
    after = rollout(PROMPTS, seeds=SEEDS)
    assert list(before) == local(tiny, PROMPTS, SEEDS)[0]
    expected, expected_logprobs = local(changed, PROMPTS, SEEDS)
    assert after == expected
    for got, want in zip(after.logprobs, expected_logprobs):
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=1e-5, rtol=1e-5)
    assert before.logprobs != after.logprobs


def test_a_prefetched_request_is_sampled_with_the_weights_before_the_next_push(tiny, serve):
    """--async_generate's lag: prefetch, then the update's push; the prefetched answer is the old weights'."""
    url = serve(copy.deepcopy(tiny))
    changed = copy.deepcopy(tiny)
    with torch.no_grad():
        for param in changed.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    rollout = rollout_for(changed, url)
    rollout.prefetch(PROMPTS, seeds=SEEDS)
    rollout.sync_weights()  # waits for the prefetched request, then pushes ``changed``
    stale = rollout(PROMPTS, seeds=SEEDS)
    fresh = rollout(PROMPTS, seeds=SEEDS)
    assert list(stale) == local(tiny, PROMPTS, SEEDS)[0]
    torch.testing.assert_close(torch.tensor(sum(stale.logprobs, [])),
                               torch.tensor(sum(local(tiny, PROMPTS, SEEDS)[1], [])), atol=1e-5, rtol=1e-5)
    assert list(fresh) == local(changed, PROMPTS, SEEDS)[0]
    with pytest.raises(Exception, match="other prompts than the ones prefetched"):
        rollout.prefetch(PROMPTS, seeds=SEEDS)
        rollout(PROMPTS[:1], seeds=SEEDS[:1])


def test_a_bad_weight_name_is_refused_by_the_server(tiny, serve):
    client = TransformersRolloutClient(serve(copy.deepcopy(tiny)))
    with pytest.raises(Exception, match="does not have"):
        client.push_weights([("not.a.weight", torch.zeros(2))])
    assert client.push_weights(merged_weights(tiny)) == len(list(tiny.parameters()))


def samples_of(tmp_path) -> list[dict]:
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    return [json.loads(line) for line in (run_dir / "completions.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """A reward that differs between random completions (the distinct characters), so every update moves."""
    path = tmp_path_factory.mktemp("plugin") / "rewards.py"
    path.write_text("def distinct_chars(completions, **kwargs):\n"
                    "    return [float(len(set(c))) for c in completions]\n")
    return path


def grpo(model_dir, out, plugin, *extra):
    assert main([*GRPO, "--model", model_dir, "--output_dir", str(out), "--external_plugins", str(plugin),
                 "--reward_funcs", "distinct_chars", *extra]) == 0
    return samples_of(out)


def server_flags(url: str) -> list[str]:
    host, port = url.removeprefix("http://").split(":")
    return ["--use_vllm", "true", "--vllm_mode", "server", "--vllm_server_host", host, "--vllm_server_port", port,
            "--vllm_server_timeout", "30"]


@pytest.mark.parametrize("tuner", [[], ["--train_type", "full"]], ids=["lora", "full"])
def test_grpo_through_the_server_trains_like_grpo_in_process(tiny_chat_model_dir, tiny, serve, tmp_path, tuner,
                                                             plugin):
    in_process = grpo(tiny_chat_model_dir, tmp_path / "local", plugin, "--max_steps", "3", *tuner)
    served = grpo(tiny_chat_model_dir, tmp_path / "served", plugin, "--max_steps", "3", *tuner,
                  *server_flags(serve(copy.deepcopy(tiny))))
    assert [(s["step"], s["prompt"], s["completion"]) for s in served] == \
        [(s["step"], s["prompt"], s["completion"]) for s in in_process]
    assert len({s["step"] for s in served}) == 3


def test_async_generate_trains_on_completions_one_step_late(tiny_chat_model_dir, tiny, serve, tmp_path, plugin):
    """Step 2's completions were requested before step 1's update reached the server: they are what step 2 samples
    with the starting weights (a run whose updates change nothing: learning rate 0), while the synchronous run's
    step 2 comes from the updated weights."""
    frozen = grpo(tiny_chat_model_dir, tmp_path / "frozen", plugin, "--max_steps", "2", "--learning_rate", "0")
    sync = grpo(tiny_chat_model_dir, tmp_path / "sync", plugin, "--max_steps", "2",
                *server_flags(serve(copy.deepcopy(tiny))))
    lagged = grpo(tiny_chat_model_dir, tmp_path / "async", plugin, "--max_steps", "2", "--async_generate", "true",
                  *server_flags(serve(copy.deepcopy(tiny))))

    def step(samples, number):
        return [(s["prompt"], s["completion"]) for s in samples if s["step"] == number]

    assert step(lagged, 1) == step(sync, 1) == step(frozen, 1)
    assert step(lagged, 2) == step(frozen, 2)
    assert step(sync, 2) != step(frozen, 2)  # the update changed what the synchronous run samples


@pytest.mark.parametrize("argv, message", [
    (["--async_generate", "true"], "--async_generate true needs a rollout server"),
    (["--async_generate", "true", "--use_vllm", "true", "--vllm_mode", "server", "--vllm_server_host", "h",
      "--dynamic_sample", "true"], "--async_generate with --dynamic_sample"),
])
def test_async_generate_refusals(tiny_model_dir, argv, message, capsys):
    assert main([*GRPO, "--model", tiny_model_dir, "--max_steps", "1", *argv]) == 2
    assert message in capsys.readouterr().err


def test_the_rollout_command_refuses_vllm_parallelism_on_the_transformers_backend(tiny_model_dir, capsys):
    assert main(["rollout", "--infer_backend", "transformers", "--model", tiny_model_dir,
                 "--vllm_tensor_parallel_size", "2"]) == 2
    assert "--vllm_tensor_parallel_size: vLLM's parallelism" in capsys.readouterr().err


def test_async_rollouts_take_the_servers_logprobs_as_the_old_policys(tiny_model_dir):
    """--async_generate: π_old of the ratio is the sampling policy's (the server's log-probs, one step back), not
    the current policy's; a completion cut at its stop token keeps its own tokens' values."""
    from test_grpo_rollout_flags import tiny_grpo
    from transformers import AutoModelForCausalLM

    from alignkit.algorithms.rollout import EncodedPrompt
    from alignkit.generation.vllm_server import Completions

    def generator(ids, greedy, seeds):
        out = Completions([[5, 2, 9], [6, 7, 2]][i % 2] for i in range(len(ids)))
        out.logprobs = [[-0.5, -1.5, -9.0], [-2.0, -0.25, -0.75]] * (len(ids) // 2)
        return out

    def reward(completions, **kwargs):
        return [float(i % 2) for i in range(len(completions))]

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompt = EncodedPrompt(messages=[{"role": "user", "content": "hi"}], ids=[3, 4], extras={})
    experience, _, _ = tiny_grpo(tiny_model_dir, generator, reward, off_policy_rollouts=True).experience(
        model, [prompt], seeds=[1])
    torch.testing.assert_close(experience["old_logprobs"], torch.tensor([[-0.5, -1.5, 0.0], [-2.0, -0.25, -0.75]]))
    synchronous, _, _ = tiny_grpo(tiny_model_dir, generator, reward).experience(model, [prompt], seeds=[1])
    assert "old_logprobs" not in synchronous and "behaviour_logprobs" not in synchronous

