"""The policy in force: read the compacted policy topic to its end at start, then follow it.

Why not a plain subscription: a consumer-group member resumes at its committed offset
and a group-less one starts at the end, but the safety service must know the whole
policy history before its first verdict, and must know when it has seen all of it (an
empty topic means "publish the default"). So one group-less reader starts at the
beginning, reads until its position reaches the end offsets, and the same reader then
keeps following the topic, so no record falls between "loaded" and "live".

The readers that know when they are caught up live in `libs.bus.logreader` (the
gateway reads its compacted topics the same way); they are re-exported here.
"""

from __future__ import annotations

import asyncio
import logging

from libs import topics
from libs.bus import EventConsumer, EventPublisher
from libs.bus.logreader import KafkaLogReader, LogReader, PortLogReader, read_to_end
from libs.events import Envelope
from libs.events.schemas import SafetyPolicy
from libs.runtime.dispatch import Dispatcher
from libs.safety_policy import POLICY_AGGREGATE, policy_key, supersedes
from services.safety.domain import CompiledPolicy, compile_policy

log = logging.getLogger(__name__)

LOAD_TIMEOUT_S = 60.0

__all__ = ["KafkaLogReader", "LogReader", "PolicyFeed", "PortLogReader", "read_to_end"]


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
