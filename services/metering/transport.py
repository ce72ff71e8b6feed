"""The metering app's Kafka transport: faust's aiokafka transport, fetching in gathered batches.

Metering is the one reader of the request events that no client waits for: a completion
counted a few hundred ms later changes nothing a caller sees (the gateways count a job's end
themselves until the metered usage reaches it). Yet faust's consumer, like every aiokafka
consumer, asks the broker for records as soon as one is there, so under load it fetched
after nearly every request event, each fetch crossing faust's consumer thread into the
app's loop: about 3.4 ms of metering CPU and 1.3 ms of the broker's per job at 50 jobs/s
(`make bench-pipeline`'s stack), a tenth of the whole stack's.

This transport's consumer lets the broker hold a fetch until FETCH_MIN_BYTES have gathered
on its partitions or the wait runs out, so under load each fetch carries a few hundred
records, and an idle one returns after the wait as before.
"""

from __future__ import annotations

from typing import Any, Final

import faust
from aiokafka import AIOKafkaConsumer
from faust.transport.drivers import aiokafka as faust_aiokafka

FETCH_MIN_BYTES: Final = 64 * 1024
"""About 100 request events: under load a fetch comes back every few hundred ms, not per event."""


class GatheringConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's consumer thread, whose aiokafka consumer waits for FETCH_MIN_BYTES per fetch."""

    def _create_worker_consumer(self, transport: Any) -> AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # faust builds the consumer with aiokafka's default minimum (1 byte) and a wait of its
        # own (1.5 s); the consumer hands both to its fetcher when it starts.
        consumer._fetch_min_bytes = FETCH_MIN_BYTES
        consumer._fetch_max_wait_ms = transport.fetch_max_wait_ms
        return consumer


class GatheringConsumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer on a GatheringConsumerThread."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return GatheringConsumerThread(self, loop=self.loop, beacon=self.beacon)


class GatheringTransport(faust_aiokafka.Transport):
    """faust's aiokafka transport with the gathering consumer, which holds a fetch at most
    `fetch_max_wait_ms` when fewer than FETCH_MIN_BYTES are there."""

    Consumer = GatheringConsumer

    def __init__(self, url: Any, app: faust.App, *, fetch_max_wait_ms: int) -> None:
        super().__init__(url, app)
        self.fetch_max_wait_ms = fetch_max_wait_ms


def use_gathering_transport(app: faust.App, fetch_max_wait_ms: int) -> None:
    """Make `app` consume through GatheringTransport; call before the app declares its
    topics (they reach for the transport)."""
    app.transport = GatheringTransport(app.conf.broker_consumer, app, fetch_max_wait_ms=fetch_max_wait_ms)
