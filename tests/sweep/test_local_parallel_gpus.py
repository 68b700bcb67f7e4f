"""``hydra.launcher.gpus_per_job``: the local parallel launcher gives each running job a disjoint slice of the
visible CUDA devices, caps the jobs running at once to the slices there are, and refuses more GPUs per job than
are visible before any job starts.

No GPU is needed: the device count is monkeypatched for the unit tests, and the sweep runs a small Hydra app
whose jobs record the CUDA_VISIBLE_DEVICES they were started with (an outer CUDA_VISIBLE_DEVICES stands for
the machine's devices, as it does on a real node)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from hydra_plugins.prefopt_launcher.local_parallel import LauncherConfigError, device_slices, visible_devices
from tests.conftest import CONF, ROOT


def test_slices_are_disjoint_and_leftovers_idle(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert visible_devices() == [str(i) for i in range(8)]
    assert device_slices(2, visible_devices()) == ["0,1", "2,3", "4,5", "6,7"]
    assert device_slices(3, visible_devices()) == ["0,1,2", "3,4,5"]  # devices 6 and 7 stay idle
    assert device_slices(8, visible_devices()) == ["0,1,2,3,4,5,6,7"]


def test_outer_cuda_visible_devices_is_what_gets_divided(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,GPU-abc,7")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert device_slices(2, visible_devices()) == ["4,5", "GPU-abc,7"]


def test_more_gpus_per_job_than_devices_names_the_key(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    # By name: another test may have imported the launcher module afresh, and with it a second class object.
    with pytest.raises(Exception, match=r"^hydra\.launcher\.gpus_per_job=3: only 2 CUDA device") as raised:
        device_slices(3, visible_devices())
    assert type(raised.value).__name__ == LauncherConfigError.__name__


APP = """
import json, os, time
import hydra
import hydra.core.hydra_config

@hydra.main(version_base="1.3", config_path=".", config_name="app")
def main(cfg):
    start = time.time()
    time.sleep(1.0)  # long enough that the jobs allowed to overlap do overlap
    out = hydra.core.hydra_config.HydraConfig.get().runtime.output_dir
    with open(os.path.join(out, "job.json"), "w") as f:
        json.dump({{"x": cfg.x, "devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start,
                   "end": time.time()}}, f)

if __name__ == "__main__":
    main()
"""

APP_CONFIG = """
defaults:
  - override hydra/launcher: local_parallel
  - _self_
x: 0
hydra:
  searchpath: [file://{conf}]
  sweep:
    dir: {sweep}
    subdir: ${{hydra.job.num}}
"""


def run_app(tmp_path, overrides, devices):
    (tmp_path / "app.py").write_text(textwrap.dedent(APP.format()))
    (tmp_path / "app.yaml").write_text(APP_CONFIG.format(conf=CONF, sweep=tmp_path / "sweep"))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": devices, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, str(tmp_path / "app.py"), "-m", *overrides], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=300)


def test_sweep_jobs_get_disjoint_devices(tmp_path):
    """5 jobs, n_jobs=4, 2 GPUs each out of 5 visible devices: 2 slices ("0,1", "2,3"; device 4 idle), so at
    most 2 jobs run at once and jobs running at the same time never hold the same device."""
    proc = run_app(tmp_path, ["x=1,2,3,4,5", "hydra.launcher.n_jobs=4", "hydra.launcher.gpus_per_job=2"],
                   "0,1,2,3,4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [json.loads((tmp_path / "sweep" / str(i) / "job.json").read_text()) for i in range(5)]
    assert sorted(j["x"] for j in jobs) == [1, 2, 3, 4, 5]
    assert {j["devices"] for j in jobs} <= {"0,1", "2,3"}
    for a in jobs:
        overlapping = [b for b in jobs if b is not a and b["start"] < a["end"] and a["start"] < b["end"]]
        assert len(overlapping) <= 1
        assert all(b["devices"] != a["devices"] for b in overlapping)
    assert "2 jobs run at once, not 4" in proc.stdout + proc.stderr


def test_sweep_refuses_too_many_gpus_per_job_before_any_job(tmp_path):
    proc = run_app(tmp_path, ["x=1,2", "hydra.launcher.gpus_per_job=3"], "0,1")
    assert proc.returncode != 0
    assert "hydra.launcher.gpus_per_job=3: only 2 CUDA device(s) visible (CUDA_VISIBLE_DEVICES=0,1)" in proc.stderr
    assert "Traceback" not in proc.stderr
    # Hydra's sweeper writes multirun.yaml before launching; no job folder exists.
    assert not [p for p in (tmp_path / "sweep").glob("*") if p.is_dir()]
