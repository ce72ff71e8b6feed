"""infra/broker_watch.py: the UnregisterBroker request on the wire, the retries across
surviving nodes, and supervisord's event listener protocol. The real thing, against a
three-node cluster, is in tests/e2e/test_kafka_cluster.py."""

from __future__ import annotations

import io
import struct

import pytest

from infra.broker_watch import (
    CLIENT_ID,
    Node,
    events,
    main,
    parse_unregister_response,
    unregister,
    unregister_request,
    watch,
)

KAFKA = Node("kafka", 1, "127.0.0.1", 9092)
KAFKA_2 = Node("kafka-2", 2, "127.0.0.1", 9102)
KAFKA_3 = Node("kafka-3", 3, "127.0.0.1", 9112)


def response(correlation_id: int, error_code: int, message: str | None = None) -> bytes:
    """An UnregisterBroker v0 response as a broker writes it (after the size prefix)."""
    text = b"\x00" if message is None else bytes([len(message.encode()) + 1]) + message.encode()
    return struct.pack(">i", correlation_id) + b"\x00" + struct.pack(">ih", 0, error_code) + text + b"\x00"


def test_the_request_is_unregister_broker_v0_with_a_flexible_header() -> None:
    wire = unregister_request(broker_id=2, correlation_id=7)
    (size,) = struct.unpack_from(">i", wire)
    assert size == len(wire) - 4
    api_key, version, correlation_id, client_len = struct.unpack_from(">hhih", wire, 4)
    assert (api_key, version, correlation_id) == (64, 0, 7)
    at = 14 + client_len
    assert wire[14:at].decode() == CLIENT_ID
    assert wire[at:] == b"\x00" + struct.pack(">i", 2) + b"\x00"  # no header tags, broker 2, no body tags


def test_a_response_gives_its_error_and_message_and_must_answer_this_request() -> None:
    assert parse_unregister_response(response(3, 0), 3) == (0, None)
    assert parse_unregister_response(response(4, 41, "not the controller"), 4) == (41, "not the controller")
    with pytest.raises(ValueError, match="expected 5"):
        parse_unregister_response(response(4, 0), 5)


class Cluster:
    """Survivors that answer from a script: an exception to raise or an error code."""

    def __init__(self, answers: dict[str, list[int | Exception]]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, int]] = []

    def exchange(self, node: Node, request: bytes, timeout_s: float) -> bytes:
        (correlation_id,) = struct.unpack_from(">i", request, 8)  # after the size, api key and version
        (broker_id,) = struct.unpack(">i", request[-5:-1])  # before the body's empty tags
        self.asked.append((node.program, broker_id))
        answer = self.answers[node.program].pop(0)
        if isinstance(answer, Exception):
            raise answer
        return response(correlation_id, answer)


def test_a_dead_node_is_unregistered_by_the_first_survivor_that_answers() -> None:
    cluster = Cluster({"kafka": [ConnectionRefusedError()], "kafka-3": [0]})
    outcome = unregister(2, [KAFKA, KAFKA_3], exchange=cluster.exchange, sleep=lambda s: None)
    assert outcome == "unregistered"
    assert cluster.asked == [("kafka", 2), ("kafka-3", 2)]


def test_it_asks_again_while_the_quorum_elects_a_controller_then_gives_up() -> None:
    cluster = Cluster({"kafka": [41, 7, 0]})
    assert unregister(2, [KAFKA], exchange=cluster.exchange, sleep=lambda s: None) == "unregistered"
    assert len(cluster.asked) == 3

    now = [0.0]
    stuck = Cluster({"kafka": [41] * 100})

    def sleep(seconds: float) -> None:
        now[0] += seconds

    outcome = unregister(2, [KAFKA], give_up_after_s=0.95, exchange=stuck.exchange, sleep=sleep, clock=lambda: now[0])
    assert outcome.startswith("gave up: kafka: error 41") and len(stuck.asked) == 11


def test_a_node_already_gone_or_a_refusal_ends_the_asking() -> None:
    assert unregister(2, [KAFKA], exchange=Cluster({"kafka": [102]}).exchange) == "not registered"
    refused = unregister(2, [KAFKA, KAFKA_3], exchange=Cluster({"kafka": [31]}).exchange)
    assert refused == "refused: kafka: error 31 (no message)"  # 31: CLUSTER_AUTHORIZATION_FAILED


def event(name: str, payload: str) -> str:
    header = f"ver:3.0 server:supervisor serial:1 pool:kafka-watch poolserial:1 eventname:{name} len:{len(payload)}"
    return f"{header}\n{payload}"


def test_the_listener_unregisters_only_a_node_whose_process_exited() -> None:
    stdin = io.StringIO(
        event("PROCESS_STATE_EXITED", "processname:gateway groupname:gateway from_state:RUNNING expected:0 pid:10")
        + event("PROCESS_STATE_EXITED", "processname:kafka-2 groupname:kafka-2 from_state:RUNNING expected:0 pid:11")
        + event("PROCESS_STATE_STOPPED", "processname:kafka-3 groupname:kafka-3 from_state:STOPPING pid:12")
    )
    stdout, log = io.StringIO(), io.StringIO()
    cluster = Cluster({"kafka": [0], "kafka-3": []})
    watch([KAFKA, KAFKA_2, KAFKA_3], stdin, stdout, log, exchange=cluster.exchange)
    assert cluster.asked == [("kafka", 2)]  # the survivors asked for kafka-2 only, the first answered
    assert stdout.getvalue() == "READY\n" + "RESULT 2\nOKREADY\n" * 3  # every event acknowledged
    assert "kafka-2 (node 2) exited (pid 11): unregistered" in log.getvalue()


def test_the_protocol_reads_a_payload_of_the_declared_length() -> None:
    stdin = io.StringIO(event("PROCESS_STATE_EXITED", "processname:kafka pid:3") + event("TICK_5", "when:5"))
    assert [name for name, _ in events(stdin, io.StringIO())] == ["PROCESS_STATE_EXITED", "TICK_5"]


def test_the_command_line_wants_two_nodes_or_more_in_its_form(capsys: pytest.CaptureFixture[str]) -> None:
    assert Node.parse("kafka-2=2@127.0.0.1:9102") == KAFKA_2
    assert main(["kafka=1@127.0.0.1:9092"]) == 2
    assert main(["kafka=1@127.0.0.1:9092", "kafka-2:9102"]) == 2
    err = capsys.readouterr().err
    assert "no one to hand its partitions to" in err and "not PROGRAM=ID@HOST:PORT: 'kafka-2:9102'" in err
