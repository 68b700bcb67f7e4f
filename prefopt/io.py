"""Atomic file writes and JSON-lines helpers.

Every file in a run directory goes through here: a temp file in the same directory, fsync, then
``os.replace``, so a crash, a SIGKILL or a full disk never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from prefopt.errors import PrefoptError


class RunFileError(PrefoptError, OSError):
    """A run file could not be written; the message names the path and the reason."""


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def _finite_or_none(value: Any) -> Any:
    # JSON has no NaN/Infinity; strict readers (pandas, jq) choke on Python's extension.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    return value


def dumps(obj: Any, **kwargs: Any) -> str:
    return json.dumps(_finite_or_none(obj), default=_json_default, allow_nan=False, **kwargs)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as err:
        raise RunFileError(err.errno, f"cannot write {path}: {err.strerror or err}") from err


class JsonlWriter:
    """Appends one JSON object per line.

    Each line is written with a single ``write`` of a complete line and flushed, so a reader never
    sees a partial object except possibly a torn last line after a hard kill; ``read_jsonl`` drops
    such a torn tail and resume truncates it.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        except OSError as err:
            raise RunFileError(err.errno, f"cannot open {self.path}: {err.strerror or err}") from err

    def write(self, record: dict[str, Any]) -> None:
        try:
            self._fh.write(dumps(record) + "\n")
            self._fh.flush()
        except OSError as err:
            raise RunFileError(err.errno, f"cannot write {self.path}: {err.strerror or err}") from err

    def close(self) -> None:
        self._fh.close()


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    records = []
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if lineno == len(lines) or (lineno == len(lines) - 1 and not lines[-1]):
                break  # torn tail of a killed writer
            raise ValueError(f"{path}: line {lineno} is not valid JSON: {err.msg}") from err
    return records
