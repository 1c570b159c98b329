"""--fsdp_config activation_cpu_offload (ms-swift's ActivationCpuOffloadCallBack): the key reaches the runner, whose
FSDP units but the last save their activations to CPU memory through saved-tensor hooks, with the same gradients.
FSDP2 runs here on CPU, one process in a gloo group."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import torch.distributed as dist
from conftest import build_tiny_tokenizer

from alignkit.training import activation_offload
from alignkit.training.activation_offload import CpuActivations, fsdp_units, offload_activations
from alignkit.training.runner import LoopConfig, Runner, RunStart, loop_config_for
from alignkit.training.sharding import Engine, resolve_engine

# examples/ascend/activation_cpu_offload/fsdp2.json, its documentation keys left out.
SWIFT_FSDP2 = {"fsdp": "full_shard auto_wrap", "fsdp_config": {
    "fsdp_version": 2, "reshard_after_forward": True, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
    "cpu_ram_efficient_loading": True, "state_dict_type": "SHARDED_STATE_DICT", "activation_checkpointing": False,
    "activation_cpu_offload": True}}


def engine_for(tmp_path, **changes) -> Engine:
    config = {**SWIFT_FSDP2["fsdp_config"], **changes}
    path = tmp_path / "fsdp2.json"
    path.write_text(json.dumps({**SWIFT_FSDP2, "fsdp_config": config}))
    return resolve_engine(deepspeed=None, fsdp=str(path), plugin=None)


def test_the_key_asks_for_the_hooks_or_for_accelerates_checkpoint_offload(tmp_path, monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin

    engine = engine_for(tmp_path)
    assert engine.activation_cpu_offload and "activation_cpu_offload" not in engine.fsdp_plugin_options
    FullyShardedDataParallelPlugin(**engine.fsdp_plugin_options)
    # With FSDP's activation checkpointing only each layer's input is saved: accelerate offloads that one.
    checkpointed = engine_for(tmp_path, activation_checkpointing=True)
    assert not checkpointed.activation_cpu_offload
    assert checkpointed.fsdp_plugin_options["activation_checkpointing_offload"] is True
    FullyShardedDataParallelPlugin(**checkpointed.fsdp_plugin_options)
    assert not engine_for(tmp_path, activation_cpu_offload=False).activation_cpu_offload
    # The run's loop settings carry it to the runner (the plugin itself needs GPUs, so it is left out here).
    from alignkit.config.run import RunArguments

    monkeypatch.setattr(Engine, "accelerator_kwargs", lambda self: {})
    config = loop_config_for(RunArguments(), RunStart(None, "fp32", engine, "sft"))
    assert config.activation_cpu_offload


@pytest.fixture
def gloo(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def sharded_model(layers: int = 4):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                         initializer_range=0.3))
    mesh = init_device_mesh("cpu", (1,))
    for layer in model.model.layers:  # what accelerate's transformer_based_wrap shards
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def loss_and_grads(model) -> tuple[torch.Tensor, list[torch.Tensor]]:
    ids = torch.tensor([[5, 9, 14, 3, 7, 21, 40, 2], [8, 2, 30, 11, 6, 6, 1, 9]])
    model.zero_grad()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), [p.grad.full_tensor().clone() for p in model.parameters()]


def saved_per_layer(model) -> int:
    """Tensors one decoder layer saves for backward that are not its own parameters (counted by hand)."""
    layer, own, seen = model.model.layers[0], set(), []
    hooks = torch.autograd.graph.saved_tensors_hooks(lambda t: seen.append(t.untyped_storage().data_ptr()) or t,
                                                     lambda t: t)

    def enter(module, args):  # FSDP has gathered the layer's parameters by now
        own.update(p.untyped_storage().data_ptr() for p in module.parameters())
        hooks.__enter__()

    handles = (layer.register_forward_pre_hook(enter),
               layer.register_forward_hook(lambda m, a, o: hooks.__exit__(None, None, None)))
    loss_and_grads(model)
    for handle in handles:
        handle.remove()
    return sum(ptr not in own for ptr in seen)


def test_the_runner_offloads_every_unit_but_the_last_with_the_same_gradients(gloo, tmp_path, monkeypatch):
    model = sharded_model(layers=4)
    assert fsdp_units(model) == list(model.model.layers)  # the embeddings and the root are not units
    per_layer = saved_per_layer(model)
    assert per_layer > 0
    plain_loss, plain_grads = loss_and_grads(model)

    handlers = []
    monkeypatch.setattr(activation_offload, "offload_activations",
                        lambda m: handlers.append(offload_activations(m)) or handlers[-1])
    runner = Runner(LoopConfig(activation_cpu_offload=True, optim="adamw_torch"), tmp_path,
                    args_for_checkpoint={}, tokenizer=None)
    trained = runner.prepare(model, optimizer_steps=1)
    (handler,) = handlers
    loss, grads = loss_and_grads(trained)
    # Layers 0-2 sent what they saved to CPU and got it back; layer 3, the last, kept its own.
    assert handler.offloaded == 3 * per_layer
    assert torch.equal(loss, plain_loss)
    assert all(torch.equal(a, b) for a, b in zip(grads, plain_grads, strict=True))
    with torch.no_grad():  # evaluation saves nothing for backward
        trained(input_ids=torch.tensor([[1, 2, 3]]))
    assert handler.offloaded == 3 * per_layer


def test_a_saved_tensor_comes_back_as_an_equal_copy_from_cpu_memory():
    handler = CpuActivations()
    tensor = torch.randn(3, 4)
    packed = handler._pack(tensor)
    device, copy = packed
    assert copy.untyped_storage().data_ptr() != tensor.untyped_storage().data_ptr() and handler.offloaded == 1
    assert torch.equal(CpuActivations._unpack(packed), tensor) and device == tensor.device


def test_fewer_than_three_units_offload_nothing_and_say_so(gloo, caplog):
    with caplog.at_level(logging.WARNING, logger="alignkit"):
        assert offload_activations(sharded_model(layers=2)) is None
    assert "the model has 2 FSDP unit(s); offloading needs at least 3 (as in ms-swift)" in caplog.text
