"""SimPO: reference-free, length-normalized log-likelihood reward with a target margin."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from prefopt.losses.common import check_beta, check_label_smoothing, require_lengths, reward_metrics
from prefopt.losses.registry import LossOutput, PairLogps, register_loss


@dataclass
class SimPOHparams:
    # β of the paper (the SimPO authors use 2.0-10; the shared default 0.1 is DPO's scale).
    beta: float = 0.1
    # γ, the target reward margin in reward units (the paper's γ and TRL's simpo_gamma), NOT γ/β: the
    # SimPO repository's gamma_beta_ratio equals gamma / beta.
    gamma: float = 0.5
    label_smoothing: float = 0.0

    def validate(self) -> None:
        check_beta(self.beta)
        check_label_smoothing(self.label_smoothing)


@register_loss(
    "simpo",
    hparams=SimPOHparams,
    needs_reference=False,
    data="paired",
    trl_name="simpo",
    paper="Meng et al. 2024, SimPO: Simple Preference Optimization with a Reference-Free Reward "
    "(arXiv:2405.14734), Eq. 6",
)
def simpo(logps: PairLogps, hp: SimPOHparams) -> LossOutput:
    """r(y) = β·log π(y|x)/|y|;   loss = -(1-ε)·log σ(r_w - r_l - γ) - ε·log σ(-(r_w - r_l - γ)).

    Parametrization: γ is the margin on the β-scaled rewards (SimPO Eq. 6, TRL's CPOTrainer with
    loss_type="simpo" and cpo_alpha=0), so raising β at fixed γ loosens the margin in log-prob units.
    Shapes: inputs and lengths ``(B,)``; returns ``(B,)``. Metrics: rewards/* = r, logps/* (summed).
    """
    chosen_len, rejected_len = require_lengths(logps, "simpo")
    rw = hp.beta * logps.policy_chosen / chosen_len
    rl = hp.beta * logps.policy_rejected / rejected_len
    z = rw - rl - hp.gamma
    losses = -(1 - hp.label_smoothing) * F.logsigmoid(z) - hp.label_smoothing * F.logsigmoid(-z)
    return LossOutput(losses, reward_metrics(logps, hp.beta, rw, rl))
