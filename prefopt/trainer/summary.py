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
                  resumed_from: Path | None, hydra_choices: dict | None, wall_start: float,
                  phases: dict | None = None) -> dict:
    """The summary of the run ``s`` (a ``TrainingSetup``) after ``step`` optimizer steps; ``phases``: wall
    seconds of this process by phase (setup, train, eval, benchmark, save)."""
    train_time = counters.train_time
    return {
        "status": "completed",
        "run_dir": str(Path(s.run_dir).resolve()),
        "losses": {t.spec.name: {"weight": t.weight, **vars(t.hparams)} for t in s.terms},
        "choices": hydra_choices or {},
        "tags": OmegaConf.to_container(s.cfg.tags, resolve=True),
        "seed": s.cfg.seed,
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
        "compute": compute(s, counters, phases or {}, time.perf_counter() - wall_start),
        "peak_rss_mb": peak_rss_mb(),
        "wall_time_s": time.perf_counter() - wall_start,
        "versions": {"python": sys.version.split()[0], **package_versions()},
        "git_commit": git_commit(),
    }


def parameter_count(model) -> int:
    # ZeRO-3 leaves each rank an empty shard and records the full size as ds_numel; tied weights count once.
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())


def compute(s, counters, phases: dict, wall: float) -> dict:
    """What the run cost, so that a study can compare losses at equal compute.

    Tokens are the non-padding positions the policy's decoder ran (``SequenceScorer.real_tokens``: with
    ``trainer.share_prompt`` a pair's prompt once), over every process and, after a resume, over the whole run:
    ``policy_tokens_backward`` in optimizer steps (forward and backward; KTO's no-grad pass over mismatched KL
    pairs runs through the same scorer and is counted here too), ``policy_tokens_forward`` those plus the
    held-out evals (forward only). The reference runs the same layout over the same batches when it runs a pass
    per batch (frozen, checkpoint, sync, adapter_off, ...); a precomputed reference (scored once before
    training, see ``reference.precompute_seconds``) or none forwards nothing. Not counted: WPO's extra no-grad
    pass and the benchmark's generation (timed in ``wall_s.benchmark``).

    ``flops_estimate`` = 6·N·policy_tokens_backward + 2·N·(policy_tokens_forward − policy_tokens_backward)
    + 2·N_ref·reference_tokens_forward: Kaplan et al. 2020 (arXiv:2001.08361, Sec. 2.1, C ≈ 6N per trained
    token: 2N forward, 4N backward) with N every parameter of the model (the tied embedding once; Kaplan's N
    leaves out embeddings, but a tied output head is a real matmul), attention's context term ignored."""
    per_example = 2 if s.kind == "paired" else 1
    train_sequences = counters.pairs_seen * per_example
    forwards = s.reference.forwards_per_batch
    n_policy = parameter_count(s.policy)
    n_reference = parameter_count(s.reference.model) if getattr(s.reference, "model", None) is not None else n_policy
    backward = counters.real_tokens
    forward = backward + counters.eval_tokens
    reference_tokens = forward if forwards else 0.0
    return {
        "policy_parameters": n_policy,
        "policy_sequences_backward": train_sequences,
        "policy_tokens_forward": forward,
        "policy_tokens_backward": backward,
        "reference_forwards": train_sequences + counters.eval_sequences if forwards else 0,
        "reference_tokens_forward": reference_tokens,
        "flops_estimate": 6.0 * n_policy * backward + 2.0 * n_policy * (forward - backward)
        + 2.0 * n_reference * reference_tokens,
        "wall_s": {**{k: float(v) for k, v in phases.items()}, "total": wall},
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
