"""FSDP2 (``fully_shard``) through ``accelerate launch``, 2 CPU processes over gloo: the DPO loss, margin and
grad-norm trajectory on model=tiny follows the single-process run with the same global batch, and the saved
model (gathered from the shards on rank 0) holds the same weights. The quick tests check the accelerate
files and what FSDP refuses up front.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import pytest
import yaml

from prefopt.reference import kind_class
from prefopt.trainer import checkpoint
from prefopt.trainer.distributed import DistributedConfigError, check_fsdp_config
from tests.conftest import ROOT, TINY, compose, read_metrics, read_summary, run_cli
from tests.trainer.test_distributed import MOVING, _free_port, trajectory
from tests.trainer.test_distributed_deepspeed import single  # noqa: F401  the 1-process baseline, model saved
from tests.trainer.test_resume import kill_and_resume, rank0_only

ACCELERATE = ROOT / "conf" / "accelerate"


def test_fsdp_accelerate_files():
    gpu = yaml.safe_load((ACCELERATE / "fsdp.yaml").read_text())
    cpu = yaml.safe_load((ACCELERATE / "fsdp_cpu_2proc.yaml").read_text())
    for conf in (gpu, cpu):
        assert conf["distributed_type"] == "FSDP" and conf["fsdp_config"]["fsdp_version"] == 2
        assert conf["fsdp_config"]["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        # use_cpu=true would launch without torchrun, and accelerate would not enable FSDP.
        assert conf["use_cpu"] is False
    # The CPU file is the GPU one with 2 processes and float32, so it can be compared with one process.
    assert cpu["num_processes"] == 2 and cpu["mixed_precision"] == "no"
    assert cpu["fsdp_config"] == gpu["fsdp_config"]


@pytest.mark.parametrize(("override", "phrase"), [
    ("reference=sync", "reference=sync"),
    ("reference=adapter_off", "reference=adapter_off"),
    ("deepspeed=zero2", "deepspeed and FSDP"),
])
def test_fsdp_refuses_what_cannot_work(override, phrase):
    def check(overrides):
        cfg = compose(overrides)
        check_fsdp_config(cfg, kind_class(cfg.reference.kind))

    check(["model=tiny"])  # the default run is fine
    with pytest.raises(DistributedConfigError, match=phrase):
        check(["model=tiny", override])


def test_fsdp_refusal_is_one_line_before_loading_anything(tmp_path):
    proc = run_cli(TINY + ["reference=sync"], tmp_path / "run", check=False,
                   env={"ACCELERATE_USE_FSDP": "true"})
    assert proc.returncode != 0
    assert "prefopt: reference=sync is not supported with FSDP" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_fsdp_without_a_launch_is_refused_not_run_as_something_else(tmp_path):
    """ACCELERATE_USE_FSDP in the environment but no torchrun/accelerate launch: accelerate would quietly
    train one plain process; prefopt says so instead."""
    proc = run_cli(TINY, tmp_path / "run", check=False, env={"ACCELERATE_USE_FSDP": "true"})
    assert proc.returncode != 0
    assert "ACCELERATE_USE_FSDP is set, but accelerate set up NO, not FSDP" in proc.stderr and "Traceback" not in proc.stderr


def launch_fsdp(config: str, extra_args: list[str], overrides, run_dir, timeout=600, rank0_env=None, check=True,
                proc_out=None) -> float:
    # accelerate's -m is its own --module flag; under --no_python the program and its -m are passed through.
    program = ["--no_python", *rank0_only(rank0_env)] if rank0_env else []
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE / config),
           *extra_args, "--main_process_port", str(_free_port()), *program, "-m", "prefopt.train", *overrides,
           f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    if proc_out is not None:
        proc_out.append(proc)
    return time.perf_counter() - start


@pytest.mark.slow
@pytest.mark.parametrize(("config", "extra_args", "overrides"), [
    # The CPU file: 2 processes x batch 2.
    ("fsdp_cpu_2proc.yaml", [], ["trainer.batch_size=2", "trainer.grad_accum=1"]),
    # The GPU file itself, sized down on the command line; 2 processes x 2 micro-batches of 1 (FSDP2's
    # no-sync accumulation), reference log-probs precomputed before sharding.
    ("fsdp.yaml", ["--num_processes", "2", "--mixed_precision", "no"],
     ["trainer.batch_size=1", "trainer.grad_accum=2", "reference=precomputed"]),
], ids=["cpu_yaml", "gpu_yaml_accum2_precomputed"])
def test_fsdp_two_processes_match_single_process(config, extra_args, overrides, single, tmp_path):  # noqa: F811
    run_dir = tmp_path / "fsdp"
    common = [o for o in MOVING if not o.startswith("trainer.grad_accum")]  # each case sets its own
    seconds = launch_fsdp(config, extra_args, TINY + common + ["trainer.save_model=true", *overrides], run_dir)

    summary = read_summary(run_dir)
    # Really FSDP2 over gloo, not a quiet DDP fallback: the 2 decoder layers and the root are shard units.
    assert summary["distributed"] == {"type": "FSDP", "processes": 2, "fsdp_version": 2, "fsdp_units": 3,
                                      "wrap_classes": ["LlamaDecoderLayer"], "backend": "gloo"}
    assert summary["status"] == "completed"
    assert len([r for r in read_metrics(run_dir) if r["split"] == "train"]) == 4  # rank 0 alone wrote

    a, b = trajectory(single), trajectory(run_dir)
    assert [(s, k) for s, k, *_ in a] == [(s, k) for s, k, *_ in b]
    dloss = max(abs(x[2] - y[2]) for x, y in zip(a, b, strict=True))
    dmargin = max(abs(x[3] - y[3]) for x, y in zip(a, b, strict=True))
    dnorm = max(abs(x[4] - y[4]) for x, y in zip(a, b, strict=True) if x[4] is not None)
    assert dloss < 1e-5 and dmargin < 1e-5, (a, b)
    assert dnorm < 1e-5 * max(1.0, max(x[4] for x in a if x[4] is not None)), (a, b)
    assert abs(a[-1][2] - a[0][2]) > 1e-3  # the model moved

    from safetensors.torch import load_file

    ours = load_file(str(run_dir / "model" / "model.safetensors"))
    theirs = load_file(str(single / "model" / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    dweight = max(float((ours[k] - theirs[k]).abs().max()) for k in ours)
    assert dweight < 1e-4
    print(f"\nFSDP2 {config} {' '.join(overrides)}: max|dloss| {dloss:.3g}, max|dmargin| {dmargin:.3g}, "
          f"max|dgrad_norm| {dnorm:.3g}, max|dweight| {dweight:.3g}, launch wall {seconds:.1f} s "
          f"(run wall_time_s {summary['wall_time_s']:.1f} s)")


@pytest.mark.slow
def test_fsdp_bf16_reference_computes_at_the_policy_precision(tmp_path):
    """fsdp.yaml with trainer.precision=bf16_autocast (the GPU default) on a float32 model: the reference runs under the policy's
    autocast, so before the first update policy and reference agree and the first DPO loss is log 2
    (with a float32 reference it was 0.686: every implicit reward biased from step 0)."""
    run_dir = tmp_path / "bf16"
    launch_fsdp("fsdp.yaml", ["--num_processes", "2"],
                TINY + ["trainer.batch_size=2", "trainer.grad_accum=1", "trainer.max_steps=1",
                        "trainer.precision=bf16_autocast"], run_dir)
    first = [r for r in read_metrics(run_dir) if r["split"] == "train"][0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    # float32 master shards, bf16 parameters in the forward, gradients reduced in float32 (precision.py).
    distributed = read_summary(run_dir)["distributed"]
    assert (distributed["param_dtype"], distributed["reduce_dtype"]) == ("torch.bfloat16", "torch.float32")
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
def test_fsdp_sigkill_then_resume_auto_matches_uninterrupted_run(tmp_path):
    """Sharded checkpoints (each rank's local DTensor shards of weights and optimizer state) and resume=auto."""
    def launch(overrides, run_dir, rank0_env=None, check=True):
        procs: list = []
        launch_fsdp("fsdp_cpu_2proc.yaml", [], overrides, run_dir, rank0_env=rank0_env, check=check, proc_out=procs)
        return procs[0]

    start = time.perf_counter()
    deltas = kill_and_resume(launch, TINY + MOVING + ["trainer.batch_size=2"], tmp_path)
    ckpt = checkpoint.checkpoint_dirs(tmp_path / "run")[-1]
    assert sorted(p.name for p in ckpt.glob("*-rank*")) == [
        "model-rank00000.safetensors", "model-rank00001.safetensors", "optimizer-rank00000.pt",
        "optimizer-rank00001.pt"]
    assert read_summary(tmp_path / "run")["distributed"]["type"] == "FSDP"
    print(f"\nFSDP2 kill:3 + resume=auto: max|delta| {deltas}; 3 launches {time.perf_counter() - start:.0f} s")
