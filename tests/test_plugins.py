"""A loss from the user's own module registers and trains with no change to prefopt."""

from __future__ import annotations

import pytest
import torch

from prefopt import losses
from prefopt.config import plugin_modules_from_argv
from tests.conftest import TINY, read_metrics, read_summary, run_cli

MODULE = "tests.plugins_example.my_losses"


def test_plugin_module_registers_its_loss():
    losses.load_plugins([MODULE])
    out = losses.compute("margin_dpo", policy_chosen_logps=torch.tensor([-10.0]),
                         policy_rejected_logps=torch.tensor([-12.0]), ref_chosen_logps=torch.tensor([-11.0]),
                         ref_rejected_logps=torch.tensor([-11.0]), beta=0.5, margin=1.0)
    # h = 2, β·(h - 1) = 0.5: -log σ(0.5) = 0.4740770
    assert float(out.losses) == pytest.approx(0.4740770, abs=1e-6)


def test_plugin_modules_are_read_from_the_command_line(monkeypatch):
    monkeypatch.delenv("PREFOPT_LOSS_MODULES", raising=False)
    assert plugin_modules_from_argv(["loss=dpo", "loss_modules=[a.b,c]"]) == ["a.b", "c"]
    assert plugin_modules_from_argv(["+loss_modules=a"]) == ["a"]
    monkeypatch.setenv("PREFOPT_LOSS_MODULES", "x,y")
    assert plugin_modules_from_argv([]) == ["x", "y"]


def test_missing_plugin_module_is_a_clear_error():
    with pytest.raises(losses.LossConfigError, match=r"loss_modules: cannot import 'no_such_module_xyz'"):
        losses.load_plugins(["no_such_module_xyz"])


def test_plugin_loss_trains_through_the_cli(tmp_path):
    """``loss=margin_dpo`` composes (a generated config option, as no YAML exists) and trains 2 steps, alone
    and combined with a built-in loss."""
    run_dir = tmp_path / "run"
    run_cli(TINY + [f"loss_modules=[{MODULE}]", "loss=margin_dpo", "loss.margin_dpo.margin=0.5"], run_dir)
    train = [r for r in read_metrics(run_dir) if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2] and "rewards/margins" in train[0]
    summary = read_summary(run_dir)
    assert summary["losses"]["margin_dpo"]["margin"] == 0.5 and summary["losses"]["margin_dpo"]["beta"] == 0.1
