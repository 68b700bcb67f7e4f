"""Worked-math tests of DPO-Positive, Cal-DPO and SimPER (issue 12): hand-derived numbers in each docstring,
reductions to the parent loss, gradient signs, bad input, and two training steps of each through the CLI.

The extremes (±50-nat margins give finite losses and gradients) and zero-length completions are covered for
every registered loss, these three included, by tests/losses/test_losses.py.

Constants: log σ(1) = -0.3132617, log σ(0.5) = -0.4740770, log σ(-1) = -1.3132617, log σ(2) = -0.1269280,
σ(1) = 0.7310586, σ(-1) = 0.2689414, σ(-2) = 0.1192029, e^{-0.5} = 0.6065307, e^{-2} = 0.1353353.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from prefopt import losses
from tests.conftest import run_cli
from tests.losses.test_loss_cli import SMALL, check_sweep


def pair(pc, pr, rc=-11.0, rr=-11.0, lc=2, lr=4, grad=False):
    t = lambda v: torch.tensor([v], dtype=torch.float32, requires_grad=grad)  # noqa: E731
    return dict(policy_chosen_logps=t(pc), policy_rejected_logps=t(pr), ref_chosen_logps=t(rc),
                ref_rejected_logps=t(rr), chosen_lengths=torch.tensor([lc]), rejected_lengths=torch.tensor([lr]))


def chosen_grad(name, inputs, **hp) -> float:
    out = losses.compute(name, **inputs, **hp)
    out.losses.sum().backward()
    return float(inputs["policy_chosen_logps"].grad)


# --- DPO-Positive -----------------------------------------------------------------------------------------

def test_dpop_worked_numbers():
    """β = 0.5. Chosen above its reference (log π = -10, π_ref = -11; rejected -12 vs -11): u_w = 1, u_l = -1,
    penalty p = max(0, -1) = 0, so DPOP = DPO = -log σ(0.5·2) = 0.3132617 for any λ.
    Chosen below its reference (log π = -12 vs -11; rejected -14 vs -11): u_w = -1, u_l = -3, h = 2, p = 1;
      λ = 1: z = 0.5·(2 - 1·1) = 0.5, loss = -log σ(0.5) = 0.4740770;
      λ = 4: z = 0.5·(2 - 4) = -1,    loss = -log σ(-1) = 1.3132617;
      λ = 0: -log σ(1) = 0.3132617 (DPO). The logged dpop_penalty is p = 1."""
    above = pair(-10.0, -12.0)
    assert_close(losses.compute("dpop", **above, beta=0.5, dpop_lambda=50.0).losses, torch.tensor([0.3132617]))
    below = pair(-12.0, -14.0)
    for lam, expected in [(1.0, 0.4740770), (4.0, 1.3132617), (0.0, 0.3132617)]:
        out = losses.compute("dpop", **below, beta=0.5, dpop_lambda=lam)
        assert_close(out.losses, torch.tensor([expected]))
    assert_close(out.metrics["dpop_penalty"], torch.tensor([1.0]))
    assert_close(out.metrics["rewards/chosen"], torch.tensor([-0.5]))  # β·u_w, as DPO logs it


def test_dpop_with_zero_lambda_is_dpo_exactly():
    """λ = 0 removes the penalty: losses and every DPO metric are bit-identical to DPO's, on a batch where
    some chosen completions lie above and some below their reference (p > 0 there)."""
    g = torch.Generator().manual_seed(1)
    inputs = dict(policy_chosen_logps=-30 * torch.rand(8, generator=g), policy_rejected_logps=-30 * torch.rand(8, generator=g),
                  ref_chosen_logps=-30 * torch.rand(8, generator=g), ref_rejected_logps=-30 * torch.rand(8, generator=g))
    assert bool((inputs["policy_chosen_logps"] < inputs["ref_chosen_logps"]).any())
    for beta in (0.1, 0.5, 2.0):
        dpop = losses.compute("dpop", **inputs, beta=beta, dpop_lambda=0.0)
        dpo = losses.compute("dpo", **inputs, beta=beta)
        assert torch.equal(dpop.losses, dpo.losses)
        for key, value in dpo.metrics.items():
            assert torch.equal(dpop.metrics[key], value), key


def test_dpop_gradient_pushes_a_displaced_chosen_up_harder():
    """Chosen below its reference (u_w = -1, u_l = -3), β = 0.5. While p > 0, z = β·((1 + λ)·u_w - u_l), so
    ∂loss/∂log π(y_w) = -σ(-z)·β·(1 + λ):
      λ = 4: z = -1, -σ(1)·0.5·5 = -1.8276465;   λ = 0 (DPO): z = 1, -σ(-1)·0.5 = -0.1344707.
    Negative: raising the chosen log-prob lowers the loss, 13.6 times more steeply than DPO here."""
    g4 = chosen_grad("dpop", pair(-12.0, -14.0, grad=True), beta=0.5, dpop_lambda=4.0)
    g0 = chosen_grad("dpop", pair(-12.0, -14.0, grad=True), beta=0.5, dpop_lambda=0.0)
    assert g4 == pytest.approx(-1.8276465, abs=1e-6) and g0 == pytest.approx(-0.1344707, abs=1e-6)
    inputs = pair(-12.0, -14.0, grad=True)
    losses.compute("dpop", **inputs, beta=0.5, dpop_lambda=4.0).losses.sum().backward()
    assert float(inputs["policy_rejected_logps"].grad) > 0  # raising the rejected log-prob raises the loss


def test_dpop_negative_lambda_names_the_key():
    """A negative λ would reward lowering the chosen likelihood: one LossConfigError naming the full key."""
    with pytest.raises(losses.LossConfigError, match=r"^loss\.dpop\.dpop_lambda: must be >= 0") as err:
        losses.get("dpop").make_hparams({"dpop_lambda": -1.0})
    assert "\n" not in str(err.value)
    with pytest.raises(losses.LossConfigError, match=r"loss\.dpop\.dpop_lambda: expected a float"):
        losses.get("dpop").make_hparams({"dpop_lambda": "big"})


# --- Cal-DPO ----------------------------------------------------------------------------------------------

def test_cal_dpo_worked_numbers():
    """u_w = 1, u_l = -1 (log π -10/-12, π_ref -11/-11). The sigmoid term has no β: -log σ(2) = 0.1269280.
    β = 0.5: targets ±1/(2β) = ±1 are met, calibration (1-1)² + (-1+1)² = 0, loss 0.1269280.
    β = 0.25: targets ±2, calibration (1-2)² + (-1+2)² = 2; loss 0.1269280 + 2 = 2.1269280 (paper, c = 1),
    0.1269280 + 0.5·2 = 1.1269280 with calibration_weight = 0.5 (the authors' code)."""
    inputs = pair(-10.0, -12.0)
    assert_close(losses.compute("cal_dpo", **inputs, beta=0.5).losses, torch.tensor([0.1269280]))
    out = losses.compute("cal_dpo", **inputs, beta=0.25)
    assert_close(out.losses, torch.tensor([2.1269280]))
    assert_close(out.metrics["calibration"], torch.tensor([2.0]))
    assert_close(out.metrics["rewards/margins"], torch.tensor([0.5]))  # β·(u_w - u_l) = 0.25·2
    half = losses.compute("cal_dpo", **inputs, beta=0.25, calibration_weight=0.5)
    assert_close(half.losses, torch.tensor([1.1269280]))


def test_cal_dpo_is_the_sigmoid_term_plus_sppo_hard():
    """The calibration bracket is SPPO-hard's loss and the contrastive term is DPO at β = 1, on any batch."""
    g = torch.Generator().manual_seed(2)
    inputs = {k: -30 * torch.rand(6, generator=g) for k in
              ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")}
    cal = losses.compute("cal_dpo", **inputs, beta=0.3).losses
    expected = losses.compute("dpo", **inputs, beta=1.0).losses + losses.compute("sppo_hard", **inputs, beta=0.3).losses
    assert_close(cal, expected)


def test_cal_dpo_gradient_signs():
    """β = 0.25 (target 2), u_w = 1 below its target: ∂loss/∂log π(y_w) = -σ(-(u_w - u_l)) + 2·(u_w - 2)
    = -σ(-2) - 2 = -2.1192029 < 0, raising the chosen log-prob lowers the loss. Above the target (u_w = 3,
    log π(y_w) = -8) calibration pulls it back: -σ(-4) + 2·(3 - 2) = -0.0179862 + 2 = 1.9820138 > 0."""
    assert chosen_grad("cal_dpo", pair(-10.0, -12.0, grad=True), beta=0.25) == pytest.approx(-2.1192029, abs=1e-6)
    assert chosen_grad("cal_dpo", pair(-8.0, -12.0, grad=True), beta=0.25) == pytest.approx(1.9820138, abs=1e-6)


def test_cal_dpo_bad_input_names_the_key():
    with pytest.raises(losses.LossConfigError, match=r"^loss\.cal_dpo\.calibration_weight: must be >= 0"):
        losses.get("cal_dpo").make_hparams({"calibration_weight": -0.5})
    with pytest.raises(losses.LossConfigError, match=r"^loss\.cal_dpo\.beta: must be > 0"):
        losses.get("cal_dpo").make_hparams({"beta": 0.0})


# --- SimPER -----------------------------------------------------------------------------------------------

def test_simper_worked_numbers():
    """log π(y_w) = -2 over 4 tokens (mean -0.5), log π(y_l) = -6 over 3 tokens (mean -2):
    loss = -e^{-0.5} + e^{-2} = -0.6065307 + 0.1353353 = -0.4711954. Rewards are the inverse perplexities
    0.6065307 and 0.1353353, so rewards/margins = 0.4711954 = -loss. No reference is read."""
    inputs = pair(-2.0, -6.0, lc=4, lr=3)
    inputs.update(ref_chosen_logps=None, ref_rejected_logps=None)
    out = losses.compute("simper", **inputs)
    assert_close(out.losses, torch.tensor([-0.4711954]))
    assert_close(out.metrics["rewards/chosen"], torch.tensor([0.6065307]))
    assert_close(out.metrics["rewards/margins"], torch.tensor([0.4711954]))
    assert not losses.get("simper").needs_reference


def test_simper_is_zero_on_equal_perplexity():
    """Equal mean log-probs give equal inverse perplexities and a loss of exactly 0, whatever the lengths:
    -8 over 4 tokens and -6 over 3 are both mean -2, e^{-2} - e^{-2} = 0; identical completions too."""
    assert float(losses.compute("simper", **pair(-8.0, -6.0, lc=4, lr=3)).losses) == 0.0
    assert float(losses.compute("simper", **pair(-7.0, -7.0, lc=5, lr=5)).losses) == 0.0


def test_simper_gradient_signs():
    """∂loss/∂log π(y_w) = -e^{mean_w}/|y_w| = -0.6065307/4 = -0.1516327 (raising the chosen lowers the loss);
    ∂loss/∂log π(y_l) = e^{mean_l}/|y_l| = 0.1353353/3 = 0.0451118 (raising the rejected raises it)."""
    inputs = pair(-2.0, -6.0, lc=4, lr=3, grad=True)
    losses.compute("simper", **inputs).losses.sum().backward()
    assert float(inputs["policy_chosen_logps"].grad) == pytest.approx(-0.1516327, abs=1e-6)
    assert float(inputs["policy_rejected_logps"].grad) == pytest.approx(0.0451118, abs=1e-6)


def test_simper_has_no_hyperparameters():
    """No β: passing one is an unknown-hyperparameter error naming the key, and the YAML sets only weight."""
    assert losses.available()[[r["name"] for r in losses.available()].index("simper")]["hparams"] == {}
    with pytest.raises(losses.LossConfigError, match=r"^loss\.simper\.beta: unknown hyperparameter"):
        losses.get("simper").make_hparams({"beta": 0.1})


# --- Through the CLI --------------------------------------------------------------------------------------

def test_new_losses_train_two_steps_in_one_sweep(tmp_path):
    """dpop, cal_dpo and simper each train 2 steps on the tiny model (one multirun), log their metrics, and
    SimPER builds no reference model and records no beta."""
    names = ["dpop", "cal_dpo", "simper"]
    run_cli(SMALL + ["loss=" + ",".join(names)], tmp_path, multirun=True)
    by_loss = check_sweep(tmp_path, names)
    assert by_loss["simper"][0]["reference"]["kind"] == "none"
    assert by_loss["dpop"][0]["reference"]["kind"] != "none"
    assert by_loss["simper"][0]["losses"]["simper"] == {"weight": 1.0}
    for name, key in (("dpop", "dpop_penalty"), ("cal_dpo", "calibration")):
        train = [r for r in by_loss[name][1] if r["split"] == "train"]
        assert math.isfinite(train[-1][key]), (name, key)


def test_negative_dpop_lambda_on_the_cli_is_one_line(tmp_path):
    proc = run_cli(SMALL + ["loss=dpop", "loss.dpop.dpop_lambda=-1"], tmp_path / "run", check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert [line for line in proc.stderr.splitlines() if "loss.dpop.dpop_lambda: must be >= 0" in line], proc.stderr[-3000:]
