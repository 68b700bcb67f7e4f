"""β-DPO's dynamic β and β-guided data filtering (Wu et al. 2024, "β-DPO: Direct Preference Optimization with
Dynamic β", arXiv:2407.08639, NeurIPS 2024, §4), a modifier of any β-based paired loss (``adaptive_beta=beta_dpo``).

Per pair i of a batch, the implicit reward discrepancy (the paper's individual reward discrepancy)

    M_i = [log π(y_w|x) − log π_ref(y_w|x)] − [log π(y_l|x) − log π_ref(y_l|x)]            (B,)

(reference log-probs 0 for reference-free losses). On a training batch, in this order:

1. running statistics, momentum m: M_0 ← m·M_0 + (1 − m)·mean_i M_i,  σ ← m·σ + (1 − m)·std_i M_i
   (both start at 0);
2. β-guided filtering: each pair gets the Gaussian weight p_i = exp(−(M_i − M_0)² / (2σ²)) and
   ⌊(1 − ρ)·B⌋ pairs (at least one) are drawn without replacement with probability ∝ p_i; ρ = ``filter_ratio``
   is the fraction filtered out, 0 = keep every pair;
3. dynamic β: β_batch = max(β_0 · (1 + α·(mean_{i kept} M_i − M_0)), ``min_beta``), with β_0 the loss's β
   (or the scheduled β, prefopt/losses/beta_schedule.py) and α = ``alpha``;
4. the loss is the loss's own per-pair loss at β_batch, averaged over the kept pairs only.

An evaluation batch moves nothing and filters nothing: β_batch uses the batch's mean M against the current M_0.

Source. The paper's full text was not reachable from this workplace, so the order, the definitions and the
defaults above are transcribed from the authors' code, junkangwu/beta-DPO ``trainers.py`` (commit 1629047):
``update_and_sync_tensor_mean`` (step 1, gamma=0.9, M unscaled by β, std = torch's unbiased ``std``, updated
before β is computed), ``preference_loss`` with ``mode_loss=beta_DPO`` (steps 2-3: ``torch.multinomial`` on
the Gaussian weight, ``sample_num = int(B·(1 − mode_weight))``, clamp at 1e-3) and ``get_batch_metrics``
(step 4); README: ``mode_weight=0.2, a=0.6``. Where this module departs from that code:

- the code gathers M over every process and each process draws its own sample of the gathered batch; here
  the statistics and the kept-pair mean are all-reduced over processes (one M_0 and σ on every rank, as BCO's
  baseline), and each process draws its own ⌊(1 − ρ)·B_local⌋ pairs from its own rows;
- a batch is one micro-batch (what the loss sees), as the code's batch is one forward pass;
- the code updates and filters on evaluation batches too; here evaluation leaves the state alone;
- σ = 0 (the first batches of a run whose policy still equals the reference: every M_i is 0) would make
  the code's weights 0/0 = NaN and ``torch.multinomial`` fail; here every pair then weighs the same.

State (``state_dict``): ``{"m0", "sigma", "batches"}``, floats, identical on every process; it lives in the
loss term's state dict, so the run's checkpoint (``loss_state.pt``) saves and restores it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from prefopt.losses.common import global_sum_count
from prefopt.losses.registry import PairLogps

KEY = "adaptive_beta"


@dataclass
class AdaptiveBetaOptions:
    """The modifier's hyperparameters; also the typed schema of the ``adaptive_beta`` config (prefopt/config.py)."""

    alpha: float = 0.6  # α (the code's ``a``); 0 = β stays β_0
    momentum: float = 0.9  # m (the code's gamma)
    filter_ratio: float = 0.2  # ρ, fraction of each training batch filtered out (the code's mode_weight)
    min_beta: float = 1e-3

    def validate(self, where: str = "adaptive_beta") -> None:
        if self.alpha < 0 or not math.isfinite(self.alpha):
            raise ValueError(f"{where}.alpha={self.alpha}: must be a finite number >= 0")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"{where}.momentum={self.momentum}: must be in [0, 1)")
        if not 0.0 <= self.filter_ratio < 1.0:
            raise ValueError(f"{where}.filter_ratio={self.filter_ratio}: must be in [0, 1)")
        if not self.min_beta > 0:
            raise ValueError(f"{where}.min_beta={self.min_beta}: must be > 0")


def discrepancy(logps: PairLogps) -> Tensor:
    """M_i, ``(B,)``, detached."""
    chosen = logps.policy_chosen - (logps.ref_chosen if logps.ref_chosen is not None else 0.0)
    rejected = logps.policy_rejected - (logps.ref_rejected if logps.ref_rejected is not None else 0.0)
    return (chosen - rejected).detach().float()


def _global_mean_std(values: Tensor, weights: Tensor) -> tuple[float, float, float]:
    """(mean, unbiased std, count) of ``values`` over every process's rows of weight 1."""
    total, n = global_sum_count(values, weights)
    squares, _ = global_sum_count(values * values, weights)
    if n == 0:
        return 0.0, 0.0, 0.0
    mean = total / n
    var = (squares - n * mean * mean) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(max(var, 0.0)), n


class AdaptiveBeta:
    """β-DPO's running M_0 and σ, and the per-batch β and kept pairs (see the module docstring)."""

    def __init__(self, options: AdaptiveBetaOptions, state: dict):
        self.options = options
        # The term's state dict: the checkpoint clears and refills it in place, so it is read on every call.
        self.holder = state

    @property
    def state(self) -> dict:
        return self.holder.setdefault(KEY, {"m0": 0.0, "sigma": 0.0, "batches": 0})

    def state_dict(self) -> dict:
        return dict(self.state)

    def load_state_dict(self, state: dict) -> None:
        self.holder[KEY] = {"m0": float(state["m0"]), "sigma": float(state["sigma"]),
                            "batches": int(state["batches"])}

    def __call__(self, beta0: float, logps: PairLogps, training: bool,
                 weights: Tensor | None = None) -> tuple[float, Tensor | None, dict[str, Tensor]]:
        """β_batch, the per-pair loss scale (kept / share kept, ``(B,)``; None = every pair at 1) and metrics."""
        opt = self.options
        m = discrepancy(logps)
        w = torch.ones_like(m) if weights is None else weights.to(m.device, m.dtype)
        state = self.state
        scale = None
        if training:
            mean, std, _ = _global_mean_std(m, w)
            state["m0"] = opt.momentum * state["m0"] + (1 - opt.momentum) * mean
            state["sigma"] = opt.momentum * state["sigma"] + (1 - opt.momentum) * std
            state["batches"] += 1
            keep = self._sample(m, w) if opt.filter_ratio > 0 else w
            kept_sum, kept_n = global_sum_count(m, keep)
            batch_mean = kept_sum / kept_n if kept_n else state["m0"]
            if opt.filter_ratio > 0:
                n_keep = float(keep.sum())
                scale = keep * (float(w.sum()) / n_keep) if n_keep else keep
        else:
            total, n = global_sum_count(m, w)
            batch_mean = total / n if n else state["m0"]
        beta = max(beta0 * (1.0 + opt.alpha * (batch_mean - state["m0"])), opt.min_beta)
        metrics = {"adaptive_beta/m0": torch.tensor(state["m0"]), "adaptive_beta/sigma": torch.tensor(state["sigma"]),
                   "adaptive_beta/batch_discrepancy": torch.tensor(batch_mean)}
        if scale is not None:
            metrics["adaptive_beta/kept"] = (scale > 0).float()
        return beta, scale, metrics

    def _sample(self, m: Tensor, w: Tensor) -> Tensor:
        """0/1 mask of the ⌊(1 − ρ)·n⌋ pairs (at least one) drawn ∝ exp(−(M_i − M_0)²/(2σ²)) among real rows."""
        n_real = int(w.sum())
        if n_real == 0:
            return torch.zeros_like(m)
        sigma, m0 = self.state["sigma"], self.state["m0"]
        p = torch.exp(-0.5 * ((m - m0) / sigma) ** 2) * w if sigma > 0 else w.clone()
        if not bool(torch.isfinite(p).all()) or float(p.sum()) <= 0:
            p = w.clone()  # every real pair an outlier beyond float range: no basis to prefer one
        # Rows of weight 0 (stand-ins) can still be drawn once every positive row is taken; cap at the real ones.
        n_keep = min(max(1, int(n_real * (1 - self.options.filter_ratio))), int((p > 0).sum()))
        index = torch.multinomial(p, n_keep, replacement=False)
        mask = torch.zeros_like(m)
        mask[index] = 1.0
        return mask
