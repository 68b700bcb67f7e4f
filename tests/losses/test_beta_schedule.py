"""beta_schedule=linear|cosine (prefopt/losses/beta_schedule.py): worked numbers, bad values by key, and the
scheduled β of a real tiny run in metrics.jsonl."""

from __future__ import annotations

import pytest

from prefopt import losses
from prefopt.losses.beta_modifiers import beta_control
from prefopt.losses.beta_schedule import BetaSchedule
from tests.conftest import TINY, read_metrics, run_cli


def test_linear_and_cosine_worked_numbers():
    """T = 5 steps from 0.1 to 0.5, p = (t - 1)/4 = 0, 1/4, 1/2, 3/4, 1.

    linear: 0.1 + 0.4·p = 0.1, 0.2, 0.3, 0.4, 0.5.
    cosine: 0.1 + 0.4·(1 - cos πp)/2; (1 - cos π/4)/2 = (1 - 0.707107)/2 = 0.146447, so
            0.1, 0.1 + 0.4·0.146447 = 0.158579, 0.3, 0.1 + 0.4·0.853553 = 0.441421, 0.5.
    """
    linear = BetaSchedule("linear", 0.1, 0.5, 5)
    cosine = BetaSchedule("cosine", 0.1, 0.5, 5)
    assert [linear.beta_at(t) for t in range(1, 6)] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5], abs=1e-12)
    assert [cosine.beta_at(t) for t in range(1, 6)] == pytest.approx([0.1, 0.158579, 0.3, 0.441421, 0.5], abs=1e-6)
    assert linear.beta_at(99) == pytest.approx(0.5) and linear.beta_at(0) == pytest.approx(0.1)
    assert BetaSchedule("cosine", 0.1, 0.5, 1).beta_at(1) == 0.5  # one step: p = 1


def test_start_defaults_to_the_loss_beta_and_sft_is_left_alone():
    dpo, sft = losses.get("dpo"), losses.get("sft")
    control = beta_control(dpo, dpo.make_hparams({"beta": 0.25}), {}, adaptive=None,
                           schedule={"kind": "linear", "start": None, "end": 0.05}, total_steps=3)
    assert control.schedule.start == 0.25 and control.schedule.beta_at(2) == pytest.approx(0.15)
    assert beta_control(sft, sft.make_hparams({}), {}, adaptive=None,
                        schedule={"kind": "linear", "start": None, "end": 0.05}, total_steps=3) is None


@pytest.mark.parametrize(("schedule", "message"), [
    ({"kind": "step", "start": None, "end": 0.2}, r"^beta_schedule\.kind='step': must be one of linear, cosine$"),
    ({"kind": "linear", "start": -0.1, "end": 0.2}, r"^beta_schedule\.start=-0\.1: must be > 0$"),
    ({"kind": "cosine", "start": None, "end": 0.0}, r"^beta_schedule\.end=0\.0: must be > 0$"),
])
def test_bad_values_name_the_key(schedule, message):
    dpo = losses.get("dpo")
    with pytest.raises(losses.LossConfigError, match=message):
        beta_control(dpo, dpo.make_hparams({}), {}, adaptive=None, schedule=schedule, total_steps=4)


def test_cli_logs_the_scheduled_beta_per_step(tmp_path):
    """3 steps, linear from β = 0.1 to 0.3: the logged β is 0.1, 0.2, 0.3; the eval batches use step 3's."""
    run_dir = tmp_path / "run"
    run_cli(TINY + ["trainer.max_steps=3", "beta_schedule=linear", "beta_schedule.end=0.3"], run_dir)
    records = read_metrics(run_dir)
    train = [r["beta"] for r in records if r["split"] == "train"]
    assert train == pytest.approx([0.1, 0.2, 0.3], abs=1e-6)
    assert [r["eval/beta"] for r in records if r["split"] == "eval"] == pytest.approx([0.3], abs=1e-6)


def test_cli_missing_end_is_one_line(tmp_path):
    proc = run_cli(TINY + ["beta_schedule=cosine"], tmp_path / "run", check=False)
    assert proc.returncode != 0 and "beta_schedule.end: required, but not set" in proc.stderr
    assert "Traceback" not in proc.stderr
