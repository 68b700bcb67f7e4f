"""Controlled sentiment generation, the DPO paper's first experiment, in miniature.

Policy and reference each sample ``benchmark.samples_per_prompt`` completions per held-out prompt, sample j
of prompt i from the random stream (i, j) seeded by ``benchmark.seed`` (``prefopt.generation.sample_streams``),
never by the training seed: every run of a study draws prompt i's samples from the same streams. VADER's
compound score (-1..1) is the ground-truth reward. Reported: mean reward of each, the paired delta with
a bootstrap 95% CI and Wilcoxon p-value, the win rate of policy over reference, and the sampled
estimate of KL(π‖π_ref) = E_{y~π}[log π(y|x) - log π_ref(y|x)] (sequence level, in nats), with its
bootstrap CI. Every CI resamples prompts, each the mean of its samples (``prefopt.stats.cluster_means``).

The reference's samples, scores and log-probs are read from ``$PREFOPT_CACHE/refsamples`` when an earlier
run of the study made them (``benchmark.cache_reference``, ``prefopt.benchmarks.sample_cache``).
Each item of ``benchmark_sentiment.jsonl`` carries its ``prompt_id`` (the prompt's index in the prompt list)
and ``sample`` (0..samples_per_prompt-1), so runs pair item by item.

Prompts: ``benchmark.prompts=builtin`` (the packaged held-out prompts), ``imdb`` (the test split of the
hub's ``stanfordnlp/imdb``, as in the DPO paper), or a local JSON/JSONL/Parquet file or another hub id. Rows
with a ``prompt`` column are used as they are; rows with a ``text`` column (IMDb reviews) become "Continue
this movie review: <first prefix_words words>", since a chat model is asked, not a raw LM. A row with
neither is an error naming the row.
"""

from __future__ import annotations

import torch
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from prefopt.data.collate import collate
from prefopt.data.registry import DataError
from prefopt.errors import ConfigError
from prefopt.generation import SampleSettings, sample_streams
from prefopt.scoring import SequenceScorer
from prefopt.stats import bootstrap_mean_ci, paired_delta

REVIEW_INSTRUCTION = "Continue this movie review: "


def prompts_from_config(bcfg) -> list[list[dict]]:
    if bcfg.prompts == "builtin":
        from prefopt.data.sentiment import heldout_prompts

        texts = heldout_prompts()
    else:
        from prefopt.data.imdb import HUB_ID as IMDB_HUB_ID
        from prefopt.data.imdb import review_prefix
        from prefopt.data.registry import read_table

        # Benchmark prompts come from a test split; a local file ignores the split.
        source = IMDB_HUB_ID if bcfg.prompts == "imdb" else bcfg.prompts
        split = "test"
        texts = []
        for i, row in enumerate(read_table(source, split, where="benchmark.prompts")):
            if isinstance(row, str):
                texts.append(row)
            elif isinstance(row, dict) and isinstance(row.get("prompt"), str):
                texts.append(row["prompt"])
            elif isinstance(row, dict) and isinstance(row.get("text"), str):
                texts.append(REVIEW_INSTRUCTION + review_prefix(row["text"], bcfg.prefix_words))
            else:
                raise DataError(f"benchmark.prompts={bcfg.prompts}: row {i} has neither a 'prompt' nor a "
                                "'text' string column")
    if bcfg.num_prompts >= 0:
        texts = texts[: bcfg.num_prompts]
    if not texts:
        raise DataError(f"benchmark.prompts={bcfg.prompts}: no prompts (benchmark.num_prompts={bcfg.num_prompts})")
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
    k = bcfg.samples_per_prompt
    if k < 1:
        raise ConfigError(f"benchmark.samples_per_prompt={k}: must be >= 1")
    prompts = prompts_from_config(bcfg)
    streams = [(i, j) for i in range(len(prompts)) for j in range(k)]
    chats = [prompts[i] for i, _ in streams]
    settings = SampleSettings(bcfg.max_new_tokens, bcfg.temperature, bcfg.top_p, bcfg.batch_size, bcfg.seed)
    analyzer = SentimentIntensityAnalyzer()

    def score(text: str) -> float:
        return analyzer.polarity_scores(text)["compound"]

    policy_samples = sample_streams(policy, tokenizer, chats, streams, settings, eot_token)
    policy_scores = [score(s["text"]) for s in policy_samples]
    if bcfg.cache_reference:
        from prefopt.benchmarks.sample_cache import cached_samples
        from prefopt.models import cache_root

        reference_samples, cache = cached_samples(reference, tokenizer, chats, streams, settings, eot_token, score,
                                                  "vader_compound", cache_root() / "refsamples")
        reference_scores = [s["score"] for s in reference_samples]
    else:
        reference_samples = sample_streams(reference, tokenizer, chats, streams, settings, eot_token)
        reference_scores = [score(s["text"]) for s in reference_samples]
        cache = {"cache": "off", "generated": len(reference_samples)}
    pad_id = tokenizer.pad_token_id
    logp_policy = _sequence_logps(policy, policy_samples, pad_id)
    logp_reference = _sequence_logps(reference, policy_samples, pad_id)
    kl = [p - r for p, r in zip(logp_policy, logp_reference, strict=True)]
    prompt_ids = [i for i, _ in streams]
    result = {"name": "sentiment", "scorer": "vader_compound", "num_prompts": len(prompts), "samples_per_prompt": k}
    result.update(paired_delta(policy_scores, reference_scores, samples=bcfg.bootstrap_samples, seed=bcfg.seed,
                               clusters=prompt_ids))
    result["kl_estimate"] = float(sum(kl) / len(kl))
    result["kl_ci_low"], result["kl_ci_high"] = bootstrap_mean_ci(kl, clusters=prompt_ids,
                                                                  samples=bcfg.bootstrap_samples, seed=bcfg.seed)
    result["policy_finished_fraction"] = sum(s["finished"] for s in policy_samples) / len(policy_samples)
    result["reference_finished_fraction"] = sum(s["finished"] for s in reference_samples) / len(reference_samples)
    result["reference_samples"] = cache
    result["items"] = [
        {"prompt_id": i, "sample": j, "prompt": chat[0]["content"], "policy": ps["text"], "policy_score": a,
         "reference": rs["text"], "reference_score": b, "kl": d, "reference_logp": rs["logp"]}
        for (i, j), chat, ps, rs, a, b, d in zip(streams, chats, policy_samples, reference_samples, policy_scores,
                                                 reference_scores, kl, strict=True)
    ]
    result["examples"] = result["items"][:5]
    return result


_ANALYZER: SentimentIntensityAnalyzer | None = None


def gold_score(texts: list[str]) -> list[float]:
    """The task's ground-truth reward, VADER's compound score in [-1, 1]; labeller=gold asks for it."""
    global _ANALYZER
    if _ANALYZER is None:
        _ANALYZER = SentimentIntensityAnalyzer()
    return [_ANALYZER.polarity_scores(text)["compound"] for text in texts]
