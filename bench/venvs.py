"""Virtual environments of the peers, one each: ms-swift 4.6 pins trl<1.0, transformers<5.20 and peft<0.21,
so it cannot share an environment with TRL 1.x.

torch==2.13.0 goes in first and a constraints file pins it, so pip never swaps it for a CUDA build.
Idempotent: an environment whose marker file exists is left as it is.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".venvs"
TORCH = "torch==2.13.0"

PEERS = {
    "trl": ["trl==1.16.0", "peft", "accelerate", "datasets", "psutil"],
    "swift": ["ms-swift==4.6.0", "trl<1.0", "transformers<5.20", "peft<0.21", "psutil"],
}


def python_of(peer: str) -> Path:
    return VENVS / peer / "bin" / "python"


def setup(peer: str) -> Path:
    venv = VENVS / peer
    marker = venv / ".alignkit-bench-ready"
    if marker.exists():
        return python_of(peer)
    print(f"[bench] setting up {venv} ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    constraints = venv / "constraints.txt"
    constraints.write_text(TORCH + "\n")
    pip = [str(python_of(peer)), "-m", "pip", "install", "-q", "-c", str(constraints)]
    subprocess.run([*pip, TORCH], check=True)
    subprocess.run([*pip, *PEERS[peer]], check=True)
    versions = subprocess.run(
        [str(python_of(peer)), "-m", "pip", "freeze"], check=True, capture_output=True, text=True
    ).stdout
    if "torch==2.13.0" not in versions:
        raise SystemExit(f"{venv}: torch is no longer 2.13.0 after installing {PEERS[peer]}")
    marker.write_text(versions)
    return python_of(peer)


if __name__ == "__main__":
    for name in sys.argv[1:] or PEERS:
        print(setup(name))
