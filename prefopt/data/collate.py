"""Batches of tokenized rows as padded tensors with an exact completion mask."""

from __future__ import annotations

from typing import Any

import torch


def _pad(seqs: list[list[int]], starts: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    completion_mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (seq, start) in enumerate(zip(seqs, starts, strict=True)):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention_mask[i, : len(seq)] = 1
        completion_mask[i, start: len(seq)] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


def collate(examples: list[dict[str, Any]], pad_id: int, kind: str) -> dict[str, Any]:
    """Paired: rows ``[chosen_0..chosen_{B-1}, rejected_0..rejected_{B-1}]`` in one tensor, so policy
    (and reference) score a whole batch of pairs in a single concatenated forward pass.
    SFT: one row per example. Unpaired: one row per example plus ``desirable``."""
    prompts = [e["prompt_ids"] for e in examples]
    if kind == "paired":
        seqs = [p + e["chosen_ids"] for p, e in zip(prompts, examples, strict=True)]
        seqs += [p + e["rejected_ids"] for p, e in zip(prompts, examples, strict=True)]
        starts = [len(p) for p in prompts] * 2
    elif kind == "sft":
        seqs = [p + e["chosen_ids"] for p, e in zip(prompts, examples, strict=True)]
        starts = [len(p) for p in prompts]
    elif kind == "unpaired":
        seqs = [p + e["completion_ids"] for p, e in zip(prompts, examples, strict=True)]
        starts = [len(p) for p in prompts]
    else:
        raise ValueError(f"unknown data kind {kind!r}")
    batch = _pad(seqs, starts, pad_id)
    batch["n_examples"] = len(examples)
    batch["index"] = torch.tensor([e["index"] for e in examples])
    if kind == "unpaired":
        batch["desirable"] = torch.tensor([e["desirable"] for e in examples], dtype=torch.bool)
    return batch
