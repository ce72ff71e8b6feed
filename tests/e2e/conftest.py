"""The whole stack for end-to-end tests: the test profile's infra plus all six services.

`make test` starts the infrastructure; the first e2e test starts the services (as
`make up` does) and the last fixture teardown stops them. Missing infrastructure
fails the tests.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infra.stack import Profile, Stack, StackError, kafka_ok, load_profile


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    profile: Profile = load_profile("test")
    if not kafka_ok(profile):
        pytest.fail(f"Kafka is not reachable at {profile.kafka_bootstrap}: run the tests with `make test`")
    stack = Stack(profile, say=lambda line: print(line))
    try:
        stack.up_services()
    except StackError as exc:
        pytest.fail(f"the services did not start: {exc}")
    yield stack
    for service in ("gateway", "storage", "safety", "decoder", "requests", "auth"):
        stack.proc(service).stop()


@pytest.fixture
def running(stack: Stack) -> Stack:
    """The stack, brought back up if an earlier test stopped part of it."""
    stack.up_infra()
    stack.up_services()
    return stack
