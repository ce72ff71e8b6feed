"""Publishing envelopes: serialization, keys and trace context in headers."""

from __future__ import annotations

from collections.abc import Callable

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from libs import topics
from libs.bus.ports import Delivered, Producer
from libs.bus.tracing import inject_headers
from libs.events import Envelope, Event
from libs.metrics import EVENTS_PUBLISHED

_tracer = trace.get_tracer("darkroom.bus")


class EventPublisher:
    """Puts envelopes on topics, one producer span per message.

    The key defaults to the envelope's aggregate id, so every event of one aggregate
    lands on one partition, in order. An envelope whose type its topic does not carry
    (`libs.topics.Topic.check`) is refused before anything is sent.
    """

    def __init__(self, producer: Producer, route: Callable[[str, str | None], str] | None = None) -> None:
        """Wraps a producer.

        Args:
            producer: Sends the bytes.
            route: Picks the topic a message really goes to from the topic asked for and the
                envelope's tier (services route api-tier jobs to their own topics with
                `libs.topics.route`); None sends every message where it is asked to go.
        """
        self._producer = producer
        self._route = route

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
            topic: Destination topic.
            envelope: The message.
            key: Partitioning key; the aggregate id when omitted.
            partition: An explicit partition (lanes pick one); otherwise by key.

        Returns:
            Where the message landed.

        Raises:
            libs.topics.UndeclaredEvent: The topic does not carry the envelope's type (a
                topic libs.topics does not declare, e.g. a test's, carries anything).
        """
        declared = topic if isinstance(topic, topics.Topic) else topics.declared(topic)
        if declared is not None and envelope.type not in declared.type_names:
            declared.check(envelope.type)
        if self._route is not None:
            topic = self._route(topic, envelope.tier)
        with _tracer.start_as_current_span(
            f"{topic} publish",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": topic,
                "messaging.message.id": envelope.event_id,
                "darkroom.event.type": envelope.type,
                "darkroom.aggregate.id": envelope.aggregate_id,
            },
        ) as span:
            delivered = await self._producer.send(
                topic,
                envelope.to_bytes(),
                key=(key if key is not None else envelope.aggregate_id).encode(),
                headers=inject_headers(),
                partition=partition,
            )
            span.set_attribute("messaging.kafka.destination.partition", delivered.partition)
            span.set_attribute("messaging.kafka.message.offset", delivered.offset)
        EVENTS_PUBLISHED.labels(topic, envelope.type).inc()
        return delivered


async def publish_in_force(publisher: EventPublisher, change: Event, key: str) -> None:
    """Publishes a change of what is in force (a tier's policy, a rollout, a model version):
    on the compacted policy topic, where every service reads the latest change per key, then
    on the history topic, which keeps them all."""
    envelope = Envelope.wrap(change, aggregate_id=key)
    await publisher.publish(topics.POLICIES, envelope, key=key)
    await publisher.publish(topics.POLICY_HISTORY, envelope, key=key)
