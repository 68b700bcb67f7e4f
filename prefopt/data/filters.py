"""Named row filters, applied to normalized rows before tokenization. Each drop is counted."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from prefopt.data.registry import DataError

_FILTERS: dict[str, Callable[[dict], bool]] = {}


def register_filter(name: str):
    """``fn(row) -> True`` to drop the row."""

    def decorate(fn):
        if name in _FILTERS:
            raise ValueError(f"filter {name!r} is already registered")
        _FILTERS[name] = fn
        return fn

    return decorate


@register_filter("ties")
def drop_ties(row: dict) -> bool:
    """Pairs whose chosen and rejected scores are equal carry no preference."""
    return row.get("score_chosen") is not None and row.get("score_chosen") == row.get("score_rejected")


@register_filter("identical")
def drop_identical(row: dict) -> bool:
    return "rejected" in row and row["chosen"].strip() == row["rejected"].strip()


@register_filter("empty")
def drop_empty(row: dict) -> bool:
    """Any empty turn: a blank completion or a blank prompt message."""
    texts = [row.get("chosen", row.get("completion", ""))] + ([row["rejected"]] if "rejected" in row else [])
    return any(not t.strip() for t in texts) or any(not m["content"].strip() for m in row["prompt"])


def filter_names() -> list[str]:
    return sorted(_FILTERS)


def apply_filters(rows: list[dict], names: list[str], counts: Counter) -> list[dict]:
    fns = []
    for name in names:
        if name not in _FILTERS:
            raise DataError(f"dataset.filters: unknown filter {name!r}; known: {', '.join(filter_names())}")
        fns.append((name, _FILTERS[name]))
    kept = []
    for row in rows:
        for name, fn in fns:
            if fn(row):
                counts[f"filtered_{name}"] += 1
                break
        else:
            kept.append(row)
    return kept
