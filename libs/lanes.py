"""Lanes: which render topic and partitions serve each tier of each model (infra/topics.yaml).

Every model has its own render topics and decoder pools: the default model's are
`darkroom.render.consumer` and `darkroom.render.api`; a model declared under `models:`
gets `darkroom.render.<model>.consumer` and `.api`, laid out alike. A lane is named by
its tier for the default model and `<model>/<tier>` for another.

A lane also has a priority and a bound. A decoder serves the lanes of the lowest
priority number first (`partitions_to_pause`), and the gateway takes no more jobs for
a lane than its bound allows to wait (503 with retry-after beyond it).

A lane's partitions bound its decoders: a decoder with no partition of a lane never
renders that lane's jobs. `DARKROOM_PARTITIONS_PER_LANE` (a multiple of the declared
count, the same for every process of a deployment) widens every render topic for a
larger pool: copy c of the declared layout adds `c x partitions` to each number, so
partitions only ever grow (Kafka cannot remove any), a lane keeps the ones it had, and
`python -m infra.topics create` adds the new ones to existing topics
(`widen_lanes`, docs/scaling.md). Decoders spread each lane over the pool
(services/decoder/assignor.py).
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Mapping, Set
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from libs import topics
from libs.bus.ports import TopicPartition

DECLARATION = Path(__file__).resolve().parent.parent / "infra" / "topics.yaml"

DEFAULT_MODEL = "darkroom-mini"
"""The model every stack serves; its render topics are RENDER_CONSUMER and RENDER_API."""
POOLS = {"consumer": topics.RENDER_CONSUMER, "api": topics.RENDER_API}
"""A decoder pool -> the default model's render topic it serves."""
MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")
PARTITIONS_PER_LANE = "DARKROOM_PARTITIONS_PER_LANE"
"""The setting that widens every render topic's lanes (unset: as declared)."""


def model_topic(model: str, pool: str) -> topics.Topic:
    """The render topic of a model's decoder pool ("consumer" or "api"), which carries what
    the default model's does (render jobs)."""
    if pool not in POOLS:
        raise KeyError(f"unknown decoder pool {pool!r} (pools: {', '.join(POOLS)})")
    return POOLS[pool] if model == DEFAULT_MODEL else POOLS[pool].renamed(f"darkroom.render.{model}.{pool}")


def partitions_per_lane_setting() -> int | None:
    """The partitions per lane this deployment asks for (`DARKROOM_PARTITIONS_PER_LANE`), or None.

    Raises:
        ValueError: The setting is not a whole number of at least one.
    """
    text = os.environ.get(PARTITIONS_PER_LANE, "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{PARTITIONS_PER_LANE}={text!r}: expected a whole number of partitions per lane, e.g. 8")
    return int(text)


def widen_lanes(topic: str, body: dict[str, Any], per_lane: int) -> dict[str, Any]:
    """A render topic's declaration with `per_lane` partitions in each lane.

    The declared layout is repeated: copy c (from 1) holds every declared partition p as
    `p + c x partitions`, in the same lane. Earlier partitions keep their lanes, so a
    topic grows in place and jobs already queued stay in their lane.

    Raises:
        ValueError: The lanes differ in size, or `per_lane` is not a multiple of it
            (fewer than declared would need partitions removed, which Kafka cannot do).
    """
    lanes_of = {tier: list(parts) for tier, parts in (body.get("lanes") or {}).items()}
    sizes = {len(parts) for parts in lanes_of.values()}
    if not lanes_of:
        return body  # not a render topic
    if len(sizes) != 1:
        raise ValueError(f"{topic}: lanes of different sizes cannot be widened by {PARTITIONS_PER_LANE}")
    declared = sizes.pop()
    if per_lane == declared:
        return body
    if per_lane % declared:
        raise ValueError(
            f"{PARTITIONS_PER_LANE}={per_lane}: {topic} declares {declared} partitions per lane; "
            f"use a multiple of {declared} (Kafka adds partitions but never removes them)"
        )
    partitions = int(body["partitions"])
    copies = range(per_lane // declared)
    return {
        **body,
        "partitions": partitions * len(copies),
        "lanes": {tier: [p + c * partitions for c in copies for p in parts] for tier, parts in lanes_of.items()},
    }


def with_model_topics(raw: dict[str, Any], per_lane: int | None = None) -> dict[str, Any]:
    """The declared topics plus the render topics of every model under `models:`.

    A model beside the default one gets a copy of each default render topic, named by
    `model_topic`, with the same partitions, lanes, priorities and bounds unless its entry
    overrides them (`consumer:` or `api:` with the keys of a topic). With `per_lane`, every
    render topic is widened to that many partitions per lane (`widen_lanes`).

    Raises:
        ValueError: A model's name is not a lowercase name fit for a topic, or the
            lanes cannot be widened to `per_lane`.
    """
    declared: dict[str, Any] = dict(raw["topics"])
    for model, overrides in (raw.get("models") or {}).items():
        if not MODEL_NAME.match(model) or model == DEFAULT_MODEL:
            raise ValueError(f"model {model!r}: a lowercase name of letters, digits, '.' and '-', not the default")
        for pool, topic in POOLS.items():
            body = {**declared[topic], **((overrides or {}).get(pool) or {})}
            body["description"] = f"render jobs of the model {model} ({pool} pool), laid out like {topic}"
            declared[model_topic(model, pool)] = body
    if per_lane is not None:
        declared = {topic: widen_lanes(topic, body, per_lane) for topic, body in declared.items()}
    return declared


@dataclass(frozen=True)
class Lane:
    """A lane: a render topic's partitions for a tier (or a policy's lane) of one model."""

    tier: str
    """The lane's name within its model: a tier, or the lane a tier's policy names."""
    topic: str
    partitions: tuple[int, ...]
    priority: int = 0
    """Lower first: a decoder pauses this lane while a lane of a lower number has work waiting."""
    max_waiting: int | None = None
    """Jobs the lane may hold waiting for a decoder; None: unbounded."""
    model: str = DEFAULT_MODEL
    pool: str = "consumer"

    @property
    def name(self) -> str:
        """The lane's name across models: the tier alone for the default model, else model/tier."""
        return lane_name(self.model, self.tier)

    def partition_for(self, job_id: str) -> int:
        """A stable partition of the lane for a job (spreads jobs over the lane)."""
        return self.partitions[zlib.crc32(job_id.encode()) % len(self.partitions)]


def lane_name(model: str, lane: str) -> str:
    """A lane's name across models: `lane` for the default model, `model/lane` for another."""
    return lane if model in ("", DEFAULT_MODEL) else f"{model}/{lane}"


@cache
def _declared() -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load(DECLARATION.read_text())
    return raw


@cache
def _deployed() -> dict[str, Any]:
    """Every topic as this deployment has it: declared, with each model's render topics,
    lanes widened by `DARKROOM_PARTITIONS_PER_LANE` (read once, like the declaration)."""
    return with_model_topics(_declared(), partitions_per_lane_setting())


def reload_layout() -> None:
    """Read the lanes again, after `DARKROOM_PARTITIONS_PER_LANE` changed (benches and tests
    that run more than one layout in a process)."""
    _deployed.cache_clear()
    lanes.cache_clear()


def declared_partitions(topic: str) -> int:
    """The partitions a topic has in this deployment (infra/topics.yaml, render topics
    widened by `DARKROOM_PARTITIONS_PER_LANE`).

    Raises:
        KeyError: The topic is not declared.
    """
    return int(_deployed()[topic]["partitions"])


def models() -> tuple[str, ...]:
    """Every model with render topics: the default, then those declared under `models:`."""
    return (DEFAULT_MODEL, *(_declared().get("models") or {}))


@cache
def lanes() -> dict[str, Lane]:
    """Every lane of every model, by name (`lane_name`), read once from the declaration."""
    declared = _deployed()
    result: dict[str, Lane] = {}
    for model in models():
        for pool in POOLS:
            topic = model_topic(model, pool)
            body = declared[topic]
            priorities = body.get("lane_priority") or {}
            bounds = body.get("lane_max_waiting") or {}
            for tier, parts in (body.get("lanes") or {}).items():
                bound = bounds.get(tier)
                lane = Lane(
                    tier=tier,
                    topic=topic,
                    partitions=tuple(parts),
                    priority=int(priorities.get(tier, 0)),
                    max_waiting=None if bound is None else int(bound),
                    model=model,
                    pool=pool,
                )
                result[lane.name] = lane
    return result


def base_lanes() -> set[str]:
    """The lanes a tier's policy may name (those of every model, by their name within it)."""
    return {lane.tier for lane in lanes().values()}


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


def lane_for(lane: str, model: str = DEFAULT_MODEL) -> Lane:
    """A model's lane by its name within the model (a tier, or a policy's lane).

    Raises:
        KeyError: The model has no such lane (or no render topics at all).
    """
    return lanes()[lane_name(model, lane)]


def pool_group(topic: str) -> str:
    """The consumer group of the decoder pool that serves a render topic."""
    for lane in lanes().values():
        if lane.topic == topic:
            return f"decoder-{lane.pool}" if lane.model == DEFAULT_MODEL else f"decoder-{lane.model}-{lane.pool}"
    raise KeyError(f"{topic} is not a render topic")
