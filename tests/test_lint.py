"""The tree passes ruff (rules in pyproject.toml), so an unused import or a shadowed name fails CI."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import ROOT


def test_ruff_check_passes():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is a test dependency (pip install -e '.[test]') but is not on PATH")
    out = subprocess.run([ruff, "check", "--no-cache", "prefopt", "hydra_plugins", "tests", "analysis",
                          "experiments", "paper_figures"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
