"""logger=wandb without an API key runs offline and never blocks; the run files it writes hold the same
metrics as metrics.jsonl, and no secret from the environment.

Subprocess and whole-run cases are marked slow to keep the default suite short; CI runs them in its
`pytest -m slow` step.
"""

from __future__ import annotations

import json
import struct

import pytest

from tests.conftest import TINY, read_metrics, run_cli

SECRET = "sk-test-0123456789abcdef"


def wandb_records(path):
    """Decode a .wandb file: a LevelDB-style log (7-byte header, 32 KiB blocks of chunks
    ``crc32c(4) length(2) type(1) data``; type 1 = full, 2/3/4 = first/middle/last) of protobuf Records."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    pos, block, records, pending = 7, 32768, [], b""
    while pos + 7 <= len(raw):
        room = block - pos % block
        if room < 7:  # block trailer padding
            pos += room
            continue
        length, kind = struct.unpack("<HB", raw[pos + 4:pos + 7])
        data = raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = data if kind in (1, 2) else pending + data
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("wandb")
    # No key anywhere (CI sets WANDB_MODE=offline; it is removed so that mode=auto is what decides).
    env = {"NETRC": str(run_dir / "no-netrc"), "PREFOPT_TEST_API_KEY": SECRET}
    with pytest.MonkeyPatch.context() as mp:
        for name in ("WANDB_API_KEY", "WANDB_MODE"):
            mp.delenv(name, raising=False)
        proc = run_cli(TINY + ["logger=wandb", "trainer.max_steps=3", f"+tags.note={SECRET}"], run_dir, env=env)
    return run_dir, proc


@pytest.mark.slow
def test_wandb_offline_run_files_match_metrics_jsonl(wandb_run):
    run_dir, proc = wandb_run
    assert "logging offline" in (run_dir / "train.log").read_text()
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    records = wandb_records(next(runs[0].glob("run-*.wandb")))
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    train = [r for r in read_metrics(run_dir) if r["split"] == "train"]
    logged = [h for h in history if "train/loss" in h]
    assert [h["_step"] for h in logged] == [r["step"] for r in train] == [1, 2, 3]
    for h, r in zip(logged, train, strict=True):
        assert h["train/loss"] == pytest.approx(r["loss"], abs=1e-7)
        assert h["train/rewards/margins"] == pytest.approx(r["rewards/margins"], abs=1e-7)
    assert any("eval/loss" in h for h in history)
    config_keys = {item.key or item.nested_key[0] for r in records if r.WhichOneof("record_type") == "run"
                   for item in r.run.config.update}
    assert {"beta", "loss", "optimizer", "model"} <= config_keys
    assert (run_dir / "wandb_run_id.txt").read_text().strip() in runs[0].name  # resume reuses the id


@pytest.mark.slow
def test_no_secret_in_any_run_file(wandb_run):
    run_dir, _ = wandb_run
    leaked = [p for p in run_dir.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == []
    assert "***REDACTED***" in (run_dir / "config.yaml").read_text()


def test_redact_blanks_env_secrets_and_secret_keys(monkeypatch):
    from prefopt.sinks import REDACTED, redact

    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnop")
    out = redact({"note": "token hf_abcdefghijklmnop here", "judge": {"api_key": "plain-key-value"},
                  "api_key_env": "OPENAI_API_KEY", "n": 3, "short": ["abc"]})
    assert out["note"] == f"token {REDACTED} here" and out["judge"]["api_key"] == REDACTED
    assert out["n"] == 3 and out["short"] == ["abc"]
    # The *name* of an environment variable is not a secret; but under a secret-looking key it is
    # blanked anyway, which costs nothing.
    assert out["api_key_env"] == REDACTED
