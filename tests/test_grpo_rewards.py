"""ms-swift's reward functions under its names and with its meaning (swift/rewards/orm.py), and ms-swift reward
plugin files (`from swift.rewards import ORM, orms`) loading unchanged."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from alignkit.algorithms import reward_funcs
from alignkit.algorithms.rewards import resolve_reward_funcs, reward_arguments, score_completions
from alignkit.config.run import RunArguments
from alignkit.errors import AlignkitError


@pytest.fixture(autouse=True)
def clean_orms():
    """Plugin files register into one process-wide `orms` table, as in ms-swift: restore it after each test."""
    before = dict(reward_funcs.orms)
    yield
    reward_funcs.orms.clear()
    reward_funcs.orms.update(before)


def test_accuracy_verifies_math_answers_against_the_solution():
    accuracy = reward_funcs.MathAccuracy()
    completions = [
        "<think>Is it $7$?</think><answer>0.5</answer>",  # tag: only its content is parsed
        "So the total is $\\boxed{12}$.",  # no tag: a LaTeX answer counts
        "<think>hmm</think><answer>13</answer>",  # wrong
        "The answer is 12",  # no tag and no LaTeX: ms-swift's extraction finds nothing
    ]
    assert accuracy(completions, solution=["$\\frac{1}{2}$", "$12$", "12", "12"]) == [1.0, 1.0, 0.0, 0.0]
    assert accuracy(["x"], solution=["<answer>not math at all</answer>"]) == [0.0]  # unparseable gold scores 0
    assert accuracy(["$1$"], solution=[None]) == [None]  # a row without a solution: no opinion


def test_accuracy_without_math_verify_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "math_verify", None)  # import fails
    with pytest.raises(AlignkitError, match="math-verify package, which is not installed: pip install"):
        reward_funcs.MathAccuracy()


def test_format_and_react_format():
    completions = ["<think>a\nb</think>\n<answer>1</answer>", "<think>a</think><answer>1</answer> extra",
                   "<answer>1</answer>", "<think>x</think> Action: search\nAction Input: {\"q\": 1}"]
    assert reward_funcs.Format()(completions) == [1.0, 0.0, 0.0, 0.0]
    assert reward_funcs.ReActFormat()(completions) == [0.0, 0.0, 0.0, 1.0]


def test_cosine_repetition_and_soft_overlong_by_hand():
    args = RunArguments(max_completion_length=10, cosine_max_len=10, repetition_n_grams=2, soft_cache_length=4)
    cosine = reward_funcs.CosineReward(args, accuracy_orm=lambda completions, solution, **kw: [1.0, 0.0, 1.0])
    # Correct: 1.0 at length 0 → 0.5 at 10; half way (5) is the mean 0.75. Wrong: −0.5 at 0 → 0.0 at 10.
    rewards = cosine(["a", "b", "c"], solution=[None] * 3, response_token_ids=[[1] * 5, [1] * 10, []])
    assert rewards == pytest.approx([0.75, 0.0, 1.0])
    repetition = reward_funcs.RepetitionPenalty(args)
    # "a b a b a": bigrams ab ba ab ba → 2 distinct of 4 → (1 − 0.5)·−1.
    assert repetition(["a b a b a", "one two three", "x"]) == pytest.approx([-0.5, 0.0, 0.0])
    overlong = reward_funcs.SoftOverlong(args)
    # L_max 10, L_cache 4: 0 up to 6 tokens, then −(L − 6)/4.
    assert overlong(["", "", ""], response_token_ids=[[1] * 6, [1] * 8, [1] * 10]) == pytest.approx([0, -0.5, -1])
    with pytest.raises(AlignkitError, match="soft_overlong needs --soft_cache_length"):
        reward_funcs.SoftOverlong(RunArguments())


def test_builtin_names_resolve_to_ms_swift_meaning():
    args = RunArguments(soft_cache_length=2, max_completion_length=4)
    funcs = resolve_reward_funcs(["format", "soft_overlong", "arith_accuracy"], [], args)
    prompts = [[{"role": "user", "content": "1+1?"}]] * 2
    arguments = reward_arguments(prompts, ["<think>t</think><answer>2</answer>", "Answer: 2"],
                                 [{"solution": "2"}] * 2, [[5, 6, 7, 8], [5]])
    assert arguments["messages"][1] == [*prompts[1], {"role": "assistant", "content": "Answer: 2"}]
    assert score_completions(funcs, arguments).tolist() == [[1.0, -1.0, 0.0], [0.0, 0.0, 1.0]]
    with pytest.raises(AlignkitError, match="--reward_funcs math: ms-swift's MathORM"):
        resolve_reward_funcs(["math"], [], args)


SWIFT_PLUGIN = '''
import asyncio
from typing import List

from swift.rewards import ORM, AsyncORM, orms
from swift.plugin import ORM as OldORM


class CountdownORM(ORM):
    def __call__(self, completions, target, **kwargs) -> List[float]:
        return [float(c.strip() == str(t)) * self.args.repetition_n_grams for c, t in zip(completions, target)]


class Shout(OldORM):
    def __call__(self, completions, **kwargs) -> List[float]:
        return [float(c.isupper()) for c in completions]


class Slow(AsyncORM):
    async def __call__(self, completions, **kwargs) -> List[float]:
        await asyncio.sleep(0)
        return [float(len(c)) for c in completions]


orms['external_countdown'] = CountdownORM
orms['shout'] = Shout
orms['slow'] = Slow
'''


def test_an_ms_swift_plugin_file_loads_unchanged(tmp_path):
    plugin = tmp_path / "plugin.py"
    plugin.write_text(SWIFT_PLUGIN)
    args = RunArguments(repetition_n_grams=5)
    funcs = resolve_reward_funcs(["external_countdown", "shout", "slow"], [str(plugin)], args)
    arguments = reward_arguments([[{"role": "user", "content": "q"}]] * 2, ["24", "NO"],
                                 [{"target": "24"}, {"target": "3"}])
    assert score_completions(funcs, arguments).tolist() == [[5.0, 0.0, 2.0], [0.0, 1.0, 2.0]]


def test_a_plugin_needing_more_of_ms_swift_says_so(tmp_path):
    plugin = tmp_path / "plugin.py"
    plugin.write_text("from swift.infer_engine import RequestConfig\nfrom swift.rewards import ORM, orms\n")
    with pytest.raises(AlignkitError, match="it imports swift.infer_engine, a part of ms-swift that alignkit does not"):
        resolve_reward_funcs(["x"], [str(plugin)], RunArguments())


def test_a_real_ms_swift_install_is_not_shadowed(tmp_path):
    """With an `swift` package importable, alignkit installs nothing: the plugin registers in ms-swift's own
    `orms`, and only what the plugin added there is taken (ms-swift's own classes keep alignkit's meaning)."""
    package = tmp_path / "site" / "swift" / "rewards"
    package.mkdir(parents=True)
    (package.parent / "__init__.py").write_text("REAL = True\n")
    (package / "__init__.py").write_text(textwrap.dedent('''
        class ORM:
            def __init__(self, args=None, **kwargs):
                self.args = args
        class Format(ORM):
            def __call__(self, completions, **kwargs):
                return [42.0 for _ in completions]
        Format.__module__ = "swift.rewards.orm"
        orms = {"format": Format}
    '''))
    plugin = tmp_path / "plugin.py"
    plugin.write_text("from swift.rewards import ORM, orms\nclass Mine(ORM):\n    def __call__(self, completions, "
                      "**kwargs):\n        return [7.0 for _ in completions]\norms['mine'] = Mine\n")
    script = textwrap.dedent(f'''
        import sys; sys.path.insert(0, {str(tmp_path / "site")!r})
        from alignkit.algorithms.rewards import resolve_reward_funcs, reward_arguments, score_completions
        funcs = resolve_reward_funcs(["mine", "format"], [{str(plugin)!r}])
        swift = sys.modules["swift"]
        assert swift.REAL and not getattr(swift, "__alignkit_shim__", False)
        args = reward_arguments([[{{"role": "user", "content": "q"}}]], ["<think>a</think><answer>b</answer>"], [{{}}])
        print(score_completions(funcs, args).tolist())
    ''')
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[[7.0, 1.0]]"


def test_reward_functions_see_completion_token_ids_and_messages(tiny_model_dir):
    """The GRPO rollout passes each completion's token ids (cosine, soft_overlong count tokens, not characters)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignkit.algorithms.grpo import GRPO
    from alignkit.algorithms.rewards import RewardFunction
    from alignkit.algorithms.rollout import EncodedPrompt

    seen = {}

    def spy(completions, response_token_ids, messages, **kwargs):
        seen.update(ids=response_token_ids, messages=messages)
        return [float(len(ids)) for ids in response_token_ids]

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    completions = [[5, 6, 7, 2, 9], [8, 2]]  # stop id 2: the first keeps 4 tokens, the second 2
    grpo = GRPO(generator=lambda ids, greedy, seeds: completions[: len(ids)], tokenizer=tokenizer, stop_ids=[2],
                reward_funcs=[RewardFunction.wrap("spy", spy)], reward_weights=[1.0], num_generations=2, beta=0.0,
                epsilon=0.2, epsilon_high=0.2, loss_type="grpo", scale_rewards="group", temperature=1.0,
                max_completion_length=8, missing_eos_penalty=None, forward_batch_size=4, needs_old_logprobs=False)
    prompt = EncodedPrompt(messages=[{"role": "user", "content": "hi"}], ids=[3, 4], extras={})
    experience, metrics, _ = grpo.experience(model, [prompt])
    assert seen["ids"] == [[5, 6, 7, 2], [8, 2]]
    assert seen["messages"][0][-1]["role"] == "assistant"
    assert experience["advantages"].tolist() == pytest.approx([0.7070, -0.7070], abs=1e-3)
    assert torch.equal(experience["stopped"], torch.tensor([True, True]))
