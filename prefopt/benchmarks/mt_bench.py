"""MT-Bench, single-answer grading: FastChat's 80 two-turn questions, each turn graded 1-10 by a judge.

Policy and reference model answer both turns (the second turn sees the model's own first answer),
sampled with the same seeds. Each turn is graded with FastChat's prompts: ``single-v1`` /
``single-v1-multi-turn``, or their ``-math-`` versions against the GPT-4 reference answer for the
math, reasoning and coding questions. A model's MT-Bench score is the mean grade over its graded turns,
as FastChat reports it. The delta pairs policy and reference on the same (question, turn) where both
were graded; malformed judge replies are retried, then counted and left out (never scored).
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np

from prefopt.data.registry import DataError, read_table
from prefopt.generation import SampleSettings, sample
from prefopt.judges import build_judge
from prefopt.judges.prompts import NEEDS_REFERENCE, load_judge_prompts, parse_rating, single_grade_messages
from prefopt.stats import paired_delta

log = logging.getLogger(__name__)


# The hub's copy of the 80 questions; its rows are {prompt: [turn1, turn2], prompt_id, category, reference}.
HUB_QUESTIONS = "HuggingFaceH4/mt_bench_prompts"


def load_questions(path: str, limit: int) -> list[dict]:
    """FastChat's question.jsonl rows ({question_id, category, turns}), or the hub's ``HuggingFaceH4/
    mt_bench_prompts`` rows ({prompt_id, category, prompt, reference}); a hub id is read from its train split."""
    rows = read_table(path, "train", where="benchmark.prompts")
    questions = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"benchmark.prompts={path}: row {i} is not an object")
        hub_schema = "turns" not in row and "prompt" in row
        turns = row.get("prompt" if hub_schema else "turns")
        if not (isinstance(turns, list) and len(turns) == 2 and all(isinstance(t, str) for t in turns)):
            field = "prompt" if hub_schema else "turns"
            raise DataError(f"benchmark.prompts={path}: row {i}: {field!r} must be a list of two strings")
        qid_key = "prompt_id" if hub_schema else "question_id"
        if qid_key not in row or "category" not in row:
            raise DataError(f"benchmark.prompts={path}: row {i}: needs {qid_key!r} and 'category'")
        question = {"question_id": row[qid_key], "category": row["category"], "turns": turns}
        reference = row.get("reference") if hub_schema else None
        if isinstance(reference, list) and len(reference) == 2 and all(isinstance(t, str) and t for t in reference):
            question["reference"] = reference  # the hub rows carry the GPT-4 reference answers inline
        questions.append(question)
    return questions if limit < 0 else questions[:limit]


def load_reference_answers(path: str | None, questions: list[dict] = ()) -> dict:
    """question_id -> the GPT-4 reference answer's two turns: from FastChat's reference_answer_gpt-4.jsonl
    (``path``), else from the questions themselves (the hub schema has them inline)."""
    answers = {q["question_id"]: q["reference"] for q in questions if "reference" in q}
    if not path:
        return answers
    for i, row in enumerate(read_table(path, "train", where="benchmark.reference_answers")):
        try:
            answers[row["question_id"]] = row["choices"][0]["turns"]
        except (KeyError, IndexError, TypeError):
            raise DataError(f"benchmark.reference_answers={path}: row {i}: needs question_id and "
                            "choices[0].turns") from None
    return answers


def answer_both_turns(model, tokenizer, questions, settings, eot) -> list[list[str]]:
    first = sample(model, tokenizer, [[{"role": "user", "content": q["turns"][0]}] for q in questions],
                   settings, eot)
    second_prompts = [[{"role": "user", "content": q["turns"][0]},
                       {"role": "assistant", "content": a["text"]},
                       {"role": "user", "content": q["turns"][1]}] for q, a in zip(questions, first, strict=True)]
    second = sample(model, tokenizer, second_prompts, settings, eot)
    return [[a["text"], b["text"]] for a, b in zip(first, second, strict=True)]


def check(bcfg) -> None:
    """Before training: FastChat's judge prompts can be read (a URL is fetched and cached now, not after hours)."""
    if not bcfg.get("judge_prompts"):
        raise DataError("benchmark.judge_prompts: required (FastChat's judge_prompts.jsonl, a URL or a local path)")
    load_judge_prompts(bcfg.judge_prompts)


def run(policy, reference, tokenizer, bcfg, eot_token: str | None = None) -> dict:
    if bcfg.judge.kind == "none":
        raise DataError("benchmark=mt_bench needs a judge: add judge=http or judge=local (conf/judge/)")
    questions = load_questions(bcfg.prompts, bcfg.num_prompts)
    prompts = load_judge_prompts(bcfg.judge_prompts)
    ref_answers = load_reference_answers(bcfg.reference_answers, questions)
    judge = build_judge(bcfg.judge)
    settings = SampleSettings(bcfg.max_new_tokens, bcfg.temperature, bcfg.top_p, bcfg.batch_size, bcfg.seed)
    answers = {"policy": answer_both_turns(policy, tokenizer, questions, settings, eot_token),
               "reference": answer_both_turns(reference, tokenizer, questions, settings, eot_token)}
    grades: dict[str, dict] = {"policy": {}, "reference": {}}
    malformed = {"policy": 0, "reference": 0}
    missing_reference = 0
    # Every grading request first, then judged judge.concurrency at a time (results in this order).
    slots, requests = [], []
    for qi, q in enumerate(questions):
        ref = ref_answers.get(q["question_id"]) if q["category"] in NEEDS_REFERENCE else None
        if q["category"] in NEEDS_REFERENCE and ref is None:
            missing_reference += 1
        for turn in (1, 2):
            for side in ("policy", "reference"):
                slots.append((qi, turn, side))
                requests.append((single_grade_messages(prompts, q["turns"], answers[side][qi], turn, ref),
                                 parse_rating))
    try:
        verdicts = judge.judge_many(requests)
    finally:
        judge.close()
    items_by_key: dict = {}
    for (qi, turn, side), verdict in zip(slots, verdicts, strict=True):
        q = questions[qi]
        item = items_by_key.setdefault((qi, turn), {"question_id": q["question_id"], "category": q["category"],
                                                     "turn": turn})
        if verdict.malformed:
            malformed[side] += 1
        else:
            grades[side][(qi, turn)] = verdict.value
        item[f"{side}_answer"] = answers[side][qi][turn - 1]
        item[f"{side}_score"] = verdict.value
        item[f"{side}_judge_reply"] = verdict.reply
    items = list(items_by_key.values())
    both = [k for k in grades["policy"] if k in grades["reference"]]
    result: dict = {"name": "mt_bench", "judge": judge.identity, "num_questions": len(questions),
                    "judged_turns": 2 * len(questions)}
    if both:
        result.update(paired_delta([grades["policy"][k] for k in both], [grades["reference"][k] for k in both],
                                   samples=bcfg.bootstrap_samples, seed=bcfg.seed))
    else:
        # Nothing to compare, and nothing is made up: the counts below say why.
        result.update({"n": 0, "delta": None, "status": "no_valid_judgments"})
        log.error("mt_bench: no (question, turn) was graded for both models: the judge's replies were "
                  "malformed %d + %d times", malformed["policy"], malformed["reference"])
    for side in ("policy", "reference"):
        values = grades[side]
        result[f"{side}_score"] = float(np.mean(list(values.values()))) if values else None
        for turn in (1, 2):
            turn_values = [v for (qi, t), v in values.items() if t == turn]
            result[f"{side}_turn{turn}"] = float(np.mean(turn_values)) if turn_values else None
    by_category = defaultdict(list)
    for (qi, _turn), value in grades["policy"].items():
        by_category[questions[qi]["category"]].append(value)
    result["policy_by_category"] = {c: float(np.mean(v)) for c, v in sorted(by_category.items())}
    result["judge_malformed"] = malformed
    result["judge_calls"] = judge.calls
    result["missing_reference_answers"] = missing_reference
    if any(malformed.values()):
        log.warning("mt_bench: %s judge replies malformed after retries; left out of the scores", malformed)
    result["items"] = items
    result["examples"] = items[:3]
    return result
