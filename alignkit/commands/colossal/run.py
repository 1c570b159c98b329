"""Run one ColossalChat script: parse its flags, translate, train, and write what ColossalChat writes."""

from __future__ import annotations

import difflib
import json
import logging
import os
import shutil
from pathlib import Path

from alignkit.commands.colossal.flags import ALL_SCRIPTS, SCRIPTS, TOOLS, build_script_parser, script_name
from alignkit.commands.colossal.translate import Translation, translate
from alignkit.errors import AlignkitError

logger = logging.getLogger("alignkit")

# The files a Hugging Face tokenizer is saved as; --tokenizer_dir brings these, --pretrain the rest.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "added_tokens.json", "chat_template.jinja", "chat_template.json")


def script_names() -> list[str]:
    return list(ALL_SCRIPTS)


def trains(argv: list[str]) -> bool:
    """Whether ``alignkit colossal <argv>`` is a training script (which NPROC_PER_NODE runs in N processes)."""
    return bool(argv) and script_name(argv[0]) in SCRIPTS


def parse_script(argv: list[str]) -> tuple[str, dict]:
    """(script, the flags given on its command line)."""
    if not argv or argv[0].startswith("-"):
        raise AlignkitError(f"`alignkit colossal` needs a script name: {', '.join(ALL_SCRIPTS)} (`alignkit colossal "
                            "train_dpo --help` lists its flags; docs/colossal.md)")
    script = script_name(argv[0])
    if script not in ALL_SCRIPTS:
        close = difflib.get_close_matches(script, list(ALL_SCRIPTS), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise AlignkitError(f"`alignkit colossal {argv[0]}`: unknown ColossalChat script; {hint}alignkit runs "
                            f"{', '.join(ALL_SCRIPTS)}")
    parser = build_script_parser(script)
    args = as_colossalai_run_passes(argv[1:]) if script in SCRIPTS else argv[1:]
    namespace, unknown = parser.parse_known_args(args)
    if unknown:
        known = [s for action in parser._actions for s in action.option_strings]
        token = unknown[0]
        if not token.startswith("-"):
            hint = (" (bash's reading of a `\\ # comment` line: `\\ ` is an escaped blank, and the command ends "
                    "on that line)" if not token.strip() or token.lstrip().startswith("#") else "")
            raise AlignkitError(f"unexpected argument {token!r} for `alignkit colossal {script}`{hint}")
        flag = token.split("=", 1)[0]
        renamed = RENAMED_FLAGS.get((script, flag))
        close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
        if renamed:
            hint = f"; {renamed}"
        else:
            hint = f"; did you mean {close[0]}?" if close else f"; see `alignkit colossal {script} --help`"
        raise AlignkitError(f"unknown flag {flag} for ColossalChat's {script}.py{hint}")
    return script, vars(namespace)


# Flags the examples README (seed 004) gives that ColossalChat's own scripts reject: named with what to use.
RENAMED_FLAGS = {
    **{(script, "--pretrain_dataset"): "ColossalChat's script rejects it too (the examples README's name for the "
       "ptx data): use --ptx_dataset" for script in ("train_ppo", "train_grpo")},
    **{(script, "--lora_rank"): "ColossalChat's scripts reject it too (an older version's flag): LoRA is "
       "--lora_config FILE, a JSON such as {\"r\": 32, \"lora_alpha\": 32}" for script in SCRIPTS},
}


def as_colossalai_run_passes(args: list[str]) -> list[str]:
    """The arguments as ColossalChat's script receives them from `colossalai run`, which joins them with blanks
    and runs them through a shell (colossalai/cli/launcher/run.py): an argument of blanks vanishes there, and one
    whose first non-blank character is '#' starts a comment to the end. The examples README's `--tp 4 \\ # TP
    size` lines hand bash exactly those (`\\ ` is an escaped blank, so bash passes ' ' or ' # TP size, ...' and
    ends the command on that line). Other arguments pass unchanged (alignkit does not split them again)."""
    kept = []
    for index, arg in enumerate(args):
        if arg.lstrip().startswith("#"):
            logger.warning("%s: a comment to colossalai run's shell, dropped as it drops it. bash ended the command "
                           "on that line: flags on the lines after it were not passed (bash runs them as a command "
                           "of their own, e.g. '--lr: command not found')", " ".join(args[index:]).strip())
            break
        if not arg.strip():
            logger.warning("argument %r (a backslash-escaped blank, `\\ ` before a comment) dropped, as colossalai "
                           "run's shell drops it. bash ended the command on that line: flags on the lines after it "
                           "were not passed", arg)
            continue
        kept.append(arg)
    return kept


def run_colossal(argv: list[str]) -> int:
    script, given = parse_script(argv)
    if script in TOOLS:
        return run_tool(script, given)
    translation = translate(script, given)
    write_config_file(translation)
    values = dict(translation.values)
    where = Path(values.get("output_dir", "."))
    if translation.tokenizer_dir:
        values["model"] = model_with_tokenizer(values["model"], translation.tokenizer_dir, where)
    if values.get("reward_model") or values.get("value_model"):
        with_files = scalar_checkpoint_files(translation.settings)
        if values.get("reward_model"):
            values["reward_model"] = [with_files(path, where / ".reward_model") for path in values["reward_model"]]
        if values.get("value_model"):
            values["value_model"] = with_files(values["value_model"], where / ".critic")
    from alignkit.config.run import RunArguments
    from alignkit.training.run import run_training

    checkpoint = run_training(RunArguments(**values), task=translation.task)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(f"last checkpoint: {checkpoint}")
    if translation.modeling is not None and checkpoint is not None:
        print(f"model: {save_modeling(Path(checkpoint), translation.modeling)}")
    return 0


def write_config_file(translation: Translation) -> None:
    """ColossalChat writes every flag's value to --config_file as JSON; so does alignkit (main process)."""
    if not translation.config_file or int(os.environ.get("RANK", "0")) != 0:
        return
    path = Path(translation.config_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(translation.settings, indent=4))
    logger.info("Configuration written to %s", path)


def model_with_tokenizer(model: str, tokenizer_dir: str, where: Path) -> str:
    """--pretrain's weights with --tokenizer_dir's tokenizer, as one model directory of links (a ColossalChat
    modeling/ dir has no tokenizer files). The same directory when the tokenizer is the model's own."""
    model_dir, tokenizer_path = Path(model).expanduser(), Path(tokenizer_dir).expanduser()
    if not tokenizer_path.is_dir():
        raise AlignkitError(f"--tokenizer_dir {tokenizer_dir} is not a directory")
    if not model_dir.is_dir():
        raise AlignkitError(f"--pretrain {model} with --tokenizer_dir: --pretrain must be a local directory")
    if model_dir.resolve() == tokenizer_path.resolve():
        return model
    tokenizer_files = [p for p in tokenizer_path.iterdir() if p.name in TOKENIZER_FILES]
    if not tokenizer_files:
        raise AlignkitError(f"--tokenizer_dir {tokenizer_dir} holds no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    links = {p.name: p for p in model_dir.iterdir() if p.name not in TOKENIZER_FILES}
    links.update({p.name: p for p in tokenizer_files})
    combined = link_directory(where / ".pretrain_with_tokenizer", links)
    logger.info("--pretrain %s with --tokenizer_dir %s: loading %s", model, tokenizer_dir, combined)
    return str(combined)


# What a Hugging Face model directory holds besides its weights: a ColossalChat checkpoint borrows these.
CONFIG_FILES = ("config.json", "generation_config.json")


def scalar_checkpoint_files(colossal: dict):
    """For train_ppo / train_grpo: a function giving a ColossalChat reward-model or critic checkpoint (its
    modeling/ holds the state dict only) as a directory that loads alone: its weight files, with config.json from
    --rm_pretrain (the architecture ColossalChat builds before loading the weights) and the tokenizer files of
    --tokenizer_dir or --pretrain (ColossalChat's one tokenizer, whose ids the reward model reads). Any other
    path (an alignkit checkpoint, a plain model) is returned as it is."""
    from alignkit.models.colossal_checkpoint import is_colossal_scalar_checkpoint

    tokenizer_from = colossal.get("tokenizer_dir") or colossal.get("pretrain")

    def with_files(path: str, link_dir: Path) -> str:
        checkpoint = Path(path).expanduser()
        if not is_colossal_scalar_checkpoint(checkpoint):
            return path
        borrowed: dict[str, Path] = {}
        if not (checkpoint / "config.json").is_file():
            if not colossal.get("rm_pretrain"):
                raise AlignkitError(f"{path}: a ColossalChat reward model's weights without config.json; pass "
                                    "--rm_pretrain, the model it was trained from, as ColossalChat needs")
            source = Path(colossal["rm_pretrain"]).expanduser()
            borrowed.update({name: source / name for name in CONFIG_FILES if (source / name).is_file()})
        if not any((checkpoint / name).is_file() for name in TOKENIZER_FILES) and tokenizer_from:
            source = Path(tokenizer_from).expanduser()
            borrowed.update({p.name: p for p in source.iterdir() if p.name in TOKENIZER_FILES} if source.is_dir()
                            else {})
        if not borrowed:
            return path
        logger.info("%s: ColossalChat's reward-model layout (model.* + value_head.*), read with %s from %s", path,
                    ", ".join(sorted(borrowed)), ", ".join(sorted({str(p.parent) for p in borrowed.values()})))
        return str(link_directory(link_dir, {**{p.name: p for p in checkpoint.iterdir()}, **borrowed}))

    return with_files


def link_directory(directory: Path, links: dict[str, Path]) -> Path:
    """``directory`` holding exactly ``links`` (name → target) as symbolic links; safe when several processes of
    one run make it at once."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.iterdir():
        if stale.name not in links:
            stale.unlink()
    for name, target in links.items():
        link = directory / name
        if link.is_symlink() and Path(os.readlink(link)) == target.resolve():
            continue
        link.unlink(missing_ok=True)
        try:
            link.symlink_to(target.resolve())
        except FileExistsError:  # another process of the same run made it
            pass
    return directory


def save_modeling(checkpoint: Path, modeling: Path) -> Path:
    """save_dir/modeling (train_ppo, train_grpo: save_path/actor/modeling): the merged model (a LoRA run's
    adapter merged in), its tokenizer, and a reward model's value head, as a plain Hugging Face directory.
    ColossalChat writes the weights there; alignkit adds the tokenizer so the directory loads alone.
    A previous run's modeling/ is replaced, as ColossalChat does."""
    from alignkit.commands.export import run_export
    from alignkit.config.commands import ExportArguments

    if modeling.exists():
        logger.info("Replacing %s", modeling)
        shutil.rmtree(modeling)
    run_export(ExportArguments(ckpt_dir=str(checkpoint), merge_lora=True, output_dir=str(modeling)))
    return modeling


def run_tool(script: str, given: dict) -> int:
    """prepare_dataset and inference: checked, then run by prepare.py / alignkit infer."""
    colossal = {item.name: given.get(item.name, item.default) for item in TOOLS[script]}
    for item in TOOLS[script]:
        if item.no_effect and item.name in given and given[item.name] != item.default:
            logger.info("--%s %s has no effect in alignkit: %s", item.name, given[item.name], item.no_effect)
    if script == "prepare_dataset":
        for name in ("type", "data_input_dirs", "tokenizer_dir"):
            if colossal[name] is None:
                raise AlignkitError(f"prepare_dataset: --{name} is required")
        from alignkit.commands.colossal.prepare import run_prepare

        return run_prepare(colossal)
    return run_inference(colossal)


def run_inference(colossal: dict) -> int:
    """ColossalChat's inference.py as alignkit's interactive chat: sampled at temperature 0.7 (its value), stopping
    at the template's end of turn."""
    from alignkit.commands.infer import run_infer
    from alignkit.config.commands import InferArguments

    if colossal["model_path"] is None:
        raise AlignkitError("inference: --model_path is required")
    model = colossal["model_path"]
    if colossal["tokenizer_path"]:
        model = model_with_tokenizer(model, colossal["tokenizer_path"], Path(model).parent)
    system = None
    if colossal["conversation_template_config"]:
        system = template_config_system(colossal["conversation_template_config"], model)
    return run_infer(InferArguments(model=model, system=system, max_new_tokens=colossal["max_new_tokens"],
                                    max_length=colossal["model_max_length"], temperature=0.7))


def template_config_system(path: str, model: str) -> str | None:
    """The config's system message; its chat template must be the tokenizer's own (alignkit infer renders with it)."""
    from alignkit.data.chat_templates import load_template_config
    from alignkit.models.load import load_tokenizer

    tokenizer = load_tokenizer(model)
    template = load_template_config(path, tokenizer)
    if template.source != tokenizer.chat_template:
        raise AlignkitError(f"inference --conversation_template_config {path}: its chat_template differs from the "
                            f"tokenizer's own in {model}; alignkit's chat renders with the tokenizer's template (the "
                            "modeling/ dirs alignkit writes carry the template that trained them)")
    return template.system_message
