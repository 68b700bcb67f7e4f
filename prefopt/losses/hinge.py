"""Hinge loss on the β-scaled log-ratio margin (SLiC's calibration loss with a reference model)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefopt.losses.common import FDivergenceOptions, finish, prepare, reward_metrics, scores
from prefopt.losses.registry import LossOutput, PairLogps, register_loss


@dataclass
class HingeHparams(FDivergenceOptions):
    # 1/β is the margin the log-ratio difference must exceed.
    beta: float = 0.1


@register_loss(
    "hinge",
    hparams=HingeHparams,
    needs_reference=True,
    data="paired",
    trl_name="hinge",
    paper="Zhao et al. 2023, SLiC-HF (arXiv:2305.10425); as normalized in Liu et al. 2023, RSO "
    "(arXiv:2309.06657), Eq. 9",
)
def hinge(logps: PairLogps, hp: HingeHparams) -> LossOutput:
    """loss = max(0, 1 - β·h),  h = log(π/π_ref)(y_w) - log(π/π_ref)(y_l).

    Shapes: inputs ``(B,)``; returns ``(B,)``. Metrics: rewards/* (β·log-ratio), logps/*.
    """
    logps = prepare(logps, hp)
    chosen, rejected = scores(logps, hp)
    losses = torch.relu(1 - hp.beta * (chosen - rejected))
    return LossOutput(finish(losses, logps, hp), reward_metrics(logps, hp.beta))
