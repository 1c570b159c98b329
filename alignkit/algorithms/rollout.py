"""Sampling completions and reading back their token log-probabilities.

A rollout holds prompts left-padded to a common length P, so every completion starts at column P, and
completions right-padded to C tokens::

    prompt_ids      (N, P)  [pad pad p p p | ...]      prompt_mask (N, P)  [0 0 1 1 1]
    completion_ids  (N, C)  [c c c <eot> pad pad]      completion_mask (N, C) [1 1 1 1 0 0]

A completion ends at its first stop token (the template's end-of-turn marker or the tokenizer's EOS),
which is kept and trained: it is the model's decision to stop. ``stopped`` is False for completions cut
at ``max_new_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignkit.data.collate import Batch, left_pad, pad
from alignkit.data.template import IGNORE_INDEX, ChatEncoder, Encoded
from alignkit.models.packing import CHUNK, Layout, pack, packed_attention_mask, supports_packing, token_logps


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # (N, P) left-padded
    prompt_mask: torch.Tensor  # (N, P)
    completion_ids: torch.Tensor  # (N, C) right-padded
    completion_mask: torch.Tensor  # (N, C) 1 up to and including the stop token
    stopped: torch.Tensor  # (N,) bool: the completion ended with a stop token
    # (N, C) the sampling policy's log-probs of the completion tokens, when the generator reports them (a rollout
    # server: --async_generate's π_old)
    behaviour_logprobs: torch.Tensor | None = None

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {key: value for key, value in self.__dict__.items() if value is not None}


def stop_token_ids(encoder: ChatEncoder) -> list[int]:
    """The template's end-of-turn token (``<|im_end|>``, ``<|eot_id|>``, ...), the tokenizer's EOS and the
    template config's stop ids (``encoder.stop_ids``).

    The end-of-turn token is the first token the template renders after an assistant answer.
    """
    tokenizer = encoder.tokenizer
    probe = [{"role": "user", "content": "hi"}]
    prompt = encoder.tokens(encoder.render(probe, generation_prompt=True))
    answer = encoder.tokens(encoder.render([*probe, {"role": "assistant", "content": "ok"}], generation_prompt=False))
    answer_only = encoder.tokens("ok")
    after = answer[len(prompt) + len(answer_only) :]
    stops = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stops += [i for i in encoder.stop_ids if i is not None and i not in stops]
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    if answer[: len(prompt)] == prompt and after and after[0] in special and after[0] not in stops:
        stops.append(after[0])
    return stops




def completion_tensors(completions: list[list[int]], stop_ids: list[int], pad_id: int, max_new_tokens: int,
                       stopped_by_word: list[bool] | None = None):
    """Raw generated ids (stop token and whatever follows included) → (ids (N, C), mask (N, C), stopped (N,)).

    Everything after the first stop token is padding. C is the longest kept completion (at least 1).
    ``stopped_by_word``: completions already cut at a stop word (``cut_at_stop_words``) count as stopped.
    """
    kept, stopped = [], []
    stops = set(stop_ids)
    for index, ids in enumerate(completions):
        ids = list(ids)[:max_new_tokens]
        end = next((i for i, t in enumerate(ids) if t in stops), None)
        kept.append(ids if end is None else ids[: end + 1])
        stopped.append(end is not None or bool(stopped_by_word and stopped_by_word[index]))
    length = max(1, max(len(k) for k in kept))
    out = torch.full((len(kept), length), pad_id, dtype=torch.long)  # (N, C)
    mask = torch.zeros((len(kept), length), dtype=torch.long)  # (N, C)
    for i, k in enumerate(kept):
        out[i, : len(k)] = torch.tensor(k, dtype=torch.long)
        mask[i, : len(k)] = 1
    return out, mask, torch.tensor(stopped)


def behaviour_logprobs(logprobs: list[list[float]], completion_mask: torch.Tensor) -> torch.Tensor:
    """Per-completion token log-probs from a generator → (N, C) aligned with the completion tokens, 0 past each
    completion's end (a completion cut at a stop word keeps the log-probs of the tokens it kept)."""
    out = torch.zeros(completion_mask.shape, dtype=torch.float32)
    for row, values in enumerate(logprobs):
        length = min(len(values), completion_mask.shape[1])
        out[row, :length] = torch.tensor(values[:length], dtype=torch.float32)
    return out * completion_mask


def make_rollout(prompts: list[list[int]], completions: list[list[int]], *, pad_id: int, stop_ids: list[int],
                 max_new_tokens: int, stop_words: list[str] | None = None, tokenizer=None) -> Rollout:
    """Prompt ids and the raw generated ids of each prompt → a padded Rollout; with ``stop_words`` (--stop_words)
    each completion also ends where one of them is complete."""
    prompt_ids, prompt_mask = left_pad(prompts, pad_id)
    by_word = None
    if stop_words:
        # A stop token before the word ends the completion first: cut there, then look for the words.
        stop_set = set(stop_ids)
        completions = [ids[: next((i + 1 for i, t in enumerate(ids) if t in stop_set), len(ids))]
                       for ids in (list(c)[:max_new_tokens] for c in completions)]
        cut = cut_at_stop_words(completions, tokenizer, stop_words)
        completions, by_word = [ids for ids, _ in cut], [found for _, found in cut]
    ids, mask, stopped = completion_tensors(completions, stop_ids, pad_id, max_new_tokens, by_word)
    return Rollout(prompt_ids, prompt_mask, ids, mask, stopped)


class PerRowSampler:
    """A sample from softmax(logits / T) per row, each row drawing from its own seeded generator (the Gumbel-max
    trick: argmax(z/T + g), g ~ Gumbel(0, 1), is distributed as softmax(z/T)), run as a logits processor under
    greedy decoding. A row's tokens then depend on its seed alone, not on the rows batched with it."""

    def __init__(self, seeds: list[int], temperature: float, *, top_k: int = 0, top_p: float = 1.0,
                 min_p: float = 0.0):
        self.seeds, self.temperature = seeds, temperature
        self.top_k, self.top_p, self.min_p = top_k, top_p, min_p
        self.generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.generators is None:
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        uniform = torch.stack([torch.rand(scores.shape[-1], generator=g, device=scores.device, dtype=torch.float32)
                               for g in self.generators])  # (n, V)
        gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-20, max=1 - 1e-7)))
        return filter_logits(scores.float() / self.temperature, top_k=self.top_k, top_p=self.top_p,
                             min_p=self.min_p) + gumbel


def filter_logits(logits: torch.Tensor, *, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> torch.Tensor:
    """Tempered logits (n, V) with the tokens outside top-k, outside the nucleus top-p, or below min_p × the most
    likely token's probability set to −inf (the most likely token always stays), as transformers' and vLLM's
    samplers filter them. top_k 0 (or −1), top_p 1, min_p 0: unchanged."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (n, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= top_p  # mass before the token already reaches top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    if min_p > 0.0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < min_p * probs.max(-1, keepdim=True).values, float("-inf"))
    return logits


def cut_at_stop_words(completions: list[list[int]], tokenizer, stop_words: list[str]) -> list[tuple[list[int], bool]]:
    """Each completion's ids up to and including the token that completes the first of ``stop_words`` (kept, as
    a stop token is), and whether one was found. Decoding is incremental, token by token."""
    out = []
    for ids in completions:
        text, end = "", None
        for index, token in enumerate(ids):
            text += tokenizer.decode([token])
            if any(word in text[-(len(word) + 32):] for word in stop_words):
                end = index
                break
        out.append((list(ids) if end is None else list(ids[: end + 1]), end is not None))
    return out


@dataclass
class HFGenerator:
    """Generation with transformers' ``generate`` and its KV cache, ``batch_size`` sequences at a time.

    Copies of one prompt that sit next to each other (GRPO's G completions of a prompt) share one prefill:
    the prompt's cache is computed once and repeated for its copies, so the prompt's cost is paid once
    per group instead of G times. Sampling is unchanged: every copy still draws its own completion.
    """

    model: object
    pad_id: int
    stop_ids: list[int]
    max_new_tokens: int
    temperature: float
    batch_size: int
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    share_prompt_prefill: bool = True

    @torch.no_grad()
    def __call__(self, prompts: list[list[int]], *, greedy: bool = False,
                 seeds: list[int] | None = None) -> list[list[int]]:
        """Raw completion ids per prompt (the stop token and any padding after it included). ``seeds``: one per
        prompt; each completion is then drawn from its own generator, whatever batch it shares."""
        # top_k / top_p / min_p spelled out, whatever a model's generation config says: the tokens come from the
        # tempered softmax filtered by these flags only (--top_k, --top_p, --min_p; off by default).
        top_k = max(self.top_k, 0)
        sampling = {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": top_k,
                    "min_p": self.min_p or None}
        greedy = greedy or self.temperature <= 0
        if greedy or seeds is not None:
            sampling = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None, "min_p": None}
        if self.repetition_penalty != 1.0:  # a logits processor, so it acts under the seeded sampler too
            sampling["repetition_penalty"] = self.repetition_penalty
        seeded = seeds is not None and not greedy
        completions, done = [], 0
        for chunk in self._chunks(prompts):
            processors = [PerRowSampler(seeds[done : done + len(chunk)], self.temperature, top_k=top_k,
                                        top_p=self.top_p, min_p=self.min_p)] if seeded else None
            completions += self._generate(chunk, sampling, processors)
            done += len(chunk)
        return completions

    def _chunks(self, prompts: list[list[int]]) -> list[list[list[int]]]:
        """Consecutive prompts in chunks of at most ``batch_size``, never splitting a run of copies that fits."""
        runs: list[list[list[int]]] = []
        for prompt in prompts:
            if runs and runs[-1][0] == prompt:
                runs[-1].append(prompt)
            else:
                runs.append([prompt])
        chunks: list[list[list[int]]] = [[]]
        for run in runs:
            while run:
                if chunks[-1] and len(chunks[-1]) + len(run) > self.batch_size:
                    chunks.append([])
                take = self.batch_size - len(chunks[-1])
                chunks[-1] += run[:take]
                run = run[take:]
        return [c for c in chunks if c]

    def _generate(self, prompts: list[list[int]], sampling: dict, processors: list | None = None) -> list[list[int]]:
        from transformers import LogitsProcessorList

        device = next(self.model.parameters()).device
        ids, mask = left_pad(prompts, self.pad_id)  # (n, P)
        ids, mask = ids.to(device), mask.to(device)
        cache = None
        starts = torch.tensor([i == 0 or prompts[i] != prompts[i - 1] for i in range(len(prompts))])  # (n,)
        if self.share_prompt_prefill and not starts.all() and ids.shape[1] > 1:
            # Prefill each distinct prompt but its last token (generate() needs one uncached token to start),
            # then repeat its cache rows for its copies.
            first = starts.nonzero().squeeze(-1).to(device)  # (u,)
            head_mask = mask[first, :-1]
            positions = (head_mask.cumsum(-1) - 1).clamp(min=0)  # as generate() numbers left-padded prompts
            cache = self.model(input_ids=ids[first, :-1], attention_mask=head_mask, position_ids=positions,
                               use_cache=True).past_key_values
            cache.batch_select_indices((starts.cumsum(0) - 1).to(device))  # row of each copy's prompt
        output = self.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=self.max_new_tokens, past_key_values=cache,
            eos_token_id=self.stop_ids, pad_token_id=self.pad_id, use_cache=True, **sampling,
            **({"logits_processor": LogitsProcessorList(processors)} if processors else {}),
        )  # (n, P + new)
        return output[:, ids.shape[1] :].cpu().tolist()

    def sync_weights(self) -> None:
        """Nothing to do: generation runs on the trained model itself."""


def sequence_inputs(experience: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompt + completion as one batch: (input_ids, attention_mask, position_ids), each (N, P + C).

    Positions count real tokens only, as generate() does for left-padded prompts, so a forward pass sees
    each token at the position it was sampled at.
    """
    input_ids = torch.cat([experience["prompt_ids"], experience["completion_ids"]], dim=1)
    attention_mask = torch.cat([experience["prompt_mask"], experience["completion_mask"]], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return input_ids, attention_mask, position_ids


def token_logprobs_and_entropy(logits: torch.Tensor, index: torch.Tensor, *, with_entropy: bool):
    """log softmax(logits).gather(index) and the entropy −Σ p log p, row by row to bound memory.

    logits (N, T, V), index (N, T) → (logprobs (N, T), entropy (N, T) or None), fp32.
    """
    picked, entropies = [], []
    for row_logits, row_index in zip(logits, index):  # (T, V), (T,)
        row_logits = row_logits.float()
        normaliser = torch.logsumexp(row_logits, dim=-1)  # (T,)
        picked.append(row_logits.gather(-1, row_index.unsqueeze(-1)).squeeze(-1) - normaliser)
        if with_entropy:  # a metric only: no graph through the (T, V) softmax
            with torch.no_grad():
                probs = torch.softmax(row_logits, dim=-1)
                entropies.append(normaliser - (probs * row_logits).sum(-1))
    return torch.stack(picked), (torch.stack(entropies) if with_entropy else None)


def completion_logprobs(model, experience: dict[str, torch.Tensor], *, temperature: float, with_entropy: bool = False,
                        layout: Layout | None = None):
    """Log-probs (N, C) of the completion tokens under ``model`` (grad flows if enabled), and their entropy.

    The logits are divided by the sampling temperature, so the log-probs are those of the distribution
    the tokens were drawn from (as TRL does). Padding positions hold garbage; callers mask them. With a
    padding-free ``layout`` (and a model that takes 4-D masks) the same numbers come from packed rows.
    """
    if layout is not None and layout.padding_free and supports_packing(model):

        def packed():
            return packed_completion_logprobs(model, experience, temperature=temperature, with_entropy=with_entropy,
                                              share_prefixes=layout.prefix_sharing)

        if layout.check is None:
            return packed()
        mask = experience["completion_mask"].float()  # (N, C)

        def difference(fast, padded):  # the largest |Δ completion log-prob| per completion token
            delta = ((fast[0].detach().float() - padded[0].float()) * mask).sum(-1).abs()
            return (delta / mask.sum(-1).clamp(min=1)).max()

        return layout.check.run(model, packed, lambda: padded_completion_logprobs(
            model, experience, temperature=temperature, with_entropy=with_entropy), difference)
    return padded_completion_logprobs(model, experience, temperature=temperature, with_entropy=with_entropy)


def padded_completion_logprobs(model, experience: dict[str, torch.Tensor], *, temperature: float,
                               with_entropy: bool = False):
    """``completion_logprobs`` on the padded batch: prompts left-padded, completions right-padded."""
    input_ids, attention_mask, position_ids = sequence_inputs(experience)
    completion_length = experience["completion_ids"].shape[1]
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
        logits_to_keep=completion_length + 1, use_cache=False,
    ).logits[:, :-1]  # (N, C, V): position P−1+t predicts completion token t
    if temperature > 0:
        logits = logits / temperature
    return token_logprobs_and_entropy(logits, experience["completion_ids"], with_entropy=with_entropy)


def as_packable_batch(experience: dict[str, torch.Tensor]) -> Batch:
    """The rollout's sequences (prompt without its left padding, then the completion) right-padded, labelled
    on the completion tokens only: the input ``alignkit.models.packing.pack`` lays out."""
    sequences = []
    for prompt, prompt_mask, completion, completion_mask in zip(
        experience["prompt_ids"], experience["prompt_mask"], experience["completion_ids"], experience["completion_mask"]
    ):
        prompt, completion = prompt[prompt_mask.bool()].tolist(), completion[completion_mask.bool()].tolist()
        sequences.append(Encoded(prompt + completion, [IGNORE_INDEX] * len(prompt) + completion))
    input_ids, attention_mask, labels = pad(sequences, pad_id=0)  # padding is never read: pack drops it
    device = experience["completion_ids"].device
    return Batch(input_ids.to(device), attention_mask.to(device), labels.to(device), list(range(len(sequences))))


def row_entropy(logits: torch.Tensor) -> torch.Tensor:
    """(K, V) logits → (K,) entropies −Σ p log p = logsumexp(z) − Σ p z."""
    return logits.logsumexp(-1) - (logits.softmax(-1) * logits).sum(-1)


def packed_completion_logprobs(model, experience: dict[str, torch.Tensor], *, temperature: float,
                               with_entropy: bool = False, share_prefixes: bool = True):
    """``completion_logprobs`` from packed rows: no padding, and with ``share_prefixes`` the prompt that a
    group's completions (and the system prompt that all of them) begin with runs once. GRPO's G completions
    of a prompt then cost one prompt plus G short answers instead of G padded sequences."""
    packed = pack(as_packable_batch(experience), share_prefixes=share_prefixes)
    logits = model(
        input_ids=packed.input_ids,
        position_ids=packed.position_ids,
        attention_mask=packed_attention_mask(model, packed),
        logits_to_keep=packed.keep,
        use_cache=False,
    ).logits  # (K, V): one row per position that predicts a completion token
    if temperature > 0:
        logits = logits / temperature
    per_token = token_logps(logits, packed.target_rows, packed.target_ids)  # (M,)
    # Targets come sequence by sequence, each in token order: the row-major order of the completion mask.
    mask = experience["completion_mask"].bool()  # (N, C)
    logprobs = per_token.new_zeros(mask.shape).masked_scatter(mask, per_token)  # (N, C)
    if not with_entropy:
        return logprobs, None
    with torch.no_grad():  # a metric only
        rows = torch.cat([row_entropy(chunk.float()) for chunk in logits.detach().split(CHUNK)])  # (K,)
        entropy = rows.new_zeros(mask.shape).masked_scatter(mask, rows[packed.target_rows])  # (N, C)
    return logprobs, entropy


@torch.no_grad()
def batched_logprobs(model, experience: dict[str, torch.Tensor], *, temperature: float, batch_size: int,
                     with_entropy: bool = False, layout: Layout | None = None):
    """``completion_logprobs`` without grad, ``batch_size`` sequences at a time
    (``--local_rollout_forward_batch_size``)."""
    parts = []
    n = experience["completion_ids"].shape[0]
    for start in range(0, n, batch_size):
        chunk = {k: v[start : start + batch_size] for k, v in experience.items()}
        parts.append(completion_logprobs(model, chunk, temperature=temperature, with_entropy=with_entropy,
                                         layout=layout))
    logprobs = torch.cat([p[0] for p in parts])
    entropy = torch.cat([p[1] for p in parts]) if with_entropy else None
    return logprobs, entropy


def reference_logprobs(policy, frozen_reference, experience: dict[str, torch.Tensor], *, temperature: float,
                       batch_size: int, layout: Layout | None = None) -> torch.Tensor:
    """Completion log-probs (N, C) under the reference: a frozen model (full fine-tuning, --ref_model), or the
    policy with its LoRA adapter switched off, which is the starting policy at no memory cost."""
    if frozen_reference is not None:
        return batched_logprobs(frozen_reference, experience, temperature=temperature, batch_size=batch_size,
                                layout=layout)[0]
    with policy.disable_adapter():
        return batched_logprobs(policy, experience, temperature=temperature, batch_size=batch_size, layout=layout)[0]


@dataclass
class EncodedPrompt:
    """One prompt row, ready to sample from: its messages, token ids (with the assistant header) and extra columns."""

    messages: list | None  # None: a prompt that arrived as token ids (ColossalChat's prepared prompts)
    ids: list[int]
    extras: dict


def decode_completions(tokenizer, rollout: Rollout) -> list[str]:
    """The completions as text, without the stop token."""
    return [
        tokenizer.decode(ids[mask.bool()].tolist(), skip_special_tokens=True)
        for ids, mask in zip(rollout.completion_ids, rollout.completion_mask)
    ]


def rollout_metrics(rollout: Rollout) -> dict[str, float]:
    lengths = rollout.completion_mask.sum(-1).float()
    return {
        "completions/mean_length": lengths.mean().item(),
        "completions/max_length": lengths.max().item(),
        "completions/stopped_ratio": rollout.stopped.float().mean().item(),
    }
