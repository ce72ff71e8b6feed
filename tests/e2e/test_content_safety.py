"""End to end: a render is stopped mid-way by what it draws, not by its prompt.

The operator publishes a policy whose forbidden-object category has no prompt terms,
only the content class, so the prompt passes and the content check must find the
skull in the previews of the render. The api tier's decoder pool runs the world model
(see conftest), which draws exactly the object the prompt names.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import yaml

from infra.stack import Stack
from libs.cli.accounts import create_account
from libs.cli.safety_policy import set_policy
from libs.settings import DEV_SIGNING_KEY

DEFAULT_POLICY = Path(__file__).resolve().parents[2] / "services" / "safety" / "default_policy.yaml"


@pytest.fixture
def content_only_policy(running: Stack, tmp_path: Path) -> Iterator[None]:
    policy = yaml.safe_load(DEFAULT_POLICY.read_text())
    for category in policy["categories"]:
        if "skull" in category.get("content_classes", []):
            category["terms"], category["patterns"] = [], []
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    set_policy(running.profile.kafka_bootstrap, path, "e2e-test")
    try:
        yield
    finally:
        set_policy(running.profile.kafka_bootstrap, DEFAULT_POLICY, "e2e-test")


@pytest.fixture
def api_client(running: Stack) -> Iterator[openai.OpenAI]:
    email = f"e2e-{uuid.uuid4().hex[:10]}@example.com"
    account = asyncio.run(create_account(running.profile.kafka_bootstrap, email, "api", DEV_SIGNING_KEY))
    with openai.OpenAI(
        base_url=f"{running.profile.gateway_url}/v1", api_key=account["api_key"], max_retries=0, timeout=120
    ) as client:
        yield client


# With this seed the world model draws a large skull that the shipped detector finds by pass 7
# of 12 (it misses small skulls: see docs/model-card.md).
SEED = 3


def _stream_until_error(client: openai.OpenAI, prompt: str) -> tuple[list[str], openai.APIError]:
    events: list[str] = []
    try:
        stream = client.images.generate(
            prompt=prompt, stream=True, partial_images=3, quality="high", extra_body={"seed": SEED}
        )
        for event in stream:
            events.append(event.type)
    except openai.APIError as error:
        return events, error
    raise AssertionError(f"the stream ended without an error: {events}")


def test_a_skull_drawn_mid_render_ends_the_stream_with_moderation_blocked(
    api_client: openai.OpenAI, content_only_policy: None
) -> None:
    # The safety service applies the new policy within moments; until then the prompt check blocks.
    deadline = time.monotonic() + 30
    while True:
        events, error = _stream_until_error(api_client, "a big white skull in the centre")
        if "image content" in str(error) or time.monotonic() > deadline:
            break
    assert error.code == "moderation_blocked", error
    assert "image content at pass" in str(error)
    blocked_pass = int(str(error).split("image content at pass ")[1].split(" ")[0])
    assert 1 <= blocked_pass < 12, "blocked before the last of the 12 passes"
    assert "image_generation.completed" not in events


def test_the_same_render_without_the_skull_completes(api_client: openai.OpenAI, content_only_policy: None) -> None:
    stream = api_client.images.generate(
        prompt="a big white circle in the centre",
        stream=True,
        partial_images=1,
        quality="high",
        extra_body={"seed": SEED},
    )
    events = [e.type for e in stream]
    assert events == ["image_generation.partial_image", "image_generation.completed"]
