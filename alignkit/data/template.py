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
conversation, prompts included; ``+ignore_empty_think`` / ``+ignore_think_prefix`` leave a trained turn's
leading think markup untrained; ``react``, ``hermes``, ``qwen``, ``alpha_umi`` (alone or after a base, SFT only)
weigh the tokens of an answer's tool calls (``Encoded.loss_scale``, see ``loss_weights``). Agent rows (tools,
tool calls, tool results) are rendered by ``--agent_template`` first (``agent_templates``); a tool's result
written into an assistant turn is not trained. The system prompt is the row's own, else ``--system`` (text or a
.txt file), else the template's default, as in ms-swift. ``use_chat_template=False`` is ms-swift's generation template
(``encode_plain``).

The prompt's tokens must be a prefix of prompt+answer's tokens; a template that breaks this (one that
rewrites earlier turns depending on later ones) raises a clear error naming the template.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from alignkit.data.agent_templates import AGENT_TEMPLATES, Part, is_agent_row, render_agent
from alignkit.data.chat_templates import ChatTemplate, prompt_as_held, resolve_template, written_default_system
from alignkit.data.loss_weights import AGENT_WEIGHTINGS, weighted_spans
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

logger = logging.getLogger("alignkit")

IGNORE_INDEX = -100
LOSS_SCALES = ("default", "last_round", "all")
# ms-swift's --loss_scale modifiers that untrain an answer's leading think markup (swift/loss_scale/config): the
# first pattern that matches the start of an assistant turn's rendered text is not trained.
THINK_PREFIXES: dict[str, tuple[str, ...]] = {
    "ignore_empty_think": (
        r"<think>\s*</think>\s*",
        r"<seed:think><seed:cot_budget_reflect>The current thinking budget is 0, so I will directly start answering "
        r"the question\.</seed:cot_budget_reflect>\n</seed:think>\s*",
        r"</think>\s*",
        r"<\|channel>thought\n<channel\|>",
        r"</mm:think>\s*",
    ),
    "ignore_think_prefix": (r"<think>\n?",),
}
# ms-swift's agentflan weighting also reads the user's question; alignkit does not have it.
UNSUPPORTED_LOSS_SCALES = {"agentflan": "agentflan (weights chosen by the user's question) is not supported; use "
                                        "react, hermes, qwen or alpha_umi"}


@dataclass(frozen=True)
class LossScale:
    """A parsed --loss_scale: the base strategy, the think-prefix modifiers (``default+ignore_empty_think``) and the
    agent weighting of tool-call tokens (``hermes``), if any."""

    base: str = "default"
    modifiers: tuple[str, ...] = ()
    weighting: str | None = None

    @property
    def untrained_prefixes(self) -> list[re.Pattern]:
        return [re.compile(p) for name in self.modifiers for p in THINK_PREFIXES[name]]


def parse_loss_scale(text: str) -> LossScale:
    """``"last_round+ignore_empty_think"`` → LossScale("last_round", ("ignore_empty_think",)); ``"hermes"`` →
    LossScale("default", (), "hermes"): a name without a base strategy takes ``default``, as in ms-swift."""
    parts = [part.strip() for part in str(text).split("+")]
    base = parts.pop(0) if parts[0] in LOSS_SCALES else "default"
    weightings = [part for part in parts if part in AGENT_WEIGHTINGS]
    for part in parts:
        if part in UNSUPPORTED_LOSS_SCALES:
            raise AlignkitError(f"--loss_scale {text}: {UNSUPPORTED_LOSS_SCALES[part]}")
        if part not in THINK_PREFIXES and part not in AGENT_WEIGHTINGS:
            raise AlignkitError(
                f"--loss_scale {text}: unknown '{part}'; expected one of {', '.join(LOSS_SCALES)}, optionally "
                f"followed by +{' or +'.join(THINK_PREFIXES)}, or an agent weighting ({', '.join(AGENT_WEIGHTINGS)})")
    if len(weightings) > 1:
        raise AlignkitError(f"--loss_scale {text}: one agent weighting at a time ({' and '.join(weightings)} given)")
    if weightings and base == "all":
        raise AlignkitError(f"--loss_scale {text}: an agent weighting applies to answers; with 'all' ms-swift would "
                            "weigh prompt text too, which alignkit does not do; use default or last_round")
    return LossScale(base, tuple(p for p in parts if p in THINK_PREFIXES), weightings[0] if weightings else None)


def read_system(value: str | None) -> str | None:
    """--system as ms-swift reads it: a value ending in .txt is a file holding the prompt; otherwise the text,
    with the two characters ``\\n`` read as a newline."""
    if value is None or not value.endswith(".txt"):
        return value.replace("\\n", "\n") if value is not None else None
    try:
        return Path(value).expanduser().read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise AlignkitError(f"--system {value}: no such file (a value ending in .txt names a file holding the "
                            "system prompt)") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise AlignkitError(f"--system {value}: cannot read the file ({exc})") from exc


@dataclass
class Encoded:
    """One tokenised sequence; ``labels`` is ``-100`` where no loss is taken. ``loss_scale``: per-token loss weights
    (--loss_scale hermes, react, ...), None when every trained token weighs 1."""

    input_ids: list[int]
    labels: list[int]
    loss_scale: list[float] | None = None

    @property
    def num_trained(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


class Truncated(Exception):
    """The row does not fit --max_length under the 'delete' strategy; the caller drops and counts it."""


def with_system(messages: list[Message], system: str | None, default: str | None = None) -> list[Message]:
    """The system message, in ms-swift's order of priority: the row's own, else --system (``system``), else the
    template's ``default``; none when there is none of them."""
    if messages and messages[0]["role"] == "system":
        return list(messages)
    fallback = system if system is not None else default
    return [{"role": "system", "content": fallback}, *messages] if fallback is not None else list(messages)


class ChatEncoder:
    """Renders conversations with a tokenizer's chat template and derives the loss mask."""

    def __init__(self, tokenizer, *, max_length: int, max_prompt_length: int | None = None,
                 truncation_strategy: str = "delete", system: str | None = None,
                 template: ChatTemplate | None = None, loss_scale: str = "default", use_chat_template: bool = True,
                 agent_template: str | None = None):
        scale = parse_loss_scale(loss_scale)
        if agent_template is not None and agent_template not in AGENT_TEMPLATES:
            raise AlignkitError(f"--agent_template {agent_template}: unknown; alignkit has "
                                f"{', '.join(AGENT_TEMPLATES)}")
        if scale.weighting and not use_chat_template:
            raise AlignkitError(f"--loss_scale {loss_scale} with --use_chat_template false: the generation template "
                                "holds no tool calls to weigh; drop the weighting or use the chat template")
        self.tokenizer = tokenizer
        self.template = template if template is not None else resolve_template(tokenizer)
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.truncation_strategy = truncation_strategy
        self.system = read_system(system)
        self.loss_scale = scale.base
        self.loss_scale_modifiers = scale.modifiers
        self.loss_weighting = scale.weighting
        self.agent_template = agent_template
        self._untrained_prefixes = scale.untrained_prefixes
        self._default_system: list[str | None] = []  # the chat template's own, found once (default_system)
        # use_chat_template=False: ms-swift's generation template (see ``encode_plain``).
        self.use_chat_template = use_chat_template
        self._warned_rounds = False
        self._end_ids = self.tokens(self.template.end_of_assistant) if self.template.end_of_assistant else None

    @property
    def stop_ids(self) -> list[int]:
        """Token ids that end an answer in generation."""
        return list(self.template.stop_ids) or [self.tokenizer.eos_token_id]

    chat_template_kwargs: dict = {}  # extra variables of the chat template (--enable_thinking); set per encoder

    def render(self, messages: list[Message], *, generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.template.source, tokenize=False, add_generation_prompt=generation_prompt,
            **self.chat_template_kwargs)

    def system_applied(self, messages: list[Message]) -> list[Message]:
        return with_system(messages, self.system, self.template.system_message)

    def tokens(self, text: str) -> list[int]:
        # The rendered text already holds BOS/EOS where the template wants them: adding more would double them.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_prompt(self, prompt: list[Message]) -> list[int]:
        """Token ids of a prompt followed by the assistant header, ready for generation."""
        if not self.use_chat_template:
            return self.encode_plain(prompt, set()).input_ids
        return self.tokens(self.render(self.system_applied(prompt), generation_prompt=True))

    def prompt_of(self, row: PromptRow) -> list[int]:
        """A prompt row ready for ``generation.answers.generate`` (``VisionEncoder.prompt_of`` adds its images)."""
        return self.encode_prompt(row.prompt)

    def encode(self, messages: list[Message], train_turns: set[int], source: RowSource | None = None,
               *, every_token: bool = False, parts: dict[int, list[Part]] | None = None) -> Encoded:
        """Encode one conversation (system prompt already applied); assistant turns at ``train_turns`` get labels
        (``every_token``: all tokens do, for ``--loss_scale all``). ``parts``: an agent turn's pieces (see
        ``agent_templates``); an untrained piece gets no labels, and --loss_scale's weighting weighs the others."""
        if not self.use_chat_template:
            return self.fit(self.encode_plain(messages, train_turns, source, every_token=every_token), source)
        full_text = self.render(messages, generation_prompt=False)
        full_ids = self.tokens(full_text)
        labels = list(full_ids) if every_token else [IGNORE_INDEX] * len(full_ids)
        for index in sorted(train_turns):
            if messages[index]["role"] != "assistant":
                raise DataError("only assistant turns can be trained", **_where(source), field="messages")
            start = self._checked_prefix(self._prompt_text(messages[:index], full_text), full_text, full_ids)
            end = self._checked_prefix(self.render(messages[: index + 1], generation_prompt=False), full_text, full_ids)
            end = self._end_of_assistant(full_text, full_ids, messages, index, start, end)
            labels[start:end] = full_ids[start:end]
            untrained = self._untrained_prefix(messages, index, full_text, full_ids, start)
            labels[start:untrained] = [IGNORE_INDEX] * (untrained - start)
        scale = None if every_token else self._token_weights(messages, train_turns, parts or {}, full_text, full_ids)
        if scale is not None:
            labels = [IGNORE_INDEX if weight == 0 else label for label, weight in zip(labels, scale)]
            trained = [weight for label, weight in zip(labels, scale) if label != IGNORE_INDEX]
            scale = None if all(weight == 1 for weight in trained) else [
                weight if label != IGNORE_INDEX else 0.0 for label, weight in zip(labels, scale)]
        if train_turns and all(label == IGNORE_INDEX for label in labels):
            # An all-masked sequence makes a mean loss 0/0: the classic NaN. It is never trained on.
            raise DataError("the answer renders to no trainable tokens", **_where(source))
        return self.fit(Encoded(full_ids, labels, scale), source)

    def _token_weights(self, messages: list[Message], train_turns: set[int], parts: dict[int, list[Part]],
                       full_text: str, full_ids: list[int]) -> list[float] | None:
        """Per-token weights of the trained turns' pieces: 0 for a tool result written into the turn, the
        weighting's for the rest (``loss_weights.weigh`` on each piece, as ms-swift weighs each response context);
        None when nothing weighs other than 1. A token that straddles two pieces takes the later one's weight."""
        segments = []  # (first character, end character, weight)
        for index in sorted(train_turns):
            turn = parts.get(index) or [Part(messages[index]["content"])]
            if self.loss_weighting or not all(part.trained for part in turn):
                segments += weighted_spans(turn, self._content_at(messages, index, full_text), self.loss_weighting)
        if not segments:
            return None
        boundaries: dict[int, int] = {}

        def token_at(char: int) -> int:  # tokens wholly before ``char``
            if char not in boundaries:
                prefix = self.tokens(full_text[:char])
                boundaries[char] = next((i for i, (a, b) in enumerate(zip(prefix, full_ids)) if a != b),
                                        min(len(prefix), len(full_ids)))
            return boundaries[char]

        scale = [1.0] * len(full_ids)
        for first, end, weight in segments:
            a, b = token_at(first), token_at(end)
            scale[a:b] = [weight] * (b - a)
        return scale

    def _content_at(self, messages: list[Message], index: int, full_text: str) -> int:
        """Where assistant turn ``index``'s content starts in the rendered conversation."""
        content = messages[index]["content"]
        at = full_text.find(content, len(self._prompt_text(messages[:index], full_text)))
        if at < 0:
            raise AlignkitError(
                "the chat template rewrites an assistant turn (trims or edits it), so its tool calls and tool results "
                "cannot be located for --agent_template / --loss_scale; use another --template")
        return at

    def default_system(self) -> str | None:
        """The template's default system prompt (a template config's, or the one its Jinja writes), which the tools
        join under --agent_template hermes as ms-swift's default_system."""
        if not self._default_system:
            self._default_system.append(self.template.system_message if self.template.system_message is not None
                                        else written_default_system(self.render))
        return self._default_system[0]

    def encode_plain(self, messages: list[Message], train_turns: set[int], source: RowSource | None = None,
                     *, every_token: bool = False) -> Encoded:
        """ms-swift's generation template (--use_chat_template false, for base models): BOS (where the tokenizer
        adds one) + the last round's query + its answer + EOS, each part tokenised on its own as ms-swift does; no
        system prompt, no chat markers. Worked example: [user "2+3=", assistant "5"] → ``<s>`` "2+3=" "5" ``</s>``,
        the answer and EOS trained. A prompt (no answer) ends after the query, ready for generation."""
        turns = [m for m in messages if m["role"] != "system"]
        answer = turns[-1]["content"] if turns and turns[-1]["role"] == "assistant" else None
        before = turns[:-1] if answer is not None else turns
        query = before[-1]["content"] if before and before[-1]["role"] == "user" else ""
        if len(before) > 1 and not self._warned_rounds:
            self._warned_rounds = True
            logger.warning("--use_chat_template false: the generation template holds one round; earlier turns of "
                           "multi-round rows are left out, as ms-swift does")
        bos = [self.tokenizer.bos_token_id] if self._adds_bos() else []
        ids = bos + self.tokens(query)
        labels = list(ids) if every_token else [IGNORE_INDEX] * len(ids)
        if answer is not None:
            if self.tokenizer.eos_token_id is None:
                raise AlignkitError("--use_chat_template false ends each answer with the EOS token, but the "
                                    "tokenizer has none")
            trained = every_token or bool(train_turns)
            # A leading think block that --loss_scale ...+ignore_empty_think leaves untrained is its own part.
            match = next((m for p in self._untrained_prefixes if (m := p.match(answer))), None)
            skipped = self.tokens(match.group(0)) if match is not None and match.group(0) and not every_token else []
            rest = self.tokens(answer[len(match.group(0)):] if skipped else answer) + [self.tokenizer.eos_token_id]
            ids += skipped + rest
            labels += [IGNORE_INDEX] * len(skipped) + (rest if trained else [IGNORE_INDEX] * len(rest))
        if train_turns and all(label == IGNORE_INDEX for label in labels):
            raise DataError("the answer renders to no trainable tokens", **_where(source))
        return Encoded(ids, labels)

    def _adds_bos(self) -> bool:
        """Whether the tokenizer puts a BOS token before text by default (ms-swift's auto_add_bos test)."""
        bos = self.tokenizer.bos_token_id
        return bos is not None and self.tokenizer("a")["input_ids"][:1] == [bos]

    def _untrained_prefix(self, messages: list[Message], index: int, full_text: str, full_ids: list[int],
                          start: int) -> int:
        """Where training starts in assistant turn ``index`` under --loss_scale ...+ignore_empty_think (or
        +ignore_think_prefix): after the tokens that lie wholly inside the think markup the turn's rendered text
        starts with (the answer's own, or one the chat template writes, as Qwen3's does for an answer without)."""
        if not self._untrained_prefixes:
            return start
        prompt_text = self._prompt_text(messages[:index], full_text)
        if not full_text.startswith(prompt_text):
            raise AlignkitError(
                f"--loss_scale {'+'.join((self.loss_scale, *self.loss_scale_modifiers))}: the chat template renders "
                "a conversation's beginning differently inside the whole conversation, so the answer's think markup "
                "cannot be located; drop the modifier or use another --template")
        match = next((m for p in self._untrained_prefixes if (m := p.match(full_text, len(prompt_text)))), None)
        if match is None or not match.group(0):
            return start
        # Tokens both tokenisations share lie wholly inside prompt + markup; one that runs on into the answer's
        # text stays trained.
        prefix = self.tokens(full_text[: match.end()])
        shared = next((i for i, (a, b) in enumerate(zip(prefix, full_ids)) if a != b), min(len(prefix), len(full_ids)))
        return max(start, shared)

    def _end_of_assistant(self, full_text: str, full_ids: list[int], messages: list[Message], index: int,
                          start: int, end: int) -> int:
        """With a template config's ``end_of_assistant``, ColossalChat's rule (split_templated_prompt_into_chunks):
        the trained span ends after the first ``end_of_assistant`` that follows the answer's text, wherever it is
        (chatglm3's ``<|user|>`` opens the next turn); when none follows, after the answer's text. A token that
        runs on past that point is left untrained."""
        if not self._end_ids:
            return end
        content = messages[index]["content"]
        at = full_text.find(content, len(self._prompt_text(messages[:index], full_text))) if content else -1
        if at < 0:  # the template rewrites the answer (trims it, ...): its turn's own markers decide
            n = len(self._end_ids)
            return next((stop for stop in range(end, start + n - 1, -1) if full_ids[stop - n : stop] == self._end_ids),
                        end)
        stop = at + len(content)
        following = full_text.find(self.template.end_of_assistant, stop)
        if following >= 0:
            stop = following + len(self.template.end_of_assistant)
        prefix = self.tokens(full_text[:stop])
        shared = next((i for i, (a, b) in enumerate(zip(prefix, full_ids)) if a != b), min(len(prefix), len(full_ids)))
        return max(start, shared)

    def _prompt_text(self, messages: list[Message], full_text: str) -> str:
        return prompt_as_held(self.render, messages, full_text)

    def _checked_prefix(self, text: str, full_text: str, full_ids: list[int]) -> int:
        """Tokens of ``text`` (the conversation's beginning), checked to be a token prefix of the whole."""
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

    def fit(self, encoded: Encoded, source: RowSource | None) -> Encoded:
        """Apply --max_prompt_length / --max_length per --truncation_strategy (never silently)."""
        ids, labels, scale = encoded.input_ids, encoded.labels, encoded.loss_scale
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
            return Encoded(ids[cut:], labels[cut:], scale[cut:] if scale is not None else None)
        # right: cut the prompt to its limit from the left, then the end of the answer.
        end = over_prompt + self.max_length
        ids, labels = ids[over_prompt:end], labels[over_prompt:end]
        if all(label == IGNORE_INDEX for label in labels):
            raise Truncated(what)
        return Encoded(ids, labels, scale[over_prompt:end] if scale is not None else None)

    # --- canonical rows -------------------------------------------------------------------------------

    def encode_conversation(self, row: ConversationRow) -> Encoded:
        """SFT: every assistant turn is trained (``--loss_scale last_round``: the last; ``all``: every token). An agent
        row (tools, tool calls, tool results) is rendered by --agent_template first."""
        messages, parts = self._agent_rendered(row) if is_agent_row(row.messages, row.tools) else (
            self.system_applied(row.messages), {})
        assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if not assistant:
            raise DataError(
                "the conversation has no assistant turn to train on", **_where(row.source), field="messages"
            )
        trained = assistant[-1:] if self.loss_scale == "last_round" else assistant
        last = parts.get(assistant[-1], [])
        if self.loss_scale == "last_round" and not all(part.trained for part in last):
            # ms-swift's last round starts after the last tool result, inside the turn react writes it into.
            cut = max(i for i, part in enumerate(last) if not part.trained)
            parts = {**parts, assistant[-1]: [Part(p.text, p.trained and i > cut) for i, p in enumerate(last)]}
        return self.encode(messages, set(trained), row.source, every_token=self.loss_scale == "all", parts=parts)

    def _agent_rendered(self, row: ConversationRow) -> tuple[list[Message], dict[int, list[Part]]]:
        if self.agent_template is None:
            raise DataError("the row has tools, tool calls or tool results; choose how they are written with "
                            f"--agent_template ({', '.join(AGENT_TEMPLATES)})", **_where(row.source), field="messages")
        if not self.use_chat_template:
            raise AlignkitError("--agent_template with --use_chat_template false: the generation template holds one "
                                "round, not a conversation with tool calls")
        system = self.system if self.system is not None else self.default_system()
        rendered = render_agent(row.messages, row.tools, self.agent_template, system, row.source)
        return rendered.messages, rendered.parts

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
        if self.loss_weighting:
            raise AlignkitError(f"--loss_scale {self.loss_weighting} weighs tokens of SFT answers; preference and KTO "
                                "losses take no per-token weights")
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
