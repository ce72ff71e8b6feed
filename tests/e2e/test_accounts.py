"""End to end: operators revoke keys, upgrade accounts and roll features out, live.

The CLI's functions publish through Kafka; the auth service and the running gateway
apply the changes without a restart, and the openai SDK sees the result.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import httpx
import openai
import pytest

from infra.stack import Stack
from libs.cli.accounts import change_tier, create_account, key_id_of, revoke
from libs.cli.policy import read_access, set_policy
from libs.settings import DEV_SIGNING_KEY
from tests.helpers import eventually


def _account(stack: Stack, tier: str) -> dict[str, str]:
    email = f"e2e-{uuid.uuid4().hex[:10]}@example.com"
    return asyncio.run(create_account(stack.profile.kafka_bootstrap, email, tier, DEV_SIGNING_KEY))


def _client(stack: Stack, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.profile.gateway_url}/v1", api_key=api_key, max_retries=0, timeout=120)


def _status_of_unknown_job(stack: Stack, api_key: str) -> int:
    # A cheap authenticated call: 404 while the key is valid, 401 once it is revoked.
    with httpx.Client(base_url=stack.profile.gateway_url, timeout=10) as http:
        return http.get("/v1/images/jobs/job_none", headers={"authorization": f"Bearer {api_key}"}).status_code


def test_a_revoked_key_stops_working_at_the_gateway(running: Stack) -> None:
    account = _account(running, "pro")
    key = account["api_key"]
    with _client(running, key) as client:
        assert client.images.generate(prompt="a red circle", quality="low", extra_body={"seed": 1}).data
        account_id, key_id = key_id_of(key, DEV_SIGNING_KEY)
        revoked = asyncio.run(revoke(running.profile.kafka_bootstrap, account_id, key_id, "leaked", "e2e"))
        assert revoked == [key_id]

        async def refused() -> bool:
            return _status_of_unknown_job(running, key) == 401

        asyncio.run(eventually(refused, 10, "the gateway to apply the revocation"))
        with pytest.raises(openai.AuthenticationError) as error:
            client.images.generate(prompt="a red circle", quality="low")
        assert "revoked" in error.value.message


def test_an_upgrade_lifts_the_tier_limits_of_the_same_key(running: Stack) -> None:
    account = _account(running, "free")
    with _client(running, account["api_key"]) as client:
        with pytest.raises(openai.BadRequestError) as error:
            client.images.generate(prompt="two circles", quality="low", n=2)
        assert isinstance(error.value.body, dict) and error.value.body["param"] == "n"
        upgraded = asyncio.run(change_tier(running.profile.kafka_bootstrap, account["id"], "plus", "e2e"))
        assert (upgraded["tier"], upgraded["previous_tier"]) == ("plus", "free")

        async def plus_limits() -> bool:
            try:
                client.images.with_raw_response.generate(
                    prompt="two circles", quality="low", n=2, extra_body={"seed": 2}
                )
            except openai.BadRequestError:
                return False
            return True

        asyncio.run(eventually(plus_limits, 10, "the gateway to apply the upgrade"))


@pytest.fixture
def plus_rollout(running: Stack) -> Iterator[None]:
    bootstrap = running.profile.kafka_bootstrap
    before = asyncio.run(read_access(bootstrap)).rollout_percent("image_generation", "plus")
    set_policy(bootstrap, changed_by="e2e", tier="plus", rollout="image_generation", percent=0)
    try:
        yield
    finally:
        set_policy(bootstrap, changed_by="e2e", tier="plus", rollout="image_generation", percent=before)


def test_a_rollout_flag_applies_live(running: Stack, plus_rollout: None) -> None:
    account = _account(running, "plus")
    with _client(running, account["api_key"]) as client:

        async def denied() -> openai.PermissionDeniedError | None:
            try:
                client.images.generate(prompt="a green star", quality="low", extra_body={"seed": 3})
            except openai.PermissionDeniedError as error:
                return error
            return None

        error = asyncio.run(eventually(denied, 10, "the gateway to apply the flag"))
        assert error.code == "feature_not_available"
        set_policy(
            running.profile.kafka_bootstrap, changed_by="e2e", tier="plus", rollout="image_generation", percent=100
        )

        async def allowed() -> bool:
            try:
                client.images.generate(prompt="a green star", quality="low", extra_body={"seed": 3})
            except openai.PermissionDeniedError:
                return False
            return True

        asyncio.run(eventually(allowed, 10, "the gateway to apply the rollout"))


def test_policy_changes_are_events_with_who_and_the_old_value(running: Stack) -> None:
    bootstrap = running.profile.kafka_bootstrap
    before = asyncio.run(read_access(bootstrap)).policy("api")
    change = set_policy(bootstrap, changed_by="e2e-operator", tier="api", changes={"images_per_day": 12345})
    try:
        assert change.model_dump()["previous"] == before.model_dump()
        assert change.model_dump()["policy"]["images_per_day"] == 12345
        assert asyncio.run(read_access(bootstrap)).policy("api").images_per_day == 12345
    finally:
        set_policy(bootstrap, changed_by="e2e-operator", tier="api", changes=before.model_dump())
