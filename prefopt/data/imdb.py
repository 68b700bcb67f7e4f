"""IMDb review prefixes: the prompts of the DPO paper's controlled-sentiment task."""

from __future__ import annotations

import random
import re

from prefopt.data.registry import (
    DataError,
    check_options,
    parse_rows,
    read_table,
    register_dataset,
    require_str,
)

HUB_ID = "stanfordnlp/imdb"
OPTIONS = {
    # The DPO paper prompts with review prefixes of 2-8 tokens; words keep this tokenizer-independent.
    "min_words": 2,
    "max_words": 8,
    # null = every review; 1 = positive only, 0 = negative only.
    "label": None,
    # How a prefix becomes the user turn; the default asks a chat model to continue the review.
    "template": "Continue this movie review: {prefix}",
    "seed": 0,
}
_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)


def review_prefix(text: str, words: int) -> str:
    """The first ``words`` words of a review, with IMDb's HTML line breaks read as spaces."""
    return " ".join(_BREAK.sub(" ", text).split()[:words])


@register_dataset("imdb", kind="prompts", default_path=HUB_ID)
def load_imdb(path: str | None, split: str, **options) -> list[dict]:
    """Rows ``{text: str, label: 0|1}`` (hub ``stanfordnlp/imdb`` splits ``train``/``test``; the local copy
    in ``../shared/data/imdb`` also has ``id`` and ``rating``). Each review becomes a prompt: its first
    n words (n drawn per row from [min_words, max_words] with a seeded rng; ``<br />`` tags become
    spaces) put into ``template``. Prompts only: used to sample pairs or as benchmark prompts."""
    opts = check_options("imdb", options, OPTIONS)
    if not 1 <= opts["min_words"] <= opts["max_words"]:
        raise DataError(f"dataset.options: need 1 <= min_words <= max_words, got {opts['min_words']}, {opts['max_words']}")
    if "{prefix}" not in opts["template"]:
        raise DataError("dataset.options.template must contain {prefix}")

    def parse(i: int, row: dict) -> dict | None:
        text = require_str(row, "text", i)
        label = row.get("label")
        if label not in (0, 1):
            raise DataError(f"row {i}: field 'label' must be 0 or 1, got {label!r}")
        if opts["label"] is not None and label != opts["label"]:
            return None
        n = random.Random(f"{opts['seed']}:{i}").randint(opts["min_words"], opts["max_words"])
        prefix = review_prefix(text, n)
        if not prefix:
            raise DataError(f"row {i}: field 'text' is empty")
        return {"index": i, "prompt": [{"role": "user", "content": opts["template"].format(prefix=prefix)}],
                "prefix": prefix, "label": label, "review_id": row.get("id")}

    return parse_rows(read_table(path or HUB_ID, split), parse)
