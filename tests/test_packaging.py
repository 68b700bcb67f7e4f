"""The package as a user installs it: the wheel carries the configs, the LICENSE, the console scripts, the
launcher plug-in and the assets; a user's own config directory joins the search path the Hydra way.

(The full non-editable install into a fresh venv, run from another directory, is in .ci/run.)
"""

from __future__ import annotations

import configparser
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from prefopt.config import CONF_DIR
from tests.conftest import ROOT, TINY

SOURCES = ["pyproject.toml", "setup.py", "LICENSE", "README.md", "prefopt", "hydra_plugins", "conf"]


def test_conf_dir_is_the_checkouts_conf():
    # In a checkout (editable or not) the configs are the top-level conf/; an installed wheel has prefopt/conf.
    assert Path(CONF_DIR).is_absolute() and (Path(CONF_DIR) / "config.yaml").is_file()
    if (ROOT / "conf" / "config.yaml").is_file() and not (ROOT / "prefopt" / "conf").exists():
        assert Path(CONF_DIR) == ROOT / "conf"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """Build the wheel from a copy of the sources (the checkout gets no build/ folder)."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        else:
            shutil.copy2(path, src / name)
    out = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)]
    # The installed setuptools builds in a second when it is recent enough for pyproject's license fields;
    # otherwise pip fetches one into an isolated build environment.
    if int(importlib.metadata.version("setuptools").split(".")[0]) >= 77:
        cmd.insert(4, "--no-build-isolation")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (built,) = out.glob("prefopt-*.whl")
    with zipfile.ZipFile(built) as zf:
        yield zf


def test_wheel_ships_every_config(wheel):
    names = set(wheel.namelist())
    assert "prefopt/conf/config.yaml" in names
    yamls = sorted(p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml"))
    missing = [y for y in yamls if f"prefopt/conf/{y}" not in names]
    assert not missing, f"conf files absent from the wheel: {missing}"
    assert not [n for n in names if n.startswith("conf/")], "conf/ must ship inside prefopt, not top-level"


def test_wheel_ships_code_plugins_and_assets(wheel):
    names = set(wheel.namelist())
    code = sorted(p.relative_to(ROOT).as_posix() for d in ("prefopt", "hydra_plugins") for p in (ROOT / d).rglob("*.py")
                  if "__pycache__" not in p.parts)
    assert not [c for c in code if c not in names], "modules absent from the wheel"
    assert "hydra_plugins/prefopt_launcher/local_parallel.py" in names
    assets = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "prefopt" / "assets").iterdir() if p.is_file())
    assert assets and not [a for a in assets if a not in names]


def test_wheel_license_and_console_scripts(wheel):
    dist_info = next(n.split("/")[0] for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    license_text = wheel.read(f"{dist_info}/licenses/LICENSE").decode()
    assert license_text == (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    metadata = wheel.read(f"{dist_info}/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata and "License-File: LICENSE" in metadata
    entry_points = configparser.ConfigParser()
    entry_points.read_string(wheel.read(f"{dist_info}/entry_points.txt").decode())
    assert dict(entry_points["console_scripts"]) == {"prefopt-train": "prefopt.train:cli",
                                                     "prefopt-evaluate": "prefopt.evaluate:main"}


def _my_confs(root: Path) -> Path:
    mine = root / "my_confs"
    (mine / "model").mkdir(parents=True)
    (mine / "experiment").mkdir()
    (mine / "model" / "my_tiny.yaml").write_text((Path(CONF_DIR) / "model" / "tiny.yaml").read_text())
    (mine / "experiment" / "my_exp.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: my_tiny\n  - override /loss: ipo\n"
        "beta: 0.25\ntags:\n  mine: true\n")
    return mine


def test_user_config_dir_trains(tmp_path):
    """`python -m prefopt.train --config-dir DIR`, run from another directory: DIR's options join conf/'s."""
    mine = _my_confs(tmp_path)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HYDRA_FULL_ERROR": "0",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    tiny = [o for o in TINY if not o.startswith("model=")]
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "prefopt.train", "--config-dir", str(mine), "experiment=my_exp", *tiny,
           f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 2
    assert summary["choices"]["experiment"] == "my_exp" and summary["choices"]["model"] == "my_tiny"
    assert summary["tags"]["mine"] is True and list(summary["losses"]) == ["ipo"]
    assert summary["losses"]["ipo"]["beta"] == 0.25


def test_user_search_path_composes(tmp_path):
    """hydra.searchpath=[file://DIR] (on the command line or in a config) finds the same options."""
    from hydra import compose, initialize_config_dir

    from prefopt.config import register_configs

    mine = _my_confs(tmp_path)
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"hydra.searchpath=[file://{mine}]", "experiment=my_exp"])
    assert cfg.model.name_or_path == "tiny" and list(cfg.loss) == ["ipo"] and cfg.beta == 0.25
