"""A whole `model=tiny` run through the CLI and the run directory it leaves."""

from __future__ import annotations

import yaml

from tests.conftest import TINY, read_metrics, read_summary, run_cli


def test_tiny_run_writes_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    run_cli(TINY + ["loss=dpo", "beta=0.1", "trainer.save_model=true", "trainer.max_steps=3"], run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["beta"] == 0.1 and config["loss"]["dpo"]["beta"] == 0.1  # resolved, not ${beta}
    records = read_metrics(run_dir)
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "logps/chosen", "logps/rejected", "grad_norm", "lr", "epoch", "step", "pairs/s", "tokens/s"):
        assert key in train[0], key
    evals = [r for r in records if r["split"] == "eval"]
    assert evals and "eval/loss" in evals[-1] and "eval/rewards/margins" in evals[-1]
    summary = read_summary(run_dir)
    assert summary["status"] == "completed" and summary["steps"] == 3
    assert summary["eval"]["eval/loss"] == evals[-1]["eval/loss"]
    assert summary["versions"]["torch"] and summary["wall_time_s"] > 0
    assert summary["choices"]["loss"] == "dpo" and summary["choices"]["model"] == "tiny"
    assert (run_dir / "model" / "model.safetensors").is_file()
    assert (run_dir / "model" / "tokenizer.json").is_file()
    assert not list(run_dir.glob(".*.tmp")) and not list(run_dir.glob(".model.*"))
