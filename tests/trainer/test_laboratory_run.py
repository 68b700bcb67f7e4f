"""Two `model=tiny` runs of one study through the CLI, differing only in the training seed (and the second with
reference=precomputed): the seed is recorded and changes the data order, the benchmark's reference samples are
identical (the same streams, not the cache: benchmark.cache_reference=false), the monitors are logged at every
eval and summary.json's compute block holds token counts derived here from the batches themselves."""

from __future__ import annotations

import json

import pytest
import yaml

from prefopt import data as data_lib
from prefopt.models import load_model, load_tokenizer
from prefopt.trainer.batching import step_groups
from tests.conftest import TINY, compose, read_metrics, read_summary, run_cli

# Two tiny runs with a benchmark (about a minute): run with the slow suite.
pytestmark = pytest.mark.slow

STUDY = [*TINY, "loss=dpo", "benchmark=sentiment", "benchmark.num_prompts=3", "benchmark.max_new_tokens=4",
         "benchmark.bootstrap_samples=100", "benchmark.cache_reference=false", "trainer.eval_every=1",
         # No warmup: the first step moves the policy, so the first eval's margins vary (gold_corr defined).
         "optimizer.warmup_ratio=0"]
MONITORS = ("eval/monitor/chosen_logp_drift", "eval/monitor/rejected_logp_drift", "eval/monitor/ece",
            "eval/monitor/gold_corr")


def pair_tokens(row: dict) -> int:
    """Positions the decoder runs for a pair under trainer.share_prompt=true (the default): the prompt once,
    then each completion."""
    return len(row["prompt_ids"]) + len(row["chosen_ids"]) + len(row["rejected_ids"])


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    run_cli([*STUDY, "seed=1"], root / "seed1")
    run_cli([*STUDY, "seed=2", "reference=precomputed"], root / "seed2")
    return root / "seed1", root / "seed2"


def test_seed_is_recorded_and_moves_data_order_not_the_benchmark_samples(study):
    one, two = study
    assert yaml.safe_load((one / "config.yaml").read_text())["seed"] == 1
    assert (read_summary(one)["seed"], read_summary(two)["seed"]) == (1, 2)
    items = [[json.loads(line) for line in (run / "benchmark_sentiment.jsonl").read_text().splitlines()]
             for run in study]
    assert [(i["prompt_id"], i["sample"]) for i in items[0]] == [(0, 0), (1, 0), (2, 0)]
    assert [(i["prompt_id"], i["reference"], i["reference_score"]) for i in items[0]] == \
        [(i["prompt_id"], i["reference"], i["reference_score"]) for i in items[1]]
    # The data order: under another seed step 1 scores other pairs, with other log-probs.
    train = [[r for r in read_metrics(run) if r["split"] == "train"] for run in study]
    assert train[0][0]["logps/chosen"] != train[1][0]["logps/chosen"]


def test_monitors_at_every_eval(study):
    for run in study:
        evals = [r for r in read_metrics(run) if r["split"] == "eval"]
        assert [r["step"] for r in evals] == [1, 2]
        for record in evals:
            for key in MONITORS:
                assert isinstance(record[key], float), (run.name, key, record)


def test_compute_accounting_from_the_batches(study):
    """Both runs: 2 optimizer steps of batch_size 4 x grad_accum 2 = 8 pairs each, 32 sequences; tokens_backward
    is the sum of their pairs' tokens (prompt once: shared), recomputed here from the same seeded step groups;
    2 evals forward the held-out pairs twice. The frozen reference forwards every sequence the policy scores; the precomputed one none.
    FLOPs: 6N·backward + 2N·(forward − backward) + 2N·reference tokens, N the tiny model's parameters."""
    tokenizer = load_tokenizer("tiny")
    n_params = sum(p.numel() for p in load_model("tiny", "float32").parameters())
    for run, seed in zip(study, (1, 2), strict=True):
        cfg = compose([*STUDY, f"seed={seed}"])
        datasets = data_lib.build_datasets(cfg.dataset, tokenizer, "paired", cfg.model.eot_token)
        seen = [r for group in step_groups(datasets.train, cfg, 1, 0)[:2] for r in group]
        assert cfg.trainer.share_prompt
        backward = sum(pair_tokens(r) for r in seen)
        eval_tokens = 2 * sum(pair_tokens(r) for r in datasets.eval)
        compute = read_summary(run)["compute"]
        assert len(seen) == 16 and compute["policy_sequences_backward"] == 32
        assert compute["policy_tokens_backward"] == backward
        assert compute["policy_tokens_forward"] == backward + eval_tokens
        assert compute["policy_parameters"] == n_params
        if seed == 1:
            assert compute["reference_forwards"] == 32 + 2 * 2 * len(datasets.eval)
            assert compute["reference_tokens_forward"] == backward + eval_tokens
        else:
            assert compute["reference_forwards"] == 0 and compute["reference_tokens_forward"] == 0
        reference_tokens = compute["reference_tokens_forward"]
        assert compute["flops_estimate"] == pytest.approx(6 * n_params * backward + 2 * n_params * eval_tokens
                                                          + 2 * n_params * reference_tokens)
        wall = compute["wall_s"]
        assert set(wall) == {"setup", "train", "eval", "benchmark", "save", "total"}
        assert all(v >= 0 for v in wall.values()) and wall["benchmark"] > 0
        assert sum(v for k, v in wall.items() if k != "total") <= wall["total"]
