"""Publishing envelopes: serialization and keys, with the interceptors around the send."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import Counter

from libs import topics
from libs.bus.interceptors import Interceptor, Outgoing, chain_outbound
from libs.bus.ports import Delivered, Producer
from libs.bus.tracing import Tracing
from libs.events import Envelope, Event
from libs.metrics import EVENTS_PUBLISHED

DEFAULT_INTERCEPTORS: tuple[Interceptor, ...] = (Tracing(),)
"""What the bus applies unless told otherwise: a span per message, its context in the
headers. A service's runtime adds tier routing in front (libs.bus.routing)."""


class EventPublisher:
    """Puts envelopes on topics, each through the interceptors.

    The key defaults to the envelope's aggregate id, so every event of one aggregate
    lands on one partition, in order. An envelope whose type its topic does not carry
    (`libs.topics.Topic.check`) is refused before anything is sent.
    """

    def __init__(self, producer: Producer, interceptors: Sequence[Interceptor] = DEFAULT_INTERCEPTORS) -> None:
        """Wraps a producer.

        Args:
            producer: Sends the bytes.
            interceptors: Applied to every message, the first outermost
                (libs.bus.interceptors); a span per message by default.
        """
        self._producer = producer
        self._send = chain_outbound(interceptors, self._deliver)
        # The counter of each topic and type, looked up once: `labels` costs more per
        # message than the interceptor chain does.
        self._published: dict[tuple[str, str], Counter] = {}

    @property
    def producer(self) -> Producer:
        """The underlying producer."""
        return self._producer

    async def publish(
        self,
        topic: str,
        envelope: Envelope,
        *,
        key: str | None = None,
        partition: int | None = None,
    ) -> Delivered:
        """Publish one envelope and wait for the broker's acknowledgement.

        Args:
            topic: Destination topic (interceptors may send it to another, e.g. its api copy).
            envelope: The message.
            key: Partitioning key; the aggregate id when omitted.
            partition: An explicit partition (lanes pick one); otherwise by key.

        Returns:
            Where the message landed.

        Raises:
            libs.topics.UndeclaredEvent: The topic does not carry the envelope's type (a
                topic libs.topics does not declare, e.g. a test's, carries anything).
        """
        declared = topics.declared(topic)
        if declared is not None:
            declared.check(envelope.type)
        key_bytes = (key if key is not None else envelope.aggregate_id).encode()
        return await self._send(Outgoing(topic, envelope, key_bytes, partition, []))

    async def _deliver(self, message: Outgoing) -> Delivered:
        delivered = await self._producer.send(
            message.topic,
            message.envelope.to_bytes(),
            key=message.key,
            headers=message.headers,
            partition=message.partition,
        )
        labels = (message.topic, message.envelope.type)
        counter = self._published.get(labels)
        if counter is None:
            counter = self._published[labels] = EVENTS_PUBLISHED.labels(*labels)
        counter.inc()
        return delivered


async def publish_in_force(publisher: EventPublisher, change: Event, key: str) -> None:
    """Publishes a change of what is in force (a tier's policy, a rollout, a model version):
    on the compacted policy topic, where every service reads the latest change per key, then
    on the history topic, which keeps them all."""
    envelope = Envelope.wrap(change, aggregate_id=key)
    await publisher.publish(topics.POLICIES, envelope, key=key)
    await publisher.publish(topics.POLICY_HISTORY, envelope, key=key)
