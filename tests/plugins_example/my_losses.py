"""The README's plug-in example: a DPO variant with a fixed margin, registered from user code.

    python -m prefopt.train loss_modules=[tests.plugins_example.my_losses] loss=margin_dpo model=tiny
"""

from dataclasses import dataclass

import torch.nn.functional as F

from prefopt.losses import LossOutput, PairLogps, register_loss
from prefopt.losses.common import logratios, reward_metrics


@dataclass
class MarginDPO:
    beta: float = 0.1
    margin: float = 1.0  # log-ratio margin the chosen answer must win by


@register_loss("margin_dpo", hparams=MarginDPO, needs_reference=True, data="paired")
def margin_dpo(logps: PairLogps, hp: MarginDPO) -> LossOutput:
    """loss = -log σ(β·(h - margin)), h the DPO log-ratio margin. Inputs (B,); returns (B,)."""
    chosen, rejected = logratios(logps)
    losses = -F.logsigmoid(hp.beta * (chosen - rejected - hp.margin))
    return LossOutput(losses, reward_metrics(logps, hp.beta))
