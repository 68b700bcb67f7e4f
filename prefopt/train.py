"""Train a policy with any registered preference loss. The one training loop of prefopt.

    python -m prefopt.train                                     # the embedded default (DPO, SmolLM2, sentiment)
    python -m prefopt.train loss=dpo beta=0.1 epochs=3
    python -m prefopt.train -m loss=dpo,ipo beta=0.01,0.1,0.5    # a Hydra multirun sweep
    python -m prefopt.train model=tiny benchmark=none            # seconds, for smoke tests

Each run writes into its directory: config.yaml (resolved), metrics.jsonl (one JSON object per log
event), summary.json (final metrics, benchmark, data counts, wall time, versions, git commit) and the
final model + tokenizer (safetensors). ``run(cfg)`` does the work; ``main`` is Hydra's wrapper.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from prefopt import data as data_lib
from prefopt import losses
from prefopt.config import register_configs
from prefopt.data.collate import collate
from prefopt.io import JsonlWriter, RunFileError, atomic_write_json, atomic_write_text
from prefopt.logps import SequenceScorer
from prefopt.models import ModelLoadError, load_model, load_tokenizer, package_versions
from prefopt.reference import ReferenceConfigError, build_reference, prepare_policy

log = logging.getLogger("prefopt.train")
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


class ConfigError(ValueError):
    pass


# Errors that are the user's input, not a bug: reported as one line, no traceback.
USER_ERRORS = (ConfigError, losses.LossConfigError, losses.UnknownLossError, data_lib.DataError,
               data_lib.UnknownDatasetError, ModelLoadError, ReferenceConfigError, RunFileError,
               losses.EmptyCompletionError)


@dataclass
class LossTerm:
    spec: losses.LossSpec
    hparams: Any
    weight: float
    state: dict


def check_config(cfg: DictConfig) -> None:
    """Range checks the type schema cannot express; each names its key."""
    checks = [
        (cfg.beta > 0, f"beta={cfg.beta}: must be > 0"),
        (cfg.epochs >= 1, f"epochs={cfg.epochs}: must be >= 1"),
        (cfg.optimizer.lr > 0, f"optimizer.lr={cfg.optimizer.lr}: must be > 0"),
        (0 <= cfg.optimizer.warmup_ratio < 1, f"optimizer.warmup_ratio={cfg.optimizer.warmup_ratio}: must be in [0, 1)"),
        (cfg.optimizer.max_grad_norm >= 0, f"optimizer.max_grad_norm={cfg.optimizer.max_grad_norm}: must be >= 0"),
        (cfg.optimizer.name in ("adamw", "rmsprop"), f"optimizer.name={cfg.optimizer.name!r}: must be adamw or rmsprop"),
        (cfg.optimizer.scheduler in ("linear", "cosine", "constant"),
         f"optimizer.scheduler={cfg.optimizer.scheduler!r}: must be linear, cosine or constant"),
        (cfg.trainer.batch_size >= 1, f"trainer.batch_size={cfg.trainer.batch_size}: must be >= 1"),
        (cfg.trainer.grad_accum >= 1, f"trainer.grad_accum={cfg.trainer.grad_accum}: must be >= 1"),
        (cfg.trainer.eval_every >= 0, f"trainer.eval_every={cfg.trainer.eval_every}: must be >= 0"),
        (len(cfg.loss) > 0, "loss: no loss configured; pick one, e.g. loss=dpo"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def build_loss_terms(cfg: DictConfig) -> list[LossTerm]:
    losses.load_plugins(cfg.loss_modules)
    terms = []
    for name, entry in cfg.loss.items():
        values = OmegaConf.to_container(entry, resolve=True) if entry is not None else {}
        weight = float(values.pop("weight", 1.0))
        spec = losses.get(name)
        terms.append(LossTerm(spec, spec.make_hparams(values, where=f"loss.{name}"), weight, {}))
    kinds = {t.spec.data for t in terms}
    if "unpaired" in kinds and len(kinds) > 1:
        raise ConfigError(f"loss: unpaired and paired losses cannot be combined ({', '.join(cfg.loss)})")
    return terms


def data_kind(terms: list[LossTerm]) -> str:
    # SFT terms read only the chosen side, so they ride along with paired losses (MPO-style mixes).
    kinds = {t.spec.data for t in terms}
    return "unpaired" if "unpaired" in kinds else "paired" if "paired" in kinds else "sft"


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(params, ocfg):
    if ocfg.name == "adamw":
        return torch.optim.AdamW(params, lr=ocfg.lr, betas=tuple(ocfg.adam_betas), eps=ocfg.eps,
                                 weight_decay=ocfg.weight_decay)
    return torch.optim.RMSprop(params, lr=ocfg.lr, eps=ocfg.eps, weight_decay=ocfg.weight_decay)


def make_scheduler(optimizer, ocfg, total_steps: int):
    warmup = math.ceil(ocfg.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        if ocfg.scheduler == "linear":
            return max(0.0, 1.0 - progress)
        if ocfg.scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def batches(rows: list[dict], batch_size: int, shuffle: bool, seed: int, group_by_length: bool = False):
    """Micro-batches of ``rows``. ``group_by_length`` sorts windows of 50 batches by length before
    cutting them, so a batch pads to a similar length (about a third fewer padded tokens on the
    sentiment pairs), then shuffles the batches, so the order stays random across batches."""
    order = list(range(len(rows)))
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(order)
    if group_by_length:
        window = 50 * batch_size
        order = [i for start in range(0, len(order), window)
                 for i in sorted(order[start:start + window], key=lambda i: row_length(rows[i]))]
    chunks = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    if group_by_length and shuffle:
        rng.shuffle(chunks)
    for chunk in chunks:
        yield [rows[i] for i in chunk]


def row_length(row: dict) -> int:
    # The padded width a row forces on its batch: prompt plus its longest completion.
    return len(row["prompt_ids"]) + max(len(v) for k, v in row.items() if k.endswith("_ids") and k != "prompt_ids")


def compute_losses(terms: list[LossTerm], kind: str, policy_out, ref_out, batch) -> tuple[torch.Tensor, dict]:
    """Weighted sum of the configured losses over one batch; returns per-example losses and metrics."""
    policy_logps, lengths = policy_out
    if kind == "unpaired":
        logps = losses.UnpairedLogps(policy=policy_logps, desirable=batch["desirable"], lengths=lengths,
                                     ref=None if ref_out is None else ref_out[0])
    else:
        n = batch["n_examples"]
        ref_logps = None if ref_out is None else ref_out[0]
        paired = kind == "paired"
        logps = losses.PairLogps(
            policy_chosen=policy_logps[:n],
            policy_rejected=policy_logps[n:] if paired else None,
            ref_chosen=None if ref_logps is None else ref_logps[:n],
            ref_rejected=None if ref_logps is None or not paired else ref_logps[n:],
            chosen_lengths=lengths[:n],
            rejected_lengths=lengths[n:] if paired else None,
        )
    total = None
    metrics: dict[str, torch.Tensor] = {}
    for term in terms:
        out = losses.call(term.spec, logps, term.hparams, term.state)
        total = term.weight * out.losses if total is None else total + term.weight * out.losses
        for key, value in out.metrics.items():
            metrics.setdefault(key, value)
        if len(terms) > 1:
            metrics[f"loss/{term.spec.name}"] = out.losses.detach()
    return total, metrics


def mean_metrics(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v.detach().float().mean()) for k, v in metrics.items()}


@torch.no_grad()
def evaluate(scorer, reference, terms, kind, rows, cfg, pad_id, device) -> dict[str, float]:
    """Held-out loss and rewards/*, logps/* averaged over every eval example (not batch means)."""
    if not rows:
        return {}
    scorer.eval()
    sums: dict[str, float] = {}
    count = 0
    for chunk in batches(rows, cfg.trainer.eval_batch_size, False, 0, cfg.trainer.group_by_length):
        batch = to_device(collate(chunk, pad_id, kind), device)
        policy_out = scorer(batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
                            n_pairs=batch["n_examples"] if kind == "paired" else None)
        ref_out = reference.logps(batch)
        per_example, metrics = compute_losses(terms, kind, policy_out, ref_out, batch)
        n = len(chunk)
        for key, value in {"loss": per_example, **metrics}.items():
            sums[key] = sums.get(key, 0.0) + float(value.float().mean()) * n
        count += n
    scorer.train()
    return {f"eval/{k}": v / count for k, v in sums.items()}


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
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


def run(cfg: DictConfig, run_dir: str | os.PathLike | None = None, hydra_choices: dict | None = None) -> dict:
    """Train, evaluate, benchmark and write the run directory. Returns the summary dict."""
    from accelerate import Accelerator

    wall_start = time.perf_counter()
    check_config(cfg)
    terms = build_loss_terms(cfg)
    kind = data_kind(terms)
    needs_reference = any(t.spec.needs_reference for t in terms)
    run_dir = Path(run_dir or cfg.run_dir or "runs/manual")

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    device = accelerator.device
    set_seed(cfg.seed)
    is_main = accelerator.is_main_process

    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.chat_template, cfg.model.trust_remote_code)
    datasets = data_lib.build_datasets(cfg.dataset, tokenizer, kind, cfg.model.eot_token)
    log.info("data: %d train / %d eval %s rows; counts %s", len(datasets.train), len(datasets.eval), kind,
             datasets.stats)

    policy = load_model(cfg.model.name_or_path, cfg.model.dtype, cfg.model.trust_remote_code,
                        cfg.model.attn_implementation)
    if cfg.model.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    policy = prepare_policy(cfg.reference, policy, needs_reference)  # LoRA-wrapped for adapter_off
    # reference=precomputed scores every train and eval sequence once (or reads them from its cache).
    score_batches = [collate(chunk, tokenizer.pad_token_id, kind)
                     for chunk in batches(datasets.train + datasets.eval, cfg.trainer.eval_batch_size, False, 0,
                                          True)] if cfg.reference.kind == "precomputed" else None
    truncation = {"max_length": cfg.dataset.max_length, "max_prompt_length": cfg.dataset.max_prompt_length}
    reference = build_reference(cfg.reference, cfg.model, policy, needs_reference,
                                [t.spec.name for t in terms], device, score_batches, truncation,
                                cfg.trainer.share_prompt)
    scorer = SequenceScorer(policy, share_prompt=cfg.trainer.share_prompt)
    optimizer = make_optimizer(scorer.parameters(), cfg.optimizer)
    micro_per_epoch = math.ceil(len(datasets.train) / cfg.trainer.batch_size)
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.trainer.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.trainer.max_steps > 0:
        total_steps = min(total_steps, cfg.trainer.max_steps)
    scheduler = make_scheduler(optimizer, cfg.optimizer, total_steps)
    # The scheduler is stepped by hand once per optimizer step; accelerate's wrapper would step it
    # once per process.
    scorer, optimizer = accelerator.prepare(scorer, optimizer)

    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    writer = JsonlWriter(run_dir / "metrics.jsonl") if is_main else None
    pad_id = tokenizer.pad_token_id

    def emit(record: dict) -> None:
        if writer is not None:
            writer.write(record)

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, disable=not (is_main and cfg.trainer.progress_bar), desc="train",
               dynamic_ncols=True)
    step = 0
    last_train: dict[str, float] = {}
    eval_metrics: dict[str, float] = {}
    train_time = 0.0
    pairs_seen = tokens_seen = 0
    max_norm = cfg.optimizer.max_grad_norm if cfg.optimizer.max_grad_norm > 0 else float("inf")
    scorer.train()
    for epoch in range(cfg.epochs):
        micro_batches = list(batches(datasets.train, cfg.trainer.batch_size, True, cfg.seed + epoch,
                                     cfg.trainer.group_by_length))
        for first in range(0, len(micro_batches), cfg.trainer.grad_accum):
            if step >= total_steps:
                break
            group = micro_batches[first:first + cfg.trainer.grad_accum]
            # Each example weighs 1/n_step, so a step of k micro-batches equals one batch of all of them,
            # including the shorter last step of an epoch.
            n_step = sum(len(chunk) for chunk in group)
            start = time.perf_counter()
            sums: dict[str, float] = {}
            tokens = 0
            for j, chunk in enumerate(group):
                batch = to_device(collate(chunk, pad_id, kind), device)
                sync = accelerator.no_sync(scorer) if j < len(group) - 1 else contextlib.nullcontext()
                with sync:
                    policy_out = scorer(batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
                                        n_pairs=batch["n_examples"] if kind == "paired" else None)
                    ref_out = reference.logps(batch)
                    per_example, metrics = compute_losses(terms, kind, policy_out, ref_out, batch)
                    loss = per_example.sum() / n_step
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"non-finite loss {loss.item()} at step {step + 1} (epoch {epoch}, rows "
                            f"{batch['index'].tolist()}); lower optimizer.lr or check the data"
                        )
                    accelerator.backward(loss)
                for key, value in {"loss": per_example, **metrics}.items():
                    sums[key] = sums.get(key, 0.0) + float(value.detach().float().mean()) * len(chunk)
                tokens += int(batch["attention_mask"].sum())
            grad_norm = accelerator.clip_grad_norm_(scorer.parameters(), max_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            reference.after_step(step, accelerator.unwrap_model(scorer).model)
            elapsed = time.perf_counter() - start
            train_time += elapsed
            pairs_seen += n_step
            tokens_seen += tokens
            record = {k: v / n_step for k, v in sums.items()}
            record.update({
                "grad_norm": float(grad_norm),
                "lr": scheduler.get_last_lr()[0],
                "epoch": epoch + min(1.0, (first + len(group)) / len(micro_batches)),
                "step": step,
                "pairs/s": n_step / elapsed,
                "tokens/s": tokens / elapsed,
            })
            last_train = record
            if step % cfg.trainer.log_every == 0 or step == total_steps:
                emit({"split": "train", **record})
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}",
                            acc=f"{record.get('rewards/accuracies', float('nan')):.2f}")
            if cfg.trainer.eval_every and step % cfg.trainer.eval_every == 0 and step < total_steps:
                eval_metrics = evaluate(scorer, reference, terms, kind, datasets.eval, cfg, pad_id, device)
                emit({"split": "eval", "step": step, "epoch": record["epoch"], **eval_metrics})
    bar.close()

    eval_metrics = evaluate(scorer, reference, terms, kind, datasets.eval, cfg, pad_id, device)
    emit({"split": "eval", "step": step, "epoch": last_train.get("epoch", 0.0), **eval_metrics})
    policy = accelerator.unwrap_model(scorer).model
    del optimizer

    benchmark = None
    if cfg.benchmark.name != "none" and is_main:
        benchmark = run_benchmark(cfg, policy, reference, tokenizer, device, run_dir)
        emit({"split": "benchmark", "step": step, **{k: v for k, v in benchmark.items() if k != "examples"}})

    if is_main and cfg.trainer.save_model:
        save_model_atomically(policy, tokenizer, run_dir / "model")

    summary = {
        "status": "completed",
        "run_dir": str(run_dir.resolve()),
        "losses": {t.spec.name: {"weight": t.weight, **vars(t.hparams)} for t in terms},
        "choices": hydra_choices or {},
        "tags": OmegaConf.to_container(cfg.tags, resolve=True),
        "steps": step,
        "train": last_train,
        "eval": eval_metrics,
        "benchmark": benchmark,
        "data": {"train_rows": len(datasets.train), "eval_rows": len(datasets.eval), "counts": datasets.stats},
        "throughput": {
            "pairs/s": pairs_seen / train_time if train_time else None,
            "tokens/s": tokens_seen / train_time if train_time else None,
            "train_seconds": train_time,
            "reference_seconds": reference.seconds,
            "optimizer_steps": step,
            "seconds_per_step": train_time / step if step else None,
        },
        "reference": reference.info(),
        "peak_rss_mb": peak_rss_mb(),
        "wall_time_s": time.perf_counter() - wall_start,
        "versions": {"python": sys.version.split()[0], **package_versions()},
        "git_commit": git_commit(),
    }
    if is_main:
        atomic_write_json(run_dir / "summary.json", summary)
        writer.close()
    accelerator.end_training()
    return summary


def run_benchmark(cfg, policy, reference, tokenizer, device, run_dir) -> dict:
    """The configured benchmark (prefopt.benchmarks) of the trained policy against the model the run
    started from; per-prompt items go to <run_dir>/benchmark_<name>.jsonl."""
    from prefopt.benchmarks import UnknownBenchmarkError
    from prefopt.evaluate import load_reference_model
    from prefopt.evaluate import run_benchmark as evaluate_benchmark
    from prefopt.judges import JudgeConfigError, JudgeError

    # Reload the initial model when the training reference is not held in memory (reference-free
    # losses, precomputed log-probs) or has moved away from it.
    ref_model = reference.model if cfg.reference.kind in ("frozen", "checkpoint") else None
    if ref_model is None:
        ref_model = load_reference_model(cfg, device)
    try:
        return evaluate_benchmark(cfg.benchmark, policy, ref_model, tokenizer, cfg.model.eot_token, run_dir)
    except (UnknownBenchmarkError, JudgeConfigError) as err:
        raise ConfigError(str(err)) from None
    except JudgeError as err:
        # Training is done and worth keeping: record the failure; `python -m prefopt.evaluate` can
        # rerun the benchmark on the saved model (judgments already made are cached).
        log.error("benchmark %s failed: %s", cfg.benchmark.name, err)
        return {"name": cfg.benchmark.name, "status": "failed", "error": str(err)}


def save_model_atomically(model, tokenizer, path: Path) -> None:
    import shutil
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".model."))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RunFileError(err.errno, f"cannot save the model to {path}: {err.strerror or err}") from err


register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    choices = {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra")}
    try:
        summary = run(cfg, run_dir=hydra_cfg.runtime.output_dir, hydra_choices=choices)
    except USER_ERRORS as err:
        log.error("%s", err)
        # One clear line for the user; in a multirun Hydra records the failure and moves on.
        raise SystemExit(f"prefopt: {err}") from None
    # Returned so that a Hydra sweeper (e.g. Optuna) can optimize it.
    return summary["eval"].get("eval/loss")


if __name__ == "__main__":
    main()
