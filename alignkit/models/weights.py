"""Loading a checkpoint's trained weights (a LoRA adapter, a full model, a reward model's head) into a live
model: what resume and the online value/reward models share."""

from __future__ import annotations

from pathlib import Path

from alignkit.errors import AlignkitError
from alignkit.models import bottleneck_adapter
from alignkit.models.lora_ga import has_start, split_converted


def load_model_weights(model, checkpoint: Path) -> None:
    """Load a checkpoint's trainable weights (LoRA adapter or full model) into the live model."""
    from safetensors.torch import load_file

    from alignkit.models.reward_model import VALUE_HEAD_FILE, SequenceRewardModel, load_value_head

    if isinstance(model, SequenceRewardModel):  # the scalar head sits beside the adapter or model files
        if not (checkpoint / VALUE_HEAD_FILE).is_file():
            raise AlignkitError(f"{checkpoint}: no {VALUE_HEAD_FILE} to resume the reward model's head from")
        model.value_head.load_state_dict(load_value_head(checkpoint).state_dict())
        model = model.lm
    if bottleneck_adapter.saved_config(checkpoint) is not None:  # ms-swift's Adapter (default/)
        bottleneck_adapter.load_weights(model, checkpoint)
        return
    adapter = checkpoint / "adapter_model.safetensors"
    if adapter.is_file():
        from peft import set_peft_model_state_dict

        state = load_file(adapter)
        if has_start(model):  # LoRA-GA's checkpoint holds [A ; A0], [B | -B0]
            state = split_converted(model, state)
        set_peft_model_state_dict(model, state)
        return
    shards = sorted(checkpoint.glob("model*.safetensors"))
    if not shards:
        raise AlignkitError(f"{checkpoint}: no adapter_model.safetensors or model*.safetensors to resume from")
    state = {}
    for shard in shards:
        state.update(load_file(shard))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied embeddings are saved once; anything else missing means the checkpoint is for another model.
    missing = [k for k in missing if "lm_head" not in k]
    if missing or unexpected:
        raise AlignkitError(
            f"{checkpoint}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
