"""The one inference loader: a model (or adapter, or checkpoint) ready to answer, text or vision-language.

infer, eval, app and deploy load through ``load_for_answers`` and then handle both kinds alike: the
encoder turns messages (and, for a vision-language model, images) into what ``generation.answers`` and the
server's batch engine take.
"""

from __future__ import annotations

from dataclasses import dataclass

from alignkit.data.template import ChatEncoder
from alignkit.errors import AlignkitError
from alignkit.models.load import load_for_inference
from alignkit.models.placement import refuse_for_vision
from alignkit.vision.encode import VisionEncoder, image_token_id
from alignkit.vision.model import load_vision_for_inference, vision_model_path


@dataclass
class Loaded:
    """A model with adapters applied, in eval mode and placed; ``encoder`` encodes its prompts; ``saved_with``
    is what its checkpoints carry besides the weights (the tokenizer, or a vision-language model's processor)."""

    model: object
    encoder: ChatEncoder | VisionEncoder
    saved_with: object

    @property
    def vision(self) -> bool:
        return isinstance(self.encoder, VisionEncoder)

    @property
    def tokenizer(self):
        return self.encoder.tokenizer

    def encode(self, messages: list, images: list = ()):
        """A conversation so far (and its images) ready for ``generation.answers.generate``."""
        if self.vision:
            return self.encoder.encode_prompt(messages, list(images))
        return self.encoder.encode_prompt(messages)


def load_for_answers(model: str | None, adapters: list[str], ckpt_dir: str | None, dtype: str, *,
                     device_map: str | None = None, max_memory: list[str] = (), max_length: int | None = None,
                     system: str | None = None, trust_remote_code: bool = False, attn_impl: str | None = None,
                     enable_thinking: bool | None = None, use_chat_template: bool = True) -> Loaded:
    """``--model``/``--adapters``/``--ckpt_dir`` (a vision-language model when its config says so, which then
    runs on one device: ``--device_map`` is refused for it), in ``--dtype``. ``max_length``: the longest prompt
    the encoder takes; None: the model's context length. ``trust_remote_code``: a text model's repository code
    may run (--trust_remote_code). ``attn_impl``: --attn_impl (text models). ``enable_thinking``: the chat
    template's switch (--enable_thinking; None: the template's default). ``use_chat_template``: false renders
    prompts with ms-swift's generation template (--use_chat_template false)."""
    if vision_model_path(model, adapters, ckpt_dir) is not None:  # prompts with images: docs/vision.md
        for flag, value in (("--attn_impl", attn_impl), ("--enable_thinking", enable_thinking),
                            ("--use_chat_template", None if use_chat_template else False)):
            if value is not None:
                raise AlignkitError(f"{flag}: applies to text models; a vision-language model loads and renders "
                                    "its prompts with transformers' defaults (leave it out)")
        if trust_remote_code:
            raise AlignkitError("--trust_remote_code: alignkit loads vision-language models with transformers' own "
                                "code only; leave it off for this model")
        refuse_for_vision(device_map, list(max_memory))
        lm, saved_with = load_vision_for_inference(model, adapters, ckpt_dir, dtype)
    else:
        lm, saved_with = load_for_inference(model, adapters, ckpt_dir, dtype, device_map, max_memory,
                                            trust_remote_code, attn_impl)
    max_length = max_length or context_length(lm)
    encoder = encoder_for(lm, saved_with, max_length=max_length, system=system)
    if enable_thinking is not None:
        encoder.chat_template_kwargs = {"enable_thinking": enable_thinking}
    if not use_chat_template:  # ms-swift's generation template (ChatEncoder.encode_plain)
        encoder.use_chat_template = False
    return Loaded(lm, encoder, saved_with)


def context_length(model) -> int:
    """The model's context in tokens (its text model's, for a vision-language model); 4096 if it does not say."""
    return getattr(model.config.get_text_config(), "max_position_embeddings", None) or 4096


def encoder_for(model, tokenizer, *, max_length: int, system: str | None = None) -> ChatEncoder | VisionEncoder:
    """The encoder of a model's prompts: ``tokenizer`` is a tokenizer, or a vision-language model's processor."""
    from transformers import ProcessorMixin

    if isinstance(tokenizer, ProcessorMixin):
        return VisionEncoder(tokenizer, image_token_id(tokenizer, model.config), max_length=max_length, system=system)
    return ChatEncoder(tokenizer, max_length=max_length, system=system)
