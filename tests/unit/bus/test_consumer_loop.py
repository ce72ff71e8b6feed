"""The consumer loop: handling, dead letters, retries and commits (in memory)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from prometheus_client import REGISTRY as PROCESS_REGISTRY

from libs import topics
from libs.bus import (
    EventConsumer,
    EventPublisher,
    Handler,
    Interceptor,
    Record,
    RejectedMessage,
    RetryPolicy,
    TransientError,
)
from libs.bus.memory import InMemoryBroker
from libs.bus.ports import Consumer, TopicPartition
from libs.bus.publisher import DEFAULT_INTERCEPTORS
from libs.events import REGISTRY, Envelope
from libs.events.schemas import DeadLetter, ServiceHeartbeat

TOPIC = "test.commands"
FAST = RetryPolicy(max_attempts=3, initial_backoff_s=0.001, max_backoff_s=0.002)


def _message(n: int) -> Envelope:
    beat = ServiceHeartbeat(service=f"s{n}", instance_id=f"i{n}", started_at="2026-01-01T00:00:00Z")
    return Envelope.wrap(beat, aggregate_id=f"agg-{n}")


class Harness:
    def __init__(self) -> None:
        self.broker = InMemoryBroker({TOPIC: 1, topics.DEAD_LETTERS: 1})
        self.publisher = EventPublisher(self.broker.producer())
        self.seen: list[Envelope] = []

    def loop(self, consumer: Consumer, handler: Handler, **options: Any) -> EventConsumer:
        """A loop over `consumer` in group "g", dead-lettering here; `options` go to EventConsumer."""
        defaults: dict[str, Any] = {"retry": FAST, "poll_timeout_ms": 20}
        return EventConsumer(
            consumer,
            handler,
            publisher=self.publisher,
            dead_letter_topic=topics.DEAD_LETTERS,
            service="test",
            group="g",
            **(defaults | options),
        )

    async def run(
        self,
        handler: Handler,
        until: int,
        concurrency: int = 1,
        interceptors: Sequence[Interceptor] = DEFAULT_INTERCEPTORS,
        commit_interval_s: float = 0.5,
    ) -> EventConsumer:
        """Run a consumer until `until` records were handled or dead-lettered."""
        consumer = self.broker.consumer("g", [TOPIC])
        await consumer.start()
        loop = self.loop(
            consumer, handler, concurrency=concurrency, interceptors=interceptors, commit_interval_s=commit_interval_s
        )
        stop = asyncio.Event()
        task = asyncio.create_task(loop.run(stop))
        for _ in range(500):
            if loop.handled + loop.dead_lettered >= until:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 5)
        await consumer.stop()
        return loop

    def letters(self) -> list[DeadLetter]:
        return [
            REGISTRY.decode_as(Envelope.from_bytes(r.value), DeadLetter)
            for r in self.broker.records(topics.DEAD_LETTERS)
        ]

    async def record_handler(self, envelope: Envelope, record: Record) -> None:
        self.seen.append(envelope)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    yield Harness()


async def test_garbage_goes_to_the_dead_letter_topic_and_the_next_message_is_handled(harness: Harness) -> None:
    await harness.broker.producer().send(TOPIC, b"\xff not json", key=b"k")
    await harness.publisher.publish(TOPIC, _message(1))
    loop = await harness.run(harness.record_handler, until=2)
    assert [e.aggregate_id for e in harness.seen] == ["agg-1"]
    [letter] = harness.letters()
    assert "not valid JSON" in letter.reason
    assert (letter.topic, letter.partition, letter.offset, letter.key) == (TOPIC, 0, 0, "k")
    assert letter.value_encoding == "base64"
    assert loop.dead_lettered == 1


async def test_a_rejected_message_is_dead_lettered_once_without_retries(harness: Harness) -> None:
    calls = 0

    async def reject(envelope: Envelope, record: Record) -> None:
        nonlocal calls
        calls += 1
        raise RejectedMessage("prompt too long")

    await harness.publisher.publish(TOPIC, _message(1))
    await harness.run(reject, until=1)
    assert calls == 1
    [letter] = harness.letters()
    assert (letter.reason, letter.error_type, letter.attempts) == ("prompt too long", "RejectedMessage", 1)


async def test_a_failing_handler_is_retried_then_dead_lettered(harness: Harness) -> None:
    calls = 0

    async def broken(envelope: Envelope, record: Record) -> None:
        nonlocal calls
        calls += 1
        raise ZeroDivisionError("bug")

    await harness.publisher.publish(TOPIC, _message(1))
    await harness.run(broken, until=1)
    assert calls == FAST.max_attempts
    [letter] = harness.letters()
    assert letter.attempts == FAST.max_attempts
    assert "ZeroDivisionError" in letter.reason


async def test_transient_errors_are_retried_until_they_pass(harness: Harness) -> None:
    calls = 0

    async def flaky(envelope: Envelope, record: Record) -> None:
        nonlocal calls
        calls += 1
        if calls < 6:  # more than max_attempts: transient failures never dead-letter
            raise TransientError("store down")
        harness.seen.append(envelope)

    await harness.publisher.publish(TOPIC, _message(1))
    await harness.run(flaky, until=1)
    assert calls == 6
    assert len(harness.seen) == 1
    assert harness.letters() == []


async def test_offsets_are_committed_after_handling(harness: Harness) -> None:
    for n in range(3):
        await harness.publisher.publish(TOPIC, _message(n))
    await harness.run(harness.record_handler, until=3)
    assert harness.broker.committed("g", TopicPartition(TOPIC, 0)) == 3
    # A new member of the group starts after the committed offset: nothing is handled twice.
    again = Harness()
    again.broker = harness.broker
    again.publisher = harness.publisher
    await harness.publisher.publish(TOPIC, _message(9))
    await again.run(again.record_handler, until=1)
    assert [e.aggregate_id for e in again.seen] == ["agg-9"]


async def test_a_member_busy_with_records_commits_once_per_interval_and_on_stopping(harness: Harness) -> None:
    committed: list[int] = []

    async def chained(envelope: Envelope, record: Record) -> None:
        # Each record brings the next, so every poll has records: the member stays busy.
        await asyncio.sleep(0)  # a handler waits on I/O: a commit under way lands meanwhile
        committed.append(harness.broker.committed("g", TopicPartition(TOPIC, 0)))
        if record.offset < 4:
            await harness.publisher.publish(TOPIC, _message(record.offset + 1))

    await harness.publisher.publish(TOPIC, _message(0))
    await harness.run(chained, until=5, commit_interval_s=60)
    assert committed[2:] == [1, 1, 1], "the first poll's offset, and nothing since within the interval"
    assert harness.broker.committed("g", TopicPartition(TOPIC, 0)) == 5, "all of it once the loop stops"


class StuckCommits:
    """A member whose commits hang (its group's coordinator is away) until released, or fail."""

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer
        self.released = asyncio.Event()
        self.commits: list[dict[TopicPartition, int]] = []
        self.error: Exception | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))
        if self.error is not None:
            raise self.error
        await self.released.wait()
        await self._consumer.commit(offsets)


async def test_a_commit_that_hangs_does_not_hold_up_the_records_after_it(harness: Harness) -> None:
    member = harness.broker.consumer("g", [TOPIC])
    await member.start()
    stuck = StuckCommits(member)
    loop = harness.loop(stuck, harness.record_handler, commit_interval_s=0)  # type: ignore[arg-type]
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    for n in range(3):
        await harness.publisher.publish(TOPIC, _message(n))
        for _ in range(100):
            if loop.handled > n:
                break
            await asyncio.sleep(0.01)
    assert loop.handled == 3, "every record handled while the first commit hangs"
    assert len(stuck.commits) == 1 and harness.broker.committed("g", TopicPartition(TOPIC, 0)) == 0
    stuck.released.set()
    stop.set()
    await asyncio.wait_for(task, 5)
    assert harness.broker.committed("g", TopicPartition(TOPIC, 0)) == 3, "the rest committed once it went through"


async def test_a_commit_that_fails_for_good_fails_the_loop(harness: Harness) -> None:
    member = harness.broker.consumer("g", [TOPIC])
    await member.start()
    stuck = StuckCommits(member)
    stuck.error = RuntimeError("the group rebalanced")
    loop = harness.loop(stuck, harness.record_handler, commit_interval_s=0)  # type: ignore[arg-type]
    await harness.publisher.publish(TOPIC, _message(1))
    with pytest.raises(RuntimeError, match="rebalanced"):
        await asyncio.wait_for(loop.run(asyncio.Event()), 5)


async def test_a_member_out_of_records_commits_what_it_handled_at_once(harness: Harness) -> None:
    consumer = harness.broker.consumer("g", [TOPIC])
    await consumer.start()
    loop = harness.loop(consumer, harness.record_handler, commit_interval_s=60)
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    for n in range(3):
        await harness.publisher.publish(TOPIC, _message(n))
        await asyncio.sleep(0.005)
    for _ in range(100):
        if harness.broker.committed("g", TopicPartition(TOPIC, 0)) == 3:
            break
        await asyncio.sleep(0.01)
    assert harness.broker.committed("g", TopicPartition(TOPIC, 0)) == 3, "committed while the loop runs"
    stop.set()
    await asyncio.wait_for(task, 5)
    await consumer.stop()


async def test_a_member_waiting_before_its_poll_stops_when_asked(harness: Harness) -> None:
    # A decoder whose batch is full waits for room before fetching; stopping must not wait for it.
    consumer = harness.broker.consumer("g", [TOPIC])
    await consumer.start()
    never = asyncio.Event()

    async def no_room(_: object) -> int:
        await never.wait()
        return 1

    loop = harness.loop(consumer, harness.record_handler, before_poll=no_room)
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 2)
    await consumer.stop()


async def test_the_consumer_span_continues_the_producer_trace(harness: Harness, spans) -> None:  # type: ignore[no-untyped-def]
    await harness.publisher.publish(TOPIC, _message(1))
    await harness.run(harness.record_handler, until=1)
    finished = spans.get_finished_spans()
    producer = next(s for s in finished if s.name == f"{TOPIC} publish")
    consumer = next(s for s in finished if s.name == f"{TOPIC} process")
    assert consumer.context.trace_id == producer.context.trace_id
    assert consumer.parent is not None and consumer.parent.span_id == producer.context.span_id


async def test_with_concurrency_one_keys_records_stay_in_order_while_keys_overlap(harness: Harness) -> None:
    # Three records for each of two aggregates, interleaved on one partition.
    for n in range(6):
        await harness.publisher.publish(TOPIC, _message(n), key=f"job-{n % 2}")
    active: set[str] = set()
    overlapped = False
    order: dict[str, list[int]] = {"job-0": [], "job-1": []}

    async def slow(envelope: Envelope, record: Record) -> None:
        nonlocal overlapped
        key = (record.key or b"").decode()
        assert key not in active, "two records of one key were handled at once"
        active.add(key)
        overlapped = overlapped or len(active) > 1
        await asyncio.sleep(0.01)
        order[key].append(record.offset)
        active.discard(key)

    await harness.run(slow, until=6, concurrency=4)
    assert order == {"job-0": [0, 2, 4], "job-1": [1, 3, 5]}
    assert overlapped, "records of different keys were handled side by side"
    assert harness.broker.committed("g", TopicPartition(TOPIC, 0)) == 6


async def test_with_concurrency_a_failing_key_does_not_hold_back_the_others(harness: Harness) -> None:
    for n in range(4):
        await harness.publisher.publish(TOPIC, _message(n), key=f"job-{n % 2}")

    async def fails_on_job_0(envelope: Envelope, record: Record) -> None:
        if record.key == b"job-0":
            raise ZeroDivisionError("bug")
        harness.seen.append(envelope)

    await harness.run(fails_on_job_0, until=4, concurrency=4)
    assert [e.aggregate_id for e in harness.seen] == ["agg-1", "agg-3"]
    assert [letter.offset for letter in harness.letters()] == [0, 2]
    assert harness.broker.committed("g", TopicPartition(TOPIC, 0)) == 4


def _sample(name: str, **labels: str) -> float:
    return PROCESS_REGISTRY.get_sample_value(name, labels) or 0.0


async def test_handled_events_dead_letters_and_lag_are_counted_for_prometheus(harness: Harness) -> None:
    handled = {"service": "test", "group": "g", "type": ServiceHeartbeat.TYPE}
    ok_before = _sample("darkroom_events_handled_total", **handled, outcome="ok")
    timed_before = _sample("darkroom_handler_seconds_count", **handled)
    letters_before = _sample(
        "darkroom_dead_letters_total", service="test", group="g", topic=TOPIC, error_type="RejectedMessage"
    )
    calls = 0

    async def reject_the_second(envelope: Envelope, record: Record) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RejectedMessage("not this one")

    for n in range(3):
        await harness.publisher.publish(TOPIC, _message(n))
    await harness.run(reject_the_second, until=3)

    assert _sample("darkroom_events_handled_total", **handled, outcome="ok") == ok_before + 2
    assert _sample("darkroom_events_handled_total", **handled, outcome="dead_lettered") >= 1
    assert _sample("darkroom_handler_seconds_count", **handled) == timed_before + 2
    dead = _sample("darkroom_dead_letters_total", service="test", group="g", topic=TOPIC, error_type="RejectedMessage")
    assert dead == letters_before + 1
    # Every record was fetched: the member's lag on its partition is 0.
    assert (
        PROCESS_REGISTRY.get_sample_value("darkroom_consumer_lag", {"group": "g", "topic": TOPIC, "partition": "0"})
        == 0
    )
