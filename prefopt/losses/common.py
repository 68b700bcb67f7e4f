"""Pieces every reference-based paired loss shares: the implicit reward and its TRL-named metrics."""

from __future__ import annotations

from torch import Tensor

from prefopt.losses.registry import PairLogps


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
