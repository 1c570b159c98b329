"""`alignkit colossal <script> [flags]`: ColossalChat's scripts, with their flags, meanings and defaults.

    colossalai run --nproc_per_node 4 train_dpo.py --pretrain M ...   (ColossalChat)
    NPROC_PER_NODE=4 alignkit colossal train_dpo --pretrain M ...     (alignkit; train_dpo.py accepted too)

Each script's flags are a table in ``flags.py``; ``translate.py`` turns a command line into RunArguments and
the run goes through the same ``run_training`` as ``alignkit sft`` / ``alignkit rlhf``; ``run.py`` adds
ColossalChat's side effects (--config_file, save_dir/modeling). docs/colossal.md lists every flag.
"""

from alignkit.commands.colossal.run import run_colossal, script_names, trains

__all__ = ["run_colossal", "script_names", "trains"]
