"""Engine flags (--deepspeed, --fsdp, ColossalChat's --plugin/--tp/--pp/--sp) and the launch variables,
resolved on CPU without deepspeed installed."""

from __future__ import annotations

import json
import re
import sys

import pytest

from alignkit.errors import AlignkitError
from alignkit.training.launch import torchrun_command
from alignkit.training.sharding import (
    DEEPSPEED_PRESETS,
    Engine,
    check_available,
    fsdp_options,
    resolve_engine,
)


def ds(name, **kw):
    return resolve_engine(deepspeed=name, fsdp=False, plugin=None, **kw)


@pytest.mark.parametrize("preset", DEEPSPEED_PRESETS)
def test_every_shipped_preset_resolves_with_the_flags_filled_in(preset):
    engine = ds(preset, batch_size=3, gradient_accumulation_steps=2, max_grad_norm=0.5, precision="bf16")
    config = engine.deepspeed_config
    assert engine.kind == "deepspeed"
    assert config["zero_optimization"]["stage"] == int(preset[4])
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"],
            config["gradient_clipping"]) == (3, 2, 0.5)
    assert config["bf16"]["enabled"] is True and config["fp16"]["enabled"] is False
    offload = config["zero_optimization"].get("offload_optimizer", {}).get("device")
    assert offload == ("cpu" if preset.endswith("offload") else None)
    assert ("offload_param" in config["zero_optimization"]) == (preset == "zero3_offload")


def test_presets_are_not_shared_between_runs():
    ds("zero2", batch_size=8)
    assert ds("zero2", batch_size=2).deepspeed_config["train_micro_batch_size_per_gpu"] == 2


@pytest.mark.parametrize(("plugin", "preset"), [("zero2", "zero2"), ("zero2_cpu", "zero2_offload"),
                                                ("gemini", "zero3"), ("gemini_auto", "zero3_offload")])
def test_colossalchat_plugins_map_onto_deepspeed(plugin, preset):
    engine = resolve_engine(deepspeed=None, fsdp=False, plugin=plugin)
    assert engine.source == f"--plugin {plugin}"
    assert engine.deepspeed_config == ds(preset).deepspeed_config


def test_ddp_and_no_flag_are_plain_data_parallel():
    assert resolve_engine(deepspeed=None, fsdp=False, plugin="ddp") is None
    assert resolve_engine(deepspeed=None, fsdp=False, plugin=None) is None


@pytest.mark.parametrize("flags", [{"plugin": "3d"}, {"tp": 2}, {"pp": 4}, {"sp": 2}])
def test_3d_parallelism_says_it_has_no_equivalent(flags):
    kwargs = {"deepspeed": None, "fsdp": False, "plugin": None, **flags}
    with pytest.raises(AlignkitError, match="no equivalent.*zero3"):
        resolve_engine(**kwargs)


def test_two_engines_at_once_is_an_error():
    with pytest.raises(AlignkitError, match="--deepspeed and --fsdp each choose the engine"):
        resolve_engine(deepspeed="zero2", fsdp=True, plugin=None)


def test_a_users_json_config_is_read_and_checked(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 4}))
    engine = ds(str(path), batch_size=4, precision="fp32")
    assert engine.deepspeed_config["zero_optimization"] == {"stage": 3}
    assert engine.deepspeed_config["bf16"] == {"enabled": False}
    with pytest.raises(AlignkitError, match="train_micro_batch_size_per_gpu is 4 in the config but "
                                            "--per_device_train_batch_size is 2"):
        ds(str(path), batch_size=2)
    path.write_text(json.dumps({"bf16": {"enabled": True}}))
    with pytest.raises(AlignkitError, match="bf16.enabled is True in the config but --dtype resolved to fp32"):
        ds(str(path))
    path.write_text("{not json")
    with pytest.raises(AlignkitError, match="not valid JSON"):
        ds(str(path))
    path.write_text(json.dumps({"zero_optimization": {"stage": 4}}))
    with pytest.raises(AlignkitError, match="stage must be 0, 1, 2 or 3, got 4"):
        ds(str(path))
    with pytest.raises(AlignkitError, match="--deepspeed zero5: neither a preset"):
        ds("zero5")


def test_fsdp_is_fsdp2_wrapping_decoder_layers():
    assert resolve_engine(deepspeed=None, fsdp=True, plugin=None) == Engine("fsdp", "--fsdp")
    options = fsdp_options()
    assert options["fsdp_version"] == 2 and options["auto_wrap_policy"] == "transformer_based_wrap"
    from accelerate.utils import FullyShardedDataParallelPlugin

    FullyShardedDataParallelPlugin(**options)  # accelerate accepts every option on CPU too


def test_engines_say_why_they_cannot_run_on_this_cpu_machine(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(AlignkitError, match="--fsdp: FSDP needs GPUs"):
        check_available(Engine("fsdp", "--fsdp"))
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # find_spec then fails as for a missing package
    with pytest.raises(AlignkitError, match="--deepspeed zero3: DeepSpeed is not installed"):
        check_available(ds("zero3"))


def test_the_cli_stops_on_an_engine_flag_before_loading_anything(capsys):
    from alignkit.cli import main

    assert main(["sft", "--plugin", "3d"]) == 2
    assert "--plugin 3d" in capsys.readouterr().err


def test_launch_variables_become_a_torchrun_command():
    command = torchrun_command(["rlhf", "--beta", "0.1"], {"NPROC_PER_NODE": "4", "NNODES": "2", "NODE_RANK": "1",
                                                           "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29600"})
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert command[3:] == ["--nproc_per_node", "4", "--nnodes", "2", "--node_rank", "1", "--master_addr", "10.0.0.1",
                           "--master_port", "29600", "-m", "alignkit", "rlhf", "--beta", "0.1"]
    # One GPU per process unless told otherwise; a process a launcher started runs as it is.
    assert torchrun_command(["sft"], {"NNODES": "2", "CUDA_VISIBLE_DEVICES": "0,1,2"})[4] == "3"
    assert torchrun_command(["sft"], {"NPROC_PER_NODE": "2", "LOCAL_RANK": "0"}) is None
    assert torchrun_command(["sft"], {}) is None


# ------------------------------------------------------------------ --fsdp values and --fsdp_config, DDP kwargs


def fsdp(value, config=None):
    return resolve_engine(deepspeed=None, fsdp=value, plugin=None, fsdp_config=config)


def test_fsdp_accepts_ms_swift_and_transformers_values_and_accelerate_takes_them(tmp_path):
    from accelerate.utils import FullyShardedDataParallelPlugin

    assert fsdp("true") == fsdp(True) == Engine("fsdp", "--fsdp")  # alignkit's FSDP2 defaults
    assert fsdp("false") is None and fsdp(None) is None
    preset = fsdp("fsdp2").fsdp_plugin_options  # ms-swift's swift/config/fsdp2.json
    assert preset["fsdp_version"] == 2 and preset["activation_checkpointing"] is True
    assert preset["cpu_ram_efficient_loading"] is True and preset["auto_wrap_policy"] == "transformer_based_wrap"
    assert preset["state_dict_type"] == "FULL_STATE_DICT"  # checkpoints stay whole safetensors
    words = fsdp("shard_grad_op auto_wrap offload").fsdp_plugin_options
    assert (words["reshard_after_forward"], words["cpu_offload"], words["auto_wrap_policy"]) == (
        False, True, "transformer_based_wrap")
    assert fsdp("full_shard").fsdp_plugin_options["auto_wrap_policy"] == "no_wrap"
    swift_file = tmp_path / "fsdp.json"  # ms-swift's FSDP file, documentation keys and all
    swift_file.write_text(json.dumps({"_description": "x", "fsdp": "full_shard auto_wrap", "fsdp_config": {
        "fsdp_version": 2, "reshard_after_forward": False, "fsdp_transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"],
        "activation_cpu_offload": False}}))
    from_file = fsdp(str(swift_file))
    assert from_file.source == f"--fsdp {swift_file}"
    assert from_file.fsdp_plugin_options["transformer_cls_names_to_wrap"] == ["LlamaDecoderLayer"]
    assert from_file.fsdp_plugin_options["reshard_after_forward"] is False
    sized = fsdp("true", '{"min_num_params": 1000, "fsdp_offload_params": true}').fsdp_plugin_options
    assert (sized["auto_wrap_policy"], sized["min_num_params"], sized["cpu_offload"]) == ("size_based_wrap", 1000, True)
    for engine in (fsdp("fsdp2"), fsdp("shard_grad_op auto_wrap offload"), from_file):
        FullyShardedDataParallelPlugin(**engine.fsdp_plugin_options)  # accelerate accepts every option on CPU


@pytest.mark.parametrize(("value", "config", "message"), [
    ("hybrid_shard auto_wrap", None, "--fsdp hybrid_shard auto_wrap: hybrid_shard not supported (hybrid sharding"),
    ("no_shard", None, "no_shard is plain data parallelism: omit --fsdp"),
    ("true", '{"activation_offload": true}', "--fsdp_config: activation_offload is not an FSDP setting"),
    ("true", '{"xla": true}', "it takes version, reshard_after_forward"),
    ("missing.json", None, "--fsdp missing.json: neither a JSON file nor a JSON object"),
    (None, '{"version": 2}', "--fsdp_config configures --fsdp, which is not set"),
])
def test_fsdp_values_alignkit_cannot_map_are_refused(value, config, message):
    with pytest.raises(AlignkitError, match=re.escape(message)):
        fsdp(value, config)


def test_the_cli_takes_a_bare_fsdp_and_its_ms_swift_values():
    from alignkit.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["sft", "--fsdp"]).fsdp == "true"
    assert parser.parse_args(["sft", "--fsdp", "full_shard auto_wrap"]).fsdp == "full_shard auto_wrap"
    assert parser.parse_args(["rlhf", "--fsdp", "fsdp2", "--fsdp_config", "c.json"]).fsdp_config == "c.json"


def test_ddp_flags_reach_accelerate_and_the_process_group(monkeypatch):
    from alignkit.config import RunArguments
    from alignkit.training import runner

    accelerator = runner.make_accelerator(runner.LoopConfig(ddp_find_unused_parameters=True))
    assert accelerator.ddp_handler.find_unused_parameters is True
    assert runner.make_accelerator(runner.LoopConfig()).ddp_handler is None  # DDP's own default
    joined = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(runner, "process_state", lambda **kwargs: joined.update(kwargs))
    runner.start_run(RunArguments(ddp_timeout=90), "sft")
    assert joined == {"timeout": 90}
    from accelerate import PartialState

    from alignkit.training.distributed import process_state

    monkeypatch.setattr(PartialState, "__init__", lambda self, cpu=False, **kw: joined.update(kw))
    process_state(timeout=90)
    from datetime import timedelta

    assert joined["timeout"] == timedelta(seconds=90)  # what torch.distributed.init_process_group receives
