"""KTO: prospect-theoretic alignment from unpaired desirable / undesirable completions."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefopt.losses.common import UnpairedOptions, global_sum_count, unpaired_metrics
from prefopt.losses.registry import LossOutput, UnpairedLogps, register_loss


@dataclass
class KTOHparams(UnpairedOptions):
    def validate(self) -> None:
        super().validate()
        if self.desirable_weight < 0 or self.undesirable_weight < 0:
            raise ValueError("desirable_weight/undesirable_weight: must be >= 0")


def kl_estimate(logps: UnpairedLogps) -> torch.Tensor:
    """z_0 = max(0, mean_i [log π(y'_i|x_i) - log π_ref(y'_i|x_i)]) over the batch's mismatched pairs, detached.

    (x_i, y'_i) pairs each prompt with another row's completion (the trainer rotates completions by one
    within the micro-batch, as TRL), a sample from π_ref-ish outputs unrelated to x_i. Averaged over
    the rows of every process, as TRL's gather.
    """
    total, count = global_sum_count(logps.kl_policy - logps.kl_ref, logps.weights)
    return torch.tensor(max(total / count, 0.0), dtype=logps.policy.dtype, device=logps.policy.device)


@register_loss(
    "kto",
    hparams=KTOHparams,
    needs_reference=True,
    data="unpaired",
    trl_name="kto (KTOTrainer)",
    needs=("kl_pairs",),
    paper="Ethayarajh et al. 2024, KTO: Model Alignment as Prospect Theoretic Optimization (arXiv:2402.01306), Eq. 7",
)
def kto(logps: UnpairedLogps, hp: KTOHparams) -> LossOutput:
    """r = log π(y|x) - log π_ref(y|x),  z_0 = the detached, clamped KL estimate (see ``kl_estimate``);
    desirable:   loss = λ_D·(1 - σ(β·(r - z_0)))
    undesirable: loss = λ_U·(1 - σ(β·(z_0 - r)))

    Shapes: ``policy``, ``ref``, ``desirable``, ``lengths`` ``(B,)``; ``kl_policy``/``kl_ref`` ``(B,)``.
    Returns ``(B,)``. Metrics (as TRL): kl, rewards/chosen and logps/chosen over desirable rows,
    */rejected over undesirable rows, rewards/margins their difference.
    """
    z0 = kl_estimate(logps)
    r = logps.policy - logps.ref
    losses = torch.where(
        logps.desirable,
        hp.desirable_weight * (1 - torch.sigmoid(hp.beta * (r - z0))),
        hp.undesirable_weight * (1 - torch.sigmoid(hp.beta * (z0 - r))),
    )
    return LossOutput(losses, {"kl": z0, **unpaired_metrics(logps, hp.beta * r)})
