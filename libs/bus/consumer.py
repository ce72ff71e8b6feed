"""The consumer loop every service runs: decode, trace, handle, dead-letter, commit.

A handler receives decoded envelopes; everything else is here, once:

- the interceptors (libs.bus.interceptors) wrap the handling of every record: by
  default the handler runs in a consumer span that is a child of the producer's span,
  whose context the record's headers carry (libs.bus.tracing);
- bytes that are not a valid envelope, and messages the handler rejects, go to the
  dead-letter topic with the reason and the original coordinates, and the loop moves
  on, so a poison message never blocks its partition;
- a `TransientError` (a store or broker outage) is retried with backoff, without
  limit: an outage delays work but loses none;
- offsets are committed only after the records before them were handled, so a crash
  redelivers at most the records handled since the last commit (handlers are idempotent).
  While records keep coming, a member commits at most every `commit_interval_s`
  (COMMIT_INTERVAL_S by default; 0 commits after every poll), and at once when a poll
  comes back empty or the loop stops: each commit is a write to Kafka's offsets log, and
  committing every poll cost the broker as many writes as the job path's own messages.
  A commit runs beside the handling, one at a time (offsets handled meanwhile go with the
  next): Kafka's client retries a commit until the group's coordinator takes it, and when
  the broker that coordinates the group dies, that took seconds during which a loop that
  awaited its commit handled nothing. A commit that fails for good (the group rebalanced)
  fails the loop at its next commit, as it did when awaited; stopping awaits the last;
- every handled event, its handler's time, every dead letter and the member's lag are
  counted for Prometheus (libs.metrics);
- with `concurrency` above 1, the records of one poll are handled by key: records
  with the same key (the same aggregate: producers key by it) one after another in
  offset order, different keys side by side, at most `concurrency` at once. The
  batch is committed when all of it is handled. Handlers that wait on stores and
  the broker then overlap their waits instead of queueing behind each other.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Histogram

from libs.bus.errors import RejectedMessage, TransientError
from libs.bus.interceptors import DeadLettered, Handled, Interceptor, Member, chain_inbound
from libs.bus.ports import Consumer, Record, TopicPartition
from libs.bus.publisher import DEFAULT_INTERCEPTORS, EventPublisher
from libs.events import DecodeError, Envelope
from libs.events.schemas import DeadLetter
from libs.metrics import CONSUMER_LAG, DEAD_LETTERS, EVENTS_HANDLED, HANDLER_SECONDS

log = logging.getLogger(__name__)

Handler = Callable[[Envelope, Record], Awaitable[None]]
BeforePoll = Callable[[Consumer], Awaitable[int | None]]
"""Runs before every fetch with the group member (e.g. a decoder waits for room, then
pauses the lanes it must not serve yet). Returns the most records to fetch this time
(a decoder: the images its batch has room for), or None for the loop's `max_records`."""


class ByTopic:
    """A handler that hands each record to the handlers of its topic, in the order given.

    Why: every reader costs the broker its own stream of fetches (one per record batch
    while records come, one per fetch wait while none do), so a process that watches
    several topics for several purposes fetches less with one reader and this in front of
    its handlers than with a reader each.
    """

    def __init__(self, handlers: Mapping[str, Sequence[Handler]]) -> None:
        """Routes by topic.

        Args:
            handlers: Per topic, the handlers of its records (a topic not named: none).
        """
        self._handlers = {topic: tuple(each) for topic, each in handlers.items()}

    @property
    def topics(self) -> list[str]:
        """The topics that have a handler."""
        return [topic for topic, each in self._handlers.items() if each]

    async def __call__(self, envelope: Envelope, record: Record) -> None:
        for handler in self._handlers.get(record.topic, ()):
            await handler(envelope, record)


COMMIT_INTERVAL_S = 0.5
"""How long a member busy with records goes at most between commits (see the module's docstring)."""

LAG_INTERVAL_S = 1.0
"""How often a member's lag is read for the metrics (it costs no request to the broker)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often a handler error other than TransientError is retried before the DLQ."""

    max_attempts: int = 3
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 5.0


class EventConsumer:
    """Runs one consumer-group member until asked to stop."""

    def __init__(
        self,
        consumer: Consumer,
        handler: Handler,
        *,
        publisher: EventPublisher,
        dead_letter_topic: str,
        service: str,
        group: str,
        retry: RetryPolicy | None = None,
        poll_timeout_ms: int = 200,
        max_records: int = 100,
        concurrency: int = 1,
        before_poll: BeforePoll | None = None,
        interceptors: Sequence[Interceptor] = DEFAULT_INTERCEPTORS,
        commit_interval_s: float = COMMIT_INTERVAL_S,
    ) -> None:
        """Wires the loop.

        Args (beyond the obvious): `interceptors` wrap the handling of every record, the
        first outermost (libs.bus.interceptors); a consumer span per record by default.
        `commit_interval_s`: the longest a member busy with records goes between commits
        (0: after every poll, for handlers whose redelivery costs more than a write).
        """
        self._consumer = consumer
        self._before_poll = before_poll
        self._handler = handler
        self._publisher = publisher
        self._dlq = dead_letter_topic
        self._service = service
        self._group = group
        self._retry = retry or RetryPolicy()
        self._poll_timeout_ms = poll_timeout_ms
        self._max_records = max_records
        self._concurrency = max(1, concurrency)
        self.handled = 0
        self.dead_lettered = 0
        self._lag_read_at = 0.0
        self._commit_interval_s = commit_interval_s
        self._uncommitted: dict[TopicPartition, int] = {}
        self._committed_at = 0.0
        self._committing: asyncio.Future[None] | None = None
        # Per event type, the handler's timer and its "ok" counter, looked up once:
        # `labels` costs more per record than the interceptor chain does.
        self._handled_ok: dict[str, tuple[Histogram, Counter]] = {}
        self._process = chain_inbound(interceptors, self._handle, Member(service, group))

    @property
    def consumer(self) -> Consumer:
        """The group member this loop drives (lanes pause and resume it)."""
        return self._consumer

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, then commit what was handled and return."""
        stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        try:
            await self._consume(stop, stopping)
        except BaseException:
            # The loop failed: a commit under way is dropped with it (what it held is
            # delivered again to the partition's next member, as after any crash).
            if self._committing is not None:
                self._committing.cancel()
            raise
        finally:
            stopping.cancel()
        await self._commit_finished()
        await self._handled({}, more=False)
        await self._commit_finished()

    async def _consume(self, stop: asyncio.Event, stopping: asyncio.Future[Any]) -> None:
        while not stop.is_set():
            max_records = self._max_records
            if self._before_poll is not None:
                room = await self._room(self._before_poll, stopping)
                if stop.is_set():
                    break
                if room is not None:
                    max_records = max(1, min(room, self._max_records))
            records = await self._consumer.getmany(self._poll_timeout_ms, max_records)
            await self.record_lag()
            if self._concurrency > 1 and len(records) > 1:
                await self._process_by_key(records)
                await self._handled(_next_offsets(records), more=True)
                continue
            done: dict[TopicPartition, int] = {}
            for record in records:
                if stop.is_set() and record.tp not in done:
                    # Shutting down: leave untouched partitions for the next member.
                    continue
                await self._process(record)
                done[record.tp] = record.offset + 1
            await self._handled(done, more=bool(records) and not stop.is_set())

    async def _room(self, before_poll: BeforePoll, stopping: asyncio.Future[Any]) -> int | None:
        """What `before_poll` answers, unless the loop is asked to stop first (a decoder
        stopping with a full batch would otherwise wait for room forever)."""
        gate: asyncio.Future[Any] = asyncio.ensure_future(before_poll(self._consumer))
        await asyncio.wait([gate, stopping], return_when=asyncio.FIRST_COMPLETED)
        if not gate.done():
            gate.cancel()
            await asyncio.gather(gate, return_exceptions=True)
            return None
        room: int | None = gate.result()
        return room

    async def _handled(self, offsets: dict[TopicPartition, int], *, more: bool) -> None:
        """Starts committing what was handled: now when the member ran out of records (or
        stops) or the interval is up, else with a later poll's commit; while a commit is
        under way, with the first poll after it.

        Raises:
            Exception: The previous commit failed for good (e.g. CommitFailedError).
        """
        self._uncommitted.update(offsets)
        if self._committing is not None:
            if not self._committing.done():
                return
            await self._commit_finished()
        now = time.monotonic()
        if not self._uncommitted or (more and now - self._committed_at < self._commit_interval_s):
            return
        # Only partitions the member still holds: a rebalance hands the others on, and
        # their next owner starts after the last commit (redelivering to idempotent handlers).
        held = self._consumer.assignment()
        due = {tp: offset for tp, offset in self._uncommitted.items() if tp in held}
        self._uncommitted = {}
        self._committed_at = now
        if due:
            self._committing = asyncio.ensure_future(self._consumer.commit(due))

    async def _commit_finished(self) -> None:
        """Waits for the commit under way, if any; its error, if it failed, is raised here."""
        committing, self._committing = self._committing, None
        if committing is not None:
            await committing

    async def record_lag(self) -> None:
        """Publishes the member's lag per partition to the metrics, at most once a second
        (a service with a loop of its own calls it after each fetch)."""
        now = time.monotonic()
        if now - self._lag_read_at < LAG_INTERVAL_S:
            return
        self._lag_read_at = now
        try:
            waiting = await self._consumer.waiting(list(self._consumer.assignment()))
        except Exception:  # noqa: BLE001 - metrics never stop consumption (e.g. during a rebalance)
            return
        for tp, count in waiting.items():
            CONSUMER_LAG.labels(self._group, tp.topic, str(tp.partition)).set(count)

    async def _process_by_key(self, records: list[Record]) -> None:
        """Handle a batch: one key's records in order, different keys concurrently."""
        by_key: dict[bytes | TopicPartition, list[Record]] = {}
        for record in records:
            by_key.setdefault(record.key if record.key is not None else record.tp, []).append(record)
        slots = asyncio.Semaphore(self._concurrency)

        async def handle_in_order(group: list[Record]) -> None:
            async with slots:
                for record in group:
                    await self._process(record)

        await asyncio.gather(*(handle_in_order(group) for group in by_key.values()))

    async def process(self, record: Record) -> None:
        """Handle one record completely: handled, or dead-lettered with the reason."""
        await self._process(record)

    async def _handle(self, record: Record) -> Handled:
        """Decode and handle a record, retrying as the policy says; dead-letter it when that fails."""
        try:
            envelope = Envelope.from_bytes(record.value)
        except DecodeError as exc:
            await self._dead_letter(record, str(exc), "DecodeError", attempts=1)
            return DeadLettered(None, exc)
        attempt = 0
        backoff = self._retry.initial_backoff_s
        began = time.perf_counter()
        while True:
            attempt += 1
            try:
                await self._handler(envelope, record)
                self.handled += 1
                metrics = self._handled_ok.get(envelope.type)
                if metrics is None:
                    metrics = self._handled_ok[envelope.type] = (
                        HANDLER_SECONDS.labels(self._service, self._group, envelope.type),
                        EVENTS_HANDLED.labels(self._service, self._group, envelope.type, "ok"),
                    )
                metrics[0].observe(time.perf_counter() - began)
                metrics[1].inc()
                return envelope
            except TransientError as exc:
                log.warning("transient failure on %s@%d, retrying: %s", record.topic, record.offset, exc)
            except (RejectedMessage, DecodeError) as exc:
                EVENTS_HANDLED.labels(self._service, self._group, envelope.type, "dead_lettered").inc()
                await self._dead_letter(record, str(exc), type(exc).__name__, attempts=attempt)
                return DeadLettered(envelope, exc)
            except Exception as exc:
                if attempt >= self._retry.max_attempts:
                    log.exception("giving up on %s@%d after %d attempts", record.topic, record.offset, attempt)
                    reason = f"handler failed {attempt} times: {exc!r}"
                    EVENTS_HANDLED.labels(self._service, self._group, envelope.type, "dead_lettered").inc()
                    await self._dead_letter(record, reason, type(exc).__name__, attempts=attempt)
                    return DeadLettered(envelope, exc, exhausted=True)
                log.warning("handler error on %s@%d (attempt %d): %r", record.topic, record.offset, attempt, exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._retry.max_backoff_s)

    async def _dead_letter(self, record: Record, reason: str, error_type: str, *, attempts: int) -> None:
        try:
            value, encoding = record.value.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            value, encoding = base64.b64encode(record.value).decode(), "base64"
        letter = DeadLetter(
            reason=reason,
            error_type=error_type,
            service=self._service,
            group=self._group,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key.decode("utf-8", "replace") if record.key is not None else None,
            value=value,
            value_encoding=encoding,
            headers={k: v.decode("utf-8", "replace") for k, v in record.headers},
            attempts=attempts,
        )
        aggregate = f"{record.topic}/{record.partition}/{record.offset}"
        log.error("dead-lettering %s: %s", aggregate, reason)
        # The DLQ write itself must not be lost: retry it until the broker takes it.
        backoff = self._retry.initial_backoff_s
        while True:
            try:
                await self._publisher.publish(self._dlq, Envelope.wrap(letter, aggregate_id=aggregate))
                self.dead_lettered += 1
                DEAD_LETTERS.labels(self._service, self._group, record.topic, error_type).inc()
                return
            except Exception as exc:  # noqa: BLE001
                log.warning("dead-letter publish failed, retrying: %r", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._retry.max_backoff_s)


def _next_offsets(records: list[Record]) -> dict[TopicPartition, int]:
    """The offsets to commit once every record in `records` is handled."""
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        offsets[record.tp] = max(offsets.get(record.tp, 0), record.offset + 1)
    return offsets
