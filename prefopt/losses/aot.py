"""AOT: alignment via optimal transport, a DPO loss on the sorted batch of log-ratio margins
(first-order stochastic dominance of the chosen over the rejected distribution)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefopt.losses.common import RefPairOptions, check_label_smoothing, prepare, reward_metrics
from prefopt.losses.registry import LossOutput, PairLogps, register_loss


@dataclass
class AOTHparams(RefPairOptions):
    beta: float = 0.1
    label_smoothing: float = 0.0

    def validate(self) -> None:
        super().validate()
        if self.wpo:
            raise ValueError("wpo: not supported for aot, which sorts the batch and so breaks per-pair weights")
        check_label_smoothing(self.label_smoothing)


def sorted_logistic(delta: torch.Tensor, hp) -> torch.Tensor:
    return -(1 - hp.label_smoothing) * F.logsigmoid(hp.beta * delta) - hp.label_smoothing * F.logsigmoid(-hp.beta * delta)


@register_loss(
    "aot",
    hparams=AOTHparams,
    needs_reference=True,
    data="paired",
    trl_name="aot",
    paper="Melnyk et al. 2024, Distributional Preference Alignment of LLMs via Optimal Transport "
    "(arXiv:2406.05882), paired AOT",
)
def aot(logps: PairLogps, hp: AOTHparams) -> LossOutput:
    """δ = sort_B(log π(y_w) - log π(y_l)) - sort_B(log π_ref(y_w) - log π_ref(y_l));
    loss_k = -(1-ε)·log σ(β·δ_k) - ε·log σ(-β·δ_k).

    Entry k of the returned ``(B,)`` losses belongs to the k-th smallest margins, not to example k: only
    the batch mean is meaningful, and the loss depends on the batch (use batch sizes ≥ 2).
    Metrics: the usual per-example rewards/* and logps/*.
    """
    logps = prepare(logps, hp)
    policy, _ = torch.sort(logps.policy_chosen - logps.policy_rejected, dim=0)
    ref, _ = torch.sort(logps.ref_chosen - logps.ref_rejected, dim=0)
    return LossOutput(sorted_logistic(policy - ref, hp), reward_metrics(logps, hp.beta))
