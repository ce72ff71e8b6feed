"""The requests service's handlers: load a job, decide, save, publish (with an outbox).

Each input is handled exactly once in effect, even across crashes and redeliveries:

1. Load the job's record (its state, the ids of inputs already handled, and an
   outbox of messages decided but maybe not yet published): the latest revision in
   an append-only chain (libs.stores.revisions).
2. Publish any leftover outbox (a crash interrupted the previous handling).
3. Skip an input whose event id was already handled.
4. Decide, then save the new state, the input id and the new outbox as the next
   revision, by insert: a concurrent writer that took that revision makes the write
   fail and the input is retried on fresh state.
5. Publish the outbox, and remember in memory which revision's outbox is out.

The latest record of recently handled jobs is also kept in memory, so an input
usually costs one write and no read. A record cached here can only be stale if
another process wrote the job since (after a rebalance); then the insert of the
next revision fails, the cached record is dropped and the input is retried on
what the store holds.
The record also keeps the job's last checkpoint (its pass and the token grids of its
last reported pass: progress is not a request event, the decoder's progress event is
the pass's one message), which a re-dispatch after a lost decoder hands to the next
decoder; and after
each saved decision the lease monitor learns whether a decoder now holds the job.

The outbox stays in the saved record (emptying it would cost a second write per
input); the next decision's save replaces it. After a restart the memory is empty,
so a job's last outbox is published once more: consumers are idempotent by event id
and sequence, so a message delivered twice changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from pydantic import BaseModel, ConfigDict

from libs import topics
from libs.bus import EventPublisher, TransientError
from libs.events import REGISTRY, Envelope, Event
from libs.events.schemas import GenerateImage, SafetyVerdict
from libs.jobs import JobState, evolve
from libs.recent import RecentMap
from libs.stores.ports import DocumentStore, StoreUnavailable
from libs.stores.revisions import RevisionLog
from services.requests.domain import Decision, Policy, decide, reached
from services.requests.leases import LeaseMonitor

log = logging.getLogger(__name__)
COLLECTION = "request_jobs"
PUBLISHED_MEMORY = 100_000
RECORD_MEMORY = 10_000


class OutboxItem(BaseModel):
    """A message decided and saved, to be published."""

    model_config = ConfigDict(frozen=True)

    topic: str
    partition: int | None = None
    envelope: dict[str, Any]


class JobRecord(BaseModel):
    """What the requests service keeps per job in its own collection."""

    model_config = ConfigDict(frozen=True)

    state: JobState | None = None
    seen: list[str] = []
    outbox: list[OutboxItem] = []
    checkpoint: list[str] = []
    """Per image, the packed token grid (base64) of the last reported pass."""
    held: SafetyVerdict | None = None
    """The prompt verdict, while it waits for its job's command (it came first)."""
    rev: int = 0

    @classmethod
    def from_doc(cls, doc: dict[str, Any] | None, rev: int) -> JobRecord:
        if doc is None:
            return cls()
        return cls.model_validate({**doc, "rev": rev})


class RevisionTaken(TransientError):
    """Another writer took the job's next revision: the input is decided again on fresh state."""


class RequestHandlers:
    """Handles every input of the requests service for one job at a time."""

    def __init__(
        self,
        documents: DocumentStore,
        publisher: EventPublisher,
        policy: Policy | None = None,
        leases: LeaseMonitor | None = None,
    ) -> None:
        self._documents = documents
        self._records = RevisionLog(documents, COLLECTION)
        self._publisher = publisher
        self._policy = policy or Policy()
        self.leases = leases if leases is not None else LeaseMonitor(lease_s=30.0)
        self._published: RecentMap[str, int] = RecentMap(PUBLISHED_MEMORY)
        """Job id -> revision whose outbox this process has published."""
        self._partly_sent: dict[tuple[str, int], set[int]] = {}
        """(job id, revision) -> indexes of its outbox items published so far, while it is being flushed."""
        self._recent: RecentMap[str, JobRecord] = RecentMap(RECORD_MEMORY)
        """Job id -> the latest record this process wrote or read."""

    async def handle(self, event: Event, envelope: Envelope) -> None:
        """Dispatcher entry point for every input payload (each has a job_id)."""
        job_id = str(getattr(event, "job_id"))  # noqa: B009 - every input payload names its job
        # A job's command normally creates its record: it is decided on an empty record
        # without reading the store (two reads saved per job). Where the record exists after
        # all (a redelivered command, a prompt verdict held before it), writing revision 1
        # fails, and the command is decided again on the record read from the store.
        assume_new = isinstance(event, GenerateImage) and self._recent.get(job_id) is None
        while True:
            record = JobRecord() if assume_new else await self._load(job_id)
            if record.outbox and self._published.get(job_id) != record.rev:
                await self._flush(job_id, record)
            if envelope.event_id in record.seen:
                return
            decision = decide(record.state, event, self._policy, record.checkpoint, record.held)
            if decision.empty:
                return
            try:
                record = await self._save_decision(job_id, record, decision, envelope)
            except RevisionTaken:
                if not assume_new:
                    raise
                assume_new = False
                continue
            break
        self.leases.track(record.state)
        await self._flush(job_id, record)

    async def arm_leases(self) -> int:
        """Tracks every job the store holds as rendering (after a restart); returns how many."""
        try:
            docs = await self._documents.find(COLLECTION, {"state.status": "rendering"})
            job_ids = {str(doc["state"]["job_id"]) for doc in docs}
            for job_id in sorted(job_ids):
                self.leases.track((await self._load(job_id)).state)
        except StoreUnavailable as exc:
            raise TransientError(str(exc)) from exc
        return len(job_ids)

    async def watch_leases(self, stop: asyncio.Event, interval_s: float = 1.0) -> None:
        """Proposes a re-dispatch for every job whose decoder stopped reporting, until stopped.

        First tracks the jobs the store holds as rendering, retrying while it is away, so the
        jobs a previous process was watching are watched again.
        """
        while not stop.is_set():
            try:
                armed = await self.arm_leases()
                log.info("watching %d rendering jobs", armed)
                break
            except TransientError as exc:
                log.warning("rendering jobs not loaded yet: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
        while not stop.is_set():
            for expired in self.leases.expired():
                log.warning("job %s: no report from its decoder since pass %d", expired.job_id, expired.pass_index)
                envelope = Envelope.wrap(expired, aggregate_id=expired.job_id, tier=self.leases.tier_of(expired.job_id))
                try:
                    await self._publisher.publish(topics.IMAGE_COMMANDS, envelope, key=expired.job_id)
                except Exception as exc:  # noqa: BLE001 - proposed again once the broker is back
                    log.warning("lease expiry of %s not published, retrying: %r", expired.job_id, exc)
                    record = await self._load(expired.job_id)
                    self.leases.track(record.state)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)

    async def _load(self, job_id: str) -> JobRecord:
        cached = self._recent.get(job_id)
        if cached is not None:
            return cached
        try:
            rev, doc = await self._records.latest(job_id)
        except StoreUnavailable as exc:
            raise TransientError(str(exc)) from exc
        record = JobRecord.from_doc(doc, rev)
        self._recent.put(job_id, record)
        return record

    async def _save(self, job_id: str, record: JobRecord) -> None:
        # Revision N+1 is created by insert: a concurrent writer that took it first makes
        # this one fail, and the input is retried on fresh state.
        try:
            written = await self._records.append(job_id, record.rev, record.model_dump(mode="json", exclude={"rev"}))
        except StoreUnavailable as exc:
            raise TransientError(str(exc)) from exc
        if not written:
            self._recent.pop(job_id)
            raise RevisionTaken(f"job {job_id} changed concurrently; retrying on fresh state")
        self._recent.put(job_id, record)

    async def _save_decision(self, job_id: str, record: JobRecord, decision: Decision, cause: Envelope) -> JobRecord:
        state = record.state
        tier = state.spec.tier if state else None
        sequence = state.sequence if state else 0
        outbox: list[OutboxItem] = []
        for event in decision.events:
            sequence += 1
            state = evolve(state, event, sequence)
            tier = state.spec.tier if state else tier
            envelope = Envelope.wrap(event, aggregate_id=job_id, sequence=sequence, caused_by=cause, tier=tier)
            outbox.append(OutboxItem(topic=topics.REQUEST_EVENTS, envelope=envelope.model_dump(mode="json")))
        for message in decision.messages:
            envelope = Envelope.wrap(message.event, aggregate_id=job_id, caused_by=cause, tier=tier)
            outbox.append(
                OutboxItem(topic=message.topic, partition=message.partition, envelope=envelope.model_dump(mode="json"))
            )
        checkpoint = record.checkpoint
        if decision.checkpoint is not None and state is not None:
            # Progress is the service's own record of the render, not a request event.
            state = reached(state, decision.checkpoint)
            checkpoint = decision.checkpoint.tokens
        updated = JobRecord(
            state=state,
            seen=[*record.seen, cause.event_id],
            outbox=outbox,
            checkpoint=checkpoint,
            # Held until the command comes, which decides it (and the job then has a state).
            held=decision.held if state is None else None,
            rev=record.rev + 1,
        )
        await self._save(job_id, updated)
        return updated

    async def _flush(self, job_id: str, record: JobRecord) -> None:
        # In order within a topic (a job's events stay in sequence), topics side by side.
        # Items that went out before a failure are not sent again when the input is retried.
        sent = self._partly_sent.setdefault((job_id, record.rev), set())
        by_topic: dict[str, list[tuple[int, OutboxItem]]] = {}
        for index, item in enumerate(record.outbox):
            if index not in sent:
                by_topic.setdefault(item.topic, []).append((index, item))

        async def publish_in_order(items: list[tuple[int, OutboxItem]]) -> None:
            for index, item in items:
                envelope = Envelope.model_validate(item.envelope)
                await self._publisher.publish(item.topic, envelope, partition=item.partition, key=job_id)
                sent.add(index)

        outcomes = await asyncio.gather(
            *(publish_in_order(items) for items in by_topic.values()), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        del self._partly_sent[(job_id, record.rev)]
        self._published.put(job_id, record.rev)


def registered_inputs() -> list[type[Event]]:
    """The payload classes the requests service acts on."""
    names = [
        "images.generate_image",
        "images.cancel_job",
        "images.expire_render_lease",
        "safety.verdict",
        "render.render_started",
        "render.render_progressed",
        "render.render_stopped",
        "storage.image_stored",
    ]
    return [t for t in (REGISTRY.get(n) for n in names) if t is not None]
