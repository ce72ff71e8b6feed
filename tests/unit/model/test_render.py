"""Rendering with the built-in model's code on a tiny untrained configuration (fast): determinism,
progressive previews, crash-resume, tweaks and batching."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from libs.model.builtin import MaskGITImageModel
from libs.model.interface import ImageModel, RenderState, pack_tokens, state_from_checkpoint, unpack_tokens
from libs.model.maskgit import MaskGITConfig
from libs.model.vq import VQConfig

PROMPT = "a small red circle on the left, pixel art"


@pytest.fixture(scope="module")
def model() -> MaskGITImageModel:
    torch.set_num_threads(1)
    return MaskGITImageModel.untrained(
        VQConfig(channels=(8, 16, 32), res_blocks=1, codebook_size=64, code_dim=8),
        MaskGITConfig(dim=32, depth=2, heads=2, mlp_ratio=2),
        seed=0,
    )


def _run(model: ImageModel, state: RenderState, until: int | None = None) -> list[RenderState]:
    trail = [state]
    while not trail[-1].done and (until is None or trail[-1].pass_index < until):
        trail.append(model.step([trail[-1]])[0])
    return trail


def test_conforms_to_the_interface(model: MaskGITImageModel) -> None:
    assert isinstance(model, ImageModel)
    assert model.grid_size == 16 and model.mask_token == model.codebook_size == 64


def test_render_is_deterministic_for_a_seed(model: MaskGITImageModel) -> None:
    a = _run(model, model.start(PROMPT, 11, 8))
    b = _run(model, model.start(PROMPT, 11, 8))
    c = _run(model, model.start(PROMPT, 12, 8))
    assert a == b
    assert not np.array_equal(a[-1].tokens, c[-1].tokens)


def test_each_pass_follows_the_schedule(model: MaskGITImageModel) -> None:
    trail = _run(model, model.start(PROMPT, 3, 10))
    assert [s.masked_count for s in trail[1:]] == model.schedule(10)
    assert trail[-1].done and trail[-1].tokens.max() < model.codebook_size
    # Committed cells are never changed by later passes.
    for before, after in itertools.pairwise(trail):
        kept = before.tokens != model.mask_token
        assert np.array_equal(before.tokens[kept], after.tokens[kept])


def test_previews_change_between_passes(model: MaskGITImageModel) -> None:
    trail = _run(model, model.start(PROMPT, 5, 8))
    previews = [model.preview(s.tokens, 64) for s in trail]
    assert all(p.shape == (64, 64, 3) and p.dtype == np.uint8 for p in previews)
    for a, b in itertools.pairwise(previews):
        assert not np.array_equal(a, b)
    assert model.preview(trail[-1].tokens, 256).shape == (256, 256, 3)


def test_resume_from_checkpoint_gives_identical_tokens(model: MaskGITImageModel) -> None:
    uninterrupted = _run(model, model.start(PROMPT, 21, 8))[-1]
    # The decoder dies after pass 3; its checkpoint event carries the packed grid.
    at_three = _run(model, model.start(PROMPT, 21, 8), until=3)[-1]
    assert at_three.pass_index == 3
    checkpoint_pass, checkpoint_tokens = at_three.pass_index, pack_tokens(at_three.tokens)
    # A fresh decoder (a new model object) rebuilds the state and carries on.
    other = MaskGITImageModel(model.vq, model.generator, model.tokenizer, model.sampling, precision="float32")
    rebuilt = state_from_checkpoint(other, PROMPT, 21, 8, checkpoint_pass, unpack_tokens(checkpoint_tokens))
    assert _run(other, rebuilt)[-1] == uninterrupted


def test_batched_jobs_at_different_passes(model: MaskGITImageModel) -> None:
    a = _run(model, model.start(PROMPT, 1, 8), until=2)[-1]
    b = model.start("a big blue star at night", 2, 12)
    stepped = model.step([a, b])
    assert [s.pass_index for s in stepped] == [3, 1]
    assert stepped[0].masked_count == model.schedule(8)[2]
    assert stepped[1].masked_count == model.schedule(12)[0]
    with pytest.raises(ValueError):
        model.step([_run(model, model.start(PROMPT, 1, 2))[-1]])


def test_tweak_keeps_unmasked_cells(model: MaskGITImageModel) -> None:
    image = np.zeros((200, 200, 3), np.uint8)
    image[50:150, 50:150] = (220, 40, 40)
    grid = model.encode_image(image)
    assert grid.shape == (16, 16) and grid.dtype == np.int64
    remask = np.zeros((16, 16), bool)
    remask[4:12, 4:12] = True
    final = _run(model, model.start("a blue circle", 4, 8, init_tokens=grid, remask=remask))[-1]
    assert np.array_equal(final.tokens[~remask], grid[~remask])
    assert final.tokens.max() < model.codebook_size


def test_save_and_load_round_trip(model: MaskGITImageModel, tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path))
    model.save(path)
    loaded = MaskGITImageModel.load(path, precision="float32")
    assert loaded.codebook_size == model.codebook_size
    # float16 storage: the reloaded model renders (not necessarily identical tokens).
    assert _run(loaded, loaded.start(PROMPT, 1, 4))[-1].done
