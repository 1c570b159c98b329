"""Embedding and reranker losses, as ms-swift computes them (swift/loss/embedding.py, swift/loss/reranker.py).

Embeddings ``e`` are (N, D), L2-normalised, laid out per row as anchor, positive, negatives...; ``labels`` hold
one value per row's anchor/positive pair followed by 0.0 per negative (so a row with n negatives has n + 2
embeddings and n + 1 labels, the pair's label first). Reranker ``scores`` are (N,) logits, one per
query-document sequence, labels 1 (positive) or 0, each positive followed by its negatives.

- cosine_similarity: mean((cos(e_a, e_p) − y)²) over pairs (sentence-transformers' CosineSimilarityLoss);
- contrastive: mean(½·[y·d² + (1 − y)·relu(m − d)²]), d = 1 − cos, m = 0.5 (Hadsell et al. 2006);
- online_contrastive: the same terms summed over the hard pairs only: positives farther than the nearest
  negative, negatives nearer than the farthest positive;
- infonce: cross-entropy over similarities / τ, the positive the target (van den Oord et al. 2018, eq. 4);
  in-batch (``use_batch``): each anchor against every document of the batch;
- pointwise_reranker: binary cross-entropy with logits, mean over sequences;
- listwise_reranker: per group (a positive and its negatives), cross-entropy of scores / τ with the positive
  the target; mean over groups of at least ``min_group_size``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

EMBEDDING_LOSSES = ("cosine_similarity", "contrastive", "online_contrastive", "infonce")
RERANKER_LOSSES = ("pointwise_reranker", "listwise_reranker")
CONTRASTIVE_MARGIN = 0.5  # ms-swift's fixed margin


def _flag(name: str, default: str) -> bool:
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes", "y", "on", "t")


@dataclass(frozen=True)
class InfonceSettings:
    """ms-swift's INFONCE_* environment variables (docs/source_en/BestPractices/Embedding.md)."""

    temperature: float = 0.1
    use_batch: bool = True
    hard_negatives: int | None = None
    mask_fake_negative: bool = False
    fake_neg_margin: float = 0.1
    include_qq: bool = False
    include_dd: bool = False

    @classmethod
    def from_environment(cls) -> InfonceSettings:
        hard = os.environ.get("INFONCE_HARD_NEGATIVES")
        return cls(
            temperature=float(os.environ.get("INFONCE_TEMPERATURE", "0.1")),
            use_batch=_flag("INFONCE_USE_BATCH", "True"),
            hard_negatives=int(hard) if hard is not None else None,
            mask_fake_negative=_flag("INFONCE_MASK_FAKE_NEGATIVE", "False"),
            fake_neg_margin=float(os.environ.get("INFONCE_FAKE_NEG_MARGIN", "0.1")),
            include_qq=_flag("INFONCE_INCLUDE_QQ", "False"),
            include_dd=_flag("INFONCE_INCLUDE_DD", "False"),
        )


def pairs(embeddings: Tensor) -> tuple[Tensor, Tensor]:
    """Rows of anchor + positive only: (2B, D) → the anchors (B, D) and the positives (B, D)."""
    return embeddings[0::2], embeddings[1::2]


def cosine_similarity_loss(embeddings: Tensor, labels: Tensor) -> Tensor:
    anchors, positives = pairs(embeddings)
    cosine = F.cosine_similarity(anchors, positives)  # (B,)
    return F.mse_loss(cosine, labels.to(cosine.dtype).view(-1))


def contrastive_loss(embeddings: Tensor, labels: Tensor) -> Tensor:
    anchors, positives = pairs(embeddings)
    distance = 1 - F.cosine_similarity(anchors, positives)  # (B,)
    y = labels.to(distance.dtype)
    losses = 0.5 * (y * distance.pow(2) + (1 - y) * F.relu(CONTRASTIVE_MARGIN - distance).pow(2))
    return losses.mean()


def online_contrastive_loss(embeddings: Tensor, labels: Tensor) -> Tensor:
    anchors, positives = pairs(embeddings)
    distance = 1 - F.cosine_similarity(anchors, positives)  # (B,)
    negs, poss = distance[labels == 0], distance[labels == 1]
    # Hard pairs only; with one pair of a kind, the other kind's mean is the threshold (ms-swift's rule).
    negative_pairs = negs[negs < (poss.max() if len(poss) > 1 else negs.mean())]
    positive_pairs = poss[poss > (negs.min() if len(negs) > 1 else poss.mean())]
    return positive_pairs.pow(2).sum() + F.relu(CONTRASTIVE_MARGIN - negative_pairs).pow(2).sum()


def split_groups(embeddings: Tensor, labels: Tensor, hard_negatives: int | None = None) -> list[Tensor]:
    """(N, D) → one (n_i + 2, D) tensor per row: anchor, positive, negatives. A row's label is where its pair
    starts (the first label, non-zero), so row k starts at (its label index) + k. ``hard_negatives``: keep the
    first that many negatives, or repeat randomly drawn ones up to that many (ms-swift's INFONCE_HARD_NEGATIVES)."""
    starts = torch.nonzero(labels, as_tuple=False).view(-1).tolist() + [len(labels)]
    bounds = [start + k for k, start in enumerate(starts)]
    groups = []
    for begin, end in zip(bounds[:-1], bounds[1:]):
        group = embeddings[begin:end]
        if hard_negatives is not None:
            negatives = len(group) - 2
            if negatives <= 0:
                raise ValueError("INFONCE_HARD_NEGATIVES needs rows with negative_messages")
            if negatives > hard_negatives:
                group = group[: hard_negatives + 2]
            elif negatives < hard_negatives:
                extra = torch.randint(0, negatives, (hard_negatives - negatives,)) + 2  # skip anchor and positive
                group = torch.cat((group, group[extra.to(group.device)]), dim=0)
        groups.append(group)
    return groups


def infonce_loss(embeddings: Tensor, labels: Tensor, settings: InfonceSettings = InfonceSettings()) -> Tensor:
    """Mean over rows of −log softmax(s / τ)[positive]; ``labels`` mark where each row starts (non-zero). This
    per-row form equals ms-swift's batched matrix form when rows have equal numbers of negatives."""
    groups = split_groups(embeddings, labels, settings.hard_negatives)
    tau = settings.temperature
    if not settings.use_batch:  # each anchor against its own positive and negatives
        losses = [F.cross_entropy((g[0] @ g[1:].T / tau).unsqueeze(0), g.new_zeros(1, dtype=torch.long))
                  for g in groups]
        return torch.stack(losses).mean()
    documents = torch.cat([g[1:] for g in groups], dim=0)  # (M, D): every positive and negative of the batch
    queries = torch.stack([g[0] for g in groups])  # (B, D)
    losses, offset = [], 0
    for index, group in enumerate(groups):
        similarities = group[0] @ documents.T  # (M,)
        threshold = similarities[offset].detach() + settings.fake_neg_margin
        if settings.mask_fake_negative:  # documents scoring above the positive + margin are likely unlabeled positives
            similarities = similarities.masked_fill(similarities > threshold, float("-inf"))
        parts = [similarities]
        if settings.include_qq:  # the other queries as negatives, never the anchor itself
            query_part = (group[0] @ queries.T).clone()
            query_part[index] = float("-inf")
            if settings.mask_fake_negative:
                query_part = query_part.masked_fill(query_part > threshold, float("-inf"))
            parts.append(query_part)
        if settings.include_dd:  # the positive against every document, its own column excluded
            document_part = (group[1] @ documents.T).clone()
            document_part[offset] = float("-inf")
            parts.append(document_part)
        logits = torch.cat(parts) / tau
        losses.append(F.cross_entropy(logits.unsqueeze(0), torch.tensor([offset], device=logits.device)))
        offset += len(group) - 1
    return torch.stack(losses).mean()


def embedding_loss(loss_type: str, embeddings: Tensor, labels: Tensor) -> Tensor:
    """The --loss_type's loss of a batch, computed in fp32."""
    embeddings = embeddings.float()
    if loss_type == "infonce":
        return infonce_loss(embeddings, labels, InfonceSettings.from_environment())
    if loss_type == "cosine_similarity":
        return cosine_similarity_loss(embeddings, labels)
    if loss_type == "contrastive":
        return contrastive_loss(embeddings, labels)
    if loss_type == "online_contrastive":
        return online_contrastive_loss(embeddings, labels)
    raise ValueError(f"unknown embedding loss {loss_type!r}; choose from {', '.join(EMBEDDING_LOSSES)}")


def pointwise_reranker_loss(scores: Tensor, labels: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(scores.float(), labels.float())


def listwise_reranker_loss(scores: Tensor, labels: Tensor, *, temperature: float | None = None,
                           min_group_size: int | None = None) -> Tensor:
    """Unset, ``temperature`` and ``min_group_size`` are read from LISTWISE_RERANKER_TEMPERATURE (1.0) and
    LISTWISE_RERANKER_MIN_GROUP_SIZE (2), as ms-swift. A batch with no usable group gives a zero loss."""
    if temperature is None:
        temperature = float(os.environ.get("LISTWISE_RERANKER_TEMPERATURE", "1.0"))
    if min_group_size is None:
        min_group_size = int(os.environ.get("LISTWISE_RERANKER_MIN_GROUP_SIZE", "2"))
    scores = scores.float()
    starts = torch.nonzero(labels == 1, as_tuple=False).view(-1).tolist()
    losses = []
    for begin, end in zip(starts, starts[1:] + [len(labels)]):
        if end - begin < min_group_size:
            continue
        logits = scores[begin:end] / temperature
        losses.append(F.cross_entropy(logits.unsqueeze(0), torch.zeros(1, dtype=torch.long, device=scores.device)))
    if not losses:
        return scores.sum() * 0.0  # keeps the graph, as ms-swift's zero loss with requires_grad
    return torch.stack(losses).mean()
