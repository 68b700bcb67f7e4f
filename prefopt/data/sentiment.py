"""The built-in controlled-sentiment preference set (prefopt/assets), made by
``experiments/make_sentiment_pairs.py``."""

from __future__ import annotations

import json
from pathlib import Path

from prefopt.data.registry import no_options, parse_rows, read_table, register_dataset, require_str

ASSETS = Path(__file__).resolve().parent.parent / "assets"
PAIRS = ASSETS / "sentiment_pairs.jsonl"
PROMPTS = ASSETS / "sentiment_prompts.json"


@register_dataset("sentiment", kind="paired", default_path=str(PAIRS))
def load_sentiment(path: str | None, split: str, **options) -> list[dict]:
    """Single-turn pairs ``{prompt: str, chosen: str, rejected: str, score_chosen, score_rejected}``: two
    samples of the reference model per prompt, the one with the higher VADER compound score chosen.
    Only a ``train`` split exists; the trainer holds out ``dataset.eval_fraction`` of it."""
    no_options("sentiment", options)

    def parse(i: int, row: dict) -> dict:
        return {
            "index": i,
            "prompt": [{"role": "user", "content": require_str(row, "prompt", i)}],
            "chosen": require_str(row, "chosen", i),
            "rejected": require_str(row, "rejected", i),
            "score_chosen": row.get("score_chosen"),
            "score_rejected": row.get("score_rejected"),
        }

    return parse_rows(read_table(path or str(PAIRS), split), parse)


def heldout_prompts() -> list[str]:
    with open(PROMPTS, encoding="utf-8") as fh:
        return json.load(fh)["heldout"]
