"""Time a 4-point β sweep (one Hydra multirun) and show that the reference pass ran once.

    flock /tmp/prefopt-heavy.lock python experiments/bench_beta_sweep.py
    flock /tmp/prefopt-heavy.lock python experiments/bench_beta_sweep.py --steps 6 --compare-frozen
    python experiments/bench_beta_sweep.py --model tiny --steps 2          # seconds, a smoke check

Runs ``python -m prefopt.train -m beta=<4 values> reference=precomputed`` with a fresh reference cache
directory, so the first job computes the reference log-probs of every train/eval sequence (cache miss)
and the other three read them (cache hits). Prints, per job, the cache status, the time spent computing
or reading reference log-probs, the time in reference lookups during training, the training time and
the job's wall time; then the sweep's wall time. ``--compare-frozen`` runs the same sweep with
``reference=frozen`` (a reference forward every step in every job) for comparison.
The machine is shared with other processes; the figures move with their load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_sweep(args, reference: str, workdir: Path) -> tuple[float, list[dict]]:
    sweep_dir = workdir / f"sweep-{reference}"
    cmd = [sys.executable, "-m", "prefopt.train", "-m", f"beta={args.betas}", f"reference={reference}",
           f"reference.cache_dir={workdir / 'reflogps'}", f"model={args.model}", "benchmark=none",
           f"trainer.max_steps={args.steps}", "trainer.save_model=false", "trainer.progress_bar=false",
           "trainer.eval_every=0", f"hydra.sweep.dir={sweep_dir}"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"sweep failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name[0].isdigit()),
                  key=lambda p: int(p.name.split("_")[0]))
    return wall, [json.loads((job / "summary.json").read_text()) for job in jobs]


def report(reference: str, wall: float, summaries: list[dict]) -> None:
    print(f"\nreference={reference}: {len(summaries)} jobs, sweep wall {wall:.1f} s")
    print(f"{'beta':>6s} {'cache':>6s} {'precompute/read s':>18s} {'ref in train s':>15s} {'train s':>8s} "
          f"{'s/step':>7s} {'job wall s':>10s} {'peak RSS MB':>11s}")
    for s in summaries:
        ref, thr = s["reference"], s["throughput"]
        print(f"{s['losses']['dpo']['beta']:6g} {ref.get('cache', '-'):>6s} "
              f"{ref.get('precompute_seconds', 0.0):18.2f} {thr['reference_seconds']:15.2f} "
              f"{thr['train_seconds']:8.1f} {thr['seconds_per_step']:7.2f} {s['wall_time_s']:10.1f} "
              f"{s['peak_rss_mb']:11.0f}")
    caches = [s["reference"].get("cache") for s in summaries]
    if reference == "precomputed":
        keys = {s["reference"]["key"] for s in summaries}
        print(f"reference pass ran {caches.count('miss')} time(s): caches {caches}, {len(keys)} distinct key(s)")
    else:
        total = sum(s["throughput"]["reference_seconds"] for s in summaries)
        print(f"reference forwards in every step of every job: {total:.1f} s in total")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--betas", default="0.05,0.1,0.2,0.5")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per job (trainer.max_steps)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--compare-frozen", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        workdir = Path(tmp)
        print(f"model={args.model}, beta={args.betas}, {args.steps} steps per job, "
              f"load average at start {os.getloadavg()[0]:.1f}", flush=True)
        wall, summaries = run_sweep(args, "precomputed", workdir)
        report("precomputed", wall, summaries)
        if args.compare_frozen:
            wall, summaries = run_sweep(args, "frozen", workdir)
            report("frozen", wall, summaries)


if __name__ == "__main__":
    main()
