"""Pluggable judges for the judged benchmarks (mt_bench, alpaca_eval).

    benchmark=mt_bench judge=http judge.base_url=https://api.openai.com/v1 judge.model=gpt-4
    benchmark=mt_bench judge=local judge.model=smollm2-135m

``judge=...`` selects ``conf/judge/<kind>.yaml``, stored at ``benchmark.judge``. Replies are cached
under ``judge.cache_dir`` (default ``$PREFOPT_CACHE/judgments``), one file per judge identity.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from prefopt.errors import PrefoptError
from prefopt.judges.base import Judge, JudgeError, Verdict
from prefopt.judges.http import OpenAIJudge
from prefopt.judges.local import LocalJudge

__all__ = ["Judge", "JudgeError", "Verdict", "OpenAIJudge", "LocalJudge", "build_judge", "JudgeConfigError"]


class JudgeConfigError(PrefoptError, ValueError):
    pass


def _cache_file(cache_dir: str | None, identity: str) -> Path:
    from prefopt.models import cache_root

    root = Path(cache_dir) if cache_dir else cache_root() / "judgments"
    return root / f"{hashlib.sha256(identity.encode()).hexdigest()[:16]}.jsonl"


def build_judge(jcfg) -> Judge:
    """A judge from a ``benchmark.judge`` config; every bad value is reported with its key."""
    kind = jcfg.kind
    try:
        if kind == "http":
            judge = OpenAIJudge(jcfg.base_url, jcfg.model, api_key_env=jcfg.api_key_env, timeout=jcfg.timeout,
                                max_retries=jcfg.max_retries, requests_per_minute=jcfg.requests_per_minute,
                                temperature=jcfg.temperature, max_tokens=jcfg.max_tokens,
                                parse_retries=jcfg.parse_retries, concurrency=jcfg.get("concurrency", 1))
        elif kind == "local":
            # One model on this machine: concurrent generate() calls would only contend for it.
            judge = LocalJudge(jcfg.model, max_new_tokens=jcfg.max_tokens, parse_retries=jcfg.parse_retries)
        elif kind == "none":
            raise JudgeConfigError("this benchmark needs a judge: add judge=http or judge=local "
                                   "(see conf/judge/)")
        else:
            raise JudgeConfigError(f"benchmark.judge.kind={kind!r}: must be http, local or none")
    except ValueError as err:
        if isinstance(err, JudgeConfigError):
            raise
        raise JudgeConfigError(str(err)) from None
    # The cache is opened after the identity is known: one file per judge, shared by all runs.
    from prefopt.judges.base import JudgmentCache

    judge.cache = JudgmentCache(_cache_file(jcfg.cache_dir, judge.identity))
    return judge
