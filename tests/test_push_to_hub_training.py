"""Training's --push_to_hub (ms-swift / transformers flag): one upload of the last checkpoint when training ends,
through huggingface_hub's HfApi (stood in by a recorder: this machine cannot reach the Hub); what it needs is
checked before any training."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignkit.cli import main


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    calls = []

    class RecordingApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, private, exist_ok):
            calls.append(("create", repo_id, private))

        def upload_folder(self, folder_path, repo_id, commit_message):
            files = sorted(p.name for p in Path(folder_path).iterdir())
            calls.append(("upload", Path(folder_path).name, repo_id, commit_message, files))

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return calls


def train(model: str, out: Path, *flags: str) -> int:
    return main(["sft", "--model", model, "--dataset", "arith-sft#4", "--max_steps", "1", "--output_dir", str(out),
                 "--report_to", "none", *flags])


def test_the_last_checkpoint_is_uploaded_when_training_ends(tiny_model_dir, tmp_path, hub):
    assert train(tiny_model_dir, tmp_path / "out", "--push_to_hub", "true", "--hub_model_id", "me/tiny",
                 "--hub_token", "hf_x", "--hub_private_repo", "true") == 0
    assert hub[:2] == [("token", "hf_x"), ("create", "me/tiny", True)]
    (_, folder, repo, message, files) = hub[2]
    assert (folder, repo, message) == ("checkpoint-1", "me/tiny", "alignkit: checkpoint-1")
    assert "adapter_model.safetensors" in files and "args.json" in files


@pytest.mark.parametrize("flags, message", [
    (["--push_to_hub", "true"], "--push_to_hub needs --hub_model_id"),
    (["--push_to_hub", "true", "--hub_model_id", "me/x", "--hub_strategy", "every_save"], "uploads once"),
])
def test_what_the_upload_needs_is_checked_before_training(tiny_model_dir, tmp_path, hub, capsys, flags, message):
    assert train(tiny_model_dir, tmp_path / "out", *flags) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and hub == []


def test_offline_push_to_hub_stops_before_training(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert train(tiny_model_dir, tmp_path / "out", "--push_to_hub", "true", "--hub_model_id", "me/x") == 2
    assert "HF_HUB_OFFLINE=1" in capsys.readouterr().err and not (tmp_path / "out").exists()
