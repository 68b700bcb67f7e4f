"""Supervised fine-tuning as a loss: negative log-likelihood of the chosen completion."""

from __future__ import annotations

from dataclasses import dataclass

from prefopt.losses.common import check_nll_average, nll, require_lengths
from prefopt.losses.registry import LossOutput, PairLogps, register_loss


@dataclass
class SFTHparams:
    # Kept so that a top-level beta sweep composes with every loss; SFT itself ignores it.
    beta: float = 0.1
    # sequence: each sequence's NLL averaged over its own tokens; batch_tokens: averaged over all chosen
    # tokens of the batch (TRL's sft loss_type, e.g. in MPO's loss=[dpo,bco_pair,sft]).
    nll_average: str = "sequence"

    def validate(self) -> None:
        check_nll_average(self.nll_average)


@register_loss(
    "sft",
    hparams=SFTHparams,
    needs_reference=False,
    data="sft",
    trl_name="sft",
    paper="maximum likelihood; dSFT stage of Tunstall et al. 2023, Zephyr (arXiv:2310.16944)",
)
def sft(logps: PairLogps, hp: SFTHparams) -> LossOutput:
    """Token-averaged negative log-likelihood of the chosen (or only) completion.

    sequence (default):  loss_i = -log π(y_i|x_i) / |y_i|
    batch_tokens:        loss_i = -log π(y_i|x_i) · B / Σ_j |y_j|   (batch mean = mean over all tokens)

    The default weighs every example equally regardless of length; TRL's SFTTrainer and DPOTrainer's
    ``sft`` loss type average over all tokens in the batch, which weighs long completions more.

    Shapes: ``policy_chosen`` and ``chosen_lengths`` ``(B,)``; returns losses ``(B,)``.
    Metrics: logps/chosen, nll.
    """
    require_lengths(logps, "sft")
    loss = nll(logps, hp.nll_average)
    return LossOutput(loss, {"logps/chosen": logps.policy_chosen.detach(), "nll": loss.detach()})
