"""The dataset registry: each loader turns a hub id or a local file into normalized rows.

A normalized row is a plain dict:

- paired: ``{"prompt": [messages...], "chosen": str, "rejected": str, **metadata}`` where ``prompt`` is
  every turn before the final assistant turn (system/user/assistant dicts with ``role``/``content``) and
  ``chosen``/``rejected`` are the contents of the competing final assistant turns;
- sft: ``{"prompt": [...], "chosen": str}``;
- unpaired: ``{"prompt": [...], "completion": str, "desirable": bool}``;
- prompts: ``{"prompt": [...]}`` (generation prompts, e.g. IMDb review prefixes; not trainable).

Every row also carries ``index``, its position in the source table, so errors and analyses can point back
at it. Loaders parse rows through ``parse_rows``: a malformed row raises ``DataError`` naming the row
index and field, or, with ``dataset.bad_rows=skip``, is skipped and counted (``skipped_bad_row``) with
the first few reasons logged. Rows a loader drops on purpose are counted with ``count_skip``.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefopt.errors import PrefoptError

log = logging.getLogger(__name__)

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".jsonl.gz", ".json.gz")
BAD_ROW_POLICIES = ("error", "skip")
# How many skipped-row reasons are logged in full before they are only counted.
LOGGED_SKIPS = 5


class DataError(PrefoptError, ValueError):
    pass


class UnknownDatasetError(PrefoptError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    fn: Callable[..., list[dict[str, Any]]]
    kind: str  # paired | sft | unpaired | prompts
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
        import pyarrow.parquet as pq

        # pyarrow gives plain lists and dicts; pandas would turn message lists into numpy arrays.
        return pq.read_table(path).to_pylist()
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
        # Split on "\n" only: str.splitlines() also breaks at U+2028, U+0085, ... which JSON strings
        # may hold unescaped (the IMDb reviews do).
        for lineno, line in enumerate(text.split("\n"), start=1):
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
    if not split:
        # load_dataset(split=None) returns every split at once, which is never what a loader wants.
        raise DataError(f"{where}={hub_id!r} is a hub dataset: name its split (dataset.train_split / "
                        "dataset.eval_split)")
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


@dataclass
class LoadContext:
    """What a loader reports back while it parses: drop counts, and the bad-row policy it must follow."""

    counts: Counter = field(default_factory=Counter)
    bad_rows: str = "error"
    dataset: str = "?"
    logged: int = 0


_CONTEXT: contextvars.ContextVar[LoadContext | None] = contextvars.ContextVar("prefopt_load_context", default=None)


@contextlib.contextmanager
def loading(counts: Counter, bad_rows: str = "error", dataset: str = "?") -> Iterator[LoadContext]:
    """Collect the skips of the loaders called inside into ``counts``."""
    if bad_rows not in BAD_ROW_POLICIES:
        raise DataError(f"dataset.bad_rows={bad_rows!r}: must be one of {', '.join(BAD_ROW_POLICIES)}")
    ctx = LoadContext(counts, bad_rows, dataset)
    token = _CONTEXT.set(ctx)
    try:
        yield ctx
    finally:
        _CONTEXT.reset(token)


def count_skip(reason: str, n: int = 1) -> None:
    """Count a row a loader dropped on purpose (e.g. a raw UltraFeedback prompt whose completions all tie)."""
    ctx = _CONTEXT.get()
    if ctx is not None:
        ctx.counts[reason] += n


def parse_rows(rows: list[dict[str, Any]], parse: Callable[[int, dict], dict | list[dict] | None]) -> list[dict]:
    """Run ``parse(index, raw_row)`` over a table, following the ``dataset.bad_rows`` policy.

    ``parse`` returns one normalized row, a list of them (a conversation split into several examples),
    or None for a row it skipped and counted itself. ``index`` is added when ``parse`` did not set it.
    """
    ctx = _CONTEXT.get()
    out: list[dict] = []
    for i, raw in enumerate(rows):
        try:
            if not isinstance(raw, dict):
                raise DataError(f"row {i}: expected an object with named fields, got {type(raw).__name__}")
            parsed = parse(i, raw)
        except DataError as err:
            if ctx is None or ctx.bad_rows == "error":
                raise
            ctx.counts["skipped_bad_row"] += 1
            if ctx.logged < LOGGED_SKIPS:
                log.warning("dataset %s: skipping a bad row (dataset.bad_rows=skip): %s", ctx.dataset, err)
                ctx.logged += 1
            continue
        if parsed is None:
            continue
        for row in parsed if isinstance(parsed, list) else [parsed]:
            row.setdefault("index", i)
            out.append(row)
    return out


def no_options(name: str, options: dict) -> None:
    if options:
        raise DataError(f"dataset.options: {name} takes no options, got {sorted(options)}")


def check_options(name: str, options: dict, known: dict[str, Any]) -> dict[str, Any]:
    """The loader's options with defaults filled in; an unknown key is an error naming it."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise DataError(
            f"dataset.options: {name} has no option {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(known)) or 'none'}"
        )
    return {**known, **options}


def as_prompt(value: Any, row: int, field: str) -> list[dict[str, str]]:
    """A prompt given as a string (one user turn) or as a message list (which must not end with the
    assistant: the answer belongs in chosen/rejected)."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    messages = require_messages(value, row, field)
    if messages[-1]["role"] == "assistant":
        raise DataError(f"row {row}: {field} ends with an assistant message; the prompt must end with the user")
    return messages


def as_completion(value: Any, row: int, field: str) -> tuple[list[dict[str, str]] | None, str]:
    """A completion given as a string, as one ``{role: assistant, content}`` message, or as a whole
    conversation ending with the assistant. Returns (history before the answer or None, answer)."""
    if isinstance(value, str):
        return None, value
    if isinstance(value, dict):
        value = [value]
    messages = require_messages(value, row, field)
    history, answer = split_final_assistant(messages, row, field)
    return history or None, answer
