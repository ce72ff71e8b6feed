"""The gateway's one reader of the topics other services answer for (`watched_topics`)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from libs import topics
from libs.access import AccessState
from libs.bus import ByTopic, EventPublisher, Record
from libs.bus.memory import InMemoryBroker
from libs.events import Envelope
from libs.events.schemas import GenerateImage, JobFailed, RenderProgressed, ServiceHeartbeat
from libs.ratelimit import UsageLedger
from libs.runtime.heartbeats import HeartbeatMonitor
from services.gateway.app import watch_readers, watch_since, watched_topics
from services.gateway.limits import Feed, Limits, UsageHandler, port_readers
from services.gateway.live import LiveEvents
from services.gateway.metered import MeteredUsage
from tests.helpers import job_spec


def _watched(traffic: str, limits: Limits) -> tuple[ByTopic, LiveEvents, HeartbeatMonitor]:
    live, monitor = LiveEvents(), HeartbeatMonitor()
    watched = watched_topics(
        live=live,
        heartbeats=monitor,
        usage=UsageHandler(limits.ledger, limits.access, limits.clock),
        metered=MeteredUsage(ledger=limits.ledger),
        traffic=traffic,
    )
    return watched, live, monitor


def test_an_api_gateway_watches_the_usage_of_both_traffics_but_only_its_own_progress() -> None:
    api, _, _ = _watched("api", Limits(AccessState(), UsageLedger()))
    assert topics.RENDER_PROGRESS not in api.topics
    assert {topics.RENDER_PROGRESS_API, topics.REQUEST_EVENTS, topics.REQUEST_EVENTS_API} <= set(api.topics)
    assert {topics.IMAGE_COMMANDS, topics.IMAGE_COMMANDS_API, topics.HEARTBEATS, topics.USAGE} <= set(api.topics)
    every, _, _ = _watched("all", Limits(AccessState(), UsageLedger()))
    assert {topics.RENDER_PROGRESS, topics.RENDER_PROGRESS_API, topics.ACCOUNT_EVENTS} <= set(every.topics)


def test_a_process_of_one_traffic_reads_the_other_traffics_usage_in_a_reader_of_its_own() -> None:
    every, _, _ = _watched("all", Limits(AccessState(), UsageLedger()))
    assert watch_readers(every.topics, "all") == [("watch", every.topics)]
    api, _, _ = _watched("api", Limits(AccessState(), UsageLedger()))
    (own, own_topics), (other, other_topics) = watch_readers(api.topics, "api")
    assert (own, other) == ("watch", "watch-consumer")
    assert sorted(other_topics) == sorted([topics.IMAGE_COMMANDS, topics.REQUEST_EVENTS])
    assert {topics.REQUEST_EVENTS_API, topics.RENDER_PROGRESS_API, topics.HEARTBEATS, topics.USAGE} <= set(own_topics)
    assert sorted(own_topics + other_topics) == sorted(api.topics)
    consumer, _, _ = _watched("consumer", Limits(AccessState(), UsageLedger()))
    (_, own_topics), (other, other_topics) = watch_readers(consumer.topics, "consumer")
    assert other == "watch-api"
    assert sorted(other_topics) == sorted([topics.IMAGE_COMMANDS_API, topics.REQUEST_EVENTS_API])
    assert {topics.REQUEST_EVENTS, topics.RENDER_PROGRESS, topics.ACCOUNT_EVENTS} <= set(own_topics)


def test_the_watch_starts_the_usage_one_hold_back_the_live_topics_now_and_metering_at_its_beginning() -> None:
    every, _, _ = _watched("all", Limits(AccessState(), UsageLedger()))
    since = watch_since(every.topics, clock_now=1_000.0, job_hold_s=600.0, wall_now=2_000.0)
    assert since[topics.IMAGE_COMMANDS] == since[topics.REQUEST_EVENTS_API] == 400_000
    assert since[topics.RENDER_PROGRESS] == since[topics.HEARTBEATS] == since[topics.ACCOUNT_EVENTS] == 2_000_000
    assert topics.USAGE not in since


async def test_a_request_event_reaches_the_usage_ledger_before_the_waiting_request() -> None:
    limits = Limits(AccessState(), UsageLedger())
    watched, live, _ = _watched("all", limits)
    spec = job_spec(account_id="acct_a", tier="free", prompt="p")
    command = GenerateImage(job_id="job_1", spec=spec, created_at=datetime.now(UTC))
    wrapped = Envelope.wrap(command, aggregate_id="job_1")
    await watched(wrapped, Record(topics.IMAGE_COMMANDS, 0, 0, b"job_1", wrapped.to_bytes()))
    ended = Envelope.wrap(JobFailed(job_id="job_1", code="x", message="y"), aggregate_id="job_1", sequence=5)
    in_flight_when_handed: list[int] = []
    with live.subscribe("job_1") as waiting:
        handed = waiting.put_nowait

        def noting_the_ledger(envelope: Envelope) -> None:
            in_flight_when_handed.append(limits.ledger.in_flight("acct_a", time.time()))
            handed(envelope)

        waiting.put_nowait = noting_the_ledger  # type: ignore[method-assign,assignment]
        assert limits.ledger.in_flight("acct_a", time.time()) == 1
        await watched(ended, Record(topics.REQUEST_EVENTS, 0, 1, b"job_1", ended.to_bytes()))
        assert (await waiting.get()).type == JobFailed.TYPE
    assert in_flight_when_handed == [0]


async def test_one_reader_feeds_usage_live_progress_and_heartbeats_and_skips_a_bad_heartbeat() -> None:
    broker = InMemoryBroker()
    publisher = EventPublisher(broker.producer())
    limits = Limits(AccessState(), UsageLedger())
    watched, live, monitor = _watched("all", limits)
    spec = job_spec(account_id="acct_a", tier="free", prompt="p")
    await publisher.publish(
        topics.IMAGE_COMMANDS,
        Envelope.wrap(GenerateImage(job_id="job_1", spec=spec, created_at=datetime.now(UTC)), aggregate_id="job_1"),
    )
    progress = RenderProgressed(job_id="job_1", pass_index=2, total_passes=4, tokens=[])
    await publisher.publish(topics.RENDER_PROGRESS, Envelope.wrap(progress, aggregate_id="job_1"))
    broken = Envelope(type=ServiceHeartbeat.TYPE, aggregate_id="storage-1", payload={"service": 7})
    await publisher.publish(topics.HEARTBEATS, broken)
    beat = ServiceHeartbeat(service="storage", instance_id="storage-1", started_at=datetime.now(UTC))
    await publisher.publish(topics.HEARTBEATS, Envelope.wrap(beat, aggregate_id="storage-1"))
    reader = port_readers(broker.consumer)("watch", watched.topics, {})
    feed = Feed("watch", reader, watched, publisher, owned=False)
    await feed.load(timeout_s=5)
    await feed.close()
    assert limits.ledger.in_flight("acct_a", time.time()) == 1
    assert live.pass_reached("job_1") == 2
    assert monitor.seen("storage-1") is not None
    # The heartbeat topic is not the gateway's to answer for: the bad record is skipped, not
    # dead-lettered (once per gateway replica), and the reader goes on.
    assert broker.records(topics.DEAD_LETTERS) == []
