"""Generation benchmarks run after training (``benchmark=<name>``) or on a finished run
(``python -m prefopt.evaluate``), and their registry.

A benchmark is ``run(policy, reference, tokenizer, bcfg, eot_token) -> dict``: it answers the same
prompts with the policy and with the reference model (same sampling seeds), scores both, and returns
the paired delta (``prefopt.stats.paired_delta``: delta, 95% bootstrap CI, Wilcoxon p) plus its own
figures, with ``name`` set to its own name. Per-prompt results go under the key ``items`` (the caller
writes them to ``benchmark_<name>.jsonl`` and keeps them out of summary.json).

The registry, like the losses' one: ``@register_benchmark("name")`` records a run function; ``get(name)``
returns it, ``spec(name)`` says what it needs (a judge?), ``names()`` lists them all, and an unknown name is
an ``UnknownBenchmarkError`` listing the known ones. The built-in benchmarks are imported on first use, so
that ``benchmark=sentiment`` never imports a judge.

Plug-ins live in the user's own module, named in ``loss_modules=[...]`` (the one list of plug-in modules:
it is imported before Hydra composes, by ``prefopt.config.register_configs``, and again when the run
starts, so a module can register losses and benchmarks alike)::

    python -m prefopt.train loss_modules=[tests.plugins_example.my_benchmark] benchmark=length

A plug-in without a ``conf/benchmark/<name>.yaml`` gets a generated option (``benchmark=<name>``) holding
only its name: every other ``benchmark.*`` key keeps its schema default and can be overridden as usual.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prefopt.errors import ConfigError, PrefoptError

# Built-in benchmarks: name -> (module, needs a judge). Imported on use, never at import time.
_BUILTIN: dict[str, tuple[str, bool]] = {
    "sentiment": ("prefopt.benchmarks.sentiment", False),
    "mt_bench": ("prefopt.benchmarks.mt_bench", True),
    "alpaca_eval": ("prefopt.benchmarks.alpaca_eval", True),
    "alpaca_eval_pairwise": ("prefopt.benchmarks.alpaca_eval_pairwise", True),
}
# Names with a meaning of their own: benchmark=none runs nothing; prefopt.evaluate's benchmark=preference
# recomputes the held-out preference metrics.
RESERVED = ("none", "preference")


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    run: Callable[..., dict]
    # mt_bench and alpaca_eval grade with benchmark.judge (judge=http|local); a run without one is refused.
    needs_judge: bool = False
    # check(bcfg): raises a PrefoptError for a config this benchmark cannot run (a missing package, the wrong
    # judge), so that training does not start only to fail at its end.
    check: Callable | None = None

    def check_config(self, bcfg) -> None:
        """Refuse, before anything loads, a config this benchmark cannot run: no judge where one is needed,
        or whatever the benchmark's own ``check`` refuses."""
        judge = bcfg.get("judge")
        if self.needs_judge and (judge is None or judge.kind == "none"):
            raise ConfigError(f"benchmark={self.name} needs a judge: add judge=http or judge=local "
                              "(conf/judge/)")
        if self.check is not None:
            self.check(bcfg)

    @property
    def builtin(self) -> bool:
        return self.run.__module__.startswith("prefopt.benchmarks.")


class UnknownBenchmarkError(PrefoptError, ValueError):
    pass


_REGISTRY: dict[str, BenchmarkSpec] = {}


def register_benchmark(name: str, *, needs_judge: bool = False, check: Callable | None = None) -> Callable:
    """Register ``run(policy, reference, tokenizer, bcfg, eot_token) -> dict`` as ``benchmark=<name>``;
    ``check(bcfg)``, if given, refuses a config the benchmark cannot run before training starts.

    A name registered twice (or a built-in's name, or ``none``/``preference``) is an error, so two plug-ins
    cannot silently shadow each other or a built-in.
    """

    def decorate(fn: Callable) -> Callable:
        builtin_module = _BUILTIN.get(name, (None,))[0]
        if name in _REGISTRY or name in RESERVED or (builtin_module and fn.__module__ != builtin_module):
            raise ValueError(f"benchmark name {name!r} is already registered")
        _REGISTRY[name] = BenchmarkSpec(name, fn, needs_judge, check)
        if builtin_module is None:
            _store_option(name)
        return fn

    return decorate


def _store_option(name: str) -> None:
    # `benchmark=<name>` for a plug-in without a YAML: an option holding only its name (as the losses get one).
    from hydra.core.config_store import ConfigStore

    from prefopt.config import CONF_DIR

    if not (Path(CONF_DIR) / "benchmark" / f"{name}.yaml").exists():
        ConfigStore.instance().store(group="benchmark", name=name, node={"name": name}, package="benchmark")


def names() -> list[str]:
    """Every benchmark name: the built-ins and the registered plug-ins (not ``none``)."""
    return sorted(set(_BUILTIN) | set(_REGISTRY))


def spec(name: str) -> BenchmarkSpec:
    if name not in _REGISTRY and name in _BUILTIN:
        module_name, needs_judge = _BUILTIN[name]
        module = importlib.import_module(module_name)
        # A built-in module may register itself with the decorator; one that only defines run() (and maybe
        # check()) is wrapped.
        _REGISTRY.setdefault(name, BenchmarkSpec(name, module.run, needs_judge, getattr(module, "check", None)))
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownBenchmarkError(
            f"benchmark.name={name!r}: known: none, {', '.join(names())} (a plug-in registers with "
            "@register_benchmark in a module named by loss_modules=[...])"
        ) from None


def get(name: str) -> Callable[..., dict]:
    """The run function of ``benchmark=<name>``, importing a built-in on first use."""
    return spec(name).run


def load_plugins(modules) -> None:
    """Import the plug-in modules (``loss_modules=[...]``) so that their ``@register_benchmark`` runs."""
    from prefopt import losses

    losses.load_plugins(modules)


__all__ = ["RESERVED", "BenchmarkSpec", "UnknownBenchmarkError", "get", "load_plugins", "names",
           "register_benchmark", "spec"]
