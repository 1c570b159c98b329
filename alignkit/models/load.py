"""Load tokenizers and causal LMs (built-in, local directory or hub id) and attach LoRA adapters."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from alignkit.errors import AlignkitError
from alignkit.models import bottleneck_adapter
from alignkit.models.builtin import BUILTIN_MODEL_NAME, builtin_model_dir
from alignkit.models.load_options import LoadOptions
from alignkit.models.placement import (
    check_adapter_placement,
    describe,
    offload_folder,
    resolve_flags,
    split_map,
)

logger = logging.getLogger("alignkit")

# ms-swift's `--lora_target_modules DEFAULT` means the attention projections q/k/v.
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj"]


def resolve_model_path(model: str | None, flag: str = "--model") -> str:
    """Map the user's --model (or ``flag``) to something ``from_pretrained`` takes: a local directory or a hub id."""
    if model is None or model.lower() == BUILTIN_MODEL_NAME:
        return str(builtin_model_dir())
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise AlignkitError(f"{flag} {model}: the directory has no config.json, so it is not a HF model")
        return str(path)
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise AlignkitError(f"{flag} {model}: no such directory")
    return model  # a hub id


def _load_error(model: str, error: Exception) -> AlignkitError:
    """A local directory that does not load (broken config.json, missing or truncated weights, a tokenizer
    file cut short) or a hub id that cannot be fetched: either way the message names it."""
    detail = f"{type(error).__name__}: {str(error).strip()[:500]}"
    if "trust_remote_code" in str(error):
        # ms-swift runs a model's own Python code by default (InternVL2, ...); transformers and alignkit do not.
        return AlignkitError(
            f"{model} needs its own Python code (transformers' trust_remote_code) to load: infer, deploy, app and "
            "export run it with --trust_remote_code true; training runs the architectures transformers implements "
            "(for InternVL use the transformers port, e.g. OpenGVLab/InternVL3-2B-hf; docs/vision.md lists the "
            "families)")
    if Path(model).expanduser().exists():
        return AlignkitError(f"cannot load the model in {model} ({detail})")
    from alignkit.models.registry import model_type_of_hub_id

    entry = model_type_of_hub_id(model)
    named = f" (ms-swift's --model_type {entry.name})" if entry is not None else ""
    return AlignkitError(
        f"could not load '{model}'{named} from the model hub ({detail}). "
        "If this machine is offline, download the model elsewhere and pass its local directory with --model "
        "(ms-swift's offline spelling: --model_id_or_path DIR --check_model_is_latest false)."
    )


def load_tokenizer(model_path: str, revision: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, revision=revision, trust_remote_code=trust_remote_code)
    except Exception as error:  # each broken file raises its parser's own error type
        raise _load_error(model_path, error) from error
    if tokenizer.pad_token is None:
        # Padding positions are masked out everywhere; any id works, EOS is the usual choice.
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_causal_lm(model_path: str, revision: str | None = None, dtype: torch.dtype = torch.float32, *,
                   device_map=None, max_memory: dict | None = None, options: LoadOptions | None = None,
                   trust_remote_code: bool = False):
    """``device_map``/``max_memory``: transformers' own (see alignkit/models/placement.py); None loads on the CPU
    (a quantised model on this process's device). ``options``: attention, quantisation, config overrides.
    ``trust_remote_code``: run the model repository's own code (--trust_remote_code; off, as in transformers)."""
    from transformers import AutoModelForCausalLM

    placement = {}
    if device_map is not None:
        placement = {"device_map": device_map, "max_memory": max_memory, "offload_folder": offload_folder()}
    extra = options.from_pretrained_kwargs(model_path, revision, device_map) if options else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(model_path, revision=revision, dtype=dtype,
                                                     trust_remote_code=trust_remote_code, **{**placement, **extra})
    except Exception as error:  # each broken file raises its parser's own error type
        raise _load_error(model_path, error) from error
    if split_map(model) is not None:
        logger.info("Model layers by device (--device_map): %s", describe(split_map(model)))
    return model


def load_sequence_classifier(model_path: str, revision: str | None = None, dtype: torch.dtype = torch.float32, *,
                             num_labels: int, problem_type: str, pad_token_id: int, device_map=None,
                             max_memory: dict | None = None, options: LoadOptions | None = None):
    """The model's backbone with a ``num_labels``-output head (transformers' AutoModelForSequenceClassification:
    a new head is initialised as the model's other linear layers), pooled at each row's last token that is not
    ``pad_token_id``; ``problem_type`` is kept in its config, so a checkpoint reloads with the same loss."""
    from transformers import AutoModelForSequenceClassification

    placement = {}
    if device_map is not None:
        placement = {"device_map": device_map, "max_memory": max_memory, "offload_folder": offload_folder()}
    extra = options.from_pretrained_kwargs(model_path, revision, device_map) if options else {}
    head = {"num_labels": num_labels, "problem_type": problem_type, "pad_token_id": pad_token_id}
    if "config" in extra:  # a config the options rewrote: the head's settings go into it, not beside it
        for key, value in head.items():
            setattr(extra["config"], key, value)
        head = {}
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            model_path, revision=revision, dtype=dtype, **head, **{**placement, **extra})
    except ValueError as error:
        if "Unrecognized configuration class" not in str(error):
            raise _load_error(model_path, error) from error
        raise AlignkitError(f"--task_type seq_cls: transformers has no sequence-classification class for {model_path} "
                            f"({str(error).splitlines()[0][:200]})") from error
    except Exception as error:  # each broken file raises its parser's own error type
        raise _load_error(model_path, error) from error
    if split_map(model) is not None:
        logger.info("Model layers by device (--device_map): %s", describe(split_map(model)))
    return model


def lora_targets(names: list[str]) -> str | list[str]:
    upper = [name.upper() for name in names]
    if upper in (["ALL"], ["ALL-LINEAR"]):
        return "all-linear"
    if upper == ["DEFAULT"]:
        return list(DEFAULT_LORA_TARGETS)
    return list(names)


def add_lora(model, *, rank: int, alpha: int, dropout: float, target_modules: list[str],
             task_type: str = "CAUSAL_LM"):
    """``task_type`` SEQ_CLS (a sequence classifier) makes peft train and save the classification head in full
    (its ``modules_to_save``), as ms-swift does for seq_cls."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=lora_targets(target_modules),
        task_type=task_type,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as error:  # e.g. target modules the model does not have
        raise AlignkitError(f"--lora_target_modules {' '.join(target_modules)}: {error}") from error


def load_adapters(model, adapters: list[str], *, trainable: bool):
    """Load one or more saved LoRA adapters; the first becomes active (and trainable when asked). An ms-swift Adapter
    checkpoint (--tuner_type adapter) is attached as the model's bottleneck adapters, alone."""
    from peft import PeftModel

    if adapters and bottleneck_adapter.saved_config(adapters[0]) is not None:
        if len(adapters) > 1:
            raise AlignkitError(f"--adapters {' '.join(adapters)}: {adapters[0]} is an ms-swift Adapter checkpoint "
                                "(bottleneck adapters), which loads alone")
        return bottleneck_adapter.load(model, adapters[0], trainable=trainable)
    for index, adapter in enumerate(adapters):
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise AlignkitError(f"--adapters {adapter}: no adapter_config.json there, so it is not a LoRA adapter")
        fit_embeddings_to_adapter(model, adapter)
        try:
            if index == 0:
                model = PeftModel.from_pretrained(model, adapter, is_trainable=trainable)
            else:
                model.load_adapter(adapter, adapter_name=f"adapter_{index}")
        except Exception as error:  # a broken config or weights file, or an adapter for another model
            detail = f"{type(error).__name__}: {str(error).strip()[:500]}"
            raise AlignkitError(f"--adapters {adapter}: cannot load the adapter ({detail})") from error
    return model


def disable_dropout(model) -> int:
    """Set every ``nn.Dropout``'s probability to 0, LoRA's included, as TRL's ``disable_dropout_in_model``
    (attention dropout given as a config float is left as the model has it; it is 0 in most causal LMs). Without
    it a padded and a packed forward of the same rows draw different masks and drift apart; PPO's and GRPO's
    rollout log-probs would not match their training forward. Returns the number of modules set."""
    modules = [module for module in model.modules() if isinstance(module, torch.nn.Dropout)]
    for module in modules:
        module.p = 0.0
    return len(modules)


def model_max_length(model_path: str, revision: str | None = None) -> int | None:
    """The longest sequence the model takes, as ms-swift reads it (HfConfigFactory.get_max_model_len): the smallest
    of the length keys in its config or its language model's sub-config (a vision-language model's text_config;
    never the vision encoder's), else the tokenizer's model_max_length when it names one; None when neither does."""
    from transformers import AutoConfig, AutoTokenizer

    keys = ("seq_length", "max_position_embeddings", "n_positions", "model_max_length", "seq_len", "max_seq_len",
            "max_sequence_length", "max_seq_length")
    try:
        config = AutoConfig.from_pretrained(model_path, revision=revision)
    except Exception as error:  # each broken file raises its parser's own error type
        raise _load_error(model_path, error) from error
    configs = [config] + [getattr(config, name) for name in ("language_config", "llm_config", "text_config")
                          if getattr(config, name, None) is not None]
    found = [[getattr(c, key) for c in configs if isinstance(getattr(c, key, None), int)] for key in keys]
    limits = [values[0] for values in found if values]  # per key, the first config that has it (as ms-swift)
    if limits:
        return min(limits)
    limit = AutoTokenizer.from_pretrained(model_path, revision=revision).model_max_length
    return limit if limit < 1e9 else None  # transformers' "no limit" is 1e30


def fit_embeddings_to_adapter(model, adapter: str) -> None:
    """An adapter trained with --new_special_tokens saves the grown embeddings (--modules_to_save embed_tokens):
    the base's are resized to their row count before the adapter loads."""
    import json
    import struct

    path = Path(adapter) / "adapter_model.safetensors"
    if not path.is_file():
        return
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    rows = {entry["shape"][0] for key, entry in header.items() if "embed_tokens" in key and key.endswith("weight")
            and isinstance(entry, dict) and "lora_" not in key}
    vocab = model.get_input_embeddings().weight.shape[0]
    if len(rows) == 1 and vocab not in rows:
        model.resize_token_embeddings(rows.pop())
        logger.info("Embeddings resized from %d to %d rows to take the adapter %s", vocab,
                    model.get_input_embeddings().weight.shape[0], adapter)


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def resolve_dtype(name: str) -> str:
    """Map --dtype to one of fp32 / bf16 / fp16, resolving 'auto' for the hardware at hand."""
    name = name.lower()
    aliases = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
    name = aliases.get(name, name)
    if name == "auto":
        if torch.cuda.is_available():
            chosen = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        else:
            # CPUs with native bf16 (AVX512-BF16, AMX) run bf16 autocast about 1.7x faster than fp32.
            chosen = "bf16" if cpu_supports_bf16() else "fp32"
        logger.info("--dtype auto: using %s", chosen)
        return chosen
    if name == "bf16" and not torch.cuda.is_available() and not cpu_supports_bf16():
        logger.warning("This CPU has no native bf16 support; bf16 autocast will be slow. Consider --dtype fp32.")
    return name


def cpu_supports_bf16() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_checkpoint(model: str | None, adapters: list[str], ckpt_dir: str | None) -> tuple[str | None, list[str]]:
    """--ckpt_dir (ms-swift) names a run's checkpoint: an adapter or a full model directory. An adapter
    (--ckpt_dir or the first of --adapters) without --model brings its own base (``adapter_base_model``).
    Returns (model, adapters)."""
    if ckpt_dir is None:
        if model is None and adapters:
            model = adapter_base_model(adapters[0])
        return model, list(adapters)
    path = Path(ckpt_dir)
    if (path / "adapter_config.json").is_file() or bottleneck_adapter.saved_config(path) is not None:
        return model or adapter_base_model(str(path), flag="--ckpt_dir"), [str(path), *adapters]
    if (path / "config.json").is_file():
        return str(path), list(adapters)
    raise AlignkitError(f"--ckpt_dir {ckpt_dir}: neither a LoRA adapter nor a model directory")


def adapter_base_model(adapter: str, flag: str = "--adapters") -> str | None:
    """The model an adapter was trained on: the ``model`` of its run's args.json (in the checkpoint, else its
    run directory; ms-swift 2.x wrote ``model_id_or_path``/``model_type``), else peft's
    ``base_model_name_or_path`` in adapter_config.json. A recorded path that no longer exists gives way to
    the next source. None when nothing names one."""
    from alignkit.models.registry import SwiftModel, lookup_model_type

    path = Path(adapter).expanduser()
    candidates: list[tuple[str, str]] = []
    for args_file in (folder / name for folder in (path, path.parent) for name in ("args.json", "sft_args.json")):
        saved = _read_json(args_file, flag, adapter)
        base = saved.get("model") or saved.get("model_id_or_path")
        if base is None and isinstance(lookup_model_type(str(saved.get("model_type", ""))), SwiftModel):
            base = lookup_model_type(saved["model_type"]).hf_id
        if isinstance(base, str) and base:
            candidates.append((base, str(args_file)))
    base = _read_json(path / "adapter_config.json", flag, adapter).get("base_model_name_or_path")
    if isinstance(base, str) and base:
        candidates.append((base, str(path / "adapter_config.json")))
    if not candidates:
        return None
    chosen, source = next(((b, s) for b, s in candidates if Path(b).expanduser().exists()), candidates[0])
    logger.info("%s %s: base model %s (from %s)", flag, adapter, chosen, source)
    return chosen


def _read_json(path: Path, flag: str, adapter: str) -> dict:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except (ValueError, OSError) as error:
        raise AlignkitError(f"{flag} {adapter}: {path.name} is unreadable ({error})") from error
    return value if isinstance(value, dict) else {}


def load_for_inference(model: str | None, adapters: list[str], ckpt_dir: str | None, dtype: str,
                       device_map: str | None = None, max_memory: list[str] = (), trust_remote_code: bool = False,
                       attn_impl: str | None = None):
    """Model (with adapters, in eval mode) and tokenizer for infer/eval. Returns (model, tokenizer).
    ``device_map``/``max_memory``: the --device_map/--device_max_memory flags (alignkit/models/placement.py);
    ``attn_impl``: --attn_impl, as training loads with it."""
    model, adapters = resolve_checkpoint(model, adapters, ckpt_dir)
    model_path = resolve_model_path(model)
    placement, memory = resolve_flags(device_map, list(max_memory))
    tokenizer = load_tokenizer(model_path, trust_remote_code=trust_remote_code)
    # Scores and generations should not depend on autocast: on CPU, "auto" keeps exact fp32 weights.
    precision = "fp32" if dtype == "auto" and not torch.cuda.is_available() else resolve_dtype(dtype)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    lm = load_causal_lm(model_path, dtype=torch_dtype, device_map=placement, max_memory=memory,
                        trust_remote_code=trust_remote_code,
                        options=LoadOptions(attn_implementation=attn_impl) if attn_impl else None)
    if adapters:
        check_adapter_placement(lm)
        lm = load_adapters(lm, adapters, trainable=False)
    if placement is None:
        lm = lm.to("cuda" if torch.cuda.is_available() else "cpu")
    return lm.eval(), tokenizer


