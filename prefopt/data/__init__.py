"""Datasets: a registry of loaders (one module per format), filters, and chat-template tokenization.

``build_datasets(cfg.dataset, tokenizer, kind)`` is what the trainer calls: it loads, filters, splits,
tokenizes and counts every drop and truncation.
"""

from __future__ import annotations

import importlib
import pkgutil
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from prefopt.data.filters import apply_filters, filter_names, register_filter
from prefopt.data.registry import (
    DataError,
    UnknownDatasetError,
    dataset_names,
    get_dataset,
    read_table,
    register_dataset,
)
from prefopt.data.tokenize import EncodeSettings, TokenizeStats, encode_rows

_NOT_LOADERS = {"registry", "tokenize", "filters", "collate"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _NOT_LOADERS and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")


@dataclass
class Datasets:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    stats: dict[str, dict[str, int]] = field(default_factory=dict)


def to_kind(rows: list[dict], source_kind: str, kind: str, dataset: str) -> list[dict]:
    """Adapt rows to what the loss consumes: SFT takes the chosen side of pairs; unpaired losses take
    each pair unrolled into a desirable and an undesirable row."""
    if source_kind == kind:
        return rows
    if source_kind == "paired" and kind == "sft":
        return [{k: v for k, v in r.items() if k != "rejected"} for r in rows]
    if source_kind == "paired" and kind == "unpaired":
        out = []
        for r in rows:
            base = {k: v for k, v in r.items() if k not in ("chosen", "rejected")}
            out.append({**base, "completion": r["chosen"], "desirable": True})
            out.append({**base, "completion": r["rejected"], "desirable": False})
        return out
    raise DataError(f"dataset.name={dataset!r} has {source_kind} rows, but the loss needs {kind} data")


def load_rows(dcfg, split: str) -> list[dict]:
    spec = get_dataset(dcfg.name)
    return spec.fn(dcfg.path, split, **dict(dcfg.options or {}))


def build_datasets(dcfg, tokenizer, kind: str, eot_token: str | None = None) -> Datasets:
    spec = get_dataset(dcfg.name)
    counts: dict[str, Counter] = {"train": Counter(), "eval": Counter()}
    train_rows = load_rows(dcfg, dcfg.train_split)
    if dcfg.eval_split:
        eval_rows = load_rows(dcfg, dcfg.eval_split)
    else:
        if not 0.0 < dcfg.eval_fraction < 1.0:
            raise DataError(f"dataset.eval_fraction={dcfg.eval_fraction} must be in (0, 1) when dataset.eval_split is null")
        order = list(range(len(train_rows)))
        random.Random(dcfg.seed).shuffle(order)
        n_eval = max(1, round(len(order) * dcfg.eval_fraction))
        eval_rows = [train_rows[i] for i in sorted(order[:n_eval])]
        train_rows = [train_rows[i] for i in sorted(order[n_eval:])]
    if dcfg.max_train_rows:
        train_rows = train_rows[: dcfg.max_train_rows]
    if dcfg.max_eval_rows:
        eval_rows = eval_rows[: dcfg.max_eval_rows]

    settings = EncodeSettings(dcfg.max_length, dcfg.max_prompt_length, eot_token)
    encoded = {}
    for split, rows in (("train", train_rows), ("eval", eval_rows)):
        rows = apply_filters(rows, list(dcfg.filters), counts[split])
        rows = to_kind(rows, spec.kind, kind, dcfg.name)
        stats = TokenizeStats(counts[split])
        encoded[split] = encode_rows(rows, tokenizer, settings, kind, stats)
    if not encoded["train"]:
        raise DataError(
            f"dataset {dcfg.name!r}: no training rows left after filtering and truncation "
            f"({dict(counts['train'])})"
        )
    return Datasets(encoded["train"], encoded["eval"], {k: dict(sorted(v.items())) for k, v in counts.items()})


__all__ = [
    "DataError", "Datasets", "UnknownDatasetError", "build_datasets", "dataset_names", "filter_names",
    "get_dataset", "load_rows", "read_table", "register_dataset", "register_filter", "to_kind",
]
