"""Which lanes a decoder serves first: the pure rule and the gate that applies it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from libs import topics
from libs.bus.ports import Record, TopicPartition
from libs.lanes import lane_for, lanes, parse_max_waiting, partitions_to_pause
from services.decoder.lanes import LaneGate


def tp(tier: str, index: int = 0) -> TopicPartition:
    lane = lane_for(tier)
    return TopicPartition(lane.topic, lane.partitions[index])


def test_paid_lanes_come_before_free_and_api_has_its_own_topic() -> None:
    assert lane_for("pro").priority == lane_for("plus").priority < lane_for("free").priority
    assert lane_for("api").topic == topics.RENDER_API != lane_for("free").topic
    assert all(lane.max_waiting is not None and lane.max_waiting > 0 for lane in lanes().values())


def test_free_pauses_while_paid_work_waits() -> None:
    assigned = {tp("pro"), tp("plus"), tp("free"), tp("free", 1)}
    assert partitions_to_pause(assigned, {tp("plus"): 1, tp("free"): 9}) == {tp("free"), tp("free", 1)}
    assert partitions_to_pause(assigned, {tp("pro"): 2}) == {tp("free"), tp("free", 1)}


def test_every_lane_is_served_when_no_paid_work_waits() -> None:
    assigned = {tp("pro"), tp("plus"), tp("free")}
    assert partitions_to_pause(assigned, {tp("free"): 40}) == set()
    assert partitions_to_pause(assigned, {}) == set()


def test_paid_work_of_another_decoder_does_not_pause_this_one() -> None:
    # Only the decoder's own partitions count: it cannot take the other's paid jobs.
    assert partitions_to_pause({tp("plus"), tp("free")}, {tp("pro"): 5, tp("plus"): 0}) == set()


def test_lane_bounds_parse_from_a_setting() -> None:
    assert parse_max_waiting("free=500, plus=2000") == {"free": 500, "plus": 2000}
    assert parse_max_waiting("") == {}
    for bad in ("gold=5", "free", "free=many", "free=-1"):
        with pytest.raises(ValueError):
            parse_max_waiting(bad)


class FakeMember:
    """A consumer-group member with set waiting counts (only what the gate uses)."""

    def __init__(self, assigned: set[TopicPartition], waiting: dict[TopicPartition, int]) -> None:
        self.assigned = assigned
        self.counts = waiting
        self.held: set[TopicPartition] = set()

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    async def waiting(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return {p: self.counts.get(p, 0) for p in partitions}

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        self.held.update(partitions)

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        self.held.difference_update(partitions)

    def paused(self) -> set[TopicPartition]:
        return set(self.held)


async def test_the_gate_waits_for_room_then_pauses_and_resumes() -> None:
    calls: list[str] = []

    async def room() -> int:
        calls.append("room")
        return 1

    gate = LaneGate(room)
    member = FakeMember({tp("pro"), tp("free")}, {tp("pro"): 1, tp("free"): 3})
    await gate.before_poll(member)  # type: ignore[arg-type]
    assert calls == ["room"] and member.held == {tp("free")}
    assert gate.report()["free"].paused

    gate.took(Record(tp("pro").topic, tp("pro").partition, 0, b"job", b"{}"))
    member.counts = {tp("free"): 3}
    await gate.before_poll(member)  # type: ignore[arg-type]
    assert member.held == set()
    report = gate.report()
    assert not report["free"].paused and report["pro"].taken == 1


async def test_the_gate_fetches_free_jobs_beside_a_paid_render_only_within_the_mixed_cap() -> None:
    free_room = {"images": 0}  # a paid render fills the mixed cap: no free job may join it

    async def room() -> int:
        return 3  # the batch limit would take three more images

    def room_for(priority: int) -> int:
        return 3 if priority == lane_for("pro").priority else free_room["images"]

    gate = LaneGate(room, room_for)
    member = FakeMember({tp("pro"), tp("free")}, {tp("pro"): 2, tp("free"): 5})
    assert await gate.before_poll(member) == 3  # type: ignore[arg-type]  # paid jobs: the batch limit

    member.counts = {tp("free"): 5}
    fetch = asyncio.create_task(gate.before_poll(member))  # type: ignore[arg-type]
    await asyncio.sleep(0.2)
    assert not fetch.done()  # free jobs wait while the cap keeps them out
    free_room["images"] = 1  # the paid render ended
    assert await asyncio.wait_for(fetch, 1) == 1
