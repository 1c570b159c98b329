"""How many of ms-swift's own `swift infer|deploy|app|export` example invocations alignkit accepts.

    python bench/serve_corpus.py /path/to/ms-swift/examples        # count accepted / total, refusals by reason

Each invocation is extracted from the examples' shell scripts (backslash continuations joined,
environment prefixes and `$VAR`s dropped), parsed by alignkit's CLI and turned into the command's typed
arguments with its checks, without loading any model. Model and dataset names stay as written: a hub id is
accepted at parse time and would be downloaded at load time, as in ms-swift."""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import os
import re
import shlex
import sys
from pathlib import Path

COMMANDS = ("infer", "deploy", "app", "export")
INVOCATION = re.compile(r"\bswift\s+(" + "|".join(COMMANDS) + r")\b(.*)")


def invocations(root: Path) -> list[tuple[str, str, list[str]]]:
    """(file, command, argv after the command) for each invocation under ``root``."""
    found = []
    for path in sorted(root.rglob("*.sh")):
        text = re.sub(r"\\\s*\n", " ", path.read_text(errors="replace"))
        for line in text.splitlines():
            match = INVOCATION.search(line)
            if match is None or "`swift" in line:  # prose mentioning a command, not an invocation
                continue
            rest = re.split(r"\s(?:&&|\|\||;|\||>|2>)\s", match.group(2))[0]
            try:
                tokens = shlex.split(rest, comments=True)
            except ValueError:
                continue
            found.append((str(path.relative_to(root)), match.group(1), [substitute(t) for t in tokens]))
    return found


def substitute(token: str) -> str:
    """A shell variable stands for a value the script computes: a number works for every flag that takes one."""
    return "4" if "$" in token else token


def check(command: str, argv: list[str]) -> None:
    from alignkit.cli import build_parser, parse_command_line, typed_arguments
    from alignkit.config.command_checks import check_command_arguments

    _, values, _ = parse_command_line(build_parser(), [command, *argv])
    check_command_arguments(command, typed_arguments(command, values))


def main(root: str) -> int:
    logging.disable(logging.CRITICAL)
    found = invocations(Path(root))
    os.chdir(Path(root).resolve().parent)  # config files are named from the repository root, as the scripts run
    refused = collections.Counter()
    examples = {}
    for path, command, argv in found:
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                check(command, argv)
        except SystemExit:
            reason = "argparse: " + stderr.getvalue().strip().splitlines()[-1].split("error: ", 1)[-1]
            refused[reason] += 1
            examples.setdefault(reason, path)
        except Exception as error:  # noqa: BLE001  (every refusal is counted by its reason)
            reason = f"{type(error).__name__}: {str(error)[:150]}"
            refused[reason] += 1
            examples.setdefault(reason, path)
    accepted = len(found) - sum(refused.values())
    print(f"accepted {accepted} of {len(found)} ({accepted / max(1, len(found)):.0%})")
    for reason, count in refused.most_common():
        print(f"{count:4d}  {reason}   (e.g. {examples[reason]})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "examples"))
