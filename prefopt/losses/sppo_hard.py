"""SPPO with hard (0/1) win probabilities: squared regression of each log-ratio to ±1/(2β)."""

from __future__ import annotations

from dataclasses import dataclass

from prefopt.losses.common import RefPairOptions, finish, logratios, prepare, reward_metrics
from prefopt.losses.registry import LossOutput, PairLogps, register_loss


@dataclass
class SPPOHardHparams(RefPairOptions):
    beta: float = 0.1


@register_loss(
    "sppo_hard",
    hparams=SPPOHardHparams,
    needs_reference=True,
    data="paired",
    trl_name="sppo_hard",
    paper="Wu et al. 2024, Self-Play Preference Optimization (arXiv:2405.00675), Eq. 4.7 with P = 1 for "
    "the winner and 0 for the loser",
)
def sppo_hard(logps: PairLogps, hp: SPPOHardHparams) -> LossOutput:
    """loss = (u_w - 1/(2β))² + (u_l + 1/(2β))²,  u = log(π/π_ref).

    SPPO proper estimates P(y ≻ π) with a preference model (PairRM) outside the trainer; the hard
    version is what a dataset of labelled pairs supports. Shapes: inputs ``(B,)``; returns ``(B,)``.
    """
    logps = prepare(logps, hp)
    chosen_lr, rejected_lr = logratios(logps)
    losses = (chosen_lr - 0.5 / hp.beta) ** 2 + (rejected_lr + 0.5 / hp.beta) ** 2
    return LossOutput(finish(losses, logps, hp), reward_metrics(logps, hp.beta))
