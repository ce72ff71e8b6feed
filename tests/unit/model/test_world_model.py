"""WorldModel: the procedural model that draws exactly what the prompt says."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from libs.model.interface import ImageModel, cosine_schedule, state_from_checkpoint
from libs.model.noop import NoOpModel
from libs.model.registry import load_model
from libs.model.scenes import FORBIDDEN_SHAPE, INTERNAL_SIZE, render_scene
from libs.model.world_model import WorldModel, parse_prompt

PROMPT = "a large red circle at the top left and a small blue star on the right on a gray background"


@pytest.fixture(scope="module")
def model() -> WorldModel:
    torch.set_num_threads(1)
    loaded = load_model("world")
    assert isinstance(loaded, WorldModel)
    return loaded


def _render(m: ImageModel, prompt: str, seed: int, passes: int) -> list[np.ndarray]:
    state = m.start(prompt, seed, passes)
    grids = []
    while not state.done:
        state = m.step([state])[0]
        grids.append(state.tokens)
    return grids


def test_conforms_and_mirrors_the_base(model: WorldModel) -> None:
    assert isinstance(model, ImageModel)
    assert model.name == "darkroom-world"
    assert (model.grid_size, model.codebook_size, model.mask_token) == (
        model.base.grid_size,
        model.base.codebook_size,
        model.base.mask_token,
    )
    assert model.preview(model.start("a circle", 0, 8).tokens, 64).shape == (64, 64, 3)


def test_prompt_is_read_into_the_scene() -> None:
    scene = parse_prompt(PROMPT, 5)
    got = [(o.shape, o.colour, o.size, o.position) for o in scene.objects]
    assert got == [("circle", "red", "large", "top left"), ("star", "blue", "small", "right")]
    assert scene.background == "gray"
    assert parse_prompt("two green hearts in pixel art at night", 1).style == "pixel art"
    assert [o.shape for o in parse_prompt("two green hearts", 1).objects] == ["heart", "heart"]
    # The colour of "a blue sky" is the background's, not an object's.
    sky = parse_prompt("a yellow triangle against a blue sky", 2)
    assert sky.background == "sky" and sky.objects[0].colour == "yellow"
    # Nothing named: one seed-chosen object, never the forbidden one; unknown words are ignored.
    for seed in range(20):
        default = parse_prompt("zebra banana", seed)
        assert len(default.objects) == 1 and not default.has_forbidden
    assert parse_prompt("a skull", 3).has_forbidden
    assert parse_prompt(PROMPT, 5) == parse_prompt(PROMPT, 5)


def test_render_is_deterministic_and_follows_the_schedule() -> None:
    m = WorldModel(NoOpModel())
    a, b = _render(m, PROMPT, 11, 8), _render(m, PROMPT, 11, 8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    masked = [int((g == m.mask_token).sum()) for g in a]
    assert masked == cosine_schedule(8) == m.schedule(8)
    # Other seeds commit cells in another order.
    c = _render(m, PROMPT, 12, 8)
    assert not np.array_equal(a[2] == m.mask_token, c[2] == m.mask_token)


def test_resume_from_checkpoint_is_exact() -> None:
    m = WorldModel(NoOpModel())
    full = _render(m, PROMPT, 4, 10)
    state = m.start(PROMPT, 4, 10)
    for _ in range(4):
        state = m.step([state])[0]
    fresh = WorldModel(NoOpModel())  # a new process: empty cache
    resumed = state_from_checkpoint(fresh, PROMPT, 4, 10, 4, state.tokens.reshape(-1).copy())
    rest = []
    while not resumed.done:
        resumed = fresh.step([resumed])[0]
        rest.append(resumed.tokens)
    assert all(np.array_equal(x, y) for x, y in zip(full[4:], rest, strict=True))


def test_batches_and_tweaks() -> None:
    m = WorldModel(NoOpModel())
    states = [m.start("a red circle", 1, 8), m.start("a white skull", 2, 8)]
    batched = m.step(states)
    assert all(np.array_equal(x.tokens, m.step([s])[0].tokens) for x, s in zip(batched, states, strict=True))
    init = m.target("a red circle", 1)
    remask = np.zeros((16, 16), bool)
    remask[:8] = True
    grids = _render_tweak(m, init, remask)
    assert np.array_equal(grids[-1][8:], init[8:])
    assert np.array_equal(grids[-1][:8], m.target("a blue square", 1)[:8])


def _render_tweak(m: WorldModel, init: np.ndarray, remask: np.ndarray) -> list[np.ndarray]:
    state = m.start("a blue square", 1, 6, init_tokens=init, remask=remask)
    grids = []
    while not state.done:
        state = m.step([state])[0]
        grids.append(state.tokens)
    return grids


def test_final_grid_is_the_vq_encoding_of_the_scene(model: WorldModel) -> None:
    final = _render(model, "a large white skull in the centre on a black background", 3, 8)[-1]
    scene = model.scene("a large white skull in the centre on a black background", 3)
    assert scene.has_forbidden and scene.objects[0].shape == FORBIDDEN_SHAPE
    assert np.array_equal(final, model.base.encode_image(render_scene(scene, INTERNAL_SIZE)))
