"""The model card (``<run_dir>/model/README.md``) of a saved prefopt model, in the Hugging Face format.

``model_card(summary, config)`` is a pure function of the run's ``summary.json`` and its resolved
``config.yaml``: YAML front matter (``base_model``, ``datasets``, ``tags``, ``library_name``, ``license`` when
known) and a body with what trained the model, the losses and their hyperparameters, the data counts, the
benchmark table with its 95% CIs, and the command that trains it again. It is written by the training loop
right after ``summary.json`` and rewritten by ``prefopt.evaluate`` when a benchmark is added
(``write_model_card``); ``tests/test_model_card.py`` checks it on a fixture summary and on a real tiny run.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

# Built-in model names (prefopt/models.py) -> the hub model they are; None: no real model (random init).
BUILTIN_MODELS: dict[str, str | None] = {
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "tiny": None,
}
# Licences stated by the model's own card; anything else is left out rather than guessed.
KNOWN_LICENSES = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": "apache-2.0",
    "mistralai/Mistral-7B-v0.1": "apache-2.0",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".arrow", ".txt")
# (summary key, its CI's key prefix, column title) of the benchmark table; a missing figure is shown as "-".
_FIGURES = (("delta", "delta", "delta [95% CI]"), ("win_rate", "win_rate", "win rate [95% CI]"),
            ("kl_estimate", "kl", "KL [95% CI]"))


def is_hub_id(name: str | None) -> bool:
    """``org/name`` that is not a local path or data file (a judgement from the string alone, no I/O)."""
    return bool(name) and bool(_HUB_ID.match(name)) and not name.lower().endswith(_DATA_SUFFIXES)


def base_model(name_or_path: str | None) -> str | None:
    """The hub id of the model a run started from, or None (random init, local directory)."""
    if name_or_path in BUILTIN_MODELS:
        return BUILTIN_MODELS[name_or_path]
    return name_or_path if is_hub_id(name_or_path) else None


def model_card(summary: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """The README.md of the run's saved model, from its summary dict and resolved config (plain dicts)."""
    config = _plain(config)
    model = config.get("model") or {}
    dataset = config.get("dataset") or {}
    base = base_model(model.get("name_or_path"))
    front: dict[str, Any] = {}
    if base:
        front["base_model"] = base
    hub_data = [p for p in (dataset.get("path"), dataset.get("eval_path")) if is_hub_id(p)]
    if hub_data:
        front["datasets"] = list(dict.fromkeys(hub_data))
    front["tags"] = tags(summary)
    lora = model.get("lora")
    # Hub convention for adapter repos: library_name peft (with base_model, when it is on the hub).
    front["library_name"] = "peft" if lora else "transformers"
    if base in KNOWN_LICENSES:
        front["license"] = KNOWN_LICENSES[base]
    body = [_title(summary, config, base), *([_adapter(lora, model, base)] if lora else []),
            _training(summary, config), _data(summary, dataset),
            _benchmarks(summary), _reproduce(summary, config)]
    return "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n\n" + "\n".join(body)


def write_model_card(run_dir: str | Path, summary: Mapping[str, Any] | None = None,
                     config: Mapping[str, Any] | None = None) -> Path | None:
    """Write ``<run_dir>/model/README.md`` atomically (summary.json and config.yaml are read when not given);
    None when the run saved no model."""
    from prefopt.io import atomic_write_text

    run_dir = Path(run_dir)
    model_dir = run_dir / "model"
    if not any((model_dir / name).is_file() for name in ("config.json", "adapter_config.json")):  # full or LoRA
        return None
    if summary is None:
        import json

        summary = json.loads((run_dir / "summary.json").read_text())
    if config is None:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
    path = model_dir / "README.md"
    atomic_write_text(path, model_card(summary, config))
    return path


def tags(summary: Mapping[str, Any]) -> list[str]:
    """``prefopt``, the loss names, and the TRL trainer whose loss_type a loss is (the registry's ``trl_name``):
    ``kto (KTOTrainer)`` -> ``kto``; a bare name is DPOTrainer's, ``dpo`` for preference pairs (not for sft)."""
    from prefopt import losses

    out = ["prefopt", *summary.get("losses", {})]
    for name in summary.get("losses", {}):
        try:
            spec = losses.get(name)
        except KeyError:  # a plug-in loss not imported here
            continue
        trainer = re.search(r"\((\w+)Trainer\b", spec.trl_name or "")
        if trainer:
            out.append(trainer.group(1).lower())
        elif spec.trl_name and spec.data == "paired":
            out.append("dpo")
    return list(dict.fromkeys(out))


def _adapter(lora, model, base) -> str:
    targets = ", ".join(lora.get("target_modules") or [])
    quant = " over a 4-bit NF4 base (QLoRA)" if lora.get("quantize") else ""
    source = base or model.get("name_or_path")
    return "\n".join([
        "## LoRA adapter", "",
        f"This directory holds a LoRA adapter{quant} (r={lora.get('r')}, alpha={lora.get('alpha')}, "
        f"dropout={lora.get('dropout')}, on {targets}), not full weights; its base is `{source}` "
        "(`base_model_name_or_path` in adapter_config.json). Load it with "
        "`peft.AutoPeftModelForCausalLM.from_pretrained(<this dir>)`, or with prefopt "
        "(`prefopt.models.load_model(<this dir>)`, prefopt.evaluate), which merges it into the base."
        + (" The merged full model is in `../model_merged`." if lora.get("save_merged") else ""),
        ""])


def _title(summary, config, base) -> str:
    losses = " + ".join(summary.get("losses") or {}) or "preference"
    dataset = (config.get("dataset") or {}).get("name")
    versions = summary.get("versions") or {}
    commit = summary.get("git_commit")
    started = config.get("model", {}).get("name_or_path")
    if base and base != started:
        origin = f"`{base}` (`model.name_or_path={started}`)"
    elif base:
        origin = f"`{base}`"
    elif started == "tiny":
        origin = ("`tiny` (prefopt's 2-layer random-init Llama with SmolLM2-135M-Instruct's tokenizer, for tests; "
                  "no real base model)")
    else:
        origin = f"`{started}`"
    lines = [f"# {losses} on {dataset}, from {(base or started).split('/')[-1]}", "",
             f"Preference-optimized from {origin} with prefopt "
             f"{versions.get('prefopt', '(version unknown)')}"
             + (f", commit `{commit}`." if commit else " (not run from a git checkout)."),
             ""]
    if summary.get("status") != "completed":
        lines += [f"Run status: **{summary.get('status')}**.", ""]
    return "\n".join(lines)


def _training(summary, config) -> str:
    opt, trainer = config.get("optimizer") or {}, config.get("trainer") or {}
    processes = summary.get("processes") or 1
    per_step = (trainer.get("batch_size") or 0) * (trainer.get("grad_accum") or 0) * processes
    lines = ["## Training", "", "| loss | weight | hyperparameters |", "|---|---|---|"]
    for name, hp in (summary.get("losses") or {}).items():
        hp = dict(hp)
        weight = hp.pop("weight", 1.0)
        lines.append(f"| {name} | {_num(weight)} | {', '.join(f'{k}={_num(v)}' for k, v in hp.items())} |")
    reference = summary.get("reference") or {}
    lines += [
        "",
        f"- β (beta): {_num(config.get('beta'))}",
        f"- epochs: {config.get('epochs')}, optimizer steps: {summary.get('steps')}"
        f" (skipped: {summary.get('skipped_steps', 0)}), seed: {config.get('seed')}",
        f"- optimizer: {opt.get('name')}, lr {_num(opt.get('lr'))}, schedule {opt.get('scheduler')} "
        f"(warmup_ratio {_num(opt.get('warmup_ratio'))}), weight_decay {_num(opt.get('weight_decay'))}, "
        f"max_grad_norm {_num(opt.get('max_grad_norm'))}",
        f"- batch: {trainer.get('batch_size')} pairs per process per micro-step × grad_accum "
        f"{trainer.get('grad_accum')} × {processes} process(es) = {per_step} pairs per optimizer step; "
        f"eval batch {trainer.get('eval_batch_size')}",
        f"- reference: {reference.get('kind') or (config.get('reference') or {}).get('kind')}",
    ]
    heldout = summary.get("eval") or {}
    if heldout:
        shown = {k: heldout[k] for k in ("eval/loss", "eval/rewards/accuracies", "eval/rewards/margins")
                 if k in heldout}
        lines.append("- held-out: " + ", ".join(f"{k} {_num(v)}" for k, v in shown.items()))
    return "\n".join(lines) + "\n"


def _data(summary, dataset) -> str:
    data = summary.get("data") or {}
    where = dataset.get("path") or "built in"
    lines = ["## Data", "",
             f"- dataset: `{dataset.get('name')}` ({where}"
             + (f"; eval: {dataset.get('eval_path')}" if dataset.get("eval_path") else "") + ")",
             f"- training rows: {data.get('train_rows')}, held-out rows: {data.get('eval_rows')}"]
    for split, counts in (data.get("counts") or {}).items():
        if isinstance(counts, Mapping) and counts:
            lines.append(f"- {split}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return "\n".join(lines) + "\n"


def _benchmarks(summary) -> str:
    results = {}
    for result in [summary.get("benchmark"), *(summary.get("benchmarks") or {}).values()]:
        if isinstance(result, Mapping) and result.get("name"):
            results[result["name"]] = result
    if not results:
        return "## Benchmark\n\nNo benchmark was run.\n"
    lines = ["## Benchmark", "",
             "Policy against the model it started from, on the same prompts; 95% percentile-bootstrap CIs.", "",
             "| benchmark | n | policy | reference | " + " | ".join(t for _, _, t in _FIGURES) + " | Wilcoxon p |",
             "|---" * (5 + len(_FIGURES)) + "|"]
    for name, r in results.items():
        if r.get("status") in ("failed", "no_valid_judgments"):
            reason = r.get("error") or r.get("status")
            lines.append(f"| {name} | {r.get('n', 0)} | {r.get('status')}: {reason} |" + " |" * (3 + len(_FIGURES)))
            continue
        cells = [name, str(r.get("n", "-")), _num(r.get("policy_mean")), _num(r.get("reference_mean"))]
        cells += [_with_ci(r, key, ci) for key, ci, _ in _FIGURES]
        cells.append(_num(r.get("wilcoxon_p")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _reproduce(summary, config) -> str:
    overrides = [f"{group}={_hydra_value(choice)}" for group, choice in (summary.get("choices") or {}).items()
                 if choice is not None and "/" not in group]
    values = {"beta": config.get("beta"), "epochs": config.get("epochs"), "seed": config.get("seed")}
    for section, keys in (("model", ("name_or_path",)),
                          ("dataset", ("path", "eval_path", "max_train_rows", "max_eval_rows")),
                          ("optimizer", ("lr",)),
                          ("trainer", ("batch_size", "grad_accum", "max_steps"))):
        for key in keys:
            value = (config.get(section) or {}).get(key)
            if value is not None or key.startswith("max_"):
                values[f"{section}.{key}"] = value
    values.update(_changed_loss_values(config))
    overrides += [f"{k}={_hydra_value(v)}" for k, v in values.items() if k in _flat_keys(config)]
    command = "python -m prefopt.train " + " ".join(shlex.quote(o) for o in overrides)
    return ("## Reproduce\n\n"
            "The config groups and key values of this run (its full resolved config is `../config.yaml`):\n\n"
            f"```bash\n{command}\n```\n")


def _changed_loss_values(config) -> dict[str, Any]:
    """``loss.<name>.<field>`` values that differ from the loss's registered defaults (beta: from the top-level
    β), i.e. what the command line changed."""
    from prefopt import losses

    out = {}
    for name, values in (config.get("loss") or {}).items():
        try:
            defaults = next(r["hparams"] for r in losses.available() if r["name"] == losses.get(name).name)
        except (KeyError, StopIteration):  # a plug-in loss not imported here: every value
            defaults = {}
        defaults = {**defaults, "beta": config.get("beta"), "weight": 1.0}
        for key, value in (values or {}).items():
            if key not in defaults or value != defaults[key]:
                out[f"loss.{name}.{key}"] = value
    return out


def _flat_keys(config, prefix="") -> set[str]:
    keys = set()
    for k, v in config.items():
        keys.add(prefix + k)
        if isinstance(v, Mapping):
            keys |= _flat_keys(v, prefix + k + ".")
    return keys


def _hydra_value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    return str(value)


def _num(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _with_ci(result, key: str, ci: str) -> str:
    value = result.get(key)
    if value is None:
        return "-"
    low, high = result.get(f"{ci}_ci_low"), result.get(f"{ci}_ci_high")
    if low is None or high is None:
        return _num(value)
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _plain(config) -> dict:
    if isinstance(config, Mapping) and not isinstance(config, dict):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(config, resolve=True)  # a DictConfig
    return dict(config)
