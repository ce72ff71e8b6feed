"""How a decoder pool shares its render topic: every lane dealt out over every decoder.

Kafka's round robin deals a topic's partitions out in number order. With the lanes laid
out in blocks (pro 0-3, plus 4-7, free 8-11) a pool of five gets a decoder with no pro
partition, idle while pro jobs wait, and a pool of eight one with plus partitions only.
This assignor deals each lane's partitions out in turn, carrying on from the member
where the previous lane stopped: every member holds a partition of every lane while the
pool is no larger than a lane's partitions, and all hold the same number, give or take
one. Beyond a lane's partitions the extra decoders stand by for that lane (raise
DARKROOM_PARTITIONS_PER_LANE with the pool: libs.lanes.widen_lanes).

A decoder offers this assignor alone (libs.bus.kafka.KafkaConsumer says why): a pool
switches to it all at once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from libs.bus.assignment import Members, Plan, PlannedAssignor
from libs.bus.ports import TopicPartition
from libs.lanes import lane_of

log = logging.getLogger(__name__)


class LaneSpreadAssignor(PlannedAssignor):
    """Every lane of the render topic dealt out over the pool (`lane_spread`)."""

    name = "darkroom-lane-spread"

    @classmethod
    def plan(cls, partitions: Mapping[str, list[int]], members: Members) -> Plan:
        return lane_spread(partitions, members)


def lane_spread(partitions: Mapping[str, list[int]], members: Members) -> Plan:
    """member -> topic -> partitions, each lane of each topic dealt over its subscribers in
    turn, carrying on from where the previous lane stopped.

    Args:
        partitions: Each topic's partition numbers.
        members: Each member's metadata (its subscribed topics).

    Returns:
        Every member (those with nothing too), with the partitions it owns, in order.
    """
    owned: Plan = {member: {} for member in members}
    for topic in sorted(partitions):
        subscribers = sorted(m for m, metadata in members.items() if topic in metadata.subscription)
        if not subscribers:
            continue
        groups: dict[str, list[int]] = {}
        for partition in sorted(partitions[topic]):
            lane = lane_of(TopicPartition(topic, partition))
            groups.setdefault(lane.name if lane is not None else "", []).append(partition)
        turn = 0
        for name, numbers in groups.items():
            if name and len(numbers) < len(subscribers):
                log.info(
                    "lane %s: %d partitions for %d decoders, the rest stand by", name, len(numbers), len(subscribers)
                )
            for partition in numbers:
                owned[subscribers[turn % len(subscribers)]].setdefault(topic, []).append(partition)
                turn += 1
    return owned
