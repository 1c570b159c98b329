"""Preference and KTO rows with images → token ids with exact labels and the processor's pixel inputs.

The model's processor renders the conversation (its chat template), expands each image into the model's
image tokens and computes the pixel inputs. ``<image>`` in a message's text marks where an image goes, in
ms-swift's convention; a row with images and no placeholder gets them at the start of its first user turn,
as TRL does. Labels follow the text path's rule: the prompt (rendered with the generation prompt and the
same images) must tokenize as a prefix of prompt + answer; everything after it is trained.

Worked example (LLaVA-style, 4 tokens per image)::

    prompt  = [user "<image>What is shown?"], chosen = [assistant "A cat"], images = [cat.png]
    ids     = <|im_start|>user\\n <image><image><image><image> What is shown?<|im_end|>\\n
              <|im_start|>assistant\\n A cat<|im_end|>\\n
    labels  = -100 up to and including "assistant\\n", then the ids of "A cat<|im_end|>\\n"
    pixels  = {"pixel_values": (1, 3, H, W)}

Truncation never cuts inside an image's tokens: a row over --max_length (or --max_prompt_length) is dropped
and counted, or stops the run with ``--truncation_strategy raise``; it is never shortened.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import torch

from alignkit.data.rows import Message, PreferenceRow, RowSource, UnpairedRow
from alignkit.data.template import IGNORE_INDEX, Encoded, Truncated, read_system, with_system
from alignkit.errors import AlignkitError, DataError
from alignkit.vision.images import load_images, row_image_columns, within_pixels

logger = logging.getLogger("alignkit")

PLACEHOLDER = "<image>"


@dataclass
class VisionEncoded(Encoded):
    """An ``Encoded`` sequence plus its pixel inputs (tensors as the processor returns them for one sequence)
    and the number of image tokens in ``input_ids``."""

    pixels: dict[str, torch.Tensor] = field(default_factory=dict)
    image_tokens: int = 0


def with_image_parts(messages: list[Message], num_images: int, source: RowSource | None) -> list[dict]:
    """Turn ``<image>`` placeholders into the content parts chat templates expect.

    [user "<image>What?"] → [user [{"type": "image"}, {"type": "text", "text": "What?"}]]. With no placeholder
    anywhere, the images go first in the first user turn. The placeholders must match the images one to one.
    """
    count = sum(m["content"].count(PLACEHOLDER) for m in messages if isinstance(m["content"], str))
    if count == 0 and num_images:
        first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
        messages = [dict(m) for m in messages]
        messages[first_user]["content"] = PLACEHOLDER * num_images + messages[first_user]["content"]
        count = num_images
    if count != num_images:
        where = {"file": source.file, "row": source.row} if source is not None else {}
        raise DataError(f"the messages hold {count} '{PLACEHOLDER}' placeholders but the row has {num_images} "
                        "images; they must match one to one", **where, field="messages")
    out = []
    for message in messages:
        if PLACEHOLDER not in message["content"]:
            out.append(message)
            continue
        parts = []
        for piece in re.split(f"({re.escape(PLACEHOLDER)})", message["content"]):
            if piece == PLACEHOLDER:
                parts.append({"type": "image"})
            elif piece:
                parts.append({"type": "text", "text": piece})
        out.append({**message, "content": parts})
    return out


def image_token_id(processor, config) -> int:
    """The id the model replaces with image features (``config.image_token_id``, as every HF VLM names it)."""
    token_id = getattr(config, "image_token_id", None)
    if token_id is None:
        token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    return int(token_id)


class VisionEncoder:
    """Encodes preference and KTO rows for an image-text-to-text model through its processor."""

    def __init__(self, processor, image_token: int, *, max_length: int, max_prompt_length: int | None = None,
                 truncation_strategy: str = "delete", system: str | None = None, max_pixels: int | None = None):
        if getattr(processor, "chat_template", None) is None:
            raise AlignkitError("the model's processor has no chat template, so conversations with images cannot be "
                                "rendered; save one with the processor (processor.chat_template)")
        self.processor = processor
        self.image_token = image_token
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.truncation_strategy = truncation_strategy
        self.system = read_system(system)
        self.max_pixels = max_pixels  # --max_pixels: larger images are scaled down before the processor sees them

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def stop_ids(self) -> list[int]:
        """Token ids that end an answer: the tokenizer's EOS (generation adds the model's own EOS ids)."""
        return [self.tokenizer.eos_token_id]

    def render(self, messages: list[dict], *, generation_prompt: bool) -> str:
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def process(self, text: str, images: list) -> dict[str, torch.Tensor]:
        # The rendered text holds BOS/EOS where the template wants them: adding more would double them.
        return dict(self.processor(text=[text], images=[images] if images else None, add_special_tokens=False,
                                   return_tensors="pt"))

    def encode(self, prompt: list[Message], answer: list[Message], images: list, source: RowSource | None
               ) -> VisionEncoded:
        """prompt + answer with ``images`` → ids, labels (the answer only) and pixel inputs."""
        messages = with_image_parts(with_system(prompt, self.system) + answer, len(images), source)
        prompt_parts = messages[: len(messages) - len(answer)]
        full = self.process(self.render(messages, generation_prompt=False), images)
        prefix = self.process(self.render(prompt_parts, generation_prompt=True), images)["input_ids"][0].tolist()
        ids = full.pop("input_ids")[0].tolist()
        full.pop("attention_mask", None)
        if ids[: len(prefix)] != prefix:
            raise AlignkitError(
                "a prompt with its images does not tokenize as a prefix of prompt + answer, so the trained tokens "
                "cannot be located exactly; the processor's chat template renders earlier turns differently once "
                "later turns follow"
            )
        labels = [IGNORE_INDEX] * len(prefix) + ids[len(prefix):]
        if all(label == IGNORE_INDEX for label in labels):
            raise DataError("the answer renders to no trainable tokens", **_where(source))
        image_tokens = sum(token == self.image_token for token in ids)
        if images and image_tokens == 0:
            raise AlignkitError(f"the processor put no image token (id {self.image_token}) into a row with images; "
                                "its chat template or image token does not match the model's")
        self._check_length(len(ids), len(prefix), image_tokens, source)
        return VisionEncoded(ids, labels, pixels=full, image_tokens=image_tokens)

    def encode_prompt(self, prompt: list[Message], images: list, source: RowSource | None = None) -> VisionEncoded:
        """A prompt with its images followed by the assistant header, ready for generation (no labels)."""
        messages = with_image_parts(with_system(prompt, self.system), len(images), source)
        pixels = self.process(self.render(messages, generation_prompt=True), images)
        ids = pixels.pop("input_ids")[0].tolist()
        pixels.pop("attention_mask", None)
        image_tokens = sum(token == self.image_token for token in ids)
        return VisionEncoded(ids, [IGNORE_INDEX] * len(ids), pixels=pixels, image_tokens=image_tokens)

    def _check_length(self, length: int, prompt_length: int, image_tokens: int, source: RowSource | None) -> None:
        """Refuse or drop an over-long row; shortening it could cut inside an image's tokens."""
        over_total = length > self.max_length
        over_prompt = self.max_prompt_length is not None and prompt_length > self.max_prompt_length
        if not (over_total or over_prompt):
            return
        what = (f"{length} tokens (prompt {prompt_length}, of which {image_tokens} image tokens) exceed --max_length "
                f"{self.max_length}" + (f" / --max_prompt_length {self.max_prompt_length}" if over_prompt else "")
                + "; a vision-language model's rows are never truncated, since a cut inside an image's tokens "
                "breaks the model")
        if self.truncation_strategy == "raise":
            raise DataError(what, **_where(source))
        logger.warning("%s: dropped: %s", _name(source), what)
        raise Truncated(what)

    def encode_pair(self, row: PreferenceRow) -> tuple[VisionEncoded, VisionEncoded]:
        """Chosen with the prompt's images; rejected with ``rejected_images`` when the row has them (same text,
        different image, as in ms-swift), else with the prompt's images too."""
        images, rejected_images = self.row_images(row.extras, row.source)
        chosen = self.encode(row.prompt, row.chosen, images, row.source)
        rejected = self.encode(row.prompt, row.rejected, rejected_images, row.source)
        return chosen, rejected

    def encode_unpaired(self, row: UnpairedRow) -> VisionEncoded:
        images, _ = self.row_images(row.extras, row.source)
        return self.encode(row.prompt, row.completion, images, row.source)

    def prompt_of(self, row) -> VisionEncoded:
        """A prompt row with its images, ready for ``generation.answers.generate`` (as ``ChatEncoder.prompt_of``)."""
        return self.encode_prompt(row.prompt, self.row_images(row.extras, row.source)[0], row.source)

    def row_images(self, extras: dict, source: RowSource | None) -> tuple[list, list]:
        column, rejected_column = row_image_columns(extras)
        images = load_images(extras.get(column), source, column) if column else []
        rejected = load_images(extras[rejected_column], source, rejected_column) if rejected_column else images
        if self.max_pixels is not None:
            images = [within_pixels(image, self.max_pixels) for image in images]
            rejected = [within_pixels(image, self.max_pixels) for image in rejected]
        return images, rejected


def encode_vision_rows(encoder: VisionEncoder, rows: list) -> tuple[list, int]:
    """Rows → [(index, encoded)], dropping (and counting) rows over the length limits."""
    items, dropped = [], 0
    for index, row in enumerate(rows):
        try:
            if isinstance(row, PreferenceRow):
                items.append((index, encoder.encode_pair(row)))
            elif isinstance(row, UnpairedRow):
                items.append((index, encoder.encode_unpaired(row)))
            else:
                raise AlignkitError(f"vision-language training takes preference or KTO rows, not {type(row).__name__}")
        except Truncated:
            dropped += 1
    return items, dropped


def _where(source: RowSource | None) -> dict:
    return {"file": source.file, "row": source.row} if source is not None else {}


def _name(source: RowSource | None) -> str:
    return f"{source.file}, row {source.row}" if source is not None else "a row"
