"""The ``alignkit`` command: ms-swift's sub-commands and flag names, built from the typed configs.

    alignkit sft   --model M --dataset D ...
    alignkit rlhf  --rlhf_type dpo|cpo|simpo|orpo|kto|rm --model M --dataset D --beta 0.1 ...
    alignkit dpo   ...                     (ms-swift 2.x spelling of `rlhf --rlhf_type dpo`)
    alignkit infer / eval / demo
    alignkit data  --dataset D [--model M]  (formats, counts, token lengths, rows with their trained tokens)
    alignkit export --ckpt_dir CKPT --merge_lora true
    alignkit deploy / app                  (OpenAI-compatible server / Gradio chat page)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from alignkit.errors import AlignkitError, TrainingInterrupted

logger = logging.getLogger("alignkit")

TRAIN_COMMANDS = {
    "sft": "Supervised fine-tuning on conversations.",
    "rlhf": "Preference training (--rlhf_type dpo, cpo, simpo, orpo, kto), a reward model (--rlhf_type rm) "
               "or online RL (--rlhf_type ppo, grpo).",
    "dpo": "ms-swift 2.x spelling of `rlhf --rlhf_type dpo`.",
}


def parse_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("true", "1", "yes", "y", "on"):
        return True
    if value in ("false", "0", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _choice(choices: tuple[str, ...]):
    """Case-insensitive choices, so ms-swift's `--dtype AUTO` and `--sft_type LORA` work."""

    def convert(text: str):
        value = text.lower()
        for choice in choices:  # choices may be ints (--quant_bits 4|8)
            if value == str(choice):
                return choice
        raise argparse.ArgumentTypeError(f"invalid choice {text!r} (choose from {', '.join(map(str, choices))})")

    return convert


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One argparse option per dataclass field: ``--name`` plus the field's aliases, with its help."""
    for f in dataclasses.fields(cls):
        meta = f.metadata
        flags = [f"--{f.name}", *meta.get("aliases", ())]
        kind = str(f.type)
        kwargs: dict[str, Any] = {"dest": f.name, "help": meta.get("help", ""), "default": argparse.SUPPRESS}
        if meta.get("nargs"):
            kwargs["nargs"] = meta["nargs"]
        if meta.get("const") is not None:
            kwargs["const"] = meta["const"]
        if kind.startswith("bool"):
            kwargs.update(type=parse_bool, nargs="?", const=True, metavar="true|false")
        elif meta.get("choices"):
            kwargs.update(type=_choice(tuple(meta["choices"])), metavar="{" + ",".join(map(str, meta["choices"])) + "}")
        elif "int" in kind:
            kwargs["type"] = int
        elif "float" in kind:
            kwargs["type"] = float
        if meta.get("choices") and meta.get("nargs"):
            kwargs["type"] = str
        parser.add_argument(*flags, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from alignkit.config import (
        AppArguments,
        CacheArguments,
        DataArguments,
        DemoArguments,
        DeployArguments,
        EvalArguments,
        ExportArguments,
        InferArguments,
        RunArguments,
    )

    parser = argparse.ArgumentParser(
        prog="alignkit", description="Align language models with human preferences.", allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in TRAIN_COMMANDS.items():
        add_dataclass_arguments(
            sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False), RunArguments
        )
    for name, cls, help_text in (
        ("infer", InferArguments, "Chat with a model or adapter, or answer a dataset's prompts to JSONL."),
        ("eval", EvalArguments, "Preference accuracy and margins, and built-in task accuracy."),
        ("demo", DemoArguments, "The main job: DPO on the built-in model and data, with before/after numbers."),
        ("data", DataArguments, "Inspect datasets: format, counts, token lengths, rows with their trained tokens."),
        ("export", ExportArguments, "Merge a LoRA adapter into its base and/or quantise: a plain HF model directory."),
        ("deploy", DeployArguments, "Serve a model and its adapters over an OpenAI-compatible HTTP API."),
        ("app", AppArguments, "A chat web page (Gradio) for a model or adapter."),
        ("cache", CacheArguments, "Sizes of the tokenised-data and reference log-prob caches; --clear deletes them."),
    ):
        add_dataclass_arguments(sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False), cls)
    return parser


def reject_unknown(parser: argparse.ArgumentParser, command: str, unknown: list[str]) -> None:
    subparser = parser._subparsers._group_actions[0].choices[command]  # argparse keeps them here
    known = [s for action in subparser._actions for s in action.option_strings]
    from alignkit.config.compat import UNSUPPORTED_FLAGS

    for token in unknown:
        if token.startswith("-"):
            flag = token.split("=", 1)[0]
            if command in TRAIN_COMMANDS and flag.lstrip("-") in UNSUPPORTED_FLAGS:
                raise AlignkitError(f"{flag} is not supported by alignkit: {UNSUPPORTED_FLAGS[flag.lstrip('-')]}")
            close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else f"; see `alignkit {command} --help`"
            raise AlignkitError(f"unknown flag {flag} for `alignkit {command}`{hint}")
    raise AlignkitError(f"unexpected argument {unknown[0]!r} for `alignkit {command}`")


def resolve_legacy_model_flags(values: dict) -> None:
    """ms-swift 2.x named models by registry key (--model_type llama3-8b-instruct); alignkit has no
    registry, so a path there is taken as the model and a name needs --model alongside."""
    for type_key, model_key in (("model_type", "model"), ("ref_model_type", "ref_model")):
        name = values.get(type_key)
        if name is None:
            continue
        from alignkit.models.builtin import BUILTIN_MODEL_NAME

        if type_key == "ref_model_type" and name == values.get("model_type"):
            # The seeds name the policy's own model as reference: that is the default reference anyway.
            logger.info("--ref_model_type %s: the reference is the policy's starting weights", name)
            continue
        if values.get(model_key) is not None:
            logger.info("--%s %s is ignored: --%s %s names the model", type_key, name, model_key, values[model_key])
        elif Path(name).expanduser().exists() or name.lower() == BUILTIN_MODEL_NAME:
            values[model_key] = name
        else:
            raise AlignkitError(
                f"--{type_key} {name} is an ms-swift model registry name, which alignkit does not have. "
                f"Pass --{model_key} with a local model directory or a hub id (for example "
                f"--{model_key} /path/to/{name}); --{type_key} may stay and is then ignored."
            )


def setup_logging() -> None:
    # In a distributed run only the first process reports progress; the others speak up for problems.
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="[alignkit] %(message)s")
    # Library deprecation notices are for us, not for someone running a training job.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for noisy in ("transformers", "accelerate", "datasets", "httpx", "urllib3", "huggingface_hub", "bitsandbytes"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    parser = build_parser()
    try:
        namespace, unknown = parser.parse_known_args(argv)
        if namespace.command is None:
            parser.print_help()
            return 2
        if unknown:
            reject_unknown(parser, namespace.command, unknown)
        setup_logging()
        if namespace.command in TRAIN_COMMANDS:
            from alignkit.training.launch import relaunch, torchrun_command

            command = torchrun_command(argv, dict(os.environ))
            if command is not None:
                return relaunch(command)
        return dispatch(namespace.command, vars(namespace))
    except AlignkitError as error:
        if debug:
            raise
        print(f"alignkit: error: {error}", file=sys.stderr)
        return 2
    except TrainingInterrupted as stop:
        print(f"alignkit: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print("alignkit: interrupted", file=sys.stderr)
        return 130


def dispatch(command: str, values: dict) -> int:
    values.pop("command")
    if command in TRAIN_COMMANDS:
        from alignkit.config.run import RunArguments
        from alignkit.training.run import run_training

        resolve_legacy_model_flags(values)
        if command == "dpo":
            values["rlhf_type"] = "dpo"
        args = RunArguments(**values)
        checkpoint = run_training(args, task="sft" if command == "sft" else "rlhf")
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"last checkpoint: {checkpoint}")
        return 0
    if command == "infer":
        from alignkit.commands.infer import run_infer
        from alignkit.config.commands import InferArguments

        return run_infer(InferArguments(**values))
    if command == "eval":
        from alignkit.commands.eval import run_eval
        from alignkit.config.commands import EvalArguments

        return run_eval(EvalArguments(**values))
    if command == "demo":
        from alignkit.commands.demo import run_demo
        from alignkit.config.commands import DemoArguments

        return run_demo(DemoArguments(**values))
    if command == "data":
        from alignkit.commands.data import run_data
        from alignkit.config.commands import DataArguments

        return run_data(DataArguments(**values))
    if command == "export":
        from alignkit.commands.export import run_export
        from alignkit.config.commands import ExportArguments

        return run_export(ExportArguments(**values))
    if command == "deploy":
        from alignkit.config.commands import DeployArguments

        with serve_extra(command):
            from alignkit.commands.deploy import run_deploy
        return run_deploy(DeployArguments(**values))
    if command == "app":
        from alignkit.config.commands import AppArguments

        with serve_extra(command):
            import gradio  # noqa: F401  (alignkit.commands.app imports it late; check before the model loads)

            from alignkit.commands.app import run_app
        return run_app(AppArguments(**values))
    if command == "cache":
        from alignkit.commands.cache import run_cache
        from alignkit.config.commands import CacheArguments

        return run_cache(CacheArguments(**values))
    raise AlignkitError(f"unknown command {command}")


@contextlib.contextmanager
def serve_extra(command: str):
    """Imports of commands that need the optional `serve` packages: say how to get them when missing."""
    try:
        yield
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] in ("fastapi", "uvicorn", "starlette", "pydantic", "gradio"):
            raise AlignkitError(f"`alignkit {command}` needs {error.name}: pip install 'alignkit[serve]'") from error
        raise


if __name__ == "__main__":
    sys.exit(main())
