"""The ``alignkit`` command: ms-swift's sub-commands and flag names, built from the typed configs.

    alignkit sft   --model M --dataset D ...
    alignkit rlhf  --rlhf_type dpo|cpo|simpo|orpo|kto|rm --model M --dataset D --beta 0.1 ...
    alignkit dpo   ...                     (ms-swift 2.x spelling of `rlhf --rlhf_type dpo`)
    alignkit infer / eval / demo
    alignkit data  --dataset D [--model M]  (formats, counts, token lengths, rows with their trained tokens)
    alignkit export --ckpt_dir CKPT --merge_lora true
    alignkit deploy / app                  (OpenAI-compatible server / Gradio chat page)
    alignkit colossal train_dpo [flags]    (ColossalChat's scripts and flags, alignkit/commands/colossal/)
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
from alignkit.models.hub_kernels import keep_hub_kernels_offline_off

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
            if value == str(choice).lower():  # returned as declared (LoRA-GA's ArB2r)
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
    from alignkit.config.rollout_args import RolloutArguments

    parser = argparse.ArgumentParser(
        prog="alignkit", description="Align language models with human preferences.", allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in TRAIN_COMMANDS.items():
        add_dataclass_arguments(
            sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False), RunArguments
        )
    # ms-swift 2.x's names of today's commands: `swift app-ui` is `app`.
    aliases = {"app": ["app-ui"]}
    for name, cls, help_text in (
        ("infer", InferArguments, "Chat with a model or adapter, or answer a dataset's prompts to JSONL."),
        ("eval", EvalArguments, "Preference accuracy and margins, and built-in task accuracy."),
        ("demo", DemoArguments, "The main job: DPO on the built-in model and data, with before/after numbers."),
        ("data", DataArguments, "Inspect datasets: format, counts, token lengths, rows with their trained tokens."),
        ("export", ExportArguments, "Merge a LoRA adapter into its base and/or quantise: a plain HF model directory."),
        ("deploy", DeployArguments, "Serve a model and its adapters over an OpenAI-compatible HTTP API."),
        ("app", AppArguments, "A chat web page (Gradio) for a model or adapter."),
        ("rollout", RolloutArguments, "TRL's vLLM server for --vllm_mode server (ms-swift's `swift rollout`)."),
        ("cache", CacheArguments, "Sizes of the tokenised-data and reference log-prob caches; --clear deletes them."),
    ):
        add_dataclass_arguments(sub.add_parser(name, aliases=aliases.get(name, []), help=help_text,
                                               description=help_text, allow_abbrev=False), cls)
    colossal = sub.add_parser("colossal", help=COLOSSAL_HELP, description=COLOSSAL_HELP, allow_abbrev=False)
    colossal.add_argument("colossal_argv", nargs=argparse.REMAINDER, help="SCRIPT [its flags]")
    return parser


COLOSSAL_HELP = ("ColossalChat's scripts with their own flags: train_sft, train_rm, train_dpo, train_kto, train_orpo, "
                 "train_ppo, train_grpo, prepare_dataset, inference (`alignkit colossal train_dpo --help`; "
                 "docs/colossal.md).")


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


# ms-swift 2.x names each model by a registry key; the flag that names the same model by path or hub id, and
# that flag's 2.x spelling (the seeds' offline tip).
REGISTRY_FLAGS = (
    ("model_type", "model", "--model_id_or_path"),
    ("ref_model_type", "ref_model", "--ref_model_id_or_path"),
    ("reward_model_type", "reward_model", "--reward_model_id_or_path"),
    ("teacher_model_type", "teacher_model", "--teacher_model"),
)


def resolve_quantization_bit(values: dict) -> None:
    """ms-swift 2.x's ``--quantization_bit N`` (its QLoRA: bitsandbytes) is 3.x/4.x's ``--quant_method bnb
    --quant_bits N``."""
    bits = values.get("quantization_bit") or 0
    if not bits:
        return
    if values.get("quant_method") not in (None, "bnb") or values.get("quant_bits") not in (None, bits):
        raise AlignkitError(f"--quantization_bit {bits} is --quant_method bnb --quant_bits {bits}; it contradicts "
                            f"--quant_method {values.get('quant_method')} --quant_bits {values.get('quant_bits')}")
    values["quant_method"], values["quant_bits"] = "bnb", bits
    logger.info("--quantization_bit %d (ms-swift 2.x): --quant_method bnb --quant_bits %d", bits, bits)


def resolve_legacy_model_flags(values: dict) -> None:
    """ms-swift's registry names (--model_type llama3-8b-instruct, --ref_model_type, --reward_model_type).
    Beside the flag that names the model (--model / --model_id_or_path, ...) a name only says which family
    the model is; alone, a 2.x name is the model, downloaded by its Hugging Face id (alignkit/models/registry.py),
    and a local path there is used as the model."""
    from alignkit.models.builtin import BUILTIN_MODEL_NAME
    from alignkit.models.registry import SwiftFamily, lookup_model_type

    for type_key, model_key, path_flag in REGISTRY_FLAGS:
        name = values.get(type_key)
        if name is None:
            continue
        if type_key == "ref_model_type" and name == values.get("model_type"):
            # The seeds name the policy's own model as reference: that is the default reference anyway.
            logger.info("--ref_model_type %s: the reference is the policy's starting weights", name)
            continue
        entry = lookup_model_type(name)
        if values.get(model_key):
            shown = " ".join(values[model_key]) if isinstance(values[model_key], list) else values[model_key]
            family = f" (ms-swift's template: {entry.template})" if entry is not None else ""
            logger.info("--%s %s%s: --%s %s is the model; alignkit renders with its own chat template or "
                        "--template", type_key, name, family, model_key, shown)
            continue
        if Path(name).expanduser().exists() or name.lower() == BUILTIN_MODEL_NAME:
            model = name
        elif entry is None:
            raise AlignkitError(
                f"--{type_key} {name} is not an ms-swift model registry name alignkit knows (`python -m "
                f"alignkit.models.registry` lists them). Pass --{model_key} with a local model directory or a "
                f"Hugging Face id (for example --{model_key} /path/to/{name}); --{type_key} may stay beside it."
            )
        elif isinstance(entry, SwiftFamily):
            raise AlignkitError(
                f"--{type_key} {name} is an ms-swift 3.x model family (template {entry.template}), not one model: "
                f"as in ms-swift, pass the model with --{model_key} (a Hugging Face id such as "
                f"{entry.example_hf_id}, or a local directory); --{type_key} may stay beside it."
            )
        else:
            model = entry.hf_id
            logger.info(
                "--%s %s: %s from the Hugging Face Hub (ms-swift 2.x downloads it from ModelScope as %s; ms-swift "
                "renders it with its template %s, alignkit with the model's own chat template or --template). "
                "Offline: download it elsewhere and pass %s DIR --check_model_is_latest false",
                type_key, name, entry.hf_id, entry.modelscope_id, entry.template, path_flag)
        values[model_key] = [model] if model_key == "reward_model" else model


def fill_model_from_adapters(values: dict) -> None:
    """--adapters DIR without --model: the base is the one the adapter was trained on, read from its run's
    args.json or its adapter_config.json (as ms-swift reads its args.json), not the built-in model."""
    if values.get("model") is not None or not values.get("adapters"):
        return
    from alignkit.models.load import adapter_base_model

    adapter = values["adapters"][0].split("=", 1)[-1]  # deploy names adapters NAME=DIR
    base = adapter_base_model(adapter)
    if base is not None:
        values["model"] = base


def setup_logging() -> None:
    # In a distributed run only the first process reports progress; the others speak up for problems.
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="[alignkit] %(message)s")
    # Library deprecation notices are for us, not for someone running a training job.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for noisy in ("transformers", "accelerate", "datasets", "httpx", "urllib3", "huggingface_hub", "bitsandbytes"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def expand_config_file(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``alignkit sft x.yaml --lr 1e-5``: the file's flags take its place, so the flags after it win, and its
    ENV block is set (alignkit/config/config_file.py)."""
    from alignkit.config.config_file import apply_env, is_config_file, read_config_file

    commands = parser._subparsers._group_actions[0].choices  # argparse keeps them here
    if len(argv) < 2 or argv[0] not in commands or not is_config_file(argv[1]):
        return argv
    config = read_config_file(argv[1])
    known = {s for action in commands[argv[0]]._actions for s in action.option_strings}
    for key in config.keys:
        if f"--{key}" not in known:
            try:
                reject_unknown(parser, argv[0], [f"--{key}"])
            except AlignkitError as error:
                raise AlignkitError(f"config file {config.path}: key '{key}': {error}") from None
    apply_env(config)
    return [argv[0], *config.argv, *argv[2:]]


COMMAND_ALIASES = {"app-ui": "app"}


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[str | None, dict, list[str]]:
    """(sub-command, its flags' values, the command line with any config file expanded)."""
    argv = expand_config_file(parser, argv)
    namespace, unknown = parser.parse_known_args(argv)
    if namespace.command is not None and unknown:
        reject_unknown(parser, namespace.command, unknown)
    values = vars(namespace)
    command = values.pop("command")
    return COMMAND_ALIASES.get(command, command), values, argv


def run() -> None:
    """The ``alignkit`` program: main's exit status, each launched process leaving as exit_process says."""
    from alignkit.training.distributed import exit_process

    exit_process(main())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    parser = build_parser()
    try:
        command, values, argv = parse_command_line(parser, argv)
        debug = debug or bool(values.get("debug"))
        if command is None:
            parser.print_help()
            return 2
        setup_logging()
        keep_hub_kernels_offline_off()  # before transformers reads it (alignkit/models/hub_kernels.py)
        if command == "infer":  # NPROC_PER_NODE: data-parallel batch inference (alignkit/generation/data_parallel.py)
            from alignkit.training.launch import infer_argv

            argv = infer_argv(argv, values)
        if command in TRAIN_COMMANDS or command == "infer" or (
                command == "colossal" and colossal_trains(values["colossal_argv"])):
            from alignkit.training.launch import relaunch, torchrun_command

            launch = torchrun_command(argv, dict(os.environ))
            if launch is not None:
                return relaunch(launch)
        return dispatch(command, values)
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
    finally:
        from alignkit.training.distributed import leave_process_group

        leave_process_group()


def colossal_trains(argv: list[str]) -> bool:
    from alignkit.commands.colossal import trains

    return trains(argv)


def typed_arguments(command: str, values: dict):
    """The edge: ms-swift's spellings resolved (registry names, an adapter's base), then the command's typed
    arguments (RunArguments for sft/rlhf/dpo)."""
    values = dict(values)
    if command in TRAIN_COMMANDS:
        resolve_legacy_model_flags(values)
        resolve_quantization_bit(values)
        if command == "dpo":
            values["rlhf_type"] = "dpo"
    fill_model_from_adapters(values)
    return arguments_class(command)(**values)


def arguments_class(command: str) -> type:
    from alignkit import config

    if command in TRAIN_COMMANDS:
        return config.RunArguments
    classes = {"infer": config.InferArguments, "eval": config.EvalArguments, "demo": config.DemoArguments,
               "data": config.DataArguments, "export": config.ExportArguments, "deploy": config.DeployArguments,
               "app": config.AppArguments, "cache": config.CacheArguments,
               "rollout": rollout_arguments()}
    if command not in classes:
        raise AlignkitError(f"unknown command {command}")
    return classes[command]


def rollout_arguments() -> type:
    from alignkit.config.rollout_args import RolloutArguments

    return RolloutArguments


def training_task(command: str) -> str:
    return "sft" if command == "sft" else "rlhf"


def dispatch(command: str, values: dict) -> int:
    if command == "colossal":  # its own flags, translated into RunArguments there
        from alignkit.commands.colossal import run_colossal

        return run_colossal(values["colossal_argv"])
    args = typed_arguments(command, values)
    if command in ("infer", "deploy", "app", "export"):
        from alignkit.config.command_checks import check_command_arguments

        check_command_arguments(command, args)
    if command in TRAIN_COMMANDS:
        from alignkit.training.run import run_training

        checkpoint = run_training(args, task=training_task(command))
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"last checkpoint: {checkpoint}")
        return 0
    if command == "infer":
        from alignkit.commands.infer import run_infer

        return run_infer(args)
    if command == "eval":
        from alignkit.commands.eval import run_eval

        return run_eval(args)
    if command == "demo":
        from alignkit.commands.demo import run_demo

        return run_demo(args)
    if command == "data":
        from alignkit.commands.data import run_data

        return run_data(args)
    if command == "export":
        from alignkit.commands.export import run_export

        return run_export(args)
    if command == "deploy":
        with serve_extra(command):
            import fastapi  # noqa: F401  (checked here, also when alignkit.commands.deploy is already imported)

            from alignkit.commands.deploy import run_deploy
        return run_deploy(args)
    if command == "app":
        with serve_extra(command):
            import gradio  # noqa: F401  (alignkit.commands.app imports it late; check before the model loads)

            from alignkit.commands.app import run_app
        return run_app(args)
    if command == "rollout":
        from alignkit.commands.rollout import run_rollout

        return run_rollout(args)
    from alignkit.commands.cache import run_cache

    return run_cache(args)


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
