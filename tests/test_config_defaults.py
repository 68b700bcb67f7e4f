"""One source of defaults (the rule is in prefopt/config.py's docstring), and unknown options stop early.

The typed schema's defaults are the default run: composing ``conf/config.yaml`` with no overrides gives
the schema's value for every key the schema sets, and the default option of each group (and every loss
YAML, against its hyperparameter dataclass) may restate a schema value but never differ from it. Every
option of every group composes, and what an option leaves out is the schema's value.

A misspelled option of any group (``experiment=zephyr_dpoo``) fails at compose time, before anything
loads, naming the group and listing its known options.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import DictConfig, ListConfig, OmegaConf

from prefopt.config import CONF_DIR, PrefoptConfig, register_configs
from tests.conftest import ROOT, TINY

CONF = Path(CONF_DIR)
# dataset.*: each dataset option describes its own data; the schema's values are the fallback for a dataset
# YAML that leaves a key out (prefopt/config.py's docstring says why).
OWN_VALUES = ("dataset.",)
# Groups whose files are not options of the run config (launchers, accelerate/DeepSpeed files).
NOT_RUN_GROUPS = {"hydra", "accelerate"}


def _compose(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _plain(value):
    return OmegaConf.to_container(value) if isinstance(value, DictConfig | ListConfig) else value


def _leaves(node: DictConfig, prefix: str = ""):
    """(dotted key, value) of every leaf; a missing value (???) is yielded as '???', interpolations unresolved."""
    for key in node.keys():
        path = f"{prefix}{key}"
        if OmegaConf.is_missing(node, key):
            yield path, "???"
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and len(child) > 0:
            yield from _leaves(child, path + ".")
        elif OmegaConf.is_interpolation(node, key):
            yield path, child._value()
        else:
            yield path, _plain(child._value() if not isinstance(child, DictConfig | ListConfig) else child)


def _schema_values() -> dict:
    """Every key the schema gives a value: not ???, not a free-form dict (tags, loss, dataset.options)."""
    return {k: v for k, v in _leaves(OmegaConf.structured(PrefoptConfig)) if v != "???" and v != {}}


def _package(path: Path, group: str) -> str:
    """Where a group option's keys land: its `# @package` header, else the group's name."""
    match = re.search(r"^#\s*@package\s+(\S+)", path.read_text(), re.MULTILINE)
    package = match.group(1) if match else group
    return "" if package == "_global_" else package


def _root_defaults() -> list[tuple[str, str]]:
    """(group, option) of conf/config.yaml's defaults list, null entries left out."""
    pairs = []
    for entry in OmegaConf.load(CONF / "config.yaml").defaults:
        if isinstance(entry, DictConfig):
            for key, option in entry.items():
                group = key.removeprefix("optional ").removeprefix("override ").strip()
                if option is not None:
                    pairs.append((group, option))
    return pairs


def _options() -> list[tuple[str, str]]:
    return [(g.name, y.stem) for g in sorted(CONF.iterdir()) if g.is_dir() and g.name not in NOT_RUN_GROUPS
            for y in sorted(g.glob("*.yaml"))]


def _raw_leaves(path: Path, package: str):
    raw = OmegaConf.load(path)
    if "defaults" in raw:
        del raw["defaults"]
    prefix = f"{package}." if package else ""
    for key, value in _leaves(raw):
        yield prefix + key, value


def _loss_defaults(name: str) -> dict:
    from prefopt import losses

    return {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
            for f in dataclasses.fields(losses.get(name).hparams)} | {"weight": 1.0}


def test_default_run_is_the_schema():
    """The composed default run has the schema's value wherever the schema gives one."""
    cfg = _compose([])
    wrong = []
    for key, expected in _schema_values().items():
        if key.startswith(OWN_VALUES):
            continue
        got = _plain(OmegaConf.select(cfg, key))
        if got != expected:
            wrong.append(f"{key}: schema (prefopt/config.py) {expected!r}, default run {got!r}")
    assert not wrong, "the default run and the schema disagree; change the schema:\n" + "\n".join(wrong)


def test_default_options_restate_only_schema_values():
    """conf/config.yaml and the default option of each group never set a value the schema does not have."""
    schema = _schema_values()
    files = [(CONF / "config.yaml", "")] + [(CONF / group / f"{option}.yaml", _package(CONF / group / f"{option}.yaml", group))
                                             for group, option in _root_defaults() if (CONF / group).is_dir()]
    wrong = []
    for path, package in files:
        for key, value in _raw_leaves(path, package):
            if key.startswith(("hydra.", *OWN_VALUES)) or key not in schema:
                continue  # Hydra's own settings, a dataset's own values, a free-form dict's entry
            if value != schema[key]:
                wrong.append(f"{path.relative_to(CONF.parent)}: {key} = {value!r}, schema (prefopt/config.py) "
                             f"{schema[key]!r}")
    assert not wrong, "a default YAML disagrees with the schema:\n" + "\n".join(wrong)


def test_loss_yamls_restate_their_dataclass():
    """Each conf/loss/<name>.yaml restates its @register_loss dataclass (beta comes from the shared ${beta})."""
    wrong = []
    for path in sorted((CONF / "loss").glob("*.yaml")):
        defaults = _loss_defaults(path.stem)
        for key, value in _raw_leaves(path, ""):
            if isinstance(value, str) and value == "${beta}":
                continue
            if key not in defaults:
                wrong.append(f"conf/loss/{path.name}: {key} is not a hyperparameter of {path.stem}")
            elif value != defaults[key]:
                wrong.append(f"conf/loss/{path.name}: {key} = {value!r}, dataclass {defaults[key]!r}")
    assert not wrong, "\n".join(wrong)


def test_every_option_leaves_the_rest_to_the_schema():
    """Every option of every group composes; the keys of its package that it does not set are the schema's."""
    schema = _schema_values()
    # Packages filled by another group (benchmark.judge by judge=) are that group's business.
    nested = {_package(CONF / g / f"{o}.yaml", g) for g, o in _options()} - {""}
    wrong = []
    for group, option in _options():
        path = CONF / group / f"{option}.yaml"
        package = _package(path, group)
        cfg = _compose([f"{group}={option}"])  # composing needs no test-overrides
        if not package or group == "loss":
            continue  # global options (experiments, variants) set what they change anywhere; losses: above
        own = {key for key, _ in _raw_leaves(path, package)}
        for key, expected in schema.items():
            inner = [p for p in nested if p != package and p.startswith(package + ".")]
            if not key.startswith(package + ".") or key in own or key.startswith(tuple(p + "." for p in inner)):
                continue
            got = _plain(OmegaConf.select(cfg, key))
            if got != expected:
                wrong.append(f"{group}={option}: {key} = {got!r} though the option does not set it; schema {expected!r}")
    assert not wrong, "\n".join(wrong)


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HYDRA_FULL_ERROR": "0",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "prefopt.train", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.mark.parametrize("multirun", [False, True], ids=["run", "multirun"])
def test_misspelled_experiment_stops_listing_the_known_ones(tmp_path, multirun):
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    args = (["-m", "experiment=zephyr_dpoo,sentiment_dpo"] if multirun else ["experiment=zephyr_dpoo"])
    # TINY: should it regress, the run it starts is a 2-step one.
    proc = _cli(args + TINY + [f"{key}={tmp_path / 'out'}"], tmp_path)
    assert proc.returncode != 0, f"a misspelled experiment ran (exit 0):\n{proc.stderr[-2000:]}"
    assert "Could not find 'experiment/zephyr_dpoo'" in proc.stderr, proc.stderr[-2000:]
    known = proc.stderr.split("Available options in 'experiment':", 1)[-1]
    assert "zephyr_ddpo" in known and "sentiment_dpo" in known, proc.stderr[-2000:]
    assert not list(tmp_path.rglob("summary.json")) and not list(tmp_path.rglob("metrics.jsonl"))


# The groups whose default is special (null, a global package, a nested package); the others fail the same way.
@pytest.mark.parametrize("group", ["deepspeed", "variant", "judge"])
def test_misspelled_option_of_any_group_stops(tmp_path, group):
    proc = _cli([*TINY, f"{group}=no_such_option", f"hydra.run.dir={tmp_path / 'out'}"], tmp_path)
    assert proc.returncode != 0 and f"Could not find '{group}/no_such_option'" in proc.stderr, proc.stderr[-2000:]
    assert f"Available options in '{group}'" in proc.stderr
    assert not (tmp_path / "out" / "summary.json").exists()
