"""Seed 004 (ColossalChat's examples README): every command it shows, run as a ColossalChat user types it with
one change, ``colossalai run --nproc_per_node N [--hostfile H] [--master_port P] train_X.py FLAGS`` becoming
``alignkit colossal train_X FLAGS`` (and ``python prepare_dataset.py`` / ``python inference.py`` becoming
``alignkit colossal prepare_dataset`` / ``inference``).

How the commands are read: by bash itself. Each README block below is embedded verbatim (the CI clone has no
../shared), its shell variables are set to local tiny files (the tiny model of conftest.py; data prepared by
``alignkit colossal prepare_dataset`` from jsonl in the README's raw formats), and bash runs it with ``alignkit``
defined as a function that records its arguments, and ``command_not_found_handle`` recording the rest. What
bash really does with the README's inline ``\\ # comment`` continuations:

- ``--accumulation_steps 1 \\  # ...`` (two blanks): ``\\ `` is an escaped blank, so bash passes the argument
  ' ', then ``#`` starts a comment and the command ENDS on that line;
- ``--tp 4 \\ # TP size, ...`` (one blank): ``\\ #`` is one word ' #', so bash passes ' #', 'TP', 'size,', ...
  and the command ends on that line too;
- either way the lines after it are a new command (``--lr 2e-5 ...``: "--lr: command not found").

``colossalai run`` joins its arguments with blanks and runs them through a shell (colossalai/cli/launcher/run.py),
where ' ' vanishes and ' # TP size ...' is a comment: ColossalChat's script gets the flags before the comment
line. alignkit colossal does the same for training scripts (logged), so each command trains what ColossalChat
would train, or stops with an error naming the missing piece, before any model loads.

One process: NPROC_PER_NODE is left out (the suite runs on two CPU cores; launching N processes is tested in
test_colossal_frontend.py and tests/test_distributed.py). ``--max_epochs 1`` and every other flag are kept as
written; a run is bounded to one optimizer step by its data (batch_size x accumulation_steps rows).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from alignkit.cli import main

# --- the README's blocks, verbatim ---------------------------------------------------------------------------------

GET_STARTED = """\
colossalai run --nproc_per_node YOUR_GPU_PER_NODE --hostfile YOUR_HOST_FILE \\
train.py --OTHER_CONFIGURATIONS
"""

GEMINI = """\
colossalai run --nproc_per_node 4 --master_port 28534 --hostfile ./hostfile train_sft.py \\
    --pretrain $PRETRAINED_MODEL_PATH \\
    --tokenizer_dir $PRETRAINED_TOKENIZER_PATH \\
    --dataset ${dataset[@]} \\
    --save_interval 5000 \\
    --save_path $SAVE_DIR \\
    --config_file $CONFIG_FILE \\
    --plugin gemini \\
    --batch_size 4 \\
    --max_epochs 1 \\
    --accumulation_steps 1 \\  # the gradient accumulation has to be disabled
    --lr 2e-5 \\
    --max_len 2048 \\
    --use_wandb
"""

GEMINI_AUTO = GEMINI.replace("--plugin gemini ", "--plugin gemini_auto ")

ZERO2 = """\
colossalai run --nproc_per_node 4 --master_port 28534 --hostfile ./hostfile train_sft.py \\
    --pretrain $PRETRAINED_MODEL_PATH \\
    --tokenizer_dir $PRETRAINED_TOKENIZER_PATH \\
    --dataset ${dataset[@]} \\
    --save_interval 5000 \\
    --save_path $SAVE_DIR \\
    --config_file $CONFIG_FILE \\
    --plugin zero2 \\
    --batch_size 4 \\
    --max_epochs 1 \\
    --accumulation_steps 4 \\
    --lr 2e-5 \\
    --max_len 2048 \\
    --use_wandb
"""

ZERO2_CPU = ZERO2.replace("--plugin zero2 ", "--plugin zero2_cpu ")

TP_PPO = """\
colossalai run --nproc_per_node 4 --hostfile hostfile --master_port 30039 train_ppo.py \\
    --pretrain $PRETRAINED_MODEL_PATH \\
    --rm_pretrain $PRETRAINED_MODEL_PATH \\
    --tokenizer_dir $PRETRAINED_TOKENIZER_PATH \\
    --rm_checkpoint_path $REWARD_MODEL_PATH \\
    --prompt_dataset ${prompt_dataset[@]} \\
    --pretrain_dataset ${ptx_dataset[@]} \\
    --ptx_batch_size 1 \\
    --ptx_coef 0.0 \\
    --plugin "3d" \\
    --save_interval 200 \\
    --save_path $SAVE_DIR \\
    --num_episodes 2000 \\
    --num_collect_steps 4 \\
    --num_update_steps 1 \\
    --experience_batch_size 8 \\
    --train_batch_size 4 \\
    --accumulation_steps 8 \\
    --tp 4 \\ # TP size, nproc_per_node must be divisible by it
    --lr 9e-6 \\
    --mixed_precision "bf16" \\
    --grad_clip 1.0 \\
    --weight_decay 0.01 \\
    --warmup_steps 100 \\
    --grad_checkpoint \\
    --use_wandb
"""

SP_SPLIT_GATHER = """\
# use the `split_gather` or `ring` sp mode
colossalai run --nproc_per_node 4 --master_port 28534 --hostfile ./hostfile train_sft.py \\
    --pretrain $PRETRAINED_MODEL_PATH \\
    --tokenizer_dir $PRETRAINED_TOKENIZER_PATH \\
    --dataset ${dataset[@]} \\
    --save_interval 5000 \\
    --save_path $SAVE_DIR \\
    --config_file $CONFIG_FILE \\
    --plugin 3d \\
    --tp 4 \\ # TP size, nproc_per_node must be divisible by it
    --sp 1 \\ # SP size, must be 1
    --sp_mode 'split_gather' \\ # or 'ring'
    --enable_sequence_parallelism \\ # must be set
    --batch_size 4 \\
    --max_epochs 1 \\
    --accumulation_steps 4 \\
    --lr 2e-5 \\
    --max_len 2048 \\
    --use_wandb
"""

SP_ALL_TO_ALL = """\
# use the `all_to_all` sp mode
colossalai run --nproc_per_node 4 --master_port 28534 --hostfile ./hostfile train_sft.py \\
    --pretrain $PRETRAINED_MODEL_PATH \\
    --tokenizer_dir $PRETRAINED_TOKENIZER_PATH \\
    --dataset ${dataset[@]} \\
    --save_interval 5000 \\
    --save_path $SAVE_DIR \\
    --config_file $CONFIG_FILE \\
    --plugin 3d \\
    --tp 1 \\ # TP size, must be 1
    --sp 4 \\ # SP size, nproc_per_node must be divisible by it
    --sp_mode 'all_to_all' \\
    --enable_sequence_parallelism \\ # must be set
    --batch_size 4 \\
    --max_epochs 1 \\
    --accumulation_steps 4 \\
    --lr 2e-5 \\
    --max_len 2048 \\
    --use_wandb
"""


def zero2_cpu_with(line: str) -> str:
    """The Gradient Checkpointing / Flash Attention / LoRA blocks: ZeRO2-CPU's command with one commented line
    before --use_wandb (verbatim from the README)."""
    return ZERO2_CPU.replace("    --use_wandb\n", f"    {line}\n    --use_wandb\n")


GRAD_CHECKPOINT = zero2_cpu_with("--grad_checkpoint \\ # This enables gradient checkpointing")
FLASH_ATTN = zero2_cpu_with("--use_flash_attn \\ # This enables flash attention")
LORA = zero2_cpu_with("--lora_rank 32 \\ # This enables LoRA")

# "Here are some unique arguments for PPO": flags for train_ppo.py, not a command of their own.
PPO_FLAGS = """\
--pretrain $PRETRAINED_MODEL_PATH \\
--rm_pretrain $PRETRAINED_MODEL_PATH \\ # reward model architectural
--tokenizer_dir $PRETRAINED_TOKENIZER_PATH \\
--rm_checkpoint_path $REWARD_MODEL_PATH \\ # reward model checkpoint path
--prompt_dataset ${prompt_dataset[@]} \\ # List of string, prompt dataset
--conversation_template_config $CONVERSATION_TEMPLATE_CONFIG_PATH \\ # path to the conversation template config file
--pretrain_dataset ${ptx_dataset[@]} \\ # List of string, the sft dataset
--ptx_batch_size 1 \\ # batch size for calculate ptx loss
--ptx_coef 0.0 \\ # none-zero if ptx loss is enable
--num_episodes 2000 \\ # number of episodes to train
--num_collect_steps 1 \\
--num_update_steps 1 \\
--experience_batch_size 8 \\
--train_batch_size 4 \\
--accumulation_steps 2
"""

# The data preparation scripts the README links (prepare_{sft,preference,prompt}_dataset.sh), their command.
PREPARE = """\
python prepare_dataset.py --type {kind} \\
    --data_input_dirs /PATH/TO/{upper}/DATASET \\
    --conversation_template_config /PATH/TO/CHAT/TEMPLATE/CONFIG.json \\
    --tokenizer_dir  "" \\
    --data_cache_dir $SAVE_DIR/cache \\
    --data_jsonl_output_dir $SAVE_DIR/jsonl \\
    --data_arrow_output_dir $SAVE_DIR/arrow \\
    --max_length {max_length}
"""

# --- the translation rule and bash's reading -----------------------------------------------------------------------

LAUNCH = re.compile(r"colossalai run --nproc_per_node \S+((?: --(?:hostfile|master_port) \S+)*) \\?\n?(\S+?)\.py")


def translated(block: str) -> str:
    """The one change: `colossalai run --nproc_per_node N [--hostfile H] [--master_port P] X.py` → `alignkit colossal
    X` (one process: NPROC_PER_NODE left out); `python prepare_dataset.py` → `alignkit colossal prepare_dataset`."""
    text = LAUNCH.sub(lambda m: f"alignkit colossal {m.group(2)}", block)
    return text.replace("python prepare_dataset.py", "alignkit colossal prepare_dataset")


BASH_PRELUDE = r"""
alignkit() { printf '%s\0' alignkit "$@"; printf '\036'; }
command_not_found_handle() { printf '%s\0' "$@"; printf '\036'; return 127; }
"""


def bash_reads(block: str, variables: str) -> tuple[list[str], list[list[str]]]:
    """(the arguments bash passes to alignkit, the commands it does not find) when it runs ``block``."""
    script = BASH_PRELUDE + variables + "\n" + block
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True).stdout  # rc: the last command's
    calls = [record.split("\0")[:-1] for record in out.split("\036")[:-1]]
    (command,) = [call[1:] for call in calls if call[0] == "alignkit"]
    return command, [call for call in calls if call[0] != "alignkit"]


# --- local tiny files for the README's shell variables -------------------------------------------------------------

def sft_rows(count: int) -> list[dict]:
    """The README's SFT format (Stage 1, Step 1), its first row included."""
    rows = [{"messages": [{"from": "human", "content": "what are some pranks with a pen i can do?"},
                          {"from": "assistant", "content": "Are you looking for practical joke ideas?"}]}]
    rows += [{"messages": [{"from": "human", "content": f"What is {i} + 1?"},
                           {"from": "assistant", "content": f"Answer: {i + 1}"}]} for i in range(count - 1)]
    return rows


PROMPTS = [{"messages": [{"from": "human", "content": "what are some pranks with a pen i can do?"}]},
           {"messages": [{"from": "human", "content": "Introduce butterflies species in Oregon."}]}]


def prepare(root: Path, kind: str, rows: list[dict], tokenizer: str, max_length: int) -> Path:
    """Runs the linked prepare script's command (bash-read, translated) on ``rows``; returns its $SAVE_DIR."""
    raw, save = root / f"raw_{kind}_{len(rows)}", root / f"prepared_{kind}_{len(rows)}"
    raw.mkdir(parents=True)
    (raw / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    block = PREPARE.format(kind=kind, upper=kind.upper(), max_length=max_length)
    block = block.replace(f"/PATH/TO/{kind.upper()}/DATASET", str(raw)).replace('""', tokenizer)
    block = block.replace("/PATH/TO/CHAT/TEMPLATE/CONFIG.json", str(root / "conversation_template_config.json"))
    argv, not_found = bash_reads(translated(block), f"SAVE_DIR={save}")
    assert not not_found
    assert main(argv) == 0
    return save


@pytest.fixture(scope="module")
def prepared(tiny_model_dir, tmp_path_factory):
    """SFT data of 4, 16 and 32 rows (one optimizer step of batch_size 4 x accumulation 1, 4 and 8) and PPO prompts,
    each prepared by the README's preparation commands."""
    root = tmp_path_factory.mktemp("seed004")
    data = {f"sft{n}": prepare(root, "sft", sft_rows(n), tiny_model_dir, 4096) for n in (4, 16, 32)}
    data["prompt"] = prepare(root, "prompt", PROMPTS, tiny_model_dir, 300)
    return data


def variables(tmp_path: Path, model: str, dataset: Path, prompts: Path | None = None) -> str:
    lines = [f"PRETRAINED_MODEL_PATH={model}", f"PRETRAINED_TOKENIZER_PATH={model}", f"REWARD_MODEL_PATH={model}",
             f"SAVE_DIR={tmp_path / 'save'}", f"CONFIG_FILE={tmp_path / 'config.json'}",
             f"CONVERSATION_TEMPLATE_CONFIG_PATH={tmp_path / 'template.json'}",
             f"dataset=({dataset}/arrow/part-*)", f"ptx_dataset=({dataset}/arrow/part-*)"]
    if prompts is not None:
        lines.append(f"prompt_dataset=({prompts}/arrow/part-*)")
    return "\n".join(lines)


def run_args(save: Path) -> dict:
    (run_dir,) = [p for p in save.iterdir() if p.name.startswith("v")]
    return json.loads((run_dir / "args.json").read_text())


@pytest.fixture
def no_model_loads(monkeypatch):
    """A refusal must come before any model loads: loading one fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the refusal")

    for name in ("AutoModelForCausalLM", "AutoModelForSequenceClassification"):
        monkeypatch.setattr(f"transformers.{name}.from_pretrained", refuse)


# --- the commands ---------------------------------------------------------------------------------------------------

def test_prepare_commands_write_colossalchat_layout(prepared):
    """prepare_{sft,prompt}_dataset.sh's command: jsonl and arrow parts of the README's raw rows, the template config
    written where none existed (as ColossalChat)."""
    sft = prepared["sft16"]
    rows = [json.loads(line) for part in sorted((sft / "jsonl").glob("part-*.jsonl")) for line in open(part)]
    assert len(rows) == 16 and {"input_ids", "labels", "inputs_decode"} <= set(rows[0])
    assert "Are you looking for practical joke ideas?" in rows[0]["labels_decode"][0]
    assert list((sft / "arrow").glob("part-*"))
    prompts = [json.loads(line) for part in (prepared["prompt"] / "jsonl").glob("part-*.jsonl") for line in open(part)]
    assert len(prompts) == 2 and "input_ids" in prompts[0] and "labels" not in prompts[0]
    assert (prepared["prompt"].parent / "conversation_template_config.json").is_file()


# (block, its data, what bash leaves out as "command not found", RunArguments values the README's flags give)
TRAINS = {
    # `\  # the gradient accumulation has to be disabled` ends the command: --lr/--max_len/--use_wandb never arrive.
    "gemini": (GEMINI, "sft4", [["--lr", "2e-5", "--max_len", "2048", "--use_wandb"]],
               {"gradient_accumulation_steps": 1, "learning_rate": 5e-6, "max_length": 512, "report_to": ["none"]}),
    "gemini_auto": (GEMINI_AUTO, "sft4", [["--lr", "2e-5", "--max_len", "2048", "--use_wandb"]],
                    {"gradient_accumulation_steps": 1, "learning_rate": 5e-6, "max_length": 512}),
    "zero2": (ZERO2, "sft16", [], {"gradient_accumulation_steps": 4, "learning_rate": 2e-5, "max_length": 2048,
                                   "report_to": ["wandb"]}),
    "zero2_cpu": (ZERO2_CPU, "sft16", [], {"gradient_accumulation_steps": 4, "learning_rate": 2e-5,
                                           "max_length": 2048, "report_to": ["wandb"]}),
    "grad_checkpoint": (GRAD_CHECKPOINT, "sft16", [["--use_wandb"]],
                        {"gradient_checkpointing": True, "learning_rate": 2e-5, "report_to": ["none"]}),
    "flash_attn": (FLASH_ATTN, "sft16", [["--use_wandb"]], {"learning_rate": 2e-5, "max_length": 2048}),
    # `--tp 1 \ # TP size` ends it: --sp 4 and --enable_sequence_parallelism never arrive, nor --max_epochs 1 or
    # --accumulation_steps 4: ColossalChat's defaults (3 epochs, 8 steps) train plain data parallel, as there.
    "sp_all_to_all": (SP_ALL_TO_ALL, "sft32", [
        ["--sp", "4", " #", "SP", "size,", "nproc_per_node", "must", "be", "divisible", "by", "it"],
        ["--sp_mode", "all_to_all", "--enable_sequence_parallelism", " #", "must", "be", "set"],
        ["--batch_size", "4", "--max_epochs", "1", "--accumulation_steps", "4", "--lr", "2e-5", "--max_len", "2048",
         "--use_wandb"]],
        {"num_train_epochs": 3, "gradient_accumulation_steps": 8, "learning_rate": 5e-6, "tp": 1, "sp": 1}),
}
SLOW = {"gemini_auto", "zero2_cpu", "flash_attn"}  # the same path as gemini / zero2 / grad_checkpoint


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in TRAINS])
def test_training_commands_train_and_write_the_modeling_dir(name, prepared, tiny_model_dir, tmp_path, monkeypatch):
    block, data, not_found, expected = TRAINS[name]
    monkeypatch.setenv("WANDB_MODE", "offline")  # --use_wandb, where it arrives: an offline run in the run dir
    monkeypatch.setenv("WANDB_SILENT", "true")
    argv, missed = bash_reads(translated(block), variables(tmp_path, tiny_model_dir, prepared[data]))
    assert argv[:2] == ["colossal", "train_sft"]
    assert missed == not_found
    assert main(argv) == 0
    save = tmp_path / "save"
    assert (save / "modeling" / "model.safetensors").is_file()  # "the model checkpoints" in save_dir
    assert (save / "modeling" / "tokenizer_config.json").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["pretrain"] == tiny_model_dir  # --config_file
    args = run_args(save)
    assert {key: args[key] for key in expected} == expected
    assert (args["train_type"], args["per_device_train_batch_size"], args["save_steps"]) == ("full", 4, 5000)
    (run_dir,) = [p for p in save.iterdir() if p.name.startswith("v")]
    steps = [json.loads(line)["step"] for line in open(run_dir / "logging.jsonl") if "loss" in line]
    assert max(steps) == args["num_train_epochs"]  # one optimizer step per epoch: the data bounds the run


def test_sp_split_gather_command_refuses_tp_4_by_name(prepared, tiny_model_dir, tmp_path, capsys, no_model_loads):
    """`--tp 4 \\ # TP size` ends the command at --tp 4 (bash); alignkit refuses it, naming it, before any model
    loads; --sp, --sp_mode, --enable_sequence_parallelism and the rest are commands bash does not find."""
    argv, missed = bash_reads(translated(SP_SPLIT_GATHER), variables(tmp_path, tiny_model_dir, prepared["sft16"]))
    assert argv[-13:] == ["--plugin", "3d", "--tp", "4", " #", "TP", "size,", "nproc_per_node", "must", "be",
                          "divisible", "by", "it"]
    assert [call[0] for call in missed] == ["--sp", "--sp_mode", "--enable_sequence_parallelism", "--batch_size"]
    assert main(argv) == 2
    assert "--tp 4: tensor, pipeline and sequence parallelism" in capsys.readouterr().err
    assert not (tmp_path / "save" / "modeling").exists()


def test_sequence_parallel_flags_without_the_comments_are_refused_by_name(prepared, tiny_model_dir, tmp_path, capsys,
                                                                         no_model_loads):
    """The SP blocks as their authors meant them (the `\\ # ...` comments removed): refused by name."""
    for block in (SP_SPLIT_GATHER, SP_ALL_TO_ALL):
        meant = re.sub(r" \\ #.*\n", " \\\n", translated(block))
        argv, missed = bash_reads(meant, variables(tmp_path, tiny_model_dir, prepared["sft16"]))
        assert not missed and "--enable_sequence_parallelism" in argv
        assert main(argv) == 2
        assert "--enable_sequence_parallelism: ColossalChat splits sequences inside its 3d plugin" in \
            capsys.readouterr().err


def test_tp_ppo_command_stops_at_the_readmes_pretrain_dataset_then_at_tp_4(prepared, tiny_model_dir, tmp_path, capsys,
                                                                          no_model_loads):
    """The README's --pretrain_dataset is not a flag of ColossalChat's train_ppo.py (its argparse stops there too);
    alignkit names it and the flag to use. With that flag, the next stop is --tp 4, by name."""
    names = variables(tmp_path, tiny_model_dir, prepared["sft16"], prepared["prompt"])
    argv, missed = bash_reads(translated(TP_PPO), names)
    assert argv[:2] == ["colossal", "train_ppo"] and argv[-3:] == ["divisible", "by", "it"]
    assert [call[0] for call in missed] == ["--lr"]
    assert main(argv) == 2
    assert "unknown flag --pretrain_dataset for ColossalChat's train_ppo.py; ColossalChat's script rejects it too " \
           "(the examples README's name for the ptx data): use --ptx_dataset" in capsys.readouterr().err
    argv, _ = bash_reads(translated(TP_PPO).replace("--pretrain_dataset", "--ptx_dataset"), names)
    assert main(argv) == 2
    assert "--tp 4: tensor, pipeline and sequence parallelism" in capsys.readouterr().err


def test_lora_command_names_lora_config(prepared, tiny_model_dir, tmp_path, capsys, no_model_loads):
    """--lora_rank is an older ColossalChat's flag (today's scripts reject it): alignkit names --lora_config."""
    argv, missed = bash_reads(translated(LORA), variables(tmp_path, tiny_model_dir, prepared["sft16"]))
    assert argv[-8:-5] == ["--max_len", "2048", "--lora_rank"] and missed == [["--use_wandb"]]
    assert main(argv) == 2
    assert "unknown flag --lora_rank for ColossalChat's train_sft.py; ColossalChat's scripts reject it too (an older " \
           "version's flag): LoRA is --lora_config FILE" in capsys.readouterr().err


def test_ppo_flag_list(prepared, tiny_model_dir, tmp_path, capsys, no_model_loads):
    """The "unique arguments for PPO" after `alignkit colossal train_ppo \\`: bash ends the command at
    `--rm_pretrain ... \\ # reward model architectural`, so train_ppo gets no prompts and says so. As the README
    means the list (comments removed, its --pretrain_dataset as --ptx_dataset) it translates to PPO as follows."""
    from alignkit.commands.colossal.run import parse_script
    from alignkit.commands.colossal.translate import translate

    names = variables(tmp_path, tiny_model_dir, prepared["sft16"], prepared["prompt"])
    argv, missed = bash_reads("alignkit colossal train_ppo \\\n" + PPO_FLAGS, names)
    assert argv[2:6] == ["--pretrain", tiny_model_dir, "--rm_pretrain", tiny_model_dir]
    assert missed[0][0] == "--tokenizer_dir"
    assert main(argv) == 2
    assert "train_ppo: --prompt_dataset is required" in capsys.readouterr().err
    meant = re.sub(r" \\ #.*\n", " \\\n", PPO_FLAGS).replace("--pretrain_dataset", "--ptx_dataset")
    argv, missed = bash_reads("alignkit colossal train_ppo \\\n" + meant, names)
    assert not missed
    values = translate(*parse_script(argv[1:])).values
    assert (values["rlhf_type"], values["num_episodes"], values["num_collect_steps"], values["num_ppo_epochs"]) == (
        "ppo", 2000, 1, 1)
    # train_batch_size 4 x accumulation 2 per optimizer step; an episode collects 8 prompts.
    assert (values["experience_batch_size"], values["per_device_train_batch_size"], values["train_batch_size"]) == (
        8, 4, 8)
    assert values["template_config"] == str(tmp_path / "template.json") and "pretrain_dataset" not in values


def test_get_started_template_names_the_scripts(capsys):
    """`colossalai run ... train.py --OTHER_CONFIGURATIONS` is a template: train.py names no script."""
    argv, missed = bash_reads(translated(GET_STARTED), "")
    assert argv == ["colossal", "train", "--OTHER_CONFIGURATIONS"] and not missed
    assert main(argv) == 2
    assert "unknown ColossalChat script; did you mean train_rm? alignkit runs train_sft, train_rm" in \
        capsys.readouterr().err


def test_inference_answers_with_the_trained_modeling_dir(prepared, tiny_model_dir, tmp_path, monkeypatch, capsys):
    """The README's inference/ (inference.py --model_path SAVE_DIR/modeling): the SFT model answers, `exit` quits."""
    import io

    argv, _ = bash_reads(translated(GEMINI), variables(tmp_path, tiny_model_dir, prepared["sft4"]))
    assert main(argv) == 0
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO("what are some pranks with a pen i can do?\nexit\n"))
    argv, _ = bash_reads("python inference.py --model_path $SAVE_DIR/modeling --max_new_tokens 8 --io simple".replace(
        "python inference.py", "alignkit colossal inference"), f"SAVE_DIR={tmp_path / 'save'}")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("<<< ") == 2 and out.count(">>> ") == 1  # the question, its answer, then `exit`
    answer = out.split(">>> ", 1)[1].split("\n<<< ", 1)[0]
    assert answer.strip()  # the tiny model's (random) answer, at most 8 tokens


def test_only_what_colossalai_run_launches_drops_the_blank(tiny_model_dir, tmp_path, capsys):
    """prepare_dataset.py runs under python, with no second shell: bash's ' ' from a `\\  # comment` line stays an
    argument its argparse rejects; alignkit names it and says why."""
    argv, missed = bash_reads("alignkit colossal prepare_dataset --type sft \\  # comment\n", "")
    assert argv == ["colossal", "prepare_dataset", "--type", "sft", " "] and not missed
    assert main(argv) == 2
    assert "unexpected argument ' ' for `alignkit colossal prepare_dataset` (bash's reading of a `\\ # comment` " \
           "line" in capsys.readouterr().err
