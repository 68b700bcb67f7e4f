"""The study of a sweep for notebooks: ``prefopt.study``'s numbers as pandas tables and its figures.

The statistics live in the installed package (``prefopt/study/``) so that ``python -m prefopt.study``
works from any installation; this module only re-exports them and turns the result into DataFrames.

    from analysis import study
    result = study.run_study(["multirun/2026-12-01/10-00-00"], write=False)   # seeds aggregated
    study.frames(result)["conditions"]                                        # one row per condition
"""

from __future__ import annotations

import pandas as pd

from prefopt.study import analyse, load_study, run_study
from prefopt.study.report import plot_curves, plot_equal_kl, plot_frontiers, tables

__all__ = ["analyse", "frames", "load_study", "plot_curves", "plot_equal_kl", "plot_frontiers", "run_study",
           "tables"]


def frames(result: dict) -> dict[str, pd.DataFrame]:
    """``conditions`` (one row per condition, ``<metric>``, ``<metric>_ci_low``, ``<metric>_ci_high``),
    ``at_kl`` (one row per frontier and grid KL), ``pairs`` and ``missing`` of a study result."""
    rows = []
    for c in result["conditions"]:
        row = {k: v for k, v in c.items() if k not in ("metrics", "seeds")}
        row["seeds"] = len(c["seeds"])
        for name, m in c["metrics"].items():
            row[name], row[f"{name}_ci_low"], row[f"{name}_ci_high"] = m["estimate"], m["ci_low"], m["ci_high"]
        rows.append(row)
    at_kl = [{"frontier": f["frontier"], **a} for f in result["frontiers"] for a in f["at_kl"]]
    pairs = [{k: (", ".join(f"{a}={b}" for a, b in v.items()) if k == "at" else v) for k, v in p.items()
              if k not in ("variance_components", "plan", "bootstrap_ci")} for p in result["pairs"]]
    return {"conditions": pd.DataFrame(rows), "at_kl": pd.DataFrame(at_kl), "pairs": pd.DataFrame(pairs),
            "missing": pd.DataFrame(result["missing"], columns=["run", "condition", "seed", "status", "error"])}
