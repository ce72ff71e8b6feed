"""End to end with the official openai SDK: tweaks through every service.

The tweaked image's cells outside the mask must keep their tokens exactly; the test
reads both token grids where storage wrote them, in MinIO.
"""

from __future__ import annotations

import asyncio
import base64
import io
import uuid
from collections.abc import Iterator

import numpy as np
import openai
import pytest
from PIL import Image

from infra.stack import Stack
from libs.cli.accounts import create_account
from libs.settings import DEV_SIGNING_KEY
from tests.e2e.jobs import image_id_of, stored_tokens


@pytest.fixture(scope="module")
def keys(stack: Stack) -> tuple[str, str]:
    stack.up_infra()
    stack.up_services()
    made = [
        asyncio.run(
            create_account(
                stack.profile.kafka_bootstrap, f"edit-{uuid.uuid4().hex[:8]}@example.com", tier, DEV_SIGNING_KEY
            )
        )
        for tier in ("pro", "plus")
    ]
    return str(made[0]["api_key"]), str(made[1]["api_key"])


@pytest.fixture
def client(running: Stack, keys: tuple[str, str]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{running.profile.gateway_url}/v1", api_key=keys[0], max_retries=0, timeout=120
    ) as client:
        yield client


def _mask_right_half() -> bytes:
    pixels = np.full((256, 256, 4), 255, np.uint8)
    pixels[:, 128:, 3] = 0
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _image(client: openai.OpenAI, image_id: str) -> dict[str, object]:
    body = client.get(f"/images/{image_id}", cast_to=object)
    assert isinstance(body, dict)
    return body


def test_edit_a_generated_image_under_a_mask(client: openai.OpenAI, running: Stack) -> None:
    first = client.images.generate(prompt="a red circle at the left", quality="low", extra_body={"seed": 1})
    assert first.data and first.data[0].b64_json
    original = base64.b64decode(first.data[0].b64_json)
    parent_id = image_id_of(first.data[0])

    edited = client.images.edit(
        image=("circle.png", original),
        mask=("mask.png", _mask_right_half()),
        prompt="a blue square at the right",
        quality="low",
        extra_body={"seed": 2},
    )
    assert edited.data and edited.data[0].b64_json
    assert Image.open(io.BytesIO(base64.b64decode(edited.data[0].b64_json))).size == (256, 256)
    assert edited.usage is not None and edited.usage.input_tokens_details is not None
    assert edited.usage.input_tokens_details.image_tokens == 256

    # Recognized by its bytes: the lineage names the generated image.
    parent, child = _image(client, parent_id), _image(client, image_id_of(edited.data[0]))
    assert child["parent"] == {"id": parent_id, "prompt": "a red circle at the left"}
    assert child["prompt"] == "a blue square at the right"
    # The grids: the left half (opaque in the mask) keeps its tokens exactly.
    before, after = stored_tokens(running, str(parent["job_id"])), stored_tokens(running, str(child["job_id"]))
    assert np.array_equal(before[:, :8], after[:, :8])
    assert not np.array_equal(before[:, 8:], after[:, 8:]), "the masked half was drawn again"


def test_edit_without_a_mask_and_of_an_upload(client: openai.OpenAI) -> None:
    pixels = np.zeros((200, 300, 3), np.uint8)
    pixels[:, :, 1] = 160  # a green field
    upload = io.BytesIO()
    Image.fromarray(pixels).save(upload, format="PNG")
    result = client.images.edit(
        image=("field.png", upload.getvalue()),
        prompt="a yellow star in the centre",
        quality="low",
        extra_body={"seed": 4, "strength": "0.5"},
    )
    assert result.data and result.data[0].b64_json
    assert _image(client, image_id_of(result.data[0]))["parent"] is None


def test_stream_an_edit(client: openai.OpenAI) -> None:
    first = client.images.generate(prompt="a green triangle", quality="low", extra_body={"seed": 5})
    assert first.data
    stream = client.images.edit(
        image=[],
        prompt="a green triangle on grass",
        quality="medium",
        stream=True,
        partial_images=2,
        extra_body={"image_id": image_id_of(first.data[0]), "seed": 6},
    )
    events = list(stream)
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.partial_image", "image_edit.completed"]


def test_an_image_of_another_account_is_not_found(running: Stack, client: openai.OpenAI, keys: tuple[str, str]) -> None:
    first = client.images.generate(prompt="a red circle", quality="low", extra_body={"seed": 7})
    assert first.data
    with openai.OpenAI(base_url=f"{running.profile.gateway_url}/v1", api_key=keys[1], max_retries=0) as other:
        with pytest.raises(openai.NotFoundError):
            other.images.edit(image=[], prompt="mine", extra_body={"image_id": image_id_of(first.data[0])})
        with pytest.raises(openai.NotFoundError):
            other.get(f"/images/{image_id_of(first.data[0])}", cast_to=object)
