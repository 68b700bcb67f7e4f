"""The Zephyr recipe in one command: distilled SFT, then distilled DPO from the SFT checkpoint.

    python experiments/zephyr_pipeline.py --out runs/zephyr                       # the 7B recipe (GPUs, hub)
    python experiments/zephyr_pipeline.py --out /tmp/z model=tiny benchmark=none \\
        --sft dataset.path=../shared/data/ultrafeedback/uf_binarized_h4schema_train_1000.jsonl \\
        --dpo dataset.path=../shared/data/ultrafeedback/uf_binarized_h4schema_train_1000.jsonl

Stage 1 runs ``python -m prefopt.train experiment=zephyr_dsft`` into ``<out>/dsft``. Stage 2 runs
``python -m prefopt.train -m experiment=zephyr_ddpo variant=<variants>`` into ``<out>/ddpo`` (one Hydra
multirun, one job per variant) with ``model.name_or_path=<out>/dsft/model``: the SFT checkpoint is both
the policy's start and the frozen reference. Overrides before ``--sft``/``--dpo`` go to both stages.

A completed dSFT stage (its summary.json says completed and model/ exists) is reused rather than
retrained, so a failed dDPO sweep can be rerun cheaply; ``--force`` retrains, ``--sft-checkpoint``
skips stage 1 for an existing checkpoint. ``<out>/pipeline.json`` records both stages' commands,
directories and outcome (written atomically after each stage).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prefopt.io import atomic_write_json  # noqa: E402

VARIANTS = "zephyr_alpha,zephyr_beta"


class PipelineError(RuntimeError):
    pass


def split_overrides(argv: list[str]) -> tuple[list[str], list[str], list[str]]:
    """``common... --sft a b --dpo c d`` -> (common, sft, dpo); the flags may come in any order."""
    common, sft, dpo = [], [], []
    target = common
    for arg in argv:
        if arg == "--sft":
            target = sft
        elif arg == "--dpo":
            target = dpo
        else:
            target.append(arg)
    return common, sft, dpo


def stage_completed(run_dir: Path) -> bool:
    summary = run_dir / "summary.json"
    if not summary.is_file() or not (run_dir / "model" / "config.json").is_file():
        return False
    try:
        return json.loads(summary.read_text()).get("status") == "completed"
    except (OSError, json.JSONDecodeError):
        return False


def run_stage(name: str, cmd: list[str], record: dict, out: Path) -> None:
    print(f"[zephyr] {name}: {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    env = {**os.environ, "HYDRA_FULL_ERROR": os.environ.get("HYDRA_FULL_ERROR", "0")}
    proc = subprocess.run(cmd, cwd=ROOT, env=env)
    record["stages"][name].update(command=cmd, returncode=proc.returncode,
                                  seconds=round(time.perf_counter() - start, 1))
    atomic_write_json(out / "pipeline.json", record)
    if proc.returncode != 0:
        raise PipelineError(f"stage {name} failed with exit code {proc.returncode}; see its output above")


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str], list[str], list[str]]:
    # allow_abbrev=False: otherwise argparse reads "--sft" as an abbreviation of --sft-checkpoint.
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/zephyr"), help="pipeline directory")
    parser.add_argument("--variants", default=VARIANTS, help="comma-separated dDPO variants (one multirun)")
    parser.add_argument("--sft-checkpoint", type=Path, default=None,
                        help="skip dSFT and start dDPO from this checkpoint directory")
    parser.add_argument("--force", action="store_true", help="retrain dSFT even if a completed run exists")
    args, rest = parser.parse_known_args(argv)
    unknown = [a for a in rest if a.startswith("--") and a not in ("--sft", "--dpo")]
    if unknown:
        parser.error(f"unknown option(s): {' '.join(unknown)}")
    return (args, *split_overrides(rest))


def main(argv: list[str] | None = None) -> int:
    args, common, sft_overrides, dpo_overrides = parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    sft_dir = out / "dsft"
    ddpo_dir = out / "ddpo"
    python = [sys.executable, "-m", "prefopt.train"]
    record = {"out": str(out), "variants": args.variants.split(","), "stages": {"dsft": {}, "ddpo": {}}}

    try:
        if args.sft_checkpoint is not None:
            checkpoint = args.sft_checkpoint.resolve()
            if not (checkpoint / "config.json").is_file():
                raise PipelineError(f"--sft-checkpoint {checkpoint}: no config.json, not a model directory")
            record["stages"]["dsft"] = {"status": "given", "model": str(checkpoint)}
        elif stage_completed(sft_dir) and not args.force:
            checkpoint = sft_dir / "model"
            print(f"[zephyr] dsft: reusing the completed run in {sft_dir} (--force retrains)", flush=True)
            record["stages"]["dsft"] = {"status": "reused", "run_dir": str(sft_dir), "model": str(checkpoint)}
        else:
            record["stages"]["dsft"] = {"status": "running", "run_dir": str(sft_dir)}
            cmd = python + ["experiment=zephyr_dsft", *common, *sft_overrides, "trainer.save_model=true",
                            f"hydra.run.dir={sft_dir}"]
            run_stage("dsft", cmd, record, out)
            checkpoint = sft_dir / "model"
            if not stage_completed(sft_dir):
                raise PipelineError(f"dsft finished but left no completed run with a model in {sft_dir}")
            record["stages"]["dsft"].update(status="completed", model=str(checkpoint))

        record["stages"]["ddpo"] = {"status": "running", "sweep_dir": str(ddpo_dir)}
        # Job folders named by variant (0_zephyr_alpha, ...): the default names list every override and
        # outgrow the file-name limit once the stages carry their data paths.
        cmd = python + ["-m", "experiment=zephyr_ddpo", f"variant={args.variants}", *common, *dpo_overrides,
                        f"model.name_or_path={checkpoint}", f"hydra.sweep.dir={ddpo_dir}",
                        "hydra.sweep.subdir=${hydra.job.num}_${hydra:runtime.choices.variant}"]
        run_stage("ddpo", cmd, record, out)
        runs = sorted(p.parent for p in ddpo_dir.glob("*/summary.json"))
        record["stages"]["ddpo"].update(status="completed", runs=[str(r) for r in runs])
        if len(runs) != len(record["variants"]):
            record["stages"]["ddpo"]["status"] = "incomplete"
            raise PipelineError(f"ddpo: expected {len(record['variants'])} runs in {ddpo_dir}, found {len(runs)}")
    except PipelineError as err:
        for stage in record["stages"].values():
            if stage.get("status") == "running":
                stage["status"] = "failed"
        record["error"] = str(err)
        atomic_write_json(out / "pipeline.json", record)
        print(f"[zephyr] {err}", file=sys.stderr)
        return 1
    atomic_write_json(out / "pipeline.json", record)
    print(f"[zephyr] done: {out / 'pipeline.json'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
