"""Reference-model options (``reference=<kind>``).

A reference answers one question for the trainer: the reference log-probs of a batch's completions.

- ``frozen``: a frozen copy of the initial policy (the DPO default).
- ``checkpoint``: a different model (``reference.name_or_path``) as the reference.
- ``none``: reference-free training; an error if any configured loss needs a reference.
- ``precomputed``: the reference (the initial policy, or ``reference.name_or_path``) scores every train
  and eval sequence once before training; the log-probs are cached on disk under
  ``$PREFOPT_CACHE/reflogps/<key>.pt``, keyed by a hash of the reference weights, of every tokenized
  sequence and of the truncation settings. Any change (weights, tokenizer, template, max_length, data)
  changes the key. Every run and every multirun job with the same key reuses the file; a file lock makes
  a racing job wait for the first one's file instead of computing it twice; the file is published by an
  atomic rename. No reference model is held during training.
- ``adapter_off``: the policy is wrapped with LoRA adapters (peft); the reference is the same model with
  its adapters disabled, so the base weights exist once.
- ``sync``: TR-DPO (Gorbatovski et al. 2024, arXiv:2404.09656): a frozen copy that is pulled toward the
  policy every ``sync_steps`` optimizer steps, θ_ref ← α·θ + (1 − α)·θ_ref with α = ``sync_alpha``
  (α = 1 is the paper's hard update).

Every reference keeps ``seconds`` (time in reference passes) and ``info()`` (what summary.json records).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path

import torch
from filelock import FileLock

from prefopt.errors import PrefoptError
from prefopt.logps import SequenceScorer
from prefopt.models import cache_root, load_model

log = logging.getLogger(__name__)

KINDS = ("frozen", "none", "precomputed", "checkpoint", "adapter_off", "sync")
# Bump when the cached file's layout or the scoring changes, so stale caches are never read.
REFLOGPS_FORMAT = "1"


class ReferenceConfigError(PrefoptError, ValueError):
    pass


class Reference:
    """A model scored in eval mode under no_grad: ``frozen`` and ``checkpoint``."""

    kind = "frozen"
    # The autocast the policy's forward runs under (accelerate wraps it when mixed_precision is bf16/fp16);
    # the trainer sets it so that the reference computes at the same precision. Otherwise a float32
    # reference against a bf16-autocast policy biases every implicit reward from step 0 (log 2 is not the
    # first DPO loss).
    precision = contextlib.nullcontext

    def __init__(self, model, share_prompt: bool = False, kind: str = "frozen"):
        self.kind = kind
        model.eval()
        model.requires_grad_(False)
        self.model = model
        self.scorer = SequenceScorer(model, share_prompt=share_prompt)
        self.seconds = 0.0  # time spent in reference passes, reported in summary.json

    @torch.no_grad()
    def logps(self, batch, return_tokens: bool = False):
        start = time.perf_counter()
        with self.precision():
            out = self.scorer(batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
                              return_tokens=return_tokens, n_pairs=batch.get("n_examples"))
        self.seconds += time.perf_counter() - start
        return out

    def after_step(self, step: int, policy) -> None:
        """Called after every optimizer step; references that move with the policy override this."""

    def info(self) -> dict:
        return {"kind": self.kind}


class NoReference:
    kind = "none"
    model = None
    seconds = 0.0

    def logps(self, batch, return_tokens: bool = False):
        return None

    def after_step(self, step: int, policy) -> None:
        pass

    def info(self) -> dict:
        return {"kind": self.kind}


class SyncReference(Reference):
    """TR-DPO: θ_ref ← α·θ + (1 − α)·θ_ref every ``sync_steps`` optimizer steps."""

    def __init__(self, model, alpha: float, every: int, share_prompt: bool = False):
        super().__init__(model, share_prompt, kind="sync")
        self.alpha = alpha
        self.every = every
        self.synced_at: list[int] = []

    @torch.no_grad()
    def after_step(self, step: int, policy) -> None:
        if step % self.every:
            return
        ref_params = dict(self.model.named_parameters())
        for name, param in policy.named_parameters():
            target = ref_params[name]
            if self.alpha == 1.0:
                target.copy_(param.detach())
            else:
                target.mul_(1.0 - self.alpha).add_(param.detach().to(target.dtype), alpha=self.alpha)
        self.synced_at.append(step)
        log.info("reference synced to the policy at step %d (alpha=%g)", step, self.alpha)

    def info(self) -> dict:
        return {"kind": self.kind, "sync_alpha": self.alpha, "sync_steps": self.every, "synced_at": self.synced_at}


class AdapterOffReference:
    """The LoRA policy with its adapters disabled: the base model, with no second copy of its weights."""

    kind = "adapter_off"
    model = None  # no separate model: the end-of-run benchmark reloads the base from its path
    precision = contextlib.nullcontext  # as Reference.precision

    def __init__(self, peft_policy, share_prompt: bool = False):
        self.policy = peft_policy
        self.scorer = SequenceScorer(peft_policy, share_prompt=share_prompt)
        self.seconds = 0.0

    @torch.no_grad()
    def logps(self, batch, return_tokens: bool = False):
        start = time.perf_counter()
        was_training = self.policy.training
        # Eval mode so that LoRA/attention dropout never touches the reference pass.
        self.policy.eval()
        try:
            with self.policy.disable_adapter(), self.precision():
                out = self.scorer(batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
                                  return_tokens=return_tokens, n_pairs=batch.get("n_examples"))
        finally:
            self.policy.train(was_training)
        self.seconds += time.perf_counter() - start
        return out

    def after_step(self, step: int, policy) -> None:
        pass

    def info(self) -> dict:
        return {"kind": self.kind}


def sequence_keys(batch) -> list[bytes]:
    """One digest per row of a collated batch: its unpadded token ids and where its completion starts.
    Everything the reference log-prob of that row depends on, besides the weights."""
    ids = batch["input_ids"].tolist()
    lengths = batch["attention_mask"].sum(-1).tolist()
    starts = batch["completion_mask"].float().argmax(-1).tolist()
    keys = []
    for row, length, start in zip(ids, lengths, starts, strict=True):
        digest = hashlib.blake2b(digest_size=16)
        digest.update(start.to_bytes(4, "little"))
        digest.update(torch.tensor(row[:length], dtype=torch.int64).numpy().tobytes())
        keys.append(digest.digest())
    return keys


def weights_digest(model) -> str:
    """Hash of every parameter and buffer (names, dtypes, shapes, bytes); tied tensors hashed once."""
    digest = hashlib.blake2b(digest_size=16)
    seen = set()
    for name, tensor in sorted(model.state_dict().items()):
        ptr = tensor.data_ptr()
        digest.update(name.encode())
        if ptr in seen:
            continue
        seen.add(ptr)
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


class PrecomputedReference:
    """Reference log-probs looked up by sequence; see the module docstring."""

    kind = "precomputed"
    model = None

    def __init__(self, table: dict[bytes, float], key: str, path: Path, cache: str, compute_seconds: float):
        self.table = table
        self.key = key
        self.path = path
        self.cache = cache
        self.compute_seconds = compute_seconds
        self.seconds = 0.0

    def logps(self, batch, return_tokens: bool = False):
        if return_tokens:
            raise ReferenceConfigError(
                "reference=precomputed stores per-sequence log-probs only, but a configured loss needs the "
                "reference's per-token log-probs; use reference=frozen for it"
            )
        start = time.perf_counter()
        keys = sequence_keys(batch)
        try:
            values = [self.table[k] for k in keys]
        except KeyError:
            raise RuntimeError(
                "reference=precomputed: a batch holds a sequence that was not precomputed; the cache "
                f"{self.path} does not match this run's data"
            ) from None
        device = batch["input_ids"].device
        out = torch.tensor(values, dtype=torch.float32, device=device), batch["completion_mask"][:, 1:].sum(-1)
        self.seconds += time.perf_counter() - start
        return out

    def after_step(self, step: int, policy) -> None:
        pass

    def info(self) -> dict:
        return {"kind": self.kind, "cache": self.cache, "key": self.key, "path": str(self.path),
                "precompute_seconds": self.compute_seconds, "sequences": len(self.table)}


def _cache_key(weights: str, batches: list[dict], truncation: dict, dtype: str) -> str:
    digest = hashlib.sha256()
    digest.update(f"format={REFLOGPS_FORMAT};weights={weights};dtype={dtype};".encode())
    digest.update(repr(sorted(truncation.items())).encode())
    for key in sorted({k for b in batches for k in sequence_keys(b)}):
        digest.update(key)
    return digest.hexdigest()[:32]


def build_precomputed(model, batches: list[dict], truncation: dict, device, share_prompt: bool,
                      dtype: str, free_model, cache_dir: str | None = None) -> PrecomputedReference:
    """Score ``batches`` with ``model`` once and cache the result, or read it back from the cache.

    ``free_model`` is called as soon as the scores exist (or were read), so the reference weights are
    not held during training."""
    weights = weights_digest(model)
    key = _cache_key(weights, batches, truncation, dtype)
    root = Path(cache_dir) if cache_dir else cache_root() / "reflogps"
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{key}.pt"
    start = time.perf_counter()
    with FileLock(str(path) + ".lock"):
        # Whoever holds the lock computes; a job racing for the same key waits here and then reads.
        if path.is_file():
            stored = torch.load(path, weights_only=True)
            table = dict(zip((bytes(k) for k in stored["keys"].tolist()), stored["logps"].tolist(), strict=True))
            cache = "hit"
        else:
            table = _score_all(model, batches, device, share_prompt)
            keys = list(table)
            payload = {"keys": torch.tensor([list(k) for k in keys], dtype=torch.uint8),
                       "logps": torch.tensor([table[k] for k in keys], dtype=torch.float64),
                       "format": REFLOGPS_FORMAT}
            fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{key}.", suffix=".tmp")
            os.close(fd)
            try:
                torch.save(payload, tmp)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            cache = "miss"
    seconds = time.perf_counter() - start
    free_model()
    log.info("reference=precomputed: cache %s (%s, %d sequences, %.1f s)", cache, path, len(table), seconds)
    return PrecomputedReference(table, key, path, cache, seconds)


@torch.no_grad()
def _score_all(model, batches: list[dict], device, share_prompt: bool) -> dict[bytes, float]:
    was_training = model.training
    model.eval()
    scorer = SequenceScorer(model, share_prompt=share_prompt)
    table = {}
    try:
        for batch in batches:
            keys = sequence_keys(batch)
            logps, _ = scorer(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                              batch["completion_mask"].to(device), n_pairs=batch.get("n_examples"))
            table.update(zip(keys, logps.double().tolist(), strict=True))
    finally:
        model.train(was_training)
    return table


def wrap_lora(policy, rcfg):
    """The LoRA policy for ``reference=adapter_off``: only the adapters train."""
    from peft import LoraConfig, get_peft_model

    lcfg = rcfg.lora
    config = LoraConfig(r=lcfg.r, lora_alpha=lcfg.alpha, lora_dropout=lcfg.dropout,
                        target_modules=list(lcfg.target_modules), task_type="CAUSAL_LM")
    try:
        return get_peft_model(policy, config)
    except ValueError as err:
        raise ReferenceConfigError(f"reference.lora.target_modules={list(lcfg.target_modules)}: {err}") from err


def prepare_policy(rcfg, policy, needs_reference: bool):
    """The policy to train under this reference option (LoRA-wrapped for ``adapter_off``)."""
    if rcfg.kind == "adapter_off" and needs_reference:
        return wrap_lora(policy, rcfg)
    return policy


def build_reference(rcfg, mcfg, policy, needs_reference: bool, loss_names: list[str], device,
                    batches: list[dict] | None = None, truncation: dict | None = None,
                    share_prompt: bool = False, precision=None, precision_name: str = "no",
                    param_dtype: torch.dtype | None = None):
    """``batches``: every collated train and eval batch (needed by ``precomputed`` only).

    The reference computes as the policy does: ``precision`` is the policy's autocast context
    (``accelerator.autocast``), named ``precision_name`` (accelerate's mixed_precision); ``param_dtype`` the
    dtype FSDP's mixed precision casts the policy's parameters to for its forward (None: not cast), to which
    the reference's weights are cast as well. Precomputed scores are cached per precision."""
    reference = _build_reference(rcfg, mcfg, policy, needs_reference, loss_names, device, batches, truncation,
                                 share_prompt, precision or contextlib.nullcontext, precision_name, param_dtype)
    if reference.kind not in ("precomputed", "none", "adapter_off") and param_dtype is not None:
        _cast_parameters(reference.model, param_dtype)
    if precision is not None and reference.kind not in ("precomputed", "none"):
        reference.precision = precision
    return reference


def _cast_parameters(model, dtype: torch.dtype):
    """Parameters only, as FSDP's MixedPrecisionPolicy does: buffers such as RoPE's inv_freq keep their dtype
    (``model.to(dtype)`` would cast them too, and the rotary angles would differ from the policy's)."""
    for param in model.parameters():
        param.data = param.data.to(dtype)
    return model


def _build_reference(rcfg, mcfg, policy, needs_reference, loss_names, device, batches, truncation, share_prompt,
                     precision, precision_name, param_dtype):
    kind = rcfg.kind
    if kind not in KINDS:
        raise ReferenceConfigError(f"reference.kind={kind!r} is not one of {', '.join(KINDS)}")
    if kind == "none":
        if needs_reference:
            raise ReferenceConfigError(
                f"reference=none, but loss {', '.join(loss_names)} needs a reference model; "
                "use reference=frozen or a reference-free loss (e.g. loss=simpo)"
            )
        return NoReference()
    if not needs_reference:
        # Reference-free losses never pay for a second model, whatever the default says.
        return NoReference()
    if kind == "frozen":
        return Reference(copy.deepcopy(policy).to(device), share_prompt)
    if kind == "checkpoint":
        if not rcfg.name_or_path:
            raise ReferenceConfigError("reference=checkpoint needs reference.name_or_path")
        model = load_model(rcfg.name_or_path, mcfg.dtype, mcfg.trust_remote_code).to(device)
        return Reference(model, share_prompt, kind="checkpoint")
    if kind == "sync":
        if not 0.0 < rcfg.sync_alpha <= 1.0:
            raise ReferenceConfigError(f"reference.sync_alpha={rcfg.sync_alpha}: must be in (0, 1]")
        if rcfg.sync_steps < 1:
            raise ReferenceConfigError(f"reference.sync_steps={rcfg.sync_steps}: must be >= 1")
        return SyncReference(copy.deepcopy(policy).to(device), rcfg.sync_alpha, rcfg.sync_steps, share_prompt)
    if kind == "adapter_off":
        if not hasattr(policy, "disable_adapter"):
            raise ReferenceConfigError("reference=adapter_off needs the LoRA policy from prepare_policy()")
        return AdapterOffReference(policy, share_prompt)
    # precomputed
    if batches is None:
        raise ReferenceConfigError("reference=precomputed needs the run's batches to score")
    if rcfg.name_or_path:
        holder = {"model": load_model(rcfg.name_or_path, mcfg.dtype, mcfg.trust_remote_code).to(device)}
    else:
        holder = {"model": policy}  # the initial policy is the reference: scored before training starts

    def free_model() -> None:
        holder.pop("model", None)
        gc.collect()

    if param_dtype is not None:
        # Scored by a cast copy: the policy itself must keep its float32 master weights.
        holder["model"] = _cast_parameters(copy.deepcopy(holder["model"]), param_dtype)
    # The cache key keeps the dtype string it always had when there is no mixed precision.
    dtype = str(mcfg.dtype) if precision_name == "no" else f"{mcfg.dtype}+autocast:{precision_name}"
    if param_dtype is not None:
        dtype += f"+params:{param_dtype}"
    with precision():
        return build_precomputed(holder["model"], batches, truncation or {}, device, share_prompt,
                                 dtype, free_model, rcfg.cache_dir)
