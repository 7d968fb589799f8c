"""Uploading a draft to a Hugging Face Hub model repository (``huggingface_hub``, which transformers brings)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dspark_trainer.publish.destination import HubDestination


def upload_to_hub(draft_dir: Path, destination: HubDestination, *, token: str | None, api: Any = None,
                  commit_message: str = "Upload DSpark draft") -> str:
    """Create the repository if needed (private) and upload the draft's files in one commit; returns the
    commit's URL. ``api`` is an ``HfApi`` (made from ``token`` when not given; tests pass a fake)."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(destination.repo_id, repo_type="model", private=True, exist_ok=True)
    if destination.revision != "main":
        api.create_branch(destination.repo_id, branch=destination.revision, repo_type="model", exist_ok=True)
    info = api.upload_folder(repo_id=destination.repo_id, folder_path=str(draft_dir), repo_type="model",
                             revision=destination.revision, commit_message=commit_message)
    return str(getattr(info, "commit_url", "") or info)
