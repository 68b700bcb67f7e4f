"""The dataset registry: each loader turns a hub id or a local file into normalized rows.

A normalized row is a plain dict:

- paired: ``{"prompt": [messages...], "chosen": str, "rejected": str, **metadata}`` where ``prompt`` is
  every turn before the final assistant turn (system/user/assistant dicts with ``role``/``content``) and
  ``chosen``/``rejected`` are the contents of the competing final assistant turns;
- sft: ``{"prompt": [...], "chosen": str}``;
- unpaired: ``{"prompt": [...], "completion": str, "desirable": bool}``.

Loaders raise ``DataError`` naming the row index and field for malformed rows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".jsonl.gz", ".json.gz")


class DataError(ValueError):
    pass


class UnknownDatasetError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    fn: Callable[..., list[dict[str, Any]]]
    kind: str  # paired | sft | unpaired
    default_path: str | None
    doc: str


_DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(name: str, *, kind: str, default_path: str | None = None) -> Callable:
    """Register ``fn(path, split, **options) -> list[row]`` as dataset ``name``."""

    def decorate(fn):
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        _DATASETS[name] = DatasetSpec(name, fn, kind, default_path, (fn.__doc__ or "").strip())
        return fn

    return decorate


def get_dataset(name: str) -> DatasetSpec:
    try:
        return _DATASETS[name]
    except KeyError:
        raise UnknownDatasetError(
            f"dataset.name={name!r} is not a registered dataset; known: {', '.join(sorted(_DATASETS))}"
        ) from None


def dataset_names() -> list[str]:
    return sorted(_DATASETS)


def read_table(path: str, split: str | None = None, *, where: str = "dataset.path") -> list[dict[str, Any]]:
    """Rows of a local jsonl/json/parquet file (or a directory holding ``<split>.*``), or of a hub dataset.

    A hub id is anything that is not an existing local path; it is loaded with ``datasets.load_dataset``
    so users with internet get the real thing, and offline users get a clear error.
    """
    local = Path(os.path.expanduser(path))
    if local.is_dir() and split:
        matches = sorted(p for p in local.iterdir() if p.name.startswith(split) and p.name.endswith(LOCAL_SUFFIXES))
        if not matches:
            raise DataError(f"{where}={path!r}: no file for split {split!r} in that directory")
        local = matches[0]
    if local.is_file():
        return _read_local(local, where)
    if local.suffix in (".jsonl", ".json", ".parquet", ".gz") or path.startswith((".", "/", "~")):
        raise DataError(f"{where}={path!r}: file not found")
    return _read_hub(path, split, where)


def _read_local(path: Path, where: str) -> list[dict[str, Any]]:
    name = path.name
    if name.endswith(".parquet"):
        import pandas as pd

        return pd.read_parquet(path).to_dict(orient="records")
    opener = open
    if name.endswith(".gz"):
        import gzip

        opener = gzip.open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            text = fh.read()
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not valid UTF-8 at byte {err.start}") from err
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    if name.endswith((".jsonl", ".jsonl.gz")):
        rows = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: line {lineno} is not valid JSON ({err.msg})") from err
            if not isinstance(row, dict):
                raise DataError(f"{path}: line {lineno} is a {type(row).__name__}, expected an object")
            rows.append(row)
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON at line {err.lineno} ({err.msg})") from err
    if isinstance(data, dict):
        # {"train": [...]} style files
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: expected a list of rows at the top level")
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of rows at the top level")
    return data


def _read_hub(hub_id: str, split: str | None, where: str) -> list[dict[str, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(hub_id, split=split)
    except Exception as err:  # datasets raises many types for offline / missing cases
        raise DataError(
            f"{where}={hub_id!r}: not a local file, and loading it from the Hugging Face hub failed "
            f"({type(err).__name__}: {err}). Offline? Point {where} at a local jsonl/json/parquet copy."
        ) from err
    return [dict(row) for row in ds]


def require_messages(value: Any, row: int, field: str) -> list[dict[str, str]]:
    """Validate a list of ``{role, content}`` messages, naming the row and field on failure."""
    if not isinstance(value, list) or not value:
        raise DataError(f"row {row}: field {field!r} must be a non-empty list of messages, got {type(value).__name__}")
    for i, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataError(f"row {row}: {field}[{i}] must be an object with 'role' and 'content'")
        if not isinstance(message["content"], str):
            raise DataError(f"row {row}: {field}[{i}].content must be a string, got {type(message['content']).__name__}")
        if message["role"] not in ("system", "user", "assistant"):
            raise DataError(f"row {row}: {field}[{i}].role {message['role']!r} is not system/user/assistant")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def require_str(row_data: dict, key: str, row: int) -> str:
    if key not in row_data:
        raise DataError(f"row {row}: missing field {key!r}")
    value = row_data[key]
    if not isinstance(value, str):
        raise DataError(f"row {row}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def split_final_assistant(messages: list[dict[str, str]], row: int, field: str) -> tuple[list[dict], str]:
    """``[..., {assistant: c}] -> ([...], c)``; the conversation must end with the assistant."""
    if messages[-1]["role"] != "assistant":
        raise DataError(f"row {row}: {field} must end with an assistant message, ends with {messages[-1]['role']!r}")
    return messages[:-1], messages[-1]["content"]
