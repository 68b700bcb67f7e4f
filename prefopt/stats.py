"""Uncertainty for benchmark deltas: paired bootstrap CIs, win rates and a paired significance test."""

from __future__ import annotations

import numpy as np
from scipy import stats as scipy_stats


def paired_delta(policy: list[float], reference: list[float], *, samples: int = 10000, seed: int = 0,
                 confidence: float = 0.95) -> dict[str, float]:
    """Mean of ``policy - reference`` over the same prompts, its percentile-bootstrap CI (prompts
    resampled with replacement), the win rate of policy over reference (ties count half) with its
    bootstrap CI, and a two-sided Wilcoxon signed-rank p-value."""
    a = np.asarray(policy, dtype=float)
    b = np.asarray(reference, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired_delta needs two equal-length non-empty lists, got {a.shape} and {b.shape}")
    diff = a - b
    wins = (diff > 0).astype(float) + 0.5 * (diff == 0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, diff.size, size=(samples, diff.size))
    boot_delta = diff[idx].mean(axis=1)
    boot_win = wins[idx].mean(axis=1)
    lo, hi = (1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100
    nonzero = diff[diff != 0]
    p_value = float(scipy_stats.wilcoxon(nonzero).pvalue) if nonzero.size >= 1 else 1.0
    return {
        "n": int(diff.size),
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
