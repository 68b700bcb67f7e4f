"""``trainer.precision``: the resolution rule (prefopt/trainer/precision.py), and the reason for the default.

The reason, by hand: AdamW's first update of a weight is lr * g / (|g| + eps) = ±lr for any gradient well
above eps (bias-corrected m = g, v = g^2). At the Zephyr rate lr = 5e-7 and a weight w with 2^-6 <= |w| < 2^-5
(0.0156..0.031, the size of a 0.02-std init), bf16's spacing is 2^-6 * 2^-7 = 1.22e-4; w ± 5e-7 is within half
a spacing (6.1e-5) of w, so a bf16 weight rounds back to itself: pure bf16 loses every such update, while the
float32 master weight of bf16 autocast moves by 5e-7 (float32 spacing at 0.02 is 1.9e-9).

The run: model=tiny saved in bfloat16 (its init has std 0.02), one optimizer step at lr 5e-7 with a
constant schedule, through prefopt's trainer; the saved weights are compared with the starting ones.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from prefopt.errors import ConfigError
from prefopt.trainer.precision import precision_of
from tests.conftest import TINY, run_cli


@pytest.mark.parametrize(("precision", "dtype", "gpu", "expected"), [
    ("auto", "auto", True, ("bf16_autocast", "float32", "bf16")),  # the GPU default: float32 master weights
    ("auto", "auto", False, ("fp32", "float32", "no")),
    ("auto", "bfloat16", True, ("pure_bf16", "bfloat16", "no")),  # an explicit dtype is a request
    ("auto", "float32", True, ("fp32", "float32", "no")),
    ("bf16_autocast", "auto", False, ("bf16_autocast", "float32", "bf16")),
    ("bf16_autocast", "fp32", False, ("bf16_autocast", "float32", "bf16")),
    ("pure_bf16", "auto", True, ("pure_bf16", "bfloat16", "no")),
    ("pure_bf16", "bf16", True, ("pure_bf16", "bfloat16", "no")),
    ("fp32", "auto", True, ("fp32", "float32", "no")),
])
def test_resolution_rule(precision, dtype, gpu, expected):
    got = precision_of(precision, dtype, gpu_bf16=gpu)
    assert (got.name, got.dtype, got.mixed_precision) == expected
    # Resolving the resolved values again changes nothing (config.yaml and resumed runs read them).
    again = precision_of(got.name, got.dtype, gpu_bf16=not gpu)
    assert again == got


@pytest.mark.parametrize(("precision", "dtype", "message"), [
    ("pure_bf16", "float32", r"^model\.dtype=float32 contradicts trainer\.precision=pure_bf16"),
    ("bf16_autocast", "bfloat16", r"^model\.dtype=bfloat16 contradicts trainer\.precision=bf16_autocast"),
    ("bf16", "auto", r"^trainer\.precision='bf16': must be one of auto, fp32, bf16_autocast, pure_bf16"),
    ("auto", "float16", r"^model\.dtype='float16': fp16 training needs loss scaling"),
    ("auto", "int8", r"^model\.dtype='int8'"),
])
def test_bad_combinations_name_the_keys(precision, dtype, message):
    with pytest.raises(ConfigError, match=message):
        precision_of(precision, dtype, gpu_bf16=True)


@pytest.fixture(scope="module")
def tiny_bf16(tmp_path_factory):
    from prefopt.models import load_model, load_tokenizer

    path = tmp_path_factory.mktemp("tiny_bf16")
    load_model("tiny", "float32").to(torch.bfloat16).save_pretrained(path, safe_serialization=True)
    load_tokenizer("tiny").save_pretrained(path)
    return path


def one_step(tiny_bf16, run_dir, precision):
    run_cli([o for o in TINY if not o.startswith(("trainer.max_steps", "trainer.save_model"))] + [
        f"model.name_or_path={tiny_bf16}", "model.dtype=auto", f"trainer.precision={precision}", "trainer.max_steps=1",
        "trainer.save_model=true", "optimizer.lr=5e-7", "optimizer.scheduler=constant", "optimizer.warmup_ratio=0",
        "dataset.max_train_rows=16"], run_dir)
    return load_file(str(run_dir / "model" / "model.safetensors"))


@pytest.mark.slow
def test_lr_5e7_update_is_kept_by_bf16_autocast_and_lost_by_pure_bf16(tiny_bf16, tmp_path):
    start = load_file(str(tiny_bf16 / "model.safetensors"))
    mixed = one_step(tiny_bf16, tmp_path / "mixed", "bf16_autocast")
    pure = one_step(tiny_bf16, tmp_path / "pure", "pure_bf16")
    assert "precision: bf16_autocast" in (tmp_path / "mixed" / "config.yaml").read_text()
    assert "dtype: float32" in (tmp_path / "mixed" / "config.yaml").read_text()  # model.dtype=auto, resolved

    name = "model.layers.0.self_attn.q_proj.weight"
    w0 = start[name].float()
    assert start[name].dtype == torch.bfloat16 and 0.015 < float(w0.std()) < 0.025
    band = (w0.abs() >= 2**-6) & (w0.abs() < 2**-5)  # bf16 spacing 1.22e-4 here (module docstring)
    assert int(band.sum()) > 500

    # bf16 autocast: float32 master weights, saved as float32; the update of every weight in the band is lr.
    assert mixed[name].dtype == torch.float32
    moved = (mixed[name] - w0)[band].abs()
    assert float((moved > 0).float().mean()) > 0.99
    assert float(moved.max()) == pytest.approx(5e-7, rel=0.01)

    # pure bf16: the same step leaves every weight of the band where it was.
    assert pure[name].dtype == torch.bfloat16
    assert torch.equal(pure[name][band], start[name][band])
    # ...and everywhere except weights so small that 5e-7 is a bf16 step for them (|w| < 2^-9 here).
    changed = pure[name] != start[name]
    assert not changed.any() or float(w0[changed].abs().max()) < 2**-9
    print(f"\nq_proj of layer 0, {int(band.sum())} weights with 2^-6 <= |w| < 2^-5: bf16_autocast moved "
          f"{float((moved > 0).float().mean()):.1%} of them (max |dw| {float(moved.max()):.3g}); pure_bf16 moved "
          f"{int(changed[band].sum())}; pure_bf16 moved {int(changed.sum())} of {changed.numel()} weights in all")
