"""Run darkroom locally without Docker: Kafka, MinIO, FerretDB and the seven services.

Usage: python -m infra.stack [--profile dev|test] up [--infra-only]
       python -m infra.stack [--profile dev|test] down | status | logs

Every process runs under the profile's supervisord (infra/supervisor.py): restarted when
it crashes (a crash loop backs off, then shows as FATAL in `status`), its output in
`<run dir>/logs`, rotated. `up` starts supervisord, waits on health checks, never on
fixed sleeps, and skips whatever is already running and healthy, so a second `up`
changes nothing. `down` stops every program, then supervisord: nothing is left behind.

Profiles keep a developer's stack, the test suite's and the benchmarks' apart: `dev`
(ports from DARKROOM_*_PORT, data in .run/dev), `test` (DARKROOM_TEST_*_PORT, ports
+10000, .run/test) and `bench` (DARKROOM_BENCH_*_PORT, ports +20000, .run/bench).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra import paths
from infra.supervisor import ProgramState, Supervisor

# Service processes: name -> (package under services/, extra environment). The decoder
# runs twice: one pool for the consumer tiers' lanes and one for API traffic.
SERVICE_PROCESSES: dict[str, tuple[str, dict[str, str]]] = {
    "auth": ("auth", {}),
    "requests": ("requests", {}),
    "decoder": ("decoder", {"DARKROOM_POOL": "consumer"}),
    "decoder-api": ("decoder", {"DARKROOM_POOL": "api"}),
    "safety": ("safety", {}),
    "storage": ("storage", {}),
    "metering": ("metering", {}),
    "gateway": ("gateway", {}),
}
SERVICES = tuple(SERVICE_PROCESSES)
API_SPLIT = ("requests", "safety", "storage", "gateway")
"""Services whose api path runs as a process of its own with `*API_PROCESSES=1` (the decoder's
already does: `decoder-api`). The api path's gateway, `gateway-api`, listens on a port of its
own (`Profile.api_gateway_port`): the API's address, where a deployment's API clients go."""
CONSUMER_NICE = 10
"""The lower CPU priority of the consumer tiers' processes when the api path has its own
(`Profile.api_processes`): the api path's processes and the brokers take the cores first."""
INFRA = ("kafka", "minio", "ferretdb")
KAFKA_WATCH = "kafka-watch"
"""On a cluster, the event listener that unregisters a node whose process died (infra/broker_watch.py)."""
KAFKA_WATCH_EVENTS = ("PROCESS_STATE_EXITED",)
DEV_MINIO_USER = "darkroom"
DEV_MINIO_PASSWORD = "darkroom-dev-secret"  # noqa: S105 - development default, refused in production


def broker_threads(cores: int, brokers: int) -> tuple[int, int]:
    """A local KRaft node's (network, request handler) threads on a machine of `cores`
    shared by `brokers` nodes and the rest of the stack: Kafka's defaults (3 and 8) on 16
    cores or more per node, one each on a small machine.

    Every request passes from a network thread to a handler thread and back. On 2 cores
    the defaults' eleven threads only met each other in the scheduler: one of each cost
    the broker 16% less CPU per job under load (`make bench-pipeline`, 50 in flight,
    four alternating pairs: 5.8-6.2 -> 5.0-5.3 ms per job; docs/operations.md).
    """
    share = max(1, cores // max(1, brokers))
    return min(3, max(1, share // 4)), min(8, max(1, share // 2))


def broker_properties(profile: Profile, node: KafkaNode, data_dir: Path, cores: int) -> str:
    """The server.properties of one KRaft node of `profile`'s cluster, from
    infra/kafka/server.properties.template, its threads sized for `cores`."""
    replicas = profile.replication_factor
    network_threads, io_threads = broker_threads(cores, profile.kafka_brokers)
    template = string.Template((paths.ROOT / "infra" / "kafka" / "server.properties.template").read_text())
    return template.substitute(
        node_id=node.node_id,
        voters=",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in profile.kafka_nodes),
        kafka_port=node.port,
        controller_port=node.controller_port,
        data_dir=data_dir,
        replicas=replicas,
        min_insync=min(2, replicas),
        network_threads=network_threads,
        io_threads=io_threads,
    )


def at_priority(argv: list[str], nice: int, batch: bool = False) -> list[str]:
    """`argv` run at the lower CPU priority `nice` (as it is when 0) and, with `batch`, under
    the kernel's batch scheduling policy (`Profile.batch_scheduled`; where `chrt` is missing,
    as on a machine without Linux's util-linux, under the normal policy)."""
    if nice:
        argv = ["nice", "-n", str(nice), *argv]
    if batch and shutil.which("chrt"):
        argv = ["chrt", "--batch", "0", *argv]
    return argv


@dataclass(frozen=True)
class Profile:
    """Ports and folders of one local stack."""

    name: str
    run_dir: Path
    kafka_port: int
    controller_port: int
    minio_port: int
    minio_console_port: int
    ferretdb_port: int
    gateway_port: int
    health_port_base: int
    api_gateway_port: int = 0
    """The api path's own gateway (`gateway-api`, with `api_processes`); 0: the gateway's port + 1."""
    otlp_endpoint: str = ""
    process_env: tuple[tuple[str, str, str], ...] = ()
    """Extra (process, variable, value) settings, e.g. another model for one decoder pool."""
    kafka_brokers: int = 1
    """KRaft nodes, each a broker and a controller: 1, or 3 for a replicated cluster."""
    replicas: tuple[tuple[str, int], ...] = ()
    """(service process, how many) where a service runs more than one process, each joining
    its consumer group: `decoder-2`, `decoder-3`, ... beside `decoder`."""
    api_processes: bool = False
    """The api path in processes of its own: `requests-api`, `safety-api`, `storage-api`,
    `gateway-api` (with `decoder-api`) take the api copies of the job topics, `requests`,
    `safety`, `storage`, `gateway` and `decoder` the consumer tiers' at a lower CPU priority
    (CONSUMER_NICE)."""

    @property
    def kafka_nodes(self) -> list[KafkaNode]:
        """The cluster's nodes: `kafka` on the profile's ports, then `kafka-<n>` 10 ports higher each."""
        return [
            KafkaNode(
                name="kafka" if n == 1 else f"kafka-{n}",
                node_id=n,
                port=self.kafka_port + 10 * (n - 1),
                controller_port=self.controller_port + 10 * (n - 1),
            )
            for n in range(1, self.kafka_brokers + 1)
        ]

    @property
    def kafka_bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{node.port}" for node in self.kafka_nodes)

    @property
    def replication_factor(self) -> int:
        """Topics' replicas: three on a cluster of three or more, else one per broker."""
        return min(3, self.kafka_brokers)

    @property
    def infra(self) -> list[str]:
        """The infrastructure's processes, in start order: on a cluster, the nodes and then
        `kafka-watch`, which unregisters a node whose process dies (infra/broker_watch.py)."""
        watch = [KAFKA_WATCH] if self.kafka_brokers > 1 else []
        return [*(node.name for node in self.kafka_nodes), *watch, "minio", "ferretdb"]

    @property
    def mongo_url(self) -> str:
        return f"mongodb://127.0.0.1:{self.ferretdb_port}/"

    @property
    def minio_endpoint(self) -> str:
        return f"127.0.0.1:{self.minio_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def api_url(self) -> str:
        """Where API clients send requests: the api path's own gateway when it has processes of
        its own, else the one gateway."""
        return f"http://127.0.0.1:{self.api_port}" if self.api_processes else self.gateway_url

    @property
    def api_port(self) -> int:
        """The port of `gateway-api`."""
        return self.api_gateway_port or self.gateway_port + 1

    def health_port(self, service: str) -> int:
        return self.gateway_port if service == "gateway" else self.health_port_base + SERVICES.index(service)

    def traffic(self, service: str, instance: str = "") -> str:
        """The traffic a process serves (`DARKROOM_TRAFFIC`): all, unless the api path has
        processes of its own."""
        if not self.api_processes or service not in API_SPLIT:
            return "all"
        return "api" if instance == f"{service}-api" else "consumer"

    def batch_scheduled(self, process: str) -> bool:
        """Whether a process runs under Linux's batch scheduling policy (SCHED_BATCH): every
        process of a stack whose api path shares the consumer tiers' processes, but the
        decoders (`decoder`, `decoder-api`, their replicas).

        Why: on a small machine the model's threads and the pipeline share the cores. Under
        the normal policy every wake-up of a pipeline thread (a fetch answered, a write
        acknowledged: hundreds per job) preempts a model thread at once; under the batch
        policy a waking thread takes a free core at once but otherwise waits for the
        scheduler's tick, and finds more work waiting when it runs. Under `make
        bench-throughput`'s load that took a third of the machine's context switches and more
        than half of the decoder's preemptions away; the pipeline's CPU per job fell in most
        runs, throughput moved within the noise (docs/operations.md). A stack with
        `api_processes` orders its processes by `nice` instead (`niced`): the api path's
        latency comes first there, so nothing in it runs batch.
        """
        return not self.api_processes and SERVICE_PROCESSES.get(process, ("",))[0] != "decoder"

    def niced(self, service: str, instance: str = "") -> bool:
        """Whether a process runs at the lower CPU priority of consumer traffic."""
        return self.api_processes and (service == "decoder" or self.traffic(service, instance) == "consumer")

    def service_env(self, service: str, instance: str = "") -> dict[str, str]:
        """Environment for a service process of this stack."""
        return {
            "DARKROOM_TRAFFIC": self.traffic(service, instance),
            "DARKROOM_ENV": "development",
            "DARKROOM_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "DARKROOM_KAFKA_REPLICATION_FACTOR": str(self.replication_factor),
            "DARKROOM_MONGO_URL": self.mongo_url,
            "DARKROOM_MINIO_ENDPOINT": self.minio_endpoint,
            "DARKROOM_MINIO_ACCESS_KEY": DEV_MINIO_USER,
            "DARKROOM_MINIO_SECRET_KEY": DEV_MINIO_PASSWORD,
            "DARKROOM_GATEWAY_PORT": str(self.api_port if instance == "gateway-api" else self.gateway_port),
            # The gateway serves /healthz on its API port; the others on a port of their own. An
            # extra instance has none (its service's port is taken): the gateway's /healthz
            # counts it among the service's instances by its heartbeats.
            "DARKROOM_HEALTH_PORT": "0" if service == "gateway" or instance else str(self.health_port(service)),
            "DARKROOM_INSTANCE_ID": instance or f"{service}-{self.name}-1",
            "DARKROOM_OTLP_ENDPOINT": self.otlp_endpoint,
            "PYTHONPATH": str(paths.ROOT),
            "PYTHONUNBUFFERED": "1",
            # Export spans every half second rather than every five, so traces show up promptly.
            "OTEL_BSP_SCHEDULE_DELAY": "500",
        }


@dataclass(frozen=True)
class KafkaNode:
    """One KRaft node of a profile's cluster."""

    name: str
    node_id: int
    port: int
    controller_port: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def gateway_health(gateway_url: str) -> dict[str, Any]:
    """The gateway's /healthz body (a 503 carries one too), or {} when it does not answer."""
    try:
        with urllib.request.urlopen(f"{gateway_url}/healthz", timeout=3) as response:  # noqa: S310 - loopback
            body: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read())
    except (OSError, ValueError):
        body = {}
    return body


def load_profile(name: str) -> Profile:
    """The dev, test or bench profile, with ports overridable from the environment.

    `<PREFIX>PORT_OFFSET` moves every port of the profile at once; `<PREFIX><NAME>_PORT`
    sets one port; `<PREFIX>KAFKA_BROKERS` (1 or 3) runs that many Kafka nodes.
    """
    prefix, offset, default_dir = {
        "dev": ("DARKROOM_", 0, paths.ROOT / ".run" / "dev"),
        "test": ("DARKROOM_TEST_", 10000, paths.ROOT / ".run" / "test"),
        "bench": ("DARKROOM_BENCH_", 20000, paths.ROOT / ".run" / "bench"),
    }[name]
    # A whole profile can be moved (e.g. two checkouts testing side by side).
    offset = int(os.environ.get(f"{prefix}PORT_OFFSET", offset))

    def port(var: str, default: int) -> int:
        moved = default + offset
        if moved > 65535:
            # A large offset pushes the highest ports (FerretDB's 27017) past the last port:
            # wrap them around above 1024 rather than fail.
            moved = 1024 + (moved - 1024) % (65536 - 1024)
        return int(os.environ.get(f"{prefix}{var}_PORT", moved))

    return Profile(
        name=name,
        run_dir=Path(os.environ.get(f"{prefix}RUN_DIR", default_dir)),
        kafka_port=port("KAFKA", 9092),
        controller_port=port("KAFKA_CONTROLLER", 9093),
        minio_port=port("MINIO", 9000),
        minio_console_port=port("MINIO_CONSOLE", 9001),
        ferretdb_port=port("FERRETDB", 27017),
        gateway_port=port("GATEWAY", 8000),
        health_port_base=port("HEALTH_BASE", 8100),
        api_gateway_port=port("API_GATEWAY", 8001),
        otlp_endpoint=os.environ.get(f"{prefix}OTLP_ENDPOINT", ""),
        kafka_brokers=kafka_brokers(f"{prefix}KAFKA_BROKERS", os.environ.get(f"{prefix}KAFKA_BROKERS", "1")),
        replicas=parse_replicas(f"{prefix}REPLICAS", os.environ.get(f"{prefix}REPLICAS", "")),
        api_processes=os.environ.get(f"{prefix}API_PROCESSES", "0").strip() in ("1", "true", "yes"),
    )


def parse_replicas(variable: str, value: str) -> tuple[tuple[str, int], ...]:
    """A `*REPLICAS` setting, "decoder=4,requests=2": processes per service (1 by default).

    Raises:
        StackError: An unknown service, the gateway (its replicas need a load balancer in
            front, which the local stack does not run), or a count below 1.
    """
    replicas = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        name, _, count = part.partition("=")
        name = name.strip()
        if name not in SERVICE_PROCESSES or name == "gateway":
            known = ", ".join(s for s in SERVICES if s != "gateway")
            raise StackError(f"{variable}: no service {name!r} to replicate (one of {known})")
        if not count.strip().isdigit() or int(count) < 1:
            raise StackError(f"{variable}: {name} needs a whole number of processes, at least 1, not {count!r}")
        replicas.append((name, int(count)))
    return tuple(replicas)


def kafka_brokers(variable: str, value: str) -> int:
    """A `*KAFKA_BROKERS` setting (`variable`): 1, or 3 (a quorum of three controllers).

    Raises:
        StackError: Any other value.
    """
    if value.strip() not in ("1", "3"):
        raise StackError(f"{variable} must be 1 or 3 (a KRaft quorum of controllers), not {value!r}")
    return int(value)


# --- processes ---------------------------------------------------------------------


@dataclass
class Process:
    """A process of the stack, identified by name within a profile: a program of the
    profile's supervisord."""

    profile: Profile
    name: str

    @property
    def supervisor(self) -> Supervisor:
        return Supervisor(self.profile.run_dir)

    @property
    def log_file(self) -> Path:
        return self.profile.run_dir / "logs" / f"{self.name}.log"

    def state(self) -> ProgramState | None:
        """What supervisord says of it (None before it was ever started)."""
        return self.supervisor.state(self.name)

    def pid(self) -> int | None:
        """The pid of the running process, if it runs."""
        state = self.state()
        return state.pid if state is not None and state.running else None

    def start(self, argv: list[str], env: dict[str, str], cwd: Path | None = None, events: Sequence[str] = ()) -> int:
        """Start it under supervisord (which restarts it whenever it exits), with the
        caller's environment and `env` over it (`DARKROOM_MODEL=... make up` reaches the
        services even when supervisord was started earlier); with `events`, as a
        supervisord event listener for them."""
        inherited = {key: value for key, value in os.environ.items() if "\n" not in value and "\0" not in value}
        return self.supervisor.start(self.name, argv, inherited | env, cwd or paths.ROOT, self.log_file, events=events)

    def stop(self, timeout_s: float = 20.0, sig: int = signal.SIGTERM) -> bool:
        """Stop it and keep it stopped (SIGTERM to its group, SIGKILL after 20 s).

        With `sig=signal.SIGKILL` it is a crash instead: the process group is killed at
        once and supervisord starts it again, as it would after any crash. True if
        something was running.
        """
        pid = self.pid()
        if sig != signal.SIGKILL:
            return self.supervisor.stop(self.name)
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + max(timeout_s, 5.0)
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        return True

    def kill_and_hold(self, timeout_s: float = 15.0) -> bool:
        """kill -9 its process group and keep it down, as a lost machine would be: the
        restart supervisord makes after the crash is stopped at once. True if it was running.

        Raises:
            StackError: It would not stay stopped.
        """
        killed = self.pid()
        if not self.stop(0, signal.SIGKILL):
            return False
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.state()
            if state is None or state.state in ("STOPPED", "FATAL"):
                return True
            # Once supervisord has seen the crash (an exit, as its event listeners hear it),
            # not before: a stop asked while it still counts the dead process as running
            # would record a stop instead of a crash.
            if state.pid != killed:
                self.supervisor.stop(self.name)  # a no-op while it is EXITED, before the restart
            time.sleep(0.05)
        raise StackError(f"{self.name} did not stay stopped after kill -9")

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (our own exited child) counts as gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    if state == "Z":
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


# --- health checks -----------------------------------------------------------------


def _read_or(path: Path, default: str) -> str:
    return path.read_text().strip() if path.exists() else default


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback URL
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def kafka_ok(profile: Profile, node: KafkaNode | None = None) -> bool:
    """The broker (one node, or the first of the cluster) answers a metadata request (not
    just an open port); on a cluster, only once the quorum is up."""
    node = node or profile.kafka_nodes[0]
    if not port_open(node.port):
        return False

    async def probe() -> bool:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=node.bootstrap, request_timeout_ms=3000)
        try:
            await admin.start()
            await admin.list_topics()
            return True
        except Exception:  # noqa: BLE001 - any failure means not ready yet
            return False
        finally:
            with contextlib.suppress(Exception):
                await admin.close()

    return asyncio.run(probe())


def ferretdb_ok(profile: Profile) -> bool:
    if not port_open(profile.ferretdb_port):
        return False
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    client: MongoClient[dict[str, object]] = MongoClient(profile.mongo_url, serverSelectionTimeoutMS=2000)
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


def minio_ok(profile: Profile) -> bool:
    return http_ok(f"http://{profile.minio_endpoint}/minio/health/ready")


def service_ok(profile: Profile, service: str) -> bool:
    return http_ok(f"http://127.0.0.1:{profile.health_port(service)}/healthz")


def wait_until(check: Callable[[], bool], what: str, proc: Process | None, timeout_s: float) -> None:
    """Poll `check` until it passes; fail early if the process is stopped or supervisord
    gave up restarting it (a crash loop)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        state = proc.state() if proc is not None else None
        if proc is not None and (state is None or state.state in ("FATAL", "STOPPED")):
            reason = f"{state.state}: {state.description}" if state is not None else "not started"
            raise StackError(f"{what} is not running ({reason}); last log lines:\n{proc.tail()}")
        time.sleep(0.25)
    tail = proc.tail() if proc else ""
    raise StackError(f"{what} not healthy after {timeout_s:.0f}s; last log lines:\n{tail}")


class StackError(RuntimeError):
    """A component failed to start."""


# --- components ----------------------------------------------------------------------


@dataclass
class Stack:
    """Starts, checks and stops the components of one profile."""

    profile: Profile
    say: Callable[[str], None] = field(default=print)

    def proc(self, name: str) -> Process:
        return Process(self.profile, name)

    def _prioritized(self, process: str, argv: list[str], nice: int = 0) -> list[str]:
        """`argv` at `nice` and under the batch policy where the profile runs `process` so
        (`Profile.batch_scheduled`; a service's name, a broker node's, "minio", "ferretdb")."""
        return at_priority(argv, nice, self.profile.batch_scheduled(process))

    def healthy(self, name: str) -> bool:
        checks: dict[str, Callable[[], bool]] = {
            "minio": lambda: minio_ok(self.profile),
            "ferretdb": lambda: ferretdb_ok(self.profile),
        }
        for node in self.profile.kafka_nodes:
            checks[node.name] = lambda node=node: kafka_ok(self.profile, node)  # type: ignore[misc]
        checks[KAFKA_WATCH] = lambda: self.proc(KAFKA_WATCH).pid() is not None
        if name in checks:
            return checks[name]()
        return service_ok(self.profile, name)

    def _ensure(self, name: str, start: Callable[[], None], timeout_s: float) -> None:
        t0 = time.monotonic()
        proc = self.proc(name)
        if proc.pid() is not None:
            if self.healthy(name):
                self.say(f"  {name:9} already running (pid {proc.pid()})")
                return
            wait_until(lambda: self.healthy(name), name, proc, timeout_s)
            self.say(f"  {name:9} running (pid {proc.pid()})")
            return
        start()
        wait_until(lambda: self.healthy(name), name, proc, timeout_s)
        self.say(f"  {name:9} healthy in {time.monotonic() - t0:4.1f}s (pid {proc.pid()})")

    def kafka_leader(self, topic: str, partition: int = 0) -> KafkaNode:
        """The node that leads `topic`'s `partition` now, as the cluster describes it (the
        one to kill in a failover test); from a thread when called inside an event loop."""
        return asyncio.run(self._kafka_leader(topic, partition))

    async def _kafka_leader(self, topic: str, partition: int) -> KafkaNode:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.profile.kafka_bootstrap)
        await admin.start()
        try:
            [described] = await admin.describe_topics([topic])
        finally:
            await admin.close()
        leader = next(p["leader"] for p in described["partitions"] if p["partition"] == partition)
        return next(n for n in self.profile.kafka_nodes if n.node_id == leader)

    def start_kafka(self, node: KafkaNode | None = None, nice: int = 0) -> None:
        """Start one KRaft node (the first when `node` is None), formatting its storage once;
        with `nice`, at that lower CPU priority (`make surge` starts a killed node again at
        the consumer tiers' CONSUMER_NICE: see tests/bench/surge.py)."""
        node = node or self.profile.kafka_nodes[0]
        home = paths.kafka_home()
        if not (home / ".complete").exists():
            raise StackError(f"Kafka is not installed at {home}: run `make setup`")
        kdir = self.profile.run_dir / "kafka"
        ndir = kdir if node.node_id == 1 else kdir / f"node-{node.node_id}"
        data = ndir / "data"
        ndir.mkdir(parents=True, exist_ok=True)
        brokers = self.profile.kafka_brokers
        formatted_for = kdir / "brokers"
        if (data / "meta.properties").exists() and int(_read_or(formatted_for, "1")) != brokers:
            raise StackError(
                f"{kdir} holds a {_read_or(formatted_for, '1')}-node Kafka cluster, not {brokers}: "
                f"`make down` and remove {kdir} to change the broker count"
            )
        props = ndir / "server.properties"
        props.write_text(broker_properties(self.profile, node, data, os.cpu_count() or 1))
        java = ["java", "-cp", paths.kafka_classpath()]
        log4j = f"-Dlog4j2.configurationFile={paths.ROOT / 'infra' / 'kafka' / 'log4j2.properties'}"
        if not (data / "meta.properties").exists():
            cluster_file = kdir / "cluster-id"
            if not cluster_file.exists():
                cluster_file.write_text(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=") + "\n")
            formatted_for.write_text(f"{brokers}\n")
            subprocess.run(
                [
                    *java[:1],
                    log4j,
                    *java[1:],
                    "kafka.tools.StorageTool",
                    "format",
                    "--ignore-formatted",
                    # One "=" form: a random id may start with "-", which would read as a flag.
                    f"--cluster-id={cluster_file.read_text().strip()}",
                    "-c",
                    str(props),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        heap = os.environ.get("DARKROOM_KAFKA_HEAP", "512m" if brokers == 1 else "384m")
        broker = [
            "java",
            f"-Xms{heap}",
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            # C1 only: on a small machine the C2 compiler's threads took about a third of
            # the broker's CPU for thousands of jobs after a start, slowing every service
            # beside it (make bench-pipeline: broker CPU per job 15.7 -> 8.9 ms, 1-job
            # p50 119 -> 89 ms); C1's code is fast enough for a single local broker.
            "-XX:TieredStopAtLevel=1",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            log4j,
            "-cp",
            paths.kafka_classpath(),
            "kafka.Kafka",
            str(props),
        ]
        self.proc(node.name).start(self._prioritized(node.name, broker, nice), env={})

    def start_minio(self) -> None:
        binary = paths.minio_bin()
        if not binary.exists():
            raise StackError(f"MinIO is not installed at {binary}: run `make setup`")
        data = self.profile.run_dir / "minio"
        data.mkdir(parents=True, exist_ok=True)
        server = [
            str(binary),
            "server",
            str(data),
            "--quiet",
            "--address",
            f"127.0.0.1:{self.profile.minio_port}",
            "--console-address",
            f"127.0.0.1:{self.profile.minio_console_port}",
        ]
        self.proc("minio").start(
            self._prioritized("minio", server),
            env={
                "MINIO_ROOT_USER": DEV_MINIO_USER,
                "MINIO_ROOT_PASSWORD": DEV_MINIO_PASSWORD,
                "MINIO_BROWSER": "off",
                "MINIO_UPDATE": "off",
            },
        )

    def start_ferretdb(self) -> None:
        binary = paths.ferretdb_bin()
        if not binary.exists():
            raise StackError(f"FerretDB is not installed at {binary}: run `make setup`")
        data = self.profile.run_dir / "ferretdb"
        (data / "state").mkdir(parents=True, exist_ok=True)
        server = [
            str(binary),
            "--handler=sqlite",
            # WAL with synchronous=NORMAL: a commit is in the WAL before it returns, so a
            # crash of any process loses nothing; only a crash of the machine may lose the
            # last commits, as it may lose the single local broker's unflushed records.
            # SQLite's default (FULL) syncs the disk on every commit.
            f"--sqlite-url=file:{data}/?_pragma=synchronous(normal)",
            f"--listen-addr=127.0.0.1:{self.profile.ferretdb_port}",
            f"--state-dir={data / 'state'}",
            "--debug-addr=-",
            "--telemetry=disable",
            "--log-level=warn",
        ]
        self.proc("ferretdb").start(self._prioritized("ferretdb", server), env={})

    def start_service(self, name: str, instance: str = "") -> None:
        """Start a service process by its name in SERVICE_PROCESSES (or a named extra instance).

        The profile's `process_env` entries for `name` apply to every instance of it; entries
        for `instance` apply to that instance only, after them.
        """
        package, extra = SERVICE_PROCESSES[name]
        settings = {var: value for process, var, value in self.profile.process_env if process == name}
        if instance:
            settings |= {var: value for process, var, value in self.profile.process_env if process == instance}
        argv = [sys.executable, "-m", f"services.{package}"]
        # Scheduled by the service's name: its replicas and api instance run as it does.
        argv = self._prioritized(name, argv, CONSUMER_NICE if self.profile.niced(name, instance) else 0)
        self.proc(instance or name).start(argv, env=self.profile.service_env(name, instance) | extra | settings)

    def create_topics(self) -> None:
        from infra.topics import LayoutMismatch, create_topics

        try:
            created = asyncio.run(create_topics(self.profile.kafka_bootstrap, replicas=self.profile.replication_factor))
        except (LayoutMismatch, ValueError) as exc:
            raise StackError(f"topics: {exc}") from exc
        self.say(
            f"  topics    {len(created)} created or widened"
            + (f": {', '.join(created)}" if created else ", all present")
        )

    def up_kafka(self) -> None:
        """Kafka alone, with every topic (for benchmarks of one service on the real broker)."""
        self.ensure_kafka()
        self.create_topics()

    def ensure_kafka(self) -> None:
        """Every Kafka node running and healthy. The nodes of a cluster start together: none
        answers before a quorum of controllers is up."""
        nodes = self.profile.kafka_nodes
        if len(nodes) == 1:
            self._ensure(nodes[0].name, self.start_kafka, timeout_s=90)
            return
        t0 = time.monotonic()
        for node in nodes:
            if self.proc(node.name).pid() is None:
                self.start_kafka(node)
        for node in nodes:
            wait_until(lambda node=node: self.healthy(node.name), node.name, self.proc(node.name), 120)  # type: ignore[misc]
        self.say(f"  kafka     {len(nodes)} nodes healthy in {time.monotonic() - t0:4.1f}s")
        self._ensure(KAFKA_WATCH, self.start_kafka_watch, timeout_s=30)

    def start_kafka_watch(self) -> None:
        """The supervisord event listener that unregisters a node of the cluster the moment
        its process exits, so the controller moves its partitions without waiting for its
        session to time out (infra/broker_watch.py)."""
        nodes = [f"{n.name}={n.node_id}@127.0.0.1:{n.port}" for n in self.profile.kafka_nodes]
        self.proc(KAFKA_WATCH).start(
            [sys.executable, "-m", "infra.broker_watch", *nodes], env={}, events=KAFKA_WATCH_EVENTS
        )

    def up_infra(self) -> None:
        self.ensure_kafka()
        self._ensure("minio", self.start_minio, timeout_s=60)
        self._ensure("ferretdb", self.start_ferretdb, timeout_s=60)
        self.create_topics()

    def up_services(self) -> None:
        for service in SERVICES:
            if service == "gateway":
                continue
            self._ensure(service, lambda s=service: self.start_service(s), timeout_s=60)  # type: ignore[misc]
        self._ensure("gateway", lambda: self.start_service("gateway"), timeout_s=60)
        # The gateway is healthy once it has seen every service's heartbeat over Kafka.
        wait_until(
            lambda: http_ok(f"{self.profile.gateway_url}/healthz"),
            "gateway /healthz (all services)",
            self.proc("gateway"),
            timeout_s=30,
        )
        self.up_replicas()

    def up_replicas(self) -> None:
        """The extra processes the profile's replicas and api processes ask for, until the
        gateway hears them all (an extra instance has no health port of its own; its
        heartbeats count it)."""
        extras = [(name, f"{name}-{n}") for name, count in self.profile.replicas for n in range(2, count + 1)]
        if self.profile.api_processes:
            extras += [(name, f"{name}-api") for name in API_SPLIT]
        if not extras:
            return
        expected: dict[str, int] = {}
        for package, _ in SERVICE_PROCESSES.values():
            expected[package] = expected.get(package, 0) + 1
        for name, instance in extras:
            if self.proc(instance).pid() is None:
                self.start_service(name, instance=instance)
            expected[SERVICE_PROCESSES[name][0]] += 1

        def all_heard() -> bool:
            heard = gateway_health(self.profile.gateway_url).get("services", {})
            return all(int(heard.get(service, {}).get("instances", 0)) >= n for service, n in expected.items())

        wait_until(all_heard, "every extra process heartbeating", self.proc("gateway"), timeout_s=60)
        self.say("  extra     " + ", ".join(instance for _, instance in extras))

    def down(self) -> list[str]:
        """Stop every process of the profile (services, extra instances, then the
        infrastructure), then the profile's supervisord.

        Extra instances (e.g. a second decoder or gateway) stop before Kafka, MinIO and
        FerretDB, so they shut down cleanly instead of waiting on a broker that is gone.
        """
        supervisor = Supervisor(self.profile.run_dir)
        known = [state.name for state in supervisor.states()]
        infra = self.profile.infra
        extras = sorted(name for name in known if name not in SERVICES and name not in infra)
        stopped = []
        for name in [*reversed(SERVICES), *extras, *reversed(infra)]:
            if self.proc(name).stop():
                stopped.append(name)
        supervisor.shutdown()
        return stopped

    def status(self) -> dict[str, tuple[int | None, bool]]:
        return {name: (self.proc(name).pid(), self.healthy(name)) for name in [*self.profile.infra, *SERVICES]}

    def supervised(self) -> dict[str, ProgramState]:
        """What supervisord says of every process of the profile (extra instances too)."""
        return {state.name: state for state in Supervisor(self.profile.run_dir).states()}


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m infra.stack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", choices=["dev", "test", "bench"], default="dev")
    parser.add_argument("command", choices=["up", "down", "status", "logs"])
    parser.add_argument("--infra-only", action="store_true", help="up: Kafka, MinIO, FerretDB and topics only")
    args = parser.parse_args(argv)
    try:
        stack = Stack(load_profile(args.profile))
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    profile = stack.profile
    if args.command == "up":
        t0 = time.monotonic()
        print(f"darkroom ({profile.name}): starting in {profile.run_dir}")
        try:
            stack.up_infra()
            if not args.infra_only:
                stack.up_services()
        except (StackError, subprocess.CalledProcessError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"up in {time.monotonic() - t0:.1f}s")
        if not args.infra_only:
            print(f"gateway:  {profile.gateway_url}  (web app at /, operators at /admin, API docs at /docs)")
        print(f"kafka:    {profile.kafka_bootstrap}   minio: {profile.minio_endpoint}   mongo: {profile.mongo_url}")
        print(f"logs:     {profile.run_dir / 'logs'}   (make logs)")
        return 0
    if args.command == "down":
        stopped = stack.down()
        print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
        return 0
    if args.command == "status":
        all_ok = True
        supervised = stack.supervised()
        for name, (pid, ok) in stack.status().items():
            all_ok &= ok
            state = "healthy" if ok else ("UNHEALTHY" if pid else "not running")
            program = supervised.get(name)
            detail = f"{program.state}: {program.description}" if program is not None else "never started"
            print(f"{name:9} {state:11} {detail}")
        for name, program in sorted(supervised.items()):
            if name not in profile.infra and name not in SERVICES:
                print(f"{name:9} {'extra':11} {program.state}: {program.description}")
        for program in supervised.values():
            if program.crash_looping:
                all_ok = False
                log = profile.run_dir / "logs" / f"{program.name}.log"
                print(f"  crash loop: {program.name} keeps exiting at start ({program.state}); see {log}")
        health = gateway_health(profile.gateway_url)
        print(f"{'healthz':9} {health.get('status', 'unreachable'):11} {profile.gateway_url}/healthz")
        for problem in health.get("problems", []):
            print(f"  {problem}")
        for pool, figures in sorted(health.get("pools", {}).items()):
            print(f"  pool {pool:28} {figures['instances']} live decoder(s)")
        return 0 if all_ok else 1
    logs = sorted((profile.run_dir / "logs").glob("*.log"))
    if not logs:
        print("no logs yet", file=sys.stderr)
        return 1
    tail = ["tail", "-n", "20", "-F", *map(str, logs)]
    os.execvp("tail", tail)  # noqa: S606 - replaces this process with tail
    return 0  # pragma: no cover - exec does not return


if __name__ == "__main__":
    sys.exit(main())
