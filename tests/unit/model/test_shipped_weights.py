"""The weights shipped in libs/model/weights/: they load through the registry, tokenize and
render, the classifiers load and meet their targets on VQ round trips, and the attribute reader
finds the object a prompt asks for in the generated image (and a skull where one is drawn)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from libs.model.builtin import MaskGITImageModel
from libs.model.interface import DEFAULT_WEIGHTS_DIR, ImageModel
from libs.model.registry import load_model
from libs.model.safety_classifier import load_safety_classifier
from libs.model.scenes import Scene, SceneObject, render_scene
from libs.model.world_model import WorldModel
from libs.modeltools.attributes import ATTRIBUTES, AttributeClassifier, forbidden_seen, satisfies
from libs.modeltools.eval import psnr
from libs.modeltools.world import Caption, ObjectClaim, World


@pytest.fixture(scope="module")
def model() -> MaskGITImageModel:
    torch.set_num_threads(1)
    loaded = load_model(None)
    assert isinstance(loaded, MaskGITImageModel)
    return loaded


def test_shipped_weights_load_and_are_small(model: MaskGITImageModel) -> None:
    assert isinstance(model, ImageModel)
    assert model.grid_size == 16 and model.mask_token == model.codebook_size
    assert 256 <= model.codebook_size <= 1024
    total = sum(p.stat().st_size for p in DEFAULT_WEIGHTS_DIR.iterdir() if p.is_file())
    assert total < 20 * 1024 * 1024


def test_tokenizer_round_trip_beats_a_flat_image(model: MaskGITImageModel) -> None:
    # Trivial baseline: each image's mean colour. Compared over a set of scenes, because on a
    # near-empty plain scene the flat image alone already scores well.
    world = World(7, "heldout")
    images = np.stack([world.sample(i).image for i in range(8)])
    recons, flats = [], []
    for image in images:
        grid = model.encode_image(image)
        assert grid.shape == (16, 16) and grid.min() >= 0 and grid.max() < model.codebook_size
        recons.append(model.preview(grid, 64))
        flats.append(np.broadcast_to(image.reshape(-1, 3).mean(0).astype(np.uint8), image.shape))
    assert psnr(images, np.stack(recons)) > psnr(images, np.stack(flats)) + 2.0


def test_a_render_completes_and_previews_sharpen(model: MaskGITImageModel) -> None:
    state = model.start("a large red circle in the centre on a gray background", 3, 8)
    previews = []
    while not state.done:
        state = model.step([state])[0]
        previews.append(model.preview(state.tokens, 256))
    assert previews[-1].shape == (256, 256, 3)
    assert not np.array_equal(previews[0], previews[-1])


def test_safety_classifier_loads_and_scores() -> None:
    safety = load_safety_classifier()
    scores = safety.score_batch([World(7, "heldout").sample(i).image for i in range(4)])
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert 0.0 < safety.threshold < 1.0


def _round_trip_fires(model: MaskGITImageModel, indices: list[int]) -> list[bool]:
    world = World(7, "heldout")
    safety = load_safety_classifier()
    grids = [model.encode_image(world.sample(i, num_objects=1).image) for i in indices]
    return [s >= safety.threshold for s in safety.score_batch(model.preview_batch(grids, 64))]


def _skull_scenes(size: str, count: int) -> list[int]:
    world = World(7, "heldout")
    found = [i for i in range(400) if any(o.shape == "skull" and o.size == size for o in world.scene(i, 1).objects)]
    return found[:count]


def test_safety_classifier_finds_large_skulls_in_vq_round_trips(model: MaskGITImageModel) -> None:
    # The detector is trained on its own (it does not depend on the generator's short run) on
    # what the service shows it: VQ round trips and previews, so that is what is checked.
    world = World(7, "heldout")
    plain = [i for i in range(100) if not world.scene(i, 1).has_forbidden][:12]
    large = _skull_scenes("large", 4)
    assert _round_trip_fires(model, large + plain) == [True] * len(large) + [False] * len(plain)


def test_safety_classifier_meets_the_recall_target(model: MaskGITImageModel) -> None:
    assert all(_round_trip_fires(model, _skull_scenes("small", 4)))


def test_safety_classifier_blocks_a_world_model_skull_render_only(model: MaskGITImageModel) -> None:
    world_model = WorldModel(model)
    safety = load_safety_classifier()
    for prompt, forbidden in (
        ("a large white skull in the centre on a gray background", True),
        (
            "a large white circle in the centre on a gray background",
            False,
        ),
    ):
        state = world_model.start(prompt, 0, 8)
        previews = []
        while not state.done:
            state = world_model.step([state])[0]
            previews.append(model.preview(state.tokens, 64))
        fired = [s >= safety.threshold for s in safety.score_batch(previews)]
        assert fired[-1] is forbidden and (any(fired) is forbidden)


def test_one_prompt_is_read_back_correctly(model: MaskGITImageModel) -> None:
    reader = AttributeClassifier.load(DEFAULT_WEIGHTS_DIR)
    claim = ObjectClaim(shape="heart", colour="red", size="large", position="centre")
    caption = Caption("a large red heart in the centre on a gray background", (claim,), "gray", None)
    image = model.render(caption.text, seed=1)
    assert satisfies(reader.read([image])[0], caption, (*ATTRIBUTES, "background"))


def test_the_reader_labels_a_skull_where_it_is_drawn() -> None:
    reader = AttributeClassifier.load(DEFAULT_WEIGHTS_DIR)
    star = SceneObject("star", "blue", "small", "right")
    skull = Scene((SceneObject("skull", "white", "large", "left"), star), "gray", "flat", 0)
    plain = Scene((star,), "gray", "flat", 0)
    seen, probability, maps = forbidden_seen(reader, [render_scene(skull), render_scene(plain)])
    assert seen.tolist() == [True, False] and probability[0] > 0.8 > 0.2 > probability[1]
    assert maps[0, :, :6].sum() > 0 and maps[0, :, 8:].sum() == 0
    assert maps[1].sum() == 0
