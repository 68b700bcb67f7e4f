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
  (``reference=sync``, TR-DPO; ``reference=bema``), and ``reference_state.safetensors`` for what such a
  reference keeps besides its weights (BEMA's θ_0 and EMA, ``Reference.state_tensors``).

It is written into a hidden temp directory and renamed into place, so a checkpoint directory either is
complete or does not exist: a SIGKILL during a save leaves the previous checkpoint as the latest. Old
checkpoints beyond ``keep_last`` are deleted only after the new one is in place.

Resuming restores all of it and truncates ``metrics.jsonl`` to the saved offset, so the log has no line
from the lost steps and no duplicate of a redone one. The data position is the step count: the order of
each epoch is a pure function of (seed, epoch), so the loop skips the steps already taken.

Sharded backends replace ``model.safetensors`` and ``optimizer.pt`` with every rank's own shard, written by
that rank into the same temp directory before rank 0 renames it (everything else is as above):

- DeepSpeed ZeRO-2/3: ``deepspeed/``, written by ``engine.save_checkpoint`` and read back by
  ``engine.load_checkpoint``; the fp32 master weights and optimizer state partitions of each rank
  (``*zero_pp_rank_<r>_*optim_states.pt``) and the module file. DeepSpeed's own loader unpickles with
  ``weights_only=False``; prefopt swaps in a loader with ``weights_only=True`` that allows only the few
  plain DeepSpeed/Python classes these files hold (``_deepspeed_safe_globals``), so nothing else in them can
  run code.
- FSDP2: ``model-rank<r>.safetensors`` (the rank's local shards of every DTensor parameter) and
  ``optimizer-rank<r>.pt`` (its optimizer state with DTensors replaced by their local shards; plain tensors,
  ``weights_only=True``). Shards are only meaningful for the same number of processes, which ``load``
  already requires.
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

from prefopt.errors import PrefoptError
from prefopt.io import RunFileError, atomic_write_json, dumps

log = logging.getLogger(__name__)
CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^step-(\d{8})$")
# Keys that may change between the interrupted run and its resumption without changing the results.
RESUME_MAY_DIFFER = ("resume", "run_dir", "trainer.progress_bar", "trainer.checkpoint_every", "trainer.keep_last",
                     "logger", "trainer.log_every", "hub")


class CheckpointError(PrefoptError, ValueError):
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


def backend_of(accelerator) -> str:
    """``full`` (one process or DDP: every rank holds the whole model and optimizer), ``deepspeed`` or
    ``fsdp`` (each rank holds a shard and writes it)."""
    from prefopt.trainer.distributed import uses_deepspeed, uses_fsdp

    if uses_deepspeed(accelerator):
        return "deepspeed"
    return "fsdp" if uses_fsdp(accelerator) else "full"


def save(s, step: int, counters, metrics_offset: int) -> Path | None:
    """Write checkpoint ``step`` of the run ``s`` (a ``TrainingSetup``) with its ``RunCounters`` and the byte
    offset of metrics.jsonl. Collective: every rank calls it. Rank 0 writes the shared files; under DeepSpeed
    and FSDP every rank first writes its own shards into rank 0's temp directory. Returns the checkpoint's
    path on rank 0."""
    accelerator = s.accelerator
    final = Path(s.run_dir) / CHECKPOINTS / f"step-{step:08d}"
    main = accelerator.is_main_process
    backend = backend_of(accelerator)
    rngs = _gather(accelerator, _rng_state())
    tmp, failure = _make_temp(final) if main else (None, None)
    if backend != "full":
        # The shards go into rank 0's temp directory, so the checkpoint is still published by one rename.
        tmp, failure = _broadcast(accelerator, (tmp, failure))
        if failure is None:
            mine = _write_shards(backend, Path(tmp), accelerator.process_index, s.scorer, s.optimizer)
            failure = next((f for f in _gather(accelerator, mine) if f is not None), None)
    if main:
        if failure is None:
            state = {
                "step": step,
                "metrics_offset": metrics_offset,
                "scheduler": s.scheduler.state_dict(),
                "counters": counters.to_dict(),
                "world_size": accelerator.num_processes,
                "backend": backend,
                "rng": {str(rank): r for rank, r in enumerate(rngs)},
                "config": s.config,
            }
            failure = _write_checkpoint(Path(tmp), final, state, s, keep_last=s.cfg.trainer.keep_last)
        if failure is not None and tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    # Every rank learns whether a write failed (a full disk), so all stop instead of the others waiting
    # forever in their next collective.
    failure = _broadcast(accelerator, failure)
    if failure is not None:
        raise RunFileError(failure[0], failure[1])
    return final if main else None


def _gather(accelerator, obj) -> list:
    if accelerator.num_processes == 1:
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])


def _broadcast(accelerator, obj):
    if accelerator.num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    box = [obj]
    broadcast_object_list(box, from_process=0)
    return box[0]


def _make_temp(final: Path) -> tuple[str | None, tuple[int, str] | None]:
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."), None
    except OSError as err:
        return None, (err.errno or 0, f"cannot write checkpoint {final}: {err.strerror or err}")


def _write_shards(backend: str, tmp: Path, rank: int, model, optimizer) -> tuple[int, str] | None:
    """This rank's part of a sharded checkpoint; (errno, message) on an OS error instead of raising, so the
    failure reaches the other ranks through the gather rather than leaving them in a collective."""
    try:
        if backend == "deepspeed":
            # Collective inside (barriers); the tag names the subdirectory, no ``latest`` file: which
            # checkpoint is current is decided by our rename.
            model.save_checkpoint(str(tmp / DEEPSPEED_DIR), tag=DEEPSPEED_TAG, client_state={}, save_latest=False)
        else:
            _save_fsdp_shards(tmp, rank, model, optimizer)
    except OSError as err:
        return err.errno or 0, f"cannot write checkpoint shard of rank {rank} into {tmp}: {err.strerror or err}"
    return None


def _write_checkpoint(tmp: Path, final: Path, state: dict, s, keep_last: int) -> tuple[int, str] | None:
    """Rank 0's part of ``save``; returns (errno, message) on an OS error instead of raising."""
    from safetensors.torch import save_model

    root = final.parent
    try:
        if state["backend"] == "full":
            save_model(s.policy, str(tmp / "model.safetensors"))
            _torch_save(s.optimizer.state_dict(), tmp / "optimizer.pt")
        _torch_save(s.loss_states, tmp / "loss_state.pt")
        if s.reference.moves_with_policy:
            # A frozen reference is rebuilt from the initial model; one that moved must be saved.
            save_model(s.reference.model, str(tmp / "reference.safetensors"))
            extra = s.reference.state_tensors()
            if extra:
                from safetensors.torch import save_file

                save_file({k: v.detach().contiguous().cpu() for k, v in extra.items()},
                          str(tmp / "reference_state.safetensors"))
        (tmp / "state.json").write_text(dumps(state) + "\n", encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _prune(root, keep_last)
    except OSError as err:
        return err.errno or 0, f"cannot write checkpoint {final}: {err.strerror or err}"
    return None


def _prune(root: Path, keep_last: int) -> None:
    if keep_last <= 0:
        return
    for old in checkpoint_dirs(root.parent)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step-*"):  # temp dirs of saves that were killed
        shutil.rmtree(stale, ignore_errors=True)


def validate(path: Path, *, accelerator, config: dict) -> dict:
    """The checkpoint's state.json, if this run can resume from it (same config up to RESUME_MAY_DIFFER,
    same number of processes, same backend); a CheckpointError naming the difference otherwise. Cheap, so
    the run checks it before loading any weights."""
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
    backend = backend_of(accelerator)
    # DeepSpeed is in the config (caught above); FSDP versus DDP is only in the launch command.
    if state.get("backend", "full") != backend:
        raise CheckpointError(f"resume: checkpoint {path} holds {state.get('backend', 'full')} state, this run "
                              f"is {backend}; launch it as the interrupted run was launched")
    return state


def load(path: Path, s) -> TrainState:
    """Restore a checkpoint into the prepared model and optimizer of the run ``s`` (collective under DeepSpeed
    and FSDP: every rank reads its own shard); returns the loop position. Called after ``prepare`` and just
    before the loop, so the restored RNG streams are not consumed by the set-up."""
    from safetensors.torch import load_model

    accelerator = s.accelerator
    state = validate(path, accelerator=accelerator, config=s.config)
    backend = state.get("backend", "full")
    if backend == "deepspeed":
        _load_deepspeed(path, s.scorer)
    elif backend == "fsdp":
        _load_fsdp_shards(path, accelerator.process_index, s.scorer, s.optimizer)
    else:
        missing, unexpected = load_model(s.policy, str(path / "model.safetensors"), strict=False)
        if missing or unexpected:
            raise CheckpointError(f"resume: {path / 'model.safetensors'} does not fit the model "
                                  f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
        s.optimizer.load_state_dict(_load_tensors(path / "optimizer.pt"))
    s.scheduler.load_state_dict(state["scheduler"])
    saved_losses = _load_tensors(path / "loss_state.pt")
    for live, saved in zip(s.loss_states, saved_losses, strict=True):
        live.clear()
        live.update(saved)
    if s.reference.moves_with_policy:
        if not (path / "reference.safetensors").is_file():
            raise CheckpointError(f"resume: {path} has no reference.safetensors for reference={s.reference.kind}, "
                                  "whose weights change during training")
        load_model(s.reference.model, str(path / "reference.safetensors"), strict=False)
        if s.reference.state_tensors():
            from safetensors.torch import load_file

            if not (path / "reference_state.safetensors").is_file():
                raise CheckpointError(f"resume: {path} has no reference_state.safetensors for "
                                      f"reference={s.reference.kind}")
            s.reference.load_state_tensors(load_file(str(path / "reference_state.safetensors")))
    _set_rng_state(state["rng"][str(accelerator.process_index)])
    return TrainState(step=int(state["step"]), metrics_offset=int(state["metrics_offset"]),
                      counters=state.get("counters", {}), path=path)


DEEPSPEED_DIR, DEEPSPEED_TAG = "deepspeed", "state"


def _deepspeed_safe_globals() -> list:
    """The non-tensor classes DeepSpeed 0.19 pickles into its checkpoint files: the loss scaler (ZeRO-2),
    the (numel, start) address of each parameter in ZeRO-2's flat partition, and the stage enum (ZeRO-3).
    Plain records: rebuilding one sets attributes and runs nothing else."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler, LossScalerBase
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScalerBase, LossScaler, DynamicLossScaler, fragment_address, ZeroStageEnum]


def _load_deepspeed(path: Path, engine) -> None:
    """``engine.load_checkpoint`` with the unrestricted unpickling DeepSpeed asks of torch.load replaced by a
    ``weights_only=True`` load that allows only ``_deepspeed_safe_globals``: a checkpoint directory from
    elsewhere cannot run code in this process."""
    import pickle

    loader = engine.checkpoint_engine
    allowed = _deepspeed_safe_globals()

    def safe_load(file, map_location=None):
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(file, map_location=map_location, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as err:
            # torch's first line only says that a weights-only load failed; the reason is further down.
            lines = str(err).splitlines()
            reason = next((line.strip() for line in lines if "Unsupported global" in line), lines[0])
            raise CheckpointError(f"resume: refusing {file}: {reason}") from err

    loader.load = safe_load
    try:
        loaded, _ = engine.load_checkpoint(str(path / DEEPSPEED_DIR), tag=DEEPSPEED_TAG, load_module_strict=True,
                                           load_optimizer_states=True, load_lr_scheduler_states=False)
    finally:
        del loader.load  # back to the class's own method for any later use of the engine
    if loaded is None:
        raise CheckpointError(f"resume: {path / DEEPSPEED_DIR / DEEPSPEED_TAG} holds no DeepSpeed checkpoint")


def _save_fsdp_shards(tmp: Path, rank: int, model, optimizer) -> None:
    """This rank's local shards of the FSDP2 model's parameters and of the optimizer state. Tied
    parameters (one DTensor under two names) are stored once."""
    from safetensors.torch import save_file
    from torch.distributed.tensor import DTensor

    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, value in model.state_dict().items():
        local = value.to_local() if isinstance(value, DTensor) else value
        if local.data_ptr() in seen and local.numel():
            continue
        seen.add(local.data_ptr())
        tensors[name] = local.detach().contiguous()
    save_file(tensors, str(tmp / f"model-rank{rank:05d}.safetensors"))
    opt = optimizer.state_dict()
    state = {idx: {k: v.to_local() if isinstance(v, DTensor) else v for k, v in entry.items()}
             for idx, entry in opt["state"].items()}
    sharded = [[idx, k] for idx, entry in opt["state"].items() for k, v in entry.items() if isinstance(v, DTensor)]
    _torch_save({"state": state, "param_groups": opt["param_groups"], "dtensor": sharded},
                tmp / f"optimizer-rank{rank:05d}.pt")


def _load_fsdp_shards(path: Path, rank: int, model, optimizer) -> None:
    from safetensors.torch import load_file
    from torch.distributed.tensor import DTensor

    file = path / f"model-rank{rank:05d}.safetensors"
    try:
        saved = load_file(str(file))
    except (OSError, ValueError) as err:  # safetensors reports a corrupt header as a plain error
        raise CheckpointError(f"resume: cannot read {file}: {err}") from err
    filled: set[int] = set()
    with torch.no_grad():
        for name, value in model.state_dict().items():
            local = value.to_local() if isinstance(value, DTensor) else value
            if name in saved:
                if saved[name].shape != local.shape:
                    raise CheckpointError(f"resume: {file}: {name} has shape {tuple(saved[name].shape)}, this "
                                          f"rank's shard is {tuple(local.shape)}")
                local.copy_(saved.pop(name))
                filled.add(local.data_ptr())
            elif local.data_ptr() not in filled or not local.numel():
                raise CheckpointError(f"resume: {file} has no {name}")
    if saved:
        raise CheckpointError(f"resume: {file} holds tensors this model does not have: {sorted(saved)[:3]}")
    opt = _load_tensors(path / f"optimizer-rank{rank:05d}.pt")
    # The state was saved as local shards; each becomes a DTensor again, laid out like its parameter.
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for idx, key in opt.pop("dtensor"):
        param = params[int(idx)]
        opt["state"][idx][key] = DTensor.from_local(opt["state"][idx][key], param.device_mesh, param.placements,
                                                    run_check=False, shape=param.shape, stride=param.stride())
    optimizer.load_state_dict(opt)


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
