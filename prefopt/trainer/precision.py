"""``trainer.precision``: the dtype of the weights the optimizer updates, and the dtype the forward computes in.

- ``fp32``: float32 weights and AdamW states, float32 compute (accelerate's mixed_precision ``no``);
- ``bf16_autocast``: float32 master weights and AdamW states, forward and backward under bf16 autocast
  (mixed_precision ``bf16``);
- ``pure_bf16``: bfloat16 weights and AdamW states, bf16 compute (mixed_precision ``no``); only when asked;
- ``auto`` (default): ``bf16_autocast`` on a bf16-capable GPU, ``fp32`` elsewhere; an explicit ``model.dtype``
  picks instead (float32 -> fp32, bfloat16 -> pure_bf16).

Why fp32 master weights by default: the Zephyr recipe's learning rate is 5e-7, and AdamW's first steps move
each weight by about the learning rate; bf16 has 8 significant bits, so around a weight of 0.02 its spacing is
2^-6 * 2^-7 = 1.2e-4, and an update of 5e-7 rounds back to the same bf16 number: pure-bf16 training loses it
(tests/trainer/test_precision.py shows both on model=tiny). The alignment-handbook recipes train the same way
(float32 weights, ``bf16: true`` = autocast).

One source of truth: ``model.dtype`` says how to load the weights and ``trainer.precision`` how to train them;
``model.dtype=auto`` (the default) means "what trainer.precision needs". Both set explicitly must agree, else
one error names both keys. ``resolve_precision`` writes the resolved values back into the run's config, so
config.yaml, the checkpoints' config and every later load (references, benchmarks, prefopt.evaluate) read the
same dtype.

Under DeepSpeed, bf16 (either bf16 mode) is DeepSpeed's own ``bf16.enabled``, which keeps float32 master
weights in the optimizer; under FSDP2 bf16_autocast is a MixedPrecisionPolicy with bf16 parameters in the
forward and float32 gradient reduction (prefopt/trainer/distributed.py, ``configure_fsdp``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from prefopt.errors import ConfigError

log = logging.getLogger("prefopt.train")

PRECISIONS = ("auto", "fp32", "bf16_autocast", "pure_bf16")
_DTYPE_NAMES = {"auto": "auto", "float32": "float32", "fp32": "float32", "bfloat16": "bfloat16",
                "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}
# What each precision loads the weights as, and accelerate's mixed_precision for it.
_MODES = {"fp32": ("float32", "no"), "bf16_autocast": ("float32", "bf16"), "pure_bf16": ("bfloat16", "no")}
_BY_DTYPE = {"float32": "fp32", "bfloat16": "pure_bf16"}


@dataclass(frozen=True)
class Precision:
    name: str  # fp32 | bf16_autocast | pure_bf16 (never auto)
    dtype: str  # model.dtype the weights load as: float32 | bfloat16
    mixed_precision: str  # accelerate's: no | bf16

    @property
    def bf16(self) -> bool:
        return self.name in ("bf16_autocast", "pure_bf16")


def gpu_has_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def precision_of(precision: str, dtype: str, gpu_bf16: bool | None = None) -> Precision:
    """The resolved precision of ``trainer.precision`` and ``model.dtype`` (see the module docstring)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision={precision!r}: must be one of {', '.join(PRECISIONS)}")
    dtype_name = _DTYPE_NAMES.get(str(dtype))
    if dtype_name is None:
        raise ConfigError(f"model.dtype={dtype!r}: must be auto, float32 or bfloat16")
    if dtype_name == "float16":
        raise ConfigError(f"model.dtype={dtype!r}: fp16 training needs loss scaling, which prefopt does not do; "
                          "use trainer.precision=bf16_autocast (float32 weights) or pure_bf16")
    if precision == "auto":
        if dtype_name == "auto":
            gpu_bf16 = gpu_has_bf16() if gpu_bf16 is None else gpu_bf16
            precision = "bf16_autocast" if gpu_bf16 else "fp32"
        else:
            precision = _BY_DTYPE[dtype_name]
    weights, mixed = _MODES[precision]
    if dtype_name not in ("auto", weights):
        raise ConfigError(f"model.dtype={dtype} contradicts trainer.precision={precision}, which trains {weights} "
                          f"weights; leave model.dtype=auto")
    return Precision(precision, weights, mixed)


def resolve_precision(cfg) -> Precision:
    """Resolve ``trainer.precision`` and ``model.dtype`` and write the result into ``cfg`` (see the module
    docstring: one source of truth for every later load)."""
    resolved = precision_of(cfg.trainer.precision, cfg.model.dtype)
    cfg.trainer.precision = resolved.name
    cfg.model.dtype = resolved.dtype
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if launched != "no" and launched != resolved.mixed_precision:
        # An accelerate config file's mixed_precision would otherwise decide behind the config's back.
        log.warning("accelerate launch asked for mixed_precision=%s; ignored: trainer.precision=%s decides "
                    "(mixed_precision=%s)", launched, resolved.name, resolved.mixed_precision)
    return resolved
