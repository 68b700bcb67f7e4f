"""Labellers: what turns k sampled completions of a prompt into preferences, for the online and iterative
regimes (``regime=online|iterative``), and their registry.

A labeller is a class registered with ``@register_labeller("name")`` and built from the ``labeller`` config
section by ``build_labeller(lcfg, benchmark_cfg)``. It either scores each completion (``pairwise = False``:
``score(prompts, completions) -> list[float | None]``) or compares two (``pairwise = True``:
``compare(prompts, a, b) -> list[int | None]``, 0 = a, 1 = b, None = tie or malformed). A None is never
turned into a preference: the pair builder (``prefopt.online.pairs``) drops and counts it.

Every labeller keeps ``costs`` (labels, calls, seconds), written with each round's samples and into the
run's summary.

Built in (imported on first use, like the benchmarks):

- ``gold``: the benchmark's ground-truth scorer (its module's ``gold_score(texts)``; VADER for sentiment);
- ``judge``: any configured judge (``labeller.judge``: HTTP OpenAI-compatible or a local HF chat model),
  scoring each answer 1-10 or comparing two, both orders, an inconsistent verdict counted as a tie;
- ``reward_model``: a local Hugging Face sequence-classification model (``labeller.path``).

Plug-ins register in a module named by ``loss_modules=[...]``, as losses and benchmarks do.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from prefopt.errors import ConfigError, PrefoptError

_BUILTIN: dict[str, str] = {
    "gold": "prefopt.labellers.gold",
    "judge": "prefopt.labellers.judge",
    "reward_model": "prefopt.labellers.reward_model",
}


class UnknownLabellerError(PrefoptError, ValueError):
    pass


class LabellerError(PrefoptError, RuntimeError):
    """A labeller failed while labelling (an unreachable judge); names the labeller."""


@dataclass
class LabelCosts:
    labels: int = 0  # completions scored, or pairs compared
    calls: int = 0  # model or endpoint calls actually made (cache hits excluded)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


class Labeller:
    """Base class: subclasses set ``pairwise`` and implement ``score`` or ``compare``; ``from_config``
    builds one from the ``labeller`` section (and the benchmark's, for ``gold``)."""

    name: str = "labeller"
    pairwise: bool = False

    def __init__(self):
        self.costs = LabelCosts()

    @classmethod
    def from_config(cls, lcfg, bcfg) -> Labeller:
        raise NotImplementedError

    def score(self, prompts: list[str], completions: list[str]) -> list[float | None]:
        raise NotImplementedError(f"labeller {self.name} compares pairs; it does not score")

    def compare(self, prompts: list[str], first: list[str], second: list[str]) -> list[int | None]:
        raise NotImplementedError(f"labeller {self.name} scores completions; it does not compare")

    def timed(self, fn: Callable, *args, labels: int, calls: int = 0):
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.costs.seconds += time.perf_counter() - start
            self.costs.labels += labels
            self.costs.calls += calls


_REGISTRY: dict[str, type[Labeller]] = {}


def register_labeller(name: str) -> Callable[[type[Labeller]], type[Labeller]]:
    """Register a Labeller subclass as ``labeller.name=<name>``; a name registered twice is an error."""

    def decorate(cls: type[Labeller]) -> type[Labeller]:
        builtin_module = _BUILTIN.get(name)
        if name in _REGISTRY or (builtin_module and cls.__module__ != builtin_module):
            raise ValueError(f"labeller name {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def names() -> list[str]:
    return sorted(set(_BUILTIN) | set(_REGISTRY))


def get(name: str) -> type[Labeller]:
    if name not in _REGISTRY and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownLabellerError(f"labeller.name={name!r}: known: {', '.join(names())} (a plug-in registers "
                                   "with @register_labeller in a module named by loss_modules=[...])") from None


def build_labeller(lcfg, bcfg) -> Labeller:
    """The configured labeller; every bad value is a ConfigError naming its ``labeller.*`` key."""
    if lcfg is None or lcfg.get("name") in (None, "none"):
        raise ConfigError("labeller.name: the online, iterative and spin regimes need a labeller "
                          f"(labeller=gold|judge|reward_model; known: {', '.join(names())})")
    return get(lcfg.name).from_config(lcfg, bcfg)
