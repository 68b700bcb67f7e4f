"""Benchmark a model against its reference: at the end of training, or later on a finished run.

    python -m prefopt.evaluate run_dir=runs/2026-11-24/01-00-00 benchmark=sentiment
    python -m prefopt.evaluate run_dir=RUN benchmark=mt_bench judge=http \
        benchmark.judge.base_url=http://localhost:8000/v1 benchmark.judge.model=judge
    python -m prefopt.evaluate run_dir=RUN benchmark=preference     # held-out rewards/*, logps/* again

The run's own config.yaml says which model was trained and which reference it started from; the
overrides (any of the benchmark and judge keys, as for prefopt.train) say what to run. The policy is
the run's saved model (``<run_dir>/model``, written unless ``trainer.save_model=false``).

Results go into the run directory: ``summary.json["benchmarks"][name]`` (the paired delta against the
reference with its 95% bootstrap CI and Wilcoxon p-value, and the benchmark's own figures), a
``{"split": "benchmark"}`` record in metrics.jsonl, and every per-prompt item in
``benchmark_<name>.jsonl``. Every file is replaced atomically.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from prefopt.io import JsonlWriter, atomic_write_json, atomic_write_text, dumps

log = logging.getLogger("prefopt.evaluate")
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


class EvaluateError(ValueError):
    pass


def load_reference_model(run_cfg, device=None):
    """The model the run started from: the reference checkpoint, else the initial policy."""
    from prefopt.models import load_model

    ref = run_cfg.reference
    # reference=precomputed may name a separate reference model too.
    path = (ref.name_or_path if ref.kind in ("checkpoint", "precomputed") and ref.get("name_or_path")
            else run_cfg.model.name_or_path)
    model = load_model(path, run_cfg.model.dtype, run_cfg.model.trust_remote_code)
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


def record(run_dir: Path, result: dict, step: int | None = None) -> dict:
    """Merge one benchmark result into summary.json and metrics.jsonl of a finished run."""
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary.setdefault("benchmarks", {})
    summary["benchmarks"][result["name"]] = result
    if summary.get("benchmark") is None or summary["benchmark"].get("name") == result["name"]:
        summary["benchmark"] = result
    atomic_write_json(summary_path, summary)
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
    from prefopt import train
    from prefopt.logps import SequenceScorer
    from prefopt.models import load_model, load_tokenizer
    from prefopt.reference import build_reference

    terms = train.build_loss_terms(run_cfg)
    kind = train.data_kind(terms)
    tokenizer = load_tokenizer(str(run_dir / "model"), run_cfg.model.chat_template, run_cfg.model.trust_remote_code)
    datasets = data_lib.build_datasets(run_cfg.dataset, tokenizer, kind, run_cfg.model.eot_token)
    policy = load_model(str(run_dir / "model"), run_cfg.model.dtype, run_cfg.model.trust_remote_code).to(device)
    needs_reference = any(t.spec.needs_reference for t in terms)
    # The held-out rewards are measured against the model the run started from (for frozen, sync and
    # precomputed references alike), or the reference checkpoint: the same model the benchmarks use.
    initial = load_reference_model(run_cfg, device) if needs_reference else policy
    reference = build_reference(OmegaConf.create({"kind": "frozen" if needs_reference else "none"}), run_cfg.model,
                                initial, needs_reference, [t.spec.name for t in terms], device)
    metrics = train.evaluate(SequenceScorer(policy), reference, terms, kind, datasets.eval, run_cfg,
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
    judge = bcfg.get("judge")
    if bcfg.name in ("mt_bench", "alpaca_eval") and (judge is None or judge.kind == "none"):
        raise EvaluateError(f"benchmark={bcfg.name} needs a judge: add judge=http or judge=local (conf/judge/)")
    run_cfg = OmegaConf.load(run_dir / "config.yaml")
    model_dir = run_dir / "model"
    if not (model_dir / "config.json").is_file():
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


def compose_benchmark(overrides: list[str]) -> DictConfig:
    """The ``benchmark`` node `prefopt.train` would build from the same overrides."""
    from hydra import compose, initialize_config_dir

    from prefopt.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return cfg.benchmark


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    run_dirs = [a.split("=", 1)[1] for a in argv if a.startswith("run_dir=")]
    overrides = [a for a in argv if not a.startswith("run_dir=")]
    if len(run_dirs) != 1:
        print("usage: python -m prefopt.evaluate run_dir=RUN benchmark=NAME [overrides...]", file=sys.stderr)
        return 2
    names = [o.split("=", 1)[1] for o in overrides if o.startswith("benchmark=")]
    preference = names == ["preference"]
    from prefopt.benchmarks import UnknownBenchmarkError
    from prefopt.data.registry import DataError
    from prefopt.judges import JudgeConfigError, JudgeError

    try:
        if preference:
            bcfg = OmegaConf.create({"name": "preference"})
        else:
            bcfg = compose_benchmark(overrides)
            if bcfg.name == "none":
                raise EvaluateError("benchmark=none: name a benchmark (sentiment, mt_bench, alpaca_eval, preference)")
        result = evaluate_run(run_dirs[0], bcfg)
    except (EvaluateError, UnknownBenchmarkError, DataError, JudgeConfigError, JudgeError) as err:
        print(f"prefopt.evaluate: {err}", file=sys.stderr)
        return 1
    shown = {k: v for k, v in result.items() if k not in ("examples", "items")}
    print(json.dumps(shown, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
