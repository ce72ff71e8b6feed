"""`darkroom capacity`: what a launch needs, from what the benchmarks measured.

A pure model over measured costs (no broker, no cluster): the decoder's images/s on one
device at its best batch (`python -m tests.bench.model --json`, e.g. on an H100), each
process's CPU per job on the job path (`make bench-pipeline ARGS=--json ...`, the no-op
model), and the CPU of a sign-up (`make bench-auth`). It turns a demand (images/s and
sign-ups/s at peak) into devices, replicas per service, brokers and partitions per lane,
and prints every assumption beside every figure it used, so an operator can disagree with
one and run it again.

What it does not model: the store and broker hardware beyond cores (disks, network), the
latency a queue adds at a given utilisation, or a model other than the one measured.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PIPELINE = REPO / "docs" / "benchmarks" / "pipeline-2core.json"
DEFAULT_MODEL = REPO / "docs" / "benchmarks" / "model-h100.json"

DECODER_PROCESSES = ("decoder", "decoder-api")
STORES = ("kafka", "ferretdb", "minio")
"""Processes of the bench stack that are not darkroom services: sized as cores, not replicas."""
DECLARED_PER_LANE = 4
"""Partitions of each lane in infra/topics.yaml; lanes widen by multiples of it."""
FOLLOWER_BROKER_COST = 2.45
"""What each follower replica adds to the brokers' CPU per job, in units of one unreplicated
broker's: `make bench-pipeline` (no-op model, 50 concurrent) measured 34.9 ms per job for
three nodes with three replicas (median of four runs, 24-25 jobs/s) against 5.9 ms for one
broker (median of six, 48-54 jobs/s), 5.9x = 1 + 2 x 2.45 (this 2-core machine, 2026-12-07;
docs/operations.md). A follower copies each record through a fetch that returns as soon as
the record lands, so it costs more than the leader's own write."""


@dataclass(frozen=True)
class Measured:
    """The measured costs the plan is made of, and where each came from."""

    device: str
    device_images_per_s: float
    """One decoder device's images/s at `device_batch` (whole renders, encoding included)."""
    device_batch: int
    cpu_ms_per_job: dict[str, float]
    """CPU per job of each process of the job path (the no-op model: the pipeline alone)."""
    messages_per_job: float
    signup_cpu_ms: float
    sources: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Demand:
    """What the launch asks for at its peak, and the assumptions the plan is made with."""

    images_per_s: float
    signups_per_s: float
    images_per_job: float = 1.0
    api_share: float = 0.2
    """The share of images that come through the API pool (its own decoders and lanes)."""
    utilisation: float = 0.6
    """How busy a core or a device may be at peak: the rest absorbs spikes and failovers."""
    service_over_model: float = 0.9
    """What the decoder service keeps of the model's images/s (bench-decoder's R)."""
    cores_per_replica: float = 1.0
    """A darkroom service replica is one Python process: one core."""
    cores_per_broker: float = 8.0
    replication: int = 3
    follower_broker_cost: float = FOLLOWER_BROKER_COST
    """What each follower replica adds to the brokers' CPU, in one broker's (FOLLOWER_BROKER_COST)."""


@dataclass(frozen=True)
class Plan:
    """The answer: what to run."""

    jobs_per_s: float
    decoders: dict[str, int]
    """Decoder devices per pool (consumer, api)."""
    decoder_host_cores: float
    """CPU beside the devices: the decoders' events, checkpoints and image encoding."""
    replicas: dict[str, int]
    """Replicas per darkroom service (decoders excluded)."""
    store_cores: dict[str, float]
    """Cores for Kafka (all replicas), FerretDB and MinIO."""
    brokers: int
    partitions_per_lane: dict[str, int]
    messages_per_s: float


def plan(measured: Measured, demand: Demand) -> Plan:
    """Sizes a deployment for `demand` from `measured` costs (see the module docstring)."""
    if not 0 < demand.utilisation <= 1 or not 0 <= demand.api_share <= 1:
        raise ValueError("utilisation must be in (0, 1] and the api share in [0, 1]")
    if demand.replication < 1 or demand.follower_broker_cost < 0:
        raise ValueError("the replication factor must be at least 1 and a follower's cost at least 0")
    if demand.images_per_s <= 0 or demand.images_per_job <= 0 or measured.device_images_per_s <= 0:
        raise ValueError("images per second, images per job and the device's images/s must be positive")
    jobs_per_s = demand.images_per_s / demand.images_per_job
    per_device = measured.device_images_per_s * demand.service_over_model * demand.utilisation
    api_images = demand.images_per_s * demand.api_share
    decoders = {
        "consumer": math.ceil((demand.images_per_s - api_images) / per_device),
        "api": math.ceil(api_images / per_device),
    }
    replicas: dict[str, int] = {}
    store_cores: dict[str, float] = {}
    host_ms = sum(measured.cpu_ms_per_job.get(p, 0.0) for p in DECODER_PROCESSES)
    for process, ms in sorted(measured.cpu_ms_per_job.items()):
        cores = jobs_per_s * ms / 1000 / demand.utilisation
        if process == "kafka":
            # Measured on one broker without replicas: each follower fetches and writes the
            # same records again, at the measured cost of a follower (FOLLOWER_BROKER_COST).
            replicated = 1 + (demand.replication - 1) * demand.follower_broker_cost
            store_cores[process] = round(cores * replicated, 1)
        elif process in STORES:
            store_cores[process] = round(cores, 1)
        elif process == "auth":
            signups = demand.signups_per_s * measured.signup_cpu_ms / 1000 / demand.utilisation
            replicas[process] = max(1, math.ceil((cores + signups) / demand.cores_per_replica))
        elif process not in DECODER_PROCESSES:
            replicas[process] = max(1, math.ceil(cores / demand.cores_per_replica))
    brokers = max(demand.replication, math.ceil(store_cores.get("kafka", 0.0) / demand.cores_per_broker))
    # Every decoder of a pool takes its lanes' jobs: a lane needs a partition per decoder
    # (a decoder without one sits idle). Lanes widen by whole copies of the declared four
    # (DARKROOM_PARTITIONS_PER_LANE, one setting for every render topic: libs.lanes).
    per_lane = DECLARED_PER_LANE * math.ceil(max(decoders["consumer"], decoders["api"], 1) / DECLARED_PER_LANE)
    partitions = {"pro, plus, free (each)": per_lane, "api": per_lane}
    return Plan(
        jobs_per_s=jobs_per_s,
        decoders=decoders,
        decoder_host_cores=round(jobs_per_s * host_ms / 1000 / demand.utilisation, 1),
        replicas=replicas,
        store_cores=store_cores,
        brokers=brokers,
        partitions_per_lane=partitions,
        messages_per_s=jobs_per_s * measured.messages_per_job,
    )


def load_measured(pipeline_json: Path, model_json: Path, signup_cpu_ms: float, batch: int | None) -> Measured:
    """The measured costs, read from the benchmarks' JSON files.

    Args:
        pipeline_json: `make bench-pipeline ARGS="--json FILE"`: the highest concurrency's
            CPU per job per process and messages per job.
        model_json: `python -m tests.bench.model --json FILE`: the device and its images/s
            per batch (the kernels-on run, calls of one shape, as served).
        signup_cpu_ms: CPU of one sign-up, all processes together.
        batch: The decoder's batch limit (None: the best batch measured).
    """
    pipeline = json.loads(pipeline_json.read_text(encoding="utf-8"))["pipeline_noop_decoder"]
    busiest = max(pipeline, key=lambda level: level["concurrency"])
    model = json.loads(model_json.read_text(encoding="utf-8"))
    rates: dict[str, Any] = model.get("kernels_on") or next(v for k, v in model.items() if k.startswith("kernels_"))
    by_batch = {int(b): float(r["images_per_s"]) for b, r in rates.items()}
    if batch is None:
        batch = max(by_batch, key=lambda b: by_batch[b])
    if batch not in by_batch:
        raise ValueError(f"batch {batch} was not measured in {model_json} (measured: {sorted(by_batch)})")
    return Measured(
        device=str(model["device"]),
        device_images_per_s=by_batch[batch],
        device_batch=batch,
        cpu_ms_per_job={str(k): float(v) for k, v in busiest["cpu_ms_per_job"].items()},
        messages_per_job=float(busiest["messages_per_job"]),
        signup_cpu_ms=signup_cpu_ms,
        sources=[
            f"{_shown(model_json)}: {model['device']}, batch {batch}",
            f"{_shown(pipeline_json)}: {busiest['concurrency']} concurrent jobs, no-op model",
        ],
    )


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def format_plan(measured: Measured, demand: Demand, result: Plan) -> str:
    """What the command prints: the demand, every assumption and measured input, the plan."""
    lines = [
        f"demand: {demand.images_per_s:g} images/s ({result.jobs_per_s:.0f} jobs/s at "
        f"{demand.images_per_job:g} images per job), {demand.signups_per_s:g} sign-ups/s",
        "assumptions:",
        f"  every core and device at most {demand.utilisation:.0%} busy at peak",
        f"  the decoder service keeps {demand.service_over_model:.0%} of its model's images/s",
        f"  {demand.api_share:.0%} of the images come through the API pool",
        f"  a service replica is one core; a broker has {demand.cores_per_broker:g} cores; "
        f"replication factor {demand.replication}",
        f"  each follower replica adds {demand.follower_broker_cost:g}x one broker's CPU per job "
        "(measured on three local nodes against one)",
        "measured:",
        *(f"  {source}" for source in measured.sources),
        f"  one decoder device ({measured.device}) at batch {measured.device_batch}: "
        f"{measured.device_images_per_s:.1f} images/s",
        "  CPU per job: "
        + ", ".join(f"{p} {ms:g} ms" for p, ms in sorted(measured.cpu_ms_per_job.items(), key=lambda i: -i[1])),
        f"  {measured.messages_per_job:g} Kafka messages per job; a sign-up {measured.signup_cpu_ms:g} ms of CPU",
        "plan:",
        f"  decoder devices: {result.decoders['consumer']} consumer pool, {result.decoders['api']} api pool "
        f"(and {result.decoder_host_cores:g} cores beside them)",
        "  service replicas: " + ", ".join(f"{p} {n}" for p, n in result.replicas.items()),
        f"  Kafka: {result.brokers} brokers ({result.store_cores.get('kafka', 0):g} cores with "
        f"{demand.replication} replicas), {result.messages_per_s:,.0f} messages/s",
        "  partitions per lane: "
        + ", ".join(f"{lane} {n}" for lane, n in result.partitions_per_lane.items())
        + f" (DARKROOM_PARTITIONS_PER_LANE={max(result.partitions_per_lane.values())})",
        "  stores: " + ", ".join(f"{p} {cores:g} cores" for p, cores in result.store_cores.items() if p != "kafka"),
    ]
    return "\n".join(lines) + "\n"
