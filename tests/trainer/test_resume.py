"""Checkpoint and exact resume: a run SIGKILLed mid-epoch and resumed with resume=auto ends with the same
losses and metrics as an uninterrupted run, and metrics.jsonl has every line exactly once."""

from __future__ import annotations

import json
import re
import shlex
import signal
import sys

import pytest

from prefopt.trainer import checkpoint
from tests.conftest import TINY, compose, read_metrics, read_summary, run_cli

# 6 steps of 8 pairs in a 108-pair epoch (mid-epoch throughout), a learning rate that moves the model,
# evaluation at step 3, checkpoints at steps 2 and 4; the kill comes after step 5 was logged, so resume
# must both restore step 4 and cut step 5's line.
RUN = TINY + ["trainer.max_steps=6", "trainer.eval_every=3", "trainer.checkpoint_every=2", "trainer.keep_last=2",
              "optimizer.lr=1e-3", "trainer.batch_size=4", "trainer.grad_accum=2"]
TIMING = {"pairs/s", "tokens/s"}


def comparable(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def assert_close(a, b, tol=1e-6):
    assert len(a) == len(b), (len(a), len(b))
    for ra, rb in zip(a, b, strict=True):
        assert ra.keys() == rb.keys()
        for key in ra:
            if isinstance(ra[key], float):
                assert abs(ra[key] - rb[key]) <= tol, (ra.get("step"), key, ra[key], rb[key])
            else:
                assert ra[key] == rb[key], (key, ra[key], rb[key])


def max_deltas(a, b) -> dict[str, float]:
    """max |a - b| per float metric over matching lines of two metrics.jsonl."""
    out: dict[str, float] = {}
    for ra, rb in zip(a, b, strict=True):
        for key, value in ra.items():
            if isinstance(value, float):
                out[key] = max(out.get(key, 0.0), abs(value - rb[key]))
    return out


# A 2-process run for the sharded backends: 5 steps, evals at 2 and 4, checkpoints at 2 and 4 keeping one;
# the kill comes after step 3 was logged, so resume restores step 2 and must drop step 3's line.
SHARDED = ["trainer.max_steps=5", "trainer.checkpoint_every=2", "trainer.keep_last=1"]


def rank0_only(env: dict[str, str]) -> list[str]:
    """What a launcher runs, with its no-python flag, instead of ``python``: ``env`` is exported on rank 0
    alone (a launcher gives every rank the same environment)."""
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return ["sh", "-c", f'if [ "$RANK" = 0 ]; then export {exports}; fi; exec "$0" "$@"', sys.executable]


def kill_and_resume(launch, overrides, tmp_path) -> dict[str, float]:
    """An uninterrupted run; the same run with rank 0 alone SIGKILLed after it logged step 3, so that rank 1
    is left waiting in step 4's first collective until the launcher tears it down, as when one node of a
    job is pre-empted; and the ``resume=auto`` relaunch, which must write the same metrics.jsonl within
    1e-6, every line once. ``launch(overrides, run_dir, rank0_env=..., check=...)`` returns the
    CompletedProcess. Returns max |delta| per metric, for the README."""
    overrides = overrides + SHARDED
    launch(overrides, tmp_path / "full")
    run_dir = tmp_path / "run"
    killed = launch(overrides, run_dir, rank0_env={"PREFOPT_INJECT_FAULT": "kill:3"}, check=False)
    assert killed.returncode != 0, killed.stderr[-3000:]
    # Only rank 0 died of the fault; the launcher ended rank 1 (SIGTERM, or it failed on the lost peer).
    assert re.search(r"rank\s*: 0 .*\n.*SIGKILL", killed.stderr), killed.stderr[-3000:]
    assert not re.search(r"rank\s*: 1 .*\n.*SIGKILL", killed.stderr), killed.stderr[-3000:]
    assert not (run_dir / "summary.json").exists()
    assert [p.name for p in checkpoint.checkpoint_dirs(run_dir)] == ["step-00000002"]
    assert [r["step"] for r in read_metrics(run_dir) if r["split"] == "train"] == [1, 2, 3]

    launch(overrides + ["resume=auto"], run_dir)
    resumed, full = read_metrics(run_dir), read_metrics(tmp_path / "full")
    assert [(r["split"], r["step"]) for r in resumed] == [(r["split"], r["step"]) for r in full]
    assert [r["step"] for r in resumed if r["split"] == "train"] == [1, 2, 3, 4, 5]
    assert_close(comparable(resumed), comparable(full))
    assert abs(full[0]["loss"] - full[-1]["eval/loss"]) > 1e-3  # the model moved
    summary = read_summary(run_dir)
    assert summary["resumed_from"].endswith("step-00000002") and summary["steps"] == 5
    # keep_last=1: the resumed run's checkpoint at 4 replaced the one it resumed from, as in the full run.
    assert [p.name for p in checkpoint.checkpoint_dirs(run_dir)] == ["step-00000004"]
    assert not list((run_dir / "checkpoints").glob(".step-*"))
    return max_deltas(comparable(resumed), comparable(full))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference run, in-process (the CLI's run() without a subprocess start-up)."""
    from prefopt.train import run

    run_dir = tmp_path_factory.mktemp("full")
    run(compose(RUN), run_dir)
    return run_dir


def test_sigkill_then_resume_auto_matches_uninterrupted_run(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    killed = run_cli(RUN, run_dir, check=False, env={"PREFOPT_INJECT_FAULT": "kill:5"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (run_dir / "summary.json").exists()
    assert [p.name for p in checkpoint.checkpoint_dirs(run_dir)] == ["step-00000002", "step-00000004"]
    before = [r["step"] for r in read_metrics(run_dir) if r["split"] == "train"]
    assert before == [1, 2, 3, 4, 5]  # step 5 was logged after the last checkpoint: resume must drop it

    run_cli(RUN + ["resume=auto"], run_dir)
    resumed, full = read_metrics(run_dir), read_metrics(uninterrupted)
    assert [(r["split"], r["step"]) for r in resumed] == [(r["split"], r["step"]) for r in full]
    assert_close(comparable(resumed), comparable(full))
    summary = read_summary(run_dir)
    assert summary["resumed_from"].endswith("step-00000004") and summary["steps"] == 6
    assert abs(summary["train"]["loss"] - read_summary(uninterrupted)["train"]["loss"]) <= 1e-6
    assert abs(summary["eval"]["eval/loss"] - read_summary(uninterrupted)["eval"]["eval/loss"]) <= 1e-6
    # The loss moved, so matching is not a property of an untrained model.
    assert abs(full[0]["loss"] - summary["eval"]["eval/loss"]) > 1e-3


@pytest.mark.slow
def test_resume_restores_a_moving_reference(tmp_path):
    """reference=sync (TR-DPO) changes the reference at step 3; the checkpoint at step 4 must carry it."""
    from prefopt.train import run

    overrides = RUN + ["reference=sync", "reference.sync_steps=3"]
    run(compose(overrides), tmp_path / "full")
    run_dir = tmp_path / "run"
    killed = run_cli(overrides, run_dir, check=False, env={"PREFOPT_INJECT_FAULT": "kill:5"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (checkpoint.checkpoint_dirs(run_dir)[-1] / "reference.safetensors").is_file()
    run_cli(overrides + ["resume=auto"], run_dir)
    assert_close(comparable(read_metrics(run_dir)), comparable(read_metrics(tmp_path / "full")))


def test_checkpoint_contents_and_keep_last(uninterrupted):
    # checkpoint_every=2 over 6 steps: steps 2 and 4 (the final state is the run's model, not a checkpoint).
    dirs = checkpoint.checkpoint_dirs(uninterrupted)
    assert [p.name for p in dirs] == ["step-00000002", "step-00000004"]
    latest = dirs[-1]
    assert {p.name for p in latest.iterdir()} >= {"model.safetensors", "optimizer.pt", "loss_state.pt", "state.json"}
    state = json.loads((latest / "state.json").read_text())
    assert state["step"] == 4 and state["metrics_offset"] > 0
    assert set(state["rng"]["0"]) >= {"python", "numpy", "torch"}
    # The metrics offset is the end of a complete line: the byte before it is a newline.
    data = (uninterrupted / "metrics.jsonl").read_bytes()
    assert data[state["metrics_offset"] - 1:state["metrics_offset"]] == b"\n"
    assert not list((uninterrupted / "checkpoints").glob(".step-*"))  # no half-written checkpoint left


def test_keep_last_prunes_older_checkpoints(tmp_path):
    from prefopt.trainer.checkpoint import _prune

    root = tmp_path / "checkpoints"
    for step in (2, 4, 6, 8):
        (root / f"step-{step:08d}").mkdir(parents=True)
        (root / f"step-{step:08d}" / "state.json").write_text("{}")
    (root / ".step-00000010.tmp123").mkdir()  # a save killed half-way
    _prune(root, keep_last=2)
    assert sorted(p.name for p in root.iterdir()) == ["step-00000006", "step-00000008"]


def test_resume_from_different_config_names_the_keys(tmp_path, uninterrupted):
    from prefopt.train import run

    cfg = compose(RUN + ["beta=0.5", f"resume={uninterrupted}"])
    with pytest.raises(checkpoint.CheckpointError, match=r"different config.*beta: 0\.1 -> 0\.5"):
        run(cfg, tmp_path / "other")
    assert not (tmp_path / "other" / "metrics.jsonl").exists()


def test_fresh_run_in_a_used_directory_starts_clean(tmp_path):
    """resume=null where an earlier run lies: its summary and checkpoints go and metrics.jsonl is cut to
    zero (what run() does on rank 0 before writing), so nothing is appended to the old log."""
    (tmp_path / "checkpoints" / "step-00000002").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-00000002" / "state.json").write_text("{}")
    (tmp_path / "summary.json").write_text('{"status": "completed"}')
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    assert checkpoint.resolve_resume(None, tmp_path) is None
    checkpoint.clear_previous_run(tmp_path)
    checkpoint.truncate_metrics(tmp_path / "metrics.jsonl", 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
    assert (tmp_path / "metrics.jsonl").read_bytes() == b""


def test_resume_path_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="no complete checkpoint"):
        checkpoint.resolve_resume(str(tmp_path), tmp_path)


class _Touch:
    """Pickles as a call of Path.touch: unpickling it with full pickle would create the file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        from pathlib import Path

        return Path.touch, (Path(self.path),)


def test_deepspeed_files_are_read_without_unpickling_code(tmp_path):
    """DeepSpeed's own loader is torch.load(weights_only=False); resume swaps in weights_only=True with
    DeepSpeed's stage enum allowed: its real state loads, a file whose pickle calls a function is refused
    before the call runs, and the engine gets its own loader back."""
    import torch
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine
    from deepspeed.runtime.zero.config import ZeroStageEnum

    class Engine:  # the part of DeepSpeedEngine that load_checkpoint reads files through
        def __init__(self):
            self.checkpoint_engine = TorchCheckpointEngine()
            self.read = {}

        def load_checkpoint(self, load_dir, tag, **_):
            for file in sorted((tmp_path / "deepspeed" / tag).glob("*.pt")):
                assert str(file).startswith(load_dir)
                self.read[file.name] = self.checkpoint_engine.load(str(file))
            return load_dir, {}

    shards = tmp_path / checkpoint.DEEPSPEED_DIR / checkpoint.DEEPSPEED_TAG
    shards.mkdir(parents=True)
    torch.save({"optimizer_state_dict": {"zero_stage": ZeroStageEnum.weights, "fp32": torch.ones(3)},
                "ds_version": "0.19.8"}, shards / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    engine = Engine()
    checkpoint._load_deepspeed(tmp_path, engine)
    state = engine.read["zero_pp_rank_0_mp_rank_00_optim_states.pt"]["optimizer_state_dict"]
    assert state["zero_stage"] is ZeroStageEnum.weights and torch.equal(state["fp32"], torch.ones(3))
    assert "load" not in vars(engine.checkpoint_engine)

    marker = tmp_path / "code-ran"
    torch.save({"module": _Touch(marker)}, shards / "zero_pp_rank_1_mp_rank_00_model_states.pt")
    with pytest.raises(checkpoint.CheckpointError, match="refusing .*zero_pp_rank_1_mp_rank_00_model_states.pt"):
        checkpoint._load_deepspeed(tmp_path, Engine())
    assert not marker.exists()
    torch.load(shards / "zero_pp_rank_1_mp_rank_00_model_states.pt", weights_only=False)
    assert marker.exists()  # the same file through DeepSpeed's own loader would have run it
