"""scripts/gpu_check.sh --cpu: the prepared GPU check's whole flow on model=tiny, so that the script cannot rot
before a GPU machine runs it (first loss log 2 in bf16 autocast, dense vs packed attention parity, the
side-by-side benchmark against TRL on real-length UltraFeedback rows)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, SHARED_DATA


@pytest.mark.slow
def test_gpu_check_cpu_flow(tmp_path):
    """As on the GPU machine: scripts/gpu_wheels.sh fills a wheel folder (from the package index, the one network
    this suite may use), and gpu_check.sh installs and runs with it."""
    if not (SHARED_DATA / "ultrafeedback").is_dir():
        pytest.skip(f"{SHARED_DATA}/ultrafeedback is absent (the real-length rows come from it)")
    wheels = tmp_path / "whl"
    env = {**os.environ, "PREFOPT_SHARED_DATA": str(SHARED_DATA), "OUT": str(tmp_path / "out"),
           "PREFOPT_GPU_WHEELS": str(wheels), "PREFOPT_GPU_PYTHON": f"{sys.version_info[0]}.{sys.version_info[1]}"}
    made = subprocess.run(["bash", "scripts/gpu_wheels.sh"], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=600)
    assert made.returncode == 0, made.stderr[-3000:]
    assert (wheels / "tokenizer" / "tokenizer.json").is_file() and len(list(wheels.glob("trl-1.16.0-*.whl"))) == 1
    env.pop("PREFOPT_SHARED_DATA")  # the rows come from the wheel folder, as they would on the GPU machine
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--cpu"], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["cpu_mode"] and report["log2"]["ok"] and report["log2"]["abs_error"] < 1e-6
    parity = report["parity"]
    assert parity["ok"] and parity["attention"] == "sdpa_segments"
    assert parity["token_efficiency"][1] == 1.0 > parity["token_efficiency"][0]  # packed rows carry no padding
    bench = report["bench"]
    assert bench["returncode"] == 0
    assert any(line.startswith("prefopt_packed_frozen vs trl: pairs/s x") for line in bench["ratios"])
    assert "real-length rows: 4 UltraFeedback pairs of 500-1016 tokens" in (tmp_path / "out" / "bench.txt").read_text()
