"""Acceptance of ms-swift's own `sft` and offline `rlhf` example invocations by alignkit's training entry point.

Extracts every `swift sft` and `swift rlhf` (rlhf types other than grpo/gkd, which bench/grpo_corpus.py covers)
command line from the ms-swift example shell scripts (default: /work/swiftex/examples), replaces the model by a
local tiny model and the datasets by a local JSONL file of the right kind, and runs each through
``run_training`` up to data loading (every flag check, the defaults, the engine check; loading is where the
run is stopped; PPO, which loads its data before its models, up to its training loop, with a tiny one-label
sequence classifier as --reward_model). An invocation is accepted when it gets there. `$VAR` values become 4.
What this machine lacks (GPUs for --deepspeed/--fsdp/--use_liger_kernel, the deepspeed package) is counted
apart, not as a refusal, as bench/grpo_corpus.py counts vLLM.

    python bench/train_corpus.py [EXAMPLES_DIR] [--list]
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import logging
import os
import re
import shlex
import sys
import tempfile
from pathlib import Path

logging.disable(logging.CRITICAL)
OFFLINE = {"grpo", "gkd"}
needs_gpu: list[str] = []


class ReachedData(Exception):
    """Raised where the run would load its data: every check before it passed."""


def invocations(root: Path):
    """(file, sub-command, {flag: [values]}, processes) of each swift sft and offline swift rlhf line."""
    for path in sorted(root.rglob("*.sh")):
        # Continuation lines join (a blank line after a trailing backslash ends the command).
        text = re.sub(r"\\[ \t]*\n[ \t]*#?", " ", path.read_text(errors="replace"))
        text = re.sub(r"\$\(\(?[^)]*\)\)?", "4", text)  # $(expr 16 / $n), $((16 / n)): one value
        for line in text.splitlines():
            if line.lstrip().startswith("#"):
                continue
            match = re.search(r"\bswift\s+(sft|rlhf)\b(?!`)(.*)", line)
            if not match:
                continue
            prefix = line[: match.start()]
            procs = re.search(r"NPROC_PER_NODE=(\S+)", prefix) or re.search(r"NPROC_PER_NODE=(\S+)", text)
            nproc = int(procs.group(1)) if procs and procs.group(1).isdigit() else 1
            try:
                words = shlex.split(re.split(r"\s#|\s&&\s|\s\|\s|\s&\s*$|\s\d?>", match.group(2))[0])
            except ValueError:
                continue
            flags: dict[str, list[str]] = {}
            key = None
            first = []
            for word in words:
                if word.startswith("--"):
                    key = word[2:].replace("-", "_")
                    flags[key] = []
                elif key is not None:
                    flags[key].append(word)
                else:
                    first.append(word)
            if first:  # a config file as the first argument
                flags["__config__"] = first
            if match.group(1) == "rlhf" and flags.get("rlhf_type", ["dpo"])[0] in OFFLINE:
                continue
            yield str(path.relative_to(root.parent)), match.group(1), flags, nproc


def local_files(work: Path) -> dict[str, str]:
    """A tiny Llama model directory, a tiny reward model beside it (a one-label sequence classifier with the
    same tokenizer, as ms-swift's PPO examples' Skywork reward model) and one JSONL file per row kind."""
    from alignkit.models.builtin import builtin_model_dir

    model, reward_model = work / "tiny-model", work / "tiny-reward-model"
    if not model.exists() or not reward_model.exists():
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

        tokenizer = AutoTokenizer.from_pretrained(builtin_model_dir())
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                             pad_token_id=tokenizer.pad_token_id)
        LlamaForCausalLM(config).save_pretrained(model)
        tokenizer.save_pretrained(model)
        config.num_labels = 1
        LlamaForSequenceClassification(config).save_pretrained(reward_model)
        tokenizer.save_pretrained(reward_model)
    rows = {
        "sft": {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        "pairs": {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                  "rejected_response": "go away"},
        "kto": {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                "label": True},
    }
    files = {}
    for kind, row in rows.items():
        files[kind] = str(work / f"{kind}.jsonl")
        Path(files[kind]).write_text("\n".join(json.dumps(row) for _ in range(8)) + "\n")
    files["model"], files["reward_model"] = str(model), str(reward_model)
    return files


def check(command: str, flags: dict[str, list[str]], nproc: int, files: dict[str, str], work: Path) -> None:
    """Raises ReachedData where the run would load its data, or what alignkit stops with before it."""
    import alignkit.training.run as run_module
    from alignkit.cli import main as cli_main

    rlhf_type = flags.get("rlhf_type", ["dpo"])[0]
    kind = "sft" if command == "sft" else ("kto" if rlhf_type == "kto" else "pairs")
    argv = [command]
    config = flags.pop("__config__", None)
    if config:
        argv.append(str(Path("/work/swiftex") / config[0]))
    for key, values in flags.items():
        if key in ("reward_model", "reward_model_id_or_path"):
            values = [files["reward_model"]]
        elif key in ("model", "ref_model", "teacher_model", "model_id_or_path"):
            values = [files["model"]]
        elif key in ("dataset", "val_dataset"):
            values = [files[kind]]
        elif key in ("output_dir", "logging_dir"):
            values = [str(work / "out")]
        elif key in ("external_plugins", "deepspeed", "fsdp") and values and "/" in values[0]:
            values = [str(Path("/work/swiftex") / v) for v in values]
        values = ["4" if "$" in v or v.startswith("<") else v for v in values]  # $VAR, <num-labels>
        argv += [f"--{key}", *values]
    if "model" not in flags and "model_id_or_path" not in flags and not config:
        argv += ["--model", files["model"]]

    def reached(*_args, **_kwargs):
        raise ReachedData

    # What this machine lacks (GPUs for DeepSpeed/FSDP/Liger, the deepspeed package, the processes a
    # --sequence_parallel_size group needs) is recorded, not a
    # refusal: the checks after it still run. The script's processes count for FSDP's check.
    import alignkit.training.runner as runner_module

    def lacks(what):
        def record(*_args, **_kwargs):
            needs_gpu.append(what)
        return record

    # PPO loads its data first and its models after: it runs until its loop would start, so that its reward model
    # (a tiny sequence classifier) and the value model built from it are loaded and checked too.
    import alignkit.training.online_run as online_module
    import alignkit.training.sharding as sharding_module

    os.environ["WORLD_SIZE"] = "1"  # one process here; the engines' process counts are GPU checks, patched above
    saved = (run_module.load_training_data, runner_module.check_available, runner_module.check_liger_available,
             online_module.train_online, sharding_module.check_available, runner_module.check_sequence_parallel)
    run_module.load_training_data = reached
    online_module.train_online = reached
    runner_module.check_available = sharding_module.check_available = lacks("engine")
    runner_module.check_liger_available = lacks("liger")
    runner_module.check_sequence_parallel = (  # checked for every run: a lack only where it splits sequences
        lambda size, world: needs_gpu.append("sequence parallel") if size > 1 else None)
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            code = cli_main(argv)
        if code:
            lines = errors.getvalue().strip().splitlines()
            raise SystemExit(lines[-1] if lines else f"exit {code}")
    except SystemExit as error:
        if str(error).startswith("alignkit"):
            raise
        lines = errors.getvalue().strip().splitlines()
        raise SystemExit(lines[-1] if lines else f"exit {error.code}") from None
    finally:
        (run_module.load_training_data, runner_module.check_available, runner_module.check_liger_available,
         online_module.train_online, sharding_module.check_available, runner_module.check_sequence_parallel) = saved


def main() -> None:
    root = Path(next((a for a in sys.argv[1:] if not a.startswith("--")), "/work/swiftex/examples"))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    work = Path(tempfile.mkdtemp(prefix="train_corpus_"))
    files = local_files(Path(os.environ.get("CORPUS_CACHE", "/tmp/train_corpus_files")).resolve()
                        if os.environ.get("CORPUS_CACHE") else work)
    found = list(invocations(root))
    accepted, refused, on_gpu = 0, collections.Counter(), 0
    for file, command, flags, nproc in found:
        shown = dict(flags)
        needs_gpu.clear()
        try:
            check(command, dict(flags), nproc, files, work)
            reason = "the run returned before loading data"
        except ReachedData:
            accepted += 1
            on_gpu += bool(needs_gpu)
            reason = None
        except SystemExit as error:
            reason = f"exit: {str(error)[:150]}"
        except Exception as error:  # noqa: BLE001 - every refusal is counted by its message
            reason = f"{type(error).__name__}: {str(error)[:150]}"
        if reason:
            refused[reason] += 1
        if "--list" in sys.argv:
            print(f"{'OK ' if reason is None else 'NO '} {file} {command} {shown.get('rlhf_type', [''])[0]}"
                  f"{'' if reason is None else '  <- ' + reason}")
    print(f"{accepted} of {len(found)} accepted ({accepted / max(1, len(found)):.0%}); {on_gpu} of them then need "
          "a GPU (DeepSpeed, FSDP or Liger) or more processes (--sequence_parallel_size), which this machine lacks")
    for reason, count in refused.most_common():
        print(f"{count:3d}  {reason}")


if __name__ == "__main__":
    main()
