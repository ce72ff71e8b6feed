"""Create the topics declared in infra/topics.yaml (idempotent), and widen render topics.

Usage: python -m infra.topics create [--bootstrap HOST:PORT]
       python -m infra.topics show

With `DARKROOM_PARTITIONS_PER_LANE` set, render topics get that many partitions per lane
(libs.lanes.widen_lanes): created so, or grown in place when they exist with fewer.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from libs.lanes import partitions_per_lane_setting, with_model_topics

DECLARATION = Path(__file__).resolve().parent / "topics.yaml"


@dataclass(frozen=True)
class TopicSpec:
    """One declared topic."""

    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str]
    description: str = ""
    lanes: dict[str, list[int]] = field(default_factory=dict)


class LayoutMismatch(RuntimeError):
    """A render topic in Kafka has more partitions than this deployment's lanes cover."""


def load_specs(path: Path = DECLARATION, per_lane: int | None = None) -> list[TopicSpec]:
    """Read and validate the declaration file.

    Args:
        path: The declaration.
        per_lane: Partitions per lane of every render topic; the setting
            `DARKROOM_PARTITIONS_PER_LANE` (or the declared layout) when omitted.

    Raises:
        ValueError: A lane names a partition outside its topic, or two lanes share one.
    """
    raw: dict[str, Any] = yaml.safe_load(path.read_text())
    defaults = raw.get("defaults", {})
    specs = []
    for name, body in with_model_topics(raw, per_lane or partitions_per_lane_setting()).items():
        config = {**defaults.get("config", {}), **(body.get("config") or {})}
        lanes = {tier: list(parts) for tier, parts in (body.get("lanes") or {}).items()}
        partitions = int(body["partitions"])
        seen: set[int] = set()
        for tier, parts in lanes.items():
            for p in parts:
                if not 0 <= p < partitions:
                    raise ValueError(f"{name}: lane {tier} names partition {p} of {partitions}")
                if p in seen:
                    raise ValueError(f"{name}: partition {p} is in two lanes")
                seen.add(p)
        specs.append(
            TopicSpec(
                name=name,
                partitions=partitions,
                replication_factor=int(body.get("replication_factor", defaults.get("replication_factor", 1))),
                config={k: str(v) for k, v in config.items()},
                description=str(body.get("description", "")),
                lanes=lanes,
            )
        )
    return specs


async def create_topics(bootstrap: str, specs: list[TopicSpec] | None = None, *, replicas: int = 1) -> list[str]:
    """Create every declared topic that does not exist yet; add partitions to a render
    topic that has fewer than its lanes need (never to others: their keys would move).

    Args:
        bootstrap: The cluster.
        specs: The topics (infra/topics.yaml's by default).
        replicas: The cluster's replication factor (1 on one broker, 3 on three): each
            topic gets the smaller of it and its declared factor, and `min.insync.replicas`
            of the smaller of that and its declared minimum.

    Returns:
        The names of the topics created or widened now.

    Raises:
        LayoutMismatch: A render topic has more partitions than its lanes cover (the
            deployment's partitions per lane is lower than the one that made it).
    """
    specs = specs or load_specs()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        created = await _widen_render_topics(admin, [s for s in specs if s.name in existing and s.lanes])
        for spec in missing:
            try:
                factor = min(replicas, spec.replication_factor)
                config = dict(spec.config)
                config["min.insync.replicas"] = str(min(factor, int(config.get("min.insync.replicas", "1"))))
                await admin.create_topics([NewTopic(spec.name, spec.partitions, factor, topic_configs=config)])
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        await admin.close()


async def _widen_render_topics(admin: AIOKafkaAdminClient, specs: list[TopicSpec]) -> list[str]:
    """Grow the render topics that have fewer partitions than their lanes name."""
    if not specs:
        return []
    have = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics([s.name for s in specs])}
    widened = []
    for spec in specs:
        count = have.get(spec.name, spec.partitions)
        if count > spec.partitions:
            raise LayoutMismatch(
                f"{spec.name} has {count} partitions but its lanes name {spec.partitions}: set "
                f"DARKROOM_PARTITIONS_PER_LANE to the value the topic was widened with (partitions never shrink)"
            )
        if count < spec.partitions:
            await admin.create_partitions({spec.name: NewPartitions(total_count=spec.partitions)})
            widened.append(spec.name)
    return widened


def _ranges(partitions: list[int]) -> str:
    """Partition numbers as runs, e.g. "0-3,12-15"."""
    runs: list[list[int]] = []
    for p in sorted(partitions):
        if runs and p == runs[-1][-1] + 1:
            runs[-1].append(p)
        else:
            runs.append([p])
    return ",".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m infra.topics", description=__doc__)
    parser.add_argument("command", choices=["create", "show"])
    parser.add_argument("--bootstrap", default=os.environ.get("DARKROOM_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument(
        "--replicas",
        type=int,
        default=int(os.environ.get("DARKROOM_KAFKA_REPLICATION_FACTOR", "1")),
        help="the cluster's replication factor (1 on one broker, 3 on three)",
    )
    args = parser.parse_args(argv)
    specs = load_specs()
    if args.command == "show":
        for spec in specs:
            lanes = " ".join(f"{t}={_ranges(p)}" for t, p in spec.lanes.items())
            print(f"{spec.name:32} {spec.partitions:3}  {lanes}")
        return 0
    created = asyncio.run(create_topics(args.bootstrap, specs, replicas=args.replicas))
    print(f"topics: {len(created)} created or widened, {len(specs) - len(created)} as they were")
    return 0


if __name__ == "__main__":
    sys.exit(main())
