"""Reward and value models for online RL: a transformer backbone plus a d_model → 1 head.

``--reward_model`` is either an ``rm`` run's checkpoint (a LoRA adapter or a full causal LM, with
``value_head.safetensors`` beside it) or any decoder sequence-classification checkpoint with one label
(``AutoModelForSequenceClassification``, whose head is ``score``: ms-swift's `rm` output, Skywork or
OpenRLHF reward models). Both become a ``TokenScalarModel``:

    values = head(backbone(tokens).last_hidden_state)      (N, T): one scalar per position
    reward = values at the last real token of prompt + answer

A sequence classifier reads, as transformers' forward does, the last token that is not its config's pad
token (a sequence ending in pad ids, e.g. pad = eos, is read before them). PPO's value model starts as a
copy of the reward model (ms-swift loads its critic from --reward_model too) and is trained with the policy.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from alignkit.data.collate import SequenceCollator
from alignkit.data.rows import Message
from alignkit.data.template import IGNORE_INDEX, ChatEncoder, Encoded, Truncated
from alignkit.errors import AlignkitError
from alignkit.models.colossal_checkpoint import is_colossal_scalar_checkpoint, load_colossal_scalar
from alignkit.models.packing import Packed, pack, packed_attention_mask, supports_packing
from alignkit.models.reward_model import VALUE_HEAD_FILE, load_value_head, save_value_head

logger = logging.getLogger("alignkit")


class TokenScalarModel(nn.Module):
    """One scalar per position (a reward or a value) for online RL; the ``rm`` run trains a
    ``SequenceRewardModel`` (an LM plus head, one score per sequence) and is read back as this."""

    def __init__(self, backbone: nn.Module, head: nn.Linear, pad_token_id: int | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        # A sequence classifier's config pad id: scoring skips a sequence's trailing tokens of this id, as
        # transformers' forward does. None (an rm checkpoint): the last token, as the rm run trained it.
        self.pad_token_id = pad_token_id

    def forward(self, input_ids, attention_mask, position_ids=None) -> torch.Tensor:
        """input_ids, attention_mask, position_ids (N, T) → values (N, T) in fp32."""
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state  # (N, T, D), after the final norm
        return self._head(hidden)

    def packed_values(self, packed: Packed) -> torch.Tensor:
        """Values at the positions ``packed.keep`` marks, (K,) fp32 in their row-major order: the numbers
        ``forward`` gives at the same tokens of the padded batch (``alignkit.models.packing.pack`` lays them out)."""
        return self._head(self._packed_hidden(packed)[packed.keep])

    def packed_last_values(self, packed: Packed) -> torch.Tensor:
        """The value at each packed sequence's last token, (N,) fp32: a reward, as ``forward`` reads it."""
        return self._head(self._packed_hidden(packed)[packed.last_rows, packed.last_nodes])

    def _packed_hidden(self, packed: Packed) -> torch.Tensor:
        return self.backbone(
            input_ids=packed.input_ids, position_ids=packed.position_ids,
            attention_mask=packed_attention_mask(self.backbone, packed), use_cache=False,
        ).last_hidden_state  # (R, L, D)

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1).float()

    def save_pretrained(self, directory, safe_serialization: bool = True) -> None:
        """The backbone (adapter or weights) and the head, in the layout of an ``rm`` checkpoint."""
        self.backbone.save_pretrained(directory, safe_serialization=safe_serialization)
        save_value_head(self.head, Path(directory))

    def load_trained(self, directory: Path) -> None:
        """Load what ``save_pretrained`` wrote into this (identically built) model: resume."""
        from alignkit.models.weights import load_model_weights

        load_model_weights(self.backbone, directory)
        self.head.load_state_dict(load_value_head(directory).state_dict())


def load_scalar_model(
    path: str, *, adapters: list[str], base_model: str | None = None
) -> tuple[TokenScalarModel, object]:
    """A reward model from an ``rm`` checkpoint, a ColossalChat RewardModel checkpoint (``colossal_checkpoint``)
    or a sequence-classification model; adapters are merged.

    Returns (model in fp32, eval mode, frozen; its tokenizer). ``base_model`` overrides the base named in an
    adapter checkpoint's ``adapter_config.json``; for a ColossalChat checkpoint without config.json or tokenizer
    it is the model trained from (ColossalChat's --rm_pretrain), which supplies them.
    """
    from alignkit.models.load import load_causal_lm, load_tokenizer, resolve_model_path

    directory = Path(path)
    if (directory / VALUE_HEAD_FILE).is_file():
        if (directory / "adapter_config.json").is_file():
            base = base_model or json.loads((directory / "adapter_config.json").read_text())["base_model_name_or_path"]
            lm = _merged(load_causal_lm(resolve_model_path(base)), [str(directory), *adapters])
        else:
            lm = _merged(load_causal_lm(str(directory)), adapters)
        head = load_value_head(directory)
        pad_token_id = None
    elif is_colossal_scalar_checkpoint(directory):
        if adapters:
            raise AlignkitError(f"--reward_adapters with {path}, a ColossalChat reward model: its weights are whole "
                                "(ColossalChat merges LoRA into them); drop --reward_adapters")
        backbone, head = load_colossal_scalar(directory, config_from=base_model)
        model = TokenScalarModel(backbone, head).float().eval().requires_grad_(False)
        tokenizer_source = str(directory) if _has_tokenizer(directory) else base_model
        if tokenizer_source is None:
            raise AlignkitError(f"{path}: a ColossalChat reward model without tokenizer files; name the model it was "
                                "trained from (ColossalChat's --rm_pretrain), or put its tokenizer files beside it")
        return model, load_tokenizer(tokenizer_source)
    else:
        lm = _merged(load_sequence_classifier(path), adapters)
        head, pad_token_id = lm.score, lm.config.get_text_config().pad_token_id
    backbone = getattr(lm, lm.base_model_prefix)
    model = TokenScalarModel(backbone, head, pad_token_id).float().eval().requires_grad_(False)
    return model, load_tokenizer(str(directory) if directory.is_dir() else path)


def _has_tokenizer(directory: Path) -> bool:
    return any((directory / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def load_value_model(path: str) -> TokenScalarModel:
    """PPO's value model from its own checkpoint (``--value_model``): a reward-model checkpoint of any layout
    ``load_scalar_model`` reads, head included (ColossalChat's --critic_checkpoint_path), or a plain model whose
    backbone gets a new d_model → 1 head with a bias, in nn.Linear's default initialisation, as ColossalChat's
    ``Critic(--rm_pretrain)`` starts. fp32, eval mode, frozen (``trainable_value_model`` makes it train)."""
    from transformers import AutoModel

    directory = Path(path)
    if (directory / VALUE_HEAD_FILE).is_file() or is_colossal_scalar_checkpoint(directory):
        return load_scalar_model(path, adapters=[])[0]
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    if any(a.endswith("ForSequenceClassification") for a in (config.architectures or [])):
        return load_scalar_model(path, adapters=[])[0]
    backbone = AutoModel.from_pretrained(path, dtype=torch.float32)
    head = nn.Linear(backbone.get_input_embeddings().embedding_dim, 1)
    return TokenScalarModel(backbone, head).float().eval().requires_grad_(False)


def load_sequence_classifier(path: str, dtype: torch.dtype = torch.float32, **placement):
    """A transformers ``*ForSequenceClassification`` checkpoint with one label, as a reward model; anything
    else is refused with what it is. ``placement``: from_pretrained's device_map/max_memory/offload_folder."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    hint = (
        f"--reward_model {path}: expected an `alignkit rlhf --rlhf_type rm` checkpoint ({VALUE_HEAD_FILE} beside "
        "the adapter or model) or a sequence-classification model with one label (num_labels 1: one score "
        "per sequence)"
    )
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise AlignkitError(f"{hint}; it could not be read ({error})") from error
    if not any(a.endswith("ForSequenceClassification") for a in (config.architectures or [])):
        raise AlignkitError(f"{hint}; its architectures are {config.architectures}")
    if config.num_labels != 1:
        raise AlignkitError(f"{hint}; it has num_labels {config.num_labels}, a classifier over "
                            f"{config.num_labels} classes rather than a scalar reward")
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype, **placement)
    if not isinstance(getattr(model, "score", None), nn.Linear):
        raise AlignkitError(f"{hint}; its head is not a `score` linear layer on every position (decoder models only)")
    return model


def _merged(model, adapters: list[str]):
    """Apply LoRA adapters one after the other and merge them into the weights."""
    from peft import PeftModel

    for adapter in adapters:
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise AlignkitError(
                f"--reward_adapters {adapter}: no adapter_config.json there, so it is not a LoRA adapter"
            )
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model


@torch.no_grad()
def score_conversations(
    model: TokenScalarModel,
    encoder: ChatEncoder,
    conversations: list[list[Message]],
    *,
    batch_size: int,
    packed: bool = True,
) -> torch.Tensor:
    """The reward of each conversation (its last turn is the judged answer): (N,) fp32 on the CPU.

    Conversations are rendered with the reward model's own chat template, exactly as an ``rm`` run
    trained on them; a too-long one loses its beginning (the encoder's 'left' strategy), never the answer.
    ``packed`` (with sdpa or eager attention): each batch runs as packed rows in which a prefix that
    several conversations share (GRPO's G answers to one prompt, a common system prompt) is run once;
    the same rewards as the padded batch.
    """
    encoded = []
    for index, messages in enumerate(conversations):
        try:
            messages = encoder.system_applied(messages)
            encoded.append((index, encoder.encode(messages, {len(messages) - 1})))
        except Truncated as error:
            raise AlignkitError(
                f"the answer of completion {index} alone is too long for the reward model ({error})"
            ) from error
    return _score_encoded(model, encoded, encoder.tokenizer.pad_token_id, batch_size=batch_size, packed=packed)


def score_token_ids(model: TokenScalarModel, sequences: list[list[int]], *, pad_id: int, batch_size: int,
                    packed: bool = True) -> torch.Tensor:
    """The reward of each token sequence, read at its last token: prompts that arrived as ids (ColossalChat's
    prepared prompts) + their completions, scored without re-rendering, as ColossalChat's reward model does.
    The reward model reads the policy's vocabulary (checked when it is loaded). (N,) fp32 on the CPU."""
    encoded = [(i, Encoded(list(ids), [IGNORE_INDEX] * (len(ids) - 1) + [ids[-1]]))
               for i, ids in enumerate(sequences)]
    return _score_encoded(model, encoded, pad_id, batch_size=batch_size, packed=packed)


def _score_encoded(model: TokenScalarModel, encoded: list, pad_id: int, *, batch_size: int,
                   packed: bool) -> torch.Tensor:
    if model.pad_token_id is not None:
        encoded = [(i, read_up_to_last_non_pad(e, model.pad_token_id)) for i, e in encoded]
    collate = SequenceCollator(pad_id)
    device = model.head.weight.device
    use_packing = packed and supports_packing(model.backbone)
    scores = []
    for start in range(0, len(encoded), batch_size):
        batch = collate(encoded[start : start + batch_size]).to(device)
        if use_packing:
            scores.append(model.packed_last_values(pack(batch, share_prefixes=True)).cpu())
            continue
        values = model(batch.input_ids, batch.attention_mask)  # (n, T), right-padded
        last = batch.attention_mask.sum(-1) - 1  # (n,)
        scores.append(values[torch.arange(len(last), device=device), last].cpu())
    return torch.cat(scores)


def read_up_to_last_non_pad(encoded: Encoded, pad_token_id: int) -> Encoded:
    """The sequence up to its last token that is not ``pad_token_id``: where transformers' sequence
    classifier reads its score (``(arange(T) * (ids != pad)).argmax()``). Causal attention makes the
    dropped tail irrelevant to that position, so every path (padded, packed) then reads the last token.

        ids [7, 9, 2, 2], pad 2  ->  [7, 9]        ids [2, 2], pad 2  ->  [2] (transformers reads position 0)
    """
    ids = encoded.input_ids
    end = len(ids)
    while end > 1 and ids[end - 1] == pad_token_id:
        end -= 1
    return encoded if end == len(ids) else Encoded(ids[:end], encoded.labels[:end])


class RewardModelFunction:
    """A reward model as a GRPO reward function: scores prompt + completion."""

    def __init__(
        self, model: TokenScalarModel, encoder: ChatEncoder, batch_size: int, name: str, *, packed: bool = True
    ):
        self.model, self.encoder, self.batch_size, self.__name__ = model, encoder, batch_size, name
        self.packed = packed  # --padding_free

    def __call__(self, completions: list[str], prompts: list[list[Message]]) -> list[float]:
        conversations = [[*p, {"role": "assistant", "content": c}] for p, c in zip(prompts, completions)]
        return score_conversations(
            self.model, self.encoder, conversations, batch_size=self.batch_size, packed=self.packed
        ).tolist()


@dataclass
class ClassifierScorer:
    """A sequence-classification reward model for infer and eval: ``score`` as ``RewardScorer.score`` gives
    it, with the rewards PPO and GRPO would give (``score_conversations``)."""

    model: TokenScalarModel
    encoder: ChatEncoder
    batch_size: int = 8
    packed: bool = True

    def score(self, conversations: list[list[Message]]) -> list[float]:
        """One reward per conversation (each ends with the assistant answer being judged)."""
        return score_conversations(self.model, self.encoder, conversations, batch_size=self.batch_size,
                                   packed=self.packed).tolist()


def load_reward_scorer(path: str, *, model: str | None = None, dtype: str = "auto", max_length: int = 1024,
                       system: str | None = None, batch_size: int = 8, device_map: str | None = None,
                       max_memory: list[str] = ()):
    """infer's and eval's --reward_model, of either kind: an ``rm`` checkpoint (``load_reward_model``, with
    ``model`` as a LoRA checkpoint's base) or a sequence-classification model with one label. A scorer with
    ``score(conversations) -> list[float]``; conversations longer than ``max_length`` lose their beginning."""
    from alignkit.models.load import load_tokenizer, resolve_dtype
    from alignkit.models.placement import offload_folder, resolve_flags
    from alignkit.models.reward_model import load_reward_model

    if (Path(path) / VALUE_HEAD_FILE).is_file():
        return load_reward_model(path, model=model, dtype=dtype, max_length=max_length, system=system,
                                 batch_size=batch_size, device_map=device_map, max_memory=max_memory)
    if is_colossal_scalar_checkpoint(path):
        # ColossalChat's RewardModel (backbone + value_head with bias): --model names what it was trained from
        # when the checkpoint has no config.json / tokenizer (ColossalChat's --rm_pretrain). fp32, one device.
        scalar, tokenizer = load_scalar_model(path, adapters=[], base_model=model)
        scalar = scalar.to("cuda" if torch.cuda.is_available() else "cpu")
        encoder = ChatEncoder(tokenizer, max_length=max_length, truncation_strategy="left", system=system)
        return ClassifierScorer(scalar, encoder, batch_size)
    if model is not None:
        logger.info("--reward_model %s is a whole sequence-classification model: --model %s is not its base",
                    path, model)
    placement, memory = resolve_flags(device_map, list(max_memory))
    # Scores should not depend on autocast: on CPU, "auto" keeps exact fp32 weights (as load_for_inference).
    precision = "fp32" if dtype == "auto" and not torch.cuda.is_available() else resolve_dtype(dtype)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    kwargs = {} if placement is None else {"device_map": placement, "max_memory": memory,
                                           "offload_folder": offload_folder()}
    classifier = load_sequence_classifier(path, torch_dtype, **kwargs)
    scalar = TokenScalarModel(getattr(classifier, classifier.base_model_prefix), classifier.score,
                              classifier.config.get_text_config().pad_token_id).eval()
    if placement is None:
        scalar = scalar.to("cuda" if torch.cuda.is_available() else "cpu")
    encoder = ChatEncoder(load_tokenizer(path), max_length=max_length, truncation_strategy="left", system=system)
    # A model split over devices (--device_map) runs padded batches; packing builds its own attention mask.
    return ClassifierScorer(scalar, encoder, batch_size, packed=placement is None)


def value_model_from(reward_model: TokenScalarModel, *, lora: dict | None) -> TokenScalarModel:
    """PPO's value model: a trainable copy of the reward model (LoRA on the backbone when ``lora`` gives
    rank/alpha/dropout/target_modules; the head is always trained in full)."""
    import copy

    return trainable_value_model(copy.deepcopy(reward_model), lora=lora)


def trainable_value_model(value: TokenScalarModel, *, lora: dict | None) -> TokenScalarModel:
    """``value`` made trainable: in full, or LoRA on the backbone (``lora`` as ``value_model_from``) with the
    head in full."""
    value = value.train().requires_grad_(True)
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        from alignkit.models.load import lora_targets

        config = LoraConfig(
            r=lora["rank"],
            lora_alpha=lora["alpha"],
            lora_dropout=lora["dropout"],
            target_modules=lora_targets(lora["target_modules"]),
        )
        value.backbone = get_peft_model(value.backbone, config)
        value.head.requires_grad_(True)
    return value
