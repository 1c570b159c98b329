"""Start an `alignkit` server command (deploy, app) as a subprocess on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], log_path: Path, url: str, probe_headers: dict) -> subprocess.Popen:
    """`python -m alignkit ...` from the repository root, waiting until ``url`` answers."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = log_path.open("w")
    # cwd: a scratch directory, so that nothing the server writes lands in the repository.
    process = subprocess.Popen([sys.executable, "-m", "alignkit", *args], cwd=log_path.parent, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(url, headers=probe_headers, timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"the server did not start in 120 s:\n{log_path.read_text()}")
