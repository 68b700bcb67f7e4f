"""What every judge shares: an on-disk cache of replies, and retry-then-count for malformed replies.

A judge turns chat messages into a reply text (``_complete``). ``Judge.judge(messages, parse)`` asks
it, parses the reply, and on a malformed reply asks again, up to ``parse_retries`` more times; if no
reply parses, the item is returned as malformed (value None) and the caller counts it; it is never
given a made-up score.

Caching: every reply, well-formed or not, is appended to a JSON-lines file keyed by
sha256(judge identity, messages, attempt number). A rerun replays the same attempts from disk, so
neither a rerun nor a crash mid-benchmark pays for a judgment twice, and a rerun reaches the same
verdicts. Lines are appended with one flushed write each; a torn last line after a hard kill is
ignored.

Concurrency: ``judge_many`` sends up to ``concurrency`` requests at once (threads; an HTTP judge spends
its time waiting on the network, 320 sequential MT-Bench calls take minutes). Results come back in request
order, so a benchmark's items and statistics do not depend on which reply arrived first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefopt.errors import PrefoptError
from prefopt.io import JsonlWriter, read_jsonl

log = logging.getLogger(__name__)


class JudgeError(PrefoptError, RuntimeError):
    """The judge cannot be reached or refuses the request (after retries); names the endpoint."""


@dataclass
class Verdict:
    value: Any  # the parsed judgment, or None when every attempt was malformed
    reply: str  # the last raw reply
    attempts: int
    cached: bool  # True when no attempt needed a new call

    @property
    def malformed(self) -> bool:
        return self.value is None


class JudgmentCache:
    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self._entries: dict[str, str] = {}
        self._writer: JsonlWriter | None = None
        self._lock = threading.Lock()
        if self.path is not None and self.path.is_file():
            for record in read_jsonl(self.path):
                self._entries[record["key"]] = record["reply"]

    def get(self, key: str) -> str | None:
        return self._entries.get(key)

    def put(self, key: str, reply: str) -> None:
        with self._lock:
            self._entries[key] = reply
            if self.path is None:
                return
            if self._writer is None:
                self._writer = JsonlWriter(self.path)
            self._writer.write({"key": key, "reply": reply})

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class Judge:
    """Subclasses implement ``_complete(messages) -> str`` and set ``identity`` (model + settings that
    change replies), which is part of every cache key."""

    identity: str = "judge"

    def __init__(self, cache_path: str | os.PathLike | None = None, parse_retries: int = 2, concurrency: int = 1):
        if parse_retries < 0:
            raise ValueError(f"judge.parse_retries={parse_retries}: must be >= 0")
        if concurrency < 1:
            raise ValueError(f"judge.concurrency={concurrency}: must be >= 1")
        self.cache = JudgmentCache(cache_path)
        self.parse_retries = parse_retries
        self.concurrency = concurrency
        self.calls = 0  # replies actually requested (cache misses), for reports and tests
        self._calls_lock = threading.Lock()

    def _complete(self, messages: list[dict[str, str]]) -> str:
        raise NotImplementedError

    def key(self, messages: list[dict[str, str]], attempt: int) -> str:
        blob = json.dumps([self.identity, messages, attempt], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def judge(self, messages: list[dict[str, str]], parse: Callable[[str], Any]) -> Verdict:
        cached = True
        reply = ""
        for attempt in range(self.parse_retries + 1):
            key = self.key(messages, attempt)
            reply = self.cache.get(key)
            if reply is None:
                cached = False
                reply = self._complete(messages)
                with self._calls_lock:
                    self.calls += 1
                self.cache.put(key, reply)
            value = parse(reply)
            if value is not None:
                return Verdict(value, reply, attempt + 1, cached)
            log.debug("malformed judge reply (attempt %d): %.200r", attempt + 1, reply)
        return Verdict(None, reply, self.parse_retries + 1, cached)

    def judge_many(self, requests: Sequence[tuple[list[dict[str, str]], Callable[[str], Any]]]) -> list[Verdict]:
        """``judge(messages, parse)`` for each request, ``self.concurrency`` at a time, in request order.
        The first JudgeError (an unreachable or refusing endpoint) is raised once the requests in flight end."""
        if self.concurrency == 1 or len(requests) <= 1:
            return [self.judge(messages, parse) for messages, parse in requests]
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="judge") as pool:
            futures = [pool.submit(self.judge, messages, parse) for messages, parse in requests]
            try:
                return [future.result() for future in futures]
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    def close(self) -> None:
        self.cache.close()
