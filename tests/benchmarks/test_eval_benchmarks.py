"""The judged benchmarks end to end on model=tiny: MT-Bench against the fake HTTP judge (a real server process
on 127.0.0.1), MT-Bench with the local-model judge, and sentiment prompts from IMDb reviews (AlpacaEval:
test_alpaca_eval.py and test_alpaca_eval_pairwise.py)."""

from __future__ import annotations

import json

import pytest
import torch

from prefopt.benchmarks import UnknownBenchmarkError, get
from prefopt.data.registry import DataError
from prefopt.judges import LocalJudge
from prefopt.judges.prompts import parse_rating
from tests.conftest import compose
from tests.judges.test_judge_http import judge_server  # noqa: F401  (the fixture)


@pytest.fixture(scope="module")
def tiny_models():
    from prefopt.models import load_model, load_tokenizer

    tokenizer = load_tokenizer("tiny", None, False)
    reference = load_model("tiny", "float32", False).eval()
    policy = load_model("tiny", "float32", False).eval()
    # A policy that differs from its reference, so the two answer differently.
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for param in policy.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return policy, reference, tokenizer


def http_overrides(url, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_JUDGE_KEY", "test-key")
    return ["judge=http", f"benchmark.judge.base_url={url}", "benchmark.judge.model=fake-judge",
            "benchmark.judge.api_key_env=FAKE_JUDGE_KEY", f"benchmark.judge.cache_dir={tmp_path / 'judgments'}",
            "benchmark.max_new_tokens=6", "benchmark.bootstrap_samples=200"]


def test_mt_bench_with_http_judge(judge_server, tiny_models, shared_data, tmp_path, monkeypatch):  # noqa: F811
    policy, reference, tokenizer = tiny_models
    questions = [json.loads(line) for line in (shared_data / "mt_bench" / "question.jsonl").read_text().splitlines()]
    # A writing question (generic grading prompt) and a math one (graded against GPT-4's reference answer).
    picked = [q for q in questions if q["question_id"] in (81, 111)]
    qfile = tmp_path / "questions.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in picked))
    bcfg = compose(["benchmark=mt_bench", f"benchmark.prompts={qfile}",
                    f"benchmark.judge_prompts={shared_data / 'mt_bench' / 'judge_prompts.jsonl'}",
                    f"benchmark.reference_answers={shared_data / 'mt_bench' / 'reference_answer_gpt-4.jsonl'}",
                    *http_overrides(judge_server, tmp_path, monkeypatch)]).benchmark
    result = get("mt_bench")(policy, reference, tokenizer, bcfg, "<|im_end|>")
    assert result["num_questions"] == 2 and result["judged_turns"] == 4 and result["missing_reference_answers"] == 0
    assert result["judge_calls"] == 8 and result["judge_malformed"] == {"policy": 0, "reference": 0}
    items = result["items"]
    assert [(i["question_id"], i["turn"]) for i in items] == [(81, 1), (81, 2), (111, 1), (111, 2)]
    for item in items:
        for side in ("policy", "reference"):
            # The fake judge rates 1 + (words of the graded answer) % 10: each grade is the right answer's.
            assert item[f"{side}_score"] == 1 + len(item[f"{side}_answer"].split()) % 10, item
    assert result["policy_score"] == pytest.approx(sum(i["policy_score"] for i in items) / 4)
    assert result["delta"] == pytest.approx(result["policy_score"] - result["reference_score"])
    assert result["delta_ci_low"] <= result["delta"] <= result["delta_ci_high"]
    # Rerun: every judgment comes from the cache.
    again = get("mt_bench")(policy, reference, tokenizer, bcfg, "<|im_end|>")
    assert again["judge_calls"] == 0 and again["delta"] == result["delta"]


def test_mt_bench_with_local_tiny_judge(tiny_models, shared_data, tmp_path):
    """A random 2-layer model cannot follow FastChat's format: every reply is malformed, retried, counted,
    and the benchmark reports no score rather than inventing one."""
    judge = LocalJudge("tiny", max_new_tokens=8, parse_retries=1, cache_path=tmp_path / "local.jsonl")
    messages = [{"role": "user", "content": "Rate this answer from 1 to 10: [[rating]]. Answer: hello"}]
    verdict = judge.judge(messages, parse_rating)
    assert verdict.malformed and verdict.attempts == 2 and judge.calls == 2 and isinstance(verdict.reply, str)
    judge.close()
    rerun = LocalJudge("tiny", max_new_tokens=8, parse_retries=1, cache_path=tmp_path / "local.jsonl")
    again = rerun.judge(messages, parse_rating)
    assert again.reply == verdict.reply and rerun.calls == 0 and rerun._model is None  # never loaded

    policy, reference, tokenizer = tiny_models
    bcfg = compose(["benchmark=mt_bench", "judge=local", "benchmark.judge.model=tiny", "benchmark.judge.max_tokens=8",
                    "benchmark.judge.parse_retries=1", f"benchmark.judge.cache_dir={tmp_path / 'j'}",
                    f"benchmark.prompts={shared_data / 'mt_bench' / 'question.jsonl'}",
                    f"benchmark.judge_prompts={shared_data / 'mt_bench' / 'judge_prompts.jsonl'}",
                    f"benchmark.reference_answers={shared_data / 'mt_bench' / 'reference_answer_gpt-4.jsonl'}",
                    "benchmark.num_prompts=1", "benchmark.max_new_tokens=4"]).benchmark
    result = get("mt_bench")(policy, reference, tokenizer, bcfg, "<|im_end|>")
    # Nothing parsed: no score is invented, every turn is counted as malformed after its retry.
    assert result["status"] == "no_valid_judgments" and result["delta"] is None and result["n"] == 0
    assert result["judge_malformed"] == {"policy": 2, "reference": 2} and result["judge_calls"] == 8
    assert result["policy_score"] is None and all(i["policy_score"] is None for i in result["items"])


def test_judged_benchmarks_need_a_judge(tiny_models):
    policy, reference, tokenizer = tiny_models
    for name in ("mt_bench", "alpaca_eval_pairwise"):  # alpaca_eval: tests/benchmarks/test_alpaca_eval.py
        with pytest.raises(DataError, match="needs a judge"):
            get(name)(policy, reference, tokenizer, compose([f"benchmark={name}"]).benchmark, None)
    with pytest.raises(UnknownBenchmarkError, match="benchmark.name='mmlu'"):
        get("mmlu")


def test_sentiment_prompts_from_imdb_reviews(shared_data):
    from prefopt.benchmarks.sentiment import REVIEW_INSTRUCTION, prompts_from_config

    path = shared_data / "imdb" / "aclImdb_test_subset_5000.jsonl"
    bcfg = compose(["benchmark=sentiment", f"benchmark.prompts={path}", "benchmark.num_prompts=5",
                    "benchmark.prefix_words=6"]).benchmark
    prompts = prompts_from_config(bcfg)
    first = json.loads(path.read_text().splitlines()[0])["text"]
    assert len(prompts) == 5
    assert prompts[0][0]["content"] == REVIEW_INSTRUCTION + " ".join(first.split()[:6])
    assert all("<br" not in p[0]["content"] and len(p[0]["content"].split()) == 4 + 6 for p in prompts)


def test_sentiment_prompts_bad_rows_are_named(tmp_path):
    from prefopt.benchmarks.sentiment import prompts_from_config

    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"title": 3}\n')
    with pytest.raises(DataError, match="row 1 has neither"):
        prompts_from_config(compose(["benchmark=sentiment", f"benchmark.prompts={bad}"]).benchmark)


def test_unreachable_judge_does_not_lose_the_training_run(shared_data, tmp_path):
    from tests.conftest import TINY, read_summary, run_cli

    mt = shared_data / "mt_bench"
    overrides = [o for o in TINY if not o.startswith("benchmark=")] + [
        "benchmark=mt_bench", "judge=http", "benchmark.judge.base_url=http://127.0.0.1:9/v1",
        "benchmark.judge.model=x", "benchmark.judge.api_key_env=null", "benchmark.judge.max_retries=0",
        f"benchmark.judge.cache_dir={tmp_path / 'j'}", f"benchmark.prompts={mt / 'question.jsonl'}",
        f"benchmark.judge_prompts={mt / 'judge_prompts.jsonl'}",
        f"benchmark.reference_answers={mt / 'reference_answer_gpt-4.jsonl'}",
        "benchmark.num_prompts=1", "benchmark.max_new_tokens=2"]
    run_cli(overrides, tmp_path / "run")
    summary = read_summary(tmp_path / "run")
    assert summary["status"] == "completed" and summary["steps"] == 2
    assert summary["benchmark"]["status"] == "failed" and "127.0.0.1:9" in summary["benchmark"]["error"]


def test_sentiment_prompts_imdb_loads_the_hub_test_split(shared_data, monkeypatch):
    """benchmark.prompts=imdb asks the hub for stanfordnlp/imdb's test split (served here from the local
    copy of the same schema, since this machine is offline) and turns each review into a prompt."""
    import datasets

    from prefopt.benchmarks.sentiment import REVIEW_INSTRUCTION, prompts_from_config

    local = shared_data / "imdb" / "aclImdb_test_subset_5000.jsonl"
    asked = []

    def fake_load_dataset(path, split=None, **kwargs):
        asked.append((path, split))
        return datasets.Dataset.from_list([json.loads(line) for line in local.read_text().splitlines()[:10]])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    bcfg = compose(["benchmark=sentiment", "benchmark.prompts=imdb", "benchmark.num_prompts=3",
                    "benchmark.prefix_words=5"]).benchmark
    prompts = prompts_from_config(bcfg)
    assert asked == [("stanfordnlp/imdb", "test")]
    first = json.loads(local.read_text().splitlines()[0])["text"]
    assert [p[0]["content"] for p in prompts][0] == REVIEW_INSTRUCTION + " ".join(first.split()[:5])
    assert len(prompts) == 3


def test_sentiment_prompts_imdb_offline_is_one_clear_error(monkeypatch):
    import datasets

    from prefopt.benchmarks.sentiment import prompts_from_config

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'stanfordnlp/imdb' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    bcfg = compose(["benchmark=sentiment", "benchmark.prompts=imdb"]).benchmark
    with pytest.raises(DataError, match=r"benchmark.prompts='stanfordnlp/imdb': not a local file.*Offline\?"):
        prompts_from_config(bcfg)


def test_mt_bench_questions_from_the_hub_schema(shared_data, monkeypatch):
    """benchmark.prompts=HuggingFaceH4/mt_bench_prompts (rows {prompt, prompt_id, category, reference}) gives
    the same questions as FastChat's question.jsonl, with the GPT-4 reference answers taken from the rows.
    Served here from the local FastChat files rewritten into the hub's schema (this machine is offline)."""
    import datasets

    from prefopt.benchmarks.mt_bench import HUB_QUESTIONS, load_questions, load_reference_answers

    folder = shared_data / "mt_bench"
    fastchat = [json.loads(line) for line in (folder / "question.jsonl").read_text().splitlines()]
    gpt4 = {json.loads(line)["question_id"]: json.loads(line)["choices"][0]["turns"]
            for line in (folder / "reference_answer_gpt-4.jsonl").read_text().splitlines()}
    hub_rows = [{"prompt": q["turns"], "prompt_id": q["question_id"], "category": q["category"],
                 "reference": gpt4.get(q["question_id"], [])} for q in fastchat]
    asked = []

    def fake_load_dataset(path, split=None, **kwargs):
        asked.append((path, split))
        return datasets.Dataset.from_list(hub_rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    questions = load_questions(HUB_QUESTIONS, -1)
    assert asked == [(HUB_QUESTIONS, "train")]
    assert [(q["question_id"], q["category"], q["turns"]) for q in questions] == \
        [(q["question_id"], q["category"], q["turns"]) for q in fastchat]
    assert load_reference_answers(None, questions) == gpt4 and len(gpt4) == 30
    local = load_questions(str(folder / "question.jsonl"), 3)
    assert "reference" not in local[0] and load_reference_answers(None, local) == {}
