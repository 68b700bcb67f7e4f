"""Bad input stops before training with one clear line naming the key or column, and no traceback.

Most cases run in-process (compose, or ``run(cfg)``, which checks before it trains); three go through
the CLI to pin what a user sees: one line, no traceback, nothing written.
"""

from __future__ import annotations

import json

import pytest
from hydra.errors import ConfigCompositionException, HydraException
from omegaconf.errors import OmegaConfBaseException

from prefopt.errors import PrefoptError
from prefopt.train import run
from tests.conftest import TINY, compose, run_cli


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["loss=dpoo"], ["Could not find 'loss/dpoo'", "dpo", "sft"]),
        (["model=gpt5"], ["Could not find 'model/gpt5'", "tiny"]),
        (["dataset=nope"], ["Could not find 'dataset/nope'", "sentiment"]),
        (["epochs=three"], ["epochs"]),
        (["bta=0.1"], ["Key 'bta' not in"]),
        (["loss.dpo.lable_smoothing=0.1"], ["lable_smoothing"]),
    ],
)
def test_compose_time_errors_name_the_key(overrides, needles):
    with pytest.raises((ConfigCompositionException, HydraException, OmegaConfBaseException)) as err:
        compose(TINY + overrides)
    text = str(err.value) + str(err.value.__cause__ or "")
    for needle in needles:
        assert needle in text, text


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["beta=0"], "beta=0.0: must be > 0"),
        (["beta=-1"], "beta=-1.0: must be > 0"),
        (["epochs=0"], "epochs=0: must be >= 1"),
        (["optimizer.lr=-1e-5"], "optimizer.lr=-1e-05: must be > 0"),
        (["dataset.name=nope"], "dataset.name='nope' is not a registered dataset; known:"),
        (["dataset.max_prompt_length=200", "dataset.max_length=100"], "dataset.max_prompt_length=200 must be smaller"),
        (["model.name_or_path=/nonexistent/model"], "model.name_or_path='/nonexistent/model'"),
    ],
)
def test_run_time_checks_name_the_key(tmp_path, overrides, needle):
    with pytest.raises(PrefoptError) as err:
        run(compose(TINY + overrides), run_dir=tmp_path / "run")
    assert needle in str(err.value)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_dataset_missing_column_names_row_and_field(tmp_path):
    path = write_rows(tmp_path / "pairs.jsonl", [{"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."},
                                                 {"prompt": "Say bye.", "chosen": "Bye!"}])
    with pytest.raises(PrefoptError, match="row 1: missing field 'rejected'"):
        run(compose(TINY + [f"dataset.path={path}"]), run_dir=tmp_path / "run")


def test_dataset_empty_after_filtering_is_counted(tmp_path):
    path = write_rows(tmp_path / "pairs.jsonl", [{"prompt": "Say hi.", "chosen": " ", "rejected": "No."},
                                                 {"prompt": "Say bye.", "chosen": "", "rejected": "x"}])
    with pytest.raises(PrefoptError, match=r"no training rows left after filtering.*filtered_empty"):
        run(compose(TINY + [f"dataset.path={path}", "dataset.filters=[empty]"]), run_dir=tmp_path / "run")


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["loss=dpoo"], "Could not find 'loss/dpoo'"),
        (["beta=0"], "prefopt: beta=0.0: must be > 0"),
        (["dataset.path=/nonexistent/pairs.jsonl"], "prefopt: dataset.path='/nonexistent/pairs.jsonl': file not found"),
    ],
)
def test_cli_prints_one_line_and_writes_nothing(tmp_path, overrides, needle):
    proc = run_cli(TINY + overrides, tmp_path / "run", check=False)
    assert proc.returncode != 0
    assert needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "run" / "summary.json").exists()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
