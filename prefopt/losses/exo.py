"""EXO: preference optimization as reverse-KL matching of the policy's pairwise distribution."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefopt.losses.common import FDivergenceOptions, finish, prepare, reward_metrics, scores
from prefopt.losses.registry import LossOutput, PairLogps, register_loss


@dataclass
class EXOHparams(FDivergenceOptions):
    beta: float = 0.1
    # ε > 0 of the target distribution [1-ε, ε] over (chosen, rejected); the paper recommends 1e-3.
    label_smoothing: float = 1e-3

    def validate(self) -> None:
        super().validate()
        if not 0.0 < self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing: must be in (0, 0.5) for exo, got {self.label_smoothing}")


@register_loss(
    "exo",
    hparams=EXOHparams,
    needs_reference=True,
    data="paired",
    aliases=("exo_pair",),
    trl_name="exo_pair",
    paper="Ji et al. 2024, Towards Efficient Exact Optimization of Language Model Alignment "
    "(arXiv:2402.00856), Eq. 16 (EXO-pref, K = 2)",
)
def exo(logps: PairLogps, hp: EXOHparams) -> LossOutput:
    """loss = KL(q ‖ p) = q_w·(log q_w - log(1-ε)) + q_l·(log q_l - log ε),
    q_w = σ(β·h), q_l = σ(-β·h), h the DPO log-ratio margin.

    Shapes: inputs ``(B,)``; returns ``(B,)``. Metrics: rewards/*, logps/*.
    """
    logps = prepare(logps, hp)
    chosen, rejected = scores(logps, hp)
    h = hp.beta * (chosen - rejected)
    eps = hp.label_smoothing
    losses = (torch.sigmoid(h) * (F.logsigmoid(h) - math.log1p(-eps))
              + torch.sigmoid(-h) * (F.logsigmoid(-h) - math.log(eps)))
    return LossOutput(finish(losses, logps, hp), reward_metrics(logps, hp.beta))
