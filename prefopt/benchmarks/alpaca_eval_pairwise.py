"""``benchmark=alpaca_eval_pairwise``: the AlpacaEval instructions answered by policy and reference model, each
answer compared by a pairwise judge with a fixed reference output set (by default AlpacaEval 1's set, with
text_davinci_003's outputs, from the hub dataset ``tatsu-lab/alpaca_eval``).

This is not AlpacaEval's evaluation, and its numbers are not comparable with any published one:
``benchmark=alpaca_eval`` (``prefopt/benchmarks/alpaca_eval.py``) runs that, through the ``alpaca_eval``
package. This one needs no package and works with any judge (``judge=local`` too).

The judge sees FastChat's ``pair-v2`` prompt with the two answers in an order fixed per instruction by
the seed (half the instructions put the model first), to cancel position bias; its verdict is turned
into AlpacaEval's preference (1 = reference output wins, 2 = model wins, 1.5 = draw). Win rate and
standard error are AlpacaEval's (``prefopt.stats.alpaca_win_rate``: draws count half). The delta pairs
the policy's and the reference model's outcomes on the same instructions. Malformed verdicts are
retried, then counted as invalid and left out, as AlpacaEval drops null preferences.
"""

from __future__ import annotations

import logging

import numpy as np

from prefopt.benchmarks.alpaca_data import AE1_SET, load_instructions, load_reference_outputs
from prefopt.data.registry import DataError
from prefopt.generation import SampleSettings, sample
from prefopt.judges import build_judge
from prefopt.judges.prompts import load_judge_prompts, pairwise_messages, parse_verdict
from prefopt.stats import alpaca_win_rate, paired_delta, preference_outcome

log = logging.getLogger(__name__)


def preference_from_verdict(verdict: str | None, model_is_a: bool) -> float | None:
    if verdict is None:
        return None
    if verdict == "C":
        return 1.5
    model_won = (verdict == "A") == model_is_a
    return 2.0 if model_won else 1.0


def judge_outputs(judge, prompts, instructions, outputs, baseline, order) -> list[dict]:
    requests = []
    for i, (instruction, output, base) in enumerate(zip(instructions, outputs, baseline, strict=True)):
        a, b = (output, base) if order[i] else (base, output)
        requests.append((pairwise_messages(prompts, instruction, a, b), parse_verdict))
    return [{"preference": preference_from_verdict(verdict.value, bool(order[i])), "model_first": bool(order[i]),
             "judge_reply": verdict.reply} for i, verdict in enumerate(judge.judge_many(requests))]


def run(policy, reference, tokenizer, bcfg, eot_token: str | None = None) -> dict:
    if bcfg.judge.kind == "none":
        raise DataError("benchmark=alpaca_eval_pairwise needs a judge: add judge=http or judge=local (conf/judge/)")
    if not bcfg.judge_prompts:
        raise DataError("benchmark.judge_prompts: required (FastChat's judge_prompts.jsonl, for pair-v2)")
    instructions = load_instructions(bcfg.prompts, bcfg.num_prompts, default_file=AE1_SET)
    baseline, _ = load_reference_outputs(bcfg.reference_outputs, instructions, default_file=AE1_SET)
    prompts = load_judge_prompts(bcfg.judge_prompts)
    settings = SampleSettings(bcfg.max_new_tokens, bcfg.temperature, bcfg.top_p, bcfg.batch_size, bcfg.seed)
    chats = [[{"role": "user", "content": text}] for text in instructions]
    outputs = {"policy": [s["text"] for s in sample(policy, tokenizer, chats, settings, eot_token)],
               "reference": [s["text"] for s in sample(reference, tokenizer, chats, settings, eot_token)]}
    order = np.random.default_rng(bcfg.seed).integers(0, 2, size=len(instructions))
    judge = build_judge(bcfg.judge)
    try:
        judged = {side: judge_outputs(judge, prompts, instructions, outputs[side], baseline, order)
                  for side in ("policy", "reference")}
    finally:
        judge.close()
    result: dict = {"name": "alpaca_eval_pairwise", "judge": judge.identity, "num_instructions": len(instructions),
                    "judge_calls": judge.calls}
    for side in ("policy", "reference"):
        prefs = [j["preference"] for j in judged[side]]
        try:
            figures = alpaca_win_rate(prefs)
        except ValueError:
            figures = {"win_rate": None, "standard_error": None, "n_total": 0, "n_invalid": len(prefs)}
        result.update({f"{side}_{k}": v for k, v in figures.items()})
    scores = {side: [preference_outcome(j["preference"]) for j in judged[side]] for side in judged}
    both = [i for i in range(len(instructions)) if scores["policy"][i] is not None and scores["reference"][i] is not None]
    if both:
        # Win rates in percent, like AlpacaEval, so the delta is in percentage points.
        result.update(paired_delta([100 * scores["policy"][i] for i in both],
                                   [100 * scores["reference"][i] for i in both],
                                   samples=bcfg.bootstrap_samples, seed=bcfg.seed))
    else:
        result.update({"n": 0, "delta": None, "status": "no_valid_judgments"})
        log.error("alpaca_eval_pairwise: no instruction got a valid verdict for both models (invalid: policy %d, "
                  "reference %d)", result["policy_n_invalid"], result["reference_n_invalid"])
    result["judge_malformed"] = {side: result[f"{side}_n_invalid"] for side in ("policy", "reference")}
    items = []
    for i, instruction in enumerate(instructions):
        items.append({"instruction": instruction, "baseline_output": baseline[i],
                      **{f"{side}_output": outputs[side][i] for side in outputs},
                      **{f"{side}_preference": judged[side][i]["preference"] for side in judged},
                      **{f"{side}_judge_reply": judged[side][i]["judge_reply"] for side in judged},
                      "model_first": judged["policy"][i]["model_first"]})
    result["items"] = items
    result["examples"] = [{k: v for k, v in it.items() if not k.endswith("judge_reply")} for it in items[:3]]
    return result
