"""The benchmark registry: built-ins imported on first use, plug-ins registered with @register_benchmark from
the user's own module (tests/plugins_example/my_benchmark.py) and selected as benchmark=<name> with no YAML."""

from __future__ import annotations

import subprocess
import sys

import pytest

from prefopt import benchmarks
from prefopt.benchmarks import UnknownBenchmarkError, register_benchmark
from tests.conftest import ROOT, compose, read_summary, run_cli

MODULE = "tests.plugins_example.my_benchmark"


def test_builtins_are_known_and_say_whether_they_need_a_judge():
    assert {"sentiment", "mt_bench", "alpaca_eval"} <= set(benchmarks.names())
    assert callable(benchmarks.get("sentiment"))
    assert [benchmarks.spec(n).needs_judge for n in ("sentiment", "mt_bench")] == [False, True]
    assert benchmarks.spec("sentiment").builtin


def test_unknown_benchmark_lists_the_known_ones():
    with pytest.raises(UnknownBenchmarkError, match=r"benchmark.name='sentimnet': known: none, .*alpaca_eval, "
                                                    r".*mt_bench, .*sentiment"):
        benchmarks.get("sentimnet")


@pytest.mark.parametrize("name", ["sentiment", "none", "preference"])
def test_a_builtin_or_reserved_name_cannot_be_registered_again(name):
    with pytest.raises(ValueError, match=f"benchmark name '{name}' is already registered"):
        register_benchmark(name)(lambda *args: {})


def test_sentiment_imports_no_judge():
    code = ("import sys, prefopt.benchmarks as b; b.get('sentiment'); "
            "print(sorted(m for m in sys.modules if m.startswith(('prefopt.judges', 'prefopt.benchmarks.'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['prefopt.benchmarks.sentiment']"


def test_plugin_benchmark_composes_as_an_option_without_a_yaml():
    from prefopt.config import register_configs

    register_configs([MODULE])
    assert "length" in benchmarks.names() and not benchmarks.spec("length").builtin
    cfg = compose([f"loss_modules=[{MODULE}]", "benchmark=length", "benchmark.num_prompts=3"])
    # Only the name comes from the option; every other key is the schema's default (or an override).
    assert (cfg.benchmark.name, cfg.benchmark.num_prompts, cfg.benchmark.max_new_tokens) == ("length", 3, 40)
    with pytest.raises(ValueError, match="benchmark name 'length' is already registered"):
        register_benchmark("length")(lambda *args: {})


@pytest.mark.slow
def test_plugin_benchmark_runs_after_training_and_on_the_saved_run_through_the_clis(tmp_path):
    run_dir = tmp_path / "run"
    run_cli(["model=tiny", "trainer.max_steps=2", "trainer.progress_bar=false", "trainer.save_model=true",
             "epochs=1", f"loss_modules=[{MODULE}]", "benchmark=length", "benchmark.num_prompts=4",
             "benchmark.max_new_tokens=4", "benchmark.bootstrap_samples=100"], run_dir)
    summary = read_summary(run_dir)
    result = summary["benchmark"]
    assert result["name"] == "length" and result["num_prompts"] == 4
    assert 0 <= result["policy_mean_tokens"] <= 4 and "delta" in result
    assert (run_dir / "benchmark_length.jsonl").read_text().count("\n") == 4
    # prefopt.evaluate on the saved model, with the same plug-in module and other settings.
    proc = subprocess.run([sys.executable, "-m", "prefopt.evaluate", f"run_dir={run_dir}", f"loss_modules=[{MODULE}]",
                           "benchmark=length", "benchmark.num_prompts=2", "benchmark.max_new_tokens=3",
                           "benchmark.bootstrap_samples=100"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_summary(run_dir)["benchmarks"]["length"]["num_prompts"] == 2
