"""Reward models: a causal LM (full or with LoRA) plus a scalar head on the last token's final hidden state.

Training (``alignkit rlhf --rlhf_type rm``) wraps the policy in ``SequenceRewardModel``; a checkpoint is the LoRA
adapter (or the full model) with the head beside it in ``value_head.safetensors``. Scoring from Python::

    from alignkit.models.reward_model import load_reward_model
    scorer = load_reward_model("output/v0-.../checkpoint-40")
    scorer.score([[{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "Answer: 5"}]])
    # [2.41]

and from the CLI: ``alignkit infer --reward_model output/v0-.../checkpoint-40 --val_dataset arith-pref-mismatch:test``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from alignkit.data.rows import ConversationRow, Message
from alignkit.data.template import ChatEncoder, Truncated
from alignkit.errors import AlignkitError
from alignkit.models.packing import Packed, packed_attention_mask

VALUE_HEAD_FILE = "value_head.safetensors"


def new_value_head(hidden_size: int) -> nn.Linear:
    """A bias-free d_model → 1 projection with weights from N(0, 1/(d_model + 1)), as Ziegler et al.
    (https://arxiv.org/abs/1909.08593) initialise theirs: the initial rewards then have about unit scale."""
    head = nn.Linear(hidden_size, 1, bias=False)
    nn.init.normal_(head.weight, mean=0.0, std=1 / math.sqrt(hidden_size + 1))
    return head


def colossalchat_value_head(hidden_size: int) -> nn.Linear:
    """ColossalChat's ``RewardModel`` head: a d_model → 1 projection with a bias (torch's default start,
    uniform in ±1/sqrt(d_model)) and weights from N(0, std 1/(d_model + 1))."""
    head = nn.Linear(hidden_size, 1)
    nn.init.normal_(head.weight, mean=0.0, std=1 / (hidden_size + 1))
    return head


VALUE_HEADS = {"ziegler": new_value_head, "colossalchat": colossalchat_value_head}


class SequenceRewardModel(nn.Module):
    """r(x, y) = w · h_T, h_T the final (normed) hidden state at the sequence's last real token."""

    def __init__(self, lm, value_head: nn.Linear | None = None):
        super().__init__()
        self.lm = lm
        hidden_size = lm.get_input_embeddings().embedding_dim
        self.value_head = value_head if value_head is not None else new_value_head(hidden_size)

    @property
    def config(self):
        return self.lm.config

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, *,
                packed: Packed | None = None, **model_inputs) -> torch.Tensor:
        """input_ids, attention_mask (N, T), right-padded → rewards (N,) in fp32. ``model_inputs``: a
        vision-language model's pixel inputs. Or ``packed``, the same N sequences laid out by
        ``alignkit.models.packing.pack`` (a pair's prompt once): each reward is read at its sequence's last token,
        the same numbers as the padded forward."""
        # logits_to_keep=1: the LM head's (N, T, V) logits are not needed, only the hidden states.
        if packed is not None:
            out = self.lm(input_ids=packed.input_ids, position_ids=packed.position_ids,
                          attention_mask=packed_attention_mask(self.lm, packed), output_hidden_states=True,
                          logits_to_keep=1, use_cache=False)
            return self._head(out.hidden_states[-1][packed.last_rows, packed.last_nodes])  # (N,)
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                      logits_to_keep=1, use_cache=False, **model_inputs)
        hidden = out.hidden_states[-1]  # (N, T, D), after the final norm
        last = attention_mask.sum(-1) - 1  # (N,) index of the last real token
        return self._head(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])  # (N,)

    def _head(self, picked: torch.Tensor) -> torch.Tensor:
        """(N, D) last-token hidden states → (N,) rewards. In fp32 even under bf16 autocast: early in training
        the chosen/rejected gap is ~1e-2, bf16's step at 1.0."""
        with torch.autocast(picked.device.type, enabled=False):
            bias = None if self.value_head.bias is None else self.value_head.bias.float()
            return nn.functional.linear(picked.float(), self.value_head.weight.float(), bias).squeeze(-1)

    def save_pretrained(self, directory, safe_serialization: bool = True) -> None:
        self.lm.save_pretrained(directory, safe_serialization=safe_serialization)
        save_value_head(self.value_head, Path(directory))


def save_value_head(head: nn.Linear, directory: Path) -> None:
    """The head's weight (1, D), and its bias where it has one (a ColossalChat reward model's or critic's)."""
    from safetensors.torch import save_file

    weight = head.weight.detach().float().cpu().contiguous()  # (1, D)
    tensors = {"weight": weight}
    if head.bias is not None:
        tensors["bias"] = head.bias.detach().float().cpu().contiguous()  # (1,)
    save_file(tensors, str(directory / VALUE_HEAD_FILE), metadata={"hidden_size": str(weight.shape[1])})


def load_value_head(directory: Path) -> nn.Linear:
    from safetensors.torch import load_file

    path = Path(directory) / VALUE_HEAD_FILE
    if not path.is_file():
        raise AlignkitError(f"{directory}: no {VALUE_HEAD_FILE}, so this is not a reward-model checkpoint "
                            "(train one with `alignkit rlhf --rlhf_type rm`)")
    tensors = load_file(str(path))
    return linear_head(tensors["weight"], tensors.get("bias"))


def linear_head(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    """A d_model → 1 head holding ``weight`` (1, D) and, if given, ``bias`` (1,)."""
    head = nn.Linear(weight.shape[1], 1, bias=bias is not None)
    with torch.no_grad():
        head.weight.copy_(weight)
        if bias is not None:
            head.bias.copy_(bias)
    return head


@dataclass
class RewardScorer:
    model: SequenceRewardModel
    encoder: ChatEncoder
    batch_size: int = 8

    @torch.no_grad()
    def score(self, conversations: list[list[Message]]) -> list[float]:
        """One reward per conversation (each ends with the assistant answer being judged)."""
        from alignkit.data.collate import SequenceCollator

        encoded = []
        for index, messages in enumerate(conversations):
            try:
                encoded.append((index, self.encoder.encode_conversation(ConversationRow(messages))))
            except Truncated as error:
                raise AlignkitError(
                    f"conversation {index}: its last answer alone is too long to score ({error})"
                ) from error
        collate = SequenceCollator(self.encoder.tokenizer.pad_token_id)
        device = self.model.value_head.weight.device
        rewards = []
        for start in range(0, len(encoded), self.batch_size):
            batch = collate(encoded[start : start + self.batch_size]).to(device)
            rewards += self.model(batch.input_ids, batch.attention_mask).tolist()
        return rewards


def load_reward_model(checkpoint: str, *, model: str | None = None, dtype: str = "auto", max_length: int = 1024,
                      system: str | None = None, batch_size: int = 8, device_map: str | None = None,
                      max_memory: list[str] = ()) -> RewardScorer:
    """A scorer for a reward-model checkpoint: a LoRA adapter (base model from its config, or ``model``) or a
    full model, with ``value_head.safetensors`` beside it. Conversations longer than ``max_length`` lose
    their beginning, never the judged answer. ``device_map``/``max_memory``: --device_map/--device_max_memory."""
    from alignkit.models.load import load_for_inference
    from alignkit.models.placement import input_device

    head = load_value_head(Path(checkpoint))
    lm, tokenizer = load_for_inference(model, [], checkpoint, dtype, device_map, max_memory)
    # The head sits where the model's inputs go: a split model's outputs come back there.
    reward_model = SequenceRewardModel(lm, head.to(input_device(lm), next(lm.parameters()).dtype)).eval()
    # Only the judged (last) answer counts as "trained", so left truncation may cut the history, never it.
    encoder = ChatEncoder(tokenizer, max_length=max_length, truncation_strategy="left", system=system,
                          loss_scale="last_round")
    return RewardScorer(reward_model, encoder, batch_size)
