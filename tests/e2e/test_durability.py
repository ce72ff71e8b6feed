"""End to end: nothing lost, nothing duplicated, when decoders die and clients cancel.

These tests kill and restart real service processes of the e2e stack. A watcher reads
every job topic from the moment it starts, so each test can check the whole event trail
of its job: which attempts ran, from which pass, what was stored, and how often.

The renders here are slow on purpose (4 images of 512x512, 12 passes: about half a
second per pass on a CPU), so a decoder can be killed between two passes.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter

from infra.stack import Stack
from libs.cli.accounts import create_account
from libs.settings import DEV_SIGNING_KEY
from tests.e2e.jobs import SLOW, api, create_async, exactly_once, wait_done, watching


async def test_a_decoder_killed_mid_render_resumes_from_its_last_checkpoint(running: Stack, api_key: str) -> None:
    seed = 11
    async with api(running, api_key) as http, watching(running) as watch:
        # The uninterrupted render, for comparison.
        reference = await create_async(http, SLOW | {"seed": seed})
        reference = await wait_done(http, reference["id"])
        assert reference["status"] == "completed", reference

        job = await create_async(http, SLOW | {"seed": seed})
        job_id = job["id"]

        def passes() -> list[int]:
            return [p["pass_index"] for p in watch.payloads(job_id, "render.render_progressed")]

        await watch.until("pass 3 of the render", lambda: max(passes(), default=0) >= 3)
        running.proc("decoder").stop(timeout_s=0, sig=signal.SIGKILL)
        killed_at = time.monotonic()
        last_before_kill = max(passes())
        assert last_before_kill < 12, "the render ended before the decoder was killed"
        await asyncio.to_thread(running.up_services)

        done = await wait_done(http, job_id)
        assert done["status"] == "completed", done

        # The job was dispatched again once, and resumed from the last pass reported.
        starts = watch.payloads(job_id, "render.render_started")
        assert [(s["attempt"], s["pass_index"]) for s in starts] == [(0, 0), (1, last_before_kill)]
        [requeued] = watch.payloads(job_id, "images.job_requeued")
        assert (requeued["attempt"], requeued["resume_pass"]) == (1, last_before_kill)
        # Every pass the schedule reports, once per attempt that ran it: none skipped.
        assert sorted(set(passes())) == watch.reported_passes(job_id)
        assert all(p > last_before_kill for p in passes()[passes().index(last_before_kill) + 1 :])

        # The same images as the uninterrupted render, each stored exactly once.
        assert [d["b64_json"] for d in done["data"]] == [d["b64_json"] for d in reference["data"]]
        exactly_once(running, watch, job_id, 4)

        resumed_at = watch.first_time(job_id, "render.render_started", attempt=1)
        checkpoints = [
            size for _, _, size, e in watch.seen if e.aggregate_id == job_id and e.type == "render.render_progressed"
        ]
        median = sorted(checkpoints)[len(checkpoints) // 2]
        per_topic = Counter(topic for _, topic, _, e in watch.seen if e.aggregate_id == job_id)
        print(
            f"\nFIGURES decoder killed after pass {last_before_kill}/12: resumed {resumed_at - killed_at:.1f}s later"
            f"\nFIGURES events of the resumed job: {sum(per_topic.values())} ({dict(per_topic)})"
            f"\nFIGURES events of the uninterrupted job: {len(watch.of(reference['id']))}"
            f"\nFIGURES checkpoint message (4 images, no preview): median {median} bytes;"
            " token grid 512 bytes packed, 684 in base64, per image"
        )


async def test_a_decoder_killed_with_a_full_batch_loses_nothing_and_renders_nothing_twice(
    running: Stack, api_key: str
) -> None:
    # Four jobs of two images fill the decoder's batch of eight (the CPU default).
    async with api(running, api_key) as http, watching(running) as watch:
        ids = [(await create_async(http, SLOW | {"n": 2, "seed": 300 + i}))["id"] for i in range(4)]

        def passes(job_id: str) -> list[int]:
            return [p["pass_index"] for p in watch.payloads(job_id, "render.render_progressed")]

        def all_rendering_together() -> bool:
            return all(passes(job_id) for job_id in ids)

        await watch.until("every job in the batch", all_rendering_together)
        running.proc("decoder").stop(timeout_s=0, sig=signal.SIGKILL)
        last_before_kill = {job_id: max(passes(job_id)) for job_id in ids}
        assert all(last < 12 for last in last_before_kill.values()), "a render ended before the decoder was killed"
        await asyncio.to_thread(running.up_services)

        for job_id in ids:
            done = await wait_done(http, job_id)
            assert done["status"] == "completed", done
            # Every job resumed from its own last reported pass, and completed exactly once.
            starts = [(s["attempt"], s["pass_index"]) for s in watch.payloads(job_id, "render.render_started")]
            assert starts[0] == (0, 0) and starts[-1] == (1, last_before_kill[job_id]), starts
            assert sorted(set(passes(job_id))) == watch.reported_passes(job_id)
            exactly_once(running, watch, job_id, 2)


async def test_a_cancelled_render_stops_at_the_next_pass_and_a_queued_one_never_starts(
    running: Stack, api_key: str
) -> None:
    async with api(running, api_key) as http, watching(running) as watch:
        # Two jobs of four images fill the decoder's batch of eight (the CPU default): a
        # third waits in its lane.
        rendering = await create_async(http, SLOW | {"seed": 21})
        await watch.until("the first job rendering", lambda: watch.of(rendering["id"], "render.render_progressed"))
        filler = await create_async(http, SLOW | {"seed": 23})
        await watch.until("a full batch", lambda: watch.of(filler["id"], "render.render_progressed"))
        queued = await create_async(http, SLOW | {"seed": 22})
        await watch.until("the third job on its lane", lambda: watch.of(queued["id"], "images.job_queued"))
        assert watch.of(queued["id"], "render.render_started") == []

        cancelled = await http.delete(f"/v1/images/jobs/{queued['id']}")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        stopped = await http.post(f"/v1/images/jobs/{rendering['id']}/cancel")
        assert stopped.status_code == 200, stopped.text
        body = stopped.json()
        assert body["status"] == "cancelled" and body["error"]["code"] == "job_cancelled"

        for job_id in (rendering["id"], queued["id"]):
            await watch.until(f"{job_id} stopped", lambda j=job_id: watch.of(j, "render.render_stopped"))
        [stop] = watch.payloads(rendering["id"], "render.render_stopped")
        assert stop["reason"] == "aborted" and 0 < stop["pass_index"] < 12
        [never] = watch.payloads(queued["id"], "render.render_stopped")
        assert (never["reason"], never["pass_index"]) == ("aborted", 0)
        assert watch.of(queued["id"], "render.render_started") == []
        assert watch.of(queued["id"], "render.render_progressed") == []
        for job_id in (rendering["id"], queued["id"]):
            assert watch.of(job_id, "storage.store_image") == []
            assert (await http.get(f"/v1/images/jobs/{job_id}")).json()["status"] == "cancelled"
        # Its batch companion renders on to the end.
        assert (await wait_done(http, filler["id"]))["status"] == "completed"

        # Cancelling again answers the cancelled job; an unknown job is a 404.
        again = await http.post(f"/v1/images/jobs/{rendering['id']}/cancel")
        assert again.status_code == 200 and again.json()["status"] == "cancelled"
        unknown = await http.post("/v1/images/jobs/job_nope/cancel")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


async def test_an_idempotency_key_returns_the_same_job_for_the_same_account(running: Stack, api_key: str) -> None:
    key = uuid.uuid4().hex
    body = {"prompt": "a purple heart", "quality": "low", "seed": 5}
    other = await create_account(running.profile.kafka_bootstrap, f"idem-{key[:8]}@example.com", "pro", DEV_SIGNING_KEY)
    async with (
        api(running, api_key) as http,
        api(running, str(other["api_key"])) as other_http,
        watching(running) as watch,
    ):
        first = await create_async(http, body, **{"idempotency-key": key})
        second = await create_async(http, body, **{"idempotency-key": key})
        assert second["id"] == first["id"]
        elsewhere = await create_async(other_http, body, **{"idempotency-key": key})
        assert elsewhere["id"] != first["id"]
        # A synchronous retry with the key answers with the same job's images.
        sync = await http.post("/v1/images/generations", json=body, headers={"idempotency-key": key})
        assert sync.status_code == 200, sync.text
        # The key names that request alone: another body with it is refused.
        changed = await http.post(
            "/v1/images/generations", json=body | {"prompt": "a blue heart"}, headers={"idempotency-key": key}
        )
        assert changed.status_code == 422 and changed.json()["error"]["code"] == "idempotency_key_reused"
        done = await wait_done(http, first["id"])
        assert sync.json()["data"][0]["b64_json"] == done["data"][0]["b64_json"]
        # One command and one job for the three requests with the key.
        assert len(watch.of(first["id"], "images.generate_image")) == 1
        assert len(watch.of(first["id"], "images.job_accepted")) == 1


async def test_a_client_that_leaves_cancels_only_when_it_asked_to(running: Stack, api_key: str) -> None:
    marker = uuid.uuid4().hex[:8]
    async with api(running, api_key) as http, watching(running) as watch:

        def job_of(prompt: str) -> str | None:
            for e in watch.of_type("images.job_accepted"):
                if e.payload["spec"]["prompt"] == prompt:
                    return e.aggregate_id
            return None

        async def leave_mid_render(prompt: str, seed: int, **headers: str) -> str:
            body = SLOW | {"prompt": prompt, "seed": seed}
            call = asyncio.create_task(http.post("/v1/images/generations", json=body, headers=headers))
            await watch.until("the job rendering", lambda: job_of(prompt) is not None)
            job_id = str(job_of(prompt))
            await watch.until("a pass", lambda: watch.of(job_id, "render.render_progressed"))
            call.cancel()  # the client goes away: its connection closes
            await asyncio.gather(call, return_exceptions=True)
            return job_id

        stays = await leave_mid_render(f"a blue square on grass {marker} a", 31)
        leaves = await leave_mid_render(
            f"a blue square on grass {marker} b", 32, **{"x-darkroom-cancel-on-disconnect": "true"}
        )

        assert (await wait_done(http, leaves))["status"] == "cancelled"
        # The watch is a reader of its own: it may read the event after the gateway answered.
        await watch.until(f"{leaves} cancelled", lambda: watch.of(leaves, "images.job_cancelled"))
        [cancelled] = watch.payloads(leaves, "images.job_cancelled")
        assert cancelled["reason"] == "client_disconnected"
        # Without the header the job goes on, and the client can fetch it later.
        assert (await wait_done(http, stays))["status"] == "completed"
        assert watch.of(stays, "images.job_cancelled") == []
