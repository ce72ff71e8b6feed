"""The auth service's consumer loop: sign-ups a batch at a time.

Why not the shared consumer loop: it hands records to a handler one by one, and a
sign-up costs a claim read, two inserts and a publish. During a launch surge that is
the whole budget (FerretDB inserts take milliseconds each), so this loop takes what
one fetch brings (up to `max_batch` records), decides every sign-up among them with
one read and two bulk inserts, publishes the answers together, then commits. Every
other command, and any record that is not a valid sign-up, goes through the shared
loop's `process` (tracing, retries, dead letters) in its place in the order, so the
batch never changes what a command sees.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind

from libs.bus import EventConsumer, EventPublisher, Handler, Record, TopicPartition, TransientError
from libs.bus.ports import Consumer
from libs.bus.tracing import extract_context
from libs.events import REGISTRY, DecodeError, Envelope
from libs.events.schemas import CreateAccount
from libs.metrics import EVENTS_HANDLED, HANDLER_SECONDS
from services.auth.handlers import AuthHandlers, SignUp

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("darkroom.auth")


class SignUpBatches:
    """Runs one consumer-group member of the account-command topic until stopped."""

    def __init__(
        self,
        consumer: Consumer,
        handlers: AuthHandlers,
        others: Handler,
        *,
        publisher: EventPublisher,
        dead_letter_topic: str,
        group: str,
        max_batch: int = 500,
        poll_timeout_ms: int = 100,
        max_backoff_s: float = 5.0,
    ) -> None:
        """Wires the loop.

        Args:
            consumer: The group member (not started).
            handlers: Decides sign-up batches.
            others: The dispatcher for every other command.
            publisher: For dead letters.
            dead_letter_topic: Where undecodable or failing records go.
            group: The consumer group (for spans and dead letters).
            max_batch: Records per fetch, the largest batch.
            poll_timeout_ms: How long an empty fetch waits.
            max_backoff_s: The longest wait between retries while the store is away.
        """
        self._consumer = consumer
        self._handlers = handlers
        self._single = EventConsumer(
            consumer, others, publisher=publisher, dead_letter_topic=dead_letter_topic, service="auth", group=group
        )
        self._group = group
        self._max_batch = max_batch
        self._poll_timeout_ms = poll_timeout_ms
        self._max_backoff_s = max_backoff_s
        self.batches = 0
        self.signups = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; commit after each fetch is fully handled."""
        await self._consumer.start()
        try:
            while not stop.is_set():
                records = await self._consumer.getmany(self._poll_timeout_ms, self._max_batch)
                await self._single.record_lag()
                if not records:
                    continue
                await self.handle(records)
                done: dict[TopicPartition, int] = {}
                for record in records:
                    done[record.tp] = record.offset + 1
                await self._consumer.commit(done)
        finally:
            await self._consumer.stop()

    async def handle(self, records: Sequence[Record]) -> None:
        """Handle fetched records in order: runs of sign-ups as batches, the rest one by one."""
        run: list[tuple[Record, SignUp]] = []
        for record in records:
            signup = _as_signup(record)
            if signup is not None:
                run.append((record, signup))
                continue
            await self._flush(run)
            run = []
            await self._single.process(record)
        await self._flush(run)

    async def _flush(self, run: list[tuple[Record, SignUp]]) -> None:
        if not run:
            return
        links = [Link(trace.get_current_span(extract_context(r.headers)).get_span_context()) for r, _ in run]
        with _tracer.start_as_current_span(
            "darkroom.accounts.commands process batch",
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={"messaging.batch.message_count": len(run), "messaging.consumer.group.name": self._group},
        ):
            backoff = 0.05
            began = time.perf_counter()
            while True:
                try:
                    await self._handlers.create_accounts([signup for _, signup in run])
                    # Each sign-up of the batch waited for the whole batch.
                    seconds = time.perf_counter() - began
                    for _ in run:
                        HANDLER_SECONDS.labels("auth", self._group, CreateAccount.TYPE).observe(seconds)
                    EVENTS_HANDLED.labels("auth", self._group, CreateAccount.TYPE, "ok").inc(len(run))
                    break
                except TransientError as exc:
                    log.warning("sign-up batch of %d: %s; retrying", len(run), exc)
                except Exception:
                    log.exception("sign-up batch of %d failed; handling its records one by one", len(run))
                    for record, _ in run:
                        await self._single.process(record)
                    break
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)
        self.batches += 1
        self.signups += len(run)


def _as_signup(record: Record) -> SignUp | None:
    """The record as a sign-up, or None for anything else (or anything that does not decode)."""
    try:
        envelope = Envelope.from_bytes(record.value)
        if envelope.type != CreateAccount.TYPE:
            return None
        return SignUp(REGISTRY.decode_as(envelope, CreateAccount), envelope)
    except DecodeError:
        return None
