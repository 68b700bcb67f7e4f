"""The OpenAI-compatible judge against a real HTTP server process on 127.0.0.1 (tests/judges/fake_judge_server.py):
retries on 429/500, immediate failure on 401, timeouts, retry-then-count of malformed replies, and the
on-disk cache that spares a rerun every request."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from prefopt.judges import JudgeConfigError, JudgeError, OpenAIJudge, build_judge
from prefopt.judges.prompts import parse_rating, parse_verdict

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def judge_server(tmp_path_factory):
    port_file = tmp_path_factory.mktemp("judge") / "port"
    proc = subprocess.Popen([sys.executable, str(HERE / "fake_judge_server.py"), str(port_file), "test-key"])
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the fake judge server did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port_file.read_text()}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def server_stats(base_url: str) -> dict:
    with urllib.request.urlopen(base_url.rsplit("/v1", 1)[0] + "/stats", timeout=10) as response:
        return json.loads(response.read())


def served(base_url: str) -> int:
    return server_stats(base_url)["requests"]


def grade(answer: str) -> list[dict]:
    return [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "[Instruction]\nRate it.\n\n[The Start of Assistant's Answer]\n"
                                        f"{answer}\n[The End of Assistant's Answer]"}]


def make_judge(url, tmp_path, monkeypatch, **kwargs):
    monkeypatch.setenv("FAKE_JUDGE_KEY", "test-key")
    options = dict(api_key_env="FAKE_JUDGE_KEY", backoff_seconds=0.0, cache_path=tmp_path / "cache.jsonl")
    options.update(kwargs)
    return OpenAIJudge(url, "fake-judge", **options)


def test_grades_and_caches_so_a_rerun_pays_nothing(judge_server, tmp_path, monkeypatch):
    judge = make_judge(judge_server, tmp_path, monkeypatch)
    before = served(judge_server)
    # "one two three four" has 4 words: the fake judge rates 1 + 4 % 10 = 5.
    verdict = judge.judge(grade("one two three four"), parse_rating)
    assert (verdict.value, verdict.attempts, verdict.cached) == (5.0, 1, False)
    assert served(judge_server) == before + 1
    judge.close()
    # A fresh judge (a rerun, or the process after a crash) reads the cache file: no request at all.
    again = make_judge(judge_server, tmp_path, monkeypatch)
    verdict = again.judge(grade("one two three four"), parse_rating)
    assert (verdict.value, verdict.cached, again.calls) == (5.0, True, 0)
    assert served(judge_server) == before + 1


def test_malformed_reply_is_retried_then_counted_never_scored(judge_server, tmp_path, monkeypatch):
    judge = make_judge(judge_server, tmp_path, monkeypatch, parse_retries=2)
    once = judge.judge(grade("MALFORMED_ONCE a b"), parse_rating)
    # First reply has no [[rating]], the retry does: 3 words -> 1 + 3 = 4.
    assert (once.value, once.attempts) == (4.0, 2)
    always = judge.judge(grade("MALFORMED_ALWAYS"), parse_rating)
    assert always.malformed and always.value is None and always.attempts == 3
    assert "rather not" in always.reply
    assert judge.calls == 2 + 3
    judge.close()
    # The malformed attempts are cached too: a rerun reaches the same verdicts without a request.
    rerun = make_judge(judge_server, tmp_path, monkeypatch, parse_retries=2)
    assert rerun.judge(grade("MALFORMED_ALWAYS"), parse_rating).malformed
    assert rerun.judge(grade("MALFORMED_ONCE a b"), parse_rating).value == 4.0
    assert rerun.calls == 0


def test_rate_limit_and_server_error_are_retried(judge_server, tmp_path, monkeypatch):
    judge = make_judge(judge_server, tmp_path, monkeypatch, max_retries=2)
    before = served(judge_server)
    assert judge.judge(grade("RATE_LIMIT_ONCE x"), parse_rating).value == 3.0
    assert judge.judge(grade("SERVER_ERROR_ONCE x"), parse_rating).value == 3.0
    assert served(judge_server) == before + 4  # each failed once, then answered
    assert judge.calls == 2  # the judge counts replies, not transport retries


def test_wrong_key_fails_at_once_with_the_endpoint(judge_server, tmp_path, monkeypatch):
    judge = make_judge(judge_server, tmp_path, monkeypatch, max_retries=5)
    monkeypatch.setenv("WRONG_KEY", "nope")
    judge.api_key = "nope"
    before = served(judge_server)
    with pytest.raises(JudgeError, match=r"HTTP 401.*invalid api key"):
        judge.judge(grade("a"), parse_rating)
    assert served(judge_server) == before + 1  # not retried


def test_timeout_is_retried_then_reported(judge_server, tmp_path, monkeypatch):
    judge = make_judge(judge_server, tmp_path, monkeypatch, timeout=0.3, max_retries=1)
    with pytest.raises(JudgeError, match="gave up after 2 attempts"):
        judge.judge(grade("SLOW"), parse_rating)


def test_unreachable_endpoint_is_reported(tmp_path, monkeypatch):
    # Port 9 on localhost (discard) is closed: a connection error, retried, then reported.
    judge = make_judge("http://127.0.0.1:9/v1", tmp_path, monkeypatch, max_retries=1)
    with pytest.raises(JudgeError, match="127.0.0.1:9"):
        judge.judge(grade("a"), parse_rating)


def test_rate_limit_spaces_requests(judge_server, tmp_path, monkeypatch):
    judge = make_judge(judge_server, tmp_path, monkeypatch, requests_per_minute=600)  # 0.1 s apart
    start = time.monotonic()
    for i in range(4):
        judge.judge(grade(f"spacing {i}"), parse_rating)
    assert time.monotonic() - start >= 0.3


def test_config_errors_name_the_key(tmp_path, monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    cfg = OmegaConf.create({"kind": "http", "base_url": "http://127.0.0.1:1/v1", "model": "m",
                            "api_key_env": "NOT_SET_ANYWHERE", "timeout": 5.0, "max_retries": 0,
                            "requests_per_minute": 0.0, "temperature": 0.0, "max_tokens": 16, "parse_retries": 1,
                            "cache_dir": str(tmp_path)})
    with pytest.raises(JudgeConfigError, match="judge.api_key_env=NOT_SET_ANYWHERE"):
        build_judge(cfg)
    with pytest.raises(JudgeConfigError, match="judge=http or judge=local"):
        build_judge(OmegaConf.create({"kind": "none"}))
    with pytest.raises(JudgeConfigError, match="kind='gpt'"):
        build_judge(OmegaConf.create({"kind": "gpt"}))


def test_reply_parsers_follow_fastchat():
    assert parse_rating("Rating: [[7]]") == 7.0
    assert parse_rating("so [8.5] overall") == 8.5  # FastChat's single-bracket fallback
    assert parse_rating("Rating: [[11]]") is None  # out of the 1-10 scale: malformed, not clipped
    assert parse_rating("no score") is None
    assert parse_verdict("... [[B]]") == "B"
    assert parse_verdict("[[A]] or maybe [[B]]") is None  # ambiguous
    assert parse_verdict("tie [[C]]") == "C"


def test_judge_many_overlaps_requests_and_keeps_their_order(judge_server, tmp_path, monkeypatch):
    """judge.concurrency=4: the server sees several requests in flight at once (PAUSE holds each 0.3 s), the
    client never has more than 4 open, and the verdicts come back in request order, each the grade of its
    own answer (the same as sequential judging gives)."""
    import threading

    judge = make_judge(judge_server, tmp_path, monkeypatch, concurrency=4)
    open_now, peak, lock = [0], [0], threading.Lock()
    complete = judge._complete

    def counted(messages):
        with lock:
            open_now[0] += 1
            peak[0] = max(peak[0], open_now[0])
        try:
            return complete(messages)
        finally:
            with lock:
                open_now[0] -= 1

    judge._complete = counted
    answers = [("PAUSE " + "word " * n).strip() for n in range(8)]
    verdicts = judge.judge_many([(grade(a), parse_rating) for a in answers])
    assert [v.value for v in verdicts] == [1 + len(a.split()) % 10 for a in answers]
    assert server_stats(judge_server)["max_in_flight"] >= 2 and 2 <= peak[0] <= 4
    assert judge.calls == 8
    sequential = make_judge(judge_server, tmp_path / "seq", monkeypatch)
    assert [v.value for v in sequential.judge_many([(grade(a), parse_rating) for a in answers])] == \
        [v.value for v in verdicts]
    judge.close()
    sequential.close()


def test_judge_many_raises_the_endpoint_error(judge_server, tmp_path, monkeypatch):
    judge = make_judge(judge_server, tmp_path, monkeypatch, concurrency=3)
    monkeypatch.setenv("FAKE_JUDGE_KEY", "wrong-key")
    judge.api_key = "wrong-key"
    with pytest.raises(JudgeError, match="HTTP 401"):
        judge.judge_many([(grade(f"answer {i}"), parse_rating) for i in range(5)])
    judge.close()
