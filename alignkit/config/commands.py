"""The arguments of the sub-commands that do not train: infer, eval, demo, export, deploy, app, cache, data."""

from __future__ import annotations

from dataclasses import dataclass

from alignkit.config.options import (
    dtype_option,
    inference_device_map_option,
    inference_device_max_memory_option,
    option,
)

INFER_BACKENDS = ("transformers", "pt", "vllm", "sglang", "lmdeploy")
TRUNCATION_STRATEGIES = ("delete", "left", "right", "raise")
TASK_TYPES = ("causal_lm", "seq_cls", "embedding", "reranker", "generative_reranker", "prm")


def attn_impl_option():
    return option(
        None, "Attention implementation the model loads with, as for training: sdpa, eager, flex_attention, "
        "flash_attn (= flash_attention_2), flash_attention_2, flash_attention_3 (flash-attn packages and a CUDA GPU). "
        "Unset: transformers' choice.", aliases=("--attn_implementation",),
        choices=("sdpa", "eager", "flex_attention", "flash_attn", "flash_attention_2", "flash_attention_3"))


def enable_thinking_option():
    return option(None, "The chat template's enable_thinking switch (Qwen3-style templates): false asks for an answer "
                  "without a thinking block. Unset: the template's default.")


def task_type_option():
    return option("causal_lm", "What the model is: causal_lm (generation; a reward model with alignkit's value head "
                  "is recognised by its files), prm (a process reward model, also recognised by its architecture: "
                  "infer and deploy give per-step scores). seq_cls, embedding, reranker and generative_reranker are "
                  "refused with what to use instead.", choices=TASK_TYPES)


def infer_backend_option(help: str):
    return option("transformers", help, choices=INFER_BACKENDS)


def truncation_option():
    return option(
        "delete", "A prompt longer than --max_length: delete (skip it, counted; deploy answers 400), left (keep its "
        "end), right (keep its beginning), raise (stop with an error).", choices=TRUNCATION_STRATEGIES,
    )


@dataclass
class InferArguments:
    model: str | None = option(None, "Base model (default: the built-in model).", aliases=("--model_id_or_path",))
    adapters: list[str] = option([], "LoRA adapter directories to apply.", nargs="*")
    ckpt_dir: str | None = option(None, "A checkpoint of an alignkit run (adapter or full model).")
    system: str | None = option(None, "System prompt.")
    max_new_tokens: int = option(256, "Most tokens generated per answer.")
    temperature: float = option(0.0, "Sampling temperature; 0 decodes greedily.")
    top_p: float = option(1.0, "Nucleus sampling mass.")
    top_k: int = option(0, "Sample among the k likeliest tokens (0: no limit).")
    repetition_penalty: float = option(1.0, "Penalty > 1 discourages repeating tokens.")
    stream: bool = option(True, "Print tokens as they are generated (interactive chat).")
    val_dataset: list[str] = option([], "Answer every prompt of these datasets and write JSONL.", nargs="+")
    result_path: str | None = option(None, "JSONL output of batch inference (never overwritten).")
    reward_model: str | None = option(
        None,
        "A reward model (an alignkit rlhf --rlhf_type rm checkpoint, or a sequence-classification model with one "
        "label): score the conversations of --val_dataset "
        "instead of generating; preference rows get both answers scored and the pair accuracy is reported.",
    )
    max_batch_size: int = option(8, "Prompts generated together in batch inference.")
    max_length: int = option(1024, "Longest prompt in tokens; longer prompts are skipped and counted.")
    dtype: str = dtype_option()
    device_map: str | None = inference_device_map_option()
    device_max_memory: list[str] = inference_device_max_memory_option()
    seed: int = option(42, "Sampling seed.")
    infer_backend: str = infer_backend_option(
        "Generation engine: transformers (pt is ms-swift 3's name of it), vllm (the vllm package and a CUDA GPU), "
        "sglang or lmdeploy (their packages; batch inference of text prompts)."
    )
    load_dataset_config: bool = option(
        False, "Take --val_dataset (or the run's held-out split), --system and --max_length from the args.json "
        "of the --ckpt_dir (or --adapters) run, for flags not given.", aliases=("--load_data_args",),
    )
    # --- infer: ms-swift's batch-inference and engine flags ---
    dataset: list[str] = option(
        [], "Answer the prompts of these datasets: the held-out part when --split_dataset_ratio > 0 (the same "
        "seeded split as training), else every row.", nargs="+",
    )
    split_dataset_ratio: float = option(0.0, "Share of --dataset held out (and answered), as in training.")
    write_batch_size: int = option(
        1000, "Results are flushed to --result_path every this many rows (-1: at the end), as in ms-swift."
    )
    stop_words: list[str] = option([], "Strings that end an answer (cut before them).", nargs="*")
    truncation_strategy: str = truncation_option()
    task_type: str = task_type_option()
    trust_remote_code: bool = option(
        False, "Run the model repository's own Python code (needed by some architectures); off, as in transformers."
    )
    vllm_gpu_memory_utilization: float = option(0.9, "vLLM: share of GPU memory for weights and KV cache.")
    vllm_max_model_len: int | None = option(None, "vLLM: context length (default --max_length + --max_new_tokens).")
    vllm_tensor_parallel_size: int = option(1, "vLLM: GPUs the model is split across (tensor parallel).")
    vllm_enforce_eager: bool = option(False, "vLLM: no CUDA graphs (less memory, slower).")
    vllm_enable_prefix_caching: bool = option(False, "vLLM: reuse the KV cache of shared prompt prefixes.")
    vllm_max_num_seqs: int = option(256, "vLLM: most sequences in one engine step.")
    vllm_limit_mm_per_prompt: str | None = option(
        None, "vLLM: most images/videos per prompt, a JSON object such as '{\"image\": 5}'."
    )
    sglang_tp_size: int = option(1, "sglang: GPUs the model is split across (tensor parallel).")
    sglang_context_length: int | None = option(None, "sglang: context length (default: the model's).")
    lmdeploy_tp: int = option(1, "lmdeploy: GPUs the model is split across (tensor parallel).")
    lmdeploy_session_len: int | None = option(None, "lmdeploy: longest session in tokens (default: the model's).")
    # --- infer: model loading and template flags (issue 20, second round) ---
    attn_impl: str | None = attn_impl_option()
    enable_thinking: bool | None = enable_thinking_option()
    use_chat_template: bool = option(
        True, "false: ms-swift's generation template (base models): the prompt is BOS + the last user message, no "
        "system prompt or chat markers, as training's --use_chat_template false renders it."
    )
    metric: str | None = option(
        None, "Score the answers against the rows' reference answers (`labels`, e.g. the held-out rows of "
        "--load_data_args or --dataset): acc, the share of answers equal to their reference (as ms-swift). rouge "
        "is refused (not implemented).", choices=("acc", "rouge"),
    )
    debug: bool = option(False, "Show full tracebacks for errors.")


@dataclass
class EvalArguments:
    model: str | None = option(None, "Base model (default: the built-in model).", aliases=("--model_id_or_path",))
    adapters: list[str] = option([], "LoRA adapter directories to apply.", nargs="*")
    ckpt_dir: str | None = option(None, "A checkpoint of an alignkit run (adapter or full model).")
    ref_model: str | None = option(None, "Reference for implicit rewards (default: the base without adapters).")
    dataset: list[str] = option(
        ["arith-pref:test"], "Preference sets for accuracy and margins ('none' to skip).", nargs="+"
    )
    task_dataset: str | None = option(
        "arith-prompts:test", "Built-in task prompts scored by greedy answer accuracy ('none' to skip)."
    )
    beta: float = option(0.1, "beta of the implicit reward beta·(log π − log π_ref).")
    max_length: int = option(1024, "Maximum tokens of prompt + answer.")
    max_new_tokens: int = option(32, "Most tokens generated per task answer.")
    batch_size: int = option(8, "Rows per forward / generation batch.")
    limit: int | None = option(None, "Evaluate at most this many rows of each set.")
    system: str | None = option(None, "System prompt.")
    reward_model: str | None = option(
        None, "A reward model (an alignkit rlhf --rlhf_type rm checkpoint, or a sequence-classification model with "
        "one label): it scores the greedy answers of the model "
        "and of its baseline (--ref_model, else the base without adapters) to --reward_prompts; reports the win rate.",
    )
    reward_prompts: str = option("arith-prompts:test", "Prompts answered by both models for --reward_model.")
    report_path: str | None = option(
        None, "The JSON report (never overwritten; default eval_result/<time>.json); the chart goes beside it (.png)."
    )
    dtype: str = dtype_option()
    device_map: str | None = inference_device_map_option()
    device_max_memory: list[str] = inference_device_max_memory_option()
    debug: bool = option(False, "Show full tracebacks for errors.")


@dataclass
class DemoArguments:
    output_dir: str = option("output/demo", "Where the run, the report and the chart go.")
    max_steps: int = option(50, "DPO optimizer steps.")
    rpo_alpha: float = option(0.5, "Weight of the NLL on chosen answers mixed into DPO (as ms-swift's --rpo_alpha).")
    learning_rate: float = option(5e-4, "Peak learning rate (LoRA).")
    per_device_train_batch_size: int = option(4, "Pairs per step.", aliases=("--batch_size",))
    eval_limit: int = option(100, "Held-out rows used for the before/after numbers.")
    dtype: str = dtype_option()
    debug: bool = option(False, "Show full tracebacks for errors.")


@dataclass
class ExportArguments:
    model: str | None = option(None, "Base model (default: the built-in model, or the adapter's base).",
                               aliases=("--model_id_or_path",))
    adapters: list[str] = option([], "The LoRA adapter directory to merge.", nargs="*")
    ckpt_dir: str | None = option(None, "A checkpoint of an alignkit run (adapter or full model).")
    merge_lora: bool = option(False, "Merge the adapter into the base weights and write a plain HF model.")
    quant_bits: int | None = option(
        None, "Quantise the (merged) model to 4 or 8 bits with --quant_method (bnb when not given).", choices=(4, 8)
    )
    quant_method: str | None = option(
        None, "bnb: bitsandbytes NF4/FP4 (4 bits) or LLM.int8 (8 bits), CPU or GPU, loading with transformers + "
        "bitsandbytes. gptq/gptq_v2 (gptqmodel through transformers' GPTQConfig, calibrated on --dataset), awq "
        "(llm-compressor, calibrated on --dataset) and fp8 (transformers' FineGrainedFP8Config, no calibration) "
        "need a CUDA GPU.", choices=("bnb", "gptq", "gptq_v2", "awq", "fp8"),
    )
    # --- export: ms-swift's quantisation, hub and ollama flags ---
    dataset: list[str] = option([], "Calibration data of gptq/awq (same forms as for training).", nargs="+")
    quant_n_samples: int = option(256, "Calibration rows (gptq/awq).")
    quant_batch_size: int = option(1, "Calibration rows per forward pass (gptq/awq).")
    group_size: int = option(128, "Weights sharing one scale (gptq/awq).")
    max_length: int = option(2048, "Longest calibration row in tokens (gptq/awq).")
    truncation_strategy: str = truncation_option()
    task_type: str = task_type_option()
    bnb_4bit_quant_type: str = option("nf4", "bnb 4-bit data type: nf4 or fp4.", choices=("nf4", "fp4"))
    bnb_4bit_use_double_quant: bool = option(True, "bnb 4-bit: quantise the quantisation constants too.")
    bnb_4bit_compute_dtype: str | None = option(
        None, "bnb 4-bit compute precision (default bf16 on GPU, fp32 on CPU).",
        choices=("float16", "bfloat16", "float32"),
    )
    to_ollama: bool = option(
        False, "Also write an Ollama Modelfile (FROM the exported weights, the chat template, stop words) into "
        "--output_dir, for `ollama create NAME -f DIR/Modelfile`."
    )
    push_to_hub: bool = option(False, "Upload the exported directory to the Hugging Face Hub as --hub_model_id.")
    hub_model_id: str | None = option(None, "The Hub repository to push to (user/name).")
    hub_token: str | None = option(None, "Hub token (default: the logged-in one, or HF_TOKEN).")
    hub_private_repo: bool = option(False, "Create the Hub repository private.")
    commit_message: str = option("update files", "Commit message of the upload.")
    use_hf: bool = option(
        False, "ms-swift: true uses the Hugging Face Hub, false ModelScope. alignkit pushes to the Hugging Face Hub "
        "only: --push_to_hub needs --use_hf true."
    )
    device_map: str | None = option(
        None, "Where the model loads for quantising, transformers' device_map (cpu, auto, cuda, ...); default: "
        "the GPU when there is one for bnb, cuda for gptq/awq/fp8 (ms-swift's --device_map cpu quantises a model "
        "larger than the GPU, layer by layer). The LoRA merge itself always runs on the CPU in fp32."
    )
    to_cached_dataset: bool = option(
        False, "ms-swift's pre-tokenised dataset export; refused: alignkit tokenises and caches datasets itself on "
        "first use (see `alignkit cache`)."
    )
    load_dataset_config: bool = option(
        False, "gptq/awq calibration data: the --dataset of the run that trained --model/--ckpt_dir/--adapters (its "
        "args.json, which alignkit's export copies into merged models), when --dataset is not given.",
        aliases=("--load_data_args",),
    )
    split_dataset_ratio: float = option(
        0.0, "With --to_cached_dataset (refused): the share held out as the cached validation set.")
    dataset_num_proc: int = option(1, "With --to_cached_dataset (refused): tokenising processes.")
    num_labels: int | None = option(None, "With --to_cached_dataset (refused): labels of a seq_cls dataset.")
    output_dir: str | None = option(
        None, "Where the model is written (default <ckpt>-merged or <ckpt>-bnb-int<bits>); never overwritten."
    )
    dtype: str = dtype_option("Saved precision: auto (the base model's), fp32, bf16, fp16.")
    debug: bool = option(False, "Show full tracebacks for errors.")


@dataclass
class DeployArguments:
    model: str | None = option(None, "Base model (default: the built-in model).", aliases=("--model_id_or_path",))
    adapters: list[str] = option(
        [], "LoRA adapters: NAME=DIR serves DIR as model NAME (several allowed); a bare DIR becomes the default "
        "model, served as --served_model_name.", nargs="*",
    )
    ckpt_dir: str | None = option(None, "A checkpoint of an alignkit run (adapter or full model), the default model.")
    served_model_name: str | None = option(
        None,
        "Name of the default model in /v1/models and requests (default: the model or checkpoint directory's name).",
    )
    host: str = option("127.0.0.1", "Address to listen on (0.0.0.0 exposes the server to the network).")
    port: int = option(8000, "Port to listen on.")
    api_key: str | None = option(None, "Require `Authorization: Bearer KEY` on every request.")
    max_new_tokens: int = option(512, "Most tokens per answer when a request gives no max_tokens.")
    temperature: float = option(0.0, "Temperature when a request gives none; 0 decodes greedily.")
    top_p: float = option(1.0, "Nucleus sampling mass when a request gives none.")
    max_batch_size: int = option(8, "Concurrent requests generated together in one batch.")
    # --- deploy: ms-swift's serving flags ---
    infer_backend: str = infer_backend_option(
        "Serving engine: transformers (pt: ms-swift 3's name), alignkit's batching engine; vllm or sglang: the "
        "model served by their own OpenAI-compatible server (`vllm serve`, sglang.launch_server) with the "
        "--vllm_*/--sglang_* flags, --host/--port/--api_key/--served_model_name and the sampling defaults "
        "translated (their package and a CUDA GPU); lmdeploy is refused."
    )
    max_length: int | None = option(
        None, "Longest prompt + answer in tokens (default: the model's context); longer prompts follow "
        "--truncation_strategy."
    )
    truncation_strategy: str = truncation_option()
    task_type: str = task_type_option()
    trust_remote_code: bool = option(
        False, "Run the model repository's own Python code (needed by some architectures); off, as in transformers."
    )
    # --- deploy: engine servers (vllm/sglang), tool calls, classifier heads ---
    vllm_gpu_memory_utilization: float = option(0.9, "vLLM: share of GPU memory for weights and KV cache.")
    vllm_max_model_len: int | None = option(None, "vLLM: context length (default: --max_length, else the model's).")
    vllm_tensor_parallel_size: int = option(1, "vLLM: GPUs the model is split across (tensor parallel).")
    vllm_data_parallel_size: int = option(1, "vLLM: engine replicas, one per GPU group (data parallel).")
    vllm_enforce_eager: bool = option(False, "vLLM: no CUDA graphs (less memory, slower).")
    vllm_enable_prefix_caching: bool = option(False, "vLLM: reuse the KV cache of shared prompt prefixes.")
    vllm_max_num_seqs: int | None = option(None, "vLLM: most sequences in one engine step (default: vLLM's).")
    vllm_limit_mm_per_prompt: str | None = option(
        None, "vLLM: most images/videos per prompt, a JSON object such as '{\"image\": 5}'."
    )
    sglang_tp_size: int = option(1, "sglang: GPUs the model is split across (tensor parallel).")
    sglang_context_length: int | None = option(None, "sglang: context length (default: the model's).")
    agent_template: str | None = option(
        None, "Tool calls (OpenAI `tools`): hermes renders the tools into the system prompt in Hermes format and "
        "parses <tool_call>{...}</tool_call> in answers into `tool_calls`; with --infer_backend vllm, vLLM's own "
        "hermes parser does it.", choices=("hermes",),
    )
    num_labels: int | None = option(
        None, "--task_type seq_cls with --infer_backend vllm: labels of the classification head (default: the "
        "checkpoint's config)."
    )
    enable_thinking: bool | None = enable_thinking_option()
    allowed_local_media_path: str | None = option(
        None, "A vision-language model reads image_url parts that name local files (a path or file:// URL) only "
        "inside this directory; without it only data: and http(s):// URLs are taken.",
    )
    dtype: str = dtype_option()
    device_map: str | None = inference_device_map_option()
    device_max_memory: list[str] = inference_device_max_memory_option()
    debug: bool = option(False, "Show full tracebacks for errors.")


@dataclass
class AppArguments:
    model: str | None = option(None, "Base model (default: the built-in model).", aliases=("--model_id_or_path",))
    adapters: list[str] = option([], "LoRA adapter directories to apply.", nargs="*")
    ckpt_dir: str | None = option(None, "A checkpoint of an alignkit run (adapter or full model).")
    system: str | None = option(None, "Initial system prompt (editable in the page).")
    max_new_tokens: int = option(256, "Initial most tokens per answer (editable in the page).")
    temperature: float = option(0.0, "Initial sampling temperature; 0 decodes greedily (editable in the page).")
    top_p: float = option(1.0, "Initial nucleus sampling mass (editable in the page).")
    server_name: str = option("127.0.0.1", "Address to listen on (0.0.0.0 exposes the page to the network).")
    server_port: int = option(7860, "Port to listen on.")
    share: bool = option(False, "Also publish the page through a public Gradio share link.")
    # --- app: ms-swift's page flags ---
    stream: bool = option(True, "Show answers as they are generated (false: each answer whole, when done).")
    lang: str = option("en", "Language of the page's labels: en or zh.", choices=("en", "zh"))
    infer_backend: str = infer_backend_option(
        "Engine: transformers (pt: ms-swift 3's name), alignkit's batching engine; vllm or sglang: their own "
        "OpenAI-compatible server is started on a free loopback port and the page chats with it (their package and "
        "a CUDA GPU); lmdeploy is refused."
    )
    vllm_gpu_memory_utilization: float = option(0.9, "vLLM: share of GPU memory for weights and KV cache.")
    vllm_max_model_len: int | None = option(None, "vLLM: context length (default: the model's).")
    vllm_limit_mm_per_prompt: str | None = option(
        None, "vLLM: most images/videos per prompt, a JSON object such as '{\"image\": 5}'."
    )
    sglang_context_length: int | None = option(None, "sglang: context length (default: the model's).")
    trust_remote_code: bool = option(
        False, "Run the model repository's own Python code (needed by some architectures); off, as in transformers."
    )
    dtype: str = dtype_option()
    device_map: str | None = inference_device_map_option()
    device_max_memory: list[str] = inference_device_max_memory_option()
    # --- the page as a client of a server; its look (ms-swift's app flags) ---
    base_url: str | None = option(
        None, "An OpenAI-compatible server to chat with (e.g. http://127.0.0.1:8000/v1, ours or any other): the "
        "page sends it the conversation and loads no model itself. --model then names the served model "
        "(default: the first one the server lists).")
    api_key: str | None = option(None, "With --base_url: the server's API key (default: $OPENAI_API_KEY, else "
                                 "none).")
    studio_title: str | None = option(None, "The page's title (default: alignkit chat: <model>).")
    debug: bool = option(False, "Show full tracebacks for errors.")


@dataclass
class CacheArguments:
    kinds: list[str] = option(
        ["tokenized", "ref_logps"], "Caches to report (and clear): tokenized, ref_logps.", nargs="+",
    )
    clear: bool = option(False, "Delete the files of --kinds (the built-in model is never deleted).")
    older_than_days: float | None = option(None, "With --clear: delete only files last written before this many days.")
    debug: bool = option(False, "Show full tracebacks for errors.")


@dataclass
class DataArguments:
    dataset: list[str] = option([], "Datasets to inspect (same forms as for training).", nargs="+")
    model: str | None = option(
        None, "Model whose tokenizer and chat template render the rows (default: the built-in model).",
        aliases=("--model_id_or_path",),
    )
    kind: str = option(
        "auto",
        "Rows to build: auto (each file's own: preference for pairs, unpaired for KTO, ...), preference, sft, "
        "unpaired or prompt.",
        choices=("auto", "preference", "sft", "unpaired", "prompt"),
    )
    num_examples: int = option(2, "Rows shown rendered, with their trained tokens highlighted.")
    columns: str | None = option(None, "Rename columns first, as a JSON object '{\"src\": \"dst\"}'.")
    template: str | None = option(None, "Built-in chat template (chatml, llama3, qwen, default).",
                                  choices=("chatml", "llama3", "qwen", "default"))
    template_config: str | None = option(None, "ColossalChat-style template config JSON.",
                                         aliases=("--conversation_template_config",))
    system: str | None = option(None, "Default system prompt (or a .txt file) for rows without their own.")
    loss_scale: str = option("default", "Which tokens are trained (default, last_round, all; +ignore_empty_think; "
                             "agent weightings hermes, react, qwen, alpha_umi).")
    agent_template: str | None = option(None, "How agent rows (tools, tool calls, tool results) are written: hermes, "
                                        "react_en, react_zh, qwen_en, ..., as `alignkit sft --agent_template`.",
                                        choices=("hermes", "react_en", "react_zh", "react_grpo", "qwen_en",
                                                 "qwen_zh", "qwen_en_parallel", "qwen_zh_parallel"))
    max_length: int = option(1024, "Maximum tokens of prompt + answer.")
    max_prompt_length: int | None = option(None, "Maximum prompt tokens.")
    model_name: list[str] = option([], "Self-cognition data: the model's name (Chinese, English).", nargs="+")
    model_author: list[str] = option([], "Self-cognition data: the model's author (Chinese, English).", nargs="+")
    truncation_strategy: str = option("delete", "Rows that do not fit: delete, left, right or raise.",
                                      choices=("delete", "left", "right", "raise"))
    check_dataset_strategy: str = option("none", "Invalid rows: none/error stop; discard/warning drop and count.",
                                         choices=("none", "error", "discard", "warning"))
    data_seed: int = option(42, "Seed for #N sampling and built-in data.")
    debug: bool = option(False, "Show full tracebacks for errors.")
