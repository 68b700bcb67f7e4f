"""Every registered loss trains 2 steps through the CLI on the tiny model, as ONE Hydra multirun (one
process, so the ~8 s start-up is paid once), and its metrics land in metrics.jsonl. Plus the MPO-style
weighted combination with the token-level modifiers (WPO, LD-DPO), and KTO on an unpaired file.

The sweep over all 24 losses takes about 2 minutes of CPU, so it is marked slow (CI runs it in its
``-m slow`` pass); the default suite runs the issue's four-loss sweep ``-m loss=dpo,ipo,simpo,kto``,
which covers the paired, reference-free and unpaired (KL pairs) paths."""

from __future__ import annotations

import math

import pytest

from prefopt import losses
from tests.conftest import TINY, read_metrics, read_summary, run_cli

# Small enough that 24 jobs take about a minute on 2 cores: 8 training rows, 4 held out.
SMALL = TINY + ["dataset.max_train_rows=8", "dataset.max_eval_rows=4", "trainer.batch_size=2", "trainer.grad_accum=1",
                "trainer.eval_batch_size=4"]

# A metric each kind of loss must log (beyond loss, grad_norm, lr, ...).
EXPECTED = {"kto": ["kl", "rewards/margins"], "bco": ["delta"], "sft": ["nll"], "cpo": ["nll"], "orpo": ["log_odds_ratio"],
            "rpo": ["nll"], "slic": ["nll"]}


def check_sweep(sweep_dir, names):
    by_loss = {}
    for summary_path in sweep_dir.glob("*/summary.json"):
        summary = read_summary(summary_path.parent)
        by_loss[summary["choices"]["loss"]] = (summary, read_metrics(summary_path.parent))
    assert sorted(by_loss) == sorted(names)
    for name, (summary, records) in by_loss.items():
        assert summary["status"] == "completed", name
        train = [r for r in records if r["split"] == "train"]
        assert [r["step"] for r in train] == [1, 2], name
        expected = ["loss"] + EXPECTED.get(name, ["rewards/chosen", "rewards/margins", "logps/chosen"])
        for key in expected:
            assert key in train[-1] and math.isfinite(train[-1][key]), (name, key)
        assert math.isfinite(train[-1]["grad_norm"]) and train[-1]["grad_norm"] > 0, name
        evals = [r for r in records if r["split"] == "eval"]
        assert evals and math.isfinite(evals[-1]["eval/loss"]), name
    return by_loss


def test_dpo_ipo_simpo_kto_run_as_one_sweep(tmp_path):
    """The issue's sweep, plus a plug-in loss from the user's own module (tests/plugins_example), which
    needs no change to prefopt: ``loss_modules=[...]`` makes ``loss=margin_dpo`` a config option."""
    names = ["dpo", "ipo", "simpo", "kto", "margin_dpo"]
    run_cli(SMALL + ["loss_modules=[tests.plugins_example.my_losses]", "loss=" + ",".join(names)], tmp_path,
            multirun=True)
    by_loss = check_sweep(tmp_path, names)
    assert by_loss["margin_dpo"][0]["losses"]["margin_dpo"] == {"weight": 1.0, "beta": 0.1, "margin": 1.0}
    # Reference-free losses never build a reference model.
    assert by_loss["simpo"][0]["reference"]["kind"] == "none"
    assert by_loss["dpo"][0]["reference"]["kind"] != "none"


@pytest.mark.slow
def test_every_loss_trains_two_steps_in_one_sweep(tmp_path):
    names = [n for n in losses.names() if losses.get(n).builtin]  # not plug-ins other tests registered
    run_cli(SMALL + ["loss=" + ",".join(names)], tmp_path, multirun=True, timeout=1800)
    check_sweep(tmp_path, names)


def test_mpo_combination_with_wpo_and_ld_alpha(tmp_path):
    """loss=[dpo,bco_pair,sft] with weights: each term logged as loss/<name>, and the total is their
    weighted sum; WPO and LD-DPO on the DPO term make the trainer provide per-token inputs."""
    run_cli(SMALL + ["loss=[dpo,bco_pair,sft]", "loss.dpo.weight=0.8", "loss.bco_pair.weight=0.2",
                     "loss.dpo.wpo=true", "loss.dpo.ld_alpha=0.5", "loss.sft.nll_average=batch_tokens"], tmp_path)
    train = [r for r in read_metrics(tmp_path) if r["split"] == "train"]
    last = train[-1]
    total = 0.8 * last["loss/dpo"] + 0.2 * last["loss/bco_pair"] + last["loss/sft"]
    assert math.isclose(last["loss"], total, rel_tol=1e-5)
    summary = read_summary(tmp_path)
    assert summary["losses"]["dpo"]["weight"] == 0.8 and summary["losses"]["dpo"]["wpo"] is True


def test_kto_on_an_unpaired_file(tmp_path):
    """dataset=unpaired reads {prompt, completion, label} rows; KTO's KL term comes from mismatched pairs."""
    run_cli(SMALL + ["loss=kto", "dataset=unpaired", "dataset.path=tests/fixtures/unpaired_sample.jsonl"], tmp_path)
    train = [r for r in read_metrics(tmp_path) if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2] and "kl" in train[-1]
    assert read_summary(tmp_path)["data"]["train_rows"] == 8
