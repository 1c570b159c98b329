"""``--fsdp_config '{"activation_cpu_offload": true}'``: the tensors a training forward saves for backward go to CPU
memory and come back when backward needs them, as ms-swift's ``ActivationCpuOffloadCallBack``
(swift/callbacks/activation_cpu_offload.py) does under FSDP:

- the units are the FSDP-wrapped modules below the root (the decoder layers under ``transformer_based_wrap``),
  embeddings left out; fewer than 3 units: nothing is offloaded (ms-swift's rule), and the log says so;
- every unit but the last offloads what its forward saves (the last one's activations are the first backward
  needs, so they stay on the device), except the unit's own parameters, which are resident anyway;
- with FSDP's ``activation_checkpointing`` as well, only each checkpointed layer's input is saved: accelerate's
  ``activation_checkpointing_offload`` offloads it (``alignkit.training.sharding``), and nothing here runs.

ms-swift overlaps the copies with compute on side streams (a double buffer); here they are issued on the compute
stream, non-blocking into pinned memory (what ``torch.autograd.graph.save_on_cpu`` does), so the numbers are the
same and only the overlap differs.
"""

from __future__ import annotations

import logging

import torch
from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

logger = logging.getLogger("alignkit")

MIN_UNITS = 3  # ms-swift's enable_activation_offloading: fewer FSDP units are not worth offloading


def fsdp_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The FSDP-wrapped modules below ``model``'s root, outermost first and not looking inside one, without the
    embeddings (whose activations are small): ms-swift's ``get_layers``."""
    units = []

    def walk(module: torch.nn.Module) -> None:
        for child in module.children():
            if not isinstance(child, FSDPModule | FullyShardedDataParallel):
                walk(child)
                continue
            inner = child._fsdp_wrapped_module if isinstance(child, FullyShardedDataParallel) else child
            if not isinstance(inner, torch.nn.Embedding):
                units.append(inner)

    walk(model)
    return units


class CpuActivations:
    """Saved-tensor hooks active during one module's forward: each saved tensor that is not one of the module's
    parameters is copied to (pinned) CPU memory and copied back to its device when backward unpacks it.
    ``offloaded`` counts the tensors sent to CPU."""

    def __init__(self):
        self.offloaded = 0
        self._active = False  # units do not nest, so one forward at a time has the hooks
        self._parameters: set[int] = set()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def enter(self, module: torch.nn.Module, args) -> None:
        if module.training and torch.is_grad_enabled():  # evaluation and rollouts save nothing for backward
            # Storage pointers of the parameters as the forward sees them (FSDP gathers them before this hook).
            self._parameters = {p.untyped_storage().data_ptr() for p in module.parameters()}
            self._hooks.__enter__()
            self._active = True

    def exit(self, module: torch.nn.Module, args, output) -> None:
        if self._active:
            self._active = False
            self._hooks.__exit__(None, None, None)

    def _pack(self, tensor: torch.Tensor):
        if tensor.untyped_storage().data_ptr() in self._parameters:
            return tensor
        copy = torch.empty(tensor.size(), dtype=tensor.dtype, layout=tensor.layout, device="cpu",
                           pin_memory=tensor.device.type == "cuda")
        copy.copy_(tensor, non_blocking=tensor.device.type == "cuda")
        self.offloaded += 1
        return tensor.device, copy

    @staticmethod
    def _unpack(packed):
        if isinstance(packed, torch.Tensor):
            return packed
        device, copy = packed
        return copy.to(device, non_blocking=copy.is_pinned())


def offload_activations(model: torch.nn.Module) -> CpuActivations | None:
    """Offload the saved activations of ``model``'s FSDP units but the last (module docstring). Returns the
    hooks' handler, or None where there are too few units."""
    units = fsdp_units(model)
    if len(units) < MIN_UNITS:
        logger.warning("--fsdp_config activation_cpu_offload: the model has %d FSDP unit(s); offloading needs at "
                       "least %d (as in ms-swift), so activations stay on the device", len(units), MIN_UNITS)
        return None
    handler = CpuActivations()
    for unit in units[:-1]:
        unit.register_forward_pre_hook(handler.enter)
        unit.register_forward_hook(handler.exit, always_call=True)
    logger.info("--fsdp_config activation_cpu_offload: tensors saved for backward in %d of %d FSDP units go to "
                "CPU memory (the last unit's stay on the device)", len(units) - 1, len(units))
    return handler
