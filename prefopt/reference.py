"""Reference-model options (``reference=<kind>``).

A reference answers one question for the trainer: the reference log-probs of a batch's completions.

- ``frozen``: a frozen copy of the initial policy (the DPO default).
- ``checkpoint``: a different model (``reference.name_or_path``) as the reference.
- ``none``: reference-free training; an error if any configured loss needs a reference.
"""

from __future__ import annotations

import copy

import torch

from prefopt.logps import SequenceScorer
from prefopt.models import load_model


class ReferenceConfigError(ValueError):
    pass


class Reference:
    """Frozen model scored in eval mode under no_grad."""

    kind = "frozen"

    def __init__(self, model):
        model.eval()
        model.requires_grad_(False)
        self.model = model
        self.scorer = SequenceScorer(model)
        self.seconds = 0.0  # time spent in reference passes, reported in summary.json

    @torch.no_grad()
    def logps(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        import time

        start = time.perf_counter()
        out = self.scorer(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        self.seconds += time.perf_counter() - start
        return out

    def after_step(self, step: int, policy) -> None:
        """Called after every optimizer step; references that move with the policy override this."""


class NoReference:
    kind = "none"
    model = None
    seconds = 0.0

    def logps(self, batch):
        return None

    def after_step(self, step: int, policy) -> None:
        pass


def build_reference(rcfg, mcfg, policy, needs_reference: bool, loss_names: list[str], device):
    kind = rcfg.kind
    if kind == "none":
        if needs_reference:
            raise ReferenceConfigError(
                f"reference=none, but loss {', '.join(loss_names)} needs a reference model; "
                "use reference=frozen or a reference-free loss (e.g. loss=simpo)"
            )
        return NoReference()
    if not needs_reference:
        # Reference-free losses never pay for a second model, whatever the default says.
        return NoReference()
    if kind == "frozen":
        return Reference(copy.deepcopy(policy).to(device))
    if kind == "checkpoint":
        if not rcfg.name_or_path:
            raise ReferenceConfigError("reference=checkpoint needs reference.name_or_path")
        return Reference(load_model(rcfg.name_or_path, mcfg.dtype, mcfg.trust_remote_code).to(device))
    raise ReferenceConfigError(f"reference.kind={kind!r} is not one of frozen, checkpoint, none")
