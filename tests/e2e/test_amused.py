"""End to end with an aMUSEd model: the stack's decoders load a tiny random aMUSEd folder.

The folder is built inside the test (tests/tiny_amused.py) and saved as diffusers saves the
real amused-256: nothing is downloaded. Both decoder pools restart with
`DARKROOM_MODEL=amused:<folder>` for this module and go back to their usual models after
it. Through the official openai SDK: a generation, a stream of partial images, a tweak under
a mask whose unmasked cells keep their tokens, and a decoder killed mid-render that resumes
from its checkpoint and renders the same images.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
from PIL import Image

from infra.stack import Stack
from libs.cli.accounts import create_account
from libs.model.amused import AmusedImageModel
from libs.model.interface import unpack_tokens
from libs.runtime.wiring import minio_store
from libs.settings import DEV_SIGNING_KEY, MinioSettings
from services.gateway.models import PASSES
from tests.e2e.jobs import api, create_async, exactly_once, wait_done, watching
from tests.tiny_amused import build_tiny_amused

DECODERS = ("decoder", "decoder-api")
# Four 256x256 images over 12 passes: with the e2e build of the tiny model, a fraction of a
# second per pass on a CPU, so a decoder can be killed between two passes.
SLOW = {"prompt": "a blue square on grass", "n": 4, "size": "256x256", "quality": "high"}


@pytest.fixture(scope="module")
def amused(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack with both decoder pools on the tiny aMUSEd; the usual models after."""
    folder = build_tiny_amused(tmp_path_factory.mktemp("amused") / "tiny-amused-256", layers=6, hidden=256)
    stack.up_infra()
    stack.up_services()
    model = f"amused:{folder}"
    profile = dataclasses.replace(
        stack.profile,
        process_env=(*stack.profile.process_env, *((name, "DARKROOM_MODEL", model) for name in DECODERS)),
    )
    with_amused = Stack(profile, say=lambda line: print(line))
    for name in DECODERS:
        stack.proc(name).stop()
    with_amused.up_services()
    yield with_amused
    for name in DECODERS:
        with_amused.proc(name).stop()
    stack.up_services()


@pytest.fixture(scope="module")
def key(amused: Stack) -> str:
    email = f"amused-{uuid.uuid4().hex[:10]}@example.com"
    account = asyncio.run(create_account(amused.profile.kafka_bootstrap, email, "pro", DEV_SIGNING_KEY))
    return str(account["api_key"])


@pytest.fixture
def client(amused: Stack, key: str) -> Iterator[openai.OpenAI]:
    amused.up_infra()
    amused.up_services()
    with openai.OpenAI(base_url=f"{amused.profile.gateway_url}/v1", api_key=key, max_retries=0, timeout=120) as c:
        yield c


def _folder(stack: Stack) -> Path:
    [model] = {value for name, var, value in stack.profile.process_env if name == "decoder" and var == "DARKROOM_MODEL"}
    return Path(model.removeprefix("amused:"))


def _tokens(stack: Stack, job_id: str) -> np.ndarray:
    store = minio_store(MinioSettings(minio_endpoint=stack.profile.minio_endpoint))
    return unpack_tokens(asyncio.run(store.get(f"tokens/{job_id}/0.u16")))


def _png(b64: str | None) -> Image.Image:
    assert b64
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_generate_and_stream_with_amused(client: openai.OpenAI) -> None:
    result = client.images.generate(
        prompt="a red circle on grass", size="256x256", quality="low", extra_body={"seed": 3}
    )
    assert result.data and _png(result.data[0].b64_json).size == (256, 256)

    partials: list[str] = []
    completed = None
    for event in client.images.generate(
        prompt="a green triangle", size="256x256", quality="high", stream=True, partial_images=3
    ):
        if event.type == "image_generation.partial_image":
            partials.append(event.b64_json)
        elif event.type == "image_generation.completed":
            completed = event
    assert len(partials) == 3 and len(set(partials)) == 3, "each partial image shows a later pass"
    assert completed is not None and completed.b64_json not in partials
    assert _png(completed.b64_json).size == (256, 256)


def test_tweak_under_a_mask_keeps_the_unmasked_tokens(client: openai.OpenAI, amused: Stack) -> None:
    parent = client.images.generate(prompt="a yellow star", size="256x256", quality="low", extra_body={"seed": 5})
    assert parent.data and parent.data[0].b64_json
    parent_id = str(parent.data[0].image_id)  # darkroom's extra field
    pixels = np.full((256, 256, 4), 255, np.uint8)
    pixels[:, 128:, 3] = 0  # redraw the right half
    mask = io.BytesIO()
    Image.fromarray(pixels).save(mask, format="PNG")
    child = client.images.edit(
        image=("star.png", base64.b64decode(parent.data[0].b64_json)),
        mask=("mask.png", mask.getvalue()),
        prompt="a yellow star at night",
    )
    assert child.data
    child_id = str(child.data[0].image_id)
    parent_job, child_job = (client.get(f"/images/{i}", cast_to=object) for i in (parent_id, child_id))
    assert isinstance(parent_job, dict) and isinstance(child_job, dict)
    assert child_job["parent"]["id"] == parent_id
    before, after = _tokens(amused, str(parent_job["job_id"])), _tokens(amused, str(child_job["job_id"]))
    # The decoder rendered with the folder's model: the same grid as this process renders.
    model = AmusedImageModel(_folder(amused))
    state = model.start("a yellow star", 5, PASSES["low"])
    while not state.done:
        state = model.step([state])[0]
    assert np.array_equal(before, state.tokens)
    assert np.array_equal(before[:, :8], after[:, :8])
    assert not np.array_equal(before[:, 8:], after[:, 8:])


async def test_a_killed_amused_decoder_resumes_from_its_checkpoint(amused: Stack, key: str) -> None:
    seed = 17
    async with api(amused, key) as http, watching(amused) as watch:
        reference = await wait_done(http, (await create_async(http, SLOW | {"seed": seed}))["id"])
        assert reference["status"] == "completed", reference

        job_id = (await create_async(http, SLOW | {"seed": seed}))["id"]

        def passes() -> list[int]:
            return [p["pass_index"] for p in watch.payloads(job_id, "render.render_progressed")]

        await watch.until("pass 3 of the render", lambda: max(passes(), default=0) >= 3)
        amused.proc("decoder").stop(timeout_s=0, sig=signal.SIGKILL)
        last_before_kill = max(passes())
        assert last_before_kill < 12, "the render ended before the decoder was killed"
        started = time.monotonic()
        await asyncio.to_thread(amused.up_services)

        done = await wait_done(http, job_id)
        assert done["status"] == "completed", done
        starts = watch.payloads(job_id, "render.render_started")
        assert [(s["attempt"], s["pass_index"]) for s in starts] == [(0, 0), (1, last_before_kill)]
        # The resumed render is the uninterrupted one: the same images, stored exactly once.
        assert [d["b64_json"] for d in done["data"]] == [d["b64_json"] for d in reference["data"]]
        exactly_once(amused, watch, job_id, 4)
        took = time.monotonic() - started
        print(f"\nFIGURES amused decoder killed after pass {last_before_kill}/12: done {took:.1f}s later")
