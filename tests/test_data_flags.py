"""ms-swift's data flags: --system (a .txt file; a row's own system message wins), the self-cognition set with
--model_name/--model_author, --loss_scale think modifiers, --use_chat_template false, --cached_dataset,
--interleave_prob/--stopping_strategy, --val_dataset_shuffle, --streaming, --max_pixels, refused values."""

import json
import logging
from pathlib import Path

import pytest

from alignkit.cli import main
from alignkit.config.checks import check_data_flags
from alignkit.config.run import RunArguments
from alignkit.data.chat_templates import ChatTemplate
from alignkit.data.loading import load_dataset_spec, load_datasets
from alignkit.data.rows import ConversationRow, PreferenceRow
from alignkit.data.self_cognition import QUESTIONS
from alignkit.data.template import IGNORE_INDEX, ChatEncoder, LossScale, parse_loss_scale
from alignkit.errors import AlignkitError


@pytest.fixture
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


def trained_text(tokenizer, encoded):
    return tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX])


# ------------------------------------------------------------------------------------------------- --system


def test_system_file_is_read_and_a_rows_own_system_message_wins(tokenizer, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Answer in numbers only.\nNo words.", encoding="utf-8")
    encoder = ChatEncoder(tokenizer, max_length=512, system=str(prompt))
    without = tokenizer.decode(encoder.encode_prompt([user("hi")]))
    assert without.startswith("<|im_start|>system\nAnswer in numbers only.\nNo words.<|im_end|>\n")
    own = tokenizer.decode(encoder.encode_prompt([system("Be brief."), user("hi")]))
    assert own == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_system_priority_is_row_then_flag_then_template_default(tokenizer):
    template = ChatTemplate("config", tokenizer.chat_template, system_message="Template default.")
    row = [user("hi")]
    text = tokenizer.decode(ChatEncoder(tokenizer, max_length=512, template=template).encode_prompt(row))
    assert "Template default." in text
    flagged = ChatEncoder(tokenizer, max_length=512, template=template, system="Flag.")
    assert "Flag." in tokenizer.decode(flagged.encode_prompt(row)) and "Template default." not in tokenizer.decode(
        flagged.encode_prompt(row))
    assert tokenizer.decode(flagged.encode_prompt([system("Row."), *row])).count("system") == 1
    assert "Row." in tokenizer.decode(flagged.encode_prompt([system("Row."), *row]))


def test_system_text_reads_backslash_n_as_a_newline_and_a_missing_txt_stops(tokenizer, tmp_path):
    assert ChatEncoder(tokenizer, max_length=64, system="one\\ntwo").system == "one\ntwo"
    with pytest.raises(AlignkitError, match="--system nowhere/prompt.txt: no such file"):
        ChatEncoder(tokenizer, max_length=64, system="nowhere/prompt.txt")


def test_a_changed_system_file_misses_the_tokenised_cache(tokenizer, tmp_path):
    from alignkit.data.cache import cache_key

    prompt = tmp_path / "p.txt"
    rows = [ConversationRow([user("hi"), assistant("hello")])]
    prompt.write_text("A")
    first = cache_key(ChatEncoder(tokenizer, max_length=64, system=str(prompt)), rows)
    prompt.write_text("B")
    assert cache_key(ChatEncoder(tokenizer, max_length=64, system=str(prompt)), rows) != first


# ------------------------------------------------------------------------------------------- self-cognition


def test_self_cognition_has_both_languages_and_fills_the_placeholders():
    assert len(QUESTIONS) >= 100 and {"zh", "en"} == {q[0] for q in QUESTIONS}
    rows = load_dataset_spec("swift/self-cognition", "sft", seed=42, model_name=["小黄", "Xiao Huang"],
                             model_author=["魔搭", "ModelScope"])
    assert len(rows) == len(QUESTIONS)
    texts = [m["content"] for row in rows for m in row.messages]
    assert not any("{{" in t for t in texts)
    for (language, _, answer), row in zip(QUESTIONS, rows):
        name, author = ("小黄", "魔搭") if language == "zh" else ("Xiao Huang", "ModelScope")
        if "{{NAME}}" in answer:
            assert name in row.messages[1]["content"]
        if "{{AUTHOR}}" in answer:
            assert author in row.messages[1]["content"]


def test_self_cognition_sampling_repeats_the_set_then_draws_the_rest():
    rows = load_dataset_spec("self-cognition#250", "sft", seed=42, model_name=["robot"], model_author=["me"])
    assert len(rows) == 250
    queries = [row.messages[0]["content"] for row in rows]
    # 250 = 2 x 111 + 28: every question at least twice, none more than three times.
    assert all(2 <= queries.count(q) <= 3 for q in set(queries)) and len(set(queries)) == len(QUESTIONS)
    assert "robot" in rows[0].messages[1]["content"] or "me" in rows[0].messages[1]["content"]


def test_self_cognition_subsets_add_the_empty_think_block():
    rows = load_dataset_spec("swift/self-cognition:qwen3#3", "sft", seed=0, model_name=["n"], model_author=["a"])
    assert all(r.messages[0]["content"].endswith(" /no_think") for r in rows)
    assert all(r.messages[1]["content"].startswith("<think>\n\n</think>\n\n") for r in rows)
    with pytest.raises(AlignkitError, match="unknown subset 'nope'"):
        load_dataset_spec("swift/self-cognition:nope", "sft", seed=0, model_name=["n"], model_author=["a"])


def test_self_cognition_without_the_flags_says_which_to_pass():
    with pytest.raises(AlignkitError, match="pass --model_name and --model_author"):
        load_dataset_spec("swift/self-cognition", "sft", seed=0)
    with pytest.raises(AlignkitError, match="pass --model_author"):
        load_dataset_spec("swift/self-cognition", "sft", seed=0, model_name=["n"])
    with pytest.raises(AlignkitError, match="holds SFT conversations"):
        load_dataset_spec("swift/self-cognition", "preference", seed=0, model_name=["n"], model_author=["a"])
    with pytest.raises(AlignkitError, match="--model_name: expected one name or two"):
        check_data_flags(RunArguments(model_name=["a", "b", "c"]), "sft")


def test_name_flags_without_the_self_cognition_set_say_they_have_no_effect(caplog):
    caplog.set_level(logging.WARNING, logger="alignkit")
    load_datasets(["arith-sft#2"], [], "sft", split_dataset_ratio=0, seed=0, model_name=["robot"])
    assert "--model_name/--model_author have no effect" in caplog.text


def test_ms_swift_self_cognition_example_trains(tiny_model_dir, tmp_path):
    # examples/train/streaming/streaming.sh, model local and steps few.
    code = main(["sft", "--model", tiny_model_dir, "--tuner_type", "lora", "--dataset", "swift/self-cognition#20",
                 "--streaming", "true", "--max_steps", "2", "--learning_rate", "1e-4", "--lora_rank", "8",
                 "--lora_alpha", "32", "--gradient_accumulation_steps", "2", "--model_author", "swift",
                 "--model_name", "swift-robot", "--output_dir", str(tmp_path / "out"), "--report_to", "none",
                 "--dtype", "fp32", "--max_length", "500"])
    assert code == 0


# ------------------------------------------------------------------------------------------------ --loss_scale


def test_loss_scale_names_parse_and_agentflan_is_refused():
    assert parse_loss_scale("default").modifiers == ()
    assert parse_loss_scale("last_round+ignore_empty_think").base == "last_round"
    assert parse_loss_scale("ignore_think_prefix").base == "default"  # as ms-swift: default is implied
    assert parse_loss_scale("hermes") == LossScale("default", (), "hermes")
    assert parse_loss_scale("last_round+react+ignore_empty_think") == LossScale(
        "last_round", ("ignore_empty_think",), "react")
    with pytest.raises(AlignkitError, match="agentflan .* is not supported"):
        parse_loss_scale("agentflan")
    with pytest.raises(AlignkitError, match="one agent weighting at a time"):
        parse_loss_scale("hermes+react")
    with pytest.raises(AlignkitError, match="with 'all' ms-swift would weigh prompt text too"):
        parse_loss_scale("all+hermes")
    with pytest.raises(AlignkitError, match="unknown 'sometimes'"):
        parse_loss_scale("default+sometimes")


def test_ignore_empty_think_leaves_the_empty_block_untrained(tokenizer):
    row = ConversationRow([user("What is 2+3?"), assistant("<think>\n\n</think>\n\nAnswer: 5")])
    plain = ChatEncoder(tokenizer, max_length=512).encode_conversation(row)
    assert trained_text(tokenizer, plain) == "<think>\n\n</think>\n\nAnswer: 5<|im_end|>\n"
    ignored = ChatEncoder(tokenizer, max_length=512, loss_scale="ignore_empty_think").encode_conversation(row)
    assert ignored.input_ids == plain.input_ids
    assert trained_text(tokenizer, ignored) == "Answer: 5<|im_end|>\n"
    thinking = ConversationRow([user("q"), assistant("<think>\nsum\n</think>\n\nAnswer: 5")])
    kept = ChatEncoder(tokenizer, max_length=512, loss_scale="ignore_empty_think").encode_conversation(thinking)
    assert trained_text(tokenizer, kept) == "<think>\nsum\n</think>\n\nAnswer: 5<|im_end|>\n"  # not empty: trained


def test_ignore_empty_think_also_finds_a_block_the_chat_template_writes(tokenizer):
    # Like Qwen3's template: an answer without a think block gets an empty one in front of it.
    tokenizer.chat_template = tokenizer.chat_template.replace(
        "'<|im_start|>' + message['role'] + '\\n' + message['content']",
        "'<|im_start|>' + message['role'] + '\\n' + ('<think>\\n\\n</think>\\n\\n' if message['role'] == "
        "'assistant' else '') + message['content']")
    row = ConversationRow([user("What is 2+3?"), assistant("Answer: 5")])
    assert "<think>" in trained_text(tokenizer, ChatEncoder(tokenizer, max_length=512).encode_conversation(row))
    ignored = ChatEncoder(tokenizer, max_length=512, loss_scale="ignore_empty_think").encode_conversation(row)
    assert trained_text(tokenizer, ignored) == "Answer: 5<|im_end|>\n"


def test_ignore_think_prefix_untrains_only_the_opening_tag_in_every_turn(tokenizer):
    row = ConversationRow([user("a"), assistant("<think>\nx</think>1"), user("b"), assistant("<think>\ny</think>2")])
    encoder = ChatEncoder(tokenizer, max_length=512, loss_scale="default+ignore_think_prefix")
    assert trained_text(tokenizer, encoder.encode_conversation(row)) == "x</think>1<|im_end|>\ny</think>2<|im_end|>\n"
    last = ChatEncoder(tokenizer, max_length=512, loss_scale="last_round+ignore_think_prefix")
    assert trained_text(tokenizer, last.encode_conversation(row)) == "y</think>2<|im_end|>\n"


# ------------------------------------------------------------------------------------------ --use_chat_template


def test_generation_template_is_query_answer_eos_each_tokenised_alone(tokenizer):
    encoder = ChatEncoder(tokenizer, max_length=512, use_chat_template=False, system="ignored")
    row = ConversationRow([system("sys"), user("What is 2+3?"), assistant("Answer: 5")])
    encoded = encoder.encode_conversation(row)
    query = tokenizer("What is 2+3?", add_special_tokens=False)["input_ids"]
    answer = tokenizer("Answer: 5", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert encoded.input_ids == query + answer  # no system prompt, no chat markers; this tokenizer adds no BOS
    assert encoded.labels == [IGNORE_INDEX] * len(query) + answer
    assert encoder.encode_prompt([user("What is 2+3?")]) == query
    pair = encoder.encode_pair(PreferenceRow([user("q")], [assistant("yes")], [assistant("no")]))
    assert trained_text(tokenizer, pair[1]) == "no<|im_end|>"


def test_generation_template_keeps_the_last_round_and_a_bos_where_the_tokenizer_adds_one(tokenizer, caplog):
    encoder = ChatEncoder(tokenizer, max_length=512, use_chat_template=False)
    encoder._adds_bos = lambda: True
    caplog.set_level(logging.WARNING, logger="alignkit")
    encoded = encoder.encode_conversation(ConversationRow([user("a"), assistant("b"), user("c"), assistant("d")]))
    assert tokenizer.decode(encoded.input_ids) == "<|im_start|>cd<|im_end|>"
    assert trained_text(tokenizer, encoded) == "d<|im_end|>"
    assert "earlier turns of multi-round rows are left out" in caplog.text


# ------------------------------------------------------------------------------------------ --cached_dataset


def write_cached(path: Path, rows: list[dict]):
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return str(path)


SWIFT_STANDARD = [  # what `swift export --to_cached_dataset` writes: standard rows, None-filled columns, lengths
    {"messages": [user(f"q{i}"), assistant(f"a{i}")], "rejected_response": None, "images": None, "lengths": [9]}
    for i in range(5)
]


def test_cached_dataset_rows_load_first_and_are_sampled(tmp_path):
    cached = write_cached(tmp_path / "cache" / "train", SWIFT_STANDARD)
    val = write_cached(tmp_path / "cache" / "val", SWIFT_STANDARD[:2])
    train, held_out = load_datasets(["arith-sft#3"], [], "sft", split_dataset_ratio=0, seed=0, shuffle=False,
                                    cached=[cached], cached_val=[val])
    assert [r.messages[0]["content"] for r in train[:5]] == [f"q{i}" for i in range(5)] and len(train) == 8
    assert [r.messages[0]["content"] for r in held_out[:2]] == ["q0", "q1"]
    sampled, _ = load_datasets([], [], "sft", split_dataset_ratio=0, seed=0, cached=[cached + "#3"])
    assert len(sampled) == 3
    with pytest.raises(AlignkitError, match="not a folder written by `swift export"):
        load_datasets([], [], "sft", split_dataset_ratio=0, seed=0, cached=[str(tmp_path)])


def test_cached_dataset_alone_trains(tiny_model_dir, tmp_path):
    cached = write_cached(tmp_path / "train", SWIFT_STANDARD)
    code = main(["sft", "--model", tiny_model_dir, "--cached_dataset", cached, "--max_steps", "1",
                 "--output_dir", str(tmp_path / "out"), "--report_to", "none", "--dtype", "fp32"])
    assert code == 0


# ---------------------------------------------------------------------------------- mixing and held-out order


def two_files(tmp_path):
    paths = []
    for name, n in (("a", 6), ("b", 2)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"messages": [user(f"{name}{i}"), assistant("x")]}) + "\n"
                                for i in range(n)))
        paths.append(str(path))
    return paths


def queries(rows):
    return [r.messages[0]["content"] for r in rows]


def test_interleave_first_exhausted_stops_when_a_set_runs_out(tmp_path):
    a, b = two_files(tmp_path)
    train, _ = load_datasets([a, b], [], "sft", split_dataset_ratio=0, seed=3, shuffle=False,
                             interleave_prob=[0.5, 0.5], stopping_strategy="first_exhausted")
    got = queries(train)
    assert [q for q in got if q.startswith("b")] == ["b0", "b1"] and got[-1] == "b1"  # b ran out: stop
    a_rows = [q for q in got if q.startswith("a")]
    assert a_rows == [f"a{i}" for i in range(len(a_rows))]  # each set in its own order
    assert len(a_rows) < 6 and got[0] != "b0"  # a was not used whole, and the sets were mixed, not concatenated


def test_interleave_all_exhausted_repeats_the_smaller_set(tmp_path):
    a, b = two_files(tmp_path)
    train, _ = load_datasets([a, b], [], "sft", split_dataset_ratio=0, seed=0, shuffle=False,
                             interleave_prob=[0.5, 0.5], stopping_strategy="all_exhausted")
    got = queries(train)
    assert {f"a{i}" for i in range(6)} <= set(got) and got.count("b0") >= 2  # b restarted until a was used whole
    with pytest.raises(AlignkitError, match="2 probabilities for 1 datasets"):
        load_datasets([a], [], "sft", split_dataset_ratio=0, seed=0, interleave_prob=[0.5, 0.5])


def test_val_dataset_shuffle(tmp_path):
    a, _ = two_files(tmp_path)
    _, kept = load_datasets(["arith-sft#2"], [a], "sft", split_dataset_ratio=0, seed=1)
    _, shuffled = load_datasets(["arith-sft#2"], [a], "sft", split_dataset_ratio=0, seed=1, val_shuffle=True)
    assert queries(kept) == [f"a{i}" for i in range(6)]
    assert sorted(queries(shuffled)) == queries(kept) and queries(shuffled) != queries(kept)


# ----------------------------------------------------------------------------------- --streaming and refusals


def test_streaming_needs_max_steps_and_holds_out_nothing(tmp_path, caplog):
    from alignkit.training.run_data import load_training_data

    with pytest.raises(AlignkitError, match="--streaming true needs --max_steps"):
        check_data_flags(RunArguments(streaming=True), "sft")
    a, _ = two_files(tmp_path)
    caplog.set_level(logging.INFO, logger="alignkit")
    args = RunArguments(streaming=True, max_steps=3, split_dataset_ratio=0.5, dataset=[a])
    train, val = load_training_data(args, [a], "sft")
    assert len(train) == 6 and val == []
    assert "--split_dataset_ratio 0.5 set to 0" in caplog.text


def test_refused_values_name_the_flag(capsys):
    with pytest.raises(AlignkitError, match="--truncation_strategy split"):
        check_data_flags(RunArguments(truncation_strategy="split"), "sft")
    assert main(["rlhf", "--rlhf_type", "dpo", "--loss_scale", "react"]) == 2
    assert "--loss_scale react: per-token weights of tool calls apply to sft's cross-entropy" in capsys.readouterr().err


def test_max_pixels_scales_images_down_keeping_the_aspect_ratio(tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    from alignkit.vision.encode import VisionEncoder
    from alignkit.vision.images import within_pixels

    assert within_pixels(Image.new("RGB", (2000, 1000)), 500_000).size == (1000, 500)
    small = Image.new("RGB", (30, 20))
    assert within_pixels(small, 600) is small
    Image.new("RGB", (400, 300)).save(tmp_path / "big.png")
    encoder = VisionEncoder(SimpleNamespace(chat_template="x"), 0, max_length=64, max_pixels=1200)
    images, rejected = encoder.row_images({"images": [str(tmp_path / "big.png")]}, None)
    assert images[0].size == (40, 30) and rejected[0].size == (40, 30)
