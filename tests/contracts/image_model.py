"""The ImageModel contract (libs.model.interface): what the decoder relies on of any model.

A model's tests subclass `ImageModelContract` and supply a `model` fixture. The contract
covers the schedule, committed cells staying put, a seed fixing the render, batches of
renders at different passes and tweaks keeping their unmasked cells; each model's own
tests add what depends on how it is built (resume in a new process, previews, storage).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from libs.model.interface import ImageModel, RenderState

PROMPT = "a small red circle on the left, pixel art"


def run_passes(model: ImageModel, state: RenderState, until: int | None = None) -> list[RenderState]:
    """The states of a render, one pass at a time, until it is done (or reaches `until`)."""
    trail = [state]
    while not trail[-1].done and (until is None or trail[-1].pass_index < until):
        trail.append(model.step([trail[-1]])[0])
    return trail


class ImageModelContract:
    """Subclasses supply the `model` fixture."""

    def test_conforms_to_the_interface(self, model: ImageModel) -> None:
        assert isinstance(model, ImageModel)
        assert model.mask_token == model.codebook_size

    def test_each_pass_follows_the_schedule_and_keeps_committed_cells(self, model: ImageModel) -> None:
        trail = run_passes(model, model.start(PROMPT, 3, 10))
        assert [s.masked_count for s in trail[1:]] == model.schedule(10)
        assert trail[-1].done and trail[-1].tokens.max() < model.codebook_size
        # Committed cells are never changed by later passes.
        for before, after in itertools.pairwise(trail):
            kept = before.tokens != model.mask_token
            assert np.array_equal(before.tokens[kept], after.tokens[kept])

    def test_a_seed_fixes_the_render(self, model: ImageModel) -> None:
        a = run_passes(model, model.start(PROMPT, 11, 8))
        b = run_passes(model, model.start(PROMPT, 11, 8))
        c = run_passes(model, model.start(PROMPT, 12, 8))
        assert a == b
        assert not np.array_equal(a[-1].tokens, c[-1].tokens)

    def test_a_batch_steps_renders_at_different_passes(self, model: ImageModel) -> None:
        a = run_passes(model, model.start(PROMPT, 1, 8), until=2)[-1]
        b = model.start("a big blue star at night", 2, 12)
        stepped = model.step([a, b])
        assert [s.pass_index for s in stepped] == [3, 1]
        assert stepped[0].masked_count == model.schedule(8)[2]
        assert stepped[1].masked_count == model.schedule(12)[0]
        with pytest.raises(ValueError, match="finished"):
            model.step([run_passes(model, model.start(PROMPT, 1, 2))[-1]])

    def test_a_tweak_keeps_the_unmasked_cells(self, model: ImageModel) -> None:
        image = np.zeros((300, 300, 3), np.uint8)
        image[75:225, 75:225] = (220, 40, 40)
        grid = model.encode_image(image)
        side = model.grid_size
        assert grid.shape == (side, side) and grid.dtype == np.int64 and grid.max() < model.codebook_size
        remask = np.zeros((side, side), bool)
        remask[side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = True
        final = run_passes(model, model.start("a blue circle", 4, 8, init_tokens=grid, remask=remask))[-1]
        assert np.array_equal(final.tokens[~remask], grid[~remask])
        assert final.tokens.max() < model.codebook_size
