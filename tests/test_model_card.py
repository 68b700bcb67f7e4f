"""The model card (prefopt/model_card.py): the pure function on a fixture summary, and a real tiny run's card."""

from __future__ import annotations

import copy
import shlex

import pytest
import yaml

from prefopt.model_card import base_model, is_hub_id, model_card
from tests.conftest import TINY, compose, read_summary, run_cli

SUMMARY = {
    "status": "completed",
    "run_dir": "/runs/2026-12-01/02-00-00",
    "losses": {"dpo": {"weight": 1.0, "beta": 0.1, "label_smoothing": 0.0}},
    "choices": {"experiment": None, "variant": "default", "judge": "none", "benchmark": "sentiment",
                "deepspeed": None, "logger": "jsonl", "trainer": "default", "optimizer": "adamw",
                "reference": "frozen", "loss": "dpo", "dataset": "ultrafeedback_binarized",
                "model": "smollm2-135m"},
    "steps": 24,
    "skipped_steps": 0,
    "processes": 1,
    "eval": {"eval/loss": 0.6812, "eval/rewards/accuracies": 0.75, "eval/rewards/margins": 0.12},
    "benchmark": {"name": "sentiment", "n": 48, "policy_mean": 0.6477, "reference_mean": 0.3178,
                  "delta": 0.32984, "delta_ci_low": 0.19104, "delta_ci_high": 0.47795,
                  "win_rate": 0.73958, "win_rate_ci_low": 0.61458, "win_rate_ci_high": 0.85417,
                  "wilcoxon_p": 2.368e-05, "kl_estimate": 1.37494, "kl_ci_low": 0.81626, "kl_ci_high": 1.93124},
    "data": {"train_rows": 1000, "eval_rows": 200, "counts": {"train": {"rows_in": 1000, "rows_kept": 1000}}},
    "reference": {"kind": "frozen"},
    "versions": {"python": "3.11.7", "prefopt": "0.1.0"},
    "git_commit": "0123456789abcdef0123456789abcdef01234567",
}
CONFIG = {
    "beta": 0.1, "epochs": 3, "seed": 42,
    "model": {"name_or_path": "smollm2-135m"},
    "dataset": {"name": "ultrafeedback_binarized", "path": "HuggingFaceH4/ultrafeedback_binarized",
                "eval_path": None, "max_train_rows": None, "max_eval_rows": None},
    "loss": {"dpo": {"beta": 0.1, "label_smoothing": 0.0, "weight": 1.0}},
    "reference": {"kind": "frozen"},
    "optimizer": {"name": "adamw", "lr": 1e-5, "weight_decay": 0.0, "scheduler": "linear", "warmup_ratio": 0.1,
                  "max_grad_norm": 10.0},
    "trainer": {"batch_size": 4, "grad_accum": 2, "max_steps": -1, "eval_batch_size": 12},
}


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    head, _, _ = card[4:].partition("\n---\n")
    return yaml.safe_load(head)


def test_front_matter_names_base_model_data_tags_and_licence():
    meta = front_matter(model_card(SUMMARY, CONFIG))
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"  # the built-in name, resolved
    assert meta["datasets"] == ["HuggingFaceH4/ultrafeedback_binarized"]
    assert meta["tags"] == ["prefopt", "dpo"]
    assert meta["library_name"] == "transformers" and meta["license"] == "apache-2.0"


def test_body_has_loss_beta_training_and_benchmark_cis():
    card = model_card(SUMMARY, CONFIG)
    assert "prefopt 0.1.0, commit `0123456789abcdef0123456789abcdef01234567`" in card
    assert "| dpo | 1 | beta=0.1, label_smoothing=0 |" in card
    assert "- β (beta): 0.1" in card and "lr 1e-05" in card and "= 8 pairs per optimizer step" in card
    assert "- reference: frozen" in card and "training rows: 1000, held-out rows: 200" in card
    row = ("| sentiment | 48 | 0.6477 | 0.3178 | 0.330 [0.191, 0.478] | 0.740 [0.615, 0.854] "
           "| 1.375 [0.816, 1.931] | 2.368e-05 |")
    assert row in card


def test_reproduce_command_composes_to_the_same_values():
    card = model_card(SUMMARY, CONFIG)
    command = card.split("```bash\n")[1].split("\n```")[0]
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "prefopt.train"]
    assert "loss=dpo" in argv and "beta=0.1" in argv and "model=smollm2-135m" in argv
    cfg = compose(argv[3:])  # every override is one the CLI accepts
    assert cfg.beta == 0.1 and cfg.loss.dpo.beta == 0.1 and cfg.dataset.path == CONFIG["dataset"]["path"]
    assert cfg.optimizer.lr == 1e-5 and cfg.trainer.batch_size == 4


def test_reproduce_command_carries_changed_loss_values_of_combined_losses():
    config = copy.deepcopy(CONFIG)
    config["loss"] = {"dpo": {"beta": 0.1, "label_smoothing": 0.2, "weight": 0.8},
                      "sft": {"beta": 0.1, "nll_average": "sequence", "weight": 0.2}}
    summary = {**SUMMARY, "choices": {**SUMMARY["choices"], "loss": ["dpo", "sft"]}}
    argv = shlex.split(model_card(summary, config).split("```bash\n")[1].split("\n```")[0])
    assert "loss=[dpo,sft]" in argv and "loss.dpo.label_smoothing=0.2" in argv
    assert not [a for a in argv if a.startswith(("loss.dpo.beta", "loss.sft.nll_average"))]  # unchanged
    cfg = compose(argv[3:])
    assert cfg.loss.dpo.weight == 0.8 and cfg.loss.sft.weight == 0.2 and cfg.loss.dpo.label_smoothing == 0.2


def test_no_benchmark_failed_benchmark_and_added_benchmarks():
    summary = copy.deepcopy(SUMMARY)
    summary["benchmark"] = None
    assert "No benchmark was run." in model_card(summary, CONFIG)
    summary["benchmark"] = {"name": "mt_bench", "status": "failed", "error": "judge unreachable"}
    summary["benchmarks"] = {"sentiment": SUMMARY["benchmark"]}  # added later by prefopt.evaluate
    card = model_card(summary, CONFIG)
    assert "| mt_bench | 0 | failed: judge unreachable |" in card and "0.330 [0.191, 0.478]" in card


def test_tiny_and_local_models_have_no_base_model():
    config = copy.deepcopy(CONFIG)
    config["model"]["name_or_path"] = "tiny"
    config["dataset"] = {"name": "sentiment", "path": None}
    meta = front_matter(model_card(SUMMARY, config))
    assert "base_model" not in meta and "license" not in meta and "datasets" not in meta
    assert base_model("/data/ckpt/model") is None and base_model("mistralai/Mistral-7B-v0.1")
    assert not is_hub_id("../shared/data/uf/train.jsonl") and not is_hub_id("data/pairs.jsonl")


@pytest.mark.parametrize("names,expected", [(["ipo"], ["prefopt", "ipo", "dpo"]), (["kto"], ["prefopt", "kto"]),
                                            (["cpo", "sft"], ["prefopt", "cpo", "sft"]),
                                            (["bco"], ["prefopt", "bco"]), (["rpo"], ["prefopt", "rpo"])])
def test_tags_name_the_losses_and_their_trl_trainer(names, expected):
    summary = {**SUMMARY, "losses": {name: {"weight": 1.0, "beta": 0.1} for name in names}}
    assert front_matter(model_card(summary, CONFIG))["tags"] == expected


def test_tiny_run_writes_a_card_beside_the_model(tmp_path):
    """A real run: model/README.md parses and names the loss; transformers still loads the directory;
    prefopt.evaluate's record() rewrites the card with the new benchmark."""
    from transformers import AutoModelForCausalLM

    from prefopt.benchmarks.runner import record

    run_dir = tmp_path / "run"
    run_cli(TINY + ["loss=ipo", "beta=0.3", "trainer.save_model=true"], run_dir)
    card_path = run_dir / "model" / "README.md"
    card = card_path.read_text()
    meta = front_matter(card)
    assert meta["tags"][:2] == ["prefopt", "ipo"] and "base_model" not in meta  # tiny is random-init
    assert "| ipo | 1 | beta=0.3," in card and "No benchmark was run." in card
    assert AutoModelForCausalLM.from_pretrained(run_dir / "model") is not None
    record(run_dir, SUMMARY["benchmark"])
    assert read_summary(run_dir)["benchmark"]["name"] == "sentiment"
    assert "0.330 [0.191, 0.478]" in card_path.read_text()
