"""Train a policy with any registered preference loss: the command line of prefopt's one training loop.

    python -m prefopt.train                                     # the embedded default (DPO, SmolLM2, sentiment)
    python -m prefopt.train loss=dpo beta=0.1 epochs=3
    python -m prefopt.train -m loss=dpo,ipo beta=0.01,0.1,0.5    # a Hydra multirun sweep
    python -m prefopt.train model=tiny benchmark=none            # seconds, for smoke tests
    prefopt-train loss=ipo                                      # the same, as an installed console script

Each run writes into its directory: config.yaml (resolved), metrics.jsonl (one JSON object per log
event), summary.json (final metrics, benchmark, data counts, wall time, versions, git commit) and the
final model + tokenizer (safetensors). The loop itself lives in ``prefopt/trainer/`` (start at its
``loop.py``); this file is Hydra's entry point and reports a user error as one line.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.errors import CompactHydraException
from omegaconf import DictConfig

from prefopt.config import CONF_DIR, register_configs
from prefopt.errors import ConfigError, PrefoptError
from prefopt.objective import check_objective, objective_value
from prefopt.online.rounds import trainer_for
from prefopt.sinks import redact_files
from prefopt.trainer.loop import run

log = logging.getLogger("prefopt.train")

__all__ = ["ConfigError", "JobFailed", "cli", "main", "run"]


class JobFailed(CompactHydraException):
    """A sweep job that stopped on a user error; its one-line message is what sweep.json records. Hydra prints
    a compact exception as its message alone, after the failed job's overrides: no traceback."""


register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    choices = {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra")}
    # Hydra has recorded the command line in .hydra/; an API key passed there must not stay on disk.
    redact_files(Path(hydra_cfg.runtime.output_dir, hydra_cfg.output_subdir or ".hydra").glob("*.yaml"))
    try:
        check_objective(cfg)
        summary = trainer_for(cfg)(cfg, run_dir=hydra_cfg.runtime.output_dir, hydra_choices=choices)
        objective = objective_value(cfg, summary)
    except PrefoptError as err:
        log.error("%s", err)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            # Hydra records an Exception as this job's failure (sweep.json) and runs the other jobs;
            # a SystemExit would end the whole sweep.
            raise JobFailed(f"prefopt: {err}") from None
        # One clear line for the user.
        raise SystemExit(f"prefopt: {err}") from None
    # Returned so that a Hydra sweeper (hparams_search=..., Optuna) can optimize it.
    return objective


def cli() -> None:
    """``python -m prefopt.train`` and the ``prefopt-train`` console script."""
    from prefopt.trainer.distributed import relaunch_dropped_cpu_processes

    relaunch_dropped_cpu_processes()  # `accelerate launch --cpu --num_processes N` starts only one process
    main()


if __name__ == "__main__":
    cli()
