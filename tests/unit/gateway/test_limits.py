"""Tiers, rate limits, quotas, rollouts and revocations at the gateway, through the openai SDK.

Policy, revocation and tier records are published on the in-memory broker as an
operator's CLI or the auth service would; the running gateway applies them live.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI

from libs import topics
from libs.access import DEFAULT_POLICIES, AccessState, rollout_position
from libs.apikeys import Principal, verify
from libs.bus import EventPublisher
from libs.bus.memory import InMemoryBroker
from libs.events import Envelope, Event
from libs.events.schemas import (
    AccountUsage,
    GenerateImage,
    KeyRevoked,
    RolloutChanged,
    Tier,
    TierChanged,
    TierPolicyChanged,
)
from libs.ratelimit import UsageLedger
from services.gateway.errors import refused
from services.gateway.limits import Admission, Feed, Limits, UsageHandler, port_readers
from services.gateway.refusals import Refusal
from tests.helpers import eventually, job_spec, sdk_client
from tests.unit.gateway.conftest import SIGNING, GatewayUnderTest, key_for

ASYNC = {"Prefer": "respond-async"}


async def _publish(gw: GatewayUnderTest, topic: str, event: Event, key: str) -> None:
    """Publish a record and wait until the gateway has applied it."""
    limits = gw.app.state.gateway.limits
    before = limits.access.changes
    await EventPublisher(gw.pipeline.broker.producer()).publish(topic, Envelope.wrap(event, aggregate_id=key), key=key)

    async def applied() -> bool:
        return bool(limits.access.changes > before)

    await eventually(applied, 5, f"the gateway to apply {event.TYPE}")


async def _set_policy(gw: GatewayUnderTest, tier: Tier, **changes: Any) -> None:
    policy = DEFAULT_POLICIES[tier].model_copy(update=changes)
    await _publish(gw, topics.POLICIES, TierPolicyChanged(tier=tier, policy=policy), f"tier:{tier}")


def _client(gw: GatewayUnderTest, api_key: str) -> AsyncOpenAI:
    return sdk_client(gw.http, api_key)


async def test_successful_generations_carry_the_rate_limit_headers(gateway: GatewayUnderTest) -> None:
    raw = await gateway.client.images.with_raw_response.generate(prompt="a red circle", quality="low")
    limit = DEFAULT_POLICIES["pro"].requests_per_minute
    assert raw.headers["x-ratelimit-limit-requests"] == str(limit)
    assert raw.headers["x-ratelimit-remaining-requests"] == str(limit - 1)
    assert re.fullmatch(r"\d+(\.\d+)?(ms|s)", raw.headers["x-ratelimit-reset-requests"])


async def test_over_the_limit_is_a_rate_limit_error_with_openai_headers(gateway: GatewayUnderTest) -> None:
    await _set_policy(gateway, "pro", requests_per_minute=2)
    first = await gateway.client.images.with_raw_response.generate(prompt="one", quality="low")
    second = await gateway.client.images.with_raw_response.generate(prompt="two", quality="low")
    assert [first.headers["x-ratelimit-remaining-requests"], second.headers["x-ratelimit-remaining-requests"]] == [
        "1",
        "0",
    ]
    with pytest.raises(openai.RateLimitError) as error:
        await gateway.client.images.generate(prompt="three", quality="low")
    assert error.value.code == "rate_limit_exceeded"
    headers = error.value.response.headers
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    # 2 per minute: one token every 30 s, a full bucket again within a minute.
    assert 1 <= int(headers["retry-after"]) <= 30
    assert re.fullmatch(r"(\d+(\.\d+)?s|1m0s)", headers["x-ratelimit-reset-requests"])
    assert "x-should-retry" not in headers


async def test_a_keyed_request_refused_by_the_rate_limit_frees_its_key(gateway: GatewayUnderTest) -> None:
    await _set_policy(gateway, "pro", requests_per_minute=1)
    await gateway.client.images.generate(prompt="one", quality="low")
    keyed = {"idempotency-key": "order-9"}
    with pytest.raises(openai.RateLimitError):
        await gateway.client.images.generate(prompt="two", quality="low", extra_headers=keyed)

    # The refused request made no job, so the key is free for another body, not a 422.
    await _set_policy(gateway, "pro", requests_per_minute=10)
    first = await gateway.client.images.generate(prompt="three", quality="low", extra_headers=keyed)
    again = await gateway.client.images.generate(prompt="three", quality="low", extra_headers=keyed)
    assert first.data and again.data and first.data[0].b64_json == again.data[0].b64_json
    assert len(gateway.pipeline.generated) == 2


async def test_a_policy_change_applies_without_restart(gateway: GatewayUnderTest) -> None:
    await _set_policy(gateway, "pro", requests_per_minute=1)
    await gateway.client.images.generate(prompt="one", quality="low")
    with pytest.raises(openai.RateLimitError):
        await gateway.client.images.generate(prompt="two", quality="low")
    await _set_policy(gateway, "pro", requests_per_minute=10)
    raw = await gateway.client.images.with_raw_response.generate(prompt="three", quality="low")
    assert raw.headers["x-ratelimit-limit-requests"] == "10"


async def test_the_daily_image_quota_is_insufficient_quota_not_to_retry(gateway: GatewayUnderTest) -> None:
    await _set_policy(gateway, "pro", images_per_day=3)
    await gateway.client.images.generate(prompt="two images", quality="low", n=2)
    with pytest.raises(openai.RateLimitError) as error:
        await gateway.client.images.generate(prompt="two more", quality="low", n=2)
    assert error.value.code == "insufficient_quota"
    assert error.value.response.headers["x-should-retry"] == "false"
    assert "2 of the 3 images per day" in error.value.message
    await gateway.client.images.generate(prompt="the last one", quality="low", n=1)


async def test_the_metered_usage_of_the_day_counts_toward_the_quota(gateway: GatewayUnderTest) -> None:
    """Images completed before this gateway started (older than the commands it reads at
    start) reach it as the metering service's usage of the day."""
    await _set_policy(gateway, "pro", images_per_day=3)
    now = datetime.now(UTC)
    usage = AccountUsage(
        account_id="acct_owner",
        day=now.date().isoformat(),
        tier="pro",
        jobs=1,
        images=2,
        output_tokens=512,
        completed_through=now,
    )
    key = f"acct_owner|{usage.day}"
    await EventPublisher(gateway.pipeline.broker.producer()).publish(
        topics.USAGE, Envelope.wrap(usage, aggregate_id=key), key=key
    )
    ledger = gateway.app.state.gateway.limits.ledger

    async def metered() -> bool:
        return bool(ledger.images_today("acct_owner", time.time()) == 2)

    await eventually(metered, 5, "the gateway to read the metered usage")
    with pytest.raises(openai.RateLimitError) as error:
        await gateway.client.images.generate(prompt="two more", quality="low", n=2)
    assert error.value.code == "insufficient_quota" and "2 of the 3 images per day" in error.value.message
    await gateway.client.images.generate(prompt="the last one", quality="low", n=1)


async def test_tier_limits_on_n_and_quality_name_the_param(gateway: GatewayUnderTest) -> None:
    free = _client(gateway, key_for("acct_free", "free"))
    with pytest.raises(openai.BadRequestError) as error:
        await free.images.generate(prompt="two", quality="low", n=2)
    assert isinstance(error.value.body, dict) and error.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as error:
        await free.images.generate(prompt="sharp", quality="high")
    assert isinstance(error.value.body, dict) and error.value.body["param"] == "quality"


async def test_concurrent_jobs_are_limited_until_one_ends(gateway: GatewayUnderTest) -> None:
    await _set_policy(gateway, "pro", concurrent_jobs=1)
    gateway.pipeline.hold.clear()
    job = await gateway.client.images.with_raw_response.generate(prompt="slow", quality="low", extra_headers=ASYNC)
    assert job.http_response.status_code == 202
    with pytest.raises(openai.RateLimitError) as error:
        await gateway.client.images.generate(prompt="another", quality="low", extra_headers=ASYNC)
    assert error.value.code == "rate_limit_exceeded" and "concurrent" in error.value.message
    gateway.pipeline.hold.set()
    ledger = gateway.app.state.gateway.limits.ledger

    async def ended() -> bool:
        return bool(ledger.in_flight("acct_owner", time.time()) == 0)

    await eventually(ended, 5, "the job to end")
    await gateway.client.images.generate(prompt="now it fits", quality="low")


async def test_a_revoked_key_is_an_authentication_error(gateway: GatewayUnderTest) -> None:
    await gateway.client.images.generate(prompt="before", quality="low")
    key_id = verify(gateway.api_key, SIGNING).key_id
    revoked = KeyRevoked(request_id="r1", key_id=key_id, account_id="acct_owner", reason="leaked")
    await _publish(gateway, topics.REVOCATIONS, revoked, key_id)
    with pytest.raises(openai.AuthenticationError) as error:
        await gateway.client.images.generate(prompt="after", quality="low")
    assert error.value.code == "invalid_api_key" and "revoked" in error.value.message
    # Another key of the same account still works.
    await _client(gateway, key_for("acct_owner")).images.generate(prompt="new key", quality="low")


async def test_a_malformed_key_is_an_authentication_error(gateway: GatewayUnderTest) -> None:
    for bad in ("sk-dr-garbage", gateway.api_key[:-3] + "abc", "sk-other"):
        with pytest.raises(openai.AuthenticationError) as error:
            await _client(gateway, bad).images.generate(prompt="x", quality="low")
        assert isinstance(error.value.body, dict) and error.value.body["type"] == "invalid_request_error"


async def test_a_tier_change_applies_to_existing_keys(gateway: GatewayUnderTest) -> None:
    free_key = key_for("acct_upgraded", "free")
    with pytest.raises(openai.BadRequestError):
        await _client(gateway, free_key).images.generate(prompt="two", quality="low", n=2)
    upgrade = TierChanged(request_id="t1", account_id="acct_upgraded", tier="pro", previous="free")
    await _publish(gateway, topics.ACCOUNT_TIERS, upgrade, "acct_upgraded")
    raw = await _client(gateway, free_key).images.with_raw_response.generate(prompt="two", quality="low", n=2)
    assert raw.headers["x-ratelimit-limit-requests"] == str(DEFAULT_POLICIES["pro"].requests_per_minute)


async def test_outside_the_rollout_is_permission_denied(gateway: GatewayUnderTest) -> None:
    accounts = [f"acct_{i}" for i in range(200)]
    inside = [a for a in accounts if rollout_position(a, "image_generation") < 10]
    outside = [a for a in accounts if rollout_position(a, "image_generation") >= 10]
    assert 5 <= len(inside) <= 40  # about 10% of them
    flag = RolloutChanged(feature="image_generation", tier="free", percent=10, previous=100)
    await _publish(gateway, topics.POLICIES, flag, "rollout:image_generation:free")

    with pytest.raises(openai.PermissionDeniedError) as error:
        await _client(gateway, key_for(outside[0], "free")).images.generate(prompt="x", quality="low")
    assert error.value.code == "feature_not_available"
    assert "rolled out gradually" in error.value.message
    await _client(gateway, key_for(inside[0], "free")).images.generate(prompt="x", quality="low")
    # Other tiers are not affected.
    await _client(gateway, key_for(outside[0], "plus")).images.generate(prompt="x", quality="low")


def test_rollout_membership_is_stable_and_grows_with_the_percentage() -> None:
    accounts = [f"acct_{i}" for i in range(2000)]
    at = {p: {a for a in accounts if rollout_position(a, "image_generation") < p} for p in (10, 50)}
    assert at[10] <= at[50]
    assert 150 <= len(at[10]) <= 250 and 900 <= len(at[50]) <= 1100
    assert all(rollout_position(a, "image_generation") == rollout_position(a, "image_generation") for a in accounts)


async def test_the_usage_feed_skips_garbage_on_the_command_topic_and_counts_the_rest() -> None:
    broker = InMemoryBroker()
    producer = broker.producer()
    await producer.send(topics.IMAGE_COMMANDS, b"not json", key=b"x")
    bad = Envelope(type="images.generate_image", aggregate_id="job_bad", payload={"job_id": 1})
    await producer.send(topics.IMAGE_COMMANDS, bad.to_bytes(), key=b"x")
    spec = job_spec(account_id="acct_a", tier="free", prompt="p")
    good = GenerateImage(job_id="job_1", spec=spec, created_at=datetime.now(UTC))
    await producer.send(topics.IMAGE_COMMANDS, Envelope.wrap(good, aggregate_id="job_1").to_bytes(), key=b"job_1")
    limits = Limits(AccessState(), UsageLedger())
    feed = Feed(
        "usage",
        port_readers(broker.consumer)("usage", [topics.IMAGE_COMMANDS], {}),
        UsageHandler(limits.ledger, limits.access, limits.clock),
        EventPublisher(producer),
        owned=False,
    )
    await feed.load(timeout_s=5)
    await feed.close()
    # The requests service owns the command topic and dead-letters such records; the
    # gateway's usage feed skips them (no copy per replica) and counts the valid ones.
    assert broker.records(topics.DEAD_LETTERS) == []
    assert limits.ledger.in_flight("acct_a", time.time()) == 1


def test_a_refusal_leaves_as_openais_error_with_its_headers() -> None:
    refusal = Refusal(429, "Slow down.", code="rate_limit_exceeded", headers={"retry-after": "3"})
    response = refused(refusal).response()
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert response.body == (
        b'{"error":{"message":"Slow down.","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}}'
    )


def test_admission_answers_a_value_and_a_refused_lane_spends_no_allowance() -> None:
    limits = Limits(AccessState(), UsageLedger())
    free = Principal("acct_free", "free", "k1:free", 0)

    over_n = limits.admit_generation(free, "job_1", 2, "low")
    message = "The free tier allows at most 1 image(s) per request."
    assert over_n == Refusal(400, message, code="tier_limit", param="n")

    full = Refusal(503, "The free lane is at capacity.", code="lane_full", headers={"retry-after": "2"})
    assert limits.admit_generation(free, "job_2", 1, "low", lane_open=lambda lane: full) is full

    admitted = limits.admit_generation(free, "job_3", 1, "low", lane_open=lambda lane: None)
    assert isinstance(admitted, Admission) and admitted.lane == "free"
    # The refused requests took nothing from the bucket: this is the first one counted.
    limit = int(admitted.headers["x-ratelimit-limit-requests"])
    assert admitted.headers["x-ratelimit-remaining-requests"] == str(limit - 1)
