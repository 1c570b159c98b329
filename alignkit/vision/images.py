"""A row's images: ms-swift's ``images`` / ``rejected_images`` and TRL's ``image`` / ``images`` columns → PIL images.

Each item may be a path (relative paths are looked up from the working directory, then from the data file's
folder), an ``http(s)://`` URL, a ``data:image/...;base64,`` URL, a bare base64 string, raw bytes, a
``{"bytes": ..., "path": ...}`` dict (the Hugging Face datasets Image feature; in JSON, its bytes as base64) or
a PIL image. An image that is missing or cannot be decoded is a row-level ``DataError`` naming the file, row
and column.

Example::

    load_row_images({"images": ["cat.png"]}, RowSource("data/pairs.jsonl", 3))
    # {"images": [<PIL.Image RGB 640x480>], "rejected_images": None}
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import urllib.request
from pathlib import Path
from typing import Any

from alignkit.data.rows import RowSource
from alignkit.errors import DataError

URL_TIMEOUT_S = 20
# A downloaded image may be at most this large: a URL must not make the trainer or server read without end.
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
# Leading bytes of PNG, JPEG, GIF, WebP (RIFF), BMP: enough to tell inline base64 images from mistyped paths.
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF8", b"RIFF", b"BM")


def _where(source: RowSource | None, field: str) -> dict:
    return {"file": source.file, "row": source.row, "field": field} if source is not None else {"field": field}


def _decode(data: bytes, source: RowSource | None, field: str):
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DataError(
            f"cannot decode the image ({type(error).__name__}: {error})", **_where(source, field)
        ) from error
    return image.convert("RGB")


def _read_path(path: str, source: RowSource | None, field: str) -> bytes:
    candidates = [Path(path).expanduser()]
    if source is not None:
        candidates.append(Path(source.file).parent / path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.read_bytes()
    folder = Path(source.file).parent if source is not None else Path.cwd()
    raise DataError(f"image file '{path}' not found (looked in the working directory and {folder})",
                    **_where(source, field))


def _read_string(text: str, source: RowSource | None, field: str) -> bytes:
    if text.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(text, timeout=URL_TIMEOUT_S) as response:
                data = response.read(MAX_DOWNLOAD_BYTES + 1)
        except OSError as error:  # URLError, timeouts, refused connections (e.g. an offline machine)
            raise DataError(f"cannot download image {text}: {error}", **_where(source, field)) from error
        if len(data) > MAX_DOWNLOAD_BYTES:
            raise DataError(f"image {text} is larger than {MAX_DOWNLOAD_BYTES // 2**20} MiB; not downloaded",
                            **_where(source, field))
        return data
    if text.startswith("data:"):
        _, _, payload = text.partition(",")
        return _b64(payload, source, field)
    try:
        return _read_path(text, source, field)
    except DataError:
        # Not a file: a string that decodes as base64 into an image's bytes is inline data, as ms-swift accepts.
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            data = b""
        if data[:8] in IMAGE_MAGIC or any(data.startswith(m) for m in IMAGE_MAGIC):
            return data
        raise


def _b64(payload: str, source: RowSource | None, field: str) -> bytes:
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise DataError(f"invalid base64 image data ({error})", **_where(source, field)) from error


def load_image(item: Any, source: RowSource | None, field: str):
    """One image item (see the module docstring) → an RGB PIL image."""
    from PIL import Image

    if isinstance(item, Image.Image):
        return item.convert("RGB")
    if isinstance(item, (bytes, bytearray)):
        return _decode(bytes(item), source, field)
    if isinstance(item, dict):
        if isinstance(item.get("bytes"), str):  # the bytes as JSON carries them: base64
            return _decode(_b64(item["bytes"], source, field), source, field)
        if item.get("bytes") is not None:
            return _decode(bytes(item["bytes"]), source, field)
        item = item.get("path") or item.get("url") or item.get("image")
    if isinstance(item, str) and item:
        return _decode(_read_string(item, source, field), source, field)
    raise DataError(f"expected an image (path, URL, base64 or bytes), got {item!r:.80}", **_where(source, field))


def load_images(value: Any, source: RowSource | None, column: str) -> list:
    """A column's value (one item or a list of items; None or [] for none) → a list of RGB PIL images."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    return [load_image(item, source, f"{column}[{i}]") for i, item in enumerate(items)]


def within_pixels(image, max_pixels: int):
    """``image`` scaled down to at most ``max_pixels`` pixels (H*W), keeping its aspect ratio, as ms-swift's
    ``rescale_image`` does for --max_pixels: 2000x1000 with max_pixels 500000 → 1000x500. Smaller images are
    returned as they are."""
    width, height = image.size
    if width * height <= max_pixels:
        return image
    ratio = width / height
    new_height = math.sqrt(max_pixels / ratio)
    size = (max(1, int(new_height * ratio)), max(1, int(new_height)))
    from PIL import Image

    return image.resize(size, resample=Image.Resampling.BILINEAR)  # torchvision's Resize default, as ms-swift uses


def row_image_columns(extras: dict[str, Any]) -> tuple[str | None, str | None]:
    """Which of a row's extra columns hold its images and its rejected answer's images (ms-swift/TRL names)."""
    prompt = next((c for c in ("images", "image") if extras.get(c) not in (None, [])), None)
    rejected = "rejected_images" if extras.get("rejected_images") not in (None, []) else None
    return prompt, rejected
