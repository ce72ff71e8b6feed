"""The decoder's model runner on the built-in model's code (tiny, untrained): on the CPU it
steps and draws a batch in slices on several threads, with the results of one call."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from libs.model.builtin import MaskGITImageModel
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
    runner = ModelRunner(lambda: model, threads=2)
    await runner.load()
    try:
        assert runner.slice_threads == 2
        assert torch.get_num_threads() == max(1, (os.cpu_count() or 1) // 2)
        states = [model.start(PROMPT, 10 + i, 4) for i in range(5)]
        alone = list(states)
        while not states[0].done:
            states, alone = await runner.step(states), model.step(alone)
            assert states == alone
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
