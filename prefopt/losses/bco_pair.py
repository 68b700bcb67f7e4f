"""BCO on pairs: chosen and rejected classified separately as good (1) and bad (0) by their reward."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from prefopt.losses.common import RefPairOptions, finish, logratios, prepare, reward_metrics
from prefopt.losses.registry import LossOutput, PairLogps, register_loss


@dataclass
class BCOPairHparams(RefPairOptions):
    beta: float = 0.1


@register_loss(
    "bco_pair",
    hparams=BCOPairHparams,
    needs_reference=True,
    data="paired",
    trl_name="bco_pair",
    paper="Jung et al. 2024, Binary Classifier Optimization for LLM Alignment (arXiv:2404.04656), Eq. 6 "
    "without the reward shift δ (as TRL 1.16's bco_pair); MPO (arXiv:2411.10442) combines it with DPO and SFT",
)
def bco_pair(logps: PairLogps, hp: BCOPairHparams) -> LossOutput:
    """loss = -log σ(r_w) - log σ(-r_l),  r = β·log(π/π_ref).

    The running reward baseline δ of the paper is the unpaired ``bco`` loss; this paired form uses δ = 0,
    as TRL 1.16 does. Shapes: inputs ``(B,)``; returns ``(B,)``.
    """
    logps = prepare(logps, hp)
    chosen_lr, rejected_lr = logratios(logps)
    losses = -F.logsigmoid(hp.beta * chosen_lr) - F.logsigmoid(-hp.beta * rejected_lr)
    return LossOutput(finish(losses, logps, hp), reward_metrics(logps, hp.beta))
