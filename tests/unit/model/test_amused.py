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
from libs.model.interface import cells_for_grid, pack_cells, pack_tokens, state_from_checkpoint, unpack_tokens
from libs.model.registry import load_model
from tests.contracts.image_model import PROMPT, ImageModelContract, run_passes
from tests.tiny_amused import CODEBOOK, build_tiny_amused


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_amused(tmp_path_factory.mktemp("amused") / "tiny-amused-256")


@pytest.fixture(scope="module")
def model(folder: Path) -> AmusedImageModel:
    torch.set_num_threads(1)
    loaded = load_model(f"amused:{folder}")
    assert isinstance(loaded, AmusedImageModel)
    return loaded


class TestTheAmusedAdapterKeepsTheContract(ImageModelContract):
    """Schedule, determinism, batches at different passes and tweaks through its VQ encoder
    (tests/contracts)."""


def test_sizes_come_from_the_folders_configs(model: AmusedImageModel, folder: Path) -> None:
    assert model.name == f"amused:{folder}"
    assert model.grid_size == 16 and model.codebook_size == CODEBOOK == model.mask_token
    assert model.model_mask_token == CODEBOOK + 1 and model.image_size == 256


def test_a_render_resumes_from_its_checkpoint_in_a_new_process(model: AmusedImageModel, folder: Path) -> None:
    uninterrupted = run_passes(model, model.start(PROMPT, 21, 8))[-1]
    at_three = run_passes(model, model.start(PROMPT, 21, 8), until=3)[-1]
    packed = pack_tokens(at_three.tokens)
    # A fresh decoder loads the folder again and rebuilds the state from the checkpoint event.
    other = AmusedImageModel(folder)
    rebuilt = state_from_checkpoint(other, PROMPT, 21, 8, 3, unpack_tokens(packed, other.grid_size))
    assert run_passes(other, rebuilt)[-1] == uninterrupted
    # Its first preview has no pass prediction to show: it fills from committed tokens.
    assert other.preview(rebuilt.tokens, 64).shape == (64, 64, 3)


def test_previews_show_each_pass_prediction(model: AmusedImageModel) -> None:
    trail = run_passes(model, model.start(PROMPT, 5, 8))
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


def test_a_grid_drawn_at_several_sizes_at_once_matches_each_size_alone(model: AmusedImageModel) -> None:
    trail = run_passes(model, model.start(PROMPT, 9, 4))
    grids = [trail[2].tokens, trail[-1].tokens]
    both = model.preview_sizes(grids, (64, 256))
    for k, size in enumerate((64, 256)):
        alone = model.preview_batch(grids, size)
        assert all(np.array_equal(per_grid[k], a) for per_grid, a in zip(both, alone, strict=True))


def test_without_guidance_one_call_per_pass_still_renders(folder: Path) -> None:
    unguided = AmusedImageModel(folder, sampling=AmusedSampling(guidance_scale=1.0))
    assert run_passes(unguided, unguided.start(PROMPT, 2, 4))[-1].done


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
