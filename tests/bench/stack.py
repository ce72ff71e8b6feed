"""The benchmarks' own stack: the `bench` profile (ports +20000), started from nothing."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from infra.stack import Stack, StackError, load_profile
from libs.cli.accounts import create_account
from libs.cli.policy import set_policy as set_tier_policy
from libs.cli.safety_policy import set_policy
from libs.settings import DEV_SIGNING_KEY

DEFAULT_SAFETY_POLICY = Path(__file__).resolve().parents[2] / "services" / "safety" / "default_policy.yaml"


def fresh_bench_stack(note: str = "", process_env: tuple[tuple[str, str, str], ...] = ()) -> Stack | None:
    """Stop any bench stack, wipe its data, start everything; None (and a message) on failure.

    Args:
        note: Printed with the start message.
        process_env: Extra (process, variable, value) settings (`Profile.process_env`).
    """
    stack = Stack(replace(load_profile("bench"), process_env=process_env))
    stack.down()
    shutil.rmtree(stack.profile.run_dir, ignore_errors=True)
    print(f"bench stack: starting{f' ({note})' if note else ''}")
    try:
        stack.up_infra()
        stack.up_services()
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        stack.down()
        return None
    return stack


def let_stand_in_grids_through(stack: Stack) -> None:
    """Publish a safety policy under which a stand-in model's jobs complete.

    NoOpModel's grids are random token soup, which is no drawing at all; a policy without
    content classes keeps the content checks running (they are pipeline cost) but lets
    such grids through, so every job completes.
    """
    policy = yaml.safe_load(DEFAULT_SAFETY_POLICY.read_text())
    for category in policy["categories"]:
        category["content_classes"] = []
    bench_policy = stack.profile.run_dir / "bench-policy.yaml"
    bench_policy.write_text(yaml.safe_dump(policy))
    set_policy(stack.profile.kafka_bootstrap, bench_policy, "bench")


def cpu_seconds(run_dir: Path) -> dict[str, float]:
    """CPU time (user + system) each component of the stack has used so far, by name (the
    processes the stack's supervisord runs)."""
    from infra.supervisor import Supervisor

    used: dict[str, float] = {}
    for program in Supervisor(run_dir).states():
        if program.pid is None:
            continue
        try:
            fields = Path(f"/proc/{program.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, IndexError):
            continue
        used[program.name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return used


CpuSample = tuple[float, int, int]
"""(time.perf_counter(), idle ticks, all ticks) of the whole machine (`/proc/stat`)."""


def machine_ticks() -> tuple[int, int]:
    """The machine's idle ticks (idle and iowait) and all its ticks so far, every core."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(field) for field in stat.readline().split()[1:9]]
    return fields[3] + fields[4], sum(fields)


def idle_share(samples: list[CpuSample], start: float, end: float) -> float | None:
    """The share of the machine's CPU time left idle between `start` and `end`: from the
    last sample at or before `start` to the first at or after `end` (None when the samples
    do not cover the window)."""
    before = [s for s in samples if s[0] <= start]
    after = [s for s in samples if s[0] >= end]
    if not before or not after:
        return None
    (_, idle0, all0), (_, idle1, all1) = before[-1], after[0]
    return (idle1 - idle0) / (all1 - all0) if all1 > all0 else None


class MachineSampler:
    """Samples the machine's idle and total CPU ticks every `interval_s` in a thread, so a
    benchmark can tell afterwards how much of the machine a window of its run left idle
    (`idle_share`): what the stack could not use, as against what it spent."""

    def __init__(self, interval_s: float = 0.25) -> None:
        self.samples: list[CpuSample] = []
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="machine-sampler", daemon=True)

    def _sample(self) -> None:
        self.samples.append((time.perf_counter(), *machine_ticks()))

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._sample()

    def __enter__(self) -> MachineSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


async def _end_offsets(bootstrap: str) -> dict[str, int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from libs import topics

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in topics.ALL_TOPICS
            for p in sorted(consumer.partitions_for_topic(topic) or await _partitions(consumer, topic))
        ]
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    counts: dict[str, int] = {}
    for partition, end in ends.items():
        counts[partition.topic] = counts.get(partition.topic, 0) + end
    return counts


async def _partitions(consumer: Any, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    return consumer.partitions_for_topic(topic) or set()


def message_counts(bootstrap: str) -> dict[str, int]:
    """Messages each topic holds so far (sum of its partitions' end offsets)."""
    return asyncio.run(_end_offsets(bootstrap))


def job_messages(before: dict[str, int], after: dict[str, int], jobs: int) -> tuple[float, dict[str, float]]:
    """Messages per job on the job path between two counts (heartbeats left out: they are
    per second, not per job), in all and per topic."""
    from libs import topics

    per_topic = {
        topic: (after.get(topic, 0) - before.get(topic, 0)) / jobs
        for topic in after
        if topic != topics.HEARTBEATS and after.get(topic, 0) != before.get(topic, 0)
    }
    return sum(per_topic.values()), per_topic


def lifted_pro_account(stack: Stack) -> dict[str, Any]:
    """A new pro account whose tier's limits are lifted (the benches measure the pipeline,
    not the pro tier's limits); the account as `create_account` returns it."""
    set_tier_policy(
        stack.profile.kafka_bootstrap,
        changed_by="bench",
        tier="pro",
        changes={"requests_per_minute": 100_000, "images_per_day": 10**9, "concurrent_jobs": 10_000},
    )
    email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
    return asyncio.run(create_account(stack.profile.kafka_bootstrap, email, "pro", DEV_SIGNING_KEY))
