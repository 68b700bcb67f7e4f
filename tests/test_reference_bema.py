"""reference=bema (prefopt/reference.py, BEMAReference): the update equals TRL 1.16's BEMACallback step for step,
hand-derived numbers, config errors by key, and a SIGKILLed run resumes into the uninterrupted one."""

from __future__ import annotations

import copy
import signal

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from prefopt.config import ReferenceConfig
from prefopt.reference import BEMAReference, ReferenceConfigError
from prefopt.trainer import checkpoint
from tests.conftest import TINY, compose, read_metrics, run_cli
from tests.trainer.test_resume import assert_close, comparable


class Toy(nn.Module):
    """Built from ``config`` as TRL's callback rebuilds its running model: ``type(model)(model.config)``."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.a = nn.Linear(3, 2)
        self.b = nn.Linear(2, 1, bias=False)


def rcfg(**values):
    return OmegaConf.merge(OmegaConf.structured(ReferenceConfig), {"kind": "bema", **values})


def walk(policy, steps: int, seed: int = 0):
    """Move the policy's weights like an optimizer would, one step at a time (yields the step number)."""
    gen = torch.Generator().manual_seed(seed)
    for step in range(1, steps + 1):
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)
        yield step


@pytest.mark.parametrize(("update_freq", "update_after", "lag", "multiplier", "min_ema"),
                         [(1, 0, 10.0, 1.0, 0.0), (2, 0, 10.0, 1.0, 0.0), (2, 3, 4.0, 0.5, 0.2), (3, 1, 1.0, 2.0, 0.0)])
def test_matches_trl_bema_callback(update_freq, update_after, lag, multiplier, min_ema):
    from transformers import TrainerState
    from trl.trainer.callbacks import BEMACallback

    torch.manual_seed(0)
    policy = Toy({"name": "toy"})
    cfg = rcfg(bema_update_freq=update_freq, bema_update_after=update_after, bema_lag=lag,
               bema_multiplier=multiplier, bema_min_ema_multiplier=min_ema, bema_ema_power=0.5, bema_bias_power=0.2)
    BEMAReference.check_config(cfg)
    ours = BEMAReference(copy.deepcopy(policy), cfg)
    trl = BEMACallback(update_freq=update_freq, ema_power=0.5, bias_power=0.2, lag=int(lag), update_after=update_after,
                       multiplier=multiplier, min_ema_multiplier=min_ema)
    trl.on_train_begin(None, TrainerState(), None, model=policy)
    state = TrainerState()
    for step in walk(policy, 9):
        state.global_step = step
        ours.after_step(step, policy)
        trl.on_step_end(None, state, None, model=policy)
        for (name, mine), theirs in zip(ours.model.named_parameters(), trl.running_model.parameters(), strict=True):
            torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6, msg=f"step {step} {name}")
    assert ours.updated_at, "no update happened: the parity would be vacuous"
    assert not torch.equal(ours.model.a.weight, policy.a.weight)


def test_worked_numbers_one_parameter():
    """One scalar weight, θ_0 = 1, ρ = 10, γ = 1, κ = 0.5, η = 0.2, φ = 1, τ = 0.

    step 1: θ_1 = 3. β_1 = 11^-0.5 = 0.301511, α_1 = 11^-0.2 = 0.619044.
            EMA_1 = (1 - β_1)·1 + β_1·3 = 1 + 2·0.301511 = 1.603023
            θ_ref = EMA_1 + α_1·(3 - 1) = 1.603023 + 1.238087 = 2.841110
    step 2: θ_2 = 2. β_2 = 12^-0.5 = 0.288675, α_2 = 12^-0.2 = 0.608364.
            EMA_2 = (1 - β_2)·1.603023 + β_2·2 = 1.603023 + 0.288675·0.396977 = 1.717624
            θ_ref = 1.717624 + 0.608364·(2 - 1) = 2.325988
    """
    policy = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        policy.weight.fill_(1.0)
    ref = BEMAReference(nn.Linear(1, 1, bias=False), rcfg(bema_update_freq=1))
    with torch.no_grad():
        ref.model.weight.fill_(1.0)
    ref.theta0 = {"weight": torch.ones(1, 1)}
    ref.ema = {"weight": torch.ones(1, 1)}
    for step, theta, expected in ((1, 3.0, 2.841110), (2, 2.0, 2.325988)):
        with torch.no_grad():
            policy.weight.fill_(theta)
        ref.after_step(step, policy)
        assert ref.model.weight.item() == pytest.approx(expected, abs=1e-5)
    assert ref.ema["weight"].item() == pytest.approx(1.717624, abs=1e-5)
    assert ref.updated_at == [1, 2]


def test_state_tensors_round_trip():
    torch.manual_seed(1)
    policy = Toy({})
    ref = BEMAReference(Toy({}), rcfg(bema_update_freq=1))
    for step in walk(policy, 2):
        ref.after_step(step, policy)
    saved = {k: v.clone() for k, v in ref.state_tensors().items()}
    fresh = BEMAReference(Toy({}), rcfg(bema_update_freq=1))
    fresh.load_state_tensors(saved)
    for key, value in fresh.state_tensors().items():
        assert torch.equal(value, saved[key]), key
    assert set(saved) == {f"{kind}/{n}" for kind in ("theta0", "ema") for n, _ in policy.named_parameters()}


@pytest.mark.parametrize(("key", "value"), [("bema_update_freq", 0), ("bema_ema_power", -0.5), ("bema_bias_power", -1.0),
                                            ("bema_lag", -1.0), ("bema_update_after", -2), ("bema_multiplier", 0.0),
                                            ("bema_min_ema_multiplier", 1.5)])
def test_bad_values_name_the_key(key, value):
    with pytest.raises(ReferenceConfigError, match=rf"^reference\.{key}={value}: must be"):
        BEMAReference.check_config(rcfg(**{key: value}))


def test_bad_value_stops_the_cli_in_one_line(tmp_path):
    proc = run_cli(TINY + ["reference=bema", "reference.bema_update_freq=0"], tmp_path / "run", check=False)
    assert proc.returncode != 0
    assert "reference.bema_update_freq=0: must be >= 1" in proc.stderr
    assert "Traceback" not in proc.stderr


# The resume pattern of tests/trainer/test_resume.py: 6 steps, checkpoints at 2 and 4, killed after step 5.
RUN = TINY + ["trainer.max_steps=6", "trainer.checkpoint_every=2", "trainer.keep_last=2", "optimizer.lr=1e-3",
              "trainer.batch_size=4", "trainer.grad_accum=2", "reference=bema", "reference.bema_update_freq=2",
              "reference.bema_update_after=1"]


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted_run(tmp_path):
    """BEMA resets θ_0/EMA at step 1 and updates at 3 and 5: the checkpoint at 4 must carry θ_0, the EMA and the
    moved reference, or step 5's update (and every reward after it) differs."""
    from prefopt.train import run

    run(compose(RUN), tmp_path / "full")
    run_dir = tmp_path / "run"
    killed = run_cli(RUN, run_dir, check=False, env={"PREFOPT_INJECT_FAULT": "kill:5"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    last = checkpoint.checkpoint_dirs(run_dir)[-1]
    assert (last / "reference.safetensors").is_file() and (last / "reference_state.safetensors").is_file()
    run_cli(RUN + ["resume=auto"], run_dir)
    full = read_metrics(tmp_path / "full")
    assert_close(comparable(read_metrics(run_dir)), comparable(full))
    # The reference moved: after step 3 the rewards are no longer those of a frozen reference.
    frozen = tmp_path / "frozen"
    run(compose([o for o in RUN if not o.startswith("reference")]), frozen)
    moved = [abs(a["rewards/chosen"] - b["rewards/chosen"]) for a, b in zip(full, read_metrics(frozen), strict=True)
             if a["split"] == "train" and a["step"] > 3]
    assert max(moved) > 1e-4, moved
