"""Supervised fine-tuning as a loss: negative log-likelihood of the chosen completion."""

from __future__ import annotations

from dataclasses import dataclass

from prefopt.losses.registry import LossOutput, PairLogps, register_loss


@dataclass
class SFTHparams:
    # Kept so that a top-level beta sweep composes with every loss; SFT itself ignores it.
    beta: float = 0.1


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

    loss_i = -log π(y_i|x_i) / |y_i|

    Each sequence's NLL is averaged over its own completion tokens, then the trainer averages over
    sequences; this weighs every example equally regardless of length (TRL's SFTTrainer instead
    averages over all tokens in the batch, which weighs long completions more).

    Shapes: ``policy_chosen`` and ``chosen_lengths`` ``(B,)``; returns losses ``(B,)``.
    Metrics: logps/chosen, nll.
    """
    nll = -logps.policy_chosen / logps.chosen_lengths
    return LossOutput(nll, {"logps/chosen": logps.policy_chosen.detach(), "nll": nll.detach()})
