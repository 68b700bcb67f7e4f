"""Worked numbers for the benchmark statistics, and the AlpacaEval leaderboard anchor."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from prefopt.stats import alpaca_win_rate, bootstrap_mean_ci, cluster_means, paired_delta, preference_outcome


def test_paired_delta_worked_example():
    """policy [1, 2, 3, 4] vs reference [0, 2, 1, 5]: differences [1, 0, 2, -1], so delta = 2/4 = 0.5;
    wins [1, ½, 1, 0] (the tie counts half), so win rate = 2.5/4 = 0.625; Wilcoxon runs on the three
    non-zero differences [1, 2, -1]."""
    out = paired_delta([1, 2, 3, 4], [0, 2, 1, 5], samples=2000, seed=3)
    assert out["n"] == 4 and out["delta"] == pytest.approx(0.5) and out["win_rate"] == pytest.approx(0.625)
    assert out["policy_mean"] == pytest.approx(2.5) and out["reference_mean"] == pytest.approx(2.0)
    assert out["wilcoxon_p"] == pytest.approx(scipy_stats.wilcoxon([1, 2, -1]).pvalue)
    # Percentile bootstrap of a mean of [1, 0, 2, -1]: bounded by the extreme resamples -1 and 2.
    assert -1 <= out["delta_ci_low"] <= 0.5 <= out["delta_ci_high"] <= 2
    assert out == paired_delta([1, 2, 3, 4], [0, 2, 1, 5], samples=2000, seed=3)  # seeded


def test_paired_delta_ci_covers_a_known_shift():
    """200 prompts, policy = reference + 0.3 + noise(sd 0.1): the CI must cover 0.3 and exclude 0,
    and the Wilcoxon test must reject; with no shift at all the delta is exactly 0 and p = 1."""
    rng = np.random.default_rng(0)
    ref = rng.normal(size=200)
    out = paired_delta(ref + 0.3 + rng.normal(scale=0.1, size=200), ref, samples=4000)
    assert out["delta_ci_low"] < 0.3 < out["delta_ci_high"] and out["delta_ci_low"] > 0
    assert out["wilcoxon_p"] < 1e-6 and out["win_rate"] > 0.95
    same = paired_delta(ref, ref, samples=100)
    assert same["delta"] == 0 and same["wilcoxon_p"] == 1.0 and same["win_rate"] == 0.5


def test_paired_delta_rejects_bad_input():
    with pytest.raises(ValueError, match="equal-length"):
        paired_delta([1, 2], [1])
    with pytest.raises(ValueError, match="finite"):
        paired_delta([1, float("nan")], [1, 2])


def test_preference_encoding():
    # AlpacaEval: 1 = reference output wins, 2 = model wins, 0 or 1.5 = draw; strings as in the JSON.
    assert [preference_outcome(p) for p in (2, "2.0", 1.0, 0, 1.5, 1.75)] == [1.0, 1.0, 0.0, 0.5, 0.5, 0.75]
    assert [preference_outcome(p) for p in (None, "x", float("nan"), 3, 0.5)] == [None] * 5


def test_alpaca_win_rate_worked_example():
    """[2, 2, 1, 0, None]: scores 1, 1, 0, ½ over 4 valid -> 62.5%; SE = sd([1,1,0,.5], ddof=1)/√4 =
    0.4787/2 = 23.94 points."""
    out = alpaca_win_rate([2, 2, 1, 0, None])
    assert out["win_rate"] == pytest.approx(62.5)
    assert out["standard_error"] == pytest.approx(100 * np.std([1, 1, 0, 0.5], ddof=1) / 2)
    assert (out["n_wins"], out["n_wins_base"], out["n_draws"], out["n_total"], out["n_invalid"]) == (2, 1, 1, 4, 1)
    with pytest.raises(ValueError, match="none of the 2"):
        alpaca_win_rate([None, "bad"])


def test_alpaca_eval_leaderboard_anchor(shared_data):
    """The published AlpacaEval (GPT-4 judge) figures for zephyr-7b-beta vs text_davinci_003, from the
    real annotations: 727 wins, 75 losses, 1 draw, 2 null -> (727 + ½)/803 = 90.5978%, SE 1.0287."""
    path = shared_data / "alpaca_eval" / "zephyr-7b-beta_vs_text_davinci_003_alpaca_eval_gpt4_annotations.json"
    annotations = json.loads(path.read_text())
    assert len(annotations) == 805
    assert {a["generator_2"] for a in annotations} == {"zephyr-7b-beta"}  # output_2 is the model
    out = alpaca_win_rate([a["preference"] for a in annotations])
    assert round(out["win_rate"], 4) == 90.5978
    assert round(out["standard_error"], 4) == 1.0287
    assert (out["n_wins"], out["n_wins_base"], out["n_draws"], out["n_total"]) == (727, 75, 1, 803)
    assert out["n_invalid"] == 2
    assert math.isclose(out["win_rate"], 100 * 727.5 / 803)


def test_samples_per_prompt_identical_samples_give_the_one_sample_figures():
    """k = 3 identical samples of each of the 4 prompts of the worked example: each prompt's mean is its one
    sample, so every figure, CIs included (same seed, same resampled prompts), equals the k = 1 figures;
    only n_items counts the 12 items. A plain bootstrap over the 12 items would narrow the CI instead."""
    one = paired_delta([1, 2, 3, 4], [0, 2, 1, 5], samples=2000, seed=3)
    three = paired_delta([x for x in (1, 2, 3, 4) for _ in range(3)], [x for x in (0, 2, 1, 5) for _ in range(3)],
                         samples=2000, seed=3, clusters=[i for i in range(4) for _ in range(3)])
    assert three == {**one, "n_items": 12}
    naive = paired_delta([x for x in (1, 2, 3, 4) for _ in range(3)], [x for x in (0, 2, 1, 5) for _ in range(3)],
                         samples=2000, seed=3)
    assert naive["delta_ci_high"] - naive["delta_ci_low"] < one["delta_ci_high"] - one["delta_ci_low"]


def test_clustered_delta_averages_each_prompts_samples():
    """Prompt 7: two samples with differences 1 and 3 (policy [2, 4] vs reference [1, 1]), wins 1 and 1;
    prompt 5: one sample with difference -1 (policy 0, reference 1), win 0. Per-prompt mean differences
    [2, -1], so delta = 0.5 (the item mean, 1.0, would weigh prompt 7 twice); win rate = (1 + 0)/2 = 0.5;
    policy mean = (3 + 0)/2 = 1.5, reference 1.0. Clusters are ordered by first appearance, whatever
    their ids; a bootstrap of two prompts has means in {-1, 0.5, 2}."""
    out = paired_delta([2, 0, 4], [1, 1, 1], samples=4000, seed=0, clusters=[7, 5, 7])
    assert (out["n"], out["n_items"]) == (2, 3)
    assert out["delta"] == pytest.approx(0.5) and out["win_rate"] == pytest.approx(0.5)
    assert out["policy_mean"] == pytest.approx(1.5) and out["reference_mean"] == pytest.approx(1.0)
    assert out["delta_ci_low"] == pytest.approx(-1) and out["delta_ci_high"] == pytest.approx(2)
    np.testing.assert_allclose(cluster_means([2, 0, 4], [7, 5, 7]), [3.0, 0.0])
    with pytest.raises(ValueError, match="3 values but 2 cluster ids"):
        cluster_means([2, 0, 4], [7, 5])


def test_bootstrap_mean_ci_clusters_by_prompt():
    """KL values [1, 1, 5] of prompts [0, 0, 1]: prompt means [1, 5]; resampling two prompts gives means
    1, 3 or 5, so the 95% CI is [1, 5]; identical repeats of each prompt change nothing."""
    lo, hi = bootstrap_mean_ci([1, 1, 5], clusters=[0, 0, 1], samples=4000, seed=1)
    assert (lo, hi) == (pytest.approx(1.0), pytest.approx(5.0))
    assert bootstrap_mean_ci([1, 5], samples=500, seed=2) == bootstrap_mean_ci([1, 1, 5, 5], clusters=[0, 0, 1, 1],
                                                                               samples=500, seed=2)
