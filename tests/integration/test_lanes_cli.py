"""`darkroom lanes` against the real Kafka: jobs waiting per lane, from the offsets."""

from __future__ import annotations

from libs import topics
from libs.bus.kafka import KafkaConsumer, KafkaProducer
from libs.bus.ports import TopicPartition
from libs.cli.lanes import format_reports, lane_reports
from libs.lanes import lane_for, pool_group


async def _waiting(bootstrap: str) -> dict[str, tuple[int, int]]:
    reports, _ = await lane_reports(bootstrap)
    return {r.tier: (r.waiting, r.taken) for r in reports}


async def test_lanes_count_the_jobs_no_decoder_has_taken(kafka_bootstrap: str) -> None:
    before = await _waiting(kafka_bootstrap)
    producer = KafkaProducer(kafka_bootstrap)
    await producer.start()
    try:
        free, pro = lane_for("free"), lane_for("pro")
        for i in range(3):
            await producer.send(free.topic, b"{}", key=b"j", partition=free.partitions[i % len(free.partitions)])
        await producer.send(pro.topic, b"{}", key=b"j", partition=pro.partitions[0])
    finally:
        await producer.stop()
    after = await _waiting(kafka_bootstrap)
    assert after["free"][0] - before["free"][0] == 3
    assert after["pro"][0] - before["pro"][0] == 1
    assert after["api"] == before["api"] and after["plus"] == before["plus"]

    # The consumer pool takes (commits) what waits on the pro lane: it is no longer waiting.
    member = KafkaConsumer(kafka_bootstrap, group=pool_group(topics.RENDER_CONSUMER), topics=[topics.RENDER_CONSUMER])
    await member.start()
    try:
        taken: dict[TopicPartition, int] = {}
        for _ in range(40):
            for record in await member.getmany(500):
                if record.partition in pro.partitions:
                    taken[record.tp] = record.offset + 1
            if taken:
                await member.commit(taken)
            if (await _waiting(kafka_bootstrap))["pro"][0] == 0:
                break
    finally:
        await member.stop()
    final = await _waiting(kafka_bootstrap)
    assert final["pro"][0] == 0 and final["pro"][1] >= 1
    assert final["free"][0] >= 3, "free jobs not committed stay waiting"
    reports, _ = await lane_reports(kafka_bootstrap)
    assert "free" in format_reports(reports)
