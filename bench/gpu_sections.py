"""The sections of bench/gpu_check.py, run inside its worker processes (one guarded call each).

Every training section goes through alignkit's own entry point, ``run_training(RunArguments(...))``, on rows
written to a JSONL file, and reads its step times back from the run's ``logging.jsonl``. Throughput:

    tokens/s = the workload's tokens per step (every non-padding token of the step's sequences, the same
               count for alignkit and TRL) / seconds per step (the median of the steps after the warm-up)
    MFU      = tokens/s × FLOPs per token / the GPU's peak dense bf16 FLOP/s
    FLOPs per token = 6·N (N: parameters of every matrix product, the LM head included, embeddings not)
                      + 12·layers·(heads·head_dim)·(mean attended context), forward and backward

the convention of PaLM (arXiv 2204.02311, appendix B): the reference forward of DPO, generation and the
re-layout that packing and prefix sharing save are not counted, so MFU compares like with like.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import random
import statistics
import time
import traceback
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

# Dense (no sparsity) bf16 tensor-core peak, TFLOP/s, by GPU name: the vendor's datasheets give the figure
# with 2:4 sparsity (H100/H200 SXM: 1,979), the dense rate being half of it.
PEAK_BF16_TFLOPS = {
    "H200": (989.4, "NVIDIA H200 Tensor Core GPU datasheet (SXM): 1,979 TFLOPS bf16 with sparsity, dense half"),
    "H100": (989.4, "NVIDIA H100 Tensor Core GPU datasheet (SXM): 1,979 TFLOPS bf16 with sparsity, dense half"),
    "A100": (312.0, "NVIDIA A100 Tensor Core GPU datasheet: 312 TFLOPS bf16 dense"),
}
WORDS = ("time year people way day man thing woman life child world school state family student group country "
         "problem hand part place case week company system program question work government number night point "
         "home water room mother area money story fact month lot right study book eye job word business issue "
         "side kind head house service friend father power hour game line end member law car city community name "
         "president team minute idea kid body information back parent face others level office door health person "
         "art war history party result change morning reason research girl guy moment air teacher force education "
         "river stone garden winter summer light music paper table window street market doctor village bridge").split()
PACKAGES = ("torch", "transformers", "peft", "accelerate", "trl", "datasets", "deepspeed", "liger-kernel", "triton",
            "flash-attn")


def run_guarded(spec: dict, context: dict, *, deadline: float | None) -> dict:
    """One section: its result with ``status`` ok, or error with the exception, never raising."""
    started = time.time()
    if deadline is not None and time.time() + min(spec["budget_s"], 15) > deadline:
        return {"status": "skipped", "error": "the check's time budget ran out", "seconds": 0.0}
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    kernels_before = hub_kernels_state()
    try:
        result = {"status": "ok", **SECTIONS[spec["kind"]](spec, context)}
    except BaseException as error:  # noqa: BLE001 - a section's failure is a result, the next section runs
        lines = traceback.format_exc().splitlines()
        result = {"status": "error", "error": f"{type(error).__name__}: {error}"[:2000],
                  "traceback": "\n".join(lines[-25:])}
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    result["seconds"] = round(time.time() - started, 2)
    # transformers swaps layers for Hub kernels in training mode on a GPU unless USE_HUB_KERNELS says no (alignkit
    # says no offline): recorded per section, one suspect of the LoRA gap (alignkit 0.885 s/step, TRL 0.32,
    # both 0.31 with Liger's own layers on the first H200 run).
    result["hub_kernels"] = {"before": kernels_before, "after": hub_kernels_state()}
    return result


def hub_kernels_state() -> dict:
    """$USE_HUB_KERNELS and whether transformers would use Hub kernels now."""
    try:
        from transformers.integrations.hub_kernels import _kernels_enabled

        enabled = bool(_kernels_enabled())
    except ImportError:
        enabled = None
    return {"USE_HUB_KERNELS": os.environ.get("USE_HUB_KERNELS"), "enabled": enabled}


# ------------------------------------------------------------------------------------------------ preparing


def prepare(spec: dict, context: dict) -> dict:
    """Tokenizer, data files and model directories (random weights from a config), and the device's facts."""
    from alignkit.data.rows import ConversationRow, PreferenceRow
    from alignkit.data.template import ChatEncoder
    from alignkit.models.builtin import builtin_model_dir
    from alignkit.models.load import load_tokenizer

    work, workload = Path(context["work"]), context["workload"]
    tokenizer = load_tokenizer(context["tokenizer"] or str(builtin_model_dir()))
    rng = random.Random(0)

    def text(n):
        return " ".join(rng.choice(WORDS) for _ in range(n))

    n_rows = workload["steps"] * workload["pairs_per_step"]
    pairs = [(text(workload["prompt_words"]), text(workload["answer_words"]), text(workload["answer_words"]))
             for _ in range(n_rows)]
    data = work / "data"
    data.mkdir(exist_ok=True)
    write_jsonl(data / "pairs.jsonl", [{"messages": [{"role": "user", "content": p},
                                                     {"role": "assistant", "content": c}], "rejected_response": r}
                                       for p, c, r in pairs])
    write_jsonl(data / "trl_pairs.jsonl", [{"prompt": [{"role": "user", "content": p}],
                                            "chosen": [{"role": "assistant", "content": c}],
                                            "rejected": [{"role": "assistant", "content": r}]} for p, c, r in pairs])
    write_jsonl(data / "sft.jsonl", [{"messages": [{"role": "user", "content": p},
                                                   {"role": "assistant", "content": c}]} for p, c, _ in pairs])
    grpo = workload["grpo"]
    prompts = [text(grpo["prompt_words"]) for _ in range(grpo["prompts"] * grpo["steps"])]
    write_jsonl(data / "prompts.jsonl", [{"messages": [{"role": "user", "content": p}]} for p in prompts])
    (data / "rewards.py").write_text(
        "def length_reward(completions, **kwargs):\n"
        "    return [min(len(c), 400) / 400 for c in completions]\n")

    encoder = ChatEncoder(tokenizer, max_length=workload["max_length"])
    pair_lengths = []
    for p, c, r in pairs:
        chosen, rejected = encoder.encode_pair(PreferenceRow(prompt=[{"role": "user", "content": p}],
                                                             chosen=[{"role": "assistant", "content": c}],
                                                             rejected=[{"role": "assistant", "content": r}]))
        pair_lengths.append([len(chosen.input_ids), len(rejected.input_ids)])
    sft_lengths = [len(encoder.encode_conversation(ConversationRow(messages=[
        {"role": "user", "content": p}, {"role": "assistant", "content": c}])).input_ids) for p, c, _ in pairs]
    prompt_lengths = [len(encoder.encode_prompt([{"role": "user", "content": p}])) for p in prompts]
    (data / "lengths.json").write_text(json.dumps({"pairs": pair_lengths, "sft": sft_lengths,
                                                   "prompts": prompt_lengths}))

    device = "cuda" if torch.cuda.is_available() else "cpu"
    models = {}
    for name, shape in context["models"].items():
        directory = work / "models" / name
        config = model_config(shape, tokenizer)
        if not (directory / "config.json").is_file():
            from transformers import AutoModelForCausalLM

            torch.manual_seed(0)
            with torch.device(device):  # random init where it is fast
                model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if device == "cuda" else None)
            model.save_pretrained(directory)
            tokenizer.save_pretrained(directory)
            del model
        models[name] = {"dir": str(directory), "shape": shape, "architecture": config.architectures[0],
                        "parameters": parameter_count(config), "matmul_parameters": matmul_parameters(config)}
    return {"meta": device_facts(device), "models": models,
            "tokens": {"pair_mean": statistics.mean(a + b for a, b in pair_lengths),
                       "sft_mean": statistics.mean(sft_lengths)}}


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def model_config(shape: dict, tokenizer):
    from transformers import LlamaConfig, Qwen2Config

    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[shape["arch"]]
    config = cls(vocab_size=len(tokenizer), max_position_embeddings=4096, tie_word_embeddings=True,
                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                 bos_token_id=tokenizer.bos_token_id, **{k: v for k, v in shape.items() if k != "arch"})
    config.architectures = [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[shape["arch"]]]
    return config


def matmul_parameters(config) -> int:
    """N of 6·N: the weights of every matrix product, the LM head once (tied or not), no embedding lookup."""
    h, layers = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q = config.num_attention_heads * head_dim
    kv = config.num_key_value_heads * head_dim
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * config.intermediate_size
    return layers * per_layer + h * config.vocab_size


def parameter_count(config) -> int:
    tied = getattr(config, "tie_word_embeddings", False)
    return matmul_parameters(config) + (0 if tied else config.hidden_size * config.vocab_size)


def flops_per_token(config, lengths: list[int]) -> float:
    """6·N plus attention: 12·layers·(heads·head_dim)·(mean attended context) for forward and backward; a
    token at position t of a causal sequence attends to t + 1 keys."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attended = sum(n * (n + 1) / 2 for n in lengths) / sum(lengths)
    attention = 12 * config.num_hidden_layers * config.num_attention_heads * head_dim * attended
    return 6 * matmul_parameters(config) + attention


def device_facts(device: str) -> dict:
    """Date, device, package versions, the peak bf16 rate the MFU divides by, and a measured matmul rate."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    facts = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "device": device,
             "versions": versions, "peak_tflops": None, "peak_source": "no peak known for this device"}
    if device == "cuda":
        name = torch.cuda.get_device_name()
        facts.update(device_name=name, cuda=torch.version.cuda,
                     memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
        for key, (peak, source) in PEAK_BF16_TFLOPS.items():
            if key in name:
                facts.update(peak_tflops=peak, peak_source=source)
                break
        n, dtype = 8192, torch.bfloat16
    else:
        import platform

        facts["device_name"] = platform.processor() or platform.machine()
        n, dtype = 256, torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    synchronize()
    start, reps = time.perf_counter(), 10
    for _ in range(reps):
        a @ b
    synchronize()
    facts["matmul_tflops"] = round(2 * n**3 * reps / (time.perf_counter() - start) / 1e12, 3)
    facts["matmul_shape"] = f"{n}x{n}x{n} {str(dtype).removeprefix('torch.')}"
    return facts


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_memory_gib() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def prepared(context: dict) -> dict:
    return json.loads((Path(context["work"]) / "prepared.json").read_text())


def lengths(context: dict) -> dict:
    return json.loads((Path(context["work"]) / "data" / "lengths.json").read_text())


def hf_config(context: dict, model: str):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir(context, model))


def model_dir(context: dict, model: str) -> str:
    return str(Path(context["work"]) / "models" / model)


def throughput(context: dict, model: str, step_seconds: list[float], tokens_per_step: float,
               sequence_lengths: list[int]) -> dict:
    """tokens/s, s/step and MFU from the timed steps (those after the warm-up)."""
    warmup = context["workload"]["warmup_steps"]
    timed = step_seconds[warmup:] or step_seconds[-1:]
    if not timed:
        raise RuntimeError("the run logged no step times")
    per_step = statistics.median(timed)
    tokens_per_s = tokens_per_step / per_step
    per_token = flops_per_token(hf_config(context, model), sequence_lengths)
    peak = prepared(context)["meta"]["peak_tflops"]
    return {"steps_timed": len(timed), "s_per_step": round(per_step, 4),
            "step_seconds": [round(x, 4) for x in step_seconds],  # every step, the warm-up included
            "tokens_per_step": round(tokens_per_step),
            "tokens_per_s": round(tokens_per_s, 1), "flops_per_token": per_token,
            "mfu": round(tokens_per_s * per_token / (peak * 1e12), 4) if peak else None,
            "peak_memory_gib": peak_memory_gib()}


# ----------------------------------------------------------------------------------------- alignkit's runs


def alignkit_run(spec: dict, context: dict) -> dict:
    """A run through ``run_training``: DPO, SFT or GRPO, LoRA or full, optionally under an engine or Liger."""
    from alignkit.config.run import RunArguments
    from alignkit.training.run import run_training

    options, workload, model = spec["options"], context["workload"], spec["model"]
    data, algorithm = Path(context["work"]) / "data", options["algorithm"]
    out = Path(context["work"]) / "runs" / spec["name"].replace("/", "-")
    rank = workload["lora_rank"]
    arguments = dict(model=model_dir(context, model), output_dir=str(out), train_type=options["train_type"],
                     max_steps=workload["steps"], learning_rate=workload["learning_rate"],
                     max_length=workload["max_length"], logging_steps=1, save_steps=10**6, dataset_shuffle=False,
                     split_dataset_ratio=0.0, dtype="bf16" if torch.cuda.is_available() else "fp32",
                     report_to=["none"], lora_rank=rank, lora_alpha=2 * rank, lora_dropout=0.0, seed=42,
                     gradient_checkpointing=False)  # alignkit turns it on with a GPU; off for both it and TRL
    if algorithm == "grpo":
        grpo = workload["grpo"]
        arguments.update(rlhf_type="grpo", dataset=[str(data / "prompts.jsonl")], max_steps=grpo["steps"],
                         num_generations=grpo["num_generations"],
                         per_device_train_batch_size=grpo["prompts"] * grpo["num_generations"],
                         max_completion_length=grpo["max_completion_length"],
                         max_length=workload["max_length"], reward_funcs=[f"{data / 'rewards.py'}:length_reward"])
    else:
        arguments.update(dataset=[str(data / ("sft.jsonl" if algorithm == "sft" else "pairs.jsonl"))],
                         per_device_train_batch_size=workload["pairs_per_step"])
        if algorithm == "dpo":
            arguments.update(rlhf_type="dpo", beta=0.1)
    engine = options.get("engine")
    if engine in ("zero2", "zero3"):
        arguments["deepspeed"] = engine
    elif engine == "fsdp2":
        arguments["fsdp"] = True
    if options.get("liger"):
        apply_liger(context["models"][model]["arch"])
    torch.manual_seed(0)
    profile: dict = {}
    with contextlib.ExitStack() as stack:
        if options.get("profile"):
            stack.enter_context(profiled(profile))
        if engine is None:
            stack.enter_context(no_checkpoint_writes())
        if engine == "fsdp2":
            stack.enter_context(fsdp_on_one_process())
        run_training(RunArguments(**arguments), task="sft" if algorithm == "sft" else "rlhf")
    records = [json.loads(line) for path in out.glob("v*/logging.jsonl") for line in path.read_text().splitlines()]
    steps = [r for r in records if "loss" in r or "time/rollout_s" in r]
    result = {"note": "includes the final checkpoint write" if engine else "checkpoint writes skipped",
              "first_loss": steps[0].get("loss") if steps else None,
              "last_loss": steps[-1].get("loss") if steps else None, **profile}
    if algorithm == "grpo":
        return {**result, **grpo_throughput(context, model, steps)}
    known = lengths(context)
    if algorithm == "sft":
        tokens, sequences = statistics.mean(known["sft"]) * workload["pairs_per_step"], known["sft"]
    else:
        tokens = statistics.mean(a + b for a, b in known["pairs"]) * workload["pairs_per_step"]
        sequences = [n for pair in known["pairs"] for n in pair]
    return {**result, **throughput(context, model, [r["step_seconds"] for r in steps], tokens, sequences)}


def grpo_throughput(context: dict, model: str, steps: list[dict]) -> dict:
    """GRPO: rollout (generation) and update times of the last step; tokens of its sequences."""
    if not steps:
        raise RuntimeError("the GRPO run logged no step")
    grpo, last = context["workload"]["grpo"], steps[-1]
    completions = grpo["prompts"] * grpo["num_generations"]
    completion_tokens = last["completions/mean_length"] * completions
    sequence = statistics.mean(lengths(context)["prompts"]) + last["completions/mean_length"]
    update_tokens = sequence * completions
    per_token = flops_per_token(hf_config(context, model), [round(sequence)] * completions)
    peak = prepared(context)["meta"]["peak_tflops"]
    return {"rollout_s": round(last["time/rollout_s"], 3), "update_s": round(last["time/update_s"], 3),
            "generated_tokens_per_s": round(completion_tokens / last["time/rollout_s"], 1),
            "tokens_per_s": round(update_tokens / last["time/update_s"], 1), "flops_per_token": per_token,
            "mfu": round(update_tokens / last["time/update_s"] * per_token / (peak * 1e12), 4) if peak else None,
            "s_per_step": round(last["time/rollout_s"] + last["time/update_s"], 3),
            "peak_memory_gib": peak_memory_gib(), "reward": last.get("reward")}


def profiled(into: dict, top: int = 25):
    """torch.profiler over the whole run (set-up included): the operators and kernels that take the most device
    time and the most host time, and the host-side count of device synchronisations. Written for the LoRA
    DPO gap on the first H200 runs (alignkit 0.885 s/step, TRL 0.32, both ~0.31 with Liger), where operator
    counts on the CPU match; the device's own timeline says where the time goes."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])

    @contextlib.contextmanager
    def run():
        with profile(activities=activities, record_shapes=False) as prof:
            yield
        averages = prof.key_averages()
        device_key = "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"

        def rows(key):
            ranked = sorted(averages, key=lambda e: getattr(e, key, 0) or 0, reverse=True)[:top]
            return [{"name": e.key[:120], "count": e.count, "ms": round((getattr(e, key, 0) or 0) / 1000, 2)}
                    for e in ranked]

        into["profile"] = {"by_device_time": rows(device_key), "by_host_time": rows("self_cpu_time_total"),
                           "device_total_ms": round(sum(getattr(e, device_key, 0) or 0 for e in averages) / 1000, 1),
                           "syncs": sum(e.count for e in averages if "synchronize" in e.key.lower()
                                        or e.key in ("aten::_local_scalar_dense", "aten::item"))}

    return run()


@contextlib.contextmanager
def no_checkpoint_writes():
    """The check measures steps, not disk: a 1.5B full checkpoint with its optimizer state is ~17 GB. The
    engine sections keep the real write, which is part of what they check."""
    from alignkit.training.runner import Runner

    original = Runner.save

    def save(self):
        self.last_checkpoint = self.run_dir / f"checkpoint-{self.state.global_step}"
        return self.last_checkpoint

    Runner.save = save
    try:
        yield
    finally:
        Runner.save = original


@contextlib.contextmanager
def fsdp_on_one_process():
    """alignkit refuses --fsdp on one process (it shards across processes); the check has one GPU, so it lets
    FSDP2 wrap the model on one process to run alignkit's loop, engine options and checkpointing under it."""
    from alignkit.training import runner, sharding

    original = sharding.check_available

    def check_available(engine):
        if engine.kind != "fsdp":
            original(engine)

    sharding.check_available = runner.check_available = check_available
    try:
        yield
    finally:
        sharding.check_available = runner.check_available = original


def apply_liger(arch: str) -> None:
    """Liger's layer kernels (RoPE, RMSNorm, SwiGLU) patched into transformers' classes for this process; its
    fused cross-entropy stays off: alignkit computes the LM head only where a label is predicted."""
    from liger_kernel.transformers import apply_liger_kernel_to_llama, apply_liger_kernel_to_qwen2

    patch = {"llama": apply_liger_kernel_to_llama, "qwen2": apply_liger_kernel_to_qwen2}[arch]
    patch(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False)


# ---------------------------------------------------------------------------------------------------- TRL


def trl_dpo(spec: dict, context: dict) -> dict:
    """TRL's DPOTrainer on the same model directory, rows (TRL's conversational format), batch, max_length,
    LoRA, learning rate and precision; its own defaults otherwise, but gradient checkpointing off as in
    alignkit (TRL 1.x turns it on by default)."""
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    options, workload, model_name = spec["options"], context["workload"], spec["model"]
    directory = model_dir(context, model_name)
    cuda = torch.cuda.is_available()

    class Timer(TrainerCallback):
        def __init__(self):
            self.seconds, self.started = [], 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            synchronize()
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            synchronize()
            self.seconds.append(time.perf_counter() - self.started)

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    data = load_dataset("json", data_files=str(Path(context["work"]) / "data" / "trl_pairs.jsonl"), split="train")
    rank = workload["lora_rank"]
    config = DPOConfig(
        output_dir=str(Path(context["work"]) / "runs" / spec["name"].replace("/", "-")),
        max_steps=workload["steps"], per_device_train_batch_size=workload["pairs_per_step"],
        gradient_accumulation_steps=1, learning_rate=workload["learning_rate"], lr_scheduler_type="cosine",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, beta=0.1, loss_type=["sigmoid"],
        max_length=workload["max_length"], logging_steps=1, save_strategy="no", report_to="none", bf16=cuda,
        use_cpu=not cuda, gradient_checkpointing=False, dataloader_num_workers=0, seed=42,
        use_liger_kernel=bool(options.get("liger")),
    )
    peft_config = (LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear",
                              task_type="CAUSAL_LM") if options["train_type"] == "lora" else None)
    timer = Timer()
    trainer = DPOTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[timer])
    profile: dict = {}
    with profiled(profile) if options.get("profile") else contextlib.nullcontext():
        trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    known = lengths(context)
    tokens = statistics.mean(a + b for a, b in known["pairs"]) * workload["pairs_per_step"]
    return {"first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            "note": "TRL defaults but gradient checkpointing off", **profile,
            **throughput(context, model_name, timer.seconds, tokens, [n for p in known["pairs"] for n in p])}


# ------------------------------------------------------------------------------------------------- parity


def parity(spec: dict, context: dict) -> dict:
    """Packed and prefix-shared log-probs and gradients against the padded path's on this device, in fp32 and
    under bf16 autocast: the largest per-token log-prob difference and the relative gradient difference. The
    packed rows run with sdpa's dense mask, or (option ``attention``) flex_attention's block mask, which
    transformers compiles per shape (the model is in eval mode: no autotuning)."""
    from transformers import AutoModelForCausalLM

    from alignkit.data.collate import PairCollator
    from alignkit.data.rows import PreferenceRow
    from alignkit.data.template import ChatEncoder
    from alignkit.models.layout_check import logps_tolerance
    from alignkit.models.load import load_tokenizer
    from alignkit.models.logprobs import forward_logps
    from alignkit.models.packing import packed_forward_logps

    workload, directory = context["workload"], model_dir(context, spec["model"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer(directory)
    encoder = ChatEncoder(tokenizer, max_length=workload["max_length"])
    records = [json.loads(line) for line in (Path(context["work"]) / "data" / "pairs.jsonl").read_text().splitlines()]
    rows = [PreferenceRow(prompt=r["messages"][:1], chosen=r["messages"][1:],
                          rejected=[{"role": "assistant", "content": r["rejected_response"]}]) for r in records]
    items = [(i, encoder.encode_pair(row)) for i, row in enumerate(rows[: workload["pairs_per_step"]])]
    batch = PairCollator(tokenizer.pad_token_id)(items).to(device)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, attn_implementation="sdpa").to(device)
    weights = torch.linspace(1, 2, 2 * len(items), device=device)

    def run(forward):
        model.zero_grad(set_to_none=True)
        logps, counts = forward()
        (logps * weights).sum().backward()
        grads = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
        return logps.detach(), counts, grads

    attention = spec["options"].get("attention", "sdpa")
    if attention == "flex_attention" and device == "cpu":
        raise RuntimeError("flex_attention has no backward on a CPU: its parity runs on the GPU only")
    suffix = "_flex" if attention == "flex_attention" else ""
    layouts = {f"packed{suffix}": (attention, False), f"prefix_shared{suffix}": (attention, True)}
    out = {}
    for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        autocast = torch.autocast(device, dtype=dtype) if dtype else contextlib.nullcontext()
        with autocast:
            padded, counts, padded_grads = run(lambda: forward_logps(model, batch))
            for name, (attention, share) in layouts.items():
                model.set_attn_implementation(attention)
                logps, _, grads = run(lambda share=share: packed_forward_logps(model, batch, share_prefixes=share))
                model.set_attn_implementation("sdpa")
                per_token = ((logps - padded).abs() / counts.clamp(min=1)).max().item()
                grad_rel = ((grads - padded_grads).norm() / padded_grads.norm()).item()
                tolerance = logps_tolerance(dtype or torch.float32)
                out[f"{name}_{precision}"] = {"logp_per_token_max_diff": per_token, "grad_rel_diff": grad_rel,
                                              "tolerance_per_token": tolerance, "ok": per_token <= tolerance}
        del padded_grads
    return {"layouts": out, "ok": all(v["ok"] for v in out.values()), "sequences": 2 * len(items),
            "tokens": int(batch.attention_mask.sum())}


def packing_memory(spec: dict, context: dict) -> dict:
    """Peak memory of one packed row's forward and backward as it grows, with sdpa's dense (L × L) mask and
    with flex_attention's block mask: the first should grow with L², the second with L. Sequences of 512
    tokens (pairs sharing a 384-token prompt), the model in eval mode so that transformers compiles flex without
    autotuning; flex_attention has no backward on a CPU, so there only the dense mask runs."""
    from transformers import AutoModelForCausalLM

    from alignkit.data.collate import PairCollator
    from alignkit.data.template import Encoded
    from alignkit.models.packing import pack, packed_attention_mask

    device = "cuda" if torch.cuda.is_available() else "cpu"
    lengths = (2048, 4096, 8192, 16384) if device == "cuda" else (256, 512)
    sequence = 512 if device == "cuda" else 64
    model = AutoModelForCausalLM.from_pretrained(model_dir(context, spec["model"]), dtype=torch.float32).to(device)
    model.eval()  # no dropout; gradients still flow
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    out: dict = {}
    for attention in ("sdpa", "flex_attention"):
        if attention == "flex_attention" and device == "cpu":
            out[attention] = {"error": "flex_attention has no backward on a CPU"}
            continue
        model.set_attn_implementation(attention)
        rows = out.setdefault(attention, {})
        for length in lengths:
            items = []
            for i in range(length // (sequence + sequence // 4)):  # a pair: its prompt once, two answers
                prompt = torch.randint(3, vocab, (3 * sequence // 4,), generator=generator).tolist()
                answers = [torch.randint(3, vocab, (sequence // 4,), generator=generator).tolist() for _ in range(2)]
                ids = [prompt + a for a in answers]
                items.append((i, tuple(Encoded(x, [-100] * len(prompt) + x[len(prompt):]) for x in ids)))
            packed = pack(PairCollator(0)(items).to(device), share_prefixes=True, row_tokens=length)
            try:
                synchronize()
                if device == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                started = time.perf_counter()
                with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                    logits = model(input_ids=packed.input_ids, position_ids=packed.position_ids,
                                   attention_mask=packed_attention_mask(model, packed), logits_to_keep=packed.keep,
                                   use_cache=False).logits
                    logits.float().logsumexp(-1).sum().backward()
                synchronize()
                rows[str(packed.input_ids.shape[1])] = {
                    "rows": packed.input_ids.shape[0], "seconds": round(time.perf_counter() - started, 3),
                    "peak_gib": round((torch.cuda.max_memory_allocated() - base) / 2**30, 3) if device == "cuda"
                    else None}
            except Exception as error:  # noqa: BLE001 - an out-of-memory at one length is a result
                rows[str(length)] = {"error": f"{type(error).__name__}: {error}"[:300]}
            model.zero_grad(set_to_none=True)
    model.set_attn_implementation("sdpa")
    return {"lengths": out, "note": "peak_gib: above the model's weights; the first length includes compilation"}


def vllm_colocate(spec: dict, context: dict) -> dict:
    """GRPO with --use_vllm --vllm_mode colocate on 2 processes sharing the one GPU: each process starts its own
    vLLM engine (external_launcher, --vllm_gpu_memory_utilization 0.3 each), samples its share of the step's
    prompts and loads the LoRA-merged policy into its engine after every update (alignkit/generation/vllm.py)."""
    import multiprocessing

    grpo, data = context["workload"]["grpo"], Path(context["work"]) / "data"
    out = Path(context["work"]) / "runs" / spec["name"].replace("/", "-")
    rank = context["workload"]["lora_rank"]
    arguments = dict(model=model_dir(context, spec["model"]), output_dir=str(out), train_type="lora",
                     rlhf_type="grpo", dataset=[str(data / "prompts.jsonl")], max_steps=2, logging_steps=1,
                     save_steps=10**6, num_generations=grpo["num_generations"],
                     per_device_train_batch_size=grpo["prompts"] * grpo["num_generations"] // 2,
                     max_completion_length=grpo["max_completion_length"], max_length=context["workload"]["max_length"],
                     reward_funcs=[f"{data / 'rewards.py'}:length_reward"], learning_rate=1e-5, dataset_shuffle=False,
                     split_dataset_ratio=0.0, dtype="bf16", report_to=["none"], lora_rank=rank, lora_alpha=2 * rank,
                     lora_dropout=0.0, seed=42, gradient_checkpointing=False, use_vllm=True, vllm_mode="colocate",
                     vllm_gpu_memory_utilization=0.3)
    spawn = multiprocessing.get_context("spawn")
    port = _free_port()
    processes = [spawn.Process(target=_colocate_rank, args=(r, port, arguments)) for r in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=spec["budget_s"])
    codes = [process.exitcode for process in processes]
    if codes != [0, 0]:
        raise RuntimeError(f"the 2 colocated processes exited with {codes} (their output is in the worker's log)")
    records = [json.loads(line) for path in out.glob("v*/logging.jsonl") for line in path.read_text().splitlines()]
    steps = [r for r in records if "time/rollout_s" in r]
    if len(steps) != 2:
        raise RuntimeError(f"expected 2 logged steps, found {len(steps)}")
    return {"steps": len(steps), "rollout_s": [round(r["time/rollout_s"], 3) for r in steps],
            "reward": [r.get("reward") for r in steps],
            "completion_length": [r.get("completions/mean_length") for r in steps]}


def _colocate_rank(rank: int, port: int, arguments: dict) -> None:
    """One of vllm_colocate's processes. Both run on cuda:0 (LOCAL_RANK 0: vLLM and alignkit pick their device
    by it); NCCL refuses two ranks on one GPU, so the training group is gloo, which all-reduces CUDA tensors."""
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo")
    from alignkit.config.run import RunArguments
    from alignkit.training.run import run_training

    run_training(RunArguments(**arguments), task="rlhf")
    torch.distributed.barrier()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare_and_save(spec: dict, context: dict) -> dict:
    result = prepare(spec, context)
    (Path(context["work"]) / "prepared.json").write_text(json.dumps(result))
    return result


SECTIONS = {"prepare": prepare_and_save, "alignkit": alignkit_run, "trl": trl_dpo, "parity": parity,
            "packing_memory": packing_memory, "vllm_colocate": vllm_colocate}
