"""Identical pairs and controlled label noise: what happens to preference pairs between filtering and training.

Identical pairs (``drop_identical_pairs``): a pair whose chosen and rejected completions are the same text
(compared after stripping surrounding whitespace, as the ``identical`` filter does) carries no preference.
For paired losses they are dropped by default, counted ``filtered_identical`` (the same key the opt-in
``identical`` filter uses, so a row is counted once whichever dropped it and ``rows_loaded = filtered_* +
rows_in`` still holds) with a warning; ``dataset.keep_identical=true`` keeps them, counted
``identical_kept``. The text, not the token ids, is compared: the decision then depends on the data only,
not on the tokenizer, its chat template or the truncation lengths, so every model of a study drops the same
rows, and it is made before the tokenized cache, whose key stays the rows that are tokenized.

Label noise (``apply_label_noise``): ``dataset.label_noise=r`` swaps chosen and rejected in exactly
``floor(r * n + 0.5)`` (rounding half up) of the ``n`` final training pairs, never the eval pairs. It is
applied to the tokenized rows, after the tokenized cache, because truncation treats the two completions
alike (a swapped pair tokenizes to the swapped ids) and so: ``n`` is the number of pairs that train, the
cache entry is shared by every noise rate and seed of a study, and the swap is cheap. Which pairs are
swapped depends only on the training rows and ``dataset.seed`` (not on the training ``seed``, the loss or
β), so a study compares losses, and training seeds, on the same noisy data:

- ``uniform``: the first ``k`` pairs of a ``random.Random(f"label_noise:{dataset.seed}")`` shuffle;
- ``near_ties``: the ``k`` pairs with the smallest gold score margin ``|score_chosen - score_rejected|``
  (equal margins in the order of that same shuffle); every training pair must carry both scores.

Unpaired (KTO-style) rows carry a binary label, not a pair: there ``dataset.label_noise=r`` flips the
``desirable`` label of ``floor(r * n + 0.5)`` of the ``n`` training rows, picked by the same seeded shuffle
(``uniform`` only: a lone row has no score margin, so ``near_ties`` is refused naming the key). That is the
noise of binary feedback, a thumbs-up recorded as a thumbs-down. When the rows were unrolled from pairs (each
pair a desirable and an undesirable row) the two rows of a pair are flipped independently, unlike a pair
swap, which flips both. The counts keep the paired names (``label_noise_pairs`` = training rows,
``label_noise_swapped`` = flipped rows), so every study reads one set of keys. SFT rows have no label to
flip and are refused.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from typing import Any

from prefopt.data.filters import drop_identical
from prefopt.data.registry import DataError

log = logging.getLogger(__name__)

LABEL_NOISE_MODES = ("uniform", "near_ties")


def check_settings(dcfg, filters: list[str], kind: str) -> None:
    """Bad label-noise or identical-pair settings, before any data is read: one error naming the key."""
    rate = getattr(dcfg, "label_noise", 0.0)
    mode = getattr(dcfg, "label_noise_mode", "uniform")
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate < 1.0:
        raise DataError(f"dataset.label_noise={rate!r} must be a fraction in [0, 1): the share of training "
                        "pairs whose chosen and rejected are swapped")
    if mode not in LABEL_NOISE_MODES:
        raise DataError(f"dataset.label_noise_mode={mode!r} is not a label-noise mode; known: "
                        f"{', '.join(LABEL_NOISE_MODES)}")
    if rate > 0 and kind == "sft":
        raise DataError(f"dataset.label_noise={rate} swaps chosen and rejected of preference pairs (or flips the "
                        f"desirable label of unpaired rows), but this loss trains on {kind} rows, which have no "
                        "label; use a preference loss or dataset.label_noise=0")
    if rate > 0 and kind == "unpaired" and mode == "near_ties":
        raise DataError("dataset.label_noise_mode=near_ties picks the pairs with the smallest gold score margin, "
                        "but this loss trains on unpaired rows, which have no margin; use "
                        "dataset.label_noise_mode=uniform")
    if getattr(dcfg, "keep_identical", False) and "identical" in filters:
        raise DataError("dataset.keep_identical=true asks to keep identical pairs, but dataset.filters lists "
                        "'identical', which drops them; remove one of the two")


def drop_identical_pairs(rows: list[dict[str, Any]], keep: bool, counts: Counter, split: str) -> list[dict]:
    """Paired rows without the identical pairs (or all of them, with ``keep``), counted either way."""
    identical = [r for r in rows if drop_identical(r)]
    if not identical:
        return rows
    some = ", ".join(str(r.get("index")) for r in identical[:5]) + (", ..." if len(identical) > 5 else "")
    if keep:
        counts["identical_kept"] += len(identical)
        log.warning("data %s: %d pair(s) have identical chosen and rejected completions (rows %s) and carry no "
                    "preference; kept because dataset.keep_identical=true (counted identical_kept)",
                    split, len(identical), some)
        return rows
    counts["filtered_identical"] += len(identical)
    log.warning("data %s: dropped %d pair(s) whose chosen and rejected completions are identical (rows %s): they "
                "carry no preference (counted filtered_identical; dataset.keep_identical=true keeps them)",
                split, len(identical), some)
    return [r for r in rows if not drop_identical(r)]


def n_swapped(rate: float, n: int) -> int:
    """How many of ``n`` pairs a rate swaps: ``rate * n`` rounded half up (0.25 * 10 -> 3)."""
    return min(n, math.floor(rate * n + 0.5))


def _margin(row: dict[str, Any]) -> float | None:
    scores = (row.get("score_chosen"), row.get("score_rejected"))
    if any(isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s) for s in scores):
        return None
    return abs(float(scores[0]) - float(scores[1]))


def choose_flips(source_rows: list[dict[str, Any]], indices: list[Any], rate: float, mode: str, seed: int,
                 dataset: str) -> list[int]:
    """Positions in ``indices`` (the training pairs' ``index``, in training order) to swap.

    ``source_rows`` are the normalized rows the pairs were tokenized from, for their gold scores."""
    n = len(indices)
    k = n_swapped(rate, n)
    order = list(range(n))
    random.Random(f"label_noise:{seed}").shuffle(order)
    if mode == "near_ties":
        margins = {r.get("index"): _margin(r) for r in source_rows}
        missing = [indices[p] for p in range(n) if margins.get(indices[p]) is None]
        if missing:
            raise DataError(
                f"dataset.label_noise_mode=near_ties flips the pairs with the smallest gold score margin, but "
                f"{len(missing)} of the {n} training pairs of dataset {dataset!r} have no numeric "
                f"score_chosen/score_rejected (e.g. row {missing[0]}); use dataset.label_noise_mode=uniform")
        order.sort(key=lambda p: margins[indices[p]])  # stable: equal margins keep the seeded order
    return sorted(order[:k])


def _flip(row: dict[str, Any]) -> dict[str, Any]:
    if "desirable" in row:  # an unpaired row: its binary label
        return {**row, "desirable": not row["desirable"]}
    return {**row, "chosen_ids": row["rejected_ids"], "rejected_ids": row["chosen_ids"]}


def apply_label_noise(train: list[dict[str, Any]], source_rows: list[dict[str, Any]], dcfg,
                      counts: Counter) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Tokenized training pairs with chosen and rejected swapped in the chosen ones, and the record written
    to ``<run dir>/label_noise_rows.json`` (None at rate 0, which changes nothing)."""
    rate = float(dcfg.label_noise)
    if rate == 0:
        return train, None
    positions = choose_flips(source_rows, [r["index"] for r in train], rate, dcfg.label_noise_mode,
                             dcfg.seed, dcfg.name)
    flipped = set(positions)
    out = [_flip(r) if i in flipped else r for i, r in enumerate(train)]
    counts["label_noise_pairs"] = len(train)
    counts["label_noise_swapped"] = len(positions)
    counts["label_noise_rate"] = rate
    rows = [train[p]["index"] for p in positions]
    log.info("data train: label noise flipped the label of %d of %d training rows (dataset.label_noise=%s, "
             "mode %s, dataset.seed=%s)", len(rows), len(train), rate, dcfg.label_noise_mode, dcfg.seed)
    record = {"label_noise": rate, "mode": dcfg.label_noise_mode, "seed": dcfg.seed, "pairs": len(train),
              "swapped": len(rows), "rows": rows}
    return out, record
