"""The set-up of a run: everything the loop needs, built once, in order, into one ``TrainingSetup``.

``build_setup(cfg, run_dir)`` checks the config, builds the loss terms, the accelerator (DDP / DeepSpeed /
FSDP), the tokenizer and data, the policy and its reference, the optimizer and schedule, and prepares them
for the processes. Nothing here trains; ``loop.py`` does. The order matters for reproducibility: the seed is
set right after the accelerator, before anything random (data order, LoRA init) happens.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from prefopt import benchmarks, losses
from prefopt import data as data_lib
from prefopt.data.collate import collate
from prefopt.errors import ConfigError
from prefopt.hub import check_hub
from prefopt.lora import check_lora, quantization_config, wrap_policy
from prefopt.losses.beta_modifiers import BetaControl, beta_control
from prefopt.models import load_model, load_tokenizer
from prefopt.online.online import build_online
from prefopt.reference import Reference, build_reference, reference_class
from prefopt.scoring import SequenceScorer, check_inputs, required_inputs
from prefopt.scoring.layout import attention_kind, flex_backward_ok
from prefopt.sinks import check_logger
from prefopt.trainer.batching import batches, steps_per_epoch
from prefopt.trainer.distributed import (
    configure_fsdp,
    describe,
    fsdp_param_dtype,
    make_accelerator,
    prepare_reference,
)
from prefopt.trainer.precision import resolve_precision

log = logging.getLogger("prefopt.train")


@dataclass
class LossTerm:
    """One configured loss of the run (several make a weighted combination, e.g. ``loss=[dpo,sft]``)."""

    spec: losses.LossSpec
    hparams: Any
    weight: float
    state: dict  # a stateful loss's running state (BCO's baseline), checkpointed with the run
    # The term's β modifiers (adaptive_beta, beta_schedule; None = its own fixed β); their state lives in ``state``.
    beta: BetaControl | None = None


@dataclass
class TrainingSetup:
    """Everything a run trains with; the loop, the step, the checkpoint and the summary take this."""

    cfg: DictConfig
    config: dict  # the resolved config, as written to config.yaml and checkpoints
    run_dir: Path
    accelerator: Any
    tokenizer: Any
    datasets: Any  # .train, .eval (tokenized rows), .stats (data counts)
    kind: str  # the collated layout: paired | unpaired | sft
    terms: list[LossTerm]
    needs: frozenset[str]  # extra inputs the losses declared (prefopt.scoring)
    scorer: Any  # the prepared SequenceScorer; its .model is the policy
    reference: Reference
    optimizer: Any
    scheduler: Any
    steps_per_epoch: int
    total_steps: int
    distributed: dict  # how the model is distributed, for summary.json
    # regime=online: turns each step's rows into fresh pairs sampled from the policy (prefopt/online/online.py).
    online: Any = None

    @property
    def device(self):
        return self.accelerator.device

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def policy(self):
        """The policy model itself, unwrapped from DDP/DeepSpeed/FSDP and the scorer."""
        return self.accelerator.unwrap_model(self.scorer).model

    @property
    def loss_states(self) -> list[dict]:
        return [t.state for t in self.terms]

    @property
    def max_grad_norm(self) -> float:
        clip = self.cfg.optimizer.max_grad_norm
        return clip if clip > 0 else float("inf")


def build_setup(cfg: DictConfig, run_dir: Path, before_loading=None) -> TrainingSetup:
    """Build the run. ``before_loading(accelerator)`` runs once the processes exist and before anything heavy
    loads (the loop resolves and validates a resume point there)."""
    check_config(cfg)
    resolve_precision(cfg)  # model.dtype and trainer.precision resolved in cfg: every later load reads them
    terms = build_loss_terms(cfg)  # imports the plug-in modules too (their losses and benchmarks)
    attach_beta_modifiers(terms, cfg, total_steps=1)  # bad adaptive_beta/beta_schedule values stop here
    if cfg.benchmark.name != "none":
        # A misspelled benchmark, or one that cannot run this config (no judge, a missing package), stops now,
        # not after training.
        benchmarks.spec(cfg.benchmark.name).check_config(cfg.benchmark)
    kind = data_kind(terms)
    needs_reference = any(t.spec.needs_reference for t in terms)
    reference_cls = reference_class(cfg.reference, needs_reference, [t.spec.name for t in terms])
    check_reference_fits(cfg, reference_cls)
    needs = required_inputs(terms)  # e.g. per-token log-probs for WPO/LD-DPO, KL pairs for KTO
    check_inputs(needs, cfg.trainer.batch_size, reference_cls)
    resolve_lora(cfg, reference_cls)  # before any model loads: targets checked on the meta device

    # DDP when launched with several processes, DeepSpeed with deepspeed=zero2|zero3, FSDP2 when accelerate
    # is launched with conf/accelerate/fsdp*.yaml (distributed.py).
    accelerator = make_accelerator(cfg, reference_cls)
    check_attention(cfg, accelerator.device)
    set_seed(cfg.seed)
    if before_loading is not None:
        before_loading(accelerator)

    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.chat_template, cfg.model.trust_remote_code)
    datasets = data_lib.build_datasets(cfg.dataset, tokenizer, kind, cfg.model.eot_token)
    online = build_online(cfg, tokenizer, kind, run_dir)
    log.info("data: %d train / %d eval %s rows; counts %s", len(datasets.train), len(datasets.eval), kind,
             datasets.stats)

    policy = load_model(cfg.model.name_or_path, cfg.model.dtype, cfg.model.trust_remote_code,
                        cfg.model.attn_implementation, quantization_config(cfg.model.lora))
    if cfg.model.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    if cfg.model.lora is not None:
        if cfg.model.gradient_checkpointing:
            # The frozen embeddings' outputs need grad, or checkpointed layers pass none back to the adapters.
            policy.enable_input_require_grads()
        policy = wrap_policy(policy, cfg.model.lora, cfg.model.gradient_checkpointing)  # only the adapters train

    def every_batch() -> list[dict]:  # what a reference that scores the dataset once reads
        rows = datasets.train + datasets.eval
        return [collate(chunk, tokenizer.pad_token_id, kind)
                for chunk in batches(rows, cfg.trainer.eval_batch_size, False, 0, True)]

    reference = build_reference(
        cfg.reference, cfg.model, policy, needs_reference, [t.spec.name for t in terms], accelerator.device,
        batches=every_batch if reference_cls.needs_dataset_pass else None,
        truncation={"max_length": cfg.dataset.max_length, "max_prompt_length": cfg.dataset.max_prompt_length},
        share_prompt=cfg.trainer.share_prompt, packing=cfg.trainer.packing, precision=accelerator.autocast,
        precision_name=str(accelerator.mixed_precision), param_dtype=fsdp_param_dtype(accelerator),
        chunk_rows=cfg.trainer.logps_chunk_rows)
    scorer = SequenceScorer(policy, share_prompt=cfg.trainer.share_prompt, chunk_rows=cfg.trainer.logps_chunk_rows,
                            packing=cfg.trainer.packing)
    optimizer = make_optimizer(scorer.parameters(), cfg.optimizer)
    per_epoch = steps_per_epoch(len(datasets.train), cfg, accelerator.num_processes)
    total_steps = per_epoch * cfg.epochs
    if cfg.trainer.max_steps > 0:
        total_steps = min(total_steps, cfg.trainer.max_steps)
    scheduler = make_scheduler(optimizer, cfg.optimizer, total_steps)
    attach_beta_modifiers(terms, cfg, total_steps)
    config = OmegaConf.to_container(cfg, resolve=True)

    configure_fsdp(accelerator, policy)  # FSDP: one shard unit per decoder layer; float32 log-prob outputs
    # The scheduler is stepped by hand once per optimizer step; accelerate's wrapper would step it once per
    # process.
    scorer, optimizer = accelerator.prepare(scorer, optimizer)
    prepare_reference(accelerator, reference)  # ZeRO-3: partitioned for inference
    distributed = describe(accelerator, scorer)
    log.info("distributed: %s", distributed)
    return TrainingSetup(cfg=cfg, config=config, run_dir=run_dir, accelerator=accelerator, tokenizer=tokenizer,
                         datasets=datasets, kind=kind, terms=terms, needs=needs, scorer=scorer, reference=reference,
                         optimizer=optimizer, scheduler=scheduler, steps_per_epoch=per_epoch,
                         total_steps=total_steps, distributed=distributed, online=online)


def check_config(cfg: DictConfig) -> None:
    """Range checks the type schema cannot express; each names its key."""
    # A required value (???) left unset, e.g. experiment=zephyr_ddpo without its SFT checkpoint.
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{', '.join(missing)}: required, but not set; give it on the command line "
                          f"({missing[0]}=...)")
    checks = [
        (cfg.beta > 0, f"beta={cfg.beta}: must be > 0"),
        (cfg.epochs >= 1, f"epochs={cfg.epochs}: must be >= 1"),
        (cfg.optimizer.lr > 0, f"optimizer.lr={cfg.optimizer.lr}: must be > 0"),
        (0 <= cfg.optimizer.warmup_ratio < 1, f"optimizer.warmup_ratio={cfg.optimizer.warmup_ratio}: must be in [0, 1)"),
        (cfg.optimizer.max_grad_norm >= 0, f"optimizer.max_grad_norm={cfg.optimizer.max_grad_norm}: must be >= 0"),
        (cfg.optimizer.name in ("adamw", "rmsprop"), f"optimizer.name={cfg.optimizer.name!r}: must be adamw or rmsprop"),
        (cfg.optimizer.scheduler in SCHEDULERS,
         f"optimizer.scheduler={cfg.optimizer.scheduler!r}: must be one of {', '.join(SCHEDULERS)}"),
        (cfg.optimizer.scheduler not in NO_WARMUP or cfg.optimizer.warmup_ratio == 0,
         f"optimizer.scheduler={cfg.optimizer.scheduler}: has no warmup (as in transformers), but "
         f"optimizer.warmup_ratio={cfg.optimizer.warmup_ratio}; use constant_with_warmup or set "
         f"optimizer.warmup_ratio=0"),
        (cfg.trainer.batch_size >= 1, f"trainer.batch_size={cfg.trainer.batch_size}: must be >= 1"),
        (cfg.trainer.grad_accum >= 1, f"trainer.grad_accum={cfg.trainer.grad_accum}: must be >= 1"),
        (cfg.trainer.eval_every >= 0, f"trainer.eval_every={cfg.trainer.eval_every}: must be >= 0"),
        (cfg.trainer.logps_chunk_rows >= 1, f"trainer.logps_chunk_rows={cfg.trainer.logps_chunk_rows}: must be >= 1"),
        (cfg.benchmark.samples_per_prompt >= 1,
         f"benchmark.samples_per_prompt={cfg.benchmark.samples_per_prompt}: must be >= 1"),
        (len(cfg.loss) > 0, "loss: no loss configured; pick one, e.g. loss=dpo"),
        (cfg.trainer.on_nonfinite in ("stop", "skip"),
         f"trainer.on_nonfinite={cfg.trainer.on_nonfinite!r}: must be stop or skip"),
        (cfg.trainer.checkpoint_every >= 0, f"trainer.checkpoint_every={cfg.trainer.checkpoint_every}: must be >= 0"),
        (cfg.trainer.keep_last >= 0, f"trainer.keep_last={cfg.trainer.keep_last}: must be >= 0"),
        (cfg.logger.mode in ("auto", "online", "offline", "disabled"),
         f"logger.mode={cfg.logger.mode!r}: must be auto, online, offline or disabled"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    check_scheduler(cfg.optimizer)
    check_logger(cfg.logger)  # an unknown tracker, or one not installed
    check_hub(cfg.hub, cfg.trainer.save_model)  # a push that could not happen, found before training


def check_attention(cfg: DictConfig, device) -> None:
    """Attention implementations that cannot run this configuration, refused before any model loads."""
    impl = cfg.model.attn_implementation
    kind = attention_kind(impl)
    if kind == "varlen" and cfg.trainer.share_prompt:
        # Prompt sharing needs a mask in which the rejected branch skips the chosen one; flash kernels take none.
        raise ConfigError(f"trainer.share_prompt=true needs an attention mask, which model.attn_implementation={impl} "
                          "cannot take; set trainer.share_prompt=false (trainer.packing=true stays padding-free) or "
                          "model.attn_implementation=flex_attention")
    if kind == "flex" and not flex_backward_ok(device):
        raise ConfigError(f"model.attn_implementation={impl}: torch {torch.__version__} has no FlexAttention backward "
                          f"on device {device}; train with sdpa there (the dense mask) or on a GPU")


def resolve_lora(cfg: DictConfig, reference: type[Reference]) -> None:
    """``model.lora`` checked before anything loads; a reference that scores with the policy's adapters off
    (reference=adapter_off) gets the schema's LoRA values when none are set, written into the run's config."""
    from prefopt.config import LoraConfig

    if reference.wraps_policy and cfg.model.lora is None:
        cfg.model.lora = OmegaConf.structured(LoraConfig)
        log.info("reference=%s without model.lora: LoRA with the defaults of lora=default", reference.kind)
    check_lora(cfg.model)
    if cfg.model.lora is not None and reference.copies_policy:
        log.warning("reference=%s with model.lora copies the whole base model next to the LoRA policy; "
                    "reference=adapter_off (lora=default's choice) scores the same base without a copy",
                    reference.kind)


def check_reference_fits(cfg: DictConfig, reference: type[Reference]) -> None:
    """What ZeRO-3 (every rank holds a shard of the policy) cannot do with this run, refused up front."""
    zero3 = cfg.deepspeed is not None and cfg.deepspeed.get("zero_optimization", {}).get("stage") == 3
    if not zero3:
        return
    # TR-DPO's sync mixes the policy's weights into the reference; under ZeRO-3 each rank holds a shard.
    if reference.moves_with_policy:
        raise ConfigError(f"reference={reference.kind} is not supported with deepspeed=zero3 (the policy's weights "
                          "are sharded); use zero2")
    # The end-of-run benchmark generates on rank 0 alone; ZeRO-3 weights live on every rank.
    if cfg.benchmark.name != "none":
        raise ConfigError("benchmark: not run inside a deepspeed=zero3 training; set benchmark=none and run "
                          "`python -m prefopt.evaluate` on the saved model")


def build_loss_terms(cfg: DictConfig) -> list[LossTerm]:
    losses.load_plugins(cfg.loss_modules)
    terms = []
    for name, entry in cfg.loss.items():
        values = OmegaConf.to_container(entry, resolve=True) if entry is not None else {}
        weight = float(values.pop("weight", 1.0))
        spec = losses.get(name)
        terms.append(LossTerm(spec, spec.make_hparams(values, where=f"loss.{name}"), weight, {}))
    kinds = {t.spec.data for t in terms}
    if "unpaired" in kinds and len(kinds) > 1:
        raise ConfigError(f"loss: unpaired and paired losses cannot be combined ({', '.join(cfg.loss)})")
    return terms


def attach_beta_modifiers(terms: list[LossTerm], cfg: DictConfig, total_steps: int) -> None:
    """Give every term whose loss takes a β the run's β modifiers (``adaptive_beta``, ``beta_schedule``)."""
    settings = {}
    for key in ("adaptive_beta", "beta_schedule"):
        node = cfg.get(key)
        settings[key] = OmegaConf.to_container(node, resolve=True) if node is not None else None
    if not any(settings.values()):
        return
    for term in terms:
        try:
            term.beta = beta_control(term.spec, term.hparams, term.state, adaptive=settings["adaptive_beta"],
                                     schedule=settings["beta_schedule"], total_steps=total_steps)
        except losses.LossConfigError as err:
            raise ConfigError(str(err)) from None
    if all(t.beta is None for t in terms):
        keys = " and ".join(k for k, v in settings.items() if v is not None)
        raise ConfigError(f"{keys}: set, but no configured loss ({', '.join(t.spec.name for t in terms)}) is a paired "
                          "loss with a beta for it to modify")


def data_kind(terms: list[LossTerm]) -> str:
    # SFT terms read only the chosen side, so they ride along with paired losses (MPO-style mixes).
    kinds = {t.spec.data for t in terms}
    return "unpaired" if "unpaired" in kinds else "paired" if "paired" in kinds else "sft"


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(params, ocfg):
    if ocfg.name == "adamw":
        # The fused kernel updates each tensor in one pass; on CPU the default multi-tensor (foreach) path
        # took 3-5x longer for SmolLM2's 135M parameters (experiments/bench_dpo_speed.py, README).
        return torch.optim.AdamW(params, lr=ocfg.lr, betas=tuple(ocfg.adam_betas), eps=ocfg.eps,
                                 weight_decay=ocfg.weight_decay, fused=True)
    return torch.optim.RMSprop(params, lr=ocfg.lr, eps=ocfg.eps, weight_decay=ocfg.weight_decay)


# transformers' schedules, except reduce_lr_on_plateau (stepped by a metric, not once per optimizer step) and
# greedy (stepped by the loss).
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay")
# transformers' constant ignores num_warmup_steps; a warmup_ratio given with it would silently do nothing.
NO_WARMUP = ("constant",)


def warmup_steps(ocfg, total_steps: int) -> int:
    # TrainingArguments.get_warmup_steps rounds a ratio up the same way.
    return math.ceil(ocfg.warmup_ratio * total_steps)


def check_scheduler(ocfg) -> None:
    """A schedule transformers cannot build from these values (an unknown or missing scheduler_kwargs entry)
    stops now, before the model loads."""
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    try:
        make_scheduler(probe, ocfg, total_steps=10)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"optimizer.scheduler_kwargs={dict(ocfg.scheduler_kwargs or {})} do not fit "
                          f"optimizer.scheduler={ocfg.scheduler}: {err}") from None


def make_scheduler(optimizer, ocfg, total_steps: int):
    """``transformers.get_scheduler``: the same learning rate at every step as a Trainer with the same
    ``lr_scheduler_type``, ``warmup_ratio`` and ``lr_scheduler_kwargs`` (warmup from 0, linear decay to 0)."""
    from transformers import get_scheduler

    kwargs = OmegaConf.to_container(ocfg.scheduler_kwargs, resolve=True) if ocfg.scheduler_kwargs else {}
    return get_scheduler(ocfg.scheduler, optimizer, num_warmup_steps=warmup_steps(ocfg, total_steps),
                         num_training_steps=total_steps, scheduler_specific_kwargs=kwargs)
