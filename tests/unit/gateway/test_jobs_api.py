"""Cancelling jobs and Idempotency-Key, against the in-memory gateway and the services behind it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from libs.stores.memory import InMemoryDocumentStore
from services.gateway.idempotency import IdempotencyKeys, KeyReused
from tests.helpers import eventually
from tests.unit.gateway.conftest import GatewayUnderTest, key_for


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def _create(gateway: GatewayUnderTest, key: str | None = None, **headers: str) -> dict[str, Any]:
    response = await gateway.http.post(
        "/v1/images/generations",
        json={"prompt": "a red circle", "seed": 1},
        headers=_auth(key or gateway.api_key) | {"prefer": "respond-async"} | headers,
    )
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


async def _status(gateway: GatewayUnderTest, job_id: str, wanted: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        job: dict[str, Any] = (
            await gateway.http.get(f"/v1/images/jobs/{job_id}", headers=_auth(gateway.api_key))
        ).json()
        return job if job["status"] == wanted else None

    return await eventually(check, 10, f"{job_id} {wanted}")


async def test_delete_and_cancel_end_a_job_as_cancelled(gateway: GatewayUnderTest) -> None:
    gateway.pipeline.hold.clear()
    job = await _create(gateway)
    cancel = asyncio.create_task(gateway.http.delete(f"/v1/images/jobs/{job['id']}", headers=_auth(gateway.api_key)))

    async def asked() -> bool:
        return job["id"] in gateway.pipeline.cancelled

    await eventually(asked, 10, "the cancel command")
    gateway.pipeline.hold.set()
    response = await cancel

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["id"], body["status"]) == (job["id"], "cancelled")
    assert body["error"]["code"] == "job_cancelled"
    assert (await _status(gateway, job["id"], "cancelled"))["status"] == "cancelled"
    again = await gateway.http.post(f"/v1/images/jobs/{job['id']}/cancel", headers=_auth(gateway.api_key))
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


async def test_only_the_owner_cancels_and_an_ended_job_stays_as_it_ended(gateway: GatewayUnderTest) -> None:
    job = await _create(gateway)
    await _status(gateway, job["id"], "completed")

    other = await gateway.http.post(f"/v1/images/jobs/{job['id']}/cancel", headers=_auth(key_for("acct_other")))
    assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"
    ended = await gateway.http.delete(f"/v1/images/jobs/{job['id']}", headers=_auth(gateway.api_key))
    assert ended.status_code == 409
    assert set(ended.json()["error"]) == {"message", "type", "param", "code"}
    assert ended.json()["error"]["code"] == "job_not_cancellable"
    assert job["id"] not in gateway.pipeline.cancelled


async def test_an_idempotency_key_names_one_job_per_account(gateway: GatewayUnderTest) -> None:
    first = await _create(gateway, **{"idempotency-key": "order-42"})
    second = await _create(gateway, **{"idempotency-key": "order-42"})
    other = await _create(gateway, key_for("acct_other"), **{"idempotency-key": "order-42"})
    fresh = await _create(gateway, **{"idempotency-key": "order-43"})

    assert second["id"] == first["id"]
    assert len({first["id"], other["id"], fresh["id"]}) == 3
    await _status(gateway, first["id"], "completed")
    assert gateway.pipeline.generated.count(first["id"]) == 1

    sync = await gateway.http.post(
        "/v1/images/generations",
        json={"prompt": "a red circle", "seed": 1},
        headers=_auth(gateway.api_key) | {"idempotency-key": "order-42"},
    )
    assert sync.status_code == 200 and len(sync.json()["data"]) == 1
    assert gateway.pipeline.generated.count(first["id"]) == 1


async def test_a_key_reused_with_another_body_is_refused_and_starts_nothing(gateway: GatewayUnderTest) -> None:
    first = await _create(gateway, **{"idempotency-key": "order-7"})
    other = await gateway.http.post(
        "/v1/images/generations",
        json={"prompt": "a blue square", "seed": 1},
        headers=_auth(gateway.api_key) | {"prefer": "respond-async", "idempotency-key": "order-7"},
    )

    assert other.status_code == 422
    assert other.json()["error"]["param"] == "Idempotency-Key"
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    await _status(gateway, first["id"], "completed")
    assert gateway.pipeline.generated.count(first["id"]) == 1
    assert len(gateway.pipeline.generated) == 1


async def test_retries_of_a_keyed_request_without_a_seed_name_one_job(gateway: GatewayUnderTest) -> None:
    async def create(key: str) -> dict[str, Any]:
        response = await gateway.http.post(
            "/v1/images/generations",
            json={"prompt": "a red circle"},
            headers=_auth(gateway.api_key) | {"prefer": "respond-async", "idempotency-key": key},
        )
        assert response.status_code == 202, response.text
        job: dict[str, Any] = response.json()
        return job

    first = await create("no-seed-1")
    again = await create("no-seed-1")
    other = await create("no-seed-2")

    assert again["id"] == first["id"] != other["id"]


async def test_an_overlong_idempotency_key_is_a_400(gateway: GatewayUnderTest) -> None:
    response = await gateway.http.post(
        "/v1/images/generations",
        json={"prompt": "a red circle"},
        headers=_auth(gateway.api_key) | {"idempotency-key": "k" * 256},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "Idempotency-Key"


async def test_a_key_names_its_job_for_24_hours_then_starts_over() -> None:
    keys = IdempotencyKeys(InMemoryDocumentStore())
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    assert await keys.claim("acct", "k", "job_1", "req", t0) == "job_1"
    assert await keys.claim("acct", "k", "job_2", "req", t0 + timedelta(hours=23, minutes=59)) == "job_1"
    assert await keys.claim("other", "k", "job_3", "req", t0) == "job_3"
    assert await keys.claim("acct", "k", "job_4", "req", t0 + timedelta(hours=24)) == "job_4"
    assert await keys.claim("acct", "k", "job_5", "req", t0 + timedelta(hours=25)) == "job_4"


async def test_a_live_claim_refuses_another_request_and_an_expired_one_does_not() -> None:
    keys = IdempotencyKeys(InMemoryDocumentStore())
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    assert await keys.claim("acct", "k", "job_1", "req-a", t0) == "job_1"
    with pytest.raises(KeyReused):
        await keys.claim("acct", "k", "job_2", "req-b", t0 + timedelta(hours=1))
    assert await keys.claim("acct", "k", "job_3", "req-b", t0 + timedelta(hours=24)) == "job_3"


async def test_a_released_claim_frees_the_key_and_only_its_own_job_releases_it() -> None:
    keys = IdempotencyKeys(InMemoryDocumentStore())
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    assert await keys.claim("acct", "k", "job_1", "req-a", t0) == "job_1"
    assert not await keys.release("acct", "k", "job_0")
    with pytest.raises(KeyReused):
        await keys.claim("acct", "k", "job_2", "req-b", t0)
    assert await keys.release("acct", "k", "job_1")
    assert not await keys.release("acct", "k", "job_1")
    assert await keys.claim("acct", "k", "job_2", "req-b", t0) == "job_2"
