"""logger=tensorboard / mlflow / accelerate: what a tiny CLI run's tracker wrote, read back with the tracker's own
reader, equals metrics.jsonl (which stays written); a multirun's jobs are grouped by sweep; a tracker that is
unknown or not installed stops before any model loads, naming the key."""

from __future__ import annotations

import pytest

from prefopt.errors import ConfigError
from prefopt.sinks import check_logger, flat_params, group_name, metric_payload
from tests.conftest import TINY, compose, read_metrics, run_cli

STEPS = ["trainer.max_steps=3"]
TINY3 = [o for o in TINY if not o.startswith("trainer.max_steps")] + STEPS


def jsonl_series(run_dir, split="train"):
    return [r for r in read_metrics(run_dir) if r["split"] == split]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """One multirun, two seeds for each of tensorboard and mlflow: four 3-step tiny jobs."""
    root = tmp_path_factory.mktemp("sweep")
    run_cli(["logger=tensorboard,mlflow", "seed=1,2", *TINY3], root, multirun=True)
    jobs = {p.name: p for p in root.iterdir() if (p / "summary.json").is_file()}
    assert len(jobs) == 4, sorted(p.name for p in root.iterdir())
    return root, jobs


def test_tensorboard_events_equal_metrics_jsonl_one_subdir_per_job(sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, jobs = sweep
    tb_jobs = {name: path for name, path in jobs.items() if "logger=tensorboard" in name}
    assert len(tb_jobs) == 2
    # The common sweep log dir holds one subdirectory per job, named as the job's run directory.
    assert {p.name for p in (root / "tensorboard").iterdir()} == set(tb_jobs)
    for name, run_dir in tb_jobs.items():
        events = EventAccumulator(str(root / "tensorboard" / name)).Reload()
        train = jsonl_series(run_dir)
        loss = events.Scalars("train/loss")
        assert [e.step for e in loss] == [r["step"] for r in train] == [1, 2, 3]
        for event, record in zip(loss, train, strict=True):
            assert event.value == pytest.approx(record["loss"], rel=1e-6)  # float32 in the event file
        lr = [e.value for e in events.Scalars("train/lr")]
        assert lr == pytest.approx([r["lr"] for r in train], rel=1e-6)
        (heldout,) = jsonl_series(run_dir, "eval")
        (event,) = events.Scalars("eval/loss")
        assert (event.step, event.value) == (heldout["step"], pytest.approx(heldout["eval/loss"], rel=1e-6))
        assert (run_dir / "metrics.jsonl").is_file() and not (run_dir / "tensorboard").exists()


def test_mlflow_file_store_equals_metrics_jsonl_one_experiment_per_sweep(sweep, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks readers of a file store too

    root, jobs = sweep
    ml_jobs = {name: path for name, path in jobs.items() if "logger=mlflow" in name}
    client = MlflowClient((root / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name(str(root))  # the group: the sweep directory as given to Hydra
    assert experiment is not None
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == set(ml_jobs)
    for name, run_dir in ml_jobs.items():
        run = runs[name]
        assert run.info.status == "FINISHED"
        assert (run_dir / "mlflow_run_id.txt").read_text().strip() == run.info.run_id
        train = jsonl_series(run_dir)
        history = sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)
        assert [m.step for m in history] == [1, 2, 3]
        assert [m.value for m in history] == [r["loss"] for r in train]  # MLflow keeps float64
        (heldout,) = jsonl_series(run_dir, "eval")
        (ev,) = client.get_metric_history(run.info.run_id, "eval/loss")
        assert ev.value == heldout["eval/loss"]
        # The resolved config is the run's parameters, flattened.
        params = run.data.params
        assert params["optimizer.max_grad_norm"] == "1.0" and params["logger.name"] == "mlflow"
        assert params["seed"] in ("1", "2") and params["loss.dpo.beta"] == "0.1"


def test_single_run_keeps_tracker_files_in_the_run_dir(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_cli(["logger=accelerate", "logger.tracker=tensorboard", *TINY3], tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [r["step"] for r in jsonl_series(tmp_path)]


@pytest.mark.parametrize(("overrides", "message"), [
    (["logger=accelerate", "logger.tracker=nope"], "logger.tracker='nope': not a tracker accelerate supports; one of"),
    (["logger=accelerate", "logger.tracker=aim"], "logger.tracker=aim: the aim package is not installed"),
    (["logger.name=neptune"], "logger.name='neptune': must be one of jsonl, wandb, tensorboard, mlflow, accelerate"),
])
def test_unknown_or_missing_tracker_is_one_config_error(overrides, message):
    from accelerate import utils

    if "aim" in message and utils.is_aim_available():
        pytest.skip("aim is installed here")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        check_logger(compose(["model=tiny", *overrides]).logger)


def test_bad_tracker_stops_before_the_model_loads(tmp_path):
    proc = run_cli(["logger=accelerate", "logger.tracker=nope", *TINY3], tmp_path, check=False)
    assert proc.returncode == 1
    assert "prefopt: logger.tracker='nope': not a tracker accelerate supports" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "metrics.jsonl").exists()


def test_logger_accelerate_needs_its_tracker(tmp_path):
    proc = run_cli(["logger=accelerate", *TINY3], tmp_path, check=False)
    assert proc.returncode == 1 and "logger.tracker" in proc.stderr and "required" in proc.stderr


def test_payload_prefixes_and_group():
    """The same names as the W&B sink (train/ prefix, eval/ kept), non-numbers dropped; the group is
    logger.group, else the sweep directory (its last 128 characters), else none."""
    step, payload = metric_payload({"split": "train", "step": 4, "loss": 0.5, "lr": 1e-5, "note": "x",
                                    "ok": True})
    assert (step, payload) == (4, {"train/loss": 0.5, "train/lr": 1e-5})
    assert metric_payload({"split": "eval", "step": 9, "eval/loss": 0.25})[1] == {"eval/loss": 0.25}
    cfg = compose(["model=tiny"]).logger
    from pathlib import Path

    assert group_name(cfg, None) is None
    assert group_name(cfg, Path("multirun/2026-12-01/03-40-33")) == "multirun/2026-12-01/03-40-33"
    assert group_name(cfg, Path("/x" * 100)) == ("/x" * 100)[-128:]
    cfg.group = "mine"
    assert group_name(cfg, Path("multirun/a")) == "mine"
    assert flat_params({"a": {"b": 1, "c": None, "d": [1, 2]}, "e": {}}) == {"a.b": 1, "a.c": "null",
                                                                          "a.d": "[1, 2]", "e": "{}"}
