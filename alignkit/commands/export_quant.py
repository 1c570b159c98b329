"""`alignkit export --quant_method gptq|gptq_v2|awq|fp8`: quantisation through maintained libraries on a CUDA GPU.

- gptq / gptq_v2: gptqmodel, through transformers' ``GPTQConfig`` (``checkpoint_format`` gptq or gptq_v2),
  calibrated on --dataset; the result loads with transformers + gptqmodel (and vLLM).
- awq: llm-compressor's ``AWQModifier`` (W4A16), calibrated on --dataset; saved compressed (vLLM loads it).
- fp8: transformers' ``FineGrainedFP8Config`` (fp8 weights with block scales), no calibration.

Calibration rows are the conversations of --dataset rendered by the model's chat template, the first
--quant_n_samples of them, each at most --max_length tokens (--truncation_strategy). They are read before the GPU
is asked for, so a wrong --dataset is reported on any machine.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch

from alignkit.config.commands import ExportArguments
from alignkit.errors import AlignkitError

logger = logging.getLogger("alignkit")

CALIBRATED = ("gptq", "gptq_v2", "awq")
PACKAGES = {"gptq": "gptqmodel", "gptq_v2": "gptqmodel", "awq": "llmcompressor", "fp8": None}


def calibration_ids(args: ExportArguments, tokenizer) -> list[list[int]]:
    """Token ids of the first --quant_n_samples conversations of --dataset, rendered by the chat template."""
    from alignkit.commands.infer import fit_prompt
    from alignkit.data.loading import load_dataset_spec
    from alignkit.data.template import ChatEncoder

    encoder = ChatEncoder(tokenizer, max_length=args.max_length)
    samples: list[list[int]] = []
    for spec in args.dataset:
        for row in load_dataset_spec(spec, "sft", seed=42):
            ids = fit_prompt(encoder.tokens(encoder.render(row.messages, generation_prompt=False)), args.max_length,
                             args.truncation_strategy, len(samples))
            if ids is not None:
                samples.append(ids)
            if len(samples) == args.quant_n_samples:
                return samples
    if not samples:
        raise AlignkitError(f"--dataset {' '.join(args.dataset)}: no calibration rows within --max_length "
                            f"{args.max_length}")
    logger.info("Calibrating on %d rows (fewer than --quant_n_samples %d)", len(samples), args.quant_n_samples)
    return samples


def check_gpu_method(method: str) -> None:
    if not torch.cuda.is_available():
        raise AlignkitError(f"--quant_method {method} needs a CUDA GPU (its kernels run there); on this machine use "
                            "--quant_method bnb --quant_bits 4|8, which quantises on the CPU")
    package = PACKAGES[method]
    if package is not None and importlib.util.find_spec(package) is None:
        raise AlignkitError(f"--quant_method {method} needs the {package} package: pip install {package}")


def write_gpu_quantised(source: Path, directory: Path, method: str, args: ExportArguments,
                        calibration: list[list[int]] | None) -> None:
    """Quantise the merged model in ``source`` with ``method`` on the GPU and save it to ``directory``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    logger.info("Quantising with %s on the GPU", method)
    if method == "fp8":
        from transformers import FineGrainedFP8Config

        model = AutoModelForCausalLM.from_pretrained(source, quantization_config=FineGrainedFP8Config(),
                                                     device_map=args.device_map or "cuda")
    elif method in ("gptq", "gptq_v2"):
        from transformers import GPTQConfig

        config = GPTQConfig(bits=args.quant_bits, tokenizer=tokenizer, group_size=args.group_size,
                            dataset=[tokenizer.decode(ids) for ids in calibration], batch_size=args.quant_batch_size,
                            model_seqlen=args.max_length, checkpoint_format=method)
        model = AutoModelForCausalLM.from_pretrained(source, quantization_config=config,
                                                     device_map=args.device_map or "cuda")
    else:
        model = awq_quantised(source, args, calibration)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


def awq_quantised(source: Path, args: ExportArguments, calibration: list[list[int]]):
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.awq import AWQModifier
    from transformers import AutoModelForCausalLM

    # --device_map cpu: llm-compressor then moves one layer at a time to the GPU (a model larger than the GPU)
    model = AutoModelForCausalLM.from_pretrained(source, dtype="auto", device_map=args.device_map or "cuda")
    data = Dataset.from_dict({"input_ids": calibration, "attention_mask": [[1] * len(ids) for ids in calibration]})
    oneshot(model=model, dataset=data, max_seq_length=args.max_length, num_calibration_samples=len(calibration),
            recipe=[AWQModifier(scheme="W4A16", targets=["Linear"], ignore=["lm_head"])])
    return model
