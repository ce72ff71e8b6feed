"""The operator API (/v1/admin): its token, policy changes as events, lanes, dead letters, jobs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import openai
import pytest

from libs import topics
from libs.access import DEFAULT_POLICIES
from libs.bus import Record
from libs.cli.dlq import Letter
from libs.events import REGISTRY, Envelope
from libs.events.schemas import BatchLoad, DeadLetter, JobQueued, RolloutChanged, ServiceHeartbeat, TierPolicyChanged
from libs.lanes import lanes
from libs.settings import DEV_OPERATOR_TOKEN
from services.gateway.admin import get_dead_letters
from tests.unit.gateway.conftest import GatewayUnderTest, key_for

OPERATOR = {"authorization": f"Bearer {DEV_OPERATOR_TOKEN}"}


async def _admin(gateway: GatewayUnderTest, method: str, path: str, **kwargs: Any) -> Any:
    response = await gateway.http.request(method, f"/v1/admin{path}", headers=OPERATOR, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def _published(gateway: GatewayUnderTest, topic: str) -> list[tuple[str, Any]]:
    """(key, event) of every record on a topic of the test's broker."""
    records = gateway.pipeline.broker.records(topic)
    return [(r.key.decode() if r.key else "", REGISTRY.decode(Envelope.from_bytes(r.value))) for r in records]


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer not-the-token", f"Basic {DEV_OPERATOR_TOKEN}", "api key"],
    ids=["missing", "wrong", "not-bearer", "api-key"],
)
async def test_the_operator_api_needs_the_operator_token(gateway: GatewayUnderTest, authorization: str | None) -> None:
    if authorization == "api key":
        authorization = f"Bearer {gateway.api_key}"
    headers = {"authorization": authorization} if authorization else {}
    for path in ("/lanes", "/policy", "/jobs", "/jobs/job_x", "/dead-letters"):
        response = await gateway.http.get(f"/v1/admin{path}", headers=headers)
        assert response.status_code == 401, path
        assert response.json()["error"]["code"] == "invalid_operator_token"
    patch = await gateway.http.patch("/v1/admin/policy/tiers/free", json={"max_n": 2}, headers=headers)
    assert patch.status_code == 401 and not _published(gateway, topics.POLICIES)


async def test_the_operator_token_is_not_an_api_key(gateway: GatewayUnderTest) -> None:
    for path in ("/v1/images", "/v1/account", "/v1/images/jobs/job_x"):
        response = await gateway.http.get(path, headers=OPERATOR)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


async def test_a_tier_change_is_published_as_the_cli_does_and_applied_before_the_answer(
    gateway: GatewayUnderTest,
) -> None:
    assert (await _admin(gateway, "GET", "/policy"))["tiers"]["free"] == DEFAULT_POLICIES["free"].model_dump()

    body = await _admin(gateway, "PATCH", "/policy/tiers/free", json={"requests_per_minute": 2, "max_n": 2})

    expected = DEFAULT_POLICIES["free"].model_copy(update={"requests_per_minute": 2, "max_n": 2})
    assert body["tier"] == "free" and body["policy"] == expected.model_dump()
    assert body["previous"] == DEFAULT_POLICIES["free"].model_dump()
    assert body["changed_by"] == "admin-console" and body["applied"] is True
    # The same event, key and topics as `darkroom policy set`.
    for topic in (topics.POLICIES, topics.POLICY_HISTORY):
        [(key, event)] = _published(gateway, topic)
        assert key == "tier:free" and isinstance(event, TierPolicyChanged)
        assert (event.policy, event.changed_by) == (expected, "admin-console")
    assert (await _admin(gateway, "GET", "/policy"))["tiers"]["free"] == expected.model_dump()
    # Keys of the tier get the new limits.
    account = await gateway.http.get("/v1/account", headers={"authorization": f"Bearer {key_for('a', 'free')}"})
    assert account.json()["limits"]["max_n"] == 2


@pytest.mark.parametrize(
    ("tier", "body", "param"),
    [
        ("gold", {"max_n": 2}, "tier"),
        ("free", {"requests_per_hour": 2}, "requests_per_hour"),
        ("free", {"requests_per_minute": -1}, "requests_per_minute"),
        ("free", {"max_quality": "ultra"}, "max_quality"),
        ("free", {"max_n": 5}, "max_n"),
        ("free", {"lane": "nowhere"}, "lane"),
        ("free", {}, "body"),
    ],
)
async def test_an_invalid_tier_change_is_a_400_naming_it_and_publishes_nothing(
    gateway: GatewayUnderTest, tier: str, body: dict[str, Any], param: str
) -> None:
    response = await gateway.http.patch(f"/v1/admin/policy/tiers/{tier}", json=body, headers=OPERATOR)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert not _published(gateway, topics.POLICIES)


async def test_a_body_that_is_not_an_object_is_a_400(gateway: GatewayUnderTest) -> None:
    response = await gateway.http.patch("/v1/admin/policy/tiers/free", json=[1, 2], headers=OPERATOR)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


async def test_a_rollout_is_published_and_applied(gateway: GatewayUnderTest) -> None:
    body = await _admin(gateway, "PUT", "/rollouts/image_generation/plus", json={"percent": 25})
    assert body == {
        "feature": "image_generation",
        "tier": "plus",
        "percent": 25.0,
        "previous": 100.0,
        "changed_by": "admin-console",
        "applied": True,
    }
    [(key, event)] = _published(gateway, topics.POLICIES)
    assert key == "rollout:image_generation:plus" and isinstance(event, RolloutChanged)
    assert (await _admin(gateway, "GET", "/policy"))["rollouts"]["image_generation"]["plus"] == 25.0


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/rollouts/image_generation/plus", {"percent": 150}, "percent"),
        ("/rollouts/image_generation/plus", {}, "percent"),
        ("/rollouts/teleport/plus", {"percent": 10}, "feature"),
        ("/rollouts/image_generation/gold", {"percent": 10}, "tier"),
    ],
)
async def test_an_invalid_rollout_is_a_400_naming_it(
    gateway: GatewayUnderTest, path: str, body: dict[str, Any], param: str
) -> None:
    response = await gateway.http.put(f"/v1/admin{path}", json=body, headers=OPERATOR)
    assert response.status_code == 400 and response.json()["error"]["param"] == param
    assert not _published(gateway, topics.POLICIES)


async def test_the_lanes_view_shows_lanes_decoder_batches_and_services(gateway: GatewayUnderTest) -> None:
    batch = BatchLoad(pool="consumer", limit=8, images=6, occupancy=0.75, pass_s=0.25, images_per_s=3.0, passes=9)
    beat = ServiceHeartbeat(service="decoder", instance_id="decoder-7", started_at=datetime.now(UTC), batch=batch)
    envelope = Envelope.wrap(beat, aggregate_id=beat.instance_id)
    await gateway.app.state.heartbeats(envelope, Record(topics.HEARTBEATS, 0, 0, None, envelope.to_bytes()))

    body = await _admin(gateway, "GET", "/lanes")

    assert [lane["lane"] for lane in body["lanes"]] == list(lanes())
    assert set(body["lanes"][0]) == {
        "lane",
        "waiting",
        "taken",
        "drain_per_s",
        "paused",
        "rejected",
        "max_waiting",
        "estimated_wait_s",
    }
    assert body["decoders"] == {"decoder-7": batch.model_dump()}
    assert body["pools"] == {
        "darkroom-mini/consumer": {"healthy": True, "instances": 1},
        "darkroom-mini/api": {"healthy": False, "instances": 0},
    }
    assert body["services"]["decoder"]["instances"] == 1 and body["services"]["decoder"]["healthy"] is True
    assert set(body["services"]) >= {"gateway", "auth", "requests", "decoder", "safety", "storage"}


class FakeDeadLetters:
    def __init__(self, letters: list[Letter]) -> None:
        self.letters = letters
        self.replayed: list[Letter] = []

    async def read(self) -> list[Letter]:
        return list(self.letters)

    async def replay(self, letters: Sequence[Letter]) -> int:
        self.replayed += letters
        return len(letters)


def _letter(offset: int, value: str, encoding: str = "utf-8") -> Letter:
    letter = DeadLetter(
        reason="handler failed: KeyError 'x'",
        error_type="KeyError",
        service="requests",
        group="requests",
        topic=topics.IMAGE_COMMANDS,
        partition=1,
        offset=40 + offset,
        key="job_1",
        value=value,
        value_encoding=encoding,
    )
    return Letter(offset, datetime(2026, 1, 1, 12, 0, tzinfo=UTC), letter)


async def test_dead_letters_are_listed_as_json_and_replayed_by_offset(gateway: GatewayUnderTest) -> None:
    message = Envelope.wrap(JobQueued(job_id="job_1", lane="free", topic="t", partition=0), aggregate_id="job_1")
    box = FakeDeadLetters([_letter(3, message.to_bytes().decode()), _letter(7, "AAEC", "base64")])
    gateway.app.dependency_overrides[get_dead_letters] = lambda: box

    body = await _admin(gateway, "GET", "/dead-letters")

    first, second = body["data"]
    assert first == {
        "offset": 3,
        "time": int(datetime(2026, 1, 1, 12, 0, tzinfo=UTC).timestamp()),
        "service": "requests",
        "group": "requests",
        "reason": "handler failed: KeyError 'x'",
        "error_type": "KeyError",
        "topic": topics.IMAGE_COMMANDS,
        "partition": 1,
        "source_offset": 43,
        "key": "job_1",
        "type": JobQueued.TYPE,
        "attempts": 1,
        "size_bytes": len(message.to_bytes()),
        "value_preview": message.to_bytes().decode()[:300],
    }
    assert (second["type"], second["value_preview"], second["size_bytes"]) == (None, None, 3)

    assert await _admin(gateway, "POST", "/dead-letters/replay", json={"offsets": [7]}) == {"replayed": 1}
    assert [item.offset for item in box.replayed] == [7]
    assert await _admin(gateway, "POST", "/dead-letters/replay") == {"replayed": 2}
    missing = await gateway.http.post("/v1/admin/dead-letters/replay", json={"offsets": [5]}, headers=OPERATOR)
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "offsets"
    # The override replaces the reader only: the token is still required.
    assert (await gateway.http.get("/v1/admin/dead-letters")).status_code == 401


async def test_jobs_of_every_account_are_listed_newest_first_and_by_status(gateway: GatewayUnderTest) -> None:
    other = {"authorization": f"Bearer {key_for('acct_x')}"}
    await gateway.client.images.generate(prompt="done", quality="low")
    done = gateway.pipeline.commands[-1].job_id
    with pytest.raises(openai.BadRequestError):
        await gateway.client.images.generate(prompt="forbidden thing", quality="low", extra_headers=other)
    gateway.pipeline.hold.clear()
    waiting = (
        await gateway.http.post(
            "/v1/images/generations",
            json={"prompt": "waiting", "quality": "low"},
            headers=other | {"prefer": "respond-async"},
        )
    ).json()["id"]
    blocked = next(job for job in gateway.pipeline.generated if job not in (done, waiting))

    listed = (await _admin(gateway, "GET", "/jobs"))["data"]
    assert [job["id"] for job in listed] == [waiting, blocked, done]
    assert [job["account_id"] for job in listed] == ["acct_x", "acct_x", "acct_owner"]
    item = listed[2]
    assert (item["status"], item["prompt"], item["tier"]) == ("completed", "done", "pro")
    assert item["image_ids"] == [f"img_{done}_0"]
    assert item["progress"] == {"pass": 4, "total_passes": 4} and "data" not in item

    async def by_status(status: str) -> list[str]:
        return [job["id"] for job in (await _admin(gateway, "GET", "/jobs", params={"status": status}))["data"]]

    assert await by_status("completed") == [done]
    assert await by_status("blocked") == [blocked]
    assert await by_status("queued") == [waiting]
    assert [job["id"] for job in (await _admin(gateway, "GET", "/jobs", params={"limit": 1}))["data"]] == [waiting]
    bad = await gateway.http.get("/v1/admin/jobs", params={"status": "lost"}, headers=OPERATOR)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "status"

    job = await _admin(gateway, "GET", f"/jobs/{done}")
    assert (job["id"], job["object"], job["account_id"], job["prompt"]) == (done, "image.job", "acct_owner", "done")
    assert job["data"][0]["image_id"] == f"img_{done}_0" and job["data"][0]["b64_json"]
    unknown = await gateway.http.get("/v1/admin/jobs/job_none", headers=OPERATOR)
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "job_id"
    gateway.pipeline.hold.set()
