"""prefopt/study/stats.py: worked numbers on hand-made tables, and simulated studies that check the stated
error rates (the false-positive rate of the pairwise test, the power at the planned MDE)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from prefopt.study import stats


def test_holm_worked_example():
    """p = (0.01, 0.04, 0.03, 0.005), m = 4. Sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06,
    0.04·1 = 0.04 -> running max 0.02, 0.03, 0.06, 0.06; back in the input order (0.03, 0.06, 0.06, 0.02).
    A NaN is not a test: it stays NaN and does not count in m."""
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(stats.holm([0.01, math.nan, 0.04]), [0.02, math.nan, 0.04])
    assert stats.holm([0.6, 0.7]).tolist() == [1.0, 1.0]  # capped at 1
    assert stats.holm([]).size == 0


def test_variance_components_worked_examples():
    """y = [[1,2,3],[3,4,5]]: seed means 2, 4; prompt means 2, 3, 4; grand 3. MS_seed = 3·(1+1)/1 = 6,
    MS_prompt = 2·(1+0+1)/2 = 2, residuals all 0 -> sigma2_seed = 6/3 = 2, sigma2_prompt = 2/2 = 1, cell 0.
    y = [[0,0],[0,2]]: grand 0.5, seed and prompt means (0, 1); MS_seed = MS_prompt = 2·0.5/1 = 1; residuals
    ±0.5, MS_cell = 1/1 = 1 -> both factor components (1 - 1)/2 = 0, cell 1."""
    assert stats.variance_components(np.array([[1, 2, 3], [3, 4, 5.0]])) == {
        "seeds": 2, "prompts": 3, "seed": 2.0, "prompt": 1.0, "cell": 0.0}
    assert stats.variance_components(np.array([[0, 0], [0, 2.0]])) == {
        "seeds": 2, "prompts": 2, "seed": 0.0, "prompt": 0.0, "cell": 1.0}
    # One seed: the prompts' variance (ddof 1), seed not estimable: [1,2,3,6] -> (4+1+0+9)/3.
    one = stats.variance_components(np.array([[1, 2, 3, 6.0]]))
    assert one["seed"] is None and one["prompt"] == pytest.approx(14 / 3) and one["cell"] == 0.0
    # A prompt missing in one seed is left out of every seed (complete table).
    assert stats.variance_components(np.array([[1, 2, 3, 9], [3, 4, 5, np.nan]]))["seed"] == 2.0


def test_paired_test_worked_example():
    """D = [[1,2,3],[3,4,5]]: MS_seed 6, MS_prompt 2, MS_cell 0. Var(mean) = (6 + 2 - 0)/(2·3) = 4/3 (the
    components 2/2 + 1/3 + 0 agree), Satterthwaite df = 8^2 / (6^2/1 + 2^2/2) = 64/38 = 1.6842; the mean is
    3, t = 3/sqrt(4/3) = 2.598."""
    out = stats.paired_test(np.array([[1, 2, 3], [3, 4, 5.0]]))
    assert out["difference"] == 3.0 and out["se"] == pytest.approx(math.sqrt(4 / 3))
    assert out["df"] == pytest.approx(64 / 38)
    assert out["p"] == pytest.approx(2 * scipy_stats.t.sf(3 / math.sqrt(4 / 3), 64 / 38))
    q = scipy_stats.t.ppf(0.975, 64 / 38)
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((3 - q * math.sqrt(4 / 3), 3 + q * math.sqrt(4 / 3)))
    # One seed: a one-sample t over prompts, [1,2,3,6]: var(mean) = (14/3)/4, df 3.
    one = stats.paired_test(np.array([[1, 2, 3, 6.0]]))
    assert one["se"] == pytest.approx(math.sqrt(14 / 12)) and one["df"] == 3.0
    # [[0,0],[0,2]]: every mean square 1 -> var (1 + 1 - 1)/4, df 1/(1/1 + 1/1 + 1/1) = 1/3.
    small = stats.paired_test(np.array([[0, 0], [0, 2.0]]))
    assert small["se"] == pytest.approx(0.5) and small["df"] == pytest.approx(1 / 3)
    # [[0,1],[1,0]]: MS_seed = MS_prompt = 0, MS_cell = 1; 0 + 0 - 1 is below MS_cell, which alone gives
    # var 1/4 with (2-1)(2-1) = 1 df (never a zero SE from a table that varies).
    crossed = stats.paired_test(np.array([[0, 1], [1, 0.0]]))
    assert crossed["se"] == pytest.approx(0.5) and crossed["df"] == 1.0
    # A seed whose run failed (all NaN) is dropped, not turned into a hole.
    assert stats.paired_test(np.array([[1, 2, 3], [3, 4, 5], [np.nan] * 3]))["seeds"] == 2


def test_weighted_means_are_the_crossed_bootstrap_replicates():
    """X has seed 0 = (1, 2), seed 1 = (3, missing). Seed 0 drawn twice -> 1.5; seed 1 twice -> 3 (its one
    cell); prompt 1 twice -> the only present cell with prompt 1, 2; every count 1 -> (1+2+3)/3 = 2."""
    X = np.array([[[1.0, 2.0], [3.0, np.nan]]])
    ws = np.array([[2, 0], [0, 2], [1, 1], [1, 1.0]])
    wp = np.array([[1, 1], [1, 1], [0, 2], [1, 1.0]])
    np.testing.assert_allclose(stats.weighted_means(X, ws, wp)[:, 0], [1.5, 3.0, 2.0, 2.0])
    # A replicate that drew no present cell of a condition is NaN, not 0.
    assert np.isnan(stats.weighted_means(X, np.array([[0, 2.0]]), np.array([[0, 2.0]]))[0, 0])
    # Chunking gives the same numbers.
    rng = np.random.default_rng(0)
    big = rng.normal(size=(3, 4, 7))
    ws, wp = stats.bootstrap_draws(4, 7, 50, rng)
    np.testing.assert_allclose(stats.weighted_means(big, ws, wp, chunk=7), stats.weighted_means(big, ws, wp))
    assert (ws.sum(axis=1) == 4).all() and (wp.sum(axis=1) == 7).all()


def test_seed_means_and_bootstrap_p():
    """Per-run scalars: seeds (1, 3) drawn (2, 0) -> 1, (1, 1) -> 2. bootstrap_p of (-1, 1, 2, 3): one
    replicate at or below 0, three at or above -> 2·(1+1)/(4+1) = 0.8."""
    np.testing.assert_allclose(stats.seed_means(np.array([[1.0, 3.0]]), np.array([[2, 0], [1, 1.0]]))[:, 0], [1, 2])
    assert stats.bootstrap_p(np.array([-1, 1, 2, 3.0])) == pytest.approx(0.8)
    assert all(math.isnan(v) for v in stats.percentile_ci(np.array([np.nan])))


def test_interpolate_frontier_worked_example():
    """Points in β order (KL, reward) = (3, 0.9), (1, 0.5), (0.2, 0.1). KL 2 lies on the first segment:
    0.9 + (2-3)/(1-3)·(0.5-0.9) = 0.7; KL 0.6 on the second: 0.5 + (0.6-1)/(0.2-1)·(0.1-0.5) = 0.3; KL 4 and
    0.1 are outside: NaN (never extrapolated); KL 1 is a point: 0.5."""
    out = stats.interpolate_frontier([3, 1, 0.2], [0.9, 0.5, 0.1], [2, 0.6, 4, 0.1, 1])
    np.testing.assert_allclose(out, [0.7, 0.3, np.nan, np.nan, 0.5])
    # A frontier that turns back, (1, .2), (3, .8), (2, .9): at KL 2.5 the first segment gives
    # 0.2 + 0.75·0.6 = 0.65, the second 0.8 + 0.5·0.1 = 0.85; the better one is taken.
    assert stats.interpolate_frontier([1, 3, 2], [0.2, 0.8, 0.9], [2.5])[0] == pytest.approx(0.85)
    # Replicates along a leading axis; a single point covers only its own KL.
    reps = stats.interpolate_frontier(np.array([[3, 1.0], [2, 1.0]]), np.array([[1, 0.0], [1, 0.0]]), [2.5])
    np.testing.assert_allclose(reps[:, 0], [0.75, np.nan])
    np.testing.assert_allclose(stats.interpolate_frontier([1.0], [0.4], [1.0, 2.0]), [0.4, np.nan])


def test_mde_and_plan_worked_numbers():
    """z_{0.975} + z_{0.8} = 1.95996 + 0.84162 = 2.80158; with 10 df the t quantiles 2.22814 + 0.87906.
    Components (seed 0, prompt 0.01, cell 0.04), 4 seeds, target 0.1: the normal approximation needs
    P >= (0.01 + 0.04/4) / (0.1/2.80158)^2 = 15.7; the t quantiles can only add prompts."""
    assert stats.z_sum() == pytest.approx(2.80158, abs=1e-5)
    assert stats.mde(0.1) == pytest.approx(0.280158, abs=1e-6)
    assert stats.mde(1.0, df=10) == pytest.approx(2.22814 + 0.87906, abs=1e-4)
    comps = {"seed": 0.0, "prompt": 0.01, "cell": 0.04}
    need = stats.prompts_needed(comps, 0.1, 4)
    assert need >= 16
    assert stats.planned_mde(comps, 4, need) <= 0.1 < stats.planned_mde(comps, 4, need - 1)
    # The seed term alone is over budget: no number of prompts helps.
    assert stats.prompts_needed({"seed": 0.01, "prompt": 0.0, "cell": 0.0}, 0.1, 2) is None
    assert stats.prompts_needed({"seed": 0.01, "prompt": 0.0, "cell": 0.0}, 0.1, 20) is not None
    # Fewest seeds for that seed component: 0.01/S <= (0.1/2.8016)^2 needs S >= 7.85 by the normal
    # approximation; the t quantiles at S-1 df add a few. Whatever it is, one seed fewer must not do.
    fewest = stats.seeds_needed({"seed": 0.01, "prompt": 0.0, "cell": 0.001}, 0.1)
    assert fewest >= 8
    assert stats.prompts_needed({"seed": 0.01, "prompt": 0.0, "cell": 0.001}, 0.1, fewest) is not None
    assert stats.prompts_needed({"seed": 0.01, "prompt": 0.0, "cell": 0.001}, 0.1, fewest - 1) is None


def _simulate(rng, seeds, prompts, sd_seed, sd_prompt, sd_cell, shift):
    return (shift + rng.normal(0, sd_seed, (seeds, 1)) + rng.normal(0, sd_prompt, (1, prompts))
            + rng.normal(0, sd_cell, (seeds, prompts)))


# (seeds, prompts, sd_seed, sd_prompt, sd_cell) of a paired difference table: prompt/cell noise dominant
# (a sampled benchmark), and the seed-to-seed variance dominant with 3 seeds (where a percentile bootstrap
# over seeds resolves 20% of null studies, docs/study.md).
DESIGNS = {"prompts_dominate": (4, 40, 0.02, 0.08, 0.25), "seeds_dominate": (3, 48, 0.1, 0.05, 0.1)}


@pytest.mark.parametrize("design", sorted(DESIGNS))
def test_simulated_studies_keep_the_stated_error_rates(design):
    """400 simulated studies per case (fixed seeds: the numbers below are exactly reproducible). No shift:
    resolved (p < 0.05) at most 5% + 3.5 points (3.5 points ~ 3.5 binomial SDs at n=400: a test that
    ignored the seed variance would be far above). A shift equal to the MDE planned from the true variance
    components: resolved in 80% ± 7 points of studies (the t approximation of the noncentral t power is
    slightly optimistic; measured 0.76-0.79 over 1000 studies)."""
    seeds, prompts, sd_s, sd_p, sd_e = DESIGNS[design]
    rng = np.random.default_rng(20261201)
    null = [stats.paired_test(_simulate(rng, seeds, prompts, sd_s, sd_p, sd_e, 0.0))["p"] < 0.05 for _ in range(400)]
    comps = {"seed": sd_s ** 2, "prompt": sd_p ** 2, "cell": sd_e ** 2}
    shift = stats.planned_mde(comps, seeds, prompts)
    hits = [stats.paired_test(_simulate(rng, seeds, prompts, sd_s, sd_p, sd_e, shift))["p"] < 0.05 for _ in range(400)]
    assert np.mean(null) <= 0.05 + 0.035, np.mean(null)
    assert abs(np.mean(hits) - 0.8) <= 0.07, np.mean(hits)
    # The reported MDE of a study estimates the planned one (median within 15%).
    reported = [stats.paired_test(_simulate(rng, seeds, prompts, sd_s, sd_p, sd_e, 0.0))["mde"] for _ in range(100)]
    assert np.median(reported) == pytest.approx(shift, rel=0.15)
