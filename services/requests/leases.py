"""Render leases: which rendering jobs must hear from their decoder, and by when.

A decoder reports a job when it starts it and after every reported pass (at most two
passes apart: libs.jobs.pass_reported). The requests service
tracks, per job it handles, the deadline of the next report (`RequestsSettings.render_lease_s`
after the last one). When a deadline passes, the monitor proposes `ExpireRenderLease`
on the job's command stream; the proposal is decided against the job's durable state
(`domain.decide`), so a report that raced it, a repeated proposal or a second replica's
proposal changes nothing. The table lives in memory; after a restart it is rebuilt from
the jobs the store holds as rendering (`RequestHandlers.arm_leases`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from libs.events.schemas import ExpireRenderLease
from services.requests.domain import JobAggregate, leased


@dataclass(frozen=True)
class Lease:
    """The report a job waits for: its attempt and pass, and the deadline."""

    attempt: int
    pass_index: int
    deadline: float


class LeaseMonitor:
    """Deadlines of the leased jobs this process saw, and the proposals once they pass.

    Args:
        lease_s: Seconds a decoder may stay silent about a job it renders.
        clock: Monotonic seconds (tests pass their own).
    """

    def __init__(self, lease_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._lease_s = lease_s
        self._clock = clock
        self._leases: dict[str, Lease] = {}
        self._tiers: dict[str, str] = {}

    def track(self, state: JobAggregate | None) -> None:
        """Starts or renews the job's lease after a report, or ends it (queued, done, ended)."""
        if state is None:
            return
        if leased(state):
            self._leases[state.job_id] = Lease(state.attempt, state.pass_index, self._clock() + self._lease_s)
            self._tiers[state.job_id] = state.spec.tier
        else:
            self._leases.pop(state.job_id, None)
            self._tiers.pop(state.job_id, None)

    def tier_of(self, job_id: str) -> str | None:
        """The tier of a job this monitor tracks or proposed to expire (its traffic's topics)."""
        return self._tiers.get(job_id)

    def expired(self) -> list[ExpireRenderLease]:
        """Proposals for the jobs whose deadline passed; each is proposed once per report."""
        now = self._clock()
        due = [(job_id, lease) for job_id, lease in self._leases.items() if lease.deadline <= now]
        for job_id, _ in due:
            del self._leases[job_id]
        return [ExpireRenderLease(job_id=j, attempt=lease.attempt, pass_index=lease.pass_index) for j, lease in due]

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._leases

    def __len__(self) -> int:
        return len(self._leases)
