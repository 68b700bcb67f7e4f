"""DPO with the sigmoid (Bradley-Terry) loss, and conservative DPO through label smoothing."""

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
class DPOHparams(FDivergenceOptions):
    beta: float = 0.1
    # cDPO's ε: the assumed probability that a preference label is flipped. 0 gives plain DPO.
    label_smoothing: float = 0.0

    def validate(self) -> None:
        super().validate()
        check_label_smoothing(self.label_smoothing)


@register_loss(
    "dpo",
    hparams=DPOHparams,
    needs_reference=True,
    data="paired",
    aliases=("sigmoid",),
    trl_name="sigmoid",
    paper="Rafailov et al. 2023, Direct Preference Optimization (arXiv:2305.18290), Eq. 7; "
    "cDPO: Mitchell 2023, A note on DPO with noisy preferences",
)
def dpo(logps: PairLogps, hp: DPOHparams) -> LossOutput:
    """Direct Preference Optimization.

    h = [log π(y_w|x) - log π_ref(y_w|x)] - [log π(y_l|x) - log π_ref(y_l|x)]
    loss = -(1 - ε)·log σ(β·h) - ε·log σ(-β·h)

    With ε = 0 this is Eq. 7 of the DPO paper (TRL's ``sigmoid``); with ε > 0 it is conservative DPO
    (cDPO) as in the original DPO repository's ``preference_loss`` (TRL 1.16's ``sigmoid`` has no ε).
    With an f-divergence, each log-ratio in h is replaced by f'(π/π_ref).

    Shapes: every input ``(B,)`` (per-sequence sums over completion tokens); returns losses ``(B,)``.
    Metrics: rewards/{chosen,rejected,margins,accuracies} with reward = β·log(π/π_ref), logps/*.
    """
    logps = prepare(logps, hp)
    chosen, rejected = scores(logps, hp)
    h = chosen - rejected
    # logsigmoid is stable at ±50 margins where log(sigmoid(x)) underflows to -inf.
    losses = -(1 - hp.label_smoothing) * F.logsigmoid(hp.beta * h) - hp.label_smoothing * F.logsigmoid(-hp.beta * h)
    return LossOutput(finish(losses, logps, hp), reward_metrics(logps, hp.beta))
