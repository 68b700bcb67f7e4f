"""Each dataset YAML trains for two steps on the tiny model with its own ``# test-overrides:`` (local
data instead of a hub id), in-process to stay cheap. The data options need different paths, so they
cannot share one multirun's overrides; the Zephyr experiments and variants run through the CLI in
test_zephyr_pipeline.py."""

from __future__ import annotations

import re

import pytest

from tests.conftest import CONF, ROOT, SHARED_DATA, TINY, compose


def yaml_overrides(group: str, option: str) -> list[str]:
    out = []
    for line in (CONF / group / f"{option}.yaml").read_text().splitlines():
        match = re.match(r"#\s*test-overrides:\s*(.*)", line)
        if match:
            out += match.group(1).split()
    out = [o.replace("{shared}", str(SHARED_DATA)) for o in out]
    # Paths in the repo are relative to its root; the CLI runs there, pytest may not.
    return [re.sub(r"=(tests/)", f"={ROOT}/\\1", o) for o in out]


DATASETS = sorted(p.stem for p in (CONF / "dataset").glob("*.yaml"))


@pytest.mark.parametrize("option", DATASETS)
def test_dataset_yaml_trains_on_tiny(option, tmp_path):
    from prefopt.train import run

    overrides = yaml_overrides("dataset", option)
    if any(str(SHARED_DATA) in o for o in overrides) and not SHARED_DATA.is_dir():
        pytest.skip(f"dataset={option} needs {SHARED_DATA}, which is absent")
    # Short sequences and few rows, whatever the YAML's own test-overrides say: this is about the wiring.
    cheap = ["dataset.max_train_rows=16", "dataset.max_eval_rows=4", "dataset.max_length=128",
             "dataset.max_prompt_length=64", "trainer.batch_size=2", "trainer.grad_accum=1"]
    cfg = compose([f"dataset={option}", *overrides, *TINY, *cheap, f"dataset.cache_dir={tmp_path / 'tok'}"])
    summary = run(cfg, run_dir=tmp_path / "run", hydra_choices={"dataset": option})
    assert summary["status"] == "completed" and summary["steps"] >= 1
    counts = summary["data"]["counts"]["train"]
    assert counts["rows_kept"] == summary["data"]["train_rows"] > 0
    assert summary["data"]["eval_rows"] > 0


def test_sft_checkpoint_model_yaml(tmp_path):
    from prefopt.train import run

    cfg = compose(["model=sft_checkpoint", *yaml_overrides("model", "sft_checkpoint"), *TINY,
                   "model.gradient_checkpointing=false"])
    assert run(cfg, run_dir=tmp_path / "run")["status"] == "completed"
