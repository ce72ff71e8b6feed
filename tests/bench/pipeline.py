"""`make bench-pipeline`: what the pipeline adds between HTTP in and completed out.

Starts a private stack (the `bench` profile: its own ports and data) whose decoders
run `NoOpModel` (the model interface with no compute), so the latency measured is
the pipeline's own: gateway, Kafka hops, requests (with its MongoDB writes), safety
checks, storage (MinIO and MongoDB) and back. It sends jobs through the openai SDK's
HTTP shape at 1, 10 and 50 concurrent clients and prints p50/p99 latency, jobs
per second, the CPU time each process of the stack spent per job (broker and stores
included) and the Kafka messages per job (every topic but the heartbeats), then times
the real built-in model's passes on this CPU. The last line is exactly:
`pipeline: <J> jobs/s at 50 concurrent, <C> ms CPU/job, <M> messages/job, 1-job p50 <P> ms`.

Figures are medians of one run on a noisy machine: compare within a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from typing import Any

import httpx

from tests.bench.stack import (
    cpu_seconds,
    fresh_bench_stack,
    job_messages,
    let_stand_in_grids_through,
    lifted_pro_account,
    message_counts,
)
from tests.bench.stats import percentile


async def run_level(base_url: str, api_key: str, concurrency: int, jobs: int) -> dict[str, Any]:
    """Send `jobs` generations with `concurrency` clients; latency of each, in ms."""
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(jobs):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=120, limits=limits, headers={"authorization": f"Bearer {api_key}"}
    ) as http:

        async def client() -> None:
            nonlocal errors
            while not queue.empty():
                i = queue.get_nowait()
                t0 = time.perf_counter()
                try:
                    response = await http.post(
                        "/v1/images/generations",
                        json={"prompt": f"a red circle number {i}", "quality": "low", "seed": i},
                    )
                except httpx.TimeoutException:
                    errors += 1
                    continue
                if response.status_code == 200:
                    latencies.append((time.perf_counter() - t0) * 1000)
                else:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return {
        "concurrency": concurrency,
        "jobs": jobs,
        "errors": errors,
        "p50_ms": round(percentile(latencies, 50), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "jobs_per_s": round(len(latencies) / elapsed, 1),
    }


def model_pass_times(passes: int = 8, repeats: int = 3) -> dict[str, Any]:
    """Time per pass (and per image) of the built-in model on this machine's CPU."""
    import torch

    from libs.model.registry import load_model

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = load_model("builtin", device="cpu")
    per_pass: list[float] = []
    per_image: list[float] = []
    for r in range(repeats):
        state = model.start("a red circle in the centre", seed=r, total_passes=passes)
        t_image = time.perf_counter()
        while not state.done:
            t0 = time.perf_counter()
            [state] = model.step([state])
            per_pass.append((time.perf_counter() - t0) * 1000)
        model.preview(state.tokens, 256)
        per_image.append((time.perf_counter() - t_image) * 1000)
    return {
        "model": model.name,
        "passes": passes,
        "pass_ms_median": round(statistics.median(per_pass), 1),
        "image_ms_median": round(statistics.median(per_image), 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints a table and the JSON of the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1,10,50", help="concurrency levels")
    parser.add_argument("--jobs-per-level", type=int, default=0, help="default: max(30, 4 x concurrency)")
    parser.add_argument("--keep", action="store_true", help="leave the bench stack running")
    parser.add_argument("--json", default="", help="also write the figures to this file")
    parser.add_argument(
        "--replicas", default="", help='processes per service, e.g. "decoder=2,requests=2" (DARKROOM_BENCH_REPLICAS)'
    )
    args = parser.parse_args(argv)

    os.environ["DARKROOM_MODEL"] = "noop"  # the decoders' model; every other service is real
    if args.replicas:
        os.environ["DARKROOM_BENCH_REPLICAS"] = args.replicas
    stack = fresh_bench_stack("decoders on NoOpModel" + (f", replicas {args.replicas}" if args.replicas else ""))
    if stack is None:
        return 1
    results: list[dict[str, Any]] = []
    try:
        let_stand_in_grids_through(stack)
        account = lifted_pro_account(stack)
        # Warm-up: first jobs pay for connections and lazy loading.
        asyncio.run(run_level(stack.profile.gateway_url, account["api_key"], 2, 10))
        for level in (int(x) for x in args.levels.split(",")):
            jobs = args.jobs_per_level or max(30, 4 * level)
            before, sent_before = cpu_seconds(stack.profile.run_dir), message_counts(stack.profile.kafka_bootstrap)
            result = asyncio.run(run_level(stack.profile.gateway_url, account["api_key"], level, jobs))
            after, sent_after = cpu_seconds(stack.profile.run_dir), message_counts(stack.profile.kafka_bootstrap)
            used = {name: (after[name] - before.get(name, 0.0)) * 1000 / jobs for name in after}
            result["cpu_ms_per_job"] = {k: round(v, 1) for k, v in sorted(used.items(), key=lambda kv: -kv[1])}
            result["cpu_ms_total"] = round(sum(used.values()), 1)
            messages, per_topic = job_messages(sent_before, sent_after, jobs)
            result["messages_per_job"] = round(messages, 1)
            result["messages_per_topic"] = {k: round(v, 2) for k, v in sorted(per_topic.items())}
            results.append(result)
            print(
                f"  {level:3} concurrent: p50 {result['p50_ms']:7.1f} ms  p99 {result['p99_ms']:7.1f} ms  "
                f"{result['jobs_per_s']:6.1f} jobs/s  ({result['jobs']} jobs, {result['errors']} errors)"
            )
            every = ", ".join(f"{name} {ms:.1f}" for name, ms in result["cpu_ms_per_job"].items())
            print(f"      CPU ms per job: {result['cpu_ms_total']:.1f} in all: {every}")
            print(f"      messages per job: {messages:.1f}")
    finally:
        if not args.keep:
            stack.down()
    model = model_pass_times()
    print(
        f"  built-in model on CPU: {model['pass_ms_median']} ms per pass, "
        f"{model['image_ms_median']} ms per {model['passes']}-pass image (median)"
    )
    print(json.dumps({"pipeline_noop_decoder": results, "model_cpu": model}, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({"pipeline_noop_decoder": results, "model_cpu": model}, out, indent=1)
    by_level = {r["concurrency"]: r for r in results}
    if 50 in by_level and 1 in by_level:
        top, one = by_level[50], by_level[1]
        print(
            f"pipeline: {top['jobs_per_s']:.1f} jobs/s at 50 concurrent, {top['cpu_ms_total']:.1f} ms CPU/job, "
            f"{top['messages_per_job']:.1f} messages/job, 1-job p50 {one['p50_ms']:.0f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
