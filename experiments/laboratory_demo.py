"""The loss laboratory's demonstrations on SmolLM2-135M and the sentiment task (issues 11, 12 and 13).

    python experiments/laboratory_demo.py run losses noise methods expo regimes    # the runs, in that order
    python experiments/laboratory_demo.py study                                      # the four reports
    python experiments/laboratory_demo.py run losses --dry-run                       # print the commands only
    OMP_NUM_THREADS=1 python experiments/laboratory_demo.py run losses_dpo methods_adaptive noise methods_dpop &
    OMP_NUM_THREADS=1 python experiments/laboratory_demo.py run losses_other     # two 1-thread halves at once
    python experiments/laboratory_demo.py --smoke --root /tmp/demo run losses ...    # the same flow on model=tiny

Every training run has one size, chosen so that the ~60 runs fit about two hours of a 2-core CPU: 64 built-in
sentiment pairs, one epoch of 8 pairs per step (8 optimizer steps), lr 3e-5 (the default run's lr 1e-5 x 24
steps moves the policy about as far: Adam's steps scale with lr), then the sentiment benchmark on the first 64
held-out prompts, one sample each, 40 new tokens, policy and reference sampled from the same per-prompt streams
and scored by VADER. Seeds 1, 2, 3 vary the data order (and everything else the training seed touches); the
benchmark's prompts and sampling streams are the same in every run, so runs pair prompt by prompt.

Sweeps (each a Hydra multirun of ``prefopt.train`` into ``experiments/demos/<name>/``):

- ``losses`` (issue 11): dpo, ipo, simpo, robust (ε = 0.1) x β ∈ {0.01, 0.1, 1.0} x 3 seeds, 36 runs; the
  dpo runs keep their model for ``expo``.
- ``noise`` (issue 11): dpo and robust (ε = 0.2, the true flip rate) at β = 0.1 with
  ``dataset.label_noise=0.2`` (uniform), 3 seeds; compared with the clean runs of ``losses``.
- ``methods`` (issue 12): DPOP (λ = 50) at β = 0.1, and DPO with adaptive β (``adaptive_beta=beta_dpo``) at
  β_0 ∈ {0.01, 0.1, 1.0}, 3 seeds each; compared with ``losses``' fixed-β dpo runs.
- ``expo`` (issue 12): ``prefopt.extrapolate`` of the three seeds' dpo β = 0.1 runs at α ∈ {0.5, 1, 2}.
- ``regimes`` (issue 13): online DPO (4 samples per prompt, best vs worst by VADER, every step) over the same 64
  prompts, one epoch = 8 steps; iterative DPO, 2 rounds of 32 prompts x 4 samples, one epoch each = 4 + 4
  steps; 3 seeds each (``regime.seed`` follows the seed); compared with ``losses``' offline dpo β = 0.1.

``study`` writes ``experiments/demos/reports/<report>/`` (study.json, report.md, report.html, figures) with
``python -m prefopt.study``; the sweeps' run directories are committed beside them (models deleted), so every
number can be recomputed from the files.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMOS = ROOT / "experiments" / "demos"
SEEDS = "1,2,3"
BETAS = "0.01,0.1,1.0"
ALPHAS = "0.5,1.0,2.0"

SIZE = ["model=smollm2-135m", "dataset=sentiment", "benchmark=sentiment", "benchmark.num_prompts=64",
        "epochs=1", "optimizer.lr=3e-5", "trainer.progress_bar=false", "trainer.save_model=false"]
# Offline runs read the reference's log-probs from one cache (the same numbers as reference=frozen, 1e-5).
OFFLINE = SIZE + ["reference=precomputed"]

SWEEPS: dict[str, list[str]] = {
    "losses_dpo": OFFLINE + ["loss=dpo", f"beta={BETAS}", f"seed={SEEDS}", "trainer.save_model=true"],
    "losses_other": OFFLINE + ["loss=ipo,simpo,robust", f"beta={BETAS}", f"seed={SEEDS}"],
    # Two sweeps: loss.robust.* cannot be set in a job that trains dpo.
    "noise_dpo": OFFLINE + ["loss=dpo", "beta=0.1", "dataset.label_noise=0.2", f"seed={SEEDS}"],
    "noise_robust": OFFLINE + ["loss=robust", "beta=0.1", "loss.robust.label_smoothing=0.2",
                               "dataset.label_noise=0.2", f"seed={SEEDS}"],
    "methods_dpop": OFFLINE + ["loss=dpop", "beta=0.1", f"seed={SEEDS}"],
    "methods_adaptive": OFFLINE + ["loss=dpo", "adaptive_beta=beta_dpo", f"beta={BETAS}", f"seed={SEEDS}"],
    # regime.seed is null: the sampling streams follow the seed.
    "online": SIZE + ["experiment=online_dpo", "regime.max_new_tokens=40", "beta=0.1", f"seed={SEEDS}"],
    "iterative": SIZE + ["experiment=iterative_dpo", "regime.rounds=2", "dataset.max_train_rows=32",
                         "regime.max_new_tokens=40", "beta=0.1", f"seed={SEEDS}"],
}
GROUPS = {"losses": ["losses_dpo", "losses_other"], "noise": ["noise_dpo", "noise_robust"], "methods": ["methods_dpop", "methods_adaptive"],
          "regimes": ["online", "iterative"]}

# report name -> (run roots: a sweep, or "sweep:key=value,..." for the runs of it that match; study args).
# A report holds only the runs its question needs: every pair in it enters one Holm family.
REPORTS: dict[str, tuple[list[str], list[str]]] = {
    "issue11_losses": (["losses_dpo", "losses_other"], ["--target-diff", "0.1"]),
    "issue11_label_noise": (["noise_dpo", "noise_robust", "losses_dpo:beta=0.1", "losses_other:beta=0.1,loss=robust"], ["--target-diff", "0.1"]),
    "issue12_methods": (["methods_dpop", "methods_adaptive", "losses_dpo"], ["--target-diff", "0.1"]),
    "issue13_online": (["online", "iterative", "losses_dpo:beta=0.1"], ["--target-diff", "0.1"]),
}


# --smoke: the same sweeps and reports on model=tiny in seconds (tests/experiments/test_laboratory_demo.py):
# these keys replace the sweep's own values or are added; regime.* only where a regime is set.
SMOKE = {"model": "tiny", "benchmark.num_prompts": "4", "benchmark.max_new_tokens": "4", "dataset.max_train_rows": "8",
         "dataset.max_eval_rows": "2", "trainer.max_steps": "2"}
SMOKE_REGIME = {"regime.max_new_tokens": "4", "regime.temperature": "1.5"}
smoke = False


def sweep_overrides(name: str) -> list[str]:
    overrides = dict(item.split("=", 1) for item in SWEEPS[name])
    if smoke:
        regime = any(key == "experiment" for key in overrides)
        overrides |= SMOKE | (SMOKE_REGIME if regime else {})
    return [f"{key}={value}" for key, value in overrides.items()]


def sh(cmd: list[str], dry_run: bool) -> None:
    print("+", shlex.join(cmd), flush=True)
    if not dry_run:
        subprocess.run(cmd, cwd=ROOT, check=True)


def run_sweep(name: str, dry_run: bool) -> None:
    # Job folders are numbered: the override list would pass the 255-byte name limit; config.yaml has it all.
    sh([sys.executable, "-m", "prefopt.train", "-m", *sweep_overrides(name), f"hydra.sweep.dir={DEMOS / name}",
        "hydra.sweep.subdir=${hydra.job.num}"], dry_run)


def select(root: str) -> list[Path]:
    """``sweep`` -> [its folder]; ``sweep:key=value,...`` -> its run folders whose config matches every pair
    (``loss=NAME``: the run trains that loss)."""
    import yaml

    sweep, _, conditions = root.partition(":")
    if not conditions:
        return [DEMOS / sweep]
    wanted = dict(pair.split("=", 1) for pair in conditions.split(","))

    def matches(config: dict) -> bool:
        return all(value in (config.get("loss") or {}) if key == "loss" else str(config.get(key)) == value
                   for key, value in wanted.items())

    configs = sorted((DEMOS / sweep).glob("*/config.yaml"), key=lambda p: int(p.parent.name))
    return [c.parent for c in configs if matches(yaml.safe_load(c.read_text()))]


def dpo_beta01_runs() -> list[Path]:
    return select("losses_dpo:beta=0.1")


def run_expo(dry_run: bool) -> None:
    runs = dpo_beta01_runs()
    if not runs and not dry_run:
        sys.exit("expo: no dpo beta=0.1 run in experiments/demos/losses_dpo (run `losses` first)")
    for run in runs:
        # The benchmark as the runs had it (prefopt.extrapolate composes its own from the overrides given).
        bench = [o for o in sweep_overrides("losses_dpo") if o.startswith("benchmark")]
        sh([sys.executable, "-m", "prefopt.extrapolate", f"run_dir={run}", f"alpha={ALPHAS}", *bench], dry_run)


def drop_models(dry_run: bool) -> None:
    # 540 MB each: the run files (config, metrics, summary, benchmark items) are what the reports read.
    for model in sorted(DEMOS.glob("**/model")):
        print("- rm -r", model, flush=True)
        if not dry_run:
            shutil.rmtree(model)


def study(report: str, dry_run: bool) -> None:
    roots, extra = REPORTS[report]
    dirs = [str(d) for r in roots for d in select(r)]
    sh([sys.executable, "-m", "prefopt.study", *dirs, "--out", str(DEMOS / "reports" / report), *extra], dry_run)


def study_expo(dry_run: bool) -> None:
    # α = 0 is the trained model itself: its run directory beside its expo/ α directories.
    dirs = []
    for run in dpo_beta01_runs():
        dirs += [str(run), str(run / "expo")]
    sh([sys.executable, "-m", "prefopt.study", *dirs, "--out", str(DEMOS / "reports" / "issue12_expo")], dry_run)


def compute_table(dry_run: bool) -> None:
    """issue13_online/compute.md: what each regime cost (issue 13 compares at matched steps, on compute too),
    the mean over seeds (min-max) of the runs' own summary.json figures."""
    import json
    import statistics

    out = DEMOS / "reports" / "issue13_online" / "compute.md"
    print("+ write", out, flush=True)
    if dry_run:
        return

    def figures(summary: dict) -> dict:
        wall = (summary.get("compute") or {}).get("wall_s") or {}
        online = summary.get("online") or {}
        sampled = summary.get("samples_generated") or online.get("samples") or 0
        sampling = wall.get("sampling", online.get("sampling_s", 0.0))
        return {"optimizer steps": summary.get("steps"), "samples generated (training)": sampled,
                "sampling s": sampling, "training FLOPs (estimate)": summary["compute"]["flops_estimate"],
                "benchmark s": wall.get("benchmark"), "wall s (run)": summary.get("wall_time_s")}

    rows = []
    for label, root in (("offline DPO", "losses_dpo:beta=0.1"), ("online DPO", "online"), ("iterative DPO", "iterative")):
        runs = select(root) if ":" in root else sorted(p.parent for p in (DEMOS / root).glob("*/summary.json"))
        per_run = [figures(json.loads((run / "summary.json").read_text())) for run in runs]
        cells = []
        for key in per_run[0] if per_run else []:
            values = [f[key] for f in per_run if f[key] is not None]
            mean = statistics.fmean(values)
            cells.append(f"{mean:.3g} ({min(values):.3g}–{max(values):.3g})" if max(values) != min(values)
                         else f"{mean:.3g}")
        rows.append((label, len(per_run), cells, list(per_run[0]) if per_run else []))
    header = ["regime", "runs"] + rows[0][3]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([label, str(n), *cells]) + " |" for label, n, cells, _ in rows]
    note = ("Mean over seeds (min–max), from each run's summary.json. Sampling seconds are the policy's "
            "generation of training samples (0 offline); the FLOPs estimate counts training forwards and "
            "backwards only, not generation; wall seconds are of the whole run, benchmark included, with two "
            "1-thread runs sharing the 2 cores.")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# Compute by regime\n\n" + note + "\n\n" + "\n".join(lines) + "\n")


def drift_table(dry_run: bool) -> None:
    """issue12_methods/drift.md: DPOP's claim is about the chosen completions' log-probability, which the study's
    pairwise tests (gold reward) do not cover: the held-out monitors of DPOP and DPO at β = 0.1, paired by seed,
    with a t interval over the seeds (df = seeds - 1)."""
    import json

    import numpy as np
    from scipy import stats

    out = DEMOS / "reports" / "issue12_methods" / "drift.md"
    print("+ write", out, flush=True)
    if dry_run:
        return

    def by_seed(runs: list[Path]) -> dict[int, dict]:
        found = {}
        for run in runs:
            summary = json.loads((run / "summary.json").read_text())
            if summary.get("status") == "completed":
                found[summary["seed"]] = summary["eval"]
        return found

    dpop, dpo = by_seed(select("methods_dpop:beta=0.1")), by_seed(select("losses_dpo:beta=0.1"))
    seeds = sorted(set(dpop) & set(dpo))
    lines = [f"| held-out metric (final eval) | DPO | DPOP (λ=50) | DPOP − DPO [95% t CI, df={len(seeds) - 1}] | p |",
             "|---|---|---|---|---|"]
    for key in ("eval/monitor/chosen_logp_drift", "eval/monitor/rejected_logp_drift", "eval/logps/chosen",
                "eval/rewards/margins", "eval/rewards/accuracies"):
        a, b = np.array([dpop[s][key] for s in seeds]), np.array([dpo[s][key] for s in seeds])
        diff = a - b
        se = diff.std(ddof=1) / np.sqrt(len(diff))
        q = stats.t.ppf(0.975, len(diff) - 1)
        p = 2 * stats.t.sf(abs(diff.mean()) / se, len(diff) - 1) if se > 0 else float("nan")
        lines.append(f"| {key} | {b.mean():.3f} | {a.mean():.3f} | {diff.mean():+.3f} "
                     f"[{diff.mean() - q * se:+.3f}, {diff.mean() + q * se:+.3f}] | {p:.3g} |")
    note = (f"Seeds {seeds}; each figure is the run's final held-out eval (12 pairs) from summary.json; the drift "
            "monitors are the mean log π(y) − log π_ref(y) of the held-out chosen / rejected completions. Not "
            "corrected for multiplicity (five metrics).")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# DPOP vs DPO: chosen log-probability drift\n\n" + note + "\n\n" + "\n".join(lines) + "\n")


def main() -> None:
    global DEMOS, smoke
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("which", nargs="+", choices=[*GROUPS, *SWEEPS, "expo", "drop-models"])
    run.add_argument("--dry-run", action="store_true")
    rep = sub.add_parser("study")
    rep.add_argument("which", nargs="*", default=[*REPORTS, "issue12_expo", "compute", "drift"])
    rep.add_argument("--dry-run", action="store_true")
    parser.add_argument("--root", type=Path, default=DEMOS, help="where the sweeps and reports go")
    parser.add_argument("--smoke", action="store_true", help="model=tiny, 2 steps, 4 prompts of 4 tokens")
    args = parser.parse_args()
    DEMOS, smoke = args.root.resolve(), args.smoke
    if args.command == "run":
        for group in args.which:
            if group == "expo":
                run_expo(args.dry_run)
            elif group == "drop-models":
                drop_models(args.dry_run)
            else:
                for name in GROUPS.get(group, [group]):
                    run_sweep(name, args.dry_run)
    else:
        for report in args.which:
            if report == "issue12_expo":
                study_expo(args.dry_run)
            elif report == "compute":
                compute_table(args.dry_run)
            elif report == "drift":
                drift_table(args.dry_run)
            else:
                study(report, args.dry_run)


if __name__ == "__main__":
    main()
