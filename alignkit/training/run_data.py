"""The rows a training run reads: --dataset, --val_dataset, --cached_dataset, --interleave_prob, ... as
``alignkit.data.loading.load_datasets`` takes them (docs/data.md), for the offline and the online runs."""

from __future__ import annotations

import logging

from alignkit.config.run import RunArguments
from alignkit.data.loading import load_datasets, parse_columns
from alignkit.training.loop_config import held_out_ratio

logger = logging.getLogger("alignkit")


def load_training_data(args: RunArguments, datasets: list[str], kind: str) -> tuple[list, list]:
    """Training and held-out rows from --dataset, --val_dataset, --cached_dataset, ... (docs/data.md)."""
    split_ratio = held_out_ratio(args)  # 0 with --eval_strategy no, as ms-swift
    if args.streaming and split_ratio > 0:
        logger.info("--streaming true: --split_dataset_ratio %s set to 0, as ms-swift does", split_ratio)
        split_ratio = 0.0
    return load_datasets(
        datasets, args.val_dataset, kind, split_dataset_ratio=split_ratio, seed=args.data_seed,
        shuffle=args.dataset_shuffle, columns=parse_columns(args.columns),
        check_dataset_strategy=args.check_dataset_strategy, model_name=args.model_name,
        model_author=args.model_author, interleave_prob=args.interleave_prob,
        stopping_strategy=args.stopping_strategy, val_shuffle=args.val_dataset_shuffle,
        cached=args.cached_dataset, cached_val=args.cached_val_dataset,
    )
