"""prefopt/study (data.py, analyse.py, report.py, __main__.py) on sweep directories of fake but
well-formed run directories written here: a known shift is resolved and no shift is not, every output
file carries its keys, failed and missing runs are listed, and bad input is one line naming the culprit."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from prefopt.study import StudyError, analyse, load_study, run_study
from prefopt.study.__main__ import main

PROMPTS = 40


def write_run(root: Path, name: str, *, loss: str, beta: float, seed: int, rewards, kls, status="completed",
              benchmark="sentiment", extra: dict | None = None, items=True, old_items=False) -> Path:
    """One run directory as prefopt.train writes it (the parts the study reads)."""
    run = root / name
    run.mkdir(parents=True)
    config = {"beta": beta, "seed": seed, "loss": {loss: {"beta": beta, "weight": 1.0}},
              "optimizer": {"lr": 1e-5}, "benchmark": {"name": benchmark, "prompts": "builtin",
                                                      "num_prompts": len(rewards)},
              "dataset": {"name": "sentiment"}, "run_dir": str(run)}
    for key, value in (extra or {}).items():
        section, field = key.split(".")
        config[section][field] = value
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    records = [{"split": "train", "step": s, "loss": 0.7 - 0.01 * s, "rewards/margins": 0.1 * s * beta,
                "rewards/accuracies": 0.5 + 0.05 * s, "logps/chosen": -100 - s, "logps/rejected": -110 - 2 * s}
               for s in (1, 2, 3)]
    records.append({"split": "eval", "step": 3, "eval/rewards/margins": 0.2, "eval/rewards/accuracies": 0.6})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {"status": status, "steps": 3, "train": {"rewards/accuracies": 0.6 + seed / 100,
                                                        "rewards/margins": 0.3},
               "eval": {"eval/rewards/accuracies": 0.55, "eval/rewards/margins": 0.1},
               "compute": {"flops_estimate": 1e12, "wall_s": {"train": 10.0 + seed}}}
    (run / "summary.json").write_text(json.dumps(summary))
    if items and status == "completed":
        lines = []
        for i, (r, k) in enumerate(zip(rewards, kls, strict=True)):
            item = {"prompt": f"p{i}", "policy": "x", "policy_score": float(r), "reference": "y",
                    "reference_score": 0.0}
            if k is not None:
                item["kl"] = float(k)
            if not old_items:
                item.update(prompt_id=i, sample=0)
            lines.append(json.dumps(item))
        (run / f"benchmark_{benchmark}.jsonl").write_text("\n".join(lines) + "\n")
    return run


def make_sweep(root: Path, shift: float, seeds=(1, 2, 3, 4), betas=(0.1, 1.0), noise=0.15, rng_seed=0,
               failed: tuple = ()) -> Path:
    """dpo and ipo at each β and seed; ipo's rewards = dpo's + shift + noise, on shared prompt effects.
    The KL falls with β (2/β^0.5 on average), the reward rises with KL."""
    rng = np.random.default_rng(rng_seed)
    prompt_effect = rng.normal(0, 0.3, PROMPTS)
    job = 0
    for loss in ("dpo", "ipo"):
        for beta in betas:
            for seed in seeds:
                kl = np.abs(1 / beta ** 0.5 + rng.normal(0, 0.2, PROMPTS))
                reward = 0.2 * kl + prompt_effect + rng.normal(0, noise, PROMPTS) + (shift if loss == "ipo" else 0.0)
                status = "failed" if (loss, beta, seed) in failed else "completed"
                write_run(root, str(job), loss=loss, beta=beta, seed=seed, rewards=reward, kls=kl, status=status)
                job += 1
    return root


def test_a_known_shift_is_resolved_and_none_is_not(tmp_path):
    shifted = analyse(load_study(make_sweep(tmp_path / "shift", 0.25)), replicates=400)
    null = analyse(load_study(make_sweep(tmp_path / "null", 0.0, rng_seed=1)), replicates=400)
    beta_pairs = [p for p in shifted["pairs"] if p["kind"] == "equal_beta"]
    assert len(beta_pairs) == 2 and all(p["resolved"] for p in beta_pairs)
    for p in beta_pairs:  # dpo - ipo: about -0.25
        assert p["ci_low"] < -0.25 < p["ci_high"] and p["ci_high"] < 0, p
        assert p["seeds"] == 4 and p["prompts"] == PROMPTS
    assert not any(p["resolved"] for p in null["pairs"])
    # Holm over every pair of the study (equal β and equal KL together).
    m = len(null["pairs"])
    smallest = min(null["pairs"], key=lambda p: p["p"])
    assert smallest["p_holm"] == pytest.approx(min(1.0, smallest["p"] * m))


def test_study_numbers_match_the_items(tmp_path):
    """The reward of a condition is the mean of its runs' items; its delta here equals the reward (the
    reference scores are 0); KL frontiers join the conditions in β order; curves have one row per step."""
    study = load_study(make_sweep(tmp_path / "s", 0.1))
    result = analyse(study, replicates=300, kl_grid=[1.2, 2.0, 50.0])
    assert study.keys == ["loss", "beta"]
    dpo = next(c for c in result["conditions"] if c["condition"] == "dpo β=0.1")
    items = study.items[study.items["condition"] == "dpo β=0.1"]
    assert dpo["metrics"]["reward"]["estimate"] == pytest.approx(items["reward"].mean())
    assert dpo["metrics"]["delta"]["estimate"] == pytest.approx(items["reward"].mean())
    assert dpo["metrics"]["reward"]["ci_low"] < dpo["metrics"]["reward"]["estimate"] < dpo["metrics"]["reward"]["ci_high"]
    assert dpo["metrics"]["train/rewards/accuracies"]["estimate"] == pytest.approx(np.mean([0.61, 0.62, 0.63, 0.64]))
    assert dpo["metrics"]["compute/wall_s/train"]["estimate"] == pytest.approx(12.5)
    assert dpo["seeds"] == [1, 2, 3, 4] and dpo["prompts"] == PROMPTS
    assert [f["frontier"] for f in result["frontiers"]] == ["dpo", "ipo"]
    assert [p["beta"] for p in result["frontiers"][0]["points"]] == [0.1, 1.0]
    at = result["frontiers"][0]["at_kl"]
    assert [a["covered"] for a in at] == [True, True, False]  # KL 50 lies beyond every point
    assert at[2]["estimate"] is None
    steps = [r for r in result["curves"] if r["condition"] == "dpo β=0.1" and r["split"] == "train"]
    assert [r["step"] for r in steps] == [1, 2, 3] and steps[0]["seeds"] == 4
    assert steps[1]["rewards/margins"]["mean"] == pytest.approx(0.02)
    assert result["missing"] == [] and result["design"]["prompts"] == PROMPTS


def test_cli_writes_the_report_files(tmp_path, capsys):
    sweep = make_sweep(tmp_path / "sweep", 0.25, failed=(("ipo", 1.0, 4),))
    assert main([str(sweep), "--bootstrap", "300", "--target-diff", "0.1", "--kl-grid", "1.5", "2.5"]) == 0
    out = capsys.readouterr().out
    assert "1 failed or missing" in out and "wrote" in out
    data = json.loads((sweep / "study.json").read_text())
    assert {"benchmark", "design", "method", "conditions", "frontiers", "kl_grid", "pairs", "curves", "missing",
            "warnings"} <= set(data)
    assert data["kl_grid"] == [1.5, 2.5] and data["method"]["replicates"] == 300
    assert [m["status"] for m in data["missing"]] == ["failed"] and data["missing"][0]["condition"] == "ipo β=1"
    for p in data["pairs"]:
        assert {"a", "b", "difference", "ci_low", "ci_high", "p", "p_holm", "resolved", "mde", "mde_holm"} <= set(p)
    plans = [p["plan"] for p in data["pairs"] if p["kind"] == "equal_beta"]
    assert plans and all(o["seeds"] and (o["prompts"] is None or o["prompts"] >= 2) for o in plans[0]["options"])
    md = (sweep / "report.md").read_text()
    for heading in ("## Per condition", "## Reward at equal KL", "## Pairwise comparisons", "## Variance components",
                    "## Prompts needed", "## Failed or missing runs"):
        assert heading in md, heading
    assert "| failed |" in md
    html = (sweep / "report.html").read_text()
    images = re.findall(r"<img[^>]*src='([^']*)'", html)
    assert len(images) >= 3 and all(src.startswith("data:image/png;base64,") for src in images)
    assert "http://" not in html and "https://" not in html  # self-contained
    assert (sweep / "frontier.png").stat().st_size > 1000
    assert not list(sweep.glob(".*.tmp"))


def test_other_swept_keys_and_old_items(tmp_path):
    """A sweep over optimizer.lr makes lr part of the condition; items without prompt_id/sample (runs made
    before they existed) are paired by line index; a seed one condition lacks is listed as not run."""
    rng = np.random.default_rng(3)
    for job, (loss, lr, seed) in enumerate([("dpo", 1e-5, 1), ("dpo", 1e-5, 2), ("dpo", 1e-4, 1), ("dpo", 1e-4, 2),
                                            ("ipo", 1e-5, 1)]):
        write_run(tmp_path, str(job), loss=loss, beta=0.1, seed=seed, rewards=rng.normal(size=6),
                  kls=np.ones(6), extra={"optimizer.lr": lr}, old_items=True)
    study = load_study(tmp_path)
    assert study.keys == ["loss", "beta", "optimizer.lr"]
    assert sorted(study.runs["condition"].unique()) == ["dpo β=0.1 optimizer.lr=0.0001", "dpo β=0.1 optimizer.lr=1e-05",
                                                        "ipo β=0.1 optimizer.lr=1e-05"]
    assert sorted(study.items["prompt_id"].unique()) == list(range(6)) and set(study.items["sample"]) == {0}
    assert study.missing == [{"run": None, "condition": "ipo β=0.1 optimizer.lr=1e-05", "seed": 2,
                              "status": "not run", "error": None}]
    result = analyse(study, replicates=100)
    pairs = [(p["a"], p["b"]) for p in result["pairs"] if p["kind"] == "equal_beta"]
    # dpo vs ipo only at equal lr; dpo's two lrs with each other (the same loss, another lr); never dpo at one
    # lr vs ipo at the other (both differ).
    assert pairs == [("dpo β=0.1 optimizer.lr=0.0001", "dpo β=0.1 optimizer.lr=1e-05"),
                     ("dpo β=0.1 optimizer.lr=1e-05", "ipo β=0.1 optimizer.lr=1e-05")]
    assert [p["seeds"] for p in result["pairs"][:2]] == [2, 1]  # paired only where both have the seed


def test_run_study_returns_without_writing(tmp_path):
    sweep = make_sweep(tmp_path / "s", 0.0, seeds=(1,), betas=(0.5,))
    result = run_study([sweep], write=False, replicates=50)
    assert "files" not in result and not (sweep / "study.json").exists()
    assert any("one seed" in w for w in result["warnings"])


def test_bad_input_is_one_line_naming_the_culprit(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(empty) in err and "no run directories" in err

    assert main([str(tmp_path / "nowhere")]) == 1
    assert "no such sweep directory" in capsys.readouterr().err

    mixed = tmp_path / "mixed"
    write_run(mixed, "0", loss="dpo", beta=0.1, seed=1, rewards=[0.1, 0.2], kls=[1, 1])
    other = write_run(mixed, "1", loss="dpo", beta=0.1, seed=2, rewards=[0.1, 0.2], kls=[1, 1], benchmark="mt_bench")
    with pytest.raises(StudyError, match=rf"different tasks.*benchmark.name.*{re.escape(str(other))}"):
        load_study(mixed)

    no_items = tmp_path / "noitems"
    write_run(no_items, "0", loss="dpo", beta=0.1, seed=1, rewards=[0.1], kls=[1])
    bare = write_run(no_items, "1", loss="ipo", beta=0.1, seed=1, rewards=[0.1], kls=[1], items=False)
    assert main([str(no_items)]) == 1
    err = capsys.readouterr().err
    assert str(bare) in err and "benchmark_sentiment.jsonl" in err and err.count("\n") == 1
    assert not (no_items / "study.json").exists()

    all_failed = tmp_path / "failed"
    write_run(all_failed, "0", loss="dpo", beta=0.1, seed=1, rewards=[0.1], kls=[1], status="failed")
    with pytest.raises(StudyError, match="no completed run"):
        load_study(all_failed)

    none = tmp_path / "nobench"
    write_run(none, "0", loss="dpo", beta=0.1, seed=1, rewards=[0.1], kls=[1], benchmark="none", items=False)
    with pytest.raises(StudyError, match="benchmark.name='none'"):
        load_study(none)


def test_a_benchmark_without_kl(tmp_path):
    """Judge benchmarks (mt_bench) score items without a KL: rewards and equal-β pairs, no frontier figure,
    no equal-KL comparisons."""
    rng = np.random.default_rng(5)
    for job, (loss, seed) in enumerate([("dpo", 1), ("dpo", 2), ("ipo", 1), ("ipo", 2)]):
        write_run(tmp_path, str(job), loss=loss, beta=0.1, seed=seed, rewards=rng.normal(5, 1, 8), kls=[None] * 8,
                  benchmark="mt_bench")
    result = run_study([tmp_path], replicates=100)
    assert result["benchmark"] == "mt_bench" and result["kl_grid"] == []
    assert [p["kind"] for p in result["pairs"]] == ["equal_beta"]
    assert not (tmp_path / "frontier.png").exists() and (tmp_path / "curves_train.png").exists()
    assert json.loads((tmp_path / "study.json").read_text())["conditions"][0]["metrics"]["kl"]["estimate"] is None


def test_pairs_differ_in_the_loss_alone_or_in_the_rest_alone(tmp_path):
    """dpo vs robust on the same data, and dpo clean vs dpo noisy, are compared; robust with ε=0.1 on clean
    data vs robust with ε=0.2 on noisy data differs in both and is not (no single cause)."""
    rng = np.random.default_rng(0)
    job = 0
    for loss, noise, eps in (("dpo", 0.0, None), ("dpo", 0.2, None), ("robust", 0.0, 0.1), ("robust", 0.2, 0.2)):
        for seed in (1, 2):
            run = write_run(tmp_path, str(job), loss=loss, beta=0.1, seed=seed, rewards=rng.normal(0, 1, PROMPTS),
                            kls=np.ones(PROMPTS), extra={"dataset.label_noise": noise})
            if eps is not None:
                config = yaml.safe_load((run / "config.yaml").read_text())
                config["loss"]["robust"]["label_smoothing"] = eps
                (run / "config.yaml").write_text(yaml.safe_dump(config))
            job += 1
    result = analyse(load_study(tmp_path), replicates=100)
    pairs = {(p["a"], p["b"]): p["differ"] for p in result["pairs"] if p["kind"] == "equal_beta"}
    names = {c["condition"]: (c["loss"], c["dataset.label_noise"]) for c in result["conditions"]}
    found = {(names[a], names[b]): differ for (a, b), differ in pairs.items()}
    assert found == {
        (("dpo", 0.0), ("dpo", 0.2)): ["dataset.label_noise"],
        (("dpo", 0.0), ("robust", 0.0)): ["loss", "loss.robust.label_smoothing"],
        (("dpo", 0.2), ("robust", 0.2)): ["loss", "loss.robust.label_smoothing"],
    }
