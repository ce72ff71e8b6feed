"""How a waiting request follows its job, and how the read model folds job events."""

from __future__ import annotations

from datetime import UTC, datetime

from libs.bus import Record
from libs.events import Envelope, Event
from libs.events.schemas import (
    ImageRef,
    JobAccepted,
    JobBlocked,
    JobCompleted,
    JobContentCleared,
    JobImageStored,
    JobProgressed,
    JobQueued,
    RenderProgressed,
    Usage,
)
from libs.readmodels.jobs import JOBS, JobProjection, shows_the_same
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


async def _stored_sequences(docs: InMemoryDocumentStore) -> list[object]:
    """The sequence each stored revision of the job follows, in revision order."""
    return [doc["sequence"] for doc in await docs.find(JOBS, {"job_id": JOB}, sort=[("_id", 1)])]


def _cleared(sequence: int) -> Envelope:
    cleared = JobContentCleared(job_id=JOB, pass_index=1, policy_version=1)
    return Envelope.wrap(cleared, aggregate_id=JOB, sequence=sequence)


def _image_ref() -> ImageRef:
    return ImageRef(
        index=0,
        image_id=f"img_{JOB}_0",
        object_key=f"images/{JOB}/0.png",
        tokens_key=f"tokens/{JOB}/0.u16",
        content_type="image/png",
        size_bytes=1,
        sha256="0" * 64,
    )


def _usage() -> Usage:
    return Usage(input_tokens=1, text_tokens=1, image_tokens=0, output_tokens=16)


def _record(envelope: Envelope) -> Record:
    return Record("darkroom.requests.events", 0, envelope.sequence, JOB.encode(), envelope.to_bytes())


def test_a_follower_folds_the_live_events_to_the_end() -> None:
    follower = JobFollower(_seeded())
    progress = RenderProgressed(job_id=JOB, pass_index=1, total_passes=4, tokens=[])  # not a job event: ignored
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


async def test_the_projection_writes_a_revision_when_the_view_changes_and_ignores_redeliveries() -> None:
    docs = InMemoryDocumentStore()
    projection = JobProjection(docs)
    await projection.seed(_seeded())
    accepted, queued, progressed, blocked = _job_events()
    cleared = _cleared(4)
    blocked = blocked.model_copy(update={"sequence": 5})
    events = [accepted, queued, progressed, cleared, blocked]
    for envelope in events:
        await projection(envelope, _record(envelope))
    await projection(queued, _record(queued))  # redelivered
    state = await projection.get(JOB)
    assert state is not None and (state.sequence, state.status) == (5, "blocked")
    # The seed, then the queued, rendering and blocked views: the acceptance (the seed
    # already showed it) and the cleared content show nothing new and write nothing.
    assert await _stored_sequences(docs) == [0, 2, 3, 5]
    # Another replica's projection (nothing cached) reads the same state.
    other = await JobProjection(docs).get(JOB)
    assert other == state


async def test_an_event_that_shows_nothing_new_leaves_the_stored_view_behind_by_its_sequence_only() -> None:
    docs = InMemoryDocumentStore()
    projection = JobProjection(docs)
    await projection.seed(_seeded())
    accepted, queued, progressed, _ = _job_events()
    cleared = _cleared(4)
    for envelope in (accepted, queued, progressed, cleared):
        await projection(envelope, _record(envelope))
    stored = await projection.get(JOB)
    assert stored is not None and stored.sequence == 3
    assert shows_the_same(stored, stored.model_copy(update={"sequence": 4}))
    assert not shows_the_same(stored, stored.model_copy(update={"status": "completed"}))
    # A replica that folds the next event without having seen that one reads the stored
    # view and folds on top of it, as the replica that skipped the write would have.
    stored_image = JobImageStored(job_id=JOB, image=_image_ref())
    image = Envelope.wrap(stored_image, aggregate_id=JOB, sequence=5)
    completed = Envelope.wrap(
        JobCompleted(job_id=JOB, images=[_image_ref()], usage=_usage()), aggregate_id=JOB, sequence=6
    )
    other = JobProjection(docs)
    for envelope in (image, completed):
        await other(envelope, _record(envelope))
    final = await projection.get(JOB)
    assert final is not None and (final.status, final.sequence, final.pass_index) == ("completed", 6, 4)
    assert await _stored_sequences(docs) == [0, 2, 3, 6]


async def test_a_replica_whose_revision_another_took_folds_again_on_top_of_it() -> None:
    docs = InMemoryDocumentStore()
    here, there = JobProjection(docs), JobProjection(docs)
    await here.seed(_seeded())
    accepted, queued, progressed, blocked = _job_events()
    for envelope in (accepted, queued):
        await here(envelope, _record(envelope))
    # A rebalance: the other replica folds the progress into revision 2, then this one
    # gets it too (its offset was not committed); the next event after the one it holds,
    # so it writes without a read, finds revision 2 taken and reads the other's.
    await there(progressed, _record(progressed))
    await here(progressed, _record(progressed))
    await here(blocked, _record(blocked))
    state = await JobProjection(docs).get(JOB)
    assert state is not None and (state.status, state.sequence, state.pass_index) == ("blocked", 4, 1)
    assert await _stored_sequences(docs) == [0, 2, 3, 4]


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
