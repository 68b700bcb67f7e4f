"""``summary.json``: what a finished run reports. Analysis, studies and figures read this file (and
``metrics.jsonl``), never the trainer, so every field here is a promise: rename nothing."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from prefopt.models import package_versions


def build_summary(s, counters, *, step: int, eval_metrics: dict, benchmark: dict | None,
                  resumed_from: Path | None, hydra_choices: dict | None, wall_start: float) -> dict:
    """The summary of the run ``s`` (a ``TrainingSetup``) after ``step`` optimizer steps."""
    train_time = counters.train_time
    return {
        "status": "completed",
        "run_dir": str(Path(s.run_dir).resolve()),
        "losses": {t.spec.name: {"weight": t.weight, **vars(t.hparams)} for t in s.terms},
        "choices": hydra_choices or {},
        "tags": OmegaConf.to_container(s.cfg.tags, resolve=True),
        "steps": step,
        "skipped_steps": counters.skipped_steps,
        "resumed_from": str(resumed_from) if resumed_from else None,
        "processes": s.world,
        "distributed": s.distributed,
        "train": counters.last_train,
        "eval": eval_metrics,
        "benchmark": benchmark,
        "data": {"train_rows": len(s.datasets.train), "eval_rows": len(s.datasets.eval), "counts": s.datasets.stats},
        "throughput": {
            "pairs/s": counters.pairs_seen / train_time if train_time else None,
            "tokens/s": counters.tokens_seen / train_time if train_time else None,
            "train_seconds": train_time,
            "reference_seconds": s.reference.seconds,
            "optimizer_steps": step,
            "seconds_per_step": train_time / step if step else None,
            # Non-padding positions / all positions the policy's decoder ran in training (trainer.packing: 1.0).
            "token_efficiency": counters.token_efficiency,
            "processed_tokens": counters.processed_tokens,
        },
        "reference": s.reference.info(),
        "peak_rss_mb": peak_rss_mb(),
        "wall_time_s": time.perf_counter() - wall_start,
        "versions": {"python": sys.version.split()[0], **package_versions()},
        "git_commit": git_commit(),
    }


def git_commit() -> str | None:
    """The commit of the prefopt checkout that ran (``-dirty`` with uncommitted changes); None when prefopt is
    installed from a wheel rather than run from a checkout."""
    try:
        root = Path(__file__).resolve().parents[2]
        if not (root / ".git").exists():
            return None
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def peak_rss_mb() -> float:
    import resource

    # ru_maxrss is KiB on Linux: the process's high-water mark, including model loading.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
