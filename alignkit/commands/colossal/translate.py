"""One ColossalChat command line → alignkit's typed RunArguments, with ColossalChat's meaning and defaults.

    alignkit colossal train_dpo --pretrain M --dataset D --plugin zero2 --batch_size 4 --lr 5e-6 --save_dir S

What ColossalChat does that alignkit's own defaults do not, and so is set here: full fine-tuning unless
--lora_config gives r > 0; AdamW betas (0.9, 0.95) and weight decay 0.1; a cosine schedule down to 0.1 x lr
(CosineAnnealingWarmupLR(eta_min=0.1 * lr)) with 2.5% of the steps warming up when --warmup_steps is unset;
epochs, batch size, accumulation, clipping and saving every 1000 steps; checkpoints under --save_dir and the
final model in save_dir/modeling (written by ``run.py``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alignkit.commands.colossal.flags import SCRIPTS, Flag
from alignkit.errors import AlignkitError

logger = logging.getLogger("alignkit")

# ColossalChat's LoraConfig (coati/models/lora.py) and its defaults.
LORA_KEYS = {"r": 0, "lora_alpha": 32, "linear_lora_dropout": 0.1, "embedding_lora_dropout": 0.0,
             "lora_train_bias": "none", "lora_initialization_method": "kaiming_uniform", "target_modules": None}
TASKS = {"train_sft": ("sft", None), "train_rm": ("rlhf", "rm"), "train_dpo": ("rlhf", "dpo"),
         "train_kto": ("rlhf", "kto"), "train_orpo": ("rlhf", "orpo"), "train_ppo": ("rlhf", "ppo"),
         "train_grpo": ("rlhf", "grpo")}
PPO_TEMPERATURE = 0.7  # train_ppo.py hard-codes PPOTrainer(temperature=0.7, top_k=50)


@dataclass
class Translation:
    task: str  # "sft" or "rlhf", as run_training takes it
    values: dict[str, Any]  # RunArguments fields
    modeling: Path | None = None  # where the final merged model goes (save_dir/modeling)
    tokenizer_dir: str | None = None
    config_file: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # every ColossalChat flag's value (for --config_file)


def with_defaults(script: str, given: dict[str, Any]) -> dict[str, Any]:
    """ColossalChat's value of every flag of ``script``: the given ones, else the script's defaults."""
    return {item.name: given.get(item.name, item.default) for item in SCRIPTS[script]}


def translate(script: str, given: dict[str, Any]) -> Translation:
    """The RunArguments values of a ColossalChat command line (``given``: only the flags on it)."""
    task, rlhf_type = TASKS[script]
    flags: dict[str, Flag] = {item.name: item for item in SCRIPTS[script]}
    colossal = with_defaults(script, given)
    values: dict[str, Any] = {"train_type": "full", "adam_beta1": 0.9, "adam_beta2": 0.95,
                              "lr_scheduler_type": "cosine_with_min_lr",
                              "lr_scheduler_kwargs": json.dumps({"min_lr_rate": 0.1}),
                              "gradient_checkpointing": False, "report_to": ["none"], "logging_steps": 1}
    if rlhf_type:
        values["rlhf_type"] = rlhf_type
    for name, item in flags.items():
        if item.to:
            values[item.to] = colossal[name]
        elif item.no_effect and name in given and given[name] != item.default:
            logger.info("--%s %s has no effect in alignkit: %s", name, given[name], item.no_effect)
    if colossal["pretrain"] is None:
        raise AlignkitError(f"{script}: --pretrain (the model to train) is required")
    values["model"] = colossal["pretrain"]
    warmup = colossal["warmup_steps"]
    if warmup is None:
        warmup = colossal_warmup(script, colossal)
        logger.info("--warmup_steps unset: %d, 2.5%% of the optimizer steps rounded down, as ColossalChat", warmup)
    values.update(warmup_steps=warmup, warmup_ratio=0.0)  # 0 and 0: no warm-up
    values["dtype"] = precision(colossal["mixed_precision"])
    values.update(engine_values(colossal, given))
    values.update(lora_values(colossal["lora_config"]))
    if colossal["grad_checkpoint"]:
        values["gradient_checkpointing"] = True
    report = (["tensorboard"] if colossal["log_dir"] else []) + (["wandb"] if colossal["use_wandb"] else [])
    if report:
        values["report_to"] = report
    if colossal["log_dir"]:
        logger.info("--log_dir %s: tensorboard logs go to the run directory's runs/ folder", colossal["log_dir"])
    checkpoint = colossal["checkpoint_path"]
    if checkpoint:
        if "modeling" in checkpoint:  # ColossalChat: a saved model to continue from, not a resumable state
            values["model"] = checkpoint
            logger.info("--checkpoint_path %s: continuing from these weights (a new run, as ColossalChat)", checkpoint)
        else:
            values["resume_from_checkpoint"] = checkpoint
    if script in ("train_ppo", "train_grpo"):
        values.update(online_values(script, colossal))
        save = Path(colossal["save_path"])
        modeling = save / "actor" / "modeling"
    else:
        if not colossal["dataset"]:
            raise AlignkitError(f"{script}: --dataset is required (ColossalChat's prepared data or jsonl files)")
        values.update(method_values(script, colossal, given))
        values["dataloader_drop_last"] = True  # ColossalChat's data loaders drop the last short batch
        values["truncation_strategy"] = "right"  # and its collators cut rows to --max_length at the end
        save_dir = colossal.get("save_dir") or colossal.get("save_path")
        save = Path(save_dir) if save_dir else None
        modeling = save / "modeling" if save else None
    if save is not None:
        values["output_dir"] = str(save)
    return Translation(task, values, modeling, colossal["tokenizer_dir"], colossal.get("config_file"), colossal)


def precision(mixed_precision: str) -> str:
    """ColossalChat's --mixed_precision as --dtype; fp16 needs a GPU here, so a CPU machine falls back."""
    if mixed_precision == "fp16" and not torch.cuda.is_available():
        from alignkit.models.load import cpu_supports_bf16

        fallback = "bf16" if cpu_supports_bf16() else "fp32"
        logger.info("--mixed_precision fp16 needs a GPU; no GPU here, so this run uses %s", fallback)
        return fallback
    return mixed_precision


def engine_values(colossal: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """--plugin (and --zero_stage / --zero_cpu_offload of --plugin 3d) onto the engines alignkit uses. Unset, it is
    not ColossalChat's gemini (ZeRO-3, which needs GPUs and DeepSpeed) but plain data parallelism."""
    plugin = given.get("plugin")
    if colossal["enable_sequence_parallelism"]:
        raise AlignkitError("--enable_sequence_parallelism: ColossalChat splits sequences inside its 3d plugin, beside "
                            "tensor parallelism, which alignkit has no engine for; drop it (long rows: "
                            "--grad_checkpoint, DeepSpeed/FSDP sharding through --plugin, or ms-swift's Ulysses "
                            "`alignkit sft|rlhf --sequence_parallel_size N`)")
    if colossal.get("ref_tp", 1) != 1:
        raise AlignkitError(f"--ref_tp {colossal['ref_tp']}: tensor parallelism has no equivalent in alignkit; a "
                            "large reference model is sharded with the policy by --plugin gemini (ZeRO-3)")
    if plugin != "3d":
        for name in ("zero_stage", "zero_cpu_offload"):
            if given.get(name):
                logger.info("--%s has no effect with --plugin %s (only --plugin 3d reads it, as in ColossalChat)",
                            name, plugin or "unset")
    if plugin is None:
        logger.info("--plugin unset: data parallel (ColossalChat's default gemini, ZeRO-3, is not forced: pass "
                    "--plugin gemini for it)")
        return {}
    if plugin == "3d":
        if any(colossal[name] != 1 for name in ("tp", "pp", "sp")):
            return {"plugin": "3d", "tp": colossal["tp"], "pp": colossal["pp"], "sp": colossal["sp"]}  # refused there
        stage, offload = colossal["zero_stage"], colossal["zero_cpu_offload"]
        if stage == 0:
            return {}
        if offload and stage == 1:
            raise AlignkitError("--plugin 3d --zero_stage 1 --zero_cpu_offload: alignkit's DeepSpeed presets offload "
                                "with ZeRO-2 or 3; use --zero_stage 2 (or --plugin zero2_cpu)")
        deepspeed = f"zero{stage}" + ("_offload" if offload else "")
        return no_gpu_fallback(f"--plugin 3d --zero_stage {stage}", {"deepspeed": deepspeed})
    if plugin == "ddp":
        return {}
    return no_gpu_fallback(f"--plugin {plugin}", {"plugin": plugin})


def no_gpu_fallback(asked: str, values: dict[str, Any]) -> dict[str, Any]:
    """DeepSpeed needs GPUs: on a machine without one the same command still runs, data parallel (logged)."""
    if torch.cuda.is_available():
        return values
    logger.info("%s: DeepSpeed ZeRO needs GPUs; no GPU here, so this run is data parallel", asked)
    return {}


def lora_values(path: str | None) -> dict[str, Any]:
    """ColossalChat's --lora_config JSON: r 0 (or no file) is full fine-tuning, as there."""
    if path is None:
        return {}
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise AlignkitError(f"--lora_config {path}: {error}") from error
    unknown = sorted(set(config) - set(LORA_KEYS))
    if unknown:
        raise AlignkitError(f"--lora_config {path}: unknown key(s) {', '.join(unknown)} (ColossalChat's LoraConfig "
                            f"has {', '.join(LORA_KEYS)})")
    config = {**LORA_KEYS, **config}
    if config["r"] <= 0:
        logger.info("--lora_config %s: r %s, full fine-tuning (as ColossalChat)", path, config["r"])
        return {}
    values = {"train_type": "lora", "lora_rank": int(config["r"]), "lora_alpha": int(config["lora_alpha"]),
              "lora_dropout": float(config["linear_lora_dropout"])}
    values.update(lora_init_and_bias(path, config))
    if config["embedding_lora_dropout"]:
        logger.info("--lora_config %s: embedding_lora_dropout has no effect (alignkit adapts linear layers only)", path)
    if config["target_modules"]:
        values["lora_target_modules"] = list(config["target_modules"])
    else:
        logger.info("--lora_config %s without target_modules: LoRA on every linear layer but the LM head (ColossalChat "
                    "converts the LM head too)", path)
    return values


# ColossalChat's lora_initialization_method → peft's init_lora_weights (--init_weights).
LORA_INITS = {"kaiming_uniform": "true", "PiSSA": "pissa"}
# ColossalChat's lora_train_bias → peft's bias (--lora_bias): "all" trains every bias of the model in both;
# "lora" trains the adapted layers' biases (peft's lora_only).
LORA_BIASES = {"none": "none", "all": "all", "lora": "lora_only"}


def lora_init_and_bias(path: str, config: dict[str, Any]) -> dict[str, Any]:
    """--lora_config's lora_initialization_method and lora_train_bias as peft's init_lora_weights and bias,
    spelled as ColossalChat's LoraConfig spells them (coati/models/lora.py); any other spelling is refused
    (ColossalChat asserts on an unknown method and treats an unknown bias mode as none)."""
    method, bias = config["lora_initialization_method"], config["lora_train_bias"]
    if method not in LORA_INITS:
        raise AlignkitError(f"--lora_config {path}: lora_initialization_method {method!r}: ColossalChat's methods are "
                            f"{' and '.join(map(repr, LORA_INITS))}")
    if bias not in LORA_BIASES:
        raise AlignkitError(f"--lora_config {path}: lora_train_bias {bias!r}: ColossalChat's modes are "
                            f"{', '.join(map(repr, LORA_BIASES))}")
    if method == "PiSSA":
        logger.info("--lora_config %s: PiSSA as peft's init_lora_weights='pissa' (an exact SVD; ColossalChat takes "
                    "torch.svd_lowrank(niter=4), which approximates the same top-r factors)", path)
    if bias == "lora":
        logger.info("--lora_config %s: lora_train_bias lora as peft's bias='lora_only': the adapted layers' biases "
                    "train; a layer without one stays without (ColossalChat adds a zero bias there)", path)
    return {"init_weights": LORA_INITS[method], "lora_bias": LORA_BIASES[bias]}


def method_values(script: str, colossal: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """What each script's own flags mean in alignkit's terms."""
    if colossal.get("disable_loss_mask"):
        if script != "train_sft":
            raise AlignkitError(f"{script} --disable_loss_mask (the loss over prompt tokens too) is not supported for "
                                "preference and KTO training: alignkit trains the answers' tokens only")
    if script == "train_sft":
        return {"loss_scale": "all"} if colossal["disable_loss_mask"] else {}
    if script == "train_rm":
        return {"loss_type": [colossal["loss_fn"]], "value_head_init": "colossalchat"}
    if script == "train_orpo":
        logger.info("train_orpo --lam %s is ORPO's lambda (alignkit's --beta); the odds are taken of each answer's "
                    "mean token log-prob (TRL, ms-swift), where ColossalChat averages per-token odds "
                    "(docs/objectives.md)", colossal["lam"])
        return {"beta": colossal["lam"]}
    if script == "train_kto":
        return kto_weights(colossal)
    return dpo_values(colossal, given)


def dpo_values(colossal: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """ColossalChat's DpoLoss: -logsigmoid(beta * (pi_c - pi_r - (ref_c - ref_r)) - gamma), the log-probs summed
    or, with length normalisation, averaged over the answer's tokens; no reference: ref terms 0.
    simpo_loss turns length normalisation on and sets gamma 1.4 unless given (train_dpo.py's "fool proof")."""
    gamma, normalise = colossal["gamma"], colossal["length_normalization"]
    if colossal["loss_type"] == "simpo_loss":
        normalise = True
        gamma = gamma if gamma > 0 else 1.4
    no_reference = colossal["disable_reference_model"]
    if normalise and no_reference:
        # SimPO: -logsigmoid(beta * (avg_c - avg_r) - gamma), alignkit's --rlhf_type simpo without the NLL term.
        return {"rlhf_type": "simpo", "simpo_gamma": gamma, "cpo_alpha": 0.0}
    if gamma:
        raise AlignkitError(f"train_dpo --gamma {gamma} (from --loss_type simpo_loss unless given) with a reference "
                            "model: a margin on DPO's log-ratios is not supported; add --disable_reference_model for "
                            "SimPO (ColossalChat's shipped SimPO setting), or drop the margin with --gamma 0 and "
                            "--loss_type dpo_loss")
    if normalise:
        # Both models' log-probs averaged over each answer's tokens: Tulu 3's length-normalised DPO.
        return {"loss_type": ["sigmoid_norm"], "reference_free": False}
    return {"loss_type": ["sigmoid"], "reference_free": bool(no_reference)}


def online_values(script: str, colossal: dict[str, Any]) -> dict[str, Any]:
    """train_ppo / train_grpo onto alignkit's PPO / GRPO: what maps, and a named refusal for what does not."""
    if not colossal["prompt_dataset"]:
        raise AlignkitError(f"{script}: --prompt_dataset is required")
    rewards = reward_values(script, colossal)
    if colossal["critic_lr"] != colossal["lr"] and script == "train_ppo":
        raise AlignkitError(f"--critic_lr {colossal['critic_lr']} differs from --lr {colossal['lr']}: alignkit trains "
                            "the policy and the value model with one optimizer and one learning rate; pass the same "
                            "value to both")
    if colossal["disable_loss_mask"]:
        raise AlignkitError(f"{script} --disable_loss_mask is not supported: alignkit trains the completions' tokens")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    group = colossal["num_generations"] if script == "train_grpo" else 1
    micro, accumulation = colossal["train_batch_size"], colossal["accumulation_steps"]
    experience = colossal["experience_batch_size"] * colossal["num_collect_steps"] * world * group
    minibatch = micro * accumulation * world
    if minibatch > experience:
        logger.info("--train_batch_size %d x --accumulation_steps %d x %d processes = %d completions per optimizer "
                    "step exceeds the %d of an episode; alignkit steps once per episode's experience (ColossalChat "
                    "carries the accumulation over into the next episode)", micro, accumulation, world, minibatch,
                    experience)
        minibatch = experience
    values: dict[str, Any] = {
        "dataset": colossal["prompt_dataset"], **rewards,
        "experience_batch_size": colossal["experience_batch_size"] * world,
        "per_device_train_batch_size": micro, "train_batch_size": minibatch,
        "max_length": colossal["max_length"], "truncation_strategy": "left",
    }
    if colossal["max_length"] > colossal["max_seq_len"]:
        values["max_prompt_length"] = colossal["max_length"] - colossal["max_seq_len"]
    if colossal["ptx_dataset"]:
        if colossal["ptx_coef"] == 0:
            logger.info("--ptx_dataset with --ptx_coef 0 has no work (its loss weighs 0), as in ColossalChat")
        elif colossal["ptx_batch_size"] != micro:
            raise AlignkitError(f"--ptx_batch_size {colossal['ptx_batch_size']}: alignkit's ptx batch is the update "
                                f"micro-batch; pass --ptx_batch_size {micro} (--train_batch_size)")
        else:
            values["pretrain_dataset"] = colossal["ptx_dataset"]
    if script == "train_ppo":
        values.update(num_ppo_epochs=colossal["num_update_steps"], temperature=PPO_TEMPERATURE)
        logger.info("train_ppo samples at temperature %.1f as ColossalChat; its top_k 50 is not applied (alignkit "
                    "samples from the whole distribution)", PPO_TEMPERATURE)
        return values
    return {**values, **grpo_values(colossal)}


def reward_values(script: str, colossal: dict[str, Any]) -> dict[str, Any]:
    """What scores the completions, as each script chooses: train_ppo a reward model unless
    --no_neural_reward_model (then --reward_functions, the critic from --rm_pretrain); train_grpo a reward
    model with --rm_pretrain, else --reward_functions."""
    functions = colossal["reward_functions"] or []
    verifiable = colossal["no_neural_reward_model"] if script == "train_ppo" else bool(functions and
                                                                                       not colossal["rm_pretrain"])
    if script == "train_ppo" and verifiable:
        if not functions:
            raise AlignkitError("train_ppo --no_neural_reward_model needs --reward_functions (gsm8k_reward_fn, "
                                "math_competition_reward_fn): without them ColossalChat has nothing to score with")
        if colossal["rm_pretrain"] is None:
            raise AlignkitError("train_ppo --no_neural_reward_model needs --rm_pretrain: ColossalChat's critic is "
                                "that model with a fresh value head")
    if verifiable:
        unknown = [name for name in functions if name not in COLOSSAL_REWARD_FUNCTIONS]
        if unknown:
            raise AlignkitError(f"{script} --reward_functions {' '.join(unknown)}: ColossalChat knows "
                                f"{', '.join(COLOSSAL_REWARD_FUNCTIONS)}; a function of your own runs through "
                                "`alignkit rlhf --rlhf_type grpo|ppo --reward_funcs ... --external_plugins FILE`")
        for name in ("rm_checkpoint_path", "critic_checkpoint_path"):
            if colossal[name] is not None:
                raise AlignkitError(f"{script} --{name} with verifiable rewards (--reward_functions): ColossalChat "
                                    "scores with the functions and starts the critic from --rm_pretrain; drop it")
        # train_ppo.py appends each named function to its list twice (once by name, once by eval): every
        # function counts twice in its reward (0 / 2 / 20). train_grpo.py appends each once.
        weight = 2.0 if script == "train_ppo" else 1.0
        if weight != 1:
            logger.info("train_ppo --reward_functions: each function is weighed %s, as ColossalChat's train_ppo.py "
                        "sums it twice (it appends each function to its list twice)", weight)
        values = {"reward_funcs": list(functions), "reward_weights": [weight] * len(functions)}
        if script == "train_ppo":
            values["value_model"] = colossal["rm_pretrain"]
            logger.info("train_ppo: the critic starts from --rm_pretrain %s with a fresh value head, as ColossalChat's "
                        "Critic; alignkit's head is bias-free with weights from N(0, 1/(d+1)), ColossalChat's has "
                        "torch's default nn.Linear start (uniform in +-1/sqrt(d), with a bias)",
                        colossal["rm_pretrain"])
        return values
    if functions:
        logger.info("%s --reward_functions has no effect with a reward model (%s), as in ColossalChat", script,
                    "no --no_neural_reward_model" if script == "train_ppo" else "--rm_pretrain")
    reward = colossal["rm_checkpoint_path"]
    if reward is None:
        raise AlignkitError(f"{script} needs --rm_checkpoint_path (train_rm's save_dir/modeling): with --rm_pretrain "
                            "alone ColossalChat scores with an untrained value head"
                            + ("; or --reward_functions for verifiable rewards" if script == "train_grpo" else
                               "; or --no_neural_reward_model --reward_functions for verifiable rewards"))
    values: dict[str, Any] = {"reward_model": [saved_model_of(reward)]}
    critic = colossal.get("critic_checkpoint_path")
    if script == "train_grpo" and critic is not None:
        raise AlignkitError("train_grpo --critic_checkpoint_path: GRPO has no critic (ColossalChat's train_grpo.py "
                            "takes no such flag)")
    if script == "train_ppo":
        # ColossalChat: Critic(--rm_pretrain), then --critic_checkpoint_path's weights loaded into it (a reward
        # model's checkpoint fits: the same model.* + value_head.*).
        if critic is not None:
            values["value_model"] = saved_model_of(critic)
        elif colossal["rm_pretrain"]:
            values["value_model"] = colossal["rm_pretrain"]
            logger.info("train_ppo: the critic starts from --rm_pretrain %s with a new value head, as ColossalChat "
                        "(--critic_checkpoint_path unset)", colossal["rm_pretrain"])
        else:
            logger.info("train_ppo without --rm_pretrain or --critic_checkpoint_path: the critic starts as a copy of "
                        "the reward model %s (ColossalChat needs --rm_pretrain for it)", reward)
    return values


COLOSSAL_REWARD_FUNCTIONS = ("gsm8k_reward_fn", "math_competition_reward_fn")


def saved_model_of(path: str) -> str:
    """A model ColossalChat saved: the path itself (save_dir/modeling), or an epoch-X_step-Y checkpoint's
    modeling/ (ColossalChat's load_checkpoint reads that folder of a path without 'modeling' in it)."""
    if "modeling" not in path and (Path(path) / "modeling").is_dir():
        return str(Path(path) / "modeling")
    return path


def grpo_values(colossal: dict[str, Any]) -> dict[str, Any]:
    """ColossalChat's GRPO: kl_coef x KL folded into the reward (mean over the completion's tokens), and the
    temperature annealed from initial to final (train_grpo.py's temperature_annealing_config)."""
    kl = {"beta": colossal["kl_coef"], "kl_in_reward": True, "kl_reward_reduction": "mean"}
    if colossal["kl_coef"] == 0:
        kl = {"beta": 0.0}
    episodes = colossal["num_episodes"]
    hold, annealing = min(100, int(episodes / 6)), min(600, int(episodes / 2))
    temperature = {"temperature": colossal["initial_temperature"]}
    if colossal["final_temperature"] != colossal["initial_temperature"]:
        temperature.update(final_temperature=colossal["final_temperature"], temperature_hold_steps=hold,
                           temperature_annealing_steps=annealing)
        logger.info("train_grpo: temperature %s, annealed to %s as ColossalChat: held %d optimizer steps "
                    "(min(100, num_episodes / 6)), reached at step %d (min(600, num_episodes / 2))",
                    colossal["initial_temperature"], colossal["final_temperature"], hold, annealing)
    if colossal["num_generations"] != 8:
        logger.info("train_grpo --num_generations %d: sampled as asked; ColossalChat's train_grpo.py passes it to its "
                    "GRPOTrainer as num_generations, a name the trainer does not take (its num_generation stays 8)",
                    colossal["num_generations"])
    values = {**kl, **temperature, "num_iterations": colossal["num_update_steps"]}
    if colossal["inference_batch_size"] is not None:
        values["local_rollout_forward_batch_size"] = colossal["inference_batch_size"]
    return values


def kto_weights(colossal: dict[str, Any]) -> dict[str, Any]:
    """train_kto.py's check of the KTO paper's bound (Eq. 8): desirable_weight x desirable rows /
    (undesirable_weight x undesirable rows) in [1, 4/3]. Outside it ColossalChat stops, or with --auto_weight
    divides --desirable_weight by that ratio (which makes it 1)."""
    desirable, undesirable = count_kto_labels(colossal["dataset"])
    weights = {"desirable_weight": colossal["desirable_weight"], "undesirable_weight": colossal["undesirable_weight"]}
    if not desirable or not undesirable:
        raise AlignkitError(f"train_kto: the training data has {desirable} desirable and {undesirable} undesirable "
                            "rows; KTO needs both")
    ratio = weights["desirable_weight"] * desirable / (weights["undesirable_weight"] * undesirable)
    if 1 <= ratio <= 4 / 3:
        return weights
    if not colossal["auto_weight"]:
        raise AlignkitError(f"train_kto: desirable_weight x {desirable} desirable rows / (undesirable_weight x "
                            f"{undesirable} undesirable rows) = {ratio:.4g} is outside [1, 4/3] (KTO paper, Eq. 8), "
                            "which ColossalChat refuses: adjust --desirable_weight / --undesirable_weight or add "
                            "--auto_weight")
    weights["desirable_weight"] = colossal["desirable_weight"] / ratio
    logger.info("train_kto --auto_weight: the weighted ratio %.4g is outside [1, 4/3]; --desirable_weight set to %.6g "
                "(undesirable_weight %s), as ColossalChat", ratio, weights["desirable_weight"],
                weights["undesirable_weight"])
    return weights


def count_kto_labels(datasets: list[str]) -> tuple[int, int]:
    """(desirable, undesirable) rows of the KTO training data, read as the run will read it."""
    from alignkit.data.loading import load_dataset_spec

    labels = [row.label for spec in datasets for row in load_dataset_spec(spec, "unpaired", seed=42)]
    return sum(1 for label in labels if label), sum(1 for label in labels if not label)


ROW_KINDS = {"train_sft": "sft", "train_rm": "preference", "train_dpo": "preference", "train_orpo": "preference",
             "train_kto": "unpaired"}


def colossal_warmup(script: str, colossal: dict[str, Any]) -> int:
    """ColossalChat's warm-up when --warmup_steps is unset: int(0.025 x num_episodes) for PPO/GRPO, else
    int(max_epochs x 0.025 x optimizer steps per epoch), an epoch being len(dataloader) // accumulation_steps
    with the last short batch dropped (train_*.py)."""
    if script in ("train_ppo", "train_grpo"):
        return int(0.025 * colossal["num_episodes"])
    from alignkit.data.loading import load_dataset_spec

    rows = sum(len(load_dataset_spec(spec, ROW_KINDS[script], seed=42)) for spec in colossal["dataset"])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_epoch = rows // (colossal["batch_size"] * world) // colossal["accumulation_steps"]
    return int(colossal["max_epochs"] * 0.025 * per_epoch)
