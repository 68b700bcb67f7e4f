"""build_datasets: splits, every count that reaches summary.json, empty-turn errors, the tokenized cache."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from prefopt.config import DatasetConfig
from prefopt.data import DataError, build_datasets
from prefopt.data.cache import fingerprint
from prefopt.data.tokenize import EncodeSettings
from prefopt.models import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


def uf_row(i: int, chosen: str = None, rejected: str = None, sc: float = 8.0, sr: float = 3.0) -> dict:
    q = f"Question number {i}?"
    return {"prompt": q, "chosen": msgs(("user", q), ("assistant", chosen or f"Answer {i}.")),
            "rejected": msgs(("user", q), ("assistant", rejected or f"Wrong {i}.")),
            "score_chosen": sc, "score_rejected": sr}


def write(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def dcfg(tmp_path, **kw):
    base = dict(name="ultrafeedback_binarized", cache_dir=str(tmp_path / "cache"), max_length=64, max_prompt_length=48)
    return OmegaConf.structured(DatasetConfig(**{**base, **kw}))


def test_eval_path_counts_and_filters(tok, tmp_path):
    train = [uf_row(i) for i in range(6)] + [uf_row(6, sc=5, sr=5), uf_row(7, chosen=" "), uf_row(8, chosen="x " * 200)]
    cfg = dcfg(tmp_path, path=write(tmp_path / "t.jsonl", train), eval_path=write(tmp_path / "e.jsonl", [uf_row(9)]),
               train_split="train_prefs", eval_split="test_prefs", filters=["empty", "ties"])
    data = build_datasets(cfg, tok, "paired")
    assert [r["index"] for r in data.train] == [0, 1, 2, 3, 4, 5, 8] and [r["index"] for r in data.eval] == [0]
    assert data.stats["train"] == {"filtered_empty": 1, "filtered_ties": 1, "rows_in": 7, "rows_kept": 7,
                                   "rows_loaded": 9, "tokenized_cache_miss": 1, "truncated_chosen": 1}
    assert data.stats["eval"] == {"rows_in": 1, "rows_kept": 1, "rows_loaded": 1, "tokenized_cache_miss": 1}


def test_single_file_with_eval_split_holds_out_and_says_so(tok, tmp_path, caplog):
    cfg = dcfg(tmp_path, path=write(tmp_path / "t.jsonl", [uf_row(i) for i in range(20)]),
               train_split="train_prefs", eval_split="test_prefs", eval_fraction=0.25, cache=False)
    with caplog.at_level(logging.WARNING):
        data = build_datasets(cfg, tok, "paired")
    assert "single file" in caplog.text and "dataset.eval_path" in caplog.text
    assert (len(data.train), len(data.eval)) == (15, 5) and data.stats["eval"]["heldout_from_train"] == 5
    assert not {r["index"] for r in data.train} & {r["index"] for r in data.eval}


def test_held_out_rows_keep_conversations_whole(tok, tmp_path):
    """ultrachat turns=all gives several examples per dialogue; all of them land on one side."""
    conv = [{"messages": msgs(("user", f"u{i}"), ("assistant", f"a{i}"), ("user", "more"), ("assistant", "b"))}
            for i in range(10)]
    cfg = dcfg(tmp_path, name="ultrachat_200k", path=write(tmp_path / "uc.jsonl", conv), train_split="train_sft",
               eval_split=None, eval_fraction=0.3, cache=False)
    data = build_datasets(cfg, tok, "sft")
    assert (len(data.train), len(data.eval)) == (14, 6)
    assert not {r["index"] for r in data.train} & {r["index"] for r in data.eval}


def test_empty_answer_is_an_error_naming_the_row_unless_filtered(tok, tmp_path):
    path = write(tmp_path / "t.jsonl", [uf_row(0), uf_row(1, rejected="   ")])
    with pytest.raises(DataError, match=r"row 1: field 'rejected' is empty; add 'empty' to dataset.filters"):
        build_datasets(dcfg(tmp_path, path=path, eval_split=None, eval_fraction=0.5, seed=1, cache=False), tok, "paired")
    data = build_datasets(dcfg(tmp_path, path=path, eval_path=path, cache=False, bad_rows="skip"), tok, "paired")
    assert data.stats["train"]["skipped_bad_row"] == 1 and len(data.train) == 1


def test_sft_from_the_chosen_side_and_unpaired_unrolling(tok, tmp_path):
    path = write(tmp_path / "t.jsonl", [uf_row(i) for i in range(3)])
    sft = build_datasets(dcfg(tmp_path, path=path, eval_path=path, cache=False), tok, "sft")
    assert set(sft.train[0]) == {"index", "prompt_ids", "chosen_ids"}
    assert tok.decode(sft.train[0]["chosen_ids"]) == "Answer 0.<|im_end|>"
    unpaired = build_datasets(dcfg(tmp_path, path=path, eval_path=path, cache=False), tok, "unpaired")
    assert [r["desirable"] for r in unpaired.train] == [True, False] * 3


def test_prompts_only_dataset_cannot_train(tok, tmp_path):
    path = write(tmp_path / "imdb.jsonl", [{"text": "A fine film.", "label": 1}] * 4)
    with pytest.raises(DataError, match="holds prompts only"):
        build_datasets(dcfg(tmp_path, name="imdb", path=path, eval_path=path), tok, "paired")


def test_tokenized_cache_hit_equals_miss_and_keys_on_everything(tok, tmp_path):
    path = write(tmp_path / "t.jsonl", [uf_row(i) for i in range(5)] + [uf_row(5, chosen="y " * 300)])
    cfg = dcfg(tmp_path, path=path, eval_path=path, filters=["empty"])
    first = build_datasets(cfg, tok, "paired")
    second = build_datasets(cfg, tok, "paired")
    assert first.stats["train"]["tokenized_cache_miss"] == 1 and second.stats["train"]["tokenized_cache_hit"] == 1
    assert second.train == first.train and second.eval == first.eval
    strip = {"tokenized_cache_miss", "tokenized_cache_hit"}
    assert {k: v for k, v in second.stats["train"].items() if k not in strip} == \
           {k: v for k, v in first.stats["train"].items() if k not in strip}
    assert second.stats["train"]["truncated_chosen"] == 1  # the tokenizer's counts survive the cache
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1  # train and eval are the same rows here
    # Anything that changes the ids is a different entry: lengths, template, end-of-turn, kind, rows
    # (filters act through the rows they leave).
    settings = EncodeSettings(64, 48)
    rows = [{"index": 0, "prompt": msgs(("user", "q")), "chosen": "a", "rejected": "b"}]
    key = fingerprint(tok, "<|im_end|>", settings, "paired", rows)
    assert key != fingerprint(tok, "<|im_end|>", EncodeSettings(65, 48), "paired", rows)
    assert key != fingerprint(tok, "<|im_end|>", EncodeSettings(64, 47), "paired", rows)
    assert key != fingerprint(tok, "<|endoftext|>", settings, "paired", rows)
    assert key != fingerprint(tok, "<|im_end|>", settings, "sft", rows)
    assert key != fingerprint(tok, "<|im_end|>", settings, "paired", [{**rows[0], "chosen": "c"}])
    assert key != fingerprint(tok, "<|im_end|>", settings, "paired", [{**rows[0], "index": 1}])
    other = load_tokenizer("tiny")
    other.chat_template = other.chat_template.replace("helpful AI assistant", "terse assistant")
    assert key != fingerprint(other, "<|im_end|>", settings, "paired", rows)
    assert key == fingerprint(load_tokenizer("tiny"), "<|im_end|>", settings, "paired", rows)
    # A filter that removes nothing leaves the same rows, hence the same entry.
    hit = build_datasets(dcfg(tmp_path, path=path, eval_path=path, filters=["empty", "ties"]), tok, "paired")
    assert hit.stats["train"]["tokenized_cache_hit"] == 1


def test_corrupt_cache_entry_is_rebuilt(tok, tmp_path, caplog):
    path = write(tmp_path / "t.jsonl", [uf_row(i) for i in range(3)])
    cfg = dcfg(tmp_path, path=path, eval_path=path)
    first = build_datasets(cfg, tok, "paired")
    (entry,) = (tmp_path / "cache").glob("*.npz")
    entry.write_bytes(b"PK\x03\x04 truncated")
    with caplog.at_level(logging.WARNING):
        again = build_datasets(cfg, tok, "paired")
    assert "unreadable" in caplog.text and again.train == first.train
    assert again.stats["train"]["tokenized_cache_miss"] == 1
    assert not list((tmp_path / "cache").glob(".*.tmp"))  # nothing half-written left behind


def test_concurrent_jobs_share_one_cache_entry(tok, tmp_path):
    """Jobs of a multirun racing on the same entry: each writes a whole file and renames it into place, so
    every job gets the same rows and no temp file is left behind."""
    from concurrent.futures import ThreadPoolExecutor

    path = write(tmp_path / "t.jsonl", [uf_row(i) for i in range(12)])
    cfg = dcfg(tmp_path, path=path, eval_path=path)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: build_datasets(cfg, tok, "paired"), range(4)))
    assert all(r.train == results[0].train for r in results)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1 and not list((tmp_path / "cache").glob(".*"))
    assert build_datasets(cfg, tok, "paired").stats["train"]["tokenized_cache_hit"] == 1
