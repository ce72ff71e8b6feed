"""The whole stack for end-to-end tests: the test profile's infra plus all six services.

`make test` starts the infrastructure; the first e2e test starts the services (as
`make up` does) and the last fixture teardown stops them. Missing infrastructure
fails the tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Iterator

import pytest

from infra.stack import SERVICES, Profile, Stack, StackError, kafka_ok, load_profile
from libs.cli.accounts import create_account
from libs.settings import DEV_SIGNING_KEY
from tests.e2e.otlp import OtlpReceiver


@pytest.fixture(scope="session")
def otlp() -> Iterator[OtlpReceiver]:
    """Receives the spans every service of the e2e stack exports."""
    receiver = OtlpReceiver()
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session")
def stack(otlp: OtlpReceiver) -> Iterator[Stack]:
    profile: Profile = load_profile("test")
    if not kafka_ok(profile):
        pytest.fail(f"Kafka is not reachable at {profile.kafka_bootstrap}: run the tests with `make test`")
    # The API pool draws with the procedural world model, which renders exactly what a prompt
    # names: end-to-end tests of the content check need an image that really shows the object.
    profile = dataclasses.replace(
        profile,
        otlp_endpoint=f"http://127.0.0.1:{otlp.port}",
        process_env=(("decoder-api", "DARKROOM_MODEL", "world"),),
    )
    stack = Stack(profile, say=lambda line: print(line))
    try:
        stack.up_services()
    except StackError as exc:
        pytest.fail(f"the services did not start: {exc}")
    yield stack
    for service in reversed(SERVICES):
        stack.proc(service).stop()


@pytest.fixture
def running(stack: Stack) -> Stack:
    """The stack, brought back up if an earlier test stopped part of it."""
    stack.up_infra()
    stack.up_services()
    return stack


@pytest.fixture(scope="module")
def api_key(stack: Stack) -> str:
    """The API key of a new pro account (one per test module)."""
    stack.up_infra()
    stack.up_services()
    email = f"e2e-{uuid.uuid4().hex[:10]}@example.com"
    account = asyncio.run(create_account(stack.profile.kafka_bootstrap, email, "pro", DEV_SIGNING_KEY))
    return str(account["api_key"])
