"""The loss registry: lookup, flags, typed hyperparameters, duplicates, and the conf/loss match."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from prefopt import losses
from tests.conftest import CONF


def test_unknown_loss_lists_known_names():
    with pytest.raises(losses.UnknownLossError) as err:
        losses.get("dpoo")
    assert "dpoo" in str(err.value) and "dpo" in str(err.value) and "sft" in str(err.value)


def test_flags_are_declared_by_the_loss():
    dpo, sft = losses.get("dpo"), losses.get("sft")
    assert dpo.needs_reference and dpo.data == "paired"
    assert not sft.needs_reference and sft.data == "sft"
    rows = {row["name"]: row for row in losses.available()}
    # dpo also carries the reference-loss modifiers (ld_alpha, wpo, f_divergence, f_alpha); see test_losses.py.
    assert {k: rows["dpo"]["hparams"][k] for k in ("beta", "label_smoothing")} == {"beta": 0.1, "label_smoothing": 0.0}
    assert losses.get("sigmoid") is dpo  # TRL's name for it


def test_typed_hyperparameters_name_the_key():
    with pytest.raises(losses.LossConfigError, match=r"loss\.dpo\.lable_smoothing: unknown hyperparameter"):
        losses.get("dpo").make_hparams({"lable_smoothing": 0.1})
    with pytest.raises(losses.LossConfigError, match=r"loss\.dpo\.beta: expected a float"):
        losses.get("dpo").make_hparams({"beta": "big"})
    with pytest.raises(losses.LossConfigError, match=r"loss\.dpo\.beta: must be > 0"):
        losses.get("dpo").make_hparams({"beta": 0.0})


def test_duplicate_registration_is_rejected():
    @dataclass
    class HP:
        beta: float = 0.1

    with pytest.raises(ValueError, match="already registered"):
        losses.register_loss("dpo", hparams=HP, needs_reference=False)(lambda logps, hp: None)


def test_every_registered_loss_has_exactly_one_yaml():
    yamls = {p.stem for p in (CONF / "loss").glob("*.yaml")}
    # Plug-ins registered by other tests in this process (tests/plugins_example) have no YAML by design.
    assert yamls == {n for n in losses.names() if losses.get(n).builtin}


def test_compute_dpo_worked_numbers():
    """β=0.5; policy chosen/rejected -1/-3, reference -2/-2: h = (1) - (-1) = 2, so
    loss = -log σ(1) = log(1 + e^-1) = 0.31326169; rewards 0.5 and -0.5, margin 1.
    With ε=0.1 (cDPO): 0.9·0.31326169 + 0.1·log(1 + e^1) = 0.28193552 + 0.13132617 = 0.41326169."""
    kwargs = dict(policy_chosen_logps=torch.tensor([-1.0]), policy_rejected_logps=torch.tensor([-3.0]),
                  ref_chosen_logps=torch.tensor([-2.0]), ref_rejected_logps=torch.tensor([-2.0]),
                  chosen_lengths=torch.tensor([4]), rejected_lengths=torch.tensor([5]))
    out = losses.compute("dpo", beta=0.5, **kwargs)
    torch.testing.assert_close(out.losses, torch.tensor([0.31326169]))
    torch.testing.assert_close(out.metrics["rewards/margins"], torch.tensor([1.0]))
    assert out.metrics["rewards/accuracies"].item() == 1.0
    smoothed = losses.compute("dpo", beta=0.5, label_smoothing=0.1, **kwargs)
    torch.testing.assert_close(smoothed.losses, torch.tensor([0.41326169]))


def test_zero_length_completion_is_a_clear_error():
    with pytest.raises(losses.EmptyCompletionError, match="zero-length"):
        losses.compute("sft", policy_chosen_logps=torch.tensor([0.0]), chosen_lengths=torch.tensor([0]))
