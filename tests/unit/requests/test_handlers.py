"""The requests handlers: state saved with an outbox, redeliveries and crashes change nothing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from libs import topics
from libs.bus import EventPublisher, TransientError
from libs.bus.memory import InMemoryBroker
from libs.events import REGISTRY, Envelope, Event
from libs.events.schemas import (
    ExpireRenderLease,
    GenerateImage,
    JobAccepted,
    JobQueued,
    JobSpec,
    RenderJob,
    RenderProgressed,
    RenderStarted,
    SafetyVerdict,
)
from libs.stores.memory import InMemoryDocumentStore
from libs.stores.revisions import revision_id
from services.requests.handlers import COLLECTION, RequestHandlers
from services.requests.leases import LeaseMonitor
from tests.helpers import count_reads, job_spec

JOB = "job_h"


def _spec() -> JobSpec:
    return job_spec(tier="plus", prompt="a cat")


def _envelope(event: Event) -> Envelope:
    return Envelope.wrap(event, aggregate_id=JOB)


def _events(broker: InMemoryBroker, topic: str) -> list[Envelope]:
    return [Envelope.from_bytes(r.value) for r in broker.records(topic)]


class ExplodingPublisher(EventPublisher):
    """Fails the first publish, as a process dying after saving and before publishing would."""

    def __init__(self, broker: InMemoryBroker) -> None:
        super().__init__(broker.producer())
        self.fail = True

    async def publish(self, topic: str, envelope: Envelope, *, key: str | None = None, partition: int | None = None):  # type: ignore[no-untyped-def]
        if self.fail:
            self.fail = False
            raise ConnectionError("crashed before publishing")
        return await super().publish(topic, envelope, key=key, partition=partition)


async def test_a_command_produces_sequenced_job_events() -> None:
    broker, docs = InMemoryBroker(), InMemoryDocumentStore()
    handlers = RequestHandlers(docs, EventPublisher(broker.producer()))
    command = GenerateImage(job_id=JOB, spec=_spec(), created_at=datetime.now(UTC))
    envelope = _envelope(command)
    await handlers.handle(command, envelope)
    [accepted] = _events(broker, topics.REQUEST_EVENTS)
    assert (accepted.type, accepted.sequence, accepted.tier) == (JobAccepted.TYPE, 1, "plus")
    assert accepted.causation_id == envelope.event_id
    assert _events(broker, topics.SAFETY_CHECKS) == []  # safety reads the command itself
    # Delivered again: nothing new.
    await handlers.handle(command, envelope)
    assert len(_events(broker, topics.REQUEST_EVENTS)) == 1


async def test_the_render_job_goes_to_the_lane_partition() -> None:
    broker, docs = InMemoryBroker({topics.RENDER_CONSUMER: 12}), InMemoryDocumentStore()
    handlers = RequestHandlers(docs, EventPublisher(broker.producer()))
    command = GenerateImage(job_id=JOB, spec=_spec(), created_at=datetime.now(UTC))
    await handlers.handle(command, _envelope(command))
    verdict = SafetyVerdict(job_id=JOB, stage="prompt", allowed=True, policy_version=1)
    await handlers.handle(verdict, _envelope(verdict))
    [record] = broker.records(topics.RENDER_CONSUMER)
    assert record.partition in (4, 5, 6, 7)  # the plus lane
    assert REGISTRY.decode_as(Envelope.from_bytes(record.value), RenderJob).passes == 4
    queued = _events(broker, topics.REQUEST_EVENTS)[-1]
    assert (queued.type, queued.sequence) == (JobQueued.TYPE, 2)


async def test_a_crash_between_saving_and_publishing_loses_nothing() -> None:
    broker, docs = InMemoryBroker({topics.RENDER_CONSUMER: 12}), InMemoryDocumentStore()
    publisher = ExplodingPublisher(broker)
    publisher.fail = False
    handlers = RequestHandlers(docs, publisher)
    command = GenerateImage(job_id=JOB, spec=_spec(), created_at=datetime.now(UTC))
    await handlers.handle(command, _envelope(command))
    verdict = SafetyVerdict(job_id=JOB, stage="prompt", allowed=True, policy_version=1)
    envelope = _envelope(verdict)
    publisher.fail = True
    with pytest.raises(ConnectionError):
        await handlers.handle(verdict, envelope)
    saved = await docs.get(COLLECTION, revision_id(JOB, 2))
    assert saved is not None and len(saved["outbox"]) == 2  # JobQueued and the render job
    assert [e.type for e in _events(broker, topics.REQUEST_EVENTS)] == [JobAccepted.TYPE]
    # The consumer loop retries the same message: the outbox is published once, nothing is decided twice.
    await handlers.handle(verdict, envelope)
    assert [e.type for e in _events(broker, topics.REQUEST_EVENTS)] == [JobAccepted.TYPE, JobQueued.TYPE]
    assert len(_events(broker, topics.RENDER_CONSUMER)) == 1
    await handlers.handle(verdict, envelope)
    assert len(_events(broker, topics.RENDER_CONSUMER)) == 1, "a published outbox is not published again"


async def test_after_a_restart_the_last_outbox_goes_out_once_more_and_changes_nothing() -> None:
    broker, docs = InMemoryBroker(), InMemoryDocumentStore()
    command = GenerateImage(job_id=JOB, spec=_spec(), created_at=datetime.now(UTC))
    envelope = _envelope(command)
    await RequestHandlers(docs, EventPublisher(broker.producer())).handle(command, envelope)
    restarted = RequestHandlers(docs, EventPublisher(broker.producer()))
    await restarted.handle(command, envelope)
    accepted = _events(broker, topics.REQUEST_EVENTS)
    assert [e.event_id for e in accepted] == [accepted[0].event_id] * 2, "the same event, republished"
    assert await docs.get(COLLECTION, revision_id(JOB, 1)) is not None
    assert await docs.get(COLLECTION, revision_id(JOB, 2)) is None, "nothing new was decided"


async def test_a_concurrent_writer_makes_the_handler_retry() -> None:
    broker, docs = InMemoryBroker({topics.RENDER_CONSUMER: 12}), InMemoryDocumentStore()
    command = GenerateImage(job_id=JOB, spec=_spec(), created_at=datetime.now(UTC))
    await RequestHandlers(docs, EventPublisher(broker.producer())).handle(command, _envelope(command))
    handlers = RequestHandlers(docs, EventPublisher(broker.producer()))  # has not seen the job
    original_get = docs.get

    async def racing_get(collection: str, doc_id: str):  # type: ignore[no-untyped-def]
        doc = await original_get(collection, doc_id)
        # Another replica writes revision 2 right after this one found none.
        if doc_id == revision_id(JOB, 2) and doc is None:
            await docs.insert(collection, doc_id, {"seen": [], "outbox": []})
        return doc

    docs.get = racing_get  # type: ignore[method-assign]
    verdict = SafetyVerdict(job_id=JOB, stage="prompt", allowed=True, policy_version=1)
    with pytest.raises(TransientError, match="concurrently"):
        await handlers.handle(verdict, _envelope(verdict))


async def test_a_command_creates_its_job_without_reading_the_store() -> None:
    broker, docs = InMemoryBroker(), InMemoryDocumentStore()
    handlers = RequestHandlers(docs, EventPublisher(broker.producer()))
    reads = count_reads(docs)
    command = GenerateImage(job_id=JOB, spec=_spec(), created_at=datetime.now(UTC))
    await handlers.handle(command, _envelope(command))
    assert reads == []
    assert await docs.get(COLLECTION, revision_id(JOB, 1)) is not None
    assert [e.type for e in _events(broker, topics.REQUEST_EVENTS)] == [JobAccepted.TYPE]


async def test_a_command_whose_job_has_a_record_already_is_decided_on_that_record() -> None:
    broker, docs = InMemoryBroker({topics.RENDER_CONSUMER: 12}), InMemoryDocumentStore()
    # The prompt verdict came first, on another replica: it is held in revision 1.
    verdict = SafetyVerdict(job_id=JOB, stage="prompt", allowed=True, policy_version=1)
    await RequestHandlers(docs, EventPublisher(broker.producer())).handle(verdict, _envelope(verdict))
    assert await docs.get(COLLECTION, revision_id(JOB, 1)) is not None
    # Here the command finds revision 1 taken, reads it and decides with the held verdict.
    command = GenerateImage(job_id=JOB, spec=_spec(), created_at=datetime.now(UTC))
    await RequestHandlers(docs, EventPublisher(broker.producer())).handle(command, _envelope(command))
    assert [e.type for e in _events(broker, topics.REQUEST_EVENTS)] == [JobAccepted.TYPE, JobQueued.TYPE]
    assert len(broker.records(topics.RENDER_CONSUMER)) == 1
    assert await docs.get(COLLECTION, revision_id(JOB, 2)) is not None


async def test_the_next_input_of_a_job_needs_no_read_of_the_store() -> None:
    broker, docs = InMemoryBroker({topics.RENDER_CONSUMER: 12}), InMemoryDocumentStore()
    handlers = RequestHandlers(docs, EventPublisher(broker.producer()))
    command = GenerateImage(job_id=JOB, spec=_spec(), created_at=datetime.now(UTC))
    await handlers.handle(command, _envelope(command))
    reads = count_reads(docs)
    verdict = SafetyVerdict(job_id=JOB, stage="prompt", allowed=True, policy_version=1)
    await handlers.handle(verdict, _envelope(verdict))
    assert reads == []
    assert _events(broker, topics.REQUEST_EVENTS)[-1].type == JobQueued.TYPE


async def test_a_job_another_replica_moved_on_is_decided_again_on_what_the_store_holds() -> None:
    broker, docs = InMemoryBroker({topics.RENDER_CONSUMER: 12}), InMemoryDocumentStore()
    here = RequestHandlers(docs, EventPublisher(broker.producer()))
    there = RequestHandlers(docs, EventPublisher(broker.producer()))
    command = GenerateImage(job_id=JOB, spec=_spec(), created_at=datetime.now(UTC))
    await here.handle(command, _envelope(command))
    # A rebalance hands the job to another replica, which queues it (revision 2).
    verdict = SafetyVerdict(job_id=JOB, stage="prompt", allowed=True, policy_version=1)
    verdict_envelope = _envelope(verdict)
    await there.handle(verdict, verdict_envelope)
    # The job comes back here, where revision 1 is still remembered: the same verdict,
    # redelivered, first fails on the taken revision, then is found already handled.
    with pytest.raises(TransientError, match="concurrently"):
        await here.handle(verdict, verdict_envelope)
    await here.handle(verdict, verdict_envelope)
    queued = {e.event_id for e in _events(broker, topics.REQUEST_EVENTS) if e.type == JobQueued.TYPE}
    assert len(queued) == 1, "one JobQueued (a replica taking over publishes the last outbox once more)"
    assert await docs.get(COLLECTION, revision_id(JOB, 3)) is None, "nothing was decided twice"


async def test_a_job_whose_decoder_went_silent_is_dispatched_again_from_its_checkpoint() -> None:
    broker = InMemoryBroker({topics.RENDER_CONSUMER: 12})
    clock = [0.0]
    leases = LeaseMonitor(lease_s=20, clock=lambda: clock[0])
    handlers = RequestHandlers(InMemoryDocumentStore(), EventPublisher(broker.producer()), leases=leases)
    created = datetime(2026, 1, 1, tzinfo=UTC)
    inputs: list[Event] = [
        GenerateImage(job_id=JOB, spec=_spec(), created_at=created),
        SafetyVerdict(job_id=JOB, stage="prompt", allowed=True, policy_version=1),
        RenderStarted(job_id=JOB, attempt=0, pass_index=0, total_passes=4),
        RenderProgressed(job_id=JOB, pass_index=1, total_passes=4, tokens=["AAAA"]),
        RenderProgressed(job_id=JOB, pass_index=2, total_passes=4, tokens=["BBBB"]),
    ]
    for event in inputs:
        await handlers.handle(event, _envelope(event))
    assert JOB in leases and leases.expired() == []

    clock[0] = 20.0
    [expired] = leases.expired()
    assert (expired.attempt, expired.pass_index) == (0, 2)
    await handlers.handle(expired, _envelope(expired))
    # A second proposal for the same report (another replica, a redelivery) changes nothing.
    await handlers.handle(ExpireRenderLease(job_id=JOB, attempt=0, pass_index=2), _envelope(expired))

    renders = [REGISTRY.decode_as(e, RenderJob) for e in _events(broker, topics.RENDER_CONSUMER)]
    assert [(r.attempt, r.resume_pass, r.resume_tokens) for r in renders] == [(0, 0, []), (1, 2, ["BBBB"])]
    requeued = [e for e in _events(broker, topics.REQUEST_EVENTS) if e.type == "images.job_requeued"]
    assert [(e.payload["attempt"], e.payload["resume_pass"]) for e in requeued] == [(1, 2)]
    assert JOB not in leases  # queued again: no decoder holds it until one starts it


async def test_odd_passes_but_the_last_are_saved_with_the_next_pass() -> None:
    broker, docs = InMemoryBroker({topics.RENDER_CONSUMER: 12}), InMemoryDocumentStore()
    handlers = RequestHandlers(docs, EventPublisher(broker.producer()))
    created = datetime(2026, 1, 1, tzinfo=UTC)
    inputs: list[Event] = [
        GenerateImage(job_id=JOB, spec=_spec(), created_at=created),
        SafetyVerdict(job_id=JOB, stage="prompt", allowed=True, policy_version=1),
        RenderStarted(job_id=JOB, attempt=0, pass_index=0, total_passes=3),
    ]
    for event in inputs:
        await handlers.handle(event, _envelope(event))
    passes = [
        RenderProgressed(job_id=JOB, pass_index=i, total_passes=3, tokens=[tokens])
        for i, tokens in ((1, "AAAA"), (2, "BBBB"), (3, "CCCC"))
    ]
    await handlers.handle(passes[0], _envelope(passes[0]))
    assert await docs.get(COLLECTION, revision_id(JOB, 4)) is None, "pass 1 waits in memory"
    third = await docs.get(COLLECTION, revision_id(JOB, 3))
    assert third is not None and third["state"]["status"] == "rendering", "a crash now would lose pass 1 alone"
    for progress in passes[1:]:
        await handlers.handle(progress, _envelope(progress))
    fourth, fifth = [await docs.get(COLLECTION, revision_id(JOB, rev)) for rev in (4, 5)]
    assert fourth is not None and (fourth["state"]["pass_index"], fourth["checkpoint"]) == (2, ["BBBB"])
    assert fifth is not None and (fifth["state"]["pass_index"], fifth["checkpoint"]) == (3, ["CCCC"])
    assert len(fourth["seen"]) == 5, "pass 1's input id went out with pass 2"


async def test_a_prompt_verdict_before_the_command_is_kept_in_the_record_until_the_command_comes() -> None:
    broker, docs = InMemoryBroker({topics.RENDER_CONSUMER: 12}), InMemoryDocumentStore()
    handlers = RequestHandlers(docs, EventPublisher(broker.producer()))
    verdict = SafetyVerdict(job_id=JOB, stage="prompt", allowed=True, policy_version=1)
    await handlers.handle(verdict, _envelope(verdict))
    assert _events(broker, topics.REQUEST_EVENTS) == []
    # A restarted process finds it in the store.
    restarted = RequestHandlers(docs, EventPublisher(broker.producer()))
    command = GenerateImage(job_id=JOB, spec=_spec(), created_at=datetime.now(UTC))
    await restarted.handle(command, _envelope(command))
    assert [e.type for e in _events(broker, topics.REQUEST_EVENTS)] == [JobAccepted.TYPE, JobQueued.TYPE]
    [render] = _events(broker, topics.RENDER_CONSUMER)
    assert REGISTRY.decode_as(render, RenderJob).job_id == JOB


async def test_a_jobs_record_is_stored_in_the_fields_records_already_stored_use() -> None:
    broker, docs = InMemoryBroker({topics.RENDER_CONSUMER: 12}), InMemoryDocumentStore()
    command = GenerateImage(job_id=JOB, spec=_spec(), created_at=datetime.now(UTC))
    await RequestHandlers(docs, EventPublisher(broker.producer())).handle(command, _envelope(command))
    saved = await docs.get(COLLECTION, revision_id(JOB, 1))
    assert saved is not None
    assert set(saved) == {"_id", "state", "seen", "outbox", "checkpoint", "held"}
    assert set(saved["outbox"][0]) == {"topic", "partition", "envelope"}
    # A revision written field by field in that layout (as by an earlier release) loads.
    await docs.insert(COLLECTION, revision_id(JOB, 2), {**saved, "checkpoint": ["CCCC"]})
    verdict = SafetyVerdict(job_id=JOB, stage="prompt", allowed=True, policy_version=1)
    await RequestHandlers(docs, EventPublisher(broker.producer())).handle(verdict, _envelope(verdict))
    third = await docs.get(COLLECTION, revision_id(JOB, 3))
    assert third is not None and third["checkpoint"] == ["CCCC"] and third["state"]["status"] == "queued"
