"""LoRA and QLoRA first-class (prefopt/lora.py): ``lora=default`` with any reference kind, adapter-only saving
that loads back to the same logits, exact resume, and bad input as one line before any model loads.

Worked numbers: LoRA's B starts at zero, so at step 1 the policy is its base and every reference kind scores
the base: the first DPO loss is log 2 = 0.693147 and the margin 0 under adapter_off, frozen and precomputed
alike, and the three kinds give the same losses afterwards too (they score the same base weights)."""

from __future__ import annotations

import math
import signal

import pytest
import torch

from prefopt.errors import ConfigError
from tests.conftest import TINY, compose, read_metrics, read_summary, run_cli

# lr high enough that the adapters move visibly in 3 steps.
FAST = [o for o in TINY if not o.startswith("trainer.max_steps")] + [
    "trainer.max_steps=3", "trainer.grad_accum=1", "optimizer.lr=1e-3", "optimizer.warmup_ratio=0",
    "dataset.max_train_rows=16", "lora=default"]


def train_losses(run_dir):
    return [r["loss"] for r in read_metrics(run_dir) if r["split"] == "train"]


def test_lora_default_composes_with_adapter_off_and_keeps_other_references():
    cfg = compose(["lora=default"])
    assert cfg.reference.kind == "adapter_off" and cfg.model.lora.r == 16 and cfg.model.lora.quantize is None
    assert compose(["lora=default", "reference=precomputed"]).reference.kind == "precomputed"
    assert compose([]).model.lora is None and compose([]).reference.kind == "frozen"


@pytest.mark.slow
def test_each_reference_kind_trains_a_lora_policy(tmp_path):
    sweep = tmp_path / "sweep"
    run_cli(FAST + ["reference=adapter_off,frozen,precomputed", f"reference.cache_dir={tmp_path / 'cache'}",
                    "hydra.sweep.subdir=${hydra.job.num}"], sweep, multirun=True)
    runs = {read_summary(sweep / str(i))["reference"]["kind"]: sweep / str(i) for i in range(3)}
    assert set(runs) == {"adapter_off", "frozen", "precomputed"}
    losses = {kind: train_losses(d) for kind, d in runs.items()}
    for kind, values in losses.items():
        assert len(values) == 3 and values[0] == pytest.approx(math.log(2), abs=1e-6), kind
        assert abs(values[-1] - math.log(2)) > 1e-3, kind  # the adapters moved the policy
        config = (runs[kind] / "config.yaml").read_text()
        assert "lora:\n    r: 16" in config, kind
    for kind in ("frozen", "precomputed"):
        assert losses[kind] == pytest.approx(losses["adapter_off"], abs=1e-5), kind
    # frozen warns that it copies the base next to the LoRA policy.
    assert "copies the whole base model" in (runs["frozen"] / "train.log").read_text()


@pytest.mark.slow
def test_precomputed_with_lora_reuses_the_cache_of_the_base(tmp_path):
    """With its adapters off a LoRA policy is its base: the reference cache written by a run without LoRA is
    read, not recomputed (the digest covers the base's weights under the base's names)."""
    common = FAST + ["reference=precomputed", f"reference.cache_dir={tmp_path / 'cache'}"]
    run_cli([o for o in common if o != "lora=default"], tmp_path / "full")
    run_cli(common, tmp_path / "lora")
    assert read_summary(tmp_path / "full")["reference"]["cache"] == "miss"
    assert read_summary(tmp_path / "lora")["reference"]["cache"] == "hit"


def test_adapter_only_save_reloads_to_the_same_logits(tmp_path):
    from peft import AutoPeftModelForCausalLM

    from prefopt.evaluate import main
    from prefopt.models import load_model

    run_dir = tmp_path / "run"
    # The end-of-run benchmark generates with the LoRA policy itself (not merged).
    run_cli([o for o in FAST if o not in ("trainer.save_model=false", "benchmark=none")] + [
        "model.lora.save_merged=true", "benchmark=sentiment", "benchmark.num_prompts=3", "benchmark.max_new_tokens=4",
        "benchmark.bootstrap_samples=100"], run_dir)
    assert read_summary(run_dir)["benchmark"]["num_prompts"] == 3
    model_dir = run_dir / "model"
    assert (model_dir / "adapter_config.json").is_file() and (model_dir / "adapter_model.safetensors").is_file()
    assert not (model_dir / "model.safetensors").exists()  # the adapter alone, not the base again
    card = (model_dir / "README.md").read_text()
    assert "library_name: peft" in card and "## LoRA adapter" in card and "r=16, alpha=32" in card

    ids = torch.tensor([[1, 42, 7, 99, 1000, 5]])
    with torch.no_grad():
        ours = load_model(str(model_dir), "float32")(ids).logits  # base + adapter, merged
        merged = load_model(str(run_dir / "model_merged"), "float32")(ids).logits
        peft = AutoPeftModelForCausalLM.from_pretrained(str(model_dir))(ids).logits
        base = load_model("tiny", "float32")(ids).logits
    assert torch.allclose(ours, merged, atol=1e-5) and torch.allclose(ours, peft, atol=1e-5)
    assert float((ours - base).abs().max()) > 1e-3  # the adapter changed the model

    # prefopt.evaluate reads the adapter directory: its held-out metrics are the trainer's.
    before = read_summary(run_dir)["eval"]
    assert main([f"run_dir={run_dir}", "benchmark=preference"]) == 0
    again = read_summary(run_dir)["benchmarks"]["preference"]
    for key, value in before.items():
        assert again[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key


@pytest.mark.slow
def test_resume_with_lora_matches_the_uninterrupted_run(tmp_path):
    run = [o for o in FAST if not o.startswith("trainer.max_steps")] + [
        "trainer.max_steps=5", "trainer.checkpoint_every=2", "dataset.max_train_rows=32"]
    run_cli(run, tmp_path / "whole")
    killed = run_cli(run, tmp_path / "killed", check=False, env={"PREFOPT_INJECT_FAULT": "kill:3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_cli(run + ["resume=auto"], tmp_path / "killed")
    assert read_summary(tmp_path / "killed")["resumed_from"].endswith("step-00000002")
    assert train_losses(tmp_path / "killed") == pytest.approx(train_losses(tmp_path / "whole"), abs=1e-6)


def test_adapters_stay_float32_over_a_pure_bf16_base():
    from prefopt.lora import wrap_policy
    from prefopt.models import load_model

    policy = wrap_policy(load_model("tiny", "bfloat16"), compose(["lora=default"]).model.lora)
    trainable = {p.dtype for p in policy.parameters() if p.requires_grad}
    frozen = {p.dtype for p in policy.parameters() if not p.requires_grad}
    assert trainable == {torch.float32} and frozen == {torch.bfloat16}


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.lora.target_modules=[c_attn,c_proj]"],
     r"^model\.lora\.target_modules=\['c_attn', 'c_proj'\]: no module of tiny is named so; its modules include"),
    (["model.lora.r=0"], r"^model\.lora\.r=0: must be >= 1"),
    (["model.lora.quantize=8bit"], r"^model\.lora\.quantize='8bit': must be null or 4bit"),
])
def test_bad_lora_values_name_the_key_without_loading_weights(overrides, message, monkeypatch):
    from prefopt import models
    from prefopt.lora import check_lora

    def refuse(*args, **kwargs):
        raise AssertionError("weights loaded before the check")

    monkeypatch.setattr(models, "load_model", refuse)
    with pytest.raises(ConfigError, match=message):
        check_lora(compose(["model=tiny", "lora=default", *overrides]).model)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_qlora_without_a_gpu_is_one_line_before_anything_loads(tmp_path):
    proc = run_cli(FAST + ["model.lora.quantize=4bit"], tmp_path / "run", check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("prefopt:")]
    assert lines == ["prefopt: model.lora.quantize=4bit: QLoRA's 4-bit kernels (bitsandbytes) need a CUDA GPU, and "
                     "none is visible; drop model.lora.quantize for plain LoRA"]
    assert "Loading weights" not in proc.stderr and not (tmp_path / "run" / "config.yaml").exists()


def test_target_modules_matching_nothing_is_one_line_on_the_cli(tmp_path):
    proc = run_cli(FAST + ["model.lora.target_modules=[c_attn]"], tmp_path / "run", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "prefopt: model.lora.target_modules=['c_attn']: no module of tiny is named so" in proc.stderr
    assert "Loading weights" not in proc.stderr
