"""prefopt/objective.py: the value a run returns to a sweeper, and the objectives refused before training."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from prefopt.errors import ConfigError
from prefopt.objective import check_objective, lookup, objective_value

SUMMARY = {"eval": {"eval/loss": 0.61, "eval/rewards/margins": 0.2},
           "benchmark": {"name": "sentiment", "delta": 0.30, "kl_estimate": 1.5}}


def cfg(**keys):
    base = {"optimized_metric": None, "optimized_metric_kl_budget": None, "optimized_metric_kl_penalty": 1.0,
            "benchmark": {"name": "sentiment"}}
    return OmegaConf.create({**base, **keys})


def test_default_is_the_heldout_loss():
    assert objective_value(cfg(), SUMMARY) == 0.61
    assert objective_value(cfg(), {"eval": {}}) is None


def test_dotted_paths_reach_metric_names_with_slashes():
    assert lookup(SUMMARY, "eval.eval/rewards/margins") == 0.2
    assert objective_value(cfg(optimized_metric="benchmark.delta"), SUMMARY) == 0.30


def test_kl_budget_is_a_soft_constraint():
    """KL 1.5 over a budget of 1.0 with penalty 0.4: 0.30 - 0.4 * (1.5 - 1.0) = 0.10; under budget: unchanged."""
    over = cfg(optimized_metric="benchmark.delta", optimized_metric_kl_budget=1.0, optimized_metric_kl_penalty=0.4)
    assert objective_value(over, SUMMARY) == pytest.approx(0.10)
    under = cfg(optimized_metric="benchmark.delta", optimized_metric_kl_budget=2.0)
    assert objective_value(under, SUMMARY) == pytest.approx(0.30)


def test_missing_metric_names_the_key_and_what_is_there():
    with pytest.raises(ConfigError, match=r"optimized_metric='benchmark.win'.*'win'.*delta"):
        objective_value(cfg(optimized_metric="benchmark.win"), SUMMARY)


@pytest.mark.parametrize(("keys", "message"), [
    ({"optimized_metric": "foo.bar"}, r"optimized_metric='foo.bar': must start with"),
    ({"optimized_metric": "benchmark.delta", "benchmark": {"name": "none"}}, r"needs a benchmark"),
    ({"optimized_metric_kl_budget": 0.5}, r"optimized_metric_kl_budget=0.5: set optimized_metric"),
    ({"optimized_metric": "benchmark.delta", "optimized_metric_kl_budget": -1.0}, r"must be >= 0"),
    ({"optimized_metric": "eval.eval/loss", "optimized_metric_kl_budget": 1.0, "benchmark": {"name": "none"}},
     r"optimized_metric_kl_budget=1.0 needs a benchmark"),
])
def test_bad_objectives_are_refused_before_training(keys, message):
    with pytest.raises(ConfigError, match=message):
        check_objective(cfg(**keys))
