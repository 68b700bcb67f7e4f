"""Shared test helpers: compose configs like the CLI does, run the CLI, find ../shared/data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prefopt.config import CONF_DIR

ROOT = Path(__file__).resolve().parent.parent
CONF = Path(CONF_DIR)  # the one place that knows where the configs are (checkout or installed copy)
SHARED_DATA = Path(os.environ.get("PREFOPT_SHARED_DATA", ROOT.parent / "shared" / "data"))

# Overrides that make any run take seconds: the tiny model, a few steps, no generation benchmark.
TINY = ["model=tiny", "benchmark=none", "trainer.max_steps=2", "trainer.progress_bar=false",
        "trainer.save_model=false", "epochs=1"]


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it lies beside the checkout in CI)")
    return SHARED_DATA


def compose(overrides: list[str] | None = None, config_name: str = "config"):
    """The config `python -m prefopt.train <overrides>` would run, without running it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import prefopt.train  # noqa: F401  registers the schemas

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []), return_hydra_config=False)


def run_cli(overrides: list[str], run_dir: Path, *, multirun: bool = False, check: bool = True,
            env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python -m prefopt.train` in a subprocess, as a user would."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    cmd = [sys.executable, "-m", "prefopt.train"] + (["-m"] if multirun else []) + overrides + [f"{key}={run_dir}"]
    full_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HYDRA_FULL_ERROR": "0", **(env or {})}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())
