"""Bounded lanes on the API: 503 with retry-after when full, deferred jobs, /metrics."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import openai
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from libs import topics
from libs.bus import Record
from libs.bus.offsets import LaneCounts
from libs.events import Envelope
from libs.events.schemas import BatchLoad, LaneLoad, ServiceHeartbeat
from services.gateway import errors
from services.gateway.errors import APIError
from services.gateway.lanes import DEFERRED_AFTER_S, LaneMonitor
from services.gateway.metrics import FleetCollector
from tests.helpers import metric, metric_samples, sdk_client
from tests.unit.gateway.conftest import GatewayUnderTest, key_for


def admit(monitor: LaneMonitor, lane: str) -> None:
    """Takes a place in the lane as the image routes do: a refusal is answered as an API error."""
    refusal = monitor.take(lane)
    if refusal is not None:
        raise errors.refused(refusal)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Source:
    def __init__(self) -> None:
        self.counts: dict[str, LaneCounts] = {}

    async def read(self) -> dict[str, LaneCounts]:
        return dict(self.counts)


async def test_drain_rate_and_wait_come_from_the_taken_jobs_over_time() -> None:
    clock, source = Clock(), Source()
    monitor = LaneMonitor(source, clock=clock)
    source.counts = {"free": LaneCounts(waiting=40, taken=100)}
    await monitor.refresh()
    assert monitor.drain_per_s("free") == 0 and monitor.estimated_wait_s("free") is None
    clock.now += 10
    source.counts = {"free": LaneCounts(waiting=40, taken=120)}
    await monitor.refresh()
    assert monitor.drain_per_s("free") == pytest.approx(2.0)
    assert monitor.estimated_wait_s("free") == pytest.approx(20.0)
    assert monitor.deferred("free"), "a free backlog of 20 s is deferred"
    assert not monitor.deferred("pro"), "paid lanes are never deferred"


async def test_a_full_lane_refuses_with_the_time_it_needs_to_drain() -> None:
    clock, source = Clock(), Source()
    monitor = LaneMonitor(source, bounds={"free": 10}, clock=clock)
    source.counts = {"free": LaneCounts(waiting=8, taken=0)}
    await monitor.refresh()
    clock.now += 4
    source.counts = {"free": LaneCounts(waiting=8, taken=2)}  # 0.5 jobs/s
    await monitor.refresh()
    admit(monitor, "free")
    admit(monitor, "free")  # 10 waiting now, counting this gateway's own admissions
    with pytest.raises(APIError) as refused:
        admit(monitor, "free")
    assert refused.value.status == 503 and refused.value.code == "lane_full"
    assert refused.value.headers["retry-after"] == "2"  # 1 job over the bound at 0.5 jobs/s
    assert monitor.report()["free"].rejected == 1
    admit(monitor, "pro")  # other lanes are not affected


async def test_a_full_lane_that_drains_nothing_still_says_when_to_retry() -> None:
    source = Source()
    monitor = LaneMonitor(source, bounds={"free": 0})
    with pytest.raises(APIError) as refused:
        admit(monitor, "free")
    assert int(refused.value.headers["retry-after"]) >= 1


def test_paused_lanes_are_deferred_and_metrics_list_every_lane() -> None:
    monitor = LaneMonitor(None, paused=lambda: {"free"})
    admit(monitor, "free")
    assert monitor.deferred("free") and DEFERRED_AFTER_S > 0
    registry = CollectorRegistry()
    registry.register(FleetCollector(monitor.figures, dict, dict, dict))
    text = generate_latest(registry).decode()
    samples = metric_samples(text)
    assert metric(samples, "darkroom_lane_paused", lane="free") == 1
    assert metric(samples, "darkroom_lane_waiting", lane="free") == 1
    assert "# TYPE darkroom_lane_rejected_total counter" in text
    assert metric(samples, "darkroom_lane_max_waiting", lane="api") is not None


async def test_the_api_answers_503_with_retry_after_and_takes_no_job(gateway: GatewayUnderTest) -> None:
    lanes = gateway.app.state.gateway.lanes
    gateway.lanes.counts = {"free": LaneCounts(waiting=5000, taken=0)}
    await lanes.refresh()
    free = sdk_client(gateway.http, key_for("acct_free", "free"))
    with pytest.raises(openai.InternalServerError) as refused:
        await free.images.generate(prompt="a red circle")
    assert refused.value.status_code == 503
    assert int(refused.value.response.headers["retry-after"]) >= 1
    assert refused.value.body["code"] == "lane_full"  # type: ignore[index]
    await asyncio.sleep(0.2)
    assert gateway.pipeline.commands == []
    # A paid tier's lane has room: its jobs go on.
    image = await gateway.client.images.generate(prompt="a red circle")
    assert image.data


async def test_a_waiting_free_job_is_deferred_with_an_estimate(gateway: GatewayUnderTest) -> None:
    gateway.pipeline.hold.clear()
    free_key = key_for("acct_free", "free")
    created = await gateway.http.post(
        "/v1/images/generations",
        json={"prompt": "a blue square"},
        headers={"authorization": f"Bearer {free_key}", "prefer": "respond-async"},
    )
    assert created.status_code == 202
    job_id = created.json()["id"]
    monitor = gateway.app.state.gateway.lanes
    monitor._paused = lambda: {"free"}  # what the decoders' heartbeats would say
    gateway.lanes.counts = {"free": LaneCounts(waiting=12, taken=0)}
    await monitor.refresh()
    for _ in range(50):
        job = await gateway.http.get(f"/v1/images/jobs/{job_id}", headers={"authorization": f"Bearer {free_key}"})
        if job.json()["status"] != "queued":
            break
        await asyncio.sleep(0.02)
    body = job.json()
    assert body["status"] == "deferred" and "estimated_wait_s" in body
    metrics = await gateway.http.get("/metrics")
    assert metrics.status_code == 200
    assert metric(metric_samples(metrics.text), "darkroom_lane_waiting", lane="free") == 12
    gateway.pipeline.hold.set()


async def test_metrics_show_each_decoders_batch_and_preemptions_per_lane(gateway: GatewayUnderTest) -> None:
    beat = ServiceHeartbeat(
        service="decoder",
        instance_id="decoder-7",
        started_at=datetime.now(UTC),
        lanes={"free": LaneLoad(preempted=4, images_per_s=1.25), "pro": LaneLoad(images_per_s=2.5)},
        batch=BatchLoad(
            pool="consumer", limit=8, images=6, occupancy=0.8125, pass_s=0.25, images_per_s=3.75, passes=90
        ),
    )
    envelope = Envelope.wrap(beat, aggregate_id=beat.instance_id)
    await gateway.app.state.heartbeats(envelope, Record(topics.HEARTBEATS, 0, 0, None, envelope.to_bytes()))

    samples = metric_samples((await gateway.http.get("/metrics")).text)

    decoder = {"instance": "decoder-7", "pool": "consumer", "model": ""}  # the beat names no model
    assert metric(samples, "darkroom_fleet_decoder_batch_occupancy", **decoder) == 0.8125
    assert metric(samples, "darkroom_fleet_decoder_batch_limit_images", **decoder) == 8
    assert metric(samples, "darkroom_fleet_decoder_pass_seconds", **decoder) == 0.25
    assert metric(samples, "darkroom_fleet_decoder_images_per_second", **decoder) == 3.75
    assert metric(samples, "darkroom_fleet_decoder_passes_total", **decoder) == 90
    assert metric(samples, "darkroom_lane_preempted_total", lane="free") == 4
    assert metric(samples, "darkroom_lane_images_per_second", lane="pro") == 2.5


async def test_metrics_count_requests_by_route_and_tier_and_refusals_by_code(gateway: GatewayUnderTest) -> None:
    route = {"route": "/v1/images/generations", "method": "POST", "tier": "pro"}
    before = metric_samples((await gateway.http.get("/metrics")).text)
    await gateway.client.images.generate(prompt="a red circle", quality="low")
    with pytest.raises(openai.BadRequestError):
        await gateway.client.images.generate(prompt="a red circle", model="no-such-model")

    after = metric_samples((await gateway.http.get("/metrics")).text)

    def grew(name: str, **labels: str) -> float:
        return (metric(after, name, **labels) or 0) - (metric(before, name, **labels) or 0)

    assert grew("darkroom_http_requests_total", **route, status="200") == 1
    assert grew("darkroom_http_requests_total", **route, status="400") == 1
    assert grew("darkroom_http_request_seconds_count", **route) == 2
    assert grew("darkroom_api_refusals_total", code="model_not_found", status="400", tier="pro") == 1
    # The gateway's own consumers are counted too (it folds request events for its jobs).
    assert any(name == "darkroom_events_handled_total" for name, _ in after)
