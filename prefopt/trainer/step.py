"""One optimizer step, and the loss call.

``optimizer_step`` scores this process's micro-batches of the step with policy and reference, calls the
configured losses (``compute_losses``), back-propagates, and applies one update; it returns the step's
metrics averaged over every example of the step on every process.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch

from prefopt import losses
from prefopt.data.collate import collate
from prefopt.scoring import score_batch
from prefopt.trainer import faults
from prefopt.trainer.batching import step_plan, to_device, tokens_of
from prefopt.trainer.distributed import backward_scale, micro_step, reduce_sums, scalar, uses_deepspeed

log = logging.getLogger("prefopt.train")


@dataclass
class StepResult:
    record: dict  # loss, rewards/*, logps/*, ... averaged over the step's examples; grad_norm, lr, speed
    n_examples: int
    tokens: float
    seconds: float
    skipped: bool  # a non-finite update dropped under trainer.on_nonfinite=skip
    # Positions the policy's decoder ran in this step on all processes: non-padding, and all (padding included).
    real_tokens: float = 0.0
    processed_tokens: float = 0.0


def optimizer_step(s, group: list[dict], step: int, epoch: int) -> StepResult:
    """Optimizer step number ``step`` (1-based) over ``group``, the examples of the step on all processes.

    ``s``: the ``TrainingSetup``. Each example weighs 1/len(group), so a step equals one batch of all its
    examples on any number of processes, including the shorter last step of an epoch. A NaN/inf loss or
    gradient raises ``NonFiniteError`` (``trainer.on_nonfinite=stop``) or drops the update (``skip``); every
    rank sees the same reduced flag and norm, so all of them stop or skip together."""
    n_step = len(group)
    start = time.perf_counter()
    sums: dict[str, float] = {"_tokens": 0.0, "_nonfinite": 0.0}
    scorer = getattr(s.scorer, "module", s.scorer)  # DDP and DeepSpeed wrap as .module
    real_before, processed_before = scorer.real_tokens, scorer.processed_tokens
    plan = step_plan(group, s.world, s.rank, s.cfg.trainer.batch_size)
    for j, micro in enumerate(plan):
        batch = to_device(collate(micro.rows, s.pad_id, s.kind), s.device)
        weights = micro.weights.to(s.device)
        with micro_step(s.accelerator, s.scorer, last=j == len(plan) - 1):
            # Policy and reference log-probs, plus whatever extra inputs the losses declared.
            logps = score_batch(s.scorer, s.reference, batch, s.kind, s.needs, weights)
            per_example, metrics = compute_losses(s.terms, logps, training=True, step=step, weights=weights)
            loss = (per_example * weights).sum() * backward_scale(s.accelerator) / n_step
            loss = faults.poison_loss(loss, step)
            if not torch.isfinite(loss):
                sums["_nonfinite"] += 1
                log.warning("non-finite loss at step %d on rows %s", step, batch["index"].tolist())
            s.accelerator.backward(loss)
        add_weighted(sums, {"loss": per_example, **metrics}, weights)
        sums["_tokens"] += tokens_of(batch, weights)
    sums["_real_tokens"] = float(scorer.real_tokens - real_before)
    sums["_processed_tokens"] = float(scorer.processed_tokens - processed_before)
    grad_norm = scalar(s.accelerator.clip_grad_norm_(s.scorer.parameters(), s.max_grad_norm))
    sums, _ = reduce_sums(s.accelerator, sums, 0.0)
    tokens = sums.pop("_tokens")
    real_tokens, processed_tokens = sums.pop("_real_tokens"), sums.pop("_processed_tokens")
    skipped = bool(sums.pop("_nonfinite")) or not math.isfinite(grad_norm)
    if skipped:
        message = (f"non-finite loss or gradient (grad_norm={grad_norm}) at step {step} (epoch {epoch}); "
                   "lower optimizer.lr or check the data")
        if s.cfg.trainer.on_nonfinite == "stop":
            raise faults.NonFiniteError(message)
        log.warning("%s: update skipped (trainer.on_nonfinite=skip)", message)
    elif not uses_deepspeed(s.accelerator):  # DeepSpeed stepped inside its backward
        s.optimizer.step()
    s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)
    s.reference.after_step(step, s.policy)
    elapsed = time.perf_counter() - start
    record = {k: v / n_step for k, v in sums.items()}
    record.update({"grad_norm": grad_norm, "lr": s.scheduler.get_last_lr()[0]})
    if processed_tokens:
        record["token_efficiency"] = real_tokens / processed_tokens
    return StepResult(record, n_step, tokens, elapsed, skipped, real_tokens, processed_tokens)


def compute_losses(terms, logps, training: bool, step: int | None = None,
                   weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """The loss call: the weighted sum of the configured losses over one batch; returns per-example losses
    ``(B,)`` and metrics. ``training`` lets stateful losses (BCO's running baseline) move their state only on
    train batches. A term with β modifiers gets this batch's β (a schedule reads ``step``, the optimizer step)
    and may scale its pairs (β-DPO's filtering; ``weights`` marks the real rows)."""
    total = None
    metrics: dict[str, torch.Tensor] = {}
    for term in terms:
        hparams, scale = term.hparams, None
        if term.beta is not None:
            hparams, scale, beta_metrics = term.beta(hparams, logps, training, step, weights)
            for key, value in beta_metrics.items():
                metrics.setdefault(key, value)
        out = losses.call(term.spec, logps, hparams, term.state, training=training)
        if scale is not None:
            out.losses = out.losses * scale
        total = term.weight * out.losses if total is None else total + term.weight * out.losses
        for key, value in out.metrics.items():
            metrics.setdefault(key, value)
        if len(terms) > 1:
            metrics[f"loss/{term.spec.name}"] = out.losses.detach()
    return total, metrics


def add_weighted(sums: dict[str, float], values: dict[str, torch.Tensor], weights: torch.Tensor) -> None:
    """Add each metric's sum over this micro-batch's real examples to ``sums`` (a scalar metric counts once
    per example), so that sums over ranks divided by the global count are exact means."""
    for key, value in values.items():
        value = value.detach().float()
        if value.numel() == weights.numel():
            total = float((value.reshape(-1) * weights).sum())
        else:
            total = float(value.mean()) * float(weights.sum())
        sums[key] = sums.get(key, 0.0) + total
