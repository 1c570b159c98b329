"""Chat template → token ids with exact loss masks.

The tokenizer's own chat template renders each conversation; the trained span of an assistant turn is
the text between ``render(messages[:i], add_generation_prompt=True)`` and ``render(messages[:i+1])``:
the answer plus the template's end-of-turn marker. Everything else is labelled ``-100``.

Worked example (ChatML, as in SmolLM2)::

    messages = [user "2+3?", assistant "5"]
    text     = "<|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\n2+3?<|im_end|>\\n<|im_start|>assistant\\n5<|im_end|>\\n"
    labels   = -100 for every token up to and including "assistant\\n", then the ids of "5<|im_end|>\\n"

The prompt's tokens must be a prefix of prompt+answer's tokens; a template that breaks this (one that
rewrites earlier turns depending on later ones) raises a clear error naming the template.
"""

from __future__ import annotations

from dataclasses import dataclass

from alignkit.data.rows import ConversationRow, Message, PreferenceRow, RowSource, UnpairedRow
from alignkit.errors import AlignkitError, DataError

IGNORE_INDEX = -100


@dataclass
class Encoded:
    """One tokenised sequence; ``labels`` is ``-100`` where no loss is taken."""

    input_ids: list[int]
    labels: list[int]

    @property
    def num_trained(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


class Truncated(Exception):
    """The row does not fit --max_length under the 'delete' strategy; the caller drops and counts it."""


def with_system(messages: list[Message], system: str | None) -> list[Message]:
    """Replace (or add) the system message when --system is given."""
    if system is None:
        return list(messages)
    rest = [m for m in messages if m["role"] != "system"]
    return [{"role": "system", "content": system}, *rest]


class ChatEncoder:
    """Renders conversations with a tokenizer's chat template and derives the loss mask."""

    def __init__(self, tokenizer, *, max_length: int, max_prompt_length: int | None = None,
                 truncation_strategy: str = "delete", system: str | None = None):
        if not getattr(tokenizer, "chat_template", None):
            raise AlignkitError(
                f"the tokenizer of {tokenizer.name_or_path!r} has no chat template; use an instruct/chat model"
            )
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.truncation_strategy = truncation_strategy
        self.system = system

    def render(self, messages: list[Message], *, generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )

    def tokens(self, text: str) -> list[int]:
        # The rendered text already holds BOS/EOS where the template wants them: adding more would double them.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_prompt(self, prompt: list[Message]) -> list[int]:
        """Token ids of a prompt followed by the assistant header, ready for generation."""
        return self.tokens(self.render(with_system(prompt, self.system), generation_prompt=True))

    def encode(self, messages: list[Message], train_turns: set[int], source: RowSource | None = None) -> Encoded:
        """Encode one conversation (system prompt already applied); assistant turns at ``train_turns`` get labels."""
        full_ids = self.tokens(self.render(messages, generation_prompt=False))
        labels = [IGNORE_INDEX] * len(full_ids)
        for index in sorted(train_turns):
            if messages[index]["role"] != "assistant":
                raise DataError("only assistant turns can be trained", **_where(source), field="messages")
            start = self._checked_prefix(messages[:index], full_ids, generation_prompt=True)
            end = self._checked_prefix(messages[: index + 1], full_ids, generation_prompt=False)
            labels[start:end] = full_ids[start:end]
        return self._fit(Encoded(full_ids, labels), source)

    def _checked_prefix(self, messages: list[Message], full_ids: list[int], *, generation_prompt: bool) -> int:
        prefix = self.tokens(self.render(messages, generation_prompt=generation_prompt))
        if full_ids[: len(prefix)] != prefix:
            raise AlignkitError(
                f"the chat template of {self.tokenizer.name_or_path!r} does not render a conversation's "
                "beginning as a prefix of the whole conversation, so the trained tokens cannot be located "
                "exactly. Pass a model whose template renders turns independently."
            )
        return len(prefix)

    def _fit(self, encoded: Encoded, source: RowSource | None) -> Encoded:
        """Apply --max_prompt_length / --max_length per --truncation_strategy (never silently)."""
        ids, labels = encoded.input_ids, encoded.labels
        first_trained = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(ids))
        prompt_limit = self.max_prompt_length if self.max_prompt_length is not None else self.max_length - 1
        over_prompt = max(0, first_trained - prompt_limit)
        over_total = max(0, len(ids) - self.max_length)
        if not over_prompt and not over_total:
            return encoded
        strategy = self.truncation_strategy
        what = f"{len(ids)} tokens (prompt {first_trained}) exceed --max_length {self.max_length}"
        if self.max_prompt_length is not None:
            what += f" / --max_prompt_length {self.max_prompt_length}"
        if strategy == "raise":
            raise DataError(what, **_where(source))
        if strategy == "delete":
            raise Truncated(what)
        if strategy == "left":
            cut = max(over_prompt, over_total)
            if cut >= first_trained:  # the answer alone is too long: cutting into it would be silent damage
                raise Truncated(what)
            return Encoded(ids[cut:], labels[cut:])
        # right: cut the prompt to its limit from the left, then the end of the answer.
        ids, labels = ids[over_prompt:], labels[over_prompt:]
        ids, labels = ids[: self.max_length], labels[: self.max_length]
        if all(label == IGNORE_INDEX for label in labels):
            raise Truncated(what)
        return Encoded(ids, labels)

    # --- canonical rows -------------------------------------------------------------------------------

    def encode_conversation(self, row: ConversationRow, *, all_turns: bool = True) -> Encoded:
        messages = with_system(row.messages, self.system)
        assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if not assistant:
            raise DataError("the conversation has no assistant turn to train on", **_where(row.source), field="messages")
        return self.encode(messages, set(assistant if all_turns else assistant[-1:]), row.source)

    def encode_pair(self, row: PreferenceRow) -> tuple[Encoded, Encoded]:
        """Chosen and rejected sequences; only the final, diverging answer turns are trained."""
        prompt = with_system(row.prompt, self.system)
        return (self._encode_answer(prompt, row.chosen, row.source),
                self._encode_answer(prompt, row.rejected, row.source))

    def encode_unpaired(self, row: UnpairedRow) -> Encoded:
        """KTO: the prompt and its one completion; the completion's assistant turns are trained."""
        return self._encode_answer(with_system(row.prompt, self.system), row.completion, row.source)

    def _encode_answer(self, prompt: list[Message], answer: list[Message], source: RowSource | None) -> Encoded:
        messages = prompt + answer
        trained = {len(prompt) + i for i, m in enumerate(answer) if m["role"] == "assistant"}
        return self.encode(messages, trained, source)


def _where(source: RowSource | None) -> dict:
    return {"file": source.file, "row": source.row} if source is not None else {}
