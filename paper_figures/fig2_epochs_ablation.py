"""Paper figure 2: Zephyr's epochs ablation (variant α: 1 epoch, β: 3 epochs + β's filters) on SmolLM2.

    python experiments/paper_frontier.py epochs            # the 2 runs (~3 and ~6 min on 2 cores)
    python paper_figures/fig2_epochs_ablation.py           # this figure, seconds

Reads only paper_figures/sweeps/epochs/ (config.yaml, metrics.jsonl, summary.json) and writes
paper_figures/fig2_epochs_ablation.png, printing the numbers it plots.

Scale, honestly: SmolLM2-135M-Instruct, DPO β=0.1, lr 1e-5, 8 pairs per step, the size of the default run:
``variant=zephyr_alpha`` trains 1 epoch over the 64 built-in sentiment pairs (8 steps),
``variant=zephyr_beta`` 3 epochs (24 steps) over what the zephyr_beta data filters keep (summary.json
counts the drops). The benchmark delta is the sentiment benchmark's (48 held-out prompts, VADER), not
MT-Bench: Zephyr's ablation is Mistral-7B on UltraFeedback judged by GPT-4, far beyond a CPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import json  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402

from analysis import load_metrics, load_runs, plots  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=str(ROOT / "paper_figures" / "sweeps" / "epochs"))
    parser.add_argument("--out", default=str(ROOT / "paper_figures" / "fig2_epochs_ablation.png"))
    args = parser.parse_args()
    runs = load_runs(args.runs)
    runs = runs[runs["status"] == "completed"]
    if runs.empty:
        raise SystemExit(f"{args.runs}: no completed runs; run experiments/paper_frontier.py epochs first")
    steps = load_metrics(args.runs, runs)
    train = steps[steps["split"] == "train"]
    columns = ["variant", "epochs", "steps", "train/rewards/margins", "eval/rewards/margins", "eval/rewards/accuracies",
               "sentiment/policy_mean", "sentiment/reference_mean", "sentiment/delta", "sentiment/delta_ci_low",
               "sentiment/delta_ci_high", "sentiment/wilcoxon_p", "sentiment/kl_estimate"]
    print(runs[[c for c in columns if c in runs]].sort_values("epochs").to_string(index=False,
                                                                                float_format=lambda v: f"{v:.4f}"))

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    colors = {"zephyr_alpha": "tab:blue", "zephyr_beta": "tab:orange"}
    # Both variants share the seed, so their first steps coincide: α is drawn wide underneath.
    styles = {"zephyr_alpha": dict(fmt="s-", lw=3, alpha=0.5, ms=6), "zephyr_beta": dict(fmt="o--", lw=1.5, ms=3)}
    for variant, curve in train.groupby("variant"):
        curve = curve.sort_values("step")
        label = f"{variant} ({int(curve['epochs'].iloc[0])} epoch{'s' if curve['epochs'].iloc[0] > 1 else ''})"
        style = dict(styles.get(variant, {"fmt": "o-"}))
        fmt = style.pop("fmt")
        for ax, column in zip(axes[:2], ("rewards/margins", "rewards/accuracies"), strict=True):
            ax.plot(curve["step"], curve[column], fmt, color=colors.get(variant), label=label, **style)
    axes[0].axhline(0, color="grey", lw=0.8)
    axes[0].set_ylabel("train rewards/margins")
    axes[1].set_ylabel("train rewards/accuracies")
    for ax in axes[:2]:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ordered = runs.sort_values("epochs")
    x = range(len(ordered))
    delta = ordered["sentiment/delta"]
    axes[2].errorbar(list(x), delta, yerr=[delta - ordered["sentiment/delta_ci_low"],
                                           ordered["sentiment/delta_ci_high"] - delta],
                     fmt="o", capsize=4, color="black")
    axes[2].set_xticks(list(x), [f"{v}\n{int(e)} ep" for v, e in zip(ordered["variant"], ordered["epochs"], strict=True)])
    axes[2].axhline(0, color="grey", lw=0.8)
    axes[2].set_xlim(-0.5, len(ordered) - 0.5)
    axes[2].set_ylabel("VADER reward, policy − reference")
    axes[2].set_title("benchmark delta (95% paired-bootstrap CI)", fontsize=9)
    axes[2].grid(alpha=0.3)
    pairs = [json.loads((Path(d) / "summary.json").read_text())["data"]["train_rows"] for d in ordered["run_dir"]]
    fig.suptitle("Zephyr epochs ablation: SmolLM2-135M, DPO β=0.1, "
                 + " / ".join(f"{v} {n} pairs" for v, n in zip(ordered["variant"], pairs, strict=True)), fontsize=10)
    fig.tight_layout()
    print(f"wrote {plots.save(fig, args.out)}")


if __name__ == "__main__":
    main()
