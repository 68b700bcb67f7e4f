"""FastChat's MT-Bench judge prompts and the parsing of judge replies.

The prompt texts are not copied into prefopt: they are read from FastChat's ``judge_prompts.jsonl``
(``benchmark.judge_prompts``), the file MT-Bench scores are defined by. Parsing follows FastChat's
conventions: a single-answer grade is ``[[x]]`` (fallback ``[x]``), a pairwise verdict is
``[[A]]``, ``[[B]]`` or ``[[C]]`` (tie); a reply with none of them is malformed (None).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from prefopt.data.registry import DataError

# Categories FastChat grades against a GPT-4 reference answer (its NEED_REF_CATS).
NEEDS_REFERENCE = ("math", "reasoning", "coding")

_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_FALLBACK = re.compile(r"\[(\d+\.?\d*)\]")
_VERDICT = re.compile(r"\[\[([ABC])\]\]")


def parse_rating(reply: str) -> float | None:
    for pattern in (_RATING, _RATING_FALLBACK):
        found = pattern.findall(reply)
        if found:
            value = float(found[-1])
            return value if 1.0 <= value <= 10.0 else None
    return None


def parse_verdict(reply: str) -> str | None:
    found = set(_VERDICT.findall(reply))
    # "[[A]] ... [[B]]" names both: ambiguous, so malformed rather than guessed.
    return found.pop() if len(found) == 1 else None


# FastChat's grading prompts are not on the Hugging Face Hub; by default they are read from FastChat's repository
# once and cached (a local path works too, and is what an offline machine needs).
FASTCHAT_JUDGE_PROMPTS = ("https://raw.githubusercontent.com/lm-sys/FastChat/main/fastchat/llm_judge/data/"
                          "judge_prompts.jsonl")


def fetch_judge_prompts(url: str) -> Path:
    """The judge prompts file at ``url``, downloaded once into ``$PREFOPT_CACHE/judge_prompts`` (atomically);
    offline (HF_HUB_OFFLINE=1 or no route) an error naming the key and the local-path way out."""
    import hashlib
    import os
    import urllib.request

    from prefopt.io import atomic_write_bytes
    from prefopt.models import cache_root

    target = cache_root() / "judge_prompts" / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}.jsonl"
    if target.is_file():
        return target
    hint = ("; download FastChat's fastchat/llm_judge/data/judge_prompts.jsonl and pass "
            "benchmark.judge_prompts=<local path>")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise DataError(f"benchmark.judge_prompts={url}: not cached and HF_HUB_OFFLINE=1{hint}")
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            data = response.read()
    except OSError as err:
        raise DataError(f"benchmark.judge_prompts={url}: cannot download ({err}){hint}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, data)
    return target


def load_judge_prompts(path: str | Path) -> dict[str, dict]:
    if str(path).startswith(("https://", "http://")):
        path = fetch_judge_prompts(str(path))
    path = Path(path)
    if not path.is_file():
        raise DataError(f"benchmark.judge_prompts={path}: no such file (FastChat's judge_prompts.jsonl)")
    prompts = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                prompts[row["name"]] = row
            except (json.JSONDecodeError, KeyError) as err:
                raise DataError(f"{path}: line {lineno}: not a judge prompt ({err})") from None
    needed = ["single-v1", "single-v1-multi-turn", "single-math-v1", "single-math-v1-multi-turn", "pair-v2"]
    missing = [n for n in needed if n not in prompts]
    if missing:
        raise DataError(f"{path}: lacks the judge prompts {missing}")
    return prompts


def single_grade_messages(prompts: dict, questions: list[str], answers: list[str], turn: int,
                          reference: list[str] | None) -> list[dict[str, str]]:
    """The judge conversation grading turn ``turn`` (1 or 2) of one answer, FastChat-style."""
    name = ("single-math-v1" if reference else "single-v1") + ("-multi-turn" if turn == 2 else "")
    spec = prompts[name]
    fields = {}
    if turn == 1:
        fields.update(question=questions[0], answer=answers[0])
    else:
        fields.update(question_1=questions[0], question_2=questions[1], answer_1=answers[0], answer_2=answers[1])
    if reference:
        if turn == 1:
            fields["ref_answer_1"] = reference[0]
        else:
            fields.update(ref_answer_1=reference[0], ref_answer_2=reference[1])
    return [{"role": "system", "content": spec["system_prompt"]},
            {"role": "user", "content": spec["prompt_template"].format(**fields)}]


def pairwise_messages(prompts: dict, question: str, answer_a: str, answer_b: str) -> list[dict[str, str]]:
    spec = prompts["pair-v2"]
    return [{"role": "system", "content": spec["system_prompt"]},
            {"role": "user", "content": spec["prompt_template"].format(
                question=question, answer_a=answer_a, answer_b=answer_b)}]
