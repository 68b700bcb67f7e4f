"""Which examples go into which micro-batch, optimizer step and process.

Everything here is a pure function of the rows, the config, the seed and the epoch, so the data position of
a resumed run is just its step count, and a run on N processes with ``batch_size = B / N`` takes exactly the
steps of one process with ``B`` (``tests/trainer/test_distributed.py`` checks that invariant end to end).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch


def row_length(row: dict) -> int:
    # The padded width a row forces on its batch: prompt plus its longest completion.
    return len(row["prompt_ids"]) + max(len(v) for k, v in row.items() if k.endswith("_ids") and k != "prompt_ids")


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


def steps_per_epoch(n_rows: int, cfg, world: int) -> int:
    return math.ceil(math.ceil(n_rows / cfg.trainer.batch_size) / (cfg.trainer.grad_accum * world))


@dataclass
class MicroBatch:
    rows: list[dict]
    # 1 for a real example of this rank, 0 for a stand-in that only keeps the collectives in step.
    weights: torch.Tensor

    @property
    def n_real(self) -> int:
        return int(self.weights.sum())


def step_plan(group: list[dict], world: int, rank: int, batch_size: int) -> list[MicroBatch]:
    """This rank's micro-batches of one global step.

    The ``len(group)`` examples are cut into ``world`` contiguous slices whose sizes differ by at most one
    (rank r takes the r-th), each cut into micro-batches of ``batch_size``. Every rank returns the same
    number of micro-batches, because DDP forward passes broadcast buffers and ZeRO-3 forward passes gather
    parameters: both are collective (a rank whose slice runs out gets a zero-weight stand-in). With
    ``world == 1`` this is the single-process batching, so a run on N processes with ``batch_size = B / N``
    sees exactly the steps of a single-process run with ``B``.
    """
    base, extra = divmod(len(group), world)
    sizes = [base + (1 if r < extra else 0) for r in range(world)]
    start = sum(sizes[:rank])
    mine = group[start:start + sizes[rank]]
    n_micro = max(1, math.ceil(max(sizes) / batch_size))
    plan = []
    for i in range(n_micro):
        rows = mine[i * batch_size:(i + 1) * batch_size]
        if rows:
            plan.append(MicroBatch(rows, torch.ones(len(rows))))
        else:
            plan.append(MicroBatch([group[0]], torch.zeros(1)))
    return plan


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def tokens_of(batch: dict, weights: torch.Tensor) -> float:
    """Non-padding tokens of the real examples of a collated batch (paired batches hold 2 rows each)."""
    per_row = batch["attention_mask"].sum(-1).float()
    if per_row.numel() % weights.numel():  # rows not laid out per example: share the tokens by weight
        return float(per_row.sum() * weights.float().mean())
    return float((per_row.view(-1, weights.numel()) * weights).sum())
