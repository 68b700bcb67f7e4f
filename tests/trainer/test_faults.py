"""Faults: a NaN stops the run with one clear line and the last good checkpoint kept (or is skipped and
counted); a full disk or an unwritable path is reported with the path and leaves no temp file; one failed
job of a sweep is recorded in sweep.json and loses nothing else.

Subprocess and whole-run cases are marked slow to keep the default suite short; CI runs them in its
`pytest -m slow` step.
"""

from __future__ import annotations

import errno
import json
import os

import pytest

from prefopt.io import JsonlWriter, RunFileError, atomic_write_json
from prefopt.trainer import checkpoint
from prefopt.trainer.faults import NonFiniteError
from tests.conftest import TINY, compose, read_metrics, read_summary, run_cli

RUN = TINY + ["trainer.max_steps=3", "trainer.checkpoint_every=1", "trainer.eval_every=0"]


@pytest.mark.slow
def test_nan_stops_with_one_line_and_keeps_last_good_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(RUN, run_dir, check=False, env={"PREFOPT_INJECT_FAULT": "nan:2"})
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("prefopt: non-finite loss or gradient") and "at step 2" in last, proc.stderr[-2000:]
    assert "step-00000001" in last and "Traceback" not in proc.stderr
    # Step 1's checkpoint is intact, nothing was saved after the NaN, the log stops at step 1.
    assert [p.name for p in checkpoint.checkpoint_dirs(run_dir)] == ["step-00000001"]
    assert [r["step"] for r in read_metrics(run_dir)] == [1]
    summary = read_summary(run_dir)
    assert summary["status"] == "failed" and "non-finite" in summary["error"]
    assert summary["last_checkpoint"].endswith("step-00000001")
    assert not list(run_dir.rglob("*.tmp"))


@pytest.mark.slow
def test_nan_skip_drops_the_update_and_counts_it(tmp_path, monkeypatch):
    from prefopt.train import run

    monkeypatch.setenv("PREFOPT_INJECT_FAULT", "nan:2")
    summary = run(compose(TINY + ["trainer.max_steps=3", "trainer.on_nonfinite=skip"]), tmp_path)
    assert summary["status"] == "completed" and summary["skipped_steps"] == 1 and summary["steps"] == 3
    train = [r for r in read_metrics(tmp_path) if r["split"] == "train"]
    assert [r.get("skipped_steps", 0) for r in train] == [0, 1, 1]
    # The injected NaN reached the gradients: its norm is logged as null (strict JSON), never as a number.
    assert train[1]["grad_norm"] is None and train[0]["grad_norm"] is not None
    assert train[2]["grad_norm"] is not None and summary["eval"]["eval/loss"] == pytest.approx(0.693, abs=0.01)


def test_bad_on_nonfinite_value_names_the_key(tmp_path):
    from prefopt.train import ConfigError, run

    with pytest.raises(ConfigError, match="trainer.on_nonfinite='ignore'"):
        run(compose(TINY + ["trainer.on_nonfinite=ignore"]), tmp_path)


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_is_reported_with_the_path_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    monkeypatch.setattr(os, "fsync", _disk_full)
    with pytest.raises(RunFileError, match=rf"cannot write {target}: No space left on device"):
        atomic_write_json(target, {"a": 1})
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temp


def test_permission_denied_is_reported_with_the_path(tmp_path, monkeypatch):
    import tempfile

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(RunFileError, match=rf"cannot write {tmp_path / 'config.yaml'}: Permission denied"):
        atomic_write_json(tmp_path / "config.yaml", {})


def test_metrics_line_write_failure_names_the_file(tmp_path):
    writer = JsonlWriter(tmp_path / "metrics.jsonl")
    writer._fh.close()
    writer._fh = open("/dev/full", "w")  # every write: ENOSPC  # noqa: SIM115
    with pytest.raises(RunFileError, match=r"metrics.jsonl: No space left on device"):
        writer.write({"step": 1})


@pytest.mark.slow
def test_checkpoint_on_full_disk_keeps_the_previous_one(tmp_path, monkeypatch):
    """A save that fails half-way leaves no partial step directory; the older checkpoint stays latest."""
    from prefopt.train import run

    run(compose(TINY + ["trainer.max_steps=2", "trainer.checkpoint_every=1"]), tmp_path)
    assert [p.name for p in checkpoint.checkpoint_dirs(tmp_path)] == ["step-00000001"]

    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_model", _disk_full)
    with pytest.raises(RunFileError, match=r"cannot write checkpoint .*step-00000001.*No space left"):
        run(compose(TINY + ["trainer.max_steps=2", "trainer.checkpoint_every=1"]), tmp_path / "second")
    assert checkpoint.checkpoint_dirs(tmp_path / "second") == []
    assert not list((tmp_path / "second" / "checkpoints").glob(".step-*"))


@pytest.mark.slow
def test_run_dir_under_a_file_is_one_clear_error(tmp_path):
    from prefopt.errors import PrefoptError
    from prefopt.train import run

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(PrefoptError, match=rf"{blocker}/run.*Not a directory"):
        run(compose(TINY), blocker / "run")


@pytest.mark.slow
def test_sweep_with_one_failed_job_records_it_and_finishes_the_others(tmp_path):
    """Two jobs in parallel (hydra/launcher=local_parallel); the NaN makes the `stop` job fail, the `skip`
    job completes. sweep.json lists both with their status; the failure costs nothing else."""
    proc = run_cli(TINY + ["trainer.max_steps=2", "hydra/launcher=local_parallel",
                           "trainer.on_nonfinite=stop,skip"], tmp_path, multirun=True, check=False,
                   env={"PREFOPT_INJECT_FAULT": "nan:1"})
    index = json.loads((tmp_path / "sweep.json").read_text())
    assert index["status"] == "finished", proc.stderr[-3000:]
    assert index["counts"] == {"done": 1, "failed": 1, "running": 0}
    jobs = {job["overrides"][-1]: job for job in index["jobs"].values()}
    failed, done = jobs["trainer.on_nonfinite=stop"], jobs["trainer.on_nonfinite=skip"]
    assert failed["status"] == "failed" and "non-finite loss or gradient" in failed["error"]
    assert done["status"] == "done" and done["error"] is None and isinstance(done["return"], float)
    assert read_summary(tmp_path / done["dir"])["status"] == "completed"
    assert read_summary(tmp_path / failed["dir"])["status"] == "failed"


def test_sweep_index_merges_concurrent_updates(tmp_path):
    from prefopt.sweep import update_index

    for num in range(3):
        update_index(tmp_path, lambda index, n=num: index["jobs"].update({str(n): {"status": "running"}}))
    update_index(tmp_path, lambda index: index["jobs"]["1"].update(status="failed", error="X: y"))
    index = json.loads((tmp_path / "sweep.json").read_text())
    assert index["counts"] == {"done": 0, "failed": 1, "running": 2}


def test_nonfinite_error_is_a_user_error():
    from prefopt.errors import PrefoptError

    assert issubclass(NonFiniteError, PrefoptError)
    assert issubclass(checkpoint.CheckpointError, PrefoptError)
