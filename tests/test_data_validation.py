"""Row-level validation and the ways data arrives: broken rows and their error text, --check_dataset_strategy,
warnings with counts, --columns and ms-swift's automatic columns, folders and save_to_disk, truncation."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from alignkit.cli import main
from alignkit.data.loading import load_dataset_spec, load_datasets, parse_columns
from alignkit.data.rows import PreferenceRow, UnpairedRow
from alignkit.errors import AlignkitError, DataError

FIXTURES = Path(__file__).parent / "fixtures" / "data"
BROKEN = str(FIXTURES / "broken_rows.jsonl")


def write_jsonl(path: Path, records: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# ------------------------------------------------------------------------------------ invalid rows


def test_broken_rows_stop_with_the_first_error_and_the_count():
    with pytest.raises(DataError) as info:
        load_dataset_spec(BROKEN, "preference", seed=0)
    assert str(info.value) == (
        f"{BROKEN}, row 2: invalid JSON: Expecting property name enclosed in double quotes (column 77) "
        "(5 invalid rows in this file: 2, 3, 4, 5, 7; --check_dataset_strategy discard drops them)"
    )
    assert (info.value.file, info.value.row) == (BROKEN, 2)


@pytest.mark.parametrize("strategy", ["discard", "warning"])
def test_discard_drops_invalid_rows_and_counts_them(strategy, caplog):
    with caplog.at_level(logging.INFO, logger="alignkit"):
        rows = load_dataset_spec(BROKEN, "preference", seed=0, check_dataset_strategy=strategy)
    assert [r.source.row for r in rows] == [1, 6, 8]
    assert (
        f"{BROKEN}: dropped 5 of 8 rows as invalid (--check_dataset_strategy {strategy}): rows 2, 3, 4, 5, 7. "
        f"First: {BROKEN}, row 2: invalid JSON" in caplog.text
    )
    assert f"{BROKEN}: 1 of 3 pairs have identical chosen and rejected answers (rows 6)" in caplog.text


@pytest.mark.parametrize(
    "line, message",
    [
        (3, "field 'chosen': missing value; format 'TRL preference' needs prompt, chosen, rejected"),
        (4, "field 'rejected': empty; expected a non-empty string or list of messages"),
        (5, "field 'prompt[0]': message has no 'role' (or 'from')"),
        (7, f"field 'images[0]': image file 'missing.png' not found (looked in the working directory and {FIXTURES})"),
    ],
)
def test_each_broken_row_names_its_line_and_field(tmp_path, line, message):
    lines = Path(BROKEN).read_text().splitlines()
    path = tmp_path / "one.jsonl"
    path.write_text(lines[0] + "\n" + "\n" * (line - 2) + lines[line - 1] + "\n")
    with pytest.raises(DataError) as info:
        load_dataset_spec(str(path), "preference", seed=0)
    assert str(info.value) == f"{path}, row {line}, {message}".replace(str(FIXTURES), str(tmp_path))


@pytest.mark.parametrize(
    "records, kind, message",
    [
        (
            [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "kto_tag": "yes"}],
            "unpaired",
            "row 1, field 'kto_tag': expected true or false, got 'yes' (str)",
        ),
        (
            [{"conversations": [{"from": "observation", "value": "q"}]}],  # LLaMA-Factory's tool result
            "prompt",
            "row 1, field 'conversations': tools, tool calls and tool results (agent rows) are trained by sft only",
        ),
        (
            [
                {
                    "chosen": "\n\nHuman: hi\n\nAssistant: a",
                    "rejected": "\n\nHuman: hi\n\nAssistant: b\n\nHuman: more?\n\nAssistant: c",
                }
            ],
            "preference",
            "row 1, field 'rejected[2]': 'chosen' and 'rejected' differ before their last user turn "
            "(they agree on 1 messages); only the final answer may differ",
        ),
        (
            [{"chosen": "Human: hi\n\nAssistant: a", "rejected": "Human: hi\n\nAssistant:"}],
            "preference",
            "row 1, field 'rejected': empty; expected an answer with text",
        ),
        (
            [{"prompt": "other", "chosen": [user("q"), assistant("a")], "rejected": [user("q"), assistant("b")]}],
            "preference",
            "row 1, field 'prompt': does not match the conversation that 'chosen' and 'rejected' share",
        ),
        ([{"instruction": "q", "input": 3, "output": "a"}], "sft", "row 1, field 'input': expected a string, got int"),
        (
            [
                {
                    "context": [{"from": "human", "content": "q"}, {"from": "assistant", "content": "a"}],
                    "chosen": [{"from": "assistant", "content": "b"}],
                    "rejected": [{"from": "assistant", "content": "c"}],
                }
            ],
            "preference",
            "row 1, field 'context': the prompt must end with a user turn, but it ends with 'assistant'",
        ),
        (
            [{"messages": [user("q"), assistant("a")], "images": "pixel.png"}],
            "sft",
            "row 1, field 'images[0]': image file 'pixel.png' not found",
        ),
        (
            [
                {"messages": [user("q")], "system": "s"},
                {"messages": [{"role": "system", "content": "s"}, user("q")], "system": "s"},
            ],
            "prompt",
            "row 2, field 'system': the conversation already starts with a system message",
        ),
    ],
)
def test_format_specific_errors(tmp_path, records, kind, message):
    path = write_jsonl(tmp_path / "data.jsonl", records)
    with pytest.raises(DataError) as info:
        load_dataset_spec(path, kind, seed=0)
    assert str(info.value).startswith(f"{path}, {message}")


def test_existing_image_paths_pass_and_are_reported(tmp_path, caplog):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "pixel.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    path = write_jsonl(tmp_path / "data.jsonl", [
        {"messages": [user("q"), assistant("a")], "rejected_response": "b", "images": ["img/pixel.png"]},
    ])
    with caplog.at_level(logging.INFO, logger="alignkit"):
        rows = load_dataset_spec(path, "preference", seed=0)
    assert rows[0].extras == {"images": ["img/pixel.png"]}
    assert (
        "1 rows name images; their paths were checked. Images reach the model only when it is a vision" in caplog.text
    )


def test_cli_stops_on_a_broken_row_before_loading_a_model(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["rlhf", "--model", str(tmp_path / "no-model-needed"), "--dataset", BROKEN, "--output_dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.startswith(f"alignkit: error: {BROKEN}, row 2: invalid JSON")
    assert not out.exists()


def test_kto_balance_is_logged_with_counts(tmp_path, caplog):
    path = write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "q", "completion": "a", "label": i < 5} for i in range(6)])
    with caplog.at_level(logging.INFO, logger="alignkit"):
        load_datasets([path], [], "unpaired", split_dataset_ratio=0, seed=0)
    assert ("training KTO rows: 5 desirable, 1 undesirable (ratio 5.00); the KTO paper recommends "
            "desirable:undesirable between 1.00 and 1.33 after weighting") in caplog.text
    only_good = write_jsonl(tmp_path / "good.jsonl", [{"prompt": "q", "completion": "a", "label": True}])
    with caplog.at_level(logging.INFO, logger="alignkit"):
        load_datasets([only_good], [], "unpaired", split_dataset_ratio=0, seed=0)
    assert "KTO needs both desirable and undesirable examples" in caplog.text


# ---------------------------------------------------------------------------------------------- columns


def test_columns_rename_before_detection(tmp_path, caplog):
    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction_text": "q", "good": "a", "bad": "b"}])
    rows = load_dataset_spec(
        path,
        "preference",
        seed=0,
        columns=parse_columns('{"instruction_text": "prompt", "good": "chosen", "bad": "rejected"}'),
    )
    assert (rows[0].prompt, rows[0].chosen, rows[0].rejected) == ([user("q")], [assistant("a")], [assistant("b")])
    kto = write_jsonl(tmp_path / "k.jsonl", [{"messages": [user("q"), assistant("a")], "is_good": False}])
    assert load_dataset_spec(kto, "unpaired", seed=0, columns={"is_good": "label"})[0].label is False


def test_columns_errors(tmp_path):
    with pytest.raises(AlignkitError, match=r"^--columns: invalid JSON \(Expecting value\); expected an object like"):
        parse_columns("{prompt: query}"[1:])
    with pytest.raises(AlignkitError, match=r"^--columns: expected a JSON object of column names"):
        parse_columns('["prompt"]')
    path = write_jsonl(tmp_path / "d.jsonl", [{"q": "x", "prompt": "y"}])
    with pytest.raises(DataError, match=r"row 1: renaming a column to 'prompt', which the file already has$"):
        load_dataset_spec(path, "prompt", seed=0, columns={"q": "prompt"})


def test_swift_auto_columns_beat_a_weaker_direct_match(tmp_path, caplog):
    # prompt/response/rejected_response: TRL would read a prompt-only file; ms-swift reads query/response pairs.
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "response": "a", "rejected_response": "b",
                                                "system_prompt": "s"}])
    with caplog.at_level(logging.INFO, logger="alignkit"):
        rows = load_dataset_spec(path, "preference", seed=0)
    assert rows[0] == PreferenceRow([{"role": "system", "content": "s"}, user("q")], [assistant("a")],
                                    [assistant("b")], source=rows[0].source)
    assert (f"{path}: 1 rows in format 'ms-swift query/response preference' (columns renamed as ms-swift does: "
            "prompt → query, system_prompt → system)") in caplog.text


def test_alpaca_input_joins_the_instruction(tmp_path):
    with_input = [{"instruction": "Add these numbers.", "input": "2 + 3", "output": "5", "system": "Be brief."}]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(with_input))
    rows = load_dataset_spec(str(path), "sft", seed=0)
    assert rows[0].messages == [{"role": "system", "content": "Be brief."}, user("Add these numbers.\n2 + 3"),
                                assistant("5")]


# -------------------------------------------------------------------------------------- files and folders


def fixture_records(name):
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines()]


def test_csv_parquet_json_and_folders_load_the_same_rows(tmp_path):
    import datasets
    import pandas as pd

    records = fixture_records("trl_preference.jsonl")[:1] + [{"prompt": "What is 10 - 4?", "chosen": "Answer: 6",
                                                             "rejected": "Answer: 7"}]
    expected = [([user(r["prompt"])], [assistant(r["chosen"])], [assistant(r["rejected"])]) for r in records]
    pd.DataFrame(records).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(records).to_parquet(tmp_path / "d.parquet")
    (tmp_path / "d.json").write_text(json.dumps(records))
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(records),
                          "test": datasets.Dataset.from_list(records[:1])}).save_to_disk(str(tmp_path / "saved_dict"))
    for name in ("d.csv", "d.parquet", "d.json", "saved", "saved_dict"):
        rows = load_dataset_spec(str(tmp_path / name), "preference", seed=0)
        assert [(r.prompt, r.chosen, r.rejected) for r in rows] == expected, name

    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(FIXTURES / "hh_rlhf.jsonl", folder / "a.jsonl")
    shutil.copy(FIXTURES / "llamafactory_sharegpt_preference.json", folder / "b.json")
    (folder / "notes.txt").write_text("not data")
    rows = load_dataset_spec(f"{folder}#3", "preference", seed=0)
    assert len(rows) == 3
    rows = load_dataset_spec(str(folder), "preference", seed=0)
    assert [(Path(r.source.file).name, r.source.row) for r in rows] == [("a.jsonl", 1), ("a.jsonl", 2),
                                                                       ("b.json", 1), ("b.json", 2)]
    assert rows[0].prompt == rows[2].prompt and rows[1].chosen == rows[3].chosen


def test_empty_folder_and_split_less_save(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        AlignkitError, match=r"dataset folder '.*empty' holds no \.jsonl, \.json, \.csv, \.parquet files"
    ):
        load_dataset_spec(str(tmp_path / "empty"), "preference", seed=0)
    import datasets

    one = datasets.Dataset.from_list([{"prompt": "q", "chosen": "a", "rejected": "b"}])
    datasets.DatasetDict({"a": one, "b": one}).save_to_disk(str(tmp_path / "two"))
    with pytest.raises(AlignkitError, match=r"holds splits a, b but no 'train' split$"):
        load_dataset_spec(str(tmp_path / "two"), "preference", seed=0)


# -------------------------------------------------------------------------------------------- truncation


def test_prompt_longer_than_max_length(tiny_model_dir, tmp_path, capsys, caplog):
    long = {"prompt": "hello world " * 40, "chosen": "Answer: 3", "rejected": "Answer: 4"}
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}, long])
    common = ["rlhf", "--model", tiny_model_dir, "--dataset", path, "--max_length", "48", "--max_steps", "1",
              "--report_to", "none", "--output_dir", str(tmp_path / "out")]
    assert main([*common, "--truncation_strategy", "raise"]) == 2
    err = capsys.readouterr().err
    assert f"alignkit: error: {path}, row 2: " in err and "exceed --max_length 48" in err and "Traceback" not in err
    with caplog.at_level(logging.INFO, logger="alignkit"):
        assert main(common) == 0
    assert "Dropped 1 of 2 training rows that do not fit --max_length 48 (--truncation_strategy delete)" in caplog.text
    only_long = write_jsonl(tmp_path / "long.jsonl", [long])
    assert main([*common[:4], only_long, *common[5:]]) == 2
    assert "no training rows are left after truncation" in capsys.readouterr().err


def test_kto_rows_from_a_preference_file():
    rows = load_dataset_spec(str(FIXTURES / "hh_rlhf.jsonl"), "unpaired", seed=0)
    assert [(type(r), r.label) for r in rows] == [(UnpairedRow, True), (UnpairedRow, False)] * 2
