"""prefopt/online/pairs.py: pairs from k labelled samples, ties and unlabelled samples dropped and counted."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from prefopt.online.pairs import build_pairs, build_pairs_pairwise, needed_comparisons


def test_best_vs_worst_takes_the_extremes():
    counts = Counter()
    pairs = build_pairs([0.2, 0.9, -0.5, 0.1], "best_vs_worst", random.Random(0), counts=counts)
    assert pairs == [{"chosen": 1, "rejected": 2, "score_chosen": 0.9, "score_rejected": -0.5}]
    assert not counts["ties"]


def test_all_pairs_orders_every_pair_by_score_and_drops_ties():
    """Scores (0.5, 0.5, 0.1): pairs (0,1) tie, (0,2) 0 over 2, (1,2) 1 over 2 -> 2 pairs, 1 tie."""
    counts = Counter()
    pairs = build_pairs([0.5, 0.5, 0.1], "all_pairs", random.Random(0), counts=counts)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [(0, 2), (1, 2)]
    assert counts["ties"] == 1


def test_tie_margin_widens_ties():
    counts = Counter()
    assert build_pairs([0.30, 0.32], "all_pairs", random.Random(0), tie_margin=0.05, counts=counts) == []
    assert counts["ties"] == 1 and counts["prompts_without_pair"] == 1


def test_unlabelled_samples_are_dropped_and_counted():
    counts = Counter()
    pairs = build_pairs([None, 0.4, None, -0.2], "best_vs_worst", random.Random(0), counts=counts)
    assert pairs == [{"chosen": 1, "rejected": 3, "score_chosen": 0.4, "score_rejected": -0.2}]
    assert counts["unlabelled"] == 2
    assert build_pairs([None, 0.4], "random", random.Random(0), counts=counts) == []
    assert counts["prompts_without_pair"] == 1


def test_random_pairs_are_seeded_and_ordered():
    scores = [0.1, 0.7, 0.3, -0.4, 0.0]
    a = build_pairs(scores, "random", random.Random(7))
    assert a == build_pairs(scores, "random", random.Random(7))
    assert all(p["score_chosen"] > p["score_rejected"] for p in a)
    drawn = {(p["chosen"], p["rejected"]) for seed in range(50) for p in build_pairs(scores, "random", random.Random(seed))}
    assert len(drawn) > 5  # not always the same pair


def test_identical_scores_give_no_pair_for_best_vs_worst():
    counts = Counter()
    assert build_pairs([0.0, 0.0, 0.0], "best_vs_worst", random.Random(0), counts=counts) == []
    assert counts["ties"] == 1


def test_pairwise_best_vs_worst_ranks_by_wins():
    """k=3, verdicts: 2 beats 0, 2 beats 1, 0 beats 1 -> wins (1, 0, 2): best 2, worst 1, one pair (2 over 1)."""
    verdicts = {(0, 1): 0, (0, 2): 1, (1, 2): 1}
    assert needed_comparisons(3, "best_vs_worst", random.Random(0)) == [(0, 1), (0, 2), (1, 2)]
    pairs = build_pairs_pairwise(3, verdicts, "best_vs_worst")
    assert pairs == [{"chosen": 2, "rejected": 1, "score_chosen": 2.0, "score_rejected": 0.0}]


def test_pairwise_ties_are_counted():
    counts = Counter()
    pairs = build_pairs_pairwise(3, {(0, 1): None, (0, 2): 0, (1, 2): None}, "all_pairs", counts=counts)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [(0, 2)]
    assert counts["ties"] == 2


def test_unknown_mode_names_the_key():
    with pytest.raises(ValueError, match=r"regime.pairs='best'"):
        build_pairs([0.1, 0.2], "best", random.Random(0))
