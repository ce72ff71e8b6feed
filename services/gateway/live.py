"""Live events for requests in flight, and the gateway's job read model.

`LiveEvents` is the handler of a group-less reader on the request-event, progress and
account-event topics: every gateway replica sees every event from the moment it
started, and hands those of the jobs (or sign-ups) it is waiting on to the waiting
request. A waiting request folds its job's events itself (`JobFollower`), so it
needs no read of the read model unless it notices it missed an event.
`JobProjection` is a consumer group shared by the replicas that folds the request
events into the gateway's own read model, which answers job status and is the
fallback when a live event was missed; it also records finished images in the
gateway's image catalog (services.gateway.catalog).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

from libs import topics
from libs.bus import Record, TransientError
from libs.events import REGISTRY, Envelope
from libs.events.schemas import JobAccepted, JobCompleted, RenderProgressed
from libs.jobs import JobState, accepted_seed, evolve
from libs.recent import RecentMap
from libs.stores.ports import DocumentStore, StoreUnavailable
from libs.stores.revisions import RevisionLog
from services.gateway.catalog import ImageCatalog, catalog_entries

JOBS = "gateway_jobs"
JOB_EVENT_PREFIX = "images.job_"
"""The type prefix of request events, the ones a job's state is folded from."""
CACHED_STATES = 10_000


PASSES_MEMORY = 100_000


class LiveEvents:
    """Routes live envelopes to the requests waiting for them, by job or request id, and
    remembers the last pass each rendering job reached (progress is the decoder's event,
    not a request event, so job status reads it from here)."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Queue[Envelope]]] = {}
        self._passes: RecentMap[str, int] = RecentMap(PASSES_MEMORY)

    def pass_reached(self, job_id: str) -> int:
        """The last pass a decoder reported for the job since this replica started (0 if none)."""
        return self._passes.get(job_id) or 0

    @contextlib.contextmanager
    def subscribe(self, key: str) -> Iterator[asyncio.Queue[Envelope]]:
        """Receive the envelopes for `key` while inside the block."""
        queue: asyncio.Queue[Envelope] = asyncio.Queue()
        self._waiters.setdefault(key, set()).add(queue)
        try:
            yield queue
        finally:
            waiting = self._waiters.get(key)
            if waiting is not None:
                waiting.discard(queue)
                if not waiting:
                    del self._waiters[key]

    async def __call__(self, envelope: Envelope, record: Record) -> None:
        key = envelope.aggregate_id
        if envelope.type == RenderProgressed.TYPE:
            reached = int(envelope.payload.get("pass_index", 0))
            if reached > self.pass_reached(key):
                self._passes.put(key, reached)
        elif record.topic == topics.ACCOUNT_EVENTS:
            key = str(envelope.payload.get("request_id", ""))
        for queue in self._waiters.get(key, ()):
            queue.put_nowait(envelope)


class JobFollower:
    """A job's state as a waiting request folds it from the live events it receives."""

    def __init__(self, state: JobState) -> None:
        self.state = state

    def apply(self, envelope: Envelope) -> bool:
        """Fold one live envelope; False when an earlier event of the job was missed.

        Envelopes that are not request events (progress, for instance) and events
        already folded change nothing.
        """
        if not envelope.type.startswith(JOB_EVENT_PREFIX) or envelope.sequence <= self.state.sequence:
            return True
        if envelope.sequence != self.state.sequence + 1 or REGISTRY.get(envelope.type) is None:
            return False
        state = evolve(self.state, REGISTRY.decode(envelope), envelope.sequence)
        if state is not None:
            self.state = state
        return True

    def catch_up(self, state: JobState | None) -> None:
        """Take a state read from the read model when it is further along."""
        if state is not None and state.sequence > self.state.sequence:
            self.state = state


class JobProjection:
    """Folds request events into `gateway_jobs`: one revision per event sequence.

    Revision k of a job is its state after its k-th request event, written by insert
    (libs.stores.revisions), so a redelivered event finds its revision taken and
    changes nothing. Revision 0 is the state the gateway seeds when it creates the job.
    """

    def __init__(self, documents: DocumentStore, catalog: ImageCatalog | None = None) -> None:
        self._docs = documents
        self._states = RevisionLog(documents, JOBS)
        self._catalog = catalog or ImageCatalog(documents)
        self._recent: RecentMap[str, JobState] = RecentMap(CACHED_STATES)
        """The latest state this replica wrote per job."""

    async def __call__(self, envelope: Envelope, record: Record) -> None:
        if REGISTRY.get(envelope.type) is None:
            return
        event = REGISTRY.decode(envelope)
        try:
            # The state this replica wrote last is current if this event is the very next
            # one; anything else (a rebalance, a redelivery) reads what the store holds.
            current = self._recent.get(envelope.aggregate_id)
            if current is None or current.sequence + 1 != envelope.sequence:
                current = await self.get(envelope.aggregate_id)
            if current is not None and current.sequence >= envelope.sequence:
                return
            if isinstance(event, JobAccepted) and current is None:
                # Revision 0 is the gateway's seed; a job that came without one (published to the
                # command topic by another producer) gets it from the event, as a rebuild does.
                await self._states.append(event.job_id, 0, accepted_seed(event).model_dump(mode="json"))
            state = evolve(current, event, envelope.sequence)
            if state is not None and isinstance(event, JobCompleted):
                # Before the state: a redelivery after a crash here finds the state not yet
                # written and records the (idempotent) catalog entries again.
                await self._catalog.record(catalog_entries(state))
            if state is not None:
                await self._states.append(state.job_id, envelope.sequence, state.model_dump(mode="json"))
                self._recent.put(state.job_id, state)
        except StoreUnavailable as exc:
            raise TransientError(str(exc)) from exc

    async def get(self, job_id: str) -> JobState | None:
        """The job's state as far as the read model knows."""
        _, doc = await self._states.latest(job_id)
        return None if doc is None else JobState.model_validate(doc)

    async def recent(self, limit: int) -> list[str]:
        """The ids of the latest `limit` jobs of any account, newest first.

        Every job has revision 0 (the gateway that took it seeded it, or its `JobAccepted`
        did) or, in read models written before that, revision 1, so the newest of each of
        those two revisions, by id (job ids are ULIDs), name the newest jobs: two equality
        queries instead of a read of every revision.
        """
        found = await asyncio.gather(
            *(self._docs.find(JOBS, {"sequence": seq}, sort=[("_id", -1)], limit=limit) for seq in (0, 1))
        )
        return sorted({str(doc["job_id"]) for docs in found for doc in docs}, reverse=True)[:limit]

    async def seed(self, state: JobState) -> None:
        """Record a job the gateway just created (revision 0), so status reads never 404."""
        data: dict[str, Any] = state.model_dump(mode="json")
        await self._states.append(state.job_id, 0, data)
        self._recent.put(state.job_id, state)
