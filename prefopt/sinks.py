"""Where metrics go: ``metrics.jsonl`` always, plus one tracker: ``logger=wandb``, ``logger=tensorboard``,
``logger=mlflow``, or ``logger=accelerate logger.tracker=<name>`` for any tracker accelerate supports (aim,
comet_ml, clearml, dvclive, swanlab, trackio, ...).

Only rank 0 builds sinks. The JSONL sink is the source of truth that ``analysis/`` reads; other sinks
mirror it. wandb never blocks a run: with no API key (``WANDB_API_KEY`` unset and no ``~/.netrc``
entry) it runs offline and leaves its files in ``<run_dir>/wandb/`` for a later ``wandb sync``.

The other trackers are accelerate's tracker classes (``accelerate.tracking``), built here rather than through
``Accelerator(log_with=...)``: the accelerator exists before the run directory and the sweep are known to
the sinks, every record already passes through ``Sinks`` (rank 0, redacted), and accelerate skips a tracker
whose package is missing with only a debug line, where prefopt stops before any model loads
(``check_logger``). A multirun's jobs share one group: the sweep directory names the W&B group and the MLflow
experiment, and TensorBoard writes one subdirectory per job under ``<sweep dir>/tensorboard/``.

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

from prefopt.errors import ConfigError, PrefoptError
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
    def __init__(self, lcfg, run_dir: Path, config: dict[str, Any], name: str | None, group: str | None = None):
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
            project=lcfg.project, entity=lcfg.entity, group=group or lcfg.group, name=name, tags=list(lcfg.tags or []),
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
        step, payload = metric_payload(record)
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


def metric_payload(record: dict[str, Any]) -> tuple[int | None, dict[str, float]]:
    """A metrics.jsonl record as a tracker's (step, {name: number}): train keys get a ``train/`` prefix, as in
    TRL; eval/* and benchmark keys keep theirs."""
    split = record.get("split", "train")
    payload = {}
    for key, value in record.items():
        if key in ("split", "step") or not isinstance(value, int | float) or isinstance(value, bool):
            continue
        payload[key if "/" in key and split != "train" else f"{split}/{key}"] = value
    return record.get("step"), payload


# logger.name -> the accelerate tracker it runs (logger=accelerate takes logger.tracker).
LOGGERS = {"jsonl": None, "wandb": None, "tensorboard": "tensorboard", "mlflow": "mlflow", "accelerate": None}
# The pip package of each tracker where its name differs.
PIP_NAMES = {"comet_ml": "comet-ml", "mlflow": "mlflow-skinny (or mlflow)"}


def tracker_of(lcfg) -> str | None:
    """The accelerate tracker a logger config runs, or None (jsonl; wandb has its own sink)."""
    return lcfg.tracker if lcfg.name == "accelerate" else LOGGERS.get(lcfg.name)


def check_logger(lcfg) -> None:
    """An unknown logger or tracker, or one whose package is missing: one ConfigError naming the key, before
    any model loads."""
    from accelerate import utils
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    if lcfg.name not in LOGGERS:
        raise ConfigError(f"logger.name={lcfg.name!r}: must be one of {', '.join(LOGGERS)} "
                          "(logger=accelerate logger.tracker=<name> for any other tracker accelerate supports)")
    tracker = tracker_of(lcfg)
    key = "logger.tracker" if lcfg.name == "accelerate" else "logger"
    if lcfg.name == "accelerate" and not tracker:
        raise ConfigError("logger.tracker: required with logger=accelerate, e.g. logger.tracker=aim (one of "
                          f"{', '.join(sorted(LOGGER_TYPE_TO_CLASS))})")
    if lcfg.name == "accelerate" and tracker not in LOGGER_TYPE_TO_CLASS:
        raise ConfigError(f"logger.tracker={tracker!r}: not a tracker accelerate supports; one of "
                          f"{', '.join(sorted(LOGGER_TYPE_TO_CLASS))}")
    package = tracker or ("wandb" if lcfg.name == "wandb" else None)
    available = getattr(utils, f"is_{package}_available", None) if package else None
    if available is not None and not available():
        raise ConfigError(f"{key}={package}: the {package} package is not installed "
                          f"(pip install {PIP_NAMES.get(package, package)})")


def sweep_of_this_job() -> Path | None:
    """The sweep directory when this process runs a Hydra multirun job, else None."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:
        return None
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().sweep.dir)


def group_name(lcfg, sweep: Path | None) -> str | None:
    """logger.group, else the sweep directory as given to Hydra (multirun/<date>/<time> by default), which
    is unique per sweep where its last part (the time) is not."""
    if lcfg.get("group"):
        return lcfg.group
    # W&B allows 128 characters in a group; the tail is the distinctive part.
    return str(sweep)[-128:] if sweep is not None else None


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The nested config as ``a.b.c -> scalar`` (lists and null as text): what hyperparameter tables take."""
    import json

    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_params(value, name + "."))
        elif isinstance(value, bool | int | float | str):
            out[name] = value
        else:
            out[name] = json.dumps(value)
    return out


class TrackerSink:
    """An accelerate tracker (``accelerate.tracking.GeneralTracker``): started, given the flattened config as
    hyperparameters, sent every record, finished with the run."""

    def __init__(self, tracker, config: dict[str, Any] | None):
        self.tracker = tracker
        tracker.start()
        if config is not None:
            tracker.store_init_configuration(flat_params(config))

    def log(self, record: dict[str, Any]) -> None:
        step, payload = metric_payload(record)
        if payload:
            self.tracker.log(payload, step=step)

    def finish(self, summary: dict[str, Any] | None) -> None:
        self.tracker.finish()


def tensorboard_sink(lcfg, run_dir: Path, config: dict[str, Any], sweep: Path | None) -> TrackerSink:
    """Events in ``<run_dir>/tensorboard/`` for a single run; a sweep's jobs each in
    ``<sweep dir>/tensorboard/<job>/``, so ``tensorboard --logdir <sweep dir>/tensorboard`` compares them.
    ``logger.log_dir`` moves the common directory (every run then in ``<log_dir>/<run name>``)."""
    from accelerate.tracking import TensorBoardTracker

    if lcfg.log_dir:
        root, sub = Path(lcfg.log_dir), run_dir.name
    else:
        root, sub = (sweep / "tensorboard", run_dir.name) if sweep is not None else (run_dir / "tensorboard", "")
    return TrackerSink(TensorBoardTracker(sub, str(root), **_init_kwargs(lcfg)), config)


def mlflow_sink(lcfg, run_dir: Path, config: dict[str, Any], sweep: Path | None) -> TrackerSink:
    """One MLflow run named after the run directory, in the experiment ``group_name`` (the sweep) or
    ``logger.project``. ``logger.tracking_uri`` null = a local file store, ``mlruns/`` in the run directory
    (the sweep directory for a multirun's jobs): no server and no database needed; ``mlflow ui
    --backend-store-uri <that dir>`` reads it. A resumed run continues the same MLflow run."""
    import mlflow
    from accelerate.tracking import MLflowTracker

    uri = lcfg.tracking_uri
    if not uri:
        uri = ((sweep or run_dir) / "mlruns").resolve().as_uri()
        # MLflow 3 keeps the file store in maintenance mode and asks for this opt-in; prefopt picked the store.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(uri)
    experiment = group_name(lcfg, sweep) or lcfg.project
    client = mlflow.tracking.MlflowClient(uri)
    if client.get_experiment_by_name(experiment) is None:
        try:  # parallel jobs of one sweep race to create the shared experiment; losing the race is fine
            client.create_experiment(experiment)
        except mlflow.exceptions.MlflowException:
            if client.get_experiment_by_name(experiment) is None:
                raise
    id_file = run_dir / "mlflow_run_id.txt"
    run_id = id_file.read_text().strip() if id_file.is_file() else None
    tags = {"prefopt.run_dir": str(run_dir), **{str(t): "true" for t in lcfg.tags or []}}
    tracker = MLflowTracker(experiment, run_id=run_id, run_name=run_dir.name, tags=tags, **_init_kwargs(lcfg))
    # A resumed run keeps its parameters (MLflow refuses to change one, and resume= itself differs).
    sink = TrackerSink(tracker, config if run_id is None else None)
    if run_id is None:
        from prefopt.io import atomic_write_text

        atomic_write_text(id_file, tracker.active_run.info.run_id + "\n")
    return sink


def accelerate_sink(lcfg, tracker: str, run_dir: Path, config: dict[str, Any], sweep: Path | None) -> TrackerSink:
    """Any other accelerate tracker, built as ``Accelerator.init_trackers`` builds it: the project name (the
    sweep's group, else ``logger.project``) first, then the logging directory if the tracker keeps files
    (``logger.log_dir``, null = ``<run or sweep dir>/<tracker>``), then ``logger.init_kwargs``."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    cls = LOGGER_TYPE_TO_CLASS[tracker]
    project = group_name(lcfg, sweep) or lcfg.project
    if cls.requires_logging_directory:
        log_dir = lcfg.log_dir or str((sweep or run_dir) / tracker)
        return TrackerSink(cls(project, log_dir, **_init_kwargs(lcfg)), config)
    return TrackerSink(cls(project, **_init_kwargs(lcfg)), config)


def _init_kwargs(lcfg) -> dict[str, Any]:
    from omegaconf import OmegaConf

    kwargs = lcfg.get("init_kwargs")
    return OmegaConf.to_container(kwargs, resolve=True) if kwargs else {}


def build_sinks(lcfg, run_dir: Path, config: dict[str, Any], is_main: bool, name: str | None = None) -> Sinks:
    if not is_main:
        return Sinks([])
    run_dir = Path(run_dir)
    sinks: list = [JsonlSink(run_dir / "metrics.jsonl")]
    kind = lcfg.name if lcfg is not None else "jsonl"
    if kind not in LOGGERS:
        raise SinkConfigError(f"logger.name={kind!r}: must be one of {', '.join(LOGGERS)}")
    sweep = sweep_of_this_job()
    tracker = tracker_of(lcfg) if lcfg is not None else None
    clean = redact(config)
    if kind == "wandb":
        sinks.append(WandbSink(lcfg, run_dir, clean, name, group=group_name(lcfg, sweep)))
    elif tracker == "tensorboard":
        sinks.append(tensorboard_sink(lcfg, run_dir, clean, sweep))
    elif tracker == "mlflow":
        sinks.append(mlflow_sink(lcfg, run_dir, clean, sweep))
    elif tracker is not None:
        sinks.append(accelerate_sink(lcfg, tracker, run_dir, clean, sweep))
    return Sinks(sinks)
