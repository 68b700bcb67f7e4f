"""Parity with TRL 1.16 (test-only dependency, pinned in the ``test`` extra): the same per-token
log-probs give the same loss and the same rewards/* and logps/* metrics, within 1e-6 (fp32).

How TRL is called: its losses live inside trainer methods, so each test builds a trainer object with
``object.__new__`` (skipping ``__init__``, which would load models and datasets) and sets exactly the
attributes the method reads. For DPOTrainer and KTOTrainer that method is ``_compute_loss`` itself, fed by
a stand-in model whose forward returns the per-token log-probs we chose (TRL's fused LM head returns
``log_probs`` zeroed outside the completion, plus entropy/mean_logits/is_top1 for its logging). So the
whole of TRL's loss path runs, including its LD-DPO split, f-divergences, WPO weights and loss
combination; only the network is replaced. CPO/ORPO expose ``cpo_loss``/``odds_ratio_loss`` directly.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from prefopt import losses

trl = pytest.importorskip("trl", reason="TRL is a test-only dependency (pip install -e .[test])")
if trl.__version__ != "1.16.0":
    pytest.skip(f"parity is pinned to TRL 1.16.0, found {trl.__version__}", allow_module_level=True)

from trl.experimental.cpo import CPOTrainer  # noqa: E402
from trl.experimental.orpo import ORPOTrainer  # noqa: E402
from trl.trainer.dpo_trainer import DPOTrainer  # noqa: E402
from trl.trainer.kto_trainer import KTOTrainer  # noqa: E402

TOL = dict(rel=1e-6, abs=1e-6)
PROMPT = 3  # prompt tokens before every completion
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
           "logps/rejected")


@pytest.fixture(scope="module")
def accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


class FakeLM(torch.nn.Module):
    """Stands in for a causal LM under TRL's fused LM head: returns fixed per-token log-probs."""

    is_gradient_checkpointing = False

    def __init__(self, by_width: dict[int, torch.Tensor], sq: torch.Tensor | None = None):
        super().__init__()
        self.by_width = by_width
        self.sq = sq

    def forward(self, input_ids, labels=None, **kwargs):
        log_probs = self.by_width[input_ids.shape[1]]
        zeros = torch.zeros_like(log_probs)
        return SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros,
                               is_top1=torch.zeros_like(log_probs, dtype=torch.bool), log_sum_sq_probs=self.sq)


def make_batch(n_pairs: int, seed: int, extreme: float = 0.0):
    """``2B`` rows [chosen; rejected] of random completion lengths after a 3-token prompt, and per-token
    log-probs for policy and reference (zero outside the completion, as TRL's fused head). ``extreme``
    shifts every chosen token up and rejected token down so sequence margins reach about ±``extreme``."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 9, (2 * n_pairs,), generator=g)
    width = PROMPT + int(lengths.max())
    completion = torch.zeros(2 * n_pairs, width, dtype=torch.long)
    for row, n in enumerate(lengths.tolist()):
        completion[row, PROMPT:PROMPT + n] = 1
    shift = completion[:, 1:].float()
    policy = -3 * torch.rand(2 * n_pairs, width - 1, generator=g) - 0.01
    ref = -3 * torch.rand(2 * n_pairs, width - 1, generator=g) - 0.01
    if extreme:
        sign = torch.cat([torch.ones(n_pairs), -torch.ones(n_pairs)]).unsqueeze(1)
        policy = policy + sign * extreme / lengths.unsqueeze(1)
    sq = -2 * torch.rand(2 * n_pairs, width - 1, generator=g) - 0.5
    return dict(completion_mask=completion, policy=policy * shift, ref=ref * shift, sq=sq * shift,
                input_ids=torch.ones(2 * n_pairs, width, dtype=torch.long),
                attention_mask=(completion.cumsum(1) > 0).long() | (torch.arange(width) < PROMPT).long())


def prefopt_logps(batch) -> losses.PairLogps:
    """The same numbers as prefopt's trainer would hand the loss (sums, lengths, per-token extras)."""
    shift = batch["completion_mask"][:, 1:].bool()
    rows, cols = shift.nonzero(as_tuple=True)
    policy, ref = batch["policy"].sum(1), batch["ref"].sum(1)
    lengths = shift.sum(1)
    n = policy.shape[0] // 2
    return losses.PairLogps(
        policy_chosen=policy[:n], policy_rejected=policy[n:], ref_chosen=ref[:n], ref_rejected=ref[n:],
        chosen_lengths=lengths[:n], rejected_lengths=lengths[n:],
        extras={"token_logps": batch["policy"][rows, cols], "token_rows": rows,
                "ref_token_logps": batch["ref"][rows, cols], "token_log_sum_sq_probs": batch["sq"][rows, cols]},
    )


def trl_dpo(accelerator, batch, loss_types, weights=None, *, beta=0.1, label_smoothing=0.0, ld_alpha=None,
            f_divergence="reverse_kl", f_alpha=0.5, wpo=False, tau=0.05):
    width = batch["input_ids"].shape[1]
    policy = FakeLM({width: batch["policy"]}, batch["sq"])
    trainer = object.__new__(DPOTrainer)
    trainer.__dict__.update(
        model=policy, ref_model=FakeLM({width: batch["ref"]}), accelerator=accelerator, aux_loss_enabled=False,
        precompute_ref_logps=False, ld_alpha=ld_alpha, f_divergence_type=f_divergence,
        f_alpha_divergence_coef=f_alpha, loss_types=list(loss_types), loss_weights=weights or [1.0] * len(loss_types),
        beta=beta, label_smoothing=label_smoothing, use_weighting=wpo, _total_train_tokens=0, _tp_size=1,
        _metrics={"train": {}, "eval": {}},
        args=SimpleNamespace(discopop_tau=tau, gradient_checkpointing_kwargs=None),
    )
    from collections import defaultdict

    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "completion_mask")}
    loss = trainer._compute_loss(policy, inputs, return_outputs=False)
    return float(loss), {k: v[-1] for k, v in trainer._metrics["train"].items()}


# TRL loss_type -> (prefopt name, extra hyperparameters)
DPO_LOSSES = {
    "sigmoid": ("dpo", {}),
    "hinge": ("hinge", {}),
    "ipo": ("ipo", {}),
    "exo_pair": ("exo", {"label_smoothing": 1e-3}),
    "nca_pair": ("nca", {}),
    "robust": ("robust", {"label_smoothing": 0.1}),
    "bco_pair": ("bco_pair", {}),
    "sppo_hard": ("sppo_hard", {}),
    "aot": ("aot", {"label_smoothing": 0.1}),
    "aot_unpaired": ("aot_unpaired", {"label_smoothing": 0.1}),
    "apo_zero": ("apo_zero", {}),
    "apo_down": ("apo_down", {}),
    "discopop": ("discopop", {"tau": 0.05}),
    "sft": ("sft", {"nll_average": "batch_tokens"}),
    "sigmoid_norm": ("dpo_norm", {}),
}
F_DIV_LOSSES = ["sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop"]


def ours(name, logps, **hp):
    spec = losses.get(name)
    out = losses.call(spec, logps, spec.make_hparams(hp))
    return float(out.losses.mean()), {k: float(v.float().mean()) for k, v in out.metrics.items()}


def assert_same(trl_out, our_out, keys=METRICS):
    (trl_loss, trl_metrics), (our_loss, our_metrics) = trl_out, our_out
    assert our_loss == pytest.approx(trl_loss, **TOL)
    for key in keys:
        assert our_metrics[key] == pytest.approx(trl_metrics[key], **TOL), key


@pytest.mark.parametrize("extreme", [0.0, 50.0, -50.0], ids=["random", "margin+50", "margin-50"])
@pytest.mark.parametrize("loss_type", list(DPO_LOSSES))
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_trainer_losses(accelerator, loss_type, beta, extreme):
    batch = make_batch(6, seed=hash((loss_type, extreme)) % 1000, extreme=extreme)
    name, hp = DPO_LOSSES[loss_type]
    label_smoothing = hp.get("label_smoothing", 0.0)
    trl_out = trl_dpo(accelerator, batch, [loss_type], beta=beta, label_smoothing=label_smoothing,
                      tau=hp.get("tau", 0.05))
    if loss_type == "discopop" and extreme < 0 and beta == 0.5:
        # At ρ = β·h ≈ -25 TRL's m·e^{-ρ} is still finite in fp32 (it overflows only past ρ ≈ -88).
        assert torch.isfinite(torch.tensor(trl_out[0]))
    keys = ("logps/chosen",) if loss_type == "sft" else METRICS  # SFT logs no rewards
    assert_same(trl_out, ours(name, prefopt_logps(batch), beta=beta, **hp), keys)


@pytest.mark.parametrize("extreme", [0.0, 50.0], ids=["random", "margin+50"])
@pytest.mark.parametrize("loss_type", [t for t in DPO_LOSSES if t != "sft"])
@pytest.mark.parametrize("modifier", ["ld_alpha", "wpo", "both"])
def test_ld_alpha_and_wpo_modifiers(accelerator, loss_type, modifier, extreme):
    if modifier != "ld_alpha" and loss_type in ("aot", "aot_unpaired"):
        pytest.skip("TRL and prefopt both refuse WPO with AOT (sorting breaks per-pair weights)")
    batch = make_batch(5, seed=7, extreme=extreme)
    name, hp = DPO_LOSSES[loss_type]
    ld = 0.3 if modifier in ("ld_alpha", "both") else None
    wpo = modifier in ("wpo", "both")
    trl_out = trl_dpo(accelerator, batch, [loss_type], beta=0.2, label_smoothing=hp.get("label_smoothing", 0.0),
                      ld_alpha=ld, wpo=wpo)
    assert_same(trl_out, ours(name, prefopt_logps(batch), beta=0.2, ld_alpha=ld if ld is not None else 1.0, wpo=wpo,
                              **hp))


@pytest.mark.parametrize("extreme", [0.0, 50.0, -50.0], ids=["random", "margin+50", "margin-50"])
@pytest.mark.parametrize("loss_type", F_DIV_LOSSES)
@pytest.mark.parametrize("f_divergence", ["forward_kl", "js_divergence", "alpha_divergence"])
def test_f_divergences(accelerator, loss_type, f_divergence, extreme):
    batch = make_batch(5, seed=11, extreme=extreme)
    name, hp = DPO_LOSSES[loss_type]
    trl_out = trl_dpo(accelerator, batch, [loss_type], beta=0.3, label_smoothing=hp.get("label_smoothing", 0.0),
                      f_divergence=f_divergence, f_alpha=0.3)
    our_out = ours(name, prefopt_logps(batch), beta=0.3, f_divergence=f_divergence, f_alpha=0.3, **hp)
    if math.isnan(trl_out[0]):
        # The one deliberate difference: TRL's discopop computes m·e^{-ρ} as 0·inf = NaN once the f-scores
        # make ρ very negative; prefopt's exp(log σ(ρ/τ) - ρ) stays finite (see prefopt/losses/discopop.py).
        assert loss_type == "discopop" and math.isfinite(our_out[0])
        return
    assert_same(trl_out, our_out)


def test_mpo_combination_matches_trl_loss_weights(accelerator):
    """MPO: TRL's loss_type=[sigmoid, bco_pair, sft], loss_weights=[0.8, 0.2, 1.0] against prefopt's
    loss=[dpo,bco_pair,sft] with per-term weights, combined by the trainer's own compute_losses."""
    from prefopt.trainer.setup import LossTerm
    from prefopt.trainer.step import compute_losses

    batch = make_batch(6, seed=3)
    trl_loss, trl_metrics = trl_dpo(accelerator, batch, ["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0])
    terms = [LossTerm(losses.get(n), losses.get(n).make_hparams(hp), w, {})
             for n, hp, w in (("dpo", {}, 0.8), ("bco_pair", {}, 0.2), ("sft", {"nll_average": "batch_tokens"}, 1.0))]
    per_example, metrics = compute_losses(terms, prefopt_logps(batch), training=True)
    assert float(per_example.mean()) == pytest.approx(trl_loss, **TOL)
    for key in METRICS:
        assert float(metrics[key].float().mean()) == pytest.approx(trl_metrics[key], **TOL)


def test_trl_label_smoothing_is_not_in_sigmoid_but_our_cdpo_is(accelerator):
    """TRL 1.16's sigmoid ignores label_smoothing; prefopt's dpo implements cDPO (DPO repo). Pinned so a
    TRL change is noticed."""
    batch = make_batch(4, seed=5)
    trl_loss, _ = trl_dpo(accelerator, batch, ["sigmoid"], label_smoothing=0.2)
    assert ours("dpo", prefopt_logps(batch), label_smoothing=0.0)[0] == pytest.approx(trl_loss, **TOL)
    assert ours("dpo", prefopt_logps(batch), label_smoothing=0.2)[0] != pytest.approx(trl_loss, **TOL)


# ---------------------------------------------------------------------------------------------------
# KTO against KTOTrainer._compute_loss.

def kto_batch(n: int, seed: int, extreme: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([True, False] * (n // 2))
    lengths = torch.randint(1, 9, (n,), generator=g)
    width = PROMPT + 10  # KL rows get width + 1 so the stand-in model can tell them apart
    out = {}
    for key, w in (("", width), ("KL_", width + 1)):
        completion = torch.zeros(n, w, dtype=torch.long)
        for row, k in enumerate(lengths.roll(1).tolist() if key else lengths.tolist()):
            completion[row, PROMPT:PROMPT + k] = 1
        shift = completion[:, 1:].float()
        policy = -3 * torch.rand(n, w - 1, generator=g)
        if extreme and not key:
            policy = policy + torch.where(labels, extreme, -extreme).unsqueeze(1) / lengths.unsqueeze(1)
        out[key] = dict(completion=completion, policy=policy * shift, ref=-3 * torch.rand(n, w - 1, generator=g) * shift)
    return labels, out


@pytest.mark.parametrize("extreme", [0.0, 50.0, -50.0])
@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.33, 0.7)])
def test_kto_trainer(accelerator, extreme, weights):
    from collections import defaultdict

    labels, rows = kto_batch(8, seed=int(abs(extreme)) + 1, extreme=extreme)
    main, kl = rows[""], rows["KL_"]
    w_main, w_kl = main["completion"].shape[1], kl["completion"].shape[1]
    policy = FakeLM({w_main: main["policy"], w_kl: kl["policy"]})
    trainer = object.__new__(KTOTrainer)
    trainer.__dict__.update(
        model=policy, ref_model=FakeLM({w_main: main["ref"], w_kl: kl["ref"]}), accelerator=accelerator,
        aux_loss_enabled=False, precompute_ref_logps=False, calculate_KL=True, loss_type="kto", beta=0.3,
        desirable_weight=weights[0], undesirable_weight=weights[1], _total_train_tokens=0, _tp_size=1,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        args=SimpleNamespace(gradient_checkpointing_kwargs=None),
    )
    inputs = {"input_ids": torch.ones(8, w_main, dtype=torch.long), "attention_mask": torch.ones(8, w_main),
              "completion_mask": main["completion"], "label": labels,
              "KL_input_ids": torch.ones(8, w_kl, dtype=torch.long), "KL_attention_mask": torch.ones(8, w_kl),
              "KL_completion_mask": kl["completion"]}
    trl_loss = float(trainer._compute_loss(policy, inputs, return_outputs=False))
    trl_metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    out = losses.compute("kto", policy_logps=main["policy"].sum(1), ref_logps=main["ref"].sum(1), desirable=labels,
                         lengths=main["completion"][:, 1:].sum(1), kl_policy_logps=kl["policy"].sum(1),
                         kl_ref_logps=kl["ref"].sum(1), beta=0.3, desirable_weight=weights[0],
                         undesirable_weight=weights[1])
    assert float(out.losses.mean()) == pytest.approx(trl_loss, **TOL)
    for key in ("kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert float(out.metrics[key].mean()) == pytest.approx(trl_metrics[key], **TOL), key


def test_apo_zero_unpaired_matches_kto_trainer(accelerator):
    from collections import defaultdict

    labels, rows = kto_batch(6, seed=9)
    main = rows[""]
    w = main["completion"].shape[1]
    policy = FakeLM({w: main["policy"]})
    trainer = object.__new__(KTOTrainer)
    trainer.__dict__.update(
        model=policy, ref_model=FakeLM({w: main["ref"]}), accelerator=accelerator, aux_loss_enabled=False,
        precompute_ref_logps=False, calculate_KL=False, loss_type="apo_zero_unpaired", beta=0.2,
        desirable_weight=1.0, undesirable_weight=1.0, _total_train_tokens=0, _tp_size=1,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        args=SimpleNamespace(gradient_checkpointing_kwargs=None),
    )
    inputs = {"input_ids": torch.ones(6, w, dtype=torch.long), "attention_mask": torch.ones(6, w),
              "completion_mask": main["completion"], "label": labels}
    trl_loss = float(trainer._compute_loss(policy, inputs, return_outputs=False))
    out = losses.compute("apo_zero_unpaired", policy_logps=main["policy"].sum(1), ref_logps=main["ref"].sum(1),
                         desirable=labels, lengths=main["completion"][:, 1:].sum(1), beta=0.2)
    assert float(out.losses.mean()) == pytest.approx(trl_loss, **TOL)
    assert float(out.metrics["rewards/chosen"].mean()) == pytest.approx(trainer._metrics["train"]["rewards/chosen"][-1],
                                                                       **TOL)


# ---------------------------------------------------------------------------------------------------
# SimPO / CPO / AlphaPO against CPOTrainer.cpo_loss, ORPO against ORPOTrainer.odds_ratio_loss.

def ref_free_inputs(seed: int, extreme: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    lc, lr = torch.randint(1, 40, (6,), generator=g), torch.randint(1, 40, (6,), generator=g)
    pc = -lc * (0.05 + 2 * torch.rand(6, generator=g)) + extreme / 2
    pr = -lr * (0.05 + 2 * torch.rand(6, generator=g)) - extreme / 2
    return pc.clamp(max=-1e-3), pr.clamp(max=-1e-3), lc, lr


def cpo_trainer(accelerator, loss_type, **attrs):
    trainer = object.__new__(CPOTrainer)
    trainer.__dict__.update({"accelerator": accelerator, "loss_type": loss_type, "beta": 0.5, "label_smoothing": 0.0,
                             "alpha": 0.0, "simpo_gamma": 0.5, **attrs})
    return trainer


def pair_logps(pc, pr, lc, lr):
    return losses.PairLogps(policy_chosen=pc, policy_rejected=pr, chosen_lengths=lc, rejected_lengths=lr)


@pytest.mark.parametrize("extreme", [0.0, 50.0, -50.0])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_simpo_matches_cpo_trainer(accelerator, extreme, label_smoothing):
    """TRL's CPOTrainer(loss_type="simpo") is given per-token mean log-probs (its average_log_prob)."""
    pc, pr, lc, lr = ref_free_inputs(1, extreme)
    trainer = cpo_trainer(accelerator, "simpo", label_smoothing=label_smoothing, simpo_gamma=0.7)
    trl_losses, trl_chosen, trl_rejected = trainer.cpo_loss(pc / lc, pr / lr)
    out = losses.call(losses.get("simpo"), pair_logps(pc, pr, lc, lr),
                      losses.get("simpo").make_hparams({"beta": 0.5, "gamma": 0.7, "label_smoothing": label_smoothing}))
    assert torch.allclose(out.losses, trl_losses, rtol=1e-6, atol=1e-6)
    assert torch.allclose(out.metrics["rewards/chosen"], trl_chosen, rtol=1e-6, atol=1e-6)
    assert torch.allclose(out.metrics["rewards/rejected"], trl_rejected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("alpha", [0.25, -0.5])
def test_alphapo_matches_cpo_trainer(accelerator, alpha):
    pc, pr, lc, lr = ref_free_inputs(2)
    trainer = cpo_trainer(accelerator, "simpo", alpha=alpha, simpo_gamma=0.3)
    trl_losses, trl_chosen, _ = trainer.cpo_loss(pc / lc, pr / lr)
    out = losses.call(losses.get("alphapo"), pair_logps(pc, pr, lc, lr),
                      losses.get("alphapo").make_hparams({"beta": 0.5, "gamma": 0.3, "alpha": alpha}))
    assert torch.allclose(out.losses, trl_losses, rtol=1e-6, atol=1e-6)
    assert torch.allclose(out.metrics["rewards/chosen"], trl_chosen, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("extreme", [0.0, 50.0, -50.0])
def test_cpo_matches_cpo_trainer(accelerator, extreme):
    """CPO = TRL's cpo_loss(sigmoid) on summed log-probs + cpo_alpha · TRL's cross-entropy NLL. The NLL is
    checked against nn.CrossEntropyLoss over random logits exactly as CPOTrainer.concatenated_forward
    computes it (chosen labels, prompt masked with -100)."""
    g = torch.Generator().manual_seed(4)
    batch, width, vocab = 6, 12, 50
    logits = torch.randn(batch, width, vocab, generator=g) * 3
    labels = torch.randint(0, vocab, (batch, width), generator=g)
    lengths = torch.randint(1, width - PROMPT, (batch,), generator=g)
    for row, n in enumerate(lengths.tolist()):
        labels[row, :PROMPT] = -100
        labels[row, PROMPT + n:] = -100
    pc = CPOTrainer.get_batch_logps(logits, labels) + extreme / 2
    pr = pc - extreme - torch.rand(batch, generator=g)
    trl_nll = torch.nn.CrossEntropyLoss()(logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1))
    trainer = cpo_trainer(accelerator, "sigmoid")
    trl_losses, trl_chosen, _ = trainer.cpo_loss(pc, pr)
    trl_loss = trl_losses.mean() + 1.0 * trl_nll
    # The contrast sees the shifted log-probs, the NLL the model's own (unshifted) ones, as in TRL here.
    out = losses.call(losses.get("cpo"), pair_logps(pc, pr, lengths, lengths),
                      losses.get("cpo").make_hparams({"beta": 0.5, "alpha": 0.0}))
    nll = losses.call(losses.get("sft"), pair_logps(pc - extreme / 2, None, lengths, None),
                      losses.get("sft").make_hparams({"nll_average": "batch_tokens"}))
    assert float(out.losses.mean() + nll.losses.mean()) == pytest.approx(float(trl_loss), **TOL)
    assert torch.allclose(out.metrics["rewards/chosen"], trl_chosen, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("extreme", [0.0, 50.0, -50.0])
def test_orpo_odds_ratio_matches_orpo_trainer(accelerator, extreme):
    """ORPO's odds-ratio term, rewards and log-odds metrics equal ORPOTrainer.odds_ratio_loss on the same
    mean log-probs; the NLL part differs by design (TRL's includes prompt tokens, see orpo.py)."""
    pc, pr, lc, lr = ref_free_inputs(3, extreme)
    trainer = object.__new__(ORPOTrainer)
    trainer.__dict__.update(accelerator=accelerator, beta=0.25)
    trl_losses, trl_chosen, trl_rejected, trl_ratio, trl_log_odds = trainer.odds_ratio_loss(pc / lc, pr / lr)
    spec = losses.get("orpo")
    out = losses.call(spec, pair_logps(pc, pr, lc, lr), spec.make_hparams({"beta": 0.25, "nll_average": "sequence"}))
    odds_term = out.losses - out.metrics["nll"]  # = -λ·log σ(log odds)
    assert torch.allclose(odds_term, -trl_losses, rtol=1e-6, atol=1e-6)
    assert torch.allclose(out.metrics["rewards/chosen"], trl_chosen, rtol=1e-6, atol=1e-6)
    assert torch.allclose(out.metrics["rewards/rejected"], trl_rejected, rtol=1e-6, atol=1e-6)
    assert float(out.metrics["log_odds_ratio"].mean()) == pytest.approx(float(trl_ratio), **TOL)
    assert float(out.metrics["log_odds_chosen"].mean()) == pytest.approx(float(trl_log_odds), **TOL)
