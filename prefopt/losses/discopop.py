"""DiscoPOP: the LLM-discovered log-ratio-modulated blend of the logistic and exponential losses."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefopt.losses.common import FDivergenceOptions, finish, prepare, reward_metrics, scores
from prefopt.losses.registry import LossOutput, PairLogps, register_loss


@dataclass
class DiscoPOPHparams(FDivergenceOptions):
    beta: float = 0.1
    # τ, the temperature of the mixing sigmoid; the paper recommends 0.05. TRL's discopop_tau.
    tau: float = 0.05

    def validate(self) -> None:
        super().validate()
        if self.tau <= 0:
            raise ValueError(f"tau: must be > 0, got {self.tau}")


@register_loss(
    "discopop",
    hparams=DiscoPOPHparams,
    needs_reference=True,
    data="paired",
    trl_name="discopop",
    paper="Chris Lu et al. 2024, Discovering Preference Optimization Algorithms with and for LLMs "
    "(arXiv:2406.08414), Eq. 5 (LRML)",
)
def discopop(logps: PairLogps, hp: DiscoPOPHparams) -> LossOutput:
    """ρ = β·h,  m = σ(ρ/τ),  loss = (1 - m)·(-log σ(ρ)) + m·e^{-ρ},  h the DPO log-ratio margin.

    ``m·e^{-ρ}`` is computed as ``exp(log σ(ρ/τ) - ρ)``: equal in exact arithmetic, but finite at large
    negative margins where TRL's ``m * exp(-ρ)`` becomes 0·inf = NaN.
    Shapes: inputs ``(B,)``; returns ``(B,)``. Metrics: rewards/*, logps/*.
    """
    logps = prepare(logps, hp)
    chosen, rejected = scores(logps, hp)
    rho = hp.beta * (chosen - rejected)
    m = torch.sigmoid(rho / hp.tau)
    losses = (1 - m) * -F.logsigmoid(rho) + torch.exp(F.logsigmoid(rho / hp.tau) - rho)
    return LossOutput(finish(losses, logps, hp), reward_metrics(logps, hp.beta))
