"""`alignkit <sub> --help` stays byte-for-byte what users saw before the package was re-housed.

The snapshot (tests/fixtures/help_snapshot.json) was taken from the CLI before the move into layer folders;
a flag added on purpose updates it: `python tests/test_help_snapshot.py` rewrites the file.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

SNAPSHOT = Path(__file__).parent / "fixtures" / "help_snapshot.json"


def current_help() -> dict[str, str]:
    from alignkit.cli import build_parser

    parser = build_parser()
    subparsers = parser._subparsers._group_actions[0].choices  # argparse keeps them here
    return {"": parser.format_help(), **{name: sub.format_help() for name, sub in subparsers.items()}}


@pytest.fixture
def fixed_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps help to the terminal's width


@pytest.mark.parametrize("command", sorted(json.loads(SNAPSHOT.read_text())))
def test_help_is_unchanged(command, fixed_width):
    expected = json.loads(SNAPSHOT.read_text())[command]
    assert current_help()[command] == expected, f"`alignkit {command} --help` changed"


def test_no_sub_command_is_missing_from_the_snapshot(fixed_width):
    assert sorted(current_help()) == sorted(json.loads(SNAPSHOT.read_text()))


if __name__ == "__main__":
    os.environ["COLUMNS"] = "100"
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    SNAPSHOT.write_text(json.dumps(current_help(), indent=1, sort_keys=True) + "\n")
