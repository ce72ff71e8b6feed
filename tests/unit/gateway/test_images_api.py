"""The Images API through the official openai SDK, against the in-memory gateway."""

from __future__ import annotations

import asyncio
import base64
import io

import openai
import pytest
from PIL import Image

from tests.unit.gateway.conftest import GatewayUnderTest, key_for


async def test_generate_returns_b64_images_with_usage(gateway: GatewayUnderTest) -> None:
    result = await gateway.client.images.generate(prompt="a red circle", n=2, size="256x256", extra_body={"seed": 3})
    assert result.data is not None and len(result.data) == 2
    image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json or "")))
    assert image.size == (256, 256) and image.format == "PNG"
    assert (result.size, result.quality, result.output_format) == ("256x256", "medium", "png")
    assert result.usage is not None
    assert result.usage.output_tokens == 512
    assert result.usage.input_tokens_details.text_tokens == 3


async def test_every_response_carries_the_trace_id_as_request_id(gateway: GatewayUnderTest) -> None:
    raw = await gateway.client.images.with_raw_response.generate(prompt="a red circle")
    assert len(raw.headers["x-request-id"]) == 32
    assert raw.headers["x-request-id"] != "0" * 32


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"n": 5}, "n"),
        ({"size": "1024x1024"}, "size"),
        ({"quality": "ultra"}, "quality"),
        ({"output_format": "gif"}, "output_format"),
        ({"output_compression": 101}, "output_compression"),
        ({"moderation": "none"}, "moderation"),
        ({"response_format": "xml"}, "response_format"),
        ({"partial_images": 4, "stream": True}, "partial_images"),
        ({"model": "stable-diffusion-3"}, "model"),
        ({"background": "transparent"}, "background"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 32001}, "prompt"),
        ({"extra_body": {"seed": -1}}, "seed"),
        ({"extra_body": {"colour": "red"}}, "colour"),
    ],
)
async def test_invalid_parameters_are_400_naming_the_param(
    gateway: GatewayUnderTest, params: dict[str, object], param: str
) -> None:
    args: dict[str, object] = {"prompt": "a red circle"} | params
    with pytest.raises(openai.BadRequestError) as error:
        await gateway.client.images.generate(**args)  # type: ignore[call-overload]
    assert error.value.status_code == 400
    assert isinstance(error.value.body, dict) and error.value.body["param"] == param


async def test_a_missing_prompt_is_a_400_naming_prompt(gateway: GatewayUnderTest) -> None:
    response = await gateway.http.post(
        "/v1/images/generations", json={"n": 1}, headers={"authorization": f"Bearer {gateway.api_key}"}
    )
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "Missing required parameter: 'prompt'.",
        "type": "invalid_request_error",
        "param": "prompt",
        "code": "missing_required_parameter",
    }


async def test_a_bad_key_is_an_authentication_error(gateway: GatewayUnderTest) -> None:
    forged = gateway.api_key[:-4] + "AAAA"
    client = gateway.client.with_options(api_key=forged)
    with pytest.raises(openai.AuthenticationError):
        await client.images.generate(prompt="a red circle")
    response = await gateway.http.post("/v1/images/generations", json={"prompt": "x"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_api_key"


async def test_a_blocked_prompt_is_a_400_moderation_blocked_not_to_retry(gateway: GatewayUnderTest) -> None:
    raw = gateway.client.images.with_raw_response
    with pytest.raises(openai.BadRequestError) as error:
        await raw.generate(prompt="something forbidden")
    assert error.value.code == "moderation_blocked"
    assert error.value.response.headers["x-should-retry"] == "false"


async def test_url_responses_link_to_the_stored_image(gateway: GatewayUnderTest) -> None:
    result = await gateway.client.images.generate(prompt="a red circle", response_format="url")
    assert result.data is not None and (result.data[0].url or "").startswith("memory://images/")


async def test_stream_sends_ordered_partial_images_then_the_final_one(gateway: GatewayUnderTest) -> None:
    stream = await gateway.client.images.generate(
        prompt="a red circle", stream=True, partial_images=2, quality="medium", output_format="webp"
    )
    events = [event async for event in stream]
    assert [e.type for e in events] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    assert [getattr(e, "partial_image_index", None) for e in events[:2]] == [0, 1]
    final = Image.open(io.BytesIO(base64.b64decode(events[-1].b64_json)))
    assert final.format == "WEBP" and final.size == (256, 256)


async def test_async_jobs_answer_202_and_their_status_is_owner_only(gateway: GatewayUnderTest) -> None:
    gateway.pipeline.hold.clear()
    response = await gateway.http.post(
        "/v1/images/generations",
        json={"prompt": "a red circle"},
        headers={"authorization": f"Bearer {gateway.api_key}", "prefer": "respond-async"},
    )
    assert response.status_code == 202
    job = response.json()
    assert (job["object"], job["status"]) == ("image.job", "queued")
    headers = {"authorization": f"Bearer {gateway.api_key}"}
    other = {"authorization": f"Bearer {key_for('acct_someone_else')}"}
    assert (await gateway.http.get(f"/v1/images/jobs/{job['id']}", headers=other)).status_code == 404
    gateway.pipeline.hold.set()
    for _ in range(100):
        status = (await gateway.http.get(f"/v1/images/jobs/{job['id']}", headers=headers)).json()
        if status["status"] == "completed":
            break
        # A poll as a client makes it: the in-memory pipeline runs between two (a status
        # read awaits nothing that suspends it).
        await asyncio.sleep(0.01)
    assert status["status"] == "completed"
    assert status["progress"] == {"pass": 8, "total_passes": 8}
    assert len(status["data"]) == 1 and status["usage"]["output_tokens"] == 256


async def test_a_synchronous_call_past_the_limit_answers_202_with_the_job(gateway: GatewayUnderTest) -> None:
    gateway.pipeline.hold.clear()
    gateway.app.state.gateway.settings = gateway.app.state.gateway.settings.model_copy(update={"sync_wait_s": 0.3})
    response = await gateway.http.post(
        "/v1/images/generations", json={"prompt": "slow"}, headers={"authorization": f"Bearer {gateway.api_key}"}
    )
    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    gateway.pipeline.hold.set()


async def test_unknown_routes_use_the_error_envelope(gateway: GatewayUnderTest) -> None:
    response = await gateway.http.get("/v1/nothing-here")
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
