"""The Kafka bus: ports, adapters, publishing and the consumer loop."""

from libs.bus.consumer import EventConsumer, Handler, RetryPolicy
from libs.bus.errors import RejectedMessage, TransientError
from libs.bus.ports import Consumer, Delivered, Producer, Record, TopicPartition
from libs.bus.publisher import EventPublisher

__all__ = [
    "Consumer",
    "Delivered",
    "EventConsumer",
    "EventPublisher",
    "Handler",
    "Producer",
    "Record",
    "RejectedMessage",
    "RetryPolicy",
    "TopicPartition",
    "TransientError",
]
