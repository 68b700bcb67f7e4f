"""``python -m prefopt.study SWEEP_DIR [SWEEP_DIR ...]``: the study of a sweep's runs, written into the
first sweep directory (study.json, report.md, report.html and the figures' PNGs).

    python -m prefopt.study multirun/2026-12-01/10-00-00 --target-diff 0.05
    python -m prefopt.study sweepA sweepB --kl-grid 0.5 1 2 --bootstrap 5000 --seed 1

Bad input (a directory with no runs, runs of different tasks, a completed run without benchmark items)
is one line on stderr naming the directory, run or key, exit code 1; nothing is written then.
"""

from __future__ import annotations

import argparse
import sys

from prefopt.errors import PrefoptError
from prefopt.study import run_study


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prefopt.study", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", metavar="SWEEP_DIR")
    parser.add_argument("--target-diff", type=float, default=None,
                        help="a reward difference to plan for: the seeds x prompts that resolve it at 80%% power")
    parser.add_argument("--kl-grid", type=float, nargs="+", default=None,
                        help="KL values at which the losses' rewards are compared (default: 5 over the overlap)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="the bootstrap's random seed (default 0)")
    parser.add_argument("--benchmark", default=None, help="which benchmark's items (default: the runs' benchmark)")
    parser.add_argument("--out", default=None, help="where to write the report (default: the first SWEEP_DIR)")
    args = parser.parse_args(argv)
    if args.bootstrap < 1:
        print(f"prefopt.study: --bootstrap {args.bootstrap}: must be at least 1", file=sys.stderr)
        return 1
    try:
        result = run_study(args.dirs, out_dir=args.out, replicates=args.bootstrap, seed=args.seed,
                           target=args.target_diff, kl_grid=args.kl_grid, benchmark=args.benchmark)
    except PrefoptError as err:
        print(f"prefopt.study: {err}", file=sys.stderr)
        return 1
    resolved = sum(p["resolved"] for p in result["pairs"])
    print(f"{result['design']['completed']} completed runs of {result['design']['runs']}, "
          f"{result['design']['conditions']} conditions, {len(result['pairs'])} comparisons ({resolved} resolved), "
          f"{len(result['missing'])} failed or missing")
    for name in ("study.json", "report.md", "report.html"):
        print(f"wrote {result['files'][name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
