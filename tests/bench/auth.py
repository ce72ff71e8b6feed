"""`make bench-auth`: sign-ups per second end to end, and what key checks and rate limits cost.

1. Sign-ups: a private stack (the `bench` profile: its own ports and data, every
   service running as `make up` runs them) takes `POST /v1/accounts` from many
   concurrent clients. Each sign-up goes gateway -> Kafka -> auth (a batch at a time,
   FerretDB) -> Kafka -> gateway -> 201. The figure is completed sign-ups per second
   over the whole run; any answer but 201 counts as an error.
2. Per request, on one core: the time `get_principal` and the generation route spend
   on the key (signature, revocation, current tier) and on the rollout, tier limits and
   rate limits (`Limits.admit_generation`), with 100,000 revoked keys and 50,000
   accounts with buckets in memory, measured call by call in this process pinned to
   one CPU.
3. A gateway's start: a replica restores its limits from the metering service's usage
   of each account-day (`darkroom.usage`) and the `GenerateImage` commands and request
   events of one job hold (services/gateway/limits.py; until metering, it read every
   command since 00:00 UTC). The bench writes `--replay` commands, of 20,000 accounts,
   to a private topic on the stack's Kafka and times the usage feed's `load` over it, as
   a replica starting does, then the same decoding and folding with no Kafka, to show
   where the time goes; and `--replay` account-days of usage to another, timed through
   the metered feed's `load` into the same ledger. From the two rates: how long a
   replica's start takes at launch-day scale now (one hold of traffic and a day of
   account-days) and how long it took replaying the day's commands.

Figures are from one run on a shared machine; each level runs `--repeats` times and
the median is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiokafka import AIOKafkaProducer

from libs.access import DEFAULT_POLICIES, AccessState
from libs.apikeys import mint, new_key_id, parse_signing_keys, verify
from libs.bus import EventPublisher
from libs.bus.kafka import KafkaProducer
from libs.bus.logreader import KafkaLogReader
from libs.bus.ports import Record
from libs.events import Envelope
from libs.events.schemas import AccountUsage, GenerateImage, KeyRevoked, TierPolicyChanged
from libs.ratelimit import UsageLedger
from libs.settings import GatewaySettings
from services.gateway.limits import Feed, Limits, UsageHandler
from services.gateway.metered import MeteredUsage
from tests.bench.stack import fresh_bench_stack
from tests.bench.stats import percentile
from tests.helpers import job_spec, scratch_topic

LAUNCH_DAY_COMMANDS = 100_000_000
"""About a launch day's images (700M in the first week), one command each at n=1."""
LAUNCH_DAY_ACCOUNTS = 20_000_000
"""Accounts that generate on such a day (about five images each): one usage record each."""
REQUEST_EVENTS_PER_JOB = 6
"""Request events of a job (docs/benchmarks/pipeline-2core.json), read for jobs' ends."""


async def signups(base_url: str, total: int, concurrency: int) -> dict[str, Any]:
    """Sign up `total` new emails with `concurrency` clients; rate and latency.

    The client is aiohttp: httpx's connection pool costs more CPU than the gateway
    itself at a few hundred connections, and would measure the client.
    """
    run = uuid.uuid4().hex[:8]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(base_url, connector=connector, timeout=timeout) as http:

        async def client() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                t0 = time.perf_counter()
                try:
                    async with http.post("/v1/accounts", json={"email": f"surge-{run}-{i}@example.com"}) as response:
                        await response.read()
                        outcome = str(response.status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    outcome = type(exc).__name__
                if outcome == "201":
                    latencies.append((time.perf_counter() - t0) * 1000)
                else:
                    errors[outcome] = errors.get(outcome, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return {
        "signups": total,
        "concurrency": concurrency,
        "created": len(latencies),
        "errors": errors,
        "signups_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 50), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
    }


def request_overhead(calls: int = 200_000, accounts: int = 50_000, revoked: int = 100_000) -> dict[str, Any]:
    """Per-call time of key validation plus rollout, tier and rate-limit checks, on one core."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    keys = parse_signing_keys("k1=bench-signing-key")
    access = AccessState()
    for i in range(revoked):
        access.apply(KeyRevoked(request_id="r", key_id=f"k1:revoked{i}", account_id=f"acct_r{i}"))
    roomy = DEFAULT_POLICIES["pro"].model_copy(
        update={"requests_per_minute": 10**6, "images_per_day": 10**9, "concurrent_jobs": 10**6}
    )
    access.apply(TierPolicyChanged(tier="pro", policy=roomy))
    limits = Limits(access, UsageLedger())
    api_keys = [mint(f"acct_{i:06d}", "pro", new_key_id(), keys) for i in range(accounts)]
    rng = random.Random(7)
    order = [rng.randrange(accounts) for _ in range(calls)]
    for i in range(accounts):  # every account has its bucket before timing starts
        limits.admit_generation(limits.authorize(verify(api_keys[i], keys)), f"warm{i}", 1, "low")
    samples: list[float] = []
    clock = time.perf_counter_ns
    for n, i in enumerate(order):
        t0 = clock()
        principal = limits.authorize(verify(api_keys[i], keys))
        limits.admit_generation(principal, f"job{n}", 1, "low")
        samples.append((clock() - t0) / 1000)
    return {
        "calls": calls,
        "accounts": accounts,
        "revoked_keys": revoked,
        "p50_us": round(percentile(samples, 50), 1),
        "p99_us": round(percentile(samples, 99), 1),
        "p999_us": round(percentile(samples, 99.9), 1),
    }


async def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    """Write (key, value) records to `topic` in large batches, waiting for every ack."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, max_batch_size=1 << 20)
    await producer.start()
    try:
        pending = [await producer.send(topic, value=value, key=key) for key, value in records]
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def usage_replay(bootstrap: str, commands: int, accounts: int = 20_000) -> dict[str, Any]:
    """Commands per second the usage feed folds at start: over Kafka, and decoding and folding alone."""
    topic = await scratch_topic(bootstrap, "bench.usage-replay", 4)
    now = time.time()
    created = datetime.fromtimestamp(now, UTC)
    since_ms = int(now * 1000) - 1000
    values = [
        Envelope.wrap(
            GenerateImage(job_id=f"job_{i}", spec=job_spec(account_id=f"acct_{i % accounts}"), created_at=created),
            aggregate_id=f"job_{i}",
        ).to_bytes()
        for i in range(commands)
    ]
    await _produce(bootstrap, topic, [(f"job_{i}".encode(), v) for i, v in enumerate(values)])

    def ledger_handler() -> tuple[UsageLedger, UsageHandler]:
        access = AccessState()
        ledger = UsageLedger()
        return ledger, UsageHandler(ledger, access, time.time)

    ledger, handler = ledger_handler()
    reader = KafkaLogReader(bootstrap, [topic], client_id="bench-usage-replay", since_ms={topic: since_ms})
    publisher = EventPublisher(KafkaProducer(bootstrap))  # dead letters only; a look-over feed sends none
    feed = Feed("usage-bench", reader, handler, publisher, owned=False)
    t0 = time.perf_counter()
    await feed.load(timeout_s=3600)
    over_kafka = time.perf_counter() - t0
    await feed.close()
    counted = sum(ledger.images_today(f"acct_{a}", now) for a in range(accounts))

    _, handler = ledger_handler()
    records = [Record(topic=topic, partition=0, offset=i, key=None, value=v) for i, v in enumerate(values)]
    t0 = time.perf_counter()
    for record in records:
        await handler(Envelope.from_bytes(record.value), record)
    in_process = time.perf_counter() - t0
    rate = commands / over_kafka
    return {
        "commands": commands,
        "images_counted": counted,
        "over_kafka_per_s": round(rate),
        "decode_and_fold_per_s": round(commands / in_process),
        "launch_day_minutes": round(LAUNCH_DAY_COMMANDS / rate / 60, 1),
    }


async def metered_load(bootstrap: str, records: int) -> dict[str, Any]:
    """Account-days of metered usage per second the metered feed loads at start, into a ledger."""
    topic = await scratch_topic(bootstrap, "bench.metered-load", 3)
    now = datetime.now(UTC)
    day = now.date().isoformat()
    values = [
        Envelope.wrap(
            AccountUsage(
                account_id=f"acct_{i}", day=day, tier="pro", jobs=1, images=5, output_tokens=1280, completed_through=now
            ),
            aggregate_id=f"acct_{i}|{day}",
        ).to_bytes()
        for i in range(records)
    ]
    await _produce(bootstrap, topic, [(f"acct_{i}".encode(), v) for i, v in enumerate(values)])
    ledger = UsageLedger()
    metered = MeteredUsage(ledger=ledger)
    reader = KafkaLogReader(bootstrap, [topic], client_id="bench-metered-load")
    publisher = EventPublisher(KafkaProducer(bootstrap))
    feed = Feed("metered-bench", reader, metered, publisher, owned=False)
    t0 = time.perf_counter()
    await feed.load(timeout_s=3600)
    elapsed = time.perf_counter() - t0
    await feed.close()
    counted = sum(ledger.images_today(f"acct_{i}", now.timestamp()) for i in range(records))
    return {"records": records, "images_counted": counted, "over_kafka_per_s": round(records / elapsed)}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints the figures and their JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--signups", type=int, default=3000, help="sign-ups per run")
    parser.add_argument("--concurrency", type=int, default=100, help="concurrent clients")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--replay", type=int, default=200_000, help="commands in the usage-replay run")
    parser.add_argument("--keep", action="store_true", help="leave the bench stack running")
    args = parser.parse_args(argv)

    overhead = [request_overhead() for _ in range(args.repeats)]
    median = {k: statistics.median(o[k] for o in overhead) for k in ("p50_us", "p99_us", "p999_us")}
    print(
        f"key validation + rate limiting, one core: p50 {median['p50_us']} us, p99 {median['p99_us']} us, "
        f"p99.9 {median['p999_us']} us (median of {args.repeats} runs of {overhead[0]['calls']} calls)"
    )
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))

    stack = fresh_bench_stack()
    if stack is None:
        return 1
    runs: list[dict[str, Any]] = []
    try:
        asyncio.run(signups(stack.profile.gateway_url, 200, 20))  # warm-up: connections, first batches
        for _ in range(args.repeats):
            result = asyncio.run(signups(stack.profile.gateway_url, args.signups, args.concurrency))
            runs.append(result)
            print(
                f"  {result['signups']} sign-ups, {args.concurrency} concurrent: {result['signups_per_s']} /s, "
                f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, errors {result['errors'] or 0}"
            )
        replays = [asyncio.run(usage_replay(stack.profile.kafka_bootstrap, args.replay)) for _ in range(args.repeats)]
        loads = [asyncio.run(metered_load(stack.profile.kafka_bootstrap, args.replay)) for _ in range(args.repeats)]
    finally:
        if not args.keep:
            stack.down()
    rate = statistics.median(r["signups_per_s"] for r in runs)
    print(f"sign-ups end to end: {rate} /s (median of {len(runs)} runs)")
    replay = {k: statistics.median(r[k] for r in replays) for k in ("over_kafka_per_s", "decode_and_fold_per_s")}
    print(
        f"usage replay at start: {replay['over_kafka_per_s']:.0f} commands/s over Kafka "
        f"({replay['decode_and_fold_per_s']:.0f} /s decoding and folding alone), "
        f"{LAUNCH_DAY_COMMANDS / replay['over_kafka_per_s'] / 60:.1f} minutes for {LAUNCH_DAY_COMMANDS:,} commands "
        f"(median of {len(replays)} runs of {args.replay})"
    )
    usage_rate = statistics.median(r["over_kafka_per_s"] for r in loads)
    hold_s = GatewaySettings().job_hold_s
    hold_records = LAUNCH_DAY_COMMANDS * hold_s / 86400 * (1 + REQUEST_EVENTS_PER_JOB)
    start_s = hold_records / replay["over_kafka_per_s"] + LAUNCH_DAY_ACCOUNTS / usage_rate
    print(
        f"metered usage at start: {usage_rate:.0f} account-days/s over Kafka (median of {len(loads)} runs of "
        f"{args.replay})"
    )
    print(
        f"gateway start at launch-day scale: {start_s / 60:.1f} minutes ({hold_records:,.0f} commands and request "
        f"events of one {hold_s:.0f} s hold, {LAUNCH_DAY_ACCOUNTS:,} account-days of metered usage), "
        f"was {LAUNCH_DAY_COMMANDS / replay['over_kafka_per_s'] / 60:.1f} minutes replaying the day's commands"
    )
    print(
        json.dumps(
            {"request_overhead": overhead, "signups": runs, "usage_replay": replays, "metered_load": loads}, indent=2
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
