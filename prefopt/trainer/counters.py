"""The running totals of a run: what summary.json reports at the end and a checkpoint carries across a
resume, so a resumed run reports the same totals as an uninterrupted one."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunCounters:
    last_train: dict[str, Any] = field(default_factory=dict)  # the last train record logged
    eval_metrics: dict[str, float] = field(default_factory=dict)  # the last periodic eval
    train_time: float = 0.0  # seconds inside optimizer steps
    pairs_seen: int = 0
    tokens_seen: float = 0.0
    skipped_steps: int = 0  # non-finite updates dropped under trainer.on_nonfinite=skip

    def add_step(self, n_examples: int, tokens: float, seconds: float) -> None:
        self.train_time += seconds
        self.pairs_seen += n_examples
        self.tokens_seen += tokens

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> RunCounters:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in known})
