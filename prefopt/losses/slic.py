"""SLiC-HF: reference-free calibration (rank hinge) loss plus a likelihood regularizer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefopt.losses.common import reward_metrics
from prefopt.losses.registry import LossOutput, PairLogps, register_loss


@dataclass
class SLiCHparams:
    # Unused by SLiC itself (its margin is δ); kept so that top-level beta sweeps compose with every loss.
    beta: float = 0.1
    # δ, the log-likelihood margin the chosen answer must win by (the paper's 1.0).
    margin: float = 1.0
    # λ, the weight of the regularizer -log π(y_w|x) (the paper regularizes towards the SFT target; on
    # preference data the chosen answer plays that role).
    nll_weight: float = 0.1

    def validate(self) -> None:
        if self.margin < 0:
            raise ValueError(f"margin: must be >= 0, got {self.margin}")
        if self.nll_weight < 0:
            raise ValueError(f"nll_weight: must be >= 0, got {self.nll_weight}")


@register_loss(
    "slic",
    hparams=SLiCHparams,
    needs_reference=False,
    data="paired",
    paper="Zhao et al. 2023, SLiC-HF: Sequence Likelihood Calibration with Human Feedback (arXiv:2305.10425), "
    "Eq. 1 with the rank calibration loss",
)
def slic(logps: PairLogps, hp: SLiCHparams) -> LossOutput:
    """loss = max(0, δ - log π(y_w|x) + log π(y_l|x)) - λ·log π(y_w|x)   (summed log-probs, as the paper).

    TRL's ``hinge`` is the reference-normalized variant (RSO); this is SLiC-HF itself, reference-free.
    Shapes: inputs ``(B,)``; returns ``(B,)``. Metrics: rewards/* = log π(y) (β-free), logps/*, nll.
    """
    hinge = torch.relu(hp.margin - logps.policy_chosen + logps.policy_rejected)
    nll = -logps.policy_chosen
    metrics = reward_metrics(logps, hp.beta, logps.policy_chosen, logps.policy_rejected)
    return LossOutput(hinge + hp.nll_weight * nll, {**metrics, "nll": nll.detach()})
