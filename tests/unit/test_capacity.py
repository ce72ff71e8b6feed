"""`darkroom capacity`: a launch's demand over measured costs gives devices, replicas,
brokers and partitions (pure arithmetic, every input printed)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from infra.topics import load_specs
from libs import topics
from libs.cli.capacity import (
    DECLARED_PER_LANE,
    DEFAULT_MODEL,
    DEFAULT_PIPELINE,
    Demand,
    Measured,
    format_plan,
    load_measured,
    plan,
)

MEASURED = Measured(
    device="a test GPU",
    device_images_per_s=500.0,
    device_batch=64,
    cpu_ms_per_job={"gateway": 10.0, "requests": 5.0, "decoder": 6.0, "auth": 0.2, "kafka": 8.0, "ferretdb": 4.0},
    messages_per_job=17.0,
    signup_cpu_ms=3.0,
)


def test_devices_replicas_and_brokers_follow_from_the_demand_and_the_costs() -> None:
    demand = Demand(images_per_s=1000, signups_per_s=300, api_share=0.2, utilisation=0.5, service_over_model=0.8)
    result = plan(MEASURED, demand)
    # A device serves 500 x 0.8 x 0.5 = 200 images/s: 800 consumer images/s need 4, 200 api 1.
    assert result.decoders == {"consumer": 4, "api": 1}
    # 1000 jobs/s x 10 ms = 10 cores, at half load 20 replicas of one core.
    assert result.replicas["gateway"] == 20 and result.replicas["requests"] == 10
    # auth: 1000 x 0.2 ms + 300 sign-ups x 3 ms = 1.1 cores, at half load 2.2: 3 replicas.
    assert result.replicas["auth"] == 3
    assert "decoder" not in result.replicas and result.decoder_host_cores == 12.0
    # Kafka: 8 cores at half load = 16; two followers at 2.45 each: 16 x 5.9 = 94.4 cores, 12 brokers of 8.
    assert result.store_cores["kafka"] == 94.4 and result.brokers == 12
    # A follower that cost what the leader's write does: 16 x 3 = 48 cores, 6 brokers.
    plain = plan(MEASURED, replace(demand, follower_broker_cost=1.0))
    assert plain.store_cores["kafka"] == 48.0 and plain.brokers == 6
    # One replica: the broker as measured.
    assert plan(MEASURED, replace(demand, replication=1)).store_cores["kafka"] == 16.0
    assert result.store_cores["ferretdb"] == 8.0
    assert result.partitions_per_lane == {"pro, plus, free (each)": 4, "api": 4}
    assert result.messages_per_s == 17_000


def test_a_lane_gets_a_partition_for_every_decoder_of_its_pool() -> None:
    result = plan(MEASURED, Demand(images_per_s=10_000, signups_per_s=0, api_share=0.0))
    assert result.decoders["consumer"] == 38  # 10,000 / (500 x 0.9 x 0.6) = 37.04
    # Lanes widen by whole copies of the declared four (DARKROOM_PARTITIONS_PER_LANE=40).
    assert result.partitions_per_lane == {"pro, plus, free (each)": 40, "api": 40}
    declared = {s.name: s for s in load_specs(per_lane=None)}[topics.RENDER_CONSUMER]
    assert {len(parts) for parts in declared.lanes.values()} == {DECLARED_PER_LANE}
    assert result.brokers >= 3, "never fewer brokers than replicas of a partition"


def test_images_per_job_divides_the_jobs() -> None:
    one = plan(MEASURED, Demand(images_per_s=1000, signups_per_s=0))
    four = plan(MEASURED, Demand(images_per_s=1000, signups_per_s=0, images_per_job=4))
    assert four.jobs_per_s == one.jobs_per_s / 4 and four.decoders == one.decoders
    assert four.replicas["gateway"] < one.replicas["gateway"]


def test_an_impossible_demand_is_refused_plainly() -> None:
    with pytest.raises(ValueError, match="utilisation"):
        plan(MEASURED, Demand(images_per_s=1, signups_per_s=0, utilisation=0))
    with pytest.raises(ValueError, match="positive"):
        plan(MEASURED, Demand(images_per_s=0, signups_per_s=0))
    with pytest.raises(ValueError, match="replication factor"):
        plan(MEASURED, Demand(images_per_s=1, signups_per_s=0, replication=0))


def test_the_committed_benchmark_figures_load_and_every_input_is_printed() -> None:
    measured = load_measured(DEFAULT_PIPELINE, DEFAULT_MODEL, signup_cpu_ms=3.2, batch=64)
    committed = json.loads(DEFAULT_MODEL.read_text(encoding="utf-8"))
    assert measured.device == committed["device"]
    assert measured.device_images_per_s == committed["kernels_on"]["64"]["images_per_s"]
    assert {"gateway", "requests", "kafka"} <= set(measured.cpu_ms_per_job)
    demand = Demand(images_per_s=1157, signups_per_s=278)
    text = format_plan(measured, demand, plan(measured, demand))
    assert "docs/benchmarks/model-h100.json" in text and "docs/benchmarks/pipeline-2core.json" in text
    assert "decoder devices:" in text and "brokers" in text and "60% busy" in text
    assert "each follower replica adds 2.45x one broker's CPU per job" in text


def test_a_batch_that_was_not_measured_is_named(tmp_path: Path) -> None:
    model = tmp_path / "model.json"
    model.write_text(json.dumps({"device": "x", "kernels_on": {"1": {"images_per_s": 3.0}}}), encoding="utf-8")
    with pytest.raises(ValueError, match="batch 8 was not measured"):
        load_measured(DEFAULT_PIPELINE, model, signup_cpu_ms=3.0, batch=8)
