"""Robust DPO: an unbiased DPO loss under a known rate of flipped preference labels."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from prefopt.losses.common import (
    FDivergenceOptions,
    check_label_smoothing,
    finish,
    prepare,
    reward_metrics,
    scores,
)
from prefopt.losses.registry import LossOutput, PairLogps, register_loss


@dataclass
class RobustHparams(FDivergenceOptions):
    beta: float = 0.1
    # ε: the assumed label-flip rate, in [0, 0.5). ε = 0 is plain DPO.
    label_smoothing: float = 0.1

    def validate(self) -> None:
        super().validate()
        check_label_smoothing(self.label_smoothing)


@register_loss(
    "robust",
    hparams=RobustHparams,
    needs_reference=True,
    data="paired",
    trl_name="robust",
    paper="Chowdhury et al. 2024, Provably Robust DPO (arXiv:2403.00409), Eq. 6",
)
def robust(logps: PairLogps, hp: RobustHparams) -> LossOutput:
    """loss = [-(1-ε)·log σ(β·h) + ε·log σ(-β·h)] / (1 - 2ε),  h the DPO log-ratio margin.

    Unlike cDPO (which mixes in -ε·log σ(-βh)), the flipped term enters with a plus sign so that the
    loss is an unbiased estimate of the clean-label DPO loss. Shapes: inputs ``(B,)``; returns ``(B,)``.
    """
    logps = prepare(logps, hp)
    chosen, rejected = scores(logps, hp)
    h = hp.beta * (chosen - rejected)
    eps = hp.label_smoothing
    losses = (-(1 - eps) * F.logsigmoid(h) + eps * F.logsigmoid(-h)) / (1 - 2 * eps)
    return LossOutput(finish(losses, logps, hp), reward_metrics(logps, hp.beta))
