"""ColossalChat's prepared data (prepare_dataset.py's jsonl and arrow parts) is trained from its token ids,
and `alignkit colossal prepare_dataset` writes that layout (alignkit/data/prepared.py, commands/colossal/prepare.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alignkit.cli import main
from alignkit.data.encode import encode_rows, with_row_fields
from alignkit.data.loading import load_dataset_spec
from alignkit.data.template import ChatEncoder
from alignkit.errors import DataError

DATA = Path(__file__).parent / "fixtures" / "data"


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def encoder(tiny_model_dir):
    from transformers import AutoTokenizer

    return ChatEncoder(AutoTokenizer.from_pretrained(tiny_model_dir), max_length=512)


def encoded(spec: str, kind: str, encoder):
    rows = load_dataset_spec(spec, kind, seed=0)
    items, dropped = encode_rows(encoder, rows)
    assert dropped == 0
    return [e for _, e in with_row_fields(items, rows)]


def test_prepared_rows_train_on_their_stored_ids_not_on_their_text(tmp_path, encoder):
    """The text columns say one thing, the ids another: the ids are what trains."""
    sft = write_jsonl(tmp_path / "sft" / "part-00000.jsonl", [
        {"input_ids": [7, 8, 9, 10], "labels": [-100, -100, 9, 10], "inputs_decode": "What is 2 + 3?",
         "labels_decode": ["Answer: 5"], "seq_length": 4, "seq_category": "None"}])
    (row,) = encoded(str(sft), "sft", encoder)
    assert (row.input_ids, row.labels) == ([7, 8, 9, 10], [-100, -100, 9, 10])

    pref = write_jsonl(tmp_path / "pref.jsonl", [
        {"chosen_input_ids": [1, 2, 3], "chosen_loss_mask": [0, 0, 1], "chosen_label_decode": ["Answer: 5"],
         "rejected_input_ids": [1, 2, 4, 5], "rejected_loss_mask": [0, 0, 1, 1], "rejected_label_decode": ["x"]}])
    (pair,) = encoded(str(pref), "preference", encoder)
    assert (pair.chosen.input_ids, pair.chosen.labels) == ([1, 2, 3], [-100, -100, 3])
    assert (pair.rejected.input_ids, pair.rejected.labels) == ([1, 2, 4, 5], [-100, -100, 4, 5])

    kto = write_jsonl(tmp_path / "kto.jsonl", [
        {"prompt": [1, 2], "completion": [6, 7], "label": False, "input_id_decode": "a", "completion_decode": "b"}])
    (unpaired,) = encoded(str(kto), "unpaired", encoder)
    assert (unpaired.sequence.input_ids, unpaired.sequence.labels, unpaired.desirable) == (
        [1, 2, 6, 7], [-100, -100, 6, 7], False)


def test_a_mask_that_does_not_fit_its_ids_names_the_row_and_field(tmp_path):
    bad = write_jsonl(tmp_path / "pref.jsonl", [
        {"chosen_input_ids": [1, 2, 3], "chosen_loss_mask": [0, 1], "rejected_input_ids": [1, 2],
         "rejected_loss_mask": [0, 1]}])
    with pytest.raises(DataError, match=r"row 1, field 'chosen_loss_mask': 2 values for the 3 tokens"):
        load_dataset_spec(str(bad), "preference", seed=0)


def test_prepare_dataset_writes_colossalchat_layout_and_training_reads_the_arrow_parent(tiny_model_dir, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "pairs.jsonl").write_text((DATA / "colossalchat_preference.jsonl").read_text() * 2)
    out = tmp_path / "prepared"
    assert main(["colossal", "prepare_dataset", "--type", "preference", "--data_input_dirs", str(raw),
                 "--tokenizer_dir", tiny_model_dir, "--conversation_template_config", str(tmp_path / "tpl.json"),
                 "--data_jsonl_output_dir", str(out / "jsonl"), "--data_arrow_output_dir", str(out / "arrow"),
                 "--num_spliced_dataset_bins", "2"]) == 0
    assert sorted(p.name for p in (out / "jsonl").iterdir()) == ["part-00000.jsonl", "part-00001.jsonl"]
    assert sorted(p.name for p in (out / "arrow").iterdir()) == ["part-00000", "part-00001"]
    record = json.loads((out / "jsonl" / "part-00000.jsonl").read_text().splitlines()[0])
    assert {"chosen_input_ids", "chosen_loss_mask", "chosen_label_decode", "rejected_input_ids", "rejected_loss_mask",
            "rejected_label_decode"} == set(record)
    assert json.loads((tmp_path / "tpl.json").read_text())["system_message"].startswith("A chat between")
    # The parent arrow/ folder, one part and the jsonl folder all read as the same rows.
    rows = load_dataset_spec(str(out / "arrow"), "preference", seed=0)
    from_jsonl = load_dataset_spec(str(out / "jsonl"), "preference", seed=0)
    assert len(rows) == 4 and [r.sequences for r in rows] == [r.sequences for r in from_jsonl]
    assert main(["colossal", "train_dpo", "--pretrain", tiny_model_dir, "--dataset", str(out / "arrow"),
                 "--batch_size", "2", "--max_epochs", "1", "--mixed_precision", "bf16",
                 "--save_dir", str(tmp_path / "dpo")]) == 0


@pytest.mark.parametrize("kind, source", [("sft", "colossalchat_sft.jsonl"), ("kto", "colossalchat_kto.jsonl")])
def test_prepared_sft_and_kto_round_trip_to_the_same_tokens(kind, source, tiny_model_dir, tmp_path, encoder):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "data.jsonl").write_text((DATA / source).read_text())
    out = tmp_path / "prepared"
    assert main(["colossal", "prepare_dataset", "--type", kind, "--data_input_dirs", str(raw), "--tokenizer_dir",
                 tiny_model_dir, "--conversation_template_config", str(tmp_path / "tpl.json"),
                 "--data_jsonl_output_dir", str(out / "jsonl"), "--data_arrow_output_dir", str(out / "arrow"),
                 "--num_spliced_dataset_bins", "1"]) == 0
    row_kind = "unpaired" if kind == "kto" else "sft"
    prepared = encoded(str(out / "arrow" / "part-00000"), row_kind, encoder)
    system_encoder = ChatEncoder(encoder.tokenizer, max_length=512, system=json.loads(
        (tmp_path / "tpl.json").read_text())["system_message"])
    direct = encoded(str(raw / "data.jsonl"), row_kind, system_encoder)
    assert prepared == direct


def test_prepared_prompts_are_read_as_ids_and_grpo_refuses_them(tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"input_ids": [1, 2], "inputs_decode": "hi", "seq_length": 2,
                                                  "seq_category": "None", "gt_answer": "5"}])
    (row,) = load_dataset_spec(str(prompts), "prompt", seed=0)
    assert (row.kind, row.sequences[0][0], row.extras) == ("prompt", [1, 2], {"gt_answer": "5"})


def test_token_id_scoring_equals_scoring_the_rendered_conversation(tiny_model_dir, tmp_path):
    """PPO on prepared prompts scores prompt + completion ids as they are: the same reward as rendering the
    conversation when the ids are its rendering."""
    from test_online_cli import build_tiny_reward_model
    from transformers import AutoTokenizer

    from alignkit.models.scalar_model import load_scalar_model, score_conversations, score_token_ids

    rm_dir = build_tiny_reward_model(tmp_path / "rm", AutoTokenizer.from_pretrained(tiny_model_dir))
    model, tokenizer = load_scalar_model(str(rm_dir), adapters=[])
    encoder = ChatEncoder(tokenizer, max_length=256, truncation_strategy="left")
    conversations = [[{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": a}]
                     for a in ("Answer: 5", "Answer: 6 or so")]
    ids = [encoder.encode(encoder.system_applied(c), {1}).input_ids for c in conversations]
    by_ids = score_token_ids(model, ids, pad_id=tokenizer.pad_token_id, batch_size=2)
    by_text = score_conversations(model, encoder, conversations, batch_size=2)
    assert torch.allclose(by_ids, by_text, atol=1e-5) and not torch.allclose(by_ids[0], by_ids[1])


def test_shipped_template_config_with_response_format_tags_loads(tmp_path, encoder):
    from alignkit.data.chat_templates import load_template_config

    config = tmp_path / "Qwen_Qwen2.5-3B.json"
    config.write_text(json.dumps({"chat_template": encoder.tokenizer.chat_template, "system_message": "s",
                                  "stop_ids": [2], "end_of_assistant": "<|im_end|>",
                                  "response_format_tags": {"think_start": {"text": "<think>", "num_occur": 1}}}))
    assert load_template_config(str(config), encoder.tokenizer).system_message == "s"


def test_a_line_that_is_a_list_of_messages_reads_as_a_conversation(tmp_path):
    """ColossalChat's lora_finetune.py data: each line a JSON list of messages."""
    path = tmp_path / "lora_sft_data.jsonl"
    path.write_text(json.dumps([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]) + "\n")
    (row,) = load_dataset_spec(str(path), "sft", seed=0)
    assert row.messages == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]


COLOSSAL_TEMPLATES = sorted((Path(__file__).parent / "fixtures" / "templates" / "colossalchat").glob("*.json"))


def colossal_trained_text(rendered: str, contents: list[str], end_of_assistant: str) -> list[str]:
    """ColossalChat's split_templated_prompt_into_chunks, for the assistant turns: each answer's text, and up to
    the first end_of_assistant after it when one follows anywhere."""
    spans, position = [], 0
    for content in contents:
        at = rendered.find(content, position)
        stop = at + len(content)
        following = rendered.find(end_of_assistant, stop)
        if following >= 0:
            stop = following + len(end_of_assistant)
        spans.append(rendered[at:stop])
        position = stop
    return spans


@pytest.mark.parametrize("config", COLOSSAL_TEMPLATES, ids=[p.stem for p in COLOSSAL_TEMPLATES])
def test_the_14_shipped_template_configs_train_the_spans_colossalchat_would(config, tmp_path):
    """ColossalChat's conversation_template/*.json (copied from ColossalAI @4f9953b): each loads, and the trained
    tokens of a two-round conversation are the answers up to their end_of_assistant, as its rule gives. The
    configs' stop_ids are their models' ids, outside the tiny test vocabulary: set to its EOS here."""
    from conftest import build_tiny_tokenizer

    from alignkit.data.chat_templates import load_template_config
    from alignkit.data.rows import ConversationRow

    tokenizer = build_tiny_tokenizer()
    settings = json.loads(config.read_text())
    assert len(COLOSSAL_TEMPLATES) == 14
    local = tmp_path / config.name
    local.write_text(json.dumps({**settings, "stop_ids": [tokenizer.eos_token_id]}))
    template = load_template_config(str(local), tokenizer)
    encoder = ChatEncoder(tokenizer, max_length=1024, template=template)
    answers = ["Answer: 5", "Answer: 6"]
    messages = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": answers[0]},
                {"role": "user", "content": "And 3 + 3?"}, {"role": "assistant", "content": answers[1]}]
    row = encoder.encode_conversation(ConversationRow(messages))
    segments, current = [], []
    for label in row.labels + [-100]:
        if label != -100:
            current.append(label)
        elif current:
            segments.append(tokenizer.decode(current)), current.clear()
    rendered = encoder.render(encoder.system_applied(messages), generation_prompt=False)
    expected = colossal_trained_text(rendered, answers, settings["end_of_assistant"])
    # alignkit starts a span right after the generation prompt (ColossalChat at the answer's text): whitespace
    # the template puts between them may differ; the text and where it ends may not.
    assert [s.lstrip() for s in segments] == [e.lstrip() for e in expected]


def test_a_chat_template_naming_a_model_borrows_its_tokenizers_template(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from alignkit.data.chat_templates import load_template_config

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"chat_template": tiny_model_dir, "end_of_assistant": "<|im_end|>"}))
    other = AutoTokenizer.from_pretrained(tiny_model_dir)
    other.chat_template = "{{ 'not this one' }}"
    own = AutoTokenizer.from_pretrained(tiny_model_dir).chat_template
    assert load_template_config(str(config), other).source == own


def test_prepare_prompts_then_rm_then_ppo_trains_on_the_prepared_ids(tiny_model_dir, tmp_path):
    """prepare_prompt_dataset.sh → train_rm.sh → train_ppo.sh, with only the launcher changed."""
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "prompts.jsonl").write_text((DATA / "colossalchat_ppo_prompts.jsonl").read_text())
    out, template = tmp_path / "prompts", tmp_path / "tpl.json"
    assert main(["colossal", "prepare_dataset", "--type", "prompt", "--data_input_dirs", str(raw), "--tokenizer_dir",
                 tiny_model_dir, "--conversation_template_config", str(template), "--data_jsonl_output_dir",
                 str(out / "jsonl"), "--data_arrow_output_dir", str(out / "arrow"), "--num_spliced_dataset_bins",
                 "1"]) == 0
    assert main(["colossal", "train_rm", "--pretrain", tiny_model_dir, "--dataset",
                 str(DATA / "colossalchat_preference.jsonl"), "--batch_size", "2", "--accumulation_steps", "1",
                 "--max_epochs", "1", "--mixed_precision", "bf16", "--save_dir", str(tmp_path / "rm")]) == 0
    common = ["--pretrain", tiny_model_dir, "--rm_pretrain", tiny_model_dir, "--rm_checkpoint_path",
              str(tmp_path / "rm" / "modeling"), "--prompt_dataset", str(out / "arrow"),
              "--conversation_template_config", str(template), "--num_episodes", "1", "--num_collect_steps", "1",
              "--experience_batch_size", "2", "--train_batch_size", "2", "--accumulation_steps", "1",
              "--num_update_steps", "1", "--max_seq_len", "8", "--mixed_precision", "bf16"]
    assert main(["colossal", "train_ppo", *common, "--save_path", str(tmp_path / "ppo")]) == 0
    (run_dir,) = [p for p in (tmp_path / "ppo").iterdir() if p.name.startswith("v")]
    completions = [json.loads(line) for line in (run_dir / "completions.jsonl").read_text().splitlines()]
    assert completions and completions[0]["prompt"].startswith("<|im_start|>system\nA chat between")
    assert main(["colossal", "train_grpo", *common, "--kl_coef", "0", "--initial_temperature", "0.9",
                 "--final_temperature", "0.9", "--num_generations", "2", "--train_batch_size", "4",
                 "--save_path", str(tmp_path / "grpo")]) == 2
