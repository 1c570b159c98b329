"""Chat template → token ids with exact loss masks.

The chat template (the tokenizer's own, a built-in one, or a template config: see ``chat_templates``)
renders each conversation; the trained span of an assistant turn is the text between
``render(messages[:i], add_generation_prompt=True)`` and ``render(messages[:i+1])``: the answer plus the
template's end-of-turn marker (cut after ``end_of_assistant`` when a template config names one).
Everything else is labelled ``-100``.

Worked example (ChatML, as in SmolLM2)::

    messages = [user "2+3?", assistant "5"]
    text     = "<|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\n2+3?<|im_end|>\\n"
               "<|im_start|>assistant\\n5<|im_end|>\\n"
    labels   = -100 for every token up to and including "assistant\\n", then the ids of "5<|im_end|>\\n"

Which assistant turns are trained is ``--loss_scale`` (ms-swift's names): ``default`` trains every
assistant turn of an SFT conversation and the answer of a preference pair or KTO row (never its
prompt's earlier turns); ``last_round`` only the final assistant turn; ``all`` every token of an SFT
conversation, prompts included.

The prompt's tokens must be a prefix of prompt+answer's tokens; a template that breaks this (one that
rewrites earlier turns depending on later ones) raises a clear error naming the template.
"""

from __future__ import annotations

from dataclasses import dataclass

from alignkit.data.chat_templates import ChatTemplate, resolve_template
from alignkit.data.rows import (
    ClassificationRow,
    ConversationRow,
    Message,
    PreferenceRow,
    PromptRow,
    RowSource,
    UnpairedRow,
)
from alignkit.errors import AlignkitError, DataError

IGNORE_INDEX = -100
LOSS_SCALES = ("default", "last_round", "all")


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


def with_system(messages: list[Message], system: str | None, default: str | None = None) -> list[Message]:
    """Replace (or add) the system message when --system is given; else add ``default`` where there is none."""
    if system is None:
        if default is not None and not (messages and messages[0]["role"] == "system"):
            return [{"role": "system", "content": default}, *messages]
        return list(messages)
    rest = [m for m in messages if m["role"] != "system"]
    return [{"role": "system", "content": system}, *rest]


class ChatEncoder:
    """Renders conversations with a tokenizer's chat template and derives the loss mask."""

    def __init__(self, tokenizer, *, max_length: int, max_prompt_length: int | None = None,
                 truncation_strategy: str = "delete", system: str | None = None,
                 template: ChatTemplate | None = None, loss_scale: str = "default"):
        if loss_scale not in LOSS_SCALES:
            raise AlignkitError(f"--loss_scale {loss_scale}: expected one of {', '.join(LOSS_SCALES)}")
        self.tokenizer = tokenizer
        self.template = template if template is not None else resolve_template(tokenizer)
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.truncation_strategy = truncation_strategy
        self.system = system
        self.loss_scale = loss_scale
        self._end_ids = self.tokens(self.template.end_of_assistant) if self.template.end_of_assistant else None

    @property
    def stop_ids(self) -> list[int]:
        """Token ids that end an answer in generation."""
        return list(self.template.stop_ids) or [self.tokenizer.eos_token_id]

    def render(self, messages: list[Message], *, generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.template.source, tokenize=False, add_generation_prompt=generation_prompt
        )

    def system_applied(self, messages: list[Message]) -> list[Message]:
        return with_system(messages, self.system, self.template.system_message)

    def tokens(self, text: str) -> list[int]:
        # The rendered text already holds BOS/EOS where the template wants them: adding more would double them.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_prompt(self, prompt: list[Message]) -> list[int]:
        """Token ids of a prompt followed by the assistant header, ready for generation."""
        return self.tokens(self.render(self.system_applied(prompt), generation_prompt=True))

    def prompt_of(self, row: PromptRow) -> list[int]:
        """A prompt row ready for ``generation.answers.generate`` (``VisionEncoder.prompt_of`` adds its images)."""
        return self.encode_prompt(row.prompt)

    def encode(self, messages: list[Message], train_turns: set[int], source: RowSource | None = None,
               *, every_token: bool = False) -> Encoded:
        """Encode one conversation (system prompt already applied); assistant turns at ``train_turns`` get labels
        (``every_token``: all tokens do, for ``--loss_scale all``)."""
        full_text = self.render(messages, generation_prompt=False)
        full_ids = self.tokens(full_text)
        labels = list(full_ids) if every_token else [IGNORE_INDEX] * len(full_ids)
        for index in sorted(train_turns):
            if messages[index]["role"] != "assistant":
                raise DataError("only assistant turns can be trained", **_where(source), field="messages")
            start = self._checked_prefix(messages[:index], full_text, full_ids, generation_prompt=True)
            end = self._checked_prefix(messages[: index + 1], full_text, full_ids, generation_prompt=False)
            end = self._end_of_assistant(full_ids, start, end)
            labels[start:end] = full_ids[start:end]
        if train_turns and all(label == IGNORE_INDEX for label in labels):
            # An all-masked sequence makes a mean loss 0/0: the classic NaN. It is never trained on.
            raise DataError("the answer renders to no trainable tokens", **_where(source))
        return self._fit(Encoded(full_ids, labels), source)

    def _end_of_assistant(self, full_ids: list[int], start: int, end: int) -> int:
        """With a template config's ``end_of_assistant``, the trained span ends right after its last occurrence."""
        if not self._end_ids:
            return end
        n = len(self._end_ids)
        for stop in range(end, start + n - 1, -1):
            if full_ids[stop - n : stop] == self._end_ids:
                return stop
        raise AlignkitError(
            f"end_of_assistant {self.template.end_of_assistant!r} of {self.template.name} does not occur in the "
            f"rendered assistant turn {self.tokenizer.decode(full_ids[start:end])!r}; fix the template config"
        )

    def _checked_prefix(self, messages: list[Message], full_text: str, full_ids: list[int], *,
                        generation_prompt: bool) -> int:
        text = self.render(messages, generation_prompt=generation_prompt)
        prefix = self.tokens(text)
        if full_ids[: len(prefix)] != prefix:
            which = (f"the chat template of {self.tokenizer.name_or_path!r}" if self.template.name == "tokenizer"
                     else f"the chat template '{self.template.name}'")
            if full_text.startswith(text):
                cause = (f"{which} renders it as a text prefix, but this tokenizer tokenizes the text at the join "
                         f"differently (it ends with {text[-12:]!r})")
            else:
                cause = f"{which} renders earlier turns differently once later turns follow"
            raise AlignkitError(
                f"a conversation's beginning does not tokenize as a prefix of the whole conversation, so the trained "
                f"tokens cannot be located exactly: {cause}. Pass a template that suits this tokenizer "
                "(--template or --template_config)."
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

    def encode_conversation(self, row: ConversationRow) -> Encoded:
        """SFT: every assistant turn is trained (``--loss_scale last_round``: the last; ``all``: every token)."""
        messages = self.system_applied(row.messages)
        assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if not assistant:
            raise DataError(
                "the conversation has no assistant turn to train on", **_where(row.source), field="messages"
            )
        trained = assistant[-1:] if self.loss_scale == "last_round" else assistant
        return self.encode(messages, set(trained), row.source, every_token=self.loss_scale == "all")

    def encode_pair(self, row: PreferenceRow) -> tuple[Encoded, Encoded]:
        """Chosen and rejected sequences; only the final, diverging answer turns are trained."""
        prompt = self.system_applied(row.prompt)
        return (self._encode_answer(prompt, row.chosen, row.source),
                self._encode_answer(prompt, row.rejected, row.source))

    def encode_unpaired(self, row: UnpairedRow) -> Encoded:
        """KTO: the prompt and its one answer; the answer is trained."""
        return self._encode_answer(self.system_applied(row.prompt), row.completion, row.source)

    def encode_prompt_row(self, row: PromptRow) -> Encoded:
        """A prompt ready for generation; nothing is trained. A prompt over --max_length is cut from the left
        (``left``), stops the run (``raise``) or is dropped (otherwise)."""
        ids = self.encode_prompt(row.prompt)
        if len(ids) > self.max_length:
            what = f"the prompt's {len(ids)} tokens exceed --max_length {self.max_length}"
            if self.truncation_strategy == "raise":
                raise DataError(what, **_where(row.source))
            if self.truncation_strategy != "left":
                raise Truncated(what)
            ids = ids[-self.max_length :]
        return Encoded(ids, [IGNORE_INDEX] * len(ids))

    def encode_classified(self, row: ClassificationRow) -> Encoded:
        """seq_cls: the whole conversation, no token trained (the head reads its last token). One that ends with
        the user's turn gets the assistant header, as ms-swift renders a conversation awaiting a reply. Over
        --max_length: left cuts the beginning, right the end, raise stops, delete drops the row."""
        messages = self.system_applied(row.messages)
        ids = self.tokens(self.render(messages, generation_prompt=messages[-1]["role"] == "user"))
        if len(ids) > self.max_length:
            what = f"{len(ids)} tokens exceed --max_length {self.max_length}"
            if self.truncation_strategy == "raise":
                raise DataError(what, **_where(row.source))
            if self.truncation_strategy == "delete":
                raise Truncated(what)
            ids = ids[-self.max_length :] if self.truncation_strategy == "left" else ids[: self.max_length]
        return Encoded(ids, [IGNORE_INDEX] * len(ids))

    def _encode_answer(self, prompt: list[Message], answer: list[Message], source: RowSource | None) -> Encoded:
        if self.loss_scale == "all":
            raise AlignkitError(
                "--loss_scale all trains prompt tokens, which preference and KTO losses must not see; "
                "use default or last_round"
            )
        messages = prompt + answer
        trained = [len(prompt) + i for i, m in enumerate(answer) if m["role"] == "assistant"]
        if self.loss_scale == "last_round":
            trained = trained[-1:]
        return self.encode(messages, set(trained), source)


def _where(source: RowSource | None) -> dict:
    return {"file": source.file, "row": source.row} if source is not None else {}
