"""Multi-turn GRPO rollouts with ms-swift's scheduler API (``--multi_turn_scheduler NAME --max_turns N``).

A scheduler (ms-swift's ``MultiTurnScheduler``, swift/rollout/multi_turn.py) decides, after each of the model's
turns, whether the conversation ends (``check_finished``) and, if not, what the environment says next (``step``:
it appends a user or tool turn, or rewrites the last answer to be continued, and returns the request). The
driver here is ms-swift's ``run_multi_turn`` (swift/rollout/agent_loop.py): every trajectory of the batch
generates a turn, the finished ones leave, the others go on, until all are done or ``max_turns`` is reached.

What is trained: one sequence per trajectory, ``prompt | turn 1 | environment | turn 2 | ...``. The model's tokens
are the ones it sampled (never re-tokenised) and carry the loss; the environment's tokens (the template's
end-of-turn and headers, the user/tool turn, text a scheduler writes into an answer) are attended to but
masked out, as ms-swift's ``response_loss_mask`` masks them. The policy and reference log-probs are computed
over the whole sequence, so every model token is scored in the context it was sampled in. Rewards see the
whole conversation (``messages``); ``completions`` is the last answer, as in ms-swift.

Worked example (chatml, a scheduler that answers "Try again." once)::

    prompt      <|im_start|>user\\n2+2?<|im_end|>\\n<|im_start|>assistant\\n
    turn 1      5<|im_end|>                                                 trained 1 1
    environment \\n<|im_start|>user\\nTry again.<|im_end|>\\n<|im_start|>assistant\\n   trained 0 ... 0
    turn 2      4<|im_end|>                                                 trained 1 1

A plugin file written for ms-swift (``from swift.rollout.multi_turn import MultiTurnScheduler, multi_turns``,
``multi_turns['my_scheduler'] = MyScheduler``) loads unchanged through ``alignkit.algorithms.swift_shim``.
"""

from __future__ import annotations

import asyncio
import copy
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from alignkit.errors import AlignkitError

# ------------------------------------------------------------------------------ ms-swift's protocol, as read


@dataclass
class RolloutInferRequest:
    """ms-swift's RolloutInferRequest (swift/infer_engine/protocol.py): the fields a scheduler reads and writes."""

    messages: list[dict]
    data_dict: dict = field(default_factory=dict)  # the dataset row's other columns (solution, ...)
    images: list = field(default_factory=list)
    tools: list | None = None
    uuid: str | None = None


@dataclass
class ChatMessage:
    role: str
    content: str


@dataclass
class ChatCompletionResponseChoice:
    """ms-swift's ChatCompletionResponseChoice: one turn's answer; ``finish_reason`` is 'stop' (a stop token or
    word ended it) or 'length' (--max_completion_length cut it)."""

    index: int
    message: ChatMessage
    finish_reason: str
    token_ids: list[int]
    logprobs: dict | None = None


# ------------------------------------------------------------------------------------ the scheduler API


class RolloutScheduler:
    """ms-swift's RolloutScheduler: the constructor ms-swift calls (``cls(infer_engine, max_turns, **kwargs)``) and
    the hooks its drivers call. ``infer_engine`` is None here: alignkit's generator is not reachable from a
    scheduler (a scheduler that calls the engine itself overrides ``run``, which is refused)."""

    def __init__(self, infer_engine=None, max_turns: int | None = None, *args, **kwargs):
        self.infer_engine = infer_engine
        self._tokenizer = kwargs.get("tokenizer")
        self.max_turns = max_turns

    async def on_trajectory_start(self, requests: list[RolloutInferRequest]) -> None:
        """Before the first turn (ms-swift: gym environments reset here)."""

    async def on_turn_end(self, infer_request: RolloutInferRequest, response_choice: ChatCompletionResponseChoice,
                          current_turn: int) -> dict[str, Any]:
        """After the answer joined the messages, before ``check_finished``: {'done': bool} overrides it,
        {'rollout_infos': {...}} joins the trajectory's infos."""
        return {}

    @property
    def tokenizer(self):
        return self._tokenizer


class MultiTurnScheduler(RolloutScheduler):
    """ms-swift's MultiTurnScheduler: subclasses implement ``step`` and may override ``check_finished``."""

    def step(self, infer_request: RolloutInferRequest, response_choice: ChatCompletionResponseChoice,
             current_turn: int) -> dict:
        """The next turn: {'infer_request': the request to continue (required), 'response_token_ids': this turn's
        tokens to train on instead of the sampled ones, 'response_loss_mask': 1/0 per such token,
        'rollout_infos': {...}}."""
        raise NotImplementedError("Please implement the `step` method in your MultiTurnScheduler subclass.")

    def check_finished(self, infer_request: RolloutInferRequest, response_choice: ChatCompletionResponseChoice,
                       current_turn: int) -> bool:
        """ms-swift's default: a turn cut at the length limit ends the conversation, and so does max_turns."""
        if response_choice.finish_reason == "length":
            return True
        return bool(self.max_turns and current_turn >= self.max_turns)

    @staticmethod
    def _extract_logprobs_from_choice(response_choice: ChatCompletionResponseChoice) -> list[float]:
        return []  # alignkit's rollouts carry no sampler log-probs: the trained model scores its tokens


class MathTipsScheduler(MultiTurnScheduler):
    """``math_tip_trick`` (ms-swift's MathTipsScheduler): a wrong answer (--reward_funcs accuracy's test against
    the row's ``solution``) is cut before its ``<answer>`` / ``</think>``, "But wait... It seems I made a mistake,"
    is written after it (untrained), and the model continues the same answer; one tip per trajectory."""

    tips_prompt = "But wait... It seems I made a mistake,"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "acc_function" in kwargs:
            self.acc_func = kwargs["acc_function"]
        else:
            from alignkit.algorithms.reward_funcs import MathAccuracy

            self.acc_func = MathAccuracy()

    def check_finished(self, infer_request, response_choice, current_turn) -> bool:
        answer = infer_request.messages[-1]["content"]
        if self.tips_prompt in answer:
            return True
        if self.acc_func([answer], [infer_request.data_dict.get("solution")])[0] == 1:
            return True
        return super().check_finished(infer_request, response_choice, current_turn)

    def step(self, infer_request, response_choice, current_turn) -> dict:
        # The text before <answer> / </think> stays the model's; the tip is written after it and continued.
        completion = response_choice.message.content
        cut = min([completion.index(tag) for tag in ("<answer>", "</think>") if tag in completion] or
                  [len(completion)])
        infer_request.messages[-1]["content"] = completion[:cut] + self.tips_prompt
        return {"infer_request": infer_request}


# ------------------------------------------------------------------------------ gym environments (--use_gym_env)


class Env(ABC):
    """ms-swift's gym ``Env`` (swift/rollout/gym_env.py): one per trajectory, built from the row's ``env_config``.
    ``reset(request)`` → (first observation, info, system message): the conversation starts from these instead of
    the row's messages; ``step(messages)`` → (next observation, reward, done, info) after each of the model's turns."""

    def __init__(self, env_config):
        self.env_config = env_config

    @abstractmethod
    async def reset(self, config: RolloutInferRequest) -> tuple[str, dict[str, Any], str]: ...

    @abstractmethod
    async def step(self, action: list[dict]) -> tuple[str, float, bool, dict[str, Any]]: ...

    @abstractmethod
    async def close(self): ...


class SimpleMathEnv(Env):
    """``math_env`` (ms-swift's SimpleMathEnv): the row's ``problem`` is the observation; an answer the math
    verifier (--reward_funcs accuracy's) finds equal to ``solution`` ends the episode with reward 1, else the tip
    below is the next observation. ms-swift also ends an episode whose conversation reaches 2,048 tokens of
    Qwen2.5's tokenizer (fetched from ModelScope; without it, no limit): here --max_turns and --max_length bound it."""

    tips_prompt = "The answer is not correct, It seems You made a mistake, you need to recheck very carefully."
    system_prompt = ("A conversation between User and Assistant. The user asks a question, and the Assistant solves "
                     "it. The assistant first thinks about the reasoning process in the mind and then provides the "
                     "user with the answer. The reasoning process and answer are enclosed within <think> </think> "
                     "and <answer> </answer> tags, respectively, i.e., <think> reasoning process here </think>"
                     "<answer> answer here </answer>")

    def __init__(self, env_config):
        super().__init__(env_config)
        from alignkit.algorithms.reward_funcs import MathAccuracy

        self.accuracy = MathAccuracy()
        self.solution = ""

    async def reset(self, config: RolloutInferRequest):
        self.solution = config.data_dict["solution"]
        return config.data_dict["problem"], {}, self.system_prompt

    async def step(self, action: list[dict]):
        correct = self.accuracy([action[-1]["content"]], [self.solution])[0] == 1
        reward = 1.0 if correct else 0.0
        return self.tips_prompt, reward, correct, {"math_reward": reward, **({"stop_reason": "Correct"} if correct
                                                                             else {})}

    async def close(self):
        pass


# ms-swift's built-in environments; plugin files register theirs (``envs['name'] = MyEnv``).
envs: dict[str, type] = {"math_env": SimpleMathEnv}


def registered_envs() -> dict[str, type]:
    """alignkit's environments and those plugin files registered (in ms-swift's table, where ms-swift is installed)."""
    module = sys.modules.get("swift.rollout.gym_env")
    theirs = getattr(module, "envs", None)
    if theirs is None or theirs is envs:
        return envs
    return {**envs, **{name: cls for name, cls in theirs.items()
                       if not getattr(cls, "__module__", "").startswith("swift.")}}


def env_class(name: str | None) -> type:
    """The environment registered as ``name`` (--gym_env, or a row's env_config.name)."""
    known = registered_envs()
    if name not in known:
        raise AlignkitError(f"--gym_env {name}: no such environment; known: {', '.join(known) or 'none'} (a plugin "
                            "file registers one: envs['name'] = MyEnv)")
    return known[name]


def gym_reward(completions: list[str], rollout_infos: list[dict], **kwargs) -> list[float]:
    """--use_gym_env's reward column: each trajectory's summed environment rewards (ms-swift's total_reward)."""
    if any("total_reward" not in (infos or {}) for infos in rollout_infos):
        raise AlignkitError("--use_gym_env: the scheduler's rollout_infos carry no total_reward; a gym environment's "
                            "reward comes from gym_scheduler (or a scheduler built on it)")
    return [float(infos["total_reward"]) for infos in rollout_infos]


class GYMScheduler(MultiTurnScheduler):
    """``gym_scheduler`` (ms-swift's GYMScheduler): each trajectory gets an environment (the row's
    ``env_config['name']``, else --gym_env); its reset observation (and system message) is the conversation's start,
    each answer is a step, the next observation the next user turn, ``done`` ends it. ``rollout_infos`` carries
    ``total_reward`` (summed step rewards, --use_gym_env's reward), ``step_rewards`` and ``gym_done``."""

    def __init__(self, infer_engine=None, max_turns: int | None = None, *args, **kwargs):
        super().__init__(infer_engine, max_turns, *args, **kwargs)
        self.gym_env_name = kwargs.get("gym_env")
        self._envs: dict[str, Env] = {}
        self._rewards: dict[str, list[float]] = {}
        self._next: dict[str, str | None] = {}

    def _create_env(self, env_config: dict) -> Env:
        return env_class(env_config.get("name", self.gym_env_name))(env_config)

    async def _close(self, uuid: str) -> None:
        env = self._envs.pop(uuid, None)
        self._rewards.pop(uuid, None)
        self._next.pop(uuid, None)
        if env is not None:
            await env.close()

    async def on_trajectory_start(self, requests: list[RolloutInferRequest]) -> None:
        async def start(request: RolloutInferRequest) -> None:
            await self._close(request.uuid)
            env = self._create_env(dict((request.data_dict or {}).get("env_config") or {}))
            observation, _info, system = await env.reset(request)
            request.messages = [*([{"role": "system", "content": system}] if system else []),
                                {"role": "user", "content": observation}]
            self._envs[request.uuid], self._rewards[request.uuid], self._next[request.uuid] = env, [], None

        await asyncio.gather(*(start(r) for r in requests))

    async def on_turn_end(self, infer_request, response_choice, current_turn) -> dict[str, Any]:
        env = self._envs.get(infer_request.uuid)
        if env is None:
            return {"done": True, "rollout_infos": {}}
        observation, reward, done, _info = await env.step(copy.deepcopy(infer_request.messages))
        rewards = self._rewards[infer_request.uuid]
        rewards.append(float(reward))
        self._next[infer_request.uuid] = None if done else observation
        infos = {"total_reward": sum(rewards), "step_rewards": list(rewards), "gym_done": bool(done)}
        if done:
            await self._close(infer_request.uuid)
        return {"done": bool(done), "rollout_infos": infos}

    def step(self, infer_request, response_choice, current_turn) -> dict:
        observation = self._next.pop(infer_request.uuid, None)
        if observation is not None:
            infer_request.messages.append({"role": "user", "content": observation})
        return {"infer_request": infer_request}


class OpenEnvScheduler(GYMScheduler):
    """ms-swift's OpenEnvScheduler (environments behind an OpenEnv server): here so that plugin files built on it
    import; a scheduler of this kind is refused by name (``REFUSED``)."""


class ThinkingModelTipsScheduler(MultiTurnScheduler):
    """``thinking_tips_scheduler``: ms-swift's scheduler returns one training sample per turn (its ``run`` is its
    own), which alignkit's one-sequence-per-trajectory rollout does not take; refused when named."""


# ms-swift's built-ins (swift/rollout/multi_turn.py): plugin files register theirs here (the shim hands them
# this table).
multi_turns: dict[str, type] = {"math_tip_trick": MathTipsScheduler, "gym_scheduler": GYMScheduler,
                                "openenv_scheduler": OpenEnvScheduler,
                                "thinking_tips_scheduler": ThinkingModelTipsScheduler}
REFUSED = {
    "thinking_tips_scheduler": "it trains each turn as a sample of its own (ms-swift's run() returning several "
                               "outputs per trajectory); alignkit trains one sequence per trajectory",
    "openenv_scheduler": "OpenEnv environments (a server driven over WebSocket, ms-swift's OpenEnvWrapper) are not "
                         "supported; gym environments registered in a plugin file (envs['name'] = MyEnv) with "
                         "gym_scheduler are",
}


def build_scheduler(name: str, registry: dict[str, type], *, max_turns: int | None, tokenizer,
                    gym_env: str | None = None) -> MultiTurnScheduler:
    """``--multi_turn_scheduler NAME`` → the scheduler, built as ms-swift builds it (``cls(infer_engine,
    max_turns, tokenizer=..., gym_env=...)``). ``registry``: ms-swift's names and those plugin files registered."""
    cls = scheduler_class(name, registry)
    try:
        return cls(None, max_turns, tokenizer=tokenizer, **({"gym_env": gym_env} if gym_env is not None else {}))
    except AlignkitError:
        raise
    except Exception as error:
        raise AlignkitError(f"--multi_turn_scheduler {name}: building {cls.__name__} failed "
                            f"({type(error).__name__}: {error})") from error


def scheduler_class(name: str, registry: dict[str, type]) -> type:
    """The class ``--multi_turn_scheduler NAME`` names, if alignkit's driver can run it."""
    if name in REFUSED:
        raise AlignkitError(f"--multi_turn_scheduler {name}: {REFUSED[name]}")
    if name in registry and issubclass(registry[name], OpenEnvScheduler):
        raise AlignkitError(f"--multi_turn_scheduler {name}: {REFUSED['openenv_scheduler']}")
    if name not in registry:
        raise AlignkitError(f"--multi_turn_scheduler {name}: unknown; known: {', '.join(registry)}. A scheduler of "
                            "your own: register it in a file passed to --external_plugins "
                            "(multi_turns['name'] = MyScheduler)")
    cls = registry[name]
    own_run = next((vars(c)["run"] for c in cls.__mro__ if "run" in vars(c)), None)
    if own_run is not None and not getattr(own_run, "__module__", "").startswith(("swift.", "alignkit.")):
        raise AlignkitError(f"--multi_turn_scheduler {name}: {cls.__name__} overrides run(), which calls ms-swift's "
                            "inference engine itself; alignkit drives the turns and calls step() / "
                            "check_finished() (write the scheduler with those)")
    return cls


# ------------------------------------------------------------------------------------------- the driver


@dataclass
class Trajectory:
    ids: list[int]  # everything after the prompt: the model's turns and the environment's tokens between them
    trained: list[int]  # 1 where the model sampled the token, 0 where the environment wrote it
    messages: list[dict]  # the conversation at its end
    stopped: bool  # the last turn ended with a stop token or word
    infos: dict  # rollout_infos: num_turns and what the scheduler added
    prompt_ids: list[int] | None = None  # the prompt, where the scheduler replaced the row's (a gym reset)


@dataclass
class Chat:
    """How a conversation becomes text and tokens: the encoder's ``render`` and ``tokens``; ``decode`` keeps special
    tokens (so that decoded ids and rendered text compare), ``text`` drops them (an answer's content)."""

    render: Callable[[list[dict], bool], str]  # (messages, generation_prompt) -> text
    tokens: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    text: Callable[[list[int]], str]
    stop_ids: set[int]


def run_multi_turn(scheduler: MultiTurnScheduler, requests: list[RolloutInferRequest],
                   sample: Callable[[list[int], list[list[int]], int], list[tuple[list[int], bool]]],
                   prompt_ids: list[list[int]], chat: Chat, max_turns: int | None,
                   anyone: Callable[[bool], bool] = bool) -> list[Trajectory]:
    """Turns until every trajectory is finished. ``sample(rows, contexts, turn)`` → (the turn's token ids, cut at the
    stop token or word; stopped) per context, ``rows`` the trajectories' numbers; ``prompt_ids`` the prompts' ids,
    which ``requests[i].messages`` render. ``anyone(going)``: whether any process still has trajectories going
    (ms-swift's gather_fn): while one has, every process samples a turn, with no contexts when its own are done."""
    before = [copy.deepcopy(r.messages) for r in requests]
    asyncio.run(scheduler.on_trajectory_start(requests))
    # A gym environment's reset replaces the row's messages: those prompts are rendered anew.
    started = [None if r.messages == old else chat.tokens(chat.render(r.messages, True))
               for r, old in zip(requests, before)]
    prompt_ids = [ids if new is None else new for ids, new in zip(prompt_ids, started)]
    n = len(requests)
    ids, trained = [[] for _ in range(n)], [[] for _ in range(n)]
    text = [chat.render(r.messages, True) for r in requests]  # what prompt + ids hold, as text
    infos: list[dict] = [{} for _ in range(n)]
    done: list[Trajectory | None] = [None] * n
    pending, turn = list(range(n)), 1
    while anyone(bool(pending)):
        answers = sample(pending, [prompt_ids[i] + ids[i] for i in pending], turn)
        next_pending = []
        for i, (tokens, stopped) in zip(pending, answers):
            request = requests[i]
            # The answer's text as ms-swift's messages hold it: without the stop token ending it.
            content = chat.text(tokens[:-1] if tokens and tokens[-1] in chat.stop_ids else tokens)
            choice = ChatCompletionResponseChoice(0, ChatMessage("assistant", content), "stop" if stopped else "length",
                                                  list(tokens))
            if request.messages[-1]["role"] == "assistant":  # the scheduler asked to continue this answer
                request.messages[-1]["content"] += choice.message.content
            else:
                request.messages.append({"role": "assistant", "content": choice.message.content})
            ended = asyncio.run(scheduler.on_turn_end(request, choice, turn))
            infos[i].update(ended.get("rollout_infos") or {})
            finished = ended.get("done", scheduler.check_finished(request, choice, turn))
            finished = finished or bool(max_turns and turn >= max_turns)
            if finished:
                ids[i] += tokens
                trained[i] += [1] * len(tokens)
                done[i] = Trajectory(ids[i], trained[i], request.messages, stopped, {**infos[i], "num_turns": turn},
                                     started[i])
                continue
            result = scheduler.step(request, choice, turn)
            requests[i] = result["infer_request"]
            if getattr(requests[i], "images", None):  # e.g. ms-swift's DeepEyes, which crops and adds an image
                raise AlignkitError(f"--multi_turn_scheduler: {type(scheduler).__name__}.step() added images to the "
                                    "conversation; alignkit's multi-turn rollouts are text only (the model would not "
                                    "see them)")
            infos[i].update(result.get("rollout_infos") or {})
            if "response_token_ids" in result:  # ms-swift: these tokens are the turn's, with their loss mask
                tokens = list(result["response_token_ids"])
                mask = list(result.get("response_loss_mask") or [1] * len(tokens))
            else:
                mask = [1] * len(tokens)
            text[i] = _join(ids[i], trained[i], text[i], tokens, mask, requests[i].messages, chat)
            next_pending.append(i)
        pending, turn = next_pending, turn + 1
    return done  # type: ignore[return-value]


def _join(ids: list[int], trained: list[int], text: str, tokens: list[int], mask: list[int], messages: list[dict],
          chat: Chat) -> str:
    """Append a turn's tokens, then the environment's (``messages`` rendered, less what the sequence already holds);
    returns the sequence's new text. The turn's tokens that the next rendering does not continue (a stop token a
    continued answer drops, text a scheduler rewrote) become the environment's: the longest prefix of them that the
    rendering starts with is kept as the model's (binary search: a prefix of a kept prefix is kept)."""
    continued = messages[-1]["role"] == "assistant"
    target = chat.render(messages, not continued)
    if continued:  # the answer's text without the template's end-of-turn: generation goes on inside it
        content = messages[-1]["content"]
        target = target[: target.rfind(content) + len(content)]
    low, high = 0, len(tokens)  # the longest k with target starting with text + decode(tokens[:k])
    if not target.startswith(text):
        raise AlignkitError(
            "--multi_turn_scheduler: the chat template renders the conversation's earlier turns differently once a "
            "turn is added (e.g. it drops their <think> part), so the trajectory's tokens would not be those the "
            "model saw; use a template that keeps earlier turns as written")
    while low < high:
        middle = (low + high + 1) // 2
        if target.startswith(text + chat.decode(tokens[:middle])):
            low = middle
        else:
            high = middle - 1
    kept = text + chat.decode(tokens[:low])
    environment = chat.tokens(target[len(kept):]) if len(target) > len(kept) else []
    ids += tokens[:low] + environment
    trained += mask[:low] + [0] * len(environment)
    return target  # what the sequence now holds, as the template writes it

