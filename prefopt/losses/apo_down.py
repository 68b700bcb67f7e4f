"""APO-down: anchored preference optimization when the chosen answers are worse than the policy's."""

from __future__ import annotations

import torch

from prefopt.losses.apo_zero import APOHparams
from prefopt.losses.common import finish, logratios, prepare, reward_metrics
from prefopt.losses.registry import LossOutput, PairLogps, register_loss


@register_loss(
    "apo_down",
    hparams=APOHparams,
    needs_reference=True,
    data="paired",
    trl_name="apo_down",
    paper="D'Oosterlinck et al. 2024, Anchored Preference Optimization and Contrastive Revisions "
    "(arXiv:2408.06266), Eq. 8",
)
def apo_down(logps: PairLogps, hp: APOHparams) -> LossOutput:
    """loss = σ(β·u_w) + [1 - σ(β·(u_w - u_l))],  u = log(π/π_ref): lower both, the rejected more.

    Shapes: inputs ``(B,)``; returns ``(B,)``. Metrics: rewards/*, logps/*.
    """
    logps = prepare(logps, hp)
    chosen_lr, rejected_lr = logratios(logps)
    losses = torch.sigmoid(hp.beta * chosen_lr) + 1 - torch.sigmoid(hp.beta * (chosen_lr - rejected_lr))
    return LossOutput(finish(losses, logps, hp), reward_metrics(logps, hp.beta))
