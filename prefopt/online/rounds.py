"""Iterative preference optimization in rounds: ``regime=iterative`` and ``regime=spin``.

    python -m prefopt.train experiment=iterative_dpo                       # 3 rounds, gold (VADER) labels
    python -m prefopt.train experiment=spin                                # SPIN, 2 rounds
    python -m prefopt.train regime=iterative labeller=judge labeller.judge.base_url=... loss=ipo

Each round r of ``regime.rounds``:
  1. samples ``regime.samples_per_prompt`` completions of every training prompt from the current policy (the
     start model in round 0, round r-1's trained model after), with the benchmarks' batched KV-cache sampler,
     sample j of prompt i from the stream seeded by (regime.seed, round, i, j);
  2. labels them (``labeller=...``, ``prefopt.labellers``) and builds pairs (``regime.pairs``, ties dropped and
     counted) -- or, for SPIN (Chen et al. 2024, arXiv 2401.01335, Eq. 4.7 with the logistic loss: any paired
     loss of the registry here), pairs the dataset's own target response (chosen) against the policy's sample
     (rejected), an identical pair dropped and counted;
  3. writes ``samples_round<r>.jsonl`` (every sample, its label, the pairs) and ``pairs_round<r>.jsonl`` (a
     ``dataset=generic`` file), so that a round can be audited and its pairs reused offline;
  4. trains ``regime.epochs_per_round`` epochs on those pairs with prefopt's one training loop, as a run of
     its own in ``round<r>/``, with any paired loss unchanged. Its reference is that round's start policy
     (``regime.reference=reset``, the iterative-DPO and SPIN recipes) or the run's first model
     (``regime.reference=initial``).

Each round starts a fresh optimizer, as the iterative-DPO recipes this reproduces do (each round is a DPO run
on new pairs); regime=online (online.py) keeps one optimizer and samples at every step instead.

Resume (``resume=auto``): a round whose ``round<r>/summary.json`` is complete is skipped; a round's samples are
read back from its ``samples_round<r>.jsonl`` instead of being drawn again; an interrupted round continues
from its newest checkpoint. Sampling is keyed by (seed, round, prompt, sample), not by an RNG that runs on,
so nothing but the files needs keeping for a resumed run to equal an uninterrupted one.

The run's summary.json lists every round: pairs, ties and other counts, the labeller's costs (labels, calls,
seconds), sampling/labelling/training seconds, the gold reward of the fresh samples when the benchmark has a
ground-truth scorer, and the labeller's agreement with that gold score on the pairs it built; ``compute`` sums
the rounds' (tokens, FLOPs, seconds by phase, sampling and labelling included). The benchmark (if any) is run
once, on the last round's model against the run's first model (as for an offline run), its items written beside
the summary.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import time
from collections import Counter
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from prefopt.errors import ConfigError
from prefopt.generation import SampleSettings, sample_streams
from prefopt.io import atomic_write_json, atomic_write_text, dumps, read_jsonl
from prefopt.labellers import Labeller, build_labeller
from prefopt.online.labelling import gold_scorer, label_round, prompt_text
from prefopt.online.online import sampling_seed
from prefopt.online.pairs import MODES
from prefopt.sinks import redact

log = logging.getLogger("prefopt.online")

ROUND_KINDS = ("iterative", "spin")


def check_regime(cfg: DictConfig) -> None:
    """Range checks of ``regime.*``, before anything loads; each names its key."""
    rcfg = cfg.regime
    if rcfg.kind not in ("offline", "online", *ROUND_KINDS):
        raise ConfigError(f"regime.kind={rcfg.kind!r}: must be offline, online, iterative or spin")
    if rcfg.kind == "offline":
        return
    if rcfg.kind == "online":
        from prefopt.online.online import check_online

        check_online(cfg)
    checks = [
        (rcfg.kind == "online" or rcfg.rounds >= 1, f"regime.rounds={rcfg.rounds}: must be >= 1"),
        (rcfg.epochs_per_round >= 1, f"regime.epochs_per_round={rcfg.epochs_per_round}: must be >= 1"),
        (rcfg.kind == "spin" or rcfg.samples_per_prompt >= 2,
         f"regime.samples_per_prompt={rcfg.samples_per_prompt}: must be >= 2 to build a pair"),
        (rcfg.pairs in MODES, f"regime.pairs={rcfg.pairs!r}: must be one of {', '.join(MODES)}"),
        (rcfg.tie_margin >= 0, f"regime.tie_margin={rcfg.tie_margin}: must be >= 0"),
        (rcfg.reference in ("reset", "initial"), f"regime.reference={rcfg.reference!r}: must be reset or initial"),
        (rcfg.max_new_tokens >= 1, f"regime.max_new_tokens={rcfg.max_new_tokens}: must be >= 1"),
        (rcfg.kind == "online" or int(os.environ.get("WORLD_SIZE", "1")) == 1,
         f"regime.kind={rcfg.kind}: runs in one process for now (WORLD_SIZE={os.environ.get('WORLD_SIZE')})"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def training_prompts(cfg: DictConfig) -> list[dict]:
    """The training split's rows (prompt messages, and the target response for SPIN), in file order, cut to
    dataset.max_train_rows; the rows the offline run would hold out for eval are held out here too."""
    from prefopt.data import split_rows

    counts = {"train": Counter(), "eval": Counter()}
    rows, _ = split_rows(cfg.dataset, counts)
    if cfg.dataset.max_train_rows:
        rows = rows[: cfg.dataset.max_train_rows]
    if not rows:
        raise ConfigError(f"dataset.name={cfg.dataset.name}: no training prompts to sample from")
    return rows


def sample_round(cfg: DictConfig, policy_path: str, rows: list[dict], round_index: int, labeller: Labeller | None,
                 gold) -> tuple[list[dict], dict]:
    """Draw, label and pair one round; returns (records of samples_round<r>.jsonl, the round's figures)."""
    import torch

    from prefopt.data.tokenize import end_of_turn_token
    from prefopt.models import load_model, load_tokenizer

    rcfg, mcfg = cfg.regime, cfg.model
    k = 1 if rcfg.kind == "spin" else rcfg.samples_per_prompt
    figures: dict = {"round": round_index, "prompts": len(rows), "samples_per_prompt": k}
    start = time.perf_counter()
    tokenizer = load_tokenizer(policy_path, mcfg.chat_template, mcfg.trust_remote_code)
    policy = load_model(policy_path, "float32" if not torch.cuda.is_available() else mcfg.dtype,
                        mcfg.trust_remote_code)
    if torch.cuda.is_available():
        policy = policy.cuda()
    eot = end_of_turn_token(tokenizer, mcfg.eot_token)
    settings = SampleSettings(rcfg.max_new_tokens, rcfg.temperature, rcfg.top_p, rcfg.sample_batch_size,
                              seed=sampling_seed(cfg) * 1_000_003 + round_index)
    streams = [(i, j) for i in range(len(rows)) for j in range(k)]
    drawn = sample_streams(policy, tokenizer, [rows[i]["prompt"] for i, _ in streams], streams, settings, eot)
    del policy
    texts = [[drawn[i * k + j]["text"] for j in range(k)] for i in range(len(rows))]
    figures["sampling_s"] = time.perf_counter() - start
    figures["finished_fraction"] = sum(d["finished"] for d in drawn) / len(drawn)

    counts: Counter = Counter()
    prompts = [prompt_text(r["prompt"]) for r in rows]
    start = time.perf_counter()
    if rcfg.kind == "spin":
        # SPIN: the dataset's response is the chosen side, the policy's own sample the rejected one.
        scores = [[None] for _ in rows]
        pairs = []
        for row, t in zip(rows, texts, strict=True):
            if t[0].strip() == row["chosen"].strip():
                counts["identical"] += 1
                pairs.append([])
            else:
                pairs.append([{"chosen": "target", "rejected": 0}])
    else:
        costs_before = labeller.costs.as_dict()
        scores, pairs = label_round(labeller, prompts, texts, rcfg.pairs, rcfg.tie_margin,
                                    random.Random(sampling_seed(cfg) * 7919 + round_index), counts)
        after = labeller.costs.as_dict()
        figures["labeller"] = {key: after[key] - costs_before[key] for key in after}
    figures["labelling_s"] = time.perf_counter() - start

    records = []
    for i, (row, t, sc, ps) in enumerate(zip(rows, texts, scores, pairs, strict=True)):
        records.append({"prompt_id": i, "prompt": row["prompt"], "samples": t, "labels": sc, "pairs": ps,
                        **({"target": row["chosen"]} if rcfg.kind == "spin" else {})})
    if gold is not None:
        gold_scores = gold([s for t in texts for s in t])
        figures["gold_mean"] = sum(gold_scores) / len(gold_scores)
        for rec, at in zip(records, range(0, len(gold_scores), k), strict=True):
            rec["gold"] = gold_scores[at:at + k]
        if rcfg.kind != "spin":
            judged = [(rec["gold"][p["chosen"]], rec["gold"][p["rejected"]]) for rec in records for p in rec["pairs"]]
            if judged:
                figures["gold_agreement"] = sum(c > r for c, r in judged) / len(judged)
                figures["gold_ties"] = sum(c == r for c, r in judged) / len(judged)
    figures["pairs"] = sum(len(rec["pairs"]) for rec in records)
    figures["counts"] = dict(counts)
    return records, figures


def pair_rows(records: list[dict]) -> list[dict]:
    """The round's pairs as ``dataset=generic`` rows."""
    rows = []
    for rec in records:
        for p in rec["pairs"]:
            chosen = rec["target"] if p["chosen"] == "target" else rec["samples"][p["chosen"]]
            rows.append({"prompt": rec["prompt"], "chosen": chosen, "rejected": rec["samples"][p["rejected"]],
                         "score_chosen": p.get("score_chosen"), "score_rejected": p.get("score_rejected")})
    return rows


def round_config(cfg: DictConfig, r: int, policy_path: str, pairs_path: Path, round_dir: Path,
                 resume: bool) -> DictConfig:
    """The offline run of round r: the round's pairs, started from the round's policy."""
    rcfg = cfg.regime
    last = r == rcfg.rounds - 1
    round_cfg = OmegaConf.to_container(cfg, resolve=True)
    round_cfg["regime"] = {**round_cfg["regime"], "kind": "offline"}
    round_cfg["model"]["name_or_path"] = policy_path
    if rcfg.reference == "initial" and r > 0:
        round_cfg["reference"] = {**round_cfg["reference"], "kind": "checkpoint", "name_or_path": cfg.model.name_or_path}
    dataset = round_cfg["dataset"]
    dataset.update(name="generic", path=str(pairs_path), eval_path=None, eval_split=None, label_noise=0.0,
                   max_train_rows=None, options={"prompt": "prompt", "chosen": "chosen", "rejected": "rejected",
                                                 "system": None, "score_chosen": "score_chosen",
                                                 "score_rejected": "score_rejected"})
    round_cfg["epochs"] = rcfg.epochs_per_round
    round_cfg["seed"] = cfg.seed + r
    round_cfg["trainer"]["save_model"] = True  # the next round starts from it
    # The benchmark runs once, after the last round, against the run's first model (benchmark_final_policy):
    # a round's own benchmark would compare with that round's start, its reference under regime.reference=reset.
    round_cfg["benchmark"] = {**round_cfg["benchmark"], "name": "none"}
    if not last and isinstance(round_cfg.get("hub"), dict):  # pushed once, at the end
        round_cfg["hub"]["push"] = False
    round_cfg["run_dir"] = str(round_dir)
    round_cfg["resume"] = "auto" if resume else None
    return OmegaConf.create(round_cfg)


def trainer_for(cfg):
    """What trains this config: the training loop's ``run`` (regime=offline and online, whose pairs come from
    the setup's online sampler), or the rounds around it. Both take ``(cfg, run_dir, hydra_choices)`` and return
    the summary."""
    from prefopt.trainer.loop import run

    regime = cfg.get("regime")
    if regime is None or regime.kind == "offline":
        return run
    check_regime(cfg)
    if regime.kind == "online":
        return run

    def rounds(cfg, run_dir=None, hydra_choices=None):
        return run_rounds(cfg, Path(run_dir or cfg.run_dir or "runs/manual"), hydra_choices)

    return rounds


def run_rounds(cfg: DictConfig, run_dir: Path, hydra_choices: dict | None = None) -> dict:
    """Every round (see the module docstring); returns the run's summary, also written to summary.json."""
    from prefopt.trainer.loop import run

    check_regime(cfg)
    rcfg = cfg.regime
    wall_start = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    resume = cfg.resume is not None
    if not resume:  # a fresh run: nothing of an earlier one in this directory can be mistaken for this one
        for old in [*run_dir.glob("round[0-9]*"), *run_dir.glob("samples_round*.jsonl"),
                    *run_dir.glob("pairs_round*.jsonl"), run_dir / "summary.json"]:
            shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)
    labeller = None if rcfg.kind == "spin" else build_labeller(cfg.labeller, cfg.benchmark)
    gold = gold_scorer(OmegaConf.create({"name": cfg.labeller.get("benchmark") or cfg.benchmark.name}))
    rows = training_prompts(cfg)
    # Redacted as the training loop writes its config.yaml: secrets stay out, and the file reads alike.
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(redact(
        OmegaConf.to_container(cfg, resolve=True)))))

    rounds, round_summaries, summary_r = [], [], None
    policy_path = cfg.model.name_or_path
    for r in range(rcfg.rounds):
        round_dir = run_dir / f"round{r}"
        samples_path, pairs_path = run_dir / f"samples_round{r}.jsonl", run_dir / f"pairs_round{r}.jsonl"
        if samples_path.is_file():
            records = read_jsonl(samples_path)
            figures = read_jsonl(run_dir / f"round{r}_figures.jsonl")[0]
            log.info("round %d: samples read back from %s", r, samples_path)
        else:
            records, figures = sample_round(cfg, policy_path, rows, r, labeller, gold)
            atomic_write_text(run_dir / f"round{r}_figures.jsonl", dumps(figures) + "\n")
            atomic_write_text(pairs_path, "".join(dumps(row) + "\n" for row in pair_rows(records)))
            atomic_write_text(samples_path, "".join(dumps(rec) + "\n" for rec in records))
        if figures["pairs"] < 2:
            raise ConfigError(f"regime: round {r} built {figures['pairs']} pairs from {len(rows)} prompts "
                              f"(counts {figures['counts']}); more prompts, samples_per_prompt or temperature")
        log.info("round %d: %d pairs (%s), sampling %.1fs, labelling %.1fs%s", r, figures["pairs"],
                 figures["counts"], figures["sampling_s"], figures["labelling_s"],
                 f", gold {figures['gold_mean']:+.4f}" if "gold_mean" in figures else "")
        done = round_dir / "summary.json"
        if resume and done.is_file() and read_jsonl_summary(done).get("status") == "completed":
            summary_r = read_jsonl_summary(done)
        else:
            start = time.perf_counter()
            summary_r = run(round_config(cfg, r, policy_path, pairs_path, round_dir, resume), run_dir=round_dir,
                            hydra_choices=hydra_choices)
            figures["training_s"] = time.perf_counter() - start
        round_summaries.append(summary_r)
        figures["steps"] = summary_r.get("steps")
        figures["eval"] = summary_r.get("eval")
        rounds.append(figures)
        policy_path = str(round_dir / "model")

    summary = {**summary_r, "run_dir": str(run_dir), "regime": OmegaConf.to_container(rcfg, resolve=True),
               "labeller": None if labeller is None else labeller.name, "rounds": rounds,
               "steps": sum(f["steps"] or 0 for f in rounds), "samples_generated": sum(
                   f["prompts"] * f["samples_per_prompt"] for f in rounds),
               "compute": total_compute(round_summaries, rounds), "final_model": policy_path}
    if cfg.benchmark.name != "none":
        benchmark_start = time.perf_counter()
        summary["benchmark"] = benchmark_final_policy(cfg, policy_path, run_dir)
        summary["benchmarks"] = {cfg.benchmark.name: summary["benchmark"]}
        summary["compute"]["wall_s"]["benchmark"] = time.perf_counter() - benchmark_start
    summary["wall_time_s"] = summary["compute"]["wall_s"]["total"] = time.perf_counter() - wall_start
    atomic_write_json(run_dir / "summary.json", summary)
    return summary


def total_compute(round_summaries: list[dict], rounds: list[dict]) -> dict:
    """Every round's compute figures summed (tokens, FLOPs, seconds by phase), with the rounds' sampling and
    labelling seconds as phases of their own: what the whole run cost, for comparisons at equal compute."""
    total: dict = {"wall_s": {}}
    for part in round_summaries:
        for key, value in (part.get("compute") or {}).items():
            if key == "wall_s":
                for phase, seconds in value.items():
                    total["wall_s"][phase] = total["wall_s"].get(phase, 0.0) + seconds
            elif key == "policy_parameters":
                total[key] = value
            elif isinstance(value, (int, float)):
                total[key] = total.get(key, 0) + value
    total["wall_s"]["sampling"] = sum(f.get("sampling_s", 0.0) for f in rounds)
    total["wall_s"]["labelling"] = sum(f.get("labelling_s", 0.0) for f in rounds)
    return total


def benchmark_final_policy(cfg: DictConfig, policy_path: str, run_dir: Path) -> dict:
    """The configured benchmark of the last round's model against the run's first model, its items written to
    ``<run_dir>/benchmark_<name>.jsonl`` as for any run (a study reads the rounds' run like an offline one)."""
    import torch

    from prefopt.benchmarks.runner import load_reference_model, run_benchmark
    from prefopt.judges import JudgeError
    from prefopt.models import load_model, load_tokenizer

    device = torch.device("cuda") if torch.cuda.is_available() else None
    policy = load_model(policy_path, cfg.model.dtype, cfg.model.trust_remote_code)
    policy = policy.to(device) if device is not None else policy
    tokenizer = load_tokenizer(policy_path, cfg.model.chat_template, cfg.model.trust_remote_code)
    try:
        return run_benchmark(cfg.benchmark, policy, load_reference_model(cfg, device), tokenizer,
                             cfg.model.eot_token, run_dir)
    except JudgeError as err:
        # The rounds are done and kept; `python -m prefopt.evaluate` can rerun the benchmark on final_model.
        log.error("benchmark %s failed: %s", cfg.benchmark.name, err)
        return {"name": cfg.benchmark.name, "status": "failed", "error": str(err)}


def read_jsonl_summary(path: Path) -> dict:
    import json

    return json.loads(path.read_text())
