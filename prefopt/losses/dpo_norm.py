"""Length-normalized DPO: the sigmoid loss on per-token (not per-sequence) log-ratios."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from prefopt.losses.common import FDivergenceOptions, finish, prepare, require_lengths, reward_metrics, scores
from prefopt.losses.registry import LossOutput, PairLogps, register_loss


@dataclass
class DPONormHparams(FDivergenceOptions):
    beta: float = 0.1


@register_loss(
    "dpo_norm",
    hparams=DPONormHparams,
    needs_reference=True,
    data="paired",
    aliases=("sigmoid_norm",),
    trl_name="sigmoid_norm",
    paper="DPO (arXiv:2305.18290) with the length normalization of R-DPO/SimPO (arXiv:2403.19159, "
    "arXiv:2405.14734); TRL's sigmoid_norm",
)
def dpo_norm(logps: PairLogps, hp: DPONormHparams) -> LossOutput:
    """loss = -log σ(β·[s_w/|y_w| - s_l/|y_l|]),  s = log π(y|x) - log π_ref(y|x).

    Shapes: inputs and lengths ``(B,)``; returns ``(B,)``. Metrics: rewards/* = β·s (unnormalized, as TRL).
    """
    logps = prepare(logps, hp)
    chosen, rejected = scores(logps, hp)
    chosen_len, rejected_len = require_lengths(logps, "dpo_norm")
    losses = -F.logsigmoid(hp.beta * (chosen / chosen_len - rejected / rejected_len))
    return LossOutput(finish(losses, logps, hp), reward_metrics(logps, hp.beta))
