"""`make surge`: a viral launch, scaled to this machine, played against a private stack.

Starts the `bench` stack with its decoders on a fixed-cost stand-in model (`noop:S`:
S seconds per pass), two consumer-pool decoders and one API decoder, and the gateway's
free lane bounded (DARKROOM_LANE_MAX_WAITING). Then it plays a launch: a baseline mix of
pro, plus, free and API traffic that keeps the consumer pool about half busy; a spike of
free users (ten times the baseline and more, with new users signing up and generating at
once); the decay back to the baseline; and a drain that waits until every accepted job
has ended. Every request is synchronous (`POST /v1/images/generations`, held open until
its job ends), so a deferred free user stays connected, as one would. The steady streams
(paid and API: the same rate in the baseline and the spike) repeat the baseline's arrivals
through the spike, so their spike/baseline ratios compare the same arrivals with and
without the flood (`tests/bench/surge_load.arrivals`).

Meanwhile it samples the lanes every second (the gateway's `GET /metrics` when it answers,
else Kafka's offsets) and the CPU of every process, and afterwards reads the server's own
account of every job from Kafka (image commands and request events, folded as the
services fold them), so a job the client lost sight of is still accounted for.

It writes `reports/surge-<UTC time>/report.json` and PNG plots, and prints a table per
tier and phase and the targets: zero accepted jobs lost; paid (pro + plus) p99 in the
spike at most 1.5x its baseline, API at most 1.2x; every deferred free job completed
after the spike; every 503 with `retry-after`; no job completed twice. `--quick` plays a
shorter launch (under 3 minutes with the stack's start). Run only one at a time: the machine
is the limit.

The api path runs in processes of its own (`gateway-api`, `requests-api`, `safety-api`,
`storage-api` and `decoder-api`, DARKROOM_BENCH_API_PROCESSES=1), the consumer tiers' processes
at a lower CPU priority; API clients send to the API's own address (`gateway-api`), the others
to the gateway the web app uses. `--shared-processes` runs one process per stage for both
traffics, and one gateway for every client, to compare.

`--kill-broker` runs the stack on a three-broker Kafka cluster and, a third of the way into
the spike, kills with -9 the broker that leads the request events' partition 0 and holds it
down (supervisord's restart after the crash is stopped), starting it again a third of the
spike later (at the consumer tiers' CPU priority: see `kill_a_broker`). The paid p99 of
jobs submitted from the kill until FAILOVER_TAIL_S after the restart, over the baseline's,
must stay within 2x, besides the targets above. The same spike's paid p99 before the kill
is printed beside it: the window's control.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import resource
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from infra import paths
from infra.stack import CONSUMER_NICE, Profile, Stack, wait_until
from libs import topics
from libs.access import DEFAULT_POLICIES
from libs.bus.logreader import KafkaLogReader, read_to_end
from libs.bus.ports import Record
from libs.cli.accounts import create_account
from libs.cli.lanes import lane_reports
from libs.cli.policy import set_policy as set_tier_policy
from libs.events import Envelope
from libs.jobs import TERMINAL
from libs.settings import DEV_SIGNING_KEY
from services.gateway.lanes import DEFERRED_AFTER_S
from tests.bench.stack import cpu_seconds, fresh_bench_stack, let_stand_in_grids_through
from tests.bench.surge_load import (
    Account,
    FreePool,
    RequestRecord,
    ServerJobs,
    Shape,
    deferral_times,
    merge_server_jobs,
    parse_decoder_metrics,
    parse_lane_metrics,
    schedule,
)
from tests.bench.surge_plots import plot_all
from tests.bench.surge_report import build_report, cpu_use, format_summary

BASELINE = {"pro": 0.4, "plus": 0.4, "free": 0.8, "api": 0.8}
SPIKE = {"pro": 0.4, "plus": 0.4, "free": 8.0, "api": 0.8, "signup": 2.0}
QUICK = Shape(baseline_s=25, spike_s=30, decay_s=15, drain_s=60, baseline=BASELINE, spike=SPIKE)
FULL = Shape(baseline_s=60, spike_s=120, decay_s=60, drain_s=240, baseline=BASELINE, spike=SPIKE)

PASS_SECONDS = 0.15
"""The stand-in model's cost per pass of one image: a quality-low job (4 passes) alone holds a
decoder 0.6 s."""
IMAGE_SHARE = 0.6
"""Of a pass's cost, the share each further image of a batch adds (the built-in model on
these CPUs: about 0.6, from 549 ms per image alone and 366 ms per image at batch 8)."""
BATCH_IMAGES = 4
"""The consumer decoders' batch limit in the surge (the API decoder's too)."""
PASSES_LOW = 4
CONSUMER_DECODERS = 2
API_DECODERS = 1
LANE_MAX_WAITING = "free=120"
PAID_ACCOUNTS = 2
"""Accounts per paid tier (pro, plus, api)."""
LIFTED_LIMITS = {"requests_per_minute": 100_000, "images_per_day": 10**9, "concurrent_jobs": 10_000}
"""Paid and API tier limits for the run: it measures lanes, not per-account limits."""
FREE_SPACING_MARGIN_S = 1.0
SIGNUP_CONCURRENCY = 20
SAMPLE_EVERY_S = 1.0
POLL_EVERY_S = 1.0
PROMPT = "a red circle on green grass"
CLIENT_ID = "darkroom-surge"


@dataclass(frozen=True)
class Plan:
    """What one run plays and against what."""

    mode: str
    shape: Shape
    seed: int
    pass_seconds: float
    lane_max_waiting: str
    kill_broker: bool = False
    """Run on three brokers and kill one in the spike (module docstring)."""

    @property
    def model(self) -> str:
        """The decoders' model: the stand-in, whose pass costs more with every image it batches."""
        per_image = IMAGE_SHARE * self.pass_seconds
        return f"noop:{self.pass_seconds - per_image:g}+{per_image:g}"

    @property
    def free_bound(self) -> int:
        """The free lane's bound, from the lane setting ("lane=count,..."); 0 when unset."""
        for part in self.lane_max_waiting.split(","):
            lane, _, count = part.partition("=")
            if lane.strip() == "free" and count.strip().isdigit():
                return int(count)
        return 0

    def process_env(self) -> tuple[tuple[str, str, str], ...]:
        """The stack's per-process settings: the stand-in model and the bounded free lane."""
        return (
            ("decoder", "DARKROOM_MODEL", self.model),
            ("decoder-api", "DARKROOM_MODEL", self.model),
            ("decoder", "DARKROOM_BATCH_IMAGES", str(BATCH_IMAGES)),
            ("decoder-api", "DARKROOM_BATCH_IMAGES", str(BATCH_IMAGES)),
            ("gateway", "DARKROOM_LANE_MAX_WAITING", self.lane_max_waiting),
        )

    def free_spacing_s(self) -> float:
        """Seconds between one free account's requests: under the free tier's per-minute limit."""
        return 60 / DEFAULT_POLICIES["free"].requests_per_minute + FREE_SPACING_MARGIN_S

    def free_accounts(self) -> int:
        """Free accounts to create up front: the spike's rate over one account's spacing, plus
        as many as the free lane can hold waiting (each holds its account), plus a margin."""
        return math.ceil(self.shape.spike["free"] * self.free_spacing_s()) + self.free_bound + 40

    def capacity(self) -> dict[str, float]:
        """What the decoders can do and how busy the baseline keeps them."""
        job_s = PASSES_LOW * self.pass_seconds
        consumer = sum(self.shape.baseline.get(t, 0.0) for t in ("pro", "plus", "free"))
        return {
            "job_cost_s": job_s,
            "consumer_pool_jobs_per_s": round(CONSUMER_DECODERS / job_s, 2),
            "api_pool_jobs_per_s": round(API_DECODERS / job_s, 2),
            "consumer_pool_busy_at_baseline": round(consumer * job_s / CONSUMER_DECODERS, 2),
            "consumer_pool_demand_in_spike": round(
                sum(self.shape.spike.get(t, 0.0) for t in ("pro", "plus", "free", "signup"))
                * job_s
                / CONSUMER_DECODERS,
                2,
            ),
            "api_pool_busy_at_baseline": round(self.shape.baseline["api"] * job_s / API_DECODERS, 2),
        }


@dataclass
class Steps:
    """Wall seconds of each step of a run, printed as each ends and kept in the report."""

    seconds: dict[str, float] = field(default_factory=dict)
    _last: float = field(default_factory=time.monotonic)

    def done(self, step: str) -> None:
        """The step that ran since the previous one ended is over."""
        now = time.monotonic()
        self.seconds[step] = round(now - self._last, 1)
        self._last = now
        print(f"  ({step}: {self.seconds[step]:.1f}s)")


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (every core, every process) since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(run_dir: Path) -> dict[str, float]:
    """CPU seconds so far: each stack process, this load generator, and the whole machine."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return cpu_seconds(run_dir) | {"surge (client)": own.ru_utime + own.ru_stime, "machine": machine_busy_s()}


def wait_for_second_decoder(stack: Stack) -> None:
    """Until the gateway sees the second consumer-pool decoder's heartbeat (it starts in seconds)."""
    expected = CONSUMER_DECODERS + API_DECODERS  # every decoder heartbeats as "decoder"

    def all_decoders() -> bool:
        try:
            with urllib.request.urlopen(f"{stack.profile.gateway_url}/healthz", timeout=2) as response:  # noqa: S310
                health = json.load(response)
        except (OSError, ValueError):
            return False
        return int(health.get("services", {}).get("decoder", {}).get("instances", 0)) >= expected

    wait_until(all_decoders, "decoder-2", stack.proc("decoder-2"), timeout_s=60)
    print(f"  decoder-2 running ({expected} decoders heartbeating)")


@dataclass
class Surge:
    """One run of the launch against a started stack."""

    stack: Stack
    plan: Plan
    http: httpx.AsyncClient
    records: list[RequestRecord] = field(default_factory=list)
    signups: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    snapshots: list[tuple[str, float, dict[str, float]]] = field(default_factory=list)
    paid: dict[str, list[Account]] = field(default_factory=dict)
    pool: FreePool = field(default_factory=lambda: FreePool(spacing_s=0.0))
    t0: float = 0.0
    """time.monotonic() at the start of the load."""
    origin: float = 0.0
    """time.time() at the start of the load (the server's event times are wall-clock)."""
    drain_end_s: float = 0.0
    server: dict[str, Any] = field(default_factory=dict)
    """The server's account of our jobs (see `run`)."""
    failover: dict[str, Any] = field(default_factory=dict)
    """With --kill-broker: the node killed, and when (seconds from the start of the load)."""
    _emails: int = 0

    @property
    def profile(self) -> Profile:
        return self.stack.profile

    def now_s(self) -> float:
        """Seconds since the start of the load."""
        return time.monotonic() - self.t0

    # --- accounts ------------------------------------------------------------------

    async def create_accounts(self) -> None:
        """Paid and API accounts by the operator's CLI call; the free pool by sign-up."""
        bootstrap = self.profile.kafka_bootstrap
        tiers = [t for t in ("pro", "plus", "api") for _ in range(PAID_ACCOUNTS)]
        created = await asyncio.gather(
            *(create_account(bootstrap, f"surge-{t}-{i}@example.com", t, DEV_SIGNING_KEY) for i, t in enumerate(tiers))
        )
        for tier, account in zip(tiers, created, strict=True):
            self.paid.setdefault(tier, []).append(Account(account["id"], tier, account["api_key"]))
        self.pool = FreePool(spacing_s=self.plan.free_spacing_s())
        wanted = self.plan.free_accounts()
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(wanted):
            queue.put_nowait(i)

        async def signer() -> None:
            while not queue.empty():
                queue.get_nowait()
                account = await self.sign_up(record=False)
                if account is not None:
                    self.pool.add(account)

        await asyncio.gather(*(signer() for _ in range(SIGNUP_CONCURRENCY)))
        print(f"  accounts: {len(tiers)} paid and api, {len(self.pool.accounts)} of {wanted} free")

    async def sign_up(self, *, record: bool, reason: str = "spike") -> Account | None:
        """A new free user signs up (`POST /v1/accounts`); None when that failed."""
        self._emails += 1
        email = f"surge-free-{self._emails}@example.com"
        submit = self.now_s()
        try:
            response = await self.http.post("/v1/accounts", json={"email": email})
            status: int | None = response.status_code
        except httpx.HTTPError:
            response, status = None, None
        if record:
            self.signups.append(
                {"submit_s": round(submit, 3), "status": status, "latency_s": self.now_s() - submit, "reason": reason}
            )
        if response is None or status not in (201, 202):
            return None
        body = response.json()
        return Account(body["id"], "free", body["api_key"])

    def headers(self, account: Account) -> dict[str, str]:
        return {"authorization": f"Bearer {account.api_key}"}

    def url(self, account: Account, path: str) -> str:
        """Where an account's request goes: API clients to the API's address (the api path's
        own gateway with api processes), everyone else to the gateway the web app uses."""
        return f"{self.profile.api_url}{path}" if account.tier == "api" else path

    # --- requests ------------------------------------------------------------------

    async def generate(self, record: RequestRecord, account: Account) -> None:
        """One synchronous generation; for a 202 (still running), follow the job to its end."""
        body = {"prompt": PROMPT, "quality": "low", "size": "256x256", "response_format": "url", "user": record.key}
        try:
            response = await self.http.post(
                self.url(account, "/v1/images/generations"), json=body, headers=self.headers(account)
            )
        except httpx.HTTPError as exc:
            record.end_s, record.error_code = self.now_s(), type(exc).__name__
            return
        record.status = response.status_code
        record.request_id = response.headers.get("x-request-id")
        if response.status_code == 200:
            record.end_s, record.final_status = self.now_s(), "completed"
        elif response.status_code == 202:
            job = response.json()
            record.job_id = job.get("id")
            self.note_job(record, job)
            await self.follow(record, account)
        else:
            record.end_s = self.now_s()
            record.retry_after = response.headers.get("retry-after")
            with contextlib.suppress(ValueError, AttributeError):
                record.error_code = response.json()["error"]["code"]

    def note_job(self, record: RequestRecord, job: Mapping[str, Any]) -> None:
        """What a job object shows: deferral, its estimated wait, a terminal status."""
        status = job.get("status")
        if status == "deferred":
            record.deferred = True
            if record.estimated_wait_s is None and isinstance(job.get("estimated_wait_s"), int | float):
                record.estimated_wait_s = float(job["estimated_wait_s"])
        if status in TERMINAL:
            record.final_status, record.end_s = str(status), self.now_s()

    async def follow(self, record: RequestRecord, account: Account) -> None:
        """Poll a job answered 202 until it is terminal (the drain's deadline cancels this)."""
        while record.final_status is None and record.job_id:
            await asyncio.sleep(POLL_EVERY_S)
            with contextlib.suppress(httpx.HTTPError, ValueError):
                response = await self.http.get(
                    self.url(account, f"/v1/images/jobs/{record.job_id}"),
                    params={"response_format": "url"},
                    headers=self.headers(account),
                )
                if response.status_code == 200:
                    self.note_job(record, response.json())

    async def arrive(self, stream: str, n: int) -> None:
        """One arrival of a stream: pick (or sign up) an account and generate."""
        key = f"surge-{n:05d}"
        account: Account | None
        new_user = stream == "signup"
        if stream == "signup":
            account = await self.sign_up(record=True)
        elif stream == "free":
            account = self.pool.take(self.now_s())
            if account is None:
                new_user, account = True, await self.sign_up(record=True, reason="pool exhausted")
        else:
            accounts = self.paid[stream]
            account = accounts[n % len(accounts)]
        if account is None:
            return
        submit = self.now_s()
        record = RequestRecord(key, account.tier, stream, self.plan.shape.phase_at(submit), round(submit, 3))
        self.records.append(record)
        try:
            await self.generate(record, account)
        finally:
            if new_user:
                self.pool.add(account)  # a new user may come back later
            self.pool.release(account)

    async def warm_up(self) -> None:
        """A few jobs per tier before the clock starts: connections, lazy loads, the lifted limits."""
        deadline = time.monotonic() + 60
        accounts = [self.paid["pro"][0], self.paid["plus"][0], self.paid["api"][0], self.pool.accounts[-1]]
        for account in accounts:
            while True:
                record = RequestRecord(f"warmup-{account.tier}", account.tier, "warmup", "warmup", 0.0)
                await self.generate(record, account)
                if record.status == 200:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"warm-up: a {account.tier} job answered {record.status} {record.error_code}")
                await asyncio.sleep(1)

    # --- the run ---------------------------------------------------------------------

    async def play(self) -> None:
        """Send every arrival at its time; then drain until every request has ended."""
        arrivals = schedule(self.plan.shape, self.plan.seed)
        self.t0, self.origin = time.monotonic(), time.time()
        stop = asyncio.Event()
        watchers = [asyncio.create_task(self.sample_lanes(stop)), asyncio.create_task(self.mark_phases())]
        if self.plan.kill_broker:
            watchers.append(asyncio.create_task(self.kill_a_broker()))
        tasks: set[asyncio.Task[None]] = set()
        for n, (at, stream) in enumerate(arrivals):
            await asyncio.sleep(max(0.0, at - self.now_s()))
            tasks.add(asyncio.create_task(self.arrive(stream, n)))
        shape = self.plan.shape
        await asyncio.sleep(max(0.0, shape.load_s - self.now_s()))
        print(f"  {self.now_s():6.1f}s  load over ({len(arrivals)} arrivals); draining (at most {shape.drain_s:.0f}s)")
        deadline = self.t0 + shape.load_s + shape.drain_s
        pending = {t for t in tasks if not t.done()}
        while pending and time.monotonic() < deadline:
            _, pending = await asyncio.wait(pending, timeout=deadline - time.monotonic())
        self.drain_end_s = self.now_s()
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stop.set()
        watchers[1].cancel()
        outcomes = await asyncio.gather(*watchers, return_exceptions=True)
        if self.plan.kill_broker and not self.failover.get("restarted_s"):
            killing = outcomes[2]  # the kill task's error, if it failed, is the cause
            cause = killing if isinstance(killing, BaseException) else None
            raise RuntimeError(f"the broker failover did not finish: {self.failover}") from cause
        self.snapshots.append(("end", self.drain_end_s, cpu_snapshot(self.profile.run_dir)))
        print(f"  {self.drain_end_s:6.1f}s  drained; {len(pending)} requests still open (cancelled)")

    async def kill_a_broker(self) -> None:
        """A third of the way into the spike, kill -9 the leader of the request events'
        partition 0 and hold it down for a third of the spike; then start it again."""
        shape = self.plan.shape
        await asyncio.sleep(max(0.0, shape.baseline_s + shape.spike_s / 3 - self.now_s()))
        node = await asyncio.to_thread(self.stack.kafka_leader, topics.REQUEST_EVENTS)
        await asyncio.to_thread(self.stack.proc(node.name).kill_and_hold)
        self.failover = {"node": node.name, "killed_s": round(self.now_s(), 2)}
        print(f"  {self.now_s():6.1f}s  killed {node.name} (kill -9; leader of {topics.REQUEST_EVENTS}[0])")
        await asyncio.sleep(shape.spike_s / 3)
        # A returning node's JVM takes 1.2-1.9 cores for about 2.5 s as it starts (3.8 s of
        # CPU on an idle machine: class loading, C1, the metadata log) before it serves
        # anything; at the brokers' priority it would take both cores from the consumer tiers'
        # niced processes, paid traffic included, as a broker on a machine of its own would
        # not. It starts at their priority instead, and stays there for the rest of the run
        # (a follower until Kafka's leader rebalance, minutes later).
        nice = CONSUMER_NICE if self.profile.api_processes else 0
        await asyncio.to_thread(self.stack.start_kafka, node, nice)
        self.failover["restarted_s"] = round(self.now_s(), 2)
        print(f"  {self.now_s():6.1f}s  started {node.name} again")

    async def mark_phases(self) -> None:
        """CPU snapshots at every phase boundary (the drain's end adds the last)."""
        for name, start, _ in self.plan.shape.phases():
            await asyncio.sleep(max(0.0, start - self.now_s()))
            self.snapshots.append((name, self.now_s(), cpu_snapshot(self.profile.run_dir)))

    async def lane_figures(self) -> tuple[str, dict[str, dict[str, float]], dict[str, dict[str, float | str]]]:
        """Every lane's figures and every decoder's batch: the gateway's /metrics when it answers
        200, else Kafka's offsets (and no batches)."""
        with contextlib.suppress(httpx.HTTPError):
            response = await self.http.get("/metrics", timeout=2.0)
            if response.status_code == 200:
                lanes = parse_lane_metrics(response.text)
                if lanes:
                    return "metrics", lanes, parse_decoder_metrics(response.text)
        reports, _ = await lane_reports(self.profile.kafka_bootstrap)
        lanes = {r.tier: {"waiting": float(r.waiting), "taken_total": float(r.taken)} for r in reports}
        return "kafka", lanes, {}

    async def sample_lanes(self, stop: asyncio.Event) -> None:
        """Every second: each lane's figures and how busy the machine is; a line every 5 s."""
        busy, wall = machine_busy_s(), time.monotonic()
        while not stop.is_set():
            started = time.monotonic()
            decoders: dict[str, dict[str, float | str]] = {}
            try:
                source, lanes, decoders = await self.lane_figures()
            except Exception as exc:  # a missed sample must not end the run
                source, lanes = f"error: {type(exc).__name__}", {}
            now_busy, now_wall = machine_busy_s(), time.monotonic()
            cores = (now_busy - busy) / max(1e-3, now_wall - wall)
            busy, wall = now_busy, now_wall
            t = self.now_s()
            self.samples.append(
                {
                    "t": round(t, 2),
                    "source": source,
                    "lanes": lanes,
                    "decoders": decoders,
                    "machine_busy_cores": round(cores, 2),
                }
            )
            if len(self.samples) % 5 == 1:
                self.progress(t, lanes, cores)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.05, SAMPLE_EVERY_S - (time.monotonic() - started)))

    def progress(self, t: float, lanes: Mapping[str, Mapping[str, float]], cores: float) -> None:
        open_now = sum(r.status is None or (r.status == 202 and r.final_status is None) for r in self.records)
        done = sum(r.completed for r in self.records)
        rejected = sum(r.status == 503 for r in self.records)
        waiting = " ".join(f"{lane}={int(v.get('waiting', 0))}" for lane, v in sorted(lanes.items()))
        print(
            f"  {t:6.1f}s  {self.plan.shape.phase_at(t):8}  sent {len(self.records):5d}  open {open_now:4d}  "
            f"completed {done:5d}  503 {rejected:4d}  waiting {waiting}  machine {cores:.1f} cores"
        )

    async def audit(self) -> ServerJobs:
        """The server's account of every job: image commands and request events, folded."""
        jobs = ServerJobs(origin=self.origin)
        job_topics = topics.with_api_copies([topics.IMAGE_COMMANDS, topics.REQUEST_EVENTS])
        reader = KafkaLogReader(self.profile.kafka_bootstrap, job_topics, client_id=CLIENT_ID)

        async def apply(record: Record) -> None:
            with contextlib.suppress(ValueError):
                jobs.apply(Envelope.from_bytes(record.value))

        await reader.start()
        try:
            await read_to_end(reader, apply, timeout_s=60)
        finally:
            await reader.stop()
        return jobs


async def run(stack: Stack, plan: Plan, steps: Steps) -> Surge:
    """Create the accounts, warm up, play the launch, drain, and read the server's account."""
    profile = stack.profile
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    timeout = httpx.Timeout(10.0, read=None)  # a synchronous generation is held until its job ends
    async with httpx.AsyncClient(base_url=profile.gateway_url, limits=limits, timeout=timeout) as http:
        surge = Surge(stack, plan, http)
        await surge.create_accounts()
        steps.done("accounts")
        await surge.warm_up()
        steps.done("warm-up")
        print(f"  playing: {', '.join(f'{n} {e - s:.0f}s' for n, s, e in plan.shape.phases()[:-1])}")
        await surge.play()
        steps.done("load and drain")
    server = await surge.audit()
    steps.done("server's account of every job")
    merge_server_jobs(surge.records, server.by_user(), deferral_times(surge.samples, "free", DEFERRED_AFTER_S))
    ours = {r.key for r in surge.records}
    mine = [job for job in server.jobs.values() if job.user in ours]
    surge.server = {
        "jobs_admitted": len(mine),
        "jobs_terminal": sum(job.terminal_s is not None for job in mine),
        "free_jobs_deferred": sum(r.deferred for r in surge.records),
        "not_terminal": sorted(job.job_id for job in mine if job.terminal_s is None),
        "completed_twice": [job.job_id for job in mine if len(job.completions) > 1],
        "failover": surge.failover,
    }
    return surge


def report_meta(plan: Plan, stack: Stack, started_at: datetime, steps: Steps, surge: Surge) -> dict[str, Any]:
    """What ran: the mode, the machine, the stand-in model, the stack and the settings."""
    return {
        "run": {
            "mode": plan.mode,
            "started_at": started_at.isoformat(),
            "wall_s": round(sum(steps.seconds.values()), 1),
            "steps_s": steps.seconds,
            "seed": plan.seed,
            "load_started_at": datetime.fromtimestamp(surge.origin, UTC).isoformat(),
            "drain_used_s": round(surge.drain_end_s - plan.shape.load_s, 1),
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "model": {
            "name": plan.model,
            "stand_in": True,
            "seconds_per_pass": plan.pass_seconds,
            "batch_images": BATCH_IMAGES,
            "note": "the decoders run NoOpModel sleeping per batched pass (more per image), not the built-in model",
        },
        "stack": {
            "profile": stack.profile.name,
            "gateway": stack.profile.gateway_url,
            "kafka_brokers": stack.profile.kafka_brokers,
            "api_processes": stack.profile.api_processes,
            "consumer_decoders": CONSUMER_DECODERS,
            "api_decoders": API_DECODERS,
            "process_env": [list(entry) for entry in plan.process_env()],
        },
        "settings": {
            "lane_max_waiting": plan.lane_max_waiting,
            "request": {"quality": "low", "passes": PASSES_LOW, "size": "256x256", "response_format": "url"},
            "lifted_tier_limits": {tier: LIFTED_LIMITS for tier in ("pro", "plus", "api")},
            "free_tier_policy": DEFAULT_POLICIES["free"].model_dump(),
            "accounts_per_paid_tier": PAID_ACCOUNTS,
            "free_pool_accounts": plan.free_accounts(),
            "free_account_spacing_s": plan.free_spacing_s(),
            "capacity": plan.capacity(),
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Run the surge; prints the table and the targets, writes the report. Exit 0 when it ran."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the short launch (under 3 minutes in all)")
    parser.add_argument("--seed", type=int, default=7, help="arrival times are the same for the same seed")
    parser.add_argument("--pass-seconds", type=float, default=PASS_SECONDS, help="the stand-in model's cost per pass")
    parser.add_argument("--lane-max-waiting", default=LANE_MAX_WAITING, help="the gateway's DARKROOM_LANE_MAX_WAITING")
    parser.add_argument("--reports", type=Path, default=paths.ROOT / "reports", help="where the report folder goes")
    parser.add_argument("--keep", action="store_true", help="leave the bench stack running")
    parser.add_argument(
        "--kill-broker", action="store_true", help="three Kafka brokers; kill -9 one in the spike, restart it later"
    )
    parser.add_argument(
        "--shared-processes", action="store_true", help="one process per stage for both traffics (no api processes)"
    )
    args = parser.parse_args(argv)
    os.environ["DARKROOM_BENCH_API_PROCESSES"] = "0" if args.shared_processes else "1"
    if args.kill_broker:
        os.environ["DARKROOM_BENCH_KAFKA_BROKERS"] = "3"
    plan = Plan(
        mode="quick" if args.quick else "full",
        shape=QUICK if args.quick else FULL,
        seed=args.seed,
        pass_seconds=args.pass_seconds,
        lane_max_waiting=args.lane_max_waiting,
        kill_broker=args.kill_broker,
    )
    started_at, steps = datetime.now(UTC), Steps()
    folder = args.reports / f"surge-{started_at:%Y%m%dT%H%M%SZ}"
    stack = fresh_bench_stack(f"surge {plan.mode}: decoders on {plan.model}", plan.process_env())
    if stack is None:
        return 1
    try:
        stack.start_service("decoder", instance="decoder-2")  # while the policies are set
        let_stand_in_grids_through(stack)
        for tier in ("pro", "plus", "api"):
            set_tier_policy(stack.profile.kafka_bootstrap, changed_by="surge", tier=tier, changes=LIFTED_LIMITS)
        wait_for_second_decoder(stack)
        steps.done("stack start")
        surge = asyncio.run(run(stack, plan, steps))
    finally:
        if not args.keep:
            stack.down()
            steps.done("stack stop")
    report = build_report(
        meta=report_meta(plan, stack, started_at, steps, surge),
        shape=plan.shape,
        records=surge.records,
        signups=surge.signups,
        samples=surge.samples,
        cpu=cpu_use(surge.snapshots),
        server=surge.server,
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=1, default=str))
    plots = plot_all(report, folder)
    steps.done("report")
    print()
    print(format_summary(report))
    print()
    print(f"report: {folder / 'report.json'}")
    print(f"plots:  {', '.join(str(p) for p in plots)}")
    print(
        f"wall:   {sum(steps.seconds.values()):.0f}s ({plan.mode}), model {plan.model} (stand-in), "
        f"{os.cpu_count()} CPUs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
