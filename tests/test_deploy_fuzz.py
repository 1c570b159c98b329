"""A schema-driven fuzz of `alignkit deploy` on loopback: schemathesis reads the server's own OpenAPI spec and
sends a bounded number of generated requests (valid and invalid bodies) to every endpoint; no answer may be a
5xx. Bounded by --max-examples per operation and --max-time for the whole run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="deploy needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("schemathesis", reason="the fuzzer is a test dependency: pip install -e '.[dev]'")

from servers import free_port, start_server  # noqa: E402


def test_schemathesis_finds_no_server_error(tiny_chat_model_dir, tmp_path):
    port = free_port()
    process = start_server(
        ["deploy", "--model", tiny_chat_model_dir, "--served_model_name", "tiny", "--port", str(port),
         "--dtype", "fp32", "--max_new_tokens", "4"],
        tmp_path / "server.log", f"http://127.0.0.1:{port}/v1/models", {},
    )
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    try:
        run = subprocess.run(
            [cli, "run", f"http://127.0.0.1:{port}/openapi.json", "--checks", "not_a_server_error",
             "--max-examples", "25", "--max-time", "45", "--seed", "1", "--workers", "1",
             "--phases", "examples,coverage,fuzzing", "--request-timeout", "60", "--no-color"],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )
    finally:
        process.terminate()
        process.wait(timeout=30)
    log = (tmp_path / "server.log").read_text()
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:] + log[-2000:]
    assert "Traceback" not in log, log[-4000:]
