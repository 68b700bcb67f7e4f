"""The training loop of every prefopt run, and ``run(cfg)``, which wraps it with set-up and reporting.

    run(cfg)
      build_setup     setup.py       config checks, accelerator, data, policy, reference, optimizer
      (resume)        checkpoint.py  weights, optimizer, schedule, loss state, RNGs, metrics offset
      train           this file      epochs -> optimizer steps; log, eval, checkpoint between steps
        optimizer_step  step.py      micro-batches -> score -> compute_losses -> backward -> update
      evaluate_heldout evaluation.py held-out loss and rewards
      benchmark       prefopt/benchmarks/runner.py
      build_summary   summary.py     -> summary.json
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from prefopt.benchmarks.runner import benchmark_trained_policy
from prefopt.hub import push_model
from prefopt.io import atomic_write_json, atomic_write_text
from prefopt.lora import wrap_policy
from prefopt.model_card import write_model_card
from prefopt.models import load_model, save_model_atomically
from prefopt.sinks import build_sinks, install_log_redaction, redact
from prefopt.trainer import checkpoint, faults
from prefopt.trainer.batching import step_groups
from prefopt.trainer.counters import RunCounters
from prefopt.trainer.distributed import gathered_state_dict, reduce_sums
from prefopt.trainer.evaluation import evaluate_heldout
from prefopt.trainer.progress import Progress, show_bars, silence_library_bars
from prefopt.trainer.setup import TrainingSetup, build_setup
from prefopt.trainer.step import optimizer_step
from prefopt.trainer.summary import build_summary

log = logging.getLogger("prefopt.train")


def run(cfg: DictConfig, run_dir: str | os.PathLike | None = None, hydra_choices: dict | None = None) -> dict:
    """Train, evaluate, benchmark and write the run directory. Returns the summary dict."""
    wall_start = time.perf_counter()
    run_dir = Path(run_dir or cfg.run_dir or "runs/manual")
    resume_from: list[Path | None] = [None]

    def before_loading(accelerator) -> None:
        install_log_redaction()
        resume_from[0] = start_or_resume(cfg, run_dir, accelerator)

    if not show_bars(cfg.trainer.progress_bar):
        silence_library_bars()  # transformers' "Loading weights", datasets' map: frames too in CI logs
    s = build_setup(cfg, run_dir, before_loading)
    # Restored after prepare (sharded backends need the prepared model) and just before the loop, so the
    # restored RNG streams are not consumed by the set-up; the reference was built above from the initial
    # weights, as in the interrupted run.
    state = checkpoint.load(resume_from[0], s) if resume_from[0] else checkpoint.TrainState()
    if state.path is not None:
        log.info("resuming from %s (step %d)", state.path, state.step)
    counters = RunCounters.from_dict(state.counters)
    phases = {"setup": time.perf_counter() - wall_start}  # wall seconds of this process, by phase
    if s.is_main:
        # A resumed run's log is cut back to its checkpoint: no line of the lost steps, none twice.
        checkpoint.truncate_metrics(run_dir / "metrics.jsonl", state.metrics_offset)
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(redact(s.config))))
        if s.datasets.label_noise:  # dataset.label_noise > 0: which training pairs were swapped
            atomic_write_json(run_dir / "label_noise_rows.json", s.datasets.label_noise)
    sinks = build_sinks(cfg.logger, run_dir, s.config, s.is_main, name=run_dir.name)

    started, eval_before = time.perf_counter(), counters.eval_time
    step = train(s, counters, state.step, state.path, sinks)
    phases["train"] = time.perf_counter() - started - (counters.eval_time - eval_before)

    eval_metrics = heldout(s, counters)
    phases["eval"] = counters.eval_time - eval_before
    sinks.log({"split": "eval", "step": step, "epoch": counters.last_train.get("epoch", 0.0), **eval_metrics})
    policy = trained_policy(s)
    benchmark = None
    started = time.perf_counter()
    if cfg.benchmark.name != "none" and s.is_main:
        benchmark = benchmark_trained_policy(cfg, policy, s.reference, s.tokenizer, s.device, run_dir)
        sinks.log({"split": "benchmark", "step": step, **{k: v for k, v in benchmark.items() if k != "examples"}})
    phases["benchmark"] = time.perf_counter() - started
    started = time.perf_counter()
    if s.is_main and cfg.trainer.save_model:
        save_model_atomically(policy, s.tokenizer, run_dir / "model")  # a LoRA policy: its adapter alone
        if cfg.model.lora is not None and cfg.model.lora.save_merged:
            save_model_atomically(policy.merge_and_unload(), s.tokenizer, run_dir / "model_merged")
    phases["save"] = time.perf_counter() - started

    summary = build_summary(s, counters, step=step, eval_metrics=eval_metrics, benchmark=benchmark,
                            resumed_from=state.path, hydra_choices=hydra_choices, wall_start=wall_start, phases=phases)
    if s.online is not None:  # regime=online: samples, pairs, ties, sampling and labelling seconds of the run
        summary["online"] = {**dict(s.online.totals), "labeller": s.online.labeller.name,
                             "labeller_costs": s.online.labeller.costs.as_dict()}
    if s.is_main:
        atomic_write_json(run_dir / "summary.json", redact(summary))
        if cfg.trainer.save_model:  # the card reads the summary, so it is written after it
            write_model_card(run_dir, redact(summary), redact(s.config))
    sinks.finish(summary)
    s.accelerator.end_training()
    if s.is_main and cfg.hub.push:  # checked before training (check_hub); last, so a failed upload loses nothing
        push_model(cfg.hub, run_dir / "model", run_dir.name)
    return summary


def train(s: TrainingSetup, counters: RunCounters, start_step: int, last_checkpoint: Path | None, sinks) -> int:
    """Run the optimizer steps from ``start_step`` to ``s.total_steps``; returns the last step taken."""
    cfg = s.cfg
    progress = Progress(s.total_steps, start_step, s.is_main and cfg.trainer.progress_bar, cfg.trainer.log_every)
    step = start_step
    s.scorer.train()
    for epoch in range(cfg.epochs):
        groups = step_groups(s.datasets.train, cfg, s.world, epoch)
        for i, group in enumerate(groups):
            if epoch * s.steps_per_epoch + i < step:
                continue  # taken before the checkpoint this run resumed from
            if step >= s.total_steps:
                break
            if s.online is not None:  # regime=online: the step trains on fresh pairs of these rows' prompts
                group = s.online.pairs_for(s, group, step + 1)
            try:
                result = optimizer_step(s, group, step + 1, epoch)
            except faults.NonFiniteError as err:  # trainer.on_nonfinite=stop
                if s.is_main:
                    checkpoint.write_failure(s.run_dir, err, step, last_checkpoint)
                    sinks.finish(None)
                raise faults.NonFiniteError(f"{err}; last good checkpoint: {last_checkpoint}") from None
            step += 1
            counters.add_step(result.n_examples, result.tokens, result.seconds, result.real_tokens,
                              result.processed_tokens)
            counters.skipped_steps += result.skipped
            record = {**result.record, **(s.online.last if s.online is not None else {}),
                      "epoch": epoch + (i + 1) / len(groups), "step": step,
                      "pairs/s": result.n_examples / result.seconds, "tokens/s": result.tokens / result.seconds}
            if counters.skipped_steps:
                record["skipped_steps"] = counters.skipped_steps
            counters.last_train = record
            if step % cfg.trainer.log_every == 0 or step == s.total_steps:
                sinks.log({"split": "train", **record})
            progress.update(step, record)
            if cfg.trainer.eval_every and step % cfg.trainer.eval_every == 0 and step < s.total_steps:
                counters.eval_metrics = heldout(s, counters)
                sinks.log({"split": "eval", "step": step, "epoch": record["epoch"], **counters.eval_metrics})
            if cfg.trainer.checkpoint_every and step % cfg.trainer.checkpoint_every == 0 and step < s.total_steps:
                last_checkpoint = checkpoint.save(s, step, counters, sinks.offset()) or last_checkpoint
            faults.maybe_kill(step)  # PREFOPT_INJECT_FAULT=kill:<step>, for the resume tests only
    progress.close()
    return step


def start_or_resume(cfg: DictConfig, run_dir: Path, accelerator) -> Path | None:
    """The checkpoint to resume from (validated now, before minutes of loading and sharding), or None for a
    fresh run, whose directory is cleared of any earlier run."""
    resume_from = checkpoint.resolve_resume(cfg.resume, run_dir)
    if resume_from is not None:
        checkpoint.validate(resume_from, accelerator=accelerator, config=OmegaConf.to_container(cfg, resolve=True))
    elif accelerator.is_main_process:
        checkpoint.clear_previous_run(run_dir)
    accelerator.wait_for_everyone()  # every rank has resolved the resume point before rank 0 writes
    return resume_from


def heldout(s: TrainingSetup, counters: RunCounters) -> dict[str, float]:
    """The held-out metrics now; their sequences, decoder tokens and seconds go to the compute accounting."""
    started = time.perf_counter()
    scorer = getattr(s.scorer, "module", s.scorer)  # DDP and DeepSpeed wrap as .module
    before = scorer.real_tokens
    metrics = evaluate_heldout(s.scorer, s.reference, s.terms, s.kind, s.datasets.eval, s.cfg, s.pad_id, s.device,
                               s.accelerator)
    tokens, _ = reduce_sums(s.accelerator, {"tokens": float(scorer.real_tokens - before)}, 0.0)
    counters.eval_tokens += tokens["tokens"]
    counters.eval_time += time.perf_counter() - started
    counters.eval_sequences += sum(len([k for k in row if k.endswith("_ids") and k != "prompt_ids"])
                                   for row in s.datasets.eval)
    return metrics


def trained_policy(s: TrainingSetup):
    """The trained policy on rank 0: a transformers model with full weights, or, with model.lora, the peft
    model (base + adapters) that generates as it trained and saves its adapter alone."""
    full_state = gathered_state_dict(s.accelerator, s.scorer)  # collective under ZeRO-3 and FSDP
    policy = s.policy
    if full_state is not None and s.is_main:
        # ZeRO-3 and FSDP leave each rank a shard; rank 0 saves a fresh model holding the gathered weights.
        mcfg = s.cfg.model
        policy = load_model(mcfg.name_or_path, mcfg.dtype, mcfg.trust_remote_code)
        if mcfg.lora is not None:  # the gathered names are the peft model's
            policy = wrap_policy(policy, mcfg.lora)
        policy.load_state_dict(full_state, strict=False)
    return policy
