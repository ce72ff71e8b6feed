"""The service runtime: one place that wires Kafka, heartbeats, health and shutdown.

A service's entrypoint builds a `ServiceRuntime` (its name, settings, handlers for
its subscriptions, extra health checks and background tasks) in its bootstrap
function and calls `run_service`. The runtime:

- starts the producer and one consumer-group member per subscription (and one on the
  api copies of job-path topics, libs.bus.routing.member_groups), the publisher and every
  consumer loop applying its `interceptors` (tier routing, then tracing);
- publishes a heartbeat every `heartbeat_interval_s` (the gateway's /healthz and
  `make status` read them) and serves GET /healthz on the health port;
- on SIGTERM/SIGINT stops fetching, lets every consumer finish the record in hand
  and commit, cancels background tasks, flushes the producer and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from libs import topics
from libs.bus import EventConsumer, EventPublisher, Handler, RetryPolicy
from libs.bus.consumer import COMMIT_INTERVAL_S, BeforePoll
from libs.bus.interceptors import Interceptor
from libs.bus.ports import Consumer, Producer
from libs.bus.routing import SERVICE_INTERCEPTORS, member_groups
from libs.events import Envelope
from libs.events.schemas import BatchLoad, LaneLoad, ServiceHeartbeat
from libs.runtime.health import HealthServer
from libs.settings import ServiceSettings

log = logging.getLogger(__name__)

HealthCheck = Callable[[], Awaitable[bool]]
BackgroundTask = Callable[[asyncio.Event], Coroutine[object, object, None]]
ConsumerFactory = Callable[[str, Sequence[str]], Consumer]


@dataclass
class Subscription:
    """A consumer group of this service on some topics, with its handler."""

    group: str
    topics: Sequence[str]
    handler: Handler
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_records: int = 100
    """Records fetched per poll; 1 for handlers that hold the loop for long (renders)."""
    concurrency: int = 1
    """Records of one poll handled at once, by key (see libs.bus.consumer)."""
    before_poll: BeforePoll | None = None
    """Runs before every fetch (see libs.bus.consumer.BeforePoll)."""
    commit_interval_s: float = COMMIT_INTERVAL_S
    """The longest the member goes between commits while records keep coming (0: after every
    poll; see libs.bus.consumer)."""


@dataclass
class ServiceRuntime:
    """Everything a service runs, wired once by its bootstrap function."""

    name: str
    settings: ServiceSettings
    producer: Producer
    consumer_factory: ConsumerFactory
    subscriptions: list[Subscription] = field(default_factory=list)
    checks: dict[str, HealthCheck] = field(default_factory=dict)
    background: list[BackgroundTask] = field(default_factory=list)
    on_start: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    instance_id: str = ""
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    consumers: list[EventConsumer] = field(default_factory=list)
    last_check: dict[str, bool] = field(default_factory=dict)
    lane_report: Callable[[], dict[str, LaneLoad]] | None = None
    """What this instance knows of the lanes, sent with every heartbeat."""
    batch_report: Callable[[], BatchLoad] | None = None
    """A decoder's batch (occupancy, pass time, throughput), sent with every heartbeat."""
    interceptors: Sequence[Interceptor] = SERVICE_INTERCEPTORS
    """Around every message the service sends and every record it handles (libs.bus.interceptors):
    api-tier jobs routed to their own topics, then a span per message."""

    def __post_init__(self) -> None:
        if not self.instance_id:
            self.instance_id = self.settings.instance_id or f"{self.name}-{socket.gethostname()}-{os.getpid()}"
        self.publisher = EventPublisher(self.producer, self.interceptors)
        self._stop = asyncio.Event()
        self._members: list[Consumer] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._health: HealthServer | None = None

    async def run_checks(self) -> dict[str, bool]:
        """Run every health check (each bounded to 3 s) and remember the results."""
        results: dict[str, bool] = {}
        for name, check in self.checks.items():
            try:
                results[name] = bool(await asyncio.wait_for(check(), timeout=3))
            except Exception:  # noqa: BLE001 - a failing check is a negative result
                results[name] = False
        self.last_check = results
        return results

    async def health_report(self) -> tuple[bool, dict[str, Any]]:
        """The body of GET /healthz."""
        checks = await self.run_checks()
        ok = all(checks.values())
        return ok, {
            "service": self.name,
            "instance_id": self.instance_id,
            "status": "ok" if ok else "unhealthy",
            "checks": checks,
            "consumers": [{"handled": c.handled, "dead_lettered": c.dead_lettered} for c in self.consumers],
        }

    async def start(self, stop: asyncio.Event) -> None:
        """Start the producer, consumers, health endpoint, heartbeats and background tasks."""
        self._stop = stop
        await self.producer.start()
        for hook in self.on_start:
            await hook()
        for sub in self.subscriptions:
            for group, names in member_groups(sub.group, sub.topics, self.settings.traffic):
                member = self.consumer_factory(group, names)
                await member.start()
                self._members.append(member)
                self.consumers.append(
                    EventConsumer(
                        member,
                        sub.handler,
                        publisher=self.publisher,
                        dead_letter_topic=topics.DEAD_LETTERS,
                        service=self.name,
                        group=group,
                        retry=sub.retry,
                        max_records=sub.max_records,
                        concurrency=sub.concurrency,
                        before_poll=sub.before_poll,
                        interceptors=self.interceptors,
                        commit_interval_s=sub.commit_interval_s,
                    )
                )
        self._health = HealthServer(self.health_report, self.settings.health_host, self.settings.health_port)
        if self.settings.health_port:
            await self._health.start()
        self._tasks = [asyncio.create_task(c.run(stop), name=f"consumer-{i}") for i, c in enumerate(self.consumers)]
        self._tasks.append(asyncio.create_task(self.heartbeat_loop(stop), name="heartbeat"))
        self._tasks += [asyncio.create_task(t(stop), name=f"background-{i}") for i, t in enumerate(self.background)]
        log.info("%s started (instance %s)", self.name, self.instance_id)

    async def wait(self) -> None:
        """Return when stop is set or a task dies; re-raise a task's failure."""
        stopped = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait([stopped, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        for task in done:
            if task is not stopped and not task.cancelled() and task.exception() is not None:
                raise RuntimeError(f"{self.name}: {task.get_name()} failed") from task.exception()

    async def stop(self) -> None:
        """Stop consuming (each consumer commits what it handled), then close everything."""
        self._stop.set()
        log.info("%s stopping", self.name)
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=15)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for member in self._members:
            with contextlib.suppress(Exception):
                await member.stop()
        for hook in self.on_stop:
            with contextlib.suppress(Exception):
                await hook()
        if self._health is not None:
            await self._health.stop()
        await self.producer.stop()
        log.info("%s stopped", self.name)

    async def heartbeat_loop(self, stop: asyncio.Event) -> None:
        """Publish a heartbeat until stopped; a failed publish is retried next tick."""
        while not stop.is_set():
            checks = await self.run_checks()
            beat = ServiceHeartbeat(
                service=self.name,
                instance_id=self.instance_id,
                started_at=self.started_at,
                healthy=all(checks.values()),
                checks=checks,
                lanes=self.lane_report() if self.lane_report is not None else {},
                batch=self.batch_report() if self.batch_report is not None else None,
            )
            try:
                await asyncio.wait_for(
                    self.publisher.publish(topics.HEARTBEATS, Envelope.wrap(beat, aggregate_id=self.instance_id)),
                    timeout=5,
                )
            except Exception as exc:  # noqa: BLE001 - liveness reporting must not kill the service
                log.warning("heartbeat not published: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.settings.heartbeat_interval_s)


async def run_service(runtime: ServiceRuntime, stop: asyncio.Event | None = None) -> None:
    """Run a service until SIGTERM/SIGINT (or `stop` is set), then shut down cleanly."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await runtime.start(stop)
    try:
        await runtime.wait()
    finally:
        await runtime.stop()
