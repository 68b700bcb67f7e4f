"""The statistics of a study: a crossed (seed x prompt) cluster bootstrap, paired differences, Holm's
correction, variance components, the minimum detectable difference and the design a target needs.

Everything here is a pure function over numpy arrays. A condition's per-item measurements are first
averaged into a cell per (seed, prompt): an array ``X`` of shape (conditions, seeds, prompts), NaN where a
cell is missing (a failed run, a prompt a run did not score). The sampled completions of a prompt stay
together inside their cell, so pairing two conditions on (seed, prompt_id) pairs their samples too.

The bootstrap (Owen 2007, "The pigeonhole bootstrap", Ann. Appl. Stat. 1(2)): each replicate draws seeds
with replacement, then prompts with replacement, and the one prompt draw applies to every seed, because
the prompts are the same in every seed (seeds and prompts are crossed factors, not nested ones). All
conditions share a replicate's draws, so any difference between conditions is a paired one. A draw is a
pair of count vectors (``ws`` over seeds, ``wp`` over prompts), and a condition's replicate mean is
``sum_sp ws[s] X[s,p] wp[p] / sum_sp ws[s] M[s,p] wp[p]`` with ``M`` the mask of present cells.

For y[s,p] = mu + a_s + b_p + e_sp the variance of the grand mean is
``sigma_s^2/S + sigma_p^2/P + sigma_e^2/(S P)`` (``design_se``); the pigeonhole bootstrap's is about
``sigma_s^2/S + sigma_p^2/P + 3 sigma_e^2/(S P)``, so it errs on the wide side when the cell noise
dominates. With few seeds the seed term goes the other way: a percentile bootstrap over S clusters shrinks
their variance by (S-1)/S and ignores the t-distribution's tails; ``docs/study.md`` gives the measured
false-positive rates of both regimes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as scipy_stats

POWER = 0.8
ALPHA = 0.05


def z_sum(alpha: float = ALPHA, power: float = POWER) -> float:
    """z_{1-alpha/2} + z_{power}: 1.95996 + 0.84162 = 2.80158 for a two-sided 5% test at 80% power."""
    return float(scipy_stats.norm.ppf(1 - alpha / 2) + scipy_stats.norm.ppf(power))


def bootstrap_draws(n_seeds: int, n_prompts: int, replicates: int, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Count vectors of ``replicates`` crossed draws: seeds (B, S) and prompts (B, P), each row summing to
    S (resp. P). One seed gives all-ones seed counts: its variance cannot be estimated and is not."""
    if replicates < 1:
        raise ValueError(f"bootstrap replicates={replicates}, must be >= 1")
    ws = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=replicates).astype(float)
    wp = rng.multinomial(n_prompts, np.full(n_prompts, 1.0 / n_prompts), size=replicates).astype(float)
    return ws, wp


def weighted_means(X: np.ndarray, ws: np.ndarray, wp: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Each replicate's mean over present cells of each condition: X (C, S, P) -> (B, C); NaN when a
    replicate drew no present cell of a condition. ``ws``/``wp`` of ones give the plain cell mean."""
    X = np.asarray(X, dtype=float)
    if X.ndim == 2:
        return weighted_means(X[None], ws, wp, chunk)[:, 0]
    present = np.isfinite(X)
    values = np.where(present, X, 0.0)
    mask = present.astype(float)
    out = np.empty((ws.shape[0], X.shape[0]))
    for start in range(0, ws.shape[0], chunk):  # (chunk, C, P) intermediates, not (B, C, P)
        a, b = ws[start:start + chunk], wp[start:start + chunk]
        num = np.einsum("csp,bp->bcs", values, b)
        den = np.einsum("csp,bp->bcs", mask, b)
        num, den = np.einsum("bcs,bs->bc", num, a), np.einsum("bcs,bs->bc", den, a)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:start + chunk] = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out


def seed_means(Y: np.ndarray, ws: np.ndarray) -> np.ndarray:
    """Replicate means of per-run scalars Y (C, S) over the drawn seeds -> (B, C); NaN-aware."""
    Y = np.asarray(Y, dtype=float)
    present = np.isfinite(Y)
    num = ws @ np.where(present, Y, 0.0).T
    den = ws @ present.astype(float).T
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def percentile_ci(replicates: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """The percentile interval of the finite replicates (NaN, NaN when there are none)."""
    r = np.asarray(replicates, dtype=float)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(r, [(1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100])
    return float(lo), float(hi)


def bootstrap_p(replicates: np.ndarray) -> float:
    """Two-sided p-value of "the difference is 0" from its bootstrap replicates: twice the share on the
    far side of 0, with the +1 of Davison & Hinkley (1997, eq. 4.11) so that it is never 0. The percentile
    interval at level 1-alpha excludes 0 exactly when this is below alpha (up to that +1)."""
    r = np.asarray(replicates, dtype=float)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return math.nan
    below, above = int((r <= 0).sum()), int((r >= 0).sum())
    return float(min(1.0, 2 * (min(below, above) + 1) / (r.size + 1)))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979): sort ascending, multiply the i-th smallest (i from
    0) by m - i, take the running maximum, cap at 1. NaN p-values are left out of m and stay NaN."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    m = valid.size
    if m == 0:
        return out
    order = valid[np.argsort(p[valid], kind="stable")]
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out[order] = adjusted
    return out


def variance_components(Y: np.ndarray) -> dict[str, float | int | None]:
    """Method-of-moments variance components of a crossed seed x prompt table (two-way ANOVA without
    replication, random effects): Y (S, P) of cell values, using the prompts present in every seed.

        MS_seed = P sum_s (y_s. - y..)^2 / (S-1)        sigma_seed^2   = max(0, (MS_seed - MS_e) / P)
        MS_prompt = S sum_p (y_.p - y..)^2 / (P-1)      sigma_prompt^2 = max(0, (MS_prompt - MS_e) / S)
        MS_e = sum (y_sp - y_s. - y_.p + y..)^2 / ((S-1)(P-1))   sigma_cell^2 = MS_e

    With one seed the seed component cannot be estimated (None) and the cell noise cannot be told from
    the prompt component: the prompts' variance is returned as sigma_prompt^2 and sigma_cell^2 is 0."""
    Y = np.asarray(Y, dtype=float)
    Y = Y[:, np.isfinite(Y).all(axis=0)]
    S, P = Y.shape
    if P < 2:
        return {"seeds": S, "prompts": P, "seed": None, "prompt": None, "cell": None}
    if S == 1:
        return {"seeds": 1, "prompts": P, "seed": None, "prompt": float(Y[0].var(ddof=1)), "cell": 0.0}
    grand = Y.mean()
    by_seed, by_prompt = Y.mean(axis=1), Y.mean(axis=0)
    ms_seed = P * ((by_seed - grand) ** 2).sum() / (S - 1)
    ms_prompt = S * ((by_prompt - grand) ** 2).sum() / (P - 1)
    resid = Y - by_seed[:, None] - by_prompt[None, :] + grand
    ms_cell = (resid ** 2).sum() / ((S - 1) * (P - 1))
    return {"seeds": S, "prompts": P, "seed": float(max(0.0, (ms_seed - ms_cell) / P)),
            "prompt": float(max(0.0, (ms_prompt - ms_cell) / S)), "cell": float(ms_cell)}


def complete_table(Y: np.ndarray) -> np.ndarray:
    """The seeds that have any cell, then the prompts present in every one of those seeds."""
    Y = np.asarray(Y, dtype=float)
    Y = Y[np.isfinite(Y).any(axis=1)]
    return Y[:, np.isfinite(Y).all(axis=0)]


def mean_squares(Y: np.ndarray) -> dict[str, float]:
    """The two-way ANOVA mean squares (seed, prompt, cell) of a complete S x P table; seed and cell are
    NaN with one seed."""
    S, P = Y.shape
    grand = Y.mean()
    by_seed, by_prompt = Y.mean(axis=1), Y.mean(axis=0)
    ms_prompt = S * ((by_prompt - grand) ** 2).sum() / (P - 1) if P > 1 else math.nan
    if S == 1:
        return {"seed": math.nan, "prompt": ms_prompt, "cell": math.nan}
    resid = Y - by_seed[:, None] - by_prompt[None, :] + grand
    return {"seed": P * ((by_seed - grand) ** 2).sum() / (S - 1), "prompt": ms_prompt,
            "cell": (resid ** 2).sum() / ((S - 1) * (P - 1)) if P > 1 else math.nan}


def satterthwaite(seeds: int, prompts: int, ms: dict[str, float]) -> tuple[float, float]:
    """The variance of the grand mean of a crossed S x P table and its Satterthwaite degrees of freedom.

    E[MS_seed] = P s2 + e2, E[MS_prompt] = S p2 + e2, E[MS_cell] = e2, so (MS_seed + MS_prompt - MS_cell)
    / (S P) is unbiased for s2/S + p2/P + e2/(S P) (Clark 1973's quasi-F logic); its degrees of freedom
    are (sum of terms)^2 / sum(term^2 / df) (Satterthwaite 1946). When that sum is below the largest of
    the three mean squares (a factor's component estimated below 0), the largest alone is used, with its
    df: the variance of a mean is never below any one of its parts. With one seed: the
    prompts' mean square over P, with P - 1 degrees of freedom."""
    S, P = seeds, prompts
    if S == 1:
        return ms["prompt"] / P, float(P - 1)
    terms = [(ms["seed"], S - 1), (ms["prompt"], P - 1), (-ms["cell"], (S - 1) * (P - 1))]
    total = sum(t for t, _ in terms)
    largest = max([(ms["seed"], S - 1), (ms["prompt"], P - 1), (ms["cell"], (S - 1) * (P - 1))],
                  key=lambda t: t[0])
    if total < largest[0]:  # a factor's mean square below MS_cell (its component estimated as < 0)
        terms, total = [largest], largest[0]
    denom = sum(t * t / df for t, df in terms)
    df = total * total / denom if denom > 0 else math.inf
    return total / (S * P), float(df)


def paired_test(D: np.ndarray, alpha: float = ALPHA, power: float = POWER, confidence: float = 0.95) -> dict:
    """A t-test of "the mean paired difference is 0" over a crossed seed x prompt table of differences
    (cells of one condition minus another), seeds and prompts both random: the mean over the complete
    table, its standard error and Satterthwaite degrees of freedom (``satterthwaite``), the two-sided
    p-value, the t interval, and the minimum detectable difference (t_{df,1-alpha/2} + t_{df,power}) SE.

    A percentile bootstrap over 2-5 seeds cannot do this: it shrinks the seed variance by (S-1)/S and has
    normal tails where t_{S-1} has heavy ones (measured in docs/study.md); this test keeps its level."""
    Y = complete_table(D)
    S, P = Y.shape
    if S == 0 or P < 2:
        return {"difference": math.nan, "se": math.nan, "df": math.nan, "p": math.nan, "ci_low": math.nan,
                "ci_high": math.nan, "mde": math.nan, "seeds": S, "prompts": P}
    var, df = satterthwaite(S, P, mean_squares(Y))
    se = math.sqrt(max(var, 0.0))
    est = float(Y.mean())
    if se == 0:
        p = 1.0 if est == 0 else 0.0
    else:
        p = float(2 * scipy_stats.t.sf(abs(est) / se, df))
    q = float(scipy_stats.t.ppf((1 + confidence) / 2, df))
    return {"difference": est, "se": se, "df": df, "p": p, "ci_low": est - q * se, "ci_high": est + q * se,
            "mde": mde(se, alpha, power, df), "seeds": S, "prompts": P}


def design_se(components: dict, seeds: int, prompts: int) -> float:
    """Standard error of a mean over ``seeds`` x ``prompts`` cells: sqrt(s2/S + p2/P + e2/(S P)), an
    unestimated seed component counted as 0."""
    s2 = components.get("seed") or 0.0
    p2 = components.get("prompt") or 0.0
    e2 = components.get("cell") or 0.0
    return math.sqrt(s2 / seeds + p2 / prompts + e2 / (seeds * prompts))


def mde(se: float, alpha: float = ALPHA, power: float = POWER, df: float = math.inf) -> float:
    """The smallest true difference a two-sided level-alpha test resolves with probability ``power``:
    (q_{1-alpha/2} + q_{power}) * SE with q the t quantiles at ``df`` degrees of freedom, the normal ones
    by default (Cohen 1988, ch. 2: 2.8016 SE at 5% and 80%; the t form is the usual approximation of the
    noncentral t's power)."""
    if math.isinf(df):
        return z_sum(alpha, power) * se
    return float(scipy_stats.t.ppf(1 - alpha / 2, df) + scipy_stats.t.ppf(power, df)) * se


def planned_mde(components: dict, seeds: int, prompts: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The MDE of ``paired_test`` for a planned S x P design: the SE from the components, the t quantiles
    at the Satterthwaite df of the mean squares that design is expected to give (E[MS_seed] = P s2 + e2,
    E[MS_prompt] = S p2 + e2, E[MS_cell] = e2)."""
    s2 = components.get("seed") or 0.0
    p2 = components.get("prompt") or 0.0
    e2 = components.get("cell") or 0.0
    if seeds == 1:
        return mde(math.sqrt((p2 + e2) / prompts), alpha, power, prompts - 1)
    ms = {"seed": prompts * s2 + e2, "prompt": seeds * p2 + e2, "cell": e2}
    var, df = satterthwaite(seeds, prompts, ms)
    return mde(math.sqrt(max(var, 0.0)), alpha, power, df)


def prompts_needed(components: dict, target: float, seeds: int, alpha: float = ALPHA,
                   power: float = POWER, most: int = 1_000_000) -> int | None:
    """The fewest prompts (at least 2) with which ``seeds`` seeds resolve a true difference of ``target``
    at ``power`` (``planned_mde`` <= target). The normal approximation solves s2/S + p2/P + e2/(S P) <=
    (target / z_sum)^2 for a first P; the t quantiles then move it up, found by doubling and bisection.
    None when no number of prompts up to ``most`` does it (the seed term alone is too large: more seeds
    are needed, not more prompts)."""
    target = abs(target)
    if planned_mde(components, seeds, most, alpha, power) > target:
        return None
    s2 = components.get("seed") or 0.0
    room = (target / z_sum(alpha, power)) ** 2 - s2 / seeds
    p2, e2 = components.get("prompt") or 0.0, components.get("cell") or 0.0
    lo = max(2, math.ceil((p2 + e2 / seeds) / room)) if room > 0 else 2
    lo = min(lo, most)
    if planned_mde(components, seeds, lo, alpha, power) <= target:
        while lo > 2 and planned_mde(components, seeds, lo - 1, alpha, power) <= target:
            lo -= 1
        return lo
    hi = lo
    while planned_mde(components, seeds, hi, alpha, power) > target:
        lo, hi = hi, min(most, hi * 2)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if planned_mde(components, seeds, mid, alpha, power) <= target else (mid, hi)
    return hi


def interpolate_frontier(kl: np.ndarray, reward: np.ndarray, grid: Sequence[float]) -> np.ndarray:
    """The reward of a frontier at each KL of ``grid``, linear between points adjacent in β order.

    ``kl`` and ``reward`` are (..., n) with the n points in β order (a leading replicate axis is allowed).
    Where several segments span a grid value (a frontier that turns back), the highest reward is taken:
    the best the swept β achieve at that KL. Outside every segment the value is NaN: a frontier is never
    extrapolated. A segment of equal KL at both ends gives the better of its two rewards there."""
    kl = np.asarray(kl, dtype=float)
    reward = np.asarray(reward, dtype=float)
    grid = np.asarray(grid, dtype=float)
    out = np.full(kl.shape[:-1] + grid.shape, np.nan)
    n = kl.shape[-1]
    segments = [(i, i + 1) for i in range(n - 1)] or [(0, 0)]
    for g, k in enumerate(grid):
        best = np.full(kl.shape[:-1], -np.inf)
        for i, j in segments:
            k0, k1, r0, r1 = kl[..., i], kl[..., j], reward[..., i], reward[..., j]
            inside = (np.minimum(k0, k1) <= k) & (k <= np.maximum(k0, k1))
            span = k1 - k0
            with np.errstate(invalid="ignore", divide="ignore"):
                t = np.where(span != 0, (k - k0) / np.where(span != 0, span, 1.0), 0.0)
            value = np.where(span != 0, r0 + t * (r1 - r0), np.maximum(r0, r1))
            best = np.where(inside & np.isfinite(value), np.maximum(best, value), best)
        out[..., g] = np.where(np.isfinite(best), best, np.nan)
    return out


def seeds_needed(components: dict, target: float, alpha: float = ALPHA, power: float = POWER,
                 most: int = 10_000) -> int | None:
    """The fewest seeds (at least 2) with which some number of prompts resolves ``target`` (see
    ``prompts_needed``); None beyond ``most``. Monotone in the seeds, so doubling then bisection."""
    def ok(seeds: int) -> bool:
        return prompts_needed(components, target, seeds, alpha, power) is not None

    if ok(2):
        return 2
    lo, hi = 2, 4
    while not ok(hi):
        if hi >= most:
            return None
        lo, hi = hi, min(most, hi * 2)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi
