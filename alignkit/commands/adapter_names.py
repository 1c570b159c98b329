"""deploy's --adapters NAME=DIR: which adapter is served under which model name (shared by alignkit's own server
and the engine servers of --infer_backend vllm)."""

from __future__ import annotations

from alignkit.errors import AlignkitError


def parse_adapters(adapters: list[str], ckpt_dir: str | None) -> tuple[str | None, dict[str, str]]:
    """``NAME=DIR`` entries become named models; at most one bare DIR (or --ckpt_dir) is the default."""
    unnamed, named = [], {}
    for entry in adapters:
        name, sep, path = entry.partition("=")
        if sep and name and path:
            if name in named:
                raise AlignkitError(f"--adapters: the name '{name}' is given twice")
            named[name] = path
        else:
            unnamed.append(entry)
    if ckpt_dir is not None:
        unnamed.insert(0, ckpt_dir)
    if len(unnamed) > 1:
        raise AlignkitError(f"--adapters: name all but one adapter as NAME=DIR; unnamed: {', '.join(unnamed)}")
    return (unnamed[0] if unnamed else None), named
