"""The learning-rate schedule (prefopt/trainer/setup.py make_scheduler) is transformers.get_scheduler's: the
same learning rate at every step as an HF Trainer given the same lr_scheduler_type, warmup ratio and
lr_scheduler_kwargs, warming up from 0; bad schedule settings stop before any model loads."""

from __future__ import annotations

import json
import math

import pytest
import torch
from omegaconf import OmegaConf
from transformers import get_scheduler

from prefopt.errors import ConfigError
from prefopt.trainer.setup import SCHEDULERS, check_config, make_scheduler
from tests.conftest import TINY, compose, read_metrics, run_cli

LR = 1e-3


def optimizer():
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=LR)


def ocfg(scheduler="linear", warmup_ratio=0.2, **kwargs):
    return OmegaConf.create({"scheduler": scheduler, "warmup_ratio": warmup_ratio, "scheduler_kwargs": kwargs})


def lrs(scheduler, steps: int) -> list[float]:
    """The learning rate of each optimizer step 1..steps (the one in force when the step is taken)."""
    out = []
    for _ in range(steps):
        out.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def test_linear_warmup_starts_at_zero_by_hand():
    """10 steps, warmup_ratio 0.2 -> ceil(2.0) = 2 warmup steps. Factor at step index t: t/2 while t < 2, then
    (10 - t) / (10 - 2): 0, 0.5, 1, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125 (times lr 1e-3). The old
    hand-written schedule started at 1/3 ((t+1)/(w+1)); HF's first step takes lr 0."""
    got = lrs(make_scheduler(optimizer(), ocfg("linear", 0.2), total_steps=10), 10)
    expected = [LR * f for f in (0, 0.5, 1, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125)]
    assert got == pytest.approx(expected, abs=1e-12)


def test_warmup_rounds_up_like_trainingarguments():
    """warmup_ratio 0.1 of 7 steps: ceil(0.7) = 1 warmup step (TrainingArguments.get_warmup_steps), so step 1
    takes lr 0 and step 2 the full lr, then linear decay over the 6 remaining: factor (7 - t) / 6."""
    got = lrs(make_scheduler(optimizer(), ocfg("linear", 0.1), total_steps=7), 3)
    assert got == pytest.approx([0.0, LR, LR * 5 / 6], abs=1e-12)


@pytest.mark.parametrize(("name", "kwargs"), [
    ("linear", {}), ("cosine", {}), ("constant_with_warmup", {}), ("cosine_with_restarts", {"num_cycles": 2}),
    ("polynomial", {"power": 2.0, "lr_end": 1e-5}), ("cosine_with_min_lr", {"min_lr_rate": 0.1}),
    ("inverse_sqrt", {}), ("warmup_stable_decay", {"num_decay_steps": 4}),
])
def test_every_schedule_is_get_schedulers(name, kwargs):
    total, warmup_ratio = 17, 0.15
    ours = lrs(make_scheduler(optimizer(), ocfg(name, warmup_ratio, **kwargs), total_steps=total), total)
    hf = lrs(get_scheduler(name, optimizer(), num_warmup_steps=math.ceil(warmup_ratio * total),
                           num_training_steps=total, scheduler_specific_kwargs=kwargs), total)
    assert ours == hf  # bit for bit: the same lambdas
    assert ours[0] == 0.0 and max(ours) == pytest.approx(LR)


def test_constant_has_no_warmup():
    got = lrs(make_scheduler(optimizer(), ocfg("constant", 0.0), total_steps=5), 5)
    assert got == [LR] * 5


def test_schedule_state_resumes_exactly():
    """A checkpoint stores scheduler.state_dict() in state.json: it must survive JSON and continue the same
    sequence in a freshly built scheduler."""
    first = make_scheduler(optimizer(), ocfg("cosine", 0.2), total_steps=12)
    head = lrs(first, 5)
    state = json.loads(json.dumps(first.state_dict()))
    second = make_scheduler(optimizer(), ocfg("cosine", 0.2), total_steps=12)
    second.load_state_dict(state)
    uninterrupted = lrs(make_scheduler(optimizer(), ocfg("cosine", 0.2), total_steps=12), 12)
    assert head + lrs(second, 7) == uninterrupted


@pytest.mark.parametrize(("overrides", "message"), [
    (["optimizer.scheduler=reduce_lr_on_plateau"], "optimizer.scheduler='reduce_lr_on_plateau': must be one of"),
    (["optimizer.scheduler=step"], "optimizer.scheduler='step': must be one of linear, cosine"),
    (["optimizer.scheduler=constant"], "optimizer.scheduler=constant: has no warmup"),
    (["optimizer.scheduler=cosine_with_min_lr"], "optimizer.scheduler_kwargs={} do not fit"),
    (["optimizer.scheduler=linear", "+optimizer.scheduler_kwargs.num_cycles=2"],
     "optimizer.scheduler_kwargs={'num_cycles': 2} do not fit optimizer.scheduler=linear"),
])
def test_bad_schedule_is_one_config_error(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        check_config(compose(["model=tiny", *overrides]))


def test_defaults_match_hf_where_they_can():
    """max_grad_norm and the schedule are HF's (TrainingArguments: 1.0, linear); warmup_ratio and lr differ on
    purpose (the schema says why)."""
    opt = compose([]).optimizer
    assert (opt.max_grad_norm, opt.scheduler, dict(opt.scheduler_kwargs)) == (1.0, "linear", {})
    assert opt.warmup_ratio == 0.1
    assert "constant_with_warmup" in SCHEDULERS and "reduce_lr_on_plateau" not in SCHEDULERS


def test_cli_run_logs_get_schedulers_learning_rates(tmp_path):
    """A 4-step tiny run, warmup_ratio 0.5 -> 2 warmup steps. The logged lr of step k is the one in force for
    step k+1 (logged after scheduler.step(), as the HF Trainer logs it): factors 1/2, 1, (4-3)/(4-2) = 1/2, 0."""
    overrides = [o for o in TINY if not o.startswith("trainer.max_steps")]
    run_cli(overrides + ["trainer.max_steps=4", "optimizer.lr=1e-3", "optimizer.warmup_ratio=0.5"], tmp_path)
    logged = [r["lr"] for r in read_metrics(tmp_path) if r["split"] == "train"]
    assert logged == pytest.approx([5e-4, 1e-3, 5e-4, 0.0], abs=1e-12)
