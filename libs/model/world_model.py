"""WorldModel: a procedural ImageModel that draws exactly what the prompt says.

Why this exists: the built-in generator is not trained well enough yet to draw a requested
object, but demos and end-to-end tests of the content check need a real model that does. This
one parses the prompt into a scene of the synthetic world (libs.model.scenes), renders it at
64x64, tokenizes it with the wrapped model's VQ (`encode_image`), and reveals that target grid
progressively: each pass commits cells in a random order drawn from pass_seed(seed, pass), as
many as the cosine schedule says. So it keeps the whole ImageModel contract (batched `step`,
exact resume from a checkpoint, tweaks with a remask) and its previews go through the same VQ
decoder the safety check sees in production.

Prompt reading (words of the world's caption grammar; unknown words are ignored):
    shapes ("circle" ... "skull", plurals too), colours, sizes ("small", "tiny", "big", ...),
    counts ("two red stars"), positions after an object ("at the top left", "on the right",
    "in the middle"), backgrounds ("on a gray background", "in the sky", "at night") and styles
    ("pastel", "pixel art", "watercolor", "flat"). At most three objects (the world's maximum).
    Whatever the prompt leaves open (colour, size, position, background, style, the exact
    offsets, the texture) is a deterministic choice from the seed; a prompt naming no shape gets
    one object of a seed-chosen shape other than the forbidden one.

    load_model("world")  ->  WorldModel wrapping the built-in model
"""

from __future__ import annotations

from typing import Final

import numpy as np

from libs.model.interface import (
    DEFAULT_WEIGHTS_DIR,
    GridRenderStart,
    ImageModel,
    RenderState,
    next_masked_count,
    pass_seed,
)
from libs.model.scenes import (
    BACKGROUNDS,
    COLOUR_NAMES,
    FORBIDDEN_SHAPE,
    INTERNAL_SIZE,
    POSITIONS,
    SHAPES,
    SIZES,
    STYLES,
    Scene,
    SceneObject,
    render_scene,
    words_of,
)

MAX_OBJECTS: Final = 3
_SIZE_WORDS: Final[dict[str, str]] = {
    "small": "small",
    "little": "small",
    "tiny": "small",
    "large": "large",
    "big": "large",
    "huge": "large",
}
_COUNTS: Final[dict[str, int]] = {"one": 1, "two": 2, "three": 3}
_VERTICAL: Final[dict[str, str]] = {"top": "top", "upper": "top", "up": "top", "bottom": "bottom", "lower": "bottom"}
_VERTICAL_LATE: Final[dict[str, str]] = {"below": "bottom"}  # "down below"
_HORIZONTAL: Final = frozenset({"left", "right"})
_CENTRE: Final = frozenset({"centre", "center", "middle"})
_BACKGROUND_WORDS: Final[dict[str, str]] = {
    "gray": "gray",
    "grey": "gray",
    "black": "black",
    "beige": "beige",
    "sky": "sky",
    "grass": "grass",
    "grassy": "grass",
    "meadow": "grass",
    "night": "night",
    "starry": "night",
}
_STYLE_WORDS: Final[dict[str, str]] = {
    "flat": "flat",
    "simple": "flat",
    "pastel": "pastel",
    "pixel": "pixel art",
    "watercolor": "watercolor",
    "watercolour": "watercolor",
}
_CACHE_SIZE: Final = 256


class _Pending:
    """Attributes read since the last object (they belong to the next shape word)."""

    def __init__(self) -> None:
        self.colour: str | None = None
        self.size: str | None = None
        self.count = 1


def _shape_of(word: str) -> str | None:
    if word in SHAPES:
        return word
    if word.endswith("s") and word[:-1] in SHAPES:
        return word[:-1]
    return None


def _position(words: list[str]) -> str | None:
    """The slot named by the position words that follow one object, if any."""
    vertical = next((_VERTICAL[w] for w in words if w in _VERTICAL), None)
    vertical = vertical or next((_VERTICAL_LATE[w] for w in words if w in _VERTICAL_LATE), None)
    horizontal = next((w for w in words if w in _HORIZONTAL), None)
    if vertical and horizontal:
        return f"{vertical} {horizontal}"
    if vertical or horizontal:
        return vertical or horizontal
    if any(w in _CENTRE for w in words):
        return "centre"
    return None


def parse_prompt(prompt: str, seed: int) -> Scene:
    """Reads a prompt into a scene of the world; a pure function of (prompt, seed).

    Args:
        prompt: Free text; words outside the world's vocabulary are ignored.
        seed: Decides everything the prompt leaves open.

    Returns:
        The scene WorldModel draws.
    """
    words = words_of(prompt)
    # (shape, colour, size, words after the shape up to the next object) per object.
    claims: list[tuple[str, str | None, str | None, list[str]]] = []
    background: str | None = None
    style: str | None = None
    pending = _Pending()
    for word in words:
        shape = _shape_of(word)
        if shape is not None:
            for _ in range(pending.count):
                claims.append((shape, pending.colour, pending.size, []))
            pending = _Pending()
        elif word in COLOUR_NAMES:
            pending.colour = word
        elif word in _SIZE_WORDS:
            pending.size = _SIZE_WORDS[word]
        elif word in _COUNTS:
            pending.count = _COUNTS[word]
        elif word in _BACKGROUND_WORDS:
            # "against a blue sky", "in a green meadow": the colour described the background.
            background = _BACKGROUND_WORDS[word]
            pending.colour = None
        elif word in _STYLE_WORDS:
            style = _STYLE_WORDS[word]
        elif claims:
            claims[-1][3].append(word)
    rng = np.random.default_rng([seed & ((1 << 63) - 1), 0x57D])
    if not claims:
        allowed = [s for s in SHAPES if s != FORBIDDEN_SHAPE]
        claims.append((allowed[int(rng.integers(len(allowed)))], pending.colour, pending.size, []))
    claims = claims[:MAX_OBJECTS]

    positions = [_position(after) for _, _, _, after in claims]
    taken = {p for p in positions if p is not None}
    free = [p for p in POSITIONS if p not in taken]
    order = [free[int(i)] for i in rng.permutation(len(free))]
    objects: list[SceneObject] = []
    for (shape, colour, size, _), position in zip(claims, positions, strict=True):
        colour = colour or COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
        size = size or SIZES[int(rng.integers(len(SIZES)))]
        if position is None:
            position = order.pop(0) if order else POSITIONS[int(rng.integers(len(POSITIONS)))]
        dx, dy = (float(v) for v in rng.uniform(-2.0, 2.0, size=2))
        objects.append(SceneObject(shape, colour, size, position, dx, dy))
    background = background or BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    style = style or STYLES[int(rng.choice(len(STYLES), p=[0.4, 0.2, 0.2, 0.2]))]
    return Scene(tuple(objects), background, style, int(rng.integers(2**31)))


class WorldModel(GridRenderStart):
    """The procedural model (see the module docstring); tokenizer and previews of `base`."""

    name: str = "darkroom-world"

    def __init__(self, base: ImageModel) -> None:
        """Wraps a model whose VQ tokenizes the rendered scenes and decodes the previews.

        Args:
            base: Usually the built-in model (load_model(None)); its grid size, codebook and
                mask token are this model's.
        """
        self.base = base
        self.grid_size = base.grid_size
        self.codebook_size = base.codebook_size
        self.mask_token = base.mask_token
        self._targets: dict[tuple[str, int], np.ndarray] = {}

    # -- ImageModel -----------------------------------------------------------------------------

    def step(self, states: list[RenderState]) -> list[RenderState]:
        """See ImageModel.step: commits masked cells, in the pass's random order, from the target
        grid of (prompt, seed), down to the schedule's count."""
        out: list[RenderState] = []
        for state in states:
            if state.done:
                raise ValueError("step() called on a finished render")
            if state.mask_token != self.mask_token or state.tokens.shape != (self.grid_size,) * 2:
                raise ValueError("state does not belong to this model")
            target = self.target(state.prompt, state.seed).reshape(-1)
            flat = state.tokens.reshape(-1).copy()
            masked = np.flatnonzero(flat == self.mask_token)
            keep = next_masked_count(masked.size, state.pass_index, state.total_passes)
            order = np.random.default_rng(pass_seed(state.seed, state.pass_index)).permutation(flat.size)
            rank = np.empty_like(order)
            rank[order] = np.arange(order.size)
            chosen = masked[np.argsort(rank[masked], kind="stable")][: masked.size - keep]
            flat[chosen] = target[chosen]
            out.append(state.with_tokens(flat.reshape(state.tokens.shape)))
        return out

    def preview(self, tokens: np.ndarray, size: int) -> np.ndarray:
        """See ImageModel.preview (the wrapped model's decoder)."""
        return self.base.preview(tokens, size)

    def encode_image(self, rgb: np.ndarray) -> np.ndarray:
        """See ImageModel.encode_image (the wrapped model's tokenizer)."""
        return self.base.encode_image(rgb)

    # -- the world ------------------------------------------------------------------------------

    def scene(self, prompt: str, seed: int) -> Scene:
        """The scene a render of (prompt, seed) draws."""
        return parse_prompt(prompt, seed)

    def target(self, prompt: str, seed: int) -> np.ndarray:
        """The final token grid of a render of (prompt, seed): the VQ encoding of its scene
        rendered at 64x64 (cached; read-only)."""
        key = (prompt, seed)
        grid = self._targets.get(key)
        if grid is None:
            image = render_scene(self.scene(prompt, seed), INTERNAL_SIZE)
            grid = np.asarray(self.encode_image(image), dtype=np.int64).reshape(self.grid_size, self.grid_size)
            grid.setflags(write=False)
            if len(self._targets) >= _CACHE_SIZE:
                self._targets.pop(next(iter(self._targets)))
            self._targets[key] = grid
        return grid


def load(argument: str | None, device: str) -> WorldModel:
    """The registry's loader of the "world" kind (libs.model.registry): a WorldModel over the
    built-in model's shipped weights.

    Args:
        argument: None, or a folder of built-in-format weights to tokenize and preview with.
        device: Torch device of the wrapped model.
    """
    # Imported here so that importing this module (to parse prompts) does not import torch.
    from libs.model.builtin import MaskGITImageModel

    return WorldModel(MaskGITImageModel.load(argument or DEFAULT_WEIGHTS_DIR, device=device))
