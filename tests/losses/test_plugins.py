"""A loss from the user's own module registers and trains with no change to prefopt."""

from __future__ import annotations

import pytest
import torch

from prefopt import losses
from prefopt.config import plugin_modules_from_argv
from tests.conftest import compose

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


def test_plugin_loss_composes_as_a_config_option():
    """With the module named, ``loss=margin_dpo`` composes from a generated option (no YAML exists):
    its defaults, ``beta`` following the top-level ``${beta}``, and a weight. Training it through the CLI,
    in one sweep with built-in losses, is ``tests/losses/test_loss_cli.py::test_dpo_ipo_simpo_kto_run_as_one_sweep``."""
    from prefopt.config import register_configs

    register_configs([MODULE])
    cfg = compose([f"loss_modules=[{MODULE}]", "loss=margin_dpo", "beta=0.3", "loss.margin_dpo.margin=0.5"])
    assert dict(cfg.loss.margin_dpo) == {"beta": 0.3, "margin": 0.5, "weight": 1.0}
    cfg = compose([f"loss_modules=[{MODULE}]", "loss=[dpo,margin_dpo]"])
    assert list(cfg.loss) == ["dpo", "margin_dpo"]
