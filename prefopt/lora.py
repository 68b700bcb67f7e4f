"""LoRA and QLoRA on the policy (``lora=default``, ``model.lora.*``), with any loss and any reference kind.

``lora=default`` sets ``model.lora`` (rank, alpha, dropout, target modules) and makes ``reference=adapter_off``
the default reference: the policy with its adapters disabled is the initial model, so the base weights are held
once. Any other reference still works: ``reference=precomputed`` scores the dataset with the adapters off
before training (and shares its cache with a run without LoRA on the same base), ``checkpoint``/``none`` as
always; ``frozen`` and ``sync`` deep-copy the whole base next to it (a warning says so).

Only the adapters train. At the end ``<run_dir>/model`` holds the adapter alone (peft's
``adapter_config.json`` + ``adapter_model.safetensors``, naming its base) and the tokenizer;
``model.lora.save_merged=true`` adds the merged full model in ``<run_dir>/model_merged``. Every prefopt loader
(``prefopt.models.load_model``: prefopt.evaluate, prefopt.extrapolate, benchmarks, judges) reads an adapter
directory as base + adapter, merged; peft's ``AutoPeftModelForCausalLM.from_pretrained`` reads it too.

QLoRA (``model.lora.quantize=4bit``): the base loads in 4-bit NF4 with double quantization and bf16 compute
(bitsandbytes), is prepared with peft's ``prepare_model_for_kbit_training`` (norms in float32, input grads
on), and the adapters train on top (Dettmers et al. 2023, arXiv:2305.14314). It needs CUDA and bitsandbytes:
without either the run stops, naming the key, before anything loads.

``check_lora`` refuses bad values before any weights load: the target modules are matched against the
module names of the model built from its config alone on the meta device (no weights read).
"""

from __future__ import annotations

import importlib.util
import logging

import torch

from prefopt.errors import ConfigError

log = logging.getLogger(__name__)

QUANTIZE = (None, "4bit")


def enabled(mcfg) -> bool:
    return mcfg.get("lora") is not None


def check_lora(mcfg) -> None:
    """Range checks of ``model.lora``, QLoRA's requirements, and target modules that match no module of the
    model; each error names its key. Reads the model's config only, never its weights."""
    lcfg = mcfg.lora
    if lcfg is None:
        return
    checks = [
        (lcfg.r >= 1, f"model.lora.r={lcfg.r}: must be >= 1"),
        (lcfg.alpha > 0, f"model.lora.alpha={lcfg.alpha}: must be > 0"),
        (0 <= lcfg.dropout < 1, f"model.lora.dropout={lcfg.dropout}: must be in [0, 1)"),
        (len(lcfg.target_modules) > 0, "model.lora.target_modules: empty; name the modules that get adapters"),
        (lcfg.quantize in QUANTIZE, f"model.lora.quantize={lcfg.quantize!r}: must be null or 4bit"),
        (not (lcfg.save_merged and lcfg.quantize),
         "model.lora.save_merged=true with model.lora.quantize=4bit: merging into a 4-bit base would round the "
         "adapter away; keep the adapter (<run_dir>/model) and merge it into the unquantized base"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    if importlib.util.find_spec("peft") is None:
        raise ConfigError("model.lora needs peft: pip install 'prefopt[lora]'")
    if lcfg.quantize == "4bit":
        if not torch.cuda.is_available():
            raise ConfigError("model.lora.quantize=4bit: QLoRA's 4-bit kernels (bitsandbytes) need a CUDA GPU, and "
                              "none is visible; drop model.lora.quantize for plain LoRA")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError("model.lora.quantize=4bit needs bitsandbytes: pip install 'prefopt[qlora]'")
    names = module_names(mcfg)
    targets = list(lcfg.target_modules)
    matched = [t for t in targets if any(_matches(name, t) for name in names)]
    if not matched:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names if n})
        raise ConfigError(f"model.lora.target_modules={targets}: no module of {mcfg.name_or_path} is named so; "
                          f"its modules include {', '.join(leaves[:20])}")
    unmatched = [t for t in targets if t not in matched]
    if unmatched:
        log.warning("model.lora.target_modules: %s match no module of %s (adapters go on %s)", unmatched,
                    mcfg.name_or_path, matched)


def _matches(name: str, target: str) -> bool:
    # peft's rule for a list of names: the module's full name, or its last dotted components.
    return name == target or name.endswith("." + target)


def module_names(mcfg) -> list[str]:
    """Module names of ``model.name_or_path``, from its config on the meta device (nothing allocated)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from prefopt.models import ModelLoadError, resolve_model_path

    path = resolve_model_path(mcfg.name_or_path)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=mcfg.trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"model.name_or_path={mcfg.name_or_path!r}: cannot read its config: {err}") from err
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=mcfg.trust_remote_code)
    return [name for name, _ in model.named_modules()]


def quantization_config(lcfg):
    """bitsandbytes' 4-bit NF4 config of QLoRA (double quantization, bf16 compute), or None."""
    if lcfg is None or lcfg.quantize is None:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def wrap_policy(policy, lcfg, gradient_checkpointing: bool = False):
    """The policy with LoRA adapters (peft); only the adapters train. A 4-bit base is prepared for training
    first. peft keeps the adapters in float32 over a bf16 base (``autocast_adapter_dtype``), so their small
    updates are not lost under trainer.precision=pure_bf16 either."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if lcfg.quantize is not None:
        policy = prepare_model_for_kbit_training(policy, use_gradient_checkpointing=gradient_checkpointing)
    config = LoraConfig(r=lcfg.r, lora_alpha=lcfg.alpha, lora_dropout=lcfg.dropout,
                        target_modules=list(lcfg.target_modules), task_type="CAUSAL_LM")
    try:
        return get_peft_model(policy, config)
    except ValueError as err:
        raise ConfigError(f"model.lora.target_modules={list(lcfg.target_modules)}: {err}") from err


def is_adapter(model) -> bool:
    """A peft model (LoRA adapters on a base)."""
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")
