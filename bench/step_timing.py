"""alignkit-only timing of the DPO step's speed-ups, side by side in one process (a quick probe, not the
benchmark): each variant runs the same optimizer step (loss, backward, clip, fused AdamW) on the same
batches, in interleaved rounds so that machine load hits them alike.

    python bench/step_timing.py --train_type lora --dtype bf16 --rounds 3 --steps 4
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's alignkit, not an installed one

from alignkit.algorithms.dpo import DPO
from alignkit.data.builtin import arith_pref
from alignkit.data.collate import PairCollator
from alignkit.data.template import ChatEncoder
from alignkit.models.load import add_lora, load_causal_lm, load_tokenizer, resolve_model_path
from alignkit.models.packing import Layout
from alignkit.models.reference import Reference
from alignkit.models.reference_cache import precompute_reference
from alignkit.training.runner import LoopConfig, make_optimizer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train_type", default="lora", choices=("lora", "full"))
    parser.add_argument("--dtype", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="steps per variant per round")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["plain", "padding_free", "prefix_shared", "cached_padded", "cached_prefix_shared"],
    )
    args = parser.parse_args()
    torch.manual_seed(0)

    path = resolve_model_path(None)
    tokenizer = load_tokenizer(path)
    encoder = ChatEncoder(tokenizer, max_length=128)
    n_batches = args.rounds * args.steps
    rows = [(i, encoder.encode_pair(r)) for i, r in enumerate(arith_pref("train")[: 4 * n_batches])]
    collate = PairCollator(tokenizer.pad_token_id)
    batches = [collate(rows[i : i + 4]) for i in range(0, len(rows), 4)]

    model = load_causal_lm(path)
    t0 = time.perf_counter()
    cached = precompute_reference(
        model,
        [rows[i : i + 4] for i in range(0, len(rows), 4)],
        collate,
        template=tokenizer.chat_template,
        max_length=128,
        precision=args.dtype,
    )
    precompute_s = time.perf_counter() - t0
    frozen = copy.deepcopy(model) if args.train_type == "full" and any(
        v in args.variants for v in ("plain", "padding_free", "prefix_shared")) else None
    if args.train_type == "lora":
        model = add_lora(model, rank=8, alpha=32, dropout=0.05, target_modules=["all-linear"])
    optimizer = make_optimizer(model, LoopConfig(learning_rate=1e-5))
    packed = Layout(padding_free=True)
    shared = Layout(padding_free=True, prefix_sharing=True)
    variants = {
        "plain": DPO(beta=0.1, reference=Reference(frozen)),
        "padding_free": DPO(beta=0.1, reference=Reference(frozen, layout=packed), layout=packed),
        "prefix_shared": DPO(beta=0.1, reference=Reference(frozen, layout=shared), layout=shared),
        "cached_padded": DPO(beta=0.1, reference=cached),
        "cached_prefix_shared": DPO(beta=0.1, reference=cached, layout=shared),
    }
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if args.dtype == "bf16" else contextlib.nullcontext()
    times: dict[str, list[float]] = {name: [] for name in args.variants}
    model.train()
    for step in range(n_batches + args.steps):  # one warm-up round first
        for name in args.variants:
            batch = batches[step % n_batches]
            start = time.perf_counter()
            with autocast:
                loss, _ = variants[name].loss(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step >= args.steps:
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians.get("plain")
    print(json.dumps({
        "setting": f"{args.train_type} {args.dtype}", "precompute_s": round(precompute_s, 2),
        "s_per_step": {k: round(v, 3) for k, v in medians.items()},
        "speedup_vs_plain": {k: round(base / v, 2) for k, v in medians.items()} if base else None,
    }))


if __name__ == "__main__":
    main()
