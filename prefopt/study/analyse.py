"""From a ``Study``'s tables to every number of the report (``study.json``).

Per condition (loss, β, other swept keys): the gold reward (the policy's mean benchmark score), its delta
vs the reference model on the same prompts, the sampled KL(π‖π_ref), and the per-run train / held-out
preference metrics, monitors and compute figures, each with a bootstrap CI over seeds and prompts (items)
or over seeds (per-run scalars). Per frontier (a loss at fixed other keys, its β in order): the points
with both CIs, and the reward interpolated at a common KL grid. Pairwise comparisons between losses at
equal β (paired on seed and prompt) and at equal KL (the difference of interpolated rewards), all pairs
corrected together with Holm, each with its minimum detectable difference, variance components and the
seeds x prompts a target difference would need. Training curves as a mean and a min-max band over seeds.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from prefopt.study import stats
from prefopt.study.data import CURVES, Study, is_unset

ITEM_METRICS = {"reward": "gold reward (policy's mean benchmark score)",
                "delta": "policy − reference on the same prompts",
                "kl": "sampled KL(π‖π_ref) per completion"}
PLAN_SEEDS = (2, 3, 5, 10, 20)


def _interval(replicates: np.ndarray, confidence: float) -> dict[str, float]:
    lo, hi = stats.percentile_ci(replicates, confidence)
    finite = replicates[np.isfinite(replicates)]
    return {"ci_low": lo, "ci_high": hi, "se": float(finite.std(ddof=1)) if finite.size > 1 else math.nan}


def default_kl_grid(frontiers: list[dict], points: int = 5) -> list[float]:
    """``points`` KL values evenly spread over the range every frontier covers (their overlap), or over
    their union when they do not overlap (then each frontier covers only part of the grid)."""
    ranges = [(min(p["kl"] for p in f["points"]), max(p["kl"] for p in f["points"])) for f in frontiers
              if f["points"] and all(math.isfinite(p["kl"]) for p in f["points"])]
    if not ranges:
        return []
    lo, hi = max(r[0] for r in ranges), min(r[1] for r in ranges)
    if not lo < hi:
        lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
    if not lo < hi:
        return [float(lo)]
    return [float(v) for v in np.linspace(lo, hi, points)]


def analyse(study: Study, *, replicates: int = 2000, seed: int = 0, target: float | None = None,
            kl_grid: list[float] | None = None, alpha: float = stats.ALPHA, confidence: float = 0.95) -> dict:
    runs = study.runs
    done = runs[runs["status"] == "completed"]
    conditions = sorted(done["condition"].unique())
    seeds = sorted(done["seed"].unique().tolist())
    prompts = sorted(study.items["prompt_id"].unique())
    index = pd.MultiIndex.from_product([conditions, seeds, prompts], names=["condition", "seed", "prompt_id"])
    items = study.items
    cells = items.groupby(["condition", "seed", "prompt_id"])[list(ITEM_METRICS)].mean()
    X = {m: cells[m].reindex(index).to_numpy().reshape(len(conditions), len(seeds), len(prompts))
         for m in ITEM_METRICS}
    scalar_cols = [c for c in done.columns if c.startswith(("train/", "eval/", "compute/"))]
    per_run = done.groupby(["condition", "seed"])[scalar_cols].mean() if scalar_cols else None
    Y = {c: per_run[c].reindex(pd.MultiIndex.from_product([conditions, seeds])).to_numpy().reshape(
        len(conditions), len(seeds)) for c in scalar_cols} if per_run is not None else {}

    rng = np.random.default_rng(seed)
    ws, wp = stats.bootstrap_draws(len(seeds), len(prompts), replicates, rng)
    ones_s, ones_p = np.ones((1, len(seeds))), np.ones((1, len(prompts)))
    boot = {m: stats.weighted_means(X[m], ws, wp) for m in ITEM_METRICS}
    point = {m: stats.weighted_means(X[m], ones_s, ones_p)[0] for m in ITEM_METRICS}
    seed_boot = {c: stats.seed_means(Y[c], ws) for c in Y}
    seed_point = {c: stats.seed_means(Y[c], ones_s)[0] for c in Y}

    keyvals = done.drop_duplicates("condition").set_index("condition")
    cond_out = []
    for i, cond in enumerate(conditions):
        sub = items[items["condition"] == cond]
        entry = {"condition": cond, **{k: _plain(keyvals.loc[cond, k]) for k in study.keys},
                 "runs": int((done["condition"] == cond).sum()),
                 "seeds": sorted(_plain(s) for s in done[done["condition"] == cond]["seed"].unique()),
                 "prompts": int(sub["prompt_id"].nunique()), "items": int(len(sub)), "metrics": {}}
        for m in ITEM_METRICS:
            entry["metrics"][m] = {"estimate": float(point[m][i]), **_interval(boot[m][:, i], confidence)}
        for c in Y:
            entry["metrics"][c] = {"estimate": float(seed_point[c][i]), **_interval(seed_boot[c][:, i], confidence)}
        cond_out.append(entry)

    frontiers = _frontiers(cond_out, study.keys, conditions, boot, point, confidence)
    grid = list(kl_grid) if kl_grid else default_kl_grid(frontiers)
    for f in frontiers:
        idx = f["_idx"]
        at_point = stats.interpolate_frontier(point["kl"][idx], point["reward"][idx], grid)
        at_boot = stats.interpolate_frontier(boot["kl"][:, idx], boot["reward"][:, idx], grid)
        f["_at_boot"] = at_boot
        f["at_kl"] = []
        for g, k in enumerate(grid):
            covered = bool(np.isfinite(at_point[g]))
            share = float(np.isfinite(at_boot[:, g]).mean())
            entry = {"kl": k, "covered": covered, "replicates_covered": share,
                     "estimate": float(at_point[g]) if covered else None}
            entry.update(_interval(at_boot[:, g], confidence) if covered else {"ci_low": None, "ci_high": None,
                                                                               "se": None})
            f["at_kl"].append(entry)

    pairs = _equal_beta_pairs(cond_out, study.keys, conditions, X["reward"], ws, wp, target, alpha, confidence)
    pairs += _equal_kl_pairs(frontiers, grid, pairs, len(seeds), len(prompts), confidence)
    adjusted = stats.holm([p["p"] for p in pairs])
    for p, q in zip(pairs, adjusted, strict=True):
        p["p_holm"] = None if math.isnan(q) else float(q)
        p["resolved"] = bool(p["p_holm"] is not None and p["p_holm"] < alpha)
    m = sum(p["p"] is not None and not math.isnan(p["p"]) for p in pairs)
    for p in pairs:
        finite = math.isfinite(p["se"]) and math.isfinite(p["df"])
        p["mde"] = stats.mde(p["se"], alpha, df=p["df"]) if finite else None
        # Holm's first step tests at alpha/m: the MDE of a pair that must pass it.
        p["mde_holm"] = stats.mde(p["se"], alpha / m, df=p["df"]) if finite and m else None

    for f in frontiers:
        del f["_idx"], f["_at_boot"]
    samples = int(items.groupby(["run", "prompt_id"])["sample"].nunique().max())
    warnings = _warnings(len(seeds), done)
    return {
        "benchmark": study.benchmark,
        "sweep_dirs": [str(d) for d in study.dirs],
        "keys": study.keys,
        "design": {"seeds": [_plain(s) for s in seeds], "prompts": len(prompts),
                   "samples_per_prompt": samples, "conditions": len(conditions), "runs": int(len(runs)),
                   "completed": int(len(done))},
        "method": {"bootstrap": "crossed seed x prompt (pigeonhole) percentile bootstrap, shared draws across "
                                "conditions (per-condition CIs, frontiers, equal-KL SEs)",
                   "pairwise": "crossed random-effects t-test (method-of-moments SE, Satterthwaite df)", "replicates": replicates, "seed": seed, "confidence": confidence,
                   "alpha": alpha, "power": stats.POWER, "correction": "holm", "target_difference": target,
                   "z_sum": stats.z_sum(alpha)},
        "metrics": {**ITEM_METRICS, **{c: "per-run value, CI over seeds" for c in scalar_cols}},
        "conditions": cond_out,
        "kl_grid": grid,
        "frontiers": frontiers,
        "pairs": pairs,
        "curves": _curves(study),
        "missing": study.missing,
        "warnings": warnings,
    }


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _frontiers(cond_out, keys, conditions, boot, point, confidence) -> list[dict]:
    other = [k for k in keys if k != "beta"]
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(cond_out):
        groups.setdefault(tuple(json_key(c.get(k)) for k in other), []).append(i)
    out = []
    for _, idx in sorted(groups.items()):
        idx = sorted(idx, key=lambda i: (cond_out[i]["beta"] is None, cond_out[i]["beta"] or 0))
        first = cond_out[idx[0]]
        label = " ".join([str(first["loss"])] + [f"{k}={first.get(k)}" for k in other[1:] if not is_unset(first.get(k))])
        pts = []
        for i in idx:
            mt = cond_out[i]["metrics"]
            pts.append({"condition": conditions[i], "beta": cond_out[i]["beta"],
                        "kl": mt["kl"]["estimate"], "kl_ci": [mt["kl"]["ci_low"], mt["kl"]["ci_high"]],
                        "reward": mt["reward"]["estimate"],
                        "reward_ci": [mt["reward"]["ci_low"], mt["reward"]["ci_high"]]})
        out.append({"frontier": label, **{k: cond_out[idx[0]].get(k) for k in other}, "points": pts, "_idx": idx})
    return out


def json_key(value) -> str:
    return repr(value)


def differing_keys(a: dict, b: dict, keys: list[str]) -> list[str] | None:
    """The keys two conditions (or frontiers) at the same β differ in, when they are compared: either in the
    loss alone (its name and ``loss.*`` hyperparameters: dpo vs robust with its ε) or in the rest of the config
    alone (label noise, adaptive β, the regime, an ExPO α: the same loss trained or used another way). A pair
    that differs in both has no single cause and is not compared; None then, and for different β."""
    if json_key(a.get("beta")) != json_key(b.get("beta")):
        return None
    differ = [k for k in keys if k != "beta" and json_key(a.get(k)) != json_key(b.get(k))]
    in_loss = [k for k in differ if k == "loss" or k.startswith("loss.")]
    if not differ or (in_loss and len(in_loss) < len(differ)):
        return None
    return differ


def _equal_beta_pairs(cond_out, keys, conditions, reward, ws, wp, target, alpha, confidence) -> list[dict]:
    """Every pair of conditions at the same β that differ in the loss alone or in the rest alone
    (``differing_keys``): the paired difference of gold reward."""
    order = sorted(range(len(cond_out)), key=lambda i: (str(cond_out[i]["loss"]), conditions[i]))
    out = []
    for i, j in itertools.combinations(order, 2):
        differ = differing_keys(cond_out[i], cond_out[j], keys)
        if differ is None:
            continue
        diff = reward[i] - reward[j]  # (S, P), NaN where either lacks the cell
        test = stats.paired_test(diff, alpha, confidence=confidence)
        boot = stats.weighted_means(diff, ws, wp)
        lo, hi = stats.percentile_ci(boot, confidence)
        comps = stats.variance_components(stats.complete_table(diff))
        n_seeds, n_prompts = test["seeds"], test["prompts"]
        entry = {"kind": "equal_beta", "a": conditions[i], "b": conditions[j], "differ": differ,
                 "at": {k: cond_out[i].get(k) for k in keys if k not in differ and not is_unset(cond_out[i].get(k))},
                 "metric": "reward",
                 "test": "crossed random-effects t (Satterthwaite df)", **test,
                 "bootstrap_ci": [lo, hi], "variance_components": comps,
                 "mde_from_components": stats.planned_mde(comps, n_seeds, n_prompts, alpha)
                 if comps["prompt"] is not None else None}
        if target is not None and comps["prompt"] is not None:
            # Without a seed component the prompt/cell split is not identified either: plan only the
            # seeds that were run.
            estimated = comps["seed"] is not None
            fewest = stats.seeds_needed(comps, target, alpha) if estimated else None
            options = sorted({n_seeds, *PLAN_SEEDS} | ({fewest} if fewest else set())) if estimated \
                else [n_seeds]
            entry["plan"] = {"target": target, "seed_variance_estimated": estimated, "fewest_seeds": fewest,
                             "options": [{"seeds": s, "prompts": stats.prompts_needed(comps, target, s, alpha)}
                                         for s in options]}
        out.append(entry)
    return out


def _equal_kl_pairs(frontiers, grid, beta_pairs, n_seeds, n_prompts, confidence) -> list[dict]:
    """Every pair of frontiers sharing their other keys, at each grid KL both cover: the difference of
    their interpolated rewards, its SE from the same (paired) bootstrap replicates, times sqrt(S/(S-1))
    (the bootstrap over S seeds shrinks their variance by (S-1)/S), tested with t at the smallest
    Satterthwaite df of the two losses' equal-β comparisons (S-1, or P-1 with one seed, when they share
    no β): the interpolated reward is a mix of adjacent β's rewards, whose differences those tests model."""
    out = []
    for fa, fb in itertools.combinations(frontiers, 2):
        keys = [k for k in fa if k not in ("frontier", "points", "at_kl", "_idx", "_at_boot")]
        differ = differing_keys(fa, fb, keys)
        if differ is None:
            continue
        names = {p["condition"] for p in fa["points"]} | {p["condition"] for p in fb["points"]}
        dfs = [p["df"] for p in beta_pairs if p["a"] in names and p["b"] in names and math.isfinite(p["df"])]
        df = min(dfs) if dfs else float(n_seeds - 1 if n_seeds > 1 else n_prompts - 1)
        inflate = math.sqrt(n_seeds / (n_seeds - 1)) if n_seeds > 1 else 1.0
        for g, k in enumerate(grid):
            if not (fa["at_kl"][g]["covered"] and fb["at_kl"][g]["covered"]):
                continue
            boot = fa["_at_boot"][:, g] - fb["_at_boot"][:, g]
            finite = boot[np.isfinite(boot)]
            est = fa["at_kl"][g]["estimate"] - fb["at_kl"][g]["estimate"]
            se = float(finite.std(ddof=1)) * inflate if finite.size > 1 else math.nan
            q = float(scipy_stats.t.ppf((1 + confidence) / 2, df))
            p = float(2 * scipy_stats.t.sf(abs(est) / se, df)) if se > 0 else (1.0 if est == 0 else 0.0)
            out.append({"kind": "equal_kl", "a": fa["frontier"], "b": fb["frontier"], "differ": differ, "at": {"kl": k},
                        "metric": "reward", "test": "bootstrap SE, t at the equal-β tests' df",
                        "difference": est, "se": se, "df": df, "p": p, "ci_low": est - q * se,
                        "ci_high": est + q * se, "bootstrap_ci": list(stats.percentile_ci(boot, confidence)),
                        "replicates_covered": float(finite.size / boot.size)})
    return out


def _curves(study: Study) -> list[dict]:
    if study.curves.empty:
        return []
    out = []
    for (cond, split, step), g in study.curves.groupby(["condition", "split", "step"], sort=True):
        row = {"condition": cond, "split": split, "step": int(step), "seeds": int(g["seed"].nunique())}
        for name in CURVES:
            values = g[name].dropna() if name in g else pd.Series(dtype=float)
            row[name] = {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())} \
                if len(values) else None
        out.append(row)
    return out


def _warnings(n_seeds: int, done: pd.DataFrame) -> list[str]:
    out = []
    if n_seeds == 1:
        out.append("one seed: the CIs cover prompts only; the seed-to-seed variance is neither estimated nor "
                   "included, and the plans assume it is 0")
    elif n_seeds < 5:
        out.append(f"{n_seeds} seeds: the per-condition bootstrap CIs understate the seed-to-seed part of the "
                   "uncertainty with so few seeds; the pairwise t-tests do not (see docs/study.md)")
    dup = done.groupby(["condition", "seed"]).size()
    for (cond, seed), n in dup[dup > 1].items():
        out.append(f"{n} completed runs of {cond} with seed {seed}: their items are averaged per prompt")
    return out
