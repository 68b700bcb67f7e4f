"""Training progress: a tqdm bar only on a terminal outside multiruns, else at most ~10 INFO lines a run."""

from __future__ import annotations

import io
import logging
import re

import pytest

from prefopt.trainer import progress as progress_module
from prefopt.trainer.progress import Progress, log_interval
from tests.conftest import TINY, run_cli

RECORD = {"loss": 0.41, "rewards/accuracies": 0.75, "pairs/s": 1.2}


@pytest.mark.parametrize("total,log_every,expected", [
    (1, 1, 1), (10, 1, 1), (11, 1, 2), (24, 1, 3), (100, 1, 10), (101, 1, 11),
    (24, 5, 5), (200, 5, 20), (7, 3, 3), (0, 1, 1),
])
def test_log_interval_keeps_a_run_to_ten_lines(total, log_every, expected):
    every = log_interval(total, log_every)
    assert every == expected
    assert every % log_every == 0 and total // every <= 10


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def lines_logged(progress: Progress, total: int, caplog) -> list[str]:
    with caplog.at_level(logging.INFO, logger="prefopt.train"):
        for step in range(1, total + 1):
            progress.update(step, RECORD)
        progress.close()
    return [r.getMessage() for r in caplog.records if r.name == "prefopt.train"]


def test_no_terminal_no_bar_and_a_line_every_n_steps(monkeypatch, caplog):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    progress = Progress(24, 0, enabled=True)
    assert progress.bar is None and progress.every == 3
    lines = lines_logged(progress, 24, caplog)
    assert lines[0] == "step 3/24 loss 0.4100 acc 0.75 1.2 pairs/s" and len(lines) == 8


def test_terminal_shows_the_bar_but_not_in_a_multirun(monkeypatch, caplog):
    terminal = FakeTerminal()
    monkeypatch.setattr("sys.stderr", terminal)
    progress = Progress(5, 0, enabled=True)
    assert progress.bar is not None and lines_logged(progress, 5, caplog) == []
    assert "5/5" in terminal.getvalue()
    monkeypatch.setattr(progress_module, "_in_multirun", lambda: True)  # parallel jobs share the terminal
    assert Progress(5, 0, enabled=True).bar is None


def test_disabled_shows_nothing(monkeypatch, caplog):
    monkeypatch.setattr("sys.stderr", FakeTerminal())
    progress = Progress(5, 0, enabled=False)  # trainer.progress_bar=false, or not the main process
    assert progress.bar is None and lines_logged(progress, 5, caplog) == []


def test_cli_without_a_terminal_writes_lines_not_bar_frames(tmp_path):
    run_dir = tmp_path / "run"
    overrides = [o for o in TINY if not o.startswith(("trainer.progress_bar=", "trainer.max_steps="))]
    proc = run_cli(overrides + ["trainer.progress_bar=true", "trainer.max_steps=20", "trainer.batch_size=2",
                                "trainer.grad_accum=1"], run_dir)  # captured: stderr is a pipe
    assert "it/s" not in proc.stderr and "s/it" not in proc.stderr and "\r" not in proc.stderr
    lines = re.findall(r"step (\d+)/20 loss [\d.]+ acc [\d.]+ \S+ pairs/s", (run_dir / "train.log").read_text())
    assert [int(s) for s in lines] == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
