"""The aMUSEd adapter on a tiny random aMUSEd saved as diffusers saves the real ones: the
ImageModel contract (schedule, determinism, resume, batching at different passes, tweaks,
previews) and loading by path, with nothing downloaded."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from libs.model.amused import AmusedImageModel, AmusedSampling
from libs.model.interface import (
    ImageModel,
    RenderState,
    cells_for_grid,
    load_model,
    pack_cells,
    pack_tokens,
    state_from_checkpoint,
    unpack_tokens,
)
from tests.tiny_amused import CODEBOOK, build_tiny_amused

PROMPT = "a red circle on grass"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_amused(tmp_path_factory.mktemp("amused") / "tiny-amused-256")


@pytest.fixture(scope="module")
def model(folder: Path) -> AmusedImageModel:
    torch.set_num_threads(1)
    loaded = load_model(f"amused:{folder}")
    assert isinstance(loaded, AmusedImageModel)
    return loaded


def _run(model: ImageModel, state: RenderState, until: int | None = None) -> list[RenderState]:
    trail = [state]
    while not trail[-1].done and (until is None or trail[-1].pass_index < until):
        trail.append(model.step([trail[-1]])[0])
    return trail


def test_sizes_come_from_the_folders_configs(model: AmusedImageModel, folder: Path) -> None:
    assert isinstance(model, ImageModel)
    assert model.name == f"amused:{folder}"
    assert model.grid_size == 16 and model.codebook_size == CODEBOOK == model.mask_token
    assert model.model_mask_token == CODEBOOK + 1 and model.image_size == 256


def test_each_pass_follows_the_schedule_and_keeps_committed_cells(model: AmusedImageModel) -> None:
    trail = _run(model, model.start(PROMPT, 3, 12))
    assert [s.masked_count for s in trail[1:]] == model.schedule(12)
    assert trail[-1].done and trail[-1].tokens.max() < model.codebook_size
    for before, after in itertools.pairwise(trail):
        kept = before.tokens != model.mask_token
        assert np.array_equal(before.tokens[kept], after.tokens[kept])


def test_a_seed_fixes_the_render(model: AmusedImageModel) -> None:
    a = _run(model, model.start(PROMPT, 11, 8))
    b = _run(model, model.start(PROMPT, 11, 8))
    c = _run(model, model.start(PROMPT, 12, 8))
    assert a == b
    assert not np.array_equal(a[-1].tokens, c[-1].tokens)


def test_a_render_resumes_from_its_checkpoint_in_a_new_process(model: AmusedImageModel, folder: Path) -> None:
    uninterrupted = _run(model, model.start(PROMPT, 21, 8))[-1]
    at_three = _run(model, model.start(PROMPT, 21, 8), until=3)[-1]
    packed = pack_tokens(at_three.tokens)
    # A fresh decoder loads the folder again and rebuilds the state from the checkpoint event.
    other = AmusedImageModel(folder)
    rebuilt = state_from_checkpoint(other, PROMPT, 21, 8, 3, unpack_tokens(packed, other.grid_size))
    assert _run(other, rebuilt)[-1] == uninterrupted
    # Its first preview has no pass prediction to show: it fills from committed tokens.
    assert other.preview(rebuilt.tokens, 64).shape == (64, 64, 3)


def test_a_batch_steps_renders_at_different_passes(model: AmusedImageModel) -> None:
    a = _run(model, model.start(PROMPT, 1, 8), until=2)[-1]
    b = model.start("a big blue star at night", 2, 12)
    stepped = model.step([a, b])
    assert [s.pass_index for s in stepped] == [3, 1]
    assert stepped[0].masked_count == model.schedule(8)[2]
    assert stepped[1].masked_count == model.schedule(12)[0]
    with pytest.raises(ValueError, match="finished"):
        model.step([_run(model, model.start(PROMPT, 1, 2))[-1]])


def test_previews_show_each_pass_prediction(model: AmusedImageModel) -> None:
    trail = _run(model, model.start(PROMPT, 5, 8))
    previews = model.preview_batch([s.tokens for s in trail[1:]], 128)
    assert all(p.shape == (128, 128, 3) and p.dtype == np.uint8 for p in previews)
    for a, b in itertools.pairwise(previews):
        assert not np.array_equal(a, b)
    # The first pass commits a few cells; its preview fills every other cell with the
    # grid that pass predicted, so it shows a whole picture from the start.
    first = trail[1]
    committed = first.tokens != model.mask_token
    filled = model._filled(first.tokens)
    assert (filled < model.codebook_size).all()
    assert np.array_equal(filled[committed], first.tokens[committed])
    assert model.preview(trail[-1].tokens, 256).shape == (256, 256, 3)


def test_a_tweak_through_the_vq_encoder_keeps_the_unmasked_cells(model: AmusedImageModel) -> None:
    image = np.zeros((300, 300, 3), np.uint8)
    image[75:225, 75:225] = (220, 40, 40)
    grid = model.encode_image(image)
    assert grid.shape == (16, 16) and grid.dtype == np.int64 and grid.max() < model.codebook_size
    remask = np.zeros((16, 16), bool)
    remask[4:12, 4:12] = True
    final = _run(model, model.start("a blue circle", 4, 8, init_tokens=grid, remask=remask))[-1]
    assert np.array_equal(final.tokens[~remask], grid[~remask])
    assert final.tokens.max() < model.codebook_size


def test_without_guidance_one_call_per_pass_still_renders(folder: Path) -> None:
    unguided = AmusedImageModel(folder, sampling=AmusedSampling(guidance_scale=1.0))
    assert _run(unguided, unguided.start(PROMPT, 2, 4))[-1].done


def test_a_folder_that_is_not_an_amused_pipeline_is_refused(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"model_index\.json"):
        load_model(f"amused:{tmp_path}")
    other = tmp_path / "other"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ValueError, match="StableDiffusionPipeline"):
        load_model(f"amused:{other}")
    (other / "model_index.json").write_text((folder / "model_index.json").read_text())
    with pytest.raises(FileNotFoundError, match="vqvae"):
        load_model(f"amused:{other}")


def test_a_tweak_mask_of_the_gateway_grid_scales_to_a_finer_grid() -> None:
    cells = np.zeros((16, 16), bool)
    cells[0, 0] = cells[15, 8] = True
    assert np.array_equal(cells_for_grid(pack_cells(cells), 16), cells)
    fine = cells_for_grid(pack_cells(cells), 32)
    assert fine.shape == (32, 32) and fine.sum() == 8
    assert fine[0:2, 0:2].all() and fine[30:32, 16:18].all()
    with pytest.raises(ValueError, match="square"):
        cells_for_grid(b"\x00" * 17, 16)
