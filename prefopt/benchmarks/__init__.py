"""Generation benchmarks run after training (``benchmark=<name>``) or on a finished run
(``python -m prefopt.evaluate``).

A benchmark is ``run(policy, reference, tokenizer, bcfg, eot_token) -> dict``: it answers the same
prompts with the policy and with the reference model (same sampling seeds), scores both, and returns
the paired delta (``prefopt.stats.paired_delta``: delta, 95% bootstrap CI, Wilcoxon p) plus its own
figures. Per-prompt results go under the key ``items`` (the caller writes them to
``benchmark_<name>.jsonl`` and keeps them out of summary.json).
"""

from __future__ import annotations

from collections.abc import Callable

from prefopt.errors import PrefoptError

BENCHMARKS: dict[str, str] = {
    # name -> module; imported on use so that `benchmark=sentiment` never imports a judge.
    "sentiment": "prefopt.benchmarks.sentiment",
    "mt_bench": "prefopt.benchmarks.mt_bench",
    "alpaca_eval": "prefopt.benchmarks.alpaca_eval",
}


class UnknownBenchmarkError(PrefoptError, ValueError):
    pass


def names() -> list[str]:
    return sorted(BENCHMARKS)


def get(name: str) -> Callable:
    import importlib

    if name not in BENCHMARKS:
        raise UnknownBenchmarkError(f"benchmark.name={name!r}: known: none, {', '.join(names())}")
    return importlib.import_module(BENCHMARKS[name]).run
