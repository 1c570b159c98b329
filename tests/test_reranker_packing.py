"""`alignkit sft --task_type generative_reranker --packing true`: a pack holds whole rows (all of a row's
conversations count towards --packing_length, as ms-swift sums them), each drawn conversation is read at its
own last token, and the scores, loss and gradients equal the padded batch's to 1e-5 in fp32."""

import json
import logging

import pytest
import torch
from transformers import AutoModelForCausalLM

from alignkit.algorithms.reranker import GenerativeReranker
from alignkit.cli import main
from alignkit.data.encode import encode_row, with_row_fields
from alignkit.data.group_collate import GroupCollator
from alignkit.data.loading import load_dataset_spec
from alignkit.data.packing import Pack, pack_rows, row_length
from alignkit.data.template import ChatEncoder
from alignkit.losses.retrieval import pointwise_reranker_loss
from alignkit.models.load import load_tokenizer
from alignkit.models.packing import Layout

QUERIES = [("what is red", "red is a colour", ["dogs bark", "a tall tree", "green tea"]),
           ("capital of france", "paris", ["the moon", "blue whale"]),
           ("two plus two", "four", ["old boots"]),
           ("who wrote hamlet", "shakespeare", ["a river", "cold rain", "ten", "a b c"])]


def ranking_file(tmp_path):
    path = tmp_path / "rank.jsonl"
    path.write_text("".join(json.dumps({
        "messages": [{"role": "user", "content": q}],
        "positive_messages": [[{"role": "assistant", "content": p}]],
        "negative_messages": [[{"role": "assistant", "content": n}] for n in negatives]}) + "\n"
        for q, p, negatives in QUERIES))
    return str(path)


def encoded_groups(model_dir, path):
    tokenizer = load_tokenizer(model_dir)
    rows = load_dataset_spec(path, "ranking", seed=0)
    encoder = ChatEncoder(tokenizer, max_length=512)
    return tokenizer, with_row_fields([(i, encode_row(encoder, row)) for i, row in enumerate(rows)], rows)


def reranker(tokenizer, layout=Layout()):
    return GenerativeReranker(loss_type="pointwise_reranker", yes_id=tokenizer.convert_tokens_to_ids("y"),
                              no_id=tokenizer.convert_tokens_to_ids("n"), layout=layout)


def test_a_pack_counts_every_conversation_of_its_rows(tiny_model_dir, tmp_path):
    _, items = encoded_groups(tiny_model_dir, ranking_file(tmp_path))
    lengths = [sum(len(s.input_ids) for s in group.sequences) for _, group in items]
    assert [row_length(group) for _, group in items] == lengths
    packs = pack_rows(items, max(lengths) + min(lengths), "binpack")
    assert sorted(i for _, pack in packs for i, _ in pack.items) == [0, 1, 2, 3]
    assert all(sum(lengths[i] for i, _ in pack.items) <= max(lengths) + min(lengths) for _, pack in packs)
    # The collator draws each packed row as it draws the row alone (seeded by the row's index).
    collate = GroupCollator(0, sample=True)
    whole = collate(items)
    packed = collate([(0, Pack(tuple(items)))])
    assert packed.row_ids == whole.row_ids == [0, 1, 2, 3]
    assert torch.equal(packed.labels, whole.labels)
    assert torch.equal(packed.sequences.input_ids, whole.sequences.input_ids)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("share_prefixes", [False, True])
def test_packed_scores_loss_and_gradients_equal_padded(tiny_chat_model_dir, tmp_path, monkeypatch, attn,
                                                        share_prefixes):
    monkeypatch.setenv("MAX_NEGATIVE_SAMPLES", "2")
    # Weights of std 0.3: every token of a conversation moves its last state, so reading a wrong token shows.
    tokenizer, items = encoded_groups(tiny_chat_model_dir, ranking_file(tmp_path))
    batch = GroupCollator(tokenizer.pad_token_id, sample=True)([(0, Pack(tuple(items)))])
    assert len(batch.labels) == 11  # per row the positive and up to 2 negatives
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir, attn_implementation=attn, dtype=torch.float32)

    results = {}
    for name, layout in (("padded", Layout()), ("packed", Layout(padding_free=True, prefix_sharing=share_prefixes,
                                                                  row_tokens=160))):
        model.zero_grad()
        algorithm = reranker(tokenizer, layout)
        scores = algorithm.scores(model, batch.sequences)
        loss, _ = algorithm.loss(model, batch)
        loss.backward()
        results[name] = scores.detach(), loss.detach(), [p.grad.clone() for p in model.parameters()]
    (padded_scores, padded_loss, padded_grads), (scores, loss, grads) = results["padded"], results["packed"]
    assert padded_scores.std() > 0.1  # the conversations' scores differ
    torch.testing.assert_close(scores, padded_scores, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, padded_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, pointwise_reranker_loss(padded_scores, batch.labels), rtol=1e-6, atol=1e-6)
    for packed_grad, padded_grad in zip(grads, padded_grads):
        torch.testing.assert_close(packed_grad, padded_grad, rtol=1e-5, atol=1e-5)
    # The packed rows hold fewer tokens than the padded batch, and a query shared by its documents once.
    packed = Layout(padding_free=True, prefix_sharing=share_prefixes, row_tokens=160).pack(batch.sequences)
    assert packed.num_tokens <= int(batch.sequences.attention_mask.sum())
    assert len(packed.input_ids) < len(batch.labels) / 2  # rows of several conversations each
    if share_prefixes:
        assert packed.num_tokens < int(batch.sequences.attention_mask.sum())


def test_a_packed_run_logs_the_loss_of_its_packs_rows(tiny_model_dir, tmp_path, monkeypatch, caplog):
    """One pack holds all four rows (--packing_length 4096), so the first step's loss is the padded loss of all
    their drawn conversations on the starting weights."""
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GENERATIVE_RERANKER_POSITIVE_TOKEN", "y")
    monkeypatch.setenv("GENERATIVE_RERANKER_NEGATIVE_TOKEN", "n")
    data, out = ranking_file(tmp_path), tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="alignkit"):
        assert main(["sft", "--model", tiny_model_dir, "--dataset", data, "--task_type", "generative_reranker",
                     "--packing", "true", "--packing_length", "4096", "--train_type", "full", "--max_steps", "1",
                     "--batch_size", "1", "--split_dataset_ratio", "0", "--logging_steps", "1", "--dtype", "fp32",
                     "--report_to", "none", "--seed", "1", "--output_dir", str(out)]) == 0
    assert "Speed-ups on: padding-free packing, prompt-prefix sharing" in caplog.text
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    assert json.loads((run_dir / "args.json").read_text())["train_packs"] == 1
    logged = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]
    first = next(r["loss"] for r in logged if "loss" in r)

    tokenizer, items = encoded_groups(tiny_model_dir, data)
    batch = GroupCollator(tokenizer.pad_token_id, sample=True)(items)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        loss, _ = reranker(tokenizer).loss(model, batch)
    assert loss.item() == pytest.approx(first, rel=1e-5)


def test_the_classifier_reranker_and_embeddings_still_refuse_packing(tiny_model_dir, tmp_path, capsys):
    for task_type, loss_type in (("reranker", "pointwise_reranker"), ("embedding", "infonce")):
        assert main(["sft", "--model", tiny_model_dir, "--task_type", task_type, "--loss_type", loss_type,
                     "--packing", "true", "--dataset", ranking_file(tmp_path), "--output_dir",
                     str(tmp_path / "out")]) == 2
        assert f"--packing with --task_type {task_type} is not supported" in capsys.readouterr().err


@pytest.mark.parametrize("path", ["flex_attention", "varlen"])
def test_packed_scores_equal_padded_on_the_gpu_attention_paths(tiny_chat_model_dir, tmp_path, monkeypatch, path):
    """What a GPU run picks (alignkit.training.speedups): flex_attention's block masks for long packs (its eager
    form: no compile, no backward on a CPU), and flash attention's varlen rows, which take position ids alone
    (no mask; sdpa reads the sequences off them the same way)."""
    from test_packed_attention import eager_flex

    import alignkit.algorithms.embedding as embedding

    monkeypatch.setenv("MAX_NEGATIVE_SAMPLES", "2")
    tokenizer, items = encoded_groups(tiny_chat_model_dir, ranking_file(tmp_path))
    batch = GroupCollator(tokenizer.pad_token_id, sample=True)([(0, Pack(tuple(items)))])
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        padded = reranker(tokenizer).scores(model, batch.sequences)
        if path == "flex_attention":
            eager_flex(monkeypatch)
            model.set_attn_implementation("flex_attention")
            layouts = [Layout(padding_free=True, prefix_sharing=share, row_tokens=160) for share in (False, True)]
        else:
            monkeypatch.setattr(embedding, "packed_attention_mask", lambda model, packed: None)
            layouts = [Layout(padding_free=True, prefix_sharing=False, row_tokens=160)]
        for layout in layouts:
            torch.testing.assert_close(reranker(tokenizer, layout).scores(model, batch.sequences), padded,
                                       rtol=1e-5, atol=1e-5)
