"""The embedded default, exactly as the README's first command runs it, on the real SmolLM2-135M.

    python -m pytest -m slow tests/trainer/test_default_run.py -s

Slow (minutes on 2 CPU cores), so it is deselected from the default suite and run by CI separately.
It prints the wall time and benchmark figures; the 5-minute target is shown there, not asserted.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import read_metrics, read_summary, run_cli


@pytest.mark.slow
def test_default_run_improves_sentiment_over_reference(tmp_path):
    run_dir = tmp_path / "default"
    run_cli(["trainer.progress_bar=false"], run_dir, timeout=1800)
    summary = read_summary(run_dir)
    bench = summary["benchmark"]
    print("\nwall_time_s", round(summary["wall_time_s"], 1), "steps", summary["steps"])
    print(json.dumps({k: v for k, v in bench.items() if k != "examples"}, indent=1))
    assert summary["choices"]["model"] == "smollm2-135m" and summary["choices"]["loss"] == "dpo"
    assert summary["losses"]["dpo"]["beta"] == 0.1
    # The trained policy moves towards the ground-truth reward (point estimates; the README reports the CIs).
    # Since the benchmark samples each prompt from its own stream (issue 11) and the schedule and clipping
    # follow HF (warmup from 0, max_grad_norm 1.0), this one-seed, 48-prompt run no longer resolves its delta at
    # 95% (+0.094 [-0.048, 0.236] measured): reported as such, not asserted away.
    assert bench["name"] == "sentiment" and bench["num_prompts"] == 48
    assert bench["delta"] > 0 and bench["delta_ci_low"] < bench["delta"] < bench["delta_ci_high"], bench
    assert bench["win_rate"] > 0.5 and bench["kl_estimate"] > 0
    # Training moved the implicit reward margin on the training pairs.
    train = [r for r in read_metrics(run_dir) if r["split"] == "train"]
    assert train[-1]["rewards/margins"] > train[0]["rewards/margins"]
    assert (run_dir / "model" / "model.safetensors").is_file()
