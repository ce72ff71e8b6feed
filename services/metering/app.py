"""The metering service's faust app: request events -> per-job facts -> per-account usage.

Tables (faust, in memory, each backed by a compacted changelog topic that faust creates,
so a restarted worker rebuilds them; partitions match the topics they are keyed by):

- `metering-jobs` / `metering-jobs-api`: job id -> the facts an earlier release kept of a
  job until it ended, co-partitioned with the request events of consumer and api jobs (6
  and 3 partitions). Completions now carry their job's facts, so nothing is written here
  any more: an entry is read for a completion that does not carry them, and dropped when
  its job ends;
- `metering-daily`: "<account>|<day>" -> that day's `AccountUsage`, fed by the internal
  `darkroom.metering.completed` topic (one record per completed job, keyed by account);
- `metering-per-minute`: account -> images per minute, a tumbling window of 60 s kept for
  an hour, and `metering-per-hour`: account -> images per hour, kept a day and an hour (the
  views abuse detection reads: the minute against the tier's policy, the hour against the
  account's own last 24 hours).

Completions are counted in batches (up to COUNT_BATCH, or what came within COUNT_WITHIN_S):
a batch changes each account-day it holds once, in the table and as one `AccountUsage` on
`darkroom.usage` (compacted), which the gateways and `darkroom usage` read. Processing is at least once:
a worker killed between updating a table and committing its input may count that input
again. A completion delivered twice to a running worker (published twice by a requests
process that died between publishing it and recording that it did) counts once: each
worker remembers the last COUNTED_MEMORY jobs it counted.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import faust
import faust.streams as faust_streams

from libs import topics
from libs.bus.kafka import FETCH_MAX_WAIT_MS
from libs.events import REGISTRY, DecodeError, Envelope
from libs.events.schemas import AccountUsage
from libs.lanes import declared_partitions
from libs.metrics import CONSUMER_LAG
from libs.recent import RecentMap
from services.metering.domain import (
    BASELINE_HOURS,
    METERED_TYPES,
    CompletedJob,
    JobFacts,
    Tally,
    add_completed,
    on_request_event,
    usage_from_table,
    usage_key,
)
from services.metering.transport import use_gathering_transport

log = logging.getLogger(__name__)

APP_ID: Final = "darkroom-metering"
COMPLETED_TOPIC: Final = "darkroom.metering.completed"
COMPLETED_PARTITIONS: Final = 6
MINUTE_WINDOW_S: Final = 60.0
MINUTE_WINDOW_KEPT: Final = timedelta(hours=1)
HOUR_WINDOW_S: Final = 3600.0
HOUR_WINDOW_KEPT: Final = timedelta(hours=BASELINE_HOURS + 1)
LAG_INTERVAL_S: Final = 5.0
BROKER_SESSION_TIMEOUT_S: Final = 10.0
COUNTED_MEMORY: Final = 100_000
COUNT_BATCH: Final = 500
COUNT_WITHIN_S: Final = 0.25
"""Completions are counted in batches of up to COUNT_BATCH, or what came within COUNT_WITHIN_S:
a batch updates each account-day's usage, and publishes it, once, however many of its jobs
it holds (an API account's burst costs one usage record, not one per job)."""

Publish = Callable[[AccountUsage], Awaitable[None]]
Counted = Callable[[Tally], Awaitable[None]]
"""Hears an account's tally after each counted batch of its completions."""


def request_partitions() -> dict[str, int]:
    """The request-event topics and their partitions, as infra/topics.yaml declares them."""
    return {name: declared_partitions(name) for name in (topics.REQUEST_EVENTS, topics.REQUEST_EVENTS_API)}


def build_app(
    bootstrap: str,
    publish: Publish,
    counted: Counted | None = None,
    *,
    app_id: str = APP_ID,
    replicas: int = 1,
    fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS,
) -> faust.App:
    """The metering app on a Kafka bootstrap address ("host:port", comma-separated for a
    cluster); `publish` puts a day's usage on the bus, `counted` (abuse detection) hears each
    account's images in the minute and the day; `replicas` is the replication factor of the
    topics faust creates (its internal topic and the tables' changelogs); a fetch gathers
    records for up to `fetch_max_wait_ms` (services/metering/transport.py)."""
    app = faust.App(
        app_id,
        broker=[f"kafka://{host.strip()}" for host in bootstrap.split(",")],
        topic_replication_factor=replicas,
        store="memory://",
        web_enabled=False,
        autodiscover=False,
        topic_partitions=COMPLETED_PARTITIONS,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # A worker killed with -9 holds its partitions until its session times out: faust's
        # 60 s default kept a restarted metering unassigned (and unhealthy) for ~57 s.
        broker_session_timeout=BROKER_SESSION_TIMEOUT_S,
    )
    use_gathering_transport(app, fetch_max_wait_ms)
    completed = app.topic(
        COMPLETED_TOPIC,
        key_type=str,
        value_type=bytes,
        value_serializer="raw",
        partitions=COMPLETED_PARTITIONS,
        internal=True,
    )
    daily = app.Table("metering-daily", default=None, partitions=COMPLETED_PARTITIONS)
    per_minute: Any = app.Table("metering-per-minute", default=int, partitions=COMPLETED_PARTITIONS).tumbling(
        MINUTE_WINDOW_S, expires=MINUTE_WINDOW_KEPT
    )
    per_hour: Any = app.Table("metering-per-hour", default=int, partitions=COMPLETED_PARTITIONS).tumbling(
        HOUR_WINDOW_S, expires=HOUR_WINDOW_KEPT
    )

    for name, partitions in request_partitions().items():
        jobs = app.Table(f"metering-jobs-{name.rsplit('.', 1)[-1]}", default=None, partitions=partitions)
        source = app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
        app.agent(source, name=f"jobs-of-{name}")(_job_agent(jobs, completed))

    async def count(stream: Any) -> None:
        async for events in stream.take_events(COUNT_BATCH, within=COUNT_WITHIN_S):
            folded: dict[str, AccountUsage] = {}
            minutes: dict[tuple[str, float], tuple[str, str, int]] = {}
            latest: dict[str, Any] = {}
            for event in events:
                account = event.key.decode() if isinstance(event.key, bytes) else str(event.key)
                latest[account] = event
                job = CompletedJob.model_validate_json(event.value)
                key = usage_key(account, job.day)
                folded[key] = add_completed(folded.get(key) or usage_from_table(daily.get(key)), job)
                at = event.message.timestamp
                start = at - at % MINUTE_WINDOW_S
                _, _, images = minutes.get((account, start), ("", "", 0))
                minutes[account, start] = (job.tier, job.day, images + job.images)
            for key, usage in folded.items():
                _make_current(latest[usage.account_id])
                daily[key] = usage.model_dump(mode="json")
                await publish(usage)
            for (account, start), (tier, day, images) in minutes.items():
                _make_current(latest[account])
                in_minute = per_minute.relative_to(start)
                in_minute[account] += images
                hour = start - start % HOUR_WINDOW_S
                in_hour = per_hour.relative_to(hour)
                in_hour[account] += images
                if counted is not None:
                    before = [
                        per_hour.relative_to(hour - h * HOUR_WINDOW_S)[account].current()
                        for h in range(1, BASELINE_HOURS + 1)
                    ]
                    tally = Tally(
                        account_id=account,
                        tier=tier,
                        minute=datetime.fromtimestamp(start, UTC).isoformat(),
                        minute_images=in_minute[account].current(),
                        hour=datetime.fromtimestamp(hour, UTC).isoformat(),
                        hour_images=in_hour[account].current(),
                        hourly_baseline=sum(before) / BASELINE_HOURS,
                        day=day,
                        day_images=folded[usage_key(account, day)].images,
                    )
                    await counted(tally)
            faust_streams._current_event.set(None)

    app.agent(completed, name="usage-per-account")(count)
    return app


async def record_lag(app: faust.App) -> None:
    """Publishes the lag of every partition the app's consumer holds (its input topics and the
    changelogs it recovers from) as `darkroom_consumer_lag`, under the app's id as group: the
    records after its fetch position, up to the end its last fetch saw."""
    consumer = app.consumer
    for tp in consumer.assignment():
        end = consumer.highwater(tp)
        position = await consumer.position(tp)
        if end is not None and position is not None:
            CONSUMER_LAG.labels(app.conf.id, tp.topic, str(tp.partition)).set(max(0, end - position))


def _make_current(event: Any) -> None:
    """Makes `event` faust's current event in this task: a table write goes to the changelog
    partition of the current event's source partition, and `take_events` hands a batch over
    outside any event's context. Only the task's context variable is set (faust 0.15's own,
    `faust.streams._current_event`), never the stream's `current_event` attribute, which the
    stream's background reader is filling the next batch with."""
    faust_streams._current_event.set(weakref.ref(event))


def _job_agent(jobs: Any, completed: Any) -> Callable[[Any], Awaitable[None]]:
    counted: RecentMap[str, bool] = RecentMap(COUNTED_MEMORY)

    async def follow(stream: Any) -> None:
        async for key, value in stream.items():
            try:
                envelope = Envelope.from_bytes(value)
                if envelope.type not in METERED_TYPES:
                    continue
                event = REGISTRY.decode(envelope)
            except DecodeError:
                continue  # the requests service dead-letters it; nothing to meter
            job_id = key.decode() if isinstance(key, bytes) else str(key)
            stored = jobs.get(job_id)
            facts = JobFacts.model_validate(stored) if stored else None
            ended, done = on_request_event(facts, event, envelope.time)
            if ended and stored is not None:
                del jobs[job_id]
            if done is not None and job_id not in counted:
                counted.put(job_id, True)
                await completed.send(key=done.account_id, value=done.model_dump_json().encode())

    return follow
