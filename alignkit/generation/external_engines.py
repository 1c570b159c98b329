"""sglang and lmdeploy for `alignkit infer --infer_backend sglang|lmdeploy`: batch inference of text prompts
through their offline engines (their packages and a CUDA GPU; imported only when asked for).

Prompts arrive as token ids rendered by alignkit's chat template, as for the other backends, so every backend
answers the same inputs; each engine only samples. ``generate(prompt ids) -> answers``."""

from __future__ import annotations

import importlib.util

from alignkit.config.commands import InferArguments
from alignkit.errors import AlignkitError
from alignkit.models.load import resolve_checkpoint, resolve_model_path


def require(package: str, backend: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise AlignkitError(f"--infer_backend {backend} needs the {package} package (pip install {package}) and a "
                            "CUDA GPU; --infer_backend transformers runs anywhere")


def base_model_only(args: InferArguments, backend: str) -> str:
    model, adapters = resolve_checkpoint(args.model, args.adapters, args.ckpt_dir)
    if adapters:
        raise AlignkitError(f"--infer_backend {backend} answers with a full model: merge the adapter first "
                            "(`alignkit export --adapters DIR --merge_lora true`) and pass the merged directory")
    return resolve_model_path(model)


class SglangInference:
    def __init__(self, args: InferArguments):
        require("sglang", "sglang")
        import sglang

        self.engine = sglang.Engine(model_path=base_model_only(args, "sglang"), tp_size=args.sglang_tp_size,
                                    context_length=args.sglang_context_length, random_seed=args.seed,
                                    trust_remote_code=args.trust_remote_code)
        self.params = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
                       "top_k": args.top_k if args.top_k > 0 else -1, "repetition_penalty": args.repetition_penalty,
                       "stop": list(args.stop_words) or None}

    def generate(self, prompts: list[list[int]]) -> list[str]:
        return [output["text"] for output in self.engine.generate(input_ids=prompts, sampling_params=self.params)]


class LmdeployInference:
    def __init__(self, args: InferArguments, tokenizer):
        require("lmdeploy", "lmdeploy")
        from lmdeploy import GenerationConfig, TurbomindEngineConfig, pipeline

        self.tokenizer = tokenizer
        engine = TurbomindEngineConfig(tp=args.lmdeploy_tp, session_len=args.lmdeploy_session_len)
        self.pipe = pipeline(base_model_only(args, "lmdeploy"), backend_config=engine)
        self.config = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                       top_p=args.top_p, top_k=args.top_k, repetition_penalty=args.repetition_penalty,
                                       stop_words=list(args.stop_words) or None, random_seed=args.seed)

    def generate(self, prompts: list[list[int]]) -> list[str]:
        # The prompts are already rendered by alignkit's template: lmdeploy must not apply its own.
        texts = [self.tokenizer.decode(ids) for ids in prompts]
        return [response.text for response in self.pipe(texts, gen_config=self.config, do_preprocess=False)]
