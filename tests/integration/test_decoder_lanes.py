"""The consumer decoder pool on the real Kafka serves paid lanes before free ones.

A decoder runs in this process against the test stack's Kafka (its own consumer group
on the render topic, as in production); what it publishes goes to an in-memory broker,
where the test reads the order in which it started the jobs.
"""

from __future__ import annotations

import asyncio
import uuid

from libs import topics
from libs.bus.kafka import KafkaConsumer, KafkaProducer
from libs.bus.memory import InMemoryBroker
from libs.events import REGISTRY, Envelope
from libs.events.schemas import RenderJob, RenderStarted
from libs.lanes import lane_for, lane_of
from libs.model.noop import NoOpModel
from libs.runtime.service import run_service
from libs.runtime.wiring import kafka_consumer_factory
from libs.settings import DecoderSettings
from services.decoder.bootstrap import bootstrap
from tests.helpers import eventually, send_to_lane

PASS_S = 0.4
"""The stand-in model's cost per pass: the first job renders for 4 x 0.4 s while the others queue."""


def _job(job_id: str, tier: str) -> RenderJob:
    return RenderJob(
        job_id=job_id,
        tier=tier,
        account_id=f"acct-{tier}",
        prompt="a red circle",
        model="noop",
        seed=1,
        n=1,
        passes=4,
        size=256,
        output_format="png",
        output_compression=100,
        background="auto",
    )


async def test_paid_jobs_waiting_with_free_ones_are_served_first(kafka_bootstrap: str) -> None:
    # One partition: the progress records stay in the order the decoder published them.
    outputs = InMemoryBroker(partitions={topics.RENDER_PROGRESS: 1})
    # A batch of one image: while the first job renders, the decoder has no room, so the
    # others wait in Kafka and the lanes' order decides which comes next.
    settings = DecoderSettings(
        kafka_bootstrap=kafka_bootstrap,
        heartbeat_interval_s=30,
        instance_id=f"decoder-lanes-{uuid.uuid4().hex[:6]}",
        batch_images=1,
    )
    runtime = bootstrap(
        settings,
        producer=outputs.producer(),
        consumer_factory=kafka_consumer_factory(settings, "decoder"),
        model=NoOpModel(pass_seconds=PASS_S),
    )
    run = uuid.uuid4().hex[:6]

    def started() -> list[str]:
        events = [REGISTRY.decode(Envelope.from_bytes(r.value)) for r in outputs.records(topics.RENDER_PROGRESS)]
        return [e.job_id for e in events if isinstance(e, RenderStarted) and run in e.job_id]

    producer = KafkaProducer(kafka_bootstrap)
    stop = asyncio.Event()
    service = asyncio.create_task(run_service(runtime, stop))
    await producer.start()
    try:

        async def assigned() -> bool:
            return bool(runtime.consumers) and bool(runtime.consumers[0].consumer.assignment())

        await eventually(assigned, 60, "the decoder joined its pool")

        async def send(job: RenderJob, index: int = 0) -> None:
            await send_to_lane(producer, job, lane_for(job.tier).partitions[index])

        # A paid job occupies the decoder; meanwhile free jobs queue first, then paid ones.
        await send(_job(f"first-{run}", "pro"))

        async def first_started() -> bool:
            return started() == [f"first-{run}"]

        await eventually(first_started, 30, "the first job started")
        free = [f"free-{i}-{run}" for i in range(4)]
        paid = [f"plus-0-{run}", f"pro-1-{run}"]
        for i, job_id in enumerate(free):
            await send(_job(job_id, "free"), i)
        await send(_job(paid[0], "plus"), 1)
        await send(_job(paid[1], "pro"), 2)

        async def all_started() -> bool:
            return len(started()) == 1 + len(free) + len(paid)

        await eventually(all_started, 60, "every job started")
        order = started()
        assert set(order[1:3]) == set(paid), f"paid jobs were not served before free ones: {order}"
        assert set(order[3:]) == set(free)

        # A job is counted as taken once its handler returns, which can be just after its
        # RenderStarted is read here: the report catches up within moments.
        async def every_take_counted() -> bool:
            report = runtime.lane_report() if runtime.lane_report is not None else {}
            return report["free"].taken >= len(free) and report["plus"].taken >= 1

        await eventually(every_take_counted, 10, "the lane report counted every job taken")
    finally:
        await producer.stop()
        stop.set()
        await asyncio.wait_for(service, 30)


async def test_every_decoder_of_the_pool_gets_paid_and_free_partitions(kafka_bootstrap: str) -> None:
    """Another decoder process adds throughput to every consumer tier, not to one of them."""
    group = f"decoder-spread-{uuid.uuid4().hex[:6]}"
    members = [KafkaConsumer(kafka_bootstrap, group=group, topics=[topics.RENDER_CONSUMER]) for _ in range(3)]
    for member in members:
        await member.start()
    try:

        async def balanced() -> bool:
            for member in members:
                await member.getmany(timeout_ms=100)
            sizes = [len(m.assignment()) for m in members]
            return sum(sizes) == 12 and min(sizes) > 0

        await eventually(balanced, 60, "three members share the render topic")
        for member in members:
            tiers = {lane.tier for tp in member.assignment() if (lane := lane_of(tp)) is not None}
            assert tiers == {"pro", "plus", "free"}, member.assignment()
    finally:
        for member in members:
            await member.stop()
