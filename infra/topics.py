"""Create the topics declared in infra/topics.yaml (idempotent).

Usage: python -m infra.topics create [--bootstrap HOST:PORT]
       python -m infra.topics show
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
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from libs.lanes import with_model_topics

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


def load_specs(path: Path = DECLARATION) -> list[TopicSpec]:
    """Read and validate the declaration file.

    Raises:
        ValueError: A lane names a partition outside its topic, or two lanes share one.
    """
    raw: dict[str, Any] = yaml.safe_load(path.read_text())
    defaults = raw.get("defaults", {})
    specs = []
    for name, body in with_model_topics(raw).items():
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
    """Create every declared topic that does not exist yet.

    Args:
        bootstrap: The cluster.
        specs: The topics (infra/topics.yaml's by default).
        replicas: The cluster's replication factor (1 on one broker, 3 on three): each
            topic gets the smaller of it and its declared factor, and `min.insync.replicas`
            of the smaller of that and its declared minimum.

    Returns:
        The names of the topics created now.
    """
    specs = specs or load_specs()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        created = []
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
            lanes = " ".join(f"{t}={p[0]}-{p[-1]}" for t, p in spec.lanes.items())
            print(f"{spec.name:32} {spec.partitions:3}  {lanes}")
        return 0
    created = asyncio.run(create_topics(args.bootstrap, specs, replicas=args.replicas))
    print(f"topics: {len(created)} created, {len(specs) - len(created)} already present")
    return 0


if __name__ == "__main__":
    sys.exit(main())
