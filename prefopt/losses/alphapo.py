"""AlphaPO: SimPO with the reward shape bent by α (α → 0 recovers SimPO)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefopt.losses.common import check_beta, check_label_smoothing, require_lengths, reward_metrics
from prefopt.losses.registry import LossOutput, PairLogps, register_loss


@dataclass
class AlphaPOHparams:
    beta: float = 0.1
    # γ: target margin on the β-scaled rewards, as SimPO's.
    gamma: float = 0.5
    # α ≠ 0 shapes the reward r = (1 - p̄^{-α})/α, p̄ = π(y|x)^{1/|y|}; the paper tunes it in [-1, 1].
    alpha: float = 0.25
    label_smoothing: float = 0.0

    def validate(self) -> None:
        check_beta(self.beta)
        check_label_smoothing(self.label_smoothing)


def alpha_reward(avg_logps: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1 - p̄^{-α})/α with p̄ = exp(avg log-prob); the log-likelihood itself in the α → 0 limit."""
    if alpha == 0.0:
        return avg_logps
    return -torch.expm1(-alpha * avg_logps) / alpha


@register_loss(
    "alphapo",
    hparams=AlphaPOHparams,
    needs_reference=False,
    data="paired",
    trl_name="alphapo",
    paper="Gupta et al. 2025, AlphaPO: Reward Shape Matters for LLM Alignment (arXiv:2501.03884), Eq. 6",
)
def alphapo(logps: PairLogps, hp: AlphaPOHparams) -> LossOutput:
    """r(y) = (1 - π(y|x)^{-α/|y|})/α;   loss = -log σ(β·(r_w - r_l) - γ) (with label smoothing ε as SimPO).

    Same parametrization as TRL's CPOTrainer(loss_type="alphapo", alpha=α). Shapes: inputs and lengths
    ``(B,)``; returns ``(B,)``. Metrics: rewards/* = β·r, logps/* (summed log-probs).
    """
    chosen_len, rejected_len = require_lengths(logps, "alphapo")
    rw = hp.beta * alpha_reward(logps.policy_chosen / chosen_len, hp.alpha)
    rl = hp.beta * alpha_reward(logps.policy_rejected / rejected_len, hp.alpha)
    z = rw - rl - hp.gamma
    losses = -(1 - hp.label_smoothing) * F.logsigmoid(z) - hp.label_smoothing * F.logsigmoid(-z)
    return LossOutput(losses, reward_metrics(logps, hp.beta, rw, rl))
