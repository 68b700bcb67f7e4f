"""What the online and round regimes share: the benchmark's gold scorer, and labelling k samples per prompt
into pairs with any labeller (scores or pairwise verdicts). Imports nothing of the trainer."""

from __future__ import annotations

import importlib
import random
from collections import Counter

from prefopt import benchmarks
from prefopt.labellers import Labeller
from prefopt.online.pairs import build_pairs, build_pairs_pairwise, needed_comparisons


def gold_scorer(bcfg):
    """The benchmark's ground-truth scorer (``gold_score`` in its module), or None."""
    if bcfg is None or bcfg.get("name") in (None, "none"):
        return None
    return getattr(importlib.import_module(benchmarks.spec(bcfg.name).run.__module__), "gold_score", None)


def prompt_text(prompt: list[dict]) -> str:
    return "\n\n".join(m["content"] for m in prompt if m["role"] == "user")


def label_round(labeller: Labeller, prompts: list[str], samples: list[list[str]], mode: str, tie_margin: float,
                rng: random.Random, counts: Counter) -> tuple[list[list[float | None]], list[list[dict]]]:
    """Per prompt: the labels of its samples (scores, or Copeland wins of a comparing labeller) and its pairs."""
    if not labeller.pairwise:
        flat = labeller.score([p for p, s in zip(prompts, samples, strict=True) for _ in s],
                              [text for s in samples for text in s])
        scores, at = [], 0
        for s in samples:
            scores.append(flat[at:at + len(s)])
            at += len(s)
        return scores, [build_pairs(sc, mode, rng, tie_margin, counts) for sc in scores]
    asked = [needed_comparisons(len(s), mode, rng) for s in samples]
    verdicts = labeller.compare([p for p, a in zip(prompts, asked, strict=True) for _ in a],
                                [s[i] for s, a in zip(samples, asked, strict=True) for i, _ in a],
                                [s[j] for s, a in zip(samples, asked, strict=True) for _, j in a])
    all_pairs, all_scores, at = [], [], 0
    for s, a in zip(samples, asked, strict=True):
        given = dict(zip(a, verdicts[at:at + len(a)], strict=True))
        at += len(a)
        pairs = build_pairs_pairwise(len(s), given, mode, counts)
        wins = [0.0] * len(s)
        for (i, j), v in given.items():
            if v is not None:
                wins[i if v == 0 else j] += 1
        all_pairs.append(pairs)
        all_scores.append(wins)
    return all_scores, all_pairs
