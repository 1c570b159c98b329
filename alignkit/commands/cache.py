"""`alignkit cache`: what the on-disk caches hold, and clearing them.

Two caches grow with use and are safe to delete: tokenised data (``tokenized/``, see
``alignkit.data.cache``) and precomputed reference log-probs (``ref_logps/``, see
``alignkit.models.reference_cache``). A deleted entry is recomputed by the next run that needs it. The built-in
model's converted weights live beside them and are never touched here: they are the demo's model, not a
cache of a run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from alignkit.config.commands import CacheArguments
from alignkit.data.cache import cache_root
from alignkit.errors import AlignkitError

logger = logging.getLogger("alignkit")

CACHE_KINDS = {
    "tokenized": "tokenised data (*.npz)",
    "ref_logps": "precomputed reference log-probs (*.pt)",
}


@dataclass
class CacheEntry:
    path: Path
    size: int
    modified: float  # seconds since the epoch


def cache_entries(root: Path, kind: str) -> list[CacheEntry]:
    """The files of one cache. A write in progress (``*.tmp``, ``*.partial-*``) is left alone."""
    directory = root / kind
    if not directory.is_dir():
        return []
    entries = []
    for path in directory.iterdir():
        if path.is_file() and path.suffix != ".tmp" and ".partial-" not in path.name:
            stat = path.stat()
            entries.append(CacheEntry(path, stat.st_size, stat.st_mtime))
    return entries


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    scaled, unit = size / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if scaled < 1024:
            break
        scaled, unit = scaled / 1024, bigger
    return f"{scaled:.1f} {unit}"


def run_cache(args: CacheArguments) -> int:
    unknown = sorted(set(args.kinds) - set(CACHE_KINDS))
    if unknown:
        raise AlignkitError(f"--kinds {' '.join(unknown)}: no such cache; caches: {', '.join(CACHE_KINDS)}")
    if args.older_than_days is not None and args.older_than_days < 0:
        raise AlignkitError(f"--older_than_days {args.older_than_days}: must be 0 or more")
    if args.older_than_days is not None and not args.clear:
        raise AlignkitError("--older_than_days selects what --clear deletes; add --clear true")
    root = cache_root()
    cutoff = None if args.older_than_days is None else time.time() - args.older_than_days * 86400
    print(f"cache root: {root} (ALIGNKIT_CACHE moves it)")
    for kind in args.kinds:
        entries = cache_entries(root, kind)
        total = sum(entry.size for entry in entries)
        print(f"  {kind}/: {len(entries)} files, {human_size(total)} — {CACHE_KINDS[kind]}")
        if not args.clear:
            continue
        doomed = [entry for entry in entries if cutoff is None or entry.modified < cutoff]
        for entry in doomed:
            entry.path.unlink(missing_ok=True)  # a concurrent run may have removed it first
        freed = sum(entry.size for entry in doomed)
        age = "" if cutoff is None else f" older than {args.older_than_days:g} days"
        print(f"    deleted {len(doomed)} files{age}, {human_size(freed)} freed")
    return 0
