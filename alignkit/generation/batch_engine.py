"""Batched, streamed generation for the server and the web UI.

Requests from many clients go into one queue; a worker thread takes whatever is waiting (up to
``max_batch_size`` with the same sampling settings) and answers it with one left-padded ``generate``
call, streaming each row's text back to its own request as tokens come. Requests for different LoRA
adapters share a batch (peft's ``adapter_names``). Example::

    engine = BatchEngine(model, encoder).start()
    job = engine.submit(prompt_ids, SamplingParams(max_tokens=32))
    text = "".join(event.text for event in job.events() if isinstance(event, Delta))

Each row stops on its own: at an end-of-sequence token ("stop"), a stop string ("stop") or its own
``max_tokens`` ("length"); the batch ends when every row has stopped.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from alignkit.data.collate import left_pad
from alignkit.generation.answers import pixels_for, sampling_kwargs
from alignkit.generation.stop_ids import answer_stop_ids
from alignkit.models.placement import input_device
from alignkit.vision.collate import merge_pixels

logger = logging.getLogger("alignkit")

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None  # seeds torch's generator before the batch (only same-seed requests share one)
    logprobs: int | None = None  # None: no log-probs; k: each token's log-prob and the k likeliest alternatives


@dataclass
class TokenLogprob:
    """A generated token's log-probability under the model (after repetition_penalty, before temperature,
    top-p and top-k, as transformers orders its processors) and the ``top`` likeliest (token, log-prob)."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Delta:
    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of the tokens this text completes


@dataclass
class Finished:
    reason: str  # "stop", "length" or "error"
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


@dataclass(eq=False)
class Job:
    """One request. The engine thread writes its progress; the caller reads ``events()``/``aevents()``."""

    prompt_ids: list[int]
    params: SamplingParams
    adapter: str | None = None
    stop: tuple[str, ...] = ()
    loop: asyncio.AbstractEventLoop | None = None
    pixels: dict[str, torch.Tensor] | None = None  # a vision-language prompt's pixel inputs (processor output)
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    done: bool = False
    cancelled: bool = False
    _sent: int = 0  # characters of the decoded answer already emitted
    _sent_logprobs: int = 0  # entries of ``logprobs`` already emitted

    def __post_init__(self):
        self._events = asyncio.Queue() if self.loop is not None else queue.Queue()

    def _emit(self, event) -> None:
        if self.loop is not None:
            if not self.loop.is_closed():  # a server shutting down has no one left to tell
                self.loop.call_soon_threadsafe(self._events.put_nowait, event)
        else:
            self._events.put(event)

    def events(self) -> Iterator[Delta | Finished]:
        while True:
            event = self._events.get()
            yield event
            if isinstance(event, Finished):
                return

    async def aevents(self) -> AsyncIterator[Delta | Finished]:
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, Finished):
                return

    def finish(self, reason: str, error: str | None = None) -> None:
        if not self.done:
            self.done = True
            self._emit(Finished(reason, len(self.prompt_ids), len(self.tokens), error))

    def advance(self, token: int, tokenizer, eos_ids: set[int], logprob: TokenLogprob | None = None) -> None:
        """Take one generated token: emit the new text, hold back a possible stop string's beginning."""
        if self.cancelled:
            self.finish("cancelled")
            return
        if token in eos_ids:
            self._flush(tokenizer.decode(self.tokens, skip_special_tokens=True), final=True)
            self.finish("stop")
            return
        self.tokens.append(token)
        if logprob is not None:
            self.logprobs.append(logprob)
        text = tokenizer.decode(self.tokens, skip_special_tokens=True)
        cut = min((i for s in self.stop if (i := text.find(s, max(0, self._sent - len(s)))) >= 0), default=-1)
        if cut >= 0:
            self._flush(text[:cut], final=True)
            self.finish("stop")
        elif len(self.tokens) >= self.params.max_tokens:
            self._flush(text, final=True)
            self.finish("length")
        else:
            self._flush(text, final=False)

    def _flush(self, text: str, *, final: bool) -> None:
        end = len(text)
        if not final:
            if text.endswith("\ufffd"):  # a multi-byte character still being generated
                end -= 1
            # Keep back a tail that may grow into a stop string, so no stop string is ever streamed.
            end -= max((k for s in self.stop for k in range(1, len(s)) if text[:end].endswith(s[:k])), default=0)
        pending = self.logprobs[self._sent_logprobs :]
        if end > self._sent or (final and pending):
            self._emit(Delta(text[self._sent : max(end, self._sent)], pending))
            self._sent, self._sent_logprobs = max(end, self._sent), len(self.logprobs)


class LogprobRecorder(LogitsProcessor):
    """Keeps the log-softmax of each step's scores, (B, V), for ``RowTracker`` to read once the step's tokens
    are chosen. transformers runs user processors after repetition_penalty and before the sampling warpers."""

    latest: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.latest = torch.log_softmax(scores.float(), dim=-1)  # (B, V)
        return scores

    def entry(self, row: int, token: int, k: int) -> TokenLogprob:
        logprobs = self.latest[row]  # (V,)
        top = torch.topk(logprobs, k) if k else None
        return TokenLogprob(token, logprobs[token].item(),
                            list(zip(top.indices.tolist(), top.values.tolist())) if top is not None else [])


class RowTracker(StoppingCriteria):
    """A stopping criterion that feeds each row's newest token to its job and reports the finished rows.

    transformers calls it once per decoding step with the sequences so far, (B, T + t)."""

    def __init__(self, jobs: list[Job], tokenizer, eos_ids: set[int], recorder: LogprobRecorder | None = None):
        self.jobs, self.tokenizer, self.eos_ids, self.recorder = jobs, tokenizer, eos_ids, recorder

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        newest = input_ids[:, -1].tolist()  # (B,)
        for row, (job, token) in enumerate(zip(self.jobs, newest)):
            if not job.done:
                wanted = job.params.logprobs is not None and self.recorder is not None
                entry = self.recorder.entry(row, token, job.params.logprobs) if wanted else None
                job.advance(token, self.tokenizer, self.eos_ids, entry)
        return torch.tensor([job.done for job in self.jobs], dtype=torch.bool, device=input_ids.device)  # (B,)


class BatchEngine:
    def __init__(self, model, encoder, *, max_batch_size: int = 8, batch_wait_s: float = 0.01):
        """``encoder``: the model's ChatEncoder or VisionEncoder; answers end at ``answer_stop_ids``, as in
        every generate path."""
        self.model, self.tokenizer = model, encoder.tokenizer
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s  # how long the first request waits for company
        self.eos_ids = set(answer_stop_ids(model, encoder))
        self.uses_adapters = hasattr(model, "peft_config")
        self.batch_sizes: list[int] = []
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name="alignkit-engine", daemon=True)

    def start(self) -> BatchEngine:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def submit(self, prompt_ids: list[int], params: SamplingParams, *, adapter: str | None = None,
               stop: tuple[str, ...] = (), loop: asyncio.AbstractEventLoop | None = None,
               pixels: dict[str, torch.Tensor] | None = None) -> Job:
        if not prompt_ids:
            raise ValueError("an empty prompt has nothing to continue from")
        job = Job(list(prompt_ids), params, adapter, tuple(s for s in stop if s), loop, pixels)
        self._queue.put(job)
        return job

    def _serve(self) -> None:
        while True:
            waiting = self._take()
            if waiting is None:
                return
            groups: dict[tuple, list[Job]] = {}
            for job in waiting:
                groups.setdefault(_batch_key(job.params), []).append(job)
            for group in groups.values():
                for start in range(0, len(group), self.max_batch_size):
                    self._generate(group[start : start + self.max_batch_size])

    def _take(self) -> list[Job] | None:
        """Block for one job, then gather what arrives within ``batch_wait_s`` and all that is queued."""
        first = self._queue.get()
        if first is None:
            return None
        jobs, deadline = [first], time.monotonic() + self.batch_wait_s
        while True:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return jobs
            if job is None:
                self._queue.put(None)  # stop after this batch
                return jobs
            jobs.append(job)

    def _generate(self, jobs: list[Job]) -> None:
        for job in jobs:
            if job.cancelled:
                job.finish("cancelled")
        jobs = [job for job in jobs if not job.done]
        if not jobs:
            return
        input_ids, attention_mask = left_pad([job.prompt_ids for job in jobs], self.tokenizer.pad_token_id)  # (B, T)
        p = jobs[0].params
        kwargs = sampling_kwargs(self.tokenizer, max(job.params.max_tokens for job in jobs), p.temperature, p.top_p,
                                 p.top_k, p.repetition_penalty)
        kwargs["eos_token_id"] = sorted(self.eos_ids)
        if self.uses_adapters:
            kwargs["adapter_names"] = [job.adapter or BASE_ADAPTER for job in jobs]
        if any(job.pixels for job in jobs):  # batched as in training: alignkit/vision/collate.py
            kwargs.update(pixels_for(self.model, merge_pixels([job.pixels or {} for job in jobs])))
        recorder = LogprobRecorder() if any(job.params.logprobs is not None for job in jobs) else None
        if recorder is not None:
            kwargs["logits_processor"] = LogitsProcessorList([recorder])
        if p.seed is not None:
            torch.manual_seed(p.seed)
        device = input_device(self.model)
        self.batch_sizes.append(len(jobs))
        logger.info("Generating a batch of %d request(s)", len(jobs))
        try:
            with torch.no_grad():
                self.model.generate(
                    input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                    stopping_criteria=StoppingCriteriaList([RowTracker(jobs, self.tokenizer, self.eos_ids, recorder)]),
                    **kwargs,
                )
        except Exception as error:  # the requests get the error; the engine keeps serving
            logger.exception("generation failed")
            for job in jobs:
                job.finish("error", f"{type(error).__name__}: {error}")
        for job in jobs:  # generate can end without a last call (e.g. max_new_tokens reached)
            job.finish("length")


def _batch_key(params: SamplingParams) -> tuple:
    """Requests batch together when everything but max_tokens and logprobs agrees (each row stops at its own)."""
    return (params.temperature, params.top_p, params.top_k, params.repetition_penalty, params.seed)


