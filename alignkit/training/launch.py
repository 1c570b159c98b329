"""ms-swift's launch variables: ``NPROC_PER_NODE=2 alignkit rlhf ...`` runs the same command under torchrun
(training, and ``alignkit infer``'s data-parallel batch inference).

    NPROC_PER_NODE  processes on this machine (one per GPU; default: the visible GPUs, or 1)
    NNODES          machines (default 1);  NODE_RANK  this machine's index (default 0)
    MASTER_ADDR     the rank-0 machine (default 127.0.0.1);  MASTER_PORT  its port (default 29500)
    CUDA_VISIBLE_DEVICES  which GPUs, passed through as is

A process that a launcher already started (torchrun and ``accelerate launch`` set LOCAL_RANK) runs as is.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys

logger = logging.getLogger("alignkit")


def torchrun_command(argv: list[str], environ: dict[str, str]) -> list[str] | None:
    """The torchrun command that runs ``alignkit <argv>`` as the variables ask, or None to run here.

    >>> torchrun_command(["sft"], {"NPROC_PER_NODE": "2"})[3:]
    ['--nproc_per_node', '2', '--nnodes', '1', '--node_rank', '0', '--master_addr', '127.0.0.1',
     '--master_port', '29500', '-m', 'alignkit', 'sft']
    """
    if "LOCAL_RANK" in environ or "RANK" in environ:
        return None
    if "NPROC_PER_NODE" not in environ and "NNODES" not in environ:
        return None
    default_nproc = str(max(1, _visible_gpus(environ)))
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc_per_node", environ.get("NPROC_PER_NODE", default_nproc),
        "--nnodes", environ.get("NNODES", "1"),
        "--node_rank", environ.get("NODE_RANK", "0"),
        "--master_addr", environ.get("MASTER_ADDR", "127.0.0.1"),
        "--master_port", environ.get("MASTER_PORT", "29500"),
        "-m", "alignkit", *argv,
    ]


def infer_argv(argv: list[str], values: dict) -> list[str]:
    """``alignkit infer`` relaunched for data-parallel batch inference: every process must write to the same
    --result_path, so its default (a timestamp) is chosen once, here, before the processes start."""
    if values.get("result_path") is not None or "NPROC_PER_NODE" not in os.environ or "LOCAL_RANK" in os.environ:
        return argv
    import time

    return [*argv, "--result_path", f"infer_result/{time.strftime('%Y%m%d-%H%M%S')}.jsonl"]


def _visible_gpus(environ: dict[str, str]) -> int:
    if "CUDA_VISIBLE_DEVICES" in environ:
        return len([d for d in environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()])
    import torch

    return torch.cuda.device_count()


def relaunch(command: list[str]) -> int:
    """Run ``command`` (torchrun) in the foreground and return its exit status."""
    logger.info("Launching: %s", shlex.join(command))
    return subprocess.call(command, env=os.environ.copy())
