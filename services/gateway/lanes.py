"""The gateway's view of the lanes: bounded backlogs, wait estimates, deferral, metrics.

Every second the gateway reads each lane's waiting and taken jobs from Kafka's offsets
(`libs.bus.offsets`). From them it knows:

- whether a lane is full: beyond its bound (`lane_max_waiting` in infra/topics.yaml,
  or the gateway setting `lane_max_waiting`) a new job is refused with 503 and a
  `retry-after` of the time the pool needs to drain the excess at its current rate.
  The job is not taken, so nothing is lost; the client retries. Jobs this gateway
  admitted since the last reading count as waiting, so a burst between two readings
  cannot overshoot the bound by more than other replicas' admissions;
- the drain rate: jobs taken per second over the last `DRAIN_WINDOW_S`;
- a queued job's estimated wait: the jobs waiting in its lane over the drain rate;
- whether a queued job is deferred: its lane is held back for higher-priority lanes
  (a decoder reported it paused) or its lane's backlog takes longer than
  `DEFERRED_AFTER_S` to drain.

Which lanes decoders hold back comes from their heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from libs.bus.offsets import LaneCounts, LaneOffsets
from libs.events.schemas import LaneLoad
from libs.lanes import Lane, lanes
from services.gateway.refusals import Refusal

log = logging.getLogger(__name__)

DRAIN_WINDOW_S = 20.0
"""The drain rate is the jobs taken over this many seconds (the latest readings)."""
DEFERRED_AFTER_S = 5.0
"""A queued job of a lower-priority lane counts as deferred once its lane needs longer than this to drain."""
UNKNOWN_DRAIN_RETRY_S = 30
"""retry-after when a full lane drained nothing lately (no rate to divide by)."""
MAX_RETRY_AFTER_S = 300


@dataclass(frozen=True)
class LaneFigures:
    """One lane now, as this gateway sees it."""

    lane: str
    waiting: int
    taken: int
    drain_per_s: float
    paused: bool
    rejected: int
    max_waiting: int | None
    estimated_wait_s: float | None


class LaneMonitor:
    """Follows the lanes' offsets; admits or refuses jobs; answers wait estimates.

    Args:
        source: Reads the lanes' counts; None turns the monitor off (every job admitted,
            no estimates), for gateways wired without Kafka.
        bounds: Per-lane waiting bounds that override the declared ones.
        paused: The lanes decoders currently hold back (from their heartbeats).
        clock: Monotonic seconds.
        interval_s: Seconds between readings.
    """

    def __init__(
        self,
        source: LaneOffsets | None,
        bounds: dict[str, int] | None = None,
        paused: Callable[[], set[str]] = set,
        clock: Callable[[], float] = time.monotonic,
        interval_s: float = 1.0,
    ) -> None:
        self._source = source
        self._lanes: dict[str, Lane] = lanes()
        self._bounds = {name: (bounds or {}).get(name, lane.max_waiting) for name, lane in self._lanes.items()}
        self._paused = paused
        self._clock = clock
        self._interval_s = interval_s
        self._counts: dict[str, LaneCounts] = {}
        self._history: dict[str, deque[tuple[float, int]]] = {name: deque() for name in self._lanes}
        self._admitted: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()

    async def refresh(self) -> None:
        """Reads the lanes' counts once (admissions since the last reading are in them now)."""
        if self._source is None:
            return
        counts = await self._source.read()
        now = self._clock()
        self._counts = counts
        self._admitted.clear()
        for name, figures in counts.items():
            history = self._history.setdefault(name, deque())
            history.append((now, figures.taken))
            while len(history) > 2 and now - history[1][0] >= DRAIN_WINDOW_S:
                history.popleft()

    async def follow(self, stop: asyncio.Event) -> None:
        """Refreshes every interval until stopped; a failed reading keeps the last figures."""
        while not stop.is_set():
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001 - Kafka away: keep the last figures, try again
                log.warning("lane offsets not read: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._interval_s)

    def waiting(self, lane: str) -> int:
        """Jobs waiting in the lane: the last reading plus what this gateway admitted since."""
        counts = self._counts.get(lane)
        return (counts.waiting if counts is not None else 0) + self._admitted[lane]

    def drain_per_s(self, lane: str) -> float:
        """Jobs the lane's pool took per second over the latest readings (0 when unknown)."""
        history = self._history.get(lane)
        if not history or len(history) < 2:
            return 0.0
        (t0, taken0), (t1, taken1) = history[0], history[-1]
        return max(0.0, (taken1 - taken0) / (t1 - t0)) if t1 > t0 else 0.0

    def estimated_wait_s(self, lane: str) -> float | None:
        """Seconds until the lane's current backlog is taken, at the current drain rate.

        None when jobs wait but nothing drained lately (no rate to go by).
        """
        waiting = self.waiting(lane)
        if waiting == 0:
            return 0.0
        rate = self.drain_per_s(lane)
        return waiting / rate if rate > 0 else None

    def deferred(self, lane: str) -> bool:
        """Whether a job queued in this lane now waits behind higher-priority work."""
        declared = self._lanes.get(lane)
        if declared is None or declared.priority == 0 or self.waiting(lane) == 0:
            return False
        if lane in self._paused():
            return True
        wait = self.estimated_wait_s(lane)
        return wait is None or wait > DEFERRED_AFTER_S

    def take(self, lane: str) -> Refusal | None:
        """Takes a job into the lane, or refuses it when the lane is full.

        Returns:
            None when taken; else a 503 `lane_full` with `retry-after` (seconds for the pool
            to drain the excess).
        """
        bound = self._bounds.get(lane)
        waiting = self.waiting(lane)
        if bound is not None and waiting >= bound:
            self._rejected[lane] += 1
            rate = self.drain_per_s(lane)
            excess = waiting - bound + 1
            retry = math.ceil(excess / rate) if rate > 0 else UNKNOWN_DRAIN_RETRY_S
            retry = min(max(retry, 1), MAX_RETRY_AFTER_S)
            return Refusal(
                503,
                f"The {lane} lane is at capacity ({waiting} jobs waiting for a renderer); "
                f"please retry after {retry} seconds.",
                code="lane_full",
                headers={"retry-after": str(retry)},
            )
        self._admitted[lane] += 1
        return None

    def figures(self) -> list[LaneFigures]:
        """Every lane now."""
        paused = self._paused()
        return [
            LaneFigures(
                lane=name,
                waiting=self.waiting(name),
                taken=self._counts[name].taken if name in self._counts else 0,
                drain_per_s=self.drain_per_s(name),
                paused=name in paused,
                rejected=self._rejected[name],
                max_waiting=self._bounds.get(name),
                estimated_wait_s=self.estimated_wait_s(name),
            )
            for name in self._lanes
        ]

    def report(self) -> dict[str, LaneLoad]:
        """What the gateway's heartbeat says of the lanes: the jobs it turned away."""
        return {name: LaneLoad(rejected=self._rejected[name]) for name in self._lanes}
