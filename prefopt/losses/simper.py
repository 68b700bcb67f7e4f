"""SimPER: hyperparameter-free, reference-free contrast of the inverse perplexities of chosen and rejected."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefopt.losses.common import require_lengths, reward_metrics
from prefopt.losses.registry import LossOutput, PairLogps, register_loss


@dataclass
class SimPERHparams:
    """No hyperparameters, by design (the paper's point): no β, no margin, no reference model.

    ``conf/loss/simper.yaml`` sets only ``weight``; a top-level ``beta=`` sweep leaves SimPER unchanged.
    """


@register_loss(
    "simper",
    hparams=SimPERHparams,
    needs_reference=False,
    data="paired",
    paper="Xiao et al. 2025, SimPER: A Minimalist Approach to Preference Alignment without "
    "Hyperparameters (arXiv:2502.00883, ICLR 2025), the SimPER objective of Sec. 3",
)
def simper(logps: PairLogps, hp: SimPERHparams) -> LossOutput:
    """loss = -exp(log π(y_w|x)/|y_w|) + exp(log π(y_l|x)/|y_l|)

    Each exp(mean token log-prob) is the inverse perplexity of the completion, in (0, 1]; the loss lies
    in [-1, 1], is 0 when both completions are equally perplexing, and its gradient on each sequence's
    mean log-prob is that sequence's own inverse perplexity (bounded, so confidently rejected
    completions stop being pushed down).

    Checked against the authors' code, github.com/tengxiao1/SimPER (commit db08c97), scripts/simper_trainer.py
    (``simpo_loss`` with loss_type "SimPER", lines 588-591: ``-exp(chosen) + exp(rejected)`` on log-probs from
    ``get_batch_logps(average_log_prob=True)``, i.e. token means): the same objective. The paper's equation
    number is not cited (its full text was not reachable from this workplace). That trainer's optional ``sft_weight`` NLL term (default 0) is not part of
    SimPER; combine ``loss=[simper,sft]`` for it.

    Shapes: inputs and lengths ``(B,)`` (log-probs summed over completion tokens); returns ``(B,)``.
    Metrics: rewards/* = the inverse perplexities exp(log π(y)/|y|) (so rewards/margins = -loss), logps/*.
    """
    chosen_len, rejected_len = require_lengths(logps, "simper")
    chosen = torch.exp(logps.policy_chosen / chosen_len)
    rejected = torch.exp(logps.policy_rejected / rejected_len)
    losses = rejected - chosen
    return LossOutput(losses, reward_metrics(logps, 1.0, chosen, rejected))
