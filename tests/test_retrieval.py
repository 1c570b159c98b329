"""`alignkit sft --task_type embedding | reranker | generative_reranker`: ms-swift's rows, losses worked out by
hand and against ms-swift's own batched InfoNCE, the reranker's sampling, and a tiny run of each task type whose
first logged loss is the algorithm's loss on the starting weights."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from alignkit.algorithms.reranker import Reranker
from alignkit.cli import main
from alignkit.config import RunArguments
from alignkit.config.defaults import resolve
from alignkit.data.encode import encode_row, with_row_fields
from alignkit.data.group_collate import EncodedGroup, GroupCollator, sampled_groups
from alignkit.data.loading import load_dataset_spec
from alignkit.data.template import ChatEncoder, Encoded
from alignkit.errors import AlignkitError
from alignkit.losses.retrieval import (
    InfonceSettings,
    contrastive_loss,
    cosine_similarity_loss,
    infonce_loss,
    listwise_reranker_loss,
    online_contrastive_loss,
    pointwise_reranker_loss,
)


def user(text):
    return [{"role": "user", "content": text}]


def assistant(text):
    return [{"role": "assistant", "content": text}]


ROWS = [("what is red", "red is a colour", ["dogs bark", "a tall tree"]),
        ("capital of france", "paris", ["the moon", "blue whale"]),
        ("two plus two", "four", ["green tea", "old boots"]),
        ("who wrote hamlet", "shakespeare", ["a river", "cold rain"])]


def retrieval_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"messages": user(q), "positive_messages": [assistant(p)],
                                        "negative_messages": [assistant(n) for n in negs]}) + "\n"
                            for q, p, negs in ROWS))
    return str(path)


# --- rows ---------------------------------------------------------------------------------------------------


def test_rows_follow_ms_swift_layout(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({
        "messages": [{"role": "system", "content": "S"}, *user("q")],
        "positive_messages": [[{"role": "system", "content": "own"}, *assistant("d+")]],
        "negative_messages": [assistant("d-")], "label": 0.5}) + "\n" + json.dumps({
        "messages": user("q2"), "positive_messages": [user("p2")]}) + "\n")
    embedding = load_dataset_spec(str(path), "embedding", seed=0)
    assert embedding[0].sequences == [[{"role": "system", "content": "S"}, *user("q")],
                                      [{"role": "system", "content": "own"}, *assistant("d+")], assistant("d-")]
    assert embedding[0].labels == [0.5, 0.0]  # the pair's label, then 0.0 per negative
    assert embedding[1].labels == [1.0]  # no label: 1.0, as ms-swift
    ranking = load_dataset_spec(str(path), "ranking", seed=0)
    # query + document; the document's own system message wins over the query's
    assert ranking[0].sequences == [[{"role": "system", "content": "own"}, *user("q"), *assistant("d+")],
                                    [{"role": "system", "content": "S"}, *user("q"), *assistant("d-")]]
    assert ranking[0].labels == [1.0, 0.0]


def test_reranker_sampling_keeps_each_positive_before_its_negatives(monkeypatch):
    group = EncodedGroup(tuple(Encoded([i + 1], [-100]) for i in range(6)), (1.0, 1.0, 0.0, 0.0, 0.0, 0.0))
    order = sampled_groups(7, group, max_positive=1, max_negative=2)
    assert len(order) == 3 and order[0] in (0, 1) and set(order[1:]) <= {2, 3, 4, 5}
    assert order == sampled_groups(7, group, 1, 2)  # seeded by the row: a resumed run draws the same
    monkeypatch.setenv("MAX_NEGATIVE_SAMPLES", "3")
    batch = GroupCollator(0, sample=True)([(7, group)])
    assert batch.labels.tolist() == [1.0, 0.0, 0.0, 0.0]
    embedding = GroupCollator(0, sample=False)([(0, EncodedGroup(group.sequences[:3], (0.5, 0.0)))])
    assert embedding.sequences.input_ids.shape == (3, 1) and embedding.labels.tolist() == [0.5, 0.0]


# --- losses by hand -----------------------------------------------------------------------------------------


def test_pair_losses_by_hand():
    e = torch.tensor([[1.0, 0], [0, 1.0], [1.0, 0], [1.0, 0], [1.0, 0], [0.6, 0.8]])  # (a, p) x 3
    # cos = 0, 1, 0.6; distances d = 1 − cos = 1, 0, 0.4
    assert cosine_similarity_loss(e[:4], torch.tensor([0.5, 1.0])).item() == pytest.approx((0.25 + 0) / 2)
    labels = torch.tensor([0.0, 1.0, 0.0])
    # ½[y·d² + (1 − y)·relu(0.5 − d)²]: 0, 0, ½·0.1²
    assert contrastive_loss(e, labels).item() == pytest.approx(0.005 / 3)
    assert contrastive_loss(e[4:], torch.tensor([1.0])).item() == pytest.approx(0.5 * 0.4 ** 2)
    # hard pairs: negatives nearer than the farthest positive (one positive: the negatives' mean 0.7) → d = 0.4
    assert online_contrastive_loss(e, labels).item() == pytest.approx(0.1 ** 2)


def test_infonce_by_hand(monkeypatch):
    e = torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0]], dtype=torch.float64)  # anchor, positive, negative
    own = infonce_loss(e, torch.tensor([1.0, 0.0]), InfonceSettings(use_batch=False))
    assert own.item() == pytest.approx(math.log(1 + math.exp(-10)))  # logits [1, 0] / 0.1
    two = torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0], [0, 1.0]], dtype=torch.float64)  # two rows of anchor + positive
    batch = infonce_loss(two, torch.tensor([1.0, 1.0]), InfonceSettings(temperature=0.5))
    assert batch.item() == pytest.approx(math.log(1 + math.exp(-2)))  # each anchor: its positive vs the other's
    monkeypatch.setenv("INFONCE_TEMPERATURE", "0.5")
    assert InfonceSettings.from_environment().temperature == 0.5


def test_reranker_losses_by_hand():
    scores, labels = torch.tensor([2.0, 0.0, 0.0, 1.0, 1.0]), torch.tensor([1, 0, 0, 1, 0])
    group_1 = -math.log(math.exp(2) / (math.exp(2) + 2))
    group_2 = math.log(2)
    assert listwise_reranker_loss(scores, labels, temperature=1.0, min_group_size=2).item() == pytest.approx(
        (group_1 + group_2) / 2)
    assert listwise_reranker_loss(scores, labels, temperature=1.0, min_group_size=3).item() == pytest.approx(group_1)
    bce = [math.log(1 + math.exp(-2)), math.log(2), math.log(2), math.log(1 + math.exp(-1)),
           math.log(1 + math.exp(1))]
    assert pointwise_reranker_loss(scores, labels).item() == pytest.approx(sum(bce) / 5)


def ms_swift_batched_infonce(sentences, temperature, include_qq, include_dd, mask_fake, margin):
    """ms-swift's batched path (swift/loss/embedding.py, InfonceLoss, equal negatives), transcribed."""
    queries = sentences[:, 0]
    docs_all = sentences[:, 1:].reshape(-1, sentences.size(2))
    qd = queries @ docs_all.T
    labels = torch.arange(0, sentences.size(0) * (sentences.size(1) - 1), sentences.size(1) - 1)
    parts = [qd]
    if include_qq:
        qq = (queries @ queries.T).clone()
        qq.fill_diagonal_(float("-inf"))
        parts.append(qq)
    if include_dd:
        dd = sentences[:, 1] @ docs_all.T
        block = sentences.size(1) - 1
        rows = torch.arange(dd.size(0))
        dd[rows, rows * block] = float("-inf")
        parts.append(dd)
    if mask_fake:
        thresholds = qd[torch.arange(qd.size(0)), labels].view(-1, 1) + margin
        masked = [qd.masked_fill(qd > thresholds, float("-inf"))]
        if include_qq:
            masked.append(qq.masked_fill(qq > thresholds, float("-inf")))
        if include_dd:
            masked.append(dd)
        parts = masked
    return F.cross_entropy(torch.cat(parts, dim=1) / temperature, labels)


@pytest.mark.parametrize("include_qq, include_dd, mask_fake", [(False, False, False), (True, False, False),
                                                               (False, True, False), (True, True, True),
                                                               (False, False, True)])
def test_infonce_equals_ms_swift_batched_form(include_qq, include_dd, mask_fake):
    torch.manual_seed(0)
    sentences = F.normalize(torch.randn(3, 4, 8), dim=-1)  # 3 rows: anchor, positive, 2 negatives
    flat = sentences.reshape(-1, 8)
    labels = torch.tensor([1.0, 0, 0] * 3)
    settings = InfonceSettings(temperature=0.05, include_qq=include_qq, include_dd=include_dd,
                               mask_fake_negative=mask_fake, fake_neg_margin=0.0 if mask_fake else 0.1)
    expected = ms_swift_batched_infonce(sentences, 0.05, include_qq, include_dd, mask_fake,
                                        settings.fake_neg_margin)
    assert infonce_loss(flat, labels, settings).item() == pytest.approx(expected.item(), rel=1e-6)


# --- flags --------------------------------------------------------------------------------------------------


def test_task_rules(caplog):
    assert resolve(RunArguments(task_type="embedding", loss_type=["infonce"], dataset=["d"]), "sft")["loss_type"] \
        == ["infonce"]
    assert resolve(RunArguments(task_type="reranker", dataset=["d"]), "sft")["loss_type"] == ["model"]
    assert resolve(RunArguments(task_type="generative_reranker", dataset=["d"]), "sft")["loss_type"] \
        == ["pointwise_reranker"]
    cases = [
        (RunArguments(task_type="embedding", dataset=["d"]), "sft", "needs --loss_type: one of infonce"),
        (RunArguments(task_type="embedding", loss_type=["pointwise_reranker"], dataset=["d"]), "sft",
         "takes one of infonce"),
        (RunArguments(task_type="reranker", loss_type=["infonce"], dataset=["d"]), "sft", "takes one of pointwise"),
        (RunArguments(task_type="reranker", num_labels=2, dataset=["d"]), "sft", "scores with one label"),
        (RunArguments(task_type="embedding", loss_type=["infonce"]), "sft", "needs --dataset"),
        (RunArguments(task_type="reranker", rlhf_type="dpo"), "dpo", "trains with `alignkit sft`"),
    ]
    for args, method, message in cases:
        with pytest.raises(AlignkitError, match=message):
            resolve(args, method)


def test_packing_is_refused(tiny_model_dir, tmp_path, capsys):
    assert main(["sft", "--model", tiny_model_dir, "--task_type", "reranker", "--packing", "true", "--dataset",
                 retrieval_file(tmp_path), "--output_dir", str(tmp_path / "out")]) == 2
    assert "--packing with --task_type reranker is not supported" in capsys.readouterr().err


# --- tiny runs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task_type, loss_type", [("embedding", "infonce"), ("reranker", "listwise_reranker"),
                                                  ("reranker", None), ("generative_reranker", "pointwise_reranker")])
def test_a_tiny_run_logs_the_algorithms_loss(tiny_model_dir, tmp_path, monkeypatch, task_type, loss_type):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from alignkit.models.load import load_tokenizer

    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GENERATIVE_RERANKER_POSITIVE_TOKEN", "y")  # the tiny tokenizer has no "yes"/"no"
    monkeypatch.setenv("GENERATIVE_RERANKER_NEGATIVE_TOKEN", "n")
    data, out = retrieval_file(tmp_path), tmp_path / "out"
    flags = ["--loss_type", loss_type] if loss_type else []
    assert main(["sft", "--model", tiny_model_dir, "--dataset", data, "--task_type", task_type, *flags,
                 "--train_type", "full", "--max_steps", "1", "--batch_size", "4", "--split_dataset_ratio", "0",
                 "--logging_steps", "1", "--dtype", "fp32", "--report_to", "none", "--seed", "1",
                 "--output_dir", str(out)]) == 0
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    logged = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]
    first = next(r["loss"] for r in logged if "loss" in r)
    assert (run_dir / "checkpoint-1").is_dir()

    # The same loss, from the starting weights and every row in one batch (each loss is order-free).
    tokenizer = load_tokenizer(tiny_model_dir)
    encoder = ChatEncoder(tokenizer, max_length=512)
    rows = load_dataset_spec(data, "embedding" if task_type == "embedding" else "ranking", seed=0)
    items = with_row_fields([(i, encode_row(encoder, row)) for i, row in enumerate(rows)], rows)
    batch = GroupCollator(tokenizer.pad_token_id, sample=task_type != "embedding")(items)
    ids, mask = batch.sequences.input_ids, batch.sequences.attention_mask
    last = torch.tensor([int(m.nonzero().max()) for m in mask])  # each row's last non-padding position
    if task_type == "reranker":
        # The head starts random, drawn by the run: the saved checkpoint is a one-label classifier (as ms-swift
        # saves it) whose own loss on the batch is finite.
        saved = AutoModelForSequenceClassification.from_pretrained(run_dir / "checkpoint-1")
        assert saved.config.num_labels == 1
        with torch.no_grad():
            loss, _ = Reranker(loss_type=loss_type or "model").loss(saved.eval(), batch)
        assert math.isfinite(loss.item()) and math.isfinite(first)
        return
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    if task_type == "embedding":  # the last layer's state at the last token, L2-normalised
        states = out.hidden_states[-1][torch.arange(len(ids)), last]
        expected = infonce_loss(F.normalize(states, dim=-1), batch.labels)
    else:  # logit("y") − logit("n") at the last token
        logits = out.logits[torch.arange(len(ids)), last]
        yes, no = tokenizer.convert_tokens_to_ids("y"), tokenizer.convert_tokens_to_ids("n")
        expected = pointwise_reranker_loss(logits[:, yes] - logits[:, no], batch.labels)
    assert expected.item() == pytest.approx(first, rel=1e-4)
