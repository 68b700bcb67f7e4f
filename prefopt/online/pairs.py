"""Preference pairs from k labelled samples of one prompt.

    build_pairs(samples, scores, mode, rng)          # a scoring labeller: one score per sample
    build_pairs_pairwise(samples, labeller, ...)     # a comparing labeller: verdicts on pairs

Modes (``regime.pairs``):
- ``best_vs_worst``: the highest- against the lowest-scored sample (one pair per prompt; the choice of
  online DPO / RLOO-style best-of-k papers, e.g. Xiong et al. 2024, arXiv 2312.11456);
- ``random``: two distinct samples drawn with ``rng``, ordered by their scores;
- ``all_pairs``: every one of the k(k-1)/2 pairs, ordered by score.

A pair whose scores differ by ``tie_margin`` or less carries no preference: dropped and counted ``ties``. A
sample the labeller could not label (None) is dropped and counted ``unlabelled``; a prompt left with fewer than
two labelled samples gives no pair. Pairs are dicts ``{"chosen", "rejected", "score_chosen",
"score_rejected"}`` holding sample indices and scores, so the caller keeps the texts.

A comparing labeller is asked only about the pairs the mode needs: ``random`` one comparison, ``all_pairs`` all
of them; ``best_vs_worst`` asks all pairs and ranks samples by wins (Copeland), then compares best and worst
as ordered by that ranking, using the verdict already given.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter

MODES = ("best_vs_worst", "random", "all_pairs")


def _ordered(i: int, j: int, scores: list[float], tie_margin: float, counts: Counter) -> dict | None:
    if abs(scores[i] - scores[j]) <= tie_margin:
        counts["ties"] += 1
        return None
    hi, lo = (i, j) if scores[i] > scores[j] else (j, i)
    return {"chosen": hi, "rejected": lo, "score_chosen": scores[hi], "score_rejected": scores[lo]}


def build_pairs(scores: list[float | None], mode: str, rng: random.Random, tie_margin: float = 0.0,
                counts: Counter | None = None) -> list[dict]:
    """Pairs of sample indices of one prompt from per-sample scores (see the module docstring)."""
    counts = counts if counts is not None else Counter()
    labelled = [i for i, s in enumerate(scores) if s is not None]
    counts["unlabelled"] += len(scores) - len(labelled)
    if len(labelled) < 2:
        counts["prompts_without_pair"] += 1
        return []
    if mode == "best_vs_worst":
        # Stable: among equal scores the earliest sample is both "best" and "worst" candidate in order.
        best = max(labelled, key=lambda i: (scores[i], -i))
        worst = min(labelled, key=lambda i: (scores[i], i))
        candidates = [(best, worst)]
    elif mode == "random":
        candidates = [tuple(rng.sample(labelled, 2))]
    elif mode == "all_pairs":
        candidates = list(itertools.combinations(labelled, 2))
    else:
        raise ValueError(f"regime.pairs={mode!r}: must be one of {', '.join(MODES)}")
    pairs = [p for i, j in candidates if (p := _ordered(i, j, scores, tie_margin, counts)) is not None]
    if not pairs:
        counts["prompts_without_pair"] += 1
    return pairs


def build_pairs_pairwise(k: int, verdicts: dict[tuple[int, int], int | None], mode: str,
                         counts: Counter | None = None) -> list[dict]:
    """Pairs from a comparing labeller's ``verdicts[(i, j)]`` (0 = i preferred, 1 = j, None = tie/malformed) for
    the index pairs ``needed_comparisons`` asked for. Scores in the pairs are win counts (Copeland)."""
    counts = counts if counts is not None else Counter()
    wins = [0] * k
    for (i, j), verdict in verdicts.items():
        if verdict is not None:
            wins[i if verdict == 0 else j] += 1
    pairs = []
    if mode == "best_vs_worst":
        best = max(range(k), key=lambda i: (wins[i], -i))
        worst = min(range(k), key=lambda i: (wins[i], i))
        key = (min(best, worst), max(best, worst))
        chosen_pairs = [key] if best != worst else []
    else:
        chosen_pairs = list(verdicts)
    for i, j in chosen_pairs:
        verdict = verdicts.get((i, j))
        if verdict is None:
            counts["ties"] += 1
            continue
        hi, lo = (i, j) if verdict == 0 else (j, i)
        pairs.append({"chosen": hi, "rejected": lo, "score_chosen": float(wins[hi]), "score_rejected": float(wins[lo])})
    if not pairs:
        counts["prompts_without_pair"] += 1
    return pairs


def needed_comparisons(k: int, mode: str, rng: random.Random) -> list[tuple[int, int]]:
    """The index pairs (i < j) a comparing labeller must judge for ``mode``."""
    if mode == "random":
        return [tuple(sorted(rng.sample(range(k), 2)))]
    if mode in ("all_pairs", "best_vs_worst"):
        return list(itertools.combinations(range(k), 2))
    raise ValueError(f"regime.pairs={mode!r}: must be one of {', '.join(MODES)}")
