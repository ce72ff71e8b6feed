"""Encoding rendered pixels into the formats the API offers."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}

# PNG is lossless: its zlib level trades CPU for bytes only. Level 1 encodes a 256x256 render
# in about 4 ms, level 9 in about 100 (for files about a fifth smaller), so darkroom, like
# OpenAI's API, applies `output_compression` to jpeg and webp alone.
PNG_LEVEL = 1


def encode(rgb: np.ndarray, output_format: str, compression: int = 100, size: int | None = None) -> bytes:
    """Encode an (H, W, 3) uint8 image.

    Args:
        rgb: The pixels.
        output_format: "png", "jpeg" or "webp".
        compression: 0-100 as in the API: for jpeg and webp the quality is 100 minus it (at
            least 1); png ignores it (always zlib level PNG_LEVEL).
        size: Resize (bicubic) to size x size first, when given.

    Returns:
        The encoded bytes.
    """
    image = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB")
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    if output_format == "png":
        image.save(out, format="PNG", compress_level=PNG_LEVEL)
    elif output_format == "jpeg":
        image.save(out, format="JPEG", quality=max(1, 100 - compression))
    elif output_format == "webp":
        image.save(out, format="WEBP", quality=max(1, 100 - compression))
    else:
        raise ValueError(f"unsupported output format {output_format!r}")
    return out.getvalue()


def decode(data: bytes) -> np.ndarray:
    """Decode image bytes (any format PIL reads) into (H, W, 3) uint8 RGB."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))
