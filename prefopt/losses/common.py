"""Pieces the DPO-family losses share: implicit rewards and their TRL-named metrics, and the three
modifiers TRL 1.16 applies on top of its reference-based losses.

- LD-DPO (``ld_alpha``, Liu et al. 2024, arXiv:2409.06411): each sequence's log-prob becomes
  ``Σ_{t ≤ ℓ} log π(y_t) + α · Σ_{t > ℓ} log π(y_t)`` with ``ℓ = min(|y_w|, |y_l|)``, for policy and reference
  alike, so the verbose tail of the longer answer counts only α times.
- f-divergence (Wang et al. 2023, arXiv:2309.16240): the log-ratio ``u = log π/π_ref`` in the reward is
  replaced by ``f'(π/π_ref)``; reverse KL is plain DPO.
- WPO (Zhou et al. 2024, arXiv:2406.11827, Eq. 2): each pair's loss is multiplied by ``w(y_w)·w(y_l)`` with
  ``w(y) = exp(mean_t [log π(y_t) - log Σ_v π(v)²])``, detached, so off-policy pairs weigh less.

Each modifier is a field of the loss's hyperparameters (``ld_alpha``, ``f_divergence``/``f_alpha``, ``wpo``)
rather than a separate loss, exactly as TRL exposes them; the losses that support one inherit its mixin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from prefopt.losses.registry import LossConfigError, PairLogps, UnpairedLogps

F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
NLL_AVERAGES = ("sequence", "batch_tokens")


@dataclass
class RefPairOptions:
    """Modifiers every reference-based paired loss accepts."""

    beta: float = 0.1
    # LD-DPO's α in [0, 1] for the tokens beyond the shorter completion of the pair; 1.0 = off.
    ld_alpha: float = 1.0
    # WPO weighting of each pair by how likely the policy is to produce it (TRL's use_weighting).
    wpo: bool = False

    def validate(self) -> None:
        check_beta(self.beta)
        if not 0.0 <= self.ld_alpha <= 1.0:
            raise ValueError(f"ld_alpha: must be in [0, 1], got {self.ld_alpha}")

    def needs(self) -> set[str]:
        needs = set()
        if self.ld_alpha != 1.0:
            needs |= {"policy_tokens", "ref_tokens"}
        if self.wpo:
            needs |= {"policy_tokens", "token_sq_probs"}
        return needs


@dataclass
class FDivergenceOptions(RefPairOptions):
    """Reference-based losses built on the chosen-minus-rejected score also accept an f-divergence."""

    # reverse_kl (standard DPO) | forward_kl | js_divergence | alpha_divergence
    f_divergence: str = "reverse_kl"
    # α of the α-divergence (used only when f_divergence=alpha_divergence); TRL's f_alpha_divergence_coef.
    f_alpha: float = 0.5

    def validate(self) -> None:
        super().validate()
        if self.f_divergence not in F_DIVERGENCES:
            raise ValueError(f"f_divergence: must be one of {', '.join(F_DIVERGENCES)}, got {self.f_divergence!r}")


@dataclass
class UnpairedOptions:
    """What every unpaired loss (KTO, BCO, APO-zero unpaired) takes."""

    beta: float = 0.1
    # λ_D and λ_U: weights of desirable and undesirable rows, to correct an imbalanced dataset; the
    # KTO paper's Eq. 8 asks for λ_D·n_D / (λ_U·n_U) in [1, 4/3].
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0

    def validate(self) -> None:
        check_beta(self.beta)


def check_beta(beta: float) -> None:
    """β > 0, the one check every loss with a β shares (its value is the scale of the implicit reward)."""
    if beta <= 0:
        raise ValueError(f"beta: must be > 0, got {beta}")


def check_label_smoothing(value: float) -> None:
    """The assumed label-flip rate ε of the conservative/robust variants, in [0, 0.5) (0 = off)."""
    if not 0.0 <= value < 0.5:
        raise ValueError(f"label_smoothing: must be in [0, 0.5), got {value}")


def check_nll_average(value: str) -> None:
    if value not in NLL_AVERAGES:
        raise ValueError(f"nll_average: must be one of {', '.join(NLL_AVERAGES)}, got {value!r}")


def require_lengths(logps: PairLogps, name: str) -> tuple[Tensor, Tensor | None]:
    if logps.chosen_lengths is None:
        raise LossConfigError(f"loss {name!r} normalizes by completion length: pass chosen_lengths/rejected_lengths")
    return logps.chosen_lengths, logps.rejected_lengths


def logratios(logps: PairLogps) -> tuple[Tensor, Tensor]:
    """``(log π(y_w|x) - log π_ref(y_w|x), log π(y_l|x) - log π_ref(y_l|x))``, each ``(B,)``."""
    return logps.policy_chosen - logps.ref_chosen, logps.policy_rejected - logps.ref_rejected


def reward_metrics(logps: PairLogps, beta: float, chosen_rewards: Tensor | None = None,
                   rejected_rewards: Tensor | None = None) -> dict[str, Tensor]:
    """TRL's ``rewards/*`` and ``logps/*``: implicit rewards β·log(π/π_ref), detached, shape ``(B,)``.

    Reference-free losses pass their own rewards (e.g. SimPO's length-normalized β·log π).
    """
    if chosen_rewards is None:
        chosen_lr, rejected_lr = logratios(logps)
        chosen_rewards, rejected_rewards = beta * chosen_lr, beta * rejected_lr
    chosen_rewards = chosen_rewards.detach()
    rejected_rewards = rejected_rewards.detach()
    return {
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/margins": chosen_rewards - rejected_rewards,
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
        "logps/chosen": logps.policy_chosen.detach(),
        "logps/rejected": logps.policy_rejected.detach(),
    }


def _token_positions(rows: Tensor, n_rows: int) -> Tensor:
    """1-based position of each completion token within its row; ``rows`` is sorted (row-major nonzero)."""
    counts = torch.bincount(rows, minlength=n_rows)
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(rows.numel(), device=rows.device) - starts[rows] + 1


def apply_ld_alpha(logps: PairLogps, alpha: float) -> PairLogps:
    """LD-DPO: re-sum policy and reference log-probs with the tail beyond ``min(|y_w|, |y_l|)`` scaled by α.

    Uses ``extras["token_logps"]``, ``["ref_token_logps"]`` and ``["token_rows"]`` (rows 0..B-1 chosen,
    B..2B-1 rejected). α = 1 returns ``logps`` unchanged.
    """
    if alpha == 1.0:
        return logps
    rows = logps.extras["token_rows"]
    n = logps.policy_chosen.shape[0]
    shared = torch.minimum(logps.chosen_lengths, logps.rejected_lengths).repeat(2)
    scale = torch.where(_token_positions(rows, 2 * n) <= shared[rows], 1.0, alpha)

    def resum(tokens: Tensor) -> tuple[Tensor, Tensor]:
        sums = torch.zeros(2 * n, dtype=tokens.dtype, device=tokens.device).index_add(0, rows, tokens * scale)
        return sums[:n], sums[n:]

    policy_chosen, policy_rejected = resum(logps.extras["token_logps"])
    ref_chosen, ref_rejected = resum(logps.extras["ref_token_logps"])
    return replace(logps, policy_chosen=policy_chosen, policy_rejected=policy_rejected,
                   ref_chosen=ref_chosen, ref_rejected=ref_rejected)


def f_scores(chosen_logratios: Tensor, rejected_logratios: Tensor, f_divergence: str,
             f_alpha: float) -> tuple[Tensor, Tensor]:
    """``f'(π/π_ref)`` for chosen and rejected, written in terms of ``u = log π/π_ref`` (each ``(B,)``).

    reverse KL: u · forward KL: 1 - e^{-u} · JS: log 2 + log σ(u) · α: (e^{(α-1)u} - 1)/(α - 1), with
    the exponent clamped at 80 (as TRL) so it stays finite in fp32; α → 1 is the reverse-KL limit.
    """
    if f_divergence == "reverse_kl":
        return chosen_logratios, rejected_logratios
    if f_divergence == "forward_kl":
        return -torch.expm1(-chosen_logratios), -torch.expm1(-rejected_logratios)
    if f_divergence == "js_divergence":
        return math.log(2) + F.logsigmoid(chosen_logratios), math.log(2) + F.logsigmoid(rejected_logratios)
    if f_divergence == "alpha_divergence":
        if abs(f_alpha - 1.0) < 1e-6:
            return chosen_logratios, rejected_logratios
        a = f_alpha - 1.0

        def score(u: Tensor) -> Tensor:
            return torch.expm1(torch.clamp(a * u, max=80.0)) / a

        return score(chosen_logratios), score(rejected_logratios)
    raise LossConfigError(f"f_divergence={f_divergence!r}: must be one of {', '.join(F_DIVERGENCES)}")


def scores(logps: PairLogps, hp) -> tuple[Tensor, Tensor]:
    """Chosen and rejected scores after the loss's f-divergence (reverse KL when it has none)."""
    chosen_lr, rejected_lr = logratios(logps)
    return f_scores(chosen_lr, rejected_lr, getattr(hp, "f_divergence", "reverse_kl"), getattr(hp, "f_alpha", 0.5))


def wpo_weights(logps: PairLogps) -> Tensor:
    """WPO's per-pair weight ``w(y_w)·w(y_l)``, ``(B,)``, detached (see the module docstring)."""
    rows = logps.extras["token_rows"]
    n = logps.policy_chosen.shape[0]
    aligned = (logps.extras["token_logps"] - logps.extras["token_log_sum_sq_probs"]).detach()
    sums = torch.zeros(2 * n, dtype=aligned.dtype, device=aligned.device).index_add(0, rows, aligned)
    lengths = torch.cat([logps.chosen_lengths, logps.rejected_lengths]).to(aligned.dtype)
    weights = torch.exp(sums / lengths)
    return weights[:n] * weights[n:]


def prepare(logps: PairLogps, hp) -> PairLogps:
    """Apply the log-prob-level modifier (LD-DPO) a reference-based loss was configured with."""
    return apply_ld_alpha(logps, getattr(hp, "ld_alpha", 1.0))


def finish(losses: Tensor, logps: PairLogps, hp) -> Tensor:
    """Apply the loss-level modifier (WPO weighting) a reference-based loss was configured with."""
    if getattr(hp, "wpo", False):
        return losses * wpo_weights(logps)
    return losses


def nll(logps: PairLogps, average: str) -> Tensor:
    """Per-example NLL of the chosen completion, ``(B,)``, in one of two conventions.

    ``sequence``: ``-log π(y_i)/|y_i|``, each sequence's token mean (every example weighs the same).
    ``batch_tokens``: ``-log π(y_i) · B / Σ_j |y_j|``, whose batch mean is the token mean over all chosen
    tokens of the batch: TRL's ``nn.CrossEntropyLoss`` convention (long completions weigh more).
    """
    lengths = logps.chosen_lengths.to(logps.policy_chosen.dtype)
    if average == "sequence":
        return -logps.policy_chosen / lengths
    return -logps.policy_chosen * lengths.numel() / lengths.sum()


def unpaired_metrics(logps: UnpairedLogps, rewards: Tensor) -> dict[str, Tensor]:
    """TRL KTO's metrics: rewards/logps of desirable rows as ``*/chosen``, undesirable as ``*/rejected``.

    Only the rows of each kind enter its mean; a kind absent from the batch is left out rather than NaN.
    ``rewards/margins`` is the difference of the two means (a scalar), as in TRL.
    """
    rewards = rewards.detach()
    metrics: dict[str, Tensor] = {}
    for key, mask in (("chosen", logps.desirable), ("rejected", ~logps.desirable)):
        if bool(mask.any()):
            metrics[f"rewards/{key}"] = rewards[mask]
            metrics[f"logps/{key}"] = logps.policy.detach()[mask]
    if "rewards/chosen" in metrics and "rewards/rejected" in metrics:
        metrics["rewards/margins"] = metrics["rewards/chosen"].mean() - metrics["rewards/rejected"].mean()
    return metrics


def global_sum_count(values: Tensor, weights: Tensor | None = None) -> tuple[float, float]:
    """``(Σ w·values, Σ w)`` over every process's rows (all-reduced when torch.distributed is running);
    ``weights`` (0 for a stand-in row, see ``UnpairedLogps.weights``) default to 1.

    KTO's KL estimate and BCO's reward baseline are batch statistics; TRL gathers them across ranks, so a
    run on N processes estimates them from the same rows as one process would. Every rank calls the loss
    the same number of times (the trainer gives each rank the same number of micro-batches), so the
    collective cannot deadlock.
    """
    import torch.distributed as dist

    values = values.detach().float()
    if weights is None:
        total, count = values.sum(), torch.tensor(float(values.numel()), device=values.device)
    else:
        weights = weights.to(values.device, torch.float32)
        total, count = (values * weights).sum(), weights.sum()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        packed = torch.stack([total, count])
        dist.all_reduce(packed)
        return float(packed[0]), float(packed[1])
    return float(total), float(count)
