"""Rendering with the built-in model's code on a tiny untrained configuration (fast): the
ImageModel contract, progressive previews, crash-resume and storage."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from libs.model.builtin import MaskGITImageModel
from libs.model.interface import pack_tokens, state_from_checkpoint, unpack_tokens
from libs.model.maskgit import MaskGITConfig
from libs.model.split import SplitCalls
from libs.model.vq import VQConfig
from libs.modeltools.train import untrained_model
from tests.contracts.image_model import PROMPT, ImageModelContract, run_passes


@pytest.fixture(scope="module")
def model() -> MaskGITImageModel:
    torch.set_num_threads(1)
    return untrained_model(
        VQConfig(channels=(8, 16, 32), res_blocks=1, codebook_size=64, code_dim=8),
        MaskGITConfig(dim=32, depth=2, heads=2, mlp_ratio=2),
        seed=0,
    )


class TestTheBuiltinModelKeepsTheContract(ImageModelContract):
    """Schedule, determinism, batches at different passes and tweaks (tests/contracts)."""


def test_its_sizes(model: MaskGITImageModel) -> None:
    assert model.grid_size == 16 and model.mask_token == model.codebook_size == 64


def test_previews_change_between_passes(model: MaskGITImageModel) -> None:
    trail = run_passes(model, model.start(PROMPT, 5, 8))
    previews = [model.preview(s.tokens, 64) for s in trail]
    assert all(p.shape == (64, 64, 3) and p.dtype == np.uint8 for p in previews)
    for a, b in itertools.pairwise(previews):
        assert not np.array_equal(a, b)
    assert model.preview(trail[-1].tokens, 256).shape == (256, 256, 3)


def test_resume_from_checkpoint_gives_identical_tokens(model: MaskGITImageModel) -> None:
    uninterrupted = run_passes(model, model.start(PROMPT, 21, 8))[-1]
    # The decoder dies after pass 3; its checkpoint event carries the packed grid.
    at_three = run_passes(model, model.start(PROMPT, 21, 8), until=3)[-1]
    assert at_three.pass_index == 3
    checkpoint_pass, checkpoint_tokens = at_three.pass_index, pack_tokens(at_three.tokens)
    # A fresh decoder (a new model object) rebuilds the state and carries on.
    other = MaskGITImageModel(model.vq, model.generator, model.tokenizer, model.sampling, precision="float32")
    rebuilt = state_from_checkpoint(other, PROMPT, 21, 8, checkpoint_pass, unpack_tokens(checkpoint_tokens))
    assert run_passes(other, rebuilt)[-1] == uninterrupted


def test_save_and_load_round_trip(model: MaskGITImageModel, tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path))
    model.save(path)
    loaded = MaskGITImageModel.load(path, precision="float32")
    assert loaded.codebook_size == model.codebook_size
    # float16 storage: the reloaded model renders (not necessarily identical tokens).
    assert run_passes(loaded, loaded.start(PROMPT, 1, 4))[-1].done


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_calls_of_a_fixed_shape_change_no_render(model: MaskGITImageModel, batch: int) -> None:
    # On CUDA every network call is padded to one shape (CUDA_CALL_ROWS) so that a render
    # cannot depend on its batch's size; the padding and the chunking must change nothing.
    fixed = MaskGITImageModel(
        model.vq, model.generator, model.tokenizer, model.sampling, precision="float32", generator_rows=3
    )
    assert model.generator_rows is None, "CPU models run the generator on each batch in one call"
    plain_states = [model.start(PROMPT, 40 + i, 4) for i in range(batch)]
    fixed_states = [fixed.start(PROMPT, 40 + i, 4) for i in range(batch)]
    while not plain_states[0].done:
        plain_states, fixed_states = model.step(plain_states), fixed.step(fixed_states)
        assert plain_states == fixed_states


def test_an_image_has_the_same_pixels_alone_and_among_companions(model: MaskGITImageModel) -> None:
    # A convolution's kernel depends on the batch's size, and its sums on the kernel: the
    # decoder draws each image in calls of one shape (here on a CPU, one image a call).
    grids = [s.tokens for s in model.step([model.start(PROMPT, 60 + i, 4) for i in range(5)])]
    together = model.preview_batch(grids, 64)
    for grid, among in zip(grids, together, strict=True):
        np.testing.assert_array_equal(model.preview_batch([grid], 64)[0], among)


def test_a_batch_in_slices_on_two_threads_renders_as_one_call(model: MaskGITImageModel) -> None:
    # The decoder steps a CPU batch as slices on every core (libs.model.split): a render's
    # tokens and pixels must not notice.
    split = SplitCalls(2)
    try:
        whole = [model.start(PROMPT, 80 + i, 4) for i in range(5)]
        sliced = list(whole)
        while not whole[0].done:
            whole, sliced = model.step(whole), split(model.step, sliced)
            assert whole == sliced
        grids = [s.tokens for s in whole]
        drawn = split(lambda part: model.preview_batch(part, 64), grids)
        for one, other in zip(model.preview_batch(grids, 64), drawn, strict=True):
            np.testing.assert_array_equal(one, other)
    finally:
        split.close()


def test_a_call_holds_a_row_at_least(model: MaskGITImageModel) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        MaskGITImageModel(model.vq, model.generator, model.tokenizer, decoder_rows=0)
