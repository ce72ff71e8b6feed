"""The caller's images (list, file) and GET /v1/account, over HTTP as the web page calls them."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from libs.access import DEFAULT_POLICIES
from tests.unit.gateway.conftest import GatewayUnderTest, key_for
from tests.unit.gateway.test_limits import _set_policy


def _auth(api_key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"}


async def _generate(gateway: GatewayUnderTest, prompt: str, n: int = 1, **extra: Any) -> list[str]:
    """Generate with the owner's key; the new image ids."""
    result = await gateway.client.images.generate(prompt=prompt, n=n, quality="low", **extra)
    assert result.data
    job = gateway.pipeline.commands[-1].job_id
    return [f"img_{job}_{i}" for i in range(n)]


async def _list(gateway: GatewayUnderTest, api_key: str | None = None, **params: Any) -> dict[str, Any]:
    response = await gateway.http.get("/v1/images", params=params, headers=_auth(api_key or gateway.api_key))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_the_list_pages_the_owners_images_newest_first(gateway: GatewayUnderTest) -> None:
    assert await _list(gateway) == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
    first = await _generate(gateway, "one")
    second = await _generate(gateway, "two", n=2)
    third = await _generate(gateway, "three")
    await gateway.client.images.generate(prompt="not mine", quality="low", extra_headers=_auth(key_for("acct_x")))
    # Newest job first; within a job, the ids' order (the catalog's key) decides.
    newest_first = third + second[::-1] + first

    page = await _list(gateway, limit=3)
    assert [item["id"] for item in page["data"]] == newest_first[:3]
    assert (page["first_id"], page["last_id"], page["has_more"]) == (newest_first[0], newest_first[2], True)
    rest = await _list(gateway, limit=3, after=page["last_id"])
    assert [item["id"] for item in rest["data"]] == newest_first[3:]
    assert rest["has_more"] is False
    # Each item is the image object of GET /v1/images/{id}, plus its children.
    one = (await gateway.http.get(f"/v1/images/{third[0]}", headers=_auth(gateway.api_key))).json()
    assert page["data"][0] == one | {"children": []}
    assert one["prompt"] == "three" and one["object"] == "image" and one["parent"] is None

    other = await _list(gateway, key_for("acct_x"))
    assert [item["prompt"] for item in other["data"]] == ["not mine"]
    assert (await _list(gateway))["data"][0]["id"] == third[0]


async def test_a_tweak_is_listed_with_its_parent_and_the_parent_with_its_children(gateway: GatewayUnderTest) -> None:
    [parent] = await _generate(gateway, "a red circle")
    await gateway.client.images.edit(image=[], prompt="at night", extra_body={"image_id": parent})
    child = f"img_{gateway.pipeline.commands[-1].job_id}_0"

    by_id = {item["id"]: item for item in (await _list(gateway))["data"]}
    assert by_id[child]["parent"] == {"id": parent, "prompt": "a red circle"}
    assert by_id[child]["children"] == []
    assert by_id[parent]["children"] == [{"id": child, "prompt": "at night"}]


@pytest.mark.parametrize("limit", ["0", "101", "many"])
async def test_a_limit_out_of_range_is_a_400_naming_limit(gateway: GatewayUnderTest, limit: str) -> None:
    response = await gateway.http.get("/v1/images", params={"limit": limit}, headers=_auth(gateway.api_key))
    assert response.status_code == 400 and response.json()["error"]["param"] == "limit"


async def test_the_list_needs_an_api_key(gateway: GatewayUnderTest) -> None:
    response = await gateway.http.get("/v1/images")
    assert response.status_code == 401 and response.json()["error"]["code"] == "missing_api_key"


async def test_the_content_is_the_stored_file_for_its_owner_only(gateway: GatewayUnderTest) -> None:
    result = await gateway.client.images.generate(prompt="a square", quality="low", output_format="jpeg")
    assert result.data and result.data[0].b64_json
    image_id = f"img_{gateway.pipeline.commands[-1].job_id}_0"

    response = await gateway.http.get(f"/v1/images/{image_id}/content", headers=_auth(gateway.api_key))
    assert response.status_code == 200
    assert response.content == base64.b64decode(result.data[0].b64_json)
    assert response.headers["content-type"] == "image/jpeg"
    assert response.headers["content-disposition"] == f'inline; filename="{image_id}.jpeg"'

    # Another account's image reads like an unknown one.
    for path, key in ((image_id, key_for("acct_x")), ("img_none_0", gateway.api_key)):
        missing = await gateway.http.get(f"/v1/images/{path}/content", headers=_auth(key))
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


async def test_a_png_is_served_as_png(gateway: GatewayUnderTest) -> None:
    [image_id] = await _generate(gateway, "a circle")
    response = await gateway.http.get(f"/v1/images/{image_id}/content", headers=_auth(gateway.api_key))
    assert response.headers["content-type"] == "image/png" and response.content.startswith(b"\x89PNG")


async def test_the_account_says_whose_key_it_is_and_the_tiers_limits(gateway: GatewayUnderTest) -> None:
    response = await gateway.http.get("/v1/account", headers=_auth(key_for("acct_free", "free")))
    assert response.status_code == 200
    assert response.json() == {
        "id": "acct_free",
        "object": "account",
        "tier": "free",
        "limits": DEFAULT_POLICIES["free"].model_dump(),
        "features": {"image_generation": True},
    }
    # The limits in force: an operator's change shows at once.
    await _set_policy(gateway, "free", max_n=2)
    response = await gateway.http.get("/v1/account", headers=_auth(key_for("acct_free", "free")))
    assert response.json()["limits"]["max_n"] == 2

    assert (await gateway.http.get("/v1/account")).status_code == 401
