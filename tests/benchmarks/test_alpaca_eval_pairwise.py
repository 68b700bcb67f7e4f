"""benchmark=alpaca_eval_pairwise (FastChat's pair-v2 judge against a reference output set, not AlpacaEval's
evaluation) end to end on model=tiny against the fake HTTP judge, and its default data from the hub."""

from __future__ import annotations

import json

import pytest

from prefopt.benchmarks import get
from prefopt.benchmarks.alpaca_data import AE1_SET, HUB_REPO
from prefopt.data.registry import DataError
from tests.benchmarks.test_alpaca_data import serve_hub
from tests.benchmarks.test_eval_benchmarks import http_overrides, tiny_models  # noqa: F401  (the fixture)
from tests.conftest import compose
from tests.judges.test_judge_http import judge_server  # noqa: F401  (the fixture)


def test_alpaca_eval_pairwise_with_http_judge(judge_server, tiny_models, shared_data, tmp_path,  # noqa: F811
                                              monkeypatch):
    policy, reference, tokenizer = tiny_models
    data = shared_data / "alpaca_eval"
    bcfg = compose(["benchmark=alpaca_eval_pairwise",
                    f"benchmark.prompts={data / 'text_davinci_003_model_outputs.json'}",
                    f"benchmark.reference_outputs={data / 'text_davinci_003_model_outputs.json'}",
                    f"benchmark.judge_prompts={shared_data / 'mt_bench' / 'judge_prompts.jsonl'}",
                    "benchmark.num_prompts=6", *http_overrides(judge_server, tmp_path, monkeypatch)]).benchmark
    result = get("alpaca_eval_pairwise")(policy, reference, tokenizer, bcfg, "<|im_end|>")
    items = result["items"]
    assert result["name"] == "alpaca_eval_pairwise"
    assert len(items) == 6 and {i["model_first"] for i in items} == {True, False}  # both positions used
    # The fake judge prefers the longer answer; text_davinci_003's answers are far longer than 6 tiny
    # tokens, so the reference output set wins everywhere, whichever side the model was shown on.
    assert all(i["policy_preference"] == 1.0 and i["reference_preference"] == 1.0 for i in items)
    assert result["policy_win_rate"] == 0.0 and result["policy_n_total"] == 6 and result["policy_n_wins_base"] == 6
    assert result["delta"] == 0.0 and result["judge_calls"] == 12
    # The baseline's outputs are kept beside both models' (not overwritten by the reference model's).
    texts = {r["instruction"]: r["output"] for r in json.loads(
        (data / "text_davinci_003_model_outputs.json").read_text())}
    assert all(i["baseline_output"] == texts[i["instruction"]] != i["reference_output"] for i in items)


def test_defaults_to_the_hub_alpaca_eval_1_set(shared_data, monkeypatch):
    """With no path given, the instructions and the text_davinci_003 outputs come from the hub dataset's
    alpaca_eval.json (served here from a local file of the same schema)."""
    from prefopt.benchmarks.alpaca_eval_pairwise import load_instructions, load_reference_outputs

    bcfg = compose(["benchmark=alpaca_eval_pairwise"]).benchmark
    assert bcfg.prompts == bcfg.reference_outputs == f"{HUB_REPO}/{AE1_SET}"
    asked = serve_hub(monkeypatch, {AE1_SET: shared_data / "alpaca_eval" / "text_davinci_003_model_outputs.json"})
    instructions = load_instructions(bcfg.prompts, 3, default_file=AE1_SET)
    outputs, generator = load_reference_outputs(bcfg.reference_outputs, instructions, default_file=AE1_SET)
    assert len(instructions) == 3 and generator == "text_davinci_003" and all(outputs)
    assert asked == [(HUB_REPO, AE1_SET, "dataset")] * 2
    # FastChat's prompts are not on the hub: without the file the run stops before generating anything.
    judged = compose(["benchmark=alpaca_eval_pairwise", "judge=local"]).benchmark
    with pytest.raises(DataError, match=r"benchmark.judge_prompts: required \(FastChat's judge_prompts.jsonl"):
        get("alpaca_eval_pairwise")(None, None, None, judged, None)
