"""`make bench-partitions`: a decoder pool larger than a lane's partitions, before and after widening.

A decoder renders a lane's jobs only from the lane's partitions it holds, so a pool of
more decoders than a lane has partitions leaves the rest idle for that lane. This runs
the same pool twice on the real broker (the `bench` profile's Kafka alone, from empty
data each time): with the declared four partitions per lane, then with
DARKROOM_PARTITIONS_PER_LANE widening every lane (libs.lanes.widen_lanes). Each time:

1. Throughput: a backlog of pro jobs waits, the pool drains it; images/s from the first
   `RenderStarted` to the last pass, and how many decoders rendered any of them. The
   decoders run a stand-in of fixed device time (`noop:S`: S seconds a pass, almost no
   CPU) at batch 1, so each decoder is one device and these 2 cores are not the limit.
2. Rebalancing cost: while a second backlog drains, one more decoder joins the group,
   and every member gives up its partitions and gets new ones (Kafka's eager protocol).
   The stall is the longest gap between two completed jobs after the join; beside it,
   the longest gap before the join (renders finish in waves, one render time apart).

The last line is exactly: `decoders beyond partitions: <N> decoders, <X> vs <Y> images/s
at <W> vs 4 partitions per lane (<a> vs <b> busy); join stall <s1> vs <s2> s`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import time
import uuid
from dataclasses import replace
from typing import Any

from infra.stack import Stack, StackError, load_profile
from libs import lanes as lane_layout
from libs.bus.kafka import KafkaProducer
from libs.events.schemas import RenderJob
from tests.bench.decoder import Watcher, fresh_kafka, publish
from tests.helpers import render_job

PASSES = 8


def _jobs(count: int, run: str) -> list[RenderJob]:
    return [
        render_job(f"bench-{run}-pro-{i}", "pro", model="builtin", seed=i, passes=PASSES, size=64) for i in range(count)
    ]


def _use_layout(per_lane: int | None) -> None:
    """This process and the ones it starts from now on see `per_lane` partitions per lane."""
    if per_lane is None:
        os.environ.pop(lane_layout.PARTITIONS_PER_LANE, None)
    else:
        os.environ[lane_layout.PARTITIONS_PER_LANE] = str(per_lane)
    lane_layout.reload_layout()


def _start_decoder(stack: Stack, instance: str, pass_s: float) -> None:
    env = (
        ("decoder", "DARKROOM_MODEL", f"noop:{pass_s}"),
        ("decoder", "DARKROOM_BATCH_IMAGES", "1"),
        ("decoder", "DARKROOM_HEARTBEAT_INTERVAL_S", "0.5"),
        ("decoder", "DARKROOM_INSTANCE_ID", instance),
    )
    Stack(replace(stack.profile, process_env=env)).start_service("decoder", instance=instance)


async def _pool_run(stack: Stack, decoders: int, backlog: int, pass_s: float) -> dict[str, Any]:
    """Start the pool, drain a backlog, then drain another while one more decoder joins."""
    bootstrap = stack.profile.kafka_bootstrap
    watcher = Watcher(bootstrap)
    await watcher.start()
    producer = KafkaProducer(bootstrap, client_id="bench-partitions")
    await producer.start()
    run = uuid.uuid4().hex[:6]
    instances = [f"decoder-pool-{run}-{i}" for i in range(decoders + 1)]
    try:
        for instance in instances[:decoders]:
            _start_decoder(stack, instance, pass_s)
        await watcher.until(lambda: set(instances[:decoders]) <= watcher.healthy_decoders, 300)
        await asyncio.sleep(8)  # the joins' rebalances are over

        # 1. Throughput of the whole pool on one lane.
        jobs = _jobs(backlog, run)
        await publish(producer, jobs)
        await watcher.until(lambda: all(j.job_id in watcher.finished for j in jobs), 600)
        first = min(watcher.started[j.job_id] for j in jobs)
        last = max(watcher.finished[j.job_id] for j in jobs)
        busy = {watcher.decoder_of[j.job_id] for j in jobs}

        # 2. One more decoder joins while a second backlog drains.
        more = _jobs(backlog, f"{run}b")
        await publish(producer, more)
        await watcher.until(lambda: sum(j.job_id in watcher.finished for j in more) >= backlog // 4, 600)
        joined = time.perf_counter()
        _start_decoder(stack, instances[decoders], pass_s)
        await watcher.until(lambda: all(j.job_id in watcher.finished for j in more), 600)
        done = sorted(watcher.finished[j.job_id] for j in more)
        before = [b - a for a, b in itertools.pairwise(done) if b < joined]
        after = [b - a for a, b in itertools.pairwise(done) if b >= joined]
    finally:
        for instance in instances:
            stack.proc(instance).stop()
        await producer.stop()
        await watcher.stop()
    return {
        "images_per_s": round(backlog / (last - first), 2),
        "decoders_busy": len(busy),
        "longest_gap_before_join_s": round(max(before), 2) if before else 0.0,
        "join_stall_s": round(max(after), 2) if after else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the pool on the declared lanes, then on widened ones; the last line compares them."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decoders", type=int, default=8, help="decoders in the pool")
    parser.add_argument("--per-lane", type=int, default=8, help="partitions per lane once widened")
    parser.add_argument("--pass-s", type=float, default=0.1, help="the stand-in model's seconds per pass")
    parser.add_argument("--backlog", type=int, default=0, help="pro jobs per drain (0: 8 per decoder)")
    parser.add_argument("--json", default="", help="also write the figures to this file")
    args = parser.parse_args(argv)
    backlog = args.backlog or 8 * args.decoders
    stack = Stack(load_profile("bench"))
    figures: dict[str, Any] = {"decoders": args.decoders, "pass_s": args.pass_s, "passes": PASSES}
    device_bound = 1 / (PASSES * args.pass_s)
    print(
        f"{args.decoders} decoders, each one device of {args.pass_s} s a pass at batch 1 "
        f"({device_bound:.2f} images/s each), draining {backlog} pro jobs"
    )
    try:
        for per_lane in (4, args.per_lane):
            _use_layout(per_lane)
            fresh_kafka(stack)
            result = asyncio.run(_pool_run(stack, args.decoders, backlog, args.pass_s))
            figures[f"per_lane_{per_lane}"] = result
            print(
                f"  {per_lane:2} partitions per lane: {result['images_per_s']:6.2f} images/s, "
                f"{result['decoders_busy']} of {args.decoders} decoders busy; a decoder joining stalls "
                f"completions {result['join_stall_s']:.2f} s "
                f"(longest gap before it {result['longest_gap_before_join_s']:.2f} s)"
            )
    except (StackError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.down()
        _use_layout(None)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(figures, out, indent=1)
    narrow, wide = figures["per_lane_4"], figures[f"per_lane_{args.per_lane}"]
    print(
        f"decoders beyond partitions: {args.decoders} decoders, {wide['images_per_s']:.2f} vs "
        f"{narrow['images_per_s']:.2f} images/s at {args.per_lane} vs 4 partitions per lane "
        f"({wide['decoders_busy']} vs {narrow['decoders_busy']} busy); "
        f"join stall {wide['join_stall_s']:.2f} vs {narrow['join_stall_s']:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
