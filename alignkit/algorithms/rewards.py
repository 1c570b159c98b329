"""Reward functions for GRPO: ms-swift's built-ins, the built-in task's, the user's own Python functions and
ms-swift reward plugins, reward models.

A reward function takes keyword arguments and returns one float (or None: "no opinion") per completion::

    def my_reward(completions: list[str], prompts: list[list[dict]], solution: list[str], **kwargs) -> list[float]:
        return [1.0 if s in c else 0.0 for c, s in zip(completions, solution)]

It is called with ``completions`` (the sampled answers as text), ``prompts`` (each completion's prompt
messages), ``messages`` (the prompt messages and the completion as the assistant's turn, as ms-swift passes
them), ``response_token_ids`` (each completion's token ids) and one list per extra dataset column
(``solution`` above: every column of the data beyond the prompt). A function without ``**kwargs`` receives
only the arguments it names.

``--reward_funcs`` names them: ms-swift's built-ins (``accuracy format react_format cosine repetition
soft_overlong``, alignkit.algorithms.reward_funcs), the built-in task's (``arith_accuracy arith_format``), a
function defined in a file given to ``--external_plugins my_rewards.py`` or a class such a file registers in
ms-swift's ``orms`` table (``from swift.rewards import ORM, orms``; ``orms['name'] = MyReward``), or
``module:function`` / ``path/to/file.py:function``.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from alignkit.algorithms import reward_funcs as builtin
from alignkit.algorithms.swift_shim import is_shim_active, swift_orms
from alignkit.errors import AlignkitError


@dataclass
class RewardFunction:
    name: str
    func: Callable
    takes_all: bool  # the function has **kwargs
    parameters: tuple[str, ...]  # named keyword parameters
    required: tuple[str, ...]  # those without a default

    @classmethod
    def wrap(cls, name: str, func: Callable) -> RewardFunction:
        if not callable(func):
            raise AlignkitError(f"reward function {name}: {func!r} is not callable")
        signature = inspect.signature(func)
        params = signature.parameters.values()
        named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        return cls(
            name=name,
            func=func,
            takes_all=any(p.kind == p.VAR_KEYWORD for p in params),
            parameters=tuple(p.name for p in named),
            required=tuple(p.name for p in named if p.default is p.empty),
        )

    def __call__(self, arguments: dict[str, list]) -> list:
        missing = [name for name in self.required if name not in arguments]
        if missing:
            columns = ", ".join(k for k in arguments if k not in ("completions", "prompts")) or "none"
            raise AlignkitError(
                f"reward function {self.name} needs the argument(s) {', '.join(missing)}, which the dataset does "
                f"not provide (extra columns: {columns})"
            )
        passed = arguments if self.takes_all else {k: v for k, v in arguments.items() if k in self.parameters}
        values = self.func(**passed)
        if inspect.iscoroutine(values):  # an ms-swift AsyncORM
            values = asyncio.run(values)
        values = list(values)
        if len(values) != len(arguments["completions"]):
            raise AlignkitError(
                f"reward function {self.name} returned {len(values)} values for "
                f"{len(arguments['completions'])} completions"
            )
        return values


def load_plugin_file(path: str) -> dict[str, Callable]:
    """The top-level functions of a Python file (``--external_plugins``), by name. An ms-swift plugin file
    (``from swift.rewards import ORM, orms``, or the older ``swift.plugin``) imports; the classes it registers
    in ``orms`` are found by ``resolve_reward_funcs``."""
    file = Path(path)
    if not file.is_file():
        raise AlignkitError(f"--external_plugins {path}: no such file")
    swift_orms()  # without ms-swift installed, `swift.rewards` / `swift.plugin` resolve to alignkit's own
    # As ms-swift's import_external_file: the file's folder joins sys.path, so its own modules beside it import.
    folder = str(file.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module_name = f"alignkit_plugin_{file.stem}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # so that pickling and dataclasses inside the plugin work
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        missing = getattr(error, "name", None) or ""
        if isinstance(error, ImportError) and missing.startswith("swift") and is_shim_active():
            raise AlignkitError(
                f"--external_plugins {path}: it imports {missing}, a part of ms-swift that alignkit does not stand in "
                "for (without ms-swift it stands in for the plugin API only: swift.rewards(.orm) and swift.plugin "
                "with ORM, AsyncORM and orms; swift.rollout(.multi_turn, .gym_env) with the scheduler classes, Env, "
                "multi_turns and envs; swift.infer_engine.protocol's request types; swift.template's Messages; "
                "swift.utils' get_logger); install ms-swift, or keep the reward, scheduler and environment classes "
                "in a file of their own") from error
        raise AlignkitError(
            f"--external_plugins {path}: importing it failed ({type(error).__name__}: {error})"
        ) from error
    return {
        name: obj for name, obj in vars(module).items() if inspect.isfunction(obj) and obj.__module__ == module_name
    }


def resolve_reward_funcs(names: list[str], plugin_files: list[str], args=None) -> list[RewardFunction]:
    """``--reward_funcs`` names → functions, looked up as ms-swift does first: its ``orms`` table (built-ins and
    what plugin files registered there; classes are built as ``cls(args=args)``), then the built-in task's,
    then plugin functions, then ``module:function``. ``args``: the run's arguments, which ORM classes read
    (--cosine_*, --repetition_*, --soft_*)."""
    plugins: dict[str, Callable] = {}
    for path in plugin_files:
        plugins.update(load_plugin_file(path))
    registry = {**builtin.orms, **swift_orms()}
    resolved = []
    for name in names:
        if name in registry:
            resolved.append(RewardFunction.wrap(name, _build_orm(name, registry[name], args)))
        elif name in builtin.ARITH_REWARD_FUNCS:
            resolved.append(RewardFunction.wrap(name, builtin.ARITH_REWARD_FUNCS[name]))
        elif name in plugins:
            resolved.append(RewardFunction.wrap(name, plugins[name]))
        elif ":" in name:
            resolved.append(RewardFunction.wrap(name, _import_function(name)))
        elif name in builtin.UNSUPPORTED_REWARD_FUNCS:
            raise AlignkitError(f"--reward_funcs {name}: {builtin.UNSUPPORTED_REWARD_FUNCS[name]}")
        else:
            known = ", ".join(dict.fromkeys([*registry, *builtin.ARITH_REWARD_FUNCS, *plugins]))
            raise AlignkitError(
                f"--reward_funcs {name}: unknown; known: {known}. A function of your own: define it in a file passed "
                "to --external_plugins (a function, or an ORM class registered in orms), or name it as "
                "module:function or path/to/file.py:function"
            )
    return resolved


def _build_orm(name: str, cls, args):
    """An ``orms`` entry → the callable: a class is built with the run's arguments, as ms-swift builds it."""
    if not inspect.isclass(cls):
        return cls
    try:
        return cls(args=args)
    except AlignkitError:
        raise
    except Exception as error:
        raise AlignkitError(f"--reward_funcs {name}: building {cls.__name__}(args) failed "
                            f"({type(error).__name__}: {error})") from error


def _import_function(spec: str) -> Callable:
    location, _, function = spec.rpartition(":")
    if location.endswith(".py"):
        functions = load_plugin_file(location)
    else:
        try:
            functions = vars(importlib.import_module(location))
        except ImportError as error:
            raise AlignkitError(f"--reward_funcs {spec}: cannot import module {location} ({error})") from error
    if function not in functions:
        raise AlignkitError(f"--reward_funcs {spec}: {location} has no function {function}")
    return functions[function]


def reward_arguments(prompts: list, completions: list[str], extras: list[dict],
                     response_token_ids: list[list[int]] | None = None) -> dict[str, list]:
    """Keyword arguments for reward functions: completions, prompts, messages (prompt + the completion as the
    assistant's turn; None for a prompt given as token ids), response_token_ids and one list per extra column
    (None where a row lacks the column)."""
    columns = list(dict.fromkeys(key for row in extras for key in row))
    arguments = {column: [row.get(column) for row in extras] for column in columns}
    # Prompts given as token ids (ColossalChat's prepared prompt data) have no messages: None there.
    messages = [None if prompt is None else [*prompt, {"role": "assistant", "content": completion}]
                for prompt, completion in zip(prompts, completions)]
    tokens = {"response_token_ids": response_token_ids} if response_token_ids is not None else {}
    return {**arguments, "messages": messages, **tokens, "completions": completions, "prompts": prompts}


def score_completions(funcs: list[RewardFunction], arguments: dict[str, list]) -> torch.Tensor:
    """(N, F) rewards of every function for every completion; None becomes NaN."""
    columns = []
    for func in funcs:
        values = func(arguments)
        columns.append([float("nan") if v is None else float(v) for v in values])
    return torch.tensor(columns, dtype=torch.float32).T.reshape(len(arguments["completions"]), len(funcs))
