"""hparams_search=optuna_dpo: a real (tiny) Optuna search through the CLI; the sweeper receives each trial's
optimized_metric and reports the best one."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import TINY, run_cli

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="hydra-optuna-sweeper (the `search` extra)")


@pytest.mark.slow
def test_tiny_search_returns_the_configured_metric_and_finds_the_best(tmp_path):
    run_cli(["hparams_search=optuna_dpo", "optimized_metric=eval.eval/rewards/margins", "hydra.sweeper.n_trials=3",
             *TINY, "trainer.eval_every=1"], tmp_path, multirun=True)
    trials = sorted(tmp_path.glob("trial*/summary.json"))
    assert len(trials) == 3
    values = {}
    for path in trials:
        summary = json.loads(path.read_text())
        config = yaml.safe_load((path.parent / "config.yaml").read_text())
        assert config["optimized_metric"] == "eval.eval/rewards/margins"
        values[(config["beta"], config["optimizer"]["lr"])] = summary["eval"]["eval/rewards/margins"]
    # Three different points of the search space were tried, with different outcomes.
    assert len(values) == 3 and len(set(values.values())) == 3
    # The sweep index records what each job returned to the sweeper: its optimized metric.
    jobs = json.loads((tmp_path / "sweep.json").read_text())["jobs"]
    returned = sorted(job["return"] for job in jobs.values())
    assert returned == pytest.approx(sorted(values.values()))
    result = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    best = max(values, key=values.get)
    assert (result["best_params"]["beta"], result["best_params"]["optimizer.lr"]) == pytest.approx(best)
    assert result["best_value"] == pytest.approx(max(values.values()))
