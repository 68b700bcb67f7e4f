"""APO-zero for unpaired data (TRL KTOTrainer's apo_zero_unpaired)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefopt.losses.common import UnpairedOptions, unpaired_metrics
from prefopt.losses.registry import LossOutput, UnpairedLogps, register_loss


@dataclass
class APOZeroUnpairedHparams(UnpairedOptions):
    pass


@register_loss(
    "apo_zero_unpaired",
    hparams=APOZeroUnpairedHparams,
    needs_reference=True,
    data="unpaired",
    trl_name="apo_zero_unpaired (KTOTrainer)",
    paper="D'Oosterlinck et al. 2024, Anchored Preference Optimization (arXiv:2408.06266), unpaired Eq. 7",
)
def apo_zero_unpaired(logps: UnpairedLogps, hp: APOZeroUnpairedHparams) -> LossOutput:
    """desirable: λ_D·(1 - σ(β·u));  undesirable: λ_U·σ(β·u);  u = log(π/π_ref)(y|x).

    Shapes: inputs ``(B,)``; returns ``(B,)``. Metrics as KTO's (without kl).
    """
    u = logps.policy - logps.ref
    losses = torch.where(logps.desirable, hp.desirable_weight * (1 - torch.sigmoid(hp.beta * u)),
                         hp.undesirable_weight * torch.sigmoid(hp.beta * u))
    return LossOutput(losses, unpaired_metrics(logps, hp.beta * u))
