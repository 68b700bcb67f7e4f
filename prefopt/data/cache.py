"""The tokenized-dataset cache: a sweep tokenizes its data once.

An entry is keyed by a fingerprint of everything that decides the token ids: the tokenizer (its full
serialized vocabulary, merges, normalizer and added tokens), its special tokens and BOS behaviour, the
chat template, the end-of-turn token, max_length / max_prompt_length, the data kind, the conventions'
version, and the normalized rows themselves after filtering (so a changed file, loader option or filter
is a different entry without any path or mtime bookkeeping; two filter lists that leave the same rows,
e.g. the zephyr_alpha and zephyr_beta variants on a split beta's filters do not touch, share an entry). The entry also stores the tokenizer's counts
(truncations, drops), so a cache hit reports exactly what a miss would.

Entries are ``<cache_dir>/<fingerprint>.npz``, written with ``prefopt.io.atomic_write_bytes``: jobs of a
multirun that race on the same entry each write a complete file and the last rename wins, so a reader
never sees a partial one.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from prefopt.io import atomic_write_bytes

log = logging.getLogger(__name__)

# Bump when prefopt.data.tokenize changes what ids it produces, so old entries are never reused.
CONVENTIONS_VERSION = "1"
ID_KEYS = ("prompt_ids", "chosen_ids", "rejected_ids", "completion_ids")


def tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    specials = {
        "class": type(tokenizer).__name__,
        "special_tokens": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "bos_token_id": tokenizer.bos_token_id,
        "add_bos_token": bool(getattr(tokenizer, "add_bos_token", False)),
        "chat_template": tokenizer.chat_template,
    }
    h.update(json.dumps(specials, sort_keys=True).encode())
    return h.hexdigest()


def rows_fingerprint(rows: list[dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


def fingerprint(tokenizer, eot: str, settings, kind: str, rows: list[dict]) -> str:
    key = {
        "conventions": CONVENTIONS_VERSION,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "eot": eot,
        "max_length": settings.max_length,
        "max_prompt_length": settings.max_prompt_length,
        "kind": kind,
        "rows": rows_fingerprint(rows),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def save(path: Path, encoded: list[dict[str, Any]], counts: dict[str, int]) -> None:
    arrays: dict[str, np.ndarray] = {
        "index": np.asarray([e["index"] for e in encoded], dtype=np.int64),
        "counts": np.asarray(json.dumps(counts)),
    }
    for key in ID_KEYS:
        if encoded and key in encoded[0]:
            lists = [e[key] for e in encoded]
            arrays[f"{key}.flat"] = np.asarray([t for ids in lists for t in ids], dtype=np.int64)
            arrays[f"{key}.offsets"] = np.cumsum([0] + [len(ids) for ids in lists], dtype=np.int64)
    if encoded and "desirable" in encoded[0]:
        arrays["desirable"] = np.asarray([e["desirable"] for e in encoded], dtype=bool)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load(path: Path) -> tuple[list[dict[str, Any]], dict[str, int]] | None:
    """The cached rows and counts, or None when the entry is absent or unreadable (then re-tokenize)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            counts = json.loads(str(data["counts"]))
            index = data["index"].tolist()
            encoded = [{"index": i} for i in index]
            for key in ID_KEYS:
                if f"{key}.flat" not in data:
                    continue
                flat, offsets = data[f"{key}.flat"], data[f"{key}.offsets"]
                for n, row in enumerate(encoded):
                    row[key] = flat[offsets[n]:offsets[n + 1]].tolist()
            if "desirable" in data:
                for row, flag in zip(encoded, data["desirable"].tolist(), strict=True):
                    row["desirable"] = flag
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        log.warning("tokenized cache entry %s is unreadable (%s); tokenizing again", path, err)
        return None
    return encoded, counts
