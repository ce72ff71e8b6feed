"""The operator CLI and the local stack's profiles (no processes started)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from infra.stack import (
    CONSUMER_NICE,
    SERVICES,
    Process,
    Profile,
    Stack,
    StackError,
    at_priority,
    broker_properties,
    broker_threads,
    load_profile,
)
from infra.supervisor import ProgramState, Supervisor
from libs.cli.__main__ import main as cli
from libs.cli.kafka_tools import tool_command
from libs.cli.schemas import render_schemas

ROOT = Path(__file__).resolve().parents[2]


def test_published_schemas_match_the_code() -> None:
    published = {p.name: p.read_bytes() for p in (ROOT / "docs" / "schemas").glob("*.json")}
    assert published == render_schemas(), "run `make schemas` and commit docs/schemas"


def test_schemas_export_writes_an_index(tmp_path: Path) -> None:
    assert cli(["schemas", "export", str(tmp_path)]) == 0
    index = json.loads((tmp_path / "index.json").read_text())
    assert {"type": "system.dead_letter", "version": 1, "file": "system.dead_letter.v1.json"} in index


def test_kafka_tools_run_against_the_local_broker() -> None:
    command = tool_command("groups", ["--describe", "--all-groups"], bootstrap="127.0.0.1:9092", classpath="cp/*")
    assert command[-2:] == ["--describe", "--all-groups"]
    assert "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand" in command
    assert command[command.index("--bootstrap-server") + 1] == "127.0.0.1:9092"


def test_an_unknown_command_is_a_plain_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli(["frobnicate"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_dev_and_test_profiles_never_share_a_port_or_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DARKROOM_KAFKA_PORT", "DARKROOM_TEST_KAFKA_PORT", "DARKROOM_RUN_DIR", "DARKROOM_TEST_RUN_DIR"):
        monkeypatch.delenv(var, raising=False)
    dev, test = load_profile("dev"), load_profile("test")

    def ports(p: Profile) -> set[int]:
        own = {p.kafka_port, p.controller_port, p.minio_port, p.minio_console_port, p.ferretdb_port, p.gateway_port}
        return own | {p.health_port(s) for s in SERVICES}

    assert not ports(dev) & ports(test)
    assert dev.run_dir != test.run_dir
    assert dev.gateway_url == "http://127.0.0.1:8000"


def test_a_three_broker_profile_has_three_nodes_on_ports_of_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DARKROOM_KAFKA_BROKERS", "3")
    monkeypatch.delenv("DARKROOM_KAFKA_PORT", raising=False)
    dev = load_profile("dev")
    assert [n.name for n in dev.kafka_nodes] == ["kafka", "kafka-2", "kafka-3"]
    assert dev.kafka_bootstrap == "127.0.0.1:9092,127.0.0.1:9102,127.0.0.1:9112"
    assert (dev.replication_factor, dev.infra) == (
        3,
        ["kafka", "kafka-2", "kafka-3", "kafka-watch", "minio", "ferretdb"],
    )
    assert dev.service_env("requests")["DARKROOM_KAFKA_REPLICATION_FACTOR"] == "3"
    node_ports = [port for n in dev.kafka_nodes for port in (n.port, n.controller_port)]
    others = {dev.minio_port, dev.minio_console_port, dev.ferretdb_port, dev.gateway_port}
    assert len(set(node_ports)) == 6 and not set(node_ports) & (others | {dev.health_port(s) for s in SERVICES})
    monkeypatch.setenv("DARKROOM_KAFKA_BROKERS", "2")
    with pytest.raises(StackError, match="1 or 3"):
        load_profile("dev")
    monkeypatch.delenv("DARKROOM_KAFKA_BROKERS")
    assert load_profile("dev").kafka_bootstrap == "127.0.0.1:9092"


def test_replicas_name_services_and_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DARKROOM_REPLICAS", "decoder=4, requests=2,")
    assert load_profile("dev").replicas == (("decoder", 4), ("requests", 2))
    for wrong, said in (("gateway=2", "no service 'gateway'"), ("decodr=2", "no service"), ("safety=0", "at least 1")):
        monkeypatch.setenv("DARKROOM_REPLICAS", wrong)
        with pytest.raises(StackError, match=said):
            load_profile("dev")


def test_api_processes_split_the_job_path_and_lower_the_consumer_traffics_priority(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DARKROOM_API_PROCESSES", raising=False)
    shared = load_profile("dev")
    assert shared.service_env("requests")["DARKROOM_TRAFFIC"] == "all" and not shared.niced("decoder")
    monkeypatch.setenv("DARKROOM_API_PROCESSES", "1")
    split = load_profile("dev")
    assert split.service_env("requests")["DARKROOM_TRAFFIC"] == "consumer"
    assert split.service_env("requests", "requests-api")["DARKROOM_TRAFFIC"] == "api"
    assert split.service_env("requests", "requests-2")["DARKROOM_TRAFFIC"] == "consumer"
    assert split.service_env("auth")["DARKROOM_TRAFFIC"] == "all"
    assert [s for s in SERVICES if split.niced(s)] == ["requests", "decoder", "safety", "storage", "gateway"]
    assert not split.niced("requests", "requests-api") and not split.niced("gateway", "gateway-api")
    # The api path's gateway listens on the API's own address; the first gateway stays where it was.
    assert split.service_env("gateway", "gateway-api")["DARKROOM_TRAFFIC"] == "api"
    assert split.service_env("gateway", "gateway-api")["DARKROOM_GATEWAY_PORT"] == "8001"
    assert split.service_env("gateway")["DARKROOM_GATEWAY_PORT"] == "8000"
    assert split.api_url == "http://127.0.0.1:8001" and shared.api_url == shared.gateway_url


def test_ports_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DARKROOM_GATEWAY_PORT", "8123")
    monkeypatch.setenv("DARKROOM_TEST_KAFKA_PORT", "29092")
    assert load_profile("dev").gateway_port == 8123
    assert load_profile("test").kafka_bootstrap == "127.0.0.1:29092"
    env = load_profile("dev").service_env("storage")
    assert env["DARKROOM_GATEWAY_PORT"] == "8123"
    assert env["DARKROOM_HEALTH_PORT"] != "0"
    assert load_profile("dev").service_env("gateway")["DARKROOM_HEALTH_PORT"] == "0"


def test_an_extra_instance_has_its_own_id_no_health_port_and_its_own_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    profile = replace(
        load_profile("bench"),
        process_env=(("decoder", "DARKROOM_MODEL", "noop:0.1"), ("decoder-2", "DARKROOM_LOG_LEVEL", "DEBUG")),
    )
    started: dict[str, dict[str, str]] = {}

    def record(process: Process, argv: list[str], env: dict[str, str], cwd: Path | None = None) -> int:
        started[process.name] = env
        return 0

    monkeypatch.setattr(Process, "start", record)
    stack = Stack(profile, say=lambda _: None)
    stack.start_service("decoder")
    stack.start_service("decoder", instance="decoder-2")
    first, second = started["decoder"], started["decoder-2"]
    assert first["DARKROOM_HEALTH_PORT"] == str(profile.health_port("decoder"))
    assert second["DARKROOM_HEALTH_PORT"] == "0"  # the first instance holds the service's port
    assert second["DARKROOM_INSTANCE_ID"] == "decoder-2" != first["DARKROOM_INSTANCE_ID"]
    assert first["DARKROOM_MODEL"] == second["DARKROOM_MODEL"] == "noop:0.1"
    assert second["DARKROOM_LOG_LEVEL"] == "DEBUG" and "DARKROOM_LOG_LEVEL" not in first


def test_down_stops_extra_instances_before_the_infrastructure_then_the_supervisor(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    profile = replace(load_profile("bench"), run_dir=tmp_path)
    running = {"kafka", "decoder", "decoder-2", "gateway"}
    order: list[str] = []

    def states(supervisor: Supervisor) -> list[ProgramState]:
        return [ProgramState(name, "RUNNING", 1, "") for name in sorted(running)]

    def stop(process: Process, timeout_s: float = 20.0, sig: int = 15) -> bool:
        order.append(process.name)
        return process.name in running

    def shutdown(supervisor: Supervisor, timeout_s: float = 60.0) -> bool:
        order.append("supervisord")
        return True

    monkeypatch.setattr(Supervisor, "states", states)
    monkeypatch.setattr(Supervisor, "shutdown", shutdown)
    monkeypatch.setattr(Process, "stop", stop)
    stopped = Stack(profile, say=lambda _: None).down()
    assert stopped == ["gateway", "decoder", "decoder-2", "kafka"]
    assert order.index("decoder-2") < order.index("ferretdb") and order[-1] == "supervisord"


def test_a_process_at_a_lower_priority_runs_under_nice() -> None:
    assert at_priority(["java", "kafka.Kafka"], CONSUMER_NICE) == ["nice", "-n", "10", "java", "kafka.Kafka"]
    assert at_priority(["java", "kafka.Kafka"], 0) == ["java", "kafka.Kafka"]


def test_a_process_started_batch_runs_under_the_batch_policy_at_its_nice() -> None:
    ask = [sys.executable, "-c", "import os; print(os.sched_getscheduler(0), os.nice(0))"]
    ran = subprocess.run(at_priority(ask, CONSUMER_NICE, batch=True), capture_output=True, text=True, check=True)
    assert ran.stdout.split() == [str(os.SCHED_BATCH), "10"]
    ran = subprocess.run(at_priority(ask, 0), capture_output=True, text=True, check=True)
    assert ran.stdout.split() == [str(os.SCHED_OTHER), "0"]


def test_the_pipeline_yields_the_cores_to_the_decoders_unless_the_api_path_has_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DARKROOM_API_PROCESSES", raising=False)
    shared = load_profile("dev")
    assert [s for s in SERVICES if not shared.batch_scheduled(s)] == ["decoder", "decoder-api"]
    assert all(shared.batch_scheduled(p) for p in ("kafka", "kafka-2", "minio", "ferretdb"))
    monkeypatch.setenv("DARKROOM_API_PROCESSES", "1")
    split = load_profile("dev")
    assert not any(split.batch_scheduled(p) for p in (*SERVICES, "kafka", "minio", "ferretdb"))


def test_a_broker_has_threads_for_its_share_of_the_machine() -> None:
    assert broker_threads(2, 1) == (1, 1)
    assert broker_threads(2, 3) == (1, 1)
    assert broker_threads(8, 1) == (2, 4)
    assert broker_threads(16, 1) == (3, 8)  # Kafka's own defaults
    assert broker_threads(64, 1) == (3, 8)
    assert broker_threads(48, 3) == (3, 8)


def test_the_broker_runs_on_the_threads_the_stack_sizes() -> None:
    profile = load_profile("test")
    rendered = broker_properties(profile, profile.kafka_nodes[0], Path("/d"), cores=2)
    assert "num.network.threads=1\n" in rendered and "num.io.threads=1\n" in rendered
