"""Lanes: which render topic and partitions serve each tier (from infra/topics.yaml).

A lane also has a priority and a bound. A decoder serves the lanes of the lowest
priority number first (`partitions_to_pause`), and the gateway takes no more jobs for
a lane than its bound allows to wait (503 with retry-after beyond it).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Set
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from libs import topics
from libs.bus.ports import TopicPartition

DECLARATION = Path(__file__).resolve().parent.parent / "infra" / "topics.yaml"


@dataclass(frozen=True)
class Lane:
    """A tier's lane: its render topic and the partitions it owns there."""

    tier: str
    topic: str
    partitions: tuple[int, ...]
    priority: int = 0
    """Lower first: a decoder pauses this lane while a lane of a lower number has work waiting."""
    max_waiting: int | None = None
    """Jobs the lane may hold waiting for a decoder; None: unbounded."""

    def partition_for(self, job_id: str) -> int:
        """A stable partition of the lane for a job (spreads jobs over the lane)."""
        return self.partitions[zlib.crc32(job_id.encode()) % len(self.partitions)]


@cache
def lanes() -> dict[str, Lane]:
    """Every tier's lane, read once from the topic declaration."""
    declared = yaml.safe_load(DECLARATION.read_text())["topics"]
    result: dict[str, Lane] = {}
    for topic in (topics.RENDER_CONSUMER, topics.RENDER_API):
        body = declared[topic]
        priorities = body.get("lane_priority") or {}
        bounds = body.get("lane_max_waiting") or {}
        for tier, parts in (body.get("lanes") or {}).items():
            bound = bounds.get(tier)
            result[tier] = Lane(
                tier=tier,
                topic=topic,
                partitions=tuple(parts),
                priority=int(priorities.get(tier, 0)),
                max_waiting=None if bound is None else int(bound),
            )
    return result


def lane_of(tp: TopicPartition) -> Lane | None:
    """The lane a render partition belongs to, or None for a partition outside every lane."""
    for lane in lanes().values():
        if lane.topic == tp.topic and tp.partition in lane.partitions:
            return lane
    return None


def partitions_to_pause(assigned: Set[TopicPartition], waiting: Mapping[TopicPartition, int]) -> set[TopicPartition]:
    """Which of a decoder's partitions wait while higher-priority work is there.

    The decoder takes its next job only when it has room to render it, and at that
    moment asks this: if any of its partitions of priority p has jobs waiting, every
    partition of a higher number than p pauses (free waits while pro or plus has work);
    with nothing waiting above them, every lane is served. Lanes of equal priority
    share the decoder in the broker's fetch order. A partition outside every lane counts
    as priority 0.

    Args:
        assigned: The decoder's partitions.
        waiting: Jobs waiting per partition (unknown partitions count as 0).

    Returns:
        The partitions to pause; every other assigned partition is to be served.
    """

    def priority(tp: TopicPartition) -> int:
        lane = lane_of(tp)
        return lane.priority if lane is not None else 0

    busy = [priority(tp) for tp in assigned if waiting.get(tp, 0) > 0]
    if not busy:
        return set()
    first = min(busy)
    return {tp for tp in assigned if priority(tp) > first}


def parse_max_waiting(text: str) -> dict[str, int]:
    """Per-lane bounds from a setting such as "free=500,plus=2000".

    Raises:
        ValueError: An unknown lane, or a bound that is not a whole number >= 0.
    """
    bounds: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in lanes():
            raise ValueError(f"{item!r}: expected lane=count with a lane among {', '.join(sorted(lanes()))}")
        try:
            bound = int(value)
        except ValueError:
            raise ValueError(f"{item!r}: the bound must be a whole number") from None
        if bound < 0:
            raise ValueError(f"{item!r}: the bound must be 0 or more")
        bounds[name] = bound
    return bounds


def lane_for(tier: str) -> Lane:
    """The lane of a tier.

    Raises:
        KeyError: The tier has no lane.
    """
    return lanes()[tier]


def pool_group(topic: str) -> str:
    """The consumer group of the decoder pool that serves a render topic."""
    return {topics.RENDER_CONSUMER: "decoder-consumer", topics.RENDER_API: "decoder-api"}[topic]
