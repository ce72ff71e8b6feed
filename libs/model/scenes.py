"""The scenes of darkroom's synthetic world: their vocabulary, and the renderer that draws them.

A scene is one to three objects (shape, colour, size, position) on a background, optionally in
a style. The built-in model was trained on such scenes (libs.modeltools.world samples and
captions them), and three things the decoder and the safety service load at run time need them:
WorldModel draws a prompt's scene with `render_scene`, the built-in tokenizer splits text with
`words_of`, and the built-in model and the safety detector resize images with
`upsample`/`downsample` around INTERNAL_SIZE.

Resolution: the model works at 64x64 pixels with 4x4-pixel tokens (a 16x16 token grid). That is
the largest size at which the whole pipeline (VQ + generator) trains on a 2-core CPU in the
time budget, and the world is designed to be legible at it: objects have a radius of 6 or 10
pixels and a dark rim, backgrounds are low-frequency. Larger sizes (256, 512) are served by
upsampling, exactly like the model's own output.

Nothing here imports torch; numpy and PIL only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

INTERNAL_SIZE: Final = 64
"""Side of the images the model is trained on, in pixels."""

_SS: Final = 4
"""Supersampling factor for antialiased shape masks."""

SHAPES: Final[tuple[str, ...]] = (
    "circle",
    "square",
    "triangle",
    "diamond",
    "star",
    "heart",
    "cross",
    "ring",
    "skull",
)
FORBIDDEN_SHAPE: Final = "skull"
"""The object class the default safety policy forbids."""

COLOURS: Final[dict[str, tuple[int, int, int]]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (245, 220, 40),
    "green": (40, 185, 60),
    "blue": (40, 80, 225),
    "purple": (140, 60, 190),
    "pink": (250, 130, 195),
    "white": (245, 245, 245),
}
COLOUR_NAMES: Final[tuple[str, ...]] = tuple(COLOURS)

SIZES: Final[tuple[str, ...]] = ("small", "large")
RADIUS: Final[dict[str, float]] = {"small": 6.0, "large": 10.0}

POSITIONS: Final[tuple[str, ...]] = (
    "top left",
    "top",
    "top right",
    "left",
    "centre",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
"""Nine slots on a 3x3 layout, row-major; the attribute classifier predicts one object per slot."""

ANCHORS: Final = (13.0, 32.0, 51.0)
"""Pixel coordinate (x or y, at 64x64) of the slot centres: left/top, centre, right/bottom."""

BACKGROUNDS: Final[tuple[str, ...]] = ("gray", "black", "beige", "sky", "grass", "night")
_PLAIN: Final[dict[str, tuple[int, int, int]]] = {
    "gray": (128, 128, 128),
    "black": (22, 22, 26),
    "beige": (205, 185, 145),
}

STYLES: Final[tuple[str, ...]] = ("flat", "pastel", "pixel art", "watercolor")

# ---------------------------------------------------------------------------------------------
# Scene description


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene; every field is a name from the module's tables."""

    shape: str
    colour: str
    size: str
    position: str
    dx: float = 0.0
    dy: float = 0.0


@dataclass(frozen=True)
class Scene:
    """A full scene description: the ground truth for rendering and for captions."""

    objects: tuple[SceneObject, ...]
    background: str
    style: str
    texture_seed: int

    @property
    def has_forbidden(self) -> bool:
        """Whether the scene contains the forbidden shape."""
        return any(o.shape == FORBIDDEN_SHAPE for o in self.objects)


_WORD = re.compile(r"[a-z]+")


def words_of(text: str) -> list[str]:
    """Splits a caption into lower-case words, the unit of the built-in text tokenizer."""
    return _WORD.findall(text.lower())


# ---------------------------------------------------------------------------------------------
# Rendering


def _polygon(cx: float, cy: float, r: float, points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(cx + px * r, cy + py * r) for px, py in points]


_BOX: Final = 32
"""Side (internal pixels) of the local canvas an object is drawn on; objects are at most 24 px."""


def _draw_shape(shape: str, cx: float, cy: float, r: float) -> tuple[Image.Image, Image.Image]:
    """Draws a shape's body mask and its dark-detail mask on a local supersampled canvas.

    Coordinates are supersampled pixels of a _BOX x _BOX canvas (drawing locally rather than on
    the whole image makes rendering about 5x faster). The detail mask carries the skull's eyes,
    nose and teeth: dark marks that make the forbidden class recognisable at 64x64.
    """
    side = _BOX * _SS
    body = Image.new("L", (side, side), 0)
    detail = Image.new("L", (side, side), 0)
    d = ImageDraw.Draw(body)
    dd = ImageDraw.Draw(detail)

    def ellipse(draw: ImageDraw.ImageDraw, x: float, y: float, rx: float, ry: float, v: int) -> None:
        draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=v)

    if shape == "circle":
        ellipse(d, cx, cy, 0.92 * r, 0.92 * r, 255)
    elif shape == "square":
        d.rectangle([cx - 0.8 * r, cy - 0.8 * r, cx + 0.8 * r, cy + 0.8 * r], fill=255)
    elif shape == "triangle":
        d.polygon(_polygon(cx, cy, r, [(0, -1.0), (0.97, 0.75), (-0.97, 0.75)]), fill=255)
    elif shape == "diamond":
        d.polygon(_polygon(cx, cy, r, [(0, -1.0), (0.78, 0), (0, 1.0), (-0.78, 0)]), fill=255)
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = 1.0 if k % 2 == 0 else 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((rad * math.cos(a), rad * math.sin(a) + 0.08))
        d.polygon(_polygon(cx, cy, r, pts), fill=255)
    elif shape == "heart":
        ellipse(d, cx - 0.46 * r, cy - 0.32 * r, 0.52 * r, 0.52 * r, 255)
        ellipse(d, cx + 0.46 * r, cy - 0.32 * r, 0.52 * r, 0.52 * r, 255)
        d.polygon(_polygon(cx, cy, r, [(-0.95, -0.14), (0.95, -0.14), (0, 0.92)]), fill=255)
    elif shape == "cross":
        w = 0.32 * r
        d.rectangle([cx - w, cy - 0.95 * r, cx + w, cy + 0.95 * r], fill=255)
        d.rectangle([cx - 0.95 * r, cy - w, cx + 0.95 * r, cy + w], fill=255)
    elif shape == "ring":
        ellipse(d, cx, cy, 0.95 * r, 0.95 * r, 255)
        ellipse(d, cx, cy, 0.5 * r, 0.5 * r, 0)
    elif shape == "skull":
        ellipse(d, cx, cy - 0.18 * r, 0.85 * r, 0.78 * r, 255)
        d.rectangle([cx - 0.5 * r, cy + 0.2 * r, cx + 0.5 * r, cy + 0.95 * r], fill=255)
        ellipse(dd, cx - 0.35 * r, cy - 0.15 * r, 0.24 * r, 0.26 * r, 255)
        ellipse(dd, cx + 0.35 * r, cy - 0.15 * r, 0.24 * r, 0.26 * r, 255)
        dd.polygon(_polygon(cx, cy, r, [(0, 0.12), (0.12, 0.36), (-0.12, 0.36)]), fill=255)
        for tx in (-0.25, 0.0, 0.25):
            dd.line([cx + tx * r, cy + 0.62 * r, cx + tx * r, cy + 0.95 * r], fill=255, width=_SS)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return body, detail


def _to_alpha(mask: Image.Image, ox: int, oy: int) -> np.ndarray:
    """Downsamples a local canvas with origin (ox, oy) and places it in a full-size alpha map."""
    small = np.asarray(mask.resize((_BOX, _BOX), Image.Resampling.BOX), dtype=np.float32) / 255.0
    full = np.zeros((INTERNAL_SIZE + 2 * _BOX, INTERNAL_SIZE + 2 * _BOX), np.float32)
    full[oy + _BOX : oy + 2 * _BOX, ox + _BOX : ox + 2 * _BOX] = small
    return full[_BOX:-_BOX, _BOX:-_BOX, None]


def _smooth_noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1] at 64x64, from a cells x cells grid upsampled bicubically."""
    grid = rng.uniform(0, 255, size=(cells, cells)).astype(np.uint8)
    img = Image.fromarray(grid, "L").resize((INTERNAL_SIZE, INTERNAL_SIZE), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 127.5 - 1.0


def _vertical(top: tuple[int, int, int], bottom: tuple[int, int, int], y0: int = 0) -> np.ndarray:
    t = np.clip((np.arange(INTERNAL_SIZE, dtype=np.float32) - y0) / (INTERNAL_SIZE - 1 - y0), 0, 1)
    col = np.asarray(top, np.float32) * (1 - t[:, None]) + np.asarray(bottom, np.float32) * t[:, None]
    return np.broadcast_to(col[:, None, :], (INTERNAL_SIZE, INTERNAL_SIZE, 3)).copy()


def _background(name: str, rng: np.random.Generator) -> np.ndarray:
    """Paints a background. Textures are deliberately low-frequency (a few soft features), so
    the tokenizer spends its codes on the objects rather than on noise."""
    s = INTERNAL_SIZE
    if name in _PLAIN:
        return np.broadcast_to(np.asarray(_PLAIN[name], np.float32), (s, s, 3)).copy()
    if name == "sky":
        img = _vertical((80, 140, 225), (175, 210, 245))
        clouds = Image.new("L", (s, s), 0)
        cd = ImageDraw.Draw(clouds)
        for _ in range(int(rng.integers(1, 3))):
            x, y = rng.uniform(4, s - 4), rng.uniform(4, s - 20)
            w, h = rng.uniform(8, 16), rng.uniform(3, 6)
            cd.ellipse([x - w, y - h, x + w, y + h], fill=200)
        alpha = np.asarray(clouds.filter(ImageFilter.GaussianBlur(2.5)), np.float32)[..., None] / 255
        return img * (1 - alpha) + np.asarray((250, 250, 252), np.float32) * alpha
    if name == "grass":
        horizon = int(rng.integers(26, 38))
        img = _vertical((150, 195, 235), (200, 225, 245))
        field_ = _vertical((110, 165, 55), (60, 115, 35), y0=horizon)
        field_ += _smooth_noise(rng, 6)[..., None] * np.asarray((10, 14, 6), np.float32)
        img[horizon:] = field_[horizon:]
        return img
    if name == "night":
        img = _vertical((8, 12, 38), (28, 34, 78))
        for _ in range(int(rng.integers(6, 14))):
            x, y = int(rng.integers(s)), int(rng.integers(s))
            img[y, x] = (235, 235, 200)
        return img
    raise ValueError(f"unknown background {name!r}")


def _pastel(img: np.ndarray) -> np.ndarray:
    return img * 0.58 + np.asarray((250, 244, 236), np.float32) * 0.42


def _pixel_art(img: np.ndarray) -> np.ndarray:
    """Re-grids the image into 2x2-pixel blocks with a reduced palette."""
    small = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize(
        (INTERNAL_SIZE // 2, INTERNAL_SIZE // 2), Image.Resampling.BOX
    )
    q = (np.asarray(small, np.float32) / 32.0).round() * 32.0
    return np.repeat(np.repeat(q, 2, axis=0), 2, axis=1)


def render_scene(scene: Scene, size: int = INTERNAL_SIZE) -> np.ndarray:
    """Renders a scene.

    Args:
        scene: The scene to draw.
        size: Output side in pixels. The scene is always drawn at INTERNAL_SIZE; larger sizes
            are upsampled (nearest for pixel art, bicubic otherwise), as the model's output is.

    Returns:
        A (size, size, 3) uint8 array; a pure function of the scene.
    """
    rng = np.random.default_rng(scene.texture_seed)
    img = _background(scene.background, rng)
    watercolor = scene.style == "watercolor"
    for obj in scene.objects:
        row, col = divmod(POSITIONS.index(obj.position), 3)
        cx, cy = ANCHORS[col] + obj.dx, ANCHORS[row] + obj.dy
        ox, oy = round(cx) - _BOX // 2, round(cy) - _BOX // 2
        body, detail = _draw_shape(obj.shape, (cx - ox) * _SS, (cy - oy) * _SS, RADIUS[obj.size] * _SS)
        # The rim is the body minus an eroded body: a dark outline about 0.75 px wide, which
        # keeps shapes legible on backgrounds of a similar colour. Three 3x3 erosions equal one
        # 7x7 erosion at half the cost.
        inner = body
        for _ in range(3):
            inner = inner.filter(ImageFilter.MinFilter(3))
        if watercolor:
            body = body.filter(ImageFilter.GaussianBlur(_SS * 0.8))
            inner = inner.filter(ImageFilter.GaussianBlur(_SS * 1.2))
        a_body, a_inner, a_detail = (_to_alpha(m, ox, oy) for m in (body, inner, detail))
        colour = np.asarray(COLOURS[obj.colour], np.float32)
        fill = np.broadcast_to(colour, img.shape).copy()
        if watercolor:
            # Pigment pools unevenly: a soft brightness variation inside the shape.
            fill *= 1.0 + 0.12 * _smooth_noise(rng, 5)[..., None]
        img = img * (1 - a_body) + colour * 0.5 * a_body
        img = img * (1 - a_inner) + fill * a_inner
        img = img * (1 - a_detail) + colour * 0.22 * a_detail
    if scene.style == "pastel":
        img = _pastel(img)
    elif scene.style == "pixel art":
        img = _pixel_art(img)
    elif watercolor:
        paper = _smooth_noise(rng, 9)[..., None] * 7.0
        img = img * 0.9 + np.asarray((252, 248, 240), np.float32) * 0.1 + paper
    out = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return upsample(out, size, nearest=scene.style == "pixel art")


def upsample(img: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    """Resizes an (H, W, 3) uint8 image to (size, size, 3); identity when already that size."""
    if img.shape[0] == size and img.shape[1] == size:
        return img
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(img).resize((size, size), method))


def downsample(img: np.ndarray, size: int = INTERNAL_SIZE) -> np.ndarray:
    """Resizes an (H, W, 3) uint8 image to (size, size, 3) with an area filter."""
    if img.shape[0] == size and img.shape[1] == size:
        return img
    return np.asarray(Image.fromarray(img).convert("RGB").resize((size, size), Image.Resampling.BOX))
