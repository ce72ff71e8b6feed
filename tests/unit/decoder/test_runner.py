"""The decoder's model runner on the built-in model's code (tiny, untrained): on the CPU it
steps and draws a batch in slices on several threads, with the results of one call."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from libs.model.builtin import MaskGITImageModel
from libs.model.interface import RenderState
from libs.model.maskgit import MaskGITConfig
from libs.model.noop import NoOpModel
from libs.model.vq import VQConfig
from libs.modeltools.train import untrained_model
from services.decoder.runner import Drawing, ModelRunner
from tests.contracts.image_model import PROMPT


@pytest.fixture
def model() -> Iterator[MaskGITImageModel]:
    threads = torch.get_num_threads()
    yield untrained_model(
        VQConfig(channels=(8, 16, 32), res_blocks=1, codebook_size=64, code_dim=8),
        MaskGITConfig(dim=32, depth=2, heads=2, mlp_ratio=2),
        seed=0,
    )
    torch.set_num_threads(threads)  # the runner shares the cores among its slices


async def test_a_cpu_batch_is_stepped_and_drawn_in_slices_like_one_call(model: MaskGITImageModel) -> None:
    steppers: set[tuple[str, int]] = set()  # (thread, torch's intra-op threads there)
    step = model.step

    def step_and_note_the_thread(states: list[RenderState]) -> list[RenderState]:
        steppers.add((threading.current_thread().name, torch.get_num_threads()))
        return step(states)

    def load() -> MaskGITImageModel:
        model.step([model.start(PROMPT, 0, 4)])  # as a real load warms up, on the model thread
        return model

    runner = ModelRunner(load, threads=2)
    await runner.load()
    model.step = step_and_note_the_thread  # type: ignore[method-assign]
    try:
        assert runner.slice_threads == 2
        states = [model.start(PROMPT, 10 + i, 4) for i in range(5)]
        alone = list(states)
        while not states[0].done:
            states, alone = await runner.step(states), step(alone)
            assert states == alone
        # Each slice's thread, the model thread's included (OpenMP keeps the count per
        # thread), runs torch on its share of the cores.
        share = max(1, (os.cpu_count() or 1) // 2)
        assert {(name.rsplit("_", 1)[0], threads) for name, threads in steppers} == {
            ("decoder-model", share),
            ("decoder-slice", share),
        }
        [drawn] = await runner.draw([Drawing([s.tokens for s in states], 64, "png")])
        assert not isinstance(drawn, Exception) and len(drawn) == 5
        [one] = await runner.draw([Drawing([states[3].tokens], 64, "png")])
        assert not isinstance(one, Exception) and one[0] == drawn[3]
    finally:
        runner.close()


async def test_a_model_that_does_not_allow_threads_is_stepped_whole() -> None:
    runner = ModelRunner(NoOpModel, threads=2)
    await runner.load()
    try:
        assert runner.slice_threads == 1
        states = [runner.model.start(PROMPT, i, 2) for i in range(3)]
        assert np.array_equal((await runner.step(states))[2].tokens, runner.model.step(states)[2].tokens)
    finally:
        runner.close()


async def test_a_last_pass_images_and_check_pictures_are_decoded_once_with_the_same_pictures(
    model: MaskGITImageModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A last pass asks for its images and its content-check pictures of the same grids: the
    VQ decoder runs once for both, and each comes out as when drawn alone."""
    runner = ModelRunner(lambda: model, threads=1)
    await runner.load()
    try:
        states = [model.start(PROMPT, 20 + i, 2) for i in range(3)]
        while not states[0].done:
            states = model.step(states)
        last = [s.tokens for s in states[:2]]
        other = [states[2].tokens]
        decodes: list[int] = []
        decode_latent = model.vq.decode_latent

        def counted(latents: torch.Tensor) -> torch.Tensor:
            decodes.append(len(latents))
            return decode_latent(latents)

        monkeypatch.setattr(model.vq, "decode_latent", counted)
        images, checks, check_only = await runner.draw(
            [Drawing(last, 256, "png"), Drawing(last, 64, "png"), Drawing(other, 64, "png")]
        )
        assert sum(decodes) == 3  # grids decoded: the shared two once, the other render's one
        decodes.clear()
        [images_alone] = await runner.draw([Drawing(list(last), 256, "png")])
        [checks_alone] = await runner.draw([Drawing(list(last), 64, "png")])
        [other_alone] = await runner.draw([Drawing(list(other), 64, "png")])
        assert images == images_alone and checks == checks_alone and check_only == other_alone
        assert sum(decodes) == 5
    finally:
        runner.close()


def test_a_model_that_cannot_resize_draws_each_size() -> None:
    """`preview_sizes` is optional: without it each size is drawn by `preview`."""
    from services.decoder.runner import _draw_sizes

    model = NoOpModel()
    state = model.step([model.start(PROMPT, 1, 1)])[0]
    pictures = _draw_sizes(model, [state.tokens], (64, 128))
    assert [p.shape[0] for p in pictures[0]] == [64, 128]
    assert np.array_equal(pictures[0][1], model.preview(state.tokens, 128))
