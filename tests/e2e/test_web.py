"""The web app in a real browser (Debian's chromium through Playwright) against the stack.

Tests find controls by role and accessible name, as a screen reader would, never by CSS
class. Every render names a prompt the built-in model draws quickly, with a pinned seed
(`PAGE_SEED`); the screenshots of each step land in reports/ui/.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from infra.stack import Stack
from libs.settings import DEV_OPERATOR_TOKEN
from tests.e2e.browser import DESKTOP, PHONE, Shots, chromium, tab_to
from tests.e2e.jobs import SLOW

RENDER_TIMEOUT_MS = 120_000
# Records what the page shows over time: each preview's pixels, the results, the status lines.
RECORDER = """
() => {
  window.__seen = [];
  const note = () => {
    const status = document.getElementById("job-status").textContent;
    const last = window.__seen.filter(([kind]) => kind === "status").pop();
    if (!last || last[1] !== status) window.__seen.push(["status", status]);
    const seen = (kind, value) => window.__seen.some(([k, v]) => k === kind && (value === undefined || v === value));
    for (const img of document.querySelectorAll("img")) {
      const preview = img.alt.startsWith("Preview") && img.src;
      if (preview && !seen("preview", img.src)) window.__seen.push(["preview", img.src]);
      if (img.alt.startsWith("Result") && !seen("result")) window.__seen.push(["result", img.src]);
    }
  };
  const all = { subtree: true, childList: true, attributes: true, characterData: true };
  new MutationObserver(note).observe(document.body, all);
}
"""


def _email() -> str:
    return f"web-{uuid.uuid4().hex[:10]}@example.com"


@pytest.fixture
def browser(running: Stack) -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser: Browser, running: Stack) -> Iterator[Page]:
    context = browser.new_context(viewport=DESKTOP, base_url=running.profile.gateway_url)
    page = context.new_page()
    page.set_default_timeout(30_000)
    _pin_seed(page)
    yield page
    context.close()


PAGE_SEED = 5
"""The seed the page's generations and tweaks are given. The page sends none (each render is
a new one), and the built-in generator draws a stray skull in about 1% of harmless renders
(docs/model-card.md), which the content check then rightly blocks. The seed and the prompt
together fix a render, so with this seed every prompt of these tests (none has a random
part) renders the same, known-clean image on every run."""

_SEEDED_RENDERS = """
(() => {
  const send = window.fetch;
  window.fetch = (input, init) => {
    const url = typeof input === "string" ? input : input.url;
    const body = init && init.body;
    if (url.endsWith("/v1/images/generations") && typeof body === "string") {
      init.body = JSON.stringify({ seed: %(seed)d, ...JSON.parse(body) });
    } else if (url.endsWith("/v1/images/edits") && body instanceof FormData && !body.has("seed")) {
      body.append("seed", "%(seed)d");
    }
    return send(input, init);
  };
})();
"""
"""Wraps the page's fetch so that its generations (JSON) and tweaks (a multipart form) carry
`PAGE_SEED` unless they name a seed of their own."""


def _pin_seed(page: Page) -> None:
    page.add_init_script(_SEEDED_RENDERS % {"seed": PAGE_SEED})


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Shots:
    return Shots(request.node.name)


@pytest.fixture
def operator(running: Stack) -> Iterator[httpx.Client]:
    """The operator API, for setting up and checking what a test does in the page."""
    with httpx.Client(
        base_url=running.profile.gateway_url, headers={"authorization": f"Bearer {DEV_OPERATOR_TOKEN}"}, timeout=60
    ) as client:
        yield client


@pytest.fixture
def free_policy(operator: httpx.Client) -> Iterator[dict[str, Any]]:
    """The free tier's policy as it was; restored after the test, whatever it changed."""
    before: dict[str, Any] = operator.get("/v1/admin/policy").json()["tiers"]["free"]
    yield before
    restored = operator.patch("/v1/admin/policy/tiers/free", json=before)
    assert restored.status_code == 200, restored.text


def _sign_in(page: Page, key: str) -> None:
    page.goto("/")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Use this key").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def _generate(page: Page, prompt: str, quality: str = "low") -> None:
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_label("Quality").select_option(quality)
    page.get_by_role("button", name="Generate").click()


def test_sign_up_on_a_phone_keep_the_key_and_sign_out(browser: Browser, running: Stack, shots: Shots) -> None:
    context = browser.new_context(viewport=PHONE, base_url=running.profile.gateway_url)
    page = context.new_page()
    page.goto("/")
    shots.take(page, "signed-out")
    page.get_by_label("Email").fill(_email())
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_text(re.compile(r"acct_\w+ · free tier"))).to_be_visible(timeout=40_000)
    expect(page.get_by_label("Prompt", exact=True)).to_be_visible()
    shots.take(page, "signed-up")

    # The key stays in the browser: a reload is still signed in.
    page.reload()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    # Sign out once the page's start-up requests (the key's check, the gallery) have answered:
    # in one CI run a click made meanwhile left the page signed in.
    page.wait_for_load_state("networkidle")
    # The page fits a phone: nothing wider than the screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("button", name="Sign up")).to_be_visible()
    page.reload()
    expect(page.get_by_role("button", name="Sign up")).to_be_visible()
    # A bad key is refused in plain words.
    page.get_by_label("API key").fill("sk-dr-not-a-key")
    page.get_by_role("button", name="Use this key").click()
    expect(page.get_by_role("alert").first).to_contain_text("That key was refused")
    shots.take(page, "bad-key")
    context.close()


def test_a_render_develops_through_previews_to_the_final_image(page: Page, api_key: str, shots: Shots) -> None:
    _sign_in(page, api_key)
    page.evaluate(RECORDER)
    prompt = "a red circle on green grass"
    _generate(page, prompt, quality="high")
    expect(page.get_by_role("img", name="Preview of the image being rendered")).to_be_visible(timeout=RENDER_TIMEOUT_MS)
    shots.take(page, "preview")
    expect(page.get_by_role("img", name=f"Result 1: {prompt}")).to_be_visible(timeout=RENDER_TIMEOUT_MS)
    shots.take(page, "final")

    seen: list[list[str]] = page.evaluate("window.__seen")
    kinds = [kind for kind, _ in seen]
    previews = [value for kind, value in seen[: kinds.index("result")] if kind == "preview"]
    assert len(set(previews)) >= 2, f"fewer than two different previews before the final image: {kinds}"
    statuses = [value for kind, value in seen if kind == "status"]
    assert any(re.fullmatch(r"Rendering: pass \d+ of 12\.", s) for s in statuses), statuses
    expect(page.get_by_role("status")).to_have_text("Done: 1 image.")

    # The gallery lists it, newest first, downloadable.
    gallery = page.get_by_role("list", name="Your images")
    expect(gallery.get_by_role("article").first).to_have_accessible_name(prompt)
    with page.expect_download() as download:
        gallery.get_by_role("link", name=f"Download: {prompt}").first.click()
    assert download.value.suggested_filename.endswith(".png")
    shots.take(page, "gallery")


def test_a_queued_job_is_cancelled(page: Page, running: Stack, api_key: str, shots: Shots) -> None:
    with httpx.Client(
        base_url=running.profile.gateway_url, headers={"authorization": f"Bearer {api_key}"}, timeout=60
    ) as http:
        # Two jobs of four images fill the consumer decoder's batch of eight (the CPU default).
        fillers = []
        for seed in (31, 32):
            body = SLOW | {"seed": seed}
            created = http.post("/v1/images/generations", json=body, headers={"prefer": "respond-async"})
            assert created.status_code == 202, created.text
            fillers.append(created.json()["id"])
        deadline = time.monotonic() + 60
        while any(http.get(f"/v1/images/jobs/{j}").json()["status"] != "rendering" for j in fillers):
            assert time.monotonic() < deadline, "the filler jobs never started"
            time.sleep(0.3)
        try:
            _sign_in(page, api_key)
            _generate(page, "a yellow star", quality="high")
            expect(page.get_by_role("status")).to_contain_text("Queued", timeout=30_000)
            shots.take(page, "queued")
            # The page keeps following the job after a reload, through the async job API.
            page.reload()
            expect(page.get_by_role("status")).to_contain_text("Queued", timeout=30_000)
            expect(page.get_by_role("status")).to_contain_text("waiting for a decoder")
            shots.take(page, "reloaded")
            page.get_by_role("button", name="Cancel").click()
            expect(page.get_by_role("status")).to_have_text("Cancelled.", timeout=30_000)
            expect(page.get_by_role("alert").first).to_contain_text("cancelled")
            expect(page.get_by_role("img", name=re.compile("^Result"))).to_have_count(0)
            shots.take(page, "cancelled")
        finally:
            for job_id in fillers:
                http.post(f"/v1/images/jobs/{job_id}/cancel")


def test_tweak_under_a_painted_mask_and_see_the_lineage(page: Page, api_key: str, shots: Shots) -> None:
    _sign_in(page, api_key)
    parent = "a blue square on grass"  # a fixed prompt: with PAGE_SEED, a known-clean render
    _generate(page, parent)
    expect(page.get_by_role("img", name=f"Result 1: {parent}")).to_be_visible(timeout=RENDER_TIMEOUT_MS)
    gallery = page.get_by_role("list", name="Your images")
    gallery.get_by_role("button", name=f"Tweak: {parent}").click()

    painter = page.get_by_role("application", name=re.compile("Mask painter"))
    expect(painter).to_be_visible()
    box = painter.bounding_box()
    assert box is not None
    page.get_by_label("Brush size").fill("64")
    page.mouse.move(box["x"] + box["width"] * 0.1, box["y"] + box["height"] * 0.2)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(box["x"] + box["width"] * 0.45, box["y"] + box["height"] * (0.2 + step * 0.06))
    page.mouse.up()
    child = "a red square on grass"
    page.get_by_label("New prompt").fill(child)
    shots.take(page, "painted")
    page.get_by_role("button", name="Tweak", exact=True).click()

    expect(page.get_by_role("img", name=f"Result 1: {child}")).to_be_visible(timeout=RENDER_TIMEOUT_MS)
    expect(page.get_by_text(f"Tweaked from: {parent}")).to_be_visible()
    child_card = gallery.get_by_role("article", name=child)
    expect(child_card.get_by_role("link", name=parent)).to_be_visible()
    parent_card = gallery.get_by_role("article", name=parent)
    expect(parent_card).to_contain_text("Tweaks (1)")
    expect(parent_card.get_by_role("link", name=child)).to_be_visible()
    shots.take(page, "lineage")


def _countdown_s(text: str) -> int:
    """The seconds in "Trying again in 1 min 5 s." (the page writes minutes from 60 s on)."""
    found = re.search(r"in (?:(\d+) min)? ?(?:(\d+) s)?\.", text)
    assert found is not None and any(found.groups()), text
    minutes, secs = (int(g) if g else 0 for g in found.groups())
    return minutes * 60 + secs


def test_a_429_shows_its_countdown(
    page: Page, operator: httpx.Client, free_policy: dict[str, Any], shots: Shots
) -> None:
    changed = operator.patch("/v1/admin/policy/tiers/free", json={"requests_per_minute": 1})
    assert changed.status_code == 200, changed.text
    page.goto("/")
    page.get_by_label("Email").fill(_email())
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible(timeout=40_000)
    _generate(page, "a green triangle")
    expect(page.get_by_role("img", name="Result 1: a green triangle")).to_be_visible(timeout=RENDER_TIMEOUT_MS)

    _generate(page, "a green triangle again")
    alert = page.get_by_role("alert").first
    expect(alert).to_contain_text("Too many requests for your tier. Trying again in")
    first = _countdown_s(alert.inner_text())
    shots.take(page, "countdown")
    time.sleep(2.5)
    later = _countdown_s(alert.inner_text())
    assert 30 <= first <= 60 and later < first, (first, later)


def test_a_blocked_prompt_shows_the_block(page: Page, api_key: str, shots: Shots) -> None:
    _sign_in(page, api_key)
    _generate(page, "a skull in the night sky")
    alert = page.get_by_role("alert").first
    expect(alert).to_contain_text("Blocked by the safety system", timeout=RENDER_TIMEOUT_MS)
    expect(alert).to_contain_text("the prompt matched the category")
    expect(alert).to_contain_text("No image was made.")
    expect(page.get_by_role("img", name=re.compile("^(Result|Preview)"))).to_have_count(0)
    shots.take(page, "blocked")


def test_the_admin_console_changes_the_free_tier_limit_and_the_gateway_enforces_it(
    page: Page, running: Stack, free_policy: dict[str, Any], shots: Shots
) -> None:
    page.goto("/admin")
    page.get_by_label("Operator token").fill("not-the-token")
    page.get_by_role("button", name="Open the console").click()
    expect(page.get_by_role("alert")).to_contain_text("That token was refused")
    page.get_by_label("Operator token").fill(DEV_OPERATOR_TOKEN)
    page.get_by_role("button", name="Open the console").click()
    lanes = page.get_by_role("table", name="Lanes")
    expect(lanes.get_by_role("rowheader", name="free", exact=True)).to_be_visible()
    pools = page.get_by_role("table", name="Decoder pools")
    expect(pools.get_by_role("rowheader", name="darkroom-mini/consumer", exact=True)).to_be_visible()
    services = page.get_by_role("table", name="Services")
    expect(services.get_by_role("rowheader", name="decoder", exact=True)).to_be_visible()
    shots.take(page, "console")

    rpm = page.get_by_role("spinbutton", name="free requests per minute", exact=True)
    expect(rpm).to_have_value(str(free_policy["requests_per_minute"]))
    rpm.fill("2")
    page.get_by_role("button", name="Save free tier").click()
    expect(page.get_by_role("alert")).to_contain_text("Saved the free tier: requests_per_minute = 2")
    shots.take(page, "saved")

    # The gateway enforces it: a new free account gets two generations in the minute, not three.
    with httpx.Client(base_url=running.profile.gateway_url, timeout=120) as http:
        signed_up = http.post("/v1/accounts", json={"email": _email()})
        assert signed_up.status_code == 201, signed_up.text
        auth = {"authorization": f"Bearer {signed_up.json()['api_key']}"}
        for _ in range(2):
            # A fixed seed the content check clears: both must complete.
            body = {"prompt": "a red circle", "quality": "low", "seed": 1}
            ok = http.post("/v1/images/generations", json=body, headers=auth)
            assert ok.status_code == 200, ok.text
        refused = http.post("/v1/images/generations", json={"prompt": "a dot 3", "quality": "low"}, headers=auth)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert refused.headers["x-ratelimit-limit-requests"] == "2"


def test_generate_with_the_keyboard_only(page: Page, api_key: str, shots: Shots) -> None:
    page.goto("/")
    tab_to(page, page.get_by_label("API key"))
    page.keyboard.type(api_key)
    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    tab_to(page, page.get_by_label("Prompt", exact=True))
    page.keyboard.type("a white moon")
    tab_to(page, page.get_by_role("button", name="Generate"))
    shots.take(page, "focused")
    page.keyboard.press("Enter")
    expect(page.get_by_role("img", name="Result 1: a white moon")).to_be_visible(timeout=RENDER_TIMEOUT_MS)
    shots.take(page, "done")
