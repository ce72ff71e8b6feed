"""The gateway's Prometheus metrics (prometheus-client), served at `GET /metrics`.

- every request: count and latency by route template, method, status and the caller's tier
  (`none` before a key was checked), measured to the end of the response (a stream's too);
- every refusal the API answers, by its code (`rate_limit_exceeded`, `lane_full`,
  `model_unavailable`, ...), status and tier;
- the lanes as this gateway sees them (waiting, taken, drain rate, paused, refused, bound,
  estimated wait) and every live decoder's batch and lanes from their heartbeats, collected
  when Prometheus scrapes;
- the events this process handles and publishes, its consumer lag (libs.metrics).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.events.schemas import BatchLoad, LaneLoad
from libs.metrics import LATENCY_BUCKETS
from libs.metrics import exposition as process_exposition

if TYPE_CHECKING:  # the lanes module answers with API errors, which count refusals here
    from services.gateway.lanes import LaneFigures

TIER_STATE = "darkroom_tier"
"""Where `get_principal` leaves the caller's tier in the request's state for these metrics."""

REQUESTS = Counter(
    "darkroom_http_requests",
    "HTTP requests answered, by route template, method, status and the caller's tier.",
    ["route", "method", "status", "tier"],
)
REQUEST_SECONDS = Histogram(
    "darkroom_http_request_seconds",
    "Seconds from a request to the end of its response (streams included), by route and tier.",
    ["route", "method", "tier"],
    buckets=LATENCY_BUCKETS,
)
REFUSALS = Counter(
    "darkroom_api_refusals",
    "Requests the API refused, by error code, status and the caller's tier.",
    ["code", "status", "tier"],
)


def count_refusal(code: str | None, status: int, tier: str | None) -> None:
    """Counts one refusal (the error handler calls it for every API error)."""
    REFUSALS.labels(code or "none", str(status), tier or "none").inc()


class RequestMetrics:
    """Pure ASGI middleware: counts and times every HTTP request (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            tier = str(scope.get("state", {}).get(TIER_STATE) or "none")
            method = scope["method"]
            REQUESTS.labels(route, method, str(status), tier).inc()
            REQUEST_SECONDS.labels(route, method, tier).observe(time.perf_counter() - began)


LANE_GAUGES: tuple[tuple[str, str, Callable[[LaneFigures], float | None]], ...] = (
    ("waiting", "Jobs waiting in a lane.", lambda f: f.waiting),
    ("drain_per_second", "Jobs per second decoders take from the lane, recently.", lambda f: f.drain_per_s),
    ("paused", "1 while the lane's decoders hold it back for higher-priority lanes.", lambda f: float(f.paused)),
    ("max_waiting", "The lane's bound: beyond it the gateway answers 503.", lambda f: f.max_waiting),
    (
        "estimated_wait_seconds",
        "Seconds the lane's backlog takes to drain at the current rate.",
        lambda f: f.estimated_wait_s,
    ),
)
LANE_COUNTERS: tuple[tuple[str, str, Callable[[LaneFigures], float]], ...] = (
    ("taken", "Jobs decoders took from the lane since it was created.", lambda f: f.taken),
    ("rejected", "Requests this gateway refused with 503 because the lane was full.", lambda f: f.rejected),
)
BATCH_GAUGES: tuple[tuple[str, str, Callable[[BatchLoad], float]], ...] = (
    ("batch_limit_images", "The decoder's batch limit, in images.", lambda b: b.limit),
    ("batch_images", "Images in the decoder's batch now.", lambda b: b.images),
    ("batch_occupancy", "Mean images per pass over the batch limit, recently.", lambda b: b.occupancy),
    ("pass_seconds", "Mean seconds per batched pass, recently.", lambda b: b.pass_s),
    ("images_per_second", "Images the decoder finished per second, recently.", lambda b: b.images_per_s),
)


class FleetCollector(Collector):
    """The lanes and every live decoder, as this gateway knows them, read at scrape time.

    Decoders export their own figures too (on their metrics port); these are the fleet's
    view from one place, labelled by decoder instance, for dashboards that scrape only
    the gateways.
    """

    def __init__(
        self,
        lanes: Callable[[], list[LaneFigures]],
        batches: Callable[[], dict[str, BatchLoad]],
        lane_loads: Callable[[], dict[str, dict[str, LaneLoad]]],
        pools: Callable[[], dict[str, int]],
    ) -> None:
        """Reads the fleet at scrape time.

        Args:
            lanes: The lanes' figures (the gateway's lane monitor).
            batches: Per live decoder instance, its batch (heartbeats).
            lane_loads: Per live instance, its view of the lanes (heartbeats).
            pools: Per decoder pool of every served model, "<model>/<pool>", its live
                decoders (0 for a pool nobody serves: what an alert watches).
        """
        self._lanes = lanes
        self._batches = batches
        self._lane_loads = lane_loads
        self._pools = pools

    def collect(self) -> Iterable[Metric]:
        figures = self._lanes()
        for name, text, gauge_of in LANE_GAUGES:
            gauge = GaugeMetricFamily(f"darkroom_lane_{name}", text, labels=["lane"])
            for f in figures:
                value = gauge_of(f)
                if value is not None:
                    gauge.add_metric([f.lane], value)
            yield gauge
        for name, text, counter_of in LANE_COUNTERS:
            counter = CounterMetricFamily(f"darkroom_lane_{name}", text, labels=["lane"])
            for f in figures:
                counter.add_metric([f.lane], counter_of(f))
            yield counter
        batches = self._batches()
        for name, text, batch_of in BATCH_GAUGES:
            gauge = GaugeMetricFamily(f"darkroom_fleet_decoder_{name}", text, labels=["instance", "pool", "model"])
            for instance, batch in sorted(batches.items()):
                gauge.add_metric([instance, batch.pool, batch.model], batch_of(batch))
            yield gauge
        pools = GaugeMetricFamily(
            "darkroom_decoder_pool_instances",
            "Live decoders of each pool of every served model (0: its jobs wait).",
            labels=["model", "pool"],
        )
        for name, instances in sorted(self._pools().items()):
            model, _, pool = name.rpartition("/")
            pools.add_metric([model, pool], instances)
        yield pools
        passes = CounterMetricFamily(
            "darkroom_fleet_decoder_passes",
            "Batched passes the decoder ran since it started.",
            labels=["instance", "pool", "model"],
        )
        for instance, batch in sorted(batches.items()):
            passes.add_metric([instance, batch.pool, batch.model], batch.passes)
        yield passes
        per_lane: dict[str, tuple[int, float]] = {}
        for instance, loads in self._lane_loads().items():
            if instance not in batches:
                continue  # gateways report lanes too; only decoders preempt and render
            for lane, load in loads.items():
                preempted, rate = per_lane.get(lane, (0, 0.0))
                per_lane[lane] = (preempted + load.preempted, rate + load.images_per_s)
        preempted_family = CounterMetricFamily(
            "darkroom_lane_preempted",
            "Renders live decoders handed back to the lane for higher-priority jobs.",
            labels=["lane"],
        )
        rate_family = GaugeMetricFamily(
            "darkroom_lane_images_per_second",
            "Images live decoders finished from the lane per second, recently.",
            labels=["lane"],
        )
        for lane, (preempted, rate) in sorted(per_lane.items()):
            preempted_family.add_metric([lane], preempted)
            rate_family.add_metric([lane], rate)
        yield preempted_family
        yield rate_family


def exposition(fleet: FleetCollector) -> tuple[bytes, str]:
    """What `GET /metrics` answers: this process's metrics, then the fleet as this app sees it.

    The fleet's collector lives in a registry of the app's own, not the process's, so two
    gateway apps in one process (tests) each export their own view.
    """
    own = CollectorRegistry(auto_describe=False)
    own.register(fleet)
    process, content_type = process_exposition()
    return process + generate_latest(own), content_type
