"""The β modifiers of a loss term: a schedule of β over optimizer steps (beta_schedule.py) and β-DPO's dynamic
β with β-guided filtering (adaptive_beta.py), applied in that order to every term whose loss is
``beta_modifiable`` (a paired loss with a ``beta``). The trainer asks a term for its ``BetaControl`` and calls
it before the loss; it never looks at which loss the term is.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from prefopt.losses.adaptive_beta import AdaptiveBeta, AdaptiveBetaOptions
from prefopt.losses.beta_schedule import BetaSchedule
from prefopt.losses.registry import LossConfigError, LossSpec

STEP_KEY = "beta_step"


class BetaControl:
    """β for one batch of one loss term, the per-pair loss scale of filtering, and the ``beta`` metric."""

    def __init__(self, schedule: BetaSchedule | None, adaptive: AdaptiveBeta | None, state: dict):
        self.schedule = schedule
        self.adaptive = adaptive
        self.holder = state  # the term's checkpointed state: the last training step lives there

    def __call__(self, hp: Any, logps, training: bool, step: int | None = None,
                 weights: Tensor | None = None) -> tuple[Any, Tensor | None, dict[str, Tensor]]:
        if training and step is not None:
            self.holder[STEP_KEY] = step
        beta = hp.beta
        if self.schedule is not None:
            beta = self.schedule.beta_at(self.holder.get(STEP_KEY, 1))
        scale, metrics = None, {}
        if self.adaptive is not None:
            beta, scale, metrics = self.adaptive(beta, logps, training, weights)
        return dataclasses.replace(hp, beta=beta), scale, {"beta": torch.tensor(beta), **metrics}


def beta_control(spec: LossSpec, hp: Any, state: dict, *, adaptive: dict | None, schedule: dict | None,
                 total_steps: int) -> BetaControl | None:
    """The term's ``BetaControl`` for the run's ``adaptive_beta`` and ``beta_schedule`` settings (plain dicts,
    None = off), or None when both are off or the loss takes no β (an SFT term beside DPO)."""
    if (adaptive is None and schedule is None) or not spec.beta_modifiable:
        return None
    sched = adapt = None
    try:
        if schedule is not None:
            values = dict(schedule)
            start = values.get("start")
            sched = BetaSchedule(str(values.get("kind")), float(hp.beta if start is None else start),
                                 float(values["end"]), int(total_steps))
            sched.validate()
        if adaptive is not None:
            options = AdaptiveBetaOptions(**adaptive)
            options.validate()
            adapt = AdaptiveBeta(options, state)
    except (ValueError, TypeError) as err:
        raise LossConfigError(str(err)) from err
    return BetaControl(sched, adapt, state)
