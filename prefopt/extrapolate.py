"""ExPO: extrapolate a finished run's model away from the model it started from, and benchmark each result.

    python -m prefopt.extrapolate run_dir=runs/2026-11-24/01-00-00 alpha=0.1,0.3,0.5
    python -m prefopt.extrapolate run_dir=RUN alpha=0.3 benchmark=sentiment benchmark.num_prompts=64
    python -m prefopt.extrapolate run_dir=RUN alpha=0.5 benchmark=preference    # held-out rewards/*, logps/*

Zheng et al. 2024, "Weak-to-Strong Extrapolation Expedites Alignment" (arXiv 2404.16792, the ExPO update of
its method section): from the aligned model θ and the model θ_ref it was trained from,

    θ_expo = θ + α (θ − θ_ref) = θ_ref + (1 + α)(θ − θ_ref),        α > -1

α > 0 moves further along the training update, α = 0 is the trained model, -1 < α < 0 interpolates back
towards θ_ref (α = -1 would be θ_ref itself, and α < -1 passes it; both are refused). The authors' code
(github.com/chujiezheng/LLM-Extrapolation, ``code/extrapolate.py``) computes exactly the first form, over
``named_parameters()`` of the DPO model, in the models' own dtype (bf16 there); buffers are those of the DPO
model. This file does the same, except that the arithmetic is done in float32 and cast back to each
parameter's dtype. ``named_parameters()`` lists a tied tensor (embeddings = LM head) once, so it is
extrapolated once. Written in the first form, α = 0 reproduces θ bit for bit.

θ is the run's saved model (``<run_dir>/model``, written unless ``trainer.save_model=false``); θ_ref is the
model the run started from, the same one ``prefopt.evaluate`` compares against
(``Reference.initial_model_path``: the initial policy, or the reference checkpoint when the run named one).

Each α becomes a run directory of its own, ``<run_dir>/expo/alpha=<α>/``:

- ``model/``: the extrapolated model and the run's tokenizer;
- ``config.yaml``: the source run's config plus ``expo: {alpha, source_run}`` and ``tags.expo_alpha``;
- ``summary.json``: ``status``, ``source_run``, ``expo``, the source's ``losses``/``choices``/``steps``,
  ``tags`` (with ``expo_alpha``), and the benchmark result (``benchmark`` and ``benchmarks[name]``);
- ``metrics.jsonl``: the ``{"split": "benchmark"}`` record; ``benchmark_<name>.jsonl``: per-prompt items.

The benchmark is run exactly as ``prefopt.evaluate`` runs it (``prefopt/benchmarks/runner.py``): policy =
the extrapolated model, reference = θ_ref. ``analysis.load_runs(<run_dir>/expo)`` reads the α directories as
runs (each carries the source run's loss, β and seed). Each directory is built in a temp directory beside it
and renamed into place, so a failure leaves every α before it complete and nothing of the failing one; bad
input (no saved model, a starting model that does not load, α ≤ -1, a missing, unparseable or repeated α)
is reported as one line naming the key or path, before anything is written.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from prefopt.benchmarks.runner import benchmark_config
from prefopt.errors import PrefoptError

log = logging.getLogger("prefopt.extrapolate")

__all__ = ["ExtrapolateError", "main"]

USAGE = "usage: python -m prefopt.extrapolate run_dir=RUN alpha=A[,A...] [benchmark=NAME overrides...]"


class ExtrapolateError(PrefoptError, ValueError):
    pass


def parse_alphas(values: list[str]) -> list[float]:
    """The α list of the command line's ``alpha=`` values (exactly one, comma-separated, each > -1, distinct)."""
    if not values:
        raise ExtrapolateError("alpha: missing; give e.g. alpha=0.1,0.3,0.5 (each > -1)")
    if len(values) > 1:
        raise ExtrapolateError(f"alpha: given {len(values)} times ({', '.join('alpha=' + v for v in values)}); "
                               "give one comma-separated list")
    alphas: list[float] = []
    for text in values[0].split(","):
        try:
            alpha = float(text)
        except ValueError:
            raise ExtrapolateError(f"alpha={values[0]}: {text.strip()!r} is not a number") from None
        if not math.isfinite(alpha) or alpha <= -1:
            raise ExtrapolateError(f"alpha={values[0]}: {alpha} must be a finite number > -1 "
                                   "(-1 is the starting model itself)")
        if alpha in alphas:
            raise ExtrapolateError(f"alpha={values[0]}: {alpha} given twice")
        alphas.append(alpha)
    return alphas


def check_source(run_dir: Path) -> tuple[DictConfig, dict]:
    """The finished run's config and summary; errors name the missing file."""
    for name in ("config.yaml", "summary.json"):
        if not (run_dir / name).is_file():
            raise ExtrapolateError(f"run_dir={run_dir}: no {name}; is this a prefopt run directory?")
    if not any((run_dir / "model" / name).is_file() for name in ("config.json", "adapter_config.json")):
        raise ExtrapolateError(f"run_dir={run_dir}: no saved model in {run_dir / 'model'} "
                               "(the run had trainer.save_model=false)")
    run_cfg = OmegaConf.load(run_dir / "config.yaml")
    summary = json.loads((run_dir / "summary.json").read_text())
    if run_cfg.get("expo") is not None:
        raise ExtrapolateError(f"run_dir={run_dir} is itself an extrapolation (expo.alpha={run_cfg.expo.alpha}); "
                               f"give its source run {run_cfg.expo.source_run}")
    if summary.get("status") != "completed":
        raise ExtrapolateError(f"run_dir={run_dir}: summary.json status is {summary.get('status')!r}, "
                               "not 'completed'")
    return run_cfg, summary


def check_same_parameters(policy, reference, run_dir: Path, ref_path: str) -> None:
    ours = {n: tuple(p.shape) for n, p in policy.named_parameters()}
    theirs = {n: tuple(p.shape) for n, p in reference.named_parameters()}
    if ours != theirs:
        differ = sorted(set(ours) ^ set(theirs)) or sorted(n for n in ours if ours[n] != theirs[n])
        raise ExtrapolateError(f"run_dir={run_dir}: the starting model {ref_path!r} does not have the parameters "
                               f"of {run_dir / 'model'} (first difference: {differ[0]})")


def extrapolate_into(target, policy, reference, alpha: float) -> None:
    """Set every parameter of ``target`` to θ + α(θ − θ_ref) (θ of ``policy``, θ_ref of ``reference``), in
    float32, cast to the parameter's dtype. Buffers are left as they are (``target`` is a copy of ``policy``)."""
    import torch

    theta = dict(policy.named_parameters())
    theta_ref = dict(reference.named_parameters())
    with torch.no_grad():
        for name, param in target.named_parameters():
            t = theta[name].detach().float()
            param.copy_((t + alpha * (t - theta_ref[name].detach().to(t.device).float())).to(param.dtype))


def alpha_dir_name(alpha: float) -> str:
    return f"alpha={alpha!r}"


def write_alpha_run(out: Path, alpha: float, source: Path, run_cfg, summary: dict, bcfg, models, device) -> dict:
    """Build the run directory of one α in a temp directory beside ``out``, then rename it into place."""
    from prefopt.benchmarks.runner import preference_metrics, record, run_benchmark
    from prefopt.io import atomic_write_json, atomic_write_text
    from prefopt.models import save_model_atomically
    from prefopt.trainer.summary import git_commit, package_versions

    start = time.perf_counter()
    policy, reference, work, tokenizer = models
    extrapolate_into(work, policy, reference, alpha)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        save_model_atomically(work, tokenizer, tmp / "model")
        cfg = OmegaConf.create(OmegaConf.to_container(run_cfg, resolve=False))
        cfg.expo = {"alpha": alpha, "source_run": str(source.resolve())}
        cfg.tags = {**(OmegaConf.to_container(cfg.tags) if cfg.get("tags") else {}), "expo_alpha": alpha}
        atomic_write_text(tmp / "config.yaml", OmegaConf.to_yaml(cfg))
        atomic_write_json(tmp / "summary.json", {
            "status": "completed",
            "run_dir": str(out.resolve()),
            "source_run": str(source.resolve()),
            "expo": {"alpha": alpha, "source_run": str(source.resolve())},
            "losses": summary.get("losses"),
            "choices": summary.get("choices"),
            "tags": {**(summary.get("tags") or {}), "expo_alpha": alpha},
            "steps": summary.get("steps"),
            "reference": summary.get("reference"),
            "benchmark": None,
            "versions": {"python": sys.version.split()[0], **package_versions()},
            "git_commit": git_commit(),
        })
        if bcfg.name == "preference":
            result = preference_metrics(tmp, run_cfg, device)
        else:
            result = run_benchmark(bcfg, work, reference, tokenizer, run_cfg.model.eot_token, tmp)
        record(tmp, result)
        done = json.loads((tmp / "summary.json").read_text())
        done["wall_time_s"] = time.perf_counter() - start
        atomic_write_json(tmp / "summary.json", done)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def extrapolate_run(run_dir: str | Path, alphas: list[float], bcfg) -> dict[float, dict]:
    """Every α of a finished run: save, benchmark, record. Returns the benchmark result of each α."""
    import torch

    from prefopt.benchmarks.runner import load_reference_model
    from prefopt.models import load_model, load_tokenizer
    from prefopt.reference import kind_class

    source = Path(run_dir)
    run_cfg, summary = check_source(source)
    model_dir = source / "model"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    mcfg = run_cfg.model
    tokenizer = load_tokenizer(str(model_dir), mcfg.chat_template, mcfg.trust_remote_code)
    policy = load_model(str(model_dir), mcfg.dtype, mcfg.trust_remote_code).to(device)
    reference = load_reference_model(run_cfg, device)
    ref_path = kind_class(run_cfg.reference.kind).initial_model_path(run_cfg.reference, mcfg)
    check_same_parameters(policy, reference, source, ref_path)
    work = load_model(str(model_dir), mcfg.dtype, mcfg.trust_remote_code).to(device)  # buffers from θ
    for model in (policy, reference, work):
        model.eval()
    results = {}
    expo_dir = source / "expo"
    created = not expo_dir.exists()
    try:
        for alpha in alphas:
            out = expo_dir / alpha_dir_name(alpha)
            log.info("alpha=%s: extrapolating %s into %s", alpha, model_dir, out)
            results[alpha] = write_alpha_run(out, alpha, source, run_cfg, summary, bcfg,
                                             (policy, reference, work, tokenizer), device)
    finally:
        if created and expo_dir.is_dir() and not any(expo_dir.iterdir()):
            expo_dir.rmdir()
    return results


def main(argv: list[str] | None = None) -> int:
    """``python -m prefopt.extrapolate``; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE, file=sys.stderr)
        return 2
    run_dirs = [a.split("=", 1)[1] for a in argv if a.startswith("run_dir=")]
    alphas = [a.split("=", 1)[1] for a in argv if a.startswith("alpha=")]
    overrides = [a for a in argv if not a.startswith(("run_dir=", "alpha="))]
    try:
        if len(run_dirs) != 1:
            raise ExtrapolateError(f"run_dir: {'missing' if not run_dirs else 'given more than once'}; {USAGE}")
        parsed = parse_alphas(alphas)
        bcfg = benchmark_config(overrides)
        results = extrapolate_run(run_dirs[0], parsed, bcfg)
    except PrefoptError as err:
        print(f"prefopt.extrapolate: {err}", file=sys.stderr)
        return 1
    shown = {repr(a): {k: v for k, v in r.items() if k not in ("examples", "items")} for a, r in results.items()}
    print(json.dumps(shown, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
