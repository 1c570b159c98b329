"""Every objective as a pure function on tensors (torch only): ``preference`` (DPO and its variants, CPO,
SimPO, ORPO, KTO, the reward model) and ``rl`` (PPO's and GRPO's arithmetic).

``from alignkit import losses; losses.dpo_loss(...)`` keeps working: the preference objectives are
re-exported here.
"""

from alignkit.losses.preference import (
    _F_DIVERGENCE_LOSS_TYPES,
    DPO_LOSS_TYPES,
    EXO_DEFAULT_EPS,
    F_DIVERGENCE_TYPES,
    SIMPO_DEFAULT_GAMMA,
    KTOLoss,
    ORPOLoss,
    PreferenceLoss,
    combine_dpo_losses,
    cpo_loss,
    dpo_loss,
    kto_kl_estimate,
    kto_loss,
    kto_reference_point,
    orpo_loss,
    reward_model_loss,
    simpo_loss,
)

__all__ = [
    "DPO_LOSS_TYPES", "EXO_DEFAULT_EPS", "F_DIVERGENCE_TYPES",
    "SIMPO_DEFAULT_GAMMA", "_F_DIVERGENCE_LOSS_TYPES", "KTOLoss", "ORPOLoss", "PreferenceLoss",
    "combine_dpo_losses", "cpo_loss", "dpo_loss", "kto_kl_estimate", "kto_loss", "kto_reference_point",
    "orpo_loss",
    "reward_model_loss", "simpo_loss",
]
