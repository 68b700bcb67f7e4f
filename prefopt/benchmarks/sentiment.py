"""Controlled sentiment generation, the DPO paper's first experiment, in miniature.

Policy and reference each sample one completion per held-out prompt with the same seeds; VADER's
compound score (-1..1) is the ground-truth reward. Reported: mean reward of each, the paired delta with
a bootstrap 95% CI and Wilcoxon p-value, the win rate of policy over reference, and the sampled
estimate of KL(π‖π_ref) = E_{y~π}[log π(y|x) - log π_ref(y|x)] (sequence level, in nats).
"""

from __future__ import annotations

import torch
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from prefopt.data.collate import collate
from prefopt.generation import SampleSettings, sample
from prefopt.logps import SequenceScorer
from prefopt.stats import paired_delta


def prompts_from_config(bcfg) -> list[list[dict]]:
    if bcfg.prompts == "builtin":
        from prefopt.data.sentiment import heldout_prompts

        texts = heldout_prompts()
    else:
        from prefopt.data.registry import read_table

        texts = [row["prompt"] if isinstance(row, dict) else row for row in read_table(bcfg.prompts)]
    texts = texts[: bcfg.num_prompts]
    return [[{"role": "user", "content": t}] for t in texts]


@torch.no_grad()
def _sequence_logps(model, samples, pad_id, batch_size=16):
    scorer = SequenceScorer(model).eval()
    out = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        examples = [{"index": i, "prompt_ids": s["prompt_ids"], "chosen_ids": s["completion_ids"] or [pad_id]}
                    for i, s in enumerate(chunk)]
        batch = collate(examples, pad_id, "sft")
        logps, _ = scorer(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        out.extend(logps.tolist())
    return out


def run(policy, reference, tokenizer, bcfg, eot_token: str | None = None) -> dict:
    prompts = prompts_from_config(bcfg)
    settings = SampleSettings(bcfg.max_new_tokens, bcfg.temperature, bcfg.top_p, bcfg.batch_size, bcfg.seed)
    analyzer = SentimentIntensityAnalyzer()
    policy_samples = sample(policy, tokenizer, prompts, settings, eot_token)
    reference_samples = sample(reference, tokenizer, prompts, settings, eot_token)
    policy_scores = [analyzer.polarity_scores(s["text"])["compound"] for s in policy_samples]
    reference_scores = [analyzer.polarity_scores(s["text"])["compound"] for s in reference_samples]
    pad_id = tokenizer.pad_token_id
    logp_policy = _sequence_logps(policy, policy_samples, pad_id)
    logp_reference = _sequence_logps(reference, policy_samples, pad_id)
    kl = [p - r for p, r in zip(logp_policy, logp_reference, strict=True)]
    result = {"name": "sentiment", "scorer": "vader_compound", "num_prompts": len(prompts)}
    result.update(paired_delta(policy_scores, reference_scores, samples=bcfg.bootstrap_samples, seed=bcfg.seed))
    result["kl_estimate"] = float(sum(kl) / len(kl))
    result["policy_finished_fraction"] = sum(s["finished"] for s in policy_samples) / len(policy_samples)
    result["examples"] = [
        {"prompt": p[0]["content"], "policy": ps["text"], "policy_score": a,
         "reference": rs["text"], "reference_score": b}
        for p, ps, rs, a, b in list(zip(prompts, policy_samples, reference_samples, policy_scores,
                                        reference_scores, strict=True))[:5]
    ]
    return result
