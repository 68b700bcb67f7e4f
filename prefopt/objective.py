"""The one number a run returns to a Hydra sweeper (Optuna's, ``hparams_search=...``).

    python -m prefopt.train hparams_search=optuna_dpo                       # TPE over β and lr, benchmark delta
    python -m prefopt.train hparams_search=optuna_dpo optimized_metric_kl_budget=0.5

``optimized_metric`` is a dotted path into the run's summary.json: ``benchmark.delta`` (gold-reward gain over
the reference), ``benchmark.policy_mean``, ``eval.eval/rewards/accuracies``, ``train.loss`` ... The search's
direction (maximize/minimize) is the sweeper's (``hydra.sweeper.direction``), so the path is all a run needs.

Reward at a KL budget: a search that maximizes gold reward alone drifts to the largest KL it can find (the
reward–KL trade-off is what β controls). With ``optimized_metric_kl_budget=B`` a run whose benchmark KL
estimate exceeds B returns ``metric − optimized_metric_kl_penalty · (KL − B)``: a soft constraint rather than a
failed trial, so TPE still learns where the boundary lies (Optuna 2.x, which hydra-optuna-sweeper pins, has
hard constraints only for NSGA-II). Under budget the metric is returned unchanged.
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig

from prefopt.errors import ConfigError

KL_KEY = ("benchmark", "kl_estimate")


def check_objective(cfg: DictConfig) -> None:
    """Refuse, before any model loads, an objective the run can never produce (named by its key)."""
    path = cfg.get("optimized_metric")
    budget = cfg.get("optimized_metric_kl_budget")
    if path is None:
        if budget is not None:
            raise ConfigError(f"optimized_metric_kl_budget={budget}: set optimized_metric too "
                              "(e.g. optimized_metric=benchmark.delta)")
        return
    section = str(path).split(".", 1)[0]
    if section not in ("benchmark", "eval", "train"):
        raise ConfigError(f"optimized_metric={path!r}: must start with benchmark., eval. or train. "
                          "(a path into summary.json, e.g. benchmark.delta)")
    benchmark = cfg.benchmark.get("name") if cfg.get("benchmark") is not None else None
    if section == "benchmark" and benchmark in (None, "none"):
        raise ConfigError(f"optimized_metric={path!r} needs a benchmark, but benchmark=none")
    if budget is not None:
        if benchmark in (None, "none"):
            raise ConfigError(f"optimized_metric_kl_budget={budget} needs a benchmark's KL estimate, but benchmark=none")
        if not budget >= 0:
            raise ConfigError(f"optimized_metric_kl_budget={budget}: must be >= 0")
    if cfg.get("optimized_metric_kl_penalty", 0) < 0:
        raise ConfigError(f"optimized_metric_kl_penalty={cfg.optimized_metric_kl_penalty}: must be >= 0")


def lookup(summary: dict, path: str) -> Any:
    """``benchmark.delta`` -> summary["benchmark"]["delta"]; metric names may hold '/' but not '.'."""
    node: Any = summary
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"optimized_metric={path!r}: summary.json has no {part!r} there "
                              f"(found: {', '.join(sorted(node)) if isinstance(node, dict) else type(node).__name__})")
        node = node[part]
    return node


def objective_value(cfg: DictConfig, summary: dict) -> float | None:
    """The value the Hydra main returns; None when the run names no objective and has no eval loss."""
    path = cfg.get("optimized_metric")
    if path is None:
        # Without an objective, the held-out loss (lower is better), as before hparams_search existed.
        return summary.get("eval", {}).get("eval/loss")
    value = float(lookup(summary, path))
    budget = cfg.get("optimized_metric_kl_budget")
    if budget is not None:
        kl = float(lookup(summary, ".".join(KL_KEY)))
        if math.isfinite(kl) and kl > budget:
            value -= float(cfg.optimized_metric_kl_penalty) * (kl - budget)
    return value
