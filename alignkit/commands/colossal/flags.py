"""ColossalChat's scripts' flags, one table per script, with ColossalChat's defaults (read from each
script's argparse in applications/ColossalChat/examples/).

Every flag says how alignkit handles it, in one of three ways:

    to="field"      the same value, with the same meaning, becomes that RunArguments field
    how="..."       translated by ``translate.py`` (the text says into what); a value alignkit cannot honour
                    stops there with an error naming the flag
    no_effect="..." accepted; one logged line says why it has no work in alignkit when it is set
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any

PLUGINS = ("gemini", "gemini_auto", "zero2", "zero2_cpu", "3d", "ddp")


@dataclass(frozen=True)
class Flag:
    name: str
    default: Any
    help: str
    type: type = str  # bool: a store_true switch, as in ColossalChat
    nargs: str | None = None
    choices: tuple | None = None
    to: str | None = None
    how: str | None = None
    no_effect: str | None = None


def flag(name: str, default: Any, help: str, **kw) -> Flag:
    return Flag(name, default, help, **kw)


def with_defaults(flags: tuple[Flag, ...], **defaults: Any) -> tuple[Flag, ...]:
    """A shared table with one script's own defaults (train_dpo accumulates 1 step, train_sft runs bf16)."""
    return tuple(dataclasses.replace(f, default=defaults[f.name]) if f.name in defaults else f for f in flags)


# --- shared by every training script ---
ENGINE = (
    flag("plugin", "gemini", "ColossalAI booster plugin.", choices=PLUGINS,
         how="ddp: data parallel; zero2 / zero2_cpu / gemini / gemini_auto: DeepSpeed ZeRO-2 / ZeRO-2 + CPU offload / "
         "ZeRO-3 / ZeRO-3 + offload (on a machine without a GPU: data parallel, logged); 3d: --zero_stage's ZeRO "
         "with --tp/--pp/--sp 1, else refused. Unset: data parallel (ColossalChat's default gemini is not forced)"),
    flag("tp", 1, "Tensor-parallel size.", type=int, to="tp"),
    flag("pp", 1, "Pipeline-parallel size.", type=int, to="pp"),
    flag("sp", 1, "Sequence-parallel size.", type=int, to="sp"),
    flag("zero_stage", 0, "ZeRO stage of --plugin 3d.", type=int, choices=(0, 1, 2),
         how="with --plugin 3d: DeepSpeed ZeRO of that stage; other plugins ignore it, as in ColossalChat (logged)"),
    flag("zero_cpu_offload", False, "CPU offload of --plugin 3d with --zero_stage >= 1.", type=bool,
         how="with --plugin 3d --zero_stage 2: DeepSpeed ZeRO-2 with CPU offload; --zero_stage 1: refused"),
    flag("sp_mode", "split_gather", "Sequence-parallel mode.", choices=("split_gather", "ring", "all_to_all"),
         no_effect="sequence parallelism (--sp > 1) is refused, so its mode has nothing to choose"),
    flag("enable_sequence_parallelism", False, "Sequence parallelism of --plugin 3d.", type=bool,
         how="refused: ColossalChat splits sequences beside tensor parallelism (3d plugin), which alignkit lacks; "
         "ms-swift's Ulysses is --sequence_parallel_size"),
    flag("grad_clip", 1.0, "Gradient clipping value.", type=float, to="max_grad_norm"),
    flag("weight_decay", 0.1, "Weight decay.", type=float, to="weight_decay"),
    flag("warmup_steps", None, "Warm-up steps.", type=int,
         how="--warmup_steps; unset: ColossalChat's int(0.025 x optimizer steps), counted from the data at the "
         "edge (PPO/GRPO: int(0.025 x --num_episodes))"),
    flag("mixed_precision", "fp16", "Mixed precision.", choices=("fp16", "bf16"),
         how="--dtype; fp16 on a machine without a GPU runs bf16 (or fp32 without native bf16), logged"),
    flag("pretrain", None, "The model to train.", how="--model (required)"),
    flag("tokenizer_dir", None, "The tokenizer (unset: --pretrain's).",
         how="a model directory whose weights are --pretrain's and whose tokenizer files are this directory's"),
    flag("checkpoint_path", None, "Resume from a checkpoint.",
         how="an alignkit checkpoint (save_dir/vN-*/checkpoint-X): --resume_from_checkpoint; a path containing "
         "'modeling' (a saved model): training continues from those weights, as ColossalChat"),
    flag("lora_config", None, "LoRA config JSON (r, lora_alpha, linear_lora_dropout, lora_train_bias, "
         "lora_initialization_method, target_modules).",
         how="unset or r 0: full fine-tuning; r > 0: LoRA with its rank, alpha, dropout and targets; "
         "lora_initialization_method kaiming_uniform | PiSSA: --init_weights true | pissa (an exact SVD where "
         "ColossalChat takes svd_lowrank); lora_train_bias none | all | lora: --lora_bias none | all | lora_only"),
    flag("save_interval", 1000, "Steps between checkpoints.", type=int, to="save_steps"),
    flag("lr", 5e-6, "Learning rate.", type=float, to="learning_rate"),
    flag("accumulation_steps", 8, "Gradient accumulation steps.", type=int, to="gradient_accumulation_steps"),
    flag("log_dir", None, "Tensorboard log directory.",
         how="tensorboard logging on (alignkit writes it in the run directory's runs/, logged)"),
    flag("use_wandb", False, "Log to wandb.", type=bool, how="--report_to wandb"),
    flag("grad_checkpoint", False, "Gradient checkpointing.", type=bool,
         how="--gradient_checkpointing (false when unset, ColossalChat's default)"),
    flag("use_flash_attn", False, "Flash attention 2.", type=bool,
         no_effect="alignkit chooses the attention kernel itself: on GPUs, packed rows run flash attention's varlen "
         "kernels where flash_attn is installed (bf16/fp16, no prefix sharing), else flex or sdpa "
         "(docs/performance.md)"),
)

# --- the offline scripts' data and loop flags ---
OFFLINE = (
    flag("dataset", [], "Training data: ColossalChat's prepared dirs or raw jsonl files.", nargs="+", to="dataset"),
    flag("eval_dataset", [], "Held-out data.", nargs="+", to="val_dataset"),
    flag("config_file", None, "Where to write the run's arguments as JSON.",
         how="written, as ColossalChat: every flag's value as JSON"),
    flag("max_epochs", 3, "Epochs.", type=int, to="num_train_epochs"),
    flag("batch_size", 4, "Per-device batch size.", type=int, to="per_device_train_batch_size"),
)

SAVE_DIR = flag("save_dir", None, "Where checkpoints and the final model (save_dir/modeling) go.",
                how="--output_dir (runs in save_dir/vN-*/); the final merged model and tokenizer in save_dir/modeling")
MAX_LENGTH = flag("max_length", 2048, "Most tokens of a row.", type=int, to="max_length")
DISABLE_LOSS_MASK = flag(
    "disable_loss_mask", False, "Train on every token, prompts included.", type=bool,
    how="sft: --loss_scale all; preference and KTO: refused (alignkit trains the answers' tokens only)")
MODEL_TYPE = flag("model_type", None, "Parsed by ColossalChat's script but never read.",
                  no_effect="ColossalChat's script parses it and never reads it")
DISABLE_REFERENCE = flag("disable_reference_model", False, "Run without a reference model.", type=bool,
                         how="dpo: reference log-probs 0 (--reference_free, as ColossalChat); simpo_loss: SimPO")
MICROBATCH = flag("microbatch_size", 1, "Pipeline micro-batch size.", type=int,
                  no_effect="only pipeline parallelism (--pp > 1, refused) splits batches into micro-batches")

# --- train_ppo and train_grpo (ColossalChat's online scripts) ---
ONLINE = (
    flag("prompt_dataset", [], "Prompts: ColossalChat's prepared prompt dirs or jsonl files.", nargs="+",
         how="--dataset (required)"),
    flag("ptx_dataset", [], "SFT data whose LM loss is mixed into the actor loss.", nargs="+",
         how="--pretrain_dataset when --ptx_coef > 0 (with --ptx_coef 0 it has no work, logged)"),
    flag("ptx_batch_size", 4, "Rows per ptx batch.", type=int,
         how="with ptx data it must equal --train_batch_size (alignkit's ptx batch is the micro-batch), else refused"),
    flag("ptx_coef", 0.0, "Weight p of (1 - p) PPO + p LM loss.", type=float, to="ptx_coef"),
    flag("conversation_template_config", None, "ColossalChat's template config JSON.", to="template_config"),
    flag("rm_pretrain", None, "The reward model's (and critic's) backbone.",
         how="the config.json of a ColossalChat-layout --rm_checkpoint_path / --critic_checkpoint_path (state dict "
         "only); ppo without --critic_checkpoint_path, and train_ppo --no_neural_reward_model: --value_model (its "
         "backbone, a new value head)"),
    flag("rm_checkpoint_path", None, "The reward model: train_rm's save_dir/modeling.",
         how="--reward_model: alignkit's or ColossalChat's layout (model.* + value_head.weight/bias, scored at the "
         "last token); a path without 'modeling' in it: its modeling/"),
    flag("critic_checkpoint_path", None, "The critic's starting weights.",
         how="ppo: --value_model (a reward-model or critic checkpoint, either layout, head included); grpo: refused "
         "(no critic)"),
    flag("no_neural_reward_model", False, "Score with --reward_functions instead of a reward model.", type=bool,
         how="train_ppo: --reward_funcs (ColossalChat's gsm8k_reward_fn / math_competition_reward_fn, against the "
         "prompts' gt_answer and the template config's response_format_tags), each weighed 2 as train_ppo.py "
         "counts it twice, and the value model from --rm_pretrain with a fresh value head (--value_model)"),
    flag("reward_functions", None, "Verifiable reward functions.", nargs="+",
         how="--reward_funcs: train_ppo with --no_neural_reward_model (see there); train_grpo without --rm_pretrain "
         "(each weighed 1). Otherwise no effect (logged), as ColossalChat scores with the reward model then"),
    flag("save_path", "actor_checkpoint_prompts", "Where checkpoints and the final actor (save_path/actor/modeling) "
         "go.", how="--output_dir; the final merged actor and tokenizer in save_path/actor/modeling"),
    flag("num_episodes", 1, "Episodes (collect + update).", type=int, to="num_episodes"),
    flag("num_collect_steps", 2, "Collect steps per episode.", type=int, to="num_collect_steps"),
    flag("num_update_steps", 5, "Passes over the collected experience per episode.", type=int,
         how="--num_ppo_epochs (ppo) / --num_iterations (grpo)"),
    flag("train_batch_size", 16, "Per-device micro-batch of the update phase.", type=int,
         how="--per_device_train_batch_size; one optimizer step per train_batch_size x accumulation_steps x processes "
         "completions (--train_batch_size), at most the episode's experience (logged when capped)"),
    flag("experience_batch_size", 16, "Per-device prompts per collect step.", type=int,
         how="--experience_batch_size x the number of processes (alignkit counts a step's prompts over all processes)"),
    flag("critic_lr", 9e-6, "The critic's learning rate.", type=float,
         how="equal to --lr only: alignkit trains policy and value model with one optimizer; refused otherwise"),
    flag("disable_loss_mask", False, "Train on every token.", type=bool, how="refused for ppo and grpo"),
    flag("max_length", 2048, "Most tokens of prompt + completion.", type=int,
         how="--max_length; prompts longer than max_length - max_seq_len are cut from the left, as ColossalChat"),
    flag("max_seq_len", 256, "Most new tokens per completion.", type=int, to="max_completion_length"),
)

SCRIPTS: dict[str, tuple[Flag, ...]] = {
    "train_sft": (
        *with_defaults(ENGINE, mixed_precision="bf16"), *OFFLINE, DISABLE_LOSS_MASK, MICROBATCH,
        flag("save_path", None, "Where checkpoints and the final model (save_path/modeling) go.",
             how="as train_rm's --save_dir"),
        flag("max_len", 512, "Most tokens of a row.", type=int, to="max_length"),
    ),
    "train_rm": (
        *ENGINE, *OFFLINE, SAVE_DIR, MAX_LENGTH,
        flag("loss_fn", "log_sig", "Reward-model loss.", choices=("log_sig", "log_exp"),
             how="--loss_type log_sig | log_exp (the same formulas)"),
    ),
    "train_dpo": (
        *with_defaults(ENGINE, accumulation_steps=1), *OFFLINE, SAVE_DIR, MAX_LENGTH, DISABLE_LOSS_MASK, MODEL_TYPE,
        DISABLE_REFERENCE,
        flag("microbatch_size", 2, "Pipeline micro-batch size.", type=int, no_effect=MICROBATCH.no_effect),
        flag("loss_type", "dpo_loss", "dpo_loss or simpo_loss.", choices=("dpo_loss", "simpo_loss"),
             how="dpo_loss: DPO (sigmoid); simpo_loss: length normalisation on and --gamma 1.4 unless given, as "
             "ColossalChat"),
        flag("beta", 0.1, "beta of the DPO/SimPO loss.", type=float, to="beta"),
        flag("gamma", 0.0, "The SimPO margin.", type=float,
             how="the margin gamma of ColossalChat's loss -logsigmoid(beta * (pi_ratio - ref_ratio) - gamma)"),
        flag("length_normalization", False, "Average the answers' log-probs over their tokens.", type=bool,
             how="with --disable_reference_model: SimPO (--rlhf_type simpo); with a reference: --loss_type "
             "sigmoid_norm (both models' log-probs averaged), a --gamma margin there refused"),
        flag("ref_tp", 1, "Tensor-parallel size of the reference model.", type=int,
             how="1 only: tensor parallelism is refused"),
    ),
    "train_kto": (
        *ENGINE, *OFFLINE, SAVE_DIR, MAX_LENGTH, DISABLE_LOSS_MASK,
        flag("beta", 0.1, "beta of the KTO loss.", type=float, to="beta"),
        flag("desirable_weight", 1.0, "Weight of desirable rows.", type=float, to="desirable_weight"),
        flag("undesirable_weight", 1.0, "Weight of undesirable rows.", type=float, to="undesirable_weight"),
        flag("auto_weight", False, "Rescale the desirable weight into KTO's bounds.", type=bool,
             how="as ColossalChat: when desirable_weight x desirable rows / (undesirable_weight x undesirable rows) "
             "is outside [1, 4/3], --desirable_weight is divided by it (without --auto_weight the run stops)"),
    ),
    "train_orpo": (
        *ENGINE, *OFFLINE, SAVE_DIR, MAX_LENGTH, DISABLE_LOSS_MASK, MODEL_TYPE,
        flag("lam", 0.1, "lambda of the ORPO loss.", type=float, how="--beta (alignkit's ORPO lambda)"),
        flag("disable_reference_model", False, "Parsed by ColossalChat's ORPO script; ORPO has no reference.",
             type=bool, no_effect="ORPO has no reference model"),
    ),
}


SCRIPTS["train_ppo"] = (
    *with_defaults(ENGINE, lr=9e-6), *ONLINE,
    flag("kl_coef", 0.1, "Weight of the per-token KL penalty in the reward.", type=float, to="kl_coef"),
)
SCRIPTS["train_grpo"] = (
    *with_defaults(ENGINE, lr=1e-6), *ONLINE,
    flag("num_generations", 8, "Completions per prompt.", type=int, to="num_generations"),
    flag("inference_batch_size", None, "Sequences per generate call.", type=int,
         how="--local_rollout_forward_batch_size (unset: alignkit's 64)"),
    flag("logits_forward_batch_size", 1, "Sequences per log-prob forward.", type=int,
         no_effect="alignkit's rollout forwards batch --inference_batch_size sequences (padding-free)"),
    flag("kl_coef", 0.7, "Weight of the KL to the reference, folded into the reward.", type=float,
         how="--beta with --kl_in_reward --kl_reward_reduction mean: kl_coef x the completion's mean per-token "
         "log pi_old - log pi_ref is taken off its reward before the group advantages, as ColossalChat (0: no "
         "reference model)"),
    flag("max_tokens_thinking", 2000, "Thinking budget of a completion.", type=int,
         no_effect="ColossalChat's train_grpo.py hands it to its generate() among the model's keyword arguments, "
         "which nothing reads: no thinking budget is applied there either (completions end at --max_seq_len)"),
    flag("initial_temperature", 1.0, "Sampling temperature at the start.", type=float,
         how="--temperature; annealed to --final_temperature as ColossalChat: held for W = min(100, int(num_episodes "
         "/ 6)) optimizer steps, then T0 - (s / A)(T0 - T1) up to A = min(600, int(num_episodes / 2)), T1 after "
         "(--temperature_hold_steps W --temperature_annealing_steps A)"),
    flag("final_temperature", 0.9, "Sampling temperature at the end.", type=float,
         how="--final_temperature (see --initial_temperature)"),
)


# --- the scripts that do not train ---
TOOLS: dict[str, tuple[Flag, ...]] = {
    "prepare_dataset": (
        flag("type", None, "sft, prompt, preference or kto.", choices=("sft", "prompt", "preference", "kto"),
             how="the kind of rows written (required)"),
        flag("data_input_dirs", None, "Comma-separated folders of .jsonl files.", how="read (required)"),
        flag("tokenizer_dir", None, "The tokenizer.", how="tokenises (required)"),
        flag("conversation_template_config", "conversation_template_config", "Template config JSON.",
             how="renders the rows; when the file does not exist, the tokenizer's template with ColossalChat's "
             "default system message is used and written there, as ColossalChat"),
        flag("data_cache_dir", "cache", "datasets' cache folder.",
             no_effect="alignkit reads the files directly; tokenised data is cached under $ALIGNKIT_CACHE"),
        flag("data_jsonl_output_dir", "jsonl_output", "Where the jsonl parts go.", how="written (must not exist)"),
        flag("data_arrow_output_dir", "arrow_output", "Where the arrow parts go.", how="written (must not exist)"),
        flag("max_length", 4096, "Rows longer than this are dropped.", type=int, how="dropped and counted"),
        flag("num_spliced_dataset_bins", 10, "Number of parts.", type=int, how="the rows cut into this many parts"),
        flag("num_samples_per_datafile", -1, "Rows sampled per file (-1: all).", type=int,
             how="sampled without repeats"),
    ),
    "inference": (
        flag("model_path", None, "The model (a save_dir/modeling).", how="alignkit infer --model (required)"),
        flag("tokenizer_path", None, "The tokenizer (unset: --model_path's).", how="as training's --tokenizer_dir"),
        flag("conversation_template_config", None, "Template config JSON.",
             how="its system_message is the system prompt; a chat_template other than the tokenizer's is refused"),
        flag("model_max_length", 2048, "Longest prompt + answer.", type=int, how="--max_length"),
        flag("max_new_tokens", 512, "Most new tokens per answer.", type=int, to="max_new_tokens"),
        flag("io", "rich", "Console style.", choices=("simple", "rich", "dummy"),
             no_effect="alignkit's chat prints plain streamed text; 'clear' and 'exit' work as in ColossalChat"),
    ),
}
ALL_SCRIPTS = {**SCRIPTS, **TOOLS}


def script_name(text: str) -> str:
    """``train_dpo`` or ``train_dpo.py`` (also with a directory, as the .sh files name it) → ``train_dpo``."""
    name = text.rsplit("/", 1)[-1]
    return name[:-3] if name.endswith(".py") else name


def build_script_parser(script: str) -> argparse.ArgumentParser:
    """argparse for one script, with ColossalChat's spellings; defaults are SUPPRESSed so that the translation
    knows which flags were given (ColossalChat's defaults come from the table)."""
    parser = argparse.ArgumentParser(prog=f"alignkit colossal {script}", allow_abbrev=False,
                                     description=f"ColossalChat's {script}.py, run by alignkit (docs/colossal.md).")
    for item in ALL_SCRIPTS[script]:
        kwargs: dict[str, Any] = {"dest": item.name, "default": argparse.SUPPRESS,
                                  "help": f"{item.help} (default {item.default!r}) -> " + (
                                      f"--{item.to}" if item.to else item.how or f"no effect: {item.no_effect}")}
        if item.type is bool:
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = item.type
            if item.nargs:
                kwargs["nargs"] = item.nargs
            if item.choices:
                kwargs["choices"] = item.choices
        parser.add_argument(f"--{item.name}", **kwargs)
    return parser


def render_markdown() -> str:
    """docs/colossal.md's flag tables (``python -m alignkit.commands.colossal.flags``)."""
    lines = []
    for script, flags in ALL_SCRIPTS.items():
        lines += [f"### {script}", "", "| flag | ColossalChat default | in alignkit |", "|---|---|---|"]
        for item in flags:
            if item.to:
                what = f"`--{item.to}`"
            elif item.how:
                what = item.how.replace("%%", "%")
            else:
                what = f"no effect (logged): {item.no_effect}"
            lines.append(f"| `--{item.name}` | `{item.default!r}` | {what.replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_markdown(), end="")
