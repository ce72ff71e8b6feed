"""Kafka partition assignors whose plan is a pure function, tested without a broker.

aiokafka asks an assignor (on the group's leader) for every member's partitions given
the cluster's metadata; darkroom's assignors derive that from the subscribed topics'
partition numbers and the members' subscriptions alone, in `plan`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata

Members = Mapping[str, ConsumerProtocolMemberMetadata]
Plan = dict[str, dict[str, list[int]]]
"""member -> topic -> the partitions it owns."""


class PlannedAssignor(AbstractPartitionAssignor):  # type: ignore[misc]
    """An assignor over `plan`; subclasses name themselves and give the plan."""

    name = "darkroom-planned"
    version = 0

    @classmethod
    def plan(cls, partitions: Mapping[str, list[int]], members: Members) -> Plan:
        """Each member's partitions, from every subscribed topic's partition numbers."""
        raise NotImplementedError

    @classmethod
    def assign(cls, cluster: ClusterMetadata, members: Members) -> dict[str, ConsumerProtocolMemberAssignment]:
        topics = sorted({topic for metadata in members.values() for topic in metadata.subscription})
        partitions = {topic: sorted(cluster.partitions_for_topic(topic) or ()) for topic in topics}
        return {
            member: ConsumerProtocolMemberAssignment(cls.version, sorted(owned.items()), b"")
            for member, owned in cls.plan(partitions, members).items()
        }

    @classmethod
    def metadata(cls, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        return ConsumerProtocolMemberMetadata(cls.version, list(topics), b"")

    @classmethod
    def on_assignment(cls, assignment: ConsumerProtocolMemberAssignment) -> None:
        pass
