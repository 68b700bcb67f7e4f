"""`python -m prefopt.from_trl recipe.yaml`: an alignment-handbook / TRL DPO recipe becomes prefopt overrides.

The fixture reproduces alignment-handbook's recipes/zephyr-7b-beta/dpo/config_full.yaml (its header names the
commit). Its conversion composes, and agrees with prefopt's own experiment=zephyr_ddpo wherever both set a
value, except the four values the handbook re-tuned after zephyr-7b-beta was published (named in
conf/experiment/zephyr_ddpo.yaml's header).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prefopt import from_trl
from prefopt.from_trl import FromTrlError, convert
from tests.conftest import ROOT, compose

ZEPHYR = Path(__file__).parent / "fixtures" / "zephyr_7b_beta_dpo_config_full.yaml"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefopt.from_trl", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def zephyr():
    conversion = convert(from_trl.load_recipe(ZEPHYR))
    return conversion, compose(conversion.overrides)


def test_zephyr_recipe_converts_to_overrides_that_compose(zephyr):
    conversion, cfg = zephyr
    assert cfg.model.name_or_path == "alignment-handbook/zephyr-7b-sft-full"
    assert cfg.dataset.name == "ultrafeedback_binarized"
    assert (cfg.dataset.train_split, cfg.dataset.eval_split) == ("train_prefs", "test_prefs")
    assert list(cfg.loss) == ["dpo"] and cfg.loss.dpo.beta == 0.01
    assert cfg.optimizer.name == "adamw" and cfg.optimizer.lr == 5.0e-7 and cfg.optimizer.scheduler == "cosine"
    assert (cfg.optimizer.warmup_ratio, cfg.optimizer.max_grad_norm) == (0.1, 1.0)  # max_grad_norm: HF's default
    assert (cfg.trainer.batch_size, cfg.trainer.grad_accum, cfg.trainer.eval_batch_size) == (8, 2, 8)
    assert (cfg.trainer.eval_every, cfg.trainer.log_every, cfg.trainer.checkpoint_every) == (100, 10, 100)
    assert cfg.trainer.keep_last == 1 and cfg.trainer.group_by_length is False
    assert (cfg.dataset.max_length, cfg.dataset.max_prompt_length, cfg.epochs, cfg.seed) == (1024, 512, 1, 42)
    assert cfg.model.gradient_checkpointing is True and cfg.model.dtype == "auto"
    assert set(conversion.ignored) == {"preprocessing_num_workers", "bf16", "do_eval", "gradient_checkpointing_kwargs",
                                       "log_level", "output_dir"}
    # The recipe pushes to the Hub: so does the converted run (a bare name is the token's own namespace).
    assert cfg.hub.push is True and cfg.hub.repo_id == "zephyr-7b-dpo-full"
    assert conversion.defaulted == ["max_grad_norm", "weight_decay", "group_by_length"]


def test_zephyr_conversion_equals_experiment_zephyr_ddpo_where_both_set_a_value(zephyr):
    """The keys conf/experiment/zephyr_ddpo.yaml (with its options) sets, read from both composed configs."""
    _, converted = zephyr
    ours = compose(["experiment=zephyr_ddpo", "model.name_or_path=alignment-handbook/zephyr-7b-sft-full"])
    both = ["model.name_or_path", "model.gradient_checkpointing", "dataset.name", "dataset.train_split",
            "dataset.eval_split", "dataset.max_length", "dataset.max_prompt_length", "optimizer.name", "optimizer.lr",
            "optimizer.warmup_ratio", "optimizer.weight_decay", "optimizer.max_grad_norm", "trainer.batch_size",
            "trainer.eval_every", "seed"]

    def get(cfg, key):
        for part in key.split("."):
            cfg = cfg[part]
        return cfg

    assert {k: get(converted, k) for k in both} == {k: get(ours, k) for k in both}
    assert list(converted.loss) == list(ours.loss) == ["dpo"]
    # The handbook's later re-tune (beta 0.01, cosine, 1 epoch) and its 8-GPU accumulation (8 x 2 x 8 GPUs =
    # 128; the experiment reaches 128 on one process with 8 x 16): zephyr_ddpo.yaml's header says so.
    differ = {"beta": (0.01, 0.1), "optimizer.scheduler": ("cosine", "linear"), "epochs": (1, 3),
              "trainer.grad_accum": (2, 16)}
    assert {k: (get(converted, k), get(ours, k)) for k in differ} == differ


def test_cli_prints_a_command_that_names_every_override_and_ignored_field():
    proc = _run(str(ZEPHYR))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "python -m prefopt.train \\"
    assert "  optimizer.lr=5e-07 \\" in lines and "  beta=0.01 \\" in lines
    assert "  hub.push=true \\" in lines and any(line.startswith("# ignored output_dir: ") for line in lines)
    # docs/coming_from_trl.md shows this output verbatim.
    assert proc.stdout in (ROOT / "docs" / "coming_from_trl.md").read_text()


def test_unknown_field_is_refused_by_name_in_one_line(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("beta: 0.1\nlearning_rate: 5.0e-7\nbogus_knob: 3\n")
    proc = _run(str(recipe))
    assert proc.returncode == 1 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "unknown field bogus_knob" in proc.stderr


@pytest.mark.parametrize("field,value", [("optim", "adafactor"), ("lr_scheduler_type", "reduce_lr_on_plateau"),
                                         ("num_train_epochs", 1.5), ("warmup_steps", 100), ("fp16", True)])
def test_values_prefopt_cannot_represent_are_refused_naming_the_field(field, value):
    with pytest.raises(FromTrlError, match=rf"^{field}: "):
        convert({field: value}, check=False)


@pytest.mark.parametrize("trl,prefopt", [("sigmoid", "dpo"), ("ipo", "ipo"), ("hinge", "hinge"), ("exo_pair", "exo"),
                                         ("nca_pair", "nca"), ("robust", "robust"), ("bco_pair", "bco_pair"),
                                         ("sppo_hard", "sppo_hard"), ("apo_zero", "apo_zero"),
                                         ("discopop", "discopop")])
def test_trl_loss_type_maps_to_the_prefopt_loss(trl, prefopt):
    conversion = convert({"loss_type": trl, "beta": 0.2})
    assert f"loss={prefopt}" in conversion.overrides
    cfg = compose(conversion.overrides)
    assert list(cfg.loss) == [prefopt] and cfg.loss[prefopt].beta == 0.2


def test_loss_fields_go_to_the_loss_that_has_them():
    cfg = compose(convert({"loss_type": "robust", "label_smoothing": 0.1, "use_weighting": True}).overrides)
    assert (cfg.loss.robust.label_smoothing, cfg.loss.robust.wpo) == (0.1, True)
    cfg = compose(convert({"loss_type": "sigmoid", "rpo_alpha": 0.5}).overrides)
    assert list(cfg.loss) == ["rpo"] and (cfg.loss.rpo.alpha, cfg.loss.rpo.nll_average) == (0.5, "batch_tokens")
    cfg = compose(convert({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]}).overrides)
    assert list(cfg.loss) == ["dpo", "sft"] and cfg.loss.sft.weight == 0.5
    with pytest.raises(FromTrlError, match=r"^label_smoothing: loss hinge has no label_smoothing"):
        convert({"loss_type": "hinge", "label_smoothing": 0.1}, check=False)
    with pytest.raises(FromTrlError, match=r"^loss_type: 'no_such_loss' is not a loss prefopt has"):
        convert({"loss_type": "no_such_loss"}, check=False)


def test_report_to_picks_a_prefopt_logger_or_says_it_has_none():
    assert "logger=wandb" in convert({"report_to": ["wandb"]}, check=False).overrides
    conversion = convert({"report_to": "comet_ml"}, check=False)
    assert not any(o.startswith("logger=") for o in conversion.overrides) and "report_to" in conversion.ignored


def test_a_mapping_to_a_key_prefopt_lacks_fails_at_conversion(monkeypatch):
    """Every conversion composes its overrides, so a renamed prefopt key cannot rot the table silently."""
    monkeypatch.setitem(from_trl.DIRECT, "learning_rate", ("optimizer.learning_rate", ""))
    with pytest.raises(FromTrlError, match=r"do not compose.*optimizer\.learning_rate"):
        convert({"learning_rate": 1e-6})


def test_docs_table_is_the_converters_own():
    assert from_trl.table() in (ROOT / "docs" / "coming_from_trl.md").read_text()


def test_fixture_is_the_handbook_recipe():
    recipe = yaml.safe_load(ZEPHYR.read_text())
    assert recipe["dataset_mixer"] == {"HuggingFaceH4/ultrafeedback_binarized": 1.0}
    assert (recipe["learning_rate"], recipe["beta"], recipe["optim"]) == (5.0e-7, 0.01, "adamw_torch")


def test_every_dpo_field_of_the_installed_trl_is_known_and_its_defaults_are_trls():
    """trl (pinned in the test extra) defines DPOConfig: each of its DPO-specific fields is mapped, ignored or
    refused by name, and the TRL defaults the converter fills in are DPOConfig's own."""
    import dataclasses

    trl = pytest.importorskip("trl")
    from transformers import TrainingArguments

    fields = {f.name: f.default for f in dataclasses.fields(trl.DPOConfig)}
    dpo_only = set(fields) - {f.name for f in dataclasses.fields(TrainingArguments)}
    known = set(from_trl.DIRECT) | set(from_trl.IGNORED) | set(from_trl.HANDLED)
    assert sorted(dpo_only - known) == []
    present = {k: v for k, v in from_trl.TRL_DEFAULTS.items() if k in fields}
    assert present == {k: fields[k] for k in present}
    assert set(from_trl.TRL_DEFAULTS) - set(present) <= {"warmup_ratio", "group_by_length"}  # gone in transformers 5
