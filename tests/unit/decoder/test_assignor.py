"""The decoder pool's assignor: every decoder holds a partition of every lane while it can."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

from libs import lanes as lane_layout
from libs import topics
from libs.bus.ports import TopicPartition
from libs.lanes import lane_of
from services.decoder.assignor import lane_spread


def _members(count: int, topic: str = topics.RENDER_CONSUMER) -> dict[str, ConsumerProtocolMemberMetadata]:
    return {f"decoder-{i}": ConsumerProtocolMemberMetadata(0, [topic], b"") for i in range(count)}


def _lanes_held(owned: dict[str, list[int]], topic: str = topics.RENDER_CONSUMER) -> set[str]:
    held = set()
    for partition in owned.get(topic, []):
        lane = lane_of(TopicPartition(topic, partition))
        assert lane is not None
        held.add(lane.name)
    return held


@pytest.fixture
def eight_per_lane(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("DARKROOM_PARTITIONS_PER_LANE", "8")
    lane_layout.reload_layout()
    yield
    monkeypatch.delenv("DARKROOM_PARTITIONS_PER_LANE")
    lane_layout.reload_layout()


def _check_plan(partition_count: int, decoders: int) -> dict[str, dict[str, list[int]]]:
    plan = lane_spread({topics.RENDER_CONSUMER: list(range(partition_count))}, _members(decoders))
    dealt = sorted(p for owned in plan.values() for p in owned.get(topics.RENDER_CONSUMER, []))
    assert dealt == list(range(partition_count)), "every partition once"
    sizes = [len(owned.get(topics.RENDER_CONSUMER, [])) for owned in plan.values()]
    assert max(sizes) - min(sizes) <= 1, sizes
    return plan


def test_up_to_a_lanes_partitions_every_decoder_serves_every_lane() -> None:
    for decoders in (1, 2, 3, 4):
        plan = _check_plan(12, decoders)
        assert all(_lanes_held(owned) == {"pro", "plus", "free"} for owned in plan.values()), plan


def test_beyond_a_lanes_partitions_the_extra_decoders_stand_by_for_it() -> None:
    plan = _check_plan(12, 6)
    for lane in ("pro", "plus", "free"):
        assert sum(lane in _lanes_held(owned) for owned in plan.values()) == 4


def test_widened_lanes_give_eight_decoders_every_lane(eight_per_lane: None) -> None:
    for decoders in (5, 6, 7, 8):
        plan = _check_plan(24, decoders)
        assert all(_lanes_held(owned) == {"pro", "plus", "free"} for owned in plan.values()), (decoders, plan)


def test_a_member_gets_only_the_topics_it_subscribed_to() -> None:
    members = {**_members(2), "api-decoder": ConsumerProtocolMemberMetadata(0, [topics.RENDER_API], b"")}
    plan = lane_spread({topics.RENDER_CONSUMER: list(range(12)), topics.RENDER_API: list(range(4))}, members)
    assert plan["api-decoder"] == {topics.RENDER_API: [0, 1, 2, 3]}
    assert all(set(plan[m]) == {topics.RENDER_CONSUMER} for m in ("decoder-0", "decoder-1"))
