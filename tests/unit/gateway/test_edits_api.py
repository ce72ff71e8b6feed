"""Tweaks through the openai SDK: what the gateway sends down the pipeline, and its errors."""

from __future__ import annotations

import base64
import io

import numpy as np
import openai
import pytest
from PIL import Image

from libs.model.interface import unpack_cells, unpack_tokens
from tests.helpers import sdk_client
from tests.unit.gateway.conftest import GatewayUnderTest, key_for
from tests.unit.gateway.test_limits import _set_policy


def _png(width: int, height: int, transparent: tuple[slice, slice] | None = None, alpha: bool = True) -> bytes:
    pixels = np.full((height, width, 4 if alpha else 3), 180, np.uint8)
    if transparent is not None:
        pixels[transparent[0], transparent[1], 3] = 0
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


async def _generated(gateway: GatewayUnderTest) -> tuple[bytes, str]:
    result = await gateway.client.images.generate(prompt="a red circle", extra_body={"seed": 3})
    assert result.data and result.data[0].b64_json
    job = gateway.pipeline.commands[-1].job_id
    return base64.b64decode(result.data[0].b64_json), f"img_{job}_0"


async def test_a_generated_image_is_recognized_and_its_grid_reused_under_the_mask(gateway: GatewayUnderTest) -> None:
    data, image_id = await _generated(gateway)
    # The right half of a 256x256 image is transparent: grid columns 8-15.
    mask = _png(256, 256, (slice(0, 256), slice(128, 256)))
    result = await gateway.client.images.edit(image=("cat.png", data), mask=("mask.png", mask), prompt="at night")
    assert result.data and result.data[0].b64_json
    assert result.usage is not None

    [source] = gateway.pipeline.commands[-1].spec.edits
    assert source.parent_image_id == image_id and source.image_png is None
    assert unpack_tokens(base64.b64decode(source.tokens or "")).tolist() == np.zeros((16, 16), int).tolist()
    cells = unpack_cells(base64.b64decode(source.remask))
    assert cells[:, 8:].all() and not cells[:, :8].any()

    # The new image shows its lineage, to its owner only.
    child = f"img_{gateway.pipeline.commands[-1].job_id}_0"
    response = await gateway.http.get(f"/v1/images/{child}", headers={"authorization": f"Bearer {gateway.api_key}"})
    body = response.json()
    assert response.status_code == 200, body
    assert body["prompt"] == "at night" and body["parent"] == {"id": image_id, "prompt": "a red circle"}
    other = await gateway.http.get(f"/v1/images/{child}", headers={"authorization": f"Bearer {key_for('acct_x')}"})
    assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"


async def test_an_image_named_by_id_is_tweaked_under_a_mask_of_its_size(gateway: GatewayUnderTest) -> None:
    _, image_id = await _generated(gateway)
    # The web page sends the image by id with the mask it painted: the top rows, 0-3.
    mask = _png(256, 256, (slice(0, 64), slice(0, 256)))
    await gateway.client.images.edit(
        image=[], mask=("mask.png", mask), prompt="snowing", extra_body={"image_id": image_id}
    )
    [source] = gateway.pipeline.commands[-1].spec.edits
    assert source.parent_image_id == image_id
    cells = unpack_cells(base64.b64decode(source.remask))
    assert cells[:4].all() and not cells[4:].any()

    with pytest.raises(openai.BadRequestError) as caught:
        await gateway.client.images.edit(
            image=[],
            mask=("m.png", _png(128, 128, (slice(0, 64), slice(0, 64)))),
            prompt="x",
            extra_body={"image_id": image_id},
        )
    assert caught.value.body["param"] == "mask" and "must match" in caught.value.body["message"]  # type: ignore[index]


async def test_an_uploaded_image_goes_to_the_encoder_and_strength_sets_the_cells(gateway: GatewayUnderTest) -> None:
    await gateway.client.images.edit(
        image=("photo.png", _png(300, 200, alpha=False)), prompt="a blue square", n=2, extra_body={"strength": "0.25"}
    )
    spec = gateway.pipeline.commands[-1].spec
    [source] = spec.edits
    assert spec.n == 2 and source.parent_image_id is None and source.tokens is None
    assert Image.open(io.BytesIO(base64.b64decode(source.image_png or ""))).size == (256, 256)
    assert int(unpack_cells(base64.b64decode(source.remask)).sum()) == 64


async def test_a_wide_upload_and_its_mask_are_cut_to_the_centred_square(gateway: GatewayUnderTest) -> None:
    # 400x200 with a red square in the middle (x 100-300) and blue side bands.
    pixels = np.zeros((200, 400, 3), np.uint8)
    pixels[:, :100] = pixels[:, 300:] = (0, 0, 255)
    pixels[:, 100:300] = (255, 0, 0)
    image = io.BytesIO()
    Image.fromarray(pixels).save(image, format="PNG")
    # Transparent over x 200-400: the right half of the centred square, and the band beyond it.
    mask = _png(400, 200, (slice(0, 200), slice(200, 400)))

    await gateway.client.images.edit(image=("wide.png", image.getvalue()), mask=("m.png", mask), prompt="x")

    [source] = gateway.pipeline.commands[-1].spec.edits
    sent = np.asarray(Image.open(io.BytesIO(base64.b64decode(source.image_png or ""))).convert("RGB"))
    assert sent.shape == (256, 256, 3)
    assert (sent[:, :, 0] > 200).all() and (sent[:, :, 2] < 50).all()  # the red centre, not squashed bands
    cells = unpack_cells(base64.b64decode(source.remask))
    assert cells[:, 8:].all() and not cells[:, :8].any()


async def test_a_mask_transparent_only_outside_the_centred_square_is_a_400(gateway: GatewayUnderTest) -> None:
    mask = _png(400, 200, (slice(0, 200), slice(0, 90)))
    with pytest.raises(openai.BadRequestError) as caught:
        await gateway.client.images.edit(image=("a.png", _png(400, 200)), mask=("m.png", mask), prompt="x")
    assert caught.value.body["param"] == "mask"  # type: ignore[index]
    assert "centred 200x200 square" in caught.value.body["message"]  # type: ignore[index]


async def test_an_idempotency_key_names_one_tweak_and_only_with_the_same_upload(gateway: GatewayUnderTest) -> None:
    key = {"Idempotency-Key": "tweak-1"}
    first = await gateway.client.images.edit(image=("a.png", _png(256, 256)), prompt="x", extra_headers=key)
    commands = len(gateway.pipeline.commands)
    again = await gateway.client.images.edit(image=("a.png", _png(256, 256)), prompt="x", extra_headers=key)
    assert again.data and first.data and again.data[0].b64_json == first.data[0].b64_json
    assert len(gateway.pipeline.commands) == commands

    other = io.BytesIO()
    Image.new("RGB", (256, 256), (10, 200, 30)).save(other, format="PNG")
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        await gateway.client.images.edit(image=("b.png", other.getvalue()), prompt="x", extra_headers=key)
    assert caught.value.body["code"] == "idempotency_key_reused"  # type: ignore[index]
    assert len(gateway.pipeline.commands) == commands


async def test_an_image_id_of_another_account_is_not_found(gateway: GatewayUnderTest) -> None:
    _, image_id = await _generated(gateway)
    stranger = sdk_client(gateway.http, key_for("acct_x"))
    with pytest.raises(openai.NotFoundError) as caught:
        await stranger.images.edit(image=[], prompt="mine now", extra_body={"image_id": image_id})
    assert caught.value.body["param"] == "image_id"  # type: ignore[index]


@pytest.mark.parametrize(
    ("mask", "words"),
    [
        (_png(128, 128, (slice(0, 64), slice(0, 64))), "must match"),
        (_png(256, 256, alpha=False), "alpha channel"),
        (_png(256, 256), "no transparent pixels"),
        (b"not an image", "not a PNG"),
    ],
)
async def test_a_bad_mask_is_a_400_naming_mask(gateway: GatewayUnderTest, mask: bytes, words: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await gateway.client.images.edit(image=("a.png", _png(256, 256)), mask=("m.png", mask), prompt="x")
    assert caught.value.body["param"] == "mask"  # type: ignore[index]
    assert words in caught.value.body["message"]  # type: ignore[index]


async def test_an_edit_streams_its_partial_images_as_image_edit_events(gateway: GatewayUnderTest) -> None:
    stream = await gateway.client.images.edit(
        image=("a.png", _png(256, 256)), prompt="x", stream=True, partial_images=2, quality="medium"
    )
    types = [event.type async for event in stream]
    assert types == ["image_edit.partial_image", "image_edit.partial_image", "image_edit.completed"]


async def test_tweaks_count_against_the_daily_images_like_generations(gateway: GatewayUnderTest) -> None:
    await _set_policy(gateway, "pro", images_per_day=3)
    data, _ = await _generated(gateway)
    await gateway.client.images.edit(image=("a.png", data), prompt="again", n=2, quality="low")
    with pytest.raises(openai.RateLimitError) as caught:
        await gateway.client.images.edit(image=("a.png", data), prompt="once more", quality="low")
    assert caught.value.code == "insufficient_quota"


async def test_an_invalid_form_field_is_a_400_naming_it(gateway: GatewayUnderTest) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await gateway.client.images.edit(image=("a.png", _png(256, 256)), prompt="x", extra_body={"strength": "lots"})
    assert caught.value.body["param"] == "strength"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        await gateway.client.images.edit(image=("a.png", _png(256, 256)), prompt="x", n=9)
    assert caught.value.body["param"] == "n"  # type: ignore[index]
