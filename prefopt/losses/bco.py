"""BCO: binary classifier optimization on unpaired data, with a running reward baseline δ."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefopt.losses.common import UnpairedOptions, global_sum_count, unpaired_metrics
from prefopt.losses.registry import LossOutput, UnpairedLogps, register_loss


@dataclass
class BCOHparams(UnpairedOptions):
    pass


def update_baseline(state: dict, rewards: torch.Tensor, weights: torch.Tensor | None = None) -> None:
    """Fold a batch into the running mean of every reward seen in training (count-weighted, like TRL's
    RunningMoments), so δ is the mean over all training rows so far, not an EMA."""
    count = state.get("count", 0)
    mean = state.get("delta", 0.0)
    total, n = global_sum_count(rewards, weights)  # every process's real rows, as TRL's RunningMoments
    state["delta"] = mean + (total - n * mean) / (count + n)
    state["count"] = count + n


@register_loss(
    "bco",
    hparams=BCOHparams,
    needs_reference=True,
    data="unpaired",
    stateful=True,
    trl_name="bco (BCOTrainer, removed from TRL 1.x)",
    paper="Jung et al. 2024, Binary Classifier Optimization for LLM Alignment (arXiv:2404.04656), Eq. 6-7",
)
def bco(logps: UnpairedLogps, hp: BCOHparams, state: dict, training: bool) -> LossOutput:
    """r = β·log(π/π_ref)(y|x),  δ = running mean of all training rewards (this batch included);
    desirable: loss = -λ_D·log σ(r - δ);   undesirable: loss = -λ_U·log σ(-(r - δ)).

    δ moves only in training (``training=True``); evaluation uses the current δ, as TRL's BCOTrainer.
    The paper's underlying-distribution-matching weights (a prompt classifier) are not implemented.
    State: ``{"delta", "count"}``, the same on every process. Shapes: inputs ``(B,)``; returns ``(B,)``.
    Metrics: delta, rewards/*, logps/* as KTO's.
    """
    r = hp.beta * (logps.policy - logps.ref)
    if training:
        update_baseline(state, r.detach(), logps.weights)
    delta = torch.as_tensor(state.get("delta", 0.0), dtype=r.dtype, device=r.device)
    losses = torch.where(logps.desirable, -hp.desirable_weight * F.logsigmoid(r - delta),
                         -hp.undesirable_weight * F.logsigmoid(-(r - delta)))
    return LossOutput(losses, {"delta": delta, **unpaired_metrics(logps, r)})
