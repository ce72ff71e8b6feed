"""End to end: the stack as `make up` runs it, on real Kafka, MinIO and FerretDB."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from typing import Any

import httpx
import openai

from infra.stack import INFRA, SERVICES, Stack, port_open
from libs import topics
from libs.bus.kafka import KafkaConsumer, KafkaProducer
from libs.cli.accounts import create_account
from libs.events import REGISTRY, Envelope
from libs.events.schemas import DeadLetter
from libs.runtime.heartbeats import SERVICES as HEARTBEAT_SERVICES
from libs.settings import DEV_SIGNING_KEY
from tests.helpers import consume, metric, metric_samples, scratch_topic


def _get_json(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_healthz_reports_kafka_and_every_service(running: Stack) -> None:
    status, body = _get_json(f"{running.profile.gateway_url}/healthz")
    assert status == 200, body
    assert body["status"] == "ok"
    assert body["kafka"] == {"reachable": True, "bootstrap": running.profile.kafka_bootstrap}
    services = body["services"]
    assert isinstance(services, dict)
    assert set(services) == set(HEARTBEAT_SERVICES)
    assert all(s["healthy"] for s in services.values())
    assert services["storage"]["checks"] == {"mongo": True, "minio": True}


def test_healthz_names_a_decoder_pool_left_without_decoders(running: Stack, api_key: str) -> None:
    status, body = _get_json(f"{running.profile.gateway_url}/healthz")
    assert status == 200 and body["problems"] == [], body
    assert body["pools"] == {
        "darkroom-mini/consumer": {"healthy": True, "instances": 1},
        "darkroom-mini/api": {"healthy": True, "instances": 1},
    }
    # The consumer pool's only decoder stops; the api pool's still counts as a "decoder".
    running.proc("decoder").stop()
    try:
        deadline = time.monotonic() + 30
        while (status := _get_json(f"{running.profile.gateway_url}/healthz")[0]) == 200:
            assert time.monotonic() < deadline, "healthz stayed ok without a consumer decoder"
            time.sleep(0.5)
        status, body = _get_json(f"{running.profile.gateway_url}/healthz")
        assert status == 503 and body["status"] == "degraded"
        assert body["problems"] == ["decoder pool darkroom-mini/consumer: no live decoder"]
        assert body["services"]["decoder"]["healthy"]  # type: ignore[index]

        # A job still queues, durably, and says that no decoder is up rather than a wait.
        created = httpx.post(
            f"{running.profile.gateway_url}/v1/images/generations",
            json={"prompt": "a red circle", "quality": "low", "seed": 1},
            headers={"authorization": f"Bearer {api_key}", "prefer": "respond-async"},
            timeout=30,
        )
        assert created.status_code == 202, created.text
        job = created.json()
        deadline = time.monotonic() + 30
        while job["status"] not in ("queued", "deferred") or "decoders_up" not in job:
            assert time.monotonic() < deadline, job
            time.sleep(0.3)
            job = _job(running, api_key, str(job["id"]))
        assert job["decoders_up"] is False and job["estimated_wait_s"] is None, job
    finally:
        running.up_services()
    status, body = _get_json(f"{running.profile.gateway_url}/healthz")
    assert status == 200 and body["pools"]["darkroom-mini/consumer"]["instances"] == 1, body  # type: ignore[index]
    deadline = time.monotonic() + 120
    while (done := _job(running, api_key, str(job["id"])))["status"] != "completed":
        assert time.monotonic() < deadline, done
        time.sleep(0.5)


def _job(stack: Stack, api_key: str, job_id: str) -> dict[str, Any]:
    answer = httpx.get(
        f"{stack.profile.gateway_url}/v1/images/jobs/{job_id}",
        headers={"authorization": f"Bearer {api_key}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_the_api_documentation_is_served(running: Stack) -> None:
    status, spec = _get_json(f"{running.profile.gateway_url}/openapi.json")
    assert status == 200
    assert "/healthz" in spec["paths"]  # type: ignore[operator]
    with urllib.request.urlopen(f"{running.profile.gateway_url}/docs", timeout=5) as response:  # noqa: S310
        assert b"swagger" in response.read().lower()


def test_a_second_up_changes_nothing(running: Stack) -> None:
    before = {name: running.proc(name).pid() for name in (*INFRA, *SERVICES)}
    running.up_infra()
    running.up_services()
    after = {name: running.proc(name).pid() for name in (*INFRA, *SERVICES)}
    assert before == after
    assert all(before.values())


async def test_garbage_on_a_service_topic_is_dead_lettered_and_the_service_goes_on(running: Stack) -> None:
    bootstrap = running.profile.kafka_bootstrap
    marker = uuid.uuid4().hex
    producer = KafkaProducer(bootstrap)
    await producer.start()
    try:
        await producer.send(topics.IMAGE_COMMANDS, f"not json {marker}".encode(), key=marker.encode())
        follow_up = Envelope(type="test.not_a_command", aggregate_id=marker)
        await producer.send(topics.IMAGE_COMMANDS, follow_up.to_bytes(), key=marker.encode())
    finally:
        await producer.stop()

    reader = KafkaConsumer(bootstrap, group=None, topics=[topics.DEAD_LETTERS])
    await reader.start()
    letters: list[DeadLetter] = []
    try:
        for _ in range(60):
            for record in await reader.getmany(timeout_ms=500):
                letter = REGISTRY.decode_as(Envelope.from_bytes(record.value), DeadLetter)
                if marker in letter.value:
                    letters.append(letter)
            if len(letters) >= 4:
                break
    finally:
        await reader.stop()
    # Two services read image commands (requests accepts jobs, safety checks their prompts):
    # each parks both messages and goes on.
    assert sorted(letter.service for letter in letters) == ["requests", "requests", "safety", "safety"], letters
    for service in ("requests", "safety"):
        garbage, unknown = sorted((x for x in letters if x.service == service), key=lambda letter: letter.offset)
        assert garbage.topic == topics.IMAGE_COMMANDS and "not valid JSON" in garbage.reason
        # The service consumed the next message too (and rejected its unknown type).
        assert "unknown event type" in unknown.reason
        assert unknown.offset > garbage.offset


async def _produce_marker(bootstrap: str) -> tuple[str, bytes]:
    topic = await scratch_topic(bootstrap, "test.persist", 1)
    producer = KafkaProducer(bootstrap)
    await producer.start()
    try:
        value = uuid.uuid4().bytes
        await producer.send(topic, value)
    finally:
        await producer.stop()
    return topic, value


def test_kafka_data_survives_down_and_up_and_down_leaves_nothing(running: Stack) -> None:
    bootstrap = running.profile.kafka_bootstrap
    topic, value = asyncio.run(_produce_marker(bootstrap))

    stopped = running.down()
    assert set(stopped) >= {*INFRA, *SERVICES}
    assert all(running.proc(name).pid() is None for name in (*INFRA, *SERVICES))
    profile = running.profile
    open_ports = [
        p for p in (profile.kafka_port, profile.minio_port, profile.ferretdb_port, profile.gateway_port) if port_open(p)
    ]
    assert open_ports == []

    running.up_infra()
    running.up_services()

    async def read_back() -> list[bytes]:
        consumer = KafkaConsumer(bootstrap, group=f"persist-{uuid.uuid4().hex[:6]}", topics=[topic])
        await consumer.start()
        try:
            return [r.value for r in await consume(consumer, 1)]
        finally:
            await consumer.stop()

    assert asyncio.run(read_back()) == [value]
    status, body = _get_json(f"{profile.gateway_url}/healthz")
    assert status == 200, body


def test_every_service_exports_prometheus_metrics_that_parse(running: Stack, api_key: str) -> None:
    """Each process of the stack serves /metrics (the gateway on its API port, the others on
    their health port), read with Prometheus' own text parser, after one job went through."""
    # A sign-up and a job: every service of the job path, and auth, handle something (a
    # process counts from its own start, and an earlier test may have restarted any).
    email = f"metrics-{uuid.uuid4().hex[:8]}@example.com"
    asyncio.run(create_account(running.profile.kafka_bootstrap, email, "pro", DEV_SIGNING_KEY))
    client = openai.OpenAI(base_url=f"{running.profile.gateway_url}/v1", api_key=api_key, max_retries=0)
    client.images.generate(prompt="a red circle", quality="low", extra_body={"seed": 1})  # a seed the check clears
    pages = {}
    for service in SERVICES:
        response = httpx.get(f"http://127.0.0.1:{running.profile.health_port(service)}/metrics", timeout=10)
        assert response.status_code == 200, service
        pages[service] = metric_samples(response.text)
    names = {service: {name for name, _ in samples} for service, samples in pages.items()}
    for service in SERVICES:
        # Every service publishes (heartbeats at least) and its consumers report their lag.
        assert "darkroom_events_published_total" in names[service], service
        assert "darkroom_consumer_lag" in names[service], service
        if service == "metering":
            continue  # a faust app: faust's own consumer reads its topics, no darkroom handler
        if service != "decoder-api":  # the pro job went through all but the api pool
            assert "darkroom_events_handled_total" in names[service], service
            assert "darkroom_handler_seconds_bucket" in names[service], service
    metering_lag = {
        labels for name, labels in pages["metering"] if name == "darkroom_consumer_lag" and "group" in dict(labels)
    }
    assert {(dict(labels)["group"], dict(labels)["topic"]) for labels in metering_lag} >= {
        ("darkroom-metering", topics.REQUEST_EVENTS),
        ("darkroom-metering", topics.REQUEST_EVENTS_API),
    }, metering_lag
    assert "darkroom_decoder_pass_seconds_bucket" in names["decoder"]
    assert metric(pages["decoder"], "darkroom_decoder_images_rendered_total", pool="consumer", lane="pro")
    assert metric(pages["safety"], "darkroom_safety_verdicts_total", stage="prompt", outcome="allowed", category="")
    assert metric(
        pages["gateway"],
        "darkroom_http_requests_total",
        route="/v1/images/generations",
        method="POST",
        status="200",
        tier="pro",
    )
    assert (
        "darkroom_lane_waiting" in names["gateway"] and "darkroom_fleet_decoder_batch_limit_images" in names["gateway"]
    )
