"""The web app's pages and assets as the gateway serves them (the browser tests drive them)."""

from __future__ import annotations

import re

from services.gateway.web import WEB_DIR
from tests.unit.gateway.conftest import GatewayUnderTest


async def test_the_pages_are_served_with_a_policy_that_keeps_them_on_this_origin(gateway: GatewayUnderTest) -> None:
    for path, title in (("/", "<title>darkroom</title>"), ("/admin", "<title>darkroom · operators</title>")):
        page = await gateway.http.get(path)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert title in page.text
        policy = page.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "connect-src 'self'" in policy

    script = await gateway.http.get("/web/app.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert "default-src 'self'" in script.headers["content-security-policy"]
    assert (await gateway.http.get("/web/nope.js")).status_code == 404


def test_every_asset_a_page_names_exists_and_nothing_comes_from_elsewhere() -> None:
    for page in ("index.html", "admin.html"):
        html = (WEB_DIR / page).read_text()
        for asset in re.findall(r'(?:src|href)="(/web/[^"]+)"', html):
            assert (WEB_DIR / asset.removeprefix("/web/")).is_file(), asset
    for source in WEB_DIR.iterdir():
        text = source.read_text()
        assert not re.search(r"https?://", text), f"{source.name} names another host"
        for module in re.findall(r'from "\./([^"]+)"', text):
            assert (WEB_DIR / module).is_file(), f"{source.name} imports a missing {module}"


async def test_a_streamed_generation_names_its_job(gateway: GatewayUnderTest) -> None:
    async with gateway.http.stream(
        "POST",
        "/v1/images/generations",
        json={"prompt": "a red circle", "seed": 1, "stream": True},
        headers={"authorization": f"Bearer {gateway.api_key}"},
    ) as response:
        assert response.status_code == 200
        job_id = response.headers["x-darkroom-job-id"]
        body = (await response.aread()).decode()
    assert job_id.startswith("job_")
    assert f'"image_id":"img_{job_id}_0"' in body.replace(" ", "")
