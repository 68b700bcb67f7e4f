"""prefopt/labellers: the registry, the gold (VADER) labeller, a judge labeller against the fake HTTP judge
(which prefers the longer answer), and a local sequence-classification reward model."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from prefopt import labellers
from prefopt.errors import ConfigError
from prefopt.labellers import Labeller, LabellerError, build_labeller, register_labeller
from prefopt.online.pairs import build_pairs, build_pairs_pairwise, needed_comparisons

# The judge tests' fake OpenAI-compatible server, which prefers the longer answer.
from tests.judges.test_judge_http import judge_server  # noqa: F401, F811  (a fixture, used by name)

JUDGES = Path(__file__).resolve().parents[1] / "judges"


def lcfg(**keys):
    base = {"name": "gold", "judge_mode": "pairwise", "path": None, "label_index": 0, "batch_size": 8,
            "judge": {"kind": "none"}}
    return OmegaConf.create({**base, **keys})


def test_registry_lists_builtins_and_refuses_unknown_and_duplicates():
    assert {"gold", "judge", "reward_model"} <= set(labellers.names())
    with pytest.raises(labellers.UnknownLabellerError, match=r"labeller.name='oracle': known: gold, judge"):
        labellers.get("oracle")
    with pytest.raises(ValueError, match="already registered"):
        register_labeller("gold")(type("Other", (Labeller,), {}))
    with pytest.raises(ConfigError, match="labeller.name: the online"):
        build_labeller(lcfg(name="none"), None)


def test_gold_labeller_is_the_benchmarks_vader_score_and_counts_costs():
    labeller = build_labeller(lcfg(name="gold"), OmegaConf.create({"name": "sentiment"}))
    scores = labeller.score(["p", "p"], ["What a wonderful, lovely day!", "This is awful and sad."])
    assert scores[0] > 0.5 and scores[1] < -0.5
    assert labeller.costs.labels == 2 and labeller.costs.seconds >= 0
    with pytest.raises(ConfigError, match="benchmark=none"):
        build_labeller(lcfg(name="gold"), OmegaConf.create({"name": "none"}))


def judge_cfg(url, tmp_path, mode):
    return lcfg(name="judge", judge_mode=mode, judge={
        "kind": "http", "base_url": url, "model": "fake", "api_key_env": "FAKE_JUDGE_KEY", "timeout": 10.0,
        "max_retries": 1, "requests_per_minute": 0.0, "temperature": 0.0, "max_tokens": 64, "parse_retries": 0,
        "concurrency": 4, "cache_dir": str(tmp_path / "judgments")})


def test_a_judge_that_prefers_longer_answers_gives_pairs_whose_chosen_is_longer(judge_server, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("FAKE_JUDGE_KEY", "test-key")
    labeller = build_labeller(judge_cfg(judge_server, tmp_path, "pairwise"), None)
    assert labeller.pairwise
    rng = random.Random(0)
    samples = ["short", "a much longer answer here", "mid length", "same size!"]
    comparisons = needed_comparisons(len(samples), "all_pairs", rng)
    verdicts = labeller.compare(["q"] * len(comparisons), [samples[i] for i, _ in comparisons],
                                [samples[j] for _, j in comparisons])
    pairs = build_pairs_pairwise(len(samples), dict(zip(comparisons, verdicts, strict=True)), "all_pairs")
    # 6 comparisons; "mid length" and "same size!" are both 10 characters: [[C]] both ways, a tie.
    assert len(pairs) == 5 and verdicts[comparisons.index((2, 3))] is None
    assert all(len(samples[p["chosen"]]) > len(samples[p["rejected"]]) for p in pairs)
    # Asked in both orders; both agree for unequal lengths.
    assert labeller.costs.calls == 12 and labeller.costs.labels == 6


def test_judge_scores_and_cache_spares_a_repeat(judge_server, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("FAKE_JUDGE_KEY", "test-key")
    labeller = build_labeller(judge_cfg(judge_server, tmp_path, "score"), None)
    # The fake grades 1 + words % 10.
    assert labeller.score(["q", "q"], ["one two three", "a b c d e f g"]) == [4.0, 8.0]
    again = build_labeller(judge_cfg(judge_server, tmp_path, "score"), None)
    assert again.score(["q", "q"], ["one two three", "a b c d e f g"]) == [4.0, 8.0]
    assert again.costs.calls == 0 and again.costs.labels == 2


def test_unreachable_judge_names_the_labeller(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_JUDGE_KEY", "test-key")
    labeller = build_labeller(judge_cfg("http://127.0.0.1:9/v1", tmp_path, "score"), None)
    with pytest.raises(LabellerError, match=r"labeller=judge \(http"):
        labeller.score(["q"], ["an answer"])


def test_judge_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="labeller.judge_mode='rank'"):
        build_labeller(lcfg(name="judge", judge_mode="rank"), None)
    with pytest.raises(ConfigError, match="labeller.judge.kind"):
        build_labeller(lcfg(name="judge"), None)


def tiny_reward_model(path: Path, classifier: bool = True) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from prefopt.models import load_tokenizer

    config = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1)
    cls = LlamaForSequenceClassification if classifier else LlamaForCausalLM
    import torch

    torch.manual_seed(0)
    cls(config).save_pretrained(path)
    load_tokenizer("tiny").save_pretrained(path)
    return path


def test_reward_model_scores_with_its_classifier_head(tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = tiny_reward_model(tmp_path / "rm")
    labeller = build_labeller(lcfg(name="reward_model", path=str(path), batch_size=2), None)
    prompts, completions = ["Say hi.", "Say hi.", "Describe rain."], ["hi!", "hello there friend", "wet"]
    scores = labeller.score(prompts, completions)
    # The same model run one text at a time gives the same logits (padding changes nothing).
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        single = [model(**tokenizer(labeller.render(p, c), return_tensors="pt")).logits[0, 0].item()
                  for p, c in zip(prompts, completions, strict=True)]
    assert scores == pytest.approx(single, rel=1e-4, abs=1e-5)
    assert labeller.costs.calls == 2 and labeller.costs.labels == 3
    pairs = build_pairs(scores, "best_vs_worst", random.Random(0))
    assert pairs and pairs[0]["score_chosen"] == max(scores)


def test_a_causal_lm_is_not_a_reward_model(tmp_path):
    path = tiny_reward_model(tmp_path / "lm", classifier=False)
    with pytest.raises(ConfigError, match=r"labeller.path=.*not a sequence-classification model .*LlamaForCausalLM"):
        build_labeller(lcfg(name="reward_model", path=str(path)), None)
    with pytest.raises(ConfigError, match="labeller.path: labeller=reward_model needs"):
        build_labeller(lcfg(name="reward_model"), None)
