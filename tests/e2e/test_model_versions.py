"""End to end: a model version added, rolled out, validated, promoted and rolled back with
the `darkroom models` CLI, on the real stack.

The new versions are copies of the built-in weights in a folder of the test's own, so they
render like `base` but are versions of their own, recorded on every job and image. The
test measures the time from `darkroom models rollback` to the gateway routing to the
previous version, and shows the automatic rollback of a version whose weights were
corrupted after they were added (a checksum mismatch): the decoder that meets it reports
the failure, renders the job with the version before, and the gateway stops routing to it.
The test leaves the model on its base version, whatever happens.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from infra.stack import Stack
from libs.model.interface import DEFAULT_WEIGHTS_DIR
from libs.settings import DEV_OPERATOR_TOKEN

MODEL = "darkroom-mini"
OPERATOR = {"authorization": f"Bearer {DEV_OPERATOR_TOKEN}"}
REPO = Path(__file__).resolve().parents[2]


def darkroom(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """The operator CLI against the test stack's broker."""
    command = [sys.executable, "-m", "libs.cli", "models", *args, "--bootstrap", stack.profile.kafka_bootstrap]
    env = os.environ | {"PYTHONPATH": str(REPO)}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)


def routing(stack: Stack) -> dict[str, Any]:
    """How the gateway routes the model now (the operator API)."""
    response = httpx.get(f"{stack.profile.gateway_url}/v1/admin/models", headers=OPERATOR, timeout=10)
    response.raise_for_status()
    return next(m for m in response.json()["data"] if m["model"] == MODEL)


def wait_routing(stack: Stack, check: Callable[[dict[str, Any]], bool], what: str) -> float:
    """Seconds until the gateway's routing satisfies `check` (polled every 20 ms)."""
    began = time.monotonic()
    while not check(routing(stack)):
        if time.monotonic() - began > 30:
            raise AssertionError(f"timed out after 30 s waiting until {what}: {routing(stack)}")
        time.sleep(0.02)
    return time.monotonic() - began


def newest_image(stack: Stack, api_key: str) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {api_key}"}
    listed = httpx.get(f"{stack.profile.gateway_url}/v1/images", params={"limit": 1}, headers=headers, timeout=30)
    listed.raise_for_status()
    [item] = listed.json()["data"]
    one = httpx.get(f"{stack.profile.gateway_url}/v1/images/{item['id']}", headers=headers, timeout=30)
    one.raise_for_status()
    return dict(one.json())


def generate(stack: Stack, api_key: str) -> dict[str, Any]:
    client = openai.OpenAI(base_url=f"{stack.profile.gateway_url}/v1", api_key=api_key, timeout=120, max_retries=0)
    # A fixed seed the content check clears (renders are deterministic; a server-chosen seed
    # can draw something the built-in model's check takes for a blocked class).
    client.images.generate(prompt="a red circle", quality="low", size="256x256", extra_body={"seed": 1})
    return newest_image(stack, api_key)


def back_to_base(stack: Stack) -> None:
    for _ in range(3):
        if routing(stack)["stable"] == "base" and routing(stack)["candidate"] is None:
            return
        darkroom(stack, "rollback", MODEL, "--reason", "e2e clean-up")
        time.sleep(1)


@pytest.fixture
def weights(tmp_path: Path) -> Callable[[str], Path]:
    def copy(name: str) -> Path:
        folder = tmp_path / name
        shutil.copytree(DEFAULT_WEIGHTS_DIR, folder, ignore=shutil.ignore_patterns("*.tsv", "*plan*.json"))
        return folder

    return copy


def test_a_version_rolls_out_is_recorded_on_its_images_and_rolls_back(
    running: Stack, api_key: str, weights: Callable[[str], Path]
) -> None:
    version = f"v{uuid.uuid4().hex[:8]}"
    back_to_base(running)
    try:
        added = darkroom(running, "add", MODEL, version, str(weights(version)))
        assert added.returncode == 0, added.stderr
        rolled = darkroom(running, "rollout", MODEL, version, "--percent", "100")
        assert rolled.returncode == 0, rolled.stderr
        wait_routing(running, lambda r: r["candidate"] == version, "the gateway routes to the new version")

        image = generate(running, api_key)
        assert (image["model"], image["model_version"]) == (MODEL, version)

        # Not validated yet: it cannot be promoted.
        refused = darkroom(running, "promote", MODEL)
        assert refused.returncode == 1 and "no safety validation" in refused.stderr
        validated = darkroom(
            running, "validate", MODEL, version, "--n", "4", "--passes", "4", "--min-recall", "0", "--device", "cpu"
        )
        assert validated.returncode == 0, validated.stderr
        assert '"passed": true' in validated.stdout
        promoted = darkroom(running, "promote", MODEL)
        assert promoted.returncode == 0, promoted.stderr
        wait_routing(running, lambda r: r["stable"] == version and r["candidate"] is None, "promoted")
        listed = darkroom(running, "list", MODEL)
        assert f"stable: {version}" in listed.stdout and "recall:" in listed.stdout

        # The rollback, timed from the command to the gateway routing to the previous version.
        began = time.monotonic()
        rollback = darkroom(running, "rollback", MODEL, "--reason", "e2e")
        published = time.monotonic()
        assert rollback.returncode == 0, rollback.stderr
        wait_routing(running, lambda r: r["stable"] == "base", "the gateway routes to base again")
        routed = time.monotonic()
        print(
            f"rollback: {routed - began:.2f} s from `darkroom models rollback` to the gateway routing to base "
            f"({routed - published:.3f} s after the command returned)"
        )
        assert generate(running, api_key)["model_version"] == "base"
    finally:
        back_to_base(running)


def test_a_version_whose_weights_were_corrupted_is_rolled_back_and_its_job_rendered_by_the_one_before(
    running: Stack, api_key: str, weights: Callable[[str], Path]
) -> None:
    version = f"v{uuid.uuid4().hex[:8]}"
    back_to_base(running)
    try:
        folder = weights(version)
        assert darkroom(running, "add", MODEL, version, str(folder)).returncode == 0
        # The deployment corrupts the weights after they were checked in.
        with (folder / "generator.pt").open("r+b") as handle:
            handle.seek(1024)
            handle.write(b"\xff" * 64)
        assert darkroom(running, "rollout", MODEL, version, "--percent", "100").returncode == 0
        wait_routing(running, lambda r: r["candidate"] == version, "the gateway routes to the new version")

        image = generate(running, api_key)  # completes: nothing lost
        assert image["model_version"] == "base"
        wait_routing(running, lambda r: r["candidate"] is None, "the gateway rolled the version back")
        listed = darkroom(running, "list", MODEL)
        assert "checksum mismatch" in listed.stdout and "stage: load" in listed.stdout
        refused = darkroom(running, "rollout", MODEL, version, "--percent", "10")
        assert refused.returncode == 1 and "rolled back" in refused.stderr
    finally:
        back_to_base(running)
