"""The reference's benchmark samples, generated once per study (``benchmark.cache_reference=true``).

Every run of a study compares its policy with the same reference on the same prompts, and
``prefopt.generation.sample_streams`` draws prompt i's sample j from a stream seeded by ``benchmark.seed``
alone, so the reference's completions, their scores and log-probs are the same in every run: the first run
generates them, every later run reads them. Like ``reference=precomputed``'s log-probs
(``prefopt.reference``), they live under ``$PREFOPT_CACHE/refsamples/<key>.json``:

- the file key hashes what every sample of the file depends on: the reference weights (``weights_digest``:
  names, dtypes, bytes), the device type it decodes on, the sampling settings (max_new_tokens, temperature,
  top_p, benchmark.seed), the end-of-turn token id and the scorer's name;
- inside, one entry per item keyed by its rendered prompt's token ids (the prompt text, the tokenizer and
  its chat template at once), its prompt id and its sample number.

A run that asks for more prompts or samples than an earlier one generates only the missing items and adds
them to the file. A file lock makes a racing multirun job wait for the first one's file rather than generate
twice; the file is replaced by an atomic rename, so a killed run never leaves half a file. The batch
composition is not in the key: it can change the last bits of a logit, so a reference sample read from the
cache is the one the first run drew, which is what keeps the reference identical across a study.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from prefopt.generation import SampleSettings, sample_streams
from prefopt.io import atomic_write_json

log = logging.getLogger(__name__)

# Bump when the stored fields or the sampler change, so stale samples are never read.
SAMPLES_FORMAT = "1"


def file_key(model, settings: SampleSettings, eot_id: int, scorer: str) -> str:
    from prefopt.reference import weights_digest

    device = next(model.parameters()).device.type
    digest = hashlib.sha256()
    digest.update(f"format={SAMPLES_FORMAT};weights={weights_digest(model)};device={device};"
                  f"max_new_tokens={settings.max_new_tokens};temperature={settings.temperature};"
                  f"top_p={settings.top_p};seed={settings.seed};eot={eot_id};scorer={scorer}".encode())
    return digest.hexdigest()[:32]


def item_key(prompt_ids: list[int], stream: tuple[int, int]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps([list(prompt_ids), list(stream)]).encode())
    return digest.hexdigest()


def cached_samples(model, tokenizer, prompts: list[list[dict]], streams: list[tuple[int, int]],
                   settings: SampleSettings, eot_token: str | None, score: Callable[[str], float], scorer: str,
                   cache_dir: str | Path) -> tuple[list[dict], dict]:
    """``sample_streams``'s samples of ``model``, each with its ``score``, read from the cache where present.
    Returns them and what the summary records: ``{"cache": hit|miss|partial, "path", "generated"}``."""
    from prefopt.data.tokenize import prompt_token_ids, render_prompt

    eot_id = tokenizer.convert_tokens_to_ids(eot_token) if eot_token else tokenizer.eos_token_id
    root = Path(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{file_key(model, settings, eot_id, scorer)}.json"
    prompt_ids = [prompt_token_ids(tokenizer, render_prompt(tokenizer, p)) for p in prompts]
    keys = [item_key(ids, stream) for ids, stream in zip(prompt_ids, streams, strict=True)]
    with FileLock(str(path) + ".lock"):
        stored = json.loads(path.read_text()) if path.is_file() else {"format": SAMPLES_FORMAT, "items": {}}
        items = stored["items"]
        missing = sorted({i for i, k in enumerate(keys) if k not in items})
        if missing:
            fresh = sample_streams(model, tokenizer, [prompts[i] for i in missing], [streams[i] for i in missing],
                                   settings, eot_token)
            for i, s in zip(missing, fresh, strict=True):
                items[keys[i]] = {"text": s["text"], "completion_ids": s["completion_ids"], "finished": s["finished"],
                                  "logp": s["logp"], "score": score(s["text"])}
            atomic_write_json(path, stored)
    state = "hit" if not missing else "miss" if len(missing) == len(keys) else "partial"
    log.info("benchmark reference samples: cache %s (%s, %d of %d generated)", state, path, len(missing), len(keys))
    samples = [{**items[k], "prompt_ids": ids} for k, ids in zip(keys, prompt_ids, strict=True)]
    return samples, {"cache": state, "path": str(path), "generated": len(missing)}
