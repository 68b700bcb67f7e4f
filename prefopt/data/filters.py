"""Named row filters, applied to normalized rows before tokenization. Each drop is counted.

A filter is ``fn(row) -> True`` to drop the row; a filter set is a name standing for several filters
(``zephyr_beta``), expanded in place and still counted per filter (``filtered_<filter>``). A row
dropped by several filters is counted under the first one listed.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

from prefopt.data.registry import DataError

_FILTERS: dict[str, Callable[[dict], bool]] = {}
_FILTER_SETS: dict[str, list[str]] = {}


def register_filter(name: str):
    """``fn(row) -> True`` to drop the row."""

    def decorate(fn):
        if name in _FILTERS or name in _FILTER_SETS:
            raise ValueError(f"filter {name!r} is already registered")
        _FILTERS[name] = fn
        return fn

    return decorate


def register_filter_set(name: str, members: list[str]) -> None:
    if name in _FILTERS or name in _FILTER_SETS:
        raise ValueError(f"filter {name!r} is already registered")
    _FILTER_SETS[name] = list(members)


def _positive(row: dict) -> str | None:
    """The completion a row trains the model towards: chosen, or a desirable unpaired completion."""
    if "chosen" in row:
        return row["chosen"]
    if row.get("desirable"):
        return row.get("completion")
    return None


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


@register_filter("wrong_case")
def drop_wrong_case(row: dict) -> bool:
    """The trained-towards answer is prose that starts with a lower-case word: UltraChat's most common
    casing defect, which ultrachat_200k fixed for Zephyr-β. "Prose" = a first line of at least four
    words, so one-word task answers ("no", "negative") and labels ("c) 5000") are kept. Only the positive
    side is checked: a badly cased rejected answer is something to move away from."""
    text = _positive(row)
    if not text or not text.strip():
        return False
    first_line = text.strip().split("\n", 1)[0].split()
    return len(first_line) >= 4 and first_line[0].isalpha() and first_line[0].islower()


# Openers that announce the model rather than answer: the responses Zephyr-β's data filtering removed
# ("I do not have emotions", "As an AI language model", ...). Matched at the start of the answer only.
_ODD_PREFACE = re.compile(
    r"^\s*(?:"
    r"as an? (?:ai|artificial intelligence|language model|large language model|ai language model|ai assistant)\b"
    r"|i(?:'m| am) (?:just )?an? (?:ai|artificial intelligence|language model|large language model)\b"
    r"|i (?:do not|don't|cannot|can't) (?:have|experience|hold|form) (?:personal |any )?"
    r"(?:emotions|feelings|opinions|beliefs|experiences|preferences|personal)"
    r")",
    re.IGNORECASE,
)


@register_filter("odd_preface")
def drop_odd_preface(row: dict) -> bool:
    """The trained-towards answer opens by talking about being an AI (see ``_ODD_PREFACE``)."""
    text = _positive(row)
    return bool(text) and bool(_ODD_PREFACE.match(text.replace("\u2019", "'")))


# Zephyr-β's extra data filtering over Zephyr-α: wrongly cased and oddly prefaced answers.
register_filter_set("zephyr_beta", ["wrong_case", "odd_preface"])


def filter_names() -> list[str]:
    return sorted([*_FILTERS, *_FILTER_SETS])


def expand_filters(names: list[str]) -> list[str]:
    """Filter-set names replaced by their members, duplicates removed, order kept."""
    out: list[str] = []
    for name in names:
        if name in _FILTER_SETS:
            members = _FILTER_SETS[name]
        elif name in _FILTERS:
            members = [name]
        else:
            raise DataError(f"dataset.filters: unknown filter {name!r}; known: {', '.join(filter_names())}")
        out.extend(m for m in members if m not in out)
    return out


def apply_filters(rows: list[dict], names: list[str], counts: Counter) -> list[dict]:
    fns = [(name, _FILTERS[name]) for name in expand_filters(names)]
    kept = []
    for row in rows:
        for name, fn in fns:
            if fn(row):
                counts[f"filtered_{name}"] += 1
                break
        else:
            kept.append(row)
    return kept
