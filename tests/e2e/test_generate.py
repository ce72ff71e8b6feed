"""End to end with the official openai SDK: the generate path through every service.

Every render names its seed: the shipped short-run detector has false alarms on some of
the untrained generator's previews (docs/model-card.md), and a fixed seed makes each
test's drawing, and so its verdicts, the same on every run.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
import urllib.request
import uuid
from collections.abc import Iterator

import httpx
import openai
import pytest
from PIL import Image

from infra.stack import Stack
from libs.cli.accounts import create_account
from libs.settings import DEV_SIGNING_KEY
from tests.e2e.otlp import OtlpReceiver


def _email() -> str:
    return f"e2e-{uuid.uuid4().hex[:10]}@example.com"


@pytest.fixture(scope="module")
def pro_key(stack: Stack) -> str:
    stack.up_infra()
    stack.up_services()
    account = asyncio.run(create_account(stack.profile.kafka_bootstrap, _email(), "pro", DEV_SIGNING_KEY))
    return str(account["api_key"])


@pytest.fixture
def client(running: Stack, pro_key: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{running.profile.gateway_url}/v1", api_key=pro_key, max_retries=0, timeout=120
    ) as client:
        yield client


def _image(b64: str | None) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64 or "")))


def test_generate_b64_json(client: openai.OpenAI) -> None:
    result = client.images.generate(prompt="a small red circle in the centre", quality="low", extra_body={"seed": 1})
    assert result.data is not None and len(result.data) == 1
    image = _image(result.data[0].b64_json)
    assert (image.format, image.size) == ("PNG", (256, 256))
    assert result.usage is not None and result.usage.output_tokens == 256
    assert result.usage.total_tokens == result.usage.input_tokens + 256


def test_generate_two_images_as_urls(client: openai.OpenAI) -> None:
    result = client.images.generate(
        prompt="a blue square on grass",
        n=2,
        quality="low",
        size="512x512",
        response_format="url",
        output_format="jpeg",
        extra_body={"seed": 2},
    )
    assert result.data is not None and len(result.data) == 2
    for item in result.data:
        with urllib.request.urlopen(item.url or "", timeout=10) as response:  # noqa: S310 - presigned loopback URL
            image = Image.open(io.BytesIO(response.read()))
        assert (image.format, image.size) == ("JPEG", (512, 512))


def test_the_same_seed_gives_the_same_image(client: openai.OpenAI) -> None:
    first = client.images.generate(prompt="a green star", quality="low", extra_body={"seed": 42})
    second = client.images.generate(prompt="a green star", quality="low", extra_body={"seed": 42})
    assert first.data is not None and second.data is not None
    assert first.data[0].b64_json == second.data[0].b64_json


def test_stream_partial_images_then_completed(client: openai.OpenAI) -> None:
    stream = client.images.generate(
        prompt="a yellow triangle at the top",
        stream=True,
        partial_images=2,
        quality="medium",
        output_format="webp",
        extra_body={"seed": 4},
    )
    events = list(stream)
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [getattr(e, "partial_image_index", None) for e in events[:2]] == [0, 1]
    for event in events:
        image = _image(event.b64_json)
        assert (image.format, image.size) == ("WEBP", (256, 256))
    assert events[0].b64_json != events[-1].b64_json


def test_an_unsafe_prompt_is_blocked(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        client.images.generate(prompt="a skull in the night sky", quality="low")
    assert error.value.code == "moderation_blocked"
    assert error.value.response.headers["x-should-retry"] == "false"


def test_invalid_parameters_name_the_param(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        client.images.generate(prompt="a red circle", n=9)
    assert isinstance(error.value.body, dict) and error.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as error:
        client.images.generate(prompt="a red circle", model="no-such-model")
    assert isinstance(error.value.body, dict) and error.value.body["param"] == "model"


def test_a_bad_key_is_an_authentication_error(running: Stack) -> None:
    with openai.OpenAI(base_url=f"{running.profile.gateway_url}/v1", api_key="sk-dr-nope.nope", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            bad.images.generate(prompt="a red circle")


def test_the_async_job_flow(running: Stack, pro_key: str) -> None:
    headers = {"authorization": f"Bearer {pro_key}"}
    with httpx.Client(base_url=running.profile.gateway_url, headers=headers, timeout=30) as http:
        created = http.post(
            "/v1/images/generations",
            json={"prompt": "a purple heart", "quality": "low", "seed": 5},
            headers={"prefer": "respond-async"},
        )
        assert created.status_code == 202
        job = created.json()
        assert job["object"] == "image.job" and job["status"] in ("queued", "rendering")
        deadline = time.monotonic() + 60
        while job["status"] not in ("completed", "failed", "blocked") and time.monotonic() < deadline:
            time.sleep(0.2)
            job = http.get(f"/v1/images/jobs/{job['id']}").json()
        assert job["status"] == "completed", job
        assert job["progress"] == {"pass": 4, "total_passes": 4}
        assert _image(job["data"][0]["b64_json"]).size == (256, 256)
        other = http.get(f"/v1/images/jobs/{job['id']}", headers={"authorization": "Bearer sk-dr-x.y"})
        assert other.status_code == 401


def test_sign_up_through_kafka(running: Stack) -> None:
    email = _email()
    with httpx.Client(base_url=running.profile.gateway_url, timeout=30) as http:
        created = http.post("/v1/accounts", json={"email": email})
        assert created.status_code == 201, created.text
        account = created.json()
        assert (account["email"], account["tier"]) == (email, "free")
        assert account["api_key"].startswith("sk-dr-")
        duplicate = http.post("/v1/accounts", json={"email": email.upper()})
        assert duplicate.status_code == 409
        invalid = http.post("/v1/accounts", json={"email": "not-an-email"})
        assert invalid.status_code == 400 and invalid.json()["error"]["param"] == "email"
    with openai.OpenAI(
        base_url=f"{running.profile.gateway_url}/v1", api_key=account["api_key"], max_retries=0
    ) as client:
        result = client.images.generate(prompt="an orange circle", quality="low", extra_body={"seed": 6})
        assert result.data is not None


def test_one_trace_spans_every_service(client: openai.OpenAI, otlp: OtlpReceiver) -> None:
    raw = client.images.with_raw_response.generate(
        prompt="a red square on the left", quality="low", extra_body={"seed": 7}
    )
    trace_id = raw.headers["x-request-id"]
    wanted = {"darkroom-gateway", "darkroom-requests", "darkroom-safety", "darkroom-decoder", "darkroom-storage"}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        services = {span.service for span in otlp.trace(trace_id)}
        if wanted <= services:
            break
        time.sleep(0.5)
    assert wanted <= services, f"services in trace {trace_id}: {sorted(services)}"
