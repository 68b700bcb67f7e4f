"""Held-out monitors, logged at every eval as ``eval/monitor/*`` beside the loss's own metrics.

On the held-out pairs, with policy log-probs π and reference log-probs π_ref per sequence (summed over the
completion's tokens):

- ``chosen_logp_drift`` / ``rejected_logp_drift``: mean of log π(y|x) − log π_ref(y|x) over the chosen /
  rejected completions. Both falling below 0 while the margin grows is likelihood displacement (Razin et al.
  2024, arXiv:2410.08847; Pal et al. 2024's DPOP, arXiv:2402.13228, Fig. 1): the policy moves probability
  off the chosen answers too.
- ``ece``: expected calibration error (Guo et al. 2017, arXiv:1706.04599, Eq. 3) of the implicit preference
  probability p = σ(β·m), m = (log π − log π_ref)(chosen) − (log π − log π_ref)(rejected), the Bradley-Terry
  probability that DPO's implicit reward gives the chosen answer. A pair's orientation is arbitrary, so each
  pair counts twice, as (p, label 1) and (1 − p, label 0); with 10 equal-width bins B_b of [0, 1] over those
  2N predictions, ECE = Σ_b |B_b|/(2N) · |mean label in B_b − mean prediction in B_b|. An untrained policy
  (m = 0, p = ½) is calibrated (ECE 0); one that is sure of every pair and right on a share a of them has
  ECE = 1 − a. β is the configured loss's own (its hyperparameter ``beta``, from the first reference-based
  loss term that has one); a run whose losses have none, or no reference, reports no ECE.
- ``gold_corr`` / ``gold_spearman``: Pearson / Spearman correlation, across the held-out pairs, of the
  implicit reward margin m with the gold score margin (score_chosen − score_rejected, the sentiment pairs'
  VADER scores), when every held-out pair carries one: does the policy's implicit reward rank the pairs as
  the ground truth does?

Drift and margins need the reference's log-probs: reference-free runs (reference=none, SimPO/ORPO/CPO)
report none of these. Unpaired (KTO-style) and SFT rows are not pairs: only paired runs get them.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special
from scipy import stats as scipy_stats

from prefopt.losses import PairLogps

BINS = 10


def calibration_beta(terms) -> float | None:
    """β of the first reference-based loss term with a ``beta`` hyperparameter (None: no ECE)."""
    for term in terms:
        beta = getattr(term.hparams, "beta", None)
        if term.spec.needs_reference and isinstance(beta, int | float):
            return float(beta)
    return None


def expected_calibration_error(probabilities, bins: int = BINS) -> float:
    """ECE of P(chosen ≻ rejected) over pairs whose chosen side is preferred, each pair counted in both
    orientations (see the module docstring)."""
    p = np.asarray(probabilities, dtype=float)
    predictions = np.concatenate([p, 1.0 - p])
    labels = np.concatenate([np.ones_like(p), np.zeros_like(p)])
    which = np.minimum((predictions * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.sum() * abs(labels[inside].mean() - predictions[inside].mean())
    return float(total / predictions.size)


class Monitors:
    """Collects per-pair values over the eval batches; ``result`` reduces them across processes."""

    def __init__(self, terms):
        self.beta = calibration_beta(terms)
        self.chosen: list[float] = []
        self.rejected: list[float] = []
        self.gold: list[float | None] = []

    def add(self, logps, rows: list[dict], weights) -> None:
        if not isinstance(logps, PairLogps) or logps.ref_chosen is None:
            return
        real = (weights > 0).tolist()
        chosen = (logps.policy_chosen - logps.ref_chosen).detach().float().tolist()
        self.chosen += [c for c, keep in zip(chosen, real, strict=True) if keep]
        if logps.policy_rejected is None or logps.ref_rejected is None:
            return
        rejected = (logps.policy_rejected - logps.ref_rejected).detach().float().tolist()
        self.rejected += [r for r, keep in zip(rejected, real, strict=True) if keep]
        self.gold += [row.get("gold_margin") for row, keep in zip(rows, real, strict=True) if keep]

    def result(self, accelerator=None) -> dict[str, float]:
        chosen, rejected, gold = self.chosen, self.rejected, self.gold
        if accelerator is not None and accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            chosen, rejected, gold = (gather_object(list(v)) for v in (chosen, rejected, gold))
        out: dict[str, float] = {}
        if chosen:
            out["eval/monitor/chosen_logp_drift"] = float(np.mean(chosen))
        if not rejected:
            return out
        out["eval/monitor/rejected_logp_drift"] = float(np.mean(rejected))
        margins = np.asarray(chosen, dtype=float) - np.asarray(rejected, dtype=float)
        if self.beta is not None:
            out["eval/monitor/ece"] = expected_calibration_error(special.expit(self.beta * margins))
        if len(gold) >= 2 and all(isinstance(g, float) and math.isfinite(g) for g in gold):
            gold_arr = np.asarray(gold, dtype=float)
            if np.ptp(gold_arr) > 0 and np.ptp(margins) > 0:  # a constant side has no correlation
                out["eval/monitor/gold_corr"] = float(scipy_stats.pearsonr(margins, gold_arr)[0])
                out["eval/monitor/gold_spearman"] = float(scipy_stats.spearmanr(margins, gold_arr)[0])
        return out
