"""Process reward models (PRMs): one score per reasoning step of an answer, as ms-swift's ``task_type prm``.

Qwen's PRMs (Qwen2.5-Math-PRM-7B/72B, Qwen2.5-Math-7B-PRM800K; architecture ``Qwen2ForProcessRewardModel``)
are a Qwen2 decoder with a two-label head on every position::

    logits = score(model(tokens).last_hidden_state)        score: Linear(d, d) → ReLU → Linear(d, 2)
    step score = softmax(logits at a step tag)[1]           the probability that the step so far is right

Steps are separated by the step tag ``<extra_0>`` written after each step (``"step 1<extra_0>step 2<extra_0>"``);
an answer without any tag is one step: the tag is appended to the last message, as ms-swift's QwenPRMTemplate
does. Every tag in the rendered conversation gets a score, in order. The conversation is rendered with the
tokenizer's chat template and ms-swift's qwen2_5_math default system prompt when the row has none.

The weights load with transformers' own Qwen2 code (``process_reward_model_class`` names them as the
checkpoint does: ``model.*``, ``score.0.*``, ``score.2.*``), so the repository's remote code never runs.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import torch
from torch import nn

from alignkit.data.rows import Message
from alignkit.data.template import ChatEncoder
from alignkit.errors import AlignkitError

logger = logging.getLogger("alignkit")

STEP_TAG = "<extra_0>"
ARCHITECTURES = ("Qwen2ForProcessRewardModel",)
# ms-swift's registered PRMs (model type qwen2_5_prm), recognised by id before anything is downloaded.
KNOWN_IDS = ("qwen/qwen2.5-math-prm-7b", "qwen/qwen2.5-math-7b-prm800k", "qwen/qwen2.5-math-prm-72b")
# ms-swift's qwen2_5_math template's default system prompt (the PRMs' template).
DEFAULT_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


@functools.cache
def process_reward_model_class():
    """Qwen2ForProcessRewardModel with transformers' Qwen2 decoder: (N, T) ids → (N, T, 2) step logits in fp32.
    (Built on first use: transformers loads only when a PRM does.)"""
    from transformers import Qwen2Config, Qwen2Model, Qwen2PreTrainedModel

    class ProcessRewardModel(Qwen2PreTrainedModel):
        config_class = Qwen2Config

        def __init__(self, config: Qwen2Config):
            super().__init__(config)
            self.model = Qwen2Model(config)
            self.score = nn.Sequential(nn.Linear(config.hidden_size, config.hidden_size), nn.ReLU(),
                                       nn.Linear(config.hidden_size, 2))
            self.post_init()

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                use_cache=False).last_hidden_state
            return self.score(hidden.to(self.score[0].weight.dtype)).float()

    return ProcessRewardModel


def is_process_reward_model(model: str | None) -> bool:
    """Whether ``--model`` names a PRM: a directory whose config.json has a PRM architecture, or one of
    ms-swift's registered PRM ids."""
    if model is None:
        return False
    config = Path(model).expanduser() / "config.json"
    if config.is_file():
        try:
            architectures = json.loads(config.read_text()).get("architectures") or []
        except (OSError, ValueError):
            return False
        return any(a in ARCHITECTURES for a in architectures)
    return model.lower() in KNOWN_IDS


class StepScorer:
    """``score(conversations) -> per-step scores``: each conversation ends with the answer being judged."""

    def __init__(self, model: nn.Module, encoder: ChatEncoder, batch_size: int = 8):
        self.model, self.encoder, self.batch_size = model, encoder, batch_size
        tokenizer = encoder.tokenizer
        tag_ids = tokenizer(STEP_TAG, add_special_tokens=False)["input_ids"]
        if len(tag_ids) != 1:
            raise AlignkitError(f"the PRM's tokenizer has no single token for the step tag {STEP_TAG} (it encodes "
                                f"to {tag_ids}); is this a process reward model's tokenizer?")
        self.tag_id = tag_ids[0]

    def encode(self, messages: list[Message]) -> list[int]:
        """The token ids of a conversation with its step tags (one appended to the last message if it has none)."""
        messages = [dict(m) for m in messages]
        if not any(STEP_TAG in (m.get("content") or "") for m in messages):
            messages[-1]["content"] = (messages[-1].get("content") or "") + STEP_TAG
        text = self.encoder.render(self.encoder.system_applied(messages), generation_prompt=False)
        return self.encoder.tokens(text)

    @torch.no_grad()
    def score_ids(self, sequences: list[list[int]]) -> list[list[float]]:
        """The score of each step tag in each token sequence, in order (batches of ``batch_size``, right-padded)."""
        device = self.model.score[0].weight.device
        pad = self.encoder.tokenizer.pad_token_id
        scores = []
        for start in range(0, len(sequences), self.batch_size):
            chunk = sequences[start : start + self.batch_size]
            width = max(len(ids) for ids in chunk)
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in chunk], device=device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in chunk], device=device)
            positive = self.model(ids, mask).softmax(-1)[..., 1]  # (n, T)
            for row, sequence in enumerate(chunk):
                tags = torch.tensor(sequence, device=device) == self.tag_id
                scores.append(positive[row, : len(sequence)][tags].cpu().tolist())
        return scores

    def score(self, conversations: list[list[Message]]) -> list[list[float]]:
        return self.score_ids([self.encode(messages) for messages in conversations])


def load_step_scorer(model: str, *, dtype: str = "auto", system: str | None = None, max_length: int = 1024,
                     batch_size: int = 8, device_map: str | None = None, max_memory: list[str] = ()) -> StepScorer:
    """A PRM (a directory or hub id) ready to score, in ``dtype`` (auto: fp32 on a CPU, exact as the tests need;
    bf16 on a GPU that has it), on the GPU when there is one, or placed by --device_map."""
    from transformers import Qwen2Config

    from alignkit.models.load import _load_error, load_tokenizer, resolve_dtype, resolve_model_path
    from alignkit.models.placement import offload_folder, resolve_flags

    path = resolve_model_path(model)
    placement, memory = resolve_flags(device_map, list(max_memory))
    precision = "fp32" if dtype == "auto" and not torch.cuda.is_available() else resolve_dtype(dtype)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    kwargs = {} if placement is None else {"device_map": placement, "max_memory": memory,
                                           "offload_folder": offload_folder()}
    try:
        config = Qwen2Config.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise _load_error(path, error) from error
    if not any(a in ARCHITECTURES for a in config.architectures or []):
        raise AlignkitError(f"{model}: a process reward model has the architecture {' or '.join(ARCHITECTURES)}; "
                            f"this one has {config.architectures}")
    prm = process_reward_model_class().from_pretrained(path, config=config, dtype=torch_dtype, **kwargs).eval()
    if placement is None:
        prm = prm.to("cuda" if torch.cuda.is_available() else "cpu")
    system = system if system is not None else DEFAULT_SYSTEM
    encoder = ChatEncoder(load_tokenizer(path), max_length=max_length, system=system)
    logger.info("%s is a process reward model: each step (ended by %s) gets a score", model, STEP_TAG)
    return StepScorer(prm, encoder, batch_size)
