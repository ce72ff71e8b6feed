"""`make bench-decoder`: what batching buys, alone and inside the decoder service.

Three measures, in one run on one machine (compare within a run, never across machines):

1. The model alone: the built-in model renders B images together, 8 passes each, and
   encodes each final 256x256 PNG, for B in 1, 2, 4, ... 64: images/s, median of repeats,
   called as the decoder calls it (on a CPU, each pass in slices on every core).
   On CUDA it runs twice, with darkroom's Triton kernels on and off (DARKROOM_KERNELS).
   The aMUSEd adapter's sweep follows (`--amused FOLDER`, by default a tiny random aMUSEd
   built for the run: it shows the adapter's overhead, not a real model's cost).
2. The decoder service alone on the real broker (the `bench` profile's Kafka, nothing
   else, started from an empty data folder for each measure): a backlog of jobs waits in
   its lane, one decoder process drains it at its batch limit; images/s from its first
   `RenderStarted` to its last image, and the batch's mean occupancy (image-passes
   rendered over batched passes times the limit, the passes from its heartbeat). The
   ratio to the model alone at the same limit is what the service loses to Kafka,
   events and encoding.
3. Paid latency in a free flood: a backlog of free jobs fills the batch, then paid jobs
   arrive one at a time; each one's latency is from its publishing to its last pass. With
   preemption on, a paid job takes a free render's place at the next pass boundary; off,
   it waits until a free render ends. Reported as p50/p99 and over the render time at the
   batch limit (8 passes of a full batch, the model alone).

The last line is exactly: `batching gain: <X>x at batch <B> (<device>); service/model: <R>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from infra.stack import Stack, StackError, load_profile
from libs import topics
from libs.bus.kafka import KafkaProducer
from libs.events import REGISTRY, DecodeError, Envelope
from libs.events.schemas import RenderJob, RenderProgressed, RenderStarted, ServiceHeartbeat
from libs.settings import DEFAULT_BATCH_IMAGES
from tests.bench import model as bench_model
from tests.bench.model import BATCHES, PROMPTS
from tests.bench.stats import percentile
from tests.helpers import render_job, send_to_lane
from tests.tiny_amused import build_tiny_amused

PASSES = 8
SIZE = 256


# -- 1. the model alone: tests/bench/model.py -------------------------------------------------


def model_rates(batches: tuple[int, ...], repeats: int, device: str, name: str = "builtin") -> dict[int, float]:
    """Images/s of whole renders (8 passes, final 256x256 PNG) at each batch size, called as
    the decoder calls the model (`bench_model.decoder_layout`); medians."""
    model = bench_model.load(device, name)
    split = bench_model.decoder_layout(model)
    try:
        rates = bench_model.model_alone(
            model, batches, bench_model.RenderShape(passes=PASSES, size=SIZE), repeats, split
        )
    finally:
        split.close()
    return {batch: rate.images_per_s for batch, rate in rates.items()}


# -- the broker side ---------------------------------------------------------------------------


def _job(tier: str, index: int, run: str) -> RenderJob:
    prompt = PROMPTS[index % len(PROMPTS)]
    return render_job(
        f"bench-{run}-{tier}-{index}", tier, prompt=prompt, model="builtin", seed=index, passes=PASSES, size=SIZE
    )


class Watcher:
    """Reads the progress and heartbeat topics from now on, recording when each job started
    and finished (its last pass), and the decoder's latest batch figures."""

    def __init__(self, bootstrap: str) -> None:
        self._bootstrap = bootstrap
        self.started: dict[str, float] = {}
        self.finished: dict[str, float] = {}
        self.preempted: set[str] = set()
        self.decoder_of: dict[str, str] = {}
        """job id -> the decoder that started rendering it."""
        self.healthy_decoders: set[str] = set()
        self.batch_passes = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            topics.RENDER_PROGRESS,
            topics.HEARTBEATS,
            bootstrap_servers=self._bootstrap,
            auto_offset_reset="latest",
            enable_auto_commit=False,
            fetch_max_wait_ms=20,
        )
        await self._consumer.start()
        await self._consumer.getmany(timeout_ms=500)  # assigned and positioned at the end
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._consumer is not None:
            await self._consumer.stop()

    async def _follow(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            now = time.perf_counter()
            for records in batches.values():
                for record in records:
                    self._see(record.value or b"", now)

    def _see(self, raw: bytes, now: float) -> None:
        try:
            envelope = Envelope.from_bytes(raw)
            event = REGISTRY.decode(envelope)
        except (DecodeError, ValueError):
            return
        if isinstance(event, RenderStarted):
            self.started.setdefault(event.job_id, now)
            self.decoder_of.setdefault(event.job_id, event.decoder)
        elif isinstance(event, RenderProgressed) and event.pass_index == event.total_passes:
            self.finished.setdefault(event.job_id, now)
        elif isinstance(event, ServiceHeartbeat):
            if event.service == "decoder" and event.healthy:
                self.healthy_decoders.add(event.instance_id)
            if event.batch is not None:
                self.batch_passes = max(self.batch_passes, event.batch.passes)
        elif getattr(event, "reason", "") == "preempted":
            self.preempted.add(str(getattr(event, "job_id", "")))

    async def until(self, done: Any, timeout_s: float) -> None:
        deadline = time.perf_counter() + timeout_s
        while not done():
            if time.perf_counter() > deadline:
                raise TimeoutError("the decoder did not finish in time")
            await asyncio.sleep(0.05)


async def publish(producer: KafkaProducer, jobs: list[RenderJob]) -> dict[str, float]:
    """Publishes render jobs to their lanes; returns when each was acknowledged."""
    sent: dict[str, float] = {}
    for job in jobs:
        await send_to_lane(producer, job)
        sent[job.job_id] = time.perf_counter()
    return sent


def start_decoder(stack: Stack, limit: int, preempt: bool, instance: str) -> None:
    env = (
        ("decoder", "DARKROOM_MODEL", "builtin"),
        ("decoder", "DARKROOM_BATCH_IMAGES", str(limit)),
        ("decoder", "DARKROOM_PREEMPT", "true" if preempt else "false"),
        ("decoder", "DARKROOM_HEARTBEAT_INTERVAL_S", "0.5"),
    )
    Stack(replace(stack.profile, process_env=env)).start_service("decoder", instance=instance)


@asynccontextmanager
async def decoder_on_backlog(
    stack: Stack, backlog: list[RenderJob], limit: int, preempt: bool
) -> AsyncIterator[tuple[Watcher, KafkaProducer]]:
    """Publishes a backlog, then starts one decoder on it; stops it all when the block ends."""
    bootstrap = stack.profile.kafka_bootstrap
    watcher = Watcher(bootstrap)
    await watcher.start()
    producer = KafkaProducer(bootstrap, client_id="bench-decoder")
    await producer.start()
    instance = f"decoder-bench-{uuid.uuid4().hex[:6]}"
    try:
        await publish(producer, backlog)
        start_decoder(stack, limit, preempt, instance)
        yield watcher, producer
    finally:
        stack.proc(instance).stop()
        await producer.stop()
        await watcher.stop()


async def service_alone(stack: Stack, limit: int, jobs: int) -> dict[str, Any]:
    """One decoder drains a backlog of `jobs` free jobs at batch limit `limit`."""
    run = uuid.uuid4().hex[:6]
    backlog = [_job("free", i, run) for i in range(jobs)]
    async with decoder_on_backlog(stack, backlog, limit, preempt=True) as (watcher, _):
        await watcher.until(lambda: all(j.job_id in watcher.finished for j in backlog), 900)
        first = min(watcher.started[j.job_id] for j in backlog)
        last = max(watcher.finished[j.job_id] for j in backlog)
        await asyncio.sleep(1.5)  # one more heartbeat with the final pass count
    rate = jobs / (last - first)
    occupancy = jobs * PASSES / (watcher.batch_passes * limit) if watcher.batch_passes else 0.0
    return {"images_per_s": rate, "occupancy": min(1.0, occupancy), "batch_passes": watcher.batch_passes}


async def paid_in_flood(stack: Stack, limit: int, preempt: bool, paid: int, spacing_s: float) -> dict[str, Any]:
    """A free flood fills the batch; paid jobs arrive one by one: their latency to the last pass."""
    run = uuid.uuid4().hex[:6]
    # Enough free work to keep the batch full through every paid job.
    flood = [_job("free", i, run) for i in range(limit * (paid + 3))]
    async with decoder_on_backlog(stack, flood, limit, preempt) as (watcher, producer):
        await watcher.until(lambda: sum(j.job_id in watcher.started for j in flood) >= limit, 300)
        await asyncio.sleep(2 * spacing_s)  # the batch is full of free renders
        latencies = []
        for i in range(paid):
            job = _job("pro", i, run)
            sent = await publish(producer, [job])
            await watcher.until(lambda j=job: j.job_id in watcher.finished, 300)
            latencies.append(watcher.finished[job.job_id] - sent[job.job_id])
            await asyncio.sleep(spacing_s)
    return {
        "p50_s": percentile(latencies, 50),
        "p99_s": percentile(latencies, 99),
        "latencies_s": [round(x, 3) for x in latencies],
        "preempted": len(watcher.preempted),
    }


def fresh_kafka(stack: Stack) -> None:
    """The bench broker from nothing: a decoder must find only the jobs its measure publishes
    (a run before leaves unfinished jobs in the lanes, and its group's committed offsets)."""
    stack.down()
    shutil.rmtree(stack.profile.run_dir, ignore_errors=True)
    stack.up_kafka()


def main(argv: list[str] | None = None) -> int:
    """Run the three measures; the last line is the summary the issue asks for."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="repeats per batch size of the model alone")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)), help="batch sizes of the model alone")
    parser.add_argument("--limit", type=int, default=0, help="the decoder's batch limit (0: the device's default)")
    parser.add_argument("--jobs", type=int, default=0, help="backlog for the service alone (0: 6 x the limit)")
    parser.add_argument("--paid", type=int, default=8, help="paid jobs sent into the free flood")
    parser.add_argument(
        "--amused",
        default="",
        help="an aMUSEd folder for the adapter's sweep beside the built-in model's (default: a tiny random one)",
    )
    parser.add_argument("--json", type=str, default="", help="also write the figures to this file")
    args = parser.parse_args(argv)

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    limit = args.limit or DEFAULT_BATCH_IMAGES[device]
    batches = tuple(int(b) for b in args.batches.split(","))
    figures: dict[str, Any] = {"device": name, "limit": limit}

    print(f"1. the built-in model alone on {name} ({PASSES} passes, {SIZE}x{SIZE} PNG)")
    rates = model_rates(tuple(sorted({1, *batches, limit})), args.repeats, device)
    figures["model_images_per_s"] = rates
    if device == "cuda":
        os.environ["DARKROOM_KERNELS"] = "reference"
        print("   the same with the Triton kernels off (plain torch)")
        figures["model_images_per_s_reference_kernels"] = model_rates(tuple(batches), args.repeats, device)
        del os.environ["DARKROOM_KERNELS"]
    scratch = Path(tempfile.mkdtemp(prefix="darkroom-amused-"))
    amused = args.amused or str(build_tiny_amused(scratch / "tiny"))
    print(f"   the aMUSEd adapter beside it: amused:{amused}")
    figures["amused"] = amused
    figures["amused_images_per_s"] = model_rates(tuple(batches), args.repeats, device, f"amused:{amused}")
    shutil.rmtree(scratch)
    best = max(rates, key=lambda b: rates[b])
    gain = rates[best] / rates[1]
    render_at_limit_s = limit / rates[limit]
    print(f"   best: batch {best}, {gain:.2f}x batch 1; a render in a full batch of {limit}: {render_at_limit_s:.2f} s")

    stack = Stack(load_profile("bench"))
    print("2. the decoder service alone on the real broker (bench Kafka)")
    try:
        fresh_kafka(stack)
        jobs = args.jobs or 6 * limit
        service = asyncio.run(service_alone(stack, limit, jobs))
        ratio = service["images_per_s"] / rates[limit]
        print(
            f"   {jobs} jobs at batch limit {limit}: {service['images_per_s']:.2f} images/s, "
            f"mean occupancy {service['occupancy']:.0%} ({service['batch_passes']} batched passes); "
            f"model alone at {limit}: {rates[limit]:.2f} images/s"
        )
        figures["service"] = service | {"jobs": jobs, "ratio": ratio}

        print(f"3. paid latency while a free flood fills the batch ({args.paid} paid jobs, one at a time)")
        for preempt in (True, False):
            fresh_kafka(stack)  # no job or committed offset of the run before
            result = asyncio.run(paid_in_flood(stack, limit, preempt, args.paid, render_at_limit_s / PASSES))
            figures[f"paid_preempt_{'on' if preempt else 'off'}"] = result
            print(
                f"   preemption {'on ' if preempt else 'off'}: paid p50 {result['p50_s']:.2f} s, "
                f"p99 {result['p99_s']:.2f} s = {result['p99_s'] / render_at_limit_s:.2f} render times at the limit; "
                f"{result['preempted']} free renders preempted"
            )
    except (StackError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.down()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(figures, out, indent=1, default=str)
    print(f"batching gain: {gain:.2f}x at batch {best} ({device}); service/model: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
