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
    # Held-out evals: sequences the policy scored without gradient, the non-padding positions its decoder ran
    # for them (a shared prompt once per pair), and their seconds.
    eval_sequences: int = 0
    eval_tokens: float = 0.0
    eval_time: float = 0.0
    # Positions the policy's decoder ran in training: non-padding ones, and all of them (padding included).
    real_tokens: float = 0.0
    processed_tokens: float = 0.0

    def add_step(self, n_examples: int, tokens: float, seconds: float, real_tokens: float = 0.0,
                 processed_tokens: float = 0.0) -> None:
        self.train_time += seconds
        self.pairs_seen += n_examples
        self.tokens_seen += tokens
        self.real_tokens += real_tokens
        self.processed_tokens += processed_tokens

    @property
    def token_efficiency(self) -> float | None:
        """Real tokens / processed tokens: 1.0 when no padding was run (packing), lower the more was."""
        return self.real_tokens / self.processed_tokens if self.processed_tokens else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> RunCounters:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in known})
