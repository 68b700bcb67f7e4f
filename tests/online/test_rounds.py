"""regime=iterative and regime=spin through the CLI on the tiny model: rounds, their files, the SPIN pair layout,
kill-and-resume equality, and bad regime values named by key."""

from __future__ import annotations

import json
import os

import pytest
from omegaconf import OmegaConf

from prefopt.errors import ConfigError
from prefopt.io import read_jsonl
from prefopt.online.rounds import check_regime
from tests.conftest import run_cli

SMALL = ["model=tiny", "benchmark=none", "trainer.progress_bar=false", "dataset.max_train_rows=10",
         "regime.rounds=2", "regime.max_new_tokens=6", "trainer.batch_size=2", "trainer.grad_accum=1",
         "trainer.save_model=true"]
ITERATIVE = ["regime=iterative", "labeller=gold", "labeller.benchmark=sentiment", "regime.samples_per_prompt=3",
             "regime.pairs=all_pairs", *SMALL]


def summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def test_iterative_rounds_sample_label_pair_and_train_from_the_last_round(tmp_path):
    run_cli(ITERATIVE, tmp_path)
    s = summary(tmp_path)
    assert s["status"] == "completed" and len(s["rounds"]) == 2 and s["labeller"] == "gold"
    assert s["samples_generated"] == 2 * 10 * 3  # 10 training prompts (the eval rows are held out first)
    for r, figures in enumerate(s["rounds"]):
        records = read_jsonl(tmp_path / f"samples_round{r}.jsonl")
        assert len(records) == figures["prompts"] == 10
        assert all(len(rec["samples"]) == 3 and len(rec["labels"]) == 3 for rec in records)
        # The gold labeller's labels are the gold scores, so every pair's chosen sample scores higher.
        for rec in records:
            assert rec["labels"] == rec["gold"]
            assert all(rec["gold"][p["chosen"]] > rec["gold"][p["rejected"]] for p in rec["pairs"])
        assert figures["pairs"] == sum(len(rec["pairs"]) for rec in records) == len(
            read_jsonl(tmp_path / f"pairs_round{r}.jsonl"))
        assert figures["pairs"] + figures["counts"].get("ties", 0) == 10 * 3  # all 3 pairs of each prompt
        if figures["pairs"]:
            assert figures["gold_agreement"] == 1.0
        assert figures["labeller"]["labels"] == 30 and figures["sampling_s"] > 0
        assert summary(tmp_path / f"round{r}")["status"] == "completed"
    # Round 1 starts from round 0's trained model, which is also its (reset) reference.
    round1 = OmegaConf.load(tmp_path / "round1" / "config.yaml")
    assert round1.model.name_or_path == str(tmp_path / "round0" / "model")
    assert round1.reference.kind == "frozen" and round1.dataset.path == str(tmp_path / "pairs_round1.jsonl")
    assert s["final_model"] == str(tmp_path / "round1" / "model")


def test_the_benchmark_compares_the_last_rounds_model_with_the_first_model(tmp_path):
    """Not with the last round's start (its reference under regime.reference=reset): the reference side of
    the items is the one an offline run of the same model gets, so a study pairs them prompt by prompt."""
    bench = ["benchmark=sentiment", "benchmark.num_prompts=3", "benchmark.max_new_tokens=4"]
    run_cli([*ITERATIVE, *bench], tmp_path / "iterative")
    run_cli([*SMALL, *bench, "trainer.max_steps=1"], tmp_path / "offline")
    s = summary(tmp_path / "iterative")
    items = read_jsonl(tmp_path / "iterative" / "benchmark_sentiment.jsonl")
    offline = read_jsonl(tmp_path / "offline" / "benchmark_sentiment.jsonl")
    assert s["benchmark"]["n"] == 3 and len(items) == 3
    assert [i["reference"] for i in items] == [i["reference"] for i in offline]
    assert not (tmp_path / "iterative" / "round1" / "benchmark_sentiment.jsonl").exists()
    rounds = [summary(tmp_path / "iterative" / f"round{r}") for r in range(2)]
    assert s["compute"]["policy_tokens_backward"] == sum(r["compute"]["policy_tokens_backward"] for r in rounds)
    assert s["compute"]["wall_s"]["sampling"] == sum(f["sampling_s"] for f in s["rounds"]) > 0
    assert s["compute"]["wall_s"]["benchmark"] > 0 and s["wall_time_s"] == s["compute"]["wall_s"]["total"]


@pytest.mark.slow
def test_spin_pairs_the_datasets_response_against_the_policys_sample(tmp_path):
    run_cli(["regime=spin", *SMALL], tmp_path)
    records = read_jsonl(tmp_path / "samples_round0.jsonl")
    pairs = read_jsonl(tmp_path / "pairs_round0.jsonl")
    expected = [(rec["target"], rec["samples"][0]) for rec in records if rec["pairs"]]
    assert [(p["chosen"], p["rejected"]) for p in pairs] == expected and len(pairs) >= 8
    source = {r["prompt"]: r["chosen"] for r in map(json.loads, open(_sentiment_pairs()))}
    assert all(source[rec["prompt"][0]["content"]] == rec["target"] for rec in records)
    assert summary(tmp_path)["labeller"] is None


def _sentiment_pairs():
    from prefopt.data.sentiment import PAIRS

    return PAIRS


@pytest.mark.slow
def test_killed_iterative_run_resumes_to_the_same_result(tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    args = [*ITERATIVE, "trainer.checkpoint_every=1"]
    run_cli(args, whole)
    proc = run_cli(args, broken, check=False, env={"PREFOPT_INJECT_FAULT": "kill:2"})
    assert proc.returncode != 0 and not (broken / "summary.json").exists()
    assert (broken / "samples_round0.jsonl").is_file() and not (broken / "samples_round1.jsonl").exists()
    env = {k: v for k, v in os.environ.items() if k != "PREFOPT_INJECT_FAULT"}
    run_cli([*args, "resume=auto"], broken, env=env)
    for r in range(2):
        assert read_jsonl(broken / f"samples_round{r}.jsonl") == read_jsonl(whole / f"samples_round{r}.jsonl")
    a, b = summary(whole), summary(broken)
    assert a["eval"] == pytest.approx(b["eval"], rel=1e-5)
    assert b["rounds"][0]["steps"] == a["rounds"][0]["steps"]


@pytest.mark.parametrize(("keys", "message"), [
    ({"rounds": 0}, r"regime.rounds=0: must be >= 1"),
    ({"samples_per_prompt": 1}, r"regime.samples_per_prompt=1: must be >= 2"),
    ({"pairs": "best"}, r"regime.pairs='best'"),
    ({"reference": "frozen"}, r"regime.reference='frozen'"),
    ({"kind": "offpolicy"}, r"regime.kind='offpolicy': must be offline, online, iterative or spin"),
])
def test_bad_regime_values_name_the_key(keys, message):
    base = {"kind": "iterative", "rounds": 2, "epochs_per_round": 1, "samples_per_prompt": 4, "pairs": "best_vs_worst",
            "tie_margin": 0.0, "reference": "reset", "max_new_tokens": 8}
    with pytest.raises(ConfigError, match=message):
        check_regime(OmegaConf.create({"regime": {**base, **keys}}))


def test_a_missing_labeller_is_one_line_naming_the_key(tmp_path):
    proc = run_cli(["regime=iterative", *SMALL], tmp_path, check=False)
    assert proc.returncode != 0
    assert "labeller.name: the online, iterative and spin regimes need a labeller" in proc.stderr
    assert "Traceback" not in proc.stderr
