"""ms-swift 4.6 `swift rlhf --rlhf_type dpo` on the benchmark workload (runs in bench/.venvs/swift).

The arguments after ``--`` are swift's own CLI flags; a StepTimer is attached to the Trainer swift builds.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # accounting.py


def main() -> None:
    result, swift_args = sys.argv[1], sys.argv[2:]
    import transformers
    from step_timer import StepTimer, summary

    timer = StepTimer()
    trainers = []
    original_init = transformers.Trainer.__init__

    @functools.wraps(original_init)  # swift inspects Trainer.__init__'s signature
    def init_with_timer(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.add_callback(timer)
        trainers.append(self)

    transformers.Trainer.__init__ = init_with_timer
    from swift.pipelines import rlhf_main

    rlhf_main(swift_args)
    Path(result).write_text(json.dumps(summary(timer, trainers[-1])))


if __name__ == "__main__":
    main()
