"""A study's run files as tidy tables: which runs there are, which condition each one is, its benchmark
items, its training curves and its per-run scalars. Only run files are read (config.yaml, summary.json,
metrics.jsonl, benchmark_<name>.jsonl, sweep.json); the trainer is never imported.

A condition is the set of config values a run shares with its seeds: the loss, β and every other key that
varies across the study's runs (found by comparing the resolved configs, so a sweep over ``optimizer.lr``
or ``variant`` needs no declaration). The seed is the top-level ``seed`` key. Runs that did not complete,
and (condition, seed) pairs that some other condition has but this one lacks, are kept as ``missing``
rows: the report lists them instead of dropping them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from prefopt.errors import PrefoptError
from prefopt.io import read_jsonl

# Keys that differ between runs without making them different experiments.
# expo.source_run: an ExPO α directory's source run (one per seed, like run_dir). trainer.save_model: whether the
# model was kept changes nothing a study compares (an ExPO study keeps the models of one arm only).
NOT_A_CONDITION = ("seed", "run_dir", "resume", "logger.", "trainer.progress_bar", "trainer.save_model", "hydra.",
                   "expo.source_run")
# Keys that must agree across a study's runs: a different benchmark or prompt set is a different task.
TASK_KEYS = ("benchmark.name", "benchmark.prompts", "benchmark.num_prompts")
CURVES = ("rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected")


class StudyError(PrefoptError, ValueError):
    """A sweep directory that cannot be studied; the message names the directory, run or key."""


@dataclass
class Study:
    """The tables of one study. ``runs``: one row per run directory (and per job that never got one),
    with ``condition`` (a label), ``seed``, ``status`` and the condition's keys. ``items``: one row per
    scored benchmark sample of a completed run. ``curves``: training records (split train/eval) of completed
    runs. ``keys``: the condition keys, in order (``loss``, ``beta``, then the other swept keys)."""

    dirs: list[Path]
    benchmark: str
    keys: list[str]
    runs: pd.DataFrame
    items: pd.DataFrame
    curves: pd.DataFrame
    missing: list[dict] = field(default_factory=list)


def _flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(config, dict):
        out: dict[str, Any] = {}
        for key, value in config.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(config, list):
        return {prefix[:-1]: json.dumps(config)}
    return {prefix[:-1]: config}


def find_runs(root: Path) -> list[Path]:
    """Every run directory (config.yaml beside metrics.jsonl or summary.json) at or below ``root``."""
    found = []
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in ("model", "checkpoints", "expo"))
        if "config.yaml" in files and ("metrics.jsonl" in files or "summary.json" in files):
            found.append(Path(dirpath))
            dirnames[:] = []
    return found


def _sweep_jobs(root: Path) -> list[dict]:
    index = root / "sweep.json"
    if not index.is_file():
        return []
    try:
        return list((json.loads(index.read_text()).get("jobs") or {}).values())
    except (ValueError, AttributeError) as err:
        raise StudyError(f"{index}: unreadable sweep index ({err})") from err


def _read_run(run_dir: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise StudyError(f"{run_dir / 'config.yaml'}: unreadable ({err})") from err
    summary = None
    if (run_dir / "summary.json").is_file():
        try:
            summary = json.loads((run_dir / "summary.json").read_text())
        except ValueError as err:
            raise StudyError(f"{run_dir / 'summary.json'}: unreadable ({err})") from err
    return {"dir": run_dir, "config": config, "flat": _flatten(config), "summary": summary}


def _condition_keys(runs: list[dict]) -> list[str]:
    """loss, beta, then every flattened config key (outside NOT_A_CONDITION) with more than one value.
    A loss hyperparameter counts only when it varies among the runs of that loss."""
    keys: list[str] = []
    flat = [r["flat"] for r in runs]
    names = sorted({k for f in flat for k in f})
    for key in names:
        if key.startswith(NOT_A_CONDITION) or key == "beta":
            continue
        if key.startswith("loss."):
            loss = key.split(".")[1]
            if key == f"loss.{loss}.beta":
                continue  # the loss's copy of the top-level β
            values = {json.dumps(f.get(key)) for f in flat if any(k.startswith(f"loss.{loss}.") for k in f)}
        else:
            values = {json.dumps(f.get(key)) for f in flat}
        if len(values) > 1:
            keys.append(key)
    return ["loss", "beta"] + keys


def _loss_name(config: dict) -> str | None:
    losses = config.get("loss") or {}
    return "+".join(losses) if losses else None


def _items(run: dict, benchmark: str) -> pd.DataFrame:
    path = run["dir"] / f"benchmark_{benchmark}.jsonl"
    if not path.is_file():
        raise StudyError(f"{run['dir']}: completed but has no benchmark items ({path.name} is missing); the study "
                         f"compares runs on their per-prompt benchmark items")
    try:
        rows = read_jsonl(path)
    except (OSError, ValueError) as err:
        raise StudyError(f"{path}: unreadable ({err})") from err
    if not rows:
        raise StudyError(f"{path}: no benchmark items")
    out = []
    for line, item in enumerate(rows):
        if "policy_score" not in item:
            raise StudyError(f"{path}: item {line} has no 'policy_score'")
        if item["policy_score"] is None:
            continue  # an unscored sample (a judge that failed); counted in n_items
        out.append({"prompt_id": int(item.get("prompt_id", line)), "sample": int(item.get("sample", 0)),
                    "reward": float(item["policy_score"]),
                    "delta": (float(item["policy_score"]) - float(item["reference_score"])
                              if item.get("reference_score") is not None else float("nan")),
                    "kl": float(item["kl"]) if item.get("kl") is not None else float("nan")})
    return pd.DataFrame(out)


def _curves(run: dict) -> pd.DataFrame:
    path = run["dir"] / "metrics.jsonl"
    if not path.is_file():
        return pd.DataFrame()
    try:
        records = read_jsonl(path)
    except (OSError, ValueError) as err:
        raise StudyError(f"{path}: unreadable ({err})") from err
    rows = []
    for rec in records:
        split = rec.get("split")
        if split not in ("train", "eval") or rec.get("step") is None:
            continue
        prefix = "eval/" if split == "eval" else ""
        row = {"split": split, "step": int(rec["step"])}
        row.update({name: rec.get(prefix + name) for name in CURVES})
        rows.append(row)
    return pd.DataFrame(rows)


def load_study(dirs, benchmark: str | None = None) -> Study:
    """Read every run under ``dirs`` (sweep directories, or a folder of them) into a ``Study``.

    Errors (``StudyError``, one line naming the directory, run or key): a directory with no run; runs of
    different tasks (benchmark name, prompt set or number of prompts); a completed run without benchmark
    items; no completed run at all."""
    dirs = [Path(d) for d in ([dirs] if isinstance(dirs, str | os.PathLike) else dirs)]
    found: list[dict] = []
    never_started: list[dict] = []
    for root in dirs:
        if not root.is_dir():
            raise StudyError(f"{root}: no such sweep directory")
        run_dirs = find_runs(root)
        jobs = _sweep_jobs(root)
        if not run_dirs:
            raise StudyError(f"{root}: no run directories (config.yaml with metrics.jsonl or summary.json) below it")
        for run_dir in run_dirs:
            found.append(_read_run(run_dir))
        present = {str(r.relative_to(root)) for r in run_dirs}
        for job in jobs:
            if job.get("dir") and job["dir"] not in present:
                never_started.append({"run": str(root / job["dir"]), "status": job.get("status") or "missing",
                                      "error": job.get("error"), "overrides": " ".join(job.get("overrides") or [])})
        errors = {str(root / j["dir"]): j.get("error") for j in jobs if j.get("dir") and j.get("error")}
        for run in found:
            run.setdefault("error", errors.get(str(run["dir"])))

    completed = [r for r in found if (r["summary"] or {}).get("status") == "completed"]
    if not completed:
        listed = ", ".join(f"{r['dir']} ({(r['summary'] or {}).get('status', 'no summary.json')})" for r in found)
        raise StudyError(f"{', '.join(map(str, dirs))}: no completed run among {len(found)}: {listed}")
    first = completed[0]
    for key in TASK_KEYS:
        for run in completed[1:]:
            if run["flat"].get(key) != first["flat"].get(key):
                raise StudyError(f"runs of different tasks in one study: {first['dir']} has {key}="
                                 f"{first['flat'].get(key)!r}, {run['dir']} has {run['flat'].get(key)!r}")
    name = benchmark or first["flat"].get("benchmark.name")
    if not name or name == "none":
        raise StudyError(f"{first['dir']}: benchmark.name={name!r}; the study needs a benchmark with per-prompt "
                         f"items (e.g. benchmark=sentiment)")

    keys = _condition_keys(found)
    rows, items, curves = [], [], []
    for run in found:
        if run["config"].get("seed") is None:
            raise StudyError(f"{run['dir'] / 'config.yaml'}: no top-level 'seed' key; runs are paired by seed")
        summary = run["summary"] or {}
        row = {"run": str(run["dir"]), "status": summary.get("status") or "incomplete",
               "seed": run["config"].get("seed"), "error": run.get("error"),
               "loss": _loss_name(run["config"]), "beta": run["config"].get("beta")}
        for key in keys[2:]:
            row[key] = run["flat"].get(key)
        row.update(_run_scalars(summary))
        rows.append(row)
    for row in rows:
        row["condition"] = condition_label(row, keys)
    runs = pd.DataFrame(rows)
    for run, row in zip(found, rows, strict=True):
        if row["status"] != "completed":
            continue
        table = _items(run, name)
        table["run"], table["seed"] = row["run"], row["seed"]
        items.append(table)
        curve = _curves(run)
        if not curve.empty:
            curve["run"], curve["seed"] = row["run"], row["seed"]
            curves.append(curve)
    items_df = pd.concat(items, ignore_index=True)
    curves_df = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()
    label = runs.set_index("run")["condition"]
    items_df["condition"] = items_df["run"].map(label)
    if not curves_df.empty:
        curves_df["condition"] = curves_df["run"].map(label)

    missing = [{"run": r["run"], "condition": r["condition"], "seed": r["seed"], "status": r["status"],
                "error": r.get("error")} for r in rows if r["status"] != "completed"]
    for r in never_started:
        missing.append({"run": r["run"], "condition": None, "seed": None, "status": r["status"],
                        "error": r["error"], "overrides": r["overrides"]})
    done = runs[runs["status"] == "completed"]
    seeds = sorted(done["seed"].unique().tolist())
    for cond, group in runs.groupby("condition", sort=True):
        have = set(group[group["status"] == "completed"]["seed"])
        tried = set(group["seed"])
        for seed in seeds:
            if seed not in have and seed not in tried:
                missing.append({"run": None, "condition": cond, "seed": seed, "status": "not run", "error": None})
    return Study(dirs=dirs, benchmark=name, keys=keys, runs=runs, items=items_df, curves=curves_df,
                 missing=missing)


def _run_scalars(summary: dict) -> dict[str, float]:
    """Train/held-out preference metrics, monitors and compute figures of one run's summary.json."""
    out: dict[str, float] = {}
    for key in ("rewards/accuracies", "rewards/margins"):
        value = (summary.get("train") or {}).get(key)
        if isinstance(value, int | float):
            out[f"train/{key}"] = float(value)
    for key, value in (summary.get("eval") or {}).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key if key.startswith("eval/") else f"eval/{key}"] = float(value)
    compute = summary.get("compute") or {}
    for key, value in compute.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[f"compute/{key}"] = float(value)
        elif isinstance(value, dict):
            for sub, v in value.items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    out[f"compute/{key}/{sub}"] = float(v)
    return out


def condition_label(row: dict, keys: list[str]) -> str:
    parts = [str(row.get("loss"))]
    if row.get("beta") is not None:
        parts.append(f"β={row['beta']:g}" if isinstance(row["beta"], int | float) else f"β={row['beta']}")
    for key in keys[2:]:
        value = row.get(key)
        if is_unset(value):  # a key of another loss or an option this run did not use: nothing to say
            continue
        parts.append(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


def is_unset(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
