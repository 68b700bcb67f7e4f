"""Preference-optimization losses: a registry of pure functions over per-sequence log-probs.

``prefopt.losses.compute(name, ...)`` runs one from a notebook; ``available()`` lists them.
Importing this package registers every built-in loss (one module per loss); ``common`` holds the shared
rewards/metrics and the modifiers (LD-DPO, f-divergence, WPO). What the trainer hands a loss (the scored
log-probs and the extra inputs a loss declares) is built by ``prefopt.scoring``: this package runs no model
and imports nothing of prefopt but itself and ``prefopt.errors``.
"""

import importlib
import pkgutil

from prefopt.losses.registry import (
    EmptyCompletionError,
    LossConfigError,
    LossOutput,
    LossSpec,
    PairLogps,
    UnknownLossError,
    UnpairedLogps,
    aliases,
    available,
    call,
    compute,
    get,
    names,
    register_loss,
)

# Not losses: the registry, shared pieces, and the β modifiers that any β-based paired loss can take.
_NOT_LOSSES = {"registry", "common", "adaptive_beta", "beta_schedule", "beta_modifiers"}

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _NOT_LOSSES and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")


def load_plugins(modules) -> None:
    """Import user modules named in ``loss_modules=[...]`` so their ``@register_loss`` runs."""
    for module in modules or ():
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise LossConfigError(f"loss_modules: cannot import {module!r}: {err}") from err


__all__ = [
    "EmptyCompletionError", "LossConfigError", "LossOutput", "LossSpec", "PairLogps", "UnknownLossError",
    "UnpairedLogps", "aliases", "available", "call", "compute", "get", "load_plugins", "names", "register_loss",
]
