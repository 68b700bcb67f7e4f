"""Every YAML in conf/ composes, and runs for a couple of steps on the tiny model, so no config rots.

A YAML that needs extra values to run here (a local data path instead of a hub id, a reference path)
says so in a header line ``# test-overrides: key=value ...``; ``{shared}`` stands for ../shared/data.
Options of one group run as one Hydra multirun (one process), which keeps this test cheap.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import CONF, SHARED_DATA, TINY, compose, read_summary, run_cli

GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and not p.name.startswith(("hydra", "_")))
# Groups whose YAMLs are not run configs of the trainer (launcher/DeepSpeed/accelerate files).
NOT_TRAINER_GROUPS = {"deepspeed", "accelerate"}


def yaml_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_overrides(path: Path) -> list[str]:
    overrides = []
    for line in path.read_text().splitlines():
        match = re.match(r"#\s*test-overrides:\s*(.*)", line)
        if match:
            overrides += match.group(1).split()
    return [o.replace("{shared}", str(SHARED_DATA)) for o in overrides]


test_overrides.__test__ = False  # a helper, not a test


def all_yamls() -> list[tuple[str, str]]:
    return [(g, o) for g in GROUPS if g not in NOT_TRAINER_GROUPS for o in yaml_options(g)]


@pytest.mark.parametrize(("group", "option"), all_yamls())
def test_every_yaml_composes(group, option):
    overrides = [f"{group}={option}"] + test_overrides(CONF / group / f"{option}.yaml")
    cfg = compose(overrides)
    assert cfg.loss, "a config without a loss"


def test_root_config_defaults():
    cfg = compose([])
    assert cfg.beta == 0.1 and cfg.epochs == 3 and cfg.model.name_or_path == "smollm2-135m"
    assert list(cfg.loss) == ["dpo"] and cfg.benchmark.name == "sentiment"
    assert compose(["loss=dpo", "beta=0.1", "epochs=3"]).loss.dpo.beta == 0.1


# dataset: each option reads its own local file (dataset.path), so the options cannot share one multirun's
# overrides; tests/data/test_data_configs.py runs every dataset YAML with its own test-overrides instead.
def option_batches(group: str) -> list[tuple[list[str], list[str]]]:
    """Options of a group batched by identical test-overrides, so each batch runs as one multirun."""
    batches: dict[tuple[str, ...], list[str]] = {}
    for option in yaml_options(group):
        batches.setdefault(tuple(test_overrides(CONF / group / f"{option}.yaml")), []).append(option)
    return [(options, list(extra)) for extra, options in batches.items()]


TRAIN_CASES = [(g, options, extra) for g in GROUPS if g not in NOT_TRAINER_GROUPS and g not in ("loss", "dataset")
               for options, extra in option_batches(g)]


# Slow (about 9 of the fast suite's 20 minutes on 2 cores; CI runs the slow suite): the fast suite still composes
# every YAML (test_every_yaml_composes) and trains the default path, and each group's code has its own fast tests.
@pytest.mark.slow
@pytest.mark.parametrize(("group", "options", "extra"), TRAIN_CASES,
                         ids=[f"{g}:{','.join(o)}" for g, o, _ in TRAIN_CASES])
def test_every_yaml_trains_on_tiny(group, options, extra, tmp_path):
    """Every option of every group trains a couple of steps on the tiny model (losses: tests/losses/test_loss_cli.py,
    datasets: tests/data/test_data_configs.py)."""
    if any(str(SHARED_DATA) in o for o in extra) and not SHARED_DATA.is_dir():
        pytest.skip(f"{group}: {options} need {SHARED_DATA}, which is absent")
    # Later overrides win, so TINY comes after the options' own needs (an experiment may pick a model),
    # except TINY's own choice for the group under test.
    tiny = [o for o in TINY if not o.startswith(f"{group}=")]
    overrides = [f"{group}={','.join(options)}"] + extra + tiny
    run_cli(overrides, tmp_path, multirun=True, timeout=900)
    summaries = [read_summary(p.parent) for p in tmp_path.glob("*/summary.json")]
    assert len(summaries) == len(options), f"{group}: {len(summaries)} of {len(options)} jobs finished"
    assert all(s["status"] == "completed" for s in summaries)
