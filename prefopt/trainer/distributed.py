"""Multi-process plumbing for the training loop: the accelerator, data sharding, metric reduction, DeepSpeed,
FSDP.

One code path serves a laptop, ``accelerate launch`` / ``torchrun`` on GPUs, and ``torchrun`` on a CPU-only
machine (gloo). The loop (``prefopt/trainer/``) calls the few functions here:

- ``make_accelerator(cfg)``: plain DDP when launched with several processes, DeepSpeed when
  ``deepspeed=<zero2|zero3>`` is set. On a machine without CUDA the process group is gloo; for DeepSpeed
  that backend is passed explicitly, because accelerate otherwise picks no backend on a CPU-only machine,
  counts one process while DeepSpeed counts all of them, and fails with "train_batch_size is not equal to
  micro_batch_per_gpu * gradient_acc_step * world_size".
- ``reduce_sums``: metrics are example-weighted sums, all-reduced, divided by the global count.
- ``prepare_reference``: under ZeRO-3 a reference that holds a model is partitioned like the policy, for
  inference only (no optimizer).
- ``step_plan`` (in ``batching.py``) splits each optimizer step's examples disjointly across ranks.
- FSDP2 (``fully_shard``) when ``accelerate launch`` is given conf/accelerate/fsdp*.yaml: accelerate
  shards the policy (one unit per decoder layer, the rest in the root unit), clips and reports the grad
  norm over the shards, and gathers the full weights for the final save. The reference was deep-copied
  before ``prepare``, so it stays a full frozen copy on every rank. On a CPU-only machine accelerate
  would drop FSDP for DDP; ``make_accelerator`` keeps it (gloo), and refuses a launch that still is not FSDP.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import socket
import sys
from pathlib import Path
from typing import Any

import torch

from prefopt.errors import PrefoptError
from prefopt.trainer.precision import precision_of


class DistributedConfigError(PrefoptError, ValueError):
    pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def adopt_slurm_environment() -> None:
    """Under ``hydra/launcher=slurm`` with several tasks per job, each SLURM task is one rank: export the
    torch.distributed variables that accelerate reads from submitit's view of the job."""
    if "RANK" in os.environ or "SUBMITIT_EXECUTOR" not in os.environ:
        return
    try:
        import submitit
    except ImportError:
        return
    env = submitit.JobEnvironment()
    if env.num_tasks <= 1:
        return
    os.environ.update({
        "RANK": str(env.global_rank), "LOCAL_RANK": str(env.local_rank), "WORLD_SIZE": str(env.num_tasks),
        "LOCAL_WORLD_SIZE": str(env.num_tasks // max(1, env.num_nodes)),
        "MASTER_ADDR": env.hostnames[0], "MASTER_PORT": os.environ.get("MASTER_PORT", "29511"),
    })


def deepspeed_config(cfg) -> dict[str, Any] | None:
    """The DeepSpeed config of ``deepspeed=<name>`` with this run's sizes filled in, or None."""
    from omegaconf import OmegaConf

    if cfg.get("deepspeed") is None:
        return None
    ds = OmegaConf.to_container(cfg.deepspeed, resolve=True)
    ds.pop("name", None)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    # The loop accumulates micro-batches itself and tells DeepSpeed where a step ends, so DeepSpeed sees
    # one micro-batch per step; it still checks the product below.
    ds["train_micro_batch_size_per_gpu"] = cfg.trainer.batch_size
    ds["gradient_accumulation_steps"] = 1
    ds["train_batch_size"] = cfg.trainer.batch_size * world
    clip = cfg.optimizer.max_grad_norm
    ds["gradient_clipping"] = float(clip) if clip > 0 else 0.0
    # DeepSpeed's bf16 keeps float32 master weights in its optimizer: both bf16 precisions map to it.
    if precision_of(cfg.trainer.get("precision", "auto"), cfg.model.dtype).bf16:
        ds["bf16"] = {"enabled": True}
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise DistributedConfigError(f"deepspeed.zero_optimization.stage={stage}: must be 0, 1, 2 or 3")
    return ds


def fsdp_requested() -> bool:
    """``accelerate launch`` with ``distributed_type: FSDP`` (conf/accelerate/fsdp*.yaml) exports this."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def check_fsdp_config(cfg, reference) -> None:
    """What cannot work when the policy is sharded by FSDP, refused before any model is loaded.
    ``reference``: the run's reference class (prefopt.reference), asked what it needs."""
    refusals = [
        (cfg.get("deepspeed") is not None,
         "deepspeed and FSDP both shard the model: launch FSDP without deepspeed=..., or DeepSpeed without "
         "an FSDP accelerate config"),
        # TR-DPO's sync copies the policy's weights into the reference; each rank holds only a shard.
        (reference.moves_with_policy,
         f"reference={reference.kind} is not supported with FSDP (the policy's weights are sharded); use DDP or "
         "deepspeed=zero2"),
        # The adapter_off reference runs the wrapped policy outside the FSDP root's forward, where the
        # root's own parameters (embeddings, head) are still sharded.
        (reference.wraps_policy,
         f"reference={reference.kind} is not supported with FSDP (the LoRA policy is sharded; its reference pass "
         "runs outside FSDP's forward); use reference=frozen or precomputed, or DDP"),
    ]
    for refused, message in refusals:
        if refused:
            raise DistributedConfigError(message)


def _fsdp_on_cpu() -> None:
    """accelerate turns FSDP on only over an accelerator device: on a CPU-only machine the process group
    is MULTI_CPU and the FSDP plugin is ignored (plain DDP). FSDP2 itself runs on CPU tensors over gloo, so
    the gloo group is created here and labelled as a device group, the label a GPU launch would carry;
    AcceleratorState then enables FSDP exactly as on GPUs."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    state = PartialState(cpu=True)
    if state.distributed_type == DistributedType.MULTI_CPU:
        state.distributed_type = DistributedType.MULTI_GPU


def uses_fsdp(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def fsdp_param_dtype(accelerator) -> torch.dtype | None:
    """The dtype FSDP's mixed precision casts the policy's parameters to for each forward (None when FSDP is
    off or keeps them as they are). Not only autocast: norms and embeddings compute in that dtype too, so
    a reference that only autocasts still differs (first DPO loss 0.682 instead of log 2 on model=tiny)."""
    if not uses_fsdp(accelerator):
        return None
    policy = getattr(accelerator.state.fsdp_plugin, "mixed_precision_policy", None)
    return getattr(policy, "param_dtype", None)


def configure_fsdp(accelerator, policy) -> None:
    """Three corrections to accelerate's FSDP2 set-up, made before ``prepare`` (the third: gradients reduce in float32).

    Wrapping: TRANSFORMER_BASED_WRAP shards each decoder layer on its own, found through the prepared module's
    ``_no_split_modules``; the prepared module is the SequenceScorer, which has none, so the policy's are used
    (unless the accelerate config names the classes).

    Output dtype: with mixed_precision bf16, accelerate sets FSDP2's ``output_dtype`` to bf16, which casts
    the root module's outputs. Our root is the SequenceScorer, whose outputs are summed sequence log-probs
    (about -440 on model=tiny, where bf16 can only say -440 or -442): the DPO margin drowned in rounding
    (first loss 0.683 instead of log 2). ``output_dtype=None`` leaves every module's outputs in the dtype
    they were computed in: bf16 hidden states between decoder layers (bf16 parameters, inputs cast to
    bf16), float32 log-probs from the scorer, which upcasts before its log-softmax. (float32 would also upcast
    each layer's outputs, and the bf16 lm_head would then refuse its float32 input: FSDP2 runs no autocast.)"""
    if not uses_fsdp(accelerator):
        return
    plugin = accelerator.state.fsdp_plugin
    if plugin.transformer_cls_names_to_wrap is None:
        names = getattr(policy, "_no_split_modules", None)
        plugin.transformer_cls_names_to_wrap = list(names) if names else None
    mp_policy = plugin.mixed_precision_policy
    if getattr(mp_policy, "output_dtype", None) is not None:
        plugin.mixed_precision_policy = mp_policy = dataclasses.replace(mp_policy, output_dtype=None)
    if getattr(mp_policy, "param_dtype", None) is not None and mp_policy.reduce_dtype != torch.float32:
        # accelerate reduces gradients in the parameter dtype (bf16); the float32 master weights are updated
        # from float32 sums, as DDP's reduce of float32 gradients does.
        plugin.mixed_precision_policy = dataclasses.replace(mp_policy, reduce_dtype=torch.float32)


def describe(accelerator, model) -> dict[str, Any]:
    """How the prepared model is distributed, for summary.json: a launch that silently fell back to DDP
    shows there."""
    out: dict[str, Any] = {"type": str(accelerator.distributed_type).split(".")[-1],
                           "processes": accelerator.num_processes}
    if uses_fsdp(accelerator):
        from torch.distributed.fsdp import FSDPModule

        plugin = accelerator.state.fsdp_plugin
        out.update({"fsdp_version": plugin.fsdp_version,
                    "fsdp_units": sum(isinstance(m, FSDPModule) for m in model.modules()),
                    "wrap_classes": list(plugin.transformer_cls_names_to_wrap or []),
                    "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None})
        mp_policy = plugin.mixed_precision_policy
        if mp_policy is not None:  # trainer.precision=bf16_autocast: bf16 forward, float32 gradient reduction
            out.update({"param_dtype": str(mp_policy.param_dtype), "reduce_dtype": str(mp_policy.reduce_dtype)})
    elif uses_deepspeed(accelerator):
        out["zero_stage"] = zero_stage(accelerator)
    return out


def scalar(value) -> float:
    """A float of a grad norm: under FSDP2 it is a DTensor whose local value is a partial sum."""
    from torch.distributed.tensor import DTensor

    if isinstance(value, DTensor):
        value = value.full_tensor()
    return float(value)


def make_accelerator(cfg, reference):
    """``reference``: the run's reference class, for the FSDP refusals."""
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, DistributedType, InitProcessGroupKwargs

    adopt_slurm_environment()
    ds = deepspeed_config(cfg)
    cuda = torch.cuda.is_available()
    if fsdp_requested():
        check_fsdp_config(cfg, reference)
        if not cuda:
            _fsdp_on_cpu()
    if ds is None:
        # trainer.precision decides, not the launch config's mixed_precision (precision.py).
        mixed = precision_of(cfg.trainer.get("precision", "auto"), cfg.model.dtype).mixed_precision
        accelerator = Accelerator(cpu=not cuda, mixed_precision=mixed)
        if fsdp_requested() and accelerator.distributed_type != DistributedType.FSDP:
            # accelerate would otherwise fall back to DDP without a word.
            kind = str(accelerator.distributed_type).split(".")[-1]
            raise DistributedConfigError(
                f"ACCELERATE_USE_FSDP is set, but accelerate set up {kind}, not FSDP; run under `accelerate "
                "launch --config_file conf/accelerate/fsdp.yaml` (GPUs) or conf/accelerate/fsdp_cpu_2proc.yaml (CPU)")
        return accelerator
    if cfg.trainer.get("on_nonfinite", "stop") == "skip":
        raise DistributedConfigError(
            "trainer.on_nonfinite=skip: DeepSpeed applies the update inside its backward, so a step cannot "
            "be skipped afterwards; use trainer.on_nonfinite=stop with deepspeed"
        )
    if "LOCAL_RANK" not in os.environ:
        # Not launched by torchrun/accelerate: a world of one, so that `python -m prefopt.train
        # deepspeed=zero3` runs as it is (DeepSpeed always wants a process group).
        os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())})
    # zero3_init_flag=False: each rank loads the full weights and ZeRO partitions them at prepare time,
    # which also lets the reference be a copy of the initial policy.
    plugin = DeepSpeedPlugin(hf_ds_config=ds, zero3_init_flag=False)
    handlers = [] if cuda else [InitProcessGroupKwargs(backend="gloo")]
    accelerator = Accelerator(cpu=False, deepspeed_plugin=plugin, kwargs_handlers=handlers)
    # The plugin registers its config with transformers, whose from_pretrained would then partition
    # weights at load time (zero.Init) and leave the deep-copied reference empty; loads stay full here.
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    return accelerator


def zero_stage(accelerator) -> int:
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return int(plugin.zero_stage) if plugin is not None else -1


def uses_deepspeed(accelerator) -> bool:
    return zero_stage(accelerator) >= 0


def reduce_sums(accelerator, sums: dict[str, float], count: float) -> tuple[dict[str, float], float]:
    """All-reduce example-weighted metric sums and the example count; returns (global sums, global count).

    Keys are sorted so every rank packs the same vector; all ranks compute the same metric names.
    """
    keys = sorted(sums)
    if accelerator.num_processes == 1:
        return dict(sums), count
    vec = torch.tensor([sums[k] for k in keys] + [count], dtype=torch.float64, device=accelerator.device)
    vec = accelerator.reduce(vec, reduction="sum")
    values = vec.tolist()
    return dict(zip(keys, values[:-1], strict=True)), values[-1]


@contextlib.contextmanager
def micro_step(accelerator, model, last: bool):
    """Gradient synchronisation only on the last micro-batch of an optimizer step.

    DDP: ``no_sync`` for the others. DeepSpeed: accelerate's engine wrapper reads ``sync_gradients`` to
    mark the accumulation boundary (and steps the engine there), so it is set per micro-batch.
    """
    if uses_deepspeed(accelerator):
        accelerator.gradient_state._set_sync_gradients(last)
        try:
            yield
        finally:
            accelerator.gradient_state._set_sync_gradients(True)
    elif last:
        yield
    else:
        with accelerator.no_sync(model):
            yield


def backward_scale(accelerator) -> float:
    """DDP and DeepSpeed average gradients over ranks; the loop's loss is a share of the global sum, so it
    is multiplied by the number of processes to make the synchronised gradient the global mean."""
    return float(accelerator.num_processes)


def prepare_reference(accelerator, reference) -> None:
    """Under ZeRO-3 the reference's weights are partitioned too (each rank holds 1/N), via an inference-only
    DeepSpeed engine: the training config without optimizer, scheduler or gradient settings. Under
    ZeRO-0/1/2 and DDP every rank keeps its own full frozen copy, which is what it already has."""
    if zero_stage(accelerator) != 3 or not reference.shardable:
        return
    import deepspeed

    from prefopt.scoring import SequenceScorer

    ds = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    for key in ("optimizer", "scheduler", "gradient_clipping", "gradient_accumulation_steps"):
        ds.pop(key, None)
    ds["zero_optimization"] = {"stage": 3, "stage3_param_persistence_threshold": 0}
    scorer = getattr(reference, "scorer", None) or SequenceScorer(reference.model)
    engine, *_ = deepspeed.initialize(model=scorer, config=ds)
    engine.eval()
    reference.scorer = engine


def gathered_state_dict(accelerator, scorer) -> dict[str, torch.Tensor] | None:
    """The policy's full weights (``model.`` prefix removed); collective under ZeRO-3, so every rank calls
    it. None when the unwrapped model already holds full weights."""
    if zero_stage(accelerator) != 3 and not uses_fsdp(accelerator):
        return None
    state = accelerator.get_state_dict(scorer)
    return {k.removeprefix("model."): v for k, v in state.items()} if state is not None else None


def dropped_cpu_processes(parent_cmdline: list[str] | None = None) -> int | None:
    """N when ``accelerate launch --cpu --num_processes N`` (N > 1) started this process alone.

    accelerate 1.15 runs a multi-process CPU job only through mpirun (``--mpirun_hostfile``); otherwise its
    simple launcher starts one process, tells it nothing about N, and the run quietly trains on one process
    with 1/N of the requested global batch. The request is read from the launcher's command line (this
    process's parent on Linux); None when that cannot be read or nothing was dropped."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("true", "1") or "WORLD_SIZE" in os.environ:
        return None
    if parent_cmdline is None:
        try:
            raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
        except OSError:
            return None
        parent_cmdline = [part.decode(errors="replace") for part in raw.split(b"\0") if part]
    launcher = " ".join(parent_cmdline[:4])  # python -m accelerate.commands.launch | accelerate launch
    if "accelerate" not in launcher or "launch" not in launcher:
        return None
    if any(arg.startswith("--mpirun_hostfile") for arg in parent_cmdline):
        return None
    for i, arg in enumerate(parent_cmdline):
        value = None
        if arg in ("--num_processes", "--num-processes") and i + 1 < len(parent_cmdline):
            value = parent_cmdline[i + 1]
        elif arg.startswith(("--num_processes=", "--num-processes=")):
            value = arg.split("=", 1)[1]
        if value is not None:
            try:
                n = int(value)
            except ValueError:
                return None
            return n if n > 1 else None
    return None


def relaunch_dropped_cpu_processes() -> None:
    """Start the N processes ``accelerate launch --cpu --num_processes N`` asked for, with torchrun (gloo),
    in place of this lone one; accelerate then sets up its MULTI_CPU mode from torchrun's variables, so
    the run is the same DDP run as with ``--config_file conf/accelerate/cpu_2proc.yaml``."""
    n = dropped_cpu_processes()
    if n is None:
        return
    print(f"prefopt: accelerate launch --cpu started 1 of the {n} processes asked for (it runs several CPU "
          f"processes only under mpirun); starting {n} with torchrun (gloo) instead", file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
           "-m", "prefopt.train", *sys.argv[1:]]
    os.execv(sys.executable, cmd)
