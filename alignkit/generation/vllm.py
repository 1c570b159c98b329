"""`alignkit infer --infer_backend vllm`: batch inference on vLLM (a CUDA GPU and the vllm package).

The prompts are rendered by the same chat template as the transformers backend and handed to vLLM as
token ids, so both backends see identical inputs; a LoRA adapter is applied per request (LoRARequest).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from alignkit.config.arguments import InferArguments
from alignkit.data.rows import Message
from alignkit.data.template import ChatEncoder
from alignkit.errors import AlignkitError
from alignkit.models.load import load_tokenizer, resolve_checkpoint, resolve_model_path

logger = logging.getLogger("alignkit")


class VllmGenerator:
    def __init__(self, args: InferArguments):
        try:
            import vllm
        except ModuleNotFoundError as error:
            raise AlignkitError("--infer_backend vllm needs the vllm package (pip install vllm) and a CUDA GPU") from error
        if not torch.cuda.is_available():
            raise AlignkitError("--infer_backend vllm needs a CUDA GPU; use --infer_backend transformers on CPU")
        model, adapters = resolve_checkpoint(args.model, args.adapters, args.ckpt_dir)
        if len(adapters) > 1:
            raise AlignkitError("--infer_backend vllm applies one adapter; merge the others with `alignkit export`")
        model_path = resolve_model_path(model)
        self.tokenizer = load_tokenizer(model_path)
        self.encoder = ChatEncoder(self.tokenizer, max_length=args.max_length, system=args.system)
        self.lora = None
        rank = 16
        if adapters:
            from vllm.lora.request import LoRARequest

            rank = json.loads((Path(adapters[0]) / "adapter_config.json").read_text())["r"]
            self.lora = LoRARequest("adapter", 1, adapters[0])
        dtype = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
                 "fp16": "float16", "float16": "float16"}.get(args.dtype, "auto")
        self.llm = vllm.LLM(model=model_path, dtype=dtype, seed=args.seed, enable_lora=bool(adapters),
                            max_lora_rank=max(rank, 8), max_model_len=args.max_length + args.max_new_tokens)
        self.params = vllm.SamplingParams(
            max_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
            top_k=args.top_k if args.top_k > 0 else -1, repetition_penalty=args.repetition_penalty,
            stop_token_ids=self.encoder.stop_ids,  # the chat template's end of turn, as the transformers backend
        )
        logger.info("vLLM %s on %s%s", vllm.__version__, model_path, f" with adapter {adapters[0]}" if adapters else "")

    def generate(self, prompts: list[list[Message]]) -> list[str]:
        inputs = [{"prompt_token_ids": self.encoder.encode_prompt(p)} for p in prompts]
        outputs = self.llm.generate(inputs, self.params, lora_request=self.lora, use_tqdm=False)
        return [output.outputs[0].text for output in outputs]
