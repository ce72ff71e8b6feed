"""The gateway's FastAPI application.

The gateway owns a `ServiceRuntime` like every other service (producer, heartbeats,
consumers) but runs it inside the ASGI lifespan instead of `run_service`. Its own
heartbeat goes out through Kafka and comes back through its watch feed, so a
fresh self-heartbeat in /healthz proves the round trip to the broker works.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from libs import topics
from libs.access import AccessState
from libs.apikeys import parse_signing_keys
from libs.bus import ByTopic, Handler
from libs.bus.offsets import KafkaLaneOffsets, LaneOffsets
from libs.bus.ports import Producer
from libs.bus.routing import member_groups
from libs.lanes import POOLS, parse_max_waiting
from libs.ratelimit import UsageLedger
from libs.readmodels.catalog import ImageCatalog
from libs.readmodels.jobs import JobProjection
from libs.runtime.heartbeats import HeartbeatMonitor
from libs.runtime.service import ConsumerFactory, ServiceRuntime, Subscription
from libs.runtime.wiring import kafka_consumer_factory, kafka_producer, minio_store, mongo_store, reachable
from libs.settings import GatewaySettings
from libs.stores.grouped import GroupedInserts
from libs.stores.minio import MinioBlobStore
from libs.stores.ports import BlobStore, DocumentStore
from services.gateway import accounts, admin, edits, images, library, served_models, usage, web
from services.gateway.context import Gateway
from services.gateway.errors import install_error_handlers
from services.gateway.idempotency import IdempotencyKeys
from services.gateway.lanes import LaneMonitor
from services.gateway.limits import (
    AccessHandler,
    Feed,
    Limits,
    RateLimitHeaders,
    ReaderFactory,
    UsageHandler,
    kafka_readers,
    port_readers,
    usage_since,
)
from services.gateway.live import LiveEvents
from services.gateway.metered import MeteredUsage
from services.gateway.metrics import FleetCollector, RequestMetrics
from services.gateway.metrics import exposition as metrics_exposition
from services.gateway.tracing import TracingMiddleware

SERVICE = "gateway"


def watched_topics(
    *, live: LiveEvents, heartbeats: HeartbeatMonitor, usage: UsageHandler, metered: MeteredUsage, traffic: str
) -> ByTopic:
    """What the gateway watches of the other services' topics, handled by topic (ByTopic)
    and read by as few readers as traffic allows (`watch_readers`).

    - live events (request events, progress, account events) for the requests waiting on
      them, of this process's traffic (libs.bus.routing.member_groups);
    - every service's heartbeats, for /healthz, the fleet metrics and the lanes;
    - the image commands and request events of both traffics, folded into the usage ledger
      that admission reads;
    - the metering service's per-account usage (compacted), the day's earlier images.

    A request event goes to the usage ledger before the live waiters, so a request that
    wakes on its job's end finds the ledger already knows it.
    """
    handlers: dict[str, list[Handler]] = {}
    for name in topics.with_api_copies([topics.IMAGE_COMMANDS, topics.REQUEST_EVENTS]):
        handlers.setdefault(name, []).append(usage)
    live_topics = [topics.REQUEST_EVENTS, topics.RENDER_PROGRESS, topics.ACCOUNT_EVENTS]
    for _, names in member_groups("", live_topics, traffic):
        for name in names:
            handlers.setdefault(name, []).append(live)
    handlers.setdefault(topics.HEARTBEATS, []).append(heartbeats)
    handlers.setdefault(topics.USAGE, []).append(metered)
    return ByTopic(handlers)


def watch_readers(names: Sequence[str], traffic: str) -> list[tuple[str, list[str]]]:
    """The watch feed's readers: (name, topics) for each.

    One reader in a process of all traffic. A process of one traffic reads the other
    traffic's topics (the usage of both counts toward an account's limits) in a reader of
    their own, so a flood of the other traffic never stands in a fetch, or in the handling
    of one, ahead of this traffic's live events.
    """
    if traffic not in ("api", "consumer"):
        return [("watch", list(names))]
    api_copies = {copy for copy in map(topics.api_copy, names) if copy is not None}
    has_copy = {name for name in names if topics.api_copy(name) is not None}
    other = has_copy if traffic == "api" else api_copies
    own = [name for name in names if name not in other]
    others = [name for name in names if name in other]
    other_traffic = "consumer" if traffic == "api" else "api"
    return [("watch", own), (f"watch-{other_traffic}", others)] if others else [("watch", own)]


def watch_since(names: Sequence[str], clock_now: float, job_hold_s: float, wall_now: float) -> dict[str, int]:
    """Where the watch readers start, per topic (Unix ms; a topic not named: its beginning).

    Every topic now, as a reader without a group would (a waiting request subscribes after
    it starts), but the usage topics one hold back (`usage_since`) and the metered usage,
    compacted, from its beginning. A topic added to the watch starts now unless named here.
    """
    now_ms = int(wall_now * 1000)
    since = {name: now_ms for name in names if name != topics.USAGE}
    return since | usage_since(clock_now, job_hold_s)


def create_app(
    settings: GatewaySettings | None = None,
    *,
    producer: Producer | None = None,
    consumer_factory: ConsumerFactory | None = None,
    documents: DocumentStore | None = None,
    blobs: BlobStore | None = None,
    readers: ReaderFactory | None = None,
    limits: Limits | None = None,
    lane_offsets: LaneOffsets | None = None,
) -> FastAPI:
    """Build the gateway application.

    Args:
        settings: Gateway settings; read from the environment when omitted.
        producer: Bus producer; the real Kafka one when omitted.
        consumer_factory: Bus consumer factory; the real Kafka one when omitted.
        documents: The gateway's document store (its job read model); MongoDB when omitted.
        blobs: The image store it reads results from; MinIO when omitted.
        readers: Makes the readers of the access and watch feeds; Kafka's when omitted
            (readers over `consumer_factory` when that is given).
        limits: The access state, usage ledger and clock (fresh ones when omitted).
        lane_offsets: Reads the lanes' waiting and taken jobs; Kafka's offsets when omitted
            and Kafka is wired, else none (every job admitted, no wait estimates).

    Returns:
        The FastAPI app, whose lifespan starts and stops the Kafka side.
    """
    settings = settings or GatewaySettings()
    served_models.check_models_declared(settings)
    monitor = HeartbeatMonitor(stale_after_s=settings.heartbeat_stale_s)
    docs = documents or mongo_store(settings)
    objects = blobs or minio_store(settings)
    runtime = ServiceRuntime(
        name=SERVICE,
        settings=settings,
        producer=producer or kafka_producer(settings, SERVICE),
        consumer_factory=consumer_factory or kafka_consumer_factory(settings, SERVICE),
    )
    live = LiveEvents()
    # The read model's revisions and catalog entries, from requests and events handled side
    # by side, are written together (group commit).
    grouped = GroupedInserts(docs)
    catalog = ImageCatalog(grouped)
    projection = JobProjection(grouped, catalog)
    runtime.subscriptions.append(
        Subscription(
            group=f"{SERVICE}-jobs",
            topics=[topics.REQUEST_EVENTS],
            handler=projection,
            concurrency=settings.handler_concurrency,
        )
    )

    limits = limits or Limits(AccessState(), UsageLedger(job_hold_s=settings.job_hold_s))
    if readers is None:
        readers = (
            port_readers(consumer_factory)
            if consumer_factory
            else kafka_readers(settings.kafka_bootstrap, settings.kafka_fetch_max_wait_ms)
        )
    access_feed = Feed(
        "access",
        readers("access", [topics.POLICIES, topics.REVOCATIONS, topics.ACCOUNT_TIERS], {}),
        AccessHandler(limits.access, limits.releases),
        runtime.publisher,
    )
    metered = MeteredUsage(ledger=limits.ledger, clock=limits.clock)
    watched = watched_topics(
        live=live,
        heartbeats=monitor,
        usage=UsageHandler(limits.ledger, limits.access, limits.clock),
        metered=metered,
        traffic=settings.traffic,
    )
    since = watch_since(watched.topics, limits.clock(), limits.ledger.job_hold_s, time.time())
    # Topics the other services answer for: read, never dead-lettered here.
    watch_feeds = [
        Feed(name, readers(name, names, since), watched, runtime.publisher, owned=False)
        for name, names in watch_readers(watched.topics, settings.traffic)
    ]
    for feed in (access_feed, *watch_feeds):
        # Loaded before the app serves (lifespan), followed in the background, closed last.
        runtime.on_start.append(feed.load)
        runtime.background.append(feed.follow)
        runtime.on_stop.append(feed.close)
    runtime.checks |= {"mongo": reachable(docs), "minio": reachable(objects)}
    if isinstance(objects, MinioBlobStore):
        runtime.on_stop.append(objects.close)
    if lane_offsets is None and consumer_factory is None:
        kafka_lanes = KafkaLaneOffsets(settings.kafka_bootstrap, client_id=f"darkroom-{SERVICE}-lanes")
        runtime.on_start.append(kafka_lanes.start)
        runtime.on_stop.append(kafka_lanes.stop)
        lane_offsets = kafka_lanes
    lane_monitor = LaneMonitor(
        lane_offsets,
        bounds=parse_max_waiting(settings.lane_max_waiting),
        paused=monitor.paused_lanes,
        interval_s=settings.lane_poll_s,
    )
    runtime.background.append(lane_monitor.follow)
    runtime.lane_report = lane_monitor.report
    gateway = Gateway(
        settings=settings,
        publisher=runtime.publisher,
        live=live,
        projection=projection,
        catalog=catalog,
        blobs=objects,
        signing_keys=parse_signing_keys(settings.signing_key),
        limits=limits,
        idempotency=IdempotencyKeys(docs),
        lanes=lane_monitor,
        heartbeats=monitor,
        metered=metered,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        await runtime.start(stop)
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="darkroom",
        version="0.1.0",
        description="Self-hostable image generation with an OpenAI-compatible Images API.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.runtime = runtime
    app.state.heartbeats = monitor
    app.state.gateway = gateway
    install_error_handlers(app)
    app.add_middleware(RateLimitHeaders)
    app.add_middleware(TracingMiddleware)
    app.add_middleware(RequestMetrics)
    app.include_router(images.router)
    app.include_router(edits.router)
    app.include_router(library.router)
    app.include_router(accounts.router)
    app.include_router(served_models.router)
    app.include_router(usage.router)
    app.include_router(admin.router)
    app.include_router(web.router)
    app.mount("/web", web.assets(), name="web")

    @app.get("/healthz", tags=["operations"])
    async def healthz(monitor: Annotated[HeartbeatMonitor, Depends(get_monitor)]) -> JSONResponse:
        """Kafka reachability, each service's last heartbeat and each decoder pool of every
        model served; 503 unless all are fresh and every pool has a live decoder."""
        services = monitor.report()
        pools = monitor.pools(settings.models, tuple(POOLS))
        own = monitor.seen(runtime.instance_id)
        kafka_ok = own is not None and own <= monitor.stale_after_s
        problems = [] if kafka_ok else ["kafka: not reachable"]
        problems += [f"{name}: no fresh heartbeat" for name, s in services.items() if not s["healthy"]]
        problems += [f"decoder pool {name}: no live decoder" for name, p in pools.items() if not p["healthy"]]
        body: dict[str, Any] = {
            "status": "degraded" if problems else "ok",
            "problems": problems,
            "kafka": {"reachable": kafka_ok, "bootstrap": settings.kafka_bootstrap},
            "services": services,
            "pools": pools,
        }
        healthy = not problems
        return JSONResponse(body, status_code=200 if healthy else 503)

    fleet = FleetCollector(
        lane_monitor.figures,
        monitor.batch_loads,
        monitor.lane_loads,
        lambda: {name: pool["instances"] for name, pool in monitor.pools(settings.models, tuple(POOLS)).items()},
    )

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    async def metrics() -> Response:
        """Prometheus metrics (services.gateway.metrics): requests, refusals, events and lag of
        this gateway; the lanes' figures; every live decoder's batch from its heartbeats."""
        body, content_type = metrics_exposition(fleet)
        return Response(body, media_type=content_type)

    return app


async def get_monitor(request: Request) -> HeartbeatMonitor:
    """FastAPI dependency: the heartbeat monitor of this app."""
    monitor: HeartbeatMonitor = request.app.state.heartbeats
    return monitor
