"""hub.push=true: a push that cannot happen (no repo id, offline, no token, no saved model) is one config error
naming the key before any model loads; a tiny CLI run pushes its model directory (weights, tokenizer and the
README.md model card) through HfApi, here a fake that records the calls (nothing can reach the Hub here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefopt.errors import ConfigError
from prefopt.hub import HubPushError, check_hub, push_model
from tests.conftest import ROOT, TINY, compose, run_cli

FAKE_TOKEN = "hf_fake_token_for_tests_0123456789"


def hub_cfg(*overrides):
    return compose(["model=tiny", *overrides]).hub


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "MY_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no token saved by `hf auth login` either
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)  # imported already: its paths are fixed


@pytest.mark.parametrize(("overrides", "env", "message"), [
    (["hub.push=true"], {"HF_TOKEN": FAKE_TOKEN}, "hub.repo_id: required with hub.push=true"),
    (["hub.push=true", "hub.repo_id=me/two/slashes"], {"HF_TOKEN": FAKE_TOKEN}, "hub.repo_id='me/two/slashes': must be"),
    (["hub.push=true", "hub.repo_id=me/run"], {"HF_TOKEN": FAKE_TOKEN, "HF_HUB_OFFLINE": "1"},
     "hub.push=true, but HF_HUB_OFFLINE is set"),
    (["hub.push=true", "hub.repo_id=me/run"], {}, r"hub.push=true, but there is no Hub token: set \$HF_TOKEN"),
    (["hub.push=true", "hub.repo_id=me/run", "hub.token_env=MY_HUB_TOKEN"], {},
     r"no Hub token: set \$MY_HUB_TOKEN"),
    (["hub.push=true", "hub.repo_id=me/run", "trainer.save_model=false"], {"HF_TOKEN": FAKE_TOKEN},
     "hub.push=true needs trainer.save_model=true"),
])
def test_a_push_that_cannot_happen_is_one_config_error(no_token, monkeypatch, overrides, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cfg = compose(["model=tiny", *overrides])
    with pytest.raises(ConfigError, match=message):
        check_hub(cfg.hub, cfg.trainer.save_model)


def test_off_by_default_and_token_env_is_read(no_token, monkeypatch):
    check_hub(hub_cfg(), True)  # hub.push=false: nothing is checked
    monkeypatch.setenv("MY_HUB_TOKEN", FAKE_TOKEN)
    check_hub(hub_cfg("hub.push=true", "hub.repo_id=me/run", "hub.token_env=MY_HUB_TOKEN"), True)


def test_offline_push_stops_before_the_model_loads(no_token, tmp_path):
    proc = run_cli([*TINY, "trainer.save_model=true", "hub.push=true", "hub.repo_id=me/run"], tmp_path / "run",
                   check=False, env={"HF_TOKEN": FAKE_TOKEN, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "prefopt: hub.push=true, but HF_HUB_OFFLINE is set" in proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing trained
    assert "data:" not in (tmp_path / "run" / "train.log").read_text()  # no data or model was loaded


class FakeApi:
    """Records create_repo/upload_folder and what the uploaded folder held at upload time."""

    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs, self.token))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, folder_path, repo_id, **kwargs):
        files = sorted(p.name for p in Path(folder_path).iterdir())
        card = (Path(folder_path) / "README.md").read_text()
        self.calls.append(("upload_folder", repo_id, kwargs, files, card))
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()


def test_push_model_creates_the_repo_and_uploads_the_folder(no_token, monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    FakeApi.calls = []
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "README.md").write_text("card")
    url = push_model(hub_cfg("hub.push=true", "hub.repo_id=me/run", "hub.private=true"), tmp_path / "model", "r1")
    assert url == "https://huggingface.co/me/run/commit/abc"
    (create, upload) = FakeApi.calls
    assert create == ("create_repo", "me/run", {"private": True, "repo_type": "model", "exist_ok": True}, FAKE_TOKEN)
    assert upload[1] == "me/run" and upload[2]["commit_message"] == "prefopt run r1" and upload[3] == ["README.md"]


def test_a_failed_upload_says_how_to_push_later(no_token, monkeypatch, tmp_path):
    import huggingface_hub

    class Down(FakeApi):
        def upload_folder(self, *a, **k):
            raise ConnectionError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "HfApi", Down)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    with pytest.raises(HubPushError, match=r"the push failed \(ConnectionError: network is unreachable\).*hf upload me/run"):
        push_model(hub_cfg("hub.push=true", "hub.repo_id=me/run"), tmp_path / "model", "r1")


# The CLI run below imports this module's FakeApi in its subprocess through this site hook.
SITECUSTOMIZE = """
import huggingface_hub, json, os
from pathlib import Path

class FakeApi:
    def __init__(self, token=None):
        self.token = token
    def create_repo(self, repo_id, **kwargs):
        return f"https://huggingface.co/{repo_id}"
    def upload_folder(self, folder_path, repo_id, **kwargs):
        files = sorted(p.name for p in Path(folder_path).iterdir())
        record = {"repo_id": repo_id, "token": self.token, "files": files, **kwargs,
                  "card": (Path(folder_path) / "README.md").read_text()}
        Path(os.environ["FAKE_HUB_RECORD"]).write_text(json.dumps(record))
        return type("Commit", (), {"commit_url": "https://huggingface.co/x/commit/1"})()

huggingface_hub.HfApi = FakeApi
"""


@pytest.mark.slow
def test_cli_run_pushes_model_and_card(no_token, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    record = tmp_path / "pushed.json"
    env = {"HF_TOKEN": FAKE_TOKEN, "FAKE_HUB_RECORD": str(record),
           "PYTHONPATH": f"{site}:{ROOT}"}
    run_cli([*TINY, "trainer.save_model=true", "hub.push=true", "hub.repo_id=me/tiny-dpo"], tmp_path / "run", env=env)
    pushed = json.loads(record.read_text())
    assert pushed["repo_id"] == "me/tiny-dpo" and pushed["token"] == FAKE_TOKEN
    assert {"README.md", "config.json", "model.safetensors"} <= set(pushed["files"])
    assert pushed["card"] == (tmp_path / "run" / "model" / "README.md").read_text()
    assert pushed["card"].startswith("---\n")  # the model card's front matter
