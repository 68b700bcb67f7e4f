"""Every user-facing error is a ``PrefoptError``, and both command lines report one as one line without a
traceback: a single run, a failed job of a multirun, and ``prefopt.evaluate``."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import subprocess
import sys

import pytest
import yaml

import prefopt
from prefopt.errors import PrefoptError
from tests.conftest import ROOT, TINY, run_cli

# Not user errors: the wrapper a multirun job raises around one (it carries the PrefoptError's message).
WRAPPERS = {"JobFailed"}


def prefopt_exception_classes() -> list[type]:
    found = {}
    for info in pkgutil.walk_packages(prefopt.__path__, "prefopt."):
        if info.name.startswith("prefopt.conf"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name
                    and name not in WRAPPERS):
                found[f"{info.name}.{name}"] = obj
    return list(found.values())


def test_every_prefopt_exception_is_a_prefopt_error():
    classes = prefopt_exception_classes()
    assert len(classes) >= 18, [c.__name__ for c in classes]  # the issue counted 18 before the base existed
    outside = [f"{c.__module__}.{c.__name__}" for c in classes if not issubclass(c, PrefoptError)]
    assert outside == [], f"user-facing errors outside PrefoptError: {outside}"


def test_errors_keep_their_builtin_base():
    """Code that caught ValueError / KeyError / OSError before the common base still does."""
    from prefopt.data.registry import UnknownDatasetError
    from prefopt.io import RunFileError
    from prefopt.losses import LossConfigError, UnknownLossError

    assert issubclass(LossConfigError, ValueError) and issubclass(UnknownLossError, KeyError)
    assert issubclass(UnknownDatasetError, KeyError)
    err = RunFileError(28, "cannot write x: No space left on device")
    assert isinstance(err, OSError) and err.errno == 28 and "No space left" in str(err)


def one_error_line(stderr: str, needle: str) -> None:
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if needle in line]
    assert len(lines) >= 1, stderr[-3000:]


def test_train_cli_single_run_bad_model_is_one_line(tmp_path):
    proc = run_cli(TINY + ["model.name_or_path=/nonexistent/model"], tmp_path / "run", check=False)
    assert proc.returncode != 0
    one_error_line(proc.stderr, "prefopt: model.name_or_path='/nonexistent/model'")
    assert not (tmp_path / "run" / "summary.json").exists()


def test_train_cli_multirun_failed_job_is_one_line(tmp_path):
    proc = run_cli(TINY + ["trainer.max_steps=1", "beta=-1,0.1"], tmp_path, multirun=True, check=False)
    assert proc.returncode != 0
    one_error_line(proc.stderr, "prefopt: beta=-1.0: must be > 0")
    index = yaml.safe_load((tmp_path / "sweep.json").read_text())
    statuses = sorted((job["status"], job.get("error") or "") for job in index["jobs"].values())
    # The other job of the sweep still ran to the end.
    assert statuses == [("done", ""), ("failed", "JobFailed: prefopt: beta=-1.0: must be > 0")]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    overrides = [o for o in TINY if not o.startswith("trainer.save_model")] + ["trainer.save_model=true"]
    run_cli(overrides, run_dir)
    return run_dir


def evaluate(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "prefopt.evaluate", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=env)


def test_evaluate_cli_bad_model_path_is_one_line(finished_run, tmp_path):
    """The run's starting model cannot be loaded (moved away since): one line naming the key, exit 1."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["model"]["name_or_path"] = "/nonexistent/model"
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    proc = evaluate([f"run_dir={run_dir}", "benchmark=sentiment", "benchmark.num_prompts=2"])
    assert proc.returncode == 1
    one_error_line(proc.stderr, "prefopt.evaluate: model.name_or_path='/nonexistent/model'")


def test_evaluate_cli_unknown_benchmark_is_one_line(finished_run):
    proc = evaluate([f"run_dir={finished_run}", "benchmark=nope"])
    assert proc.returncode == 1
    one_error_line(proc.stderr, "prefopt.evaluate: ")
    assert "benchmark/nope" in proc.stderr and "sentiment" in proc.stderr


def test_misspelled_benchmark_stops_before_training(tmp_path):
    """It used to fail only after training, when the benchmark ran."""
    from prefopt.train import run
    from tests.conftest import compose

    with pytest.raises(PrefoptError, match=r"benchmark.name='sentimnt': known: none, .*sentiment"):
        run(compose(TINY + ["benchmark=sentiment", "benchmark.name=sentimnt"]), tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
