"""Every ``reference=`` option trains through the CLI on ``model=tiny``, and each keeps its promise:

- ``precomputed`` gives the losses of ``frozen`` (1e-5), is computed once and then read by later runs
  and multirun jobs (cache hit recorded in summary.json), is invalidated by a changed max_length or
  tokenizer, and two jobs racing for it compute it once;
- ``adapter_off`` holds one copy of the base weights and scores with the adapters off;
- ``sync`` moves the reference to the policy exactly at the configured steps;
- ``none`` trains a reference-free loss and refuses a loss that needs a reference.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from tests.conftest import ROOT, TINY, read_metrics, read_summary, run_cli

# lr high enough that the policy moves visibly within 4 steps, so loss comparisons are not vacuous.
FAST = [o for o in TINY if not o.startswith("trainer.max_steps")] + [
    "trainer.max_steps=3", "trainer.grad_accum=1", "optimizer.lr=1e-3", "optimizer.warmup_ratio=0",
    "dataset.max_train_rows=16"]


# Job folders named by number only: the overrides would make names longer than the filesystem allows.
SHORT_DIRS = ["hydra.sweep.subdir=${hydra.job.num}"]


def jobs(sweep_dir):
    dirs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    return [(read_summary(d), [r["loss"] for r in read_metrics(d) if r["split"] == "train"]) for d in dirs]


def test_each_reference_option_trains_and_keeps_its_promise(tmp_path):
    cache = tmp_path / "reflogps"
    run_cli(FAST + ["loss=dpo", "reference=frozen,precomputed,sync,adapter_off,checkpoint",
                    "reference.name_or_path=tiny", f"reference.cache_dir={cache}", "reference.sync_steps=2",
                    "reference.sync_alpha=1.0"] + SHORT_DIRS, tmp_path / "sweep", multirun=True)
    results = {summary["reference"]["kind"]: (summary, losses) for summary, losses in jobs(tmp_path / "sweep")}
    assert set(results) == {"frozen", "precomputed", "sync", "adapter_off", "checkpoint"}
    for kind, (summary, losses) in results.items():
        assert summary["status"] == "completed" and len(losses) == 3, kind
        assert all(math.isfinite(x) for x in losses), kind
        assert summary["throughput"]["pairs/s"] > 0 and summary["peak_rss_mb"] > 0

    frozen = results["frozen"][1]
    # Step 1: policy == reference, so the DPO loss is log 2; later steps move away from it.
    assert abs(frozen[0] - math.log(2)) < 1e-6 and abs(frozen[2] - math.log(2)) > 1e-3
    # precomputed: same losses as frozen, no reference model during training.
    pre_summary, pre_losses = results["precomputed"]
    assert pre_summary["reference"]["cache"] == "miss"
    assert max(abs(a - b) for a, b in zip(pre_losses, frozen, strict=True)) < 1e-5
    assert pre_summary["throughput"]["reference_seconds"] < results["frozen"][0]["throughput"]["reference_seconds"]
    # checkpoint=tiny is the same weights here, so it matches frozen too.
    assert max(abs(a - b) for a, b in zip(results["checkpoint"][1], frozen, strict=True)) < 1e-5
    # sync with alpha=1 every 2 steps: after the hard update at step 2 the step-3 loss is log 2 again.
    sync_summary, sync_losses = results["sync"]
    assert sync_summary["reference"]["synced_at"] == [2]
    assert sync_losses[:2] == pytest.approx(frozen[:2], abs=1e-6)
    assert abs(sync_losses[2] - math.log(2)) < 1e-6 and abs(frozen[2] - math.log(2)) > 1e-4


@pytest.mark.slow
def test_precomputed_cache_is_shared_and_invalidated_by_max_length(tmp_path):
    cache = tmp_path / "reflogps"
    common = TINY + ["reference=precomputed", f"reference.cache_dir={cache}", "dataset.max_train_rows=16"]
    # Four multirun jobs: max_length varies fastest, so jobs 0 and 1 compute, jobs 2 and 3 reuse.
    run_cli(common + ["beta=0.1,0.5", "dataset.max_length=128,96"] + SHORT_DIRS, tmp_path / "sweep", multirun=True)
    summaries = [s for s, _ in jobs(tmp_path / "sweep")]
    refs = [s["reference"] for s in summaries]
    assert [r["cache"] for r in refs] == ["miss", "miss", "hit", "hit"]
    assert refs[0]["key"] == refs[2]["key"] != refs[1]["key"] == refs[3]["key"]
    assert [s["losses"]["dpo"]["beta"] for s in summaries] == [0.1, 0.1, 0.5, 0.5]
    assert sorted(p.name for p in cache.iterdir() if p.suffix == ".pt") == sorted(f"{r['key']}.pt" for r in refs[:2])
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]
    # A later, separate run with the same data and model reads the file too.
    run_cli(common + ["beta=0.2", "trainer.max_steps=1"], tmp_path / "later")
    later = read_summary(tmp_path / "later")["reference"]
    assert later["cache"] == "hit" and later["key"] == refs[0]["key"]



def test_cache_key_follows_content_not_paths(tmp_path):
    """The key changes with the tokenizer (same weights, another chat template gives other token ids) and
    the truncation settings, and not with where an identical model lies."""
    from transformers import AutoTokenizer

    from prefopt import data as data_lib
    from prefopt.data.collate import collate
    from prefopt.models import load_model, load_tokenizer, resolve_model_path
    from prefopt.reference import _cache_key, weights_digest
    from prefopt.trainer.batching import batches
    from tests.conftest import compose

    same, other = tmp_path / "same", tmp_path / "other"
    shutil.copytree(resolve_model_path("tiny"), same)
    shutil.copytree(resolve_model_path("tiny"), other)
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.chat_template = tokenizer.chat_template.replace("named SmolLM", "named TinyLM")
    tokenizer.save_pretrained(other)
    dcfg = compose(["model=tiny", "dataset.max_train_rows=8"]).dataset

    def key(path, truncation=None):
        tok = load_tokenizer(str(path))
        data = data_lib.build_datasets(dcfg, tok, "paired")
        chunks = [collate(c, tok.pad_token_id, "paired") for c in batches(data.train + data.eval, 8, False, 0, True)]
        weights = weights_digest(load_model(str(path), "float32"))
        return _cache_key(weights, chunks, truncation or {"max_length": 128, "max_prompt_length": 64}, "float32")

    base = key(resolve_model_path("tiny"))
    assert key(same) == base
    assert key(other) != base
    assert key(same, {"max_length": 128, "max_prompt_length": 32}) != base


RACE_WORKER = textwrap.dedent("""
    import json, sys
    from prefopt import data as data_lib
    from prefopt.data.collate import collate
    from prefopt.models import load_model, load_tokenizer
    from prefopt.reference import build_precomputed
    from prefopt.trainer.batching import batches
    from tests.conftest import compose

    cfg = compose(["model=tiny"])
    tokenizer = load_tokenizer("tiny")
    rows = data_lib.build_datasets(cfg.dataset, tokenizer, "paired").train[:24]
    chunks = [collate(c, tokenizer.pad_token_id, "paired") for c in batches(rows, 12, False, 0, True)]
    print("ready", flush=True)
    sys.stdin.readline()  # both workers start scoring at the same moment
    ref = build_precomputed(load_model("tiny", "float32"), chunks, {"max_length": 128}, "cpu", True,
                            "float32", lambda: None, sys.argv[1])
    print(json.dumps(ref.info()), flush=True)
""")


def test_two_racing_jobs_compute_the_cache_once(tmp_path):
    cache = tmp_path / "reflogps"
    procs = [subprocess.Popen([sys.executable, "-c", RACE_WORKER, str(cache)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready"
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    infos = [json.loads(proc.communicate(timeout=300)[0].strip().splitlines()[-1]) for proc in procs]
    assert sorted(i["cache"] for i in infos) == ["hit", "miss"]
    assert infos[0]["key"] == infos[1]["key"]
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == [f"{infos[0]['key']}.pt"]


def test_reference_none(tmp_path):
    from prefopt.reference import ReferenceConfigError, build_reference
    from tests.conftest import compose

    run_cli(TINY + ["loss=sft", "reference=none", "dataset.max_train_rows=16"], tmp_path / "sft")
    assert read_summary(tmp_path / "sft")["reference"]["kind"] == "none"
    cfg = compose(["model=tiny", "reference=none"])
    with pytest.raises(ReferenceConfigError, match="reference=none, but loss dpo needs a reference model"):
        build_reference(cfg.reference, cfg.model, None, True, ["dpo"], "cpu")


@pytest.fixture(scope="module")
def tiny_batch():
    from prefopt import data as data_lib
    from prefopt.data.collate import collate
    from prefopt.models import load_tokenizer
    from tests.conftest import compose

    tokenizer = load_tokenizer("tiny")
    rows = data_lib.build_datasets(compose(["model=tiny"]).dataset, tokenizer, "paired").train
    return collate(rows[:2], tokenizer.pad_token_id, "paired")


def test_adapter_off_holds_one_copy_of_the_base(tiny_batch):
    from prefopt.lora import wrap_policy
    from prefopt.models import load_model
    from prefopt.reference import build_reference
    from prefopt.scoring.logps import SequenceScorer
    from tests.conftest import compose

    cfg = compose(["model=tiny", "lora=default"])
    base = load_model("tiny", "float32")
    base_storages = {p.untyped_storage().data_ptr() for p in base.parameters()}
    policy = wrap_policy(base, cfg.model.lora)
    reference = build_reference(cfg.reference, cfg.model, policy, True, ["dpo"], "cpu")
    # The reference scores the policy object itself; its base weights are the very tensors loaded.
    assert reference.scorer.model is policy and reference.model is None
    held = {p.untyped_storage().data_ptr() for p in policy.parameters() if not p.requires_grad}
    assert held == base_storages
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)

    with torch.no_grad():  # LoRA's B starts at zero; give the adapters an effect
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    args = (tiny_batch["input_ids"], tiny_batch["attention_mask"], tiny_batch["completion_mask"])
    policy.train()
    ref_logps = reference.logps(tiny_batch)[0]
    assert policy.training  # the reference pass restores train mode
    with torch.no_grad():
        policy_logps = SequenceScorer(policy)(*args)[0]
        fresh = SequenceScorer(load_model("tiny", "float32"))(*args)[0]
    assert torch.allclose(ref_logps, fresh, atol=1e-4)  # adapters off = the untouched base model
    assert (policy_logps - fresh).abs().max() > 1e-2


def test_sync_soft_update_formula():
    from prefopt.models import load_model
    from prefopt.reference import SyncReference

    policy = load_model("tiny", "float32")
    ref_model = load_model("tiny", "float32")
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)
    name, before = next(iter(ref_model.named_parameters()))
    before = before.detach().clone()
    target = dict(policy.named_parameters())[name].detach().clone()
    sync = SyncReference(ref_model, alpha=0.25, every=3)
    sync.after_step(1, policy)
    sync.after_step(2, policy)
    assert torch.equal(dict(ref_model.named_parameters())[name], before)  # not a sync step
    sync.after_step(3, policy)
    after = dict(ref_model.named_parameters())[name]
    assert torch.allclose(after, 0.25 * target + 0.75 * before, atol=1e-6)
    assert sync.synced_at == [3]


@pytest.mark.parametrize("kind", ["frozen", "precomputed"])
def test_reference_computes_under_the_policy_autocast(kind, tmp_path):
    """accelerate's bf16 mixed precision autocasts the policy's forward; the reference runs (or was
    precomputed) under the same autocast, so the first DPO loss is exactly log 2. With a float32 reference
    it was 0.693264 (margin -2.3e-4) on model=tiny."""
    cache = [f"reference.cache_dir={tmp_path / 'reflogps'}"] if kind == "precomputed" else []
    run_cli(TINY + ["trainer.max_steps=1", f"reference={kind}", *cache], tmp_path / "run",
            env={"ACCELERATE_MIXED_PRECISION": "bf16"})
    first = [r for r in read_metrics(tmp_path / "run") if r["split"] == "train"][0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-7)
    assert first["rewards/margins"] == 0.0
    if kind == "precomputed":
        assert read_summary(tmp_path / "run")["reference"]["cache"] == "miss"
