"""Uploading a model directory to the Hugging Face Hub (export --push_to_hub, training --push_to_hub)."""

from __future__ import annotations

import logging
from pathlib import Path

from alignkit.errors import AlignkitError

logger = logging.getLogger("alignkit")


def push_to_hub(directory: Path, repo_id: str, *, token: str | None, private: bool, commit_message: str) -> str:
    """Upload ``directory`` to the Hugging Face Hub repository ``repo_id`` (created if missing). Returns its URL."""
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        raise AlignkitError("--push_to_hub: the Hugging Face Hub is switched off here (HF_HUB_OFFLINE=1); the "
                            f"files are in {directory}: push it later with `hf upload {repo_id} {directory}`")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(directory), repo_id=repo_id, commit_message=commit_message)
    except Exception as error:  # offline, no token, no rights: each is its own huggingface_hub/requests error
        raise AlignkitError(f"--push_to_hub {repo_id}: the upload failed ({type(error).__name__}: {error}); the "
                            f"files are in {directory}") from error
    url = f"https://huggingface.co/{repo_id}"
    logger.info("Pushed %s to %s", directory, url)
    return url

