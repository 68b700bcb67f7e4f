"""adaptive_beta=beta_dpo (β-DPO, prefopt/losses/adaptive_beta.py): worked numbers, the Gaussian filter, the
reduction to fixed β, ±50-nat inputs, the state round trip, bad values by key, and kill-and-resume through the CLI."""

from __future__ import annotations

import math
import signal

import pytest
import torch
import torch.nn.functional as F

from prefopt import losses
from prefopt.losses.adaptive_beta import AdaptiveBeta, AdaptiveBetaOptions
from prefopt.losses.beta_modifiers import beta_control
from prefopt.losses.registry import PairLogps
from prefopt.trainer.setup import LossTerm
from prefopt.trainer.step import compute_losses
from tests.conftest import TINY, compose, read_metrics, run_cli
from tests.trainer.test_resume import assert_close, comparable


def pairs(margins, requires_grad: bool = False) -> PairLogps:
    """Pairs whose log-ratio margin M_i is ``margins[i]``: log π(y_w) = M_i − 2, log π(y_l) = −2, reference −1 both."""
    m = torch.tensor(margins, dtype=torch.float32)
    chosen = (m - 2.0).clone().requires_grad_(requires_grad)
    rejected = torch.full_like(m, -2.0).requires_grad_(requires_grad)
    ref = torch.full_like(m, -1.0)
    n = torch.full_like(m, 4, dtype=torch.long)
    return PairLogps(chosen, rejected, ref, ref, n, n)


def dpo_term(beta: float = 0.1, **adaptive) -> LossTerm:
    spec = losses.get("dpo")
    hp = spec.make_hparams({"beta": beta})
    term = LossTerm(spec, hp, 1.0, {})
    options = {"alpha": 0.6, "momentum": 0.9, "filter_ratio": 0.0, "min_beta": 1e-3, **adaptive}
    term.beta = beta_control(spec, hp, term.state, adaptive=options, schedule=None, total_steps=10)
    return term


def test_margin_is_the_log_ratio_difference():
    """pairs([5]): (log π(y_w) − ref) − (log π(y_l) − ref) = (3 − (−1)) − (−2 − (−1)) = 4 + 1 = 5."""
    from prefopt.losses.adaptive_beta import discrepancy

    assert discrepancy(pairs([5.0, -1.5])).tolist() == [5.0, -1.5]


def test_worked_numbers_two_batches_without_filtering():
    """α = 0.6, m = 0.9, β_0 = 0.1, ρ = 0 (no filtering).

    batch 1, M = [1, 2, 3, 6]: mean 3, unbiased std √((4 + 1 + 0 + 9)/3) = √(14/3) = 2.160247.
      M_0 = 0.1·3 = 0.3, σ = 0.1·2.160247 = 0.216025, β = 0.1·(1 + 0.6·(3 − 0.3)) = 0.262,
      loss_i = −log σ(0.262·M_i) = softplus(−0.262·M_i): 0.570703, 0.465084, 0.375462, 0.188659 (i = 1..4);
      e.g. i = 1: ln(1 + e^−0.262) = ln(1.769511) = 0.570703.
    batch 2, M = [0, 0, 1, 1]: mean 0.5, std √(4·0.25/3) = 0.577350.
      M_0 = 0.9·0.3 + 0.1·0.5 = 0.32, σ = 0.9·0.216025 + 0.1·0.577350 = 0.252157,
      β = 0.1·(1 + 0.6·(0.5 − 0.32)) = 0.1108.
    """
    term = dpo_term()
    per, metrics = compute_losses([term], pairs([1.0, 2.0, 3.0, 6.0]), training=True)
    assert float(metrics["beta"]) == pytest.approx(0.262, abs=1e-7)
    assert per.tolist() == pytest.approx([0.570703, 0.465084, 0.375462, 0.188659], abs=1e-6)
    assert float(metrics["adaptive_beta/m0"]) == pytest.approx(0.3, abs=1e-7)
    assert float(metrics["adaptive_beta/sigma"]) == pytest.approx(0.216025, abs=1e-6)
    per, metrics = compute_losses([term], pairs([0.0, 0.0, 1.0, 1.0]), training=True)
    assert float(metrics["beta"]) == pytest.approx(0.1108, abs=1e-7)
    assert term.state["adaptive_beta"]["m0"] == pytest.approx(0.32, abs=1e-12)
    assert term.state["adaptive_beta"]["sigma"] == pytest.approx(0.252157, abs=1e-6)
    assert term.state["adaptive_beta"]["batches"] == 2
    assert per.tolist() == pytest.approx(F.softplus(-0.1108 * torch.tensor([0.0, 0.0, 1.0, 1.0])).tolist(), abs=1e-7)


def test_evaluation_moves_nothing():
    """After batch 1 above (M_0 = 0.3), an eval batch with M = [1, 1] gets β = 0.1·(1 + 0.6·0.7) = 0.142 and no state."""
    term = dpo_term()
    compute_losses([term], pairs([1.0, 2.0, 3.0, 6.0]), training=True)
    before = dict(term.state["adaptive_beta"])
    _, metrics = compute_losses([term], pairs([1.0, 1.0]), training=False)
    assert float(metrics["beta"]) == pytest.approx(0.142, abs=1e-7)
    assert term.state["adaptive_beta"] == before


def test_zero_sensitivity_without_filtering_is_fixed_beta_exactly():
    fixed = LossTerm(losses.get("dpo"), losses.get("dpo").make_hparams({"beta": 0.1}), 1.0, {})
    adaptive = dpo_term(alpha=0.0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        batch = pairs((torch.randn(6, generator=gen) * 5).tolist())
        want, _ = compute_losses([fixed], batch, training=True)
        got, metrics = compute_losses([adaptive], batch, training=True)
        assert torch.equal(got, want)
        assert float(metrics["beta"]) == float(torch.tensor(0.1))  # β_0 · (1 + 0) = β_0, logged in float32
    assert adaptive.state["adaptive_beta"]["batches"] == 4  # the statistics still ran


def test_filter_draws_by_the_gaussian_weight():
    """ρ = 0.2, m = 0 (M_0 and σ are the batch's own), M = [0, 0, 0, 0, 10]:
    M_0 = 2, σ = √((4·4 + 64)/4) = √20 = 4.472136; p = exp(−(M − 2)²/40) = e^−0.1 = 0.904837 (×4), e^−1.6 = 0.201897.
    ⌊0.8·5⌋ = 4 pairs are drawn from p without replacement: the same draw as torch.multinomial(p, 4) under one seed.
    The kept pairs' loss is scaled by 5/4, so the batch mean is the mean over the kept pairs."""
    term = dpo_term(alpha=0.0, momentum=0.0, filter_ratio=0.2)
    batch = pairs([0.0, 0.0, 0.0, 0.0, 10.0])
    p = torch.tensor([math.exp(-0.1)] * 4 + [math.exp(-1.6)])
    for seed in range(6):
        torch.manual_seed(seed)
        expected = torch.zeros(5)
        expected[torch.multinomial(p, 4, replacement=False)] = 1.0
        torch.manual_seed(seed)
        per, metrics = compute_losses([term], batch, training=True)
        term.state.clear()
        kept = metrics["adaptive_beta/kept"]
        assert torch.equal(kept, expected), (seed, kept, expected)
        dpo = F.softplus(-0.1 * torch.tensor([0.0, 0.0, 0.0, 0.0, 10.0]))
        assert per.tolist() == pytest.approx((dpo * expected * 5 / 4).tolist(), abs=1e-7)
        assert float(per.mean()) == pytest.approx(float(dpo[expected.bool()].mean()), abs=1e-7)


def test_identical_margins_keep_a_uniform_draw():
    """Step 1 of a run: the policy is the reference, every M_i = 0, σ = 0: the authors' weight is 0/0; here uniform."""
    term = dpo_term(filter_ratio=0.5)
    per, metrics = compute_losses([term], pairs([0.0] * 4), training=True)
    assert torch.isfinite(per).all() and float(metrics["adaptive_beta/kept"].sum()) == 2.0
    assert float(metrics["beta"]) == pytest.approx(0.1)


def test_fifty_nat_inputs_are_finite_with_finite_gradients():
    term = dpo_term(filter_ratio=0.25)
    for margins in ([50.0, -50.0, 49.0, -49.0], [-50.0] * 4, [50.0] * 4):
        batch = pairs(margins, requires_grad=True)
        per, metrics = compute_losses([term], batch, training=True)
        per.sum().backward()
        assert torch.isfinite(per).all() and math.isfinite(float(metrics["beta"]))
        assert torch.isfinite(batch.policy_chosen.grad).all() and torch.isfinite(batch.policy_rejected.grad).all()
    assert float(metrics["beta"]) >= 1e-3  # clamped at min_beta, never negative


def test_state_round_trip_continues_the_same_sequence():
    first, second = pairs([1.0, 2.0, 3.0]), pairs([-1.0, 4.0, 0.5])
    straight = dpo_term()
    compute_losses([straight], first, training=True)
    want, _ = compute_losses([straight], second, training=True)
    interrupted = dpo_term()
    compute_losses([interrupted], first, training=True)
    saved = interrupted.beta.adaptive.state_dict()
    resumed = dpo_term()
    resumed.beta.adaptive.load_state_dict(saved)
    got, _ = compute_losses([resumed], second, training=True)
    assert torch.equal(got, want)
    assert isinstance(AdaptiveBeta(AdaptiveBetaOptions(), {}).state_dict()["m0"], float)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("alpha", -0.5, "adaptive_beta.alpha=-0.5: must be a finite number >= 0"),
    ("momentum", 1.0, "adaptive_beta.momentum=1.0: must be in [0, 1)"),
    ("filter_ratio", 1.0, "adaptive_beta.filter_ratio=1.0: must be in [0, 1)"),
    ("filter_ratio", -0.1, "adaptive_beta.filter_ratio=-0.1: must be in [0, 1)"),
    ("min_beta", 0.0, "adaptive_beta.min_beta=0.0: must be > 0"),
])
def test_bad_values_name_the_key(key, value, message):
    with pytest.raises(losses.LossConfigError) as err:
        dpo_term(**{key: value})
    assert str(err.value) == message


def test_cli_bad_value_and_no_beta_loss_are_one_line(tmp_path):
    proc = run_cli(TINY + ["adaptive_beta=beta_dpo", "adaptive_beta.filter_ratio=1.5"], tmp_path / "a", check=False)
    assert proc.returncode != 0 and "adaptive_beta.filter_ratio=1.5: must be in [0, 1)" in proc.stderr
    proc = run_cli(TINY + ["adaptive_beta=beta_dpo", "loss=sft"], tmp_path / "b", check=False)
    assert proc.returncode != 0 and "adaptive_beta: set, but no configured loss (sft)" in proc.stderr
    assert "Traceback" not in proc.stderr


# The resume pattern of tests/trainer/test_resume.py, with both β modifiers on.
RUN = TINY + ["trainer.max_steps=6", "trainer.checkpoint_every=2", "trainer.keep_last=2", "optimizer.lr=1e-3",
              "trainer.batch_size=4", "trainer.grad_accum=2", "adaptive_beta=beta_dpo", "beta_schedule=cosine",
              "beta_schedule.end=0.3"]


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted_run(tmp_path):
    """M_0, σ (loss_state.pt) and the filter's RNG draws carry over the kill: every logged β and loss is the same."""
    from prefopt.train import run

    run(compose(RUN), tmp_path / "full")
    run_dir = tmp_path / "run"
    killed = run_cli(RUN, run_dir, check=False, env={"PREFOPT_INJECT_FAULT": "kill:5"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_cli(RUN + ["resume=auto"], run_dir)
    full = read_metrics(tmp_path / "full")
    assert_close(comparable(read_metrics(run_dir)), comparable(full))
    train = [r for r in full if r["split"] == "train"]
    assert len({round(r["beta"], 6) for r in train}) == len(train)  # β moved every step
    assert all(0 < r["adaptive_beta/kept"] < 1 for r in train)  # filtering ran


@pytest.mark.slow
def test_two_processes_share_one_running_statistic(tmp_path):
    """M_0, σ and the batch mean are all-reduced: 2 processes x batch 2 run the steps of 1 process x batch 4
    (no filtering, whose draws are per process), so β, M_0, σ and the loss match at every step within 1e-5."""
    from tests.trainer.test_distributed import MOVING, launch_two_processes

    on = ["adaptive_beta=beta_dpo", "adaptive_beta.filter_ratio=0.0", "adaptive_beta.alpha=2.0"]
    run_cli(TINY + MOVING + on + ["trainer.batch_size=4"], tmp_path / "single", env={"OMP_NUM_THREADS": "1"})
    launch_two_processes(TINY + MOVING + on + ["trainer.batch_size=2"], tmp_path / "double")
    keys = ("loss", "beta", "adaptive_beta/m0", "adaptive_beta/sigma", "eval/beta", "eval/loss")
    single, double = read_metrics(tmp_path / "single"), read_metrics(tmp_path / "double")
    assert [(r["split"], r["step"]) for r in single] == [(r["split"], r["step"]) for r in double]
    for a, b in zip(single, double, strict=True):
        for key in keys:
            if key in a:
                assert abs(a[key] - b[key]) < 1e-5, (a["step"], key, a[key], b[key])
    assert single[-2]["adaptive_beta/sigma"] > 0 and abs(single[-2]["beta"] - 0.1) > 1e-4  # the statistic moved
