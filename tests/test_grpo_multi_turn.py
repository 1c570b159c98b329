"""Multi-turn GRPO (--multi_turn_scheduler, --max_turns): ms-swift's scheduler contract (step / check_finished /
max_turns), the trajectory's tokens (the model's trained, the environment's masked), log-probs over the whole
trajectory, an ms-swift plugin file loading unchanged, and a short GRPO run with a scheduler."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_online_cli import COMMON, PLUGIN, records, run_dir_of

from alignkit.algorithms.multi_turn import (
    Chat,
    MathTipsScheduler,
    MultiTurnScheduler,
    RolloutInferRequest,
    run_multi_turn,
)
from alignkit.algorithms.rollout import EncodedPrompt, completion_logprobs, packed_completion_logprobs
from alignkit.cli import main
from alignkit.errors import AlignkitError

IM_END = "<|im_end|>"


class TryAgain(MultiTurnScheduler):
    """Answers every turn with a user turn, until an answer holds "4" (check_finished) or max_turns."""

    def check_finished(self, infer_request, response_choice, current_turn):
        if "4" in response_choice.message.content:
            return True
        return super().check_finished(infer_request, response_choice, current_turn)

    def step(self, infer_request, response_choice, current_turn):
        infer_request.messages.append({"role": "user", "content": f"Try again ({current_turn})."})
        return {"infer_request": infer_request, "rollout_infos": {"tries": current_turn}}


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    from transformers import AutoTokenizer

    from alignkit.data.chat_templates import resolve_template
    from alignkit.data.template import ChatEncoder

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return ChatEncoder(tokenizer, max_length=256, template=resolve_template(tokenizer))


def chat_of(encoder) -> Chat:
    tokenizer = encoder.tokenizer
    return Chat(render=lambda m, p: encoder.render(m, generation_prompt=p), tokens=encoder.tokens,
                decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False),
                text=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
                stop_ids={tokenizer.convert_tokens_to_ids(IM_END)})


def scripted(encoder, answers: dict[int, list[str]]):
    """A sampler answering trajectory i's turn t with answers[i][t - 1] + <|im_end|> (stopped); records its calls."""
    calls = []

    def sample(rows, contexts, turn):
        calls.append((list(rows), turn))
        return [(encoder.tokens(answers[i][turn - 1] + IM_END), True) for i in rows]

    return sample, calls


def start(encoder, *questions):
    messages = [[{"role": "user", "content": q}] for q in questions]
    ids = [encoder.tokens(encoder.render(m, generation_prompt=True)) for m in messages]
    return [RolloutInferRequest(messages=m, data_dict={"solution": "4"}) for m in messages], ids


def test_environment_turns_join_the_trajectory_untrained(encoder):
    chat = chat_of(encoder)
    requests, prompt_ids = start(encoder, "2+2?")
    sample, _ = scripted(encoder, {0: ["5", "3", "4"]})
    (trajectory,) = run_multi_turn(TryAgain(None, 5), requests, sample, prompt_ids, chat, None)
    environment = "\n<|im_start|>user\nTry again ({}).<|im_end|>\n<|im_start|>assistant\n"
    # The sequence is exactly the conversation as the chat template writes it, the model's tokens as sampled.
    rendered = encoder.render(trajectory.messages, generation_prompt=False)
    assert chat.decode(prompt_ids[0] + trajectory.ids) == rendered.removesuffix("\n")  # the template's last newline
    assert chat.decode(trajectory.ids) == (f"5{IM_END}" + environment.format(1) + f"3{IM_END}" +
                                           environment.format(2) + f"4{IM_END}")
    # The mask covers exactly the model's tokens: its answers and the stop token ending each.
    model = [t for t, m in zip(trajectory.ids, trajectory.trained) if m]
    assert model == encoder.tokens(f"5{IM_END}") + encoder.tokens(f"3{IM_END}") + encoder.tokens(f"4{IM_END}")
    masked = chat.decode([t for t, m in zip(trajectory.ids, trajectory.trained) if not m])
    assert masked == environment.format(1) + environment.format(2)
    assert trajectory.infos == {"tries": 2, "num_turns": 3} and trajectory.stopped
    assert [m["role"] for m in trajectory.messages] == ["user", "assistant", "user", "assistant", "user", "assistant"]


def test_check_finished_and_max_turns_end_trajectories(encoder):
    chat = chat_of(encoder)
    requests, prompt_ids = start(encoder, "a", "b", "c")
    answers = {0: ["4"], 1: ["1", "2", "3", "4"], 2: ["1", "4"]}
    sample, calls = scripted(encoder, answers)
    # --max_turns alone (the scheduler was given none): the driver ends trajectory 1 at turn 3.
    trajectories = run_multi_turn(TryAgain(None, None), requests, sample, prompt_ids, chat, 3)
    # check_finished ends 0 at turn 1 and 2 at turn 2; max_turns (3) ends 1, whose 4th answer is never asked for.
    assert [t.infos["num_turns"] for t in trajectories] == [1, 3, 2]
    assert calls == [([0, 1, 2], 1), ([1, 2], 2), ([1], 3)]
    # The scheduler's own max_turns, with --max_turns unset, ends it the same way (ms-swift's default check).
    requests, prompt_ids = start(encoder, "b")
    sample, _ = scripted(encoder, {0: answers[1]})
    (trajectory,) = run_multi_turn(TryAgain(None, 2), requests, sample, prompt_ids, chat, None)
    assert trajectory.infos["num_turns"] == 2


def test_a_process_done_early_samples_empty_turns_while_others_go_on(encoder):
    # ms-swift's gather_fn: the generator may gather prompts over processes, so each takes part in every turn.
    requests, prompt_ids = start(encoder, "a")
    sample, calls = scripted(encoder, {0: ["4"]})
    elsewhere = iter([True, True, True, False])  # another process's trajectories need three turns
    (trajectory,) = run_multi_turn(TryAgain(None, None), requests, sample, prompt_ids, chat_of(encoder), None,
                                   lambda going: next(elsewhere))
    assert calls == [([0], 1), ([], 2), ([], 3)] and trajectory.infos["num_turns"] == 1


def test_a_turn_cut_at_the_length_limit_ends_the_trajectory(encoder):
    chat = chat_of(encoder)
    requests, prompt_ids = start(encoder, "a")
    (trajectory,) = run_multi_turn(TryAgain(None, 5), requests, lambda rows, c, t: [(encoder.tokens("12"), False)],
                                   prompt_ids, chat, None)
    assert trajectory.infos["num_turns"] == 1 and not trajectory.stopped and all(trajectory.trained)


def test_math_tip_trick_continues_the_answer_with_the_tip_untrained(encoder):
    chat = chat_of(encoder)
    requests, prompt_ids = start(encoder, "2+2?")
    sample, _ = scripted(encoder, {0: ["1+2 </think> 3", " 4"]})
    scheduler = MathTipsScheduler(None, 3, acc_function=lambda c, s: [float(c[0].strip().endswith(s[0]))])
    (trajectory,) = run_multi_turn(scheduler, requests, sample, prompt_ids, chat, None)
    tip = MathTipsScheduler.tips_prompt
    # ms-swift's MathTipsScheduler: the answer is cut before </think>, the tip written after it, and continued.
    assert trajectory.messages[-1] == {"role": "assistant", "content": f"1+2 {tip} 4"}
    assert chat.decode(trajectory.ids) == f"1+2 {tip} 4{IM_END}"
    trained = chat.decode([t for t, m in zip(trajectory.ids, trajectory.trained) if m])
    # Not the model's: the tip, the dropped stop token, and the space before </think> the model wrote as one token
    # with "</" (its text no longer follows from the tokens kept).
    assert trained == f"1+2 4{IM_END}" and tip not in trained
    assert trajectory.infos["num_turns"] == 2


def test_log_probs_see_the_whole_trajectory_and_train_the_model_tokens(tiny_model_dir, encoder):
    from transformers import AutoModelForCausalLM

    from alignkit.algorithms.rollout import trajectory_rollout

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    chat = chat_of(encoder)
    requests, prompt_ids = start(encoder, "2+2?", "1+1?")
    sample, _ = scripted(encoder, {0: ["5", "4"], 1: ["2", "4"]})
    trajectories = run_multi_turn(TryAgain(None, 3), requests, sample, prompt_ids, chat, None)
    experience = trajectory_rollout(prompt_ids, trajectories, encoder.tokenizer.pad_token_id).as_dict()
    assert experience["completion_mask"].tolist()[1][: len(trajectories[1].ids)] == trajectories[1].trained
    logprobs, _ = completion_logprobs(model, experience, temperature=1.0)  # (N, C)
    for row, (prompt, trajectory) in enumerate(zip(prompt_ids, trajectories)):
        full = torch.tensor([prompt + trajectory.ids])
        expected = model(full).logits[0, len(prompt) - 1 : -1].log_softmax(-1)  # each token after the env's too
        expected = expected.gather(-1, torch.tensor(trajectory.ids)[:, None])[:, 0]
        trained = torch.tensor(trajectory.trained, dtype=torch.bool)
        got = logprobs[row, : len(trajectory.ids)]
        torch.testing.assert_close(got[trained], expected[trained], atol=1e-5, rtol=1e-5)
    packed, _ = packed_completion_logprobs(model, experience, temperature=1.0)
    mask = experience["completion_mask"].bool()
    torch.testing.assert_close(packed[mask], logprobs[mask], atol=1e-5, rtol=1e-5)


def test_grpo_experience_scores_the_conversation_and_trains_model_tokens(tiny_model_dir, encoder):
    from test_grpo_rollout_flags import tiny_grpo
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    seen = {}

    def generator(ids, greedy, seeds):
        return [encoder.tokens(("4" if len(i) > len(prompt.ids) else "5") + IM_END) for i in ids]  # "4" on a retry

    def reward(completions, messages, rollout_infos, **kwargs):
        seen.update(completions=completions, messages=messages, infos=rollout_infos)
        return [float(len(m)) for m in messages]

    question = [{"role": "user", "content": "2+2?"}]
    prompt = EncodedPrompt(messages=question, ids=encoder.tokens(encoder.render(question, generation_prompt=True)),
                           extras={})
    grpo = tiny_grpo(tiny_model_dir, generator, reward, tokenizer=encoder.tokenizer,
                     stop_ids=sorted(chat_of(encoder).stop_ids), scheduler=TryAgain(None, 3), max_turns=3,
                     chat=chat_of(encoder))
    experience, metrics, samples = grpo.experience(model, [prompt], seeds=[1])
    assert seen["completions"] == ["4", "4"] and [m["role"] for m in seen["messages"][0]] == [
        "user", "assistant", "user", "assistant"]
    assert seen["infos"][0]["num_turns"] == 2 and metrics["completions/mean_turns"] == 2
    trained = experience["completion_mask"][0].bool()
    present = experience["completion_attention_mask"][0].bool()
    assert (trained & ~present).sum() == 0 and (present & ~trained).sum() > 0
    assert encoder.tokenizer.decode(experience["completion_ids"][0][trained]) == f"5{IM_END}4{IM_END}"
    experience["advantages"] = torch.tensor([1.0, -1.0])
    loss, _ = grpo.loss(model, experience)
    assert math.isfinite(loss.item())


SWIFT_PLUGIN = '''
from swift.rollout.multi_turn import MultiTurnScheduler, multi_turns


class AskTwice(MultiTurnScheduler):
    def step(self, infer_request, response_choice, current_turn):
        infer_request.messages.append({"role": "user", "content": "Again?"})
        return {"infer_request": infer_request}


multi_turns["ask_twice"] = AskTwice
'''


def test_ms_swift_plugin_scheduler_loads_and_grpo_runs(tmp_path, tiny_model_dir):
    rewards, schedulers = tmp_path / "rewards.py", tmp_path / "scheduler.py"
    rewards.write_text(PLUGIN)
    schedulers.write_text(SWIFT_PLUGIN)
    out = tmp_path / "out"
    assert main(["rlhf", "--rlhf_type", "grpo", "--model", tiny_model_dir, *COMMON, "--external_plugins", str(rewards),
                 str(schedulers), "--reward_funcs", "length_reward", "--num_generations", "2",
                 "--per_device_train_batch_size", "2", "--max_steps", "2", "--multi_turn_scheduler", "ask_twice",
                 "--max_turns", "2", "--log_completions", "true", "--output_dir", str(out)]) == 0
    train = [r for r in records(run_dir_of(out)) if "loss" in r]
    assert len(train) == 2 and all(math.isfinite(r["loss"]) for r in train)


def test_ms_swift_3_plugin_path_and_refusals(tmp_path, encoder):
    from alignkit.algorithms.multi_turn import build_scheduler
    from alignkit.algorithms.rewards import load_plugin_file
    from alignkit.algorithms.swift_shim import swift_multi_turns

    plugin = tmp_path / "old.py"
    plugin.write_text(SWIFT_PLUGIN.replace("swift.rollout.multi_turn", "swift.plugin").replace("ask_twice", "old"))
    load_plugin_file(str(plugin))
    registry = swift_multi_turns()
    assert build_scheduler("old", registry, max_turns=2, tokenizer=None).max_turns == 2
    with pytest.raises(AlignkitError, match="thinking_tips_scheduler: it trains each turn as a sample"):
        build_scheduler("thinking_tips_scheduler", registry, max_turns=2, tokenizer=None)
    with pytest.raises(AlignkitError, match="--multi_turn_scheduler nope: unknown; known: math_tip_trick"):
        build_scheduler("nope", registry, max_turns=2, tokenizer=None)

    class OwnRun(MultiTurnScheduler):
        async def run(self, infer_request, request_config, **kwargs):
            return None

    OwnRun.__module__ = "plugin"
    with pytest.raises(AlignkitError, match="overrides run"):
        build_scheduler("own", {"own": OwnRun}, max_turns=2, tokenizer=None)


@pytest.mark.parametrize(("flags", "message"), [
    (["--rlhf_type", "gkd", "--multi_turn_scheduler", "math_tip_trick", "--teacher_model", "TEACHER"],
     "multi-turn rollouts are GRPO's here"),
    (["--rlhf_type", "grpo", "--multi_turn_scheduler", "math_tip_trick", "--dynamic_sample", "true"],
     "--dynamic_sample with --multi_turn_scheduler"),
    (["--rlhf_type", "grpo", "--max_turns", "0"], "--max_turns 0: expected 1 or more"),
    (["--rlhf_type", "grpo", "--use_gym_env", "true"], "a gym environment is driven by a multi-turn scheduler"),
])
def test_refused_combinations(tiny_model_dir, flags, message, capsys):
    flags = [tiny_model_dir if f == "TEACHER" else f for f in flags]
    assert main(["rlhf", "--model", tiny_model_dir, "--dataset", "arith-prompts#4", *flags]) == 2
    assert message in capsys.readouterr().err


def test_a_scheduler_adding_images_is_refused(encoder):
    """ms-swift's DeepEyes scheduler crops the image and adds it for the next turn; the text-only rollout would
    drop it, so the run stops instead of training on conversations the model never saw."""

    class Crops(TryAgain):
        def step(self, infer_request, response_choice, current_turn):
            infer_request.images.append("crop.png")
            return super().step(infer_request, response_choice, current_turn)

    requests, prompt_ids = start(encoder, "2+2?")
    sample, _ = scripted(encoder, {0: ["5", "4"]})
    with pytest.raises(AlignkitError, match=r"Crops.step\(\) added images to the conversation"):
        run_multi_turn(Crops(None, 5), requests, sample, prompt_ids, chat_of(encoder), None)


def test_a_plugin_imports_its_neighbours_and_ms_swifts_module_paths(tmp_path):
    """As ms-swift's import_external_file: the plugin's folder joins sys.path (treepo's plugin imports
    tree_rollout.py beside it); swift.rewards.orm (deepeyes') and the scheduler names in swift.rewards resolve."""
    from alignkit.algorithms.rewards import load_plugin_file
    from alignkit.algorithms.swift_shim import swift_multi_turns

    folder = tmp_path / "neighbours"
    folder.mkdir()
    (folder / "helper_beside_plugin.py").write_text("GREETING = 'Again?'\n")
    (folder / "neighbour_plugin.py").write_text(
        "from helper_beside_plugin import GREETING\n"
        "from swift.rewards.orm import ORM, orms\n"
        "from swift.rewards import MultiTurnScheduler, multi_turns\n\n\n"
        "class Greets(MultiTurnScheduler):\n"
        "    def step(self, infer_request, response_choice, current_turn):\n"
        "        infer_request.messages.append({'role': 'user', 'content': GREETING})\n"
        "        return {'infer_request': infer_request}\n\n\n"
        "multi_turns['greets'] = Greets\n")
    load_plugin_file(str(folder / "neighbour_plugin.py"))
    assert "greets" in swift_multi_turns()


# ------------------------------------------------------------------------- gym environments (--use_gym_env)

GYM_PLUGIN = '''
from swift.infer_engine.protocol import RolloutInferRequest
from swift.rollout.gym_env import Env, envs
from swift.template import Messages
from swift.utils import get_logger

CLOSED = []


class Countdown(Env):
    """Observation "Count from N."; step k rewards k (1, then 2, ...); done after two steps."""

    async def reset(self, config: RolloutInferRequest):
        self.steps = 0
        return f"Count from {config.data_dict['solution']}.", {}, "You count."

    async def step(self, action: Messages):
        self.steps += 1
        return f"Go on ({self.steps}).", float(self.steps), self.steps >= 2, {}

    async def close(self):
        CLOSED.append(self.steps)


envs["countdown"] = Countdown
'''


@pytest.fixture
def countdown(tmp_path):
    from alignkit.algorithms.rewards import load_plugin_file

    path = tmp_path / "countdown_env.py"
    path.write_text(GYM_PLUGIN)
    load_plugin_file(str(path))
    return path


def test_a_gym_environment_starts_the_conversation_and_scores_each_step(encoder, countdown):
    """gym_scheduler (ms-swift's GYMScheduler): reset's system message and observation replace the row's messages
    (and so the prompt's tokens), each answer is a step, the next observation the next user turn, done ends the
    trajectory; total_reward sums the steps' rewards and --use_gym_env's column reads it."""
    import sys

    from alignkit.algorithms.multi_turn import GYMScheduler, gym_reward

    chat = chat_of(encoder)
    requests, prompt_ids = start(encoder, "2+2?", "3+3?")
    for number, request in enumerate(requests):
        request.uuid = f"t{number}"
    sample, calls = scripted(encoder, {0: ["3", "2", "1"], 1: ["x", "y", "z"]})
    trajectories = run_multi_turn(GYMScheduler(None, 5, gym_env="countdown"), requests, sample, prompt_ids, chat,
                                  None)
    first = trajectories[0]
    start_messages = [{"role": "system", "content": "You count."}, {"role": "user", "content": "Count from 4."}]
    assert first.messages[:2] == start_messages
    assert first.prompt_ids == encoder.tokens(encoder.render(start_messages, generation_prompt=True))
    assert calls[0][0] == [0, 1] and len(calls) == 2  # two steps, then done
    assert [m["content"] for m in first.messages[2:]] == ["3", "Go on (1).", "2"]
    assert first.infos == {"total_reward": 3.0, "step_rewards": [1.0, 2.0], "gym_done": True, "num_turns": 2}
    assert sys.modules["alignkit_plugin_countdown_env"].CLOSED[-2:] == [2, 2]  # every environment closed
    assert gym_reward(["", ""], [t.infos for t in trajectories]) == [3.0, 3.0]
    with pytest.raises(AlignkitError, match="carry no total_reward"):
        gym_reward([""], [{"num_turns": 1}])


def test_grpo_trains_on_the_gym_reward_alone(tmp_path, tiny_model_dir, countdown):
    """ms-swift's --use_gym_env without --reward_funcs: the environments' total rewards are the only reward
    ('gym_reward'); the samples' prompts are the environments' observations."""
    out = tmp_path / "out"
    assert main(["rlhf", "--rlhf_type", "grpo", "--model", tiny_model_dir, *COMMON, "--external_plugins",
                 str(countdown), "--num_generations", "2", "--per_device_train_batch_size", "2", "--max_steps", "1",
                 "--multi_turn_scheduler", "gym_scheduler", "--gym_env", "countdown", "--max_turns", "3",
                 "--log_completions", "true", "--eval_strategy", "no", "--output_dir", str(out)]) == 0
    run_dir = run_dir_of(out)
    (train,) = [r for r in records(run_dir) if "loss" in r]
    assert train["rewards/gym_reward/mean"] == 3.0 and train["reward"] == 3.0
    samples = [json.loads(line) for line in (run_dir / "completions.jsonl").read_text().splitlines()]
    assert samples and all(s["prompt"].startswith("Count from ") and s["gym_reward"] == 3.0 for s in samples)


@pytest.mark.parametrize(("flags", "message"), [
    (["--gym_env", "countdown"], "a gym environment is driven by a multi-turn scheduler; add --multi_turn_scheduler"),
    (["--use_gym_env", "true", "--multi_turn_scheduler", "gym_scheduler", "--gym_env", "nope"],
     "--gym_env nope: no such environment; known: math_env, countdown"),
    (["--use_gym_env", "true", "--multi_turn_scheduler", "openenv_scheduler"], "OpenEnv environments"),
    (["--use_gym_env", "true", "--multi_turn_scheduler", "gym_scheduler", "--reward_funcs", "arith_format",
      "--reward_weights", "1"], "--reward_weights has 1 values for 2 rewards (--reward_funcs, then --reward_model, "
                                "then gym_reward)"),
])
def test_gym_refusals(tmp_path, tiny_model_dir, countdown, flags, message, capsys):
    assert main(["rlhf", "--rlhf_type", "grpo", "--model", tiny_model_dir, *COMMON, "--external_plugins",
                 str(countdown), "--num_generations", "2", "--per_device_train_batch_size", "2", "--max_steps", "1",
                 "--output_dir", str(tmp_path / "o"), *flags]) == 2
    assert message in capsys.readouterr().err


def test_the_trainer_adopts_the_servers_gym_environment(monkeypatch, countdown):
    """`swift rollout --multi_turn_scheduler gym_scheduler --gym_env frozen_lake` and a trainer without either:
    the trainer takes the scheduler, the environment and use_gym_env (unless it set its own)."""
    from alignkit.config.rollout_args import RolloutArguments
    from alignkit.config.run import RunArguments
    from alignkit.generation import engine_info

    served = RolloutArguments(model="m", multi_turn_scheduler="gym_scheduler", gym_env="countdown", max_turns=4,
                              external_plugins=[str(countdown)])
    answer = engine_info.describe(served, "AsyncLLMEngine")
    assert answer["use_gym_env"] is True and answer["gym_env"] == "countdown"
    monkeypatch.setattr("alignkit.generation.rollout_client.server_backend", lambda url, timeout: None)
    monkeypatch.setattr(engine_info, "fetch_engine_info", lambda url: answer)
    server = {"rlhf_type": "grpo", "use_vllm": True, "vllm_mode": "server", "vllm_server_host": ["127.0.0.1"]}
    adopted = engine_info.with_server_scheduler(RunArguments(**server))
    assert (adopted.multi_turn_scheduler, adopted.gym_env, adopted.use_gym_env, adopted.max_turns) == (
        "gym_scheduler", "countdown", True, 4)
    own = engine_info.with_server_scheduler(RunArguments(**server, use_gym_env=False))
    assert own.use_gym_env is False and own.gym_env == "countdown"  # the trainer's explicit value stands
    with pytest.raises(AlignkitError, match="--gym_env other: the rollout server"):
        engine_info.with_server_scheduler(RunArguments(**server, gym_env="other"))


def test_math_env_ends_on_a_correct_answer_and_tips_otherwise():
    """ms-swift's built-in `math_env`: the row's problem is the observation; a verified answer ends the episode with
    reward 1, a wrong one gets the tip as the next observation and reward 0."""
    import asyncio

    pytest.importorskip("math_verify")
    from alignkit.algorithms.multi_turn import RolloutInferRequest, SimpleMathEnv

    env = SimpleMathEnv({})
    row = RolloutInferRequest(messages=[], data_dict={"problem": "What is 2+2?", "solution": "$4$"})
    observation, _, system = asyncio.run(env.reset(row))
    assert observation == "What is 2+2?" and "<answer>" in system
    tip, reward, done, _ = asyncio.run(env.step([{"role": "assistant", "content": "<answer>5</answer>"}]))
    assert (tip, reward, done) == (SimpleMathEnv.tips_prompt, 0.0, False)
    _, reward, done, info = asyncio.run(env.step([{"role": "assistant", "content": "<answer>4</answer>"}]))
    assert (reward, done, info["stop_reason"]) == (1.0, True, "Correct")
