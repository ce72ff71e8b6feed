"""NoOpModel: the full ImageModel interface with almost no compute (the "noop" kind).

Why it ships with the run-time model and not with the tests: operators and benchmarks run the
real decoder with it (`DARKROOM_MODEL=noop:0.15`, a stand-in of a known cost per pass) to measure
the pipeline without a model's compute, and the unit and integration tests wire it into services.
"""

from __future__ import annotations

import time

import numpy as np

from libs.model.interface import GRID_SIZE, GridRenderStart, RenderState, next_masked_count, pass_seed

MAX_SECONDS = 60.0
"""The most a stand-in may sleep per pass, or per further image of a batched pass."""


class NoOpModel(GridRenderStart):
    """A model with the full interface and almost no compute, for pipeline benchmarks and tests.

    Tokens are a deterministic function of (seed, pass, cell); commits follow the same cosine
    schedule and resume contract as a real model. `pass_seconds` adds a fixed sleep per `step`
    call and `image_seconds` a sleep per image of the batch beyond the first, to emulate a
    model of known cost that batching makes cheaper per image but not free.
    """

    name: str = "noop"
    grid_size: int = GRID_SIZE
    codebook_size: int = 256
    mask_token: int = 256

    def __init__(self, pass_seconds: float = 0.0, image_seconds: float = 0.0) -> None:
        """Creates the model.

        Args:
            pass_seconds: Sleep per `step` call (one batched pass), in seconds.
            image_seconds: More sleep per image of a batched pass beyond the first, in seconds.
        """
        self.pass_seconds = pass_seconds
        self.image_seconds = image_seconds
        # A fixed palette so previews of different tokens differ visibly.
        self._palette = np.random.default_rng(0).integers(0, 256, (self.codebook_size + 1, 3)).astype(np.uint8)
        self._palette[self.mask_token] = 128

    def step(self, states: list[RenderState]) -> list[RenderState]:
        """See ImageModel.step."""
        out: list[RenderState] = []
        for state in states:
            if state.done:
                raise ValueError("step() called on a finished render")
            rng = np.random.default_rng(pass_seed(state.seed, state.pass_index))
            values = rng.integers(0, self.codebook_size, state.tokens.size)
            order = rng.permutation(state.tokens.size)
            flat = state.tokens.reshape(-1).copy()
            masked = np.flatnonzero(flat == self.mask_token)
            keep = next_masked_count(masked.size, state.pass_index, state.total_passes)
            # Commit the masked cells that come first in this pass's random order.
            rank = np.empty_like(order)
            rank[order] = np.arange(order.size)
            chosen = masked[np.argsort(rank[masked], kind="stable")][: masked.size - keep]
            flat[chosen] = values[chosen]
            out.append(state.with_tokens(flat.reshape(state.tokens.shape)))
        cost = self.pass_seconds + self.image_seconds * max(0, len(states) - 1)
        if cost > 0:
            time.sleep(cost)
        return out

    def preview(self, tokens: np.ndarray, size: int) -> np.ndarray:
        """See ImageModel.preview: one flat colour per cell."""
        grid = np.asarray(tokens, dtype=np.int64).reshape(self.grid_size, self.grid_size)
        img = self._palette[np.clip(grid, 0, self.mask_token)]
        reps = -(-size // self.grid_size)
        return np.ascontiguousarray(np.repeat(np.repeat(img, reps, 0), reps, 1)[:size, :size])

    def encode_image(self, rgb: np.ndarray) -> np.ndarray:
        """See ImageModel.encode_image: the mean brightness of each cell, quantized."""
        img = np.asarray(rgb, dtype=np.float32)
        h, w = img.shape[0] // self.grid_size, img.shape[1] // self.grid_size
        if h == 0 or w == 0:
            raise ValueError("image smaller than the token grid")
        cells = img[: h * self.grid_size, : w * self.grid_size].reshape(self.grid_size, h, self.grid_size, w, -1)
        mean = cells.mean(axis=(1, 3, 4))
        out: np.ndarray = np.clip(mean / 256.0 * self.codebook_size, 0, self.codebook_size - 1).astype(np.int64)
        return out


def load(argument: str | None, device: str) -> NoOpModel:
    """The registry's loader of the "noop" kind (libs.model.registry); `device` is unused.

    Args:
        argument: None for no sleep; "S" to sleep S seconds per pass; "S+I" to sleep S seconds
            per pass plus I per further image of a batched pass.
        device: Ignored (no compute).

    Raises:
        ValueError: the argument is not such a cost, or a cost is outside [0, 60] seconds.
    """
    del device
    if argument is None:
        return NoOpModel()
    spec = f"noop:{argument}"
    base, _, per_image = argument.partition("+")
    try:
        pass_seconds, image_seconds = float(base), float(per_image or 0)
    except ValueError:
        raise ValueError(
            f"{spec!r}: the stand-in's cost is seconds per pass, e.g. noop:0.15, "
            "or per pass plus per further image of a batch, e.g. noop:0.06+0.09"
        ) from None
    if not (0 <= pass_seconds <= MAX_SECONDS and 0 <= image_seconds <= MAX_SECONDS):
        raise ValueError(f"{spec!r}: seconds per pass must be between 0 and {MAX_SECONDS:g}")
    return NoOpModel(pass_seconds, image_seconds)
