"""A real SLURM sweep: `python -m prefopt.train -m hydra/launcher=slurm_cpu ...` submits a 2-job array through
sbatch (hydra-submitit-launcher), one job fails (an injected NaN with trainer.on_nonfinite=stop), the other
completes (=skip); both run dirs and sweep.json record it.

Needs a Slurm cluster with an idle node in partition `debug` (env PREFOPT_SLURM_PARTITION to change it) that
shares this filesystem: `bash scripts/slurm_local.sh` starts one on this machine (CI does). Skipped when
`sbatch` is not on PATH, unless PREFOPT_REQUIRE_SLURM=1, which turns the skip into a failure (CI sets it, so a
broken Slurm setup cannot pass as a skip).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.conftest import TINY, read_summary, run_cli

PARTITION = os.environ.get("PREFOPT_SLURM_PARTITION", "debug")


def _slurm_missing() -> str | None:
    """Why no sweep can be submitted here, or None."""
    if shutil.which("sbatch") is None:
        return "sbatch is not on PATH (start a local cluster with: bash scripts/slurm_local.sh)"
    try:
        out = subprocess.run(["sinfo", "-h", "-p", PARTITION, "-o", "%T"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"sinfo did not answer: {error}"
    states = out.stdout.split()
    if out.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mixed", "allocated") for s in states):
        return (f"no usable node in partition {PARTITION!r} (sinfo: {out.stdout.strip() or out.stderr.strip()!r});"
                " start one with: bash scripts/slurm_local.sh")
    return None


@pytest.fixture
def slurm():
    reason = _slurm_missing()
    if reason is None:
        return
    if os.environ.get("PREFOPT_REQUIRE_SLURM") == "1":
        pytest.fail(f"PREFOPT_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


@pytest.mark.slow
def test_slurm_sweep_records_a_done_and_a_failed_job(slurm, tmp_path):
    # sbatch exports the submitting environment (--export=ALL), so the injected fault reaches both jobs;
    # only the `stop` job fails on it.
    proc = run_cli(TINY + ["hydra/launcher=slurm_cpu", f"hydra.launcher.partition={PARTITION}",
                           "hydra.launcher.timeout_min=5", "trainer.on_nonfinite=stop,skip"],
                   tmp_path, multirun=True, check=False, env={"PREFOPT_INJECT_FAULT": "nan:1"}, timeout=600)
    logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in sorted(tmp_path.glob(".submitit/*/*_log.*")))
    assert (tmp_path / "sweep.json").is_file(), f"{proc.stderr[-3000:]}\n{logs}"
    # Each job was an array task of one sbatch submission, run by slurmd (not in this process).
    submissions = list(tmp_path.glob(".submitit/*/*_submission.sh"))
    assert len(submissions) == 1 and f"#SBATCH --partition={PARTITION}" in submissions[0].read_text()
    assert "#SBATCH --array=0-1" in submissions[0].read_text()
    index = json.loads((tmp_path / "sweep.json").read_text())
    assert index["status"] == "finished", f"{proc.stderr[-3000:]}\n{logs}"
    assert index["counts"] == {"done": 1, "failed": 1, "running": 0}, f"{index}\n{logs}"
    jobs = {job["overrides"][-1]: job for job in index["jobs"].values()}
    failed, done = jobs["trainer.on_nonfinite=stop"], jobs["trainer.on_nonfinite=skip"]
    assert failed["status"] == "failed" and "non-finite loss or gradient" in failed["error"]
    assert done["status"] == "done" and done["error"] is None and isinstance(done["return"], float)
    # Hydra re-raises the failed job's error once every job has ended.
    assert proc.returncode != 0
    for job in (done, failed):
        run_dir = tmp_path / job["dir"]
        assert {"config.yaml", "metrics.jsonl", "summary.json"} <= {p.name for p in run_dir.iterdir()}, job
    assert read_summary(tmp_path / done["dir"])["status"] == "completed"
    assert read_summary(tmp_path / failed["dir"])["status"] == "failed"


@pytest.mark.slow
def test_reconcile_asks_the_real_slurm_about_a_job_that_died(slurm, tmp_path):
    """A sweep job killed outright inside SLURM cannot report its end; reconcile() asks squeue. A job that is
    still running stays `running`; once it has died (scancel'd here: SIGKILL) it becomes `failed`."""
    import time

    from prefopt import sweep

    submitted = subprocess.run(["sbatch", "--parsable", "-p", PARTITION, "-o", str(tmp_path / "job.out"),
                                "--wrap", "sleep 300"], capture_output=True, text=True, check=True, timeout=30)
    job_id = submitted.stdout.strip().split(";")[0]
    sweep.update_index(tmp_path, lambda index: index["jobs"].update(
        {"0": {"num": 0, "overrides": ["beta=0.1"], "dir": "0", "status": "running",
               "where": {"host": "another-node", "pid": 1, "slurm_job_id": job_id}}}))
    try:
        deadline = time.monotonic() + 60
        while sweep._slurm_job_state(job_id) != "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert sweep.reconcile(tmp_path)["jobs"]["0"]["status"] == "running"
    finally:
        subprocess.run(["scancel", "--signal=KILL", "--full", job_id], check=False, timeout=30)
    deadline = time.monotonic() + 60
    while sweep._slurm_job_state(job_id) in sweep._SLURM_LIVE_STATES and time.monotonic() < deadline:
        time.sleep(0.5)
    job = sweep.reconcile(tmp_path)["jobs"]["0"]
    assert job["status"] == "failed"
    assert job["error"].startswith(f"JobKilled: SLURM job {job_id} "), job["error"]
