"""transformers' Hub kernels when the Hub cannot be reached.

transformers >= 5.2x swaps layers for kernels downloaded from the Hub (``kernels-community/rotary``, ...)
whenever the ``kernels`` package is installed (it is one of its requirements), as soon as a model is put in
training mode on a GPU. Offline (``HF_HUB_OFFLINE=1``, the setting ms-swift's and alignkit's offline tips
use) the download cannot happen and every training run stopped with "not available in the local cache"
(seen on an H200: bench/results/gpu-2026-12-04-h200-run1.json). Offline, alignkit therefore runs
transformers' own PyTorch layers, unless the user chose with ``USE_HUB_KERNELS`` themselves.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping

logger = logging.getLogger("alignkit")

TRUE = {"1", "on", "yes", "true"}


def hub_is_offline(environ: MutableMapping[str, str]) -> bool:
    return any(environ.get(name, "").strip().lower() in TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def keep_hub_kernels_offline_off(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Set ``USE_HUB_KERNELS=NO`` when the Hub is offline and the user has not set it. True when it did."""
    if not hub_is_offline(environ) or "USE_HUB_KERNELS" in environ:
        return False
    environ["USE_HUB_KERNELS"] = "NO"
    logger.debug("Hub offline: transformers' Hub kernels off (USE_HUB_KERNELS=NO), its PyTorch layers used")
    return True
