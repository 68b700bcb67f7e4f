"""Unpaired AOT: stochastic dominance of the chosen log-ratios over the rejected ones, batch-wise."""

from __future__ import annotations

import torch

from prefopt.losses.aot import AOTHparams, sorted_logistic
from prefopt.losses.common import logratios, prepare, reward_metrics
from prefopt.losses.registry import LossOutput, PairLogps, register_loss


@register_loss(
    "aot_unpaired",
    hparams=AOTHparams,
    needs_reference=True,
    data="paired",
    trl_name="aot_unpaired",
    paper="Melnyk et al. 2024, Distributional Preference Alignment of LLMs via Optimal Transport "
    "(arXiv:2406.05882), unpaired AOT",
)
def aot_unpaired(logps: PairLogps, hp: AOTHparams) -> LossOutput:
    """δ = sort_B(log π/π_ref (y_w)) - sort_B(log π/π_ref (y_l));  loss_k = -(1-ε)·log σ(β·δ_k) - ε·log σ(-β·δ_k).

    Reads paired batches (as TRL) but never uses the pairing: the sorted chosen and rejected log-ratios
    are matched by rank. Entry k of the ``(B,)`` losses belongs to rank k, not example k.
    """
    logps = prepare(logps, hp)
    chosen_lr, rejected_lr = logratios(logps)
    delta = torch.sort(chosen_lr, dim=0)[0] - torch.sort(rejected_lr, dim=0)[0]
    return LossOutput(sorted_logistic(delta, hp), reward_metrics(logps, hp.beta))
