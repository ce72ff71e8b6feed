"""The gateway's job read model (`gateway_jobs`): each job's view (libs.readmodels.view)
after each of its events.

The gateway's replicas share a consumer group that folds the request events into it
(`JobProjection`), and a gateway seeds a job's revision 0 when it creates the job, so
job status reads never miss a job; finished images go into the image catalog
(libs.readmodels.catalog) on the way. `darkroom rebuild` replays the request events
through the same class.
"""

from __future__ import annotations

import asyncio
from typing import Any

from libs.bus import Record, TransientError
from libs.events import REGISTRY, Envelope
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
"""How many jobs' latest states a replica keeps (those it wrote), so a job's next event needs no read."""


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
        self._recent: RecentMap[str, JobView] = RecentMap(CACHED_STATES)
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
            state = project(current, event, envelope.sequence)
            if state is not None and isinstance(event, JobCompleted):
                # Before the state: a redelivery after a crash here finds the state not yet
                # written and records the (idempotent) catalog entries again.
                await self._catalog.record_job(state)
            if state is not None:
                await self._states.append(state.job_id, envelope.sequence, state.model_dump(mode="json"))
                self._recent.put(state.job_id, state)
        except StoreUnavailable as exc:
            raise TransientError(str(exc)) from exc

    async def get(self, job_id: str) -> JobView | None:
        """The job's state as far as the read model knows."""
        _, doc = await self._states.latest(job_id)
        return None if doc is None else JobView.model_validate(doc)

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

    async def seed(self, state: JobView) -> None:
        """Record a job the gateway just created (revision 0), so status reads never 404."""
        data: dict[str, Any] = state.model_dump(mode="json")
        await self._states.append(state.job_id, 0, data)
        self._recent.put(state.job_id, state)
