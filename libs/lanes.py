"""Lanes: which render topic and partitions serve each tier (from infra/topics.yaml)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from libs import topics

DECLARATION = Path(__file__).resolve().parent.parent / "infra" / "topics.yaml"


@dataclass(frozen=True)
class Lane:
    """A tier's lane: its render topic and the partitions it owns there."""

    tier: str
    topic: str
    partitions: tuple[int, ...]

    def partition_for(self, job_id: str) -> int:
        """A stable partition of the lane for a job (spreads jobs over the lane)."""
        return self.partitions[zlib.crc32(job_id.encode()) % len(self.partitions)]


@cache
def lanes() -> dict[str, Lane]:
    """Every tier's lane, read once from the topic declaration."""
    declared = yaml.safe_load(DECLARATION.read_text())["topics"]
    result: dict[str, Lane] = {}
    for topic in (topics.RENDER_CONSUMER, topics.RENDER_API):
        for tier, parts in (declared[topic].get("lanes") or {}).items():
            result[tier] = Lane(tier=tier, topic=topic, partitions=tuple(parts))
    return result


def lane_for(tier: str) -> Lane:
    """The lane of a tier.

    Raises:
        KeyError: The tier has no lane.
    """
    return lanes()[tier]


def pool_group(topic: str) -> str:
    """The consumer group of the decoder pool that serves a render topic."""
    return {topics.RENDER_CONSUMER: "decoder-consumer", topics.RENDER_API: "decoder-api"}[topic]
