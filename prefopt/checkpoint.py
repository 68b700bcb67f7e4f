"""Resumable checkpoints: ``trainer.checkpoint_every``, ``trainer.keep_last`` and ``resume=auto``.

A checkpoint is a directory ``<run_dir>/checkpoints/step-00000040/`` holding

- ``model.safetensors``: the policy's weights (safetensors only; shared/tied tensors are stored once);
- ``optimizer.pt``: the optimizer state, read back with ``torch.load(weights_only=True)`` (plain tensors
  and numbers only, no pickled code);
- ``loss_state.pt``: the state of stateful losses, same format;
- ``state.json``: step, scheduler state, the byte offset of ``metrics.jsonl`` at that step, running
  totals for summary.json, the resolved config it was written under, and ``rng/<rank>``: every process's
  Python, NumPy and torch RNG states;
- ``reference.safetensors``: only for references whose weights change during training
  (``reference=sync``, TR-DPO).

It is written into a hidden temp directory and renamed into place, so a checkpoint directory either is
complete or does not exist: a SIGKILL during a save leaves the previous checkpoint as the latest. Old
checkpoints beyond ``keep_last`` are deleted only after the new one is in place.

Resuming restores all of it and truncates ``metrics.jsonl`` to the saved offset, so the log has no line
from the lost steps and no duplicate of a redone one. The data position is the step count: the order of
each epoch is a pure function of (seed, epoch), so the loop skips the steps already taken.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prefopt.io import RunFileError, atomic_write_json, dumps

log = logging.getLogger(__name__)
CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^step-(\d{8})$")
# Keys that may change between the interrupted run and its resumption without changing the results.
RESUME_MAY_DIFFER = ("resume", "run_dir", "trainer.progress_bar", "trainer.checkpoint_every", "trainer.keep_last",
                     "logger", "trainer.log_every")


class CheckpointError(ValueError):
    """A resume request that cannot be honoured; the message names the directory and the reason."""


@dataclass
class TrainState:
    """What the loop needs to continue exactly where a checkpoint left it."""

    step: int = 0
    metrics_offset: int = 0
    counters: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def resolve_resume(resume: str | None, run_dir: Path) -> Path | None:
    """The checkpoint to resume from: ``auto`` = the newest complete one in run_dir (None if there is
    none yet), a path = that checkpoint (or the newest inside that run directory), None = start fresh."""
    if resume in (None, "", "null", "none", "false"):
        return None
    if resume == "auto":
        found = checkpoint_dirs(run_dir)
        return found[-1] if found else None
    path = Path(resume).expanduser()
    if (path / "state.json").is_file():
        return path
    found = checkpoint_dirs(path)
    if not found:
        raise CheckpointError(f"resume={resume!r}: no complete checkpoint there (expected {path}/state.json "
                              f"or {path}/{CHECKPOINTS}/step-*/state.json)")
    return found[-1]


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: obj}


def config_differences(saved: dict, current: dict) -> list[str]:
    """``key: old -> new`` for every config value that differs, ignoring RESUME_MAY_DIFFER."""
    a, b = flatten(saved), flatten(current)

    def ignored(key: str) -> bool:
        return any(key == k or key.startswith(k + ".") for k in RESUME_MAY_DIFFER)

    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
            for k in sorted(set(a) | set(b)) if not ignored(k) and a.get(k, "<absent>") != b.get(k, "<absent>")]


def clear_previous_run(run_dir: Path) -> None:
    """A fresh run (no checkpoint to resume) in a directory that holds an earlier run starts clean: its
    summary.json and checkpoints are removed (metrics.jsonl is cut to zero by the caller), so nothing of
    the old run can be mistaken for the new one or resumed into it. Rank 0 only."""
    old = [p for p in (run_dir / "summary.json", run_dir / "metrics.jsonl", run_dir / CHECKPOINTS) if p.exists()]
    if not old:
        return
    log.warning("run directory %s holds an earlier run (%s); starting over (resume=auto continues a run "
                "from its newest checkpoint)", run_dir, ", ".join(p.name for p in old))
    try:
        (run_dir / "summary.json").unlink(missing_ok=True)
        if (run_dir / CHECKPOINTS).exists():
            shutil.rmtree(run_dir / CHECKPOINTS)
    except OSError as err:
        raise RunFileError(err.errno, f"cannot clear the earlier run in {run_dir}: {err.strerror or err}") from err


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _torch_save(obj: Any, path: Path) -> None:
    torch.save(obj, path)


def save(run_dir: Path, step: int, *, accelerator, model, optimizer, scheduler, loss_states: list[dict],
         reference, metrics_offset: int, counters: dict, config: dict, keep_last: int) -> Path | None:
    """Write checkpoint ``step`` (collective: every rank calls it; rank 0 writes the files). Returns its
    path on rank 0."""
    final = Path(run_dir) / CHECKPOINTS / f"step-{step:08d}"
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        rngs = gather_object([_rng_state()])
    else:
        rngs = [_rng_state()]
    failure = _write_checkpoint(final, step, model=model, optimizer=optimizer, scheduler=scheduler,
                                loss_states=loss_states, reference=reference, metrics_offset=metrics_offset,
                                counters=counters, config=config, rngs=rngs, world=accelerator.num_processes,
                                keep_last=keep_last) if accelerator.is_main_process else None
    if accelerator.num_processes > 1:
        # Every rank learns whether rank 0's write failed (a full disk), so all stop instead of the others
        # waiting forever in their next collective.
        from accelerate.utils import broadcast_object_list

        box = [failure]
        broadcast_object_list(box, from_process=0)
        failure = box[0]
    if failure is not None:
        raise RunFileError(failure[0], failure[1])
    return final if accelerator.is_main_process else None


def _write_checkpoint(final: Path, step: int, *, model, optimizer, scheduler, loss_states, reference,
                      metrics_offset, counters, config, rngs, world, keep_last) -> tuple[int, str] | None:
    """Rank 0's part of ``save``; returns (errno, message) on an OS error instead of raising."""
    from safetensors.torch import save_model

    root = final.parent
    tmp = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}."))
        save_model(model, str(tmp / "model.safetensors"))
        _torch_save(optimizer.state_dict(), tmp / "optimizer.pt")
        _torch_save(loss_states, tmp / "loss_state.pt")
        moving = _moving_reference(reference)
        if moving is not None:
            save_model(moving, str(tmp / "reference.safetensors"))
        state = {
            "step": step,
            "metrics_offset": metrics_offset,
            "scheduler": scheduler.state_dict(),
            "counters": counters,
            "world_size": world,
            "rng": {str(rank): s for rank, s in enumerate(rngs)},
            "config": config,
        }
        (tmp / "state.json").write_text(dumps(state) + "\n", encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        tmp = None
        _prune(root, keep_last)
    except OSError as err:
        return err.errno or 0, f"cannot write checkpoint {final}: {err.strerror or err}"
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return None


def _moving_reference(reference):
    """The reference model if its weights change during training (TR-DPO's sync reference, or any reference
    declaring ``moves_during_training``), else None: a frozen reference is rebuilt from the initial model."""
    if getattr(reference, "kind", None) == "sync" or getattr(reference, "moves_during_training", False):
        return getattr(reference, "model", None)
    return None


def _prune(root: Path, keep_last: int) -> None:
    if keep_last <= 0:
        return
    for old in checkpoint_dirs(root.parent)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step-*"):  # temp dirs of saves that were killed
        shutil.rmtree(stale, ignore_errors=True)


def load(path: Path, *, accelerator, model, optimizer, scheduler, loss_states: list[dict], reference,
         config: dict) -> TrainState:
    """Restore a checkpoint into the (not yet prepared) model and optimizer; returns the loop position."""
    from safetensors.torch import load_model

    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"resume: cannot read {path / 'state.json'}: {err}") from err
    diffs = config_differences(state.get("config", {}), config)
    if diffs:
        raise CheckpointError(
            f"resume: checkpoint {path} was written by a different config ({'; '.join(diffs[:8])}"
            f"{'; ...' if len(diffs) > 8 else ''}); resume it with the same config or start a new run directory"
        )
    if state.get("world_size", 1) != accelerator.num_processes:
        raise CheckpointError(
            f"resume: checkpoint {path} was written by {state.get('world_size', 1)} processes, this run has "
            f"{accelerator.num_processes}; the data order and RNG streams depend on it"
        )
    missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise CheckpointError(f"resume: {path / 'model.safetensors'} does not fit the model "
                              f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
    optimizer.load_state_dict(_load_tensors(path / "optimizer.pt"))
    scheduler.load_state_dict(state["scheduler"])
    saved_losses = _load_tensors(path / "loss_state.pt")
    for live, saved in zip(loss_states, saved_losses, strict=True):
        live.clear()
        live.update(saved)
    moving = _moving_reference(reference)
    if moving is not None:
        if not (path / "reference.safetensors").is_file():
            raise CheckpointError(f"resume: {path} has no reference.safetensors for reference kind "
                                  f"{getattr(reference, 'kind', '?')!r}, whose weights change during training")
        load_model(moving, str(path / "reference.safetensors"), strict=False)
    _set_rng_state(state["rng"][str(accelerator.process_index)])
    return TrainState(step=int(state["step"]), metrics_offset=int(state["metrics_offset"]),
                      counters=state.get("counters", {}), path=path)


def _load_tensors(path: Path) -> Any:
    """torch.load restricted to tensors and plain containers: a tampered file cannot run code."""
    import pickle

    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as err:
        raise CheckpointError(f"resume: refusing {path}: {str(err).splitlines()[0]}") from err


def truncate_metrics(metrics_path: Path, offset: int) -> None:
    """Cut metrics.jsonl back to the checkpoint's byte offset (the end of its last complete line)."""
    if not metrics_path.exists():
        if offset:
            raise CheckpointError(f"resume: {metrics_path} is missing but the checkpoint expects {offset} bytes")
        return
    size = metrics_path.stat().st_size
    if size < offset:
        raise CheckpointError(f"resume: {metrics_path} has {size} bytes, fewer than the checkpoint's {offset}")
    try:
        with open(metrics_path, "r+b") as fh:
            fh.truncate(offset)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:
        raise RunFileError(err.errno, f"cannot truncate {metrics_path}: {err.strerror or err}") from err


def write_failure(run_dir: Path, error: BaseException, step: int, last_checkpoint: Path | None) -> None:
    """A failed run still says what happened: summary.json with status=failed, the error and the newest
    checkpoint to resume from."""
    atomic_write_json(Path(run_dir) / "summary.json", {
        "status": "failed",
        "error": f"{type(error).__name__}: {error}",
        "steps": step,
        "last_checkpoint": str(last_checkpoint) if last_checkpoint else None,
    })
