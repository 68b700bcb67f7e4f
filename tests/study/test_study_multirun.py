"""``python -m prefopt.study`` on a real multirun of ``prefopt.train``: model=tiny, dpo and ipo x seeds 1
and 2, two optimizer steps, the sentiment benchmark on 4 prompts of 8 tokens. Nothing is known about the
numbers (a random tiny model); the test checks that the study pairs the real run files and writes its
report, and that a job that failed is listed, not dropped."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY, run_cli


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study") / "multirun"
    overrides = [o for o in TINY if not o.startswith("benchmark=")]
    run_cli(overrides + ["benchmark=sentiment", "benchmark.num_prompts=4", "benchmark.max_new_tokens=8",
                         "benchmark.bootstrap_samples=100", "loss=dpo,ipo", "seed=1,2"], root, multirun=True)
    return root


@pytest.mark.slow
def test_study_of_a_real_multirun(sweep, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    proc = subprocess.run([sys.executable, "-m", "prefopt.study", str(copy), "--bootstrap", "200",
                           "--target-diff", "0.1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "4 completed runs of 4, 2 conditions, 1 comparisons" in proc.stdout
    data = json.loads((copy / "study.json").read_text())
    assert data["design"]["seeds"] == [1, 2] and data["design"]["prompts"] == 4
    assert [c["condition"] for c in data["conditions"]] == ["dpo β=0.1", "ipo β=0.1"]
    (pair,) = data["pairs"]
    assert pair["kind"] == "equal_beta" and pair["seeds"] == 2 and pair["prompts"] == 4
    assert pair["ci_low"] <= pair["difference"] <= pair["ci_high"]
    # Both losses' curves have both seeds at every step.
    train = [r for r in data["curves"] if r["split"] == "train"]
    assert {r["condition"] for r in train} == {"dpo β=0.1", "ipo β=0.1"} and {r["seeds"] for r in train} == {2}
    for name in ("report.md", "report.html", "frontier.png", "curves_train.png"):
        assert (copy / name).stat().st_size > 500, name

    # A job whose summary says it failed: listed with its condition and seed, left out of the numbers.
    failed = sorted(p for p in copy.iterdir() if (p / "summary.json").is_file())[-1]
    summary = json.loads((failed / "summary.json").read_text())
    (failed / "summary.json").write_text(json.dumps({**summary, "status": "failed"}))
    proc = subprocess.run([sys.executable, "-m", "prefopt.study", str(copy), "--bootstrap", "100"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((copy / "study.json").read_text())
    assert [(m["status"], m["condition"], m["seed"]) for m in data["missing"]] == [("failed", "ipo β=0.1", 2)]
    assert "| failed |" in (copy / "report.md").read_text()
