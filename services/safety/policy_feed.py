"""The policy in force: read the compacted policy topic to its end at start, then follow it.

Why not a plain subscription: a consumer-group member resumes at its committed offset
and a group-less one starts at the end, but the safety service must know the whole
policy history before its first verdict, and must know when it has seen all of it (an
empty topic means "publish the default"). So one group-less reader starts at the
beginning, reads until its position reaches the end offsets, and the same reader then
keeps following the topic, so no record falls between "loaded" and "live".

The bus port has no way to ask for end offsets yet, hence `LogReader` here with two
adapters: `KafkaLogReader` (exact, on aiokafka's end offsets) and `PortLogReader`
(over any bus Consumer: caught up after an empty fetch, which is exact for the
in-memory broker that unit tests use and only a heuristic on Kafka).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from libs import topics
from libs.bus import EventConsumer, EventPublisher
from libs.bus.kafka import KafkaConsumer
from libs.bus.ports import Consumer, Record, TopicPartition
from libs.events import Envelope
from libs.events.schemas import SafetyPolicy
from libs.runtime.dispatch import Dispatcher
from services.safety.domain import POLICY_AGGREGATE, CompiledPolicy, compile_policy, policy_key, supersedes

log = logging.getLogger(__name__)

LOAD_TIMEOUT_S = 60.0


class LogReader(Consumer, Protocol):
    """A consumer that reads a topic from its beginning and can tell when it is caught up."""

    async def caught_up(self) -> bool:
        """Whether every assigned partition has been read to its current end."""
        ...


class KafkaLogReader(KafkaConsumer):
    """Reads every partition of the topics from the beginning, with no group and no commits."""

    def __init__(self, bootstrap: str, topics: Sequence[str], *, client_id: str) -> None:
        """Creates the reader (connects on start).

        Args:
            bootstrap: Kafka bootstrap servers.
            topics: Topics to read.
            client_id: Client id shown in broker logs.
        """
        super().__init__(bootstrap, group=None, topics=topics, client_id=client_id, auto_offset_reset="earliest")

    async def caught_up(self) -> bool:
        """See LogReader.caught_up (position against aiokafka's end offsets)."""
        # The port has no end offsets (see the report on libs/bus); the adapter's client does.
        client = self._consumer
        assigned = list(client.assignment())
        if not assigned:
            return False  # metadata not in yet: nothing assigned, nothing read
        ends: Mapping[object, int] = await client.end_offsets(assigned)
        for tp in assigned:
            if await client.position(tp) < ends[tp]:
                return False
        return True


class PortLogReader:
    """A LogReader over any bus Consumer: caught up once a fetch came back empty.

    Its commits do nothing: a reader keeps no offsets, it starts from the beginning
    every time (give it a group that has none, e.g. a fresh name).
    """

    def __init__(self, consumer: Consumer) -> None:
        """Wraps a consumer that starts at the beginning of its topics."""
        self._consumer = consumer
        self._drained = False

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()

    async def getmany(self, timeout_ms: int, max_records: int | None = None) -> list[Record]:
        records = await self._consumer.getmany(timeout_ms, max_records)
        self._drained = not records and bool(self._consumer.assignment())
        return records

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        return None

    def assignment(self) -> set[TopicPartition]:
        return self._consumer.assignment()

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        self._consumer.pause(partitions)

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        self._consumer.resume(partitions)

    def paused(self) -> set[TopicPartition]:
        return self._consumer.paused()

    async def caught_up(self) -> bool:
        """See LogReader.caught_up."""
        return self._drained


async def read_to_end(
    reader: LogReader,
    handle: Callable[[Record], Awaitable[None]],
    *,
    timeout_s: float = LOAD_TIMEOUT_S,
    poll_ms: int = 200,
) -> None:
    """Feed every record of the reader's topics to `handle` until the reader is caught up.

    Args:
        reader: A started reader.
        handle: Called with each record, in order.
        timeout_s: How long to try before giving up.
        poll_ms: Fetch timeout per poll.

    Raises:
        TimeoutError: The end was not reached in time (e.g. the broker is unreachable).
    """
    deadline = time.monotonic() + timeout_s
    while not await reader.caught_up():
        if time.monotonic() > deadline:
            raise TimeoutError(f"did not reach the end of the policy topic within {timeout_s}s")
        for record in await reader.getmany(poll_ms, 100):
            await handle(record)


class PolicyFeed:
    """Holds the policy in force and keeps it current from the policy topic.

    Lifecycle: `load` (before any check is served; publishes the default when the topic
    holds no policy), `follow` (a background task applying later versions live), `close`.
    """

    def __init__(
        self,
        reader: LogReader,
        publisher: EventPublisher,
        default: SafetyPolicy,
        *,
        service: str,
        load_timeout_s: float = LOAD_TIMEOUT_S,
    ) -> None:
        """Wires the feed.

        Args:
            reader: A reader of the policy topic (not started yet).
            publisher: Publishes the default policy when there is none.
            default: The default policy (version 1).
            service: The service name, for spans and dead letters.
            load_timeout_s: How long `load` may take to reach the end of the topic.
        """
        self._reader = reader
        self._publisher = publisher
        self._default = default
        self._load_timeout_s = load_timeout_s
        self._current: CompiledPolicy | None = None
        self._updated = asyncio.Event()
        dispatcher = Dispatcher(service)
        dispatcher.on(SafetyPolicy, self._on_policy)
        # The bus's consumer loop gives policy records the same tracing and dead-lettering
        # as every other message; its commits go to the reader, which keeps no offsets.
        self._loop = EventConsumer(
            reader,
            dispatcher,
            publisher=publisher,
            dead_letter_topic=topics.DEAD_LETTERS,
            service=service,
            group=f"{service}-policy-reader",
        )

    @property
    def current(self) -> CompiledPolicy:
        """The policy in force.

        Raises:
            RuntimeError: Called before `load`.
        """
        if self._current is None:
            raise RuntimeError("the safety policy is not loaded yet")
        return self._current

    @property
    def loaded(self) -> bool:
        """Whether a policy is in force (the health check)."""
        return self._current is not None

    async def wait_for_version(self, version: int, timeout_s: float = 10.0) -> CompiledPolicy:
        """Wait until a policy of at least `version` is in force (tests and tools)."""
        async with asyncio.timeout(timeout_s):
            while self._current is None or self._current.version < version:
                self._updated.clear()
                await self._updated.wait()
        return self._current

    def apply(self, policy: SafetyPolicy) -> bool:
        """Make `policy` the one in force if it supersedes the current one.

        Returns:
            Whether it was applied.
        """
        current = self._current.source if self._current is not None else None
        if not supersedes(current, policy):
            log.info("ignoring safety policy v%d: v%d is in force", policy.version, current.version if current else 0)
            return False
        compiled = compile_policy(policy)
        for error in compiled.errors:
            log.error("safety policy v%d: %s (left out)", policy.version, error)
        self._current = compiled
        self._updated.set()
        if current is None or current.version != policy.version:
            log.info("safety policy v%d in force (%d categories)", policy.version, len(policy.categories))
        return True

    async def _on_policy(self, policy: SafetyPolicy, envelope: Envelope) -> None:
        self.apply(policy)

    async def load(self) -> None:
        """Read the policy topic to its end; publish the default policy if it held none."""
        await self._reader.start()
        await read_to_end(self._reader, self._loop.process, timeout_s=self._load_timeout_s)
        if self._current is None:
            log.info(
                "no safety policy on %s: publishing the default (v%d)", topics.SAFETY_POLICY, self._default.version
            )
            envelope = Envelope.wrap(self._default, aggregate_id=POLICY_AGGREGATE, sequence=self._default.version)
            await self._publisher.publish(topics.SAFETY_POLICY, envelope, key=policy_key(self._default.version))
            # In force at once; the record comes back through `follow` and changes nothing.
            self.apply(self._default)

    async def follow(self, stop: asyncio.Event) -> None:
        """Apply policy records as they arrive, until `stop` is set."""
        await self._loop.run(stop)

    async def close(self) -> None:
        """Stop the reader."""
        await self._reader.stop()
