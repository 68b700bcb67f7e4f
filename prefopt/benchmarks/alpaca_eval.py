"""``benchmark=alpaca_eval``: AlpacaEval 2 as its leaderboard computes it, through the ``alpaca_eval`` package
(``pip install 'prefopt[alpaca_eval]'``; Dubois et al. 2024, arXiv 2404.04475).

Policy and reference model answer the AlpacaEval instructions with the same sampling seeds. Each answer is
compared with the reference output set (``benchmark.reference_outputs``, by default gpt4_1106_preview's, the
AlpacaEval 2 baseline) by the package's own annotator (``benchmark.annotator``, by default the leaderboard's
``weighted_alpaca_eval_gpt4_turbo``: its prompt, its output-order randomization, its log-prob parser), sent to
the OpenAI-compatible endpoint of ``judge=http``: ``benchmark.judge.base_url``, the key from the environment
variable ``benchmark.judge.api_key_env``, and ``benchmark.judge.model`` in place of the annotator's model
(null keeps the annotator's, e.g. gpt-4-1106-preview).

Reported for each model, by the package's functions on the package's annotations (preference 1 = reference
output wins, 2 = model wins, in between for a weighted annotator, 1.5 = draw):

- ``win_rate`` and ``standard_error``: ``alpaca_eval.metrics.get_winrate``, 100·mean(preference − 1) over the
  valid annotations and 100·its standard error of the mean;
- ``length_controlled_winrate`` and ``lc_standard_error``: ``get_length_controlled_winrate``, the paper's
  Eq. (2)-(3) GLM ``logit P(model wins) = θ·tanh(Δlen/σ(Δlen)) + φ·difficulty + ψ`` fitted to this model's
  annotations (plus two length-gamed baselines, weight λ=0.2) and averaged over the instructions at Δlen = 0.

The delta is policy minus reference model, paired per instruction on the (preference − 1)·100 scale.

The LC fit reads ``df_gamed.csv`` (instruction difficulties and the gamed baselines' annotations), which the
package downloads from the hub dataset ``tatsu-lab/alpaca_eval`` on every call and does not ship. It is
resolved before anything is judged: ``benchmark.lc_difficulties`` (a local copy) or the hub's. Without it the
benchmark says so in one log line and reports the raw win rate only (``length_controlled_winrate: null``,
``lc_unavailable`` saying why): the judgments are cached, so a rerun with the file adds LC for free.

Judgments are cached by the package's annotator in ``<judge.cache_dir or $PREFOPT_CACHE/judgments>/alpaca_eval/``,
one JSON per (annotator, endpoint, model), rewritten atomically after every chunk of 128.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import threading
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

from prefopt.benchmarks.alpaca_data import (
    HUB_REPO,
    LC_DIFFICULTIES,
    hub_file,
    load_instructions,
    load_reference_outputs,
)
from prefopt.data.registry import DataError
from prefopt.errors import ConfigError

log = logging.getLogger(__name__)

# Columns of df_gamed.csv the package's GLM reads (alpaca_eval/metrics/glm_winrate.py, _get_featurized_data).
LC_COLUMNS = ("model", "index", "instruction_difficulty", "preference", "std_delta_len", "not_gamed_baseline")
_LC_LOCK = threading.Lock()


def import_package():
    """``alpaca_eval``, imported the one way that works with current setuptools and leaves logging alone.

    alpaca_eval 0.6.6 does ``import pkg_resources`` (for ``parse_version``/``get_distribution``), which
    setuptools 81+ no longer ships: a stand-in with those two functions is present only while the package
    imports (its modules keep their reference). Its import also sets the root logger to INFO; restored.
    """
    if "alpaca_eval.main" in sys.modules:
        return sys.modules["alpaca_eval"]
    root_level = logging.getLogger().level
    stand_in = None
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        from importlib import metadata

        from packaging.version import parse

        stand_in = types.ModuleType("pkg_resources")
        stand_in.parse_version = parse
        stand_in.get_distribution = lambda name: types.SimpleNamespace(version=metadata.version(name))
        sys.modules["pkg_resources"] = stand_in
    try:
        import alpaca_eval
        import alpaca_eval.metrics.glm_winrate  # noqa: F401  (the metrics package hides its ImportError)
    except ImportError as err:
        raise ConfigError(f"benchmark=alpaca_eval needs the alpaca_eval package ({err}): pip install "
                          "'prefopt[alpaca_eval]' (benchmark=alpaca_eval_pairwise needs none)") from None
    finally:
        if stand_in is not None and sys.modules.get("pkg_resources") is stand_in:
            del sys.modules["pkg_resources"]
        logging.getLogger().setLevel(root_level)
    return alpaca_eval


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    api_key: str
    model: str | None  # None: the annotator config's own model
    timeout: float
    max_retries: int
    concurrency: int


def check(bcfg) -> Endpoint:
    """Every refusal before anything loads or is judged: the package, judge=http, its URL and key, the annotator."""
    import_package()
    judge = bcfg.judge
    if judge.kind != "http":
        raise ConfigError(f"benchmark=alpaca_eval sends its annotator's prompts to an OpenAI-compatible endpoint: "
                          f"needs judge=http (got benchmark.judge.kind={judge.kind!r}; for judge=local use "
                          "benchmark=alpaca_eval_pairwise)")
    if not judge.base_url:
        raise ConfigError("benchmark.judge.base_url: required for benchmark=alpaca_eval (e.g. "
                          "https://api.openai.com/v1, or your vLLM server's /v1)")
    key = "EMPTY"  # what OpenAI-compatible servers without auth (vLLM) accept
    if judge.api_key_env:
        key = os.environ.get(judge.api_key_env, "")
        if not key:
            raise ConfigError(f"benchmark.judge.api_key_env={judge.api_key_env}: the environment variable is not set")
    annotator_configs(bcfg.annotator)
    return Endpoint(judge.base_url.rstrip("/"), key, judge.model, float(judge.timeout), int(judge.max_retries),
                    int(judge.get("concurrency", 1)))


def annotator_configs(annotator: str) -> dict:
    """The package's annotator config (a name under alpaca_eval/evaluators_configs, or a configs.yaml path)."""
    import_package()
    from alpaca_eval import constants, utils

    path = Path(annotator)
    if not path.exists():
        path = constants.EVALUATORS_CONFIG_DIR / annotator
    if path.is_dir():
        path = path / "configs.yaml"
    if not path.is_file():
        known = sorted(p.name for p in constants.EVALUATORS_CONFIG_DIR.iterdir() if (p / "configs.yaml").is_file())
        raise ConfigError(f"benchmark.annotator={annotator!r}: not an alpaca_eval annotator config; known: "
                          f"{', '.join(known)}")
    configs = utils.load_configs(path)
    for name, cfg in configs.items():
        if cfg.get("fn_completions") != "openai_completions":
            raise ConfigError(f"benchmark.annotator={annotator!r}: its annotator {name!r} calls "
                              f"{cfg.get('fn_completions')!r}, not an OpenAI-compatible endpoint")
    return configs


def annotation_cache(bcfg, endpoint: Endpoint) -> Path:
    """The JSON the package's annotator caches judgments in: one per annotator, endpoint and model."""
    from prefopt.models import cache_root

    root = Path(bcfg.judge.cache_dir) if bcfg.judge.cache_dir else cache_root() / "judgments"
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(bcfg.annotator)).name.removesuffix(".yaml"))
    digest = hashlib.sha256(f"{endpoint.base_url}|{endpoint.model}".encode()).hexdigest()[:16]
    return root / "alpaca_eval" / f"{tag}-{digest}.json"


def lc_difficulties(bcfg, num_instructions: int) -> tuple[Path | None, str | None]:
    """``df_gamed.csv``: the local copy ``benchmark.lc_difficulties`` (an error if it is missing or malformed) or
    the hub's; ``(None, why)`` when the hub cannot be reached."""
    where = "benchmark.lc_difficulties"
    if bcfg.lc_difficulties:
        path = Path(os.path.expanduser(bcfg.lc_difficulties))
        if not path.is_file():
            raise DataError(f"{where}={bcfg.lc_difficulties!r}: file not found (a local copy of {LC_DIFFICULTIES} "
                            f"from the hub dataset {HUB_REPO})")
    else:
        try:
            path = hub_file(LC_DIFFICULTIES, where)
        except DataError as err:
            return None, str(err)
    check_difficulties(path, num_instructions)
    return path, None


def check_difficulties(path: Path, num_instructions: int) -> None:
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise DataError(f"benchmark.lc_difficulties={path}: not a CSV ({err})") from None
    missing = [c for c in LC_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"benchmark.lc_difficulties={path}: no column {missing[0]!r} (df_gamed.csv has "
                        f"{', '.join(LC_COLUMNS)})")
    # The package looks instruction i's difficulty up as row i of the file's first row per "index": rows
    # 0..n-1 must each be such a first row, or its lookup fails.
    firsts = set(frame.drop_duplicates("index").index)
    if not set(range(num_instructions)) <= firsts:
        raise DataError(f"benchmark.lc_difficulties={path}: its first {num_instructions} rows must each hold a "
                        "different instruction 'index' (one difficulty per AlpacaEval instruction, in order)")


def length_controlled(annotations, difficulties: Path) -> dict:
    """``alpaca_eval.metrics.get_length_controlled_winrate`` on ``annotations``, with its one hub download
    (``df_gamed.csv``) answered by ``difficulties``; its GLM weights are not written into the package."""
    import_package()
    from alpaca_eval.metrics import glm_winrate

    def local_copy(repo_id, filename, **kwargs):
        if (repo_id, filename) != (HUB_REPO, LC_DIFFICULTIES):
            raise RuntimeError(f"alpaca_eval asked for {repo_id}/{filename}; prefopt serves only {LC_DIFFICULTIES}")
        return str(difficulties)

    with _LC_LOCK, warnings.catch_warnings():
        # scikit-learn 1.8+ warns about LogisticRegressionCV(penalty=...), which the package passes.
        warnings.simplefilter("ignore", FutureWarning)
        original = glm_winrate.hf_hub_download
        glm_winrate.hf_hub_download = local_copy
        try:
            return glm_winrate.get_length_controlled_winrate(annotations, save_weights_dir=None,
                                                             is_warn_extreme_changes=False)
        finally:
            glm_winrate.hf_hub_download = original


def win_rates(annotations, difficulties: Path | None) -> dict:
    """The package's figures for one model's annotations (a DataFrame with instruction, output_1, output_2,
    generator_1, generator_2, preference, in the AlpacaEval set's order): raw, and LC when ``difficulties``."""
    import_package()
    from alpaca_eval.metrics import get_winrate

    figures = length_controlled(annotations, difficulties) if difficulties is not None else get_winrate(annotations)
    out = {k: (int(v) if k.startswith("n_") else float(v)) for k, v in figures.items()}
    out.setdefault("length_controlled_winrate", None)
    out.setdefault("lc_standard_error", None)
    out["n_invalid"] = len(annotations) - out["n_total"]
    return out


def _annotator_class():
    from alpaca_eval.annotators import PairwiseAnnotator

    from prefopt.io import atomic_write_text

    class Annotator(PairwiseAnnotator):
        """The package's annotator, with a cache that survives pandas 3 and a crash mid-write."""

        def load_(self, path=None):
            super().load_(path)
            # pandas 3 reads an all-integer preference column as int64, and the package then fails to set 1.5.
            if self.df_annotations is not None and self.annotation_key in self.df_annotations:
                self.df_annotations[self.annotation_key] = self.df_annotations[self.annotation_key].astype(float)

        def save(self, path=None):
            path = path or self.caching_path
            if path is not None:
                self._refresh_annotations_()
                # 15 digits, not pandas' default 10: a rerun from the cache reproduces the figures to ~1e-13.
                text = self.df_annotations.to_json(orient="records", indent=2, double_precision=15)
                atomic_write_text(path, text)

    return Annotator


class _DropMessages(logging.Filter):
    """Drops the package's warnings about choices prefopt makes on purpose (its own cache path, and the
    endpoint from benchmark.judge rather than a client-config file): they would read as faults."""

    def __init__(self, *starts: str):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


def annotate(bcfg, endpoint: Endpoint, instructions, baseline, outputs) -> list[float | None]:
    """The package annotator's preference for each (instruction, baseline output, model output); None = invalid."""
    import_package()
    from prefopt.judges.base import JudgeError

    cache = annotation_cache(bcfg, endpoint)
    cache.parent.mkdir(parents=True, exist_ok=True)
    quiet = _DropMessages("Saving_path is given but not 'auto'", f"{os.devnull} wasn't found")
    logging.getLogger().addFilter(quiet)
    try:
        annotator = _annotator_class()(annotators_config=str(bcfg.annotator), caching_path=cache, seed=0)
        for single in annotator.annotators.values():
            single.completions_kwargs.update(
                # The package builds its OpenAI client from these (its "backward compatible" path), never from a
                # client-config file, so the endpoint is exactly benchmark.judge's.
                openai_api_base=endpoint.base_url, openai_api_keys=[endpoint.api_key],
                client_config_path=os.devnull, num_procs=endpoint.concurrency,
                client_kwargs={"timeout": endpoint.timeout, "max_retries": endpoint.max_retries})
            if endpoint.model:
                single.completions_kwargs["model_name"] = endpoint.model
        rows = annotator.annotate_head2head(
            outputs_1=[{"instruction": i, "output": o} for i, o in zip(instructions, baseline, strict=True)],
            outputs_2=[{"instruction": i, "output": o} for i, o in zip(instructions, outputs, strict=True)],
            is_ordered=True)
    except Exception as err:  # openai's connection/auth/status errors, raised from the package's worker threads
        raise JudgeError(f"benchmark=alpaca_eval: the judge at {endpoint.base_url} failed: "
                         f"{type(err).__name__}: {' '.join(str(err).split())[:300]}") from err
    finally:
        logging.getLogger().removeFilter(quiet)
    by_key = {(r["instruction"], r["output_1"], r["output_2"]): r.get("preference") for r in rows}
    prefs = []
    for key in zip(instructions, baseline, outputs, strict=True):
        value = by_key.get(key)
        prefs.append(None if value is None or value != value or value < 0 else float(value))
    return prefs


def evaluate_outputs(bcfg, endpoint: Endpoint, instructions, baseline, baseline_name, outputs: dict,
                     difficulties: Path | None) -> dict:
    """Judge each model's outputs (``outputs``: side -> one output per instruction) against the baseline and
    compute the package's figures and the paired delta of the first two sides."""
    import pandas as pd

    from prefopt.stats import paired_delta

    prefs = {side: annotate(bcfg, endpoint, instructions, baseline, texts) for side, texts in outputs.items()}
    result: dict = {"name": "alpaca_eval", "annotator": str(bcfg.annotator),
                    "judge": f"{endpoint.model or 'annotator default'}@{endpoint.base_url}",
                    "reference_outputs": baseline_name, "num_instructions": len(instructions),
                    "lc_difficulties": None if difficulties is None else str(difficulties)}
    for side, values in prefs.items():
        frame = pd.DataFrame({"instruction": instructions, "output_1": baseline, "output_2": outputs[side],
                              "generator_1": baseline_name, "generator_2": side, "annotator": str(bcfg.annotator),
                              "preference": [float("nan") if v is None else v for v in values]})
        if frame["preference"].notna().sum() == 0:
            result.update({f"{side}_win_rate": None, f"{side}_standard_error": None, f"{side}_n_total": 0,
                           f"{side}_n_invalid": len(values), f"{side}_length_controlled_winrate": None})
            continue
        result.update({f"{side}_{k}": v for k, v in win_rates(frame, difficulties).items()})
    sides = list(outputs)[:2]
    both = [i for i in range(len(instructions)) if all(prefs[s][i] is not None for s in sides)]
    if len(sides) == 2 and both:
        result.update(paired_delta([100 * (prefs[sides[0]][i] - 1) for i in both],
                                   [100 * (prefs[sides[1]][i] - 1) for i in both],
                                   samples=bcfg.bootstrap_samples, seed=bcfg.seed))
        lc = [result.get(f"{s}_length_controlled_winrate") for s in sides]
        result["lc_delta"] = None if None in lc else lc[0] - lc[1]
    else:
        result.update({"n": 0, "delta": None, "status": "no_valid_judgments"})
        log.error("alpaca_eval: no instruction got a valid preference for both models")
    result["items"] = [{"instruction": text, "baseline_output": baseline[i],
                        **{f"{side}_output": outputs[side][i] for side in outputs},
                        **{f"{side}_preference": prefs[side][i] for side in outputs}}
                       for i, text in enumerate(instructions)]
    result["examples"] = result["items"][:3]
    return result


def run(policy, reference, tokenizer, bcfg, eot_token: str | None = None) -> dict:
    from prefopt.generation import SampleSettings, sample

    endpoint = check(bcfg)
    instructions = load_instructions(bcfg.prompts, bcfg.num_prompts)
    baseline, baseline_name = load_reference_outputs(bcfg.reference_outputs, instructions)
    difficulties, why = lc_difficulties(bcfg, len(instructions))
    if difficulties is None:
        log.warning("alpaca_eval: no length-controlled win rate, raw win rate only: %s", why)
    settings = SampleSettings(bcfg.max_new_tokens, bcfg.temperature, bcfg.top_p, bcfg.batch_size, bcfg.seed)
    chats = [[{"role": "user", "content": text}] for text in instructions]
    outputs = {side: [s["text"] for s in sample(model, tokenizer, chats, settings, eot_token)]
               for side, model in (("policy", policy), ("reference", reference))}
    result = evaluate_outputs(bcfg, endpoint, instructions, baseline, baseline_name, outputs, difficulties)
    if difficulties is None:
        result["lc_unavailable"] = why
    return result
