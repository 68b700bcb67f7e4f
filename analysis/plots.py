"""The sweep plots: reward margins/accuracies over steps, benchmark delta vs β, the reward–KL frontier.

Every function takes the tables of ``analysis.runs`` and returns a matplotlib Figure (nothing is shown
or saved here; ``save(fig, path)`` writes a PNG atomically).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def _beta_colors(betas) -> dict:
    betas = sorted({float(b) for b in betas if b is not None and not pd.isna(b)})
    cmap = plt.get_cmap("viridis")
    if len(betas) == 1:
        return {betas[0]: cmap(0.5)}
    logs = [math.log(b) for b in betas]
    lo, hi = min(logs), max(logs)
    return {b: cmap(0.1 + 0.8 * (math.log(b) - lo) / (hi - lo)) for b in betas}


def _group_label(row, by: list[str]) -> str:
    return ", ".join(f"{k}={row[k]}" for k in by if k in row and row[k] is not None and not pd.isna(row[k]))


def plot_reward_margins(metrics: pd.DataFrame, split: str = "train",
                        columns: tuple[str, ...] = ("rewards/margins", "rewards/accuracies"),
                        panel: str = "loss", extra: tuple[str, ...] = ("variant", "seed")):
    """One column of panels per ``panel`` value (loss), one row per metric, one line per run coloured
    by β. ``split="eval"`` plots the held-out ``eval/...`` records instead of the training ones."""
    data = metrics[metrics["split"] == split]
    names = [f"eval/{c}" if split == "eval" and not c.startswith("eval/") else c for c in columns]
    names = [c for c in names if c in data.columns]
    if data.empty or not names:
        raise ValueError(f"no {split} records with {list(columns)} in these runs")
    panels = sorted(data[panel].dropna().unique(), key=str)
    colors = _beta_colors(data["beta"])
    fig, axes = plt.subplots(len(names), len(panels), figsize=(4.2 * len(panels), 3.0 * len(names)),
                             squeeze=False, sharex=True)
    varying = [k for k in extra if k in data.columns and data[k].nunique(dropna=True) > 1]
    styles = ["-", "--", ":", "-."]
    for j, value in enumerate(panels):
        sub = data[data[panel] == value]
        for _run, curve in sub.groupby("run", sort=True):
            curve = curve.sort_values("step")
            beta = float(curve["beta"].iloc[0])
            style = 0
            if varying:
                key = tuple(curve[k].iloc[0] for k in varying)
                keys = sorted({tuple(r) for r in data[varying].drop_duplicates().itertuples(index=False)}, key=str)
                style = keys.index(key) % len(styles)
            label = f"β={beta:g}" + (f", {_group_label(curve.iloc[0], varying)}" if varying else "")
            for i, name in enumerate(names):
                axes[i][j].plot(curve["step"], curve[name], styles[style], color=colors[beta], label=label,
                                marker="o" if len(curve) < 4 else None, ms=3)
        for i, name in enumerate(names):
            ax = axes[i][j]
            ax.set_title(f"{panel}={value}" if i == 0 else "")
            ax.set_ylabel(name if j == 0 else "")
            ax.grid(alpha=0.3)
            if "margins" in name:
                ax.axhline(0, color="grey", lw=0.8)
        axes[-1][j].set_xlabel("optimizer step")
        axes[0][j].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_benchmark_delta(runs: pd.DataFrame, benchmark: str = "sentiment", line: str = "loss", ax=None):
    """The benchmark's policy-minus-reference delta vs β with its 95% bootstrap CI, one line per loss.
    Draws into ``ax`` when given (then returns its figure)."""
    col = f"{benchmark}/delta"
    if col not in runs.columns:
        raise ValueError(f"no {benchmark} benchmark results in these runs (column {col!r} missing)")
    data = runs.dropna(subset=[col, "beta"])
    fig, ax = plt.subplots(figsize=(5.5, 3.8)) if ax is None else (ax.figure, ax)
    for value, sub in data.groupby(line, sort=True):
        sub = sub.sort_values("beta")
        low = sub[col] - sub[f"{benchmark}/delta_ci_low"]
        high = sub[f"{benchmark}/delta_ci_high"] - sub[col]
        ax.errorbar(sub["beta"], sub[col], yerr=[low, high], marker="o", capsize=3, label=f"{line}={value}")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    betas = sorted(data["beta"].unique())
    ax.set_xticks(betas, [f"{b:g}" for b in betas])
    ax.minorticks_off()
    ax.set_xlabel("β")
    ax.set_ylabel(f"{benchmark}: policy − reference (95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_reward_kl_frontier(runs: pd.DataFrame, benchmark: str = "sentiment", color: str = "loss", ax=None):
    """Mean ground-truth reward vs the sampled KL(π‖π_ref), one point per run, annotated with β.

    Error bars: x, the bootstrap CI of the KL estimate; y, the delta's CI moved onto the policy's mean
    (the reference samples are the same for every run: same model, prompts and seeds). The dashed line
    is the reference model's mean reward."""
    need = [f"{benchmark}/kl_estimate", f"{benchmark}/policy_mean"]
    missing = [c for c in need if c not in runs.columns]
    if missing:
        raise ValueError(f"no reward/KL figures in these runs (missing {missing})")
    data = runs.dropna(subset=need)
    fig, ax = plt.subplots(figsize=(5.5, 4.0)) if ax is None else (ax.figure, ax)
    for k, (value, sub) in enumerate(data.groupby(color, sort=True)):
        sub = sub.sort_values("beta")
        x, y = sub[f"{benchmark}/kl_estimate"], sub[f"{benchmark}/policy_mean"]
        xerr = [x - sub[f"{benchmark}/kl_ci_low"], sub[f"{benchmark}/kl_ci_high"] - x] \
            if f"{benchmark}/kl_ci_low" in sub else None
        yerr = [sub[f"{benchmark}/delta"] - sub[f"{benchmark}/delta_ci_low"],
                sub[f"{benchmark}/delta_ci_high"] - sub[f"{benchmark}/delta"]]
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", capsize=2, label=f"{color}={value}", alpha=0.9)
        for i, (xi, yi, beta) in enumerate(zip(x, y, sub["beta"], strict=True)):
            # Staggered per group and point so that coinciding points' labels stay legible.
            ax.annotate(f"{value}, β={beta:g}", (xi, yi), textcoords="offset points",
                        xytext=(4, 4 - 10 * k - 8 * i * len(data[color].unique())), fontsize=7)
    ref = data[f"{benchmark}/reference_mean"]
    if len(ref):
        ax.axhline(float(np.mean(ref)), color="grey", ls="--", lw=1, label="reference model")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.ticklabel_format(axis="both", useOffset=False)
    ax.set_xlabel("KL(π‖π_ref), sampled estimate (nats per completion)")
    ax.set_ylabel(f"mean reward ({benchmark})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save(fig, path: str | os.PathLike, dpi: int = 130) -> Path:
    """Write a PNG atomically (temp file + rename), so a crash never leaves a truncated figure."""
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
