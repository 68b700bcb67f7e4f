"""Paper figure 1: the DPO paper's reward–KL frontier (its Fig. 2, left) in miniature, for DPO and IPO.

    python experiments/laboratory_demo.py run losses       # the runs (about an hour on 2 cores, with the others)
    python paper_figures/fig1_reward_kl_frontier.py        # this figure, seconds

Reads only run directories through ``prefopt.study`` (the same numbers as ``python -m prefopt.study``,
aggregated over seeds): by default the dpo and ipo runs of the laboratory demonstration
(experiments/demos/losses_dpo and losses_other: β ∈ {0.01, 0.1, 1.0}, seeds 1, 2, 3), ``--runs`` for others
(paper_figures/sweeps/frontier*/, made by ``experiments/paper_frontier.py frontier``), and writes
paper_figures/fig1_reward_kl_frontier.png with .pdf and .svg beside it, printing the numbers it plots.
Left: each loss's frontier, its β joined in order, with 95% CIs on both axes (a crossed bootstrap over
seeds and prompts); β labels placed so that none overlaps another or a point. Right: each loss's reward
at a common KL grid, interpolated along its frontier (never extrapolated), with its CI. With one seed the
CIs cover prompts only, and the figure says so.

Scale, honestly: SmolLM2-135M-Instruct on 2 CPU cores, each run one epoch over 64 of the built-in sentiment
pairs, 8 pairs per step = 8 steps, lr 3e-5, β in {0.01, 0.1, 1.0} for dpo and ipo, 3 seeds, reference log-probs
precomputed once. The reward is VADER's compound score of one sampled completion (40 new tokens) for each of the
first 64 held-out prompts; the KL is the sampled sequence-level estimate E_{y~π}[log π(y|x) − log π_ref(y|x)]
over the same samples. The DPO paper trains GPT-2-large on IMDb for thousands of steps; this shows the
instrument end to end at a scale a CPU finishes, not that result: read the CIs before the ranking.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from analysis import study  # noqa: E402
from prefopt.io import atomic_write_bytes  # noqa: E402

# Vector files must not depend on the machine's clock or font subsetting ids, so reruns diff cleanly.
SAVE = {"png": {"dpi": 130}, "pdf": {"metadata": {"CreationDate": None}}, "svg": {"metadata": {"Date": None}}}


def demo_runs(losses: tuple[str, ...]) -> list[str]:
    """The laboratory demonstration's run folders (experiments/laboratory_demo.py) that train these losses."""
    import yaml

    runs = []
    for config in sorted((ROOT / "experiments" / "demos").glob("losses_*/[0-9]*/config.yaml")):
        if set(yaml.safe_load(config.read_text()).get("loss") or {}) & set(losses):
            runs.append(str(config.parent))
    if not runs:
        sys.exit("fig1: no dpo/ipo run in experiments/demos/losses_* (run `python experiments/laboratory_demo.py "
                 "run losses`, or pass --runs)")
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Every frontier sweep folder (a rerun of a failed job, or extra β or seeds, sits beside the first sweep).
    parser.add_argument("--runs", nargs="+", default=None, help="run or sweep folders (default: the demo's dpo, ipo)")
    parser.add_argument("--out", default=str(ROOT / "paper_figures" / "fig1_reward_kl_frontier.png"))
    parser.add_argument("--bootstrap", type=int, default=2000)
    args = parser.parse_args()
    result = study.run_study(args.runs or demo_runs(("dpo", "ipo")), write=False, replicates=args.bootstrap)
    frames = study.frames(result)
    cols = ["condition", "seeds", "prompts", "kl", "kl_ci_low", "kl_ci_high", "reward", "reward_ci_low",
            "reward_ci_high", "delta", "delta_ci_low", "delta_ci_high"]
    print(frames["conditions"][cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(frames["at_kl"][["frontier", "kl", "estimate", "ci_low", "ci_high"]].to_string(
        index=False, float_format=lambda v: f"{v:.4f}"))
    for m in result["missing"]:
        print(f"left out: {m['run'] or m['condition']} ({m['status']})")

    seeds = result["design"]["seeds"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    study.plot_frontiers(result, ax=left)
    left.set_title("reward vs KL(π‖π_ref): each loss's β in order, 95% CIs")
    if result["kl_grid"]:
        study.plot_equal_kl(result, ax=right)
    right.set_title("reward at equal KL (interpolated along each frontier)")
    note = (f"{len(seeds)} seeds ({', '.join(map(str, seeds))}): CIs over seeds and prompts" if len(seeds) > 1 else
            f"1 seed ({seeds[0]}): CIs over prompts only; seed-to-seed variance not included")
    fig.suptitle(f"SmolLM2-135M, sentiment pairs; {result['design']['prompts']} held-out prompts; {note}",
                 fontsize=10)
    fig.tight_layout()
    out = Path(args.out)
    for fmt, options in SAVE.items():
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, **options)
        path = out.with_suffix(f".{fmt}")
        atomic_write_bytes(path, buf.getvalue())
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
