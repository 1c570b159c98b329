"""``--optimizer muonclip``: ms-swift's MuonClip (swift/optimizers/muonclip.py), Muon with QK-Clip after Kimi K2
(https://arxiv.org/abs/2507.20534, Sec. 2.1), written out as ms-swift runs it:

- Every trainable parameter has a momentum buffer ``buf = momentum·buf + grad``. Matrices that are neither the
  embeddings nor the LM head step along Newton–Schulz-orthogonalised ``buf`` (5 quintic iterations in bf16)
  scaled by ``rms_scale_factor·sqrt(max(n, m))``; every other parameter steps along ``buf`` (momentum SGD).
  Weight decay ``p ← p·(1 − lr·wd)`` applies to all of them (optim_args ``weight_decay``, else --weight_decay).
- QK-Clip: the largest attention logit of the step's forwards, S_max, is one scalar for the whole model (not
  per head, as the paper has it): the exact maximum of the scores entering softmax under eager attention, the
  bound ``max‖q‖·max‖k‖·scale`` under SDPA. When S_max > τ (``qk_clip_tau``, default 100), every trainable
  weight whose name holds ``q_proj`` or ``k_proj`` is multiplied by sqrt(τ / S_max), and so is its update, so
  that q·k shrinks by τ / S_max.

With LoRA the trainable q/k weights are the adapters' ``lora_A`` and ``lora_B`` of q_proj and k_proj: both are
scaled (the adapter's q/k delta by τ / S_max), the frozen base weights never, as in ms-swift.

S_max is read from the trained model's own training forwards (a ``TorchFunctionMode`` entered around them, seeing
``scaled_dot_product_attention`` and 4-D ``softmax``), where ms-swift patches torch's functions process-wide and so
also counts the no-grad forwards between two steps (evaluation, a reference model, rollouts); those are left out
here, so that S_max is the step's own and a resumed run clips as the uninterrupted one. Attention implementations
that hide the scores (flash attention, flex attention) leave nothing to clip, and the log says so once.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from alignkit.errors import AlignkitError

logger = logging.getLogger("alignkit")

# ms-swift's MuonClipOptimizerCallback: optim_args keys and their defaults (weight_decay: --weight_decay).
MUONCLIP_DEFAULTS = {"momentum": 0.95, "nesterov": False, "newton_schulz_steps": 5, "qk_clip_tau": 100.0,
                     "qk_clip_enabled": True, "rms_scale_factor": 0.2}
MUONCLIP_KEYS = ("weight_decay", *MUONCLIP_DEFAULTS)
EMBEDDING_NAMES = ("embed_tokens", "lm_head", "wte", "embed_in", "embed_out")
SOFTMAXES = (F.softmax, torch.softmax, torch.Tensor.softmax)


def muonclip_optim_args(text: str | None) -> tuple[dict, list[str]]:
    """``--optim_args`` as ms-swift's muonclip reads it: ``key=value`` pairs, ``true``/``false`` → bool, numbers →
    int or float. Returns (the keys it reads, the keys it ignores: ms-swift reads no others)."""
    values, ignored = {}, []
    for item in (text or "").replace(" ", "").split(","):
        key, sep, value = item.partition("=")
        if not key or not sep:
            continue
        if value.lower() in ("true", "false"):
            parsed = value.lower() == "true"
        else:
            try:
                number = float(value)
                parsed = int(number) if number.is_integer() else number
            except ValueError:
                parsed = value
        (values.__setitem__(key, parsed) if key in MUONCLIP_KEYS else ignored.append(key))
    return values, ignored


def warn_ignored_optim_args(text: str | None) -> None:
    _, ignored = muonclip_optim_args(text)
    if ignored:
        hint = " (the QK-Clip threshold is qk_clip_tau, default 100)" if "qk_clip_threshold" in ignored else ""
        logger.warning("--optimizer muonclip --optim_args: %s ignored, as ms-swift's muonclip ignores them; it reads "
                       "%s%s", ", ".join(ignored), ", ".join(MUONCLIP_KEYS), hint)


class AttentionLogitMax(TorchFunctionMode):
    """While active, keeps the largest attention logit seen (a 0-dim tensor on the device: no host sync per
    layer). SDPA hides its scores, so it records ms-swift's bound max‖q‖·max‖k‖·scale (‖·‖ over head_dim)."""

    def __init__(self):
        super().__init__()
        self.value: torch.Tensor | None = None
        self._active = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            query, key = args[0], args[1] if len(args) > 1 else kwargs["key"]
            scale = args[6] if len(args) > 6 else kwargs.get("scale")  # (query, key, value, mask, p, causal, scale)
            scale = scale if scale is not None else 1.0 / math.sqrt(query.shape[-1])
            self._update(query.detach().float().norm(dim=-1).max() * key.detach().float().norm(dim=-1).max() * scale)
        elif func in SOFTMAXES:
            scores = args[0]
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            if isinstance(scores, torch.Tensor) and scores.dim() == 4 and dim in (-1, 3):
                self._update(scores.detach().float().amax())
        return func(*args, **kwargs)

    def _update(self, value: torch.Tensor) -> None:
        self.value = value if self.value is None else torch.maximum(self.value, value.to(self.value.device))

    def attach(self, model: torch.nn.Module) -> None:
        """Active during every forward of ``model`` (its root module's hooks; always_call: left on an error too)."""
        model.register_forward_pre_hook(self._enter)
        model.register_forward_hook(self._exit, always_call=True)

    def _enter(self, module, args) -> None:
        # Training forwards only: evaluation, reference and rollout forwards (no grad) leave the step's S_max alone.
        if torch.is_grad_enabled() and not self._active:
            self._active = True
            self.__enter__()  # (a pre-hook's return value would replace the forward's arguments: none here)

    def _exit(self, module, args, output) -> None:
        if self._active:
            self._active = False
            self.__exit__(None, None, None)

    def consume(self) -> float | None:
        """The step's largest logit over all processes (None if no forward showed one), and reset."""
        value, self.value = self.value, None
        if dist.is_available() and dist.is_initialized():
            local = torch.tensor(-math.inf) if value is None else value.detach().float().cpu()
            device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            local = local.to(device)
            dist.all_reduce(local, op=dist.ReduceOp.MAX)
            return None if local.item() == -math.inf else local.item()
        return None if value is None else value.item()


class MuonClip(torch.optim.Optimizer):
    """ms-swift's MuonClip step (module docstring); groups carry ``apply_muon`` and ``is_qk``."""

    def __init__(self, groups: list[dict], logits: AttentionLogitMax, *, lr: float, momentum: float,
                 weight_decay: float, nesterov: bool, newton_schulz_steps: int, qk_clip_tau: float,
                 qk_clip_enabled: bool, rms_scale_factor: float):
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "nesterov": nesterov,
                    "newton_schulz_steps": newton_schulz_steps, "qk_clip_tau": qk_clip_tau,
                    "qk_clip_enabled": qk_clip_enabled, "rms_scale_factor": rms_scale_factor, "apply_muon": True,
                    "is_qk": False}
        super().__init__(groups, defaults)
        self.logits = logits
        self._warned_no_logits = False

    @staticmethod
    @torch.no_grad()
    def newton_schulz(G: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
        """Moonlight's quintic Newton–Schulz iteration, in bf16 (ms-swift's constants)."""
        a, b, c = (3.4445, -4.7750, 2.0315)
        X = G.bfloat16() / (G.norm() + eps)
        transposed = G.size(0) > G.size(1)
        if transposed:
            X = X.T
        for _ in range(steps):
            A = X @ X.T
            B = b * A + c * A @ A
            X = a * X + B @ X
        return (X.T if transposed else X).to(G.dtype)

    @torch.no_grad()
    def step(self, closure=None, max_logits: float | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if max_logits is None:
            max_logits = self.logits.consume()
        clips_qk = any(g["is_qk"] and g["qk_clip_enabled"] for g in self.param_groups)
        if max_logits is None and clips_qk and not self._warned_no_logits:
            self._warned_no_logits = True
            logger.warning("--optimizer muonclip: no attention scores were seen in this step's forwards (the "
                           "attention implementation hides them, e.g. flash attention); QK-Clip does nothing "
                           "without them (--attn_impl sdpa or eager shows them)")
        for group in self.param_groups:
            lr, momentum, weight_decay = float(group["lr"]), float(group["momentum"]), float(group["weight_decay"])
            tau = float(group["qk_clip_tau"])
            clip = (group["qk_clip_enabled"] and group["is_qk"] and max_logits is not None and max_logits > tau)
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad, state = p.grad, self.state[p]
                if len(state) == 0:
                    state["momentum_buffer"] = torch.zeros_like(p)
                    state["step"] = 0
                buf = state["momentum_buffer"]
                state["step"] += 1
                buf.mul_(momentum).add_(grad)
                if group["apply_muon"] and p.ndim >= 2:
                    rms_scale = math.sqrt(max(p.shape[0], p.shape[1])) * float(group["rms_scale_factor"])
                    update = self.newton_schulz(buf, steps=int(group["newton_schulz_steps"])) * rms_scale
                else:
                    update = buf
                if group["nesterov"]:
                    update = grad.add(update, alpha=momentum)
                if weight_decay != 0:
                    p.mul_(1 - lr * weight_decay)
                if clip:  # QK-Clip: q·k scales by tau / S_max
                    gamma_sqrt = math.sqrt(tau / max_logits)
                    p.mul_(gamma_sqrt)
                    update = update * gamma_sqrt
                p.add_(update, alpha=-lr)
        return loss


def make_muonclip(model: torch.nn.Module, config) -> MuonClip:
    """ms-swift's grouping: q/k projection matrices (clipped), other hidden matrices (Muon), the rest (momentum
    SGD: embeddings, LM head, vectors), all at --learning_rate."""
    if config.learning_rate_of is not None:
        raise AlignkitError("--optimizer muonclip trains every parameter at --learning_rate, as ms-swift's; "
                            "per-parameter rates (--lorap_lr_ratio, --vit_lr, --aligner_lr) do not apply: drop them "
                            "or use --optimizer muon")
    options, _ = muonclip_optim_args(config.optim_args)  # ignored keys were named by warn_ignored_optim_args
    settings = {**MUONCLIP_DEFAULTS, "weight_decay": config.weight_decay, **options}
    qk, hidden, rest = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim >= 2 and not any(part in name for part in EMBEDDING_NAMES):
            (qk if "q_proj" in name.lower() or "k_proj" in name.lower() else hidden).append((name, param))
        else:
            rest.append((name, param))
    if any("lora_" in name for name, _ in qk):
        logger.info("--optimizer muonclip with LoRA: QK-Clip rescales the trainable q_proj/k_proj adapter matrices "
                    "(lora_A and lora_B), as ms-swift does; the frozen base q/k weights are not clipped")
    groups = [{"params": [p for _, p in params], "apply_muon": muon, "is_qk": is_qk}
              for params, muon, is_qk in ((qk, True, True), (hidden, True, False), (rest, False, False)) if params]
    logits = AttentionLogitMax()
    logits.attach(model)
    return MuonClip(groups, logits, lr=config.learning_rate, momentum=float(settings["momentum"]),
                    weight_decay=float(settings["weight_decay"]), nesterov=bool(settings["nesterov"]),
                    newton_schulz_steps=int(settings["newton_schulz_steps"]),
                    qk_clip_tau=float(settings["qk_clip_tau"]), qk_clip_enabled=bool(settings["qk_clip_enabled"]),
                    rms_scale_factor=float(settings["rms_scale_factor"]))
