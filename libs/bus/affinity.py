"""A partition assignor that keeps each job's inputs on one member of a consumer group.

A service that folds several topics into one record per job (the requests service reads
image commands, render progress, safety verdicts and stored images, all keyed by job id)
needs every input of a job handled by the same process: its cache of recent records and
its render leases are in memory. Kafka's assignors place partition p of one topic and
partition p of another on different members (round robin), and a job's key lands on
different partition numbers in topics of different sizes.

With the default partitioner a key goes to `murmur2(key) % partitions`; when every
subscribed topic's partition count is a multiple of G (their greatest common divisor),
`(murmur2(key) % n) % G` is the same for every topic. This assignor gives each member
whole residue classes modulo G, the same class on every topic, so a job's inputs all
reach one member. A group therefore uses at most G members (3 for the requests service's
topics); more stand by and take over on a rebalance.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

from libs.bus.assignment import Members, Plan, PlannedAssignor

log = logging.getLogger(__name__)


class JobAffinityAssignor(PlannedAssignor):
    """Residue classes of partition numbers (modulo the topics' common divisor) per member."""

    name = "darkroom-job-affinity"

    @classmethod
    def plan(cls, partitions: Mapping[str, list[int]], members: Members) -> Plan:
        return affinity_assignment(partitions, members)


def affinity_assignment(partitions: Mapping[str, list[int]], members: Members) -> Plan:
    """member -> topic -> partitions: residue class r (mod the common divisor of the
    partition counts) to the r-th member in id order, wrapping; each member gets only the
    topics it subscribed to."""
    counts = [len(p) for p in partitions.values() if p]
    classes = math.gcd(*counts) if counts else 1
    ordered = sorted(members)
    owned: dict[str, dict[str, list[int]]] = {member: {} for member in ordered}
    if not ordered:
        return owned
    if len(ordered) > classes:
        log.info("%d members for %d partition classes: %d stand by", len(ordered), classes, len(ordered) - classes)
    for topic, numbers in partitions.items():
        for partition in numbers:
            member = ordered[(partition % classes) % len(ordered)]
            if topic in members[member].subscription:
                owned[member].setdefault(topic, []).append(partition)
    return owned
