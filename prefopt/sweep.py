"""``sweep.json``: an index of a Hydra multirun's jobs and how each ended.

Registered in ``conf/config.yaml`` as a Hydra callback, so every ``python -m prefopt.train -m ...`` sweep,
whatever the launcher (basic, ``hydra/launcher=local_parallel``, ``hydra/launcher=slurm``), leaves at its
root::

    {"sweep_dir": ..., "status": "running" | "finished", "started": ..., "finished": ...,
     "counts": {"done": 5, "failed": 1, "running": 0},
     "jobs": {"3": {"num": 3, "overrides": ["beta=0.5", "loss=ipo"], "dir": "3_beta=0.5,loss=ipo",
                    "status": "failed", "error": "NonFiniteError: non-finite loss ...", "return": null,
                    "started": ..., "finished": ...}, ...}}

Jobs may run in parallel processes or on other nodes, so each update is a read-modify-write under a file
lock, published atomically. In a multi-process job only rank 0 writes.

A job killed outright (SIGKILL, the OOM killer, a node failure) cannot report its own end. Each job therefore
records where it runs (host, pid and the pid's start time, SLURM job id); :func:`reconcile` marks a
``running`` job whose process is gone (same host: the pid no longer exists or now belongs to another
process; SLURM: the job ended or left the queue) as ``failed`` with ``error: "JobKilled: ..."``. It runs when the
sweep ends, and on demand::

    python -m prefopt.sweep multirun/2026-11-24/10-00-00     # reconcile and print the job table
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from filelock import FileLock
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from prefopt.io import atomic_write_json

INDEX = "sweep.json"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _is_rank0() -> bool:
    return os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0"


def _error_line(error: BaseException) -> str:
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0] if message else ''}".rstrip(": ")


def update_index(sweep_dir: Path, change) -> dict[str, Any]:
    """Apply ``change(index)`` to sweep.json under a lock and write it back atomically."""
    path = Path(sweep_dir) / INDEX
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        index = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"jobs": {}}
        change(index)
        statuses = [job.get("status") for job in index["jobs"].values()]
        index["counts"] = {s: statuses.count(s) for s in ("done", "failed", "running")}
        atomic_write_json(path, index)
    return index


class SweepIndex(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not _is_rank0():
            return
        sweep_dir = Path(config.hydra.sweep.dir)

        def start(index):
            index.update({"sweep_dir": str(sweep_dir.resolve()), "status": "running", "started": _now(),
                          "finished": None, "overrides": list(config.hydra.overrides.task),
                          "total_jobs": _count_jobs(config)})
            index.setdefault("jobs", {})

        update_index(sweep_dir, start)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not _is_rank0() or not _in_multirun(config):
            return
        job = _job_info(config)

        def start(index):
            index.setdefault("jobs", {})[str(job["num"])] = {**job, "status": "running", "started": _now(),
                                                             "finished": None, "error": None, "return": None,
                                                             "where": _where()}

        update_index(Path(config.hydra.sweep.dir), start)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        if not _is_rank0() or not _in_multirun(config):
            return
        job = _job_info(config)
        failed = job_return.status != JobStatus.COMPLETED
        value = job_return._return_value
        entry = {"status": "failed" if failed else "done", "finished": _now(),
                 "error": _error_line(value) if failed and isinstance(value, BaseException) else None,
                 "return": None if failed or not isinstance(value, int | float) else value}

        def end(index):
            jobs = index.setdefault("jobs", {})
            jobs[str(job["num"])] = {**job, **jobs.get(str(job["num"]), {}), **entry}
            # Hydra re-raises a failed job's error after the last job and skips on_multirun_end, so the
            # sweep is marked finished here once every job has ended.
            ended = sum(j.get("status") in ("done", "failed") for j in jobs.values())
            if index.get("total_jobs") and ended >= index["total_jobs"]:
                index.update({"status": "finished", "finished": _now()})

        update_index(Path(config.hydra.sweep.dir), end)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not _is_rank0():
            return

        def end(index):
            index.update({"status": "finished", "finished": _now()})

        update_index(Path(config.hydra.sweep.dir), end)
        reconcile(Path(config.hydra.sweep.dir))


def _count_jobs(config: DictConfig) -> int | None:
    """How many jobs the command-line sweep expands to (None if it cannot be told, e.g. Optuna)."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
        return sum(len(batch) for batch in BasicSweeper.split_arguments(parsed, None))
    except Exception:  # noqa: BLE001 - an unknown sweeper syntax only costs the early "finished"
        return None


def _in_multirun(config: DictConfig) -> bool:
    from hydra.types import RunMode

    return config.hydra.mode == RunMode.MULTIRUN


def _job_info(config: DictConfig) -> dict[str, Any]:
    out_dir = Path(config.hydra.runtime.output_dir)
    sweep_dir = Path(config.hydra.sweep.dir)
    try:
        rel = str(out_dir.resolve().relative_to(sweep_dir.resolve()))
    except ValueError:
        rel = str(out_dir)
    return {"num": int(config.hydra.job.num), "overrides": list(config.hydra.overrides.task), "dir": rel}


def _process_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (field 22 of /proc/<pid>/stat), None if there is no such process.

    Compared with the value recorded at job start so that a pid reused by another process is not taken for
    the job. On systems without /proc, only the pid's existence is checked."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        # A killed child its parent has not reaped yet is a zombie: gone for our purposes.
        return None if fields[0] == "Z" else fields[19]
    except FileNotFoundError:
        return None
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "unknown"


def _where() -> dict[str, Any]:
    pid = os.getpid()
    where = {"host": socket.gethostname(), "pid": pid, "pid_start": _process_start_time(pid)}
    if os.environ.get("SLURM_JOB_ID"):
        array = os.environ.get("SLURM_ARRAY_JOB_ID")
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        where["slurm_job_id"] = f"{array}_{task}" if array and task else os.environ["SLURM_JOB_ID"]
    return where


# squeue -j reports a job in any state while the controller remembers it (MinJobAge, 300 s by default), then
# "Invalid job id"; these are the states in which it may still report its own end.
_SLURM_LIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "REQUEUED",
                      "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"}


def _slurm_job_state(job_id: str) -> str | None:
    """The job's SLURM state, "GONE" once the controller has forgotten it, None when squeue cannot tell."""
    squeue = shutil.which("squeue")
    if squeue is None:
        return None
    try:
        out = subprocess.run([squeue, "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return "GONE" if "invalid job id" in out.stderr.lower() else None
    states = out.stdout.split()
    return states[0] if states else "GONE"


def _lost_reason(job: dict[str, Any]) -> str | None:
    """Why a ``running`` job can no longer be running, or None if it may still be (or cannot be told)."""
    where = job.get("where") or {}
    slurm_id = where.get("slurm_job_id")
    if slurm_id:
        state = _slurm_job_state(slurm_id)
        if state == "GONE":
            return f"JobKilled: SLURM job {slurm_id} left the queue without the job reporting its end"
        if state is not None and state not in _SLURM_LIVE_STATES:
            return f"JobKilled: SLURM job {slurm_id} ended {state} without the job reporting its end"
        if state is not None or where.get("host") != socket.gethostname():
            return None
    if where.get("host") != socket.gethostname() or not where.get("pid"):
        return None
    start = _process_start_time(int(where["pid"]))
    if start is None or (where.get("pid_start") not in (None, "unknown") and start != where["pid_start"]):
        return (f"JobKilled: process {where['pid']} on {where['host']} ended without reporting "
                "(SIGKILL, out of memory, or the machine went down)")
    return None


def reconcile(sweep_dir: Path) -> dict[str, Any]:
    """Mark ``running`` jobs whose process is gone as failed (see the module docstring); returns the index."""
    path = Path(sweep_dir) / INDEX
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no sweep index here (is {sweep_dir} a multirun directory?)")

    def mark(index):
        for job in index.get("jobs", {}).values():
            if job.get("status") == "running" and (reason := _lost_reason(job)):
                job.update({"status": "failed", "error": reason, "finished": _now()})

    return update_index(Path(sweep_dir), mark)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prefopt.sweep",
                                     description="Reconcile a sweep's sweep.json with its jobs' processes and "
                                                 "print one line per job.")
    parser.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        index = reconcile(args.sweep_dir)
    except (FileNotFoundError, json.JSONDecodeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{n} {s}" for s, n in index["counts"].items())
    print(f"{index.get('sweep_dir', args.sweep_dir)}: {index.get('status', '?')} ({counts})")
    for num in sorted(index.get("jobs", {}), key=int):
        job = index["jobs"][num]
        line = f"  {num:>4}  {job.get('status', '?'):<8} {' '.join(job.get('overrides', []))}"
        if job.get("error"):
            line += f"\n        {job['error']}"
        print(line)
    return 1 if index["counts"].get("failed") else 0


if __name__ == "__main__":
    raise SystemExit(main())
