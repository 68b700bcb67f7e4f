"""CPO: reference-free DPO-style contrast of log-likelihoods plus an NLL term on the chosen answer."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from prefopt.losses.common import (
    check_beta,
    check_label_smoothing,
    check_nll_average,
    nll,
    require_lengths,
    reward_metrics,
)
from prefopt.losses.registry import LossOutput, PairLogps, register_loss


@dataclass
class CPOHparams:
    beta: float = 0.1
    # Weight of the NLL term (TRL's cpo_alpha).
    alpha: float = 1.0
    label_smoothing: float = 0.0
    # batch_tokens: NLL averaged over all chosen tokens of the batch (TRL's nn.CrossEntropyLoss);
    # sequence: each chosen sequence's per-token NLL.
    nll_average: str = "batch_tokens"

    def validate(self) -> None:
        check_beta(self.beta)
        check_label_smoothing(self.label_smoothing)
        check_nll_average(self.nll_average)


@register_loss(
    "cpo",
    hparams=CPOHparams,
    needs_reference=False,
    data="paired",
    trl_name="sigmoid (CPOTrainer)",
    paper="Xu et al. 2024, Contrastive Preference Optimization (arXiv:2401.08417), Eq. 3 + NLL",
)
def cpo(logps: PairLogps, hp: CPOHparams) -> LossOutput:
    """loss = -(1-ε)·log σ(β·(log π(y_w) - log π(y_l))) - ε·log σ(-β·(…)) + α·NLL(y_w).

    Log-probs are summed over tokens (as TRL's CPOTrainer with loss_type="sigmoid"); the NLL follows
    ``nll_average``. Shapes: inputs and lengths ``(B,)``; returns ``(B,)``.
    Metrics: rewards/* = β·log π(y) (no reference), logps/*, nll.
    """
    require_lengths(logps, "cpo")
    z = hp.beta * (logps.policy_chosen - logps.policy_rejected)
    nll_loss = nll(logps, hp.nll_average)
    losses = -(1 - hp.label_smoothing) * F.logsigmoid(z) - hp.label_smoothing * F.logsigmoid(-z) + hp.alpha * nll_loss
    metrics = reward_metrics(logps, hp.beta, hp.beta * logps.policy_chosen, hp.beta * logps.policy_rejected)
    return LossOutput(losses, {**metrics, "nll": nll_loss.detach()})
