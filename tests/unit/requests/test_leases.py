"""The lease monitor: deadlines renewed by reports, proposals once they pass."""

from __future__ import annotations

from datetime import UTC, datetime

from libs.events.schemas import ExpireRenderLease
from services.requests.domain import JobAggregate
from services.requests.leases import LeaseMonitor
from tests.helpers import job_spec


def _state(status: str = "rendering", pass_index: int = 1, attempt: int = 0) -> JobAggregate:
    spec = job_spec(account_id="a", prompt="p", model="m")
    return JobAggregate.model_validate(
        {
            "job_id": "job",
            "spec": spec,
            "created_at": datetime(2026, 1, 1, tzinfo=UTC),
            "status": status,
            "pass_index": pass_index,
            "total_passes": 4,
            "attempt": attempt,
        }
    )


def test_a_report_renews_the_deadline_and_silence_proposes_once() -> None:
    now = [0.0]
    leases = LeaseMonitor(lease_s=20, clock=lambda: now[0])
    leases.track(_state(pass_index=1))
    now[0] = 15.0
    leases.track(_state(pass_index=2))
    now[0] = 30.0
    assert leases.expired() == []
    now[0] = 35.0
    assert leases.expired() == [ExpireRenderLease(job_id="job", attempt=0, pass_index=2)]
    assert leases.expired() == [] and "job" not in leases


def test_a_job_no_decoder_holds_is_not_watched() -> None:
    leases = LeaseMonitor(lease_s=20, clock=lambda: 0.0)
    leases.track(_state(pass_index=1))
    for state in (_state("queued"), _state("completed", 4), _state("cancelled"), _state("rendering", 4)):
        leases.track(_state(pass_index=1))
        leases.track(state)
        assert "job" not in leases, state.status
    leases.track(None)
    assert len(leases) == 0
