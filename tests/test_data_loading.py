"""Loading dataset files and specs into canonical rows: every format, sampling, mixing, splitting, errors."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from alignkit.data.builtin import arith_pref
from alignkit.data.loading import load_dataset_spec, load_datasets
from alignkit.data.rows import ConversationRow, PreferenceRow, PromptRow, RowSource, UnpairedRow
from alignkit.errors import AlignkitError, DataError


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


def write_jsonl(tmp_path: Path, records: list, name: str = "data.jsonl") -> str:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def load(tmp_path, records, kind, name="data.jsonl"):
    path = write_jsonl(tmp_path, records, name)
    return path, load_dataset_spec(path, kind, seed=0)


# ------------------------------------------------------------------------------------------ ms-swift


def test_swift_rejected_response_with_system_and_margin(tmp_path, caplog):
    record = {
        "system": "Be brief.",
        "messages": [user("2+3?"), assistant("5")],
        "rejected_response": "6",
        "margin": 2,
        "solution": "5",
    }
    with caplog.at_level(logging.INFO, logger="alignkit"):
        path, rows = load(tmp_path, [record], "preference")
    assert rows == [
        PreferenceRow(
            prompt=[system("Be brief."), user("2+3?")],
            chosen=[assistant("5")],
            rejected=[assistant("6")],
            margin=2.0,
            source=RowSource(path, 1),
            extras={"solution": "5"},
        )
    ]
    assert f"{path}: 1 rows in format 'ms-swift preference'" in caplog.text


def test_swift_rejected_response_as_messages(tmp_path):
    record = {
        "messages": [user("a"), assistant("b"), user("c"), assistant("d")],
        "rejected_response": [assistant("e")],
    }
    _, rows = load(tmp_path, [record], "preference")
    assert rows[0].prompt == [user("a"), assistant("b"), user("c")]
    assert (rows[0].chosen, rows[0].rejected, rows[0].margin) == ([assistant("d")], [assistant("e")], None)


def test_swift_rejected_messages(tmp_path):
    record = {
        "messages": [user("a"), assistant("b"), user("c"), assistant("d")],
        "rejected_messages": [user("a"), assistant("b"), user("c"), assistant("x")],
    }
    _, rows = load(tmp_path, [record], "preference")
    assert (rows[0].prompt, rows[0].chosen, rows[0].rejected) == (
        [user("a"), assistant("b"), user("c")],
        [assistant("d")],
        [assistant("x")],
    )


def test_swift_label_is_unpaired(tmp_path):
    records = [
        {"messages": [user("q"), assistant("good")], "label": True},
        {"messages": [user("q"), assistant("bad")], "label": False},
    ]
    path, rows = load(tmp_path, records, "unpaired")
    assert rows == [
        UnpairedRow([user("q")], [assistant("good")], True, RowSource(path, 1)),
        UnpairedRow([user("q")], [assistant("bad")], False, RowSource(path, 2)),
    ]


def test_swift_messages_for_sft_and_prompts(tmp_path):
    records = [{"messages": [system("s"), user("q"), assistant("a")], "solution": "42"}]
    path, rows = load(tmp_path, records, "sft")
    assert rows == [ConversationRow([system("s"), user("q"), assistant("a")], RowSource(path, 1))]
    _, rows = load(tmp_path, records + [{"messages": [user("only a prompt")]}], "prompt")
    assert rows == [
        PromptRow([system("s"), user("q")], {"solution": "42"}, RowSource(path, 1)),
        PromptRow([user("only a prompt")], {}, RowSource(path, 2)),
    ]


def test_swift_query_response(tmp_path):
    record = {
        "system": "s",
        "history": [["q1", "r1"]],
        "query": "q2",
        "response": "r2",
        "rejected_response": "bad",
    }
    path, rows = load(tmp_path, [record], "preference")
    assert rows == [
        PreferenceRow(
            [system("s"), user("q1"), assistant("r1"), user("q2")],
            [assistant("r2")],
            [assistant("bad")],
            source=RowSource(path, 1),
        )
    ]
    _, rows = load(tmp_path, [{"query": "q", "response": "r"}], "sft")
    assert rows[0].messages == [user("q"), assistant("r")]


# ----------------------------------------------------------------------------------------------- TRL


def test_trl_standard_preference(tmp_path):
    path, rows = load(tmp_path, [{"prompt": "2+3?", "chosen": "5", "rejected": "6"}], "preference")
    assert rows == [
        PreferenceRow([user("2+3?")], [assistant("5")], [assistant("6")], source=RowSource(path, 1))
    ]


def test_trl_conversational_preference(tmp_path):
    record = {
        "prompt": [system("s"), user("2+3?")],
        "chosen": [assistant("5")],
        "rejected": [assistant("6")],
        "margin": 0.5,
    }
    _, rows = load(tmp_path, [record], "preference")
    assert (rows[0].prompt, rows[0].chosen, rows[0].rejected, rows[0].margin) == (
        [system("s"), user("2+3?")],
        [assistant("5")],
        [assistant("6")],
        0.5,
    )


def test_trl_implicit_prompt(tmp_path, caplog):
    record = {"chosen": [user("2+3?"), assistant("5")], "rejected": [user("2+3?"), assistant("6")]}
    with caplog.at_level(logging.INFO, logger="alignkit"):
        path, rows = load(tmp_path, [record], "preference")
    assert rows == [
        PreferenceRow([user("2+3?")], [assistant("5")], [assistant("6")], source=RowSource(path, 1))
    ]
    assert "format 'TRL preference (implicit prompt)'" in caplog.text


def test_trl_unpaired(tmp_path):
    records = [{"prompt": "q", "completion": "a", "label": False}]
    path, rows = load(tmp_path, records, "unpaired")
    assert rows == [UnpairedRow([user("q")], [assistant("a")], False, RowSource(path, 1))]


def test_trl_prompt_only_and_prompt_completion(tmp_path):
    path, rows = load(tmp_path, [{"prompt": [user("q")], "solution": "7"}], "prompt")
    assert rows == [PromptRow([user("q")], {"solution": "7"}, RowSource(path, 1))]
    path, rows = load(tmp_path, [{"prompt": "q", "completion": "a"}], "sft")
    assert rows == [ConversationRow([user("q"), assistant("a")], RowSource(path, 1))]


def test_trl_messages_for_sft(tmp_path):
    _, rows = load(tmp_path, [{"messages": [user("q"), assistant("a"), user("q2"), assistant("a2")]}], "sft")
    assert rows[0].messages == [user("q"), assistant("a"), user("q2"), assistant("a2")]


def test_preference_for_other_kinds(tmp_path):
    path, rows = load(tmp_path, [{"prompt": "q", "chosen": "good", "rejected": "bad"}], "unpaired")
    assert rows == [
        UnpairedRow([user("q")], [assistant("good")], True, RowSource(path, 1)),
        UnpairedRow([user("q")], [assistant("bad")], False, RowSource(path, 1)),
    ]
    _, rows = load(tmp_path, [{"prompt": "q", "chosen": "good", "rejected": "bad"}], "sft")
    assert rows[0].messages == [user("q"), assistant("good")]


# ------------------------------------------------------------------------------------- file types


def test_json_csv_parquet(tmp_path):
    import pandas as pd

    records = [
        {"prompt": "q1", "chosen": "a", "rejected": "b"},
        {"prompt": "q2", "chosen": "c", "rejected": "d"},
    ]
    (tmp_path / "d.json").write_text(json.dumps(records), encoding="utf-8")
    pd.DataFrame(records).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(records).to_parquet(tmp_path / "d.parquet")
    for name in ("d.json", "d.csv", "d.parquet"):
        rows = load_dataset_spec(str(tmp_path / name), "preference", seed=0)
        assert [(r.prompt, r.chosen, r.source.row) for r in rows] == [
            ([user("q1")], [assistant("a")], 1),
            ([user("q2")], [assistant("c")], 2),
        ], name


def test_csv_labels_and_parquet_messages(tmp_path):
    import pandas as pd

    (tmp_path / "k.csv").write_text("prompt,completion,label\nq,a,True\nq,b,False\n", encoding="utf-8")
    rows = load_dataset_spec(str(tmp_path / "k.csv"), "unpaired", seed=0)
    assert [r.label for r in rows] == [True, False]
    pd.DataFrame([{"messages": [user("q"), assistant("a")], "rejected_response": "b"}]).to_parquet(
        tmp_path / "m.parquet"
    )
    rows = load_dataset_spec(str(tmp_path / "m.parquet"), "preference", seed=0)
    assert (rows[0].prompt, rows[0].chosen, rows[0].rejected) == (
        [user("q")],
        [assistant("a")],
        [assistant("b")],
    )


def test_jsonl_rows_are_line_numbers(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n', encoding="utf-8")
    rows = load_dataset_spec(str(path), "prompt", seed=0)
    assert [r.source.row for r in rows] == [1, 3]


# ---------------------------------------------------------------------------------------- sampling


def test_sample_subset_is_seeded(tmp_path):
    path = write_jsonl(tmp_path, [{"prompt": str(i)} for i in range(10)])
    rows = load_dataset_spec(f"{path}#4", "prompt", seed=0)
    numbers = [r.source.row for r in rows]
    assert len(set(numbers)) == 4 and numbers == sorted(numbers)
    assert numbers == [r.source.row for r in load_dataset_spec(f"{path}#4", "prompt", seed=0)]
    assert any(
        numbers != [r.source.row for r in load_dataset_spec(f"{path}#4", "prompt", seed=s)]
        for s in range(1, 5)
    )


def test_sample_more_than_size_repeats_every_row(tmp_path):
    path = write_jsonl(tmp_path, [{"prompt": str(i)} for i in range(3)])
    numbers = [r.source.row for r in load_dataset_spec(f"{path}#8", "prompt", seed=0)]
    assert len(numbers) == 8
    assert numbers[:6] == [1, 2, 3, 1, 2, 3]
    assert len(set(numbers[6:])) == 2


def test_sample_builtin():
    rows = load_dataset_spec("arith-pref#50", "preference", seed=1)
    train = arith_pref("train", data_seed=1)
    assert len(rows) == 50 and all(row in train for row in rows)


def test_bad_sample_suffix():
    with pytest.raises(
        AlignkitError,
        match=r"^dataset 'arith-pref#x': expected '<dataset>#<number of rows>' with a positive number after '#'$",
    ):
        load_dataset_spec("arith-pref#x", "preference", seed=0)


# --------------------------------------------------------------------------------- mixing, splitting


def test_builtin_specs():
    assert load_dataset_spec("arith-pref:test", "preference", seed=3) == arith_pref("test", data_seed=3)
    assert load_dataset_spec("arith-pref", "preference", seed=3) == arith_pref("train", data_seed=3)
    with pytest.raises(
        AlignkitError,
        match=r"^built-in dataset 'arith-pref' holds PreferenceRows, but sft data must be ConversationRows: "
        r"use arith-sft$",
    ):
        load_dataset_spec("arith-pref", "sft", seed=0)


def test_builtin_val_is_the_held_out_split():
    train, val = load_datasets(["arith-pref#100"], [], "preference", split_dataset_ratio=0.1, seed=2)
    assert len(train) == 100
    assert val == arith_pref("test", data_seed=2)
    prompts = {r.prompt[0]["content"] for r in train}
    assert prompts.isdisjoint(r.prompt[0]["content"] for r in val)


def test_ratio_split_and_mixing(tmp_path):
    a = write_jsonl(tmp_path, [{"prompt": f"a{i}"} for i in range(20)], "a.jsonl")
    b = write_jsonl(tmp_path, [{"prompt": f"b{i}"} for i in range(10)], "b.jsonl")
    train, val = load_datasets([a, b], [], "prompt", split_dataset_ratio=0.25, seed=0, shuffle=False)
    # ceil(0.25 * 20) = 5 and ceil(0.25 * 10) = 3, taken from each file.
    assert [r.source.file for r in val] == [a] * 5 + [b] * 3
    assert [r.source.file for r in train] == [a] * 15 + [b] * 7
    texts = [r.prompt[0]["content"] for r in train + val]
    assert sorted(texts) == sorted([f"a{i}" for i in range(20)] + [f"b{i}" for i in range(10)])
    shuffled, val2 = load_datasets([a, b], [], "prompt", split_dataset_ratio=0.25, seed=0)
    assert val2 == val and shuffled != train and sorted(map(repr, shuffled)) == sorted(map(repr, train))


def test_no_split_without_ratio(tmp_path):
    a = write_jsonl(tmp_path, [{"prompt": f"a{i}"} for i in range(20)])
    train, val = load_datasets([a], [], "prompt", split_dataset_ratio=0.0, seed=0, shuffle=False)
    assert (len(train), val) == (20, [])


def test_val_dataset_wins(tmp_path):
    a = write_jsonl(tmp_path, [{"prompt": f"a{i}"} for i in range(20)], "a.jsonl")
    v = write_jsonl(tmp_path, [{"prompt": "v"}], "v.jsonl")
    train, val = load_datasets([a, "arith-prompts"], [v], "prompt", split_dataset_ratio=0.5, seed=0)
    assert len(train) == 2020
    assert val == [PromptRow([user("v")], {}, RowSource(v, 1))]


# ---------------------------------------------------------------------------------------------- Hub


def test_hub_unreachable(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(AlignkitError) as info:
        load_dataset_spec("org/prefs:default", "preference", seed=0)
    assert str(info.value) == (
        "cannot load dataset 'org/prefs:default' from the Hugging Face Hub (ConnectionError: no network); "
        "the Hub is unreachable or has no such dataset. Pass a local file path (.jsonl, .json, .csv, .parquet) "
        "or a built-in dataset (arith-sft, arith-pref, arith-pref-mismatch, arith-kto, arith-prompts)"
    )


def test_hub_records_are_converted(monkeypatch):
    import datasets

    calls = []

    def fake(repo, subset, split):
        calls.append((repo, subset, split))
        return datasets.Dataset.from_list([{"prompt": "q", "chosen": "a", "rejected": "b"}])

    monkeypatch.setattr(datasets, "load_dataset", fake)
    rows = load_dataset_spec("org/prefs", "preference", seed=0)
    assert calls == [("org/prefs", None, "train")]
    assert rows == [
        PreferenceRow([user("q")], [assistant("a")], [assistant("b")], source=RowSource("hub:org/prefs", 1))
    ]


# ------------------------------------------------------------------------------------------- errors


GOOD = {"prompt": "q", "chosen": "a", "rejected": "b"}


@pytest.mark.parametrize(
    "records, kind, row, message",
    [
        (
            [GOOD, {"prompt": "q", "rejected": "b"}],
            "preference",
            2,
            "field 'chosen': missing value; format 'TRL preference' needs prompt, chosen, rejected",
        ),
        (
            [{"messages": [user("q"), assistant("a")], "rejected_response": None}],
            "preference",
            1,
            "field 'rejected_response': missing value; format 'ms-swift preference' needs messages, rejected_response",
        ),
        (
            [{"prompt": "q", "chosen": "a", "rejected": ""}],
            "preference",
            1,
            "field 'rejected': empty; expected a non-empty string or list of messages",
        ),
        (
            [{"prompt": "q", "chosen": [assistant("")], "rejected": "b"}],
            "preference",
            1,
            "field 'chosen': empty; expected an answer with text",
        ),
        (
            [{"prompt": [{"content": "q"}], "chosen": "a", "rejected": "b"}],
            "preference",
            1,
            "field 'prompt[0]': message has no 'role' (or 'from')",
        ),
        (
            [{"messages": [user("q"), {"role": "assistant"}]}],
            "sft",
            1,
            "field 'messages[1]': message has no 'content' (or 'value', 'text')",
        ),
        (
            [{"messages": [{"role": "bot", "content": "q"}]}],
            "sft",
            1,
            "field 'messages[0].role': unknown role 'bot'; expected one of system, user, assistant, tool_call, tool",
        ),
        (
            [{"messages": [user("q"), {"role": "assistant", "content": 5}]}],
            "sft",
            1,
            "field 'messages[1].content': expected a string, got int",
        ),
        (
            [{"messages": ["hi"]}],
            "sft",
            1,
            "field 'messages[0]': expected a message {'role': ..., 'content': ...}, got str",
        ),
        (
            [{"prompt": "q", "completion": "a", "label": "yes"}],
            "unpaired",
            1,
            "field 'label': expected true or false, got 'yes' (str)",
        ),
        (
            [{"messages": [user("q"), assistant("a")], "label": 1}],
            "unpaired",
            1,
            "field 'label': expected true or false, got 1 (int)",
        ),
        (
            [{"prompt": [user("q"), assistant("a")], "chosen": "a", "rejected": "b"}],
            "preference",
            1,
            "field 'prompt': the prompt must end with a user turn, but it ends with 'assistant'",
        ),
        (
            [{"prompt": "q", "chosen": [user("a")], "rejected": "b"}],
            "preference",
            1,
            "field 'chosen[0].role': expected 'assistant' in an answer, got 'user'",
        ),
        (
            [{"messages": [user("q")], "rejected_response": "b"}],
            "preference",
            1,
            "field 'messages': expected the last message to be an assistant turn, got 'user'",
        ),
        (
            [{"messages": [user("q")]}],
            "sft",
            1,
            "field 'messages': expected the last message to be an assistant turn",
        ),
        (
            [{"chosen": "a", "rejected": "b"}],
            "preference",
            1,
            "field 'prompt': missing; strings for chosen and rejected need a 'prompt' column",
        ),
        (
            [{"chosen": [user("q"), assistant("a")], "rejected": [user("other"), assistant("b")]}],
            "preference",
            1,
            "field 'rejected': shares no prompt ending in a user turn with 'chosen'",
        ),
        (
            [{"prompt": "q", "chosen": "a", "rejected": "b", "margin": "big"}],
            "preference",
            1,
            "field 'margin': expected a number, got 'big' (str)",
        ),
    ],
)
def test_row_errors(tmp_path, records, kind, row, message):
    path = write_jsonl(tmp_path, records)
    with pytest.raises(DataError) as info:
        load_dataset_spec(path, kind, seed=0)
    assert str(info.value) == f"{path}, row {row}, {message}"
    assert (info.value.file, info.value.row) == (path, row)


def test_invalid_json_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b",}\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_dataset_spec(str(path), "prompt", seed=0)
    assert (
        str(info.value)
        == f"{path}, row 2: invalid JSON: Expecting property name enclosed in double quotes (column 16)"
    )


def test_json_line_not_an_object(tmp_path):
    path = write_jsonl(tmp_path, [["prompt", "a"]])
    with pytest.raises(DataError, match=re.escape(f"{path}, row 1: expected a JSON object, got list")):
        load_dataset_spec(path, "prompt", seed=0)


def test_unknown_format(tmp_path):
    path = write_jsonl(tmp_path, [{"ask": "q", "reply": "a"}])
    with pytest.raises(DataError) as info:
        load_dataset_spec(path, "sft", seed=0)
    text = str(info.value)
    assert text.startswith(f"{path}: unknown dataset format: found columns ask, reply; known formats: ")
    assert text.endswith("rename columns with --columns '{\"old\": \"new\"}'")
    assert "ms-swift preference (messages, rejected_response)" in text
    assert "TRL preference (prompt, chosen, rejected)" in text


def test_format_without_the_kind(tmp_path):
    path = write_jsonl(tmp_path, [{"messages": [user("q"), assistant("a")]}])
    with pytest.raises(DataError) as info:
        load_dataset_spec(path, "preference", seed=0)
    assert str(info.value).startswith(
        f"{path}: format 'messages (ms-swift / TRL conversational)' gives sft or prompt rows, not preference rows; "
        "formats for preference: ms-swift preference (messages, rejected_response), "
    )


@pytest.mark.parametrize(
    "content, name", [("", "empty.jsonl"), ("\n\n", "blank.jsonl"), ("[]", "empty.json"), ("", "empty.csv")]
)
def test_empty_file(tmp_path, content, name):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_dataset_spec(str(path), "prompt", seed=0)
    assert str(info.value) == f"{path}: the file holds no rows"


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"prompt": "café"}\n'.encode("latin-1"))
    with pytest.raises(DataError) as info:
        load_dataset_spec(str(path), "prompt", seed=0)
    assert str(info.value) == (
        f"{path}, row 1: not UTF-8 text: byte 0xe9 (invalid continuation byte)"
    )


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(AlignkitError, match=r"^dataset file 'nope/pairs.jsonl' not found$"):
        load_dataset_spec("nope/pairs.jsonl", "preference", seed=0)
    (tmp_path / "d.txt").write_text("x", encoding="utf-8")
    with pytest.raises(
        AlignkitError, match=r"unsupported type; expected one of \.jsonl, \.json, \.csv, \.parquet$"
    ):
        load_dataset_spec(str(tmp_path / "d.txt"), "preference", seed=0)
