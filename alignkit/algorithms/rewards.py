"""Reward functions for GRPO: built-ins for the built-in task, the user's own Python functions, reward models.

A reward function takes keyword arguments and returns one float (or None: "no opinion") per completion::

    def my_reward(completions: list[str], prompts: list[list[dict]], solution: list[str], **kwargs) -> list[float]:
        return [1.0 if s in c else 0.0 for c, s in zip(completions, solution)]

It is called with ``completions`` (the sampled answers as text), ``prompts`` (each completion's prompt
messages) and one list per extra dataset column (``solution`` above: every column of the data beyond the
prompt). A function without ``**kwargs`` receives only the arguments it names.

``--reward_funcs`` names them: ``accuracy`` and ``format`` (built in), a function defined in a file given
to ``--external_plugins my_rewards.py``, or ``module:function`` / ``path/to/file.py:function``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from alignkit.data.builtin import is_correct
from alignkit.errors import AlignkitError

_WHOLE_ANSWER = re.compile(r"\s*Answer:[ \t]*-?\d+\s*")


def accuracy(completions: list[str], solution: list, **kwargs) -> list[float | None]:
    """1.0 when the completion's first ``Answer: <integer>`` equals the row's ``solution``, else 0.0
    (None for rows without a solution)."""
    return [None if s is None else float(is_correct(c, s)) for c, s in zip(completions, solution)]


def format(completions: list[str], **kwargs) -> list[float]:  # noqa: A001 - ms-swift's reward name
    """1.0 when the whole completion is ``Answer: <integer>`` (surrounding whitespace aside), else 0.0."""
    return [float(_WHOLE_ANSWER.fullmatch(c) is not None) for c in completions]


BUILTIN_REWARD_FUNCS: dict[str, Callable] = {"accuracy": accuracy, "format": format}


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
        values = list(self.func(**passed))
        if len(values) != len(arguments["completions"]):
            raise AlignkitError(
                f"reward function {self.name} returned {len(values)} values for "
                f"{len(arguments['completions'])} completions"
            )
        return values


def load_plugin_file(path: str) -> dict[str, Callable]:
    """The top-level functions of a Python file (``--external_plugins``), by name."""
    file = Path(path)
    if not file.is_file():
        raise AlignkitError(f"--external_plugins {path}: no such file")
    module_name = f"alignkit_plugin_{file.stem}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # so that pickling and dataclasses inside the plugin work
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        raise AlignkitError(
            f"--external_plugins {path}: importing it failed ({type(error).__name__}: {error})"
        ) from error
    return {
        name: obj for name, obj in vars(module).items() if inspect.isfunction(obj) and obj.__module__ == module_name
    }


def resolve_reward_funcs(names: list[str], plugin_files: list[str]) -> list[RewardFunction]:
    """``--reward_funcs`` names → functions: built-ins, then plugin functions, then ``module:function``."""
    plugins: dict[str, Callable] = {}
    for path in plugin_files:
        plugins.update(load_plugin_file(path))
    resolved = []
    for name in names:
        if name in BUILTIN_REWARD_FUNCS:
            resolved.append(RewardFunction.wrap(name, BUILTIN_REWARD_FUNCS[name]))
        elif name in plugins:
            resolved.append(RewardFunction.wrap(name, plugins[name]))
        elif ":" in name:
            resolved.append(RewardFunction.wrap(name, _import_function(name)))
        else:
            known = ", ".join([*BUILTIN_REWARD_FUNCS, *plugins])
            raise AlignkitError(
                f"--reward_funcs {name}: unknown; known: {known}. A function of your own: define it in a file passed "
                "to --external_plugins, or name it as module:function or path/to/file.py:function"
            )
    return resolved


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


def reward_arguments(prompts: list, completions: list[str], extras: list[dict]) -> dict[str, list]:
    """Keyword arguments for reward functions: completions, prompts and one list per extra column
    (None where a row lacks the column)."""
    columns = list(dict.fromkeys(key for row in extras for key in row))
    arguments = {column: [row.get(column) for row in extras] for column in columns}
    return {**arguments, "completions": completions, "prompts": prompts}


def score_completions(funcs: list[RewardFunction], arguments: dict[str, list]) -> torch.Tensor:
    """(N, F) rewards of every function for every completion; None becomes NaN."""
    columns = []
    for func in funcs:
        values = func(arguments)
        columns.append([float("nan") if v is None else float(v) for v in values])
    return torch.tensor(columns, dtype=torch.float32).T.reshape(len(arguments["completions"]), len(funcs))
