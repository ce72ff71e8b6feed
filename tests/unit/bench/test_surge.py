"""`make surge`'s pure parts: the launch's shape, arrivals, records, the server's fold, the report."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from libs.events import Envelope
from libs.events.schemas import GenerateImage, ImageRef, JobAccepted, JobCompleted, JobQueued, Usage
from tests.bench.surge_load import (
    DRAIN,
    Account,
    FreePool,
    RequestRecord,
    ServerJobs,
    Shape,
    arrivals,
    deferral_times,
    merge_server_jobs,
    parse_decoder_metrics,
    parse_lane_metrics,
    schedule,
    steady,
)
from tests.bench.surge_plots import plot_all
from tests.bench.surge_report import (
    batching,
    bucket_counts,
    build_report,
    cpu_use,
    deferred_free,
    format_summary,
    lost,
    p99_ratio,
    phase_stats,
    retry_after,
    summarize,
    targets,
    window_p99_ratio,
    windowed_percentile,
)
from tests.helpers import job_spec

SHAPE = Shape(
    baseline_s=10,
    spike_s=20,
    decay_s=10,
    drain_s=30,
    baseline={"pro": 1.0, "free": 1.0},
    spike={"pro": 1.0, "free": 10.0, "signup": 2.0},
)


def record(
    key: str, tier: str, phase: str, submit: float, status: int | None, end: float | None, **kw: object
) -> RequestRecord:
    return RequestRecord(key, tier, tier, phase, submit, status=status, end_s=end, **kw)  # type: ignore[arg-type]


# --- the shape and its arrivals ----------------------------------------------------------


def test_phases_follow_each_other_and_rates_decay_linearly() -> None:
    assert [(n, s, e) for n, s, e in SHAPE.phases()] == [
        ("baseline", 0, 10),
        ("spike", 10, 30),
        ("decay", 30, 40),
        (DRAIN, 40, 70),
    ]
    assert [SHAPE.phase_at(t) for t in (0, 9.99, 10, 29.9, 30, 40, 100)] == [
        "baseline",
        "baseline",
        "spike",
        "spike",
        "decay",
        DRAIN,
        DRAIN,
    ]
    assert SHAPE.rate("free", 5) == 1.0 and SHAPE.rate("free", 15) == 10.0
    assert SHAPE.rate("free", 35) == pytest.approx(5.5)  # halfway down the decay
    assert SHAPE.rate("signup", 5) == 0.0 and SHAPE.rate("signup", 30) == 2.0
    assert SHAPE.rate("free", 45) == 0.0  # no arrivals in the drain
    assert SHAPE.spike_factor() == 12.0


def test_arrivals_follow_the_rate_and_repeat_with_the_seed() -> None:
    times = arrivals(SHAPE, "free", random.Random(1))
    assert times == sorted(times) and all(0 <= t < SHAPE.load_s for t in times)
    spike = sum(10 <= t < 30 for t in times)
    baseline = sum(t < 10 for t in times)
    assert 150 <= spike <= 250  # 10/s for 20 s
    assert baseline <= 25  # 1/s for 10 s
    assert arrivals(SHAPE, "api", random.Random(1)) == []  # a stream with no rate
    assert schedule(SHAPE, seed=3) == schedule(SHAPE, seed=3) != schedule(SHAPE, seed=4)
    merged = schedule(SHAPE, seed=3)
    assert merged == sorted(merged) and {s for _, s in merged} == {"pro", "free", "signup"}


def test_a_steady_stream_meets_the_spike_with_its_baseline_arrivals() -> None:
    times = arrivals(SHAPE, "pro", random.Random(2))
    baseline = [t for t in times if t < SHAPE.baseline_s]
    assert 0 < len(baseline) <= 25 and times == sorted(times) and all(t < SHAPE.load_s for t in times)
    for k in (1, 2, 3):  # the spike (10-30 s) and the decay (30-40 s) repeat the baseline
        shifted = [t - k * SHAPE.baseline_s for t in times if k * SHAPE.baseline_s <= t < (k + 1) * SHAPE.baseline_s]
        assert shifted == pytest.approx(baseline)
    assert steady(SHAPE, "pro") and not steady(SHAPE, "free") and not steady(SHAPE, "signup")


def test_the_free_pool_gives_each_account_one_job_at_a_time_and_spaces_its_requests() -> None:
    pool = FreePool(spacing_s=10)
    for i in range(2):
        pool.add(Account(f"acct_{i}", "free", f"key{i}"))
    first, second = pool.take(0.0), pool.take(0.0)
    assert first is not None and second is not None and first is not second
    assert pool.take(0.0) is None  # both busy
    pool.release(first)
    assert pool.take(5.0) is None  # free again, but within its spacing
    assert pool.take(10.0) is first


def test_lane_metrics_are_read_from_prometheus_text() -> None:
    text = """# HELP darkroom_lane_waiting Jobs waiting in a lane.
# TYPE darkroom_lane_waiting gauge
darkroom_lane_waiting{lane="free"} 118
darkroom_lane_waiting{lane="pro"} 0
darkroom_lane_taken_total{pool="consumer",lane="free"} 4.2e2
darkroom_lane_paused{lane="free"} 1
darkroom_lane_rejected_total{lane="free"} 37
process_cpu_seconds_total 12.5
"""
    assert parse_lane_metrics(text) == {
        "free": {"waiting": 118.0, "taken_total": 420.0, "paused": 1.0, "rejected_total": 37.0},
        "pro": {"waiting": 0.0},
    }
    assert parse_lane_metrics("<html>not found</html>") == {}


# --- records and the server's account -----------------------------------------------------


def test_a_record_is_accepted_terminal_and_completed_by_what_was_seen() -> None:
    done = record("a", "pro", "baseline", 1.0, 200, 2.5, final_status="completed")
    assert done.accepted and done.terminal and done.completed and done.latency_s == 1.5
    rejected = record("b", "free", "spike", 1.0, 503, 1.1, retry_after="3")
    assert not rejected.accepted and not rejected.terminal and rejected.latency_s is None
    open_call = record("c", "free", "spike", 1.0, None, None, server_accepted=True)
    assert open_call.accepted and not open_call.terminal  # admitted, never ended: lost
    later = record("d", "free", "spike", 1.0, 202, None, final_status="failed")
    assert later.accepted and later.terminal and not later.completed


def _envelope(
    event: GenerateImage | JobAccepted | JobQueued | JobCompleted, job_id: str, seq: int, at: datetime
) -> Envelope:
    return Envelope.wrap(event, aggregate_id=job_id, sequence=seq).model_copy(update={"time": at})


def test_the_server_fold_tells_which_jobs_were_admitted_and_when_they_ended() -> None:
    origin = datetime(2026, 1, 1, tzinfo=UTC)
    spec = job_spec(tier="free", user="surge-00001")
    usage = Usage(input_tokens=1, text_tokens=1, image_tokens=0, output_tokens=1)
    image = ImageRef(
        index=0, image_id="img", object_key="k", tokens_key="t", content_type="image/png", size_bytes=1, sha256="s"
    )
    at = [origin + timedelta(seconds=s) for s in (1, 1.2, 1.3, 4)]
    jobs = ServerJobs(origin=origin.timestamp())
    for envelope in [
        _envelope(GenerateImage(job_id="job_1", spec=spec, created_at=at[0]), "job_1", 0, at[0]),
        _envelope(JobAccepted(job_id="job_1", spec=spec, created_at=at[0]), "job_1", 1, at[1]),
        _envelope(JobQueued(job_id="job_1", lane="free", topic="t", partition=8), "job_1", 2, at[2]),
        _envelope(JobAccepted(job_id="job_2", spec=job_spec(user="surge-00002"), created_at=at[0]), "job_2", 1, at[1]),
        _envelope(JobCompleted(job_id="job_1", images=[image], usage=usage), "job_1", 3, at[3]),
    ]:
        jobs.apply(envelope)
    jobs.apply(Envelope(type="someone.elses_event", aggregate_id="x"))  # ignored
    one, two = jobs.jobs["job_1"], jobs.jobs["job_2"]
    assert (one.status, one.accepted_s, one.terminal_s, one.tier) == ("completed", 1.0, 4.0, "free")
    assert one.queued_s == pytest.approx(1.3) and one.started_s is None
    assert (two.status, two.terminal_s) == ("queued", None)

    records = [
        record("surge-00001", "free", "spike", 0.9, None, None),
        record("surge-00002", "pro", "spike", 0.9, None, None),
    ]
    merge_server_jobs(records, jobs.by_user(), deferred_at=[0.5, 2.0])
    assert records[0].job_id == "job_1" and records[0].completed and records[0].server_terminal_s == 4.0
    assert records[0].deferred  # queued at 1.3 s, still waiting when the lane showed deferred at 2 s
    assert not records[1].deferred  # a paid job is never deferred
    assert records[1].accepted and not records[1].terminal


def test_deferral_times_follow_the_gateways_rule() -> None:
    def sample(t: float, **free: float) -> dict[str, object]:
        return {"t": t, "source": "metrics", "lanes": {"free": free}}

    samples = [
        sample(1, waiting=0, paused=1, estimated_wait_seconds=0),  # nothing waits
        sample(2, waiting=10, paused=1, estimated_wait_seconds=2),  # held back for paid lanes
        sample(3, waiting=10, paused=0, estimated_wait_seconds=2),  # drains fast enough
        sample(4, waiting=80, paused=0, estimated_wait_seconds=30),  # slow to drain
        sample(5, waiting=80, paused=0),  # drains nothing: no estimate
        {"t": 6, "source": "kafka", "lanes": {"free": {"waiting": 80.0}}},  # the fallback cannot tell
    ]
    assert deferral_times(samples, "free", after_s=5) == [2.0, 4.0, 5.0]
    assert deferral_times(samples, "pro", after_s=5) == []


# --- the report ----------------------------------------------------------------------------


def test_phase_stats_count_every_outcome() -> None:
    stats = phase_stats(
        [
            record("a", "free", "spike", 0, 200, 1.0),
            record("b", "free", "spike", 0, 200, 3.0),
            record("c", "free", "spike", 0, 503, 0.1, retry_after="2"),
            record("d", "free", "spike", 0, 503, 0.1),
            record("e", "free", "spike", 0, 429, 0.1),
            record("f", "free", "spike", 0, 500, 0.1),
            record("g", "free", "spike", 0, None, None, server_accepted=True),
        ]
    )
    assert stats == {
        "requests": 7,
        "accepted": 3,
        "completed": 2,
        "rejected_503": 2,
        "rejected_503_with_retry_after": 1,
        "rate_limited_429": 1,
        "other_errors": 1,
        "no_answer": 1,
        "lost": 1,
        "p50_s": 2.0,
        "p99_s": 2.98,
    }
    assert phase_stats([])["p99_s"] is None


def test_p99_ratios_pass_miss_or_cannot_tell() -> None:
    base = [record(f"b{i}", "pro" if i % 2 else "plus", "baseline", 0, 200, 1.0) for i in range(10)]
    calm = [record(f"s{i}", "pro", "spike", 0, 200, 1.4) for i in range(10)]
    slow = [record(f"s{i}", "plus", "spike", 0, 200, 2.0) for i in range(10)]
    assert p99_ratio(base + calm, ("pro", "plus"), 1.5)["verdict"] == "PASS"
    missed = p99_ratio(base + slow, ("pro", "plus"), 1.5)
    assert (missed["verdict"], missed["ratio"], missed["spike_samples"]) == ("MISS", 2.0, 10)
    assert p99_ratio(base, ("pro", "plus"), 1.5)["verdict"] == "n/a"  # no paid job completed in the spike
    api = [record("b", "api", "baseline", 0, 200, 1.0), record("s", "api", "spike", 0, 200, 1.2004)]
    just_over = p99_ratio(api, ("api",), 1.2)
    assert just_over["verdict"] == "MISS" and f"{just_over['ratio']:.2f}" == "1.20"  # judged before rounding


def test_deferred_free_jobs_are_those_seen_deferred_or_waiting_at_the_spike_end() -> None:
    records = [
        record("quick", "free", "spike", 12, 200, 14),  # ended inside the spike: not deferred
        record("waited", "free", "spike", 20, 200, 45),  # waited past the spike's end (30 s)
        record("told", "free", "spike", 12, 200, 20, deferred=True),  # the server said deferred
        record("never", "free", "spike", 25, None, None, server_accepted=True),
        record("rejected", "free", "spike", 25, 503, 25.1, retry_after="5"),
        record("paid", "pro", "spike", 25, 200, 50),
    ]
    result = deferred_free(records, SHAPE)
    assert result["deferred"] == 3 and result["seen_in_status_deferred"] == 1
    assert result["completed"] == 2 and result["completed_after_spike"] == 1
    assert result["not_completed"] == ["never"] and result["verdict"] == "MISS"
    assert deferred_free(records[:1], SHAPE)["verdict"] == "n/a"


def test_retry_after_and_lost_verdicts() -> None:
    with_header = record("a", "free", "spike", 1, 503, 1.1, retry_after="4", error_code="lane_full")
    without = record("b", "free", "spike", 1, 503, 1.1)
    assert retry_after([with_header])["verdict"] == "PASS"
    assert retry_after([with_header, without])["without_retry_after"] == ["b"]
    assert retry_after([])["verdict"] == "n/a"
    assert lost([with_header])["verdict"] == "PASS"
    assert lost([record("c", "pro", "spike", 1, 202, None)]) == {
        "accepted": 1,
        "lost": 1,
        "keys": ["c"],
        "verdict": "MISS",
    }


def test_buckets_windows_and_cpu_per_phase() -> None:
    assert bucket_counts([0.1, 0.9, 1.5, 2.99, 3.0, -1], end_s=3, width_s=1) == [2, 1, 1]
    assert windowed_percentile([(0.5, 1.0), (0.6, 3.0), (2.5, 7.0)], end_s=3, width_s=1, q=50) == [2.0, None, 7.0]
    snapshots = [
        ("baseline", 0.0, {"kafka": 1.0, "gateway": 0.0}),
        ("spike", 10.0, {"kafka": 3.0, "gateway": 5.0}),
        ("end", 20.0, {"kafka": 4.0, "gateway": 15.0}),
    ]
    use = cpu_use(snapshots)
    assert use == {"baseline": {"gateway": 0.5, "kafka": 0.2}, "spike": {"gateway": 1.0, "kafka": 0.1}}
    assert list(use["baseline"]) == ["gateway", "kafka"]  # largest first


def test_the_report_is_json_with_a_printed_summary_and_plots(tmp_path: Path) -> None:
    records = [
        record("b1", "pro", "baseline", 1, 200, 2.0),
        record("b2", "api", "baseline", 2, 200, 2.5),
        record("s1", "pro", "spike", 12, 200, 13.2),
        record("s2", "api", "spike", 13, 200, 13.6),
        record("s3", "free", "spike", 14, 503, 14.1, retry_after="3", error_code="lane_full"),
        record("s4", "free", "spike", 15, 200, 35.0),
    ]
    samples = [{"t": float(t), "source": "kafka", "lanes": {"free": {"waiting": float(t)}}} for t in range(40)]
    report = build_report(
        meta={"run": {"mode": "quick"}},
        shape=SHAPE,
        records=records,
        signups=[{"submit_s": 12.0, "status": 201, "latency_s": 0.2, "reason": "spike"}],
        samples=samples,
        cpu=cpu_use([("baseline", 0.0, {"kafka": 0.0}), ("end", 10.0, {"kafka": 2.0})]),
        server={"jobs_admitted": 5},
    )
    assert summarize(records)["free"]["spike"]["rejected_503"] == 1
    assert report["targets"]["every_503_has_retry_after"]["verdict"] == "PASS"
    assert report["targets"]["deferred_free_completed_after_spike"]["completed_after_spike"] == 1
    json.dumps(report)
    text = format_summary(report)
    assert "[PASS] zero accepted jobs lost: 0 lost of 5 accepted" in text
    assert "[MISS] paid p99 spike/baseline 1.200x" not in text and "paid p99 spike/baseline 1.200x" in text
    assert "every 503 carries retry-after: 1 of 1 (codes: lane_full)" in text
    paths = plot_all(report, tmp_path)
    assert [p.name for p in paths] == ["latency.png", "backlog.png", "throughput.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)


def test_the_report_shows_batch_occupancy_per_phase_and_preemptions_per_lane() -> None:
    page = (
        'darkroom_fleet_decoder_batch_occupancy{instance="decoder-1",pool="consumer",model="darkroom-mini"} 0.5\n'
        'darkroom_fleet_decoder_batch_limit_images{instance="decoder-1",pool="consumer",model="darkroom-mini"} 4\n'
        'darkroom_lane_preempted_total{lane="free"} 3\n'
    )
    decoders = parse_decoder_metrics(page)
    assert decoders == {"decoder-1": {"pool": "consumer", "batch_occupancy": 0.5, "batch_limit_images": 4.0}}
    samples = [
        {"t": 5.0, "lanes": {}, "decoders": {"d1": {"pool": "consumer", "batch_occupancy": 0.25}}},
        {"t": 15.0, "lanes": parse_lane_metrics(page), "decoders": decoders},
        {"t": 16.0, "lanes": {}, "decoders": {"d1": {"pool": "consumer", "batch_occupancy": 1.0}}},
    ]

    figures = batching(samples, SHAPE)

    assert figures == {
        "occupancy_by_pool_and_phase": {"consumer": {"baseline": 0.25, "spike": 0.75}},
        "preempted_by_lane": {"free": 3},
    }


def test_a_job_completed_twice_is_one_with_two_distinct_completion_events() -> None:
    origin = datetime(2026, 1, 1, tzinfo=UTC)
    usage = Usage(input_tokens=1, text_tokens=1, image_tokens=0, output_tokens=1)
    image = ImageRef(
        index=0, image_id="img", object_key="k", tokens_key="t", content_type="image/png", size_bytes=1, sha256="s"
    )
    jobs = ServerJobs(origin=origin.timestamp())
    jobs.apply(_envelope(JobAccepted(job_id="job_1", spec=job_spec(), created_at=origin), "job_1", 1, origin))
    completed = _envelope(JobCompleted(job_id="job_1", images=[image], usage=usage), "job_1", 2, origin)
    jobs.apply(completed)
    jobs.apply(completed)  # the same event read twice (a redelivery) is one completion
    assert jobs.completed_twice() == []
    jobs.apply(_envelope(JobCompleted(job_id="job_1", images=[image], usage=usage), "job_1", 3, origin))
    assert jobs.completed_twice() == ["job_1"]


def test_the_failover_window_is_judged_against_the_baseline() -> None:
    base = [record(f"b{i}", "pro", "baseline", i, 200, i + 1.0) for i in range(10)]
    during = [record(f"f{i}", "plus", "spike", 20 + i, 200, 20 + i + 1.8) for i in range(5)]
    later = [record(f"l{i}", "pro", "spike", 40 + i, 200, 40 + i + 5.0) for i in range(5)]
    judged = window_p99_ratio(base + during + later, ("pro", "plus"), 20, 30, 2.0)
    assert (judged["verdict"], judged["ratio"], judged["window_samples"]) == ("PASS", 1.8, 5)
    assert window_p99_ratio(base + later, ("pro", "plus"), 38, 50, 2.0)["verdict"] == "MISS"
    server = {"failover": {"node": "kafka-2", "killed_s": 20.0, "restarted_s": 25.0}, "completed_twice": ["job_9"]}
    found = targets(base + during + later, SHAPE, server)
    assert found["paid_p99_failover_over_baseline"]["window_s"] == [20.0, 35.0]
    halves = found["paid_p99_failover_over_baseline"]
    assert (halves["while_down"]["window_s"], halves["while_down"]["window_samples"]) == ([20.0, 25.0], 5)
    assert (halves["after_restart"]["window_s"], halves["after_restart"]["window_samples"]) == ([25.0, 35.0], 0)
    assert (halves["spike_before_kill"]["window_s"], halves["spike_before_kill"]["window_samples"]) == ([10.0, 20.0], 0)
    text = format_summary(
        build_report(meta={}, shape=SHAPE, records=base + during + later, signups=[], samples=[], cpu={}, server=server)
    )
    assert "paid p99 in the failover/baseline 1.800x (limit 2.0x)" in text
    assert "node down (20-25 s) 1800 ms, 1.800x (5 jobs); back (25-35 s) - ms, - (0 jobs)" in text
    assert "the spike before the kill (10-20 s) - ms (0 jobs)" in text
    before = [record("s0", "plus", "spike", 15, 200, 16.5)]
    control = targets(base + before + during + later, SHAPE, server)["paid_p99_failover_over_baseline"]
    assert (control["spike_before_kill"]["window_p99_s"], control["spike_before_kill"]["window_samples"]) == (1.5, 1)
    assert control["window_samples"] == 5  # the control is not part of the judged window
    assert found["none_completed_twice"] == {"completed_twice": ["job_9"], "verdict": "MISS"}
    assert "paid_p99_failover_over_baseline" not in targets(base, SHAPE, {})
