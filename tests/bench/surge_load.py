"""What `make surge` plays and observes, as pure functions: no clock, no network.

The launch's shape (phases and arrival rates per traffic stream), the arrival times it
implies, the record kept of every request, the free users' account pool, the gateway's
lane metrics in Prometheus text, and the server's own account of every job (a fold of
the image commands and request events). `tests/bench/surge.py` does the I/O around
them; `tests/unit/bench/test_surge.py` checks them without a stack.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from libs.events import REGISTRY, DecodeError, Envelope
from libs.events.schemas import GenerateImage, JobCompleted
from libs.jobs import TERMINAL
from libs.readmodels.view import JobView, project

TIERS = ("pro", "plus", "free", "api")
PAID = ("pro", "plus")
STREAMS = ("pro", "plus", "free", "api", "signup")
"""Traffic streams: one per tier, plus new free users who sign up and then generate."""
LOAD_PHASES = ("baseline", "spike", "decay")
"""Phases with arrivals; `drain` follows, with none, until every accepted job is terminal."""
DRAIN = "drain"


@dataclass(frozen=True)
class Shape:
    """A scaled viral launch: baseline, a spike of free users, the decay back, a drain.

    Rates are arrivals per second per stream. During the decay every stream's rate falls
    linearly from its spike rate back to its baseline rate.
    """

    baseline_s: float
    spike_s: float
    decay_s: float
    drain_s: float
    """The longest the drain may take (it ends as soon as every accepted job is terminal)."""
    baseline: Mapping[str, float]
    spike: Mapping[str, float]

    @property
    def load_s(self) -> float:
        """Seconds with arrivals: baseline, spike and decay."""
        return self.baseline_s + self.spike_s + self.decay_s

    def phases(self) -> list[tuple[str, float, float]]:
        """(name, start, end) of each phase, in seconds from the start of the load."""
        spike_start = self.baseline_s
        decay_start = spike_start + self.spike_s
        return [
            ("baseline", 0.0, spike_start),
            ("spike", spike_start, decay_start),
            ("decay", decay_start, self.load_s),
            (DRAIN, self.load_s, self.load_s + self.drain_s),
        ]

    def phase_at(self, t: float) -> str:
        """The phase a time (seconds from the start of the load) falls in; after the load, drain."""
        for name, start, end in self.phases()[:-1]:
            if start <= t < end:
                return name
        return DRAIN if t >= self.load_s else "baseline"

    def rate(self, stream: str, t: float) -> float:
        """Arrivals per second of a stream at time t."""
        phase = self.phase_at(t)
        base, spike = self.baseline.get(stream, 0.0), self.spike.get(stream, 0.0)
        if t < 0 or phase == DRAIN:
            return 0.0
        if phase == "baseline":
            return base
        if phase == "spike":
            return spike
        done = (t - self.baseline_s - self.spike_s) / self.decay_s if self.decay_s else 1.0
        return spike + (base - spike) * done

    def spike_factor(self) -> float:
        """Free users arriving in the spike (with sign-ups) over free arrivals at baseline."""
        base = self.baseline.get("free", 0.0) + self.baseline.get("signup", 0.0)
        spike = self.spike.get("free", 0.0) + self.spike.get("signup", 0.0)
        return spike / base if base else float("inf")

    def to_json(self) -> dict[str, Any]:
        """The shape as the report states it."""
        return {
            "phases": [{"name": n, "start_s": s, "end_s": e} for n, s, e in self.phases()],
            "rates_per_s": {
                "baseline": dict(self.baseline),
                "spike": dict(self.spike),
                "decay": "linear spike->baseline",
            },
            "free_spike_factor": round(self.spike_factor(), 2),
        }


def arrivals(shape: Shape, stream: str, rng: random.Random) -> list[float]:
    """Poisson arrival times of one stream over the load (thinning of the time-varying rate).

    A steady stream (the same rate in the baseline and the spike: the paid tiers and the
    API) repeats its baseline's arrivals every `baseline_s` through the load, so the spike
    meets the same arrivals as the baseline, gap for gap. Its p99 spike/baseline then
    compares the same requests with and without the free flood; with arrivals drawn
    afresh in each phase, which jobs happen to overlap in a decoder's batch decided the
    slowest of a few dozen as much as the flood did (docs/operations.md, api isolation).

    Args:
        shape: The launch.
        stream: One of STREAMS.
        rng: The source of randomness (seed it for a repeatable run).

    Returns:
        Ascending arrival times, seconds from the start of the load.
    """
    peak = max(shape.baseline.get(stream, 0.0), shape.spike.get(stream, 0.0))
    if peak <= 0:
        return []
    if steady(shape, stream) and shape.baseline_s > 0:
        first = _poisson(peak, shape.baseline_s, rng)
        repeats = math.ceil(shape.load_s / shape.baseline_s)
        return [t for k in range(repeats) for t in (k * shape.baseline_s + t for t in first) if t < shape.load_s]
    return _thinned(shape, stream, peak, rng)


def steady(shape: Shape, stream: str) -> bool:
    """Whether a stream keeps its baseline rate through the spike (its arrivals repeat)."""
    return shape.baseline.get(stream, 0.0) == shape.spike.get(stream, 0.0)


def _poisson(rate: float, length_s: float, rng: random.Random) -> list[float]:
    """Arrivals at a constant rate over [0, length_s)."""
    times: list[float] = []
    t = rng.expovariate(rate)
    while t < length_s:
        times.append(t)
        t += rng.expovariate(rate)
    return times


def _thinned(shape: Shape, stream: str, peak: float, rng: random.Random) -> list[float]:
    """Arrivals of a stream whose rate changes with the phase, by thinning at its peak rate."""
    times: list[float] = []
    t = rng.expovariate(peak)
    while t < shape.load_s:
        if rng.random() * peak < shape.rate(stream, t):
            times.append(t)
        t += rng.expovariate(peak)
    return times


def schedule(shape: Shape, seed: int) -> list[tuple[float, str]]:
    """Every arrival of every stream, (time, stream), in time order; the same for the same seed."""
    merged = [(t, stream) for stream in STREAMS for t in arrivals(shape, stream, random.Random(f"{seed}:{stream}"))]
    return sorted(merged)


@dataclass
class RequestRecord:
    """One image request as the load generator saw it, completed by the server's account."""

    key: str
    """Ours, sent as the request's `user`, so the server's job can be matched to it."""
    tier: str
    stream: str
    phase: str
    submit_s: float
    """Seconds from the start of the load."""
    status: int | None = None
    """The HTTP status; None while (or if) no answer came."""
    end_s: float | None = None
    """When the answer came (for a 202, when polling saw the job terminal)."""
    request_id: str | None = None
    """The `x-request-id` header: the trace id of the request."""
    job_id: str | None = None
    retry_after: str | None = None
    error_code: str | None = None
    final_status: str | None = None
    """The job's terminal status, from the answer, polling or the server's events."""
    deferred: bool = False
    """The job was seen in status `deferred` (polled, or in the server's events)."""
    estimated_wait_s: float | None = None
    server_accepted: bool = False
    """The server holds an image command for this request (it admitted the job)."""
    server_terminal_s: float | None = None
    """When the server's events made the job terminal."""

    @property
    def accepted(self) -> bool:
        """The job was admitted: answered 200 or 202, or the server has its command."""
        return self.status in (200, 202) or self.server_accepted

    @property
    def terminal(self) -> bool:
        """The job ended (completed, blocked, failed or cancelled), as the client or server saw it."""
        return self.status == 200 or self.final_status in TERMINAL

    @property
    def completed(self) -> bool:
        """The job completed with images."""
        return self.status == 200 or self.final_status == "completed"

    @property
    def latency_s(self) -> float | None:
        """Submit to images, for completed jobs whose end the client saw."""
        if not self.completed or self.end_s is None:
            return None
        return self.end_s - self.submit_s

    def to_json(self) -> dict[str, Any]:
        """The record as report.json lists it."""
        return asdict(self) | {"accepted": self.accepted, "terminal": self.terminal, "latency_s": self.latency_s}


@dataclass
class Account:
    """An account the load generator sends requests as."""

    account_id: str
    tier: str
    api_key: str
    busy: bool = False
    next_free_s: float = 0.0
    """When it may send again without exceeding its per-minute limit."""


@dataclass
class FreePool:
    """Free accounts taken in turn, each with one job at a time and under its per-minute limit.

    Free users hold at most one job each (the free tier's concurrency limit) and send at
    most one request every `spacing_s`, so the gateway's per-account limits do not decide
    the run: the lanes do. When every account is busy, the caller signs up a new one.
    """

    spacing_s: float
    accounts: list[Account] = field(default_factory=list)
    _next: int = 0

    def take(self, now_s: float) -> Account | None:
        """The next idle account allowed to send at `now_s` (marked busy), or None."""
        for i in range(len(self.accounts)):
            account = self.accounts[(self._next + i) % len(self.accounts)]
            if not account.busy and account.next_free_s <= now_s:
                self._next = (self._next + i + 1) % len(self.accounts)
                account.busy = True
                account.next_free_s = now_s + self.spacing_s
                return account
        return None

    def release(self, account: Account) -> None:
        """The account's job ended: it may send again once its spacing has passed."""
        account.busy = False

    def add(self, account: Account) -> None:
        """A new user's account joins the pool."""
        self.accounts.append(account)


DECODER_PREFIX = "darkroom_fleet_decoder_"
LANE_PREFIX = "darkroom_lane_"


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of a Prometheus text page, read with prometheus-client's parser (a page
    that does not parse gives none: the report shows the gap rather than stopping the run)."""
    try:
        return [
            (sample.name, dict(sample.labels), float(sample.value))
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]
    except ValueError:
        return []


def parse_decoder_metrics(text: str) -> dict[str, dict[str, float | str]]:
    """The gateway's `darkroom_fleet_decoder_*{instance=...,pool=...}` samples.

    Returns:
        instance -> metric name without its `darkroom_fleet_decoder_` prefix (e.g.
        `batch_occupancy`) -> value, plus "pool" -> the decoder's pool.
    """
    decoders: dict[str, dict[str, float | str]] = {}
    for name, labels, value in _samples(text):
        if name.startswith(DECODER_PREFIX) and "instance" in labels and "pool" in labels:
            decoders.setdefault(labels["instance"], {"pool": labels["pool"]})[name.removeprefix(DECODER_PREFIX)] = value
    return decoders


def parse_lane_metrics(text: str) -> dict[str, dict[str, float]]:
    """The `darkroom_lane_*{lane="..."}` samples of a Prometheus text page, by lane.

    Returns:
        lane -> metric name without its `darkroom_lane_` prefix (e.g. `waiting`,
        `taken_total`, `paused`) -> value. Empty when the page has no lane metrics.
    """
    lanes: dict[str, dict[str, float]] = {}
    for name, labels, value in _samples(text):
        if name.startswith(LANE_PREFIX) and "lane" in labels:
            lanes.setdefault(labels["lane"], {})[name.removeprefix(LANE_PREFIX)] = value
    return lanes


@dataclass
class ServerJob:
    """One job as the server's own events tell it."""

    job_id: str
    tier: str
    user: str | None
    accepted_s: float
    status: str = "queued"
    queued_s: float | None = None
    """When it was first put in its lane."""
    started_s: float | None = None
    """When a decoder first started rendering it."""
    terminal_s: float | None = None
    completions: set[str] = field(default_factory=set)
    """The event ids of its `JobCompleted` events: more than one is a job completed twice."""
    deferred: bool = False
    """Its status was `deferred` in the server's events (the gateway may also show a queued
    job as deferred on its own reckoning: see `deferral_times`)."""


@dataclass
class ServerJobs:
    """A fold of the image commands and request events: every admitted job and how it ended.

    Times are seconds from `origin` (the Unix time of the load's start), so they line up
    with the load generator's clock.
    """

    origin: float
    jobs: dict[str, ServerJob] = field(default_factory=dict)
    _states: dict[str, JobView] = field(default_factory=dict)

    def apply(self, envelope: Envelope) -> None:
        """Fold one envelope from the image-command or request-event topic; others are ignored."""
        if REGISTRY.get(envelope.type) is None:
            return
        try:
            event = REGISTRY.decode(envelope)
        except DecodeError:
            return
        at = envelope.time.timestamp() - self.origin
        if isinstance(event, GenerateImage):
            job = self.jobs.setdefault(
                event.job_id, ServerJob(event.job_id, event.spec.tier, event.spec.user, accepted_s=at)
            )
            job.accepted_s = min(job.accepted_s, at)
            return
        job_id = envelope.aggregate_id
        if isinstance(event, JobCompleted) and job_id in self.jobs:
            self.jobs[job_id].completions.add(envelope.event_id)
        state = project(self._states.get(job_id), event, envelope.sequence)
        if state is None:
            return
        self._states[job_id] = state
        job = self.jobs.setdefault(job_id, ServerJob(job_id, state.spec.tier, state.spec.user, accepted_s=at))
        if isinstance(event, JobCompleted):
            job.completions.add(envelope.event_id)
        job.status = state.status
        job.deferred |= state.status == "deferred"
        if state.status == "queued" and state.lane and job.queued_s is None:
            job.queued_s = at
        if state.status == "rendering" and job.started_s is None:
            job.started_s = at
        if state.terminal and job.terminal_s is None:
            job.terminal_s = at

    def completed_twice(self) -> list[str]:
        """Jobs with more than one `JobCompleted` event (distinct events, not redeliveries)."""
        return sorted(job.job_id for job in self.jobs.values() if len(job.completions) > 1)

    def by_user(self) -> dict[str, ServerJob]:
        """Jobs by their request's `user` (the load generator's request key)."""
        return {job.user: job for job in self.jobs.values() if job.user}


def deferral_times(samples: Iterable[Mapping[str, Any]], lane: str, after_s: float) -> list[float]:
    """When the gateway showed the lane's queued jobs as `deferred`, from its sampled /metrics.

    The gateway's rule (services.gateway.lanes.LaneMonitor.deferred): jobs wait in the lane and
    a decoder holds it back for higher-priority lanes, or its backlog needs longer than
    `after_s` to drain at the current rate (or drains nothing). Samples without the gateway's
    figures (the Kafka fallback) tell nothing.
    """
    times = []
    for sample in samples:
        figures = sample.get("lanes", {}).get(lane, {})
        if "paused" not in figures or figures.get("waiting", 0) <= 0:
            continue
        wait = figures.get("estimated_wait_seconds")
        if figures["paused"] >= 1 or wait is None or wait > after_s:
            times.append(float(sample["t"]))
    return times


def merge_server_jobs(
    records: Iterable[RequestRecord], server: Mapping[str, ServerJob], deferred_at: Sequence[float] = ()
) -> None:
    """Complete each request's record with the server's account of its job (by request key).

    Args:
        records: The load generator's records.
        server: The server's jobs by request key (`ServerJobs.by_user`).
        deferred_at: Times the free lane's queued jobs showed as deferred (`deferral_times`):
            a free job queued at such a time, before a decoder took it, was deferred.
    """
    for record in records:
        job = server.get(record.key)
        if job is None:
            continue
        record.server_accepted = True
        record.job_id = record.job_id or job.job_id
        record.deferred |= job.deferred
        if record.tier == "free" and job.queued_s is not None:
            taken = job.started_s if job.started_s is not None else math.inf
            record.deferred |= any(job.queued_s <= t <= taken for t in deferred_at)
        if job.status in TERMINAL:
            record.final_status = record.final_status or job.status
            record.server_terminal_s = job.terminal_s
