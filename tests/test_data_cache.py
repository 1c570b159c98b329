"""The tokenised-data cache (reuse, misses on every input that changes tokens) and parallel encoding."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from alignkit.cli import main
from alignkit.data import cache
from alignkit.data.cache import cache_key, cache_path, encode_dataset, load, save
from alignkit.data.encode import encode_rows
from alignkit.data.loading import load_dataset_spec
from alignkit.data.template import ChatEncoder

FIXTURES = Path(__file__).parent / "fixtures" / "data"


@pytest.fixture(autouse=True)
def own_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def rows():
    return load_dataset_spec("arith-pref#40", "preference", seed=0)


def test_round_trip_is_exact(tokenizer, rows, tmp_path):
    encoder = ChatEncoder(tokenizer, max_length=512)
    items, dropped = encode_rows(encoder, rows)
    sft_items, _ = encode_rows(encoder, load_dataset_spec("arith-sft#5", "sft", seed=0))
    save(tmp_path / "c.npz", items + sft_items, 3)
    assert load(tmp_path / "c.npz") == (items + sft_items, 3)


def test_second_encoding_reuses_the_cache_and_length_changes_miss(tokenizer, rows, monkeypatch, caplog):
    encoder = ChatEncoder(tokenizer, max_length=512)
    with caplog.at_level(logging.INFO, logger="alignkit"):
        first = encode_dataset(encoder, rows, "training")
    path = cache_path(cache_key(encoder, rows))
    assert path.is_file() and f"Tokenised training rows: cached in {path}" in caplog.text

    def refuse(*args, **kwargs):
        raise AssertionError("encoded again instead of reusing the cache")

    monkeypatch.setattr(cache, "encode_rows", refuse)
    with caplog.at_level(logging.INFO, logger="alignkit"):
        assert encode_dataset(ChatEncoder(tokenizer, max_length=512), rows, "training") == first
    assert f"Tokenised training rows: reused {path}" in caplog.text

    for changed in (
        ChatEncoder(tokenizer, max_length=256),
        ChatEncoder(tokenizer, max_length=512, max_prompt_length=8),
        ChatEncoder(tokenizer, max_length=512, truncation_strategy="left"),
        ChatEncoder(tokenizer, max_length=512, system="Only numbers."),
        ChatEncoder(tokenizer, max_length=512, loss_scale="last_round"),
    ):
        assert not cache_path(cache_key(changed, rows)).exists()
        with pytest.raises(AssertionError, match="encoded again"):
            encode_dataset(changed, rows, "training")
    assert cache_key(encoder, rows[1:]) != cache_key(encoder, rows)
    assert cache_key(encoder, rows[::-1]) != cache_key(encoder, rows)


def test_tokenizer_and_template_are_part_of_the_key(tokenizer, rows):
    from alignkit.data.chat_templates import resolve_template

    key = cache_key(ChatEncoder(tokenizer, max_length=512), rows)
    chatml = ChatEncoder(tokenizer, max_length=512, template=resolve_template(tokenizer, template="chatml"))
    assert cache_key(chatml, rows) != key
    tokenizer.add_tokens(["<extra>"])
    assert cache_key(ChatEncoder(tokenizer, max_length=512), rows) != key


def test_cache_can_be_switched_off(tokenizer, rows):
    encoder = ChatEncoder(tokenizer, max_length=512)
    encode_dataset(encoder, rows, "training", use_cache=False)
    assert not cache_path(cache_key(encoder, rows)).exists()


def test_parallel_encoding_gives_the_same_items(tokenizer, rows):
    too_long = load_dataset_spec("arith-pref#7", "preference", seed=1)
    too_long[3].prompt[0]["content"] *= 30
    mixed = rows + too_long
    encoder = ChatEncoder(tokenizer, max_length=64)
    single = encode_rows(encoder, mixed)
    assert single[1] == 1 and len(single[0]) == len(mixed) - 1
    assert encode_rows(encoder, mixed, num_proc=2) == single


def test_cli_second_run_reuses_the_tokenised_data(tiny_model_dir, tmp_path, caplog):
    command = ["rlhf", "--model", tiny_model_dir, "--dataset", str(FIXTURES / "hh_rlhf.jsonl"), "--max_steps", "1",
               "--report_to", "none", "--output_dir", str(tmp_path / "out"), "--dataset_num_proc", "2"]
    with caplog.at_level(logging.INFO, logger="alignkit"):
        assert main(command) == 0
        assert "Tokenised training rows: cached in" in caplog.text
        caplog.clear()
        assert main(command) == 0
        assert "Tokenised training rows: reused" in caplog.text
        caplog.clear()
        assert main([*command, "--max_length", "100"]) == 0
        assert "Tokenised training rows: cached in" in caplog.text
