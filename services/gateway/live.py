"""Live events for requests in flight.

`LiveEvents` handles the request-event, progress and account-event records of the
gateway's watch feed (a group-less reader, `services.gateway.app.watched_topics`): every
gateway replica sees every event from the moment it started, and hands those of the
jobs (or sign-ups) it is waiting on to the waiting request. A waiting request folds its
job's events itself (`JobFollower`), so it needs no read of the read model unless it
notices it missed an event. The read model itself, which answers job status and is the
fallback when a live event was missed, is folded by `libs.readmodels.jobs.JobProjection`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from libs import topics
from libs.bus import Record
from libs.events import REGISTRY, Envelope
from libs.events.schemas import RenderProgressed
from libs.readmodels.view import JobView, project
from libs.recent import RecentMap

JOB_EVENT_PREFIX = "images.job_"
"""The type prefix of request events, the ones a job's state is folded from."""


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

    def __init__(self, state: JobView) -> None:
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
        state = project(self.state, REGISTRY.decode(envelope), envelope.sequence)
        if state is not None:
            self.state = state
        return True

    def catch_up(self, state: JobView | None) -> None:
        """Take a state read from the read model when it is further along."""
        if state is not None and state.sequence > self.state.sequence:
            self.state = state
