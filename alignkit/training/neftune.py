"""NEFTune (Jain et al. 2023, https://arxiv.org/abs/2310.05914), ``--neftune_noise_alpha``: transformers' own
forward hook on the input embeddings, which in training mode adds

    Uniform(-α / sqrt(L·d), α / sqrt(L·d))       L: the batch's sequence length, d: the hidden size

and in eval mode nothing: evaluation, the reference pass and online rollouts (which run the policy in eval
mode) see clean embeddings."""

from __future__ import annotations

import torch


def activate_neftune(model: torch.nn.Module, alpha: float):
    """Hook the input embeddings of the first transformers model inside ``model`` (the policy of PPO's
    policy-and-value model; the language model under a reward head or LoRA). Returns the hook's handle."""
    from transformers import PreTrainedModel
    from transformers.integrations.neftune import neftune_post_forward_hook

    language_model = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)
    if language_model is None:
        raise ValueError("no transformers model inside the trained model to add NEFTune noise to")
    embeddings = language_model.get_input_embeddings()
    embeddings.neftune_noise_alpha = alpha
    return embeddings.register_forward_hook(neftune_post_forward_hook)
