"""RPO: DPO plus a negative log-likelihood term on the chosen answer."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from prefopt.losses.common import (
    FDivergenceOptions,
    check_nll_average,
    finish,
    nll,
    prepare,
    require_lengths,
    reward_metrics,
    scores,
)
from prefopt.losses.registry import LossOutput, PairLogps, register_loss


@dataclass
class RPOHparams(FDivergenceOptions):
    beta: float = 0.1
    # α, the weight of the NLL term; the paper uses 1.0.
    alpha: float = 1.0
    # sequence: each chosen sequence's NLL per token (the paper's |y_w| normalization);
    # batch_tokens: the token mean over the batch (TRL's cross-entropy convention).
    nll_average: str = "sequence"

    def validate(self) -> None:
        super().validate()
        check_nll_average(self.nll_average)


@register_loss(
    "rpo",
    hparams=RPOHparams,
    needs_reference=True,
    data="paired",
    paper="Pang et al. 2024, Iterative Reasoning Preference Optimization (arXiv:2404.19733), Eq. 1",
)
def rpo(logps: PairLogps, hp: RPOHparams) -> LossOutput:
    """loss = -log σ(β·h) + α·(-log π(y_w|x) / |y_w|),  h the DPO log-ratio margin.

    The NLL uses the raw (not LD-weighted) chosen log-prob. TRL 1.16 has no RPO (older TRL had
    ``rpo_alpha``); ``loss=[dpo,sft]`` with weights is the same objective with batch-token averaging.
    Shapes: inputs and lengths ``(B,)``; returns ``(B,)``. Metrics: rewards/*, logps/*, nll.
    """
    require_lengths(logps, "rpo")
    nll_loss = nll(logps, hp.nll_average)
    logps = prepare(logps, hp)
    chosen, rejected = scores(logps, hp)
    losses = finish(-F.logsigmoid(hp.beta * (chosen - rejected)), logps, hp) + hp.alpha * nll_loss
    return LossOutput(losses, {**reward_metrics(logps, hp.beta), "nll": nll_loss.detach()})
