"""Sweep analysis from run-directory files only (config.yaml, metrics.jsonl, summary.json, .hydra/,
sweep.json); never imports the trainer, so a notebook can read runs made by any prefopt version.

    from analysis import load_runs, load_metrics, plots
    runs = load_runs("multirun/2026-11-24/01-00-00")      # one row per run
    steps = load_metrics("multirun/2026-11-24/01-00-00")  # one row per logged record
"""

from analysis.runs import find_run_dirs, load_metrics, load_runs

__all__ = ["find_run_dirs", "load_runs", "load_metrics"]
