"""Reference-model options (``reference=<kind>``).

A reference answers one question for the trainer: the reference log-probs of a batch's completions.
Each kind is a subclass of ``Reference``, registered by ``@register_reference``, that declares as class
attributes what it is able to do and what it needs. The trainer, the benchmark runner, the checkpoint and the
distributed code ask those questions; none of them tests a kind's name (only this module knows the names).

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
- ``adapter_off``: the policy carries LoRA adapters (``model.lora``, prefopt/lora.py; ``lora=default`` picks
  this kind); the reference is the same model with its adapters disabled, so the base weights exist once.
- ``sync``: TR-DPO (Gorbatovski et al. 2024, arXiv:2404.09656): a frozen copy that is pulled toward the
  policy every ``sync_steps`` optimizer steps, θ_ref ← α·θ + (1 − α)·θ_ref with α = ``sync_alpha``
  (α = 1 is the paper's hard update).
- ``bema``: BEMA (Block & Zhang 2025, arXiv:2508.00180): every ``bema_update_freq`` steps the reference
  becomes the bias-corrected exponential moving average of the policy's weights, EMA_t + α_t·(θ_t − θ_0)
  (``BEMAReference``).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from prefopt.errors import PrefoptError
from prefopt.lora import is_adapter
from prefopt.models import cache_root, load_model
from prefopt.scoring.logps import CHUNK_ROWS, SequenceScorer

log = logging.getLogger(__name__)

# Bump when the cached file's layout or the scoring changes, so stale caches are never read.
REFLOGPS_FORMAT = "1"


class ReferenceConfigError(PrefoptError, ValueError):
    pass


@dataclass
class BuildContext:
    """What a reference kind may need to build itself; the trainer fills it once."""

    policy: Any  # the policy as it will be trained (LoRA-wrapped where the kind wrapped it)
    model_cfg: Any
    device: Any
    share_prompt: bool = False
    # needs_dataset_pass kinds only: every collated train and eval batch, built on demand.
    batches: Any = None
    truncation: dict | None = None
    # The autocast the policy's forward runs under (accelerate's, for bf16/fp16 mixed precision) and its
    # name; the dtype FSDP casts the policy's parameters to (None: not cast). The reference computes as the
    # policy does, or every implicit reward is biased from step 0 (log 2 is not the first DPO loss).
    precision: Any = contextlib.nullcontext
    precision_name: str = "no"
    param_dtype: torch.dtype | None = None
    # trainer.logps_chunk_rows: the head runs over chunks of this many completion tokens (prefopt.scoring).
    chunk_rows: int = CHUNK_ROWS
    # trainer.packing: every sequence of a batch in one row, no padding (prefopt/scoring/layout.py).
    packing: bool = False


class Reference:
    """The base of every reference kind. Subclasses override the capabilities they have."""

    kind = ""
    # Its model is the one the benchmarks compare the policy against (the initial policy, or the reference
    # checkpoint) and training never changes it: the end-of-run benchmark reuses it instead of reloading.
    holds_frozen_model = False
    # It must score the dataset once before training (the trainer collates every batch for it).
    needs_dataset_pass = False
    # Its weights change during training: checkpoints save them, and a sharded policy cannot feed them.
    moves_with_policy = False
    # It scores with the policy itself, LoRA adapters disabled: the policy must carry adapters (model.lora; its
    # schema values when unset), and FSDP cannot shard such a policy.
    wraps_policy = False
    # It deep-copies the initial policy: next to a LoRA policy, a second full copy of the frozen base (warned).
    copies_policy = False
    # It holds a model that ZeRO-3 may partition for inference like the policy.
    shardable = False
    # It runs a forward pass over every batch the policy scores (summary.json's compute counts those tokens).
    forwards_per_batch = False
    # It can give per-token log-probs (LD-DPO), and score any sequence, not only the dataset's (KTO's
    # mismatched pairs); ``limitation`` says why not in an error message.
    token_logps = True
    scores_any_sequence = True
    limitation = ""

    model = None
    precision = contextlib.nullcontext

    def __init__(self) -> None:
        self.seconds = 0.0  # time spent in reference passes, reported in summary.json

    def logps(self, batch, return_tokens: bool = False):
        """``(logps, lengths)`` of the batch's completions, ``(rows,)`` each (plus per-token log-probs and
        their rows with ``return_tokens``), or None for reference-free training."""
        raise NotImplementedError

    def after_step(self, step: int, policy) -> None:
        """Called after every optimizer step; references that move with the policy override this."""

    def info(self) -> dict:
        return {"kind": self.kind}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors besides ``model``'s weights that a resumed run needs (BEMA's θ_0 and EMA), by name; the
        checkpoint saves them with the moving reference's weights."""
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what ``state_tensors`` returned."""

    @classmethod
    def check_config(cls, rcfg) -> None:
        """Range checks of this kind's keys, before anything is loaded."""

    @classmethod
    def initial_model_path(cls, rcfg, mcfg) -> str:
        """The model a benchmark compares the trained policy against: the model the run started from."""
        return mcfg.name_or_path

    @classmethod
    def build(cls, rcfg, ctx: BuildContext) -> Reference:
        raise NotImplementedError


_KINDS: dict[str, type[Reference]] = {}


def register_reference(kind: str):
    """Register a ``Reference`` subclass as ``reference=<kind>`` (the same shape as ``@register_loss``)."""

    def decorate(cls: type[Reference]) -> type[Reference]:
        if kind in _KINDS:
            raise ValueError(f"reference kind {kind!r} is already registered")
        cls.kind = kind
        _KINDS[kind] = cls
        return cls

    return decorate


def kind_class(kind: str) -> type[Reference]:
    """The registered class of ``reference.kind``."""
    cls = _KINDS.get(kind)
    if cls is None:
        raise ReferenceConfigError(f"reference.kind={kind!r} is not one of {', '.join(_KINDS)}")
    return cls


def reference_class(rcfg, needs_reference: bool, loss_names: list[str] = ()) -> type[Reference]:
    """The class of ``reference.kind`` for losses that do or do not need a reference. Reference-free losses
    never pay for a second model, whatever the config says."""
    cls = kind_class(rcfg.kind)
    if cls is NoReference and needs_reference:
        raise ReferenceConfigError(
            f"reference=none, but loss {', '.join(loss_names)} needs a reference model; "
            "use reference=frozen or a reference-free loss (e.g. loss=simpo)"
        )
    if not needs_reference:
        return NoReference
    cls.check_config(rcfg)
    return cls


@register_reference("none")
class NoReference(Reference):
    token_logps = scores_any_sequence = False
    limitation = "gives no log-probs"

    def logps(self, batch, return_tokens: bool = False):
        return None

    @classmethod
    def build(cls, rcfg, ctx: BuildContext) -> Reference:
        return cls()


class ModelReference(Reference):
    """A reference that holds a model and scores batches with it in eval mode under no_grad."""

    shardable = True
    forwards_per_batch = True

    def __init__(self, model, share_prompt: bool = False, chunk_rows: int = CHUNK_ROWS, packing: bool = False):
        super().__init__()
        model.eval()
        model.requires_grad_(False)
        self.model = model
        self.scorer = SequenceScorer(model, share_prompt=share_prompt, chunk_rows=chunk_rows, packing=packing)

    @torch.no_grad()
    def logps(self, batch, return_tokens: bool = False):
        start = time.perf_counter()
        with self.precision():
            out = self.scorer(batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
                              return_tokens=return_tokens, n_pairs=batch.get("n_examples"))
        self.seconds += time.perf_counter() - start
        return out


@register_reference("frozen")
class FrozenReference(ModelReference):
    holds_frozen_model = True
    copies_policy = True

    @classmethod
    def build(cls, rcfg, ctx: BuildContext) -> Reference:
        return cls(copy.deepcopy(ctx.policy).to(ctx.device), ctx.share_prompt, ctx.chunk_rows, ctx.packing)


@register_reference("checkpoint")
class CheckpointReference(ModelReference):
    holds_frozen_model = True

    @classmethod
    def check_config(cls, rcfg) -> None:
        if not rcfg.name_or_path:
            raise ReferenceConfigError("reference=checkpoint needs reference.name_or_path")

    @classmethod
    def initial_model_path(cls, rcfg, mcfg) -> str:
        return rcfg.name_or_path or mcfg.name_or_path

    @classmethod
    def build(cls, rcfg, ctx: BuildContext) -> Reference:
        mcfg = ctx.model_cfg
        model = load_model(rcfg.name_or_path, mcfg.dtype, mcfg.trust_remote_code).to(ctx.device)
        return cls(model, ctx.share_prompt, ctx.chunk_rows, ctx.packing)


@register_reference("sync")
class SyncReference(ModelReference):
    """TR-DPO: θ_ref ← α·θ + (1 − α)·θ_ref every ``sync_steps`` optimizer steps."""

    moves_with_policy = True
    copies_policy = True

    def __init__(self, model, alpha: float, every: int, share_prompt: bool = False, chunk_rows: int = CHUNK_ROWS,
                 packing: bool = False):
        super().__init__(model, share_prompt, chunk_rows, packing)
        self.alpha = alpha
        self.every = every
        self.synced_at: list[int] = []

    @classmethod
    def check_config(cls, rcfg) -> None:
        if not 0.0 < rcfg.sync_alpha <= 1.0:
            raise ReferenceConfigError(f"reference.sync_alpha={rcfg.sync_alpha}: must be in (0, 1]")
        if rcfg.sync_steps < 1:
            raise ReferenceConfigError(f"reference.sync_steps={rcfg.sync_steps}: must be >= 1")

    @classmethod
    def build(cls, rcfg, ctx: BuildContext) -> Reference:
        return cls(copy.deepcopy(ctx.policy).to(ctx.device), rcfg.sync_alpha, rcfg.sync_steps, ctx.share_prompt,
                   ctx.chunk_rows, ctx.packing)

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


@register_reference("bema")
class BEMAReference(ModelReference):
    """BEMA, bias-corrected exponential moving average (Block & Zhang 2025, arXiv:2508.00180), as the reference.

    With t the optimizer step, ρ = ``bema_lag``, γ = ``bema_multiplier``, κ = ``bema_ema_power``,
    η = ``bema_bias_power``, τ = ``bema_update_after``, φ = ``bema_update_freq``:

        β_t = max((ρ + γ·t)^(−κ), ``bema_min_ema_multiplier``)      EMA decay
        α_t = (ρ + γ·t)^(−η)                                        bias-correction scale
        EMA_t = (1 − β_t)·EMA_{t−φ} + β_t·θ_t
        θ_ref ← EMA_t + α_t·(θ_t − θ_0)

    at every t > τ with (t − τ) a multiple of φ; at t = τ (τ > 0) θ_0 and the EMA are reset to the policy's
    weights; before that the reference is the initial policy. This is TRL 1.16's ``BEMACallback`` update (its
    t is the global step, not t − τ; the authors' src/core_online.py in abblock/bema uses
    t' = max(t − τ + ρ, 1) and (1 + γ·t')^(−power), which differs by the lag's placement; both agree with
    TRL's at τ = 0 up to that shift). tests/test_reference_bema.py checks parity with TRL's callback.

    θ_0 and the EMA are float32 copies of every trainable parameter on the reference's device (2 extra copies
    of the weights); they and the reference's weights are checkpointed (``state_tensors``).
    """

    moves_with_policy = True
    copies_policy = True

    def __init__(self, model, rcfg, share_prompt: bool = False, chunk_rows: int = CHUNK_ROWS, packing: bool = False):
        super().__init__(model, share_prompt, chunk_rows, packing)
        self.update_freq = int(rcfg.bema_update_freq)
        self.ema_power = float(rcfg.bema_ema_power)
        self.bias_power = float(rcfg.bema_bias_power)
        self.lag = float(rcfg.bema_lag)
        self.update_after = int(rcfg.bema_update_after)
        self.multiplier = float(rcfg.bema_multiplier)
        self.min_ema_multiplier = float(rcfg.bema_min_ema_multiplier)
        # The reference was deep-copied from the initial policy, so its parameters are θ_0.
        self.theta0 = {n: p.detach().float().clone() for n, p in model.named_parameters()}
        self.ema = {n: t.clone() for n, t in self.theta0.items()}
        self.updated_at: list[int] = []

    @classmethod
    def check_config(cls, rcfg) -> None:
        checks = [
            (rcfg.bema_update_freq >= 1, "bema_update_freq", "must be >= 1"),
            (rcfg.bema_ema_power >= 0, "bema_ema_power", "must be >= 0"),
            (rcfg.bema_bias_power >= 0, "bema_bias_power", "must be >= 0"),
            (rcfg.bema_lag >= 0, "bema_lag", "must be >= 0"),
            (rcfg.bema_update_after >= 0, "bema_update_after", "must be >= 0"),
            (rcfg.bema_multiplier > 0, "bema_multiplier", "must be > 0"),
            (0 <= rcfg.bema_min_ema_multiplier <= 1, "bema_min_ema_multiplier", "must be in [0, 1]"),
        ]
        for ok, key, message in checks:
            if not ok:
                raise ReferenceConfigError(f"reference.{key}={rcfg[key]}: {message}")

    @classmethod
    def build(cls, rcfg, ctx: BuildContext) -> Reference:
        return cls(copy.deepcopy(ctx.policy).to(ctx.device), rcfg, ctx.share_prompt, ctx.chunk_rows, ctx.packing)

    def ema_beta(self, step: int) -> float:
        return max((self.lag + self.multiplier * step) ** (-self.ema_power), self.min_ema_multiplier)

    def bias_alpha(self, step: int) -> float:
        return (self.lag + self.multiplier * step) ** (-self.bias_power)

    @torch.no_grad()
    def after_step(self, step: int, policy) -> None:
        if step < self.update_after:
            return
        params = dict(policy.named_parameters())
        if step == self.update_after:
            for name, theta0 in self.theta0.items():
                theta0.copy_(params[name].detach())
                self.ema[name].copy_(params[name].detach())
            return
        if (step - self.update_after) % self.update_freq:
            return
        beta, alpha = self.ema_beta(step), self.bias_alpha(step)
        ref_params = dict(self.model.named_parameters())
        for name, theta0 in self.theta0.items():
            theta = params[name].detach().float()
            ema = self.ema[name]
            ema.mul_(1.0 - beta).add_(theta, alpha=beta)
            ref_params[name].copy_(ema + alpha * (theta - theta0))
        self.updated_at.append(step)
        log.info("BEMA reference updated at step %d (beta_t=%.4g, alpha_t=%.4g)", step, beta, alpha)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {**{f"theta0/{n}": t for n, t in self.theta0.items()}, **{f"ema/{n}": t for n, t in self.ema.items()}}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        for name in self.theta0:
            self.theta0[name].copy_(tensors[f"theta0/{name}"])
            self.ema[name].copy_(tensors[f"ema/{name}"])

    def info(self) -> dict:
        return {"kind": self.kind, "bema_update_freq": self.update_freq, "bema_update_after": self.update_after,
                "updated_at": self.updated_at}


@register_reference("adapter_off")
class AdapterOffReference(Reference):
    """The LoRA policy with its adapters disabled: the base model, with no second copy of its weights."""

    wraps_policy = True
    forwards_per_batch = True

    def __init__(self, peft_policy, share_prompt: bool = False, chunk_rows: int = CHUNK_ROWS, packing: bool = False):
        super().__init__()
        self.policy = peft_policy
        self.scorer = SequenceScorer(peft_policy, share_prompt=share_prompt, chunk_rows=chunk_rows, packing=packing)

    @classmethod
    def build(cls, rcfg, ctx: BuildContext) -> Reference:
        if not hasattr(ctx.policy, "disable_adapter"):
            raise ReferenceConfigError("reference=adapter_off needs a policy with LoRA adapters (model.lora)")
        return cls(ctx.policy, ctx.share_prompt, ctx.chunk_rows, ctx.packing)

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
    """Hash of every parameter and buffer (names, dtypes, shapes, bytes); tied tensors hashed once. Of a LoRA
    policy, the base's alone under the base's names: it is scored with its adapters off, so it shares the
    cache of a run without LoRA on the same base."""
    digest = hashlib.blake2b(digest_size=16)
    seen = set()
    for name, tensor in sorted(_base_state(model).items()):
        ptr = tensor.data_ptr()
        digest.update(name.encode())
        if ptr in seen:
            continue
        seen.add(ptr)
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _base_state(model) -> dict[str, torch.Tensor]:
    if not is_adapter(model):
        return model.state_dict()
    # peft renames base weights <prefix>base_model.model.<name> and <module>.base_layer.<param>.
    return {k.removeprefix("base_model.model.").replace(".base_layer.", "."): v
            for k, v in model.state_dict().items() if "lora_" not in k}


@register_reference("precomputed")
class PrecomputedReference(Reference):
    """Reference log-probs looked up by sequence; see the module docstring."""

    needs_dataset_pass = True
    token_logps = scores_any_sequence = False
    limitation = "stores per-sequence log-probs of the dataset only"

    def __init__(self, table: dict[bytes, float], key: str, path: Path, cache: str, compute_seconds: float):
        super().__init__()
        self.table = table
        self.key = key
        self.path = path
        self.cache = cache
        self.compute_seconds = compute_seconds

    @classmethod
    def initial_model_path(cls, rcfg, mcfg) -> str:
        # It may name a separate reference model.
        return rcfg.name_or_path or mcfg.name_or_path

    @classmethod
    def build(cls, rcfg, ctx: BuildContext) -> Reference:
        if ctx.batches is None:
            raise ReferenceConfigError("reference=precomputed needs the run's batches to score")
        mcfg = ctx.model_cfg
        if rcfg.name_or_path:
            holder = {"model": load_model(rcfg.name_or_path, mcfg.dtype, mcfg.trust_remote_code).to(ctx.device)}
        else:
            holder = {"model": ctx.policy}  # the initial policy is the reference: scored before training starts

        def free_model() -> None:
            holder.pop("model", None)
            gc.collect()

        if ctx.param_dtype is not None:
            # Scored by a cast copy: the policy itself must keep its float32 master weights.
            holder["model"] = _cast_parameters(copy.deepcopy(holder["model"]), ctx.param_dtype)
        # The cache key keeps the dtype string it always had when there is no mixed precision.
        dtype = str(mcfg.dtype) if ctx.precision_name == "no" else f"{mcfg.dtype}+autocast:{ctx.precision_name}"
        if ctx.param_dtype is not None:
            dtype += f"+params:{ctx.param_dtype}"
        batches = ctx.batches() if callable(ctx.batches) else ctx.batches
        with ctx.precision():
            return build_precomputed(holder["model"], batches, ctx.truncation or {}, ctx.device, ctx.share_prompt,
                                     dtype, free_model, rcfg.cache_dir, ctx.chunk_rows, ctx.packing)

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
                      dtype: str, free_model, cache_dir: str | None = None,
                      chunk_rows: int = CHUNK_ROWS, packing: bool = False) -> PrecomputedReference:
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
            table = _score_all(model, batches, device, share_prompt, chunk_rows, packing)
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
def _score_all(model, batches: list[dict], device, share_prompt: bool, chunk_rows: int,
               packing: bool = False) -> dict[bytes, float]:
    was_training = model.training
    model.eval()
    scorer = SequenceScorer(model, share_prompt=share_prompt, chunk_rows=chunk_rows, packing=packing)
    table = {}
    # A LoRA policy's reference is its base: adapters off (LoRA's B starts at zero, but need not).
    adapters_off = model.disable_adapter() if is_adapter(model) else contextlib.nullcontext()
    try:
        with adapters_off:
            for batch in batches:
                keys = sequence_keys(batch)
                logps, _ = scorer(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                  batch["completion_mask"].to(device), n_pairs=batch.get("n_examples"))
                table.update(zip(keys, logps.double().tolist(), strict=True))
    finally:
        model.train(was_training)
    return table


def _cast_parameters(model, dtype: torch.dtype):
    """Parameters only, as FSDP's MixedPrecisionPolicy does: buffers such as RoPE's inv_freq keep their dtype
    (``model.to(dtype)`` would cast them too, and the rotary angles would differ from the policy's)."""
    for param in model.parameters():
        param.data = param.data.to(dtype)
    return model


def build_reference(rcfg, mcfg, policy, needs_reference: bool, loss_names: list[str], device,
                    batches: list[dict] | None = None, truncation: dict | None = None,
                    share_prompt: bool = False, precision=None, precision_name: str = "no",
                    param_dtype: torch.dtype | None = None, chunk_rows: int = CHUNK_ROWS,
                    packing: bool = False) -> Reference:
    """The run's reference. ``batches``: every collated train and eval batch, or a function returning them
    (read by ``needs_dataset_pass`` kinds only).

    The reference computes as the policy does: ``precision`` is the policy's autocast context
    (``accelerator.autocast``), named ``precision_name`` (accelerate's mixed_precision); ``param_dtype`` the
    dtype FSDP's mixed precision casts the policy's parameters to for its forward (None: not cast), to which
    a held reference model is cast as well. Precomputed scores are cached per precision."""
    cls = reference_class(rcfg, needs_reference, loss_names)
    ctx = BuildContext(policy=policy, model_cfg=mcfg, device=device, share_prompt=share_prompt, batches=batches,
                       truncation=truncation, precision=precision or contextlib.nullcontext,
                       precision_name=precision_name, param_dtype=param_dtype, chunk_rows=chunk_rows,
                       packing=packing)
    reference = cls.build(rcfg, ctx)
    if reference.model is not None and param_dtype is not None:
        _cast_parameters(reference.model, param_dtype)
    if precision is not None:
        reference.precision = precision
    return reference
