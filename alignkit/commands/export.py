"""`alignkit export`: merge a LoRA adapter into its base and/or quantise, writing a plain HF model directory.

    alignkit export --ckpt_dir output/v0-.../checkpoint-50 --merge_lora true     # -> checkpoint-50-merged/
    alignkit export --ckpt_dir ... --quant_bits 4                                # -> checkpoint-50-bnb-int4/

The directory holds safetensors weights, config, tokenizer (with its chat template) and a generation
config whose end-of-sequence ids include the template's end-of-turn token, so that plain
``AutoModelForCausalLM.from_pretrained(dir)`` + ``generate`` stops where alignkit's generation does;
alignkit is not needed to load it. Quantised exports (bitsandbytes NF4 / LLM.int8, on CPU or GPU) load
with transformers and bitsandbytes installed.

A reward-model checkpoint (``alignkit rlhf --rlhf_type rm``) exports as the merged LM plus its
``value_head.safetensors`` (one (1, d_model) ``weight``: reward = weight · the final hidden state at the
last token), which ``alignkit.models.reward_model.load_reward_model(dir)`` and ``alignkit infer --reward_model``
load; its scores equal the checkpoint's.

A vision-language model (docs/vision.md) exports merged with its processor (image processor, tokenizer, chat
template), loading with ``AutoModelForImageTextToText`` + ``AutoProcessor``; it is not quantised here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import torch

from alignkit.config.commands import ExportArguments
from alignkit.data.chat_templates import resolve_template
from alignkit.errors import AlignkitError
from alignkit.models.load import (
    fit_embeddings_to_adapter,
    load_causal_lm,
    load_tokenizer,
    resolve_checkpoint,
    resolve_model_path,
)
from alignkit.vision.model import is_vision_model

logger = logging.getLogger("alignkit")

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def quant_method(args: ExportArguments) -> str | None:
    """--quant_method, or bnb when only --quant_bits is given."""
    return args.quant_method or ("bnb" if args.quant_bits is not None else None)


def run_export(args: ExportArguments) -> int:
    model, adapters = resolve_checkpoint(args.model, args.adapters, args.ckpt_dir)
    if len(adapters) > 1:
        raise AlignkitError(f"export merges one adapter at a time; got {len(adapters)}: {', '.join(adapters)}")
    method = quant_method(args)
    if method is None and not args.merge_lora and not args.to_ollama:
        if args.push_to_hub:  # ms-swift pushes the checkpoint (or adapter) as it is
            from alignkit.models.hub_upload import push_to_hub

            source = Path(adapters[0] if adapters else resolve_model_path(model))
            print(f"pushed: {push_to_hub(source, args.hub_model_id, token=args.hub_token, private=args.hub_private_repo, commit_message=args.commit_message)}")  # noqa: E501
            return 0
        raise AlignkitError("nothing to export: pass --merge_lora true (with an adapter), --quant_bits 4|8 / "
                            "--quant_method, --to_ollama true or --push_to_hub true")
    if adapters and not args.merge_lora:
        logger.info("Exporting with an adapter: merging the adapter first")
    model_path = resolve_model_path(model)
    vision = is_vision_model(model_path)
    if vision and method is not None:
        raise AlignkitError(f"{model_path} is a vision-language model: alignkit exports it merged (--merge_lora true) "
                            "but does not quantise it (--quant_method/--quant_bits)")
    if args.load_dataset_config and not args.dataset:
        args = with_run_calibration_data(args, adapters, model_path)
    calibration = None
    if method in ("gptq", "gptq_v2", "awq", "fp8"):  # data first, so a wrong --dataset shows on any machine
        from alignkit.commands.export_quant import CALIBRATED, calibration_ids, check_gpu_method

        if method in CALIBRATED:
            calibration = calibration_ids(args, load_tokenizer(adapters[0] if adapters and (
                Path(adapters[0]) / "tokenizer_config.json").is_file() else model_path))
        check_gpu_method(method)
    output = Path(args.output_dir) if args.output_dir else default_output(args, adapters, model_path)
    if output.exists() and args.merge_lora and method is None and (output / "config.json").is_file():
        # ms-swift's merge_lora: an existing merged directory is kept and used, never written again.
        logger.info("%s exists: kept as it is, not merged again (as ms-swift); pass --output_dir for a new one", output)
        print(f"exported: {output}")
        return 0
    if output.exists():
        raise AlignkitError(f"--output_dir {output} exists; alignkit never overwrites. Pass another --output_dir")

    # Written whole or not at all: into <output>.tmp, renamed when complete.
    partial = output.with_name(output.name + ".tmp")
    shutil.rmtree(partial, ignore_errors=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    if vision:
        write_merged_vision(model_path, adapters[0] if adapters else None, partial, args.dtype)
    else:
        write_merged(model_path, adapters[0] if adapters else None, partial, args.dtype)
    value_head = value_head_of(adapters[0] if adapters else args.ckpt_dir)
    if value_head is not None and method is not None:
        raise AlignkitError("a reward model (with value_head.safetensors) is exported merged, not quantised")
    if value_head is not None:
        shutil.copy2(value_head, partial / value_head.name)
        logger.info("Reward model: %s copied beside the merged weights", value_head.name)
    run_args = Path(args.ckpt_dir or (adapters[0] if adapters else "")) / "args.json"
    if (args.ckpt_dir or adapters) and run_args.is_file():
        # As ms-swift: the run's arguments travel, so `infer --ckpt_dir <merged> --load_dataset_config` works.
        shutil.copy2(run_args, partial / "args.json")
    if method is not None:
        quantised = output.with_name(output.name + ".quant.tmp")
        shutil.rmtree(quantised, ignore_errors=True)
        if method == "bnb":
            write_bnb_quantised(partial, quantised, args)
        else:
            from alignkit.commands.export_quant import write_gpu_quantised

            write_gpu_quantised(partial, quantised, method, args, calibration)
        shutil.rmtree(partial)
        partial = quantised
    if args.to_ollama:
        from transformers import AutoTokenizer

        from alignkit.commands.export_targets import write_modelfile

        write_modelfile(partial, output, AutoTokenizer.from_pretrained(partial))
    partial.rename(output)
    logger.info("Exported %s", output)
    print(f"exported: {output}")
    if args.push_to_hub:
        from alignkit.models.hub_upload import push_to_hub

        print(f"pushed: {push_to_hub(output, args.hub_model_id, token=args.hub_token, private=args.hub_private_repo, commit_message=args.commit_message)}")  # noqa: E501
    return 0


def with_run_calibration_data(args: ExportArguments, adapters: list[str], model_path: str) -> ExportArguments:
    """--load_data_args: --dataset from the args.json of the run behind the exported model (ms-swift's
    load_data_args, as infer reads it)."""
    for candidate in [args.ckpt_dir, *adapters, model_path]:
        if candidate and (Path(candidate) / "args.json").is_file():
            run = json.loads((Path(candidate) / "args.json").read_text())
            if not run.get("dataset"):
                raise AlignkitError(f"--load_data_args: {candidate}/args.json names no dataset; pass --dataset")
            logger.info("--load_data_args: calibration data %s from %s/args.json", run["dataset"], candidate)
            return dataclasses.replace(args, dataset=list(run["dataset"]))
    raise AlignkitError("--load_data_args true needs a model, checkpoint or adapter of an alignkit run (with "
                        "args.json); pass --dataset instead")


def value_head_of(checkpoint: str | None) -> Path | None:
    """A reward-model checkpoint keeps its scalar head beside the LM weights (alignkit.models.reward_model)."""
    from alignkit.models.reward_model import VALUE_HEAD_FILE

    path = Path(checkpoint) / VALUE_HEAD_FILE if checkpoint else None
    return path if path is not None and path.is_file() else None


def default_output(args: ExportArguments, adapters: list[str], model_path: str) -> Path:
    """ms-swift's naming: beside the checkpoint (``<ckpt>-merged``), else in the working directory."""
    source = Path(adapters[0]) if adapters else Path(args.ckpt_dir or model_path)
    method = quant_method(args)
    suffix = "-merged" if method is None else f"-{method}" + (f"-int{args.quant_bits}" if args.quant_bits else "")
    suffix += "-ollama" if args.to_ollama and method is None else ""
    if adapters or args.ckpt_dir:
        return source.with_name(source.name + suffix)
    return Path.cwd() / (source.name + suffix)


def write_merged(model_path: str, adapter: str | None, directory: Path, dtype: str) -> None:
    """Base weights (+ the adapter's update B·A·alpha/r, merged in fp32) saved in ``dtype``."""
    from transformers import AutoTokenizer

    lm = load_causal_lm(model_path, dtype=torch.float32)
    saved_dtype = saved_precision(lm, dtype)
    if adapter is not None:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise AlignkitError(f"--adapters {adapter}: no adapter_config.json there, so it is not a LoRA adapter")
        fit_embeddings_to_adapter(lm, adapter)
        lm = PeftModel.from_pretrained(lm, adapter).merge_and_unload()
        logger.info("Merged adapter %s into %s", adapter, model_path)
    # The checkpoint's tokenizer is the one training used; the base's when the adapter has none.
    tokenizer_source = adapter if adapter and (Path(adapter) / "tokenizer_config.json").is_file() else model_path
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    template = resolve_template(tokenizer)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = template.source  # the built-in template alignkit renders with, made explicit
    lm.generation_config = generation_config_for(lm, template.stop_ids)
    lm.to(saved_dtype).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


def write_merged_vision(model_path: str, adapter: str | None, directory: Path, dtype: str) -> None:
    """A vision-language model's ``write_merged``: the merged image-text-to-text model and its processor."""
    from alignkit.models.load import load_adapters
    from alignkit.vision.model import load_processor, load_vision_model, processor_source

    model = load_vision_model(model_path, dtype=torch.float32)
    saved_dtype = saved_precision(model, dtype)
    if adapter is not None:
        model = load_adapters(model, [adapter], trainable=False).merge_and_unload()
        logger.info("Merged adapter %s into %s", adapter, model_path)
    processor = load_processor(processor_source(adapter, model_path))
    model.generation_config = generation_config_for(model, (processor.tokenizer.eos_token_id,))
    model.to(saved_dtype).save_pretrained(directory, safe_serialization=True)
    processor.save_pretrained(directory)


def saved_precision(lm, dtype: str) -> torch.dtype:
    if dtype != "auto":
        return DTYPES[dtype]
    stored = getattr(lm.config, "dtype", None)  # the dtype the base was saved in
    if isinstance(stored, str):
        stored = DTYPES.get(stored, getattr(torch, stored, None))
    return stored if isinstance(stored, torch.dtype) else torch.float32


def generation_config_for(lm, stop_ids: tuple[int, ...]):
    """The model's generation config, also stopping at the chat template's end-of-turn ids."""
    from transformers import GenerationConfig

    config = lm.generation_config or GenerationConfig.from_model_config(lm.config)
    eos = config.eos_token_id
    eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    eos += [i for i in stop_ids if i not in eos]
    if not eos:
        return config
    config.eos_token_id = eos[0] if len(eos) == 1 else eos
    if config.pad_token_id is None:
        config.pad_token_id = eos[0]
    return config


def write_bnb_quantised(source: Path, directory: Path, args: ExportArguments) -> None:
    """Reload ``source`` through bitsandbytes (4 bits: --bnb_4bit_quant_type nf4|fp4, double quantisation per
    --bnb_4bit_use_double_quant, --bnb_4bit_compute_dtype; 8 bits: LLM.int8) and save it, with the quantisation
    config QLoRA training loads with (alignkit/models/quantization.py). Linear layers are quantised; embeddings,
    norms and the LM head stay in their saved precision."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignkit.models.quantization import bnb_config

    device = "cuda" if torch.cuda.is_available() else "cpu"
    bits = args.quant_bits
    compute = DTYPES[args.bnb_4bit_compute_dtype] if args.bnb_4bit_compute_dtype else (
        torch.bfloat16 if device == "cuda" else torch.float32)
    config = bnb_config(bits, compute_dtype=compute, quant_type=args.bnb_4bit_quant_type,
                        double_quant=args.bnb_4bit_use_double_quant)
    logger.info("Quantising to %d bits with bitsandbytes on %s", bits, device)
    lm = AutoModelForCausalLM.from_pretrained(source, quantization_config=config, device_map=args.device_map or device)
    lm.save_pretrained(directory, safe_serialization=True)
    AutoTokenizer.from_pretrained(source).save_pretrained(directory)
