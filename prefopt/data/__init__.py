"""Datasets: a registry of loaders (one module per format), filters, and chat-template tokenization.

``build_datasets(cfg.dataset, tokenizer, kind)`` is what the trainer calls: it loads, filters, splits,
tokenizes and counts every drop and truncation.
"""

from __future__ import annotations

import importlib
import logging
import math
import pkgutil
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefopt.data import cache as tokenized_cache
from prefopt.data.filters import (
    apply_filters,
    expand_filters,
    filter_names,
    register_filter,
    register_filter_set,
)
from prefopt.data.noise import apply_label_noise, check_settings, drop_identical_pairs
from prefopt.data.registry import (
    DataError,
    UnknownDatasetError,
    count_skip,
    dataset_names,
    get_dataset,
    loading,
    parse_rows,
    read_table,
    register_dataset,
)
from prefopt.data.tokenize import EncodeSettings, TokenizeStats, encode_rows, end_of_turn_token

log = logging.getLogger(__name__)

_NOT_LOADERS = {"registry", "tokenize", "filters", "collate", "cache", "noise"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _NOT_LOADERS and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

COMPLETION_KEYS = {"paired": ("chosen", "rejected"), "sft": ("chosen",), "unpaired": ("completion",)}


@dataclass
class Datasets:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    stats: dict[str, dict[str, int]] = field(default_factory=dict)
    # dataset.label_noise > 0: the rate, mode, seed, counts and swapped rows' ``index`` (written by the
    # trainer as <run dir>/label_noise_rows.json); None otherwise.
    label_noise: dict[str, Any] | None = None


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
    if source_kind == "prompts":
        raise DataError(f"dataset.name={dataset!r} holds prompts only (for sampling or a generation benchmark); "
                        "training needs a preference or SFT dataset")
    raise DataError(f"dataset.name={dataset!r} has {source_kind} rows, but the loss needs {kind} data")


def load_rows(dcfg, split: str | None, counts: Counter | None = None, path: str | None = None) -> list[dict]:
    """The normalized rows of one split; loader skips are added to ``counts``."""
    spec = get_dataset(dcfg.name)
    with loading(counts if counts is not None else Counter(), getattr(dcfg, "bad_rows", "error"), dcfg.name):
        return spec.fn(path or dcfg.path, split, **dict(dcfg.options or {}))


def check_nonempty(rows: list[dict], keys: tuple[str, ...], counts: Counter, bad_rows: str) -> list[dict]:
    """Blank answers or prompt turns left after filtering: an error naming the row and field, unless
    ``dataset.bad_rows=skip`` (counted). The ``empty`` filter drops them first when listed."""
    kept = []
    for row in rows:
        problem = next((f"field {key!r} is empty" for key in keys if not row[key].strip()), None)
        if problem is None:
            problem = next((f"prompt[{j}].content is empty" for j, m in enumerate(row["prompt"])
                            if not m["content"].strip()), None)
        if problem is None and not row["prompt"]:
            problem = "the prompt has no turns"
        if problem is None:
            kept.append(row)
        elif bad_rows == "skip":
            counts["skipped_bad_row"] += 1
        else:
            raise DataError(f"row {row.get('index')}: {problem}; add 'empty' to dataset.filters to drop "
                            "such rows (counted in summary.json)")
    return kept


def _single_local_file(path: str | None) -> bool:
    return bool(path) and Path(path).expanduser().is_file()


def split_rows(dcfg, counts: dict[str, Counter]) -> tuple[list[dict], list[dict]]:
    """Train and eval rows: from eval_path, from eval_split of the same source, or held out of train."""
    spec = get_dataset(dcfg.name)
    train_rows = load_rows(dcfg, dcfg.train_split, counts["train"])
    eval_path = getattr(dcfg, "eval_path", None)
    path = dcfg.path or spec.default_path
    if eval_path:
        return train_rows, load_rows(dcfg, dcfg.eval_split, counts["eval"], path=eval_path)
    if dcfg.eval_split and not _single_local_file(path):
        return train_rows, load_rows(dcfg, dcfg.eval_split, counts["eval"])
    if dcfg.eval_split:
        log.warning("dataset.path=%s is a single file, so it holds one split; holding out "
                    "dataset.eval_fraction=%s of it for eval (set dataset.eval_path to use a separate file)",
                    path, dcfg.eval_fraction)
    if not 0.0 < dcfg.eval_fraction < 1.0:
        raise DataError(f"dataset.eval_fraction={dcfg.eval_fraction} must be in (0, 1) when the eval rows "
                        "are held out of the train rows")
    # Hold out whole source rows, so the turns of one conversation never straddle train and eval.
    sources = sorted({r["index"] for r in train_rows})
    random.Random(dcfg.seed).shuffle(sources)
    n_eval = max(1, round(len(sources) * dcfg.eval_fraction))
    held = set(sources[:n_eval])
    counts["eval"]["heldout_from_train"] = n_eval
    return [r for r in train_rows if r["index"] not in held], [r for r in train_rows if r["index"] in held]


def build_datasets(dcfg, tokenizer, kind: str, eot_token: str | None = None) -> Datasets:
    """Load, split, filter, check, tokenize (or reuse the tokenized cache) and count, per split.

    ``stats[split]`` ends up in ``summary.json["data"]["counts"]``: loader skips (``skipped_*``,
    ``completions_unscored``), filter drops (``filtered_<name>``), truncations (``truncated_prompt``,
    ``truncated_<completion>``), drops (``dropped_completion_vanished``), ``rows_in``/``rows_kept``,
    ``tokenized_cache_hit``/``tokenized_cache_miss``, identical pairs (``filtered_identical`` or
    ``identical_kept``) and label noise (``label_noise_swapped`` of ``label_noise_pairs`` at
    ``label_noise_rate``). Identical pairs and label noise are described in ``prefopt.data.noise``.
    """
    spec = get_dataset(dcfg.name)
    filters = expand_filters(list(dcfg.filters))
    check_settings(dcfg, filters, kind)
    counts: dict[str, Counter] = {"train": Counter(), "eval": Counter()}
    train_rows, eval_rows = split_rows(dcfg, counts)
    if dcfg.max_train_rows:
        train_rows = train_rows[: dcfg.max_train_rows]
    if dcfg.max_eval_rows:
        eval_rows = eval_rows[: dcfg.max_eval_rows]

    settings = EncodeSettings(dcfg.max_length, dcfg.max_prompt_length, eot_token)
    eot = end_of_turn_token(tokenizer, eot_token)
    use_cache = getattr(dcfg, "cache", True)
    cache_dir = Path(getattr(dcfg, "cache_dir", None) or Path(_cache_root()) / "tokenized")
    encoded, normalized = {}, {}
    for split, rows in (("train", train_rows), ("eval", eval_rows)):
        counts[split]["rows_loaded"] += len(rows)
        rows = apply_filters(rows, filters, counts[split])
        if spec.kind == "paired" and kind == "paired":
            rows = drop_identical_pairs(rows, getattr(dcfg, "keep_identical", False), counts[split], split)
        rows = to_kind(rows, spec.kind, kind, dcfg.name)
        rows = check_nonempty(rows, COMPLETION_KEYS[kind], counts[split], getattr(dcfg, "bad_rows", "error"))
        normalized[split] = rows
        entry = None
        if use_cache:
            key = tokenized_cache.fingerprint(tokenizer, eot, settings, kind, rows)
            entry = cache_dir / f"{key}.npz"
            hit = tokenized_cache.load(entry)
            if hit is not None:
                encoded[split], cached_counts = hit
                counts[split].update(cached_counts)
                counts[split]["tokenized_cache_hit"] = 1
                log.info("data %s: tokenized cache hit %s (%d rows)", split, entry.name, len(encoded[split]))
                continue
        stats = TokenizeStats()
        encoded[split] = encode_rows(rows, tokenizer, settings, kind, stats)
        counts[split].update(stats.counts)
        if entry is not None:
            tokenized_cache.save(entry, encoded[split], dict(stats.counts))
            counts[split]["tokenized_cache_miss"] = 1
            log.info("data %s: tokenized cache miss, wrote %s (%d rows)", split, entry, len(encoded[split]))
    if not encoded["train"]:
        raise DataError(
            f"dataset {dcfg.name!r}: no training rows left after filtering and truncation "
            f"({dict(counts['train'])})"
        )
    # After the cache, so that every noise rate and seed of a study shares one tokenized entry.
    train, noise = encoded["train"], None
    if getattr(dcfg, "label_noise", 0.0):
        train, noise = apply_label_noise(train, normalized["train"], dcfg, counts["train"])
    eval_rows = with_gold_margins(encoded["eval"], normalized["eval"]) if kind == "paired" else encoded["eval"]
    return Datasets(train, eval_rows, {k: dict(sorted(v.items())) for k, v in counts.items()}, noise)


def with_gold_margins(encoded: list[dict], source_rows: list[dict]) -> list[dict]:
    """Tokenized pairs with ``gold_margin = score_chosen - score_rejected`` of their source row, where it has
    both scores (the sentiment pairs' VADER scores): the eval monitors correlate it with the implicit reward
    (``prefopt.trainer.monitors``). Added after the tokenized cache, whose entries stay the ids alone."""
    margins = {}
    for row in source_rows:
        scores = (row.get("score_chosen"), row.get("score_rejected"))
        if all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in scores):
            margins[row.get("index")] = float(scores[0]) - float(scores[1])
    return [{**r, "gold_margin": margins[r["index"]]} if r["index"] in margins else r for r in encoded]


def _cache_root():
    from prefopt.models import cache_root

    return cache_root()


__all__ = [
    "DataError", "Datasets", "UnknownDatasetError", "build_datasets", "check_nonempty", "count_skip",
    "dataset_names", "filter_names", "get_dataset", "load_rows", "parse_rows", "read_table", "register_dataset",
    "register_filter", "register_filter_set", "split_rows", "to_kind",
]
