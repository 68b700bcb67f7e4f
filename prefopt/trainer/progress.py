"""What a person watching a run sees per step: a tqdm bar at a terminal, or a few log lines elsewhere (CI logs,
files, multirun jobs that share one terminal)."""

from __future__ import annotations

import logging
import math
import sys

log = logging.getLogger("prefopt.train")


def log_interval(total_steps: int, log_every: int = 1, max_lines: int = 10) -> int:
    """Steps between two progress lines when no bar is shown: the smallest multiple of ``trainer.log_every``
    that keeps a run of ``total_steps`` to at most ``max_lines`` lines (plus the last step's)."""
    log_every = max(1, log_every)
    return log_every * max(1, math.ceil(total_steps / (max_lines * log_every)))


class Progress:
    """What a person watching sees per step: a tqdm bar when stderr is a terminal and this is a single run;
    otherwise (CI logs, a file, multirun jobs sharing one terminal) an INFO line every ``log_interval`` steps,
    which also lands in the run's train.log. ``enabled=False`` (trainer.progress_bar=false, other ranks): none."""

    def __init__(self, total: int, initial: int, enabled: bool, log_every: int = 1) -> None:
        self.total, self.bar, self.every = total, None, 0
        if show_bars(enabled):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True)
        elif enabled:
            self.every = log_interval(total, log_every)

    def update(self, step: int, record: dict) -> None:
        acc = record.get("rewards/accuracies")
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{acc if acc is not None else float('nan'):.2f}")
        elif self.every and (step % self.every == 0 or step == self.total):
            log.info("step %d/%d loss %.4f%s %.3g pairs/s", step, self.total, record["loss"],
                     f" acc {acc:.2f}" if acc is not None else "", record["pairs/s"])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def show_bars(enabled: bool = True) -> bool:
    """Progress bars only for a person at a terminal: stderr is a TTY and this is not a multirun job."""
    return bool(enabled) and sys.stderr.isatty() and not _in_multirun()


def silence_library_bars() -> None:
    """Turn off the tqdm bars of transformers, datasets and huggingface_hub in this process."""
    import datasets
    import huggingface_hub.utils
    import transformers

    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    huggingface_hub.utils.disable_progress_bars()


def _in_multirun() -> bool:
    """A job of a Hydra multirun: parallel jobs (hydra/launcher=local_parallel) inherit the terminal's stderr,
    so their bars would interleave."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
