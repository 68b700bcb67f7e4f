"""ORPO: reference-free monolithic preference optimization: SFT plus a log odds-ratio penalty."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefopt.losses.common import check_beta, check_nll_average, nll, require_lengths, reward_metrics
from prefopt.losses.registry import LossOutput, PairLogps, register_loss

# Per-token mean log-probs are clamped just below 0 so log(1 - p) stays finite when a completion is
# (numerically) certain; the odds ratio of such a pair is then very large, not infinite.
_MAX_AVG_LOGP = -1e-6


@dataclass
class ORPOHparams:
    # λ of the paper (TRL's ORPOConfig.beta), the weight of the odds-ratio term.
    beta: float = 0.1
    # batch_tokens: NLL averaged over all chosen tokens of the batch (TRL's convention); sequence: per sequence.
    nll_average: str = "batch_tokens"

    def validate(self) -> None:
        check_beta(self.beta)
        check_nll_average(self.nll_average)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - e^x) for x < 0, switching formulas at -ln 2 to avoid cancellation (Mächler 2012)."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


@register_loss(
    "orpo",
    hparams=ORPOHparams,
    needs_reference=False,
    data="paired",
    trl_name="orpo (ORPOTrainer)",
    paper="Hong et al. 2024, ORPO: Monolithic Preference Optimization without Reference Model "
    "(arXiv:2403.07691), Eqs. 4-7",
)
def orpo(logps: PairLogps, hp: ORPOHparams) -> LossOutput:
    """p̄ = exp(log π(y|x)/|y|),  odds(y) = p̄/(1 - p̄);
    loss = NLL(y_w) - λ·log σ(log odds(y_w) - log odds(y_l)).

    The NLL covers the completion only; TRL's ORPOTrainer also includes the prompt tokens in it (the
    odds-ratio term is identical). Shapes: inputs and lengths ``(B,)``; returns ``(B,)``.
    Metrics: rewards/* = λ·log p̄ (TRL's), logps/*, nll, log_odds_ratio, log_odds_chosen.
    """
    chosen_len, rejected_len = require_lengths(logps, "orpo")
    avg_w = torch.clamp(logps.policy_chosen / chosen_len, max=_MAX_AVG_LOGP)
    avg_l = torch.clamp(logps.policy_rejected / rejected_len, max=_MAX_AVG_LOGP)
    log_odds = (avg_w - avg_l) - (log1mexp(avg_w) - log1mexp(avg_l))
    ratio = F.logsigmoid(log_odds)
    nll_loss = nll(logps, hp.nll_average)
    metrics = reward_metrics(logps, hp.beta, hp.beta * avg_w, hp.beta * avg_l)
    metrics.update(nll=nll_loss.detach(), log_odds_ratio=ratio.detach(), log_odds_chosen=log_odds.detach())
    return LossOutput(nll_loss - hp.beta * ratio, metrics)
