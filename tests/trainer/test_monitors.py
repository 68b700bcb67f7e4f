"""Worked numbers for the held-out monitors (prefopt/trainer/monitors.py): log-prob drift, ECE of σ(β·margin)
and the correlation of the implicit reward margin with the gold score margin."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from prefopt import losses
from prefopt.losses import PairLogps, UnpairedLogps
from prefopt.trainer.monitors import Monitors, calibration_beta, expected_calibration_error


def term(name: str, **hparams):
    spec = losses.get(name)
    return SimpleNamespace(spec=spec, hparams=spec.make_hparams(hparams), weight=1.0, state={})


def test_ece_worked_example():
    """p = [0.9, 0.9, 0.2, 0.5], every pair's chosen side preferred. Both orientations: predictions
    [0.9, 0.9, 0.2, 0.5 | 0.1, 0.1, 0.8, 0.5] with labels [1, 1, 1, 1 | 0, 0, 0, 0]. Bins (width 0.1):
    bin 9 {0.9, 0.9; labels 1, 1}: 2·|1 − 0.9| = 0.2; bin 2 {0.2; 1}: 0.8; bin 5 {0.5, 0.5; 1, 0}: 2·|0.5 − 0.5|
    = 0; bin 1 {0.1, 0.1; 0, 0}: 0.2; bin 8 {0.8; 0}: 0.8. ECE = (0.2 + 0.8 + 0 + 0.2 + 0.8)/8 = 0.25."""
    assert expected_calibration_error([0.9, 0.9, 0.2, 0.5]) == pytest.approx(0.25)
    # An untrained policy (margin 0, p = ½ everywhere) is calibrated; sure and right on 3 of 4 pairs: 1 − 3/4.
    assert expected_calibration_error([0.5] * 7) == 0.0
    assert expected_calibration_error([1.0, 1.0, 1.0, 0.0]) == pytest.approx(0.25)


def test_drift_margin_and_gold_correlation_worked_example():
    """Three real pairs and a zero-weight stand-in (never counted), β = 1:
    chosen   π − π_ref: (−10) − (−9) = −1,  (−12) − (−12.5) = 0.5,  (−11) − (−11.5) = 0.5  → mean 0;
    rejected π − π_ref: (−20) − (−18) = −2, (−15) − (−16) = 1,     (−14) − (−14) = 0      → mean −1/3;
    margins m = [1, −0.5, 0.5]; gold margins g = [0.6, 0.2, 0.1].
    Spearman: ranks [3, 1, 2] vs [3, 2, 1], Σd² = 2, ρ = 1 − 6·2/(3·8) = 0.5.
    Pearson: deviations m − 1/3 = [2/3, −5/6, 1/6], g − 0.3 = [0.3, −0.1, −0.2]; Σ products = 0.25,
    Σ(m−m̄)² = 42/36, Σ(g−ḡ)² = 0.14, r = 0.25 / √(42/36 · 0.14) = 0.61859.
    ECE of σ(m) = [0.7311, 0.3775, 0.6225] by the ECE function above."""
    logps = PairLogps(policy_chosen=torch.tensor([-10.0, -12.0, -11.0, 99.0]),
                      ref_chosen=torch.tensor([-9.0, -12.5, -11.5, 0.0]),
                      policy_rejected=torch.tensor([-20.0, -15.0, -14.0, 99.0]),
                      ref_rejected=torch.tensor([-18.0, -16.0, -14.0, 0.0]))
    rows = [{"gold_margin": 0.6}, {"gold_margin": 0.2}, {"gold_margin": 0.1}, {"gold_margin": 5.0}]
    monitors = Monitors([term("dpo", beta=1.0)])
    # Two eval batches: the first two pairs, then the third with the stand-in.
    monitors.add(PairLogps(**{k: v[:2] for k, v in vars(logps).items() if k != "extras" and v is not None}),
                 rows[:2], torch.ones(2))
    monitors.add(PairLogps(**{k: v[2:] for k, v in vars(logps).items() if k != "extras" and v is not None}),
                 rows[2:], torch.tensor([1.0, 0.0]))
    out = monitors.result()
    assert out["eval/monitor/chosen_logp_drift"] == pytest.approx(0.0)
    assert out["eval/monitor/rejected_logp_drift"] == pytest.approx(-1 / 3)
    assert out["eval/monitor/gold_spearman"] == pytest.approx(0.5)
    assert out["eval/monitor/gold_corr"] == pytest.approx(0.25 / math.sqrt(42 / 36 * 0.14), rel=1e-6)
    sigma = [1 / (1 + math.exp(-m)) for m in (1.0, -0.5, 0.5)]
    assert out["eval/monitor/ece"] == pytest.approx(expected_calibration_error(sigma))


def test_monitors_need_what_they_measure():
    """No gold margin on some pair: no gold correlation. A loss without β (SFT) beside DPO: DPO's β; a
    reference-free loss (SimPO) alone: no ECE. No reference log-probs, or unpaired rows: no monitors."""
    logps = PairLogps(policy_chosen=torch.tensor([-1.0, -2.0]), ref_chosen=torch.tensor([-1.5, -2.0]),
                      policy_rejected=torch.tensor([-3.0, -2.0]), ref_rejected=torch.tensor([-2.0, -2.5]))
    monitors = Monitors([term("dpo", beta=0.1)])
    monitors.add(logps, [{"gold_margin": 0.3}, {}], torch.ones(2))
    assert set(monitors.result()) == {"eval/monitor/chosen_logp_drift", "eval/monitor/rejected_logp_drift",
                                      "eval/monitor/ece"}
    assert calibration_beta([term("sft"), term("dpo", beta=0.3)]) == 0.3
    assert calibration_beta([term("simpo", beta=2.0)]) is None
    free = Monitors([term("simpo", beta=2.0)])
    free.add(PairLogps(policy_chosen=torch.tensor([-1.0]), policy_rejected=torch.tensor([-2.0])), [{}], torch.ones(1))
    assert free.result() == {}
    unpaired = Monitors([term("kto", beta=0.1)])
    unpaired.add(UnpairedLogps(policy=torch.tensor([-1.0]), desirable=torch.tensor([True]),
                               lengths=torch.tensor([3]), ref=torch.tensor([-1.0])), [{}], torch.ones(1))
    assert unpaired.result() == {}
