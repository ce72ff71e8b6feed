"""infra/kubernetes: the decoder pools' manifests and their KEDA autoscaling name what the
code really uses (modules, settings, consumer groups, topics, metrics, partitions)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import yaml

from libs.lanes import DEFAULT_MODEL, lanes, pool_group
from libs.settings import DEFAULT_BATCH_IMAGES, DecoderSettings
from services.gateway.metrics import LANE_GAUGES

MANIFEST = Path(__file__).resolve().parents[2] / "infra" / "kubernetes" / "decoders.yaml"


def _documents() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8")) if doc]


def _deployments() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in _documents() if d["kind"] == "Deployment"}


def _env(deployment: dict[str, Any]) -> dict[str, str]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container.get("env", [])}


def test_every_deployment_runs_a_real_service_with_real_settings() -> None:
    deployments = _deployments()
    assert {"darkroom-decoder", "darkroom-decoder-api"} <= set(deployments)
    for name, deployment in deployments.items():
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert container["command"][:2] == ["python", "-m"], name
        assert importlib.util.find_spec(container["command"][2]) is not None, name
        env = _env(deployment)
        for key in env:
            assert key.startswith("DARKROOM_") and key.removeprefix("DARKROOM_").lower() in DecoderSettings.model_fields
        # The values validate.
        DecoderSettings.model_validate({k.removeprefix("DARKROOM_").lower(): v for k, v in env.items()})
        port = int(env["DARKROOM_HEALTH_PORT"])
        assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
        assert [p["containerPort"] for p in container["ports"]] == [port]
        assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(port)


def test_each_pool_scales_on_its_own_render_topic_group_and_lanes() -> None:
    deployments = _deployments()
    scaled = [d for d in _documents() if d["kind"] == "ScaledObject"]
    assert len(scaled) == len(deployments)
    metrics = {f"darkroom_lane_{name}" for name, _, _ in LANE_GAUGES}
    for scaler in scaled:
        target = deployments[scaler["spec"]["scaleTargetRef"]["name"]]
        pool = _env(target)["DARKROOM_POOL"]
        pool_lanes = [lane for lane in lanes().values() if lane.pool == pool and lane.model == DEFAULT_MODEL]
        triggers = {t["type"]: t["metadata"] for t in scaler["spec"]["triggers"]}
        kafka = triggers["kafka"]
        assert kafka["topic"] == pool_lanes[0].topic
        assert kafka["consumerGroup"] == pool_group(kafka["topic"])
        assert int(kafka["lagThreshold"]) == DEFAULT_BATCH_IMAGES["cuda"]
        # A decoder without a partition of a lane sits idle: no more replicas than partitions.
        assert scaler["spec"]["maxReplicaCount"] <= min(len(lane.partitions) for lane in pool_lanes)
        query = triggers["prometheus"]["query"]
        assert set(re.findall(r"darkroom_[a-z_]+", query)) <= metrics, query
        named = set(re.findall(r"lane=~?\"([^\"]+)\"", query)[0].split("|"))
        assert named == {lane.name for lane in pool_lanes}, query
