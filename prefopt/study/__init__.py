"""The loss laboratory's study: a sweep's run directories in, one report out.

    from prefopt.study import run_study
    result = run_study(["multirun/2026-12-01/10-00-00"], target=0.05)   # also writes the report files

``load_study`` (data.py) reads the run files into tables, ``analyse`` (analyse.py) computes every number
with the statistics of stats.py, ``write_report`` (report.py) writes study.json, report.md and report.html
into the (first) sweep directory. ``python -m prefopt.study`` is the command line (__main__.py). Nothing
here imports the trainer: a study reads run files only.
"""

from __future__ import annotations

from pathlib import Path

from prefopt.study.analyse import analyse
from prefopt.study.data import Study, StudyError, load_study
from prefopt.study.report import write_report

__all__ = ["Study", "StudyError", "analyse", "load_study", "run_study", "write_report"]


def run_study(dirs, *, out_dir=None, write: bool = True, replicates: int = 2000, seed: int = 0,
              target: float | None = None, kl_grid: list[float] | None = None, benchmark: str | None = None) -> dict:
    """Load, analyse and (unless ``write=False``) write the report into ``out_dir`` (default: the first
    sweep directory). Returns the study dict (what study.json holds) with ``files`` added when written."""
    study = load_study(dirs, benchmark)
    result = analyse(study, replicates=replicates, seed=seed, target=target, kl_grid=kl_grid)
    if write:
        files = write_report(result, Path(out_dir) if out_dir else study.dirs[0])
        result["files"] = {k: str(v) for k, v in files.items()}
    return result
