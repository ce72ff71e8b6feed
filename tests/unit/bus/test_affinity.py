"""The job-affinity assignor: every input of one job reaches the same group member."""

from __future__ import annotations

from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata
from aiokafka.partitioner import murmur2

from libs.bus.affinity import affinity_assignment

TOPICS = {"commands": list(range(6)), "progress": list(range(6)), "verdicts": list(range(3)), "stored": list(range(3))}


def _members(*names: str, topics: tuple[str, ...] = tuple(TOPICS)) -> dict[str, ConsumerProtocolMemberMetadata]:
    return {name: ConsumerProtocolMemberMetadata(0, list(topics), b"") for name in names}


def _owner(assignment: dict[str, dict[str, list[int]]], topic: str, partition: int) -> str:
    [owner] = [m for m, owned in assignment.items() if partition in owned.get(topic, [])]
    return owner


def test_a_jobs_key_lands_on_one_member_whatever_the_topics_size() -> None:
    for members in (_members("m1"), _members("m1", "m2"), _members("m1", "m2", "m3")):
        assignment = affinity_assignment(TOPICS, members)
        for i in range(500):
            key = f"job_{i:05d}".encode()
            owners = {_owner(assignment, t, (murmur2(key) & 0x7FFFFFFF) % len(p)) for t, p in TOPICS.items()}
            assert len(owners) == 1, (key, owners)


def test_every_partition_has_one_owner_and_members_beyond_the_classes_stand_by() -> None:
    assignment = affinity_assignment(TOPICS, _members("m1", "m2", "m3", "m4"))
    for topic, partitions in TOPICS.items():
        owned = sorted(p for member in assignment.values() for p in member.get(topic, []))
        assert owned == partitions
    assert assignment["m4"] == {}  # 3 classes (gcd of 6 and 3), so the fourth member waits
    two = affinity_assignment(TOPICS, _members("m1", "m2"))
    assert two["m1"]["commands"] == [0, 2, 3, 5] and two["m2"]["commands"] == [1, 4]


def test_a_member_gets_only_the_topics_it_subscribed_to() -> None:
    members = _members("m1") | _members("m2", topics=("commands",))
    assignment = affinity_assignment({"commands": list(range(6))}, members)
    assert set(assignment["m2"]) == {"commands"}
