"""``regime=online``: every optimizer step trains on fresh pairs sampled from the policy itself.

    python -m prefopt.train experiment=online_dpo
    python -m prefopt.train regime=online labeller=gold labeller.benchmark=sentiment regime.every=4   # semi-online

For each step the loop hands ``pairs_for`` the step's batch of training rows; only their prompts are used.
Each prompt gets ``regime.samples_per_prompt`` completions from the sampling policy, sample j of prompt i at
step t drawn from the stream seeded by (regime.seed, t, i, j) with the benchmarks' batched KV-cache sampler;
the labeller scores or compares them, ``prefopt.online.pairs`` builds the pairs (ties dropped and counted), and
the step trains on those pairs with any paired loss, unchanged. The sampling policy is the policy itself
(``regime.every=1``, online DPO, Guo et al. 2024, arXiv 2402.04792) or a copy refreshed every ``regime.every``
steps (semi-online DPO, Lanchantin et al. 2025, arXiv 2506.21495).

Under DDP each process samples and labels its share of the prompts (prompts i ≡ rank mod world), and the
shares are gathered so that every process trains on the same pairs, split as any step's rows are.

Resume: the streams are keyed by the step, not by an RNG that runs on, and a resumed run restarts at a
checkpointed step with the policy of that step, so it draws exactly the samples the uninterrupted run drew. With
``regime.every > 1`` the sampling copy must be fresh at a checkpoint: ``trainer.checkpoint_every`` has to be a
multiple of ``regime.every`` (checked up front).

Written per step into the run dir: ``samples/samples_round<t>.jsonl`` (every prompt's samples, labels, pairs and
gold scores), and into metrics.jsonl: ``online/pairs``, ``online/ties``, ``online/gold_mean`` (the gold reward
of the fresh samples, when the benchmark has a ground-truth scorer), ``online/gold_agreement`` (the labeller's
pairs that gold orders the same way), ``online/sampling_s`` and ``online/labelling_s``; summary.json gets the
totals under ``online``.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from collections import Counter
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from prefopt.data.tokenize import EncodeSettings, TokenizeStats, encode_rows, end_of_turn_token
from prefopt.errors import ConfigError, PrefoptError
from prefopt.generation import SampleSettings, sample_streams
from prefopt.io import atomic_write_text, dumps
from prefopt.labellers import Labeller, build_labeller
from prefopt.online.labelling import gold_scorer, label_round, prompt_text

log = logging.getLogger("prefopt.online")


def sampling_seed(cfg: DictConfig) -> int:
    """regime.seed, or the training seed when it is null (the default): a seed sweep then varies the policy's
    samples as well as the data order, and a study's condition is not split by a per-seed regime.seed."""
    return cfg.seed if cfg.regime.seed is None else cfg.regime.seed


class OnlineSampler:
    def __init__(self, cfg: DictConfig, labeller: Labeller, gold, prompts: dict[int, list[dict]], tokenizer,
                 run_dir: Path):
        self.rcfg = cfg.regime
        self.seed = sampling_seed(cfg)
        self.labeller, self.gold, self.prompts, self.tokenizer = labeller, gold, prompts, tokenizer
        self.run_dir = run_dir
        self.eot = end_of_turn_token(tokenizer, cfg.model.eot_token)
        self.encode = EncodeSettings(cfg.dataset.max_length, cfg.dataset.max_prompt_length, cfg.model.eot_token)
        self.snapshot = None  # regime.every > 1: the sampling copy of the policy
        self.totals: Counter = Counter()
        self.last: dict[str, float] = {}

    def sampling_policy(self, policy, step: int):
        every = self.rcfg.every
        if every == 1:
            return policy
        if self.snapshot is None or (step - 1) % every == 0:
            self.snapshot = copy.deepcopy(policy).eval()
            for p in self.snapshot.parameters():
                p.requires_grad_(False)
        return self.snapshot

    def pairs_for(self, s, group: list[dict], step: int) -> list[dict]:
        """Fresh encoded pairs for optimizer step ``step`` from the prompts of ``group`` (see the module doc)."""
        prompt_ids = [row["index"] for row in group]
        mine = list(range(s.rank, len(prompt_ids), s.world))
        records, figures = self._sample_and_label(s, [prompt_ids[i] for i in mine], step)
        if s.world > 1:
            from accelerate.utils import gather_object

            shares = gather_object([(records, figures)])
            records = [r for share, _ in shares for r in share]
            figures = _merge([f for _, f in shares])
        records.sort(key=lambda r: r["order"])
        rows = [{"index": r["prompt_id"], "prompt": r["prompt"], "chosen": r["samples"][p["chosen"]],
                 "rejected": r["samples"][p["rejected"]]} for r in records for p in r["pairs"]]
        stats = TokenizeStats()
        encoded = encode_rows(rows, self.tokenizer, self.encode, "paired", stats)
        figures["dropped"] = stats.counts.get("dropped_completion_vanished", 0)
        if not encoded:
            raise PrefoptError(
                f"regime=online: step {step}: no preference among the {self.rcfg.samples_per_prompt} samples of any "
                f"of the batch's {len(group)} prompts ({dict(figures['counts'])}); raise regime.samples_per_prompt, "
                "regime.temperature or trainer.batch_size")
        if s.is_main:
            path = self.run_dir / "samples" / f"samples_round{step}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, "".join(dumps({k: v for k, v in r.items() if k != "order"}) + "\n"
                                            for r in records))
        self.last = {"online/pairs": float(len(encoded)), "online/ties": float(figures["counts"].get("ties", 0)),
                     "online/sampling_s": figures["sampling_s"], "online/labelling_s": figures["labelling_s"]}
        if figures.get("gold_n"):
            self.last["online/gold_mean"] = figures["gold_sum"] / figures["gold_n"]
        if figures.get("agree_n"):
            self.last["online/gold_agreement"] = figures["agree"] / figures["agree_n"]
        self.totals.update({"steps": 1, "samples": figures["samples"], "pairs": len(encoded),
                            **{f"count/{k}": v for k, v in figures["counts"].items()}})
        self.totals["sampling_s"] += figures["sampling_s"]
        self.totals["labelling_s"] += figures["labelling_s"]
        return encoded

    def _sample_and_label(self, s, prompt_ids: list[int], step: int) -> tuple[list[dict], dict]:
        k = self.rcfg.samples_per_prompt
        figures: dict = {"samples": len(prompt_ids) * k, "counts": Counter(), "sampling_s": 0.0, "labelling_s": 0.0}
        if not prompt_ids:
            return [], figures
        start = time.perf_counter()
        settings = SampleSettings(self.rcfg.max_new_tokens, self.rcfg.temperature, self.rcfg.top_p,
                                  self.rcfg.sample_batch_size, seed=self.seed * 1_000_003 + step)
        streams = [(i, j) for i in prompt_ids for j in range(k)]
        policy = self.sampling_policy(s.policy, step)
        with torch.no_grad():
            drawn = sample_streams(policy, self.tokenizer, [self.prompts[i] for i, _ in streams], streams, settings,
                                   self.eot)
        texts = [[drawn[n * k + j]["text"] for j in range(k)] for n in range(len(prompt_ids))]
        figures["sampling_s"] = time.perf_counter() - start
        start = time.perf_counter()
        rng = random.Random(self.seed * 7919 + step)
        scores, pairs = label_round(self.labeller, [prompt_text(self.prompts[i]) for i in prompt_ids], texts,
                                    self.rcfg.pairs, self.rcfg.tie_margin, rng, figures["counts"])
        figures["labelling_s"] = time.perf_counter() - start
        records = [{"order": n, "prompt_id": i, "prompt": self.prompts[i], "samples": t, "labels": sc, "pairs": ps}
                   for n, (i, t, sc, ps) in enumerate(zip(prompt_ids, texts, scores, pairs, strict=True))]
        if self.gold is not None:
            gold = self.gold([x for t in texts for x in t])
            figures["gold_sum"], figures["gold_n"] = sum(gold), len(gold)
            agree = agree_n = 0
            for n, rec in enumerate(records):
                rec["gold"] = gold[n * k:(n + 1) * k]
                for p in rec["pairs"]:
                    agree_n += 1
                    agree += rec["gold"][p["chosen"]] > rec["gold"][p["rejected"]]
            figures["agree"], figures["agree_n"] = agree, agree_n
        # Order within the whole group: the rank's n-th prompt is the group's (rank + n * world)-th.
        for n, rec in enumerate(records):
            rec["order"] = s.rank + n * s.world
        return records, figures


def _merge(shares: list[dict]) -> dict:
    merged: dict = {"counts": Counter()}
    for f in shares:
        for key, value in f.items():
            if key == "counts":
                merged["counts"].update(value)
            elif key in ("sampling_s", "labelling_s"):
                merged[key] = max(merged.get(key, 0.0), value)  # the shares ran side by side
            else:
                merged[key] = merged.get(key, 0) + value
    return merged


def check_online(cfg: DictConfig) -> None:
    """What an online run needs, refused before any model loads, naming the key."""
    rcfg = cfg.regime
    if rcfg.every < 1:
        raise ConfigError(f"regime.every={rcfg.every}: must be >= 1")
    if rcfg.every > 1 and cfg.trainer.checkpoint_every % rcfg.every:
        raise ConfigError(f"trainer.checkpoint_every={cfg.trainer.checkpoint_every} must be a multiple of "
                          f"regime.every={rcfg.every}, so that a checkpoint falls where the sampling copy is fresh")
    zero3 = cfg.deepspeed is not None and cfg.deepspeed.get("zero_optimization", {}).get("stage") == 3
    if zero3:
        raise ConfigError("regime=online samples from the policy, which ZeRO-3 shards over the processes; "
                          "use deepspeed=zero2 or DDP")


def build_online(cfg: DictConfig, tokenizer, kind: str, run_dir: Path) -> OnlineSampler | None:
    """The step's pair source for ``regime=online``; None for every other regime."""
    if cfg.get("regime") is None or cfg.regime.kind != "online":
        return None
    if kind != "paired":
        raise ConfigError(f"regime=online builds preference pairs, but the loss takes {kind} data; "
                          "pick a paired loss (loss=dpo, ipo, ...)")
    from prefopt.data import split_rows

    rows, _ = split_rows(cfg.dataset, {"train": Counter(), "eval": Counter()})
    prompts = {row["index"]: row["prompt"] for row in rows}
    labeller = build_labeller(cfg.labeller, cfg.benchmark)
    gold = gold_scorer(OmegaConf.create({"name": cfg.labeller.get("benchmark") or cfg.benchmark.name}))
    return OnlineSampler(cfg, labeller, gold, prompts, tokenizer, run_dir)
