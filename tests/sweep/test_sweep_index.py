"""sweep.json after a job is killed outright: the job cannot report its end, so reconcile() finds it gone."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys

import pytest

from prefopt import sweep
from tests.conftest import TINY, read_summary, run_cli


def _index_with(tmp_path, **jobs):
    sweep.update_index(tmp_path, lambda index: index["jobs"].update(
        {num: {"num": int(num), "overrides": [f"beta={num}"], "dir": num, "status": "running", "where": where}
         for num, where in jobs.items()}))


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_reconcile_fails_jobs_whose_process_is_gone_and_keeps_live_ones(tmp_path):
    here, me = socket.gethostname(), os.getpid()
    dead = _dead_pid()
    _index_with(tmp_path,
                **{"0": {"host": here, "pid": dead, "pid_start": "1"},
                   # The pid exists, but started at another time: reused by an unrelated process.
                   "1": {"host": here, "pid": me, "pid_start": "not-its-start-time"},
                   "2": {"host": here, "pid": me, "pid_start": sweep._process_start_time(me)},
                   # Another machine's process cannot be checked from here: left as it is.
                   "3": {"host": here + "-elsewhere", "pid": dead, "pid_start": "1"}})
    index = sweep.reconcile(tmp_path)
    jobs = index["jobs"]
    assert jobs["0"]["status"] == "failed"
    assert jobs["0"]["error"] == (f"JobKilled: process {dead} on {here} ended without reporting "
                                  "(SIGKILL, out of memory, or the machine went down)")
    assert jobs["1"]["status"] == "failed" and jobs["1"]["error"].startswith(f"JobKilled: process {me}")
    assert jobs["2"]["status"] == "running" and jobs["3"]["status"] == "running"
    assert index["counts"] == {"done": 0, "failed": 2, "running": 2}
    assert json.loads((tmp_path / "sweep.json").read_text())["counts"] == index["counts"]


def _fake_squeue(bin_dir, states: dict[str, str]):
    """squeue as SLURM 22.05 answers `squeue -h -j ID -o %T`: the state, or exit 1 for an id it forgot."""
    bin_dir.mkdir()
    script = bin_dir / "squeue"
    cases = "".join(f"  {job}) echo {state} ;;\n" for job, state in states.items())
    script.write_text(f"#!/bin/sh\ncase \"$3\" in\n{cases}"
                      "  *) echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1 ;; esac\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_reconcile_asks_slurm_about_jobs_on_other_nodes(tmp_path, monkeypatch):
    _fake_squeue(tmp_path / "bin", {"77_0": "RUNNING", "77_2": "OUT_OF_MEMORY"})
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    sweep_dir = tmp_path / "sweep"
    _index_with(sweep_dir, **{"0": {"host": "node-a", "pid": 1234, "slurm_job_id": "77_0"},
                              "1": {"host": "node-b", "pid": 1234, "slurm_job_id": "77_1"},
                              "2": {"host": "node-c", "pid": 1234, "slurm_job_id": "77_2"}})
    jobs = sweep.reconcile(sweep_dir)["jobs"]
    assert jobs["0"]["status"] == "running"
    assert jobs["1"]["status"] == "failed"
    assert jobs["1"]["error"] == "JobKilled: SLURM job 77_1 left the queue without the job reporting its end"
    assert jobs["2"]["error"] == "JobKilled: SLURM job 77_2 ended OUT_OF_MEMORY without the job reporting its end"


def test_job_records_where_it_runs(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "81")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "80")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    where = sweep._where()
    assert where["host"] == socket.gethostname() and where["pid"] == os.getpid()
    assert where["slurm_job_id"] == "80_1" and where["pid_start"] == sweep._process_start_time(os.getpid())


def test_sweep_cli_prints_the_table_and_names_a_missing_index(tmp_path, capsys):
    _index_with(tmp_path, **{"0": {"host": socket.gethostname(), "pid": _dead_pid(), "pid_start": "1"}})
    assert sweep.main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "0 done, 1 failed, 0 running" in out and "beta=0" in out and "JobKilled: process" in out
    assert sweep.main([str(tmp_path / "nothing")]) == 2
    assert f"{tmp_path / 'nothing' / 'sweep.json'}: no sweep index here" in capsys.readouterr().err


@pytest.mark.slow
def test_parallel_sweep_with_a_sigkilled_job_records_it_and_keeps_the_others(tmp_path):
    """Three jobs, one at a time, each in its own process; the middle one reaches step 3 and is SIGKILLed there
    (the others stop at steps 2 and 1). The killed job is `failed` with the signal, and the job after it
    still runs (with joblib's shared loky pool the dead worker ended the whole sweep)."""
    tiny = [o for o in TINY if not o.startswith("trainer.max_steps=")]
    proc = run_cli(tiny + ["hydra/launcher=local_parallel", "hydra.launcher.n_jobs=1", "trainer.max_steps=2,5,1"],
                   tmp_path, multirun=True, check=False, env={"PREFOPT_INJECT_FAULT": "kill:3"})
    index = json.loads((tmp_path / "sweep.json").read_text())
    jobs = {job["overrides"][-1]: job for job in index["jobs"].values()}
    killed, before, after = jobs["trainer.max_steps=5"], jobs["trainer.max_steps=2"], jobs["trainer.max_steps=1"]
    assert killed["status"] == "failed", proc.stderr[-3000:]
    assert killed["error"].startswith("JobKilled: process") and "ended by SIGKILL" in killed["error"]
    for job in (before, after):
        assert job["status"] == "done" and read_summary(tmp_path / job["dir"])["status"] == "completed"
    assert index["status"] == "finished" and index["counts"] == {"done": 2, "failed": 1, "running": 0}
    assert proc.returncode != 0 and "JobKilled" in proc.stderr
