"""A generated corpus of malformed dataset files: every one must end the run with exit status 2 and a
message that names the file (and the row, where there is one), never a traceback.

The corpus is deterministic (fixed seeds) and covers invalid JSON, non-object records, wrong types,
missing and empty fields, wrong encodings, binary junk, huge lines, unknown formats, broken JSON arrays,
CSV and Parquet files, empty files and bad paths. Data is read before any model is loaded, so each case
takes milliseconds; the tiny model is passed anyway so that a row which slips through to tokenisation is
caught there too.
"""

import codecs
import gzip
import io
import json
import random
from dataclasses import dataclass

import pytest

from alignkit.cli import main


@dataclass
class Case:
    name: str
    content: bytes | None  # None: the path is not created (or is made a directory, see `directory`)
    suffix: str = ".jsonl"
    row: int | None = None  # the row the message must name, where the problem has one
    command: str = "rlhf"
    directory: bool = False


def swift(i: int = 0) -> dict:
    return {"messages": [{"role": "user", "content": f"What is {i} + 1?"},
                         {"role": "assistant", "content": f"Answer: {i + 1}"}],
            "rejected_response": f"Answer: {i + 2}"}


def trl(i: int = 0) -> dict:
    return {"prompt": f"What is {i} + 1?", "chosen": f"Answer: {i + 1}", "rejected": f"Answer: {i + 2}"}


def sft(i: int = 0) -> dict:
    return {"messages": [{"role": "user", "content": f"What is {i} + 1?"},
                         {"role": "assistant", "content": f"Answer: {i + 1}"}]}


def lines(bad: str, at: int, make=swift, total: int = 4) -> bytes:
    """JSON lines of good rows with ``bad`` (raw text) as line ``at`` (1-based)."""
    rows = [json.dumps(make(i)) for i in range(total)]
    rows[at - 1] = bad
    return ("\n".join(rows) + "\n").encode()


def with_row(bad: dict, at: int = 2, make=swift) -> bytes:
    return lines(json.dumps(bad), at, make)


def message_list(*messages) -> dict:
    return {"messages": list(messages), "rejected_response": "Answer: 3"}


USER = {"role": "user", "content": "What is 1 + 1?"}
ANSWER = {"role": "assistant", "content": "Answer: 2"}


def cases() -> list[Case]:
    out: list[Case] = []

    # --- invalid JSON lines, at the first and a later line
    broken = ['{"messages": [', '{"prompt": "q", "chosen": "a",}', "{'prompt': 'q'}", '{prompt: "q"}',
              '{"prompt": "q" "chosen": "a"}', "not json at all", "}{", '{"prompt": "q"} // comment',
              '{"prompt": "\\x41"}', '{"prompt": "unterminated}', "[1, 2", '{"a": 01}', "True",
              '{"prompt": "q", "chosen": "a", "rejected": "b"} {"extra": 1}', "NaN]", '{"a":}']
    for i, text in enumerate(broken):
        for at in (1, 3):
            out.append(Case(f"invalid-json-{i}-line{at}", lines(text, at), row=at))

    # --- records that are not objects
    for i, text in enumerate(['1', '"text"', "[]", '[{"prompt": "q"}]', "null", "true", "3.5"]):
        for at in (1, 2):
            out.append(Case(f"not-an-object-{i}-line{at}", lines(text, at), row=at))

    # --- wrong types in ms-swift rows
    wrong_messages = ["a string", 5, {}, {"role": "user"}, ["hi"], [1, 2], [[USER, ANSWER]], [None],
                      [USER, "Answer: 2"], True]
    for i, value in enumerate(wrong_messages):
        out.append(Case(f"swift-messages-type-{i}", with_row({"messages": value, "rejected_response": "x"}), row=2))
    wrong_message = [{"role": 5, "content": "x"}, {"role": "bot", "content": "x"}, {"role": "user", "content": 5},
                     {"role": "user", "content": 3.5}, {"role": "user", "content": True}, {"content": "x"},
                     {"role": "user"}, {"role": "user", "content": None}, {"role": None, "content": "x"},
                     {"role": ["user"], "content": "x"}, {"role": "USER ", "content": "x"}]
    for i, message in enumerate(wrong_message):
        out.append(Case(f"swift-message-{i}", with_row(message_list(message, ANSWER)), row=2))
    for i, value in enumerate([5, [], {}, ["a"], [1], True, "", [{"role": "user", "content": "x"}], 2.5]):
        out.append(Case(f"swift-rejected-{i}", with_row({**swift(), "rejected_response": value}), row=2))
    for i, value in enumerate([5, [], {"content": "s"}]):
        out.append(Case(f"swift-system-{i}", with_row({**swift(), "system": value}), row=2))
    for i, value in enumerate(["big", [1], {"m": 1}, True]):
        out.append(Case(f"swift-margin-{i}", with_row({**swift(), "margin": value}), row=2))

    # --- wrong types in TRL rows
    trl_bad = [
        {"prompt": 5},
        {"prompt": [1]},
        {"prompt": {}},
        {"chosen": 5},
        {"rejected": 5},
        {"chosen": [{"role": "user", "content": "a"}]},
        {"rejected": [ANSWER, {"role": "user", "content": "x"}]},
        {"margin": "big"},
        {"chosen": None},
        {"rejected": [None]},
        {"prompt": [{"role": "assistant", "content": "q"}]},
        {"chosen": {"role": "assistant"}},
        {"prompt": True},
        {"rejected": 1e308},
    ]
    for i, change in enumerate(trl_bad):
        out.append(Case(f"trl-type-{i}", with_row({**trl(), **change}, make=trl), row=2))
    implicit = [{"chosen": [USER, ANSWER], "rejected": [{"role": "user", "content": "other"}, ANSWER]},
                {"chosen": "a", "rejected": "b"}, {"chosen": [ANSWER], "rejected": [ANSWER]},
                {"chosen": [USER, ANSWER], "rejected": [USER]}]
    for i, row in enumerate(implicit):
        out.append(
            Case(
                f"trl-implicit-{i}",
                lines(json.dumps(row), 2, make=lambda j: {"chosen": [USER, ANSWER], "rejected": [USER, ANSWER]}),
                row=2,
            )
        )

    # --- missing and empty fields
    empty = [{"messages": [], "rejected_response": "x"},
             message_list(USER, {"role": "assistant", "content": ""}),
             {**swift(), "rejected_response": ""},
             message_list(USER),  # no answer: ends with the user turn
             message_list(ANSWER),  # no prompt at all
             message_list({"role": "system", "content": "s"}, ANSWER),
             message_list({"role": "system", "content": "s"}),
             {"messages": [USER, ANSWER]},  # rejected_response missing in one row
             {},
             {"rejected_response": "x"},
             {"messages": None, "rejected_response": "x"},
             {"messages": [USER, ANSWER], "rejected_response": None},
             message_list(USER, ANSWER, USER)]
    for i, row in enumerate(empty):
        out.append(Case(f"missing-or-empty-{i}", with_row(row), row=2))
    for i, change in enumerate([{"prompt": ""}, {"chosen": ""}, {"rejected": ""}, {"prompt": []}, {"chosen": []},
                                {"prompt": None}]):
        out.append(Case(f"trl-empty-{i}", with_row({**trl(), **change}, make=trl), row=2))

    # --- SFT rows
    sft_bad = [
        {"messages": [USER]},
        {"messages": [USER, ANSWER, USER]},
        {"messages": [{"role": "system", "content": "s"}]},
        {"messages": []},
        {"messages": [USER, {"role": "assistant", "content": 7}]},
        {"messages": "hello"},
        {"messages": [USER, {"role": "assistant"}]},
        {"messages": [USER, {"role": "critic", "content": "x"}]},
        {"other": 1},
        {"messages": [USER, ANSWER], "system": 3},
        {"messages": [USER, {"role": "assistant", "content": ""}]},
        {"messages": [ANSWER]},
    ]
    for i, row in enumerate(sft_bad):
        out.append(Case(f"sft-{i}", with_row(row, make=sft), row=2, command="sft"))
    query = lambda j: {"query": f"q{j}", "response": f"r{j}"}  # noqa: E731
    for i, row in enumerate(
        [
            {"query": "q"},
            {"query": "q", "response": ""},
            {"query": 5, "response": "r"},
            {"query": "q", "response": "r", "history": "h"},
            {"query": "q", "response": "r", "history": [["a"]]},
            {"query": "q", "response": "r", "history": [[1, 2]]},
        ]
    ):
        out.append(Case(f"sft-query-{i}", lines(json.dumps(row), 2, make=query), row=2, command="sft"))
    completion = lambda j: {"prompt": f"q{j}", "completion": f"c{j}"}  # noqa: E731
    for i, row in enumerate([{"prompt": "q", "completion": 5}, {"prompt": "q", "completion": ""},
                             {"prompt": "", "completion": "c"}, {"prompt": "q", "completion": None}]):
        out.append(Case(f"sft-completion-{i}", lines(json.dumps(row), 3, make=completion), row=3, command="sft"))

    # --- wrong encodings (the row is the line holding the first bad byte)
    good = lines(json.dumps(swift(9)), 4)
    out.append(Case("utf16-bom", codecs.BOM_UTF16_LE + good.decode().encode("utf-16-le"), row=1))
    out.append(Case("utf16-be-bom", codecs.BOM_UTF16_BE + good.decode().encode("utf-16-be"), row=1))
    out.append(Case("utf16-no-bom", good.decode().encode("utf-16-le"), row=1))
    out.append(Case("utf32", good.decode().encode("utf-32"), row=1))
    for name, raw in (
        ("latin1", "Qu'est-ce que café ?".encode("latin-1")),
        ("cp1252", "“smart quotes”".encode("cp1252")),
        ("gbk", "你好".encode("gbk")),
        ("shift-jis", "こんにちは".encode("shift_jis")),
        ("continuation-byte", b"\x80abc"),
        ("overlong", b"\xc0\xaf"),
        ("surrogate-bytes", b"\xed\xa0\x80"),
    ):
        for at in (2, 4):
            content = lines("PLACEHOLDER", at).replace(b"PLACEHOLDER", b'{"prompt": "' + raw + b'"}')
            out.append(Case(f"encoding-{name}-line{at}", content, row=at))
    out.append(Case("truncated-multibyte-at-end", good + "é".encode()[:1], row=5))
    for i, escape in enumerate(["\\ud800", "\\udfff", "\\ud83d", "x\\udc00y"]):
        row = json.dumps(swift(1)).replace("Answer: 2", f"Answer: {escape}")
        out.append(Case(f"lone-surrogate-{i}", lines(row, 3), row=3))

    # --- binary junk
    rng = random.Random(1234)
    for size in (1, 16, 256, 4096, 65536):
        junk = bytes(rng.randrange(256) for _ in range(size))
        for suffix in (".jsonl", ".json", ".csv", ".parquet"):
            out.append(Case(f"junk-{size}{suffix}", junk, suffix=suffix))
    for suffix in (".jsonl", ".json", ".csv", ".parquet"):
        out.append(Case(f"nul-bytes{suffix}", b"\x00" * 1000, suffix=suffix))
    out.append(Case("gzip-as-jsonl", gzip.compress(lines(json.dumps(swift(3)), 3))))
    out.append(Case("png-as-jsonl", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4))
    out.append(Case("zip-as-json", b"PK\x03\x04" + bytes(range(256)) * 4, suffix=".json"))
    out.append(Case("elf-as-jsonl", b"\x7fELF\x02\x01\x01" + b"\x00" * 200))
    out.append(Case("pdf-as-csv", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + bytes(range(256)), suffix=".csv"))
    out.append(Case("parquet-magic-junk", b"PAR1" + bytes(rng.randrange(256) for _ in range(500)) + b"PAR1",
                    suffix=".parquet"))
    out.append(Case("json-with-nul-in-line", lines('{"prompt": "a\x00b"}', 2), row=2))

    # --- huge lines
    out.append(Case("huge-invalid-line", lines("{" + "x" * 5_000_000, 2), row=2))
    out.append(Case("deep-nesting-open", lines("[" * 200_000, 2), row=2))
    out.append(Case("deep-nesting-balanced", lines("[" * 100_000 + "]" * 100_000, 1), row=1))
    out.append(Case("deep-nesting-objects", lines('{"a":' * 100_000 + "1" + "}" * 100_000, 3), row=3))
    out.append(Case("huge-column-name", lines(json.dumps({"k" * 1_000_000: 1}), 1)))
    out.append(Case("huge-role", with_row(message_list({"role": "r" * 1_000_000, "content": "x"}, ANSWER)), row=2))
    out.append(Case("huge-integer", lines('{"prompt": ' + "9" * 10_000 + "}", 2), row=2))
    out.append(Case("huge-float", with_row({**trl(), "rejected": 1e308}, make=trl), row=2))
    out.append(
        Case(
            "huge-history-pair",
            lines(json.dumps({"query": "q", "response": "r", "history": [["a" * 1_000_000]]}), 1, make=query),
            row=1,
            command="sft",
        )
    )

    # --- unknown formats and formats that cannot give the command's rows
    unknown = [{"foo": 1}, {"txt": "hello"}, {"q": "a", "a": "b"}, {"xyz_prompt": "p"}, {"Prompt": "p", "Chosen": "c"},
               {"message": [USER, ANSWER]}]
    for i, row in enumerate(unknown):
        out.append(Case(f"unknown-format-{i}", ("\n".join(json.dumps(row) for _ in range(3)) + "\n").encode()))
    out.append(Case("only-empty-objects", b"{}\n{}\n"))
    out.append(Case("unpaired-rows-for-dpo", b'{"prompt": "q", "completion": "c", "label": true}\n'))
    out.append(Case("sft-rows-for-dpo", (json.dumps(sft()) + "\n").encode()))
    out.append(Case("prompt-only-for-dpo", b'{"prompt": "q"}\n'))
    out.append(Case("prompt-only-for-sft", b'{"prompt": "q"}\n', command="sft"))
    out.append(Case("unpaired-rows-for-sft", b'{"messages": [], "label": true}\n', command="sft"))

    # --- JSON arrays
    array_cases = [
        ("[1, 2]", 1),
        ("[null]", 1),
        ("[[{}]]", 1),
        ('[{"prompt": "q", "chosen": "a", "rejected": "b"}, 5]', 2),
        ('[{"prompt": "q"', None),
        ('"string"', None),
        ("5", None),
        ("null", None),
        ("[]", None),
        ('{"data": [1, 2]}', None),
        ("[" * 100_000 + "]" * 100_000, None),
        ('[{"prompt": "q", "chosen": "a", "rejected": "b"},\n {"prompt": "q", "chosen": 5, "rejected": "b"}]', 2),
        ('{\n  "prompt": "q",\n  "chosen": "a",\n  "rejected": "b"\n}', None),
        ('[{"prompt": "\\ud800", "chosen": "a", "rejected": "b"}]', 1),
    ]
    for i, (text, row) in enumerate(array_cases):
        out.append(Case(f"json-array-{i}", text.encode(), suffix=".json", row=row))
    pretty = json.dumps([trl(i) for i in range(5)], indent=2).replace('"Answer: 4"', "4", 1)  # row 3's rejected
    out.append(Case("json-array-pretty-bad-element", pretty.encode(), suffix=".json", row=3))

    # --- CSV
    csv_cases = [
        ('prompt,chosen,rejected\n"q,a,b\n', None),
        ("foo,bar\n1,2\n", None),
        ("prompt,chosen,rejected\n", None),
        ("", None),
        ('messages,rejected_response\n"[{""role"": ""user""}]",x\n', 1),
        ("prompt,chosen,rejected\nq,a,b\nq,,b\n", 2),
        ("prompt,chosen,rejected\nq,a,b\nq,a,b,c,d\n", None),
        ("prompt,chosen,rejected\nq,a\n", 1),
        ("prompt;chosen;rejected\nq;a;b\n", None),
        ("prompt,chosen,rejected\n,a,b\n", 1),
        ("prompt,completion,label\nq,c,yes\n", None),
    ]
    for i, (text, row) in enumerate(csv_cases):
        out.append(Case(f"csv-{i}", text.encode(), suffix=".csv", row=row))

    # --- Parquet
    out.extend(parquet_cases())

    # --- empty files
    for i, text in enumerate([b"", b"\n\n\n", b"   \n  ", b"\t"]):
        out.append(Case(f"empty-{i}", text))
    out.append(Case("empty-json", b"", suffix=".json"))
    out.append(Case("bom-only", codecs.BOM_UTF8))

    # --- paths
    out.append(Case("missing-file", None))
    out.append(Case("directory-named-jsonl", None, directory=True))
    out.append(Case("unsupported-suffix", b"{}\n", suffix=".txt"))
    out.append(Case("gz-suffix", gzip.compress(b"{}\n"), suffix=".jsonl.gz"))
    return out


def parquet_cases() -> list[Case]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def parquet(table) -> bytes:
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        return buffer.getvalue()

    good = parquet(pa.Table.from_pylist([trl(i) for i in range(4)]))
    return [
        Case("parquet-truncated", good[: len(good) // 2], suffix=".parquet"),
        Case("parquet-no-footer", good[:-8], suffix=".parquet"),
        Case(
            "parquet-wrong-type",
            parquet(pa.table({"messages": [1, 2], "rejected_response": ["a", "b"]})),
            suffix=".parquet",
            row=1,
        ),
        Case(
            "parquet-null-field",
            parquet(pa.Table.from_pylist([trl(0), {**trl(1), "chosen": None}])),
            suffix=".parquet",
            row=2,
        ),
        Case("parquet-empty-table", parquet(pa.table({"prompt": pa.array([], pa.string())})), suffix=".parquet"),
        Case("parquet-unknown-columns", parquet(pa.table({"foo": [1], "bar": ["x"]})), suffix=".parquet"),
        Case(
            "parquet-prompt-ints",
            parquet(pa.table({"prompt": [[1, 2]], "chosen": ["a"], "rejected": ["b"]})),
            suffix=".parquet",
            row=1,
        ),
        Case(
            "parquet-messages-bad-role",
            parquet(
                pa.Table.from_pylist(
                    [{"messages": [{"role": "nobody", "content": "x"}, ANSWER], "rejected_response": "b"}]
                )
            ),
            suffix=".parquet",
            row=1,
        ),
    ]


CASES = cases()


def test_the_corpus_is_large_and_varied():
    assert len(CASES) >= 200
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_malformed_dataset_ends_with_a_clear_error(case, tiny_model_dir, tmp_path, capsys):
    path = tmp_path / f"{case.name}{case.suffix}"
    if case.directory:
        path.mkdir()
    elif case.content is not None:
        path.write_bytes(case.content)
    out = tmp_path / "out"
    code = main([case.command, "--model", tiny_model_dir, "--dataset", str(path), "--output_dir", str(out),
                 "--dtype", "fp32", "--report_to", "none", "--max_steps", "1"])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    message = err[err.index("alignkit: error:"):]
    assert str(path) in message, message[:2000]
    if case.row is not None:
        assert f"row {case.row}" in message, message[:2000]
    assert len(message) < 3000, f"{len(message)} characters"
    assert not out.exists()  # nothing was written: the run never started
