"""A YAML or JSON file of flags as the first argument after the sub-command, as ms-swift reads it
(swift/cli/main.py ``parse_yaml_args``)::

    alignkit sft sft.yaml --learning_rate 1e-5

    # sft.yaml
    model: Qwen/Qwen2.5-7B-Instruct
    dataset: [a.jsonl, b.jsonl#500]        # a list: --dataset a.jsonl b.jsonl#500
    columns: {question: query}             # a mapping: --columns '{"question": "query"}'
    gradient_checkpointing: true           # anything else: its text, --gradient_checkpointing True
    ENV:                                   # environment variables, set before anything runs
      NPROC_PER_NODE: 2

Each key becomes ``--key`` followed by its value(s), and the file's flags take the file's place in the command
line, so flags written after the file win (argparse keeps an option's last value). An ``ENV`` variable that is
already set in the environment keeps the environment's value (a warning says so when they differ), as in ms-swift.
Where ms-swift would pass the text "None" for a null value, alignkit stops: the key is to be removed instead.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.errors import AlignkitError

logger = logging.getLogger("alignkit")

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
ENV_KEY = "ENV"


@dataclass
class ConfigFile:
    """The flags of a config file as command-line tokens, and the environment variables of its ENV block."""

    path: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)


def is_config_file(token: str) -> bool:
    return token.lower().endswith(CONFIG_SUFFIXES) and not token.startswith("-")


def read_config_file(path: str) -> ConfigFile:
    """Parse ``path`` into command-line tokens; every problem names the file (and the key)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise AlignkitError(f"config file {path}: cannot read it ({error.strerror or error})") from error
    config = _parse(text, path)
    if not isinstance(config, dict):
        raise AlignkitError(f"config file {path}: expected a mapping of flag names to values at the top, "
                            f"got {type(config).__name__}")
    config = dict(config)
    env = _env_block(config.pop(ENV_KEY, None), path)
    argv: list[str] = []
    for key, value in config.items():
        if not isinstance(key, str) or not key or key.startswith("-"):
            raise AlignkitError(f"config file {path}: key {key!r}: expected a flag name without dashes")
        argv += [f"--{key}", *flag_tokens(value, key, f"config file {path}")]
    return ConfigFile(path, argv, env, list(config))


def apply_env(config: ConfigFile) -> None:
    """Set the ENV block's variables; one already set keeps its value (ms-swift's rule), with a warning."""
    for name, value in config.env.items():
        if name not in os.environ:
            os.environ[name] = value
        elif os.environ[name] != value:
            logger.warning("%s: ENV %s=%s is not applied: the environment already sets %s=%s",
                           config.path, name, value, name, os.environ[name])


def _parse(text: str, path: str) -> Any:
    if path.lower().endswith(".json"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise AlignkitError(f"config file {path}: invalid JSON ({error.msg} at line {error.lineno}, "
                                f"column {error.colno})") from error
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise AlignkitError(f"config file {path}: invalid YAML{where} ({problem})") from error


def _env_block(env: Any, path: str) -> dict[str, str]:
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise AlignkitError(f"config file {path}: key '{ENV_KEY}': expected a mapping of environment variables "
                            f"to values, got {type(env).__name__}")
    out = {}
    for name, value in env.items():
        if value is None or isinstance(value, (dict, list)):
            raise AlignkitError(f"config file {path}: key '{ENV_KEY}.{name}': expected a single value, got {value!r}")
        out[str(name)] = _text(value)
    return out


def flag_tokens(value: Any, key: str, source: str) -> list[str]:
    """The command-line tokens after ``--key`` for ``value``, by ms-swift's rule: a list gives one token per
    item, a mapping one JSON token, anything else its text. ``source`` names where the value came from."""
    if value is None:
        raise AlignkitError(f"{source}: key '{key}' has no value (null); remove the key to keep the flag's default")
    if isinstance(value, (list, tuple)):
        if any(item is None for item in value):
            raise AlignkitError(f"{source}: key '{key}': a list item is null")
        return [json.dumps(item, ensure_ascii=False) if isinstance(item, (dict, list)) else _text(item)
                for item in value]
    if isinstance(value, dict):
        return [json.dumps(value, ensure_ascii=False)]
    return [_text(value)]


def _text(value: Any) -> str:
    # str(True) is "True", which the boolean flags read; YAML dates and the like become their text too.
    return str(value)
