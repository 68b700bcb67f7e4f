"""``python -m prefopt.extrapolate`` (ExPO, arXiv 2404.16792) on a finished tiny run: α = 0 is the trained model bit
for bit; α = 1 is θ + (θ − θ_ref), checked by hand on a few tensors (the tied embedding among them); each α is a
run directory with model, config.yaml, summary.json and metrics.jsonl that ``analysis.load_runs`` reads; bad
input is one line naming the key or path, exit 1, nothing written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from analysis import load_runs
from tests.conftest import ROOT, TINY, read_metrics, read_summary, run_cli

SENTIMENT = ["benchmark=sentiment", "benchmark.num_prompts=2", "benchmark.max_new_tokens=4",
             "benchmark.bootstrap_samples=100"]


def extrapolate(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "prefopt.extrapolate", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    overrides = [o for o in TINY if not o.startswith("trainer.save_model")] + ["trainer.save_model=true"]
    run_cli(overrides, run_dir)
    return run_dir


@pytest.fixture(scope="module")
def expo(finished_run) -> Path:
    """The two-α CLI run (α = 0 and α = 1) with the sentiment benchmark; returns ``<run>/expo``."""
    proc = extrapolate([f"run_dir={finished_run}", "alpha=0,1", *SENTIMENT])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return finished_run / "expo"


def params(path: Path) -> dict[str, torch.Tensor]:
    from prefopt.models import load_model

    return {n: p.detach() for n, p in load_model(str(path), "float32").named_parameters()}


def test_alpha_zero_is_the_trained_model(finished_run, expo):
    trained, zero = params(finished_run / "model"), params(expo / "alpha=0.0" / "model")
    assert trained.keys() == zero.keys()
    for name, value in trained.items():
        assert torch.equal(zero[name], value), name


def test_alpha_one_doubles_the_update(finished_run, expo):
    """θ_expo = θ + 1·(θ − θ_ref), θ_ref the tiny model the run started from; recomputed by hand."""
    from prefopt.models import load_model

    theta, start = params(finished_run / "model"), params(Path(_start_path()))
    model = load_model(str(expo / "alpha=1.0" / "model"), "float32")
    one = {n: p.detach() for n, p in model.named_parameters()}
    names = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight",
             "model.norm.weight"]
    assert any(not torch.equal(theta[n], start[n]) for n in names), "training moved none of the checked tensors"
    for name in names:
        by_hand = theta[name] + (theta[name] - start[name])
        torch.testing.assert_close(one[name], by_hand, rtol=0, atol=1e-6, msg=name)
    # The LM head is tied to the embedding: one tensor, extrapolated once (not twice).
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(model.lm_head.weight.detach(), theta["model.embed_tokens.weight"] * 2
                               - start["model.embed_tokens.weight"], rtol=0, atol=1e-6)


def _start_path() -> str:
    from prefopt.models import resolve_model_path

    return resolve_model_path("tiny")


def test_each_alpha_is_a_run_directory(finished_run, expo):
    source = read_summary(finished_run)
    for alpha in (0.0, 1.0):
        run_dir = expo / f"alpha={alpha}"
        assert (run_dir / "model" / "config.json").is_file()
        assert (run_dir / "benchmark_sentiment.jsonl").is_file()
        summary = read_summary(run_dir)
        assert summary["status"] == "completed" and summary["expo"]["alpha"] == alpha
        assert summary["source_run"] == str(finished_run.resolve()) == summary["expo"]["source_run"]
        assert summary["tags"]["expo_alpha"] == alpha and summary["losses"] == source["losses"]
        assert summary["benchmark"]["name"] == "sentiment" and summary["benchmarks"]["sentiment"]["n"] == 2
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["expo"] == {"alpha": alpha, "source_run": str(finished_run.resolve())}
        assert config["tags"]["expo_alpha"] == alpha and config["model"]["name_or_path"] == "tiny"
        [record] = read_metrics(run_dir)
        assert record["split"] == "benchmark" and record["delta"] == summary["benchmark"]["delta"]
    assert not any(p.name.startswith(".") for p in expo.iterdir())  # no temp directory left behind

    runs = load_runs(expo)
    assert len(runs) == 2 and set(runs["status"]) == {"completed"} and runs.attrs["skipped"] == []
    assert set(runs["loss"]) == {"dpo"} and set(runs["model"]) == {"tiny"}
    assert runs["sentiment/delta"].notna().all() and runs["sentiment/kl_estimate"].notna().all()
    assert sorted(runs["expo_alpha"]) == [0.0, 1.0]
    assert set(runs["expo_source"]) == {str(finished_run.resolve())}
    # From the source run, the walk finds the run itself and the runs extrapolated from it.
    both = load_runs(finished_run)
    assert len(both) == 3 and sorted(both["expo_alpha"].dropna()) == [0.0, 1.0]


def copy_run(finished_run: Path, tmp_path: Path, *, model: bool = True) -> Path:
    ignore = ["expo"] + ([] if model else ["model"])
    dest = tmp_path / "run"
    shutil.copytree(finished_run, dest, ignore=shutil.ignore_patterns(*ignore))
    return dest


def assert_one_line(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("prefopt.extrapolate: ")]
    assert len(lines) == 1 and needle in lines[0], proc.stderr[-3000:]


@pytest.mark.parametrize("alpha_args, needle", [
    (["alpha=-1"], "alpha=-1: -1.0 must be a finite number > -1"),
    (["alpha=0.3,-2"], "alpha=0.3,-2: -2.0 must be a finite number > -1"),
    ([], "alpha: missing"),
    (["alpha=0.3,abc"], "alpha=0.3,abc: 'abc' is not a number"),
    (["alpha="], "alpha=: '' is not a number"),
    (["alpha=nan"], "alpha=nan: nan must be a finite number > -1"),
    (["alpha=0.1", "alpha=0.3"], "alpha: given 2 times (alpha=0.1, alpha=0.3)"),
    (["alpha=0.3,0.30"], "alpha=0.3,0.30: 0.3 given twice"),
])
def test_bad_alpha_is_one_line(finished_run, tmp_path, alpha_args, needle):
    run_dir = copy_run(finished_run, tmp_path)
    assert_one_line(extrapolate([f"run_dir={run_dir}", *alpha_args, *SENTIMENT]), needle)
    assert not (run_dir / "expo").exists()


def test_run_without_saved_model_is_one_line(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path, model=False)
    before = sorted(run_dir.rglob("*"))
    assert_one_line(extrapolate([f"run_dir={run_dir}", "alpha=0.3", *SENTIMENT]), f"no saved model in {run_dir}/model")
    assert sorted(run_dir.rglob("*")) == before


def test_missing_starting_model_is_one_line(finished_run, tmp_path):
    """The model the run started from has moved away since: one line naming the key and the path."""
    run_dir = copy_run(finished_run, tmp_path)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["model"]["name_or_path"] = "/nonexistent/start"
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    assert_one_line(extrapolate([f"run_dir={run_dir}", "alpha=0.3", *SENTIMENT]),
                    "model.name_or_path='/nonexistent/start': cannot load model")
    assert not (run_dir / "expo").exists()


def test_not_a_run_directory_is_one_line(tmp_path):
    assert_one_line(extrapolate([f"run_dir={tmp_path}", "alpha=0.3", *SENTIMENT]),
                    f"run_dir={tmp_path}: no config.yaml")
    assert list(tmp_path.iterdir()) == []


def test_failed_alpha_leaves_earlier_alphas_whole_and_nothing_of_itself(finished_run, tmp_path, monkeypatch):
    """The benchmark of the second α fails: the first α's directory is complete, the second's does not exist."""
    from prefopt import extrapolate as expo_module
    from prefopt.benchmarks import runner
    from prefopt.benchmarks.runner import benchmark_config
    from prefopt.errors import PrefoptError

    run_dir = copy_run(finished_run, tmp_path)
    calls = []

    def flaky(bcfg, policy, reference, tokenizer, eot, out_dir):
        calls.append(out_dir)
        if len(calls) == 2:
            raise PrefoptError("judge went away")
        return {"name": "sentiment", "delta": 0.5}

    monkeypatch.setattr(runner, "run_benchmark", flaky)
    with pytest.raises(PrefoptError, match="judge went away"):
        expo_module.extrapolate_run(run_dir, [0.5, 2.0], benchmark_config(SENTIMENT))
    assert sorted(p.name for p in (run_dir / "expo").iterdir()) == ["alpha=0.5"]
    done = run_dir / "expo" / "alpha=0.5"
    assert json.loads((done / "summary.json").read_text())["benchmark"] == {"name": "sentiment", "delta": 0.5}
    assert (done / "model" / "model.safetensors").is_file() and (done / "metrics.jsonl").is_file()
