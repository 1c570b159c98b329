"""Offline, transformers' Hub kernels are turned off before any model loads (alignkit/models/hub_kernels.py)."""

import pytest

from alignkit.cli import main
from alignkit.models.hub_kernels import keep_hub_kernels_offline_off


@pytest.mark.parametrize("name", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_turns_hub_kernels_off(name):
    environ = {name: "1"}
    assert keep_hub_kernels_offline_off(environ) and environ["USE_HUB_KERNELS"] == "NO"


def test_the_users_own_choice_and_online_runs_are_left_alone():
    chosen = {"HF_HUB_OFFLINE": "1", "USE_HUB_KERNELS": "YES"}
    assert not keep_hub_kernels_offline_off(chosen) and chosen["USE_HUB_KERNELS"] == "YES"
    online = {"HF_HUB_OFFLINE": "0"}
    assert not keep_hub_kernels_offline_off(online) and "USE_HUB_KERNELS" not in online


def test_every_command_sets_it_before_loading(monkeypatch, tiny_model_dir, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("USE_HUB_KERNELS", raising=False)
    seen = {}

    def dispatch(command, values):
        import os

        seen["value"] = os.environ.get("USE_HUB_KERNELS")
        return 0

    monkeypatch.setattr("alignkit.cli.dispatch", dispatch)
    assert main(["infer", "--model", tiny_model_dir]) == 0
    assert seen["value"] == "NO"
