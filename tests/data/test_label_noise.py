"""Controlled label noise (dataset.label_noise / label_noise_mode) and identical pairs (dataset.keep_identical).

See prefopt/data/noise.py for the rules: identical pairs are dropped by default for paired losses and
counted ``filtered_identical``; label noise swaps chosen and rejected in round-half-up(rate * n) of the n
tokenized training pairs, picked with dataset.seed, never in the eval pairs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from prefopt.config import DatasetConfig
from prefopt.data import DataError, build_datasets
from prefopt.data.noise import n_swapped
from prefopt.data.sentiment import PAIRS
from prefopt.models import load_tokenizer
from tests.conftest import TINY, read_summary, run_cli

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
# 12 pairs with VADER-like scores; rows 3 and 7 are identical, row 10 differs only in surrounding whitespace.
IDENTICAL = FIXTURES / "identical_pairs.jsonl"
IDENTICAL_ROWS = [3, 7, 10]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def sentiment(tmp_path, **kw):
    """The default run's data (conf/dataset/sentiment.yaml), with the given keys changed."""
    base = dict(name="sentiment", max_train_rows=64, max_length=128, max_prompt_length=64, filters=["empty"],
                cache_dir=str(tmp_path / "cache"))
    return OmegaConf.structured(DatasetConfig(**{**base, **kw}))


def pairs_file(tmp_path, **kw):
    """The identical-pairs fixture as both splits (generic loader, no score columns mapped)."""
    base = dict(name="generic", path=str(IDENTICAL), eval_path=str(IDENTICAL), max_length=64, max_prompt_length=32,
                filters=["empty"], cache=False)
    return OmegaConf.structured(DatasetConfig(**{**base, **kw}))


def test_rounding_is_half_up():
    assert [n_swapped(0.25, 10), n_swapped(0.2, 64), n_swapped(0.15, 10), n_swapped(0.0, 10)] == [3, 13, 2, 0]
    assert n_swapped(0.999, 3) == 3 and n_swapped(0.1, 0) == 0


def test_rate_zero_changes_nothing(tok, tmp_path):
    default = build_datasets(sentiment(tmp_path), tok, "paired")
    zero = build_datasets(sentiment(tmp_path, label_noise=0.0, label_noise_mode="near_ties"), tok, "paired")
    assert zero.train == default.train and zero.eval == default.eval and zero.label_noise is None
    assert not any(k.startswith("label_noise") for split in zero.stats.values() for k in split)
    # The embedded default run holds no identical pairs: nothing dropped, all 64 + 12 rows as before.
    assert [len(default.train), len(default.eval)] == [64, 12]
    assert not any("identical" in k for split in default.stats.values() for k in split)


def test_swapped_set_is_seeded_counted_and_train_only(tok, tmp_path):
    clean = build_datasets(sentiment(tmp_path), tok, "paired")
    noisy = build_datasets(sentiment(tmp_path, label_noise=0.25), tok, "paired")
    again = build_datasets(sentiment(tmp_path, label_noise=0.25, cache=False), tok, "paired")
    other_seed = build_datasets(sentiment(tmp_path, label_noise=0.25, seed=1), tok, "paired")

    rows = noisy.label_noise["rows"]
    assert len(rows) == len(set(rows)) == 16 == n_swapped(0.25, 64)
    assert noisy.label_noise == {"label_noise": 0.25, "mode": "uniform", "seed": 0, "pairs": 64, "swapped": 16,
                                 "rows": rows}
    assert noisy.stats["train"]["label_noise_swapped"] == 16 and noisy.stats["train"]["label_noise_pairs"] == 64
    assert noisy.stats["train"]["label_noise_rate"] == 0.25 and "label_noise_swapped" not in noisy.stats["eval"]
    # Deterministic for a seed (with or without the tokenized cache), another seed picks another set.
    assert again.label_noise["rows"] == rows and again.train == noisy.train
    assert set(other_seed.label_noise["rows"]) != set(rows)
    # Only training pairs: the held-out eval pairs are untouched and none of them is listed.
    assert noisy.eval == clean.eval
    assert set(rows) <= {r["index"] for r in clean.train} and not set(rows) & {r["index"] for r in clean.eval}
    # A swapped pair has chosen and rejected exchanged, token ids included; every other row is unchanged.
    for before, after in zip(clean.train, noisy.train, strict=True):
        assert before["index"] == after["index"] and before["prompt_ids"] == after["prompt_ids"]
        if after["index"] in rows:
            assert (after["chosen_ids"], after["rejected_ids"]) == (before["rejected_ids"], before["chosen_ids"])
        else:
            assert after == before


def test_near_ties_flips_the_smallest_margins_on_ultrafeedback(tok, tmp_path, shared_data):
    path = shared_data / "ultrafeedback" / "uf_binarized_h4schema_train_1000.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    cfg = OmegaConf.structured(DatasetConfig(
        name="ultrafeedback_binarized", path=str(path), max_train_rows=200, max_length=96, max_prompt_length=48,
        filters=["empty"], cache=False, label_noise=0.2, label_noise_mode="near_ties"))
    data = build_datasets(cfg, tok, "paired")
    margins = {}
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            row = json.loads(line)
            margins[i] = abs(row["score_chosen"] - row["score_rejected"])
    flipped = set(data.label_noise["rows"])
    assert len(flipped) == n_swapped(0.2, len(data.train)) == data.stats["train"]["label_noise_swapped"]
    kept = [margins[r["index"]] for r in data.train if r["index"] not in flipped]
    assert max(margins[i] for i in flipped) <= min(kept)
    assert data.label_noise["mode"] == "near_ties"
    # Ties at the cut are broken by the seeded order, so the set is still deterministic.
    assert build_datasets(cfg, tok, "paired").label_noise["rows"] == data.label_noise["rows"]


def test_near_ties_on_the_sentiment_pairs_uses_their_vader_scores(tok, tmp_path):
    data = build_datasets(sentiment(tmp_path, label_noise=0.1, label_noise_mode="near_ties"), tok, "paired")
    assert data.label_noise["swapped"] == n_swapped(0.1, 64) == 6


def test_near_ties_without_gold_scores_is_a_clear_error(tok, tmp_path):
    with pytest.raises(DataError, match=r"dataset.label_noise_mode=near_ties .* no numeric score_chosen"):
        build_datasets(pairs_file(tmp_path, label_noise=0.2, label_noise_mode="near_ties"), tok, "paired")


@pytest.mark.parametrize(("overrides", "pattern"), [
    ({"label_noise": 1.0}, r"dataset.label_noise=1.0 must be a fraction in \[0, 1\)"),
    ({"label_noise": -0.1}, r"dataset.label_noise=-0.1 must be a fraction in \[0, 1\)"),
    ({"label_noise": 0.2, "label_noise_mode": "ties"},
     r"dataset.label_noise_mode='ties' is not a label-noise mode; known: uniform, near_ties"),
    ({"keep_identical": True, "filters": ["empty", "identical"]}, r"dataset.keep_identical=true .* 'identical'"),
])
def test_bad_values_name_the_key(tok, tmp_path, overrides, pattern):
    with pytest.raises(DataError, match=pattern):
        build_datasets(pairs_file(tmp_path, **overrides), tok, "paired")


def test_label_noise_needs_a_paired_loss(tok, tmp_path):
    with pytest.raises(DataError, match=r"dataset.label_noise=0.2 .* trains on sft rows"):
        build_datasets(pairs_file(tmp_path, label_noise=0.2), tok, "sft")


def test_identical_pairs_are_counted_warned_and_dropped(tok, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="prefopt.data.noise"):
        data = build_datasets(pairs_file(tmp_path), tok, "paired")
    for split, rows in (("train", data.train), ("eval", data.eval)):
        assert [r["index"] for r in rows] == [i for i in range(12) if i not in IDENTICAL_ROWS]
        assert data.stats[split]["filtered_identical"] == 3 and data.stats[split]["rows_loaded"] == 12
    assert "dropped 3 pair(s) whose chosen and rejected completions are identical (rows 3, 7, 10)" in caplog.text
    # The opt-in filter of older configs still works and the row is counted once, whichever dropped it.
    listed = build_datasets(pairs_file(tmp_path, filters=["empty", "identical"]), tok, "paired")
    assert listed.train == data.train and listed.stats == data.stats


def test_keep_identical_keeps_and_counts_them(tok, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="prefopt.data.noise"):
        data = build_datasets(pairs_file(tmp_path, keep_identical=True), tok, "paired")
    assert [r["index"] for r in data.train] == list(range(12))
    assert data.stats["train"]["identical_kept"] == 3 and "filtered_identical" not in data.stats["train"]
    assert "kept because dataset.keep_identical=true" in caplog.text


def test_sft_and_unpaired_losses_keep_identical_pairs(tok, tmp_path):
    for kind, per_pair in (("sft", 1), ("unpaired", 2)):
        data = build_datasets(pairs_file(tmp_path), tok, kind)
        assert len(data.train) == 12 * per_pair
        assert not any("identical" in k for k in data.stats["train"])


def test_cli_run_writes_label_noise_rows_and_counts(tmp_path):
    run_dir = tmp_path / "run"
    run_cli(TINY + ["dataset.label_noise=0.25", f"dataset.cache_dir={tmp_path / 'cache'}"], run_dir)
    record = json.loads((run_dir / "label_noise_rows.json").read_text())
    counts = read_summary(run_dir)["data"]["counts"]["train"]
    assert record["swapped"] == counts["label_noise_swapped"] == 16 and len(record["rows"]) == 16
    assert counts["label_noise_rate"] == 0.25 and counts["label_noise_pairs"] == 64


def test_unpaired_label_noise_flips_the_desirable_label(tok, tmp_path):
    """KTO-style rows (the 64 sentiment pairs unrolled: 128 rows, a desirable and an undesirable one per pair):
    dataset.label_noise=0.25 flips the label of round-half-up(0.25 * 128) = 32 rows picked by dataset.seed,
    leaves their ids and every other row alone, and never touches the eval rows."""
    clean = build_datasets(sentiment(tmp_path), tok, "unpaired")
    noisy = build_datasets(sentiment(tmp_path, label_noise=0.25), tok, "unpaired")
    assert len(noisy.train) == len(clean.train) == 128 and noisy.eval == clean.eval
    changed = [i for i, (a, b) in enumerate(zip(clean.train, noisy.train, strict=True)) if a != b]
    assert len(changed) == n_swapped(0.25, 128) == 32 == noisy.stats["train"]["label_noise_swapped"]
    for i in changed:
        assert noisy.train[i] == {**clean.train[i], "desirable": not clean.train[i]["desirable"]}
    assert noisy.stats["train"]["label_noise_pairs"] == 128
    assert sorted(noisy.label_noise["rows"]) == sorted(clean.train[i]["index"] for i in changed)
    assert build_datasets(sentiment(tmp_path, label_noise=0.25), tok, "unpaired").train == noisy.train


def test_unpaired_label_noise_refuses_near_ties(tok, tmp_path):
    with pytest.raises(DataError, match=r"dataset.label_noise_mode=near_ties .* unpaired rows, which have no margin"):
        build_datasets(sentiment(tmp_path, label_noise=0.2, label_noise_mode="near_ties"), tok, "unpaired")


def test_eval_pairs_carry_their_gold_margin(tok, tmp_path):
    """The sentiment pairs' VADER scores become each eval pair's gold_margin (score_chosen - score_rejected);
    training rows and pairs without scores (the generic fixture maps none) get none."""
    data = build_datasets(sentiment(tmp_path), tok, "paired")
    source = {i: json.loads(line) for i, line in
              enumerate(PAIRS.read_text().splitlines())}
    for row in data.eval:
        pair = source[row["index"]]
        assert row["gold_margin"] == pytest.approx(pair["score_chosen"] - pair["score_rejected"])
    assert not any("gold_margin" in r for r in data.train)
    assert not any("gold_margin" in r for r in build_datasets(pairs_file(tmp_path), tok, "paired").eval)
