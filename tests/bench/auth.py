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
from typing import Any

import aiohttp

from libs.access import DEFAULT_POLICIES, AccessState
from libs.apikeys import mint, new_key_id, parse_signing_keys, verify
from libs.events.schemas import KeyRevoked, TierPolicyChanged
from libs.ratelimit import UsageLedger
from services.gateway.limits import Limits
from tests.bench.stack import fresh_bench_stack
from tests.bench.stats import percentile


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
    scope: dict[str, Any] = {}
    for i in range(accounts):  # every account has its bucket before timing starts
        limits.admit_generation(scope, limits.authorize(verify(api_keys[i], keys)), f"warm{i}", 1, "low")
    samples: list[float] = []
    clock = time.perf_counter_ns
    for n, i in enumerate(order):
        t0 = clock()
        principal = limits.authorize(verify(api_keys[i], keys))
        limits.admit_generation(scope, principal, f"job{n}", 1, "low")
        samples.append((clock() - t0) / 1000)
    return {
        "calls": calls,
        "accounts": accounts,
        "revoked_keys": revoked,
        "p50_us": round(percentile(samples, 50), 1),
        "p99_us": round(percentile(samples, 99), 1),
        "p999_us": round(percentile(samples, 99.9), 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints the figures and their JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--signups", type=int, default=3000, help="sign-ups per run")
    parser.add_argument("--concurrency", type=int, default=100, help="concurrent clients")
    parser.add_argument("--repeats", type=int, default=3)
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
    finally:
        if not args.keep:
            stack.down()
    rate = statistics.median(r["signups_per_s"] for r in runs)
    print(f"sign-ups end to end: {rate} /s (median of {len(runs)} runs)")
    print(json.dumps({"request_overhead": overhead, "signups": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
