"""On-policy distillation (GKD, Agarwal et al. 2024, https://arxiv.org/abs/2306.13649), as ms-swift's
``--rlhf_type gkd`` (swift/rlhf_trainers/gkd_trainer.py) and TRL's GKDTrainer.

Each optimizer step draws its data source once, from ``--seed`` + the step (ms-swift's ``_get_random_num``):

    u ≤ λ (--lmbda)      the student samples the completions of the step's prompts (on-policy)
    else, --seq_kd       the teacher samples them (sequence-level KD, TRL's order: student draws win)
    else                 the dataset's own answers

then the loss is the generalised JSD (``alignkit.losses.distill``, --beta, --temperature) between teacher and
student next-token distributions at every completion token, plus ``--sft_alpha`` × the student's cross-entropy
on the completion when the completion is not the student's own. Evaluation uses the dataset's answers.

A row's prompt is everything before its last trained span (ms-swift trains gkd's last round).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch

from alignkit.algorithms.rollout import HFGenerator, completion_tensors
from alignkit.data.collate import Batch
from alignkit.data.template import IGNORE_INDEX
from alignkit.losses.distill import generalized_jsd
from alignkit.models.packing import Layout

SOURCES = ("student", "teacher", "dataset")


def step_source(seed: int, step: int, lmbda: float, seq_kd: bool) -> str:
    """Where step ``step``'s (0-based: optimizer steps done before it) completions come from."""
    if random.Random(seed + step).random() <= lmbda:
        return "student"
    return "teacher" if seq_kd else "dataset"


def split_prompts(batch: Batch) -> list[list[int]]:
    """Each row's ids before its last trained span: the prompt its completion answers."""
    prompts = []
    for ids, labels, mask in zip(batch.input_ids, batch.labels, batch.attention_mask):
        trained = (labels != IGNORE_INDEX).nonzero().flatten().tolist()
        start = trained[-1] if trained else int(mask.sum())
        while start - 1 in trained:
            start -= 1
        prompts.append(ids[:start].tolist())
    return prompts


def with_completions(prompts: list[list[int]], completions: list[list[int]], *, pad_id: int, stop_ids: list[int],
                     max_new_tokens: int, row_ids: list[int]) -> Batch:
    """prompt + sampled completion (cut after its stop token) per row → a right-padded Batch training the
    completion only."""
    ids, mask, _ = completion_tensors(completions, stop_ids, pad_id, max_new_tokens)  # (N, C)
    kept = [row[m.bool()].tolist() for row, m in zip(ids, mask)]
    length = max(len(p) + len(c) for p, c in zip(prompts, kept))
    input_ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)  # (N, T)
    labels = torch.full((len(prompts), length), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(prompts), length), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, kept)):
        n = len(p) + len(c)
        input_ids[i, :n] = torch.tensor(p + c)
        labels[i, len(p):n] = torch.tensor(c, dtype=torch.long)
        attention[i, :n] = 1
    return Batch(input_ids, attention, labels, row_ids)


@dataclass
class GKD:
    teacher: torch.nn.Module
    beta: float
    temperature: float
    lmbda: float
    seq_kd: bool
    sft_alpha: float
    max_completion_length: int
    pad_id: int
    stop_ids: list[int]
    seed: int
    offload_teacher: bool = False  # --offload_teacher_model: the teacher waits on the CPU between its forwards
    source: str = "dataset"  # this step's source (``at_step``); evaluation keeps "dataset"
    generation_batch_size: int = 64
    top_k: int = 0
    top_p: float = 1.0
    student: torch.nn.Module | None = field(default=None, repr=False)  # the unwrapped student, for sampling
    layout: Layout | None = None  # given by the builder; unused: the JSD reads full logits of padded batches
    # --use_vllm: the student samples on vLLM, an `alignkit rollout` server (ServerRollout, --vllm_mode server)
    # or the colocated engine (VllmRollout); both take the student's weights in sync_weights()
    server: object = None
    # Contexts in which the student's / teacher's weights are whole for generate() (ZeRO-3 gathers them, every
    # process entering: the runner's whole_parameters, training/zero3.py); whole already otherwise.
    whole_student: Callable[[], AbstractContextManager] = nullcontext
    whole_teacher: Callable[[], AbstractContextManager] = nullcontext

    rows: ClassVar[str] = "sft"
    loss_unit: ClassVar[str] = "examples"  # a micro-batch's loss is a mean over its own completion tokens
    scalar_head: ClassVar[bool] = False
    needs_reference: ClassVar[bool] = False
    draws_per_step: ClassVar[bool] = True  # the loop calls at_step() before each optimizer step

    def at_step(self, step: int) -> GKD:
        source = step_source(self.seed, step, self.lmbda, self.seq_kd)
        if source == "student" and self.server is not None and self.server.synced_step != step:
            self.server.sync_weights()  # vLLM samples with the weights of the last `step` updates
            self.server.synced_step = step
        return replace(self, source=source)

    @contextmanager
    def _teacher_on(self, device):
        if self.offload_teacher:
            self.teacher.to(device)
        try:
            yield self.teacher
        finally:
            if self.offload_teacher:
                self.teacher.to("cpu")

    def _sample(self, model, batch: Batch) -> Batch:
        prompts = split_prompts(batch)
        if model is self.student and self.server is not None:
            return with_completions(prompts, self.server(prompts), pad_id=self.pad_id, stop_ids=self.stop_ids,
                                    max_new_tokens=self.max_completion_length, row_ids=batch.row_ids)
        generator = HFGenerator(model, self.pad_id, self.stop_ids, self.max_completion_length, self.temperature,
                                batch_size=self.generation_batch_size, top_k=self.top_k, top_p=self.top_p)
        was_training = model.training
        model.eval()
        try:
            with self.whole_student() if model is self.student else self.whole_teacher():
                completions = generator(prompts)
        finally:
            model.train(was_training)
        return with_completions(prompts, completions, pad_id=self.pad_id, stop_ids=self.stop_ids,
                                max_new_tokens=self.max_completion_length, row_ids=batch.row_ids)

    def completions_of(self, batch: Batch) -> Batch:
        """The batch this step trains on: the dataset's answers, or the student's or teacher's samples."""
        device = batch.input_ids.device
        if self.source == "student":
            return self._sample(self.student, batch).to(device)
        if self.source == "teacher":
            with self._teacher_on(device) as teacher:
                return self._sample(teacher, batch).to(device)
        return batch

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        batch = self.completions_of(batch)
        mask = batch.labels[:, 1:] != IGNORE_INDEX  # (N, T-1): position t predicts token t+1
        student_logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
        with torch.no_grad(), self._teacher_on(batch.input_ids.device) as teacher:
            teacher_logits = teacher(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
        jsd, _ = generalized_jsd(student_logits, teacher_logits, mask, beta=self.beta, temperature=self.temperature)
        loss, metrics = jsd, {"jsd": jsd.item(), "completion_length": mask.sum(-1).float().mean().item(),
                              **{f"source/{s}": float(s == self.source) for s in SOURCES}}
        if self.sft_alpha > 0 and self.source != "student":
            targets = batch.labels[:, 1:].masked_fill(~mask, IGNORE_INDEX)
            sft = torch.nn.functional.cross_entropy(student_logits.float().flatten(0, 1), targets.flatten(),
                                                    ignore_index=IGNORE_INDEX)
            loss = loss + self.sft_alpha * sft
            metrics["sft_loss"] = sft.item()
        metrics["loss"] = loss.item()
        return loss, metrics
