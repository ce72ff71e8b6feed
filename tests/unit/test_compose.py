"""Structural checks for the production deployment files (docker-compose.yml, Dockerfile).

CI has no Docker engine, so the stack cannot be brought up there. These tests parse the files
instead and pin the properties an operator relies on: the right infra images, every service
built from this repository and started in dependency order behind health checks, and secrets
that must come from the environment with no fallback. A broken edit to the deployment then fails
here rather than on someone's production host.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_PATH = REPO_ROOT / "docker-compose.yml"
DOCKERFILE_PATH = REPO_ROOT / "Dockerfile"

APP_SERVICES = ("gateway", "auth", "requests", "decoder", "safety", "storage", "metering")
INFRA_SERVICES = ("kafka", "minio", "mongo")
ONE_SHOT_SERVICES = ("topics",)
Doc = dict[str, Any]
"""A parsed YAML mapping (the compose file, a service in it)."""

VALID_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}

# Secrets and where each must be handed to a container.
SECRETS = (
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "MONGO_ROOT_USER",
    "MONGO_ROOT_PASSWORD",
    "DARKROOM_SIGNING_KEY",
    "DARKROOM_OPERATOR_TOKEN",
)
SECRET_ENV_BINDINGS = (
    ("minio", "MINIO_ROOT_USER", "MINIO_ROOT_USER"),
    ("minio", "MINIO_ROOT_PASSWORD", "MINIO_ROOT_PASSWORD"),
    ("mongo", "MONGO_INITDB_ROOT_USERNAME", "MONGO_ROOT_USER"),
    ("mongo", "MONGO_INITDB_ROOT_PASSWORD", "MONGO_ROOT_PASSWORD"),
    ("gateway", "DARKROOM_SIGNING_KEY", "DARKROOM_SIGNING_KEY"),
    ("auth", "DARKROOM_SIGNING_KEY", "DARKROOM_SIGNING_KEY"),
    ("gateway", "DARKROOM_OPERATOR_TOKEN", "DARKROOM_OPERATOR_TOKEN"),
)


# --- helpers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_text() -> str:
    assert COMPOSE_PATH.is_file(), f"missing {COMPOSE_PATH}"
    return COMPOSE_PATH.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def compose(compose_text: str) -> Doc:
    # safe_load resolves the YAML anchors and `<<` merge keys the file uses, as compose does.
    doc = yaml.safe_load(compose_text)
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict)
    return cast(Doc, doc)


@pytest.fixture(scope="module")
def services(compose: Doc) -> Doc:
    return cast(Doc, compose["services"])


def _as_argv(command: str | list[Any] | None) -> list[str]:
    if command is None:
        return []
    if isinstance(command, str):
        return shlex.split(command)
    return [str(part) for part in command]


def _environment(service: Doc) -> dict[str, str | None]:
    """Compose accepts environment as a mapping or as a list of KEY=VALUE strings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {key: (None if value is None else str(value)) for key, value in env.items()}


def _depends_on(service: Doc) -> Doc:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        # The short (list) form cannot carry a condition; keep it visible to the checks.
        return {name: {} for name in deps}
    return deps


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE_PATH.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    return instructions


# --- infrastructure ------------------------------------------------------------------------


def test_kafka_is_official_image_in_kraft_combined_mode(services: Doc) -> None:
    kafka = services["kafka"]
    assert kafka["image"] == "apache/kafka:4.3.1"
    env = _environment(kafka)
    roles = {role.strip() for role in (env.get("KAFKA_PROCESS_ROLES") or "").split(",")}
    assert roles == {"broker", "controller"}
    assert env.get("KAFKA_NODE_ID"), "KRaft needs a node id"
    assert env.get("KAFKA_CONTROLLER_QUORUM_VOTERS"), "KRaft needs the controller quorum"
    assert env.get("KAFKA_CONTROLLER_LISTENER_NAMES")


def test_kafka_single_node_settings(services: Doc) -> None:
    env = _environment(services["kafka"])
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
    ):
        assert env.get(key) == "1", f"{key} must be 1 on a single broker"
    # Topics come only from infra/topics.yaml through the `topics` job.
    assert (env.get("KAFKA_AUTO_CREATE_TOPICS_ENABLE") or "").lower() == "false"


def test_minio_and_mongo_images(services: Doc) -> None:
    assert services["minio"]["image"].split(":")[0] == "minio/minio"
    assert services["mongo"]["image"] == "mongo:7"


@pytest.mark.parametrize("name", INFRA_SERVICES)
def test_infra_data_lives_on_named_volumes(compose: Doc, name: str) -> None:
    declared = set((compose.get("volumes") or {}).keys())
    mounts = compose["services"][name].get("volumes") or []
    sources = [(mount.split(":", 1)[0] if isinstance(mount, str) else mount.get("source")) for mount in mounts]
    named = [source for source in sources if source in declared]
    assert named, f"{name} must keep its data on a named volume, got {mounts!r}"


# --- application services ------------------------------------------------------------------


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_runs_its_module(services: Doc, name: str) -> None:
    assert name in services, f"service {name} missing from docker-compose.yml"
    assert _as_argv(services[name].get("command")) == ["python", "-m", f"services.{name}"]


@pytest.mark.parametrize("name", APP_SERVICES + ONE_SHOT_SERVICES)
def test_python_services_build_from_repository_dockerfile(services: Doc, name: str) -> None:
    build = services[name].get("build")
    assert build is not None, f"{name} must be built from this repository"
    if isinstance(build, str):
        build = {"context": build}
    context = (REPO_ROOT / build.get("context", ".")).resolve()
    assert context == REPO_ROOT
    assert (context / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE_PATH


def test_python_services_share_one_image(services: Doc) -> None:
    images = {services[name].get("image") for name in APP_SERVICES + ONE_SHOT_SERVICES}
    assert len(images) == 1 and None not in images, images


def test_gateway_publishes_its_http_port(services: Doc) -> None:
    gateway = services["gateway"]
    assert _environment(gateway).get("DARKROOM_GATEWAY_PORT") == "8000"
    targets = [
        str(port).rsplit(":", 1)[-1] if not isinstance(port, dict) else str(port.get("target"))
        for port in gateway.get("ports") or []
    ]
    assert "8000" in targets


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_environment(services: Doc, name: str) -> None:
    env = _environment(services[name])
    assert env.get("DARKROOM_ENV") == "production"
    assert env.get("DARKROOM_KAFKA_BOOTSTRAP") == "kafka:9092"
    assert env.get("DARKROOM_MINIO_ENDPOINT") == "minio:9000"
    assert env.get("DARKROOM_HEALTH_PORT") == "8081"
    assert (env.get("DARKROOM_MONGO_URL") or "").startswith("mongodb://")
    assert "@mongo:27017/" in (env["DARKROOM_MONGO_URL"] or "")
    for key in ("DARKROOM_MINIO_ACCESS_KEY", "DARKROOM_MINIO_SECRET_KEY", "DARKROOM_OTLP_ENDPOINT"):
        assert key in env, f"{name} lacks {key}"


def test_decoder_declares_no_gpu_reservation(services: Doc) -> None:
    # A device reservation makes compose refuse to start the decoder on CPU-only hosts.
    deploy = services["decoder"].get("deploy") or {}
    assert "resources" not in deploy


# --- ordering and health ---------------------------------------------------------------------


@pytest.mark.parametrize("name", INFRA_SERVICES + APP_SERVICES)
def test_long_running_service_has_healthcheck(services: Doc, name: str) -> None:
    check = services[name].get("healthcheck")
    assert check, f"{name} has no healthcheck"
    assert not check.get("disable", False)
    assert check.get("test"), f"{name} healthcheck has no test command"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_healthcheck_uses_runtime_probe(services: Doc, name: str) -> None:
    argv = _as_argv(services[name]["healthcheck"]["test"])
    port = "8000" if name == "gateway" else "8081"
    assert argv[-4:] == [
        "python",
        "-m",
        "libs.runtime.healthcheck",
        f"http://127.0.0.1:{port}/healthz",
    ]


def test_every_dependency_has_a_condition(services: Doc) -> None:
    for name, service in services.items():
        for dependency, spec in _depends_on(service).items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            assert (spec or {}).get("condition") in VALID_CONDITIONS - {"service_started"}, (
                f"{name} -> {dependency} must wait on service_healthy or service_completed_successfully"
            )


def test_topics_job_creates_topics_once_kafka_is_healthy(services: Doc) -> None:
    topics = services["topics"]
    assert _as_argv(topics.get("command")) == ["python", "-m", "infra.topics", "create"]
    assert _depends_on(topics).get("kafka", {}).get("condition") == "service_healthy"
    # A restart policy of always/unless-stopped would rerun it forever after it exits 0.
    assert str(topics.get("restart", "no")) in {"no", "on-failure"}


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_waits_for_kafka_and_topics(services: Doc, name: str) -> None:
    deps = _depends_on(services[name])
    assert deps.get("kafka", {}).get("condition") == "service_healthy"
    assert deps.get("topics", {}).get("condition") == "service_completed_successfully"


@pytest.mark.parametrize("name", INFRA_SERVICES + APP_SERVICES)
def test_dependencies_with_service_healthy_have_healthchecks(services: Doc, name: str) -> None:
    for dependency, spec in _depends_on(services[name]).items():
        if (spec or {}).get("condition") == "service_healthy":
            assert services[dependency].get("healthcheck"), (
                f"{name} waits for {dependency} to be healthy, but it has no healthcheck"
            )


# --- secrets -------------------------------------------------------------------------------


@pytest.mark.parametrize("secret", SECRETS)
def test_secret_is_required_and_has_no_default(compose_text: str, secret: str) -> None:
    uses = re.findall(r"\$\{" + secret + r"(\W[^}]*)?\}", compose_text)
    assert uses, f"{secret} is never referenced as ${{{secret}:?...}}"
    for modifier in uses:
        # `:?` fails when unset or empty; `:-`, `-`, `?`, or no modifier would let it slip through.
        assert modifier.startswith(":?"), f"${{{secret}{modifier}}} must use the :? form"
    assert not re.search(r"\$" + secret + r"\b", compose_text), f"bare ${secret} has no guard"


@pytest.mark.parametrize(("service", "key", "secret"), SECRET_ENV_BINDINGS)
def test_secret_reaches_container_only_from_environment(services: Doc, service: str, key: str, secret: str) -> None:
    value = _environment(services[service]).get(key) or ""
    assert re.fullmatch(r"\$\{" + secret + r":\?[^}]*\}", value), (
        f"{service}.{key} must be exactly ${{{secret}:?...}}, got {value!r}"
    )


# --- Dockerfile ----------------------------------------------------------------------------


def test_dockerfile_starts_from_python_311_slim() -> None:
    assert DOCKERFILE_PATH.is_file(), f"missing {DOCKERFILE_PATH}"
    froms = [args for keyword, args in _dockerfile_instructions() if keyword == "FROM"]
    assert froms and froms[0].split()[0] == "python:3.11-slim"


def test_dockerfile_installs_pinned_constraints() -> None:
    runs = [args for keyword, args in _dockerfile_instructions() if keyword == "RUN"]
    assert any(re.search(r"\bpip install\b.*-r\s+\S*constraints\.txt\b", run) for run in runs), (
        "the image must install the pinned dependencies from constraints.txt"
    )


def test_dockerfile_runs_as_non_root() -> None:
    users = [args for keyword, args in _dockerfile_instructions() if keyword == "USER"]
    assert users, "no USER instruction: the services would run as root"
    final_user = users[-1].split(":")[0]
    assert final_user not in {"root", "0"}


def test_dockerfile_puts_code_on_pythonpath() -> None:
    instructions = _dockerfile_instructions()
    envs = " ".join(args for keyword, args in instructions if keyword == "ENV")
    assert re.search(r"\bPYTHONPATH=/app\b", envs)
    assert any(keyword == "COPY" and args.split()[-1].rstrip("/") in {"/app", "."} for keyword, args in instructions)


# --- the three-broker override (docker-compose.cluster.yml) --------------------------------


def test_the_cluster_override_runs_three_replicated_nodes_and_tells_every_service(services: Doc) -> None:
    cluster = yaml.safe_load((REPO_ROOT / "docker-compose.cluster.yml").read_text(encoding="utf-8"))["services"]
    nodes = {name: _environment(cluster[name]) for name in ("kafka", "kafka-2", "kafka-3")}
    assert sorted(str(env["KAFKA_NODE_ID"]) for env in nodes.values()) == ["1", "2", "3"]
    voters = {env["KAFKA_CONTROLLER_QUORUM_VOTERS"] for env in nodes.values()}
    assert voters == {"1@kafka:9093,2@kafka-2:9093,3@kafka-3:9093"}
    for name, env in nodes.items():
        assert str(env["KAFKA_DEFAULT_REPLICATION_FACTOR"]) == "3" and str(env["KAFKA_MIN_INSYNC_REPLICAS"]) == "2"
        assert str(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == "3"
        assert (env["KAFKA_ADVERTISED_LISTENERS"] or "").startswith(f"PLAINTEXT://{name}:9092")
    assert cluster["kafka-2"]["image"] == cluster["kafka-3"]["image"] == services["kafka"]["image"]
    # Every process of the base file that talks to Kafka is told of all three brokers.
    clients = [name for name, body in services.items() if "DARKROOM_KAFKA_BOOTSTRAP" in _environment(body)]
    assert set(clients) >= {*APP_SERVICES, "decoder-api", "topics"}
    for name in clients:
        env = _environment(cluster[name])
        assert env["DARKROOM_KAFKA_BOOTSTRAP"] == "kafka:9092,kafka-2:9092,kafka-3:9092", name
        assert env["DARKROOM_KAFKA_REPLICATION_FACTOR"] == "3", name
