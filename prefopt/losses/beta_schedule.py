"""A β schedule over optimizer steps (``beta_schedule=linear|cosine``), a modifier of any β-based paired loss.

With t the optimizer step (1-based), T the run's last step and p = (t − 1)/(T − 1) (p = 1 when T = 1):

    linear:  β_t = β_start + (β_end − β_start)·p
    cosine:  β_t = β_start + (β_end − β_start)·(1 − cos(π·p))/2

so step 1 trains at β_start and step T at β_end. β_start defaults to the loss's own β. No paper: a plain
annealing of the KL strength, the schedule shape of the learning-rate schedules (prefopt/trainer/setup.py);
combined with ``adaptive_beta`` the scheduled β is β-DPO's β_0. Evaluation uses the β of the last training step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

KINDS = ("linear", "cosine")


@dataclass(frozen=True)
class BetaSchedule:
    kind: str
    start: float
    end: float
    total_steps: int

    def validate(self, where: str = "beta_schedule") -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{where}.kind={self.kind!r}: must be one of {', '.join(KINDS)}")
        for key in ("start", "end"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{where}.{key}={value}: must be > 0")

    def beta_at(self, step: int) -> float:
        """β at optimizer step ``step`` (1-based; clamped to [1, T])."""
        if self.total_steps <= 1:
            progress = 1.0
        else:
            progress = (min(max(step, 1), self.total_steps) - 1) / (self.total_steps - 1)
        if self.kind == "cosine":
            progress = (1.0 - math.cos(math.pi * progress)) / 2.0
        return self.start + (self.end - self.start) * progress
