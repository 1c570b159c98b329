"""Peak RSS of a LoRA DPO run on the built-in model with --torch_dtype float32 and bfloat16, interleaved.

    python bench/peak_rss.py --rounds 2          # float32, bfloat16, float32, bfloat16
    python bench/peak_rss.py --model DIR         # another model directory instead of the built-in one

Each run is ``python -m alignkit rlhf --rlhf_type dpo --max_steps 2 --torch_dtype D`` in its own empty
ALIGNKIT_CACHE (the built-in model's converted directory linked in), so every run tokenises and computes its
reference log-probs itself. Reported per run: the process's peak RSS (getrusage), and the peak sampled every
0.1 s from the log line "Run directory" on (the training steps, after the model has loaded and the reference
pass has run).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def vm_rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run(dtype: str, builtin: Path, model: str | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        cache.mkdir()
        (cache / builtin.name).symlink_to(builtin)
        command = [sys.executable, "-m", "alignkit", "rlhf", "--rlhf_type", "dpo", "--max_steps", "2",
                   "--torch_dtype", dtype, "--output_dir", str(Path(tmp) / "out"), "--report_to", "none",
                   *(["--model", model] if model else [])]
        env = {**os.environ, "ALIGNKIT_CACHE": str(cache)}
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        training = threading.Event()
        peak_training = [0]

        def sample():
            while process.poll() is None:
                if training.is_set():
                    peak_training[0] = max(peak_training[0], vm_rss_kib(process.pid))
                time.sleep(0.1)

        sampler = threading.Thread(target=sample)
        sampler.start()
        for line in process.stdout:
            if "Run directory" in line:
                training.set()
        process.wait()
        sampler.join()
        if process.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed with {process.returncode}")
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, the largest child so far
        return {"torch_dtype": dtype, "peak_rss_kib": peak, "training_peak_rss_kib": peak_training[0],
                "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    from alignkit.models.builtin import builtin_model_dir

    builtin = builtin_model_dir()
    for _ in range(args.rounds):
        for dtype in ("float32", "bfloat16"):
            # ru_maxrss of RUSAGE_CHILDREN is the largest child ever: each run gets its own Python to measure it.
            one = [sys.executable, __file__, "--one", dtype, str(builtin), args.model or ""]
            print(subprocess.run(one, capture_output=True, text=True, check=True).stdout.strip(), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--one":
        print(json.dumps(run(sys.argv[2], Path(sys.argv[3]), sys.argv[4] or None)))
    else:
        main()
