"""End to end: the metering service (faust) folds completed jobs into per-account usage.

Through the official SDK, a new account makes two jobs (three images), then a burst of six; `GET /v1/usage`
then shows that day's jobs, images and output tokens, equal to what the jobs completed;
another account sees none of it, and `darkroom usage --account` shows the same to operators.
A gateway started after an account's jobs, reading too little of the command log to see
them, holds the account to its daily quota from the metered usage alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from infra.stack import Stack
from libs.cli.accounts import create_account
from libs.cli.policy import set_policy
from libs.settings import DEV_SIGNING_KEY

REPO = Path(__file__).resolve().parents[2]


def _account(stack: Stack, tier: str = "pro") -> dict[str, Any]:
    email = f"usage-{uuid.uuid4().hex[:10]}@example.com"
    return dict(asyncio.run(create_account(stack.profile.kafka_bootstrap, email, tier, DEV_SIGNING_KEY)))


def _usage(stack: Stack, key: str) -> dict[str, Any]:
    response = httpx.get(
        f"{stack.profile.gateway_url}/v1/usage", headers={"authorization": f"Bearer {key}"}, timeout=30
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_metered_usage_equals_the_completed_jobs_and_is_the_owners_alone(running: Stack) -> None:
    owner, other = _account(running), _account(running)
    client = openai.OpenAI(base_url=f"{running.profile.gateway_url}/v1", api_key=owner["api_key"], max_retries=0)
    results = [
        client.images.generate(prompt="a red circle", quality="low", n=1, extra_body={"seed": 1}),
        client.images.generate(prompt="a blue square", quality="low", n=2, extra_body={"seed": 2}),
    ]
    # Seeds are fixed (renders are deterministic): with server-chosen seeds one burst image was once
    # taken for a skull by the content check, and a blocked job is not metered.
    # Then a burst: completions that reach metering together are counted in one batch.
    with ThreadPoolExecutor(max_workers=6) as pool:
        burst = pool.map(
            lambda i: client.images.generate(
                prompt=f"a green star number {i}", quality="low", n=1, extra_body={"seed": 3}
            ),
            range(6),
        )
        results += list(burst)
    images = sum(len(r.data or []) for r in results)
    tokens = sum(r.usage.output_tokens for r in results if r.usage is not None)
    assert images == 9

    deadline = time.monotonic() + 60
    while True:
        body = _usage(running, owner["api_key"])
        if body["data"] and body["data"][-1]["jobs"] == 8:
            break
        assert time.monotonic() < deadline, f"usage never reached 8 jobs: {body}"
        time.sleep(0.5)
    [day] = body["data"]
    assert (day["jobs"], day["images"], day["output_tokens"]) == (8, images, tokens)
    assert day["by_model"] == {"darkroom-mini": {"jobs": 8, "images": 9, "output_tokens": tokens}}
    assert body["account_id"] == owner["id"]
    assert _usage(running, other["api_key"])["data"] == []  # owner-only

    env = os.environ | {"PYTHONPATH": str(REPO)}
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "libs.cli",
            "usage",
            "--account",
            owner["id"],
            "--bootstrap",
            running.profile.kafka_bootstrap,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    [cli_day] = yaml.safe_load(shown.stdout)["days"]
    assert (cli_day["jobs"], cli_day["images"], cli_day["output_tokens"]) == (8, 9, tokens)


def test_a_gateway_started_late_holds_an_account_to_its_metered_quota(running: Stack) -> None:
    bootstrap = running.profile.kafka_bootstrap
    before = set_policy(bootstrap, changed_by="e2e-usage", tier="plus", changes={"images_per_day": 3})
    late = Stack(
        dataclasses.replace(
            running.profile, process_env=(*running.profile.process_env, ("gateway", "DARKROOM_JOB_HOLD_S", "1"))
        ),
        say=print,
    )
    try:
        account = _account(running, "plus")
        client = openai.OpenAI(base_url=f"{running.profile.gateway_url}/v1", api_key=account["api_key"], max_retries=0)
        client.images.generate(prompt="two circles", quality="low", n=2, extra_body={"seed": 2})  # either policy
        deadline = time.monotonic() + 60
        while not (days := _usage(running, account["api_key"])["data"]) or days[-1]["images"] != 2:
            assert time.monotonic() < deadline, f"metering never counted the 2 images: {days}"
            time.sleep(0.5)
        # A gateway that reads one second of commands: the job above is metering's alone to know.
        running.proc("gateway").stop()
        time.sleep(1.5)
        late.up_services()
        with pytest.raises(openai.RateLimitError) as error:
            client.images.generate(prompt="two more", quality="low", n=2)
        assert error.value.code == "insufficient_quota" and "used 2 of the 3" in error.value.message
        last = client.images.generate(prompt="the last one", quality="low", n=1, extra_body={"seed": 1})
        assert len(last.data or []) == 1
        with pytest.raises(openai.RateLimitError):
            client.images.generate(prompt="none left", quality="low", n=1)
    finally:
        set_policy(bootstrap, changed_by="e2e-usage", tier="plus", changes=before.model_dump()["previous"])
        running.proc("gateway").stop()
        running.up_services()
