"""benchmark=alpaca_eval, the official evaluation through the alpaca_eval package: the leaderboard's raw figure
from the real GPT-4 annotations replayed through the package's annotator, the LC win rate equal to the
package's own function on a df_gamed.csv served through a patched hub download, the one-line offline notice,
and a tiny-model run judged by a fake OpenAI-compatible log-prob judge on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from prefopt import benchmarks
from prefopt.benchmarks import alpaca_eval as ae
from prefopt.benchmarks.alpaca_data import HUB_REPO, LC_DIFFICULTIES
from prefopt.data.registry import DataError
from prefopt.errors import ConfigError
from tests.benchmarks.test_alpaca_data import serve_hub
from tests.conftest import ROOT, compose
from tests.judges.test_judge_http import judge_server, server_stats  # noqa: F401  (the fixture)

ZEPHYR = "zephyr-7b-beta_vs_text_davinci_003_alpaca_eval_gpt4_annotations.json"
UNREACHABLE = "http://127.0.0.1:9/v1"  # the discard port: any request fails at once


def bcfg_for(tmp_path, *extra, base_url=UNREACHABLE):
    return compose(["benchmark=alpaca_eval", "judge=http", f"benchmark.judge.base_url={base_url}",
                    "benchmark.judge.api_key_env=null", "benchmark.judge.max_retries=0",
                    f"benchmark.judge.cache_dir={tmp_path / 'judgments'}", "benchmark.bootstrap_samples=200",
                    *extra]).benchmark


def zephyr_annotations(shared_data) -> list[dict]:
    return json.loads((shared_data / "alpaca_eval" / ZEPHYR).read_text())


def zephyr_frame(annotations) -> pd.DataFrame:
    return pd.DataFrame({"instruction": [a["instruction"] for a in annotations],
                         "output_1": [a["output_1"] for a in annotations],
                         "output_2": [a["output_2"] for a in annotations],
                         "generator_1": "text_davinci_003", "generator_2": "zephyr-7b-beta",
                         "annotator": "alpaca_eval_gpt4",
                         "preference": [np.nan if a["preference"] is None else float(a["preference"])
                                        for a in annotations]})


def write_df_gamed(path, n=805, seed=0):
    """A file of df_gamed.csv's schema (what alpaca_eval.metrics.glm_winrate reads: model, index,
    instruction_difficulty, preference in [0, 1], std_delta_len, not_gamed_baseline): two length-gamed
    baselines, a verbose one (longer than the baseline, Δlen > 0) and a concise one (Δlen < 0), whose
    preference follows the paper's GLM with made-up weights (θ=1, difficulty weight 1)."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(size=n)
    rows = []
    for model, sign in (("gamed_verbose", 1.0), ("gamed_concise", -1.0)):
        delta = sign * np.abs(rng.normal(size=n))
        p = 1 / (1 + np.exp(-(np.tanh(delta) + difficulty)))
        rows += [{"model": model, "index": i, "preference": p[i], "std_delta_len": delta[i],
                  "instruction_difficulty": difficulty[i], "not_gamed_baseline": False} for i in range(n)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_leaderboard_figure_through_the_package_annotator(shared_data, tmp_path):
    """The real GPT-4 annotations of zephyr-7b-beta vs text_davinci_003 are put in the package annotator's cache
    (nulls as -1, the package's mark for "annotated, no valid preference"), and the benchmark's judging path
    runs against an endpoint that cannot answer: every judgment comes from the cache, and the package's
    get_winrate gives the leaderboard's 90.5978 (SE 1.0287): (727·100 + 1·50 + 75·0) / 803 = 90.5978.
    The reference side answers with the baseline's own outputs, which the package scores a draw (1.5)
    without asking the judge: 50.0 exactly, so the paired delta over the 803 valid rows is 90.5978 − 50."""
    annotations = zephyr_annotations(shared_data)
    bcfg = bcfg_for(tmp_path, "benchmark.annotator=alpaca_eval_gpt4")
    endpoint = ae.check(bcfg)
    cache = ae.annotation_cache(bcfg, endpoint)
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps([{**a, "preference": -1 if a["preference"] is None else float(a["preference"])}
                                 for a in annotations]))
    instructions = [a["instruction"] for a in annotations]
    baseline = [a["output_1"] for a in annotations]
    outputs = {"policy": [a["output_2"] for a in annotations], "reference": baseline}
    result = ae.evaluate_outputs(bcfg, endpoint, instructions, baseline, "text_davinci_003", outputs, None)
    assert result["policy_win_rate"] == pytest.approx(90.5978, abs=5e-5)
    assert result["policy_standard_error"] == pytest.approx(1.0287, abs=5e-5)
    assert (result["policy_n_wins"], result["policy_n_wins_base"], result["policy_n_draws"],
            result["policy_n_total"], result["policy_n_invalid"]) == (727, 75, 1, 803, 2)
    assert result["reference_win_rate"] == 50.0 and result["reference_n_draws"] == 805
    assert result["n"] == 803 and result["delta"] == pytest.approx(72750 / 803 - 50, abs=1e-9)
    assert result["policy_length_controlled_winrate"] is None and result["lc_delta"] is None
    assert [i["policy_preference"] for i in result["items"]].count(None) == 2
    # The same figure as prefopt's own arithmetic (prefopt.stats, checked in tests/benchmarks/test_stats.py).
    assert ae.win_rates(zephyr_frame(annotations), None)["win_rate"] == pytest.approx(72750 / 803, abs=1e-9)


def test_length_controlled_win_rate_equals_the_packages_function(shared_data, tmp_path, monkeypatch):
    """df_gamed.csv (built here in its schema) is served through a patched hub download, as the package gets
    it; prefopt's LC figure equals alpaca_eval.metrics.get_length_controlled_winrate's on the same
    annotations and file, whether the file comes from the hub or from benchmark.lc_difficulties, and the
    package's download function is left as it was."""
    ae.import_package()
    from alpaca_eval.metrics import glm_winrate

    gamed = write_df_gamed(tmp_path / "df_gamed_copy.csv")
    asked = serve_hub(monkeypatch, {LC_DIFFICULTIES: gamed})
    path, why = ae.lc_difficulties(bcfg_for(tmp_path), 805)
    assert (path, why) == (gamed, None) and asked == [(HUB_REPO, LC_DIFFICULTIES, "dataset")]
    local, _ = ae.lc_difficulties(bcfg_for(tmp_path, f"benchmark.lc_difficulties={gamed}"), 805)
    assert local == gamed and len(asked) == 1  # a local copy asks the hub nothing

    annotations = zephyr_annotations(shared_data)
    original = glm_winrate.hf_hub_download
    ours = ae.win_rates(zephyr_frame(annotations), path)
    assert glm_winrate.hf_hub_download is original
    monkeypatch.setattr(glm_winrate, "hf_hub_download", lambda **kwargs: str(gamed))
    theirs = glm_winrate.get_length_controlled_winrate(zephyr_frame(annotations), save_weights_dir=None)
    assert ours["length_controlled_winrate"] == pytest.approx(theirs["length_controlled_winrate"], rel=1e-12)
    assert ours["lc_standard_error"] == pytest.approx(theirs["lc_standard_error"], rel=1e-12)
    assert ours["win_rate"] == pytest.approx(90.5978, abs=5e-5)
    # Not the raw figure: the GLM moved it (the synthetic baselines make length count).
    assert 0 < ours["length_controlled_winrate"] < 100 and ours["length_controlled_winrate"] != ours["win_rate"]
    print(f"LC on the synthetic df_gamed.csv: {ours['length_controlled_winrate']:.4f} "
          f"(SE {ours['lc_standard_error']:.4f}), raw {ours['win_rate']:.4f} (SE {ours['standard_error']:.4f})")


def test_bad_difficulties_files_are_named(tmp_path):
    bad = tmp_path / "df_gamed.csv"
    bad.write_text("model,index,preference\nx,0,0.5\n")
    with pytest.raises(DataError, match=r"benchmark.lc_difficulties=.*no column 'instruction_difficulty'"):
        ae.lc_difficulties(bcfg_for(tmp_path, f"benchmark.lc_difficulties={bad}"), 1)
    short = write_df_gamed(tmp_path / "short.csv", n=3)
    with pytest.raises(DataError, match="first 5 rows must each hold a different instruction 'index'"):
        ae.lc_difficulties(bcfg_for(tmp_path, f"benchmark.lc_difficulties={short}"), 5)
    with pytest.raises(DataError, match="benchmark.lc_difficulties='/nowhere.csv': file not found"):
        ae.lc_difficulties(bcfg_for(tmp_path, "benchmark.lc_difficulties=/nowhere.csv"), 5)


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


def test_tiny_run_with_a_log_prob_judge_and_lc(judge_server, tiny_models, shared_data, tmp_path,  # noqa: F811
                                               monkeypatch):
    """The default annotator (weighted_alpaca_eval_gpt4_turbo: its prompt, order randomization and log-prob
    parser) against the fake judge, which says P(first shown wins) = len(first) / (len(first) + len(second)).
    Whichever order the package showed, the preference is then 1 + len(model) / (len(model) + len(baseline)),
    checked per item; a rerun is served from the cache without a request."""
    monkeypatch.setenv("FAKE_JUDGE_KEY", "test-key")
    policy, reference, tokenizer = tiny_models
    gamed = write_df_gamed(tmp_path / "df_gamed.csv")
    outputs_file = shared_data / "alpaca_eval" / "gpt4_1106_preview_model_outputs.json"
    bcfg = bcfg_for(tmp_path, "benchmark.judge.api_key_env=FAKE_JUDGE_KEY", "benchmark.judge.model=fake-judge",
                    f"benchmark.prompts={outputs_file}", f"benchmark.reference_outputs={outputs_file}",
                    f"benchmark.lc_difficulties={gamed}", "benchmark.num_prompts=4", "benchmark.max_new_tokens=6",
                    base_url=judge_server)
    before = server_stats(judge_server)["requests"]
    result = benchmarks.get("alpaca_eval")(policy, reference, tokenizer, bcfg, "<|im_end|>")
    assert server_stats(judge_server)["requests"] - before == 8  # 4 instructions x 2 models, one request each
    assert result["annotator"] == "weighted_alpaca_eval_gpt4_turbo" and result["reference_outputs"] == "gpt4_1106_preview"
    for item in result["items"]:
        for side in ("policy", "reference"):
            model, base = len(item[f"{side}_output"]), len(item["baseline_output"])
            assert item[f"{side}_preference"] == pytest.approx(1 + model / (model + base), abs=1e-9), item
    prefs = [100 * (i["policy_preference"] - 1) for i in result["items"]]
    assert result["policy_win_rate"] == pytest.approx(np.mean(prefs), abs=1e-9)
    assert result["policy_standard_error"] == pytest.approx(np.std(prefs, ddof=1) / 2, abs=1e-9)
    assert result["policy_length_controlled_winrate"] is not None and "lc_unavailable" not in result
    assert result["delta"] == pytest.approx(result["policy_win_rate"] - result["reference_win_rate"], abs=1e-9)
    again = benchmarks.get("alpaca_eval")(policy, reference, tokenizer, bcfg, "<|im_end|>")
    assert server_stats(judge_server)["requests"] - before == 8
    assert again["delta"] == pytest.approx(result["delta"], rel=1e-12)  # cached with 15 significant digits


def test_offline_lc_is_one_line_before_judging_and_raw_only(judge_server, tiny_models, shared_data,  # noqa: F811
                                                             tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("FAKE_JUDGE_KEY", "test-key")
    serve_hub(monkeypatch, {})  # offline: the hub has nothing
    policy, reference, tokenizer = tiny_models
    outputs_file = shared_data / "alpaca_eval" / "gpt4_1106_preview_model_outputs.json"
    bcfg = bcfg_for(tmp_path, "benchmark.judge.api_key_env=FAKE_JUDGE_KEY", f"benchmark.prompts={outputs_file}",
                    f"benchmark.reference_outputs={outputs_file}", "benchmark.num_prompts=2",
                    "benchmark.max_new_tokens=4", base_url=judge_server)
    notices_when_judged = []
    real_annotate = ae.annotate

    def annotate(*args, **kwargs):
        notices_when_judged.append([r for r in caplog.records if LC_DIFFICULTIES in r.getMessage()])
        return real_annotate(*args, **kwargs)

    monkeypatch.setattr(ae, "annotate", annotate)
    with caplog.at_level(logging.WARNING, logger="prefopt.benchmarks.alpaca_eval"):
        result = benchmarks.get("alpaca_eval")(policy, reference, tokenizer, bcfg, "<|im_end|>")
    # One line, logged before the first judgment, naming the file and the key that points at a local copy.
    assert [len(n) for n in notices_when_judged] == [1, 1]
    (notice,) = notices_when_judged[0]
    message = notice.getMessage()
    assert "\n" not in message and "raw win rate only" in message and "benchmark.lc_difficulties" in message
    assert "Offline?" in message and HUB_REPO in message
    assert result["policy_length_controlled_winrate"] is None and result["lc_delta"] is None
    assert LC_DIFFICULTIES in result["lc_unavailable"] and result["policy_win_rate"] is not None


def test_refusals_before_anything_loads(tmp_path, monkeypatch):
    spec = benchmarks.spec("alpaca_eval")
    assert spec.needs_judge
    with pytest.raises(ConfigError, match="benchmark=alpaca_eval needs a judge"):
        spec.check_config(compose(["benchmark=alpaca_eval"]).benchmark)
    local = compose(["benchmark=alpaca_eval", "judge=local"]).benchmark
    with pytest.raises(ConfigError, match="needs judge=http .*benchmark=alpaca_eval_pairwise"):
        spec.check_config(local)
    with pytest.raises(ConfigError, match="benchmark.judge.base_url: required"):
        spec.check_config(compose(["benchmark=alpaca_eval", "judge=http"]).benchmark)
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(ConfigError, match="api_key_env=NO_SUCH_KEY_VAR: the environment variable is not set"):
        spec.check_config(bcfg_for(tmp_path, "benchmark.judge.api_key_env=NO_SUCH_KEY_VAR"))
    with pytest.raises(ConfigError, match="benchmark.annotator='gpt5_judge': not an alpaca_eval annotator .*"
                                          "weighted_alpaca_eval_gpt4_turbo"):
        spec.check_config(bcfg_for(tmp_path, "benchmark.annotator=gpt5_judge"))
    with pytest.raises(ConfigError, match="'claude' calls 'anthropic_completions', not an OpenAI-compatible"):
        spec.check_config(bcfg_for(tmp_path, "benchmark.annotator=claude"))
    spec.check_config(bcfg_for(tmp_path))  # the default annotator, an endpoint, no key needed (null)


def test_unreachable_judge_is_a_judge_error(tmp_path):
    from prefopt.judges import JudgeError

    bcfg = bcfg_for(tmp_path)
    with pytest.raises(JudgeError, match=r"benchmark=alpaca_eval: the judge at http://127.0.0.1:9/v1 failed: "
                                         r"APIConnectionError"):
        ae.annotate(bcfg, ae.check(bcfg), ["Say hi."], ["Hello there!"], ["hi"])


def test_the_package_imports_without_pkg_resources_and_leaves_logging_alone():
    code = ("import logging, sys; logging.getLogger().setLevel(logging.ERROR); "
            "from prefopt.benchmarks.alpaca_eval import import_package; import_package(); "
            "import alpaca_eval.annotators; "
            "print(logging.getLogger().level, getattr(sys.modules.get('pkg_resources'), '__file__', 'absent'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    level, pkg_resources = out.stdout.split()
    # No stand-in left behind: either setuptools' real module (it has a file) or none at all.
    assert int(level) == logging.ERROR and (pkg_resources == "absent" or pkg_resources.endswith(".py"))


def test_training_refuses_a_config_it_could_not_benchmark(tmp_path):
    """The check runs when the run is set up: a judge the benchmark cannot use stops the run before a step
    (and before any model loads), not after training."""
    from tests.conftest import TINY, run_cli

    overrides = [o for o in TINY if not o.startswith("benchmark=")] + ["benchmark=alpaca_eval", "judge=local"]
    proc = run_cli(overrides, tmp_path / "run", check=False)
    assert proc.returncode != 0 and "needs judge=http" in proc.stderr
    assert not any((tmp_path / "run" / name).exists() for name in ("metrics.jsonl", "summary.json", "config.yaml"))
