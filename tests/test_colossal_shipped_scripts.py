"""Issue 21: ColossalChat's shipped scripts (examples/data_preparation_scripts/prepare_*.sh and
examples/training_scripts/train_*.sh), run by bash on the tiny model with one change to each: its launcher line
(``colossalai run --nproc_per_node N [--hostfile H] [--master_port P] [--num_nodes K] train_X.py`` →
``alignkit colossal train_X``, one process; ``python prepare_dataset.py`` → ``alignkit colossal prepare_dataset``),
and its empty variables (PRETRAINED_MODEL_PATH="", PARENT_SAVE_DIR="", the ``declare -a dataset=(...)`` lists, the
prepare scripts' /PATH/TO/... placeholders) pointed at local tiny files. prepare → train → checkpoint, in order:
sft, rm, dpo, kto, orpo, ppo (scoring with the rm step's save_dir/modeling) and grpo.

The scripts are verbatim copies under tests/fixtures/colossal_scripts/ (CI has no ColossalAI mirror); a test checks
them against the mirror's HEAD where the mirror is present.

Scaled down only by size flags appended after the script's last flag (ColossalChat's argparse and alignkit's
front-end both let a later flag win; args.json shows it): --max_epochs 1 (rm, orpo: 3), --num_episodes 1 (ppo: 2000,
grpo: 100) and, for the rollouts, --max_seq_len 8 (new tokens per completion; 256 / 1700). Every other flag is the
script's own, batch sizes, accumulation and collect steps included; the data is sized to one batch of the largest.
bash runs the script with ``alignkit`` defined as a function recording its arguments, which then run in-process.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from alignkit.cli import main

SCRIPTS = Path(__file__).parent / "fixtures" / "colossal_scripts"
MIRROR = Path("/work/.mirror/hpcaitech+ColossalAI/repo")
EXAMPLES = "applications/ColossalChat/examples"

# The size flags appended to each training script (later flags win): what the test scales down, and nothing else.
SCALED = {
    "train_sft": [],
    "train_rm": ["--max_epochs", "1"],
    "train_dpo": [],
    "train_kto": [],
    "train_orpo": ["--max_epochs", "1"],
    "train_ppo": ["--num_episodes", "1", "--max_seq_len", "8"],
    "train_grpo": ["--num_episodes", "1", "--max_seq_len", "8"],
}

# --- the one change: the launcher line -----------------------------------------------------------------------------

LAUNCHER = re.compile(r"colossalai run(?: --\w+ \S+)* (train_\w+)\.py")


def with_alignkit_launcher(text: str) -> str:
    text = LAUNCHER.sub(r"alignkit colossal \1", text)
    return text.replace("python prepare_dataset.py", "alignkit colossal prepare_dataset")


def with_local_paths(text: str, names: dict[str, str], lists: dict[str, str], placeholders: dict[str, str]) -> str:
    """The script's ``NAME=""`` lines set to ``names``, its ``declare -a NAME=(...)`` lists to the glob ``lists``
    gives, and the prepare scripts' placeholder paths replaced."""
    for name, value in names.items():
        text, count = re.subn(rf'^{name}=""', f'{name}="{value}"', text, flags=re.M)
        assert count == 1, name
    for name, glob in lists.items():
        text, count = re.subn(rf"^declare -a {name}=\(\n.*?\n\)", f"declare -a {name}=(\n    {glob}\n)", text,
                              flags=re.M | re.S)
        assert count == 1, name
    for placeholder, value in placeholders.items():
        assert placeholder in text, placeholder
        text = text.replace(placeholder, value)
    return text


def with_flags_appended(text: str, flags: list[str]) -> str:
    """``flags`` after the script's last flag (its command is the script's last line)."""
    if not flags:
        return text
    body = text.rstrip()
    if not body.endswith("\\"):
        body += " \\"
    return body + "\n    " + " ".join(flags) + "\n"


BASH_PRELUDE = r"""
alignkit() { printf '%s\0' "$@" >> "$ALIGNKIT_RECORD"; printf '\036' >> "$ALIGNKIT_RECORD"; }
"""


def bash_runs(text: str, record: Path) -> list[str]:
    """The arguments bash passes to ``alignkit`` when it runs the script (once)."""
    result = subprocess.run(["bash", "-c", BASH_PRELUDE + text], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "ALIGNKIT_RECORD": str(record), "HOME": str(record.parent)})
    calls = [call.split("\0")[:-1] for call in record.read_text().split("\036")[:-1]] if record.exists() else []
    assert len(calls) == 1, (result.stdout, result.stderr)
    record.unlink()
    return calls[0]


def script(name: str) -> str:
    return (SCRIPTS / f"{name}.sh").read_text()


# --- local tiny data in ColossalChat's raw formats ----------------------------------------------------------------

def sft_rows(n: int) -> list[dict]:
    return [{"messages": [{"from": "human", "content": f"What is {i} + 1?"},
                          {"from": "assistant", "content": f"Answer: {i + 1}"}]} for i in range(n)]


def preference_rows(n: int) -> list[dict]:
    return [{"context": [{"from": "human", "content": f"What is {i} + 2?"}],
             "chosen": [{"from": "assistant", "content": f"Answer: {i + 2}"}],
             "rejected": [{"from": "assistant", "content": f"Answer: {i + 3}"}]} for i in range(n)]


def kto_rows(n: int) -> list[dict]:
    return [{"prompt": [{"from": "human", "content": f"What is {i} + 3?"}],
             "completion": {"from": "assistant", "content": f"Answer: {i + 3 + i % 2}"}, "label": i % 2 == 0}
            for i in range(n)]


def prompt_rows(n: int) -> list[dict]:  # gt_answer for grpo's math_competition_reward_fn
    return [{"messages": [{"from": "human", "content": f"What is {i} + 4?"}], "gt_answer": str(i + 4)}
            for i in range(n)]


# Rows per kind: the largest batch the training scripts use it with (dpo / orpo: 16; sft / rm / kto: 8; ppo's
# 2 collect steps x 4 prompts: 8) so each run is one optimizer step.
RAW = {"sft": sft_rows(8), "preference": preference_rows(16), "kto": kto_rows(8), "prompt": prompt_rows(8)}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """The module's folder, with wandb offline for the scripts' --use_wandb (a run in the run dir)."""
    folder = tmp_path_factory.mktemp("shipped")
    with pytest.MonkeyPatch.context() as patch:  # module fixtures run before conftest's per-test offline settings
        for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1",
                            "TRANSFORMERS_OFFLINE": "1", "ALIGNKIT_CACHE": str(folder / "cache")}.items():
            patch.setenv(name, value)
        yield folder


@pytest.fixture(scope="module")
def prepared(root, tiny_model_dir) -> dict[str, Path]:
    """prepare_{sft,preference,kto,prompt}_dataset.sh, run in turn; their SAVE_DIRs by kind."""
    template = root / "conversation_template_config.json"  # written by the first run, read by the rest
    saves = {}
    for kind, rows in RAW.items():
        raw, save = root / f"raw_{kind}", root / f"prepared_{kind}"
        raw.mkdir()
        (raw / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        text = with_local_paths(script(f"prepare_{kind}_dataset"), {"SAVE_DIR": str(save)}, {}, {
            f"/PATH/TO/{kind.upper()}/DATASET": str(raw), "/PATH/TO/CHAT/TEMPLATE/CONFIG.json": str(template),
            '--tokenizer_dir  ""': f'--tokenizer_dir  "{tiny_model_dir}"'})
        argv = bash_runs(with_alignkit_launcher(text), root / "record")
        assert argv[:3] == ["colossal", "prepare_dataset", "--type"]
        assert main(argv) == 0
        saves[kind] = save
    return saves


def train(name: str, root: Path, model: str, prepared: dict[str, Path], reward_model: str = "") -> Path:
    """Runs training_scripts/<name>.sh (launcher changed, variables local, SCALED appended); its SAVE_DIR."""
    parent = root / name
    names = {"PARENT_SAVE_DIR": f"{parent}/save/", "PARENT_CONFIG_FILE": f"{parent}/config/",
             "PRETRAINED_MODEL_PATH": model, "PRETRAINED_TOKENIZER_PATH": model}
    text = script(name)
    optional = {"PARENT_LOG_DIR": f"{parent}/logs/", "PARENT_TENSORBOARD_DIR": f"{parent}/tensorboard/",
                "REWARD_MODEL_PATH": reward_model, "LOGDIR": f"{parent}/logdir",
                "CONVERSATION_TEMPLATE_CONFIG_PATH": str(root / "conversation_template_config.json")}
    names |= {key: value for key, value in optional.items() if re.search(rf'^{key}=""', text, re.M)}
    data = {"train_sft": "sft", "train_rm": "preference", "train_dpo": "preference", "train_orpo": "preference",
            "train_kto": "kto"}
    lists = ({"prompt_dataset": f"{prepared['prompt']}/arrow/part-*", "ptx_dataset": f"{prepared['sft']}/arrow/part-*"}
             if name in ("train_ppo", "train_grpo") else {"dataset": f"{prepared[data[name]]}/arrow/part-*"})
    text = with_flags_appended(with_local_paths(text, names, lists, {}), SCALED[name])
    argv = bash_runs(with_alignkit_launcher(text), root / "record")
    assert argv[:2] == ["colossal", name]
    assert main(argv) == 0
    (save,) = (parent / "save").iterdir()  # ${PARENT_SAVE_DIR}${PROJECT_NAME}-${TIMESTAMP}
    return save


@pytest.fixture(scope="module")
def reward_model(root, tiny_model_dir, prepared) -> Path:
    return train("train_rm", root, tiny_model_dir, prepared)


# What each run trained with (its args.json): the script's own flags, and the appended size flags winning.
EXPECTED = {
    "train_sft": {"learning_rate": 5e-5, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
                  "max_length": 4096, "num_train_epochs": 1},
    "train_rm": {"rlhf_type": "rm", "learning_rate": 5e-6, "per_device_train_batch_size": 8, "num_train_epochs": 1},
    "train_dpo": {"rlhf_type": "dpo", "learning_rate": 1e-6, "per_device_train_batch_size": 16,
                  "gradient_accumulation_steps": 2, "beta": 0.1, "max_length": 4096},
    "train_kto": {"rlhf_type": "kto", "learning_rate": 1e-5, "per_device_train_batch_size": 8, "beta": 0.1},
    "train_orpo": {"rlhf_type": "orpo", "learning_rate": 8e-6, "per_device_train_batch_size": 16, "beta": 0.5,
                   "num_train_epochs": 1},
    "train_ppo": {"rlhf_type": "ppo", "learning_rate": 9e-6, "per_device_train_batch_size": 4,
                  "gradient_accumulation_steps": 2, "num_episodes": 1, "num_collect_steps": 2,
                  "max_completion_length": 8},
    "train_grpo": {"rlhf_type": "grpo", "learning_rate": 1e-6, "per_device_train_batch_size": 4,
                   "gradient_accumulation_steps": 4, "num_episodes": 1, "num_collect_steps": 8,
                   "reward_funcs": ["math_competition_reward_fn"], "max_length": 2000, "max_completion_length": 8},
}


def trained_with(name: str, save: Path) -> dict:
    """The run's args.json (checked against EXPECTED), after checking it logged an optimizer step."""
    (run_dir,) = [p for p in save.iterdir() if p.name.startswith("v")]
    assert any("step" in json.loads(line) for line in open(run_dir / "logging.jsonl"))
    args = json.loads((run_dir / "args.json").read_text())
    assert {key: args[key] for key in EXPECTED[name]} == EXPECTED[name]
    return args


# --- the tests -----------------------------------------------------------------------------------------------------

def test_fixture_scripts_are_colossalchats_verbatim():
    if not (MIRROR / "HEAD").exists():
        pytest.skip("no ColossalAI mirror here (CI): the fixture copies are what the other tests run")
    for path in sorted(SCRIPTS.glob("*.sh")):
        folder = "data_preparation_scripts" if path.name.startswith("prepare") else "training_scripts"
        shipped = subprocess.run(["git", "-C", str(MIRROR), "show", f"HEAD:{EXAMPLES}/{folder}/{path.name}"],
                                 capture_output=True, text=True, check=True).stdout
        assert path.read_text() == shipped, path.name


def test_launcher_change_is_the_only_change_to_the_command():
    """Each training script's launcher line becomes `alignkit colossal train_X`; nothing else in it moves."""
    for name in SCALED:
        text = script(name)
        changed = with_alignkit_launcher(text)
        (line,) = [x for x in text.splitlines() if x.startswith("colossalai run")]
        assert line.endswith(f"{name}.py \\")
        assert changed == text.replace(line, f"alignkit colossal {name} \\")


def test_prepare_scripts_write_jsonl_and_arrow(prepared):
    for kind, save in prepared.items():
        rows = [json.loads(line) for part in sorted((save / "jsonl").glob("part-*.jsonl")) for line in open(part)]
        assert len(rows) == len(RAW[kind]), kind
        assert list((save / "arrow").glob("part-*")), kind


@pytest.mark.parametrize("name", ["train_sft", "train_dpo", "train_kto", "train_orpo"])
def test_training_script_writes_its_checkpoint(name, root, tiny_model_dir, prepared):
    save = train(name, root, tiny_model_dir, prepared)
    assert (save / "modeling" / "model.safetensors").is_file()
    assert (save / "modeling" / "tokenizer_config.json").is_file()
    trained_with(name, save)


def test_train_rm_writes_the_reward_model(reward_model):
    assert (reward_model / "modeling" / "model.safetensors").is_file()
    trained_with("train_rm", reward_model)


@pytest.mark.parametrize("name", ["train_ppo", "train_grpo"])
def test_rl_script_writes_the_actor(name, root, tiny_model_dir, prepared, reward_model):
    """train_ppo.sh's REWARD_MODEL_PATH: the rm step's save_dir/modeling ("from RLHF step 2")."""
    save = train(name, root, tiny_model_dir, prepared, reward_model=str(reward_model / "modeling"))
    assert (save / "actor" / "modeling" / "model.safetensors").is_file()
    args = trained_with(name, save)
    if name == "train_ppo":
        assert args["reward_model"] == [str(reward_model / "modeling")]
