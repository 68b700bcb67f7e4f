"""DPO-Positive (DPOP): DPO with a penalty, inside the sigmoid, on the chosen log-ratio falling below zero."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefopt.losses.common import RefPairOptions, finish, logratios, prepare, reward_metrics
from prefopt.losses.registry import LossOutput, PairLogps, register_loss


@dataclass
class DPOPHparams(RefPairOptions):
    beta: float = 0.1
    # The paper's λ (``lambda`` is a Python keyword): weight of the penalty max(0, log π_ref(y_w) - log π(y_w))
    # inside the sigmoid, in log-ratio units (so β·λ per nat of lost chosen likelihood). The paper trains
    # with λ = 50; its authors later report results largely insensitive to λ in [5, 500]. 0 gives DPO.
    dpop_lambda: float = 50.0

    def validate(self) -> None:
        super().validate()
        if self.dpop_lambda < 0:
            raise ValueError(f"dpop_lambda: must be >= 0 (the paper's λ), got {self.dpop_lambda}")


@register_loss(
    "dpop",
    hparams=DPOPHparams,
    needs_reference=True,
    data="paired",
    paper="Pal et al. 2024, Smaug: Fixing Failure Modes of Preference Optimisation with DPO-Positive "
    "(arXiv:2402.13228), Eq. 3",
)
def dpop(logps: PairLogps, hp: DPOPHparams) -> LossOutput:
    """DPO-Positive (Eq. 3 of arXiv:2402.13228, as corrected in its July 2024 revision).

    u_w = log π(y_w|x) - log π_ref(y_w|x),   u_l = log π(y_l|x) - log π_ref(y_l|x)
    p   = max(0, log π_ref(y_w|x) - log π(y_w|x)) = max(0, -u_w)
    loss = -log σ(β·(u_w - u_l - λ·p))

    The penalty sits inside the sigmoid and is scaled by β with the margin, as Eq. 3 writes it (λ is
    ``dpop_lambda``). p is zero while the chosen completion is at least as likely as under the reference,
    so DPOP then equals DPO; once the chosen likelihood drops, the gradient on log π(y_w) grows by
    (1 + λ)·β·σ(-z) against DPO's β·σ(-z). λ = 0 is DPO exactly.

    No official code: the authors published none (github.com/abacusai/smaug, commit 7e5394e, holds only the
    README, a datasheet and images; its issue #2 "Will you release the code?" is where they confirmed the bracketing fix of
    Eq. 3). Community versions there that add -λ·p outside the sigmoid are not the paper's objective.

    Unverified here (issue 12): the equation number and the revision. The paper's full text was not reachable
    from this workplace and the README states no formula; the formula above is the paper's as this module
    first transcribed it.

    Takes the shared reference-loss modifiers (``ld_alpha``, ``wpo``) like DPO; p is computed on the
    LD-weighted log-probs when ``ld_alpha`` < 1.

    Shapes: every input ``(B,)`` (per-sequence sums over completion tokens); returns losses ``(B,)``.
    Metrics: rewards/* = β·log(π/π_ref) as DPO, logps/*, and ``dpop_penalty`` = p (nats, before λ).
    """
    logps = prepare(logps, hp)
    chosen_lr, rejected_lr = logratios(logps)
    penalty = torch.clamp(-chosen_lr, min=0.0)
    z = hp.beta * (chosen_lr - rejected_lr - hp.dpop_lambda * penalty)
    losses = -F.logsigmoid(z)  # stable at ±50-nat margins where log(sigmoid(z)) underflows
    metrics = {**reward_metrics(logps, hp.beta), "dpop_penalty": penalty.detach()}
    return LossOutput(finish(losses, logps, hp), metrics)
