"""Paper figure 1: the DPO paper's reward–KL frontier (its Fig. 2, left) in miniature, for DPO and IPO.

    flock /tmp/prefopt-heavy.lock python experiments/paper_frontier.py frontier   # the runs (~30 min here)
    python paper_figures/fig1_reward_kl_frontier.py                               # this figure, seconds

Reads only the run directories in paper_figures/sweeps/frontier*/ (config.yaml, summary.json) and writes
paper_figures/fig1_reward_kl_frontier.png, printing the numbers it plots.

Scale, honestly: SmolLM2-135M-Instruct on 2 shared CPU cores; 3 optimizer steps of 4 built-in sentiment
pairs per run (lr 1e-4); β in {0.05, 0.5}; the reward is VADER's compound score of one sampled
completion (16 new tokens) for each of 16 held-out prompts, the KL is the sampled sequence-level
estimate E_{y~π}[log π(y|x) − log π_ref(y|x)] over the same samples. The DPO paper trains GPT-2-large on
IMDb for thousands of steps; this shows the instrument end to end, not that result. With 16 prompts the
CIs are wide: read the points, not the ranking.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import matplotlib.pyplot as plt  # noqa: E402

from analysis import load_runs, plots  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Every frontier sweep folder (a rerun of a failed job, or extra β, sits beside the first sweep).
    parser.add_argument("--runs", nargs="+",
                        default=[str(p) for p in sorted((ROOT / "paper_figures" / "sweeps").glob("frontier*"))])
    parser.add_argument("--out", default=str(ROOT / "paper_figures" / "fig1_reward_kl_frontier.png"))
    args = parser.parse_args()
    runs = load_runs(args.runs)
    done = runs[runs["status"] == "completed"]
    if done.empty:
        raise SystemExit(f"{args.runs}: no completed runs; run experiments/paper_frontier.py frontier first")
    if len(done) < len(runs):
        print(f"note: {len(runs) - len(done)} of {len(runs)} runs are not completed and are left out")
    columns = ["loss", "beta", "steps", "sentiment/kl_estimate", "sentiment/kl_ci_low", "sentiment/kl_ci_high",
               "sentiment/policy_mean", "sentiment/reference_mean", "sentiment/delta", "sentiment/delta_ci_low",
               "sentiment/delta_ci_high", "sentiment/wilcoxon_p", "sentiment/win_rate", "eval/rewards/margins",
               "eval/rewards/accuracies"]
    table = done[[c for c in columns if c in done]].sort_values(["loss", "beta"])
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    plots.plot_reward_kl_frontier(done, "sentiment", ax=left)
    left.set_title("reward vs KL(π‖π_ref), one point per run")
    plots.plot_benchmark_delta(done, "sentiment", ax=right)
    right.set_title("VADER reward: policy − reference (95% CI)")
    n_prompts = int(done["sentiment/n"].iloc[0])
    fig.suptitle(f"SmolLM2-135M, sentiment pairs, {int(done['steps'].max())} steps × 4 pairs per run; "
                 f"{n_prompts} held-out prompts", fontsize=10)
    fig.tight_layout()
    print(f"wrote {plots.save(fig, args.out)}")


if __name__ == "__main__":
    main()
