"""Held-out preference metrics: the loss and rewards/*, logps/* of the configured losses on the eval pairs, and
the monitors of ``prefopt.trainer.monitors`` (log-prob drift, calibration, agreement with the gold reward)."""

from __future__ import annotations

import torch

from prefopt.data.collate import collate
from prefopt.scoring import required_inputs, score_batch
from prefopt.trainer.batching import batches, step_plan, to_device
from prefopt.trainer.distributed import reduce_sums
from prefopt.trainer.monitors import Monitors
from prefopt.trainer.step import add_weighted, compute_losses


@torch.no_grad()
def evaluate_heldout(scorer, reference, terms, kind, rows, cfg, pad_id, device, accelerator=None) -> dict[str, float]:
    """Held-out loss and rewards/*, logps/* averaged over every eval example (not batch means), under the
    ``eval/`` prefix. With several processes each scores a disjoint share of the rows and the sums are
    reduced."""
    if not rows:
        return {}
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    ordered = [row for chunk in batches(rows, cfg.trainer.eval_batch_size, False, 0, cfg.trainer.group_by_length)
               for row in chunk]
    scorer.eval()
    sums: dict[str, float] = {}
    count = 0.0
    monitors = Monitors(terms)
    for micro in step_plan(ordered, world, rank, cfg.trainer.eval_batch_size):
        batch = to_device(collate(micro.rows, pad_id, kind), device)
        weights = micro.weights.to(device)
        logps = score_batch(scorer, reference, batch, kind, required_inputs(terms), weights)
        monitors.add(logps, micro.rows, weights)
        per_example, metrics = compute_losses(terms, logps, training=False, weights=weights)
        add_weighted(sums, {"loss": per_example, **metrics}, weights)
        count += micro.n_real
    scorer.train()
    if accelerator is not None:
        sums, count = reduce_sums(accelerator, sums, count)
    return {**{f"eval/{k}": v / count for k, v in sums.items()}, **monitors.result(accelerator)}
