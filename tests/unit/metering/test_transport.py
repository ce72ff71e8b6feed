"""The metering app fetches in gathered batches: its Kafka consumer waits for records to gather."""

from __future__ import annotations

from libs.events.schemas import AccountUsage
from services.metering.app import build_app
from services.metering.transport import FETCH_MIN_BYTES, GatheringConsumer, GatheringTransport


async def _publish(usage: AccountUsage) -> None:
    raise AssertionError("nothing is published while building the app")


async def test_the_apps_kafka_consumer_asks_the_broker_to_gather_records_before_it_answers() -> None:
    app = build_app("127.0.0.1:1", _publish, fetch_max_wait_ms=250)

    assert isinstance(app.transport, GatheringTransport)
    consumer = app.consumer
    assert isinstance(consumer, GatheringConsumer)
    # What faust's consumer thread builds, as its fetcher will be started with it (no
    # connection is made before start).
    kafka = consumer._thread._create_worker_consumer(app.transport)
    assert (kafka._fetch_min_bytes, kafka._fetch_max_wait_ms) == (FETCH_MIN_BYTES, 250)
    # Everything else stays faust's: its group and manual commits.
    assert kafka._group_id == app.conf.id
    assert kafka._enable_auto_commit is False
