"""The Zephyr recipe: its configs carry the published hyperparameters, and the one-command pipeline runs
dSFT then both dDPO variants (one multirun) from the SFT checkpoint, at tiny scale on real UltraFeedback
rows from ../shared/data."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from tests.conftest import ROOT, compose, read_summary


def test_ddpo_config_is_zephyr_7b_beta():
    cfg = compose(["experiment=zephyr_ddpo", "model.name_or_path=/ckpt"])
    assert cfg.beta == 0.1 and list(cfg.loss) == ["dpo"] and cfg.loss.dpo.beta == 0.1
    assert cfg.optimizer.lr == 5e-7 and cfg.optimizer.scheduler == "linear" and cfg.optimizer.warmup_ratio == 0.1
    assert (cfg.dataset.max_length, cfg.dataset.max_prompt_length) == (1024, 512)
    assert cfg.trainer.batch_size * cfg.trainer.grad_accum == 128  # 8 per device x 2 accumulation x 8 GPUs
    assert cfg.reference.kind == "frozen"  # the SFT checkpoint, frozen, is the reference
    assert cfg.dataset.name == "ultrafeedback_binarized"
    assert (cfg.dataset.path, cfg.dataset.train_split, cfg.dataset.eval_split) == (
        "HuggingFaceH4/ultrafeedback_binarized", "train_prefs", "test_prefs")
    # Alone it is Zephyr-beta: 3 epochs and beta's filter set.
    assert cfg.epochs == 3 and cfg.tags.variant == "zephyr_beta" and "zephyr_beta" in cfg.dataset.filters


def test_ddpo_requires_the_sft_checkpoint(tmp_path):
    from prefopt.train import ConfigError, run

    cfg = compose(["experiment=zephyr_ddpo"])
    with pytest.raises(MissingMandatoryValue, match="model.name_or_path"):
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    with pytest.raises(ConfigError, match=r"model.name_or_path: required, but not set"):
        run(cfg, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_dsft_config_is_the_handbook_recipe():
    cfg = compose(["experiment=zephyr_dsft"])
    assert list(cfg.loss) == ["sft"] and cfg.reference.kind == "none"
    assert cfg.dataset.name == "ultrachat_200k" and cfg.dataset.path == "HuggingFaceH4/ultrachat_200k"
    assert (cfg.dataset.train_split, cfg.dataset.eval_split, cfg.dataset.max_length) == ("train_sft", "test_sft", 2048)
    assert cfg.optimizer.lr == 2e-5 and cfg.optimizer.scheduler == "cosine" and cfg.epochs == 1
    assert cfg.trainer.batch_size * cfg.trainer.grad_accum == 128
    assert cfg.model.name_or_path == "mistralai/Mistral-7B-v0.1"


@pytest.mark.parametrize(("variant", "epochs", "filters"), [
    ("zephyr_alpha", 1, ["empty"]),
    ("zephyr_beta", 3, ["empty", "identical", "zephyr_beta"]),
])
def test_variants_set_epochs_filters_and_tag(variant, epochs, filters):
    cfg = compose(["experiment=zephyr_ddpo", f"variant={variant}", "model.name_or_path=/ckpt"])
    assert cfg.epochs == epochs and list(cfg.dataset.filters) == filters and cfg.tags.variant == variant
    # The command line still wins over a variant.
    assert compose(["experiment=zephyr_ddpo", f"variant={variant}", "model.name_or_path=/c", "epochs=2"]).epochs == 2


@pytest.mark.slow
def test_pipeline_dsft_then_both_ddpo_variants(shared_data, tmp_path):
    uf = shared_data / "ultrafeedback"
    train, evalf = uf / "uf_binarized_h4schema_train_1000.jsonl", uf / "uf_binarized_h4schema_eval_200.jsonl"
    out = tmp_path / "zephyr"
    small = ["model=tiny", "benchmark=none", "trainer.progress_bar=false", "trainer.max_steps=2",
             "trainer.batch_size=4", "trainer.grad_accum=1", "trainer.eval_batch_size=16", "trainer.eval_every=0",
             "dataset.max_length=128", "dataset.max_prompt_length=64", "dataset.max_train_rows=200",
             "dataset.max_eval_rows=16", f"dataset.path={train}", f"dataset.eval_path={evalf}",
             f"dataset.cache_dir={tmp_path / 'tok'}"]
    cmd = [sys.executable, "experiments/zephyr_pipeline.py", "--out", str(out), *small,
           "--dpo", "trainer.save_model=false"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    record = json.loads((out / "pipeline.json").read_text())
    assert record["stages"]["dsft"]["status"] == "completed" and record["stages"]["ddpo"]["status"] == "completed"
    sft = read_summary(out / "dsft")
    assert sft["status"] == "completed" and list(sft["losses"]) == ["sft"] and sft["steps"] == 2
    assert sft["tags"]["stage"] == "dsft" and sft["data"]["counts"]["train"]["rows_loaded"] == 200
    assert (out / "dsft" / "model" / "model.safetensors").is_file()

    runs = {read_summary(p.parent)["tags"]["variant"]: p.parent for p in (out / "ddpo").glob("*/summary.json")}
    assert set(runs) == {"zephyr_alpha", "zephyr_beta"}
    for variant, epochs in (("zephyr_alpha", 1), ("zephyr_beta", 3)):
        summary = read_summary(runs[variant])
        config = yaml.safe_load((runs[variant] / "config.yaml").read_text())
        assert summary["status"] == "completed" and summary["steps"] == 2 and list(summary["losses"]) == ["dpo"]
        assert config["model"]["name_or_path"] == str(out / "dsft" / "model")  # the SFT checkpoint is passed on
        assert config["reference"]["kind"] == "frozen" and config["epochs"] == epochs and config["beta"] == 0.1
        counts = summary["data"]["counts"]["train"]
        assert counts["rows_loaded"] == 200 and counts["rows_kept"] == summary["data"]["train_rows"]
        assert counts["truncated_prompt"] > 0 and counts["truncated_chosen"] > 0  # the real rows are long
        assert summary["eval"]["eval/loss"] > 0 and "eval/rewards/accuracies" in summary["eval"]
    # Every training row is accounted for: loaded = filtered + tokenized, and beta's filters did drop rows.
    dropped = {}
    for variant, run in runs.items():
        counts = read_summary(run)["data"]["counts"]["train"]
        dropped[variant] = sum(v for k, v in counts.items() if k.startswith("filtered_"))
        assert counts["rows_loaded"] == dropped[variant] + counts["rows_in"]
    assert dropped["zephyr_beta"] > dropped["zephyr_alpha"]

    # The sweep tokenizes once: beta's filters leave these 16 eval rows alone, so the second job reads the
    # first job's tokenized eval split from the cache. (Train differs: beta dropped rows.)
    first, second = (read_summary(runs[v])["data"]["counts"] for v in ("zephyr_alpha", "zephyr_beta"))
    assert first["eval"]["tokenized_cache_miss"] == 1 and first["train"]["tokenized_cache_miss"] == 1
    assert not any(k.startswith("filtered_") for k in second["eval"])
    assert second["eval"]["tokenized_cache_hit"] == 1 and second["train"]["tokenized_cache_miss"] == 1

    # A rerun would reuse this completed dSFT stage rather than train it again.
    pipeline = load_pipeline_module()
    assert pipeline.stage_completed(out / "dsft") and not pipeline.stage_completed(runs["zephyr_alpha"])


def load_pipeline_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("zephyr_pipeline", ROOT / "experiments" / "zephyr_pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pipeline_arguments_and_a_bad_checkpoint(tmp_path, capsys):
    pipeline = load_pipeline_module()
    assert pipeline.split_overrides(["model=tiny", "--sft", "a=1", "--dpo", "b=2", "c=3", "--sft", "d=4"]) == (
        ["model=tiny"], ["a=1", "d=4"], ["b=2", "c=3"])
    args, common, sft, dpo = pipeline.parse_args(["--out", "o", "x=1", "--sft", "a=1", "--dpo", "b=2",
                                                  "--variants", "zephyr_alpha"])
    assert (common, sft, dpo) == (["x=1"], ["a=1"], ["b=2"])
    assert args.sft_checkpoint is None and args.variants == "zephyr_alpha" and str(args.out) == "o"
    assert pipeline.main(["--out", str(tmp_path), "--sft-checkpoint", str(tmp_path / "nowhere"), "model=tiny"]) == 1
    record = json.loads((tmp_path / "pipeline.json").read_text())
    assert "no config.json" in record["error"] and "nowhere" in capsys.readouterr().err
