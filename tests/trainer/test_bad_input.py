"""Bad input: each case gives one clear message naming the file/row/key (or a counted skip where
configured) and leaves no half-written run directory. (A resume directory from a different config is in
tests/trainer/test_resume.py.)

Subprocess and whole-run cases are marked slow to keep the default suite short; CI runs them in its
`pytest -m slow` step.
"""

from __future__ import annotations

import json

import pytest

from prefopt.data import DataError
from tests.conftest import TINY, compose, read_summary, run_cli

GOOD = [{"prompt": f"Say something nice about day {i}.", "chosen": f"Day {i} was lovely.",
         "rejected": f"Day {i} was awful."} for i in range(12)]


def write_jsonl(path, rows, extra_lines=()):
    lines = [json.dumps(r) for r in rows] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def data_overrides(path):
    return ["dataset=generic", f"dataset.path={path}", "dataset.cache=false", "dataset.eval_fraction=0.25"]


def assert_no_run_files(run_dir):
    """Nothing a reader could mistake for a run: no metrics, summary, config, checkpoint or temp file."""
    if not run_dir.exists():
        return
    names = {p.name for p in run_dir.iterdir()}  # .hydra/ is Hydra's record of the command line
    assert not names & {"metrics.jsonl", "summary.json", "config.yaml", "checkpoints"}, names
    assert not [p for p in run_dir.rglob("*.tmp")]


def run_expecting(overrides, run_dir, error, match):
    from prefopt.train import run

    with pytest.raises(error, match=match):
        run(compose(TINY + overrides), run_dir)
    assert_no_run_files(run_dir)


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", GOOD[:3], ['{"prompt": "x", "chosen": '])
    run_expecting(data_overrides(path), tmp_path / "run", DataError, rf"{path}: line 4 is not valid JSON")


def test_wrong_type_names_row_and_field(tmp_path):
    rows = GOOD[:5] + [{"prompt": "x", "chosen": 5, "rejected": "y"}] + GOOD[5:]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    run_expecting(data_overrides(path), tmp_path / "run", DataError, r"row 5\b.*'chosen'")


@pytest.mark.slow
def test_wrong_type_is_a_counted_skip_when_configured(tmp_path):
    from prefopt.train import run

    rows = GOOD[:5] + [{"prompt": "x", "chosen": 5, "rejected": "y"}] + GOOD[5:]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    summary = run(compose(TINY + data_overrides(path) + ["dataset.bad_rows=skip"]), tmp_path / "run")
    counts = summary["data"]["counts"]
    skipped = sum(v for split in counts.values() for k, v in split.items() if "skip" in k and "bad" in k)
    assert skipped == 1 and summary["data"]["train_rows"] + summary["data"]["eval_rows"] == 12


@pytest.mark.slow
def test_one_megabyte_prompt_is_truncated_and_counted(tmp_path):
    from prefopt.train import run

    huge = {"prompt": "word " * 200_000, "chosen": "Short answer.", "rejected": "Another answer."}
    path = write_jsonl(tmp_path / "pairs.jsonl", [huge] + GOOD)
    assert path.stat().st_size > 1_000_000
    summary = run(compose(TINY + data_overrides(path) + ["dataset.eval_fraction=0.1"]), tmp_path / "run")
    counts = summary["data"]["counts"]
    handled = sum(v for split in counts.values() for k, v in split.items() if "prompt" in k or "drop" in k)
    assert handled >= 1, counts  # the long prompt was left-truncated (or dropped), and that was counted
    assert summary["status"] == "completed"


def test_non_utf8_bytes_name_the_file_and_byte(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(json.dumps(GOOD[0]).encode() + b"\n" + b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n')
    run_expecting(data_overrides(path), tmp_path / "run", DataError, rf"{path}.*UTF-8")


def test_empty_file_is_named(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("")
    run_expecting(data_overrides(path), tmp_path / "run", DataError, rf"{path}.*empty")


def test_negative_learning_rate_names_the_key(tmp_path):
    from prefopt.train import ConfigError

    run_expecting(["optimizer.lr=-1e-3"], tmp_path / "run", ConfigError, r"optimizer\.lr=-0\.001: must be > 0")


@pytest.mark.slow
def test_unknown_config_key_is_one_clear_cli_error(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(TINY + ["trainer.bacth_size=4"], run_dir, check=False)
    assert proc.returncode != 0
    assert "trainer.bacth_size" in proc.stderr and "Traceback" not in proc.stderr
    assert_no_run_files(run_dir)


@pytest.mark.slow
def test_user_error_on_the_cli_is_one_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("")
    run_dir = tmp_path / "run"
    proc = run_cli(TINY + data_overrides(path), run_dir, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"prefopt: {path}: the file is empty"
    assert_no_run_files(run_dir)


def test_unknown_logger_names_the_key(tmp_path):
    from prefopt.train import ConfigError

    run_expecting(["logger.name=nosuchtracker"], tmp_path / "run", ConfigError, r"logger\.name='nosuchtracker'")


@pytest.mark.slow
def test_completed_runs_leave_no_temp_files(tmp_path):
    run_cli(TINY, tmp_path)
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".step-")]
    assert read_summary(tmp_path)["status"] == "completed"
