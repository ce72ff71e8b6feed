"""The gateway's job use cases without HTTP: submitting a job, following it, cancelling it.

They run on the in-memory gateway and the services behind it (conftest.py), called directly
rather than through a route; refusals come back as values that the routes answer.
"""

from __future__ import annotations

import time

from libs.apikeys import Principal
from services.gateway import jobs
from services.gateway.context import Gateway
from services.gateway.refusals import Refusal
from tests.helpers import eventually, job_spec
from tests.unit.gateway.conftest import GatewayUnderTest

OWNER = Principal("acct_owner", "pro", "k1:test", int(time.time()))


def _gateway(under_test: GatewayUnderTest) -> Gateway:
    gateway: Gateway = under_test.app.state.gateway
    return gateway


async def test_a_submitted_job_is_followed_to_its_end_and_its_images_are_catalogued(
    gateway: GatewayUnderTest,
) -> None:
    gw = _gateway(gateway)
    admitted = await jobs.admit(gw, jobs.SubmitJob(OWNER, job_spec(account_id=OWNER.account_id)))
    assert isinstance(admitted, jobs.Admitted) and admitted.new
    assert admitted.job.spec.lane == "pro" and "x-ratelimit-limit-requests" in admitted.rate_limit_headers

    async with jobs.start(gw, admitted) as run:
        state = await run.to_end()

    assert state.status == "completed" and gateway.pipeline.generated == [state.job_id]
    assert await gw.catalog.get(state.images[0].image_id) is not None


async def test_a_stream_shows_the_previews_it_asked_for_then_the_end(gateway: GatewayUnderTest) -> None:
    gw = _gateway(gateway)
    spec = job_spec(account_id=OWNER.account_id, partial_images=2)
    admitted = await jobs.admit(gw, jobs.SubmitJob(OWNER, spec))
    assert isinstance(admitted, jobs.Admitted)
    async with jobs.start(gw, admitted) as run:
        pass

    updates = [u async for u in run.updates() if not isinstance(u, jobs.KeepAlive)]

    assert [type(u) for u in updates] == [jobs.Preview, jobs.Preview, jobs.Ended]
    assert [u.index for u in updates if isinstance(u, jobs.Preview)] == [0, 1]
    end = updates[-1]
    assert isinstance(end, jobs.Ended) and end.state.status == "completed"


async def test_a_stream_left_before_the_end_cancels_its_job_when_asked(gateway: GatewayUnderTest) -> None:
    gateway.pipeline.hold.clear()
    gw = _gateway(gateway)
    admitted = await jobs.admit(gw, jobs.SubmitJob(OWNER, job_spec(account_id=OWNER.account_id)))
    assert isinstance(admitted, jobs.Admitted)
    async with jobs.start(gw, admitted) as run:
        pass
    updates = run.updates(cancel_on_leave=True)
    assert isinstance(await anext(updates), jobs.KeepAlive)
    await updates.aclose()  # the client left

    async def cancelled() -> bool:
        return admitted.job.job_id in gateway.pipeline.cancelled

    await eventually(cancelled, 10, "the cancel command")
    gateway.pipeline.hold.set()


async def test_a_keyed_request_refused_at_admission_frees_its_key(gateway: GatewayUnderTest) -> None:
    gw = _gateway(gateway)
    over = job_spec(account_id=OWNER.account_id, n=9, idempotency_key="order-1")

    refusal = await jobs.admit(gw, jobs.SubmitJob(OWNER, over))

    assert isinstance(refusal, Refusal) and (refusal.status, refusal.param) == (400, "n")
    # No claim is left: the key now names whatever job another request asks for.
    assert await gw.idempotency.claim(OWNER.account_id, "order-1", "job_other", "another request") == "job_other"


async def test_only_the_owner_finds_or_cancels_a_job_and_an_ended_one_stays_ended(
    gateway: GatewayUnderTest,
) -> None:
    gw = _gateway(gateway)
    admitted = await jobs.admit(gw, jobs.SubmitJob(OWNER, job_spec(account_id=OWNER.account_id)))
    assert isinstance(admitted, jobs.Admitted)
    async with jobs.start(gw, admitted) as run:
        state = await run.to_end()
    job_id = state.job_id
    # The job ended in the live fold; the read model, which find and cancel read, follows it.
    await eventually(lambda: _ended_in_read_model(gw, job_id), what="the read model's end of the job")

    not_found = await jobs.find(gw, "acct_other", job_id)
    assert isinstance(not_found, Refusal) and (not_found.status, not_found.code) == (404, "not_found")
    assert await jobs.cancel(gw, jobs.CancelOwnJob("acct_other", job_id)) == not_found
    ended = await jobs.cancel(gw, jobs.CancelOwnJob(OWNER.account_id, job_id))
    assert isinstance(ended, Refusal) and (ended.status, ended.code) == (409, "job_not_cancellable")
    assert job_id not in gateway.pipeline.cancelled


async def _ended_in_read_model(gw: Gateway, job_id: str) -> bool:
    found = await jobs.find(gw, OWNER.account_id, job_id)
    return not isinstance(found, Refusal) and found.terminal
