"""`alignkit rollout --infer_backend transformers`: a real rollout server on loopback (uvicorn in a thread) and
the trainer's client. It samples what in-process generation samples, follows pushed weights, and serves
--vllm_mode server and --async_generate (one step off-policy, the server's log-probs as π_old); several servers
split each request and sample what one does."""

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
from alignkit.generation.rollout_client import TransformersRolloutClient, server_backend, weights_body
from alignkit.generation.vllm_server import ServerRollout, merged_weights, split_evenly

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
    """serve(model[, engine]) → the base URL of a rollout server for ``model`` (stopped after the test); ``engine``:
    its /get_engine_type/ answer."""
    servers = []

    def start(model, engine: dict | None = None) -> str:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_rollout_app(model, "tiny", engine), host="127.0.0.1", port=port,
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


def rollout_for(model, *base_urls) -> ServerRollout:
    return ServerRollout(model, [TransformersRolloutClient(url) for url in base_urls], stop_ids=[1],
                         max_new_tokens=5, temperature=0.8, pad_id=0)


def test_the_split_over_servers_is_contiguous_and_covers_every_prompt_once():
    """ms-swift's VLLMInferClient.infer: ⌈n / servers⌉ prompts each, in order; the last servers may get fewer or
    none."""
    assert [(s.start, s.stop) for s in split_evenly(5, 2)] == [(0, 3), (3, 5)]
    assert [(s.start, s.stop) for s in split_evenly(8, 2)] == [(0, 4), (4, 8)]
    assert [(s.start, s.stop) for s in split_evenly(4, 3)] == [(0, 2), (2, 4), (4, 4)]
    assert [(s.start, s.stop) for s in split_evenly(1, 3)] == [(0, 1), (1, 1), (1, 1)]
    assert [(s.start, s.stop) for s in split_evenly(0, 2)] == [(0, 0), (0, 0)]
    for n in range(12):
        for parts in range(1, 6):
            slices = split_evenly(n, parts)
            assert len(slices) == parts
            assert [i for s in slices for i in range(n)[s]] == list(range(n))
            assert all(s.stop - s.start <= -(-n // parts) for s in slices)


@pytest.mark.parametrize("servers", [1, 2])
def test_the_server_samples_what_the_trainer_samples_in_process(tiny, serve, servers):
    urls = [serve(copy.deepcopy(tiny)) for _ in range(servers)]
    assert all(server_backend(url, timeout=10) == "transformers" for url in urls)
    completions = rollout_for(tiny, *urls)(PROMPTS, seeds=SEEDS)
    expected, expected_logprobs = local(tiny, PROMPTS, SEEDS)
    assert completions == expected
    assert [len(row) for row in completions.logprobs] == [len(row) for row in expected_logprobs]
    for got, want in zip(completions.logprobs, expected_logprobs):
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=1e-5, rtol=1e-5)


def test_several_servers_each_sample_their_share_of_the_prompts(tiny, serve, monkeypatch):
    """3 prompts over 2 servers: the first 2 to the first, the last to the second, each with its own seeds."""
    urls = [serve(copy.deepcopy(tiny)) for _ in range(2)]
    sent = []
    generate = TransformersRolloutClient.generate

    def recorded(client, prompts, *, seeds, **kwargs):
        sent.append((client.base_url, prompts, seeds))
        return generate(client, prompts, seeds=seeds, **kwargs)

    monkeypatch.setattr(TransformersRolloutClient, "generate", recorded)
    completions = rollout_for(tiny, *urls)(PROMPTS, seeds=SEEDS)
    assert sorted(sent) == sorted([(urls[0], PROMPTS[:2], SEEDS[:2]), (urls[1], PROMPTS[2:], SEEDS[2:])])
    assert completions == local(tiny, PROMPTS, SEEDS)[0]
    sent.clear()
    assert rollout_for(tiny, *urls)(PROMPTS[:1], seeds=SEEDS[:1]) == local(tiny, PROMPTS[:1], SEEDS[:1])[0]
    assert sent == [(urls[0], PROMPTS[:1], SEEDS[:1])]  # nothing is sent to a server with no share


@pytest.mark.parametrize("servers", [1, 2])
def test_pushed_weights_are_what_the_next_samples_come_from(tiny, serve, servers):
    urls = [serve(copy.deepcopy(tiny)) for _ in range(servers)]
    changed = copy.deepcopy(tiny)
    with torch.no_grad():
        for param in changed.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    rollout = rollout_for(changed, *urls)
    before = rollout(PROMPTS, seeds=SEEDS)
    rollout.sync_weights()
    after = rollout(PROMPTS, seeds=SEEDS)
    assert list(before) == local(tiny, PROMPTS, SEEDS)[0]
    expected, expected_logprobs = local(changed, PROMPTS, SEEDS)
    assert after == expected
    for got, want in zip(after.logprobs, expected_logprobs):
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=1e-5, rtol=1e-5)
    assert before.logprobs != after.logprobs
    for url in urls:  # every server got the push: each alone samples all prompts with the changed weights
        assert rollout_for(changed, url)(PROMPTS, seeds=SEEDS) == expected


@pytest.mark.parametrize("servers", [1, 2])
def test_a_prefetched_request_is_sampled_with_the_weights_before_the_next_push(tiny, serve, servers):
    """--async_generate's lag: prefetch, then the update's push; the prefetched answer is the old weights'."""
    urls = [serve(copy.deepcopy(tiny)) for _ in range(servers)]
    changed = copy.deepcopy(tiny)
    with torch.no_grad():
        for param in changed.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    rollout = rollout_for(changed, *urls)
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
        client.push_weights(weights_body([("not.a.weight", torch.zeros(2))]))
    assert client.push_weights(weights_body(merged_weights(tiny))) == len(list(tiny.parameters()))


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


def server_flags(*urls: str) -> list[str]:
    hosts, ports = zip(*(url.removeprefix("http://").split(":") for url in urls))
    return ["--use_vllm", "true", "--vllm_mode", "server", "--vllm_server_host", *hosts, "--vllm_server_port",
            *ports, "--vllm_server_timeout", "30"]


@pytest.mark.parametrize("tuner", [[], ["--train_type", "full"]], ids=["lora", "full"])
def test_grpo_through_the_server_trains_like_grpo_in_process(tiny_chat_model_dir, tiny, serve, tmp_path, tuner,
                                                             plugin):
    in_process = grpo(tiny_chat_model_dir, tmp_path / "local", plugin, "--max_steps", "3", *tuner)
    served = grpo(tiny_chat_model_dir, tmp_path / "served", plugin, "--max_steps", "3", *tuner,
                  *server_flags(serve(copy.deepcopy(tiny))))
    assert [(s["step"], s["prompt"], s["completion"]) for s in served] == \
        [(s["step"], s["prompt"], s["completion"]) for s in in_process]
    assert len({s["step"] for s in served}) == 3


def test_grpo_through_two_servers_samples_what_one_server_and_the_in_process_run_sample(tiny_chat_model_dir, tiny,
                                                                                         serve, tmp_path, plugin):
    """Each step's prompts are split over the two servers with their seeds, and both get every weight push: were
    one left with older weights, its share of steps 2 and 3 would differ (the updates change what is sampled)."""
    in_process = grpo(tiny_chat_model_dir, tmp_path / "local", plugin, "--max_steps", "3")
    one = grpo(tiny_chat_model_dir, tmp_path / "one", plugin, "--max_steps", "3",
               *server_flags(serve(copy.deepcopy(tiny))))
    two = grpo(tiny_chat_model_dir, tmp_path / "two", plugin, "--max_steps", "3",
               *server_flags(serve(copy.deepcopy(tiny)), serve(copy.deepcopy(tiny))))
    frozen = grpo(tiny_chat_model_dir, tmp_path / "frozen", plugin, "--max_steps", "3", "--learning_rate", "0")

    def samples(run):
        return [(s["step"], s["prompt"], s["completion"]) for s in run]

    assert samples(two) == samples(one) == samples(in_process)
    assert len({s["step"] for s in two}) == 3
    assert [x for x in samples(two) if x[0] == 3] != [x for x in samples(frozen) if x[0] == 3]


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



# --------------------------------------------------------------- a multi-turn scheduler given to the server


@pytest.fixture(scope="module")
def scheduler_plugin(tmp_path_factory):
    """An ms-swift plugin file registering `ask_twice`, as ms-swift's examples give one to `swift rollout
    --external_plugins ... --multi_turn_scheduler ...`: a user turn after each answer, until max_turns (also after
    a turn cut at the length limit, so that the tiny model's unstopped answers still make several turns)."""
    path = tmp_path_factory.mktemp("scheduler") / "ask_twice_plugin.py"
    path.write_text("from swift.rollout.multi_turn import MultiTurnScheduler, multi_turns\n\n\n"
                    "class AskTwice(MultiTurnScheduler):\n"
                    "    def check_finished(self, infer_request, response_choice, current_turn):\n"
                    "        return current_turn >= self.max_turns\n\n"
                    "    def step(self, infer_request, response_choice, current_turn):\n"
                    "        infer_request.messages.append({'role': 'user', 'content': 'Again?'})\n"
                    "        return {'infer_request': infer_request}\n\n\n"
                    "multi_turns['ask_twice'] = AskTwice\n")
    return path


def announcing(scheduler_plugin, *extra: str) -> dict:
    """The /get_engine_type/ answer of `alignkit rollout --multi_turn_scheduler ask_twice --max_turns 2 ...`."""
    from alignkit.config.rollout_args import RolloutArguments
    from alignkit.generation.engine_info import describe

    args = RolloutArguments(model="m", multi_turn_scheduler="ask_twice", max_turns=2,
                            external_plugins=[str(scheduler_plugin), *extra])
    return describe(args, "transformers")


def test_a_scheduler_given_to_the_server_runs_as_if_given_to_the_trainer(tiny_chat_model_dir, tiny, serve, tmp_path,
                                                                          plugin, scheduler_plugin):
    """ms-swift's example pair: the scheduler on `swift rollout`, none on the trainer. The trainer adopts the one
    the server announces: the same multi-turn trajectories, turn by turn, as the trainer given the scheduler."""
    told = grpo(tiny_chat_model_dir, tmp_path / "told", plugin, "--max_steps", "2", "--external_plugins", str(plugin),
                str(scheduler_plugin), "--multi_turn_scheduler", "ask_twice", "--max_turns", "2",
                *server_flags(serve(copy.deepcopy(tiny))))
    announced = grpo(tiny_chat_model_dir, tmp_path / "announced", plugin, "--max_steps", "2",
                     *server_flags(serve(copy.deepcopy(tiny), announcing(scheduler_plugin))))
    one_turn = grpo(tiny_chat_model_dir, tmp_path / "one_turn", plugin, "--max_steps", "2",
                    *server_flags(serve(copy.deepcopy(tiny))))

    def samples(run):
        return [(s["step"], s["prompt"], s["completion"]) for s in run]

    assert samples(announced) == samples(told)
    # Two turns each, the environment's "Again?" between them; the one-turn run's first turns are the same.
    assert all(s["completion"].count("Again?") == 1 for s in announced)
    assert [s["completion"].split("Again?")[0][:3] for s in announced if s["step"] == 1] == \
        [s["completion"][:3] for s in one_turn if s["step"] == 1]
    run_dir = next(p for p in (tmp_path / "announced").iterdir() if p.is_dir())
    resolved = json.loads((run_dir / "args.json").read_text())
    assert resolved["multi_turn_scheduler"] == "ask_twice" and resolved["max_turns"] == 2


def test_the_trainer_and_the_server_must_agree_on_the_scheduler(tiny_chat_model_dir, tiny, serve, tmp_path, plugin,
                                                               scheduler_plugin, capsys):
    url = serve(copy.deepcopy(tiny), announcing(scheduler_plugin))
    argv = [*GRPO, "--model", tiny_chat_model_dir, "--output_dir", str(tmp_path), "--external_plugins", str(plugin),
            "--reward_funcs", "distinct_chars", "--max_steps", "1", *server_flags(url)]
    assert main([*argv, "--multi_turn_scheduler", "math_tip_trick"]) == 2
    assert "--multi_turn_scheduler math_tip_trick: the rollout server" in capsys.readouterr().err
    assert main([*argv, "--max_turns", "3"]) == 2
    assert "--max_turns 3: the rollout server" in capsys.readouterr().err
    assert main([*argv, "--dynamic_sample", "true"]) == 2  # the trainer's multi-turn checks, on the adopted one
    assert "--dynamic_sample with --multi_turn_scheduler" in capsys.readouterr().err
    assert not any(p.is_dir() for p in tmp_path.iterdir())  # stopped before a run directory was made


def test_a_plugin_file_the_trainer_does_not_have_is_named(tiny_chat_model_dir, tiny, serve, tmp_path, plugin,
                                                          scheduler_plugin, capsys):
    engine = {**announcing(scheduler_plugin), "external_plugins": [str(tmp_path / "elsewhere" / "sched.py")]}
    url = serve(copy.deepcopy(tiny), engine)
    assert main([*GRPO, "--model", tiny_chat_model_dir, "--output_dir", str(tmp_path / "out"), "--external_plugins",
                 str(plugin), "--reward_funcs", "distinct_chars", "--max_steps", "1", *server_flags(url)]) == 2
    err = capsys.readouterr().err
    assert f"--external_plugins {tmp_path / 'elsewhere' / 'sched.py'}, which this machine does not have" in err


def test_servers_that_disagree_are_refused():
    from alignkit.errors import AlignkitError
    from alignkit.generation.engine_info import announced_scheduler

    multi = {"enable_multi_turn": True, "multi_turn_scheduler": "s", "max_turns": 2, "external_plugins": ["/p.py"]}
    one_turn = {"engine_type": "transformers", "enable_multi_turn": False}
    assert announced_scheduler({"a": one_turn, "b": None}) is None  # None: a plain vLLM server
    assert announced_scheduler({"a": multi, "b": dict(multi)}).name == "s"
    with pytest.raises(AlignkitError, match="the rollout servers announce different multi-turn settings"):
        announced_scheduler({"a": multi, "b": one_turn})
    with pytest.raises(AlignkitError, match="different multi-turn settings"):
        announced_scheduler({"a": multi, "b": {**multi, "max_turns": 3}})


def test_the_vllm_server_announces_the_scheduler_through_its_middleware(monkeypatch, tiny_model_dir,
                                                                         scheduler_plugin):
    """`alignkit rollout` (vLLM) checks the scheduler, then starts `vllm serve` with alignkit's middleware, which
    answers /get_engine_type/ as the app vLLM builds would (``app.middleware("http")(function)``)."""
    import os

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    import alignkit.config.rollout_args as rollout_args
    from alignkit.generation import engine_info

    started = []
    monkeypatch.setattr(rollout_args, "check_server_packages", lambda what: None)
    monkeypatch.setattr("trl.scripts.vllm_serve.main", lambda script_args, extra=None: started.append(extra))
    monkeypatch.delenv(engine_info.ENVIRONMENT, raising=False)
    assert main(["rollout", "--model", tiny_model_dir, "--multi_turn_scheduler", "ask_twice", "--max_turns", "2",
                 "--external_plugins", str(scheduler_plugin)]) == 0
    assert started == [["--middleware", "alignkit.generation.engine_info.engine_info_middleware"]]
    module, name = engine_info.MIDDLEWARE.rsplit(".", 1)
    app = FastAPI()
    app.middleware("http")(getattr(__import__(module, fromlist=[name]), name))
    app.get("/health")(lambda: {"status": "ok"})
    with TestClient(app) as client:
        answer = client.post("/get_engine_type/").json()
        assert client.get("/health").json() == {"status": "ok"}  # other routes pass through
    assert answer == {"engine_type": "AsyncLLMEngine", "enable_multi_turn": True, "use_gym_env": False,
                      "enable_lora": False, "multi_turn_scheduler": "ask_twice", "max_turns": 2, "gym_env": None,
                      "external_plugins": [str(scheduler_plugin.resolve())]}
    assert json.loads(os.environ[engine_info.ENVIRONMENT]) == answer
    # A scheduler that calls ms-swift's engine itself is refused before any server starts.
    own_run = scheduler_plugin.parent / "own_run.py"
    own_run.write_text("from swift.rollout.multi_turn import MultiTurnScheduler, multi_turns\n"
                       "class Own(MultiTurnScheduler):\n    def run(self, *a, **k):\n        pass\n"
                       "multi_turns['own'] = Own\n")
    assert main(["rollout", "--model", tiny_model_dir, "--multi_turn_scheduler", "own", "--external_plugins",
                 str(own_run)]) == 2
    assert len(started) == 1


def test_gkd_refuses_a_server_that_runs_a_scheduler(tiny_chat_model_dir, tiny, serve, tmp_path, scheduler_plugin,
                                                    capsys):
    url = serve(copy.deepcopy(tiny), announcing(scheduler_plugin))
    assert main(["rlhf", "--rlhf_type", "gkd", "--model", tiny_chat_model_dir, "--teacher_model",
                 tiny_chat_model_dir, "--dataset", "arith-sft#8", "--max_completion_length", "4", "--max_steps",
                 "1", "--report_to", "none", "--split_dataset_ratio", "0", "--output_dir", str(tmp_path),
                 *server_flags(url)]) == 2
    assert "--multi_turn_scheduler with --rlhf_type gkd: multi-turn rollouts are GRPO's" in capsys.readouterr().err
