"""Run directories and Hydra multiruns into tidy pandas tables.

``load_runs(paths)``: one row per run. Identity columns: ``run`` (path relative to the sweep root),
``sweep``, ``job`` (Hydra job number), ``status`` (summary.json's, else ``sweep.json``'s, else
``incomplete``). Config columns from the run's resolved config.yaml: ``loss`` (``+``-joined when
several), ``beta``, ``epochs``, ``seed``, ``variant`` (``tags.variant``), ``dataset``, ``model``, ``lr``,
``max_steps``, every loss hyperparameter as ``loss.<name>.<key>``, and ``overrides`` (Hydra's, as one
string). Results from summary.json: ``steps``, ``wall_time_s``, final ``train/<metric>`` and
``eval/<metric>``, and every scalar benchmark figure as ``<benchmark>/<key>`` (e.g.
``sentiment/delta``, ``sentiment/kl_estimate``, ``mt_bench/delta_ci_low``).

``load_metrics(paths)``: the metrics.jsonl records of every run, one row per record, with ``split``
(train/eval/benchmark), ``step`` and the metric columns (TRL's names; the training ``loss`` value is
renamed ``train/loss`` so it cannot collide with the loss-name column), plus the identity and config columns above so
that any plot can group by them.

A directory whose files are unreadable is skipped with a warning naming the file, and counted in
``df.attrs["skipped"]``; nothing is silently dropped.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from prefopt.io import read_jsonl

log = logging.getLogger(__name__)

CONFIG_COLUMNS = ["loss", "beta", "epochs", "variant", "dataset", "seed", "model", "lr", "max_steps"]


def _is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() and ((path / "metrics.jsonl").is_file() or (path / "summary.json").is_file())


def find_run_dirs(paths: str | os.PathLike | list) -> list[Path]:
    """Every run directory at or below ``paths`` (a run, a multirun root, or a folder of either)."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    found: list[Path] = []
    for root in map(Path, paths):
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such run or sweep directory")
        for dirpath, dirnames, _ in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in ("model", "checkpoints"))
            if _is_run_dir(Path(dirpath)):
                found.append(Path(dirpath))
                # A run's subfolders are its own, except the runs `prefopt.extrapolate` derived from it.
                dirnames[:] = [d for d in dirnames if d == "expo"]
    return found


def _sweep_root(run_dir: Path) -> Path:
    parent = run_dir.parent
    return parent if (parent / "multirun.yaml").is_file() or (parent / "sweep.json").is_file() else run_dir


def _sweep_jobs(root: Path) -> dict[str, dict]:
    index = root / "sweep.json"
    if not index.is_file():
        return {}
    try:
        return {job.get("dir"): job for job in json.loads(index.read_text()).get("jobs", {}).values()}
    except (json.JSONDecodeError, AttributeError) as err:
        log.warning("%s: unreadable (%s); job statuses come from the run directories alone", index, err)
        return {}


def _scalars(prefix: str, values: dict | None) -> dict[str, Any]:
    out = {}
    for key, value in (values or {}).items():
        if isinstance(value, bool | int | float | str) or value is None:
            out[f"{prefix}{key}"] = value
    return out


def _run_row(run_dir: Path, sweep_jobs: dict) -> dict[str, Any]:
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    root = _sweep_root(run_dir)
    job = sweep_jobs.get(run_dir.name, {})
    losses = config.get("loss") or {}
    row: dict[str, Any] = {
        "run": str(run_dir.relative_to(root)) if root != run_dir else run_dir.name,
        "run_dir": str(run_dir),
        "sweep": str(root) if root != run_dir else None,
        "job": int(run_dir.name.split("_", 1)[0]) if run_dir.name.split("_", 1)[0].isdigit() else None,
        "status": (summary or {}).get("status") or job.get("status") or "incomplete",
        "loss": "+".join(losses) if losses else None,
        "beta": config.get("beta"),
        "epochs": config.get("epochs"),
        "variant": (config.get("tags") or {}).get("variant"),
        "dataset": (config.get("dataset") or {}).get("name"),
        "seed": config.get("seed"),
        "model": (config.get("model") or {}).get("name_or_path"),
        "lr": (config.get("optimizer") or {}).get("lr"),
        "max_steps": (config.get("trainer") or {}).get("max_steps"),
    }
    if config.get("expo"):  # a model extrapolated from a finished run (prefopt.extrapolate)
        row["expo_alpha"] = config["expo"].get("alpha")
        row["expo_source"] = config["expo"].get("source_run")
    for name, hparams in losses.items():
        row.update(_scalars(f"loss.{name}.", hparams))
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        row["overrides"] = " ".join(yaml.safe_load(overrides.read_text()) or [])
    if job.get("error"):
        row["error"] = job["error"]
    if summary is not None:
        row["steps"] = summary.get("steps")
        row["wall_time_s"] = summary.get("wall_time_s")
        row.update(_scalars("train/", summary.get("train")))
        row.update(_scalars("", summary.get("eval")))
        benchmarks = dict(summary.get("benchmarks") or {})
        if summary.get("benchmark"):
            benchmarks.setdefault(summary["benchmark"].get("name", "benchmark"), summary["benchmark"])
        for name, result in benchmarks.items():
            row.update(_scalars(f"{name}/", result))
    return row


def load_runs(paths) -> pd.DataFrame:
    rows, skipped = [], []
    jobs_by_root: dict[Path, dict] = {}
    for run_dir in find_run_dirs(paths):
        root = _sweep_root(run_dir)
        if root not in jobs_by_root:
            jobs_by_root[root] = _sweep_jobs(root)
        try:
            rows.append(_run_row(run_dir, jobs_by_root[root]))
        except (OSError, ValueError, yaml.YAMLError) as err:
            log.warning("skipping %s: %s", run_dir, err)
            skipped.append(f"{run_dir}: {err}")
    df = pd.DataFrame(rows)
    if not df.empty:
        df = df.sort_values([c for c in ("sweep", "job", "run") if c in df.columns], na_position="first")
        df = df.reset_index(drop=True)
    df.attrs["skipped"] = skipped
    return df


def load_metrics(paths, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every metrics.jsonl record of the runs, with their identity and config columns."""
    runs = load_runs(paths) if runs is None else runs
    frames, skipped = [], list(runs.attrs.get("skipped", []))
    keep = ["run", "run_dir", "sweep", "job", "status"] + CONFIG_COLUMNS
    for _, run in runs.iterrows():
        path = Path(run["run_dir"]) / "metrics.jsonl"
        if not path.is_file():
            continue
        try:
            records = read_jsonl(path)
        except (OSError, ValueError) as err:
            log.warning("skipping %s: %s", path, err)
            skipped.append(f"{path}: {err}")
            continue
        if not records:
            continue
        frame = pd.json_normalize(records, max_level=0)
        # The training objective's value is logged as "loss" (TRL's name), which would collide with
        # the loss *name* column; it becomes "train/loss", beside "eval/loss".
        frame = frame.drop(columns=[c for c in ("examples",) if c in frame.columns])
        frame = frame.rename(columns={"loss": "train/loss"})
        for column in keep:
            if column in run:
                frame[column] = run[column]
        frames.append(frame)
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    df.attrs["skipped"] = skipped
    return df
