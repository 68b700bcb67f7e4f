"""APO-zero: anchored preference optimization when the chosen answers are better than the policy's."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefopt.losses.common import RefPairOptions, finish, logratios, prepare, reward_metrics
from prefopt.losses.registry import LossOutput, PairLogps, register_loss


@dataclass
class APOHparams(RefPairOptions):
    beta: float = 0.1


@register_loss(
    "apo_zero",
    hparams=APOHparams,
    needs_reference=True,
    data="paired",
    trl_name="apo_zero",
    paper="D'Oosterlinck et al. 2024, Anchored Preference Optimization and Contrastive Revisions "
    "(arXiv:2408.06266), Eq. 7",
)
def apo_zero(logps: PairLogps, hp: APOHparams) -> LossOutput:
    """loss = [1 - σ(β·u_w)] + σ(β·u_l),  u = log(π/π_ref): raise the chosen likelihood, lower the rejected.

    Shapes: inputs ``(B,)``; returns ``(B,)``. Metrics: rewards/*, logps/*.
    """
    logps = prepare(logps, hp)
    chosen_lr, rejected_lr = logratios(logps)
    losses = 1 - torch.sigmoid(hp.beta * chosen_lr) + torch.sigmoid(hp.beta * rejected_lr)
    return LossOutput(finish(losses, logps, hp), reward_metrics(logps, hp.beta))
