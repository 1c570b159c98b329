"""`alignkit colossal <script>`: ColossalChat's command lines run through alignkit with ColossalChat's meaning
and defaults (alignkit/commands/colossal/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignkit.cli import main
from alignkit.commands.colossal.flags import SCRIPTS
from alignkit.commands.colossal.run import parse_script
from alignkit.commands.colossal.translate import translate
from alignkit.errors import AlignkitError

DATA = Path(__file__).parent / "fixtures" / "data"
SCRIPT_DATA = {"train_sft": "colossalchat_sft.jsonl", "train_rm": "colossalchat_preference.jsonl",
               "train_dpo": "colossalchat_preference.jsonl", "train_kto": "colossalchat_kto.jsonl",
               "train_orpo": "colossalchat_preference.jsonl"}


PAIRS = str(Path(__file__).parent / "fixtures" / "data" / "colossalchat_preference.jsonl")


def values_of(argv: list[str]) -> dict:
    script, given = parse_script(argv)
    return translate(script, given).values


def test_every_flag_is_translated_explained_or_refused():
    for script, flags in SCRIPTS.items():
        for item in flags:
            assert sum(bool(x) for x in (item.to, item.how, item.no_effect)) == 1, (script, item.name)


def test_colossalchat_defaults_full_fine_tuning_betas_schedule_and_sizes():
    values = values_of(["train_dpo.py", "--pretrain", "m", "--dataset", PAIRS])
    assert values["train_type"] == "full"
    assert (values["adam_beta1"], values["adam_beta2"], values["weight_decay"]) == (0.9, 0.95, 0.1)
    assert values["lr_scheduler_type"] == "cosine_with_min_lr"
    assert json.loads(values["lr_scheduler_kwargs"]) == {"min_lr_rate": 0.1}
    assert (values["warmup_steps"], values["warmup_ratio"], values["dataloader_drop_last"]) == (0, 0.0, True)
    assert values["truncation_strategy"] == "right"  # ColossalChat's collators cut at the end
    assert (values["num_train_epochs"], values["per_device_train_batch_size"], values["learning_rate"]) == (3, 4, 5e-6)
    assert values["gradient_accumulation_steps"] == 1  # train_dpo's own default; the others' is 8
    assert values_of(["train_sft", "--pretrain", "m", "--dataset", PAIRS])["gradient_accumulation_steps"] == 8
    assert values_of(["train_sft", "--pretrain", "m", "--dataset", PAIRS])["max_length"] == 512  # --max_len
    assert values["gradient_checkpointing"] is False
    assert values_of(["train_dpo", "--pretrain", "m", "--dataset", PAIRS, "--warmup_steps", "0"])["warmup_ratio"] == 0


def test_remeant_flags_carry_colossalchat_meaning():
    assert values_of(["train_orpo", "--pretrain", "m", "--dataset", PAIRS, "--lam", "0.5"])["beta"] == 0.5
    simpo = values_of(["train_dpo", "--pretrain", "m", "--dataset", PAIRS, "--loss_type", "simpo_loss",
                       "--disable_reference_model", "--beta", "2.0"])
    assert (simpo["rlhf_type"], simpo["simpo_gamma"], simpo["cpo_alpha"], simpo["beta"]) == ("simpo", 1.4, 0.0, 2.0)
    gamma = values_of(["train_dpo", "--pretrain", "m", "--dataset", PAIRS, "--length_normalization",
                       "--disable_reference_model", "--gamma", "0.3"])
    assert (gamma["rlhf_type"], gamma["simpo_gamma"]) == ("simpo", 0.3)
    dpo = values_of(["train_dpo", "--pretrain", "m", "--dataset", PAIRS, "--disable_reference_model"])
    assert (dpo["rlhf_type"], dpo["loss_type"], dpo["reference_free"]) == ("dpo", ["sigmoid"], True)
    assert values_of(["train_rm", "--pretrain", "m", "--dataset", PAIRS, "--loss_fn", "log_exp"])["loss_type"] == [
        "log_exp"]


@pytest.mark.parametrize("argv, message", [
    (["train_dpo", "--loss_type", "simpo_loss"], "--disable_reference_model"),
    (["train_dpo", "--gamma", "0.5"], "--gamma 0.5"),
    (["train_dpo", "--disable_loss_mask"], "--disable_loss_mask"),
    (["train_sft", "--plugin", "3d", "--zero_stage", "1", "--zero_cpu_offload"], "--zero_stage 1"),
    (["train_dpo", "--ref_tp", "2"], "--ref_tp 2"),
    (["train_sft", "--enable_sequence_parallelism"], "--enable_sequence_parallelism"),
])
def test_values_alignkit_cannot_honour_stop_with_the_flag_named(argv, message):
    with pytest.raises(AlignkitError, match=message.replace("-", r"\-")):
        values_of([*argv, "--pretrain", "m", "--dataset", PAIRS])


def test_lora_config_maps_rank_alpha_dropout_targets_and_pissa(tmp_path):
    config = tmp_path / "lora.json"
    config.write_text(json.dumps({"r": 4, "lora_alpha": 8, "linear_lora_dropout": 0.0, "target_modules": ["q_proj"]}))
    values = values_of(["train_sft", "--pretrain", "m", "--dataset", PAIRS, "--lora_config", str(config)])
    assert (values["train_type"], values["lora_rank"], values["lora_alpha"], values["lora_dropout"],
            values["lora_target_modules"]) == ("lora", 4, 8, 0.0, ["q_proj"])
    config.write_text(json.dumps({"r": 0}))
    assert values_of(["train_sft", "--pretrain", "m", "--dataset", PAIRS, "--lora_config", str(config)])[
        "train_type"] == "full"
    config.write_text(json.dumps({"r": 4, "lora_initialization_method": "PiSSA"}))  # test_colossal_reward_checkpoint
    assert values_of(["train_sft", "--pretrain", "m", "--dataset", PAIRS, "--lora_config", str(config)])[
        "init_weights"] == "pissa"


def test_plugin_maps_onto_deepspeed_and_3d_sizes_are_refused(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert values_of(["train_sft", "--pretrain", "m", "--dataset", PAIRS, "--plugin", "zero2"])["plugin"] == "zero2"
    assert values_of(["train_sft", "--pretrain", "m", "--dataset", PAIRS, "--plugin", "3d", "--zero_stage", "2",
                      "--zero_cpu_offload"])["deepspeed"] == "zero2_offload"
    assert "plugin" not in values_of(["train_sft", "--pretrain", "m", "--dataset", PAIRS, "--plugin", "ddp"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "plugin" not in values_of(["train_sft", "--pretrain", "m", "--dataset", PAIRS, "--plugin", "zero2"])


def test_unknown_flag_and_script_are_named(capsys):
    assert main(["colossal", "train_dpo", "--pretrian", "m"]) == 2
    error = capsys.readouterr().err
    assert "unknown flag --pretrian for ColossalChat's train_dpo.py; did you mean --pretrain?" in error
    assert main(["colossal", "train_dpx.py"]) == 2
    assert "did you mean train_dpo?" in capsys.readouterr().err


@pytest.mark.parametrize("script", list(SCRIPT_DATA))
def test_each_script_trains_one_step_and_writes_modeling(script, tiny_model_dir, tmp_path):
    save_dir, config_file = tmp_path / "save", tmp_path / "configs" / "run.json"
    code = main(["colossal", f"{script}.py", "--pretrain", tiny_model_dir, "--dataset",
                 str(DATA / SCRIPT_DATA[script]), "--plugin", "ddp", "--batch_size", "2", "--accumulation_steps", "1",
                 "--max_epochs", "1", "--lr", "1e-3", "--mixed_precision", "bf16", "--save_interval", "1000",
                 "--config_file", str(config_file), "--save_path" if script == "train_sft" else "--save_dir",
                 str(save_dir), *(["--auto_weight"] if script == "train_kto" else [])])
    assert code == 0
    assert json.loads(config_file.read_text())["lr"] == 1e-3
    (run_dir,) = [p for p in save_dir.iterdir() if p.name.startswith("v")]
    args = json.loads((run_dir / "args.json").read_text())
    assert (args["train_type"], args["adam_beta2"], args["per_device_train_batch_size"]) == ("full", 0.95, 2)
    modeling = save_dir / "modeling"
    assert (modeling / "model.safetensors").is_file() and (modeling / "tokenizer_config.json").is_file()
    if script == "train_rm":
        assert (modeling / "value_head.safetensors").is_file()


def test_modeling_dir_plus_tokenizer_dir_loads_as_the_model(tiny_model_dir, tmp_path):
    """A ColossalChat modeling/ dir has weights only; --tokenizer_dir supplies the tokenizer."""
    import shutil

    modeling = tmp_path / "modeling"
    shutil.copytree(tiny_model_dir, modeling, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json"))
    save_dir = tmp_path / "save"
    code = main(["colossal", "train_sft", "--pretrain", str(modeling), "--tokenizer_dir", tiny_model_dir,
                 "--dataset", str(DATA / "colossalchat_sft.jsonl"), "--plugin", "ddp", "--batch_size", "2",
                 "--accumulation_steps", "1", "--max_epochs", "1", "--mixed_precision", "bf16",
                 "--save_path", str(save_dir)])
    assert code == 0
    assert (save_dir / "modeling" / "tokenizer_config.json").is_file()


def online(script: str, *flags: str) -> dict:
    return values_of([script, "--pretrain", "m", "--prompt_dataset", "p", "--rm_checkpoint_path", "rm/modeling",
                      *flags])


def test_ppo_flags_keep_colossalchat_meaning(monkeypatch):
    values = online("train_ppo", "--kl_coef", "0.3", "--train_batch_size", "2", "--accumulation_steps", "2",
                    "--experience_batch_size", "4", "--num_collect_steps", "2", "--num_update_steps", "3",
                    "--max_length", "300", "--max_seq_len", "100")
    assert (values["rlhf_type"], values["kl_coef"], values["reward_model"]) == ("ppo", 0.3, ["rm/modeling"])
    # --train_batch_size is ColossalChat's per-device micro-batch; an optimizer step takes it x accumulation.
    assert (values["per_device_train_batch_size"], values["train_batch_size"]) == (2, 4)
    assert (values["experience_batch_size"], values["num_collect_steps"], values["num_ppo_epochs"]) == (4, 2, 3)
    assert (values["max_completion_length"], values["max_prompt_length"], values["temperature"]) == (100, 200, 0.7)
    assert online("train_ppo")["kl_coef"] == 0.1  # ColossalChat's default, not alignkit's 0.05
    monkeypatch.setenv("WORLD_SIZE", "2")  # per-device sizes become a step's totals over the processes
    values = online("train_ppo", "--train_batch_size", "2", "--accumulation_steps", "1", "--experience_batch_size", "4")
    assert (values["experience_batch_size"], values["train_batch_size"]) == (8, 4)


@pytest.mark.parametrize("flags, message", [
    (("--critic_lr", "1e-5"), "--critic_lr"),
    (("--no_neural_reward_model", "--reward_functions", "gsm8k_reward_fn"), "--rm_pretrain"),
    (("--ptx_dataset", "x", "--ptx_coef", "0.1"), "--ptx_batch_size 4"),
])
def test_ppo_values_without_an_equivalent_are_refused(flags, message):
    with pytest.raises(AlignkitError, match=message):
        online("train_ppo", *flags)


def test_grpo_folds_kl_into_the_reward_anneals_the_temperature_and_maps_the_rest():
    values = online("train_grpo", "--num_episodes", "1200")  # ColossalChat's defaults: kl_coef 0.7, 1.0 -> 0.9
    assert (values["beta"], values["kl_in_reward"], values["kl_reward_reduction"]) == (0.7, True, "mean")
    assert (values["temperature"], values["final_temperature"], values["temperature_hold_steps"],
            values["temperature_annealing_steps"]) == (1.0, 0.9, 100, 600)  # min(100, E/6), min(600, E/2)
    values = online("train_grpo", "--num_episodes", "30")
    assert (values["temperature_hold_steps"], values["temperature_annealing_steps"]) == (5, 15)
    with pytest.raises(AlignkitError, match="GRPO has no critic"):
        online("train_grpo", "--critic_checkpoint_path", "critic/modeling")
    values = online("train_grpo", "--kl_coef", "0", "--initial_temperature", "0.8", "--final_temperature", "0.8",
                    "--num_generations", "4", "--num_update_steps", "2")
    assert (values["rlhf_type"], values["beta"], values["temperature"], values["num_generations"],
            values["num_iterations"]) == ("grpo", 0.0, 0.8, 4, 2)
    assert "final_temperature" not in values and "kl_in_reward" not in values


def test_rm_then_ppo_and_grpo_on_its_modeling_dir(tiny_model_dir, tmp_path):
    """prepare nothing, train_rm → save_dir/modeling → train_ppo / train_grpo score with it."""
    rm = tmp_path / "rm"
    assert main(["colossal", "train_rm", "--pretrain", tiny_model_dir, "--dataset",
                 str(DATA / "colossalchat_preference.jsonl"), "--batch_size", "2", "--accumulation_steps", "1",
                 "--max_epochs", "1", "--mixed_precision", "bf16", "--save_dir", str(rm)]) == 0
    common = ["--pretrain", tiny_model_dir, "--rm_pretrain", tiny_model_dir, "--rm_checkpoint_path",
              str(rm / "modeling"), "--prompt_dataset", str(DATA / "colossalchat_ppo_prompts.jsonl"),
              "--num_episodes", "1", "--num_collect_steps", "1", "--experience_batch_size", "2",
              "--train_batch_size", "2", "--accumulation_steps", "1", "--num_update_steps", "1",
              "--max_seq_len", "8", "--mixed_precision", "bf16"]
    assert main(["colossal", "train_ppo.py", *common, "--save_path", str(tmp_path / "ppo")]) == 0
    assert (tmp_path / "ppo" / "actor" / "modeling" / "model.safetensors").is_file()
    assert main(["colossal", "train_grpo", *common, "--num_generations", "2", "--kl_coef", "0",
                 "--initial_temperature", "0.9", "--final_temperature", "0.9", "--train_batch_size", "4",
                 "--save_path", str(tmp_path / "grpo")]) == 0
    assert (tmp_path / "grpo" / "actor" / "modeling" / "model.safetensors").is_file()


def test_nproc_per_node_relaunches_the_colossal_command(monkeypatch):
    launched = []
    monkeypatch.setenv("NPROC_PER_NODE", "2")
    for name in ("LOCAL_RANK", "RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("alignkit.training.launch.relaunch", lambda command: launched.append(command) or 0)
    assert main(["colossal", "train_sft", "--pretrain", "m", "--dataset", PAIRS]) == 0
    assert launched[0][3:5] == ["--nproc_per_node", "2"]
    assert launched[0][-6:] == ["colossal", "train_sft", "--pretrain", "m", "--dataset", PAIRS]


def test_docs_colossal_md_lists_every_flag_as_the_tables_say():
    from alignkit.commands.colossal.flags import render_markdown

    text = (Path(__file__).resolve().parent.parent / "docs" / "colossal.md").read_text()
    marker = "<!-- generated: python -m alignkit.commands.colossal.flags -->\n"
    assert text.split(marker)[1] == render_markdown(), (
        "regenerate the tables of docs/colossal.md: python -m alignkit.commands.colossal.flags")


def test_lora_config_run_writes_a_merged_model_and_checkpoints_resume(tiny_model_dir, tmp_path):
    config = tmp_path / "lora.json"
    config.write_text(json.dumps({"r": 4, "lora_alpha": 8, "linear_lora_dropout": 0.0}))
    save = tmp_path / "save"
    common = ["colossal", "train_sft", "--pretrain", tiny_model_dir, "--dataset", str(DATA / "colossalchat_sft.jsonl"),
              "--batch_size", "2", "--accumulation_steps", "1", "--max_epochs", "2", "--save_interval", "1",
              "--lora_config", str(config), "--mixed_precision", "bf16", "--save_path", str(save)]
    assert main(common) == 0
    (run_dir,) = [p for p in save.iterdir() if p.name.startswith("v")]
    assert (run_dir / "checkpoint-1" / "adapter_config.json").is_file()
    assert (save / "modeling" / "model.safetensors").is_file()  # merged: a plain model, no adapter
    assert not (save / "modeling" / "adapter_config.json").exists()
    # --checkpoint_path resumes an alignkit checkpoint: the run goes on in its directory to the same end.
    import shutil

    shutil.rmtree(run_dir / "checkpoint-2")
    assert main([*common, "--checkpoint_path", str(run_dir / "checkpoint-1")]) == 0
    assert (run_dir / "checkpoint-2" / "adapter_config.json").is_file()


def test_inference_chats_with_a_modeling_dir_and_its_template_configs_system(tiny_chat_model_dir, tmp_path,
                                                                              monkeypatch, capsys):
    from transformers import AutoTokenizer

    config = tmp_path / "template.json"
    config.write_text(json.dumps({"chat_template": AutoTokenizer.from_pretrained(tiny_chat_model_dir).chat_template,
                                  "system_message": "Be brief.", "end_of_assistant": "<|im_end|>"}))
    seen = {}

    def fake_infer(args):
        seen.update(model=args.model, system=args.system, temperature=args.temperature,
                    max_new_tokens=args.max_new_tokens, max_length=args.max_length)
        return 0

    monkeypatch.setattr("alignkit.commands.infer.run_infer", fake_infer)
    assert main(["colossal", "inference", "--model_path", tiny_chat_model_dir, "--conversation_template_config",
                 str(config), "--max_new_tokens", "8", "--model_max_length", "256", "--io", "simple"]) == 0
    assert seen == {"model": tiny_chat_model_dir, "system": "Be brief.", "temperature": 0.7, "max_new_tokens": 8,
                    "max_length": 256}
    config.write_text(json.dumps({"chat_template": "{{ 'other' }}", "end_of_assistant": "x"}))
    assert main(["colossal", "inference", "--model_path", tiny_chat_model_dir, "--conversation_template_config",
                 str(config)]) == 2
    assert "differs from the tokenizer's own" in capsys.readouterr().err
