"""Paper figure 1: the DPO paper's reward–KL frontier (its Fig. 2, left) in miniature, for DPO and IPO.

    python experiments/paper_frontier.py frontier          # the 6 runs (3-15 min each on 2 cores)
    python paper_figures/fig1_reward_kl_frontier.py        # this figure, seconds

Reads only the run directories in paper_figures/sweeps/frontier*/ (config.yaml, summary.json) and writes
paper_figures/fig1_reward_kl_frontier.png, printing the numbers it plots.

Scale, honestly: SmolLM2-135M-Instruct on 2 CPU cores, each run the size of the README's default run
(3 epochs over 64 of the built-in sentiment pairs, 8 pairs per step = 24 steps, lr 1e-5), β in
{0.01, 0.1, 1.0} for dpo and ipo, reference log-probs precomputed once for the sweep. The reward is
VADER's compound score of one sampled completion (40 new tokens) for each of the 48 held-out prompts; the
KL is the sampled sequence-level estimate E_{y~π}[log π(y|x) − log π_ref(y|x)] over the same samples. The
DPO paper trains GPT-2-large on IMDb for thousands of steps; this shows the instrument end to end at a
scale a CPU finishes, not that result. With 48 prompts the CIs are wide: read the points, not the ranking.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

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
    trainer = yaml.safe_load((Path(done["run_dir"].iloc[0]) / "config.yaml").read_text())["trainer"]
    per_step = trainer["batch_size"] * trainer["grad_accum"]
    fig.suptitle(f"SmolLM2-135M, sentiment pairs, {int(done['steps'].max())} steps × {per_step} pairs per run; "
                 f"{n_prompts} held-out prompts", fontsize=10)
    fig.tight_layout()
    print(f"wrote {plots.save(fig, args.out)}")


if __name__ == "__main__":
    main()
