"""Algorithms: one file per method. Offline ones supply ``loss(model, batch) -> (loss, metrics)``; online ones
(PPO, GRPO) also ``experience(policy, prompts)``.

Each offline algorithm declares what it needs, and the builders (alignkit/training/run.py, vision_run.py, the
loop) read these instead of switching on its class:

- ``rows``: the canonical rows it trains on, ``"sft"`` (conversations), ``"preference"`` (pairs),
  ``"unpaired"`` (a completion and a label; KTO's KL pairs are formed across each optimizer step, by the loop)
  or ``"classification"`` (a conversation and its class or value: ``sft --task_type seq_cls``);
- ``loss_unit``: what a micro-batch's loss is a mean over, ``"examples"`` or ``"tokens"`` (SFT), which weighs
  micro-batches and processes in an optimizer step;
- ``scalar_head``: trains a scalar reward head on the model (rm);
- ``needs_reference``: reads reference log-probs (DPO unless --reference_free, KTO).

``layout`` (padded or packed forwards) and ``reference`` are given at construction (``dataclasses.replace``
once the model is known), never set on a built object.
"""
