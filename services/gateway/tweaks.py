"""What a tweak redraws: uploaded images and masks turned into grid cells. No I/O.

A tweak starts from an image's 16x16 token grid and draws some of its cells again
with a new prompt. Which cells:

- with a mask (a PNG the size of the image), the cells under its transparent pixels:
  a cell is redrawn when any pixel inside it has alpha 0;
- without one, a share of the cells set by `strength` (0 to 1, default 0.6), picked
  at random from the job's seed, so the same request redraws the same cells.

An upload that is not a darkroom image travels to the decoder as a small PNG (RGB,
256x256) for the model's VQ encoder; the grid has the same cells at any image size.
Images are square, so a wider or taller upload is cut to its centred square (`centred_square`)
rather than squashed, and its mask is cut the same way.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image, UnidentifiedImageError

from libs.model.interface import GRID_SIZE

DEFAULT_STRENGTH: Final = 0.6
UPLOAD_SIDE: Final = 256
"""Side of the PNG an uploaded image is sent to the encoder as."""
MAX_UPLOAD_BYTES: Final = 16 * 1024 * 1024


class TweakInputError(ValueError):
    """An image or mask that cannot be used; `param` names the form field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Upload:
    """An uploaded image as the gateway read it."""

    width: int
    height: int
    rgb_png: bytes
    """The image as RGB, UPLOAD_SIDE x UPLOAD_SIDE, PNG-encoded (for the encoder)."""


def centred_square(width: int, height: int) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) box of the largest square centred in a width x height image."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def read_upload(data: bytes, param: str = "image") -> Upload:
    """Reads an uploaded PNG, JPEG or WEBP; a non-square one is cut to its centred square.

    Raises:
        TweakInputError: empty, too large, or not an image.
    """
    image = _open(data, param)
    width, height = image.size
    square = image.convert("RGB").crop(centred_square(width, height))
    rgb = square.resize((UPLOAD_SIDE, UPLOAD_SIDE), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    rgb.save(out, format="PNG")
    return Upload(width=width, height=height, rgb_png=out.getvalue())


def cells_from_mask(data: bytes, width: int, height: int) -> np.ndarray:
    """The grid cells under a mask's fully transparent pixels (in the image's centred square).

    Args:
        data: The mask file (PNG with an alpha channel).
        width: Width of the image the mask belongs to.
        height: Its height.

    Returns:
        A (16, 16) boolean array, True where the cell is redrawn.

    Raises:
        TweakInputError: the mask is not an image, has another size than the image,
            has no alpha channel, or no transparent pixel in the centred square.
    """
    mask = _open(data, "mask")
    if mask.size != (width, height):
        raise TweakInputError(
            "mask", f"The mask is {mask.size[0]}x{mask.size[1]} but the image is {width}x{height}; they must match."
        )
    if "A" not in mask.getbands() and "transparency" not in mask.info:
        raise TweakInputError(
            "mask", "The mask needs an alpha channel: its transparent pixels mark the area to change."
        )
    left, top, right, bottom = centred_square(width, height)
    alpha = np.asarray(mask.convert("RGBA"))[top:bottom, left:right, 3]
    side = right - left
    rows = cols = np.linspace(0, side, GRID_SIZE + 1).astype(int)
    cells = np.zeros((GRID_SIZE, GRID_SIZE), bool)
    for r in range(GRID_SIZE):
        for c in range(GRID_SIZE):
            block = alpha[rows[r] : max(rows[r + 1], rows[r] + 1), cols[c] : max(cols[c + 1], cols[c] + 1)]
            cells[r, c] = bool((block == 0).any())
    if not cells.any():
        where = "" if width == height else f" in the image's centred {side}x{side} square, the part that is tweaked"
        raise TweakInputError("mask", f"The mask has no transparent pixels{where}, so there is nothing to change.")
    return cells


def cells_from_strength(strength: float, seed: int) -> np.ndarray:
    """A share `strength` of the cells (at least one), chosen by the seed.

    Raises:
        TweakInputError: strength outside (0, 1].
    """
    if not 0 < strength <= 1:
        raise TweakInputError("strength", f"strength must be above 0 and at most 1, got {strength}.")
    count = max(1, round(strength * GRID_SIZE * GRID_SIZE))
    chosen = np.random.default_rng(seed).choice(GRID_SIZE * GRID_SIZE, size=count, replace=False)
    cells = np.zeros(GRID_SIZE * GRID_SIZE, bool)
    cells[chosen] = True
    return cells.reshape(GRID_SIZE, GRID_SIZE)


def _open(data: bytes, param: str) -> Image.Image:
    if not data:
        raise TweakInputError(param, f"The {param} file is empty.")
    if len(data) > MAX_UPLOAD_BYTES:
        raise TweakInputError(param, f"The {param} file is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB.")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise TweakInputError(param, f"The {param} file is not a PNG, JPEG or WEBP image.") from exc
    if image.format not in ("PNG", "JPEG", "WEBP"):
        raise TweakInputError(param, f"The {param} file must be PNG, JPEG or WEBP, not {image.format}.")
    return image
