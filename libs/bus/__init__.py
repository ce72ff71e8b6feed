"""The Kafka bus: ports, adapters, publishing, the consumer loop and their interceptors."""

from libs.bus.consumer import ByTopic, EventConsumer, Handler, RetryPolicy
from libs.bus.errors import RejectedMessage, TransientError
from libs.bus.interceptors import Interceptor
from libs.bus.ports import Consumer, Delivered, Producer, Record, TopicPartition
from libs.bus.publisher import EventPublisher

__all__ = [
    "ByTopic",
    "Consumer",
    "Delivered",
    "EventConsumer",
    "EventPublisher",
    "Handler",
    "Interceptor",
    "Producer",
    "Record",
    "RejectedMessage",
    "RetryPolicy",
    "TopicPartition",
    "TransientError",
]
