"""DeepSpeed ZeRO-3 for online methods (alignkit/training/zero3.py, alignkit/generation/vllm_server.py), on CPU
with gloo: DeepSpeed's CPU accelerator runs ZeRO-3 here, though alignkit's CLI refuses DeepSpeed without a GPU,
so the launched runs lift that check (``sitecustomize`` below) and the rest is the code that runs on GPUs.

- inside the gather for generation, processes run different numbers of forwards without waiting on each other,
  and training goes on after it (the module hooks are back);
- the rollout-server push sends whole weights (LoRA merged) from the first process while every process gathers;
- gkd with --deepspeed zero3 and --teacher_deepspeed zero3 on 2 processes logs the losses of plain data parallel.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_distributed import free_port, losses, wait

from alignkit.config import RunArguments
from alignkit.config.online_checks import check_online_flags
from alignkit.errors import AlignkitError

pytest.importorskip("deepspeed")
ROOT = Path(__file__).resolve().parents[1]
# Launched processes: let DeepSpeed run on the CPU (alignkit refuses it without a GPU, see the module doc).
SITECUSTOMIZE = """
import alignkit.training.sharding as sharding
sharding.check_available = lambda engine: None
"""


def test_zero3_is_taken_by_gkd_and_the_server_push_and_fsdp_is_still_refused(monkeypatch):
    import alignkit.config.rollout_args as rollout_args

    monkeypatch.setattr(rollout_args, "check_server_packages", lambda what: None)
    server = {"use_vllm": True, "vllm_mode": "server", "vllm_server_host": ["127.0.0.1"]}
    for deepspeed in ("zero3", "zero3_offload"):
        check_online_flags(RunArguments(rlhf_type="gkd", teacher_model="T", deepspeed=deepspeed))
        check_online_flags(RunArguments(rlhf_type="grpo", deepspeed=deepspeed, **server))
        check_online_flags(RunArguments(rlhf_type="gkd", teacher_model="T", deepspeed=deepspeed, **server))
    with pytest.raises(AlignkitError, match="--rlhf_type gkd with FSDP"):
        check_online_flags(RunArguments(rlhf_type="gkd", teacher_model="T", fsdp="true"))
    with pytest.raises(AlignkitError, match="--vllm_mode server with FSDP"):
        check_online_flags(RunArguments(rlhf_type="grpo", fsdp="true", **server))


def test_teacher_deepspeed_where_it_would_shard_nothing_says_so(tiny_model_dir, caplog):
    from transformers import AutoModelForCausalLM

    from alignkit.training.zero3 import frozen_engine

    teacher = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with caplog.at_level(logging.INFO, logger="alignkit"):
        assert frozen_engine(teacher, "zero2", processes=2, precision="fp32") is None
        assert frozen_engine(teacher, "zero3", processes=1, precision="fp32") is None
    assert [r.getMessage() for r in caplog.records] == [
        "--teacher_deepspeed zero2 has no effect: ZeRO-2 shards optimizer state and gradients, which a frozen teacher "
        "has none of; the teacher is a plain frozen model on each process",
        "--teacher_deepspeed zero3 has no effect: ZeRO-3 on one process, without offload, shards nothing; the teacher "
        "is a plain frozen model on each process"]
    assert not hasattr(next(teacher.parameters()), "ds_id")


class Recorder:
    """The rollout server's client (VLLMClient's weight-push methods), recording what it is sent."""

    def __init__(self):
        self.pushed = {}

    def weight_update(self):
        from contextlib import nullcontext

        return nullcontext()

    def update_named_param(self, name, tensor):
        self.pushed[name] = tensor.clone()

    def reset_prefix_cache(self):
        pass


def push_and_generate(model_dir: str, out: str) -> None:
    """Run by each of 2 launched processes (``__main__``): a full and a LoRA policy under ZeRO-3."""
    import deepspeed
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from alignkit.generation.vllm_server import ServerRollout
    from alignkit.training.zero3 import whole_for_generation

    deepspeed.init_distributed(dist_backend="gloo")
    rank = torch.distributed.get_rank()
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3},
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}}}
    for kind in ("full", "lora"):
        policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        if kind == "lora":
            torch.manual_seed(1)
            lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)  # B != 0
            policy = get_peft_model(policy, lora)
        whole = (copy.deepcopy(policy).merge_and_unload() if kind == "lora" else policy).state_dict()
        whole = {k: v.clone().contiguous() for k, v in whole.items()}  # before ZeRO-3 partitions them
        trained = [p for p in policy.parameters() if p.requires_grad]
        engine, *_ = deepspeed.initialize(model=policy, model_parameters=trained, config=config)
        client = Recorder() if rank == 0 else None
        ServerRollout(policy, [client] if client is not None else [], stop_ids=[0], max_new_tokens=2,
                      temperature=1.0).sync_weights()
        if rank == 0:
            save_file(client.pushed, f"{out}/{kind}-pushed.safetensors")
            save_file({k: v for k, v in whole.items() if k in client.pushed}, f"{out}/{kind}-whole.safetensors")
        ids = torch.tensor([[5, 6, 7]])
        with whole_for_generation(engine):  # rank 0 runs 3 forwards, rank 1 one: nothing collective inside
            with torch.no_grad():
                for _ in range(3 if rank == 0 else 1):
                    policy(input_ids=ids)
            whole_inside = all(p.numel() > 0 for p in policy.parameters())
        loss = engine(input_ids=ids, labels=ids).loss  # training after it: the hooks gather again
        engine.backward(loss)
        engine.step()
        Path(f"{out}/{kind}-{rank}.json").write_text(json.dumps({"whole_inside": whole_inside,
                                                                  "loss": loss.item()}))
        if kind == "full":
            push_to_a_transformers_server(engine, model_dir, out, rank)


def push_to_a_transformers_server(engine, model_dir: str, out: str, rank: int) -> None:
    """The trained ZeRO-3 policy pushed to an `alignkit rollout --infer_backend transformers` server (on loopback,
    in process 0) that holds the starting weights; process 0 writes the server's samples and log-probs next to
    those of the whole trained weights and of the starting ones, sampled in process."""
    import threading
    import time

    import uvicorn
    from test_rollout_transformers_server import PROMPTS, SEEDS, local
    from transformers import AutoModelForCausalLM

    from alignkit.commands.rollout_server import create_rollout_app
    from alignkit.generation.rollout_client import TransformersRolloutClient
    from alignkit.generation.vllm_server import ServerRollout
    from alignkit.training.zero3 import whole_for_generation

    client = None
    if rank == 0:
        start = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_rollout_app(start, "tiny"), host="127.0.0.1", port=port,
                                               log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        client = TransformersRolloutClient(f"http://127.0.0.1:{port}")
    policy = engine.module
    rollout = ServerRollout(policy, [client] if client is not None else [], stop_ids=[1], max_new_tokens=5,
                            temperature=0.8, pad_id=0)
    rollout.sync_weights()  # every process gathers, process 0 sends
    sampled = rollout(PROMPTS, seeds=SEEDS)
    with whole_for_generation(engine):
        whole = {k: v.clone() for k, v in policy.state_dict().items()}
    if rank == 0:
        trained = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        trained.load_state_dict(whole)
        start = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        Path(f"{out}/server.json").write_text(json.dumps({
            "server": [list(sampled), sampled.logprobs], "trained": local(trained, PROMPTS, SEEDS),
            "start": local(start, PROMPTS, SEEDS)}))


def test_the_push_sends_whole_weights_and_generation_runs_apart(tiny_chat_model_dir, tmp_path):
    from safetensors.torch import load_file

    log = tmp_path / "zero3.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
             "--master_port", str(free_port()), __file__, tiny_chat_model_dir, str(tmp_path)],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"},
            stdout=sink, stderr=subprocess.STDOUT)
    wait(process, log)
    for kind in ("full", "lora"):
        pushed = load_file(tmp_path / f"{kind}-pushed.safetensors")
        whole = load_file(tmp_path / f"{kind}-whole.safetensors")
        assert len(pushed) == len(whole) >= 20 and not any("lora" in name for name in pushed), kind
        for name, tensor in pushed.items():
            torch.testing.assert_close(tensor, whole[name], msg=f"{kind} {name}")
        for rank in (0, 1):
            result = json.loads((tmp_path / f"{kind}-{rank}.json").read_text())
            assert result["whole_inside"] and torch.isfinite(torch.tensor(result["loss"])), (kind, rank)
    # the server's next samples follow the pushed weights: the whole trained ones, not the starting ones
    server = json.loads((tmp_path / "server.json").read_text())
    (completions, logprobs), (trained, trained_logprobs), (_, start_logprobs) = (
        server["server"], server["trained"], server["start"])
    assert completions == trained
    for got, want in zip(logprobs, trained_logprobs):
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=1e-5, rtol=1e-5)
    assert logprobs != start_logprobs


def launch_on_cpu(argv: list[str], log: Path, *, site: Path) -> subprocess.Popen:
    """``NPROC_PER_NODE=2 python -m alignkit <argv>`` with ``site``'s sitecustomize (the module doc) imported first."""
    environ = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    environ.update(PYTHONPATH=f"{site}:{ROOT}", OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", NPROC_PER_NODE="2",
                   MASTER_PORT=str(free_port()))
    return subprocess.Popen([sys.executable, "-m", "alignkit", *argv], cwd=ROOT, env=environ,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def gkd_argv(model: str, teacher: str, dataset: str, out: Path, *extra: str) -> list[str]:
    return ["rlhf", "--rlhf_type", "gkd", "--model", model, "--teacher_model", teacher, "--dataset", dataset,
            "--lmbda", "0.5", "--seq_kd", "true", "--max_steps", "4", "--per_device_train_batch_size", "1",
            "--max_completion_length", "6", "--report_to", "none", "--dtype", "fp32", "--learning_rate", "1e-2",
            "--split_dataset_ratio", "0", "--eval_strategy", "no", "--logging_steps", "1", "--save_steps", "100",
            "--output_dir", str(out), *extra]


@pytest.mark.slow  # two 2-process runs: about a minute on 2 CPU cores
def test_gkd_under_zero3_with_a_zero3_teacher_logs_the_losses_of_data_parallel(tiny_model_dir, tiny_chat_model_dir,
                                                                             tmp_path):
    """2 processes, each sampling its own row: from the teacher at step 1, the student after (seed 42's draws),
    so both gathers run; ZeRO-3 (student and teacher sharded) trains like plain data parallel."""
    rows = [[{"role": "user", "content": f"What is {a} + {b}?"}, {"role": "assistant", "content": f"{a + b}"}]
            for a, b in ((2, 3), (7, 1))]
    dataset = tmp_path / "rows.jsonl"
    dataset.write_text("".join(json.dumps({"messages": m}) + "\n" for m in rows))
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    runs = {"ddp": [], "zero3": ["--deepspeed", "zero3", "--teacher_deepspeed", "zero3"]}
    for name, extra in runs.items():
        log = tmp_path / f"{name}.log"
        wait(launch_on_cpu(gkd_argv(tiny_model_dir, tiny_chat_model_dir, str(dataset), tmp_path / name, *extra), log,
                           site=tmp_path / "site"), log)
    text = (tmp_path / "zero3.log").read_text()
    assert "Engine: deepspeed (--deepspeed zero3)" in text
    assert "Teacher prepared with DeepSpeed (--teacher_deepspeed zero3): ZeRO-3 over 2 process(es)" in text
    (run_dir,) = (tmp_path / "zero3").iterdir()
    sources = [r["source/teacher"] for r in map(json.loads, (run_dir / "logging.jsonl").read_text().splitlines())
               if "loss" in r]
    assert sources == [1.0, 0.0, 0.0, 0.0]
    assert losses(tmp_path / "zero3") == pytest.approx(losses(tmp_path / "ddp"), abs=1e-4)


if __name__ == "__main__":
    push_and_generate(sys.argv[1], sys.argv[2])
    from alignkit.training.distributed import exit_process, leave_process_group

    leave_process_group()
    exit_process(0)  # past the interpreter's teardown, where gloo's threads can abort a finished process
