"""DeepSpeed ZeRO-3 beyond what accelerate does: whole weights for ``generate()``, and a frozen model (gkd's
teacher, ``--teacher_deepspeed``) prepared as an inference-only DeepSpeed engine, as TRL's ``prepare_deepspeed``.

Under ZeRO-3 each process holds a shard of every parameter; DeepSpeed's per-module hooks gather a module's
parameters (a collective) before its forward and release them after. ``generate()`` runs as many forwards as
its longest completion, which differs between processes, so the hooks would leave them waiting on each other.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

logger = logging.getLogger("alignkit")


@contextmanager
def whole_for_generation(engine):
    """Every parameter of the ZeRO-3 ``engine`` whole on every process (entering is a collective: every process
    enters), with DeepSpeed's module hooks removed meanwhile, so that forwards inside run without collectives
    (TRL's ``unwrap_model_for_generation``); the hooks are registered again on the way out."""
    import deepspeed
    from deepspeed.runtime.zero.parameter_offload import DeepSpeedZeRoOffload

    # A training engine's ZeRO-3 optimizer holds the hooks in its parameter_offload; an inference engine's
    # "optimizer" is the DeepSpeedZeRoOffload itself.
    offload = engine.optimizer if isinstance(engine.optimizer, DeepSpeedZeRoOffload) else (
        engine.optimizer.parameter_offload)
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        for param in engine.module.parameters():
            param.ds_active_sub_modules.clear()
        # Also the model's start-of-forward hook (TRL keeps it): it compares the recorded module order across
        # processes, a collective, whenever that trace is incomplete.
        offload._remove_module_hooks()
        offload.forward_hooks, offload.backward_hooks = [], []
        try:
            yield engine.module
        finally:
            # the recorded order of module calls (prefetching) no longer matches the next forward
            if not offload.param_coordinator.is_invalid_trace():
                offload.param_coordinator._invalidate_trace()
            offload.setup_zero_stage3_hooks()


def frozen_engine(model, name_or_path: str, *, processes: int, precision: str):
    """``model`` (frozen) prepared with the DeepSpeed config ``name_or_path`` (a --deepspeed preset or JSON file)
    minus its optimizer and scheduler: returns the engine, or None where DeepSpeed would change nothing (logged).
    ZeRO-1/2 shard optimizer state and gradients, which a frozen model has none of; ZeRO-3 shards parameters
    across processes (with offload_param, into CPU memory), which on one process without offload is a no-op."""
    from alignkit.training.sharding import fill_auto, load_deepspeed_config

    config = load_deepspeed_config(name_or_path)  # a fresh dict, read from its file
    zero = config.setdefault("zero_optimization", {})
    offload = zero.get("offload_param", {}).get("device", "none") != "none"
    if zero.get("stage", 0) != 3 or (processes == 1 and not offload):
        why = (f"ZeRO-{zero.get('stage', 0)} shards optimizer state and gradients, which a frozen teacher has none of"
               if zero.get("stage", 0) != 3 else "ZeRO-3 on one process, without offload, shards nothing")
        logger.info("--teacher_deepspeed %s has no effect: %s; the teacher is a plain frozen model on each process",
                    name_or_path, why)
        return None
    import deepspeed

    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    zero.pop("offload_optimizer", None)
    hidden = model.config.hidden_size  # accelerate's (and TRL's) sizes for the "auto" buckets
    for key, value in (("reduce_bucket_size", hidden * hidden), ("stage3_param_persistence_threshold", 10 * hidden),
                       ("stage3_prefetch_bucket_size", int(0.9 * hidden * hidden))):
        if zero.get(key) == "auto":
            zero[key] = value
    fill_auto(config, batch_size=1, gradient_accumulation_steps=1, max_grad_norm=1.0, precision=precision)
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    logger.info("Teacher prepared with DeepSpeed (--teacher_deepspeed %s): ZeRO-3 over %d process(es)%s",
                name_or_path, processes, ", parameters in CPU memory" if offload else "")
    return engine
