"""The trainer's side of ``alignkit rollout --infer_backend transformers`` (alignkit/commands/rollout_server.py):
generation requests and weight pushes over plain HTTP (the standard library's urllib; safetensors for weights)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterable

import torch

from alignkit.errors import AlignkitError

BACKEND = "transformers"


def server_backend(base_url: str, timeout: float) -> str | None:
    """The backend an alignkit rollout server reports at /health/, waiting up to ``timeout`` seconds for it to
    answer; None when something answers that is not one (TRL's vLLM server has no such route)."""
    deadline = time.monotonic() + max(timeout, 0)
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}/health/", timeout=10) as response:
                body = json.loads(response.read() or b"{}")
                return body.get("backend") if isinstance(body, dict) else None
        except urllib.error.HTTPError:
            return None  # a server is there, not ours
        except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
            if time.monotonic() >= deadline:
                raise AlignkitError(f"no rollout server answered at {base_url} within --vllm_server_timeout "
                                    f"{timeout:g} s ({error})") from None
            time.sleep(0.5)


class TransformersRolloutClient:
    """Generation and weight pushes to a transformers rollout server."""

    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")

    def _post(self, route: str, body: bytes, content_type: str) -> dict:
        request = urllib.request.Request(f"{self.base_url}{route}", data=body, method="POST",
                                         headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=None) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise AlignkitError(f"the rollout server at {self.base_url} refused {route}: "
                                f"{error.read().decode(errors='replace')[:500]}") from None

    def generate(self, prompts: list[list[int]], *, seeds: list[int] | None, greedy: bool, pad_id: int,
                 stop_token_ids: list[int], max_tokens: int, temperature: float, top_p: float, top_k: int,
                 min_p: float, repetition_penalty: float) -> tuple[list[list[int]], list[list[float]]]:
        """Raw completion ids per prompt and the server's log-probs of each completion's tokens."""
        request = {"prompts": prompts, "seeds": seeds, "greedy": greedy, "pad_id": pad_id,
                   "stop_token_ids": stop_token_ids, "max_tokens": max_tokens, "temperature": temperature,
                   "top_p": top_p, "top_k": top_k, "min_p": min_p, "repetition_penalty": repetition_penalty,
                   "logprobs": True}
        answer = self._post("/generate/", json.dumps(request).encode(), "application/json")
        return answer["completion_ids"], answer["logprobs"] or [[] for _ in prompts]

    def push_weights(self, body: bytes) -> int:
        """Send a ``weights_body`` (built once, posted to each server); returns how many tensors the server loaded."""
        return self._post("/update_weights/", body, "application/octet-stream")["updated"]


def weights_body(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> bytes:
    """The named tensors as one safetensors file, what a transformers rollout server's /update_weights/ takes."""
    from safetensors.torch import save

    # Copies: the tensors may be views of weights changed right after (a LoRA merge is undone when the
    # iterator ends), and serialising happens after that.
    tensors = {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in named_tensors}
    return save(tensors)
