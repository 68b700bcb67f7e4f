"""Uncertainty for benchmark deltas: paired bootstrap CIs, win rates and a paired significance test.

Two kinds of win rate live here and must not be confused:

- ``paired_delta``: the same prompts answered by policy and reference, each answer scored on its own
  (VADER, a 1-10 judge grade); the win rate is the share of prompts where the policy's score is higher.
- ``alpaca_win_rate``: a pairwise judge's verdicts of a model against a fixed reference output set, in
  AlpacaEval's encoding (1 = reference wins, 2 = model wins, 1.5 or 0 = draw, anything else invalid).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as scipy_stats


def cluster_means(values: Sequence[float], clusters: Sequence | None) -> np.ndarray:
    """The mean of ``values`` within each cluster, in order of first appearance; ``values`` themselves when
    ``clusters`` is None (every item its own cluster).

    Several samples of one prompt are not independent evidence: a bootstrap that resamples them one by one
    would narrow the CI by up to √k for k samples per prompt. Resampling the per-prompt means resamples
    prompts (a cluster bootstrap), the unit that was drawn at random."""
    arr = np.asarray(values, dtype=float)
    if clusters is None:
        return arr
    ids = list(clusters)
    if len(ids) != arr.size:
        raise ValueError(f"cluster_means: {arr.size} values but {len(ids)} cluster ids")
    order: dict = {}
    for cluster in ids:
        order.setdefault(cluster, len(order))
    index = np.fromiter((order[c] for c in ids), dtype=int, count=len(ids))
    return np.bincount(index, weights=arr, minlength=len(order)) / np.bincount(index, minlength=len(order))


def bootstrap_mean_ci(values: Sequence[float], *, clusters: Sequence | None = None, samples: int = 10000,
                      seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap CI of the mean of ``values``, resampling clusters (prompts) when given."""
    arr = cluster_means(values, clusters)
    idx = np.random.default_rng(seed).integers(0, arr.size, size=(samples, arr.size))
    means = arr[idx].mean(axis=1)
    lo, hi = (1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100
    return float(np.percentile(means, lo)), float(np.percentile(means, hi))


def paired_delta(policy: Sequence[float], reference: Sequence[float], *, samples: int = 10000, seed: int = 0,
                 confidence: float = 0.95, clusters: Sequence | None = None) -> dict[str, float]:
    """Mean of ``policy - reference`` over the same prompts, its percentile-bootstrap CI (prompts
    resampled with replacement), the win rate of policy over reference (ties count half) with its
    bootstrap CI, and a two-sided Wilcoxon signed-rank p-value (zero differences dropped, as in
    Wilcoxon's original test; 1.0 when every difference is zero).

    ``clusters``: one id per item (the prompt id), for several samples per prompt. Each figure is then taken
    over the per-prompt means of the differences and win indicators (see ``cluster_means``): the bootstrap
    resamples prompts, the Wilcoxon test ranks one mean difference per prompt, and ``n`` counts prompts
    (``n_items`` the items). Identical samples of a prompt thus give exactly the figures of one sample."""
    a = np.asarray(policy, dtype=float)
    b = np.asarray(reference, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired_delta needs two equal-length non-empty lists, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired_delta: scores must be finite; drop unscored items before pairing")
    if samples < 1:
        raise ValueError(f"paired_delta: samples={samples}, must be >= 1")
    n_items = int(a.size)
    raw = a - b
    wins = cluster_means((raw > 0).astype(float) + 0.5 * (raw == 0), clusters)
    diff = cluster_means(raw, clusters)
    a, b = cluster_means(a, clusters), cluster_means(b, clusters)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, diff.size, size=(samples, diff.size))
    boot_delta = diff[idx].mean(axis=1)
    boot_win = wins[idx].mean(axis=1)
    lo, hi = (1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100
    nonzero = diff[diff != 0]
    p_value = float(scipy_stats.wilcoxon(nonzero).pvalue) if nonzero.size >= 1 else 1.0
    return {
        "n": int(diff.size),
        "n_items": n_items,
        "policy_mean": float(a.mean()),
        "reference_mean": float(b.mean()),
        "delta": float(diff.mean()),
        "delta_ci_low": float(np.percentile(boot_delta, lo)),
        "delta_ci_high": float(np.percentile(boot_delta, hi)),
        "win_rate": float(wins.mean()),
        "win_rate_ci_low": float(np.percentile(boot_win, lo)),
        "win_rate_ci_high": float(np.percentile(boot_win, hi)),
        "wilcoxon_p": p_value,
    }


def preference_outcome(preference) -> float | None:
    """One AlpacaEval preference as the model's score: 1.0 win, 0.0 loss, 0.5 draw, None invalid.

    AlpacaEval writes 1 (``output_1``, the reference, wins), 2 (``output_2``, the model, wins), 0 or
    1.5 for a draw, and may write a continuous preference in [1, 2] (a judge's probability); the
    model's score is then ``preference - 1``. Strings such as ``"2.0"`` (the JSON files store them so)
    are parsed; null, NaN and values outside [1, 2] other than 0 are invalid.
    """
    if preference is None:
        return None
    try:
        value = float(preference)
    except (TypeError, ValueError):
        return None
    if math.isnan(value):
        return None
    if value == 0:
        return 0.5
    if 1.0 <= value <= 2.0:
        return value - 1.0
    return None


def alpaca_win_rate(preferences: Sequence) -> dict[str, float]:
    """AlpacaEval's head-to-head figures from pairwise preferences (see ``preference_outcome``).

    win_rate = 100 · mean(score) over valid annotations, draws scoring 0.5; standard_error = 100 ·
    the standard error of that mean (sample standard deviation, ddof=1, over √n), the same as
    AlpacaEval's ``pandas.Series.sem``. Wins/losses/draws count the discrete verdicts (score above,
    below or at 0.5).
    """
    scores = [s for s in (preference_outcome(p) for p in preferences) if s is not None]
    n = len(scores)
    if n == 0:
        raise ValueError(f"alpaca_win_rate: none of the {len(preferences)} preferences is valid")
    arr = np.asarray(scores, dtype=float)
    se = float(arr.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return {
        "win_rate": float(arr.mean() * 100),
        "standard_error": se * 100,
        "n_wins": int((arr > 0.5).sum()),
        "n_wins_base": int((arr < 0.5).sum()),
        "n_draws": int((arr == 0.5).sum()),
        "n_total": n,
        "n_invalid": len(preferences) - n,
    }
