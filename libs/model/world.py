"""A deterministic, captioned synthetic world that the built-in model is trained on.

Why this exists: darkroom must ship a model that draws what the prompt says without downloading
anything, so the training data is generated here, from a seed, on the fly. A scene is one to
three objects (shape, colour, size, position) on a background, optionally in a style. The scene
description is the ground truth: it yields the captions (several phrasings) and the attributes
that the evaluation's attribute classifier is trained to read back.

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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
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

UNSEEN_PAIRS: Final[frozenset[tuple[str, str]]] = frozenset(
    {
        ("circle", "purple"),
        ("square", "orange"),
        ("triangle", "pink"),
        ("diamond", "red"),
        ("star", "green"),
        ("heart", "blue"),
        ("cross", "yellow"),
        ("ring", "white"),
    }
)
"""Shape-colour pairs that never occur in the training split (one per shape and per colour), so
the evaluation can measure compositional generalisation."""

SPLITS: Final[tuple[str, ...]] = ("train", "heldout", "unseen", "all")
_SPLIT_STREAM: Final[dict[str, int]] = {"train": 0, "heldout": 1, "unseen": 2, "all": 3}

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


@dataclass(frozen=True)
class ObjectClaim:
    """What a caption says about one object; None means the caption leaves it open."""

    shape: str
    colour: str
    size: str | None
    position: str | None


@dataclass(frozen=True)
class Caption:
    """A caption and the attributes it states (the claims an adherence check verifies)."""

    text: str
    objects: tuple[ObjectClaim, ...]
    background: str | None
    style: str | None


@dataclass(frozen=True)
class Sample:
    """A scene, one of its captions and its rendering at the internal resolution."""

    scene: Scene
    caption: Caption
    image: np.ndarray = field(repr=False)


# ---------------------------------------------------------------------------------------------
# Sampling


def _allowed(shape: str, colour: str, split: str) -> bool:
    return not (split == "train" and (shape, colour) in UNSEEN_PAIRS)


def _adjacent(a: int, b: int) -> bool:
    """Slots that share an edge: two large objects there would overlap."""
    ra, ca = divmod(a, 3)
    rb, cb = divmod(b, 3)
    return abs(ra - rb) + abs(ca - cb) == 1


def sample_scene(rng: np.random.Generator, split: str = "train", num_objects: int | None = None) -> Scene:
    """Draws one scene.

    Args:
        rng: The random source; the scene is a pure function of its state.
        split: "train" never contains an UNSEEN_PAIRS combination; "unseen" makes the first
            object an unseen pair; "heldout" and "all" allow every combination.
        num_objects: 1-3, or None for the world's mix (40% one, 35% two, 25% three).

    Returns:
        The scene. Large objects never sit in edge-adjacent slots, so objects do not overlap.
    """
    if split not in _SPLIT_STREAM:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    n = num_objects if num_objects is not None else int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
    if not 1 <= n <= 3:
        raise ValueError("num_objects must be 1, 2 or 3")
    unseen = sorted(UNSEEN_PAIRS)
    while True:
        slots = [int(s) for s in rng.permutation(9)[:n]]
        objects: list[SceneObject] = []
        for i, slot in enumerate(slots):
            if split == "unseen" and i == 0:
                shape, colour = unseen[int(rng.integers(len(unseen)))]
            else:
                while True:
                    shape = SHAPES[int(rng.integers(len(SHAPES)))]
                    colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
                    if _allowed(shape, colour, split):
                        break
            size = SIZES[int(rng.integers(2))]
            dx, dy = (float(v) for v in rng.uniform(-2.0, 2.0, size=2))
            objects.append(SceneObject(shape, colour, size, POSITIONS[slot], dx, dy))
        clash = any(
            a.size == "large" and b.size == "large" and _adjacent(sa, sb)
            for (a, sa), (b, sb) in _pairs(list(zip(objects, slots, strict=True)))
        )
        if not clash:
            break
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    style = STYLES[int(rng.choice(len(STYLES), p=[0.4, 0.2, 0.2, 0.2]))]
    return Scene(tuple(objects), background, style, int(rng.integers(2**31)))


def _pairs(items: list[tuple[SceneObject, int]]) -> Iterator[tuple[tuple[SceneObject, int], ...]]:
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            yield items[i], items[j]


# ---------------------------------------------------------------------------------------------
# Captions

_SIZE_WORDS: Final[dict[str, tuple[str, ...]]] = {
    "small": ("small", "little", "tiny"),
    "large": ("large", "big", "huge"),
}
_POSITION_PHRASES: Final[dict[str, tuple[str, ...]]] = {
    "top left": ("at the top left", "in the top left corner", "in the upper left"),
    "top": ("at the top", "at the top centre", "up top"),
    "top right": ("at the top right", "in the top right corner", "in the upper right"),
    "left": ("on the left", "at the left", "on the left side"),
    "centre": ("in the centre", "in the center", "in the middle"),
    "right": ("on the right", "at the right", "on the right side"),
    "bottom left": ("at the bottom left", "in the bottom left corner", "in the lower left"),
    "bottom": ("at the bottom", "at the bottom centre", "down below"),
    "bottom right": ("at the bottom right", "in the bottom right corner", "in the lower right"),
}
_BACKGROUND_PHRASES: Final[dict[str, tuple[str, ...]]] = {
    "gray": ("on a gray background", "on a grey background", "against a gray backdrop"),
    "black": ("on a black background", "against a black backdrop", "on black"),
    "beige": ("on a beige background", "against a beige backdrop", "on beige paper"),
    "sky": ("in the sky", "against a blue sky", "with a sky behind it"),
    "grass": ("on grass", "on a grassy field", "in a green meadow"),
    "night": ("at night", "under a night sky", "against a starry night sky"),
}
_STYLE_PREFIX: Final[dict[str, tuple[str, ...]]] = {
    "flat": ("a flat illustration of", "a simple drawing of"),
    "pastel": ("a pastel drawing of", "a pastel picture of"),
    "pixel art": ("pixel art of", "a pixel art image of"),
    "watercolor": ("a watercolor painting of", "a watercolour of"),
}
_STYLE_SUFFIX: Final[dict[str, tuple[str, ...]]] = {
    "flat": ("flat style", "in a flat style"),
    "pastel": ("in pastel colours", "pastel colors", "in pastel"),
    "pixel art": ("pixel art", "in pixel art style", "as pixel art"),
    "watercolor": ("in watercolor", "watercolour style", "watercolor painting"),
}
_COUNT_WORDS: Final = ("one", "two", "three")
_EXTRA_WORDS: Final = ("a", "an", "and", "with", "of", "shapes", "shape", "objects", "object")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def make_caption(scene: Scene, rng: np.random.Generator) -> Caption:
    """Writes one caption of a scene, choosing a phrasing and which attributes to state.

    Shape and colour of every object are always stated; size (60%), position (60%),
    background (70%) and style (always for non-flat styles, 20% for flat) sometimes.

    Args:
        scene: The scene to describe.
        rng: The random source; the caption is a pure function of its state.

    Returns:
        The caption text and the claims it makes.
    """
    phrases: list[str] = []
    claims: list[ObjectClaim] = []
    for obj in scene.objects:
        size = obj.size if rng.random() < 0.6 else None
        position = obj.position if rng.random() < 0.6 else None
        words = []
        if size is not None:
            options = _SIZE_WORDS[size]
            words.append(options[int(rng.integers(len(options)))])
        words += [obj.colour, obj.shape]
        phrase = f"{_article(words[0])} {' '.join(words)}"
        if position is not None:
            options = _POSITION_PHRASES[position]
            phrase += " " + options[int(rng.integers(len(options)))]
        phrases.append(phrase)
        claims.append(ObjectClaim(obj.shape, obj.colour, size, position))
    if len(phrases) == 1:
        body = phrases[0]
    else:
        body = ", ".join(phrases[:-1]) + " and " + phrases[-1]
        if rng.random() < 0.15:
            body = f"{_COUNT_WORDS[len(phrases) - 1]} shapes: {body}"
    background = scene.background if rng.random() < 0.7 else None
    if background is not None:
        options = _BACKGROUND_PHRASES[background]
        body += " " + options[int(rng.integers(len(options)))]
    style: str | None = scene.style
    if scene.style == "flat" and rng.random() >= 0.2:
        style = None
    if style is not None:
        if rng.random() < 0.5:
            options = _STYLE_PREFIX[style]
            body = options[int(rng.integers(len(options)))] + " " + body
        else:
            options = _STYLE_SUFFIX[style]
            body += ", " + options[int(rng.integers(len(options)))]
    return Caption(body, tuple(claims), background, style)


_WORD = re.compile(r"[a-z]+")


def words_of(text: str) -> list[str]:
    """Splits a caption into lower-case words, the unit of the built-in text tokenizer."""
    return _WORD.findall(text.lower())


def caption_vocabulary() -> list[str]:
    """Every word the caption grammar can produce, sorted (the built-in tokenizer's vocabulary)."""
    texts: list[str] = [*SHAPES, *COLOUR_NAMES, *_COUNT_WORDS, *_EXTRA_WORDS]
    for table in (_SIZE_WORDS, _POSITION_PHRASES, _BACKGROUND_PHRASES, _STYLE_PREFIX, _STYLE_SUFFIX):
        for options in table.values():
            texts.extend(options)
    return sorted({w for t in texts for w in words_of(t)})


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


def object_reach(radius: float, cell: float) -> float:
    """How far from an object's centre a cell's centre may lie to count as the object's: its
    radius plus half a cell, so every cell the object visibly touches counts (the cells the
    generator's object weight and the eval's inpainting cover)."""
    return radius + cell / 2


def object_cells(
    scenes: Sequence[Scene],
    grid: int,
    reach: Callable[[float, float], float],
    shape: str | None = None,
) -> np.ndarray:
    """Which cells of a grid laid over the 64x64 image each scene's objects occupy.

    Args:
        scenes: The scenes.
        grid: Cells per side.
        reach: (object radius, cell width) -> how far from an object's centre (in pixels) a
            cell's centre may lie to count as occupied.
        shape: Only objects of this shape (None: every object).

    Returns:
        (len(scenes), grid, grid) float32, 1.0 in occupied cells.
    """
    cell = INTERNAL_SIZE / grid
    centres = (np.arange(grid, dtype=np.float32) + 0.5) * cell
    out = np.zeros((len(scenes), grid, grid), np.float32)
    for i, scene in enumerate(scenes):
        for obj in scene.objects:
            if shape is not None and obj.shape != shape:
                continue
            row, col = divmod(POSITIONS.index(obj.position), 3)
            cx, cy = ANCHORS[col] + obj.dx, ANCHORS[row] + obj.dy
            d2 = (centres[None, :] - cx) ** 2 + (centres[:, None] - cy) ** 2
            out[i][d2 <= reach(RADIUS[obj.size], cell) ** 2] = 1.0
    return out


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


# ---------------------------------------------------------------------------------------------
# The world


class World:
    """An indexed, deterministic stream of captioned scenes.

    `World(seed, split).sample(i)` is a pure function of (seed, split, i, num_objects, variant):
    no files are stored and any sample can be recomputed on its own.
    """

    def __init__(self, seed: int = 0, split: str = "train") -> None:
        """Creates a world.

        Args:
            seed: Selects the world; different seeds give independent streams.
            split: One of SPLITS (see sample_scene).
        """
        if split not in _SPLIT_STREAM:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        self.seed = seed
        self.split = split

    def scene(self, index: int, num_objects: int | None = None) -> Scene:
        """Returns scene `index` of this world."""
        n = 0 if num_objects is None else num_objects
        rng = np.random.default_rng([self.seed, _SPLIT_STREAM[self.split], index, n])
        return sample_scene(rng, self.split, num_objects)

    def caption(self, scene: Scene, index: int, variant: int = 0) -> Caption:
        """Returns caption `variant` of the scene at `index` (training draws new variants per
        epoch)."""
        rng = np.random.default_rng([self.seed, _SPLIT_STREAM[self.split], index, 1000 + variant])
        return make_caption(scene, rng)

    def sample(self, index: int, num_objects: int | None = None, variant: int = 0, size: int = INTERNAL_SIZE) -> Sample:
        """Returns sample `index`: scene, caption `variant` and the rendered image."""
        scene = self.scene(index, num_objects)
        return Sample(scene, self.caption(scene, index, variant), render_scene(scene, size))

    def images(self, start: int, count: int, num_objects: int | None = None) -> np.ndarray:
        """Renders scenes start..start+count-1 as an (count, 64, 64, 3) uint8 array."""
        return np.stack([render_scene(self.scene(i, num_objects)) for i in range(start, start + count)])
