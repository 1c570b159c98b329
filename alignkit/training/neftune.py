"""NEFTune (Jain et al. 2023, https://arxiv.org/abs/2310.05914): uniform noise on the input embeddings in
training forwards, ``--neftune_noise_alpha``. transformers' ``activate_neftune`` hook, reproduced:

    embeds + Uniform(-α / sqrt(L·d), α / sqrt(L·d))       L: the batch's sequence length, d: hidden size

Only while the embedding module is in training mode: evaluation, the reference pass and online rollouts
(which run the policy in eval mode) see clean embeddings."""

from __future__ import annotations

import torch


def neftune_hook(module, inputs, output: torch.Tensor) -> torch.Tensor:
    if not module.training:
        return output
    magnitude = module.neftune_noise_alpha / torch.sqrt(torch.tensor(output.size(1) * output.size(2)))
    return output + torch.zeros_like(output).uniform_(-magnitude, magnitude)


def activate_neftune(model: torch.nn.Module, alpha: float):
    """Hook the input embeddings of the first transformers model inside ``model`` (the policy, for PPO's
    policy-and-value model; the language model under a reward head or LoRA). Returns the hook's handle."""
    from transformers import PreTrainedModel

    language_model = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)
    if language_model is None:
        raise ValueError("no transformers model inside the trained model to add NEFTune noise to")
    embeddings = language_model.get_input_embeddings()
    embeddings.neftune_noise_alpha = alpha
    return embeddings.register_forward_hook(neftune_hook)
