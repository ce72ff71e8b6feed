"""The requests service's handlers: a job's inputs decided once each, saved and published.

Every input goes through the process recorder (libs.processing): the job's record is
loaded (from memory in the common case), a leftover outbox is published, an input already
handled is skipped, `domain.decide` runs, and the new record, the input's id and the
outbox are saved as the job's next revision by insert before the outbox is published.
So a crash or a redelivery never decides twice nor loses a message, and an input usually
costs one write and no read (the writes of jobs handled side by side go out together:
bootstrap wires a `GroupedInserts`). The checkpoints of odd passes but the last are kept
in memory and saved with the job's next revision (`domain.checkpoint_may_wait`): two writes fewer
for a job of four passes.

What is the service's own, kept here: the job's record beside the recorder's bookkeeping
(its state; its last checkpoint, the pass and the token grids of its last reported pass,
which a re-dispatch after a lost decoder hands to the next decoder, as progress is not a
request event; a prompt verdict held until its command comes), the turning of a decision
into the job's sequenced events and messages, and the render leases: after each saved
decision the lease monitor learns whether a decoder now holds the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from pydantic import BaseModel, ConfigDict

from libs import topics
from libs.bus import EventPublisher, TransientError
from libs.events import REGISTRY, Envelope, Event
from libs.events.schemas import GenerateImage, SafetyVerdict
from libs.processing import OutboxItem, ProcessRecorder
from libs.stores.ports import DocumentStore, StoreUnavailable
from services.requests.domain import (
    Decision,
    JobAggregate,
    Policy,
    checkpoint_may_wait,
    decide,
    evolve,
    reached,
)
from services.requests.leases import LeaseMonitor

log = logging.getLogger(__name__)
COLLECTION = "request_jobs"


class JobRecord(BaseModel):
    """What the requests service keeps per job in its collection, beside the recorder's
    `seen` and `outbox` (the stored document holds all five fields)."""

    model_config = ConfigDict(frozen=True)

    state: JobAggregate | None = None
    checkpoint: list[str] = []
    """Per image, the packed token grid (base64) of the last reported pass."""
    held: SafetyVerdict | None = None
    """The prompt verdict, while it waits for its job's command (it came first)."""


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
        self._jobs = ProcessRecorder(documents, COLLECTION, publisher, JobRecord)
        self._publisher = publisher
        self._policy = policy or Policy()
        self.leases = leases if leases is not None else LeaseMonitor(lease_s=30.0)

    async def handle(self, event: Event, envelope: Envelope) -> None:
        """Dispatcher entry point for every input payload (each has a job_id)."""
        job_id = str(getattr(event, "job_id"))  # noqa: B009 - every input payload names its job

        def decide_on(record: JobRecord) -> tuple[JobRecord, list[OutboxItem]] | None:
            decision = decide(record.state, event, self._policy, record.checkpoint, record.held)
            return None if decision.empty else _recorded(job_id, record, decision, envelope)

        # A job's command normally creates its record: it is decided on an empty record
        # without reading the store (two reads saved per job). Where the record exists after
        # all (a redelivered command, a prompt verdict held before it), writing revision 1
        # fails, and the command is decided again on the record read from the store.
        await self._jobs.handle(
            job_id,
            envelope.event_id,
            decide_on,
            creates=isinstance(event, GenerateImage),
            deferrable=checkpoint_may_wait(event),
            saved=lambda record: self.leases.track(record.state),
        )

    async def arm_leases(self) -> int:
        """Tracks every job the store holds as rendering (after a restart); returns how many."""
        try:
            docs = await self._documents.find(COLLECTION, {"state.status": "rendering"})
            job_ids = {str(doc["state"]["job_id"]) for doc in docs}
            for job_id in sorted(job_ids):
                self.leases.track((await self._jobs.load(job_id)).state)
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
                    record = await self._jobs.load(expired.job_id)
                    self.leases.track(record.state)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)


def _recorded(
    job_id: str, record: JobRecord, decision: Decision, cause: Envelope
) -> tuple[JobRecord, list[OutboxItem]]:
    """The job's record after a decision, and its outbox: the job's events in sequence on its
    stream, then the messages to other services."""
    state = record.state
    tier = state.spec.tier if state else None
    sequence = state.sequence if state else 0
    outbox: list[OutboxItem] = []
    for event in decision.events:
        sequence += 1
        state = evolve(state, event, sequence)
        tier = state.spec.tier if state else tier
        envelope = Envelope.wrap(event, aggregate_id=job_id, sequence=sequence, caused_by=cause, tier=tier)
        outbox.append(OutboxItem.of(topics.REQUEST_EVENTS, envelope))
    for message in decision.messages:
        envelope = Envelope.wrap(message.event, aggregate_id=job_id, caused_by=cause, tier=tier)
        outbox.append(OutboxItem.of(message.topic, envelope, message.partition))
    checkpoint = record.checkpoint
    if decision.checkpoint is not None and state is not None:
        # Progress is the service's own record of the render, not a request event.
        state = reached(state, decision.checkpoint)
        checkpoint = decision.checkpoint.tokens
    # A held verdict stays until the command comes, which decides it (and the job then has a state).
    updated = JobRecord(state=state, checkpoint=checkpoint, held=decision.held if state is None else None)
    return updated, outbox


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
