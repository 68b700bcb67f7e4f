"""``labeller=gold``: the benchmark's ground-truth reward as the labeller (VADER for the sentiment task).

``labeller.benchmark`` names the benchmark (null = the run's own). A benchmark offers a gold scorer by
defining ``gold_score(texts) -> list[float]`` in its module; the labeller asks the benchmark for it rather
than knowing benchmark names. With a gold labeller the iterative regime is the DPO paper's idealized
setting: preferences from the very reward the run is judged by.
"""

from __future__ import annotations

import importlib

from prefopt import benchmarks
from prefopt.errors import ConfigError
from prefopt.labellers import Labeller, register_labeller


@register_labeller("gold")
class GoldLabeller(Labeller):
    pairwise = False

    def __init__(self, scorer, source: str):
        super().__init__()
        self.scorer = scorer
        self.source = source

    @classmethod
    def from_config(cls, lcfg, bcfg):
        name = lcfg.get("benchmark") or (bcfg.name if bcfg is not None else "none")
        if name == "none":
            raise ConfigError("labeller=gold uses a benchmark's ground-truth scorer, but benchmark=none "
                              "(set labeller.benchmark=sentiment, or pick a benchmark with one)")
        module = importlib.import_module(benchmarks.spec(name).run.__module__)
        scorer = getattr(module, "gold_score", None)
        if scorer is None:
            raise ConfigError(f"labeller=gold: benchmark={name} has no ground-truth scorer (gold_score); "
                              "use labeller=judge or labeller=reward_model")
        return cls(scorer, name)

    def score(self, prompts, completions):
        return self.timed(self.scorer, list(completions), labels=len(completions), calls=len(completions))
