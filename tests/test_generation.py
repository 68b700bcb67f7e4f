"""Worked numbers for the stream sampler's token draw (prefopt/generation.py ``_draw``)."""

from __future__ import annotations

import math

import torch

from prefopt.generation import _draw


def test_inverse_cdf_draw_with_and_without_a_nucleus():
    """Probabilities [0.2, 0.5, 0.3] (logits = their logs), sorted [0.5, 0.3, 0.2] as tokens [1, 2, 0].
    top_p = 1: CDF [0.5, 0.8, 1.0]; u = 0.45 -> token 1, u = 0.6 -> token 2, u = 0.9 -> token 0.
    top_p = 0.7: a token stays while the mass before it is below 0.7 (0, 0.5 stay; 0.8 does not), so the
    nucleus is {1, 2} with CDF [0.5, 0.8]; u = 0.9 -> target 0.72 -> token 2, u = 0.6 -> target 0.48 -> token 1.
    Temperature 0 is the argmax whatever u."""
    logits = torch.tensor([[math.log(0.2), math.log(0.5), math.log(0.3)]] * 3)
    u = torch.tensor([0.45, 0.6, 0.9], dtype=torch.float64)
    assert _draw(logits, u, 1.0, 1.0).tolist() == [1, 2, 0]
    assert _draw(logits[:2], torch.tensor([0.9, 0.6], dtype=torch.float64), 1.0, 0.7).tolist() == [2, 1]
    assert _draw(logits, u, 0.0, 1.0).tolist() == [1, 1, 1]


def test_temperature_flattens_the_distribution():
    """Probabilities [0.2, 0.8]. Sorted, token 1 comes first. Temperature 1: CDF [0.8, 1.0], so u = 0.7 draws
    token 1. Temperature 2: probabilities ∝ [√0.2, √0.8] = [1/3, 2/3], CDF [2/3, 1.0], so u = 0.7 (above 2/3)
    draws token 0 and u = 0.3 still draws token 1."""
    logits = torch.tensor([[math.log(0.2), math.log(0.8)]])
    high, low = torch.tensor([0.7], dtype=torch.float64), torch.tensor([0.3], dtype=torch.float64)
    assert _draw(logits, high, 1.0, 1.0).tolist() == [1]
    assert _draw(logits, high, 2.0, 1.0).tolist() == [0]
    assert _draw(logits, low, 2.0, 1.0).tolist() == [1]
