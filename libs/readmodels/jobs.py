"""The gateway's job read model (`gateway_jobs`): each job's view after each of its events.

`JobView` is what the read side shows of a job (the API's job object, the admin's listing,
a followed request's end): the lifecycle libs.jobs shares with the requests service's
aggregate, and the job's outcome (images, usage, error, model version); `project` folds a
request event into it.

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
from libs.events import REGISTRY, Envelope, Event
from libs.events.schemas import (
    ImageRef,
    JobAccepted,
    JobBlocked,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobRenderStarted,
    Usage,
)
from libs.jobs import JobLifecycle, advance, new_job
from libs.readmodels.catalog import ImageCatalog
from libs.recent import RecentMap
from libs.stores.ports import DocumentStore, StoreUnavailable
from libs.stores.revisions import RevisionLog

JOBS = "gateway_jobs"
CACHED_STATES = 10_000
"""How many jobs' latest states a replica keeps (those it wrote), so a job's next event needs no read."""


class JobView(JobLifecycle):
    """A job as the read side shows it: its lifecycle and its outcome."""

    images: list[ImageRef] = []
    usage: Usage | None = None
    error_code: str | None = None
    error_message: str | None = None
    blocked_stage: str | None = None
    blocked_category: str | None = None
    version: str = ""
    """The model version rendering (or that rendered) the job; empty before a decoder started it."""


def _shown_fields(state: JobView, event: Event) -> dict[str, object]:
    if isinstance(event, JobRenderStarted):
        return {"version": event.version}
    if isinstance(event, JobCompleted):
        return {"images": event.images, "usage": event.usage}
    if isinstance(event, JobBlocked):
        return {
            "error_code": "moderation_blocked",
            "error_message": event.message,
            "blocked_stage": event.stage,
            "blocked_category": event.category,
        }
    if isinstance(event, JobCancelled):
        return {"error_code": "job_cancelled", "error_message": "The job was cancelled."}
    if isinstance(event, JobFailed):
        return {"error_code": event.code, "error_message": event.message}
    return {}


def project(state: JobView | None, event: Event, sequence: int) -> JobView | None:
    """Apply one request event to a job's view (libs.jobs.advance, with the view's own fields).

    Args:
        state: The view before the event (None before JobAccepted).
        event: A request event (other payloads leave the view unchanged).
        sequence: The event's sequence number in the job's stream.

    Returns:
        The new view; None only while the job has not been accepted.
    """
    return advance(JobView, state, event, sequence, _shown_fields)


def accepted_seed(accepted: JobAccepted) -> JobView:
    """A job's revision 0 in the gateway's read model, as its `JobAccepted` gives it: what the
    gateway that took the job seeded, and what a job that reached the requests service without
    a gateway (or a rebuilt read model) gets from the event."""
    return new_job(JobView, accepted.job_id, accepted.spec, accepted.created_at)


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
