"""NCA: noise-contrastive alignment, which also pushes the chosen reward up in absolute terms."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from prefopt.losses.common import RefPairOptions, finish, logratios, prepare, reward_metrics
from prefopt.losses.registry import LossOutput, PairLogps, register_loss


@dataclass
class NCAHparams(RefPairOptions):
    beta: float = 0.1


@register_loss(
    "nca",
    hparams=NCAHparams,
    needs_reference=True,
    data="paired",
    aliases=("nca_pair",),
    trl_name="nca_pair",
    paper="Chen et al. 2024, Noise Contrastive Alignment of Language Models with Explicit Rewards "
    "(arXiv:2402.05369), Eq. 12 (K = 2)",
)
def nca(logps: PairLogps, hp: NCAHparams) -> LossOutput:
    """loss = -log σ(r_w) - ½·log σ(-r_w) - ½·log σ(-r_l),  r = β·log(π/π_ref).

    Shapes: inputs ``(B,)``; returns ``(B,)``. Metrics: rewards/*, logps/*.
    """
    logps = prepare(logps, hp)
    chosen_lr, rejected_lr = logratios(logps)
    rw, rl = hp.beta * chosen_lr, hp.beta * rejected_lr
    losses = -F.logsigmoid(rw) - 0.5 * F.logsigmoid(-rw) - 0.5 * F.logsigmoid(-rl)
    return LossOutput(finish(losses, logps, hp), reward_metrics(logps, hp.beta))
