"""IPO: a squared loss on the log-ratio margin that does not saturate, so it cannot overfit to
deterministic preferences."""

from __future__ import annotations

from dataclasses import dataclass

from prefopt.losses.common import FDivergenceOptions, finish, prepare, require_lengths, reward_metrics, scores
from prefopt.losses.registry import LossOutput, PairLogps, register_loss


@dataclass
class IPOHparams(FDivergenceOptions):
    # τ of the IPO paper: the target margin is 1/(2τ).
    beta: float = 0.1
    # true: TRL's form, each sequence's log-ratio averaged over its tokens (the IPO authors' choice);
    # false: the summed form of the original DPO repository and OpenRLHF.
    length_normalize: bool = True


@register_loss(
    "ipo",
    hparams=IPOHparams,
    needs_reference=True,
    data="paired",
    trl_name="ipo",
    paper="Azar et al. 2023, A General Theoretical Paradigm to Understand Learning from Human Preferences "
    "(arXiv:2310.12036), Eq. 17",
)
def ipo(logps: PairLogps, hp: IPOHparams) -> LossOutput:
    """Identity Preference Optimization.

    h = s_w/|y_w| - s_l/|y_l|   (length_normalize, TRL)   or   h = s_w - s_l   (summed form)
    with s = log π(y|x) - log π_ref(y|x);   loss = (h - 1/(2τ))²,  τ = beta.

    Shapes: inputs ``(B,)``; the normalized form also needs ``chosen_lengths``/``rejected_lengths``.
    Metrics: rewards/* = β·log(π/π_ref) (not length-normalized, as TRL logs them), logps/*.
    """
    logps = prepare(logps, hp)
    chosen, rejected = scores(logps, hp)
    if hp.length_normalize:
        chosen_len, rejected_len = require_lengths(logps, "ipo")
        chosen, rejected = chosen / chosen_len, rejected / rejected_len
    losses = (chosen - rejected - 1 / (2 * hp.beta)) ** 2
    return LossOutput(finish(losses, logps, hp), reward_metrics(logps, hp.beta))
