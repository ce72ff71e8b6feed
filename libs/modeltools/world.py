"""The captioned synthetic world the built-in model is trained and evaluated on.

Why this exists: darkroom must ship a model that draws what the prompt says without downloading
anything, so the training data is generated here, from a seed, on the fly. The scenes, their
vocabulary and their renderer are libs.model.scenes (WorldModel draws with them at run time);
this module samples scenes into train, held-out and unseen splits and writes their captions.
The scene description is the ground truth: it yields the captions (several phrasings) and the
attributes that the evaluation's attribute classifier is trained to read back.

Nothing here imports torch; numpy only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from libs.model.scenes import (
    ANCHORS,
    BACKGROUNDS,
    COLOUR_NAMES,
    INTERNAL_SIZE,
    POSITIONS,
    RADIUS,
    SHAPES,
    SIZES,
    STYLES,
    Scene,
    SceneObject,
    render_scene,
    words_of,
)

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
# What a caption claims


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


def caption_vocabulary() -> list[str]:
    """Every word the caption grammar can produce, sorted (the built-in tokenizer's vocabulary)."""
    texts: list[str] = [*SHAPES, *COLOUR_NAMES, *_COUNT_WORDS, *_EXTRA_WORDS]
    for table in (_SIZE_WORDS, _POSITION_PHRASES, _BACKGROUND_PHRASES, _STYLE_PREFIX, _STYLE_SUFFIX):
        for options in table.values():
            texts.extend(options)
    return sorted({w for t in texts for w in words_of(t)})


# ---------------------------------------------------------------------------------------------
# Where objects are


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
