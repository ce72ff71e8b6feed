"""End to end with aMUSEd served beside the default model, as a second model.

A tiny random aMUSEd is built inside the test (tests/tiny_amused.py) and saved as diffusers
saves the real amused-256: nothing is downloaded. An extra decoder instance renders it for
the model `amused-256` (its own render topic and consumer group, declared in
infra/topics.yaml), and the gateway restarts with `DARKROOM_MODELS` naming both models; the
default decoders keep rendering darkroom-mini. Through the official openai SDK: `GET
/v1/models`, a generation and a stream of partial images with `model="amused-256"`, a tweak
under a mask whose unmasked cells keep their tokens, and the aMUSEd decoder killed
mid-render, resuming from its checkpoint.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from infra.stack import Stack, wait_until
from libs.model.amused import AmusedImageModel
from libs.settings import DEV_OPERATOR_TOKEN
from services.gateway.models import PASSES
from tests.e2e.jobs import api, create_async, exactly_once, image_id_of, stored_tokens, wait_done, watching
from tests.tiny_amused import build_tiny_amused

MODEL = "amused-256"
DECODER = "decoder-amused"
DECODER_API = "decoder-amused-api"
# Four 256x256 images over 12 passes: with the e2e build of the tiny model, a fraction of a
# second per pass on a CPU, so a decoder can be killed between two passes.
SLOW = {"prompt": "a blue square on grass", "n": 4, "size": "256x256", "quality": "high", "model": MODEL}


def _serving(stack: Stack) -> bool:
    """Whether the gateway hears a decoder of amused-256 (the operator API's decoders)."""
    try:
        answer = httpx.get(
            f"{stack.profile.gateway_url}/v1/admin/lanes",
            headers={"authorization": f"Bearer {DEV_OPERATOR_TOKEN}"},
            timeout=5,
        )
    except httpx.HTTPError:
        return False
    return answer.status_code == 200 and any(d.get("model") == MODEL for d in answer.json()["decoders"].values())


def _start_decoder(stack: Stack, instance: str = DECODER) -> None:
    """Starts an aMUSEd decoder and waits until the gateway hears it."""
    stack.start_service("decoder", instance=instance)
    wait_until(lambda: _serving(stack), f"the gateway hears {instance}", stack.proc(instance), timeout_s=90)


@pytest.fixture(scope="module")
def amused(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack with amused-256 served beside the default model (both of its pools); as
    before after the module."""
    folder = build_tiny_amused(tmp_path_factory.mktemp("amused") / "tiny-amused-256", layers=6, hidden=256)
    stack.up_infra()
    stack.up_services()
    amused_env = (("DARKROOM_MODEL", f"amused:{folder}"), ("DARKROOM_SERVED_MODEL", MODEL))
    profile = dataclasses.replace(
        stack.profile,
        process_env=(
            *stack.profile.process_env,
            ("gateway", "DARKROOM_MODELS", json.dumps(["darkroom-mini", MODEL])),
            *((DECODER, var, value) for var, value in amused_env),
            *((DECODER_API, var, value) for var, value in amused_env),
            (DECODER_API, "DARKROOM_POOL", "api"),
        ),
    )
    with_amused = Stack(profile, say=lambda line: print(line))
    # The decoders first: a gateway that serves amused-256 is healthy once both its pools are.
    with_amused.start_service("decoder", instance=DECODER)
    with_amused.start_service("decoder", instance=DECODER_API)
    stack.proc("gateway").stop()
    with_amused.up_services()
    yield with_amused
    for instance in (DECODER, DECODER_API):
        with_amused.proc(instance).stop()
    stack.proc("gateway").stop()
    stack.up_services()


@pytest.fixture
def client(amused: Stack, api_key: str) -> Iterator[openai.OpenAI]:
    amused.up_infra()
    amused.up_services()
    if amused.proc(DECODER).pid() is None:
        _start_decoder(amused)
    with openai.OpenAI(base_url=f"{amused.profile.gateway_url}/v1", api_key=api_key, max_retries=0, timeout=120) as c:
        yield c


def _folder(stack: Stack) -> Path:
    [model] = {value for name, var, value in stack.profile.process_env if name == DECODER and var == "DARKROOM_MODEL"}
    return Path(model.removeprefix("amused:"))


def _job_of(client: openai.OpenAI, image_id: str) -> str:
    image = client.get(f"/images/{image_id}", cast_to=object)
    assert isinstance(image, dict)
    return str(image["job_id"])


def _render_here(stack: Stack, prompt: str, seed: int, passes: int) -> np.ndarray:
    """The grid this process renders with the decoder's folder."""
    model = AmusedImageModel(_folder(stack))
    state = model.start(prompt, seed, passes)
    while not state.done:
        state = model.step([state])[0]
    return state.tokens


def _png(b64: str | None) -> Image.Image:
    assert b64
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_both_models_render_side_by_side(client: openai.OpenAI, amused: Stack) -> None:
    assert [m.id for m in client.models.list().data][:2] == ["darkroom-mini", MODEL]
    result = client.images.generate(
        prompt="a red circle on grass", size="256x256", quality="low", model=MODEL, extra_body={"seed": 3}
    )
    assert result.data and _png(result.data[0].b64_json).size == (256, 256)
    default = client.images.generate(prompt="a red circle on grass", size="256x256", quality="low")
    assert default.data
    # Each rendered with its own model: aMUSEd's grid draws from its 64-token codebook, the
    # built-in model's from 512 (and this process renders aMUSEd's grid the same).
    ours = stored_tokens(amused, _job_of(client, image_id_of(result.data[0])))
    theirs = stored_tokens(amused, _job_of(client, image_id_of(default.data[0])))
    assert ours.max() < 64 <= theirs.max()
    assert np.array_equal(ours, _render_here(amused, "a red circle on grass", 3, PASSES["low"]))

    partials: list[str] = []
    completed = None
    for event in client.images.generate(
        prompt="a green triangle", size="256x256", quality="high", model=MODEL, stream=True, partial_images=3
    ):
        if event.type == "image_generation.partial_image":
            partials.append(event.b64_json)
        elif event.type == "image_generation.completed":
            completed = event
    assert len(partials) == 3 and len(set(partials)) == 3, "each partial image shows a later pass"
    assert completed is not None and completed.b64_json not in partials
    assert _png(completed.b64_json).size == (256, 256)


def test_tweak_under_a_mask_keeps_the_unmasked_tokens(client: openai.OpenAI, amused: Stack) -> None:
    parent = client.images.generate(
        prompt="a yellow star", size="256x256", quality="low", model=MODEL, extra_body={"seed": 5}
    )
    assert parent.data and parent.data[0].b64_json
    parent_id = image_id_of(parent.data[0])
    pixels = np.full((256, 256, 4), 255, np.uint8)
    pixels[:, 128:, 3] = 0  # redraw the right half
    mask = io.BytesIO()
    Image.fromarray(pixels).save(mask, format="PNG")
    child = client.images.edit(
        image=("star.png", base64.b64decode(parent.data[0].b64_json)),
        mask=("mask.png", mask.getvalue()),
        prompt="a yellow star at night",
        model=MODEL,
    )
    assert child.data
    child_id = image_id_of(child.data[0])
    parent_job, child_job = (client.get(f"/images/{i}", cast_to=object) for i in (parent_id, child_id))
    assert isinstance(parent_job, dict) and isinstance(child_job, dict)
    assert child_job["parent"]["id"] == parent_id
    before, after = stored_tokens(amused, str(parent_job["job_id"])), stored_tokens(amused, str(child_job["job_id"]))
    assert np.array_equal(before, _render_here(amused, "a yellow star", 5, PASSES["low"]))
    assert np.array_equal(before[:, :8], after[:, :8])
    assert not np.array_equal(before[:, 8:], after[:, 8:])


async def test_a_killed_amused_decoder_resumes_from_its_checkpoint(amused: Stack, api_key: str) -> None:
    seed = 17
    async with api(amused, api_key) as http, watching(amused) as watch:
        reference = await wait_done(http, (await create_async(http, SLOW | {"seed": seed}))["id"])
        assert reference["status"] == "completed", reference

        job_id = (await create_async(http, SLOW | {"seed": seed}))["id"]

        def passes() -> list[int]:
            return [p["pass_index"] for p in watch.payloads(job_id, "render.render_progressed")]

        await watch.until("pass 3 of the render", lambda: max(passes(), default=0) >= 3)
        amused.proc(DECODER).stop(timeout_s=0, sig=signal.SIGKILL)
        last_before_kill = max(passes())
        assert last_before_kill < 12, "the render ended before the decoder was killed"
        started = time.monotonic()
        await asyncio.to_thread(_start_decoder, amused)

        done = await wait_done(http, job_id)
        assert done["status"] == "completed", done
        starts = watch.payloads(job_id, "render.render_started")
        assert [(s["attempt"], s["pass_index"]) for s in starts] == [(0, 0), (1, last_before_kill)]
        # The resumed render is the uninterrupted one: the same images, stored exactly once.
        assert [d["b64_json"] for d in done["data"]] == [d["b64_json"] for d in reference["data"]]
        exactly_once(amused, watch, job_id, 4)
        took = time.monotonic() - started
        print(f"\nFIGURES amused decoder killed after pass {last_before_kill}/12: done {took:.1f}s later")
