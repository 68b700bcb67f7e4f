"""Non-finite losses and gradients, and deterministic fault injection for the reliability tests.

``trainer.on_nonfinite``: ``stop`` (default) ends the run with a message naming the step and rows and
keeps the last good checkpoint; ``skip`` drops that optimizer update (the gradients are zeroed, the
scheduler and data still advance), counts it in ``skipped_steps`` and goes on.

``PREFOPT_INJECT_FAULT`` (tests only) makes a run fail for real at a chosen optimizer step, so tests
exercise the same code paths as a genuine fault: ``kill:5`` sends SIGKILL to the process after step 5 is
logged (as a pre-empted cluster job would be), ``nan:3`` turns the loss of step 3 into NaN.
"""

from __future__ import annotations

import os
import signal

from prefopt.errors import PrefoptError


class NonFiniteError(PrefoptError, FloatingPointError):
    """Training produced a NaN/inf loss or gradient; the message names the step and the rows."""


def _injected() -> tuple[str, int] | None:
    spec = os.environ.get("PREFOPT_INJECT_FAULT", "")
    if ":" not in spec:
        return None
    kind, _, step = spec.partition(":")
    return kind, int(step)


def poison_loss(loss, step: int):
    """``loss`` unchanged, or NaN at the injected step (``nan:<step>``, 1-based optimizer step)."""
    fault = _injected()
    if fault and fault[0] == "nan" and fault[1] == step:
        return loss * float("nan")
    return loss


def maybe_kill(step: int) -> None:
    fault = _injected()
    if fault and fault[0] == "kill" and fault[1] == step:
        os.kill(os.getpid(), signal.SIGKILL)
