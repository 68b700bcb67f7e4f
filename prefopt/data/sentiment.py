"""The built-in controlled-sentiment preference set (prefopt/assets), made by
``experiments/make_sentiment_pairs.py``."""

from __future__ import annotations

import json
from pathlib import Path

from prefopt.data.registry import DataError, read_table, register_dataset, require_str

ASSETS = Path(__file__).resolve().parent.parent / "assets"
PAIRS = ASSETS / "sentiment_pairs.jsonl"
PROMPTS = ASSETS / "sentiment_prompts.json"


@register_dataset("sentiment", kind="paired", default_path=str(PAIRS))
def load_sentiment(path: str | None, split: str, **options) -> list[dict]:
    """Single-turn pairs ``{prompt: str, chosen: str, rejected: str, score_chosen, score_rejected}``: two
    samples of the reference model per prompt, the one with the higher VADER compound score chosen.
    Only a ``train`` split exists; the trainer holds out ``dataset.eval_fraction`` of it."""
    if options:
        raise DataError(f"dataset.options: the sentiment dataset takes no options, got {sorted(options)}")
    rows = read_table(path or str(PAIRS), split)
    out = []
    for i, row in enumerate(rows):
        out.append({
            "index": i,
            "prompt": [{"role": "user", "content": require_str(row, "prompt", i)}],
            "chosen": require_str(row, "chosen", i),
            "rejected": require_str(row, "rejected", i),
            "score_chosen": row.get("score_chosen"),
            "score_rejected": row.get("score_rejected"),
        })
    return out


def heldout_prompts() -> list[str]:
    with open(PROMPTS, encoding="utf-8") as fh:
        return json.load(fh)["heldout"]
