"""prefopt/judges/prompts.py: FastChat's judge prompts from a URL (MT-Bench's default), downloaded once and
cached; offline, one line naming benchmark.judge_prompts and the local-path way out."""

from __future__ import annotations

import io
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from prefopt.benchmarks import mt_bench
from prefopt.config import CONF_DIR
from prefopt.data.registry import DataError
from prefopt.judges.prompts import FASTCHAT_JUDGE_PROMPTS, load_judge_prompts


@pytest.fixture
def served(shared_data, monkeypatch, tmp_path):
    """urlopen answering FastChat's URL with the stored copy of the file; counts the calls."""
    body = (shared_data / "mt_bench" / "judge_prompts.jsonl").read_bytes()
    calls = []

    def urlopen(url, timeout=None):
        calls.append(url)
        if url != FASTCHAT_JUDGE_PROMPTS:
            raise urllib.error.URLError("no route")
        return io.BytesIO(body)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    monkeypatch.setenv("PREFOPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return calls


def test_the_default_url_is_fetched_once_and_cached(served, shared_data, monkeypatch):
    assert OmegaConf.load(Path(CONF_DIR) / "benchmark" / "mt_bench.yaml").judge_prompts == FASTCHAT_JUDGE_PROMPTS
    prompts = load_judge_prompts(FASTCHAT_JUDGE_PROMPTS)
    assert prompts == load_judge_prompts(shared_data / "mt_bench" / "judge_prompts.jsonl")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # cached now: offline is fine
    assert load_judge_prompts(FASTCHAT_JUDGE_PROMPTS) == prompts
    assert served == [FASTCHAT_JUDGE_PROMPTS]


def test_offline_or_unreachable_names_the_key_before_training(served, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"benchmark.judge_prompts=https://.*HF_HUB_OFFLINE=1; download FastChat"):
        mt_bench.check(OmegaConf.create({"judge_prompts": FASTCHAT_JUDGE_PROMPTS}))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(DataError, match=r"benchmark.judge_prompts=https://example.invalid/x.jsonl: cannot download"):
        load_judge_prompts("https://example.invalid/x.jsonl")
    with pytest.raises(DataError, match=r"benchmark.judge_prompts: required"):
        mt_bench.check(OmegaConf.create({"judge_prompts": None}))
    assert served == ["https://example.invalid/x.jsonl"]  # offline asked nothing
