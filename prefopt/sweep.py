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
lock, published atomically. In a multi-process job only rank 0 writes. A job killed outright (SIGKILL,
node failure) stays ``running`` with its start time; analysis treats a finished sweep's running jobs as
lost.
"""

from __future__ import annotations

import json
import os
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
                                                             "finished": None, "error": None, "return": None}

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
