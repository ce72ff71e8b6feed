"""End to end: the operator API changes a tier's limits live, and the user endpoints the web
page reads (account, the image list and a file) work against FerretDB and MinIO.

Policy changes are global to the test stack, so every change is put back afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from infra.stack import Stack
from libs.cli.accounts import create_account
from libs.settings import DEV_OPERATOR_TOKEN, DEV_SIGNING_KEY

OPERATOR = {"authorization": f"Bearer {DEV_OPERATOR_TOKEN}"}


def _account(stack: Stack, tier: str) -> dict[str, str]:
    email = f"e2e-{uuid.uuid4().hex[:10]}@example.com"
    return asyncio.run(create_account(stack.profile.kafka_bootstrap, email, tier, DEV_SIGNING_KEY))


@pytest.fixture
def http(running: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running.profile.gateway_url, timeout=120) as client:
        yield client


def _generate(http: httpx.Client, api_key: str, prompt: str, **headers: str) -> httpx.Response:
    body = {"prompt": prompt, "quality": "low", "seed": 5}
    return http.post("/v1/images/generations", json=body, headers={"authorization": f"Bearer {api_key}", **headers})


def _patch_free(http: httpx.Client, changes: dict[str, Any]) -> dict[str, Any]:
    response = http.patch("/v1/admin/policy/tiers/free", json=changes, headers=OPERATOR)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["applied"] is True
    return body


def test_a_requests_per_minute_set_through_the_operator_api_is_enforced(http: httpx.Client, running: Stack) -> None:
    account = _account(running, "free")
    key = account["api_key"]
    assert http.get("/v1/admin/policy", headers={"authorization": f"Bearer {key}"}).status_code == 401

    # Two requests a minute, and room for both jobs at once so only the rate decides.
    change = _patch_free(http, {"requests_per_minute": 2, "concurrent_jobs": 3})
    try:
        assert http.get("/v1/admin/policy", headers=OPERATOR).json()["tiers"]["free"]["requests_per_minute"] == 2
        assert http.get("/v1/account", headers={"authorization": f"Bearer {key}"}).json()["limits"] == change["policy"]
        started = [_generate(http, key, f"a blue square {i}", prefer="respond-async") for i in range(2)]
        assert [r.status_code for r in started] == [202, 202]
        refused = _generate(http, key, "a blue square 3", prefer="respond-async")
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert refused.headers["x-ratelimit-limit-requests"] == "2"

        # Every job, with its account, in the operators' job list.
        listed = http.get("/v1/admin/jobs", params={"limit": 20}, headers=OPERATOR).json()["data"]
        owners = {job["id"]: job["account_id"] for job in listed}
        assert [owners.get(r.json()["id"]) for r in started] == [account["id"]] * 2
    finally:
        _patch_free(http, change["previous"])
    assert http.get("/v1/admin/policy", headers=OPERATOR).json()["tiers"]["free"] == change["previous"]


def test_the_pages_image_list_and_files_read_ferretdb_and_minio(http: httpx.Client, running: Stack) -> None:
    key = _account(running, "pro")["api_key"]
    auth = {"authorization": f"Bearer {key}"}
    made = []
    for i in range(3):
        response = _generate(http, key, f"a green triangle {i}")
        assert response.status_code == 200, response.text
        made.append(response.json()["data"][0])

    first = http.get("/v1/images", params={"limit": 2}, headers=auth).json()
    assert [item["id"] for item in first["data"]] == [made[2]["image_id"], made[1]["image_id"]]
    assert first["has_more"] is True
    rest = http.get("/v1/images", params={"limit": 2, "after": first["last_id"]}, headers=auth).json()
    assert [item["id"] for item in rest["data"]] == [made[0]["image_id"]] and rest["has_more"] is False

    content = http.get(f"/v1/images/{made[0]['image_id']}/content", headers=auth)
    assert content.status_code == 200 and content.headers["content-type"] == "image/png"
    assert content.content == base64.b64decode(made[0]["b64_json"])
