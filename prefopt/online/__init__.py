"""Iterative preference optimization (issue 13): the policy's own samples become preference pairs.

``pairs.py`` builds pairs from k labelled samples of a prompt (best-vs-worst, random, all pairs; ties and
unlabelled samples dropped and counted); ``rounds.py`` runs ``regime=iterative`` and ``regime=spin`` as rounds
of sampling, labelling and prefopt's one training loop. The labellers live in ``prefopt.labellers``.
"""

from __future__ import annotations

from pathlib import Path


def trainer_for(cfg):
    """What trains this config: the training loop's ``run`` (regime=offline), or the rounds around it. Both
    take ``(cfg, run_dir, hydra_choices)`` and return the summary."""
    from prefopt.online.rounds import ROUND_KINDS, check_regime, run_rounds
    from prefopt.trainer.loop import run

    regime = cfg.get("regime")
    if regime is None or regime.kind == "offline":
        return run
    check_regime(cfg)

    def rounds(cfg, run_dir=None, hydra_choices=None):
        return run_rounds(cfg, Path(run_dir or cfg.run_dir or "runs/manual"), hydra_choices)

    assert regime.kind in ROUND_KINDS
    return rounds
