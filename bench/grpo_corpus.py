"""Acceptance of ms-swift's own GRPO/GKD/rollout example invocations by alignkit's CLI.

Extracts every `swift rlhf --rlhf_type grpo|gkd` and `swift rollout` command line from the ms-swift example
shell scripts (default: /work/swiftex/examples), runs each through alignkit's parser, its flag checks, the
per-method defaults and, for grpo, ms-swift's generation-batch accounting with the script's NPROC_PER_NODE
processes, and prints how many are accepted and why the rest stop. Model and dataset paths are replaced by
local stand-ins (no downloads happen); `$VAR` values by 4; the `<...>` placeholders a user fills in
(`--port <node1_port>`, `--vllm_server_host <node1_ip> <node2_ip>`) by a stand-in of their kind: a port flag's
by 8000, 8001, ..., a host's by 127.0.0.1, any other by 4.

    python bench/grpo_corpus.py [EXAMPLES_DIR] [--list]
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import re
import shlex
import sys
import tempfile
from pathlib import Path

logging.disable(logging.CRITICAL)


def invocations(root: Path):
    """(file, sub-command, {flag: [values]}, processes) of each swift rlhf grpo/gkd and swift rollout line."""
    for path in sorted(root.rglob("*.sh")):
        # Continuation lines join; in commented-out commands ("# swift rollout \\ #   --model ...") their "#" goes too.
        # A blank line after a trailing backslash ends the command (the shell runs it, then skips the blank line).
        text = re.sub(r"\\[ \t]*\n[ \t]*#?", " ", path.read_text(errors="replace"))
        for line in text.splitlines():
            match = re.search(r"\bswift\s+(rlhf|rollout)\b(?!`)(.*)", line)  # not prose naming `swift rollout`
            if not match or not re.match(r"\s*(--|$)", match.group(2)):
                continue  # prose ("Run swift rollout to deploy ..."): a command's next word is a flag
            prefix = line[: match.start()]
            procs = re.search(r"NPROC_PER_NODE=(\S+)", prefix) or re.search(r"NPROC_PER_NODE=(\S+)", text)
            nproc = int(procs.group(1)) if procs and procs.group(1).isdigit() else 1
            try:
                words = shlex.split(re.split(r"\s#|\s&&\s|\s\|\s|\s&\s*$|\s\d?>", match.group(2))[0])
            except ValueError:
                continue
            flags: dict[str, list[str]] = {}
            key = None
            for word in words:
                if word.startswith("--"):
                    key = word[2:].replace("-", "_")
                    flags[key] = []
                elif key is not None:
                    flags[key].append(word)
            if match.group(1) == "rlhf" and flags.get("rlhf_type", [""])[0] not in ("grpo", "gkd"):
                continue
            yield str(path.relative_to(root.parent)), match.group(1), flags, nproc


def placeholder(flag: str, index: int) -> str:
    """A stand-in for the `<...>` value a user fills in: the flag's kind decides (port, host, else a number)."""
    if "port" in flag:
        return str(8000 + index)
    if "host" in flag:
        return "127.0.0.1"
    return "4"


def model_stand_in() -> Path:
    """A local model directory in place of the hub ids (what --model resolves to, checked before any server or
    run starts); nothing loads its weights before the checks end."""
    path = Path(tempfile.gettempdir()) / "alignkit-corpus-model"
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text('{"model_type": "llama"}\n')
    return path


def check(command: str, flags: dict[str, list[str]], nproc: int) -> None:
    """Raises what alignkit would stop with before loading data (SystemExit from argparse included)."""
    import os

    from alignkit.cli import build_parser, reject_unknown
    from alignkit.config.checks import check_run_arguments
    from alignkit.config.defaults import resolve
    from alignkit.config.run import RunArguments
    from alignkit.errors import AlignkitError

    argv = [command]
    for key, values in flags.items():
        if key in ("model", "teacher_model"):
            values = [str(model_stand_in())]
        elif key in ("dataset", "val_dataset"):
            values = ["/tmp/local.jsonl"]
        elif key == "external_plugins":
            values = [str(Path("/work/swiftex") / v) for v in values]
        values = ["4" if "$" in v else v for v in values]
        values = [placeholder(key, i) if re.fullmatch(r"<\w+>", v) else v for i, v in enumerate(values)]
        argv += [f"--{key}", *values]
    parser = build_parser()
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            namespace, unknown = parser.parse_known_args(argv)
    except SystemExit:
        raise SystemExit(errors.getvalue().strip().splitlines()[-1]) from None
    if unknown:
        reject_unknown(parser, command, unknown)
    values = vars(namespace)
    values.pop("command")
    if command == "rollout":  # what `alignkit rollout` checks before starting TRL's vLLM server
        from alignkit.commands.rollout import serve_arguments
        from alignkit.config.rollout_args import RolloutArguments, check_server_packages

        check_server_packages("alignkit rollout")
        serve_arguments(RolloutArguments(**values))
        return
    args = RunArguments(**values)
    check_run_arguments(args)
    defaults = resolve(args, args.rlhf_type)
    if args.rlhf_type in ("ppo", "grpo"):  # what run_online checks before loading data
        from alignkit.training.online_run import check_online_engine

        os.environ["WORLD_SIZE"] = str(nproc)
        check_online_engine(args.rlhf_type, None, use_vllm=args.use_vllm and args.vllm_mode != "server",
                            tensor_parallel_size=args.vllm_tensor_parallel_size)
    if args.rlhf_type == "gkd" and args.use_vllm and args.vllm_mode != "server":  # what gkd_algorithm checks
        from alignkit.generation.vllm import engine_groups

        engine_groups(nproc, args.vllm_tensor_parallel_size)
    if args.rlhf_type == "grpo" and args.multi_turn_scheduler:  # as run_online: plugins, scheduler, environment
        from alignkit.algorithms.scheduler_plugins import check_scheduler

        check_scheduler(args.multi_turn_scheduler, args.external_plugins, args.gym_env)
    if args.rlhf_type == "grpo":
        from alignkit.training.generation_batch import generation_batch

        if args.num_generations < 2 and not args.teacher_model:  # as online_run's grpo checks
            raise AlignkitError("--num_generations must be at least 2")
        os.environ["WORLD_SIZE"] = str(nproc)
        generation_batch(per_device_train_batch_size=args.per_device_train_batch_size,
                         gradient_accumulation_steps=args.gradient_accumulation_steps, num_processes=nproc,
                         num_generations=args.num_generations, steps_per_generation=args.steps_per_generation,
                         generation_batch_size=args.generation_batch_size, num_iterations=args.num_iterations,
                         max_steps=args.max_steps)
    del defaults


def main() -> None:
    root = Path(next((a for a in sys.argv[1:] if not a.startswith("--")), "/work/swiftex/examples"))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import alignkit.config.rollout_args as rollout

    # The rule: an invocation is accepted when it passes every check before model loading or the engine's
    # start. The vllm package (and a GPU) that --vllm_mode server and `rollout` then need are this machine's
    # lack, not a refusal: counted apart, and the checks after it still run.
    needs_vllm = []
    present = rollout.check_server_packages

    def record_missing(what: str) -> None:
        try:
            present(what)
        except Exception:  # noqa: BLE001 - the missing package is recorded, the checks go on
            needs_vllm.append(what)

    rollout.check_server_packages = record_missing
    found = list(invocations(root))
    accepted, refused, on_gpu = 0, collections.Counter(), 0
    for file, command, flags, nproc in found:
        needs_vllm.clear()
        try:
            check(command, flags, nproc)
            accepted += 1
            on_gpu += bool(needs_vllm)
            reason = None
        except SystemExit as error:
            reason = f"argparse: {str(error)[:110]}"
        except Exception as error:  # noqa: BLE001 - every refusal is counted by its message
            reason = f"{type(error).__name__}: {str(error)[:150]}"
        if reason:
            refused[reason] += 1
        if "--list" in sys.argv:
            print(f"{'OK ' if reason is None else 'NO '} {file} {command} {flags.get('rlhf_type', [''])[0]}"
                  f"{'' if reason is None else '  <- ' + reason}")
    if "--flags" in sys.argv:  # every flag the parser does not know, by the number of invocations using it
        from alignkit.cli import build_parser

        known = {o.lstrip("-") for a in build_parser()._subparsers._group_actions[0].choices["rlhf"]._actions
                 for o in a.option_strings}
        unknown = collections.Counter(k for _, c, flags, _ in found if c == "rlhf" for k in flags if k not in known)
        print(", ".join(f"{k} {n}" for k, n in unknown.most_common()))
    print(f"{accepted} of {len(found)} accepted ({accepted / max(1, len(found)):.0%}); {on_gpu} of them then start "
          "TRL's vLLM server or client, which need vllm and a GPU (not on this machine)")
    for reason, count in refused.most_common():
        print(f"{count:3d}  {reason}")


if __name__ == "__main__":
    main()
