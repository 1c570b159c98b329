"""Every supported dataset format, from the small fixture files in tests/fixtures/data.

Each family of fixtures holds the same examples written in a different format, so each must load into
the very same canonical rows, render to the same token ids and masks, and train.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest

from alignkit.cli import main
from alignkit.data.encode import encode_row
from alignkit.data.loading import load_dataset_spec
from alignkit.data.rows import ConversationRow, PreferenceRow, PromptRow, UnpairedRow
from alignkit.data.template import IGNORE_INDEX, ChatEncoder

FIXTURES = Path(__file__).parent / "fixtures" / "data"

Q1, A1, R1 = "What is 2 + 3?", "Answer: 5", "Answer: 6"
HISTORY = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}]
Q2, A2, R2 = "What is 10 - 4?", "Answer: 6", "Answer: 7"


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


PAIRS = [
    ([user(Q1)], [assistant(A1)], [assistant(R1)]),
    ([*HISTORY, user(Q2)], [assistant(A2)], [assistant(R2)]),
]
UNPAIRED = [
    ([user(Q1)], [assistant(A1)], True),
    ([user(Q1)], [assistant(R1)], False),
    ([*HISTORY, user(Q2)], [assistant(A2)], True),
]
CONVERSATIONS = [[user(Q1), assistant(A1)], [*HISTORY, user(Q2), assistant(A2)]]
PROMPTS = [[user(Q1)], [*HISTORY, user(Q2)]]

PREFERENCE_FILES = {
    "swift_preference.jsonl": "ms-swift preference",
    "swift_rejected_messages.jsonl": "ms-swift preference (rejected_messages)",
    "swift_query_response.jsonl": "ms-swift query/response preference",
    "swift_auto_columns.jsonl": "ms-swift query/response preference",
    "trl_preference.jsonl": "TRL preference",
    "trl_implicit_prompt.jsonl": "TRL preference (implicit prompt)",
    "ultrafeedback_binarized.jsonl": "UltraFeedback binarized",
    "hh_rlhf.jsonl": "Anthropic hh-rlhf",
    "llamafactory_alpaca_preference.json": "LLaMA-Factory alpaca preference",
    "llamafactory_sharegpt_preference.json": "LLaMA-Factory sharegpt preference",
    "colossalchat_preference.jsonl": "ColossalChat preference",
}
KTO_FILES = {
    "swift_kto.jsonl": "ms-swift unpaired",
    "trl_unpaired.jsonl": "TRL unpaired",
    "llamafactory_alpaca_kto.json": "LLaMA-Factory alpaca KTO",
    "llamafactory_sharegpt_kto.json": "LLaMA-Factory sharegpt KTO",
    "colossalchat_kto.jsonl": "ColossalChat KTO",
}
SFT_FILES = {
    "swift_sft.jsonl": "messages (ms-swift / TRL conversational)",
    "colossalchat_sft.jsonl": "ColossalChat messages (from/content)",
    "llamafactory_sharegpt_sft.json": "LLaMA-Factory sharegpt",
    "llamafactory_alpaca_sft.json": "LLaMA-Factory alpaca",
}
PROMPT_FILES = {
    "swift_prompts.jsonl": "messages (ms-swift / TRL conversational)",
    "colossalchat_ppo_prompts.jsonl": "ColossalChat messages (from/content)",
    "trl_prompt_only.jsonl": "TRL prompt-only",
    "swift_auto_problem.jsonl": "ms-swift query (prompt-only)",
}


def load(name, kind, caplog):
    with caplog.at_level(logging.INFO, logger="alignkit"):
        return load_dataset_spec(str(FIXTURES / name), kind, seed=0)


@pytest.mark.parametrize("name", PREFERENCE_FILES)
def test_preference_fixtures_load_into_the_same_pairs(name, caplog):
    rows = load(name, "preference", caplog)
    assert all(isinstance(r, PreferenceRow) for r in rows)
    assert [(r.prompt, r.chosen, r.rejected) for r in rows] == PAIRS
    assert [r.source.row for r in rows] == [1, 2]
    assert f"rows in format '{PREFERENCE_FILES[name]}'" in caplog.text


@pytest.mark.parametrize("name", KTO_FILES)
def test_kto_fixtures_load_into_the_same_unpaired_rows(name, caplog):
    rows = load(name, "unpaired", caplog)
    assert all(isinstance(r, UnpairedRow) for r in rows)
    assert [(r.prompt, r.completion, r.label) for r in rows] == UNPAIRED
    assert f"rows in format '{KTO_FILES[name]}'" in caplog.text


@pytest.mark.parametrize("name", SFT_FILES)
def test_sft_fixtures_load_into_the_same_conversations(name, caplog):
    rows = load(name, "sft", caplog)
    assert all(isinstance(r, ConversationRow) for r in rows)
    assert [r.messages for r in rows] == CONVERSATIONS
    assert f"rows in format '{SFT_FILES[name]}'" in caplog.text


@pytest.mark.parametrize("name", PROMPT_FILES)
def test_prompt_fixtures_load_into_the_same_prompts(name, caplog):
    rows = load(name, "prompt", caplog)
    assert all(isinstance(r, PromptRow) for r in rows)
    assert [r.prompt for r in rows] == PROMPTS
    assert f"rows in format '{PROMPT_FILES[name]}'" in caplog.text


def test_extras_survive_conversion(caplog):
    uf = load("ultrafeedback_binarized.jsonl", "preference", caplog)
    assert uf[0].extras == {"prompt_id": "p1", "score_chosen": 9.0, "score_rejected": 2.5}
    assert [r.extras for r in load("swift_auto_problem.jsonl", "prompt", caplog)] == [
        {"solution": "5"},
        {"solution": "6"},
    ]


def test_colossalchat_ptx_is_a_conversation(caplog):
    rows = load("colossalchat_ptx.jsonl", "sft", caplog)
    assert [r.messages for r in rows] == [[user(Q1), assistant(A1)]]
    assert "format 'ColossalChat ptx'" in caplog.text


def test_every_format_has_its_natural_kind(caplog):
    for files, kind in ((PREFERENCE_FILES, PreferenceRow), (KTO_FILES, UnpairedRow), (SFT_FILES, ConversationRow),
                        (PROMPT_FILES, PromptRow)):
        for name in files:
            assert all(isinstance(r, kind) for r in load(name, None, caplog)), name


# ------------------------------------------------------------------------------------- tokens and masks


SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
PROMPT_TEXT = [
    SYSTEM + "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n",
    SYSTEM + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
    "<|im_start|>user\nWhat is 10 - 4?<|im_end|>\n<|im_start|>assistant\n",
]


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    from transformers import AutoTokenizer

    return ChatEncoder(AutoTokenizer.from_pretrained(tiny_model_dir), max_length=512)


def ids(encoder, text):
    return encoder.tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("name", PREFERENCE_FILES)
def test_preference_fixtures_render_to_the_same_tokens_and_masks(name, encoder, caplog):
    rows = load(name, "preference", caplog)
    for row, prompt_text, answers in zip(rows, PROMPT_TEXT, [(A1, R1), (A2, R2)]):
        prompt = ids(encoder, prompt_text)
        for encoded, answer in zip(encode_row(encoder, row), answers):
            completion = ids(encoder, f"{answer}<|im_end|>\n")
            assert encoded.input_ids == prompt + completion
            assert encoded.labels == [IGNORE_INDEX] * len(prompt) + completion


@pytest.mark.parametrize("name", KTO_FILES)
def test_kto_fixtures_render_to_the_same_tokens_and_masks(name, encoder, caplog):
    rows = load(name, "unpaired", caplog)
    for row, prompt_text, answer in zip(rows, [PROMPT_TEXT[0], PROMPT_TEXT[0], PROMPT_TEXT[1]], (A1, R1, A2)):
        prompt, completion = ids(encoder, prompt_text), ids(encoder, f"{answer}<|im_end|>\n")
        encoded = encode_row(encoder, row)
        assert (encoded.input_ids, encoded.labels) == (prompt + completion, [IGNORE_INDEX] * len(prompt) + completion)


@pytest.mark.parametrize("name", SFT_FILES)
def test_sft_fixtures_train_every_assistant_turn(name, encoder, caplog):
    rows = load(name, "sft", caplog)
    single = encode_row(encoder, rows[0])
    prompt, answer = ids(encoder, PROMPT_TEXT[0]), ids(encoder, "Answer: 5<|im_end|>\n")
    assert (single.input_ids, single.labels) == (prompt + answer, [IGNORE_INDEX] * len(prompt) + answer)
    multi = encode_row(encoder, rows[1])
    p1 = ids(encoder, SYSTEM + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    a1 = ids(encoder, "Hello! How can I help?<|im_end|>\n")
    p2 = ids(encoder, "<|im_start|>user\nWhat is 10 - 4?<|im_end|>\n<|im_start|>assistant\n")
    a2 = ids(encoder, "Answer: 6<|im_end|>\n")
    assert multi.input_ids == p1 + a1 + p2 + a2
    assert multi.labels == [IGNORE_INDEX] * len(p1) + a1 + [IGNORE_INDEX] * len(p2) + a2


@pytest.mark.parametrize("name", PROMPT_FILES)
def test_prompt_fixtures_render_to_generation_prompts(name, encoder, caplog):
    for row, text in zip(load(name, "prompt", caplog), PROMPT_TEXT):
        encoded = encode_row(encoder, row)
        assert encoded.input_ids == ids(encoder, text)
        assert set(encoded.labels) == {IGNORE_INDEX}


# -------------------------------------------------------------------------------------------- training


def run_cli(command, tiny_model_dir, dataset, out):
    return main([
        command, "--model", tiny_model_dir, "--dataset", dataset, "--max_steps", "1", "--logging_steps", "1",
        "--batch_size", "2", "--output_dir", str(out), "--dtype", "fp32", "--report_to", "none",
    ])


def first_record(out):
    import json

    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return json.loads((run_dir / "logging.jsonl").read_text().splitlines()[0])


@pytest.mark.parametrize("name", PREFERENCE_FILES)
def test_dpo_runs_from_every_preference_format(name, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    assert run_cli("rlhf", tiny_model_dir, str(FIXTURES / name), out) == 0
    first = first_record(out)
    # Step 1: the policy is still the reference, so the DPO loss is exactly ln 2 on both pairs.
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["logps/chosen"] < 0 and first["logps/rejected"] < 0


@pytest.mark.parametrize("name", SFT_FILES)
def test_sft_runs_from_every_conversation_format(name, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    assert run_cli("sft", tiny_model_dir, str(FIXTURES / name), out) == 0
    # A random model over a vocabulary of V tokens starts near ln V per trained token.
    assert 3.0 < first_record(out)["loss"] < 9.0


def test_dpo_from_a_kto_file_says_which_formats_fit(tiny_model_dir, tmp_path, capsys):
    assert run_cli("rlhf", tiny_model_dir, str(FIXTURES / "swift_kto.jsonl"), tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "format 'ms-swift unpaired' gives unpaired or prompt rows, not preference rows" in err
    assert "Traceback" not in err
