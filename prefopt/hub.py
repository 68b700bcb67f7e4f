"""Push a finished run's model to the Hugging Face Hub: ``hub.push=true hub.repo_id=user/name``.

``check_hub`` runs with the config checks, before any model loads, so a push that cannot happen (no repo id,
no token, ``HF_HUB_OFFLINE=1``, no saved model) stops the run in its first second rather than after hours of
training. ``push_model`` runs on rank 0 after ``<run_dir>/model`` holds the weights, the tokenizer and the
model card (``prefopt/model_card.py``): ``HfApi.create_repo`` (kept if it exists) then ``upload_folder``.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from prefopt.errors import ConfigError, PrefoptError

log = logging.getLogger(__name__)

# The Hub's repo names: letters, digits, '-', '_', '.'; a namespace (user or org) is required to push.
# <user or org>/<name>, or a bare <name> (the token's own namespace, as HF's hub_model_id allows).
REPO_ID = re.compile(r"([A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}")


class HubPushError(PrefoptError):
    """The upload after training failed; the run directory is complete."""


def token(hcfg) -> str | None:
    """The token in ``$<hub.token_env>``, else the one ``hf auth login`` saved (or ``HF_TOKEN``)."""
    from huggingface_hub import get_token

    return os.environ.get(hcfg.token_env) or get_token()


def check_hub(hcfg, save_model: bool) -> None:
    """One ConfigError naming the key when ``hub.push=true`` cannot push; nothing when it is off."""
    if not hcfg.push:
        return
    if not hcfg.repo_id:
        raise ConfigError("hub.repo_id: required with hub.push=true (e.g. hub.repo_id=your-name/dpo-smollm2)")
    if not REPO_ID.fullmatch(hcfg.repo_id):
        raise ConfigError(f"hub.repo_id={hcfg.repo_id!r}: must be <user or org>/<name> or <name> (letters, digits, - _ .)")
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ConfigError("hub.push=true, but HF_HUB_OFFLINE is set: this run could not push its model; unset "
                          "HF_HUB_OFFLINE or set hub.push=false")
    if not save_model:
        raise ConfigError("hub.push=true needs trainer.save_model=true (the saved model directory is what is pushed)")
    if not token(hcfg):
        raise ConfigError(f"hub.push=true, but there is no Hub token: set ${hcfg.token_env} (hub.token_env names "
                          "the variable) or run `hf auth login`")


def push_model(hcfg, model_dir: Path, run_name: str) -> str:
    """Create ``hub.repo_id`` if needed and upload ``model_dir`` (weights, tokenizer, README.md model card);
    returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token(hcfg))
    try:
        repo = api.create_repo(hcfg.repo_id, private=hcfg.private, repo_type="model", exist_ok=True)
        commit = api.upload_folder(folder_path=str(model_dir), repo_id=hcfg.repo_id, repo_type="model",
                                   commit_message=f"prefopt run {run_name}")
    except Exception as err:  # network, permission, quota: the run itself is complete on disk
        raise HubPushError(f"hub.repo_id={hcfg.repo_id}: the push failed ({type(err).__name__}: {err}); the run "
                           f"is complete in {model_dir.parent}; push it later with `hf upload {hcfg.repo_id} "
                           f"{model_dir} .`") from None
    url = getattr(commit, "commit_url", None) or str(repo)
    log.info("pushed %s to %s", model_dir, url)
    return url
