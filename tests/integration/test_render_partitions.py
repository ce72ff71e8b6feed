"""Render topics widened on the real Kafka, and a decoder pool dealing every lane to every member."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
import yaml
from aiokafka.admin import AIOKafkaAdminClient

from infra.topics import LayoutMismatch, create_topics, load_specs
from libs.bus.kafka import KafkaConsumer
from libs.bus.ports import TopicPartition
from libs.lanes import Lane
from services.decoder import assignor
from services.decoder.assignor import LaneSpreadAssignor


def _declaration(tmp_path: Path, topic: str) -> Path:
    path = tmp_path / "topics.yaml"
    body = {"partitions": 6, "lanes": {"paid": [0, 1, 2], "free": [3, 4, 5]}, "lane_priority": {"paid": 0, "free": 1}}
    path.write_text(yaml.safe_dump({"topics": {topic: body}}))
    return path


async def _partition_count(bootstrap: str, topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
        return len(described["partitions"])
    finally:
        await admin.close()


async def test_a_render_topic_grows_in_place_and_never_shrinks(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = f"test.render.{uuid.uuid4().hex[:8]}"
    declared = _declaration(tmp_path, topic)
    assert await create_topics(kafka_bootstrap, load_specs(declared, per_lane=3)) == [topic]
    assert await _partition_count(kafka_bootstrap, topic) == 6
    assert await create_topics(kafka_bootstrap, load_specs(declared, per_lane=3)) == []

    assert await create_topics(kafka_bootstrap, load_specs(declared, per_lane=6)) == [topic], "widened"
    assert await _partition_count(kafka_bootstrap, topic) == 12
    with pytest.raises(LayoutMismatch, match="partitions never shrink"):
        await create_topics(kafka_bootstrap, load_specs(declared, per_lane=3))


async def test_six_decoders_on_two_lanes_of_six_each_hold_both_lanes(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Phase 1: a render topic of two lanes, six partitions each (Kafka's round robin would
    # leave three of six members without a partition of the first lane).
    topic = f"test.render.{uuid.uuid4().hex[:8]}"
    [spec] = load_specs(_declaration(tmp_path, topic), per_lane=6)
    await create_topics(kafka_bootstrap, [spec])
    layout = {p: Lane(tier, topic, tuple(parts)) for tier, parts in spec.lanes.items() for p in parts}
    monkeypatch.setattr(assignor, "lane_of", lambda tp: layout.get(tp.partition) if tp.topic == topic else None)

    # Phase 2: six members of one group, with the decoders' assignor, until all 12 are dealt.
    group = f"decoders-{uuid.uuid4().hex[:6]}"
    members = [
        KafkaConsumer(kafka_bootstrap, group=group, topics=[topic], assignor=LaneSpreadAssignor) for _ in range(6)
    ]
    for member in members:
        await member.start()
    try:

        async def settled() -> list[set[TopicPartition]]:
            # Every member holding something, twelve in all, the same on two rounds in a row.
            last: list[set[TopicPartition]] = []
            while True:
                await asyncio.gather(*(m.getmany(timeout_ms=200) for m in members))
                held = [m.assignment() for m in members]
                if held == last and sum(len(h) for h in held) == 12 and all(held):
                    return held
                last = held

        held = await asyncio.wait_for(settled(), 60)
    finally:
        await asyncio.gather(*(m.stop() for m in members))

    # Phase 3: each member holds one partition of each lane.
    for owned in held:
        assert sorted(layout[tp.partition].tier for tp in owned) == ["free", "paid"], held
