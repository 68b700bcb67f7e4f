"""Run a benchmark on a trained policy: at the end of training (``benchmark_trained_policy``) or on the saved
model of a finished run (``evaluate_run``, behind ``python -m prefopt.evaluate``).

Both compare the policy with the model the run started from (``Reference.initial_model_path``: the initial
policy, or the reference checkpoint) and write every per-prompt item to ``<run_dir>/benchmark_<name>.jsonl``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import OmegaConf

from prefopt.errors import ConfigError, PrefoptError
from prefopt.io import JsonlWriter, atomic_write_json, atomic_write_text, dumps

log = logging.getLogger("prefopt.evaluate")


class EvaluateError(PrefoptError, ValueError):
    pass


def benchmark_config(overrides: list[str]):
    """The ``benchmark`` node `prefopt.train` would build from the same overrides, for the command lines that
    benchmark a finished run (``prefopt.evaluate``, ``prefopt.extrapolate``). ``benchmark=preference`` (the
    held-out preference metrics again) needs no config; ``none`` and a judged benchmark without a judge are
    refused before anything loads."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from prefopt.config import CONF_DIR, register_configs

    if [o.split("=", 1)[1] for o in overrides if o.startswith("benchmark=")] == ["preference"]:
        return OmegaConf.create({"name": "preference"})
    register_configs()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        # An unknown benchmark/judge option or a misspelled key: Hydra's message names it and the options.
        raise ConfigError(" ".join(str(err).split())) from None
    if cfg.benchmark.name == "none":
        raise EvaluateError("benchmark=none: name a benchmark (sentiment, mt_bench, alpaca_eval, "
                            "alpaca_eval_pairwise, preference)")
    check_judge(cfg.benchmark)
    return cfg.benchmark


def check_judge(bcfg) -> None:
    """A benchmark refuses to start on a config it cannot run: without a judge where it needs one (the registry
    says which), or whatever its own check refuses (benchmark=alpaca_eval: no alpaca_eval package, no judge=http)."""
    from prefopt import benchmarks

    if bcfg.name != "preference":
        benchmarks.spec(bcfg.name).check_config(bcfg)


def load_reference_model(run_cfg, device=None):
    """The model the run started from: the reference checkpoint, else the initial policy."""
    from prefopt.models import load_model
    from prefopt.reference import kind_class

    model = load_model(kind_class(run_cfg.reference.kind).initial_model_path(run_cfg.reference, run_cfg.model), run_cfg.model.dtype,
                       run_cfg.model.trust_remote_code)
    return model.to(device) if device is not None else model


def run_benchmark(bcfg, policy, reference_model, tokenizer, eot_token, run_dir: str | Path | None) -> dict:
    """Run one registered benchmark, write its per-prompt items beside the run, and return the
    summary-sized result (no ``items``)."""
    from prefopt import benchmarks

    result = benchmarks.get(bcfg.name)(policy, reference_model, tokenizer, bcfg, eot_token)
    items = result.pop("items", None)
    if run_dir is not None and items is not None:
        path = Path(run_dir) / f"benchmark_{bcfg.name}.jsonl"
        atomic_write_text(path, "".join(dumps(item) + "\n" for item in items))
        result["items_file"] = path.name
    return result


def benchmark_trained_policy(cfg, policy, reference, tokenizer, device, run_dir) -> dict:
    """The configured benchmark of the policy a run just trained, against the model it started from."""
    from prefopt.benchmarks import UnknownBenchmarkError
    from prefopt.judges import JudgeConfigError, JudgeError

    # The training reference's own model when it holds the starting model unchanged; otherwise (reference-free
    # losses, precomputed log-probs, a reference that moved) the starting model is loaded again.
    ref_model = reference.model if reference.holds_frozen_model else load_reference_model(cfg, device)
    try:
        return run_benchmark(cfg.benchmark, policy, ref_model, tokenizer, cfg.model.eot_token, run_dir)
    except (UnknownBenchmarkError, JudgeConfigError) as err:
        raise ConfigError(str(err)) from None
    except JudgeError as err:
        # Training is done and worth keeping: record the failure; `python -m prefopt.evaluate` can
        # rerun the benchmark on the saved model (judgments already made are cached).
        log.error("benchmark %s failed: %s", cfg.benchmark.name, err)
        return {"name": cfg.benchmark.name, "status": "failed", "error": str(err)}


def record(run_dir: Path, result: dict, step: int | None = None) -> dict:
    """Merge one benchmark result into summary.json and metrics.jsonl of a finished run."""
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary.setdefault("benchmarks", {})
    summary["benchmarks"][result["name"]] = result
    if summary.get("benchmark") is None or summary["benchmark"].get("name") == result["name"]:
        summary["benchmark"] = result
    atomic_write_json(summary_path, summary)
    from prefopt.model_card import write_model_card

    write_model_card(run_dir, summary)  # model/README.md shows the new benchmark (no-op without a saved model)
    writer = JsonlWriter(run_dir / "metrics.jsonl")
    try:
        writer.write({"split": "benchmark", "step": summary.get("steps") if step is None else step,
                      **{k: v for k, v in result.items() if k != "examples"}})
    finally:
        writer.close()
    return summary


def preference_metrics(run_dir: Path, run_cfg, device) -> dict:
    """Held-out rewards/*, logps/* and loss of the saved policy, recomputed with the run's losses."""
    from prefopt import data as data_lib
    from prefopt.models import load_model, load_tokenizer
    from prefopt.reference import build_reference
    from prefopt.scoring import SequenceScorer
    from prefopt.trainer.evaluation import evaluate_heldout
    from prefopt.trainer.setup import build_loss_terms, data_kind

    terms = build_loss_terms(run_cfg)
    kind = data_kind(terms)
    tokenizer = load_tokenizer(str(run_dir / "model"), run_cfg.model.chat_template, run_cfg.model.trust_remote_code)
    datasets = data_lib.build_datasets(run_cfg.dataset, tokenizer, kind, run_cfg.model.eot_token)
    policy = load_model(str(run_dir / "model"), run_cfg.model.dtype, run_cfg.model.trust_remote_code).to(device)
    needs_reference = any(t.spec.needs_reference for t in terms)
    # The held-out rewards are measured against the model the run started from (for frozen, sync and
    # precomputed references alike), or the reference checkpoint: the same model the benchmarks use.
    initial = load_reference_model(run_cfg, device) if needs_reference else policy
    reference = build_reference(OmegaConf.create({"kind": "frozen" if needs_reference else "none"}), run_cfg.model,
                                initial, needs_reference, [t.spec.name for t in terms], device)
    metrics = evaluate_heldout(SequenceScorer(policy), reference, terms, kind, datasets.eval, run_cfg,
                               tokenizer.pad_token_id, device)
    return {"name": "preference", "eval_rows": len(datasets.eval), **metrics}


def evaluate_run(run_dir: str | Path, bcfg) -> dict:
    """Benchmark the saved policy of a finished run against its reference; update the run's files."""
    import torch

    from prefopt.models import load_model, load_tokenizer

    run_dir = Path(run_dir)
    for name in ("config.yaml", "summary.json"):
        if not (run_dir / name).is_file():
            raise EvaluateError(f"run_dir={run_dir}: no {name}; is this a prefopt run directory?")
    check_judge(bcfg)
    run_cfg = OmegaConf.load(run_dir / "config.yaml")
    model_dir = run_dir / "model"
    if not any((model_dir / name).is_file() for name in ("config.json", "adapter_config.json")):  # full or LoRA
        raise EvaluateError(f"run_dir={run_dir}: no saved model in {model_dir} (the run had trainer.save_model=false)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if bcfg.name == "preference":
        result = preference_metrics(run_dir, run_cfg, device)
    else:
        tokenizer = load_tokenizer(str(model_dir), run_cfg.model.chat_template, run_cfg.model.trust_remote_code)
        policy = load_model(str(model_dir), run_cfg.model.dtype, run_cfg.model.trust_remote_code).to(device)
        reference = load_reference_model(run_cfg, device)
        result = run_benchmark(bcfg, policy, reference, tokenizer, run_cfg.model.eot_token, run_dir)
    record(run_dir, result)
    return result
