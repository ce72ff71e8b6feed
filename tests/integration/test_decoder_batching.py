"""The batching decoder on the real Kafka: a paid job takes a free render's place within a pass.

A decoder runs in this process against the test stack's Kafka (its pool's consumer group
on the render topic, as in production); what it publishes goes to an in-memory broker,
where the test reads what happened. The test plays the requests service's part of a
preemption: it dispatches the preempted job again from its checkpoint, as attempt 1.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from typing import TypeVar

from libs import topics
from libs.bus.kafka import KafkaProducer
from libs.bus.memory import InMemoryBroker
from libs.events import REGISTRY, Envelope
from libs.events.schemas import RenderJob, RenderProgressed, RenderStarted, RenderStopped, StoreImage
from libs.jobs import reported_passes
from libs.model.interface import RenderState, pack_tokens
from libs.model.noop import NoOpModel
from libs.runtime.service import run_service
from libs.runtime.wiring import kafka_consumer_factory
from libs.settings import DecoderSettings
from services.decoder.bootstrap import bootstrap
from tests.helpers import eventually, render_job, send_to_lane

DecoderEvent = TypeVar("DecoderEvent", RenderProgressed, RenderStarted, RenderStopped, StoreImage)

PASS_S = 0.25
"""The stand-in model's cost per batched pass."""


class CountingModel(NoOpModel):
    """The stand-in, recording the jobs (prompts) of every batched pass."""

    def __init__(self) -> None:
        super().__init__(pass_seconds=PASS_S)
        self.passes: list[list[str]] = []

    def step(self, states: list[RenderState]) -> list[RenderState]:
        self.passes.append([s.prompt for s in states])
        return super().step(states)


def _job(job_id: str, tier: str, passes: int) -> RenderJob:
    return render_job(job_id, tier, passes=passes, seed=len(job_id))


async def test_a_paid_job_preempts_a_free_render_within_a_pass_and_the_free_one_resumes_exactly(
    kafka_bootstrap: str,
) -> None:
    outputs = InMemoryBroker(partitions={topics.RENDER_PROGRESS: 1, topics.STORAGE_BLOBS: 1})
    settings = DecoderSettings(
        kafka_bootstrap=kafka_bootstrap,
        heartbeat_interval_s=30,
        instance_id=f"decoder-batch-{uuid.uuid4().hex[:6]}",
        batch_images=2,
        # A mixed cap as large as the batch: only the preemption for room applies here (the
        # CPU default, 1, would take both free renders out; tests/unit/decoder covers it).
        mixed_batch_images=2,
    )
    model = CountingModel()
    runtime = bootstrap(
        settings, producer=outputs.producer(), consumer_factory=kafka_consumer_factory(settings, "decoder"), model=model
    )
    run = uuid.uuid4().hex[:6]

    def events(kind: type[DecoderEvent], job_id: str) -> list[DecoderEvent]:
        topic = topics.STORAGE_BLOBS if kind is StoreImage else topics.RENDER_PROGRESS
        decoded = (REGISTRY.decode(Envelope.from_bytes(r.value)) for r in outputs.records(topic))
        return [e for e in decoded if isinstance(e, kind) and e.job_id == job_id]

    producer = KafkaProducer(kafka_bootstrap)
    stop = asyncio.Event()
    service = asyncio.create_task(run_service(runtime, stop))
    await producer.start()
    try:

        async def assigned() -> bool:
            return bool(runtime.consumers) and bool(runtime.consumers[0].consumer.assignment())

        await eventually(assigned, 60, "the decoder joined its pool")

        async def send(job: RenderJob) -> None:
            await send_to_lane(producer, job)

        old, young = _job(f"free-old-{run}", "free", 16), _job(f"free-young-{run}", "free", 16)
        await send(old)

        async def old_rendering() -> bool:
            return bool(events(RenderProgressed, old.job_id))

        await eventually(old_rendering, 30, "the first free render")
        await send(young)

        async def full() -> bool:
            return bool(events(RenderProgressed, young.job_id))

        await eventually(full, 30, "a batch full of free renders")

        # Phase 1: a paid job arrives; a free render leaves at the next boundary and the paid
        # job runs its first pass at most one pass after the one in flight when it came.
        paid = _job(f"paid-{run}", "pro", 4)
        passes_before = len(model.passes)
        await send(paid)

        async def paid_stored() -> bool:
            return bool(events(StoreImage, paid.job_id))

        await eventually(paid_stored, 30, "the paid render")
        first = next(i for i, batch in enumerate(model.passes) if paid.job_id in batch)
        assert first <= passes_before + 1, f"the paid job waited {first - passes_before} passes"
        [stopped] = events(RenderStopped, young.job_id)
        assert (stopped.reason, stopped.attempt) == ("preempted", 0)
        assert events(RenderStopped, old.job_id) == []
        checkpoint = events(RenderProgressed, young.job_id)[-1]
        assert checkpoint.pass_index == stopped.pass_index

        # Phase 2: dispatched again from its checkpoint, it resumes there and ends exactly like
        # an unbatched render of the same seed, stored once.
        await send(
            young.model_copy(
                update={"attempt": 1, "resume_pass": stopped.pass_index, "resume_tokens": checkpoint.tokens}
            )
        )

        async def young_stored() -> bool:
            return bool(events(StoreImage, young.job_id)) and bool(events(StoreImage, old.job_id))

        await eventually(young_stored, 30, "the resumed render")
        [stored] = events(StoreImage, young.job_id)
        state = NoOpModel().start(young.prompt, young.seed, young.passes)
        while not state.done:
            [state] = NoOpModel().step([state])
        assert base64.b64decode(stored.tokens) == pack_tokens(state.tokens)
        starts = [(s.attempt, s.pass_index) for s in events(RenderStarted, young.job_id)]
        assert starts == [(0, 0), (1, stopped.pass_index)]
        # Every pass the schedule reports once, and the one it was preempted after: none lost,
        # none repeated.
        reported = [p.pass_index for p in events(RenderProgressed, young.job_id)]
        shown = young.preview_passes + young.content_check_passes
        assert reported == sorted({*reported_passes(16, shown), stopped.pass_index})
    finally:
        await producer.stop()
        stop.set()
        await asyncio.wait_for(service, 30)
