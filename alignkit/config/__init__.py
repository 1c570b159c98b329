"""What a user can say: every sub-command's typed arguments, their flags, defaults and checks.

``from alignkit.config import RunArguments`` keeps working: the argument classes are re-exported here.
"""

from alignkit.config.arguments import (
    AppArguments,
    CacheArguments,
    DataArguments,
    DemoArguments,
    DeployArguments,
    EvalArguments,
    ExportArguments,
    InferArguments,
    RunArguments,
)

__all__ = [
    "AppArguments", "CacheArguments", "DataArguments", "DemoArguments", "DeployArguments", "EvalArguments",
    "ExportArguments", "InferArguments", "RunArguments",
]
