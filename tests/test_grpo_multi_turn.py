"""Multi-turn GRPO (--multi_turn_scheduler, --max_turns): ms-swift's scheduler contract (step / check_finished /
max_turns), the trajectory's tokens (the model's trained, the environment's masked), log-probs over the whole
trajectory, an ms-swift plugin file loading unchanged, and a short GRPO run with a scheduler."""

from __future__ import annotations

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
    (["--rlhf_type", "grpo", "--use_gym_env", "true"], "gym environments"),
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
