"""Worked-math tests of every loss: numbers derived by hand in each docstring, extremes, gradients.

The shared example (unless a test says otherwise) is one pair with
    log π(y_w) = -10, log π(y_l) = -12, log π_ref(y_w) = log π_ref(y_l) = -11, β = 0.5,
so the log-ratios are u_w = +1 and u_l = -1, the DPO margin h = u_w - u_l = 2 and β·h = 1.
Constants used below: log σ(1) = -0.3132617, log σ(-1) = -1.3132617, σ(0.5) = 0.6224593, σ(1) = 0.7310586.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from prefopt import losses


def pair(pc=-10.0, pr=-12.0, rc=-11.0, rr=-11.0, lc=2, lr=4, grad=False):
    t = lambda *v: torch.tensor(v, dtype=torch.float32, requires_grad=grad)  # noqa: E731
    return dict(policy_chosen_logps=t(pc), policy_rejected_logps=t(pr), ref_chosen_logps=t(rc),
                ref_rejected_logps=t(rr), chosen_lengths=torch.tensor([lc]), rejected_lengths=torch.tensor([lr]))


def loss_of(name, inputs=None, **hp):
    out = losses.compute(name, **(inputs or pair()), **hp)
    return float(out.losses.mean()), out


def test_dpo_and_cdpo():
    """DPO: -log σ(β·h) = -log σ(1) = 0.3132617.
    cDPO, ε = 0.1: 0.9·0.3132617 + 0.1·1.3132617 = 0.4132617 (the DPO repo's label smoothing).
    Rewards are β·u: chosen 0.5, rejected -0.5, margin 1, accuracy 1."""
    value, out = loss_of("dpo", beta=0.5)
    assert value == pytest.approx(0.3132617, abs=1e-6)
    m = out.metrics
    assert float(m["rewards/chosen"]) == pytest.approx(0.5) and float(m["rewards/rejected"]) == pytest.approx(-0.5)
    assert float(m["rewards/margins"]) == pytest.approx(1.0) and float(m["rewards/accuracies"]) == 1.0
    assert loss_of("dpo", beta=0.5, label_smoothing=0.1)[0] == pytest.approx(0.4132617, abs=1e-6)


def test_ipo_normalized_and_summed():
    """Summed form: (h - 1/(2β))² = (2 - 1)² = 1.
    Length-normalized (TRL), |y_w| = 2, |y_l| = 4: h = 1/2 - (-1/4) = 0.75, (0.75 - 1)² = 0.0625."""
    assert loss_of("ipo", beta=0.5, length_normalize=False)[0] == pytest.approx(1.0, abs=1e-6)
    assert loss_of("ipo", beta=0.5)[0] == pytest.approx(0.0625, abs=1e-6)


def test_hinge():
    """max(0, 1 - β·h): β = 0.5 gives max(0, 1 - 1) = 0; β = 0.25 gives 0.5."""
    assert loss_of("hinge", beta=0.5)[0] == pytest.approx(0.0)
    assert loss_of("hinge", beta=0.25)[0] == pytest.approx(0.5)


def test_robust():
    """ε = 0.1: [-(0.9)·log σ(1) + 0.1·log σ(-1)] / 0.8 = (0.2819355 - 0.1313262)/0.8 = 0.1882617.
    ε = 0 is DPO."""
    assert loss_of("robust", beta=0.5, label_smoothing=0.1)[0] == pytest.approx(0.1882617, abs=1e-6)
    assert loss_of("robust", beta=0.5, label_smoothing=0.0)[0] == pytest.approx(0.3132617, abs=1e-6)


def test_exo():
    """ε = 1e-3, q_w = σ(1) = 0.7310586, q_l = 0.2689414:
    q_w·(log q_w - log 0.999) + q_l·(log q_l - log 0.001)
      = 0.7310586·(-0.3132617 + 0.0010005) + 0.2689414·(-1.3132617 + 6.9077553) = 1.2763098."""
    assert loss_of("exo", beta=0.5, label_smoothing=1e-3)[0] == pytest.approx(1.2763098, abs=1e-5)


def test_nca_bco_pair_sppo():
    """r = β·u: r_w = 0.5, r_l = -0.5.
    NCA: -log σ(0.5) - ½ log σ(-0.5) - ½ log σ(0.5) = 0.4740770 + 0.4870385 + 0.2370385 = 1.1981540.
    BCO-pair: -log σ(0.5) - log σ(0.5) = 0.9481540.
    SPPO-hard, β = 0.25 (1/(2β) = 2): (1 - 2)² + (-1 + 2)² = 2."""
    assert loss_of("nca", beta=0.5)[0] == pytest.approx(1.1981540, abs=1e-6)
    assert loss_of("bco_pair", beta=0.5)[0] == pytest.approx(0.9481540, abs=1e-6)
    assert loss_of("sppo_hard", beta=0.25)[0] == pytest.approx(2.0, abs=1e-6)


def test_aot_sorts_the_batch():
    """Two pairs, β = 1: policy margins log π(y_w) - log π(y_l) = [2, -1], reference margins [0, 1].
    AOT sorts each: [-1, 2] - [0, 1] = δ = [-1, 1]; mean(-log σ(-1), -log σ(1)) = (1.3132617 + 0.3132617)/2
    = 0.8132617. Unsorted (DPO) it would be mean(-log σ(2), -log σ(-2)) = 1.1269280.
    AOT-unpaired sorts the log-ratios; with every reference log-prob -11 they are chosen [1, -2] and
    rejected [-1, -1] → sorted [-2, 1] - [-1, -1] = [-1, 2]:
    mean(1.3132617, 0.1269280) = 0.7200948."""
    inputs = dict(policy_chosen_logps=torch.tensor([-10.0, -13.0]), policy_rejected_logps=torch.tensor([-12.0, -12.0]),
                  ref_chosen_logps=torch.tensor([-11.0, -11.0]), ref_rejected_logps=torch.tensor([-11.0, -12.0]))
    assert loss_of("aot", inputs, beta=1.0)[0] == pytest.approx(0.8132617, abs=1e-6)
    assert loss_of("dpo", inputs, beta=1.0)[0] == pytest.approx(1.1269280, abs=1e-6)
    inputs["ref_rejected_logps"] = torch.tensor([-11.0, -11.0])
    assert loss_of("aot_unpaired", inputs, beta=1.0)[0] == pytest.approx(0.7200948, abs=1e-6)


def test_apo():
    """APO-zero: 1 - σ(0.5) + σ(-0.5) = 1 - 0.6224593 + 0.3775407 = 0.7550813.
    APO-down: σ(0.5) + 1 - σ(β·h = 1) = 0.6224593 + 1 - 0.7310586 = 0.8914008."""
    assert loss_of("apo_zero", beta=0.5)[0] == pytest.approx(0.7550813, abs=1e-6)
    assert loss_of("apo_down", beta=0.5)[0] == pytest.approx(0.8914008, abs=1e-6)


def test_discopop():
    """ρ = β·h = 1, τ = 0.05: m = σ(20) = 1 - 2.1e-9, so loss = (1-m)·0.313 + m·e^{-1} = 0.3678794."""
    assert loss_of("discopop", beta=0.5)[0] == pytest.approx(0.3678794, abs=1e-6)


def test_dpo_norm():
    """|y_w| = 2, |y_l| = 4: -log σ(0.5·(1/2 + 1/4)) = -log σ(0.375) = 0.5231233."""
    assert loss_of("dpo_norm", beta=0.5)[0] == pytest.approx(0.5231233, abs=1e-6)


def test_rpo_and_slic():
    """RPO, α = 1: DPO 0.3132617 + NLL per token 10/2 = 5.3132617.
    SLiC, δ = 1: max(0, 1 - (-10) + (-12)) = 0, plus λ·10 = 1.0; δ = 3: 1 + 1 = 2.0."""
    assert loss_of("rpo", beta=0.5, alpha=1.0)[0] == pytest.approx(5.3132617, abs=1e-5)
    assert loss_of("slic", margin=1.0, nll_weight=0.1)[0] == pytest.approx(1.0, abs=1e-6)
    assert loss_of("slic", margin=3.0, nll_weight=0.1)[0] == pytest.approx(2.0, abs=1e-6)


def test_simpo_gamma_is_on_the_reward_scale():
    """β = 0.5, γ = 0.5, |y_w| = 2, |y_l| = 4: r_w = 0.5·(-10/2) = -2.5, r_l = 0.5·(-12/4) = -1.5;
    -log σ(r_w - r_l - γ) = -log σ(-1.5) = 1.7014133. Rewards are r (length-normalized).
    Doubling β at fixed γ changes the loss (γ is not γ/β): -log σ(-2 - 0.5) = 2.5788897."""
    value, out = loss_of("simpo", beta=0.5, gamma=0.5)
    assert value == pytest.approx(1.7014133, abs=1e-6)
    assert float(out.metrics["rewards/chosen"]) == pytest.approx(-2.5)
    assert loss_of("simpo", beta=1.0, gamma=0.5)[0] == pytest.approx(2.5788897, abs=1e-6)


def test_cpo():
    """β = 0.5: -log σ(0.5·2) = 0.3132617, plus α·NLL with one pair: 10/2 = 5 → 5.3132617.
    Rewards are β·log π (no reference): -5 and -6."""
    value, out = loss_of("cpo", beta=0.5, alpha=1.0)
    assert value == pytest.approx(5.3132617, abs=1e-5)
    assert float(out.metrics["rewards/chosen"]) == pytest.approx(-5.0)


def test_batch_token_nll_is_the_token_mean_of_the_batch():
    """Two chosen sequences, log π = -10 over 2 tokens and -30 over 8: the token mean is 40/10 = 4
    (batch_tokens), the mean of per-sequence means is (5 + 3.75)/2 = 4.375 (sequence)."""
    inputs = dict(policy_chosen_logps=torch.tensor([-10.0, -30.0]), chosen_lengths=torch.tensor([2, 8]))
    assert loss_of("sft", inputs, nll_average="batch_tokens")[0] == pytest.approx(4.0)
    assert loss_of("sft", inputs)[0] == pytest.approx(4.375)


def test_alphapo():
    """α = 0.25, β = 0.5, γ = 0.5, mean log-probs -5 and -3: r = (1 - e^{-α·avg})/α gives
    r_w = (1 - e^{1.25})/0.25 = -9.9613718, r_l = (1 - e^{0.75})/0.25 = -4.4680001;
    z = 0.5·(r_w - r_l) - 0.5 = -3.2466859; loss = -log σ(z) = 3.2848512. α = 0 is SimPO."""
    assert loss_of("alphapo", beta=0.5, gamma=0.5, alpha=0.25)[0] == pytest.approx(3.2848512, abs=1e-5)
    assert loss_of("alphapo", beta=0.5, gamma=0.5, alpha=0.0)[0] == pytest.approx(1.7014133, abs=1e-6)


def test_orpo():
    """Mean log-probs: chosen -10/20 = -0.5, rejected -12/12 = -1.
    log odds = (avg_w - avg_l) - (log(1 - e^{-0.5}) - log(1 - e^{-1})) = 0.5 - (-0.9327521 + 0.4586751)
             = 0.9740770;  log σ(0.9740770) = -0.3202998.
    loss = NLL (token mean, 10/20 = 0.5) - λ·(-0.3202998) = 0.5320300 with λ = 0.1."""
    value, out = loss_of("orpo", pair(lc=20, lr=12), beta=0.1)
    assert value == pytest.approx(0.5320300, abs=1e-6)
    assert float(out.metrics["log_odds_chosen"]) == pytest.approx(0.9740770, abs=1e-6)


def unpaired(policy, ref, desirable, kl_policy, kl_ref):
    f = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    return dict(policy_logps=f(policy), ref_logps=f(ref), desirable=torch.tensor(desirable),
                lengths=torch.tensor([3] * len(policy)), kl_policy_logps=f(kl_policy), kl_ref_logps=f(kl_ref))


def test_kto():
    """Rows: desirable u = +1, undesirable u = -1; KL pairs give log-ratios 0.2, 0.4 → z_0 = 0.3, β = 0.5.
    desirable: 1 - σ(0.5·(1 - 0.3)) = 1 - σ(0.35) = 0.4133824;
    undesirable: 1 - σ(0.5·(0.3 + 1)) = 1 - σ(0.65) = 0.3429895.
    A negative KL estimate is clamped to 0: desirable 1 - σ(0.5) = 0.3775407."""
    out = losses.compute("kto", **unpaired([-10, -12], [-11, -11], [True, False], [-5.0, -6.0], [-5.2, -6.4]),
                         beta=0.5)
    assert out.losses.tolist() == pytest.approx([0.4133824, 0.3429895], abs=1e-6)
    assert float(out.metrics["kl"]) == pytest.approx(0.3, abs=1e-6)
    assert float(out.metrics["rewards/chosen"].mean()) == pytest.approx(0.5)
    assert float(out.metrics["rewards/margins"]) == pytest.approx(1.0)
    out = losses.compute("kto", **unpaired([-10, -12], [-11, -11], [True, False], [-6.0, -6.0], [-5.0, -5.0]),
                         beta=0.5)
    assert float(out.metrics["kl"]) == 0.0 and float(out.losses[0]) == pytest.approx(0.3775407, abs=1e-6)


def test_kto_weights_and_one_sided_batch():
    """λ_D = 2 doubles desirable losses; a batch of only desirable rows logs no */rejected metric (not NaN)."""
    data = unpaired([-10, -9], [-11, -11], [True, True], [-5.0, -6.0], [-5.0, -6.0])
    one = losses.compute("kto", **data, beta=0.5)
    two = losses.compute("kto", **data, beta=0.5, desirable_weight=2.0)
    assert torch.allclose(two.losses, 2 * one.losses)
    assert "rewards/rejected" not in one.metrics and "rewards/margins" not in one.metrics


def test_bco_running_baseline():
    """β = 0.5. Batch 1 rewards r = β·u = [0.5, -0.5] → δ = 0 (their mean).
    Batch 2 rewards [1.0, 0.0] → δ = mean of all four = 0.25:
    desirable -log σ(1 - 0.25) = 0.3868710, undesirable -log σ(-(0 - 0.25)) = 0.5759394.
    An eval batch (training=False) leaves δ where it was."""
    state: dict = {}
    first = losses.compute("bco", **unpaired([-10, -12], [-11, -11], [True, False], [0, 0], [0, 0]), beta=0.5,
                           state=state)
    assert float(first.metrics["delta"]) == pytest.approx(0.0)
    second = losses.compute("bco", **unpaired([-9, -11], [-11, -11], [True, False], [0, 0], [0, 0]), beta=0.5,
                            state=state)
    assert float(second.metrics["delta"]) == pytest.approx(0.25)
    assert second.losses.tolist() == pytest.approx([0.3868710, 0.5759394], abs=1e-6)
    losses.compute("bco", **unpaired([0, 0], [-11, -11], [True, False], [0, 0], [0, 0]), beta=0.5, state=state,
                   training=False)
    assert state["delta"] == pytest.approx(0.25) and state["count"] == 4


def test_apo_zero_unpaired():
    """desirable u = 1: 1 - σ(0.5) = 0.3775407; undesirable u = -1: σ(-0.5) = 0.3775407."""
    out = losses.compute("apo_zero_unpaired", **unpaired([-10, -12], [-11, -11], [True, False], [0, 0], [0, 0]),
                         beta=0.5)
    assert out.losses.tolist() == pytest.approx([0.3775407, 0.3775407], abs=1e-6)


def test_f_divergences_on_dpo():
    """u_w = 1, u_l = -1, β = 0.5.
    forward KL: f'(t) = 1 - 1/t → scores 1 - e^{-1} = 0.6321206 and 1 - e = -1.7182818; h = 2.3504024,
      loss -log σ(1.1752012) = 0.2690777.
    JS: log 2 + log σ(u): h = log σ(1) - log σ(-1) = 1 (exactly), loss -log σ(0.5) = 0.4740770.
    α-divergence, α = 0.5: (e^{-0.5·u} - 1)/(-0.5) → 0.7869387 and -1.2974425, h = 2.0843812,
      loss -log σ(1.0421906) = 0.3020887. α = 1 is reverse KL (plain DPO)."""
    assert loss_of("dpo", beta=0.5, f_divergence="forward_kl")[0] == pytest.approx(0.2690777, abs=1e-6)
    assert loss_of("dpo", beta=0.5, f_divergence="js_divergence")[0] == pytest.approx(0.4740770, abs=1e-6)
    assert loss_of("dpo", beta=0.5, f_divergence="alpha_divergence", f_alpha=0.5)[0] == pytest.approx(0.3020887,
                                                                                                       abs=1e-6)
    assert loss_of("dpo", beta=0.5, f_divergence="alpha_divergence", f_alpha=1.0)[0] == pytest.approx(0.3132617,
                                                                                                       abs=1e-6)


def token_extras(chosen_tokens, rejected_tokens, ref_chosen_tokens=None, ref_rejected_tokens=None, sq=None):
    tokens = torch.tensor(chosen_tokens + rejected_tokens)
    rows = torch.tensor([0] * len(chosen_tokens) + [1] * len(rejected_tokens))
    extras = {"token_logps": tokens, "token_rows": rows}
    if ref_chosen_tokens is not None:
        extras["ref_token_logps"] = torch.tensor(ref_chosen_tokens + ref_rejected_tokens)
    if sq is not None:
        extras["token_log_sum_sq_probs"] = torch.tensor(sq)
    return extras


def test_ld_alpha_downweights_the_longer_tail():
    """Chosen tokens [-1, -2] (2 tokens), rejected [-1, -1, -3, -5] (4): shared length 2.
    α = 0.5: policy chosen = -3, rejected = -2 + 0.5·(-8) = -6. Reference tokens all -1:
    ref chosen -2, rejected -2 + 0.5·(-2) = -3. u_w = -1, u_l = -3, h = 2, β = 0.5:
    loss = -log σ(1) = 0.3132617; logps/rejected is the LD-weighted -6.
    With α = 1 the sums are plain: u_w = -1, u_l = -10 + 4 = -6, h = 5, loss -log σ(2.5) = 0.0788897."""
    extras = token_extras([-1.0, -2.0], [-1.0, -1.0, -3.0, -5.0], [-1.0] * 2, [-1.0] * 4)
    inputs = pair(pc=-3.0, pr=-10.0, rc=-2.0, rr=-4.0, lc=2, lr=4)
    value, out = loss_of("dpo", {**inputs, "extras": extras}, beta=0.5, ld_alpha=0.5)
    assert value == pytest.approx(0.3132617, abs=1e-6)
    assert float(out.metrics["logps/rejected"]) == pytest.approx(-6.0)
    assert loss_of("dpo", {**inputs, "extras": extras}, beta=0.5, ld_alpha=1.0)[0] == pytest.approx(0.0788897, abs=1e-6)


def test_wpo_weights():
    """w(y) = exp(mean_t [log π(y_t) - log Σ_v π(v)²]). Chosen tokens [-1, -1] with log Σπ² = [-0.5, -0.5]:
    w_w = e^{-0.5}; rejected [-2, -2, -2, -2] with [-1]*4: w_l = e^{-1}. The DPO loss 0.3132617 (same pair
    as above) is scaled by e^{-1.5} = 0.2231302 → 0.0698981."""
    extras = token_extras([-1.0, -1.0], [-2.0] * 4, sq=[-0.5, -0.5, -1.0, -1.0, -1.0, -1.0])
    assert loss_of("dpo", {**pair(), "extras": extras}, beta=0.5, wpo=True)[0] == pytest.approx(0.0698981, abs=1e-6)


def test_missing_declared_input_is_a_clear_error():
    with pytest.raises(losses.LossConfigError, match="token_logps"):
        losses.compute("dpo", **pair(), beta=0.5, wpo=True)
    with pytest.raises(losses.LossConfigError, match="kl_pairs"):
        losses.compute("kto", **{**unpaired([-1, -2], [-1, -1], [True, False], [0, 0], [0, 0]),
                                 "kl_policy_logps": None})


def test_modifiers_are_validated():
    with pytest.raises(losses.LossConfigError, match=r"f_divergence: must be one of"):
        losses.compute("dpo", **pair(), f_divergence="kl")
    with pytest.raises(losses.LossConfigError, match=r"ld_alpha: must be in \[0, 1\]"):
        losses.compute("ipo", **pair(), ld_alpha=1.5)
    with pytest.raises(losses.LossConfigError, match="wpo: not supported for aot"):
        losses.compute("aot", **pair(), wpo=True)
    with pytest.raises(losses.LossConfigError, match="unknown hyperparameter"):
        losses.compute("nca", **pair(), f_divergence="forward_kl")  # TRL allows no f-divergence for nca


# ---------------------------------------------------------------------------------------------------
# Every loss: extreme margins, zero-length completions, finite gradients.

def inputs_for(spec, margin: float, grad: bool = True) -> dict:
    """A batch of 3 whose log-ratio margin is ``margin`` (±50 for the extremes)."""
    g = torch.Generator().manual_seed(0)
    base = -20 - 5 * torch.rand(3, generator=g)
    lengths = torch.tensor([5, 9, 13])
    if spec.data == "unpaired":
        return dict(policy_logps=(base + margin / 2).requires_grad_(grad), ref_logps=base,
                    desirable=torch.tensor([True, False, True]), lengths=lengths,
                    kl_policy_logps=base + 1.0, kl_ref_logps=base)
    if spec.data == "sft":
        return dict(policy_chosen_logps=(base + margin).requires_grad_(grad), chosen_lengths=lengths)
    return dict(policy_chosen_logps=(base + margin / 2).requires_grad_(grad),
                policy_rejected_logps=(base - margin / 2).requires_grad_(grad),
                ref_chosen_logps=base.clone(), ref_rejected_logps=base.clone(),
                chosen_lengths=lengths, rejected_lengths=lengths + 2)


@pytest.mark.parametrize("name", losses.names())
@pytest.mark.parametrize("margin", [-50.0, 0.0, 50.0])
@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_every_loss_is_finite_with_finite_gradients(name, margin, beta):
    spec = losses.get(name)
    inputs = inputs_for(spec, margin)
    # A loss without a strength (SimPER) takes no beta; it runs once per β value all the same.
    has_beta = any(f.name == "beta" for f in dataclasses.fields(spec.hparams))
    out = losses.compute(name, **inputs, **({"beta": beta} if has_beta else {}))
    assert out.losses.shape == (3,) and torch.isfinite(out.losses).all(), out.losses
    for value in out.metrics.values():
        assert torch.isfinite(value).all()
    out.losses.sum().backward()
    grads = [t.grad for k, t in inputs.items() if torch.is_tensor(t) and t.requires_grad]
    assert grads and all(gr is not None and torch.isfinite(gr).all() for gr in grads)


@pytest.mark.parametrize("f_divergence", ["forward_kl", "js_divergence", "alpha_divergence"])
@pytest.mark.parametrize("margin", [-50.0, 50.0])
def test_f_divergences_are_finite_at_extremes(f_divergence, margin):
    inputs = inputs_for(losses.get("dpo"), margin)
    out = losses.compute("dpo", **inputs, beta=1.0, f_divergence=f_divergence)
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all() and torch.isfinite(inputs["policy_chosen_logps"].grad).all()


def test_discopop_is_finite_where_trl_gives_nan():
    """ρ = -60: TRL's m·e^{-ρ} is σ(-1200)·e^{60} = 0·(1.1e26) in fp32... and e^{-ρ} overflows for ρ < -88,
    making 0·inf = NaN; ours is exp(log σ(ρ/τ) - ρ) ≈ exp(-1200 + 60) = 0, and the loss is ≈ -log σ(-60) = 60."""
    inputs = pair(pc=-10.0, pr=-10.0 + 100.0, rc=-11.0, rr=-11.0)
    value, _ = loss_of("discopop", inputs, beta=1.0)
    assert value == pytest.approx(100.0, rel=1e-5)


@pytest.mark.parametrize("name", losses.names())
def test_zero_length_completion_is_a_clear_error(name):
    spec = losses.get(name)
    inputs = inputs_for(spec, 1.0, grad=False)
    key = "lengths" if spec.data == "unpaired" else "chosen_lengths"
    inputs[key] = torch.tensor([5, 0, 13])
    with pytest.raises(losses.EmptyCompletionError, match=r"batch positions \[1\]"):
        losses.compute(name, **inputs)


def test_every_trl_loss_type_name_resolves():
    """TRL 1.16 DPOTrainer's loss_type names, KTOTrainer's and CPOTrainer's simpo/alphapo."""
    trl_dpo = ["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
               "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"]
    expected = {"sigmoid": "dpo", "exo_pair": "exo", "nca_pair": "nca", "sigmoid_norm": "dpo_norm"}
    for name in trl_dpo + ["kto", "apo_zero_unpaired", "simpo", "alphapo"]:
        assert losses.get(name).name == expected.get(name, name)


def test_available_lists_flags():
    rows = {row["name"]: row for row in losses.available()}
    assert rows["simpo"]["needs_reference"] is False and rows["kto"]["data"] == "unpaired"
    assert rows["kto"]["needs"] == ["kl_pairs"] and rows["bco"]["stateful"] is True
    assert math.isclose(rows["simpo"]["hparams"]["gamma"], 0.5)
