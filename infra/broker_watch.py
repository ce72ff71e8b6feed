"""Unregister a Kafka node the moment its process dies, so its partitions move at once.

A KRaft node killed with -9 says nothing: the active controller fences it only when its
heartbeats have stopped for `broker.session.timeout.ms` (3 s in the local template), and
until then every write to a partition it leads or follows waits (acks=all waits for the
whole in-sync set). On a machine where supervisord runs the node, the death is known at
once: this program is a supervisord event listener for `PROCESS_STATE_EXITED` that, when a
node of the cluster exits, asks a surviving node to unregister it (Kafka's
`UnregisterBroker`, what `kafka-cluster.sh unregister` sends). The controller then takes
the node out of every in-sync set and moves its leaderships, as fencing would, without the
wait. The restarted node registers again and catches up as any returning node does.

Only an exit of the node's process is seen: a lost machine (or a hung node) still goes by
the session timeout. Standard library only: it runs from supervisord with the project's
Python and no service code.

Usage (from supervisord, `infra.stack` writes the section):
    python -m infra.broker_watch kafka=1@127.0.0.1:29092 kafka-2=2@127.0.0.1:29102 ...
"""

from __future__ import annotations

import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Final

UNREGISTER_BROKER_KEY: Final = 64
"""Kafka's api key of UnregisterBroker (KIP-500's decommissioning request), version 0."""
CLIENT_ID: Final = "darkroom-broker-watch"
NONE: Final = 0
BROKER_ID_NOT_REGISTERED: Final = 102
RETRIABLE: Final = frozenset({7, 15, 41, 56})
"""REQUEST_TIMED_OUT, COORDINATOR_NOT_AVAILABLE, NOT_CONTROLLER, KAFKA_STORAGE_ERROR: the
controller is changing or busy, so ask again."""
GIVE_UP_AFTER_S: Final = 20.0
"""How long to keep asking (a quorum without its leader elects one in a few seconds); the
session timeout fences the node anyway, so a failure here only costs the old wait."""


@dataclass(frozen=True)
class Node:
    """One node of the cluster as supervisord names it."""

    program: str
    node_id: int
    host: str
    port: int

    @classmethod
    def parse(cls, spec: str) -> Node:
        """`kafka-2=2@127.0.0.1:29102` -> Node('kafka-2', 2, '127.0.0.1', 29102).

        Raises:
            ValueError: The spec is not PROGRAM=ID@HOST:PORT.
        """
        try:
            program, rest = spec.split("=", 1)
            node_id, address = rest.split("@", 1)
            host, port = address.rsplit(":", 1)
            return cls(program, int(node_id), host, int(port))
        except ValueError as exc:
            raise ValueError(f"not PROGRAM=ID@HOST:PORT: {spec!r}") from exc


# --- the Kafka request ----------------------------------------------------------------


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_uvarint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def unregister_request(broker_id: int, correlation_id: int) -> bytes:
    """UnregisterBroker v0 with its size prefix: request header v2 (flexible), then the
    broker id; neither carries tagged fields."""
    client = CLIENT_ID.encode()
    header = struct.pack(">hhih", UNREGISTER_BROKER_KEY, 0, correlation_id, len(client)) + client + _uvarint(0)
    body = struct.pack(">i", broker_id) + _uvarint(0)
    return struct.pack(">i", len(header) + len(body)) + header + body


def parse_unregister_response(payload: bytes, correlation_id: int) -> tuple[int, str | None]:
    """(error code, error message) of an UnregisterBroker v0 response (without its size
    prefix): response header v1, throttle time, error code, compact nullable message.

    Raises:
        ValueError: It answers another request.
    """
    (answered,) = struct.unpack_from(">i", payload, 0)
    if answered != correlation_id:
        raise ValueError(f"response to request {answered}, expected {correlation_id}")
    at = _skip_tagged_fields(payload, 4)
    _throttle_ms, error_code = struct.unpack_from(">ih", payload, at)
    length, at = _read_uvarint(payload, at + 6)
    message = None if length == 0 else payload[at : at + length - 1].decode("utf-8", "replace")
    return error_code, message


def _skip_tagged_fields(data: bytes, at: int) -> int:
    count, at = _read_uvarint(data, at)
    for _ in range(count):
        _tag, at = _read_uvarint(data, at)
        size, at = _read_uvarint(data, at)
        at += size
    return at


def _exchange(node: Node, request: bytes, timeout_s: float) -> bytes:
    with socket.create_connection((node.host, node.port), timeout=timeout_s) as conn:
        conn.sendall(request)
        (size,) = struct.unpack(">i", _read_exactly(conn, 4))
        return _read_exactly(conn, size)


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = conn.recv(left)
        if not chunk:
            raise ConnectionError("the node closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def unregister(
    broker_id: int,
    survivors: Sequence[Node],
    *,
    give_up_after_s: float = GIVE_UP_AFTER_S,
    exchange: Callable[[Node, bytes, float], bytes] = _exchange,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Ask the surviving nodes, in turn, to unregister `broker_id` until one does.

    Returns what happened, in words: `unregistered`, `not registered` (already gone, or
    not yet back), or why it gave up after `give_up_after_s`.
    """
    deadline = clock() + give_up_after_s
    last = "no surviving node"
    correlation_id = 0
    while True:
        correlation_id += 1
        for node in survivors:
            try:
                answer = exchange(node, unregister_request(broker_id, correlation_id), 2.0)
                code, message = parse_unregister_response(answer, correlation_id)
            except (OSError, ValueError, struct.error) as exc:
                last = f"{node.program}: {exc}"
                continue
            if code == NONE:
                return "unregistered"
            if code == BROKER_ID_NOT_REGISTERED:
                return "not registered"
            last = f"{node.program}: error {code} ({message or 'no message'})"
            if code not in RETRIABLE:
                return f"refused: {last}"
        if clock() >= deadline:
            return f"gave up: {last}"
        sleep(0.1)


# --- the supervisord event listener ---------------------------------------------------


def events(stdin: IO[str], stdout: IO[str]) -> Iterator[tuple[str, dict[str, str]]]:
    """supervisord's event listener protocol: say READY, read a header line and its payload,
    hand (event name, payload fields) to the caller, acknowledge, repeat."""
    while True:
        stdout.write("READY\n")
        stdout.flush()
        line = stdin.readline()
        if not line:
            return
        header = dict(token.split(":", 1) for token in line.split())
        payload = stdin.read(int(header["len"]))
        fields = dict(token.split(":", 1) for token in payload.split("\n", 1)[0].split() if ":" in token)
        yield header["eventname"], fields
        stdout.write("RESULT 2\nOK")
        stdout.flush()


def watch(
    nodes: Sequence[Node],
    stdin: IO[str],
    stdout: IO[str],
    log: IO[str],
    exchange: Callable[[Node, bytes, float], bytes] = _exchange,
) -> None:
    """Unregister each node of `nodes` whose process exits, by asking the others (over
    `exchange`, a request and its answer)."""
    by_program = {node.program: node for node in nodes}
    log.write(f"watching {', '.join(f'{n.program} (node {n.node_id})' for n in nodes)}\n")
    log.flush()
    for name, fields in events(stdin, stdout):
        node = by_program.get(fields.get("processname", ""))
        if name != "PROCESS_STATE_EXITED" or node is None:
            continue
        began = time.monotonic()
        survivors = [other for other in nodes if other is not node]
        outcome = unregister(node.node_id, survivors, exchange=exchange)
        log.write(
            f"{time.strftime('%Y-%m-%d %H:%M:%S')} {node.program} (node {node.node_id}) exited "
            f"(pid {fields.get('pid', '?')}): {outcome} in {(time.monotonic() - began) * 1000:.0f} ms\n"
        )
        log.flush()


def main(argv: Sequence[str]) -> int:
    """CLI entry point: the nodes as PROGRAM=ID@HOST:PORT."""
    try:
        nodes = [Node.parse(spec) for spec in argv]
    except ValueError as exc:
        sys.stderr.write(f"broker_watch: {exc}\n")
        return 2
    if len(nodes) < 2:
        sys.stderr.write("broker_watch: a single node has no one to hand its partitions to\n")
        return 2
    watch(nodes, sys.stdin, sys.stdout, sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
