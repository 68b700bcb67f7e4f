"""experiments/laboratory_demo.py: every sweep it launches composes to the size its header states, every
choice of each swept key included, and its run selection picks the runs it names."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT, compose

spec = importlib.util.spec_from_file_location("laboratory_demo", ROOT / "experiments" / "laboratory_demo.py")
demo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo)


def expand(overrides: list[str]) -> list[list[str]]:
    """The jobs of a multirun: the cartesian product of every comma-separated value."""
    choices = []
    for item in overrides:
        key, _, value = item.partition("=")
        swept = "," in value and not value.startswith("[")
        choices.append([f"{key}={v}" for v in value.split(",")] if swept else [item])
    return [list(job) for job in itertools.product(*choices)]


@pytest.mark.parametrize("name", sorted(demo.SWEEPS))
def test_every_job_of_every_sweep_composes_at_the_demo_size(name):
    jobs = expand(demo.SWEEPS[name])
    assert len(jobs) % 3 == 0  # three seeds of every condition
    for job in jobs:
        cfg = compose(job)
        assert cfg.model.name_or_path and cfg.benchmark.name == "sentiment"
        assert cfg.benchmark.num_prompts == 64 and cfg.optimizer.lr == 3e-5 and cfg.epochs == 1
        assert cfg.seed in (1, 2, 3)
        if cfg.regime.kind != "offline":
            assert cfg.regime.seed is None and cfg.regime.max_new_tokens == cfg.benchmark.max_new_tokens
        else:
            assert cfg.reference.kind == "precomputed"


def test_the_grid_is_the_one_the_issues_ask_for():
    jobs = expand(demo.SWEEPS["losses_other"]) + expand(demo.SWEEPS["losses_dpo"])
    assert len({tuple(sorted(job)) for job in jobs}) == 36  # 4 losses x 3 betas x 3 seeds
    assert len(expand(demo.SWEEPS["noise_dpo"]) + expand(demo.SWEEPS["noise_robust"])) == 6


def test_select_reads_the_run_configs(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "DEMOS", tmp_path)
    for num, (loss, beta) in enumerate([("dpo", 0.1), ("robust", 0.1), ("robust", 1.0), ("ipo", 0.1)]):
        run = tmp_path / "losses" / str(num)
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump({"loss": {loss: {"beta": beta}}, "beta": beta}))
    assert demo.select("losses") == [tmp_path / "losses"]
    assert demo.select("losses:beta=0.1") == [tmp_path / "losses" / n for n in ("0", "1", "3")]
    assert demo.select("losses:beta=0.1,loss=robust") == [tmp_path / "losses" / "1"]
    assert demo.select("losses:beta=0.5") == []


def test_a_sweep_name_is_never_a_group_name():
    """`run NAME` runs a group's sweeps or one sweep: a shared name would run a group where a sweep was meant
    (two halves launched at once would then write the same folders)."""
    assert not set(demo.SWEEPS) & set(demo.GROUPS)
    assert sorted(s for names in demo.GROUPS.values() for s in names) == sorted(demo.SWEEPS)


@pytest.mark.slow
def test_the_whole_demonstration_runs_on_the_tiny_model(tmp_path):
    """Every sweep, ExPO, the regimes and every report, end to end on model=tiny (--smoke), as the SmolLM2
    demonstration runs them: a renamed key, a study that refuses the mix of runs or a missing file fails here."""
    script = [sys.executable, str(ROOT / "experiments" / "laboratory_demo.py"), "--smoke", "--root", str(tmp_path)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HYDRA_FULL_ERROR": "0"}
    for command in (["run", "losses", "noise", "methods", "expo", "regimes", "drop-models"], ["study"]):
        proc = subprocess.run([*script, *command], cwd=ROOT, capture_output=True, text=True, env=env, timeout=1800)
        assert proc.returncode == 0, proc.stderr[-3000:]
    reports = tmp_path / "reports"
    for report in [*demo.REPORTS, "issue12_expo"]:
        result = json.loads((reports / report / "study.json").read_text())
        assert result["design"]["seeds"] == [1, 2, 3] and result["missing"] == [], report
        assert (reports / report / "report.html").is_file() and (reports / report / "report.md").is_file()
    expo = json.loads((reports / "issue12_expo" / "study.json").read_text())
    assert len(expo["conditions"]) == 1 + len(demo.ALPHAS.split(","))  # α = 0 (the trained model) and each α
    online = json.loads((reports / "issue13_online" / "study.json").read_text())
    assert {c["regime.kind"] for c in online["conditions"]} == {"offline", "online", "iterative"}
    assert all(p["differ"] for p in online["pairs"])
    assert "| iterative DPO | 3 |" in (reports / "issue13_online" / "compute.md").read_text()
    assert "eval/monitor/chosen_logp_drift" in (reports / "issue12_methods" / "drift.md").read_text()
    assert not list(tmp_path.glob("**/model"))  # drop-models
