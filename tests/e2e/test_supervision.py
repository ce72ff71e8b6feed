"""End to end: supervisord brings back every service killed with SIGKILL, and no job is lost.

Each service in turn is killed (`kill -9` of its process group) while a job is in flight.
The test never restarts anything itself: supervisord (infra/supervisor.py) starts a new
process, the service is healthy again, and the job completes with its images, once.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import httpx
import pytest

from infra.stack import SERVICES, Stack
from libs.jobs import TERMINAL
from tests.e2e.jobs import JOB_TIMEOUT_S, api, create_async, exactly_once, watching

JOB = {"prompt": "a red circle on a gray background", "n": 2, "size": "256x256", "quality": "high"}


async def completed(http: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    """The job once it ended; the gateway may be restarting in between (connection refused)."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            response = await http.get(f"/v1/images/jobs/{job_id}")
        except httpx.TransportError:
            response = None
        if response is not None and response.status_code == 200:
            job: dict[str, Any] = response.json()
            if job["status"] in TERMINAL:
                return job
        await asyncio.sleep(0.2)
    pytest.fail(f"job {job_id} did not end within {JOB_TIMEOUT_S}s")


async def test_every_service_killed_mid_job_is_restarted_by_the_supervisor_and_nothing_is_lost(
    running: Stack, api_key: str
) -> None:
    restarted_in: dict[str, float] = {}
    async with api(running, api_key) as http, watching(running) as watch:
        for i, service in enumerate(SERVICES):
            proc = running.proc(service)
            pid = proc.pid()
            assert pid is not None, f"{service} is not running"
            job = await create_async(http, JOB | {"seed": 900 + i})
            await watch.until(
                f"the job of {service}'s round in flight", lambda j=job["id"]: bool(watch.of(j, "images.job_accepted"))
            )
            killed = time.monotonic()
            proc.stop(timeout_s=5, sig=signal.SIGKILL)

            def back(p: Any = proc, old: int = pid, s: str = service) -> bool:
                new = p.pid()
                return new is not None and new != old and running.healthy(s)

            while not await asyncio.to_thread(back):
                assert time.monotonic() - killed < 60, f"{service} was not restarted: {proc.state()}"
                await asyncio.sleep(0.1)
            restarted_in[service] = time.monotonic() - killed

            done = await completed(http, job["id"])
            assert done["status"] == "completed", (service, done)
            exactly_once(running, watch, job["id"], 2)
    print("\nFIGURES healthy again after kill -9: " + ", ".join(f"{s} {t:.1f}s" for s, t in restarted_in.items()))
