"""The sentiment benchmark's run-side resolving power on model=tiny: random streams per (prompt, sample) that
no training seed or batch touches, several samples per prompt, and the reference's samples cached across the
runs of a study."""

from __future__ import annotations

import json

import pytest
import torch

from prefopt.benchmarks import sentiment
from prefopt.data.sentiment import heldout_prompts
from prefopt.generation import SampleSettings, sample_streams, stream_seed
from tests.conftest import compose

FAST = ["model=tiny", "benchmark.num_prompts=3", "benchmark.max_new_tokens=5", "benchmark.bootstrap_samples=200"]


@pytest.fixture(scope="module")
def tiny_models():
    from prefopt.models import load_model, load_tokenizer

    tokenizer = load_tokenizer("tiny", None, False)
    reference = load_model("tiny", "float32", False).eval()
    policy = load_model("tiny", "float32", False).eval()
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for param in policy.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return policy, reference, tokenizer


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    # Set after the models loaded (the tiny model itself lives in the real cache).
    monkeypatch.setenv("PREFOPT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "refsamples"


def test_a_stream_does_not_depend_on_its_batch_or_the_global_seed(tiny_models):
    """Prompt 2's sample 1 alone in a batch of 1, and inside a batch of 3 other prompts after the global RNG
    was reseeded (as a different training seed would): the same completion. Another sample number or
    benchmark seed draws another stream."""
    _, reference, tokenizer = tiny_models
    chats = [[{"role": "user", "content": t}] for t in heldout_prompts()[:3]]
    settings = SampleSettings(max_new_tokens=6, batch_size=4, seed=0)
    torch.manual_seed(1)
    batched = sample_streams(reference, tokenizer, chats, [(0, 1), (1, 1), (2, 1)], settings)
    torch.manual_seed(2)
    alone = sample_streams(reference, tokenizer, chats[2:], [(2, 1)], SampleSettings(6, batch_size=1, seed=0))
    assert alone[0]["completion_ids"] == batched[2]["completion_ids"]
    other = sample_streams(reference, tokenizer, chats[2:], [(2, 0)], SampleSettings(6, batch_size=1, seed=0))
    assert other[0]["completion_ids"] != alone[0]["completion_ids"]
    assert len({stream_seed(0, 2, 1), stream_seed(0, 2, 0), stream_seed(1, 2, 1), stream_seed(0, 1, 2)}) == 4


def test_stream_logp_is_the_models_log_probability(tiny_models):
    """The sampler's summed log-probs equal a separate scoring pass of the same completions."""
    _, reference, tokenizer = tiny_models
    chats = [[{"role": "user", "content": t}] for t in heldout_prompts()[:2]]
    samples = sample_streams(reference, tokenizer, chats, [(0, 0), (1, 0)], SampleSettings(6, seed=3))
    rescored = sentiment._sequence_logps(reference, samples, tokenizer.pad_token_id)
    assert [s["logp"] for s in samples] == pytest.approx(rescored, rel=1e-5)


def test_greedy_streams_match_generate(tiny_models):
    """At temperature 0 the KV-cache loop is greedy decoding: the tokens of transformers' generate."""
    _, reference, tokenizer = tiny_models
    chats = [[{"role": "user", "content": heldout_prompts()[5]}]]
    out = sample_streams(reference, tokenizer, chats, [(5, 0)], SampleSettings(6, temperature=0.0))[0]
    ids = torch.tensor([out["prompt_ids"]])
    greedy = reference.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                                do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out["completion_ids"] == greedy[0, ids.shape[1]:].tolist()[:len(out["completion_ids"])]


def test_samples_per_prompt_items_and_clustered_counts(tiny_models, cache_dir):
    policy, reference, tokenizer = tiny_models
    bcfg = compose([*FAST, "benchmark.samples_per_prompt=2"]).benchmark
    result = sentiment.run(policy, reference, tokenizer, bcfg, None)
    items = result["items"]
    assert [(i["prompt_id"], i["sample"]) for i in items] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert [i["prompt"] for i in items[::2]] == heldout_prompts()[:3]
    assert (result["n"], result["n_items"], result["samples_per_prompt"]) == (3, 6, 2)
    assert items[0]["policy"] != items[1]["policy"]  # two streams, two samples
    # The point estimates are means of per-prompt means.
    per_prompt = [(items[2 * p]["policy_score"] + items[2 * p + 1]["policy_score"]) / 2 for p in range(3)]
    assert result["policy_mean"] == pytest.approx(sum(per_prompt) / 3)
    assert result["kl_ci_low"] <= result["kl_estimate"] <= result["kl_ci_high"]
    with pytest.raises(Exception, match="benchmark.samples_per_prompt=0"):
        sentiment.run(policy, reference, tokenizer, compose([*FAST, "benchmark.samples_per_prompt=0"]).benchmark)


def test_reference_samples_are_generated_once_per_study(tiny_models, cache_dir, monkeypatch):
    """Two runs with the same reference, prompts and sampling settings: the first generates the reference's
    samples (one sample_streams call for the policy, one for the reference), the second only the policy's,
    and both get the same items. A third run asking for two more prompts generates just those two; with
    benchmark.cache_reference=false the reference samples again and finds the same completions."""
    policy, reference, tokenizer = tiny_models
    calls = []

    def counting(model, tok, prompts, streams, settings, eot=None):
        calls.append(("reference" if model is reference else "policy", list(streams)))
        return sample_streams(model, tok, prompts, streams, settings, eot)

    monkeypatch.setattr(sentiment, "sample_streams", counting)
    monkeypatch.setattr("prefopt.benchmarks.sample_cache.sample_streams", counting)
    bcfg = compose(FAST).benchmark
    first = sentiment.run(policy, reference, tokenizer, bcfg, None)
    assert [who for who, _ in calls] == ["policy", "reference"] and first["reference_samples"]["cache"] == "miss"
    calls.clear()
    second = sentiment.run(policy, reference, tokenizer, bcfg, None)
    assert [who for who, _ in calls] == ["policy"] and second["reference_samples"]["cache"] == "hit"
    assert second["items"] == first["items"]
    assert len(list(cache_dir.glob("*.json"))) == 1
    calls.clear()
    more = sentiment.run(policy, reference, tokenizer, compose([*FAST, "benchmark.num_prompts=5"]).benchmark, None)
    assert calls[1] == ("reference", [(3, 0), (4, 0)]) and more["reference_samples"]["cache"] == "partial"
    assert more["items"][:3] == first["items"]
    calls.clear()
    off = sentiment.run(policy, reference, tokenizer, compose([*FAST, "benchmark.cache_reference=false"]).benchmark)
    assert [who for who, _ in calls] == ["policy", "reference"]
    assert [i["reference"] for i in off["items"]] == [i["reference"] for i in first["items"]]
    stored = json.loads(next(cache_dir.glob("*.json")).read_text())
    assert len(stored["items"]) == 5


def test_another_reference_or_seed_is_another_cache_entry(tiny_models, cache_dir):
    policy, reference, tokenizer = tiny_models
    sentiment.run(policy, reference, tokenizer, compose(FAST).benchmark, None)
    sentiment.run(policy, reference, tokenizer, compose([*FAST, "benchmark.seed=1"]).benchmark, None)
    sentiment.run(policy, policy, tokenizer, compose(FAST).benchmark, None)  # the policy as its own reference
    assert len(list(cache_dir.glob("*.json"))) == 3
