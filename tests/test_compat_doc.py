"""ms-swift flags: docs/compat.md is generated from the flag declarations; flags with no work log why;
refused features stop with their reason."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from alignkit.cli import main
from alignkit.config.compat import SWIFT_TRAINING_FLAGS, UNSUPPORTED_FLAGS, render_markdown, status

DOC = Path(__file__).resolve().parent.parent / "docs" / "compat.md"


def test_docs_compat_md_is_the_generated_table():
    assert DOC.read_text() == render_markdown(), "regenerate: python -m alignkit.config.compat > docs/compat.md"


def test_every_flag_has_a_status_and_refused_ones_say_why():
    for names in SWIFT_TRAINING_FLAGS.values():
        for name in names:
            state, note = status(name)
            assert state in ("same", "differs", "no effect", "unsupported", "unknown")
            if state in ("no effect", "differs", "unsupported"):
                assert len(note) > 20, name
    assert status("dataloader_num_workers")[0] == "no effect"
    assert status("torch_dtype") == ("same", "alias of --dtype") or status("torch_dtype")[0] == "differs"


def test_a_flag_without_work_is_accepted_and_logs_why_once(tiny_model_dir, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="alignkit"):
        assert main(["sft", "--model", tiny_model_dir, "--dataset", "arith-sft#8", "--max_steps", "1",
                     "--dataloader_num_workers", "4", "--use_logits_to_keep", "true", "--label_names", "labels",
                     "--report_to", "none", "--output_dir", str(out)]) == 0
    said = [r.getMessage() for r in caplog.records if "has no effect:" in r.getMessage()]
    assert len([m for m in said if m.startswith("--dataloader_num_workers 4 ")]) == 1
    assert any(m.startswith("--use_logits_to_keep True ") for m in said)
    assert any(m.startswith("--label_names labels ") for m in said)


@pytest.mark.parametrize("flag", ["--galore_quantization", "--reft_layers", "--use_ray"])
def test_a_refused_feature_stops_with_its_reason(flag, capsys):
    assert main(["sft", flag, "true", "--dataset", "arith-sft#4"]) == 2
    err = capsys.readouterr().err
    assert f"{flag} is not supported by alignkit: {UNSUPPORTED_FLAGS[flag[2:]]}" in err


def test_sequence_parallelism_needs_its_processes(capsys):
    assert main(["sft", "--sequence_parallel_size", "4", "--dataset", "arith-sft#4"]) == 2
    assert "the 1 process(es) do not split into groups of 4" in capsys.readouterr().err
    assert main(["sft", "--dataloader_num_workers", "-1", "--dataset", "arith-sft#4"]) == 2


def test_every_seed_command_names_a_test_that_exists():
    from pathlib import Path

    from alignkit.config.seed_status import SEED_COMMANDS

    root = Path(__file__).resolve().parents[1]
    for command in SEED_COMMANDS:
        path, _, name = command.test.partition("::")
        assert f"def {name}(" in (root / path).read_text(), command
