"""Safety: weights only from safetensors, torch files only with weights_only=True, no remote code unless
asked, no secrets in configs (redaction of logs and run files is in tests/test_wandb_sink.py)."""

from __future__ import annotations

import re

import pytest
import torch

from prefopt.trainer import checkpoint
from tests.conftest import CONF, ROOT, compose

SOURCES = sorted((ROOT / "prefopt").rglob("*.py"))


def test_every_torch_load_is_weights_only():
    calls = [(p.name, m.group(0)) for p in SOURCES for m in re.finditer(r"torch\.load\([^)]*\)", p.read_text())]
    assert calls, "expected the checkpoint reader to use torch.load"
    assert all("weights_only=True" in call for _, call in calls), calls
    assert not [p for p in SOURCES if re.search(r"\bpickle\.loads?\(", p.read_text())]


def test_no_code_hardwires_trust_remote_code():
    assert not [p for p in SOURCES if re.search(r"trust_remote_code\s*=\s*True", p.read_text())]
    assert compose([]).model.trust_remote_code is False
    assert all(compose([f"model={m.stem}"]).model.trust_remote_code is False for m in (CONF / "model").glob("*.yaml"))


def test_pickle_only_weights_are_refused(tmp_path):
    """A checkpoint without safetensors (pytorch_model.bin, a pickle) is not loaded."""
    from prefopt.models import ModelLoadError, load_model

    model = load_model("tiny")
    model.save_pretrained(tmp_path)
    for weights in tmp_path.glob("*.safetensors"):
        weights.unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=str(tmp_path)):
        load_model(str(tmp_path))


class Payload:
    def __reduce__(self):
        return (print, ("this ran",))


def test_tampered_checkpoint_cannot_run_code(tmp_path, capsys):
    torch.save({"state": {}, "param_groups": [], "evil": Payload()}, tmp_path / "optimizer.pt")
    with pytest.raises(checkpoint.CheckpointError, match="refusing .*optimizer.pt"):
        checkpoint._load_tensors(tmp_path / "optimizer.pt")
    assert "this ran" not in capsys.readouterr().out


def test_configs_hold_no_secrets():
    looks_secret = re.compile(r"(sk-[A-Za-z0-9]{16,}|hf_[A-Za-z0-9]{20,}|api_key:\s*[^\s#n][^\s#]{7,})")
    hits = [(p.relative_to(ROOT), m.group(0)) for p in CONF.rglob("*.yaml") for m in looks_secret.finditer(p.read_text())]
    assert hits == []
