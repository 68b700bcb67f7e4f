"""Benchmark a model against its reference on a finished run.

    python -m prefopt.evaluate run_dir=runs/2026-11-24/01-00-00 benchmark=sentiment
    python -m prefopt.evaluate run_dir=RUN benchmark=mt_bench judge=http \
        benchmark.judge.base_url=http://localhost:8000/v1 benchmark.judge.model=judge
    python -m prefopt.evaluate run_dir=RUN benchmark=preference     # held-out rewards/*, logps/* again
    prefopt-evaluate run_dir=RUN benchmark=sentiment                # the same, as an installed console script

The run's own config.yaml says which model was trained and which reference it started from; the
overrides (any of the benchmark and judge keys, as for prefopt.train) say what to run. The policy is
the run's saved model (``<run_dir>/model``, written unless ``trainer.save_model=false``).

Results go into the run directory: ``summary.json["benchmarks"][name]`` (the paired delta against the
reference with its 95% bootstrap CI and Wilcoxon p-value, and the benchmark's own figures), a
``{"split": "benchmark"}`` record in metrics.jsonl, and every per-prompt item in
``benchmark_<name>.jsonl``. Every file is replaced atomically. The work is done by
``prefopt/benchmarks/runner.py``; this file parses the command line and reports a user error as one line.
"""

from __future__ import annotations

import json
import logging
import sys

from prefopt.benchmarks.runner import EvaluateError, benchmark_config, evaluate_run
from prefopt.errors import PrefoptError

log = logging.getLogger("prefopt.evaluate")

__all__ = ["EvaluateError", "main"]


def main(argv: list[str] | None = None) -> int:
    """``python -m prefopt.evaluate`` and the ``prefopt-evaluate`` console script; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    run_dirs = [a.split("=", 1)[1] for a in argv if a.startswith("run_dir=")]
    overrides = [a for a in argv if not a.startswith("run_dir=")]
    if len(run_dirs) != 1 or any(a in ("-h", "--help") for a in argv):
        print("usage: python -m prefopt.evaluate run_dir=RUN benchmark=NAME [overrides...]", file=sys.stderr)
        return 2
    try:
        result = evaluate_run(run_dirs[0], benchmark_config(overrides))
    except PrefoptError as err:
        print(f"prefopt.evaluate: {err}", file=sys.stderr)
        return 1
    shown = {k: v for k, v in result.items() if k not in ("examples", "items")}
    print(json.dumps(shown, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
