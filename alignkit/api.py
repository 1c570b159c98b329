"""ms-swift's Python API (``from swift.llm import ...``) in alignkit: the same calls, run in this process.

Each ``*_main`` takes a command-line list (``["--model", "M", "--dataset", "d.jsonl"]``, a YAML/JSON config file
first if you like), an ms-swift-style arguments object whose keywords are the flags in any spelling
(``SftArguments(model_type="qwen-7b-chat", dataset=["d.jsonl#2000"])``), or alignkit's typed arguments
(``RunArguments``, ``alignkit.config.InferArguments``, ...). Every form goes through the command line's own
edge (aliases, registry names, an adapter's base model), so a call means what the same ``alignkit`` command means::

    from alignkit.api import InferArguments, SftArguments, app_ui_main, infer_main, merge_lora, sft_main
    # and 2.x's inference functions: get_model_tokenizer, get_template, get_default_template_type, inference, Swift

    result = sft_main(SftArguments(model_id_or_path="path/to/model", dataset=["train.jsonl#2000"]))
    infer_args = InferArguments(ckpt_dir=result["best_model_checkpoint"], load_dataset_config=True)
    merge_lora(infer_args)        # writes <checkpoint>-merged and points infer_args.ckpt_dir at it
    answers = infer_main(infer_args)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

from alignkit import cli
from alignkit.config.config_file import flag_tokens
from alignkit.data.hub_datasets import SWIFT_DATASETS
from alignkit.errors import AlignkitError
from alignkit.models.registry import SWIFT2_MODELS

logger = logging.getLogger("alignkit")

# ms-swift 2.x's name constants: ModelType.qwen_7b_chat == "qwen-7b-chat", DatasetName.blossom_math_zh.
ModelType = SimpleNamespace(**{name.replace("-", "_"): name for name in SWIFT2_MODELS})
DatasetName = SimpleNamespace(**{name.replace("-", "_"): name for name in SWIFT_DATASETS if "/" not in name})


class SwiftArguments:
    """Arguments of one sub-command as keywords named like its flags (``model_type``, ``sft_type``, ``lr``...).
    Values follow the config-file rules: a list gives several values, a dict one JSON value."""

    command: ClassVar[str]

    def __init__(self, **kwargs: Any):
        object.__setattr__(self, "kwargs", dict(kwargs))

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["kwargs"][name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no argument {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self.kwargs[name] = value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.kwargs.items())})"


class SftArguments(SwiftArguments):
    command = "sft"


class RLHFArguments(SwiftArguments):
    command = "rlhf"


class InferArguments(SwiftArguments):
    command = "infer"


class ExportArguments(SwiftArguments):
    command = "export"


class AppArguments(SwiftArguments):
    command = "app"


class DeployArguments(SwiftArguments):
    command = "deploy"


AppUIArguments = AppArguments


def sft_main(args=None) -> dict[str, Any]:
    """Supervised fine-tuning, as ``alignkit sft``. Returns ms-swift's result keys (see ``training_result``)."""
    return _train("sft", args)


def rlhf_main(args=None) -> dict[str, Any]:
    """Preference training, a reward model or online RL, as ``alignkit rlhf``."""
    return _train("rlhf", args)


def infer_main(args=None) -> list[dict[str, Any]]:
    """``alignkit infer``. With a dataset (--val_dataset, or --load_dataset_config) returns its answers (the
    records of the result JSONL); interactive chat returns []."""
    from alignkit.commands.infer import run_infer

    typed = typed_arguments("infer", args)
    batch = bool(typed.val_dataset or typed.load_dataset_config)
    if batch and typed.result_path is None:  # the command's own default, chosen here so the answers can be read
        typed.result_path = f"infer_result/{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    run_infer(typed)
    if not batch:
        return []
    with open(typed.result_path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def export_main(args=None) -> str:
    """``alignkit export`` (merge a LoRA adapter and/or quantise). Returns the written model directory."""
    from alignkit.commands.export import default_output, run_export
    from alignkit.models.load import resolve_checkpoint, resolve_model_path

    typed = typed_arguments("export", args)
    if typed.output_dir is None:
        model, adapters = resolve_checkpoint(typed.model, typed.adapters, typed.ckpt_dir)
        typed.output_dir = str(default_output(typed, adapters, resolve_model_path(model)))
    run_export(typed)
    return typed.output_dir


def merge_lora(args, replace_if_exists: bool = False, device_map: str | None = None) -> str:
    """ms-swift 2.x's ``merge_lora``: the adapter of ``args.ckpt_dir`` merged into ``<ckpt_dir>-merged`` (kept
    when it exists, unless ``replace_if_exists``), and ``args.ckpt_dir`` then points there. Returns that path."""
    ckpt_dir = getattr(args, "ckpt_dir", None)
    if not ckpt_dir:
        raise AlignkitError("merge_lora: args.ckpt_dir is not set; it names the adapter checkpoint to merge")
    if device_map not in (None, "cpu"):
        logger.info("merge_lora(device_map=%r): alignkit merges on the CPU", device_map)
    merged = str(Path(ckpt_dir).with_name(Path(ckpt_dir).name + "-merged"))
    if Path(merged).exists() and not replace_if_exists:
        logger.info("merge_lora: %s exists, kept (replace_if_exists=True writes it anew)", merged)
    else:
        if Path(merged).exists():
            shutil.rmtree(merged)
        values = {"ckpt_dir": ckpt_dir, "merge_lora": True, "output_dir": merged}
        model = getattr(args, "model", None) or getattr(args, "model_id_or_path", None)
        if model:
            values["model"] = model
        export_main(ExportArguments(**values))
    args.ckpt_dir = merged
    return merged


def app_main(args=None) -> int:
    """``alignkit app``: the chat page (blocks while it serves)."""
    typed = typed_arguments("app", args)
    with cli.serve_extra("app"):
        from alignkit.commands.app import run_app
    return run_app(typed)


app_ui_main = app_main


def deploy_main(args=None) -> int:
    """``alignkit deploy``: the OpenAI-compatible server (blocks while it serves)."""
    typed = typed_arguments("deploy", args)
    with cli.serve_extra("deploy"):
        from alignkit.commands.deploy import run_deploy
    return run_deploy(typed)


def typed_arguments(command: str, args) -> Any:
    """A command-line list, ms-swift-style keywords or typed arguments -> the command's typed arguments, through
    the command line's edge. Arguments of another command (ms-swift passes InferArguments to app_ui_main) keep
    the flags this command has; the others are logged and left out."""
    cli.setup_logging()
    parser = cli.build_parser()
    if args is None:
        args = sys.argv[1:]
    if isinstance(args, (list, tuple)):
        name, values, _ = cli.parse_command_line(parser, [command, *map(str, args)])
        return cli.typed_arguments(name, values)
    if isinstance(args, SwiftArguments):
        own = args.command == command or {args.command, command} <= set(cli.TRAIN_COMMANDS)
        kwargs = _own_flags(command, args.kwargs, repr(args), parser) if not own else args.kwargs
        argv = [token for key, value in kwargs.items() for token in (f"--{key}", *flag_tokens(value, key, repr(args)))]
        name, values, _ = cli.parse_command_line(parser, [command, *argv])
        return cli.typed_arguments(name, values)
    if dataclasses.is_dataclass(args) and not isinstance(args, type):
        values = dataclasses.asdict(args)
        if not isinstance(args, cli.arguments_class(command)):
            values = _own_flags(command, values, type(args).__name__, parser)
        return cli.typed_arguments(command, values)
    raise AlignkitError(f"{command}: expected a list of command-line arguments or an arguments object, got "
                        f"{type(args).__name__}")


def _own_flags(command: str, values: dict[str, Any], given: str, parser) -> dict[str, Any]:
    """The values that are flags of ``command``; the others are logged as left out."""
    subparser = parser._subparsers._group_actions[0].choices[command]  # argparse keeps them here
    known = {s.lstrip("-") for action in subparser._actions for s in action.option_strings}
    other = [key for key in values if key not in known]
    if other:
        logger.info("%s for `alignkit %s`: left out, not its flags: %s", given, command, ", ".join(other))
    return {k: v for k, v in values.items() if k in known}


def _train(command: str, args) -> dict[str, Any]:
    from alignkit.training.run import run_training

    typed = typed_arguments(command, args)
    return training_result(run_training(typed, task=cli.training_task(command)))


def training_result(last_checkpoint: Path) -> dict[str, Any]:
    """ms-swift's result keys: ``last_model_checkpoint``; ``best_model_checkpoint`` and ``best_metric``, the saved
    checkpoint with the lowest held-out ``eval_loss`` (the last one, metric None, when the run evaluated at no
    saved step, as nothing then ranks them); ``global_step``; ``log_history`` (the records of logging.jsonl)."""
    run_dir = Path(last_checkpoint).parent
    log = run_dir / "logging.jsonl"
    history = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    evaluated = [(r["eval_loss"], r["step"]) for r in history
                 if "eval_loss" in r and (run_dir / f"checkpoint-{r['step']}").is_dir()]
    best_metric, best_step = min(evaluated) if evaluated else (None, None)
    best = run_dir / f"checkpoint-{best_step}" if best_step is not None else Path(last_checkpoint)
    step = str(Path(last_checkpoint).name).rpartition("-")[2]
    return {"last_model_checkpoint": str(last_checkpoint), "best_model_checkpoint": str(best),
            "best_metric": best_metric, "global_step": int(step) if step.isdigit() else None,
            "log_history": history}


# ----------------------------------------------------------------------------------------------------------------
# ms-swift 2.x's inference functions (shared/seeds 003, "使用LoRA增量权重进行推理"):
#     model, tokenizer = get_model_tokenizer(model_type, model_kwargs={"device_map": "auto"})
#     model = Swift.from_pretrained(model, ckpt_dir, inference_mode=True)
#     template = get_template(get_default_template_type(model_type), tokenizer)
#     response, history = inference(model, template, query)
# alignkit renders with the tokenizer's own chat template; ms-swift's template name is kept for the record.


def get_default_template_type(model_type: str) -> str:
    """ms-swift's template name of a registry model (``qwen-7b-chat`` → ``qwen``)."""
    from alignkit.models.registry import lookup_model_type

    entry = lookup_model_type(model_type)
    if entry is None:
        raise AlignkitError(f"unknown --model_type {model_type!r}; `python -m alignkit.models.registry` lists them")
    return entry.template


def get_model_tokenizer(model_type: str | None = None, torch_dtype=None, model_kwargs: dict | None = None,
                        load_model: bool = True, *, model_id_or_path: str | None = None, **kwargs: Any):
    """(model, tokenizer) of a registry name or a local directory / hub id (``model_id_or_path`` wins, the seeds'
    offline tip). ``model_kwargs``: ``device_map`` as in ms-swift; ``torch_dtype`` a torch dtype (default
    float32 on CPU)."""
    import torch

    from alignkit.models.load import load_causal_lm, load_tokenizer, resolve_model_path
    from alignkit.models.registry import SwiftModel, lookup_model_type

    if kwargs:
        raise AlignkitError(f"get_model_tokenizer: unsupported arguments {', '.join(sorted(kwargs))}")
    path = model_id_or_path
    if path is None:
        entry = lookup_model_type(model_type) if model_type else None
        if not isinstance(entry, SwiftModel):
            raise AlignkitError(f"get_model_tokenizer: name a model (model_id_or_path=...) for {model_type!r}")
        path = entry.hf_id
    path = resolve_model_path(path)
    tokenizer = load_tokenizer(path)
    if not load_model:
        return None, tokenizer
    device_map = (model_kwargs or {}).get("device_map")
    model = load_causal_lm(path, None, torch_dtype or torch.float32,
                           device_map=None if device_map == "auto" and not torch.cuda.is_available() else device_map)
    return model.eval(), tokenizer


class Swift:
    """ms-swift's tuner entry point: ``Swift.from_pretrained(model, ckpt_dir)`` puts a trained adapter on it."""

    @staticmethod
    def from_pretrained(model, ckpt_dir: str, inference_mode: bool = True, **kwargs: Any):
        from alignkit.models.load import load_adapters

        if kwargs:
            raise AlignkitError(f"Swift.from_pretrained: unsupported arguments {', '.join(sorted(kwargs))}")
        return load_adapters(model, [ckpt_dir], trainable=not inference_mode).eval()


@dataclasses.dataclass
class Template:
    """What ``get_template`` returns: the tokenizer's chat template (ms-swift's name kept), a default system
    prompt and the longest prompt."""

    template_type: str
    tokenizer: Any
    default_system: str | None = None
    max_length: int | None = None


def get_template(template_type: str, tokenizer, default_system: str | None = None, max_length: int | None = None,
                 **kwargs: Any) -> Template:
    if kwargs:
        raise AlignkitError(f"get_template: unsupported arguments {', '.join(sorted(kwargs))}")
    return Template(template_type, tokenizer, default_system, max_length)


def inference(model, template: Template, query: str, history: list | None = None, system: str | None = None,
              *, max_new_tokens: int = 2048, **kwargs: Any) -> tuple[str, list[list[str]]]:
    """One greedy answer to ``query`` after ``history`` ([[query, response], ...]); returns (response, the history
    with this turn appended), as ms-swift 2.x's ``inference``."""
    from alignkit.data.template import ChatEncoder
    from alignkit.generation.answers import generate_answers

    if kwargs:
        raise AlignkitError(f"inference: unsupported arguments {', '.join(sorted(kwargs))}")
    history = [list(turn) for turn in history or []]
    system = system if system is not None else template.default_system
    messages = [{"role": "system", "content": system}] if system else []
    for past_query, past_response in history:
        messages += [{"role": "user", "content": past_query}, {"role": "assistant", "content": past_response}]
    messages.append({"role": "user", "content": query})
    encoder = ChatEncoder(template.tokenizer, max_length=template.max_length or 4096)
    response = generate_answers(model, encoder, [messages], max_new_tokens=max_new_tokens)[0]
    return response, [*history, [query, response]]
