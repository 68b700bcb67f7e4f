"""``trainer.packing=true`` trains like the padded run, reports its token efficiency, and attention
implementations that cannot run a configuration are refused before any model loads."""

from __future__ import annotations

import pytest

from prefopt.errors import ConfigError
from prefopt.train import run
from tests.conftest import TINY, compose, read_metrics, read_summary


@pytest.mark.parametrize("loss, share, attention", [
    ("dpo", True, "sdpa"), pytest.param("dpo", False, "sdpa", marks=pytest.mark.slow),
    pytest.param("kto", False, "sdpa", marks=pytest.mark.slow), ("dpo", True, "sdpa_segments")])
def test_packed_run_matches_padded_run(tmp_path, loss, share, attention):
    """3 steps, frozen reference, fp32: every logged metric within rel 1e-5 of the padded sdpa run (packing
    and sdpa_segments move no number, only the layout and the kernel calls); the packed run processes no
    padding (token efficiency 1.0), the padded one does (< 1)."""
    overrides = TINY + ["trainer.max_steps=3", "trainer.eval_every=0", "reference=frozen", f"loss={loss}",
                        f"trainer.share_prompt={str(share).lower()}"]
    run(compose(overrides), tmp_path / "padded")
    run(compose(overrides + ["trainer.packing=true", f"model.attn_implementation={attention}"]), tmp_path / "packed")
    padded, packed = read_metrics(tmp_path / "padded"), read_metrics(tmp_path / "packed")
    assert [r["split"] for r in padded] == [r["split"] for r in packed]
    for a, b in zip(padded, packed, strict=True):
        for key in ("loss", "logps/chosen", "logps/rejected", "grad_norm", "eval/loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["split"], a.get("step"), key)
        # A margin is a difference of rewards beta * (logp - ref logp) over sequences of ~100 tokens: float32
        # rounding of the summed log-probs (1e-5 of ~100) moves it by ~1e-5 absolute (KTO measured 2.5e-6).
        if "rewards/margins" in a:
            assert b["rewards/margins"] == pytest.approx(a["rewards/margins"], abs=1e-5)
    train = [r for r in packed if r["split"] == "train"]
    assert train and all(r["token_efficiency"] == 1.0 for r in train)
    summary_packed = read_summary(tmp_path / "packed")["throughput"]
    summary_padded = read_summary(tmp_path / "padded")["throughput"]
    assert summary_packed["token_efficiency"] == 1.0
    assert 0 < summary_padded["token_efficiency"] < 1.0
    # The same real tokens, fewer processed: the padded run's processed count is exactly what it padded to.
    real_padded = summary_padded["token_efficiency"] * summary_padded["processed_tokens"]
    assert real_padded == pytest.approx(summary_packed["processed_tokens"], rel=1e-9)


def test_token_efficiency_of_a_padded_step_by_hand(tmp_path):
    """One step of 2 pairs, share_prompt=false, group_by_length=false: the collated batch is 4 rows
    ``prompt + completion`` padded to the longest, so processed = 4 x max length and real = the sum of the
    four lengths, computed here from the rows the run saw."""
    from prefopt import data as data_lib
    from prefopt.models import load_tokenizer
    from prefopt.trainer.batching import step_groups

    overrides = TINY + ["trainer.max_steps=1", "trainer.batch_size=2", "trainer.grad_accum=1",
                        "trainer.share_prompt=false", "trainer.group_by_length=false", "reference=frozen"]
    cfg = compose(overrides)
    run(cfg, tmp_path / "run")
    rows = data_lib.build_datasets(cfg.dataset, load_tokenizer("tiny"), "paired").train
    group = step_groups(rows, cfg, 1, 0)[0]
    lengths = [len(r["prompt_ids"]) + len(r[k]) for r in group for k in ("chosen_ids", "rejected_ids")]
    throughput = read_summary(tmp_path / "run")["throughput"]
    assert throughput["processed_tokens"] == 4 * max(lengths)
    assert throughput["token_efficiency"] == pytest.approx(sum(lengths) / (4 * max(lengths)), rel=1e-12)


def no_model_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the configuration was refused")

    from prefopt.trainer import setup

    monkeypatch.setattr(setup, "load_model", refuse)


def test_share_prompt_with_flash_attention_is_refused(tmp_path, monkeypatch):
    no_model_loads(monkeypatch)
    with pytest.raises(ConfigError) as err:
        run(compose(TINY + ["model.attn_implementation=flash_attention_2"]), tmp_path / "run")
    message = str(err.value)
    assert "trainer.share_prompt=true" in message and "model.attn_implementation=flash_attention_2" in message
    assert "\n" not in message


def test_flex_attention_training_on_cpu_is_refused(tmp_path, monkeypatch):
    no_model_loads(monkeypatch)
    with pytest.raises(ConfigError, match="model.attn_implementation=flex_attention: .* no FlexAttention backward"):
        run(compose(TINY + ["model.attn_implementation=flex_attention"]), tmp_path / "run")
