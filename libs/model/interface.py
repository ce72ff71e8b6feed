"""The image-model interface the decoder service depends on.

Why this module is torch-free: the decoder's scheduler, the requests service and the tests import
RenderState, the schedule and the token packing without paying for (or needing) torch. Token grids
cross this boundary as numpy arrays; the built-in model converts at its edge.

Determinism contract (what makes crash-resume exact): a render is the fold of `step` over a
RenderState, and everything a pass needs is in (prompt, seed, total_passes, pass_index, tokens).
The randomness of pass k comes only from `pass_seed(seed, k)`, and how many cells a pass commits
comes only from the current masked count (see `next_masked_count`). So a state rebuilt from a
checkpoint of pass k continues exactly like the uninterrupted render, on the same device and
batch composition (floating-point results of a batched matmul can differ across batch sizes or
devices; that changes a sample only at an exact near-tie).

This module imports no model: models depend on it, and `libs.model.registry` loads them by name.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol, runtime_checkable

import numpy as np

GRID_SIZE: Final = 16
"""Side of the token grid every darkroom model produces."""

DEFAULT_WEIGHTS_DIR: Final = Path(__file__).resolve().parent / "weights"
"""Where the built-in model's files ship (the generator, its VQ, and the safety detector)."""


# ---------------------------------------------------------------------------------------------
# Schedule and randomness


def next_masked_count(masked: int, pass_index: int, total_passes: int) -> int:
    """How many cells stay masked after pass `pass_index` (0-based) of a cosine schedule.

    The rule depends only on the current masked count, so it holds for tweaks (partly masked
    grids) and for a state rebuilt from a checkpoint. The fraction still masked after pass k of K
    follows cos(pi/2 * k/K); each pass scales the current count by the ratio of consecutive
    values, commits at least one cell while any is masked, and the last pass commits the rest.

    Args:
        masked: Cells masked before the pass.
        pass_index: The pass about to run, 0 <= pass_index < total_passes.
        total_passes: Passes in the whole render, >= 1.

    Returns:
        Cells masked after the pass, in [0, masked - 1] when masked > 0, else 0.
    """
    if total_passes < 1 or not 0 <= pass_index < total_passes:
        raise ValueError(f"pass {pass_index} out of range for {total_passes} passes")
    if masked <= 0:
        return 0
    if pass_index == total_passes - 1:
        return 0
    before = math.cos(math.pi / 2 * pass_index / total_passes)
    after = math.cos(math.pi / 2 * (pass_index + 1) / total_passes)
    return max(0, min(masked - 1, math.floor(masked * after / before + 0.5)))


def cosine_schedule(total_passes: int, masked: int = GRID_SIZE * GRID_SIZE) -> list[int]:
    """Cells still masked after each pass of a render that starts with `masked` masked cells.

    Args:
        total_passes: Passes in the render, >= 1.
        masked: Masked cells at the start (the whole grid for a fresh render).

    Returns:
        A list of total_passes non-increasing counts ending in 0.
    """
    out: list[int] = []
    for k in range(total_passes):
        masked = next_masked_count(masked, k, total_passes)
        out.append(masked)
    return out


def pass_seed(seed: int, pass_index: int) -> int:
    """The seed of all randomness in pass `pass_index` of a render with `seed`.

    A keyed hash (not Python's `hash`, which is salted per process for strings) so the value is
    the same in every process and on every machine.
    """
    digest = hashlib.blake2b(f"{seed}:{pass_index}".encode(), digest_size=8, person=b"darkroom-pass").digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


# ---------------------------------------------------------------------------------------------
# Render state


@dataclass(frozen=True, eq=False)
class RenderState:
    """One job's render after `pass_index` completed passes. Immutable; `step` returns new ones.

    Attributes:
        prompt: The text the render is conditioned on.
        seed: The job's seed.
        total_passes: Passes the render takes in all.
        pass_index: Passes completed so far (0 = nothing committed by the model yet).
        tokens: (grid, grid) int64 array; `mask_token` where a cell is not committed yet.
        mask_token: The value of a masked cell (the model's codebook size).
    """

    prompt: str
    seed: int
    total_passes: int
    pass_index: int
    tokens: np.ndarray
    mask_token: int

    def __post_init__(self) -> None:
        tokens = np.array(self.tokens, dtype=np.int64, copy=True)
        if tokens.ndim != 2 or tokens.shape[0] != tokens.shape[1]:
            raise ValueError(f"tokens must be a square 2-D grid, got shape {tokens.shape}")
        if tokens.size and (tokens.min() < 0 or tokens.max() > self.mask_token):
            raise ValueError("tokens out of range [0, mask_token]")
        if self.total_passes < 1 or not 0 <= self.pass_index <= self.total_passes:
            raise ValueError(f"pass_index {self.pass_index} invalid for {self.total_passes} passes")
        if self.pass_index == self.total_passes and bool((tokens == self.mask_token).any()):
            raise ValueError("a finished render cannot have masked cells")
        tokens.setflags(write=False)
        object.__setattr__(self, "tokens", tokens)

    @property
    def done(self) -> bool:
        """Whether all passes have run (then no cell is masked)."""
        return self.pass_index >= self.total_passes

    @property
    def masked_count(self) -> int:
        """Cells not committed yet."""
        return int((self.tokens == self.mask_token).sum())

    def with_tokens(self, tokens: np.ndarray) -> RenderState:
        """The state after one more pass that left `tokens`."""
        return RenderState(self.prompt, self.seed, self.total_passes, self.pass_index + 1, tokens, self.mask_token)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RenderState):
            return NotImplemented
        return (
            self.prompt == other.prompt
            and self.seed == other.seed
            and self.total_passes == other.total_passes
            and self.pass_index == other.pass_index
            and self.mask_token == other.mask_token
            and np.array_equal(self.tokens, other.tokens)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable-looking array field: not hashable


def state_from_checkpoint(
    model: ImageModel,
    prompt: str,
    seed: int,
    total_passes: int,
    pass_index: int,
    tokens: np.ndarray,
) -> RenderState:
    """Rebuilds a job's state from a checkpoint event, to resume a render after a crash.

    Args:
        model: The model that produced the checkpoint (gives the mask token and grid size).
        prompt: The job's prompt.
        seed: The job's seed.
        total_passes: Passes of the render.
        pass_index: Completed passes recorded in the checkpoint.
        tokens: The checkpoint's token grid (any integer dtype, flat or 2-D).

    Returns:
        A state that `model.step` continues exactly as the uninterrupted render would.
    """
    grid = np.asarray(tokens).reshape(model.grid_size, model.grid_size)
    return RenderState(prompt, seed, total_passes, pass_index, grid, model.mask_token)


def initial_tokens(
    grid_size: int,
    mask_token: int,
    init_tokens: np.ndarray | None = None,
    remask: np.ndarray | None = None,
) -> np.ndarray:
    """The grid a render starts from: all masked, or a tweak's grid with `remask` cells masked.

    Args:
        grid_size: Side of the grid.
        mask_token: Value of a masked cell.
        init_tokens: An existing image's grid (for tweaks), or None for a fresh render.
        remask: Boolean grid of cells to regenerate; None with init_tokens means all of them
            (the new prompt redraws the whole image, keeping nothing).

    Returns:
        A (grid_size, grid_size) int64 array.
    """
    if init_tokens is None:
        if remask is not None:
            raise ValueError("remask needs init_tokens")
        return np.full((grid_size, grid_size), mask_token, dtype=np.int64)
    grid = np.asarray(init_tokens, dtype=np.int64).reshape(grid_size, grid_size).copy()
    mask = (
        np.ones((grid_size, grid_size), bool)
        if remask is None
        else np.asarray(remask, dtype=bool).reshape(grid_size, grid_size)
    )
    grid[mask] = mask_token
    return grid


def pack_tokens(tokens: np.ndarray) -> bytes:
    """Encodes a token grid compactly for checkpoint events: little-endian uint16, row-major
    (512 bytes for 16x16, against about 1.5 kB as JSON numbers)."""
    flat = np.asarray(tokens).reshape(-1)
    if flat.size and (flat.min() < 0 or flat.max() > 0xFFFF):
        raise ValueError("token values must fit in uint16")
    return flat.astype("<u2").tobytes()


def unpack_tokens(data: bytes, grid_size: int = GRID_SIZE) -> np.ndarray:
    """Decodes `pack_tokens` output into a (grid_size, grid_size) int64 array."""
    flat = np.frombuffer(data, dtype="<u2")
    if flat.size != grid_size * grid_size:
        raise ValueError(f"expected {grid_size * grid_size} tokens, got {flat.size}")
    return flat.astype(np.int64).reshape(grid_size, grid_size)


def pack_cells(cells: np.ndarray) -> bytes:
    """Encodes a boolean grid of cells (a tweak's cells to draw again): one byte per cell, row-major."""
    return np.asarray(cells, dtype=bool).reshape(-1).astype(np.uint8).tobytes()


def unpack_cells(data: bytes, grid_size: int = GRID_SIZE) -> np.ndarray:
    """Decodes `pack_cells` output into a (grid_size, grid_size) boolean array."""
    flat = np.frombuffer(data, dtype=np.uint8)
    if flat.size != grid_size * grid_size or bool((flat > 1).any()):
        raise ValueError(f"expected {grid_size * grid_size} cells of 0 or 1, got {flat.size} bytes")
    return flat.astype(bool).reshape(grid_size, grid_size)


def cells_for_grid(data: bytes, grid_size: int) -> np.ndarray:
    """Decodes a packed square grid of cells of any side and scales it to `grid_size`.

    The gateway marks a tweak's cells on darkroom's 16x16 grid whatever the model; a model
    with a finer grid (aMUSEd-512: 32x32) redraws each marked cell's share of its own cells.

    Raises:
        ValueError: the data is not a square grid of 0/1 bytes.
    """
    side = math.isqrt(len(data))
    if side < 1 or side * side != len(data):
        raise ValueError(f"expected a square grid of cells, got {len(data)} bytes")
    cells = unpack_cells(data, side)
    if side == grid_size:
        return cells
    index = np.arange(grid_size) * side // grid_size
    scaled: np.ndarray = cells[np.ix_(index, index)]
    return scaled


# ---------------------------------------------------------------------------------------------
# The interface


@runtime_checkable
class ImageModel(Protocol):
    """What the decoder needs from a model: progressive, resumable, batched token rendering.

    Attributes:
        name: Identifies the model (and its weights) in events and logs.
        grid_size: Side of the token grid (16).
        codebook_size: Number of token values; valid tokens are 0..codebook_size-1.
        mask_token: The value of a masked cell (== codebook_size).

    Optional: `preview_batch(grids, size)` draws many grids in one call;
    `preview_sizes(grids, sizes)` draws each grid once and returns it at every size (per grid,
    one picture per size, in order), for a last pass whose images and content-check
    pictures come from the same grids; a model on the CPU
    whose `step` and `preview_batch` may run on several threads at once sets
    `thread_safe_calls = True`, and the decoder then steps a batch as slices on every core
    (libs.model.split).
    """

    name: str
    grid_size: int
    codebook_size: int
    mask_token: int

    def schedule(self, total_passes: int) -> list[int]:
        """Cells still masked after each pass of a fresh render (cosine; ends at 0)."""
        ...

    def start(
        self,
        prompt: str,
        seed: int,
        total_passes: int,
        init_tokens: np.ndarray | None = None,
        remask: np.ndarray | None = None,
    ) -> RenderState:
        """Creates the state of a new render (pass_index 0). No model compute happens here.

        Args:
            prompt: Text to condition on.
            seed: Seed of the render; with the prompt it fixes the result.
            total_passes: Passes the render takes (8-12 in the service).
            init_tokens: For a tweak, the grid of the image being tweaked.
            remask: For a tweak, the cells to regenerate (None: all of them).
        """
        ...

    def step(self, states: list[RenderState]) -> list[RenderState]:
        """Runs one pass for each state, as one batch; states may be at different passes.

        Returns:
            New states, in order, each with pass_index + 1. Raises ValueError for a done state.
        """
        ...

    def preview(self, tokens: np.ndarray, size: int) -> np.ndarray:
        """Renders a (possibly partial) grid as a (size, size, 3) uint8 image; masked cells are
        filled from a prior, so a preview sharpens as passes commit cells."""
        ...

    def encode_image(self, rgb: np.ndarray) -> np.ndarray:
        """Tokenizes an (H, W, 3) uint8 image (any size) into a (grid, grid) int64 grid."""
        ...


# ---------------------------------------------------------------------------------------------
# A base for models over a masked grid


class GridRenderStart:
    """`schedule` and `start` as every model over a masked token grid defines them.

    Models mix this in; they set `grid_size` and `mask_token` and implement the rest of
    ImageModel (`step`, `preview`, `encode_image`).
    """

    grid_size: int
    mask_token: int

    def schedule(self, total_passes: int) -> list[int]:
        """See ImageModel.schedule."""
        return cosine_schedule(total_passes, self.grid_size * self.grid_size)

    def start(
        self,
        prompt: str,
        seed: int,
        total_passes: int,
        init_tokens: np.ndarray | None = None,
        remask: np.ndarray | None = None,
    ) -> RenderState:
        """See ImageModel.start."""
        grid = initial_tokens(self.grid_size, self.mask_token, init_tokens, remask)
        return RenderState(prompt, seed, total_passes, 0, grid, self.mask_token)
