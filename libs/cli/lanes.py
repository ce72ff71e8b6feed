"""`darkroom lanes`: each lane's backlog, whether it is held back, its throughput and refusals.

- waiting and taken come from Kafka's own offsets (`libs.bus.offsets`): the render
  jobs no decoder has taken yet (the pool group's lag) and those taken so far;
- paused, throughput and rejected come from the heartbeats of the last few seconds:
  a decoder reports per lane whether it holds it back and how many jobs it took
  (throughput is the growth of that count per second, summed over decoders), a
  gateway how many jobs it refused because the lane was full;
- images/s and preempted come from the decoders' heartbeats too: the images each
  finished from the lane per second lately, and the renders it handed back to the lane
  for higher-priority jobs since it started (both summed over decoders);
- under the lanes, each live decoder's batch: images in it over its limit, mean
  occupancy and pass time over its recent passes, and images/s (`format_batches`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from libs import topics
from libs.bus.offsets import KafkaLaneOffsets
from libs.events import REGISTRY, DecodeError, Envelope
from libs.events.schemas import BatchLoad, LaneLoad, ServiceHeartbeat
from libs.lanes import lanes, pool_group

CLIENT_ID = "darkroom-lanes"
HEARTBEAT_WINDOW_S = 12.0
"""Heartbeats this recent count (services beat every 2 s)."""


@dataclass(frozen=True)
class LaneReport:
    """One lane now."""

    tier: str
    topic: str
    group: str
    partitions: tuple[int, ...]
    waiting: int
    """Render jobs on the lane that no decoder has taken yet (the pool group's lag)."""
    taken: int
    """Render jobs the pool has taken from the lane (committed offsets over the retained log)."""
    max_waiting: int | None = None
    """The lane's declared bound (a gateway setting may override it)."""
    paused: bool = False
    """Some live decoder holds the lane back for higher-priority lanes."""
    throughput_per_s: float | None = None
    """Jobs taken per second over the heartbeat window; None without two decoder heartbeats."""
    rejected: int = 0
    """Jobs the live gateways refused (503) because the lane was full, since they started."""
    images_per_s: float | None = None
    """Images the live decoders finished from the lane per second lately; None without any."""
    preempted: int = 0
    """Renders the live decoders handed back to the lane for higher-priority jobs."""


@dataclass(frozen=True)
class Sighting:
    """One heartbeat's lane figures (and a decoder's batch)."""

    instance: str
    service: str
    at: datetime
    lanes: dict[str, LaneLoad]
    batch: BatchLoad | None = None


async def lane_reports(
    bootstrap: str, window_s: float = HEARTBEAT_WINDOW_S
) -> tuple[list[LaneReport], dict[str, BatchLoad]]:
    """Every lane's figures, from offsets and the heartbeats of the last `window_s` seconds,
    and each live decoder's batch."""
    reader = KafkaLaneOffsets(bootstrap, client_id=CLIENT_ID)
    await reader.start()
    try:
        counts = await reader.read()
    finally:
        await reader.stop()
    sightings = await recent_sightings(bootstrap, window_s)
    return [
        fold(lane.name, lane.topic, lane.partitions, counts[lane.name].waiting, counts[lane.name].taken, sightings)
        for lane in lanes().values()
    ], latest_batches(sightings)


def fold(
    tier: str, topic: str, partitions: tuple[int, ...], waiting: int, taken: int, sightings: list[Sighting]
) -> LaneReport:
    """A lane's report from its counts and the heartbeats seen (oldest first)."""
    latest: dict[str, Sighting] = {}
    first: dict[str, Sighting] = {}
    for s in sightings:
        if tier in s.lanes:
            first.setdefault(s.instance, s)
            latest[s.instance] = s
    decoders = [i for i, s in latest.items() if s.service == "decoder"]
    throughput: float | None = None
    for instance in decoders:
        a, b = first[instance], latest[instance]
        seconds = (b.at - a.at).total_seconds()
        if seconds > 0:
            throughput = (throughput or 0.0) + (b.lanes[tier].taken - a.lanes[tier].taken) / seconds
    return LaneReport(
        tier=tier,
        topic=topic,
        group=pool_group(topic),
        partitions=partitions,
        waiting=waiting,
        taken=taken,
        max_waiting=lanes()[tier].max_waiting,
        paused=any(latest[i].lanes[tier].paused for i in decoders),
        throughput_per_s=throughput,
        rejected=sum(s.lanes[tier].rejected for s in latest.values() if s.service == "gateway"),
        images_per_s=sum(latest[i].lanes[tier].images_per_s for i in decoders) if decoders else None,
        preempted=sum(latest[i].lanes[tier].preempted for i in decoders),
    )


def latest_batches(sightings: list[Sighting]) -> dict[str, BatchLoad]:
    """Per decoder instance seen, its latest batch figures."""
    return {s.instance: s.batch for s in sightings if s.batch is not None}


async def recent_sightings(bootstrap: str, window_s: float) -> list[Sighting]:
    """The lane figures of every heartbeat of the last `window_s` seconds, oldest first."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, client_id=CLIENT_ID, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topics.HEARTBEATS) or {0}
        tps = [TopicPartition(topics.HEARTBEATS, p) for p in sorted(parts)]
        consumer.assign(tps)
        since = int((time.time() - window_s) * 1000)
        starts = await consumer.offsets_for_times(dict.fromkeys(tps, since))
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            start = starts.get(tp)
            consumer.seek(tp, start.offset if start is not None else ends[tp])
        sightings: list[Sighting] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    sighting = _sighting(record.value)
                    if sighting is not None:
                        sightings.append(sighting)
        return sorted(sightings, key=lambda s: s.at)
    finally:
        await consumer.stop()


def _sighting(raw: bytes | None) -> Sighting | None:
    try:
        envelope = Envelope.from_bytes(raw or b"")
        beat = REGISTRY.decode_as(envelope, ServiceHeartbeat)
    except (DecodeError, ValueError):
        return None
    if not beat.lanes:
        return None
    return Sighting(beat.instance_id, beat.service, envelope.time, beat.lanes, beat.batch)


def format_reports(reports: list[LaneReport]) -> str:
    """A table for the terminal."""
    lines = [
        f"{'lane':6} {'topic':24} {'group':17} {'partitions':11} {'waiting':>8} {'bound':>6} "
        f"{'taken':>8} {'jobs/s':>7} {'img/s':>7} {'paused':>6} {'preempted':>9} {'rejected':>8}"
    ]
    for r in reports:
        parts = f"{r.partitions[0]}-{r.partitions[-1]}"
        bound = "-" if r.max_waiting is None else str(r.max_waiting)
        rate = "-" if r.throughput_per_s is None else f"{r.throughput_per_s:.2f}"
        images = "-" if r.images_per_s is None else f"{r.images_per_s:.2f}"
        lines.append(
            f"{r.tier:6} {r.topic:24} {r.group:17} {parts:11} {r.waiting:8d} {bound:>6} "
            f"{r.taken:8d} {rate:>7} {images:>7} {'yes' if r.paused else 'no':>6} {r.preempted:9d} {r.rejected:8d}"
        )
    return "\n".join(lines) + "\n"


def format_batches(batches: dict[str, BatchLoad]) -> str:
    """Each live decoder's batch, for the terminal (empty without any)."""
    if not batches:
        return ""
    lines = [f"{'decoder':40} {'pool':8} {'batch':>9} {'occupancy':>9} {'pass ms':>8} {'img/s':>7} {'passes':>8}"]
    for instance, b in sorted(batches.items()):
        lines.append(
            f"{instance:40} {b.pool:8} {f'{b.images}/{b.limit}':>9} {b.occupancy:9.0%} "
            f"{b.pass_s * 1000:8.0f} {b.images_per_s:7.2f} {b.passes:8d}"
        )
    return "\n".join(lines) + "\n"
