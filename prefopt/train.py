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

from prefopt import checkpoint, faults, losses
from prefopt import data as data_lib
from prefopt.config import register_configs
from prefopt.data.collate import collate
from prefopt.distributed import (
    DistributedConfigError,
    backward_scale,
    configure_fsdp,
    describe,
    fsdp_param_dtype,
    gathered_state_dict,
    make_accelerator,
    micro_step,
    prepare_reference,
    reduce_sums,
    scalar,
    step_plan,
    uses_deepspeed,
)
from prefopt.io import RunFileError, atomic_write_json, atomic_write_text
from prefopt.logps import SequenceScorer
from prefopt.models import ModelLoadError, load_model, load_tokenizer, package_versions
from prefopt.reference import ReferenceConfigError, build_reference, prepare_policy
from prefopt.sinks import SinkConfigError, build_sinks, install_log_redaction, redact, redact_files

log = logging.getLogger("prefopt.train")
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


class ConfigError(ValueError):
    pass


class JobFailed(RuntimeError):
    """A sweep job that stopped on a user error; its one-line message is what sweep.json records."""


# Errors that are the user's input, not a bug: reported as one line, no traceback.
USER_ERRORS = (ConfigError, losses.LossConfigError, losses.UnknownLossError, data_lib.DataError,
               data_lib.UnknownDatasetError, ModelLoadError, ReferenceConfigError, RunFileError,
               losses.EmptyCompletionError, checkpoint.CheckpointError, faults.NonFiniteError,
               DistributedConfigError, SinkConfigError)


@dataclass
class LossTerm:
    spec: losses.LossSpec
    hparams: Any
    weight: float
    state: dict


def check_config(cfg: DictConfig) -> None:
    """Range checks the type schema cannot express; each names its key."""
    # A required value (???) left unset, e.g. experiment=zephyr_ddpo without its SFT checkpoint.
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{', '.join(missing)}: required, but not set; give it on the command line "
                          f"({missing[0]}=...)")
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
        (cfg.trainer.on_nonfinite in ("stop", "skip"),
         f"trainer.on_nonfinite={cfg.trainer.on_nonfinite!r}: must be stop or skip"),
        (cfg.trainer.checkpoint_every >= 0, f"trainer.checkpoint_every={cfg.trainer.checkpoint_every}: must be >= 0"),
        (cfg.trainer.keep_last >= 0, f"trainer.keep_last={cfg.trainer.keep_last}: must be >= 0"),
        (cfg.logger.name in ("jsonl", "wandb"), f"logger.name={cfg.logger.name!r}: must be jsonl or wandb"),
        (cfg.logger.mode in ("auto", "online", "offline", "disabled"),
         f"logger.mode={cfg.logger.mode!r}: must be auto, online, offline or disabled"),
        # TR-DPO's sync mixes the policy's weights into the reference; under ZeRO-3 each rank holds a shard.
        (cfg.deepspeed is None or cfg.reference.kind != "sync" or
         cfg.deepspeed.get("zero_optimization", {}).get("stage") != 3,
         "reference=sync is not supported with deepspeed=zero3 (the policy's weights are sharded); use zero2"),
        # The end-of-run benchmark generates on rank 0 alone; ZeRO-3 weights live on every rank.
        (cfg.deepspeed is None or cfg.benchmark.name == "none" or
         cfg.deepspeed.get("zero_optimization", {}).get("stage") != 3,
         "benchmark: not run inside a deepspeed=zero3 training; set benchmark=none and run "
         "`python -m prefopt.evaluate` on the saved model"),
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
        # The fused kernel updates each tensor in one pass; on CPU the default multi-tensor (foreach) path
        # took 3-5x longer for SmolLM2's 135M parameters (experiments/bench_dpo_speed.py, README).
        return torch.optim.AdamW(params, lr=ocfg.lr, betas=tuple(ocfg.adam_betas), eps=ocfg.eps,
                                 weight_decay=ocfg.weight_decay, fused=True)
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


def step_groups(rows: list[dict], cfg, world: int, epoch: int) -> list[list[dict]]:
    """The examples of each optimizer step of an epoch: ``grad_accum * processes`` consecutive micro-batches
    of the seeded order, so the global batch is ``batch_size * grad_accum * processes`` and the steps of
    N processes with ``batch_size = B / N`` are those of one process with ``B``."""
    micro = list(batches(rows, cfg.trainer.batch_size, True, cfg.seed + epoch, cfg.trainer.group_by_length))
    per_step = cfg.trainer.grad_accum * world
    return [[row for chunk in micro[i:i + per_step] for row in chunk] for i in range(0, len(micro), per_step)]


def weighted_sum(value: torch.Tensor, weights: torch.Tensor) -> float:
    """Sum over this micro-batch's real examples of a per-example metric (a scalar metric counts once per
    example), so that sums over ranks divided by the global count are exact means."""
    value = value.detach().float()
    if value.numel() == weights.numel():
        return float((value.reshape(-1) * weights).sum())
    return float(value.mean()) * float(weights.sum())


def tokens_of(batch: dict, weights: torch.Tensor) -> float:
    """Non-padding tokens of the real examples of a collated batch (paired batches hold 2 rows each)."""
    per_row = batch["attention_mask"].sum(-1).float()
    if per_row.numel() % weights.numel():  # rows not laid out per example: share the tokens by weight
        return float(per_row.sum() * weights.float().mean())
    return float((per_row.view(-1, weights.numel()) * weights).sum())


def row_length(row: dict) -> int:
    # The padded width a row forces on its batch: prompt plus its longest completion.
    return len(row["prompt_ids"]) + max(len(v) for k, v in row.items() if k.endswith("_ids") and k != "prompt_ids")


def compute_losses(terms: list[LossTerm], logps, training: bool) -> tuple[torch.Tensor, dict]:
    """Weighted sum of the configured losses over one batch; returns per-example losses and metrics.
    ``training`` lets stateful losses (BCO's running baseline) move their state only on train batches."""
    total = None
    metrics: dict[str, torch.Tensor] = {}
    for term in terms:
        out = losses.call(term.spec, logps, term.hparams, term.state, training=training)
        total = term.weight * out.losses if total is None else total + term.weight * out.losses
        for key, value in out.metrics.items():
            metrics.setdefault(key, value)
        if len(terms) > 1:
            metrics[f"loss/{term.spec.name}"] = out.losses.detach()
    return total, metrics


def mean_metrics(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v.detach().float().mean()) for k, v in metrics.items()}


@torch.no_grad()
def evaluate(scorer, reference, terms, kind, rows, cfg, pad_id, device, accelerator=None) -> dict[str, float]:
    """Held-out loss and rewards/*, logps/* averaged over every eval example (not batch means). With several
    processes each scores a disjoint share of the rows and the sums are reduced."""
    if not rows:
        return {}
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    ordered = [row for chunk in batches(rows, cfg.trainer.eval_batch_size, False, 0, cfg.trainer.group_by_length)
               for row in chunk]
    scorer.eval()
    sums: dict[str, float] = {}
    count = 0.0
    for micro in step_plan(ordered, world, rank, cfg.trainer.eval_batch_size):
        batch = to_device(collate(micro.rows, pad_id, kind), device)
        weights = micro.weights.to(device)
        logps = losses.score_batch(scorer, reference, batch, kind, losses.required_inputs(terms), weights)
        per_example, metrics = compute_losses(terms, logps, training=False)
        for key, value in {"loss": per_example, **metrics}.items():
            sums[key] = sums.get(key, 0.0) + weighted_sum(value, weights)
        count += micro.n_real
    scorer.train()
    if accelerator is not None:
        sums, count = reduce_sums(accelerator, sums, count)
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
    wall_start = time.perf_counter()
    check_config(cfg)
    terms = build_loss_terms(cfg)
    kind = data_kind(terms)
    needs_reference = any(t.spec.needs_reference for t in terms)
    needs = losses.required_inputs(terms)  # e.g. per-token log-probs for WPO/LD-DPO, KL pairs for KTO
    losses.check_inputs(needs, cfg.trainer.batch_size, cfg.reference.kind)
    run_dir = Path(run_dir or cfg.run_dir or "runs/manual")

    # DDP when launched with several processes, DeepSpeed with deepspeed=zero2|zero3, FSDP2 when accelerate
    # is launched with conf/accelerate/fsdp*.yaml (prefopt/distributed.py).
    accelerator = make_accelerator(cfg)
    device = accelerator.device
    world, rank = accelerator.num_processes, accelerator.process_index
    set_seed(cfg.seed)
    is_main = accelerator.is_main_process
    install_log_redaction()
    resume_from = checkpoint.resolve_resume(cfg.resume, run_dir)
    if resume_from is not None:
        # The weights are restored only after prepare (sharded backends need the prepared model); a
        # checkpoint this run cannot continue is refused now, before minutes of loading and sharding.
        checkpoint.validate(resume_from, accelerator=accelerator, config=OmegaConf.to_container(cfg, resolve=True))
    elif is_main:
        checkpoint.clear_previous_run(run_dir)  # a fresh run in a used directory starts clean
    accelerator.wait_for_everyone()  # every rank has resolved the resume point before rank 0 writes

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
                                cfg.trainer.share_prompt, accelerator.autocast, str(accelerator.mixed_precision),
                                fsdp_param_dtype(accelerator))
    scorer = SequenceScorer(policy, share_prompt=cfg.trainer.share_prompt)
    optimizer = make_optimizer(scorer.parameters(), cfg.optimizer)
    micro_per_epoch = math.ceil(len(datasets.train) / cfg.trainer.batch_size)
    steps_per_epoch = math.ceil(micro_per_epoch / (cfg.trainer.grad_accum * world))
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.trainer.max_steps > 0:
        total_steps = min(total_steps, cfg.trainer.max_steps)
    scheduler = make_scheduler(optimizer, cfg.optimizer, total_steps)
    config_dict = OmegaConf.to_container(cfg, resolve=True)
    configure_fsdp(accelerator, policy)  # FSDP: one shard unit per decoder layer; float32 log-prob outputs
    # The scheduler is stepped by hand once per optimizer step; accelerate's wrapper would step it
    # once per process.
    scorer, optimizer = accelerator.prepare(scorer, optimizer)
    prepare_reference(accelerator, reference)  # ZeRO-3: partitioned for inference
    distributed = describe(accelerator, scorer)
    log.info("distributed: %s", distributed)
    # Resuming restores weights and optimizer into the prepared (possibly sharded) model and optimizer,
    # then scheduler, loss states and RNGs; the reference was built above from the initial weights, as in
    # the interrupted run.
    state = checkpoint.TrainState()
    if resume_from is not None:
        state = checkpoint.load(resume_from, accelerator=accelerator, model=scorer, optimizer=optimizer,
                                scheduler=scheduler, loss_states=[t.state for t in terms], reference=reference,
                                config=config_dict)
        log.info("resuming from %s (step %d)", resume_from, state.step)

    if is_main:
        # A resumed run's log is cut back to its checkpoint: no line of the lost steps, none twice.
        checkpoint.truncate_metrics(run_dir / "metrics.jsonl", state.metrics_offset)
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(redact(config_dict))))
    sinks = build_sinks(cfg.logger, run_dir, config_dict, is_main, name=run_dir.name)
    emit = sinks.log
    pad_id = tokenizer.pad_token_id

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=state.step, disable=not (is_main and cfg.trainer.progress_bar),
               desc="train", dynamic_ncols=True)
    step = state.step
    counters = {"last_train": {}, "eval_metrics": {}, "train_time": 0.0, "pairs_seen": 0, "tokens_seen": 0,
                "skipped_steps": 0, **state.counters}
    last_checkpoint = state.path
    max_norm = cfg.optimizer.max_grad_norm if cfg.optimizer.max_grad_norm > 0 else float("inf")
    scorer.train()
    for epoch in range(cfg.epochs):
        groups = step_groups(datasets.train, cfg, world, epoch)
        for i, group in enumerate(groups):
            if epoch * steps_per_epoch + i < step:
                continue  # taken before the checkpoint this run resumed from
            if step >= total_steps:
                break
            # This rank's share of the step. Each example weighs 1/n_step, so a step equals one batch of all
            # its examples on any number of processes, including the shorter last step of an epoch.
            plan = step_plan(group, world, rank, cfg.trainer.batch_size)
            n_step = len(group)
            start = time.perf_counter()
            sums: dict[str, float] = {"_tokens": 0.0, "_nonfinite": 0.0}
            for j, micro in enumerate(plan):
                batch = to_device(collate(micro.rows, pad_id, kind), device)
                weights = micro.weights.to(device)
                with micro_step(accelerator, scorer, last=j == len(plan) - 1):
                    # Policy and reference log-probs, plus whatever extra inputs the losses declared.
                    logps = losses.score_batch(scorer, reference, batch, kind, needs, weights)
                    per_example, metrics = compute_losses(terms, logps, training=True)
                    loss = (per_example * weights).sum() * backward_scale(accelerator) / n_step
                    loss = faults.poison_loss(loss, step + 1)
                    if not torch.isfinite(loss):
                        sums["_nonfinite"] += 1
                        log.warning("non-finite loss at step %d on rows %s", step + 1, batch["index"].tolist())
                    accelerator.backward(loss)
                for key, value in {"loss": per_example, **metrics}.items():
                    sums[key] = sums.get(key, 0.0) + weighted_sum(value, weights)
                sums["_tokens"] += tokens_of(batch, weights)
            grad_norm = scalar(accelerator.clip_grad_norm_(scorer.parameters(), max_norm))
            sums, _ = reduce_sums(accelerator, sums, 0.0)
            tokens = sums.pop("_tokens")
            if sums.pop("_nonfinite") or not math.isfinite(float(grad_norm)):
                # Every rank sees the same reduced flag and norm, so all of them skip or stop together.
                message = (f"non-finite loss or gradient (grad_norm={float(grad_norm)}) at step {step + 1} "
                           f"(epoch {epoch}); lower optimizer.lr or check the data")
                if cfg.trainer.on_nonfinite == "stop":
                    if is_main:
                        checkpoint.write_failure(run_dir, faults.NonFiniteError(message), step, last_checkpoint)
                        sinks.finish(None)
                    raise faults.NonFiniteError(f"{message}; last good checkpoint: {last_checkpoint}")
                log.warning("%s: update skipped (trainer.on_nonfinite=skip)", message)
                counters["skipped_steps"] += 1
            elif not uses_deepspeed(accelerator):  # DeepSpeed stepped inside its backward
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            reference.after_step(step, accelerator.unwrap_model(scorer).model)
            elapsed = time.perf_counter() - start
            counters["train_time"] += elapsed
            counters["pairs_seen"] += n_step
            counters["tokens_seen"] += tokens
            record = {k: v / n_step for k, v in sums.items()}
            record.update({
                "grad_norm": float(grad_norm),
                "lr": scheduler.get_last_lr()[0],
                "epoch": epoch + (i + 1) / len(groups),
                "step": step,
                "pairs/s": n_step / elapsed,
                "tokens/s": tokens / elapsed,
            })
            if counters["skipped_steps"]:
                record["skipped_steps"] = counters["skipped_steps"]
            counters["last_train"] = record
            if step % cfg.trainer.log_every == 0 or step == total_steps:
                emit({"split": "train", **record})
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}",
                            acc=f"{record.get('rewards/accuracies', float('nan')):.2f}")
            if cfg.trainer.eval_every and step % cfg.trainer.eval_every == 0 and step < total_steps:
                counters["eval_metrics"] = evaluate(scorer, reference, terms, kind, datasets.eval, cfg, pad_id,
                                                    device, accelerator)
                emit({"split": "eval", "step": step, "epoch": record["epoch"], **counters["eval_metrics"]})
            if cfg.trainer.checkpoint_every and step % cfg.trainer.checkpoint_every == 0 and step < total_steps:
                last_checkpoint = checkpoint.save(
                    run_dir, step, accelerator=accelerator, model=scorer,
                    optimizer=optimizer, scheduler=scheduler, loss_states=[t.state for t in terms],
                    reference=reference, metrics_offset=sinks.offset(), counters=counters, config=config_dict,
                    keep_last=cfg.trainer.keep_last) or last_checkpoint
            faults.maybe_kill(step)  # PREFOPT_INJECT_FAULT=kill:<step>, for the resume tests only
    bar.close()
    last_train, train_time = counters["last_train"], counters["train_time"]
    pairs_seen, tokens_seen = counters["pairs_seen"], counters["tokens_seen"]

    eval_metrics = evaluate(scorer, reference, terms, kind, datasets.eval, cfg, pad_id, device, accelerator)
    emit({"split": "eval", "step": step, "epoch": last_train.get("epoch", 0.0), **eval_metrics})
    full_state = gathered_state_dict(accelerator, scorer)  # collective under ZeRO-3 and FSDP
    policy = accelerator.unwrap_model(scorer).model
    if full_state is not None and is_main:
        # ZeRO-3 and FSDP leave each rank a shard; rank 0 saves a fresh model holding the gathered weights.
        policy = load_model(cfg.model.name_or_path, cfg.model.dtype, cfg.model.trust_remote_code)
        policy.load_state_dict(full_state, strict=False)
    del optimizer
    if hasattr(policy, "merge_and_unload"):
        # reference=adapter_off trained LoRA adapters: merged, the benchmark and run_dir/model see a plain
        # model that transformers and prefopt.evaluate load directly.
        policy = policy.merge_and_unload()

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
        "skipped_steps": counters["skipped_steps"],
        "resumed_from": str(state.path) if state.path else None,
        "processes": world,
        "distributed": distributed,
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
        atomic_write_json(run_dir / "summary.json", redact(summary))
    sinks.finish(summary)
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
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    choices = {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra")}
    # Hydra has recorded the command line in .hydra/; an API key passed there must not stay on disk.
    redact_files(Path(hydra_cfg.runtime.output_dir, hydra_cfg.output_subdir or ".hydra").glob("*.yaml"))
    try:
        summary = run(cfg, run_dir=hydra_cfg.runtime.output_dir, hydra_choices=choices)
    except USER_ERRORS as err:
        log.error("%s", err)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            # Hydra records an Exception as this job's failure (sweep.json) and runs the other jobs;
            # a SystemExit would end the whole sweep.
            raise JobFailed(f"prefopt: {err}") from None
        # One clear line for the user.
        raise SystemExit(f"prefopt: {err}") from None
    # Returned so that a Hydra sweeper (e.g. Optuna) can optimize it.
    return summary["eval"].get("eval/loss")


if __name__ == "__main__":
    from prefopt.distributed import relaunch_dropped_cpu_processes

    relaunch_dropped_cpu_processes()  # `accelerate launch --cpu --num_processes N` starts only one process
    main()
