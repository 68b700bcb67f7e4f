"""`accelerate launch --cpu --num_processes 2 -m prefopt.train ...`, the command users type for a CPU DDP run.

accelerate 1.15 starts ONE process for it (several CPU processes only under mpirun); prefopt notices from
the launcher's command line and starts the 2 processes with torchrun, so the command does what it says.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from prefopt.trainer.distributed import dropped_cpu_processes
from tests.conftest import ROOT, TINY, read_metrics, read_summary
from tests.trainer.test_distributed import MOVING, single, trajectory  # noqa: F401  (single is a fixture)

LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--cpu"]


@pytest.mark.parametrize(("argv", "expected"), [
    (["python", "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "-m", "prefopt.train"], 2),
    (["/venv/bin/python", "/venv/bin/accelerate", "launch", "--cpu", "--num_processes=4", "-m", "x"], 4),
    (["accelerate", "launch", "--cpu", "--num-processes", "3", "train.py"], 3),
    (["accelerate", "launch", "--cpu", "--num_processes", "1", "-m", "prefopt.train"], None),
    (["accelerate", "launch", "--cpu", "-m", "prefopt.train"], None),
    (["accelerate", "launch", "--cpu", "--num_processes", "2", "--mpirun_hostfile", "h", "-m", "x"], None),
    (["python", "-m", "prefopt.train", "--num_processes", "2"], None),  # not launched by accelerate
])
def test_dropped_processes_are_read_from_the_launch_command(argv, expected, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert dropped_cpu_processes(argv) == expected


def test_nothing_is_relaunched_inside_a_real_multi_process_launch(monkeypatch):
    argv = ["accelerate", "launch", "--cpu", "--num_processes", "2", "-m", "prefopt.train"]
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun's children: already one of the N processes
    assert dropped_cpu_processes(argv) is None
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "False")  # a GPU launch
    assert dropped_cpu_processes(argv) is None


@pytest.mark.slow
def test_accelerate_cpu_two_processes_matches_single_process(single, tmp_path):  # noqa: F811
    run_dir = tmp_path / "cpu2"
    cmd = [*LAUNCH, "--num_processes", "2", "-m", "prefopt.train", *TINY, *MOVING, "trainer.batch_size=2",
           f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "starting 2 with torchrun" in proc.stderr
    summary = read_summary(run_dir)
    assert summary["processes"] == 2 and summary["distributed"]["type"] == "MULTI_CPU"
    a, b = trajectory(single), trajectory(run_dir)
    assert [(s, k) for s, k, *_ in a] == [(s, k) for s, k, *_ in b]
    assert [r["step"] for r in read_metrics(run_dir) if r["split"] == "train"] == [1, 2, 3, 4]
    worst = max(abs(va - vb) for (_, _, *xa), (_, _, *xb) in zip(a, b, strict=True)
                for va, vb in zip(xa, xb, strict=True) if va is not None)
    assert worst < 1e-5, (a, b)
    print(f"\naccelerate launch --cpu --num_processes 2 vs 1 process: max |d| over loss/margin/grad_norm {worst:.3g}")
