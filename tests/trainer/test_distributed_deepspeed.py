"""DeepSpeed ZeRO-2 and ZeRO-3 with 2 CPU processes (torchrun, gloo) follow the single-process DPO loss
trajectory on model=tiny; under ZeRO-3 the reference is partitioned for inference and the saved model is
gathered from the shards.

Marked slow (each run starts 2 processes and DeepSpeed, ~45 s here); CI runs it in its `-m slow` step.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from prefopt.trainer import checkpoint
from tests.conftest import ROOT, TINY, read_metrics, read_summary, run_cli
from tests.trainer.test_distributed import MOVING, _free_port, trajectory
from tests.trainer.test_resume import kill_and_resume, rank0_only

pytestmark = pytest.mark.slow


def torchrun(overrides, run_dir, nproc=2, timeout=600, rank0_env=None, check=True):
    program = ["--no-python", *rank0_only(rank0_env)] if rank0_env else []
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_port", str(_free_port()), *program, "-m", "prefopt.train", *overrides, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("single")
    run_cli(TINY + MOVING + ["trainer.batch_size=4", "trainer.save_model=true"], run_dir,
            env={"OMP_NUM_THREADS": "1"})
    return run_dir


@pytest.mark.parametrize("stage", ["zero3", "zero2"])
def test_deepspeed_two_processes_match_single_process(stage, single, tmp_path):
    run_dir = tmp_path / stage
    torchrun(TINY + MOVING + ["trainer.batch_size=2", f"deepspeed={stage}", "trainer.save_model=true"], run_dir)
    a, b = trajectory(single), trajectory(run_dir)
    assert [(s, k) for s, k, *_ in a] == [(s, k) for s, k, *_ in b]
    for (split, step, loss_a, margin_a, norm_a), (_, _, loss_b, margin_b, norm_b) in zip(a, b, strict=True):
        assert abs(loss_a - loss_b) < 1e-5, (stage, split, step, loss_a, loss_b)
        assert abs(margin_a - margin_b) < 1e-5, (stage, split, step, margin_a, margin_b)
        if norm_a is not None:  # DeepSpeed computes the norm over its flat fp32 partitions
            assert abs(norm_a - norm_b) < 1e-4 * max(1.0, norm_a)
    assert abs(a[-1][2] - a[0][2]) > 1e-3  # the model moved
    summary = read_summary(run_dir)
    assert summary["processes"] == 2 and summary["status"] == "completed"
    assert len([r for r in read_metrics(run_dir) if r["split"] == "train"]) == 4  # rank 0 alone wrote

    # The saved model holds full weights (gathered from the ZeRO-3 shards) equal to the single run's.
    from safetensors.torch import load_file

    ours = load_file(str(run_dir / "model" / "model.safetensors"))
    theirs = load_file(str(single / "model" / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    assert max(float((ours[k] - theirs[k]).abs().max()) for k in ours) < 1e-4


@pytest.mark.parametrize("stage", ["zero3", "zero2"])
def test_deepspeed_sigkill_then_resume_auto_matches_uninterrupted_run(stage, tmp_path):
    """Sharded checkpoints (each rank's ZeRO partitions through engine.save_checkpoint) and resume=auto."""
    start = time.perf_counter()
    deltas = kill_and_resume(torchrun, TINY + MOVING + ["trainer.batch_size=2", f"deepspeed={stage}"], tmp_path)
    ckpt = checkpoint.checkpoint_dirs(tmp_path / "run")[-1]
    assert sorted(p.name for p in (ckpt / "deepspeed" / "state").glob("*optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    assert not (ckpt / "model.safetensors").exists() and not (ckpt / "optimizer.pt").exists()
    print(f"\n{stage} kill:3 + resume=auto: max|delta| {deltas}; 3 launches {time.perf_counter() - start:.0f} s")
