"""How a waiting request follows its job, and how the read model folds job events."""

from __future__ import annotations

from datetime import UTC, datetime

from libs.bus import Record
from libs.events import Envelope, Event
from libs.events.schemas import JobAccepted, JobBlocked, JobProgressed, JobQueued, RenderProgressed
from libs.readmodels.jobs import JobProjection
from libs.readmodels.view import JobView
from libs.stores.memory import InMemoryDocumentStore
from services.gateway.live import JobFollower, LiveEvents
from tests.helpers import job_spec

JOB = "job_live"
CREATED = datetime(2026, 1, 1, tzinfo=UTC)
SPEC = job_spec()


def _seeded() -> JobView:
    return JobView(job_id=JOB, spec=SPEC, created_at=CREATED, total_passes=SPEC.passes)


def _job_events(job: str = JOB) -> list[Envelope]:
    events: list[Event] = [
        JobAccepted(job_id=job, spec=SPEC, created_at=CREATED),
        JobQueued(job_id=job, lane="pro", topic="darkroom.render.consumer", partition=0),
        JobProgressed(job_id=job, pass_index=1, total_passes=4),
        JobBlocked(job_id=job, stage="content", category="violence", pass_index=1, message="blocked"),
    ]
    return [Envelope.wrap(e, aggregate_id=job, sequence=i + 1) for i, e in enumerate(events)]


def _record(envelope: Envelope) -> Record:
    return Record("darkroom.requests.events", 0, envelope.sequence, JOB.encode(), envelope.to_bytes())


def test_a_follower_folds_the_live_events_to_the_end() -> None:
    follower = JobFollower(_seeded())
    progress = RenderProgressed.model_construct()  # not a job event: ignored whatever it holds
    assert follower.apply(Envelope.wrap(progress, aggregate_id=JOB, sequence=7))
    for envelope in _job_events():
        assert follower.apply(envelope)
    assert follower.state.terminal and follower.state.status == "blocked"
    assert follower.state.sequence == 4


def test_a_follower_reports_a_missed_event_and_catches_up_from_the_read_model() -> None:
    accepted, queued, progressed, blocked = _job_events()
    follower = JobFollower(_seeded())
    assert follower.apply(accepted)
    assert not follower.apply(progressed), "sequence 3 after 1: event 2 was missed"
    assert follower.state.sequence == 1
    read_model = JobFollower(_seeded())
    for envelope in (accepted, queued, progressed):
        read_model.apply(envelope)
    follower.catch_up(read_model.state)
    assert follower.state.sequence == 3
    follower.catch_up(_seeded())  # an older state never moves it back
    assert follower.state.sequence == 3
    assert follower.apply(blocked) and follower.state.status == "blocked"


async def test_the_projection_writes_one_revision_per_event_and_ignores_redeliveries() -> None:
    docs = InMemoryDocumentStore()
    projection = JobProjection(docs)
    await projection.seed(_seeded())
    events = _job_events()
    for envelope in events:
        await projection(envelope, _record(envelope))
    await projection(events[1], _record(events[1]))  # redelivered
    state = await projection.get(JOB)
    assert state is not None and (state.sequence, state.status) == (4, "blocked")
    # Another replica's projection (nothing cached) reads the same state.
    other = await JobProjection(docs).get(JOB)
    assert other == state


async def test_the_projection_reads_the_store_when_an_event_is_not_the_next_it_knows() -> None:
    docs = InMemoryDocumentStore()
    here, there = JobProjection(docs), JobProjection(docs)
    accepted, queued, progressed, blocked = _job_events()
    await here(accepted, _record(accepted))
    # A rebalance: the other replica folds events 2 and 3, then the job comes back here.
    await there(queued, _record(queued))
    await there(progressed, _record(progressed))
    await here(blocked, _record(blocked))
    state = await here.get(JOB)
    assert state is not None and state.status == "blocked"
    assert state.pass_index == 1 and state.lane == "pro", "folded on top of what the other replica wrote"


async def test_live_events_remember_the_last_pass_each_job_reached() -> None:
    live = LiveEvents()
    assert live.pass_reached(JOB) == 0
    for k in (1, 3, 2):  # a redelivered or late pass never moves it back
        progress = RenderProgressed(job_id=JOB, pass_index=k, total_passes=4, tokens=[])
        envelope = Envelope.wrap(progress, aggregate_id=JOB, sequence=k)
        await live(envelope, Record("darkroom.render.progress", 0, k, JOB.encode(), envelope.to_bytes()))
    assert live.pass_reached(JOB) == 3
    assert live.pass_reached("another job") == 0


async def test_recent_jobs_are_named_by_their_seed_or_their_acceptance_newest_first() -> None:
    projection = JobProjection(InMemoryDocumentStore())
    # job_a: events only (a rebuilt read model); job_b: seeded and folded; job_c: seeded only.
    for job_id, seeded, folded in (("job_a", False, True), ("job_b", True, True), ("job_c", True, False)):
        if seeded:
            await projection.seed(_seeded().model_copy(update={"job_id": job_id}))
        for envelope in _job_events(job_id) if folded else []:
            await projection(envelope, _record(envelope))
    assert await projection.recent(10) == ["job_c", "job_b", "job_a"]
    assert await projection.recent(2) == ["job_c", "job_b"]


async def test_a_job_no_gateway_seeded_gets_its_seed_from_its_acceptance_as_a_rebuild_does() -> None:
    docs = InMemoryDocumentStore()
    projection = JobProjection(docs)
    for envelope in _job_events("job_direct"):  # published to the command topic past any gateway
        await projection(envelope, _record(envelope))
    seed = await docs.get("gateway_jobs", "job_direct:0000000000")
    assert seed is not None
    expected = _seeded().model_copy(update={"job_id": "job_direct"}).model_dump(mode="json")
    assert {k: v for k, v in seed.items() if not k.startswith("_")} == expected

    # A job its gateway seeded keeps that seed.
    gateway_seed = _seeded().model_copy(update={"job_id": "job_seeded", "lane": "pro"})
    await projection.seed(gateway_seed)
    for envelope in _job_events("job_seeded"):
        await projection(envelope, _record(envelope))
    kept = await docs.get("gateway_jobs", "job_seeded:0000000000")
    assert kept is not None and kept["lane"] == "pro"
