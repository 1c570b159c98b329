"""What a user can say: ``options`` (how a flag is declared), ``run`` (RunArguments, the training flags),
``commands`` (the other sub-commands' arguments), ``defaults`` (every per-algorithm default), ``checks``.

``from alignkit.config import RunArguments`` keeps working: the argument classes are re-exported here.
"""

from alignkit.config.commands import (
    AppArguments,
    CacheArguments,
    DataArguments,
    DemoArguments,
    DeployArguments,
    EvalArguments,
    ExportArguments,
    InferArguments,
)
from alignkit.config.run import RunArguments

__all__ = [
    "AppArguments", "CacheArguments", "DataArguments", "DemoArguments", "DeployArguments", "EvalArguments",
    "ExportArguments", "InferArguments", "RunArguments",
]
