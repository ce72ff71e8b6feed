"""The gateway's job read model (`gateway_jobs`): each job's view (libs.readmodels.view)
each time what it shows changes.

The gateway's replicas share a consumer group that folds the request events into it
(`JobProjection`), and a gateway seeds a job's revision 0 when it creates the job, so
job status reads never miss a job; finished images go into the image catalog
(libs.readmodels.catalog) on the way. `darkroom rebuild` replays the request events
through the same class.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from libs.bus import Record, TransientError
from libs.events import REGISTRY, Envelope, Event
from libs.events.schemas import (
    JobAccepted,
    JobCompleted,
)
from libs.readmodels.catalog import ImageCatalog
from libs.readmodels.view import JobView, accepted_seed, project
from libs.recent import RecentMap
from libs.stores.ports import DocumentStore, StoreUnavailable
from libs.stores.revisions import RevisionLog

JOBS = "gateway_jobs"
CACHED_STATES = 10_000
"""How many jobs' latest states a replica keeps (those it folded), so a job's next event needs no read."""
FOLD_TRIES = 5
"""How often an event is folded again on top of what another writer (a replica around a
rebalance) took its revision with, before the record is retried as a transient failure."""


@dataclass(frozen=True)
class _Folded:
    """A job's latest state as this replica folded it, and the revision that stores what it shows."""

    revision: int
    state: JobView


def shows_the_same(before: JobView, after: JobView) -> bool:
    """Whether two states of a job differ in nothing but the event sequence they follow (an
    event such as `JobContentCleared` or `JobImageStored` changes no field the read side shows)."""
    return after.model_copy(update={"sequence": before.sequence}) == before


class JobProjection:
    """Folds request events into `gateway_jobs`: a new revision when the job's view changes.

    Revisions are numbered 0, 1, 2, ... and written by insert (libs.stores.revisions); each
    holds the `sequence` of the event it follows. Revision 0 is the state the gateway seeds
    when it creates the job. An event that changes nothing the view shows (only its
    sequence) writes nothing: about half of a job's events, whose revisions would cost the
    document store a write each and tell a reader nothing. A redelivered event is at or
    below the sequence already folded and changes nothing; two writers of one revision (a
    rebalance) are told apart by the insert, and the loser folds again on top of the
    winner's. Read models written when every event took a revision (revision = sequence)
    read the same way.
    """

    def __init__(self, documents: DocumentStore, catalog: ImageCatalog | None = None) -> None:
        self._docs = documents
        self._states = RevisionLog(documents, JOBS)
        self._catalog = catalog or ImageCatalog(documents)
        self._recent: RecentMap[str, _Folded] = RecentMap(CACHED_STATES)
        """The latest state this replica folded per job (ahead of the store by the events
        that showed nothing new since its last write)."""

    async def __call__(self, envelope: Envelope, record: Record) -> None:
        if REGISTRY.get(envelope.type) is None:
            return
        event = REGISTRY.decode(envelope)
        try:
            for _ in range(FOLD_TRIES):
                if await self._fold(envelope, event):
                    return
        except StoreUnavailable as exc:
            raise TransientError(str(exc)) from exc
        raise TransientError(f"another writer kept taking the next revision of job {envelope.aggregate_id}")

    async def _fold(self, envelope: Envelope, event: Event) -> bool:
        """Fold one event; False when another writer took the revision it was to write."""
        job_id = envelope.aggregate_id
        # The state this replica folded last is current if this event is the very next one;
        # anything else (a rebalance, a redelivery, a restart) reads what the store holds.
        folded = self._recent.get(job_id)
        if folded is None or folded.state.sequence + 1 != envelope.sequence:
            folded = await self._read(job_id)
        if folded is not None and folded.state.sequence >= envelope.sequence:
            return True
        if isinstance(event, JobAccepted) and folded is None:
            # Revision 0 is the gateway's seed; a job that came without one (published to the
            # command topic by another producer) gets it from the event, as a rebuild does.
            seed = accepted_seed(event)
            if not await self._states.append(event.job_id, 0, seed.model_dump(mode="json")):
                return False
            folded = _Folded(0, seed)
        state = project(None if folded is None else folded.state, event, envelope.sequence)
        if state is None or folded is None:
            return True
        if isinstance(event, JobCompleted):
            # Before the state: a redelivery after a crash here finds the state not yet
            # written and records the (idempotent) catalog entries again.
            await self._catalog.record_job(state)
        revision = folded.revision
        if not shows_the_same(folded.state, state):
            revision += 1
            if not await self._states.append(job_id, revision, state.model_dump(mode="json")):
                self._recent.pop(job_id)
                return False
        self._recent.put(job_id, _Folded(revision, state))
        return True

    async def _read(self, job_id: str) -> _Folded | None:
        revision, doc = await self._states.latest(job_id)
        return None if doc is None else _Folded(revision, JobView.model_validate(doc))

    async def get(self, job_id: str) -> JobView | None:
        """The job's state as the read model stores it (its `sequence` may lag the events
        folded by those that changed nothing it shows)."""
        folded = await self._read(job_id)
        return None if folded is None else folded.state

    async def recent(self, limit: int) -> list[str]:
        """The ids of the latest `limit` jobs of any account, newest first.

        Every job has revision 0 (the gateway that took it seeded it, or its `JobAccepted`
        did), which follows sequence 0, or, in read models written before that, a revision
        following sequence 1, so the newest of those, by id (job ids are ULIDs), name the
        newest jobs: two equality queries instead of a read of every revision.
        """
        found = await asyncio.gather(
            *(self._docs.find(JOBS, {"sequence": seq}, sort=[("_id", -1)], limit=limit) for seq in (0, 1))
        )
        return sorted({str(doc["job_id"]) for docs in found for doc in docs}, reverse=True)[:limit]

    async def seed(self, state: JobView) -> None:
        """Record a job the gateway just created (revision 0), so status reads never 404."""
        data: dict[str, Any] = state.model_dump(mode="json")
        await self._states.append(state.job_id, 0, data)
        self._recent.put(state.job_id, _Folded(0, state))
