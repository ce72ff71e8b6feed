"""The production observability files parse and name only metrics the services really export.

infra/observability holds Prometheus' scrape configuration and alert rules, Grafana's
provisioning and dashboard, and the OpenTelemetry collector's pipeline, all mounted by
docker-compose.yml. A rule or panel naming a metric no service exports would never fire or
draw: every darkroom_* name in them must be one the code registers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from libs.lanes import POOLS, lanes
from services.gateway.lanes import LaneMonitor
from services.gateway.metrics import FleetCollector

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "infra" / "observability"
METRIC = re.compile(r"\b(darkroom_[a-z_]+)\b")
PROMETHEUS_BUILTINS = {"up"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


def exported_names() -> set[str]:
    """Every sample name the services' code can export (its metric families, by type)."""
    # Importing the modules registers their metrics in the process registry.
    import services.auth.handlers
    import services.decoder.engine
    import services.metering.abuse
    import services.safety.handlers  # noqa: F401

    fleet = FleetCollector(LaneMonitor(None).figures, dict, dict, lambda: {})
    names: set[str] = set()
    for family in [*REGISTRY.collect(), *fleet.collect()]:
        suffixes = SUFFIXES.get(family.type)
        names |= {family.name + s for s in suffixes} if suffixes else {family.name}
    return {n for n in names if n.startswith("darkroom_")}


def load_yaml(name: str) -> Any:
    return yaml.safe_load((OBSERVABILITY / name).read_text())


def dashboard() -> dict[str, Any]:
    return dict(json.loads((OBSERVABILITY / "grafana" / "dashboards" / "darkroom.json").read_text()))


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def test_the_code_exports_the_metrics_the_files_rely_on() -> None:
    names = exported_names()
    for required in (
        "darkroom_events_handled_total",
        "darkroom_handler_seconds_bucket",
        "darkroom_consumer_lag",
        "darkroom_dead_letters_total",
        "darkroom_decoder_pass_seconds_bucket",
        "darkroom_safety_verdicts_total",
        "darkroom_signups_total",
        "darkroom_http_requests_total",
        "darkroom_api_refusals_total",
        "darkroom_lane_waiting",
        "darkroom_decoder_pool_instances",
    ):
        assert required in names


def test_prometheus_scrapes_every_service_on_its_metrics_port() -> None:
    config = load_yaml("prometheus.yml")
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    services = compose()["services"]
    for name in ("gateway", "auth", "requests", "decoder", "decoder-api", "safety", "storage", "metering"):
        [target] = jobs[f"darkroom-{name}"]["dns_sd_configs"]
        assert target["names"] == [name] and name in services
        assert target["port"] == (
            8000 if name == "gateway" else int(services[name]["environment"]["DARKROOM_HEALTH_PORT"])
        )


def test_every_alert_rule_is_complete_and_names_exported_metrics() -> None:
    [group] = load_yaml("alerts.yml")["groups"]
    names = exported_names()
    alerts = {rule["alert"]: rule for rule in group["rules"]}
    assert {
        "DarkroomServiceDown",
        "DarkroomDecoderPoolEmpty",
        "DarkroomLaneBacklogGrowing",
        "DarkroomConsumerLag",
        "DarkroomDeadLetters",
        "DarkroomServerErrors",
        "DarkroomAccountFlagged",
    } <= set(alerts)
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"page", "warn"}, name
        assert rule["annotations"]["summary"], name
        used = set(METRIC.findall(rule["expr"]))
        assert used or PROMETHEUS_BUILTINS & set(re.findall(r"\b[a-z_]+\b", rule["expr"])), name
        assert used <= names, f"{name} uses {used - names}, which no service exports"
        assert rule["expr"].count("(") == rule["expr"].count(")"), name


def test_the_dashboard_panels_query_exported_metrics() -> None:
    board = dashboard()
    names = exported_names()
    assert board["uid"] == "darkroom" and board["panels"]
    titles = " ".join(p["title"].lower() for p in board["panels"])
    for topic in ("lane", "latency", "per second", "refusals", "usage", "dead letters"):
        assert topic in titles
    for panel in board["panels"]:
        for target in panel["targets"]:
            used = set(METRIC.findall(target["expr"]))
            assert used and used <= names, f"{panel['title']}: {used - names}"
            assert target["datasource"]["uid"] == "prometheus"


def test_grafana_is_provisioned_with_the_datasources_and_the_dashboard() -> None:
    provisioning = OBSERVABILITY / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert {(s["uid"], s["url"]) for s in sources} == {
        ("prometheus", "http://prometheus:9090"),
        ("jaeger", "http://jaeger:16686"),
    }
    [provider] = yaml.safe_load((provisioning / "dashboards" / "darkroom.yml").read_text())["providers"]
    grafana = compose()["services"]["grafana"]
    assert f"./infra/observability/grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]


def test_traces_go_from_the_services_to_jaeger_through_the_collector() -> None:
    collector = load_yaml("otel-collector.yml")
    pipeline = collector["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"] and pipeline["exporters"] == ["otlp/jaeger"]
    assert collector["exporters"]["otlp/jaeger"]["endpoint"] == "jaeger:4317"
    services = compose()["services"]
    assert {"prometheus", "grafana", "jaeger", "otel-collector"} <= set(services)
    # The services' default (an operator may override it, or set it empty to export none).
    assert (
        services["gateway"]["environment"]["DARKROOM_OTLP_ENDPOINT"]
        == "${DARKROOM_OTLP_ENDPOINT-http://otel-collector:4318}"
    )


@pytest.mark.parametrize("name", ["prometheus", "grafana"])
def test_the_observability_services_keep_their_data_and_restart(name: str) -> None:
    service = compose()["services"][name]
    assert service["restart"] == "unless-stopped"
    assert any(str(volume).startswith(f"{name}-data:") for volume in service["volumes"])


def test_every_lane_and_pool_is_in_the_fleet_view() -> None:
    monitor = LaneMonitor(None)
    fleet = FleetCollector(monitor.figures, dict, dict, lambda: {"darkroom-mini/consumer": 0})
    families = {family.name: family for family in fleet.collect()}
    waiting = {sample.labels["lane"] for sample in families["darkroom_lane_waiting"].samples}
    assert waiting == set(lanes())
    [pool] = families["darkroom_decoder_pool_instances"].samples
    assert pool.labels == {"model": "darkroom-mini", "pool": "consumer"} and pool.value == 0
    assert "consumer" in POOLS
