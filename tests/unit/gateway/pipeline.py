"""The services behind the gateway, wired in memory for its unit tests.

The requests, safety, storage and decoder services run here as they do in production, each
from its own bootstrap, on the in-memory broker and stores the gateway uses, so a gateway
test sees the job lifecycle that `decide` makes, not a script of it. What the tests steer
comes from the wiring, not from a service playing a part:

- the safety policy blocks prompts with the word "forbidden" (category `test`);
- the decoder renders with a stand-in of the no-op model that draws every cell with token 0
  (a flat picture), so a tweak's source grid is known;
- `hold`: while it is cleared, no decoder takes a job from its lane, so jobs wait there
  queued (as in a lane whose decoders are busy) until it is set again;
- the services' heartbeats are kept off the heartbeat topic: which decoders the gateway
  hears of is the tests' to say (`ServiceHeartbeat`s they publish), as before any ran.

`commands`, `generated` and `cancelled` read what the gateway sent on the command topics.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from libs import topics
from libs.bus.memory import InMemoryBroker, InMemoryConsumer, InMemoryProducer
from libs.bus.ports import Consumer, Delivered, Record
from libs.events import REGISTRY, Envelope
from libs.events.schemas import CancelJob, GenerateImage, PolicyCategory, SafetyPolicy
from libs.lanes import lanes, model_topic, models
from libs.model.interface import RenderState
from libs.model.noop import NoOpModel
from libs.runtime.service import ServiceRuntime, run_service
from libs.settings import DecoderSettings, RequestsSettings, SafetySettings, StorageSettings
from libs.stores.ports import BlobStore, DocumentStore
from services.decoder.bootstrap import bootstrap as decoder_service
from services.requests.bootstrap import bootstrap as requests_service
from services.safety.bootstrap import build as safety_service
from services.storage.bootstrap import bootstrap as storage_service

BLOCKED_WORD = "forbidden"
TEST_POLICY = SafetyPolicy(
    version=1,
    categories=[PolicyCategory(name="test", message="blocked by the test policy", terms=[BLOCKED_WORD])],
    updated_by="test",
)
WAKE_TOPIC = "test.wake"
QUIET_S = 3600.0
"""Heartbeats are not published anyway (`QuietProducer`); this only spares the checks."""


def pipeline_broker() -> InMemoryBroker:
    """An in-memory broker with every lane's render partitions and the one-partition topics
    (infra/topics.yaml) the services read from their beginning."""
    counts: dict[str, int] = {topics.SAFETY_POLICY: 1, topics.POLICIES: 1}
    for lane in lanes().values():
        counts[lane.topic] = max(counts.get(lane.topic, 0), max(lane.partitions) + 1)
    return InMemoryBroker(counts)


class FlatModel(NoOpModel):
    """The no-op model drawing every cell it commits with token 0: a flat picture."""

    def step(self, states: list[RenderState]) -> list[RenderState]:
        """See ImageModel.step: the no-op model's schedule, every committed cell 0."""
        return [
            dataclasses.replace(state, tokens=np.where(state.tokens == self.mask_token, self.mask_token, 0))
            for state in super().step(states)
        ]


class ClearClassifier:
    """A content classifier that finds nothing (the real one loads torch weights)."""

    category = "skull"
    threshold = 0.5

    def score_batch(self, images: Sequence[np.ndarray]) -> list[float]:
        return [0.0 for _ in images]


class QuietProducer(InMemoryProducer):
    """A producer that keeps a service's heartbeats to itself (see the module's docstring)."""

    async def send(self, topic: str, value: bytes, **options: Any) -> Delivered:
        if topic == topics.HEARTBEATS:
            return Delivered(topic, 0, -1)
        return await super().send(topic, value, **options)


class HeldConsumer(InMemoryConsumer):
    """A decoder's member of its render topic's group that fetches nothing while `hold` is cleared."""

    def __init__(self, broker: InMemoryBroker, group: str, names: Sequence[str], hold: asyncio.Event) -> None:
        super().__init__(broker, group, names)
        self._hold = hold

    async def getmany(self, timeout_ms: int, max_records: int | None = None) -> list[Record]:
        if not self._hold.is_set():
            try:
                await asyncio.wait_for(self._hold.wait(), timeout_ms / 1000)
            except TimeoutError:
                return []
        return await super().getmany(timeout_ms, max_records)


@dataclass
class Pipeline:
    """The services behind a gateway under test, and what the tests steer and read of them."""

    broker: InMemoryBroker
    hold: asyncio.Event = field(default_factory=asyncio.Event)
    """Decoders take jobs from their lanes only while this is set (set by default)."""

    def __post_init__(self) -> None:
        self.hold.set()

    def _commands(self) -> list[object]:
        # In the order they were sent (event ids are ULIDs, ordered within a process), not
        # partition by partition as the broker keeps them.
        envelopes = [
            Envelope.from_bytes(record.value)
            for topic in topics.with_api_copies([topics.IMAGE_COMMANDS])
            for record in self.broker.records(topic)
        ]
        return [REGISTRY.decode(envelope) for envelope in sorted(envelopes, key=lambda e: e.event_id)]

    @property
    def commands(self) -> list[GenerateImage]:
        """Every job command the gateway sent, in order."""
        return [command for command in self._commands() if isinstance(command, GenerateImage)]

    @property
    def generated(self) -> list[str]:
        """The job ids of every job command, in order."""
        return [command.job_id for command in self.commands]

    @property
    def cancelled(self) -> set[str]:
        """The jobs a cancellation named."""
        return {command.job_id for command in self._commands() if isinstance(command, CancelJob)}

    def consumer(self, group: str, names: Sequence[str]) -> Consumer:
        """A decoder's consumer factory: its render topics' members wait for `hold`."""
        render_topics = {model_topic(model, pool) for model in models() for pool in ("consumer", "api")}
        if render_topics & set(names):
            return HeldConsumer(self.broker, group, names, self.hold)
        return self.broker.consumer(group, names)


@asynccontextmanager
async def running_pipeline(
    broker: InMemoryBroker, documents: DocumentStore, blobs: BlobStore, served: Sequence[str]
) -> AsyncIterator[Pipeline]:
    """Runs the requests, safety and storage services and a consumer-pool decoder of each
    served model until the block ends."""
    pipeline = Pipeline(broker)
    runtimes: list[ServiceRuntime] = [
        requests_service(
            RequestsSettings(heartbeat_interval_s=QUIET_S),
            producer=QuietProducer(broker),
            consumer_factory=broker.consumer,
            documents=documents,
        ),
        safety_service(
            SafetySettings(model="noop", heartbeat_interval_s=QUIET_S),
            producer=QuietProducer(broker),
            consumer_factory=broker.consumer,
            classifier=ClearClassifier(),
            model_loader=lambda name: FlatModel(),
            default_policy=TEST_POLICY,
        ).runtime,
        storage_service(
            StorageSettings(heartbeat_interval_s=QUIET_S),
            producer=QuietProducer(broker),
            consumer_factory=broker.consumer,
            documents=documents,
            blobs=blobs,
        ),
    ]
    for model in served:
        runtimes.append(
            decoder_service(
                DecoderSettings(
                    model="noop", device="cpu", served_model=model, batch_images=8, heartbeat_interval_s=QUIET_S
                ),
                producer=QuietProducer(broker),
                consumer_factory=pipeline.consumer,
                model=FlatModel(),
                version_loader=lambda added: FlatModel(),
            )
        )
    stop = asyncio.Event()
    tasks = [asyncio.create_task(run_service(runtime, stop)) for runtime in runtimes]
    try:
        yield pipeline
    finally:
        pipeline.hold.set()
        stop.set()
        # A record on a topic nobody reads wakes the consumers waiting for one, so they stop now.
        await broker.producer().send(WAKE_TOPIC, b"")
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
