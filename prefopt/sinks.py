"""Where metrics go: ``metrics.jsonl`` always, Weights & Biases with ``logger=wandb``.

Only rank 0 builds sinks. The JSONL sink is the source of truth that ``analysis/`` reads; other sinks
mirror it. wandb never blocks a run: with no API key (``WANDB_API_KEY`` unset and no ``~/.netrc``
entry) it runs offline and leaves its files in ``<run_dir>/wandb/`` for a later ``wandb sync``.

Secrets: every record, the config handed to a sink and the config.yaml/summary.json the trainer writes
pass through ``redact``, which blanks values of environment variables whose names look like secrets
(``*_API_KEY``, ``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*``) wherever they appear, and values under config
keys with such names. ``install_log_redaction`` does the same for log lines.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from pathlib import Path
from typing import Any

from prefopt.errors import PrefoptError
from prefopt.io import JsonlWriter

log = logging.getLogger(__name__)

SECRET_NAME = re.compile(r"(api[_-]?key|token|secret|password|passwd|credential)", re.IGNORECASE)
REDACTED = "***REDACTED***"
# Shorter values would blank innocent substrings (a key "abc" would hit every "abc").
_MIN_SECRET_LEN = 8


def secret_values() -> list[str]:
    values = {v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= _MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def redact(obj: Any, secrets: list[str] | None = None) -> Any:
    """A copy of ``obj`` (nested dicts/lists/strings) with secrets replaced by ``***REDACTED***``."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(obj, dict):
        return {k: (REDACTED if isinstance(k, str) and SECRET_NAME.search(k) and isinstance(v, str) and v
                    else redact(v, secrets)) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(redact(v, secrets) for v in obj)
    if isinstance(obj, str):
        for secret in secrets:
            if secret in obj:
                obj = obj.replace(secret, REDACTED)
    return obj


def redact_files(paths) -> None:
    """Rewrite text files (Hydra's .hydra/*.yaml record the command line) with secrets blanked."""
    from prefopt.io import atomic_write_text

    secrets = secret_values()
    if not secrets:
        return
    for path in paths:
        text = Path(path).read_text(encoding="utf-8")
        clean = redact(text, secrets)
        if clean != text:
            atomic_write_text(path, clean)


class _RedactFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        secrets = secret_values()
        if secrets:
            message = record.getMessage()
            clean = redact(message, secrets)
            if clean != message:
                record.msg, record.args = clean, None
        return True


def install_log_redaction() -> None:
    """Attach the redaction filter to every handler of the root logger (Hydra's console and file)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _RedactFilter) for f in handler.filters):
            handler.addFilter(_RedactFilter())


class SinkConfigError(PrefoptError, ValueError):
    pass


class JsonlSink:
    """``metrics.jsonl``: one JSON object per event, each line written whole and flushed."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.writer = JsonlWriter(self.path)

    def log(self, record: dict[str, Any]) -> None:
        self.writer.write(record)

    def offset(self) -> int:
        """Bytes written so far: what a checkpoint stores so that resume can cut the file back."""
        self.writer._fh.flush()
        return self.writer._fh.tell()

    def finish(self, summary: dict[str, Any] | None) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, lcfg, run_dir: Path, config: dict[str, Any], name: str | None):
        import wandb

        mode = lcfg.mode
        if mode == "auto":
            mode = "online" if _has_wandb_credentials() else "offline"
            if mode == "offline":
                log.info("wandb: no API key found; logging offline to %s/wandb (upload later with `wandb sync`)",
                         run_dir)
        os.environ.setdefault("WANDB_SILENT", "true")
        # A resumed run continues the same wandb run instead of starting a second one.
        id_file = Path(run_dir) / "wandb_run_id.txt"
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
        self.run = wandb.init(
            project=lcfg.project, entity=lcfg.entity, group=lcfg.group, name=name, tags=list(lcfg.tags or []),
            dir=str(run_dir), mode=mode, config=config, id=run_id, resume="allow",
            # No console capture, system stats or host metadata (the latter records the command line,
            # which may hold a key): metrics, config and summary only.
            settings=wandb.Settings(console="off", x_disable_stats=True, x_disable_meta=True, save_code=False),
        )
        if not id_file.is_file():
            from prefopt.io import atomic_write_text

            atomic_write_text(id_file, run_id + "\n")
        self.mode = mode

    def log(self, record: dict[str, Any]) -> None:
        split = record.get("split", "train")
        step = record.get("step")
        payload = {}
        for key, value in record.items():
            if key in ("split", "step") or not isinstance(value, int | float) or isinstance(value, bool):
                continue
            # eval/* and benchmark keys already carry their prefix; train keys get one, as in TRL.
            payload[key if "/" in key and split != "train" else f"{split}/{key}"] = value
        self.run.log(payload, step=step)

    def finish(self, summary: dict[str, Any] | None) -> None:
        if summary:
            for section in ("eval", "benchmark"):
                for key, value in (summary.get(section) or {}).items():
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        self.run.summary[key if "/" in key else f"{section}/{key}"] = value
            self.run.summary["status"] = summary.get("status")
        self.run.finish(exit_code=0 if summary and summary.get("status") == "completed" else 1)


def _has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        auth = netrc.netrc().authenticators("api.wandb.ai")
        return bool(auth and auth[2])
    except (OSError, netrc.NetrcParseError):
        return False


class Sinks:
    """Fans each record out to every sink (after redaction); a no-op on ranks other than 0."""

    def __init__(self, sinks: list):
        self.sinks = sinks

    @property
    def jsonl(self) -> JsonlSink | None:
        return next((s for s in self.sinks if isinstance(s, JsonlSink)), None)

    def log(self, record: dict[str, Any]) -> None:
        if self.sinks:
            clean = redact(record)
            for sink in self.sinks:
                sink.log(clean)

    def offset(self) -> int:
        return self.jsonl.offset() if self.jsonl else 0

    def finish(self, summary: dict[str, Any] | None = None) -> None:
        for sink in self.sinks:
            sink.finish(redact(summary) if summary else summary)


def build_sinks(lcfg, run_dir: Path, config: dict[str, Any], is_main: bool, name: str | None = None) -> Sinks:
    if not is_main:
        return Sinks([])
    sinks: list = [JsonlSink(Path(run_dir) / "metrics.jsonl")]
    kind = lcfg.name if lcfg is not None else "jsonl"
    if kind == "wandb":
        sinks.append(WandbSink(lcfg, Path(run_dir), redact(config), name))
    elif kind != "jsonl":
        raise SinkConfigError(f"logger.name={kind!r}: must be jsonl or wandb")
    return Sinks(sinks)
