"""A judge behind an OpenAI-compatible ``/v1/chat/completions`` endpoint (OpenAI, vLLM, TGI, llama.cpp).

The key is read from the environment variable named by ``judge.api_key_env`` (never from a config
file, so it never lands in a run's config.yaml). Transport failures (connection errors, timeouts,
HTTP 429 and 5xx) are retried with exponential backoff, honouring ``Retry-After``; other HTTP errors
(401, 404, 400) fail at once with the endpoint and the server's message, because retrying cannot fix
them. ``requests_per_minute`` spaces requests evenly so a rate-limited key is not hammered.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request

from prefopt.judges.base import Judge, JudgeError

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}


class OpenAIJudge(Judge):
    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout: float = 60.0, max_retries: int = 5, requests_per_minute: float = 0.0,
                 temperature: float = 0.0, max_tokens: int = 1024, backoff_seconds: float = 1.0,
                 cache_path=None, parse_retries: int = 2, concurrency: int = 1):
        super().__init__(cache_path, parse_retries, concurrency)
        if not base_url:
            raise ValueError("judge.base_url: required for judge=http (e.g. https://api.openai.com/v1)")
        if not model:
            raise ValueError("judge.model: required for judge=http (e.g. gpt-4)")
        if timeout <= 0:
            raise ValueError(f"judge.timeout={timeout}: must be > 0 seconds")
        if max_retries < 0:
            raise ValueError(f"judge.max_retries={max_retries}: must be >= 0")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = None
        if api_key_env:
            self.api_key = os.environ.get(api_key_env)
            if not self.api_key:
                raise ValueError(f"judge.api_key_env={api_key_env}: the environment variable is not set")
        self.timeout = timeout
        self.max_retries = max_retries
        self.min_interval = 60.0 / requests_per_minute if requests_per_minute > 0 else 0.0
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.backoff = backoff_seconds
        self._last_request = 0.0
        self._lock = threading.Lock()
        # The URL is part of the identity: the same model name on two servers may be two models.
        self.identity = f"http|{self.url}|{model}|t={temperature}|max={max_tokens}"

    def _wait_for_slot(self) -> None:
        with self._lock:
            delay = self._last_request + self.min_interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._last_request = time.monotonic()

    def _complete(self, messages):
        body = json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature,
                           "max_tokens": self.max_tokens}).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last_error = ""
        for attempt in range(self.max_retries + 1):
            self._wait_for_slot()
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            retry_after = None
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = json.loads(response.read().decode("utf-8"))
                return _reply_text(payload, self.url)
            except urllib.error.HTTPError as err:
                detail = err.read().decode("utf-8", "replace")[:300]
                if err.code not in RETRYABLE_STATUS:
                    raise JudgeError(f"judge {self.url}: HTTP {err.code}: {detail}") from None
                last_error = f"HTTP {err.code}: {detail}"
                retry_after = _retry_after(err.headers.get("Retry-After"))
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                last_error = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
            except json.JSONDecodeError as err:
                last_error = f"the reply is not JSON ({err.msg})"
            if attempt < self.max_retries:
                delay = retry_after if retry_after is not None else self.backoff * 2 ** attempt
                log.warning("judge %s: %s; retry %d/%d in %.1fs", self.url, last_error, attempt + 1,
                            self.max_retries, delay)
                time.sleep(delay)
        raise JudgeError(f"judge {self.url}: gave up after {self.max_retries + 1} attempts: {last_error}")


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _reply_text(payload: dict, url: str) -> str:
    # A 200 without choices is a broken server, not a malformed judgment: an empty reply is then
    # counted as malformed by the caller rather than crashing the benchmark.
    try:
        content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        log.warning("judge %s: a reply without choices[0].message.content: %.200r", url, payload)
        return ""
    return content if isinstance(content, str) else ""
