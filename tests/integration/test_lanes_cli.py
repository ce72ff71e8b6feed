"""`darkroom lanes` against the real Kafka: jobs waiting per lane, from the offsets."""

from __future__ import annotations

from libs import topics
from libs.bus.kafka import KafkaConsumer, KafkaProducer
from libs.bus.offsets import KafkaLaneOffsets, LaneCounts
from libs.bus.ports import TopicPartition
from libs.cli.lanes import format_reports, lane_reports
from libs.lanes import lane_for, lanes, pool_group


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


async def test_a_long_lived_lane_reader_looks_up_each_pool_group_coordinator_once(kafka_bootstrap: str) -> None:
    """The gateway reads the lanes every second: the coordinators of the pool groups are found
    on the first read and kept, and a later read counts what a fresh reader counts."""
    reader = KafkaLaneOffsets(kafka_bootstrap, client_id="test-lane-reader")
    await reader.start()
    try:
        admin = reader._admin
        assert admin is not None
        lookups: list[str] = []
        find_coordinator = admin.find_coordinator

        async def counted(group_id: str, coordinator_type: int = 0) -> int:
            lookups.append(group_id)
            found: int = await find_coordinator(group_id, coordinator_type)
            return found

        admin.find_coordinator = counted
        first = await reader.read()
        assert sorted(lookups) == sorted({pool_group(lane.topic) for lane in lanes().values()})
        lookups.clear()
        producer = KafkaProducer(kafka_bootstrap)
        await producer.start()
        try:
            free = lane_for("free")
            await producer.send(free.topic, b"{}", key=b"j", partition=free.partitions[0])
        finally:
            await producer.stop()
        second = await reader.read()
        assert lookups == []
        assert second["free"].waiting == first["free"].waiting + 1
        assert second == await _fresh_read(kafka_bootstrap)
    finally:
        await reader.stop()


async def _fresh_read(bootstrap: str) -> dict[str, LaneCounts]:
    fresh = KafkaLaneOffsets(bootstrap, client_id="test-lane-reader-fresh")
    await fresh.start()
    try:
        return await fresh.read()
    finally:
        await fresh.stop()
