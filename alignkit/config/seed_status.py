"""The commands of the seed documents (ms-swift's and ColossalChat's own docs that our first users copy from)
and what each does in alignkit, with the test that runs it. docs/compat.md renders this table
(``alignkit.config.compat``); tests/test_compat_doc.py keeps the file equal to it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SeedCommand:
    seed: str  # the document: 000 ms-swift 2.x DPO, 001 human alignment, 002 multimodal, 003 LLM fine-tuning, ...
    command: str  # as the document writes it (launch variables and long flag lists shortened)
    status: str  # runs | stops (with the error's point)
    test: str  # the test that runs it


_ALIGN = "tests/test_seed_commands.py"
_VISION = "tests/test_seed_002_vision.py"
_AFTER = "tests/test_seed_003_after_training.py"
_COLOSSAL = "tests/test_seed_004_colossal.py"
_INTERNVL = "test_seed_002_internvl2_itself_needs_remote_code_and_the_error_says_so"
SEED_COMMANDS = (
    SeedCommand("000", "swift dpo --model_type yi-6b-chat --ref_model_type yi-6b-chat --sft_type lora "
                "--dataset hh-rlhf-cn:harmless_base_cn --dtype AUTO ...", "runs", f"{_ALIGN}::test_seed_000_swift_dpo"),
    *(SeedCommand("001", f"swift rlhf --rlhf_type {method} --model_type llama3-8b-instruct --sft_type lora ...",
                  "runs", f"{_ALIGN}::test_seed_001_pair_methods") for method in ("dpo", "cpo", "orpo", "simpo")),
    SeedCommand("001", "NPROC_PER_NODE=2 swift rlhf --rlhf_type dpo ... --gradient_accumulation_steps "
                "$(expr 16 / $nproc_per_node)", "runs (one process here; the launch variables start torchrun)",
                f"{_ALIGN}::test_seed_001_pair_methods"),
    SeedCommand("001", "swift rlhf --rlhf_type rm --model_type llama3-8b-instruct ...", "runs",
                f"{_ALIGN}::test_seed_001_rm"),
    SeedCommand("001", "swift rlhf --rlhf_type ppo ... --reward_model_id_or_path path/to/reawrd_model "
                "--reward_model_type llama3-8b-instruct", "runs", f"{_ALIGN}::test_seed_001_ppo"),
    SeedCommand("001", "swift rlhf --rlhf_type kto ... --desirable_weight 1.0 --undesirable_weight 1.0 "
                "--batch_size 1", "runs", f"{_ALIGN}::test_seed_001_kto"),
    *(SeedCommand("002", f"swift rlhf --rlhf_type {method} --model_type llava1_6-mistral-7b-instruct ... "
                  "--dataset rlaif-v#1000 --lora_target_modules DEFAULT", "runs",
                  f"{_VISION}::test_seed_002_vision_methods") for method in ("dpo", "cpo", "orpo", "simpo")),
    SeedCommand("002", "swift rlhf --rlhf_type rm --model_type internvl2-2b ...", "runs with a model transformers "
                "implements; InternVL2 itself (remote code only) stops, naming trust_remote_code and the "
                "transformers port", f"{_VISION}::{_INTERNVL}"),
    SeedCommand("003", "swift sft --model_id_or_path qwen/Qwen-7B-Chat --dataset AI-ModelScope/blossom-math-v2 "
                "--output_dir output (also NPROC_PER_NODE=2, NNODES=2 ...)", "runs",
                f"{_ALIGN}::test_seed_003_sft"),
    SeedCommand("003", "sft_main(SftArguments(...)); infer_main(InferArguments(ckpt_dir=..., "
                "load_dataset_config=True)); merge_lora(...)", "runs (alignkit.api)",
                "tests/test_api.py::test_the_seed_script_trains_merges_and_answers"),
    SeedCommand("003", "get_model_tokenizer(model_type, ...); Swift.from_pretrained(model, ckpt_dir); "
                "get_template(get_default_template_type(model_type), tokenizer); inference(model, template, query)",
                "runs (alignkit.api; the tokenizer's own chat template renders)",
                "tests/test_api.py::test_the_seeds_python_inference_with_an_adapter_and_merged"),
    SeedCommand("003", "swift sft ... --quantization_bit 4", "runs (bitsandbytes QLoRA)",
                "tests/test_precision_and_qlora.py::test_quantization_bit_is_ms_swift_2x_qlora"),
    SeedCommand("003", "swift infer --model_id_or_path qwen/Qwen-7B-Chat --dataset AI-ModelScope/blossom-math-v2",
                "runs (answers to infer_result/*.jsonl)", f"{_AFTER}::test_seed_003_original_model_dataset_evaluation"),
    SeedCommand("003", "swift sft ... --push_to_hub true --hub_model_id ... --hub_token ... (推送模型)",
                "runs: the last checkpoint is uploaded when training ends",
                "tests/test_push_to_hub_training.py::test_the_last_checkpoint_is_uploaded_when_training_ends"),
    SeedCommand("003", "swift export --ckpt_dir 'xxx/vx-xxx/checkpoint-xxx' --merge_lora true", "runs",
                f"{_AFTER}::test_seed_003_dataset_evaluation_direct_then_merged"),
    SeedCommand("003", "swift infer --ckpt_dir 'xxx/vx-xxx/checkpoint-xxx[-merged]' --load_dataset_config true", "runs",
                f"{_AFTER}::test_seed_003_dataset_evaluation_direct_then_merged"),
    SeedCommand("003", "swift infer --ckpt_dir 'xxx/vx-xxx/checkpoint-xxx[-merged]'", "runs (chat on stdin)",
                f"{_AFTER}::test_seed_003_human_evaluation_chats_from_stdin"),
    SeedCommand("003", "swift app-ui --ckpt_dir 'xxx/vx-xxx/checkpoint-xxx[-merged]'", "runs (the chat page)",
                f"{_AFTER}::test_seed_003_app_ui_serves_the_chat_page"),
    SeedCommand("004", "colossalai run --nproc_per_node 4 ... train_sft.py --plugin gemini|gemini_auto|zero2|zero2_cpu "
                "... (also --grad_checkpoint, --use_flash_attn)", "runs as `NPROC_PER_NODE=4 alignkit colossal "
                "train_sft ...`; the README's `\\ # comment` lines end the command there, as bash does "
                "(docs/colossal.md)", f"{_COLOSSAL}::test_training_commands_train_and_write_the_modeling_dir"),
    SeedCommand("004", "colossalai run ... train_sft.py --plugin 3d --tp 4 --sp 1 --sp_mode split_gather "
                "--enable_sequence_parallelism ...", "stops: --tp 4 (tensor parallelism) is refused by name",
                f"{_COLOSSAL}::test_sp_split_gather_command_refuses_tp_4_by_name"),
    SeedCommand("004", "colossalai run ... train_ppo.py --plugin 3d --tp 4 --pretrain_dataset ... --rm_pretrain ...",
                "stops: --pretrain_dataset (ColossalChat's own scripts refuse it too: --ptx_dataset), then --tp 4",
                f"{_COLOSSAL}::test_tp_ppo_command_stops_at_the_readmes_pretrain_dataset_then_at_tp_4"),
    SeedCommand("004", "colossalai run ... train_sft.py --lora_rank 32 ...", "stops: LoRA is --lora_config FILE "
                "(as in ColossalChat's scripts)", f"{_COLOSSAL}::test_lora_command_names_lora_config"),
    SeedCommand("004", "python prepare_dataset.py --type sft|prompt ... ; python inference.py --model_path ...",
                "runs as `alignkit colossal prepare_dataset|inference ...`",
                f"{_COLOSSAL}::test_prepare_commands_write_colossalchat_layout"),
)


def render_seed_table() -> list[str]:
    rows = ["## The seed documents' commands", "",
            "Each command of the documents our first users copy from, `swift` changed to `alignkit`; the test runs "
            "it with the documents' offline tip (`--model_id_or_path <local dir> --check_model_is_latest false`), "
            "a tiny local model and a local file in the named dataset's format.", "",
            "| seed | command | status | test |", "|---|---|---|---|"]
    def cell(text: str) -> str:
        return text.replace("|", "\\|")  # a bar inside a table cell, even in code, ends the cell

    rows += [f"| {c.seed} | `{cell(c.command)}` | {cell(c.status)} | `{c.test}` |" for c in SEED_COMMANDS]
    return [*rows, ""]
