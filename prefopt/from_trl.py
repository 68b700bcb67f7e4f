"""Turn an alignment-handbook or TRL DPO recipe YAML into the equivalent prefopt command.

    python -m prefopt.from_trl recipe.yaml            # the command, then the ignored fields as comments
    python -m prefopt.from_trl recipe.yaml --lines    # one override per line (for scripts)
    python -m prefopt.from_trl --table                # the field table of docs/coming_from_trl.md

A recipe is the flat YAML that ``TrlParser``/``H4ArgumentParser`` read into ``DPOConfig`` (a
``TrainingArguments``), ``ModelConfig``/``ModelArguments`` and ``ScriptArguments``/``DataArguments``, e.g.
alignment-handbook's ``recipes/zephyr-7b-beta/dpo/config_full.yaml``. Every field is one of three kinds:

- mapped: it becomes a prefopt override (``learning_rate`` -> ``optimizer.lr``); ``loss_type`` goes through
  the loss registry, whose ``trl_name`` and aliases know TRL's names (``sigmoid`` -> ``loss=dpo``);
- ignored: it has no effect on what prefopt trains (``output_dir``, ``push_to_hub``, ...), listed with why;
- refused: a field this module does not know, or a value prefopt cannot represent (``optim: adafactor``),
  stops the conversion with one line naming the field (``FromTrlError``, exit code 1).

The emitted overrides are composed with prefopt's own config (Hydra's compose on ``CONF_DIR``, as the
train command does) before they are printed, so a mapping to a key that no longer exists, or a value of the
wrong type, fails here rather than in the user's run. ``tests/test_from_trl.py`` converts the Zephyr recipe.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefopt.errors import PrefoptError


class FromTrlError(PrefoptError, ValueError):
    """A recipe field prefopt does not know, or a value it cannot represent; the message names the field."""


Pairs = list[tuple[str, Any]]

# Fields copied as they are to one prefopt key: recipe field -> (prefopt key, what it is).
DIRECT: dict[str, tuple[str, str]] = {
    "model_name_or_path": ("model.name_or_path", "the policy (and, under reference=frozen, the reference)"),
    "trust_remote_code": ("model.trust_remote_code", ""),
    "attn_implementation": ("model.attn_implementation", ""),
    "gradient_checkpointing": ("model.gradient_checkpointing", ""),
    "beta": ("beta", "β, shared by every loss through ${beta}"),
    "learning_rate": ("optimizer.lr", "peak learning rate; prefopt's default 1e-5 suits SmolLM2-135M on small data"),
    "weight_decay": ("optimizer.weight_decay", ""),
    "adam_epsilon": ("optimizer.eps", ""),
    "max_grad_norm": ("optimizer.max_grad_norm", "0 disables clipping in both; default 1.0 in both"),
    "warmup_ratio": ("optimizer.warmup_ratio", "linear warmup from 0, as in HF; prefopt's default 0.1 (HF: 0) is "
                                               "what DPO recipes use"),
    "per_device_train_batch_size": ("trainer.batch_size", "pairs per device per micro-step"),
    "per_device_eval_batch_size": ("trainer.eval_batch_size", ""),
    "gradient_accumulation_steps": ("trainer.grad_accum", "global batch = batch_size x grad_accum x processes"),
    "max_steps": ("trainer.max_steps", "-1 = all epochs, in both"),
    "logging_steps": ("trainer.log_every", ""),
    "group_by_length": ("trainer.group_by_length", "prefopt's default is true (HF: false)"),
    "seed": ("seed", ""),
    "data_seed": ("dataset.seed", ""),
    "max_length": ("dataset.max_length", "prompt + completion tokens"),
    "max_prompt_length": ("dataset.max_prompt_length", ""),
    "lora_r": ("model.lora.r", "with use_peft: true"),
    "lora_alpha": ("model.lora.alpha", "with use_peft: true"),
    "lora_dropout": ("model.lora.dropout", "with use_peft: true"),
    "lora_target_modules": ("model.lora.target_modules", "with use_peft: true"),
}

# Fields with no effect on what prefopt trains: recipe field -> why it is safe to drop.
IGNORED: dict[str, str] = {
    "output_dir": "each run writes its own Hydra directory (runs/<date>/<time>); pass run_dir= to choose one",
    "overwrite_output_dir": "a run directory is never reused (resume= continues one)",
    "logging_dir": "metrics go to <run_dir>/metrics.jsonl",
    "log_level": "logging verbosity only",
    "log_level_replica": "logging verbosity only",
    "logging_first_step": "prefopt logs every trainer.log_every steps from step 1",
    "logging_strategy": "prefopt logs every trainer.log_every optimizer steps",
    "hub_strategy": "prefopt pushes once, after training (hub.push); there are no intermediate pushes",
    "preprocessing_num_workers": "tokenization worker count: speed only (tokenized rows are cached)",
    "dataset_num_proc": "tokenization worker count: speed only (tokenized rows are cached)",
    "dataloader_num_workers": "data loading speed only",
    "do_train": "prefopt.train always trains",
    "do_eval": "held-out pairs are always evaluated at the end (trainer.eval_every adds periodic ones)",
    "bf16": "precision is model.dtype (auto = bf16 on a bf16-capable GPU, fp32 on CPU)",
    "tf32": "matmul precision on Ampere+ GPUs: speed, not the recipe",
    "gradient_checkpointing_kwargs": "use_reentrant only changes memory and speed, not the gradients",
    "remove_unused_columns": "prefopt's data loaders keep only what they parse",
    "ddp_timeout": "process-group timeout only",
    "save_only_model": "a checkpoint always holds what resume needs",
    "generate_during_eval": "generation is the benchmark's job (benchmark=...), after training",
    "truncation_mode": "prefopt's own rule: the prompt is cut from the left to dataset.max_prompt_length, the "
                       "completions from the right to dataset.max_length (counted in summary.json)",
    "disable_dropout": "prefopt keeps the model config's dropout, 0 in Llama, Mistral, Qwen and SmolLM2",
    "pad_to_multiple_of": "padding: speed only",
    "pad_token": "padding is masked out of every log-prob",
    "precompute_ref_batch_size": "batch size of a precomputation: speed only",
    "activation_offloading": "memory only",
    "router_aux_loss_coef": "MoE router loss: prefopt adds none (it trains dense models)",
}

# DPOConfig fields that are hyperparameters of a loss: TRL field -> (prefopt hyperparameter, TRL default).
LOSS_FIELDS: dict[str, tuple[str, Any]] = {
    "label_smoothing": ("label_smoothing", 0.0),
    "ld_alpha": ("ld_alpha", None),
    "use_weighting": ("wpo", False),
    "f_divergence_type": ("f_divergence", "reverse_kl"),
    "f_alpha_divergence_coef": ("f_alpha", 0.5),
    "discopop_tau": ("tau", 0.05),
    "simpo_gamma": ("gamma", None),
    "cpo_alpha": ("alpha", None),
}

# TrainingArguments defaults (the same in every transformers release a DPO recipe targets) that differ from
# prefopt's, or that a run's result depends on: a recipe that leaves them out trains with these under TRL, so
# the conversion sets them too.
TRL_DEFAULTS: dict[str, Any] = {
    "max_grad_norm": 1.0, "warmup_ratio": 0.0, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8,
    "gradient_accumulation_steps": 1, "num_train_epochs": 3, "weight_decay": 0.0, "lr_scheduler_type": "linear",
    "group_by_length": False, "seed": 42, "beta": 0.1,
}
# Fields whose TRL default moved between releases: left out, prefopt's own value stays, and the output says so.
UNSET_NOTES: dict[str, str] = {
    "learning_rate": "not set: TRL's default depends on the release (DPOConfig 1e-6, TrainingArguments 5e-5); "
                     "prefopt keeps optimizer.lr=1e-5",
    "max_length": "not set: TRL's default depends on the release; prefopt keeps the dataset option's",
    "max_prompt_length": "not set: TRL's default depends on the release; prefopt keeps the dataset option's",
}

OPTIMIZERS = {"adamw_torch": "adamw", "adamw_torch_fused": "adamw", "adamw_hf": "adamw", "rmsprop": "rmsprop"}
# prefopt's schedules are transformers.get_scheduler's, under the same names. HF's constant ignores the warmup;
# prefopt refuses a warmup_ratio with it, so it is emitted with 0.
DTYPES = {None: "auto", "auto": "auto", "bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


@dataclass
class Conversion:
    """The overrides (in the recipe's order) and the ignored fields with their reasons."""

    overrides: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)
    # TRL defaults the recipe left out but the conversion sets (see TRL_DEFAULTS), and notes on unset fields.
    defaulted: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)

    def command(self) -> str:
        return " \\\n  ".join(["python -m prefopt.train", *(shlex.quote(o) for o in self.overrides)])


def hydra_value(value: Any) -> str:
    """``value`` as Hydra's override grammar reads it back (strings quoted when they need it)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if re.fullmatch(r"[A-Za-z0-9_./:\-]+", text) and text not in ("true", "false", "null"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _check(name: str, value: Any, kind: type | tuple, what: str) -> Any:
    if isinstance(value, bool) and kind is not bool:
        raise FromTrlError(f"{name}: expected {what}, got {value!r}")
    if not isinstance(value, kind):
        raise FromTrlError(f"{name}: expected {what}, got {value!r}")
    return value


def _losses(recipe: dict) -> tuple[list[str], Pairs]:
    """loss_type (one name or a list, with loss_weights) and rpo_alpha -> loss=..., loss.<name>.weight."""
    from prefopt import losses

    types = recipe.get("loss_type", "sigmoid")
    types = [types] if isinstance(types, str) else list(types or ["sigmoid"])
    names = []
    for trl in types:
        # TRL's DPOTrainer names first (a trl_name without "(OtherTrainer)"), then prefopt's names and aliases.
        exact = [s["name"] for s in losses.available() if s["trl_name"] == trl]
        try:
            names.append(exact[0] if exact else losses.get(trl).name)
        except losses.UnknownLossError:
            raise FromTrlError(f"loss_type: {trl!r} is not a loss prefopt has; known: "
                               f"{', '.join(sorted({s['trl_name'] for s in losses.available() if s['trl_name']}))}"
                               ) from None
    pairs: Pairs = []
    if recipe.get("rpo_alpha") is not None:
        # TRL's RPO: the DPO loss plus rpo_alpha x the chosen answers' NLL averaged over the batch's tokens.
        if names != ["dpo"]:
            raise FromTrlError(f"rpo_alpha: prefopt's rpo is DPO + NLL; it cannot be added to loss_type {types}")
        names = ["rpo"]
        pairs += [("loss.rpo.alpha", float(recipe["rpo_alpha"])), ("loss.rpo.nll_average", "batch_tokens")]
    weights = recipe.get("loss_weights")
    if weights is not None:
        if len(weights) != len(names):
            raise FromTrlError(f"loss_weights: {len(weights)} weights for {len(names)} loss types")
        pairs += [(f"loss.{n}.weight", float(w)) for n, w in zip(names, weights, strict=True)]
    for trl_field, (hp, trl_default) in LOSS_FIELDS.items():
        if trl_field not in recipe:
            continue
        value = recipe[trl_field]
        having = [n for n in names if hp in {f.name for f in _fields(losses.get(n).hparams)}]
        if not having:
            if value == trl_default:
                continue
            raise FromTrlError(f"{trl_field}: loss {'+'.join(names)} has no {hp} hyperparameter")
        if trl_field == "ld_alpha" and value is None:
            value = 1.0  # TRL's None = off = prefopt's 1.0
        if value is None:
            continue
        pairs += [(f"loss.{n}.{hp}", value) for n in having]
    return names, pairs


def _fields(cls: type):
    import dataclasses

    return dataclasses.fields(cls)


def _dataset_option(hub_id: str) -> Pairs:
    """The prefopt dataset option whose default path is ``hub_id``, else ``dataset=generic`` with that path."""
    from omegaconf import OmegaConf

    from prefopt.config import CONF_DIR

    for yaml in sorted((Path(CONF_DIR) / "dataset").glob("*.yaml")):
        if OmegaConf.load(yaml).get("path") == hub_id:
            return [("dataset", yaml.stem)]
    return [("dataset", "generic"), ("dataset.path", hub_id)]


def _dataset(recipe: dict) -> Pairs:
    mixer, name, mixture = recipe.get("dataset_mixer"), recipe.get("dataset_name"), recipe.get("dataset_mixture")
    given = [k for k in ("dataset_mixer", "dataset_name", "dataset_mixture") if recipe.get(k) is not None]
    if len(given) > 1:
        raise FromTrlError(f"{' and '.join(given)}: give one dataset")
    pairs: Pairs = []
    splits = list(recipe.get("dataset_splits") or [])
    if mixer is not None:
        if not isinstance(mixer, dict) or len(mixer) != 1 or float(next(iter(mixer.values()))) != 1.0:
            raise FromTrlError(f"dataset_mixer: prefopt trains on one dataset at full weight, got {mixer!r}")
        name = next(iter(mixer))
    if mixture is not None:
        entries = mixture.get("datasets", []) if isinstance(mixture, dict) else []
        if len(entries) != 1 or float(entries[0].get("weight", 1.0)) != 1.0:
            raise FromTrlError("dataset_mixture: prefopt trains on one dataset split at full weight, got "
                               f"{len(entries)} entries; use dataset_name with dataset_train_split/dataset_test_split")
        name = entries[0]["id"]
        splits = [entries[0].get("split", "train")]
    if name is not None:
        pairs += _dataset_option(str(name))
    # The handbook puts splits containing "train" in training, those containing "test" in evaluation.
    train = [s for s in splits if "train" in s]
    test = [s for s in splits if "test" in s]
    if len(train) > 1 or len(test) > 1 or len(train) + len(test) != len(splits):
        raise FromTrlError(f"dataset_splits: prefopt takes one train split and one test split, got {splits}")
    train_split = recipe.get("dataset_train_split", train[0] if train else None)
    test_split = recipe.get("dataset_test_split", test[0] if test else None)
    if train_split is not None:
        pairs.append(("dataset.train_split", str(train_split)))
    if test_split is not None:
        pairs.append(("dataset.eval_split", str(test_split)))
    return pairs


# Fields read by a handler below (with the dataset or the losses, or needing a value check); each handler
# returns the overrides of its field (or none).
def _optim(v, r) -> Pairs:
    if v not in OPTIMIZERS:
        raise FromTrlError(f"optim: {v!r} is not an optimizer prefopt has; it has {', '.join(OPTIMIZERS)}")
    return [("optimizer", OPTIMIZERS[v])]


def _scheduler(v, r) -> Pairs:
    from prefopt.trainer.setup import SCHEDULERS

    if v not in SCHEDULERS:
        raise FromTrlError(f"lr_scheduler_type: {v!r} is not a schedule prefopt has; it has {', '.join(SCHEDULERS)}")
    pairs: Pairs = [("optimizer.scheduler", v)]
    return pairs + ([("optimizer.warmup_ratio", 0.0)] if v == "constant" else [])


def _scheduler_kwargs(v, r) -> Pairs:
    if not isinstance(v, dict):
        raise FromTrlError(f"lr_scheduler_kwargs: {v!r} is not a mapping")
    return [("optimizer.scheduler_kwargs", v)] if v else []


def _warmup_ratio(v, r) -> Pairs:
    # HF's "constant" ignores warmup; _scheduler emits warmup_ratio=0 for it.
    return [] if r.get("lr_scheduler_type") == "constant" else [("optimizer.warmup_ratio", float(v))]


def _warmup_steps(v, r) -> Pairs:
    # transformers 5 reads a float in [0, 1) as a ratio of the steps (its warmup_ratio is gone).
    if isinstance(v, float) and 0.0 <= v < 1.0:
        return [("optimizer.warmup_ratio", v)]
    if v:
        raise FromTrlError(f"warmup_steps: prefopt warms up over a fraction of the steps; give warmup_ratio "
                           f"(or warmup_steps below 1), not {v}")
    return []


def _betas(v, r) -> Pairs:
    return [("optimizer.adam_betas", [float(r.get("adam_beta1", 0.9)), float(r.get("adam_beta2", 0.999))])]


def _epochs(v, r) -> Pairs:
    if float(v) != int(v):
        raise FromTrlError(f"num_train_epochs: prefopt runs whole epochs (or trainer.max_steps), got {v}")
    return [("epochs", int(v))]


def _eval_strategy(v, r) -> Pairs:
    if v == "no":
        return [("trainer.eval_every", 0)]  # prefopt still evaluates the held-out pairs once at the end
    if v == "steps":
        return [("trainer.eval_every", int(_check("eval_steps", r.get("eval_steps", 500), int, "an int")))]
    raise FromTrlError(f"eval_strategy: {v!r}: prefopt evaluates every trainer.eval_every steps; use steps or no")


def _save_strategy(v, r) -> Pairs:
    if v == "no":
        return [("trainer.checkpoint_every", 0)]
    if v == "steps":
        return [("trainer.checkpoint_every", int(_check("save_steps", r.get("save_steps", 500), int, "an int")))]
    raise FromTrlError(f"save_strategy: {v!r}: prefopt checkpoints every trainer.checkpoint_every steps; use steps or no")


def _save_total_limit(v, r) -> Pairs:
    return [("trainer.keep_last", 0 if v is None else int(v))]  # HF's None = keep all = prefopt's 0


def _dtype(v, r) -> Pairs:
    if v not in DTYPES:
        raise FromTrlError(f"torch_dtype: {v!r}: prefopt's model.dtype takes {', '.join(str(d) for d in DTYPES)}")
    return [("model.dtype", DTYPES[v])]


def _fp16(v, r) -> Pairs:
    if v:
        raise FromTrlError("fp16: prefopt has no fp16 mixed precision with loss scaling; set model.dtype instead")
    return []


def _flash(v, r) -> Pairs:
    return [("model.attn_implementation", "flash_attention_2")] if v else []


def _peft(v, r) -> Pairs:
    # LoRA adapters on the policy, the base weights (adapters off) as the reference.
    return [("lora", "default")] if v else []


def _push(v, r) -> Pairs:
    return [("hub.push", True)] if v else []


def _hub_id(v, r) -> Pairs:
    return [] if v is None else [("hub.repo_id", str(v))]


def _hub_private(v, r) -> Pairs:
    return [] if v is None else [("hub.private", bool(v))]


def _padding_free(v, r) -> Pairs:
    # TRL's padding-free batches: prefopt packs each micro-batch into one row (and packs a pair's prompt once
    # when trainer.share_prompt stays on); the loss is the same, speed and memory change.
    return [("trainer.packing", True)] if v else []


def _report_to(v, r) -> Pairs:
    from prefopt.config import CONF_DIR

    sinks = [v] if isinstance(v, str) else list(v or [])
    known = [s for s in sinks if (Path(CONF_DIR) / "logger" / f"{s}.yaml").is_file()]
    if len(known) > 1:
        raise FromTrlError(f"report_to: prefopt writes to one tracker besides metrics.jsonl, got {known}")
    return [("logger", known[0])] if known else []


def _run_name(v, r) -> Pairs:
    return [] if v is None else [("+tags.run_name", str(v))]


def _disable_tqdm(v, r) -> Pairs:
    return [("trainer.progress_bar", not v)]


def _reference_free(v, r) -> Pairs:
    return [("reference", "none")] if v else []


def _precompute(v, r) -> Pairs:
    return [("reference", "precomputed")] if v else []


def _sync(v, r) -> Pairs:
    if not v:
        return []
    return [("reference", "sync"), ("reference.sync_alpha", float(r.get("ref_model_mixup_alpha", 0.6))),
            ("reference.sync_steps", int(r.get("ref_model_sync_steps", 512)))]


def _none_only(name: str, why: str) -> Callable:
    def handler(v, r) -> Pairs:
        if v not in (None, "none", [], {}):
            raise FromTrlError(f"{name}: {why}")
        return []

    return handler


def _done_elsewhere(v, r) -> Pairs:
    return []


# recipe field -> (handler(value, recipe) -> overrides, the table's prefopt column).
HANDLED: dict[str, tuple[Callable[[Any, dict], Pairs], str]] = {
    "torch_dtype": (_dtype, "model.dtype (null -> auto)"),
    "dtype": (_dtype, "model.dtype (torch_dtype's newer name)"),
    "use_flash_attention_2": (_flash, "model.attn_implementation=flash_attention_2"),
    "use_peft": (_peft, "lora=default (LoRA on the policy; reference=adapter_off: adapters off = reference)"),
    "push_to_hub": (_push, "hub.push=true (model and card pushed after training; checked before it starts)"),
    "hub_model_id": (_hub_id, "hub.repo_id"),
    "hub_private_repo": (_hub_private, "hub.private"),
    "padding_free": (_padding_free, "trainer.packing=true (padding-free packed rows; the same loss)"),
    "optim": (_optim, "optimizer=adamw (adamw_torch, adamw_torch_fused, adamw_hf) or optimizer=rmsprop"),
    "lr_scheduler_type": (_scheduler, "optimizer.scheduler: the same name (HF constant: warmup_ratio=0)"),
    "warmup_ratio": (_warmup_ratio, "optimizer.warmup_ratio"),
    "warmup_steps": (_warmup_steps, "optimizer.warmup_ratio when below 1 (a ratio); refused when 1 or more"),
    "adam_beta1": (_betas, "optimizer.adam_betas=[beta1,beta2]"),
    "adam_beta2": (_betas, "optimizer.adam_betas=[beta1,beta2]"),
    "num_train_epochs": (_epochs, "epochs (whole epochs only)"),
    "eval_strategy": (_eval_strategy, "trainer.eval_every=eval_steps (steps) or 0 (no)"),
    "evaluation_strategy": (_eval_strategy, "as eval_strategy (its older name)"),
    "eval_steps": (_done_elsewhere, "trainer.eval_every, with eval_strategy: steps"),
    "save_strategy": (_save_strategy, "trainer.checkpoint_every=save_steps (steps) or 0 (no)"),
    "save_steps": (_done_elsewhere, "trainer.checkpoint_every, with save_strategy: steps"),
    "save_total_limit": (_save_total_limit, "trainer.keep_last (null -> 0 = keep all)"),
    "fp16": (_fp16, "refused when true: set model.dtype"),
    "report_to": (_report_to, "logger=<name> when conf/logger/<name>.yaml exists (wandb); metrics.jsonl always"),
    "run_name": (_run_name, "+tags.run_name (copied into summary.json)"),
    "disable_tqdm": (_disable_tqdm, "trainer.progress_bar=<not disable_tqdm>"),
    "reference_free": (_reference_free, "reference=none"),
    "precompute_ref_log_probs": (_precompute, "reference=precomputed"),
    "sync_ref_model": (_sync, "reference=sync"),
    "ref_model_mixup_alpha": (_done_elsewhere, "reference.sync_alpha, with sync_ref_model: true"),
    "ref_model_sync_steps": (_done_elsewhere, "reference.sync_steps, with sync_ref_model: true"),
    "loss_type": (_done_elsewhere, "loss=<name> through the loss registry's TRL names (sigmoid -> dpo, ...)"),
    "loss_weights": (_done_elsewhere, "loss.<name>.weight for each loss_type"),
    "rpo_alpha": (_done_elsewhere, "loss=rpo loss.rpo.alpha=<rpo_alpha> loss.rpo.nll_average=batch_tokens"),
    "dataset_mixer": (_done_elsewhere, "dataset=<option whose path is the id> (one dataset, weight 1.0)"),
    "dataset_mixture": (_done_elsewhere, "as dataset_mixer, one entry only"),
    "dataset_name": (_done_elsewhere, "dataset=<option whose path is the id>, else dataset=generic dataset.path"),
    "dataset_splits": (_done_elsewhere, "dataset.train_split / dataset.eval_split"),
    "dataset_train_split": (_done_elsewhere, "dataset.train_split"),
    "dataset_test_split": (_done_elsewhere, "dataset.eval_split"),
    "load_in_4bit": (_none_only("load_in_4bit", "prefopt does not quantize"), "refused when true"),
    "load_in_8bit": (_none_only("load_in_8bit", "prefopt does not quantize"), "refused when true"),
    "lr_scheduler_kwargs": (_scheduler_kwargs, "optimizer.scheduler_kwargs"),
    "model_init_kwargs": (_none_only("model_init_kwargs", "set the model.* keys instead"), "refused when set"),
    "ref_model_init_kwargs": (_none_only("ref_model_init_kwargs", "set the reference.* keys instead"),
                              "refused when set"),
    "max_completion_length": (_none_only("max_completion_length", "prefopt bounds the completion by "
                                         "dataset.max_length - prompt; drop the field"), "refused when set"),
}
for _f in LOSS_FIELDS:
    HANDLED[_f] = (_done_elsewhere, f"loss.<name>.{LOSS_FIELDS[_f][0]} of a loss that has it")


def convert(recipe: dict[str, Any], *, check: bool = True) -> Conversion:
    """The prefopt overrides of a parsed recipe; refuses unknown fields and values prefopt cannot represent."""
    if not isinstance(recipe, dict):
        raise FromTrlError("recipe: expected a YAML mapping of DPOConfig fields")
    unknown = [k for k in recipe if k not in DIRECT and k not in IGNORED and k not in HANDLED]
    if unknown:
        raise FromTrlError(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: not a DPOConfig/"
                           "TrainingArguments field prefopt knows (see docs/coming_from_trl.md)")
    out = Conversion()
    out.defaulted = [k for k in TRL_DEFAULTS if k not in recipe]
    out.notes = {k: why for k, why in UNSET_NOTES.items() if k not in recipe}
    recipe = {**recipe, **{k: TRL_DEFAULTS[k] for k in out.defaulted}}
    pairs: Pairs = []
    pairs += _dataset(recipe)
    names, loss_pairs = _losses(recipe)
    pairs.append(("loss", names[0] if len(names) == 1 else names))
    pairs += loss_pairs
    done: set[str] = set()
    for key, value in recipe.items():
        if key in IGNORED:
            out.ignored[key] = IGNORED[key]
        elif key in DIRECT:
            if value is not None:  # null = not set: the prefopt default stays
                pairs.append((DIRECT[key][0], value))
        elif HANDLED[key][0] not in done:  # adam_beta1/adam_beta2 (and the two eval_strategy names) emit once
            done.add(HANDLED[key][0])
            pairs += HANDLED[key][0](value, recipe)
    sinks = recipe.get("report_to")
    if sinks not in (None, "none", "all", []) and not any(key == "logger" for key, _ in pairs):
        out.ignored["report_to"] = f"no prefopt logger option for {sinks}; metrics.jsonl is always written"
    seen: dict[str, Any] = {}
    for key, value in pairs:
        seen[key] = value  # a later pair wins (constant's warmup_ratio=0 over warmup_ratio)
    # Group choices (dataset=, loss=, optimizer=, ...) first, then the keys, each in the recipe's order.
    ordered = sorted(seen.items(), key=lambda kv: "." in kv[0] or kv[0] in ("beta", "epochs", "seed"))
    out.overrides = [f"{key}={hydra_value(value)}" for key, value in ordered]
    if check:
        compose_overrides(out.overrides)
    return out


def compose_overrides(overrides: list[str]):
    """Compose prefopt's config with ``overrides``, as ``python -m prefopt.train`` would; a key that does not
    exist or a value of the wrong type is a FromTrlError naming the override."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from prefopt.config import CONF_DIR, register_configs

    register_configs([])
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise FromTrlError(f"the converted overrides do not compose: {' '.join(str(err).split())}") from None


def load_recipe(path: str | Path) -> dict[str, Any]:
    import yaml

    try:
        recipe = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise FromTrlError(str(err.strerror)) from None
    except yaml.YAMLError as err:
        raise FromTrlError(f"not valid YAML: {' '.join(str(err).split())}") from None
    return recipe or {}


def table() -> str:
    """The Markdown table of every known field: its prefopt key, or why it is ignored or refused."""
    rows = ["| TRL / alignment-handbook field | prefopt | note |", "|---|---|---|"]
    entries = [(f, f"`{key}`", note) for f, (key, note) in DIRECT.items()]
    entries += [(f, prefopt, "") for f, (_, prefopt) in HANDLED.items()]
    entries += [(f, "ignored", why) for f, why in IGNORED.items()]
    for name, prefopt, note in sorted(entries):
        rows.append(f"| `{name}` | {prefopt} | {note} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prefopt.from_trl", description=__doc__.split("\n")[0])
    parser.add_argument("recipe", nargs="?", help="an alignment-handbook or TRL DPO recipe YAML")
    parser.add_argument("--lines", action="store_true", help="print one override per line")
    parser.add_argument("--table", action="store_true", help="print the Markdown table of known fields")
    args = parser.parse_args(argv)
    if args.table:
        print(table())
        return 0
    if args.recipe is None:
        parser.error("give a recipe YAML (or --table)")
    try:
        conversion = convert(load_recipe(args.recipe))
    except PrefoptError as err:
        print(f"prefopt.from_trl: {args.recipe}: {err}", file=sys.stderr)
        return 1
    if args.lines:
        print("\n".join(conversion.overrides))
    else:
        print(conversion.command())
        if conversion.defaulted:
            print(f"# TRL defaults the recipe leaves out, set as TRL would: {', '.join(conversion.defaulted)}")
        for name, why in conversion.notes.items():
            print(f"# {name} {why}")
        for name, why in conversion.ignored.items():
            print(f"# ignored {name}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
