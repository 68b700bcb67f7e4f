"""experiments/laboratory_demo.py: every sweep it launches composes to the size its header states, every
choice of each swept key included, and its run selection picks the runs it names."""

from __future__ import annotations

import importlib.util
import itertools

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
