"""One prepared GPU check: alignkit's training paths on one GPU, in one command, into one JSON file.

    python bench/gpu_check.py --output gpu_check.json            # on the GPU: under 8 minutes on one H200
    python bench/gpu_check.py --dry_run --output dry.json        # the same code path on CPU, tiny sizes

For a ~0.5B Llama-shaped and a ~1.5B Qwen2-shaped model built from a config (random weights, the built-in
tokenizer; nothing is downloaded), it runs through ``alignkit.training.run.run_training``: DPO with LoRA and in
full, SFT, a GRPO step (transformers generation), DPO under DeepSpeed ZeRO-2, ZeRO-3 and FSDP2 (one process),
DPO with Liger's kernels; and TRL's DPOTrainer (and with Liger) on the same model and rows. Where vllm imports,
grpo_vllm_colocate_2proc runs GRPO with --use_vllm --vllm_mode colocate on 2 processes sharing the GPU (an engine
each, external_launcher, --vllm_gpu_memory_utilization 0.3); `--only grpo_vllm_colocate` runs it alone. Each reports
tokens/s, MFU and peak GPU memory. A parity section checks packed == padded log-probs and gradients on the
device. The section bodies are in ``bench/gpu_sections.py``.

Each section runs guarded, in a worker process, under its own time budget: an exception, a crash or a
timeout is recorded with its error and the next section runs (in a fresh worker when the last one died).
Sections that change process-wide state (Liger's patches, a DeepSpeed or FSDP process group) get a worker of
their own. docs/performance.md says how to run it on the lent GPU and what to do with its JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# transformers >= 5.2x loads Hub kernels (kernels-community/rotary, ...) by default whenever the `kernels`
# package is installed; the GPU machine has no network, so every from_pretrained there failed with "not
# available in the local cache". Both alignkit and TRL then run transformers' own PyTorch code, like for like.
os.environ.setdefault("USE_HUB_KERNELS", "NO")

HERE = Path(__file__).resolve().parent
CARRY = HERE.parent / ".gpu_carry"  # what bench/fetch_gpu_wheels.sh fills: wheels/ and tokenizer/

# Model shapes, built from a config with random weights. Vocabulary: the tokenizer's.
MODELS = {
    # ~0.53B with the built-in tokenizer's 49k vocabulary (tied embeddings)
    "llama-0.5b": {"arch": "llama", "hidden_size": 1024, "intermediate_size": 5632, "num_hidden_layers": 24,
                   "num_attention_heads": 16, "num_key_value_heads": 4},
    # Qwen2.5-1.5B's shape: ~1.39B with the 49k vocabulary
    "qwen2-1.5b": {"arch": "qwen2", "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                   "num_attention_heads": 12, "num_key_value_heads": 2},
}
# The dry run's one model: the sections' code is the same for every shape, and the suite runs it on 2 cores.
DRY_MODELS = {
    "llama-tiny": {"arch": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 2},
}
# Rows are random words: a pair is one prompt (~300 tokens with the template) and two answers (~100 each).
WORKLOAD = {"pairs_per_step": 8, "prompt_words": 260, "answer_words": 90, "max_length": 1024, "steps": 6,
            "warmup_steps": 2, "learning_rate": 1e-5, "lora_rank": 16,
            "grpo": {"prompts": 8, "num_generations": 8, "prompt_words": 100, "max_completion_length": 128,
                     "steps": 2}}
DRY_WORKLOAD = {"pairs_per_step": 2, "prompt_words": 12, "answer_words": 4, "max_length": 128, "steps": 3,
                "warmup_steps": 1, "learning_rate": 1e-5, "lora_rank": 4,
                "grpo": {"prompts": 2, "num_generations": 2, "prompt_words": 8, "max_completion_length": 4,
                         "steps": 1}}


def plan(models: list[str], dry_run: bool) -> list[dict]:
    """Every section, in priority order (the budget may run out), with its worker group and time budget (s).

    Groups: one worker runs a group's sections one after another; ``main:<model>`` holds the sections that
    leave no process-wide state behind. Order: the small model's sections, its Liger ones, the engines, the
    flex_attention ones (compiled per shape), then the large model's."""
    small, *rest = models
    scale = {m: 1.0 if i == 0 else 1.6 for i, m in enumerate(models)}  # the larger model takes longer
    sections = []

    def add(name, kind, model, group, budget, **options):
        sections.append({"name": f"{name}/{model}", "kind": kind, "model": model, "group": group,
                         "budget_s": round(budget * scale[model]), "options": options})

    for model in models:
        main, liger = f"main:{model}", f"liger:{model}"
        # Untimed: on the first H200 run alignkit's LoRA DPO, the first section of its worker, ran at 0.885
        # s/step and the same run with Liger, in another worker, at 0.312 (cause not identified). A warm-up
        # run first takes any one-time cost of the process off the measured sections; each section's JSON
        # keeps every step's time so the next run shows where the time goes.
        add("warmup", "alignkit", model, main, 60, algorithm="dpo", train_type="lora")
        add("parity", "parity", model, main, 40)
        add("dpo_lora", "alignkit", model, main, 45, algorithm="dpo", train_type="lora")
        add("trl_dpo_lora", "trl", model, main, 50, train_type="lora")
        add("dpo_full", "alignkit", model, main, 45, algorithm="dpo", train_type="full")
        add("trl_dpo_full", "trl", model, main, 50, train_type="full")
        add("sft_full", "alignkit", model, main, 35, algorithm="sft", train_type="full")
        add("grpo_lora", "alignkit", model, main, 50, algorithm="grpo", train_type="lora")
        if model == small:  # where LoRA DPO's time goes, for alignkit and TRL (gpu_sections.profiled)
            add("profile_dpo_lora", "alignkit", model, main, 45, algorithm="dpo", train_type="lora", profile=True)
            add("profile_trl_dpo_lora", "trl", model, main, 50, train_type="lora", profile=True)
        if model == small:  # flex_attention compiles once per shape: after the measured sections
            add("parity_flex", "parity", model, "flex", 90, attention="flex_attention")
            add("packing_memory", "packing_memory", model, "flex", 90)
        add("dpo_lora_liger", "alignkit", model, liger, 45, algorithm="dpo", train_type="lora", liger=True)
        add("trl_dpo_lora_liger", "trl", model, liger, 50, train_type="lora", liger=True)
    for engine in ("zero2", "zero3", "fsdp2"):
        add(f"dpo_full_{engine}", "alignkit", small, engine, 60, algorithm="dpo", train_type="full", engine=engine)
    if not dry_run and importlib.util.find_spec("vllm") is not None:  # colocated vLLM on 2 processes, one GPU
        add("grpo_vllm_colocate_2proc", "vllm_colocate", small, "vllm", 240)
    # rollouts inside the ZeRO-3 gather with DeepSpeed's module hooks off, and training after it (training/zero3.py)
    add("grpo_lora_zero3", "alignkit", small, "zero3", 60, algorithm="grpo", train_type="lora", engine="zero3")
    order = [f"main:{small}", f"liger:{small}", "zero2", "zero3", "fsdp2", "vllm", "flex"]
    order += [g for m in rest for g in (f"main:{m}", f"liger:{m}")]
    return sorted(sections, key=lambda s: order.index(s["group"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="gpu_check.json", help="where the JSON goes")
    parser.add_argument("--dry_run", action="store_true", help="CPU, tiny models, the same code path (seconds)")
    parser.add_argument("--budget_s", type=float, default=450.0, help="wall-clock budget of all sections")
    parser.add_argument("--tokenizer", help="a tokenizer directory (default: .gpu_carry/tokenizer, else the "
                        "built-in model's)")
    parser.add_argument("--work_dir", help="models, data and runs (default: a new temporary directory)")
    parser.add_argument("--only", nargs="+", default=[], help="run only sections whose name starts so")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sections", help=argparse.SUPPRESS)
    parser.add_argument("--results", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    started = time.time()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="gpu_check_")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    models = DRY_MODELS if args.dry_run else MODELS
    sections = [s for s in plan(list(models), args.dry_run)
                if not args.only or any(s["name"].startswith(p) for p in args.only)]
    context = {"work": str(work), "dry_run": args.dry_run, "models": models,
               "workload": DRY_WORKLOAD if args.dry_run else WORKLOAD,
               "tokenizer": args.tokenizer or default_tokenizer()}
    (work / "plan.json").write_text(json.dumps({"context": context, "sections": sections}, indent=1))
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                       "TOKENIZERS_PARALLELISM": "false", "ALIGNKIT_CACHE": str(work / "cache")})
    if args.dry_run:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the CPU path, also on a machine with a GPU
    deadline = started + args.budget_s
    prepared = run_sections(work, [{"name": "prepare", "kind": "prepare", "group": "prepare", "model": None,
                                    "budget_s": 300 if not args.dry_run else 120, "options": {}}],
                            deadline=started + args.budget_s + 300)  # preparing is not a measured section
    deadline = max(deadline, time.time() + 60) if prepared["prepare"]["status"] == "ok" else time.time()
    results = run_sections(work, sections, deadline=deadline)
    report = assemble(prepared["prepare"], results, sections, context, started=started, budget_s=args.budget_s)
    Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    print(summary_table(report))
    print(f"wrote {args.output}")


def default_tokenizer() -> str | None:
    carried = CARRY / "tokenizer"
    return str(carried) if (carried / "tokenizer_config.json").is_file() else None  # None: the built-in model's


def run_sections(work: Path, sections: list[dict], *, deadline: float) -> dict[str, dict]:
    """Run ``sections`` group by group in worker processes; every section ends with a result dict with a
    ``status`` of ok, error, timeout or skipped (and ``error`` unless ok)."""
    results: dict[str, dict] = {}
    by_name = {s["name"]: s for s in sections}
    groups: list[str] = []
    for s in sections:
        if s["group"] not in groups:
            groups.append(s["group"])
    for group in groups:
        pending = [s["name"] for s in sections if s["group"] == group]
        while pending:
            if time.time() + 10 > deadline:
                for name in pending:
                    results[name] = {"status": "skipped", "error": "the check's time budget ran out"}
                break
            done = run_worker(work, pending, by_name, deadline, results)
            pending = [n for n in pending if n not in results]
            if not done and pending:  # the worker died before it started anything: do not loop on it
                for name in pending:
                    results[name] = {"status": "error", "error": "the worker process failed to start a section"}
                break
    return results


def run_worker(work: Path, names: list[str], by_name: dict, deadline: float, results: dict) -> bool:
    """One worker over ``names``; fills ``results``; returns whether it started any section."""
    log_dir = work / "logs"
    log_dir.mkdir(exist_ok=True)
    index = len(list(log_dir.glob("worker-*.log")))
    events_path, log_path = log_dir / f"worker-{index}.jsonl", log_dir / f"worker-{index}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if by_name[names[0]]["group"] in ("zero2", "zero3", "fsdp2"):
        # One process of a process group: DeepSpeed and FSDP read these as torchrun would set them.
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(free_port()))
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--sections", ",".join(names),
               "--results", str(events_path), "--work_dir", str(work), "--deadline", str(deadline)]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    current, started, seen, any_started = None, 0.0, 0, False
    while True:
        finished = process.poll() is not None  # read the events after this, so none is missed
        lines = events_path.read_text().splitlines() if events_path.exists() else []
        for line in lines[seen:]:
            event = json.loads(line)
            if event["event"] == "start":
                current, started, any_started = event["name"], time.time(), True
                print(f"[gpu_check] {current} ...", flush=True)
            else:
                result = results[event["name"]] = event["result"]
                print(f"[gpu_check] {event['name']}: {result['status']} ({result.get('seconds', 0):.1f} s) "
                      f"{result.get('error', '')[:200]}", flush=True)
                current = None
        seen = len(lines)
        if finished:
            break
        over_budget = current is not None and time.time() - started > by_name[current]["budget_s"]
        if current is not None and (over_budget or time.time() > deadline):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            why = f"over its budget of {by_name[current]['budget_s']} s" if over_budget else "the budget ran out"
            results[current] = {"status": "timeout", "error": f"stopped: {why}", "seconds": time.time() - started}
            print(f"[gpu_check] {current}: timeout", flush=True)
            return True
        time.sleep(0.2)
    if current is not None:  # the worker died inside this section (a crash, CUDA error, out of memory)
        tail = log_path.read_text()[-1500:]
        results[current] = {"status": "error", "seconds": time.time() - started,
                            "error": f"the worker exited with code {process.returncode} in this section: {tail}"}
    return any_started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(args) -> None:
    """Run the named sections one after another; each start and result is one line of ``--results``."""
    sys.path.insert(0, str(HERE.parent))  # this checkout's alignkit, not an installed one
    sys.path.insert(0, str(HERE))
    import gpu_sections

    plan_data = json.loads((Path(args.work_dir) / "plan.json").read_text())
    sections = {s["name"]: s for s in plan_data["sections"]}
    sections["prepare"] = {"name": "prepare", "kind": "prepare", "model": None, "budget_s": 300, "options": {}}
    context = plan_data["context"]
    for name in args.sections.split(","):
        spec = sections[name]
        with open(args.results, "a") as out:
            out.write(json.dumps({"event": "start", "name": name}) + "\n")
        if os.environ.get("ALIGNKIT_GPU_CHECK_CRASH") == name:  # tests: a section that kills its worker
            os._exit(3)
        result = gpu_sections.run_guarded(spec, context, deadline=args.deadline)
        with open(args.results, "a") as out:
            out.write(json.dumps({"event": "done", "name": name, "result": result}, default=str) + "\n")


def assemble(prepared: dict, results: dict, sections: list[dict], context: dict, *, started: float,
             budget_s: float) -> dict:
    """The JSON: meta (device, versions, peak FLOP/s), the workload, the models, every section, and alignkit's
    DPO tokens/s against TRL's (and TRL + Liger's) per model."""
    meta = dict(prepared.get("meta") or {})
    meta.update({"dry_run": context["dry_run"], "budget_s": budget_s, "total_s": round(time.time() - started, 1),
                 "prepare": {k: v for k, v in prepared.items() if k not in ("meta", "models")}})
    summary = {}
    for model in context["models"]:
        for train_type in ("lora", "full"):
            ours = results.get(f"dpo_{train_type}/{model}", {})
            trl = results.get(f"trl_dpo_{train_type}/{model}", {})
            liger = results.get(f"trl_dpo_{train_type}_liger/{model}", {})
            entry = {"alignkit_tokens_per_s": ours.get("tokens_per_s"), "trl_tokens_per_s": trl.get("tokens_per_s"),
                     "trl_liger_tokens_per_s": liger.get("tokens_per_s")}
            for key, other in (("vs_trl", "trl_tokens_per_s"), ("vs_trl_liger", "trl_liger_tokens_per_s")):
                mine, theirs = entry["alignkit_tokens_per_s"], entry[other]
                entry[key] = round(mine / theirs, 3) if mine and theirs else None
            summary[f"dpo_{train_type}/{model}"] = entry
    return {"schema": 1, "meta": meta, "workload": context["workload"],
            "models": prepared.get("models") or {m: {"shape": s} for m, s in context["models"].items()},
            "sections": {s["name"]: results.get(s["name"], {"status": "skipped", "error": "not run"})
                         for s in sections},
            "summary": summary}


def summary_table(report: dict) -> str:
    """A markdown table of the sections (the README's performance section takes it as it is)."""
    meta = report["meta"]
    lines = [f"{meta.get('device_name', '?')}, {meta.get('date', '?')}: peak bf16 {meta.get('peak_tflops')} "
             f"TFLOP/s ({meta.get('peak_source', '')}); measured matmul {meta.get('matmul_tflops')} TFLOP/s",
             "", "| section | status | tokens/s | MFU | peak GiB | s/step | note |", "|---|---|---|---|---|---|---|"]
    for name, r in report["sections"].items():
        mfu = f"{100 * r['mfu']:.1f} %" if r.get("mfu") is not None else ""
        note = r.get("error", "")[:80].replace("|", "/").replace("\n", " ") or r.get("note", "")
        lines.append(f"| {name} | {r['status']} | {r.get('tokens_per_s') or ''} | {mfu} | "
                     f"{r.get('peak_memory_gib') or ''} | {r.get('s_per_step') or ''} | {note} |")
    lines += ["", "| DPO | alignkit tokens/s | TRL | TRL + Liger | × TRL | × TRL + Liger |",
              "|---|---|---|---|---|---|"]
    for name, s in report["summary"].items():
        lines.append(f"| {name} | {s['alignkit_tokens_per_s']} | {s['trl_tokens_per_s']} | "
                     f"{s['trl_liger_tokens_per_s']} | {s['vs_trl']} | {s['vs_trl_liger']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
